//! A `fileLevel` restore: the recovery browser over one volume of a
//! restore point, served until the session has been idle for its timeout.

use std::time::Duration;

use tracing::{debug, warn};

use super::{Done, Failure, Reporter, browser, failure, mover_failure};
use crate::aws::AwsClients;
use crate::messages::{SessionInfo, WorkerEvent, WorkerTask};
use crate::mover::{self, manifest::Manifest, manifest::VolumeImage};

/// How long the worker asks the instance metadata service for its address.
const IMDS_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the file-level recovery browser over a restore point's volume
/// until the session has been idle for its timeout.
pub(super) async fn serve(
    aws: &AwsClients,
    task: &WorkerTask,
    reporter: &Reporter,
) -> Result<Done, Failure> {
    let (Some(repository), Some(id), Some(session)) =
        (&task.repository, &task.restore_point, &task.file_level)
    else {
        return Err(failure(
            "RestorePointMissing",
            "the task names no repository, restore point or session",
        ));
    };
    let manifest = mover::load_manifest(aws, repository, id)
        .await
        .map_err(|e| mover_failure(e, repository))?;
    let volume = volume_to_browse(&manifest, task.device.as_deref(), id)?;
    let disk = browser::RepositoryDisk::new(aws.clone(), repository.clone(), volume);
    browser::check_filesystem(&disk)
        .await
        .map_err(|e| failure("FilesystemUnreadable", e))?;
    // On EC2: port 443 on every interface, reached at the instance's
    // address. A local agent (tests, the demo) is told where to listen and
    // what to advertise.
    let listen = std::env::var("TENDER_BROWSER_ADDRESS")
        .unwrap_or_else(|_| format!("0.0.0.0:{}", session.port));
    let host = match std::env::var("TENDER_ADVERTISE_HOST") {
        Ok(h) => h,
        Err(_) => imds_address(&aws_config::imds::Client::builder().build())
            .await
            .ok_or_else(|| {
                failure(
                    "SessionFailed",
                    "could not read this instance's address from the instance metadata service",
                )
            })?,
    };
    let idle = Duration::from_secs(session.idle_timeout_seconds.max(1));
    let config = browser::SessionConfig {
        listen,
        advertise_host: host,
        token_sha256: session.token_sha256.clone(),
        idle_timeout: idle,
        restore_to: session.restore_to.clone(),
    };
    let ran = browser::serve(disk, config, |s| report_session(reporter, id, s))
        .await
        .map_err(|e| failure("SessionFailed", e))?;
    Ok(Done {
        detail: format!(
            "file-level recovery session of {id} ended after {} s idle ({} s in all)",
            idle.as_secs(),
            ran.as_secs()
        ),
        restore_point: Some(id.clone()),
        snapshots: Vec::new(),
    })
}

/// The volume the task names (its device), else the first.
fn volume_to_browse<'a>(
    manifest: &'a Manifest,
    device: Option<&str>,
    id: &str,
) -> Result<&'a VolumeImage, Failure> {
    let volume = match device {
        Some(device) => manifest
            .volumes
            .iter()
            .find(|v| v.device.as_deref() == Some(device)),
        None => manifest.volumes.first(),
    };
    volume.ok_or_else(|| {
        failure(
            "VolumeNotInRestorePoint",
            format!(
                "restore point {id} has no volume {}",
                device.unwrap_or("at all")
            ),
        )
    })
}

/// Tells the controller where the session is and how to trust it.
async fn report_session(reporter: &Reporter, id: &str, s: browser::Session) {
    let event = WorkerEvent::Progress {
        percent: 100,
        detail: format!("file-level recovery session of {id} is up at {}", s.url),
        bytes: None,
        session: Some(SessionInfo {
            url: s.url,
            certificate_sha256: s.certificate_sha256,
            public_key_sha256: s.public_key_sha256,
        }),
    };
    if let Err(e) = reporter.send(event).await {
        warn!(error = %e, "could not report the session");
    }
}

/// This instance's public address, else its private one, from IMDSv2
/// (`AWS_EC2_METADATA_SERVICE_ENDPOINT` points it elsewhere).
async fn imds_address(imds: &aws_config::imds::Client) -> Option<String> {
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
        let imds = aws_config::imds::Client::builder()
            .endpoint(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .build();
        assert_eq!(imds_address(&imds).await.as_deref(), Some("10.0.0.5"));
        server.abort();
    }
}
