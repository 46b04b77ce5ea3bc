//! IMDSv2: a worker's own address, from the instance metadata service.
//!
//! No IAM action governs it.

use std::time::Duration;

use aws_config::imds;
use tracing::debug;

/// How long a worker waits for the instance metadata service in all.
const IMDS_TIMEOUT: Duration = Duration::from_secs(10);

/// This instance's public address, else its private one, from IMDSv2.
/// `endpoint` (or `AWS_EC2_METADATA_SERVICE_ENDPOINT`) points it elsewhere.
pub async fn instance_address(endpoint: Option<&str>) -> Option<String> {
    let mut builder = imds::Client::builder();
    if let Some(endpoint) = endpoint {
        builder = builder.endpoint(endpoint).ok()?;
    }
    let imds = builder.build();
    let lookup = async {
        for path in [
            "/latest/meta-data/public-ipv4",
            "/latest/meta-data/local-ipv4",
        ] {
            match imds.get(path).await {
                Ok(ip) if !ip.as_ref().trim().is_empty() => {
                    return Some(ip.as_ref().trim().to_string());
                }
                Ok(_) => {}
                // No public address is a 404: try the private one.
                Err(e) => debug!(path, error = %e, "no answer from the instance metadata service"),
            }
        }
        None
    };
    tokio::time::timeout(IMDS_TIMEOUT, lookup)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{get, put};

    use super::*;

    /// An instance metadata service with no public address: IMDSv2's token
    /// first, then the private address.
    #[tokio::test]
    async fn the_address_comes_from_imdsv2_and_falls_back_to_the_private_one() {
        let app = axum::Router::new()
            .route(
                "/latest/api/token",
                put(|| async {
                    (
                        [("x-aws-ec2-metadata-token-ttl-seconds", "300")],
                        "session-token",
                    )
                }),
            )
            .route(
                "/latest/meta-data/public-ipv4",
                get(|| async { StatusCode::NOT_FOUND }),
            )
            .route(
                "/latest/meta-data/local-ipv4",
                get(|headers: HeaderMap| async move {
                    match headers.get("x-aws-ec2-metadata-token") {
                        Some(t) if t == "session-token" => (StatusCode::OK, "10.0.0.5"),
                        _ => (StatusCode::UNAUTHORIZED, ""),
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(crate::telemetry::serve_router(listener, app));
        let endpoint = format!("http://127.0.0.1:{port}");
        assert_eq!(
            instance_address(Some(&endpoint)).await.as_deref(),
            Some("10.0.0.5")
        );
        server.abort();
    }
}
