# syntax=docker/dockerfile:1
# The Tender controller image: `tender` on distroless (CA certificates, no
# shell), running as UID/GID 65532 like the chart's securityContext, which
# also mounts the root filesystem read-only. It carries the worker agents the
# controller publishes (--agents-dir, /usr/lib/tender/agents/):
# tender-worker-x86_64.gz and tender-worker-arm64.gz.
#
#   docker build -t ghcr.io/tender-dev/tender:dev .
#   docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/tender-dev/tender:dev .
#
# Both agents are static (musl) builds of the same `tender` binary, so the
# controller is one of them too: the image's /tender is the agent of the
# image's own architecture, unpacked, and needs no libc from the base.
#
# Untested here: the machine this was written on has no Docker engine. What
# was checked on it (Debian 12 x86_64, Rust 1.95, the pins in
# scripts/versions.env): scripts/build-agents builds both agents; both are
# static PIEs; the x86_64 one runs (`tender --version`, `tender crd` prints
# the committed CRDs) and so does the arm64 one under qemu-user-static.
ARG BUILDER_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

# The build stage runs on the build machine's own platform and cross-builds
# both agents once, whatever platforms the image is built for.
FROM --platform=$BUILDPLATFORM ${BUILDER_IMAGE} AS build
# What scripts/build-agents would otherwise install on each source change:
# the musl standard libraries and python3-venv (for zig, from PyPI).
RUN rustup target add x86_64-unknown-linux-musl aarch64-unknown-linux-musl \
 && apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# zig compiles the C code (aws-lc-sys, rustls' crypto; zstd) and links, for
# both targets: no cmake or clang needed. The cache mounts keep the crates,
# zig, cargo-zigbuild and the build output between builds (BuildKit,
# Docker's default); /out is outside them, so it stays in the stage.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/root/.cache/tender \
    scripts/build-agents /out/agents \
 && gzip -dc /out/agents/tender-worker-x86_64.gz >/out/tender-amd64 \
 && gzip -dc /out/agents/tender-worker-arm64.gz >/out/tender-arm64 \
 && chmod 0755 /out/tender-amd64 /out/tender-arm64

FROM ${RUNTIME_IMAGE}
# amd64 or arm64: the platform this image is built for.
ARG TARGETARCH
COPY --from=build /out/agents/ /usr/lib/tender/agents/
COPY --from=build /out/tender-${TARGETARCH} /tender
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/tender"]
CMD ["controller"]
