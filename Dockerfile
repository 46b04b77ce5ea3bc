# syntax=docker/dockerfile:1
# The Tender controller image: `tender` on distroless (glibc, CA
# certificates, no shell), running as UID/GID 65532 like the chart's
# securityContext, which also mounts the root filesystem read-only.
#
#   docker build -t ghcr.io/tender-dev/tender:dev .
#
# Untested here: the machine this was written on has no Docker engine.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# aws-lc-sys (rustls' crypto) builds its C code with the image's gcc; no
# cmake or clang needed on x86_64 and aarch64. The cache mounts keep the
# crates and build output between builds (BuildKit, Docker's default).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tender \
 && cp target/release/tender /tender

# Debian 12 like the build stage, so the binary's glibc matches.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /tender /tender
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/tender"]
CMD ["controller"]
