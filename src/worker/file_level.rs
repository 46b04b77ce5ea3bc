//! A `fileLevel` restore: the recovery browser over one volume of a
//! restore point, served until the session has been idle for its timeout.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;

use tracing::warn;

use super::{Done, Failure, Reporter, browser, failure, mover_failure};
use crate::aws::AwsClients;
use crate::messages::{SessionInfo, WorkerEvent, WorkerTask};
use crate::mover::{self, manifest::Manifest, manifest::VolumeImage};
use crate::reasons::FailureReason;

/// How often a session reports its last request to restore files onto the
/// source instance again.
const REPORT_AGAIN: Duration = Duration::from_secs(30);

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
            FailureReason::RestorePointMissing,
            "the task names no repository, restore point or session",
        ));
    };
    // Verified as a restore's is: a manifest that does not verify with the
    // repository's integrity key is never browsed (RestorePointUnverified).
    let manifest = mover::load_manifest(aws, repository, id)
        .await
        .map_err(|e| mover_failure(e, repository))?;
    let volume = volume_to_browse(&manifest, task.device.as_deref(), id)?;
    let disk = browser::RepositoryDisk::new(aws.clone(), repository.clone(), volume);
    browser::check_filesystem(&disk)
        .await
        .map_err(|e| failure(FailureReason::FilesystemUnreadable, e))?;
    // On EC2: port 443 on every interface, reached at the instance's
    // address. A local agent (tests, the demo) is told where to listen and
    // what to advertise.
    let listen = std::env::var("TENDER_BROWSER_ADDRESS")
        .unwrap_or_else(|_| format!("0.0.0.0:{}", session.port));
    let host = match std::env::var("TENDER_ADVERTISE_HOST") {
        Ok(h) => h,
        Err(_) => crate::aws::metadata::instance_address(None)
            .await
            .ok_or_else(|| {
                failure(
                    FailureReason::SessionFailed,
                    "could not read this instance's address from the instance metadata service",
                )
            })?,
    };
    let idle = Duration::from_secs(session.idle_timeout_seconds.max(1));
    let max_life = browser::session_life(session.max_life_seconds);
    let config = browser::SessionConfig {
        listen,
        advertise_host: host,
        token_sha256: session.token_sha256.clone(),
        idle_timeout: idle,
        max_life,
        restore_to: session.restore_to.clone(),
        original_location: None,
    };
    let (requests, mut requested) = mpsc::unbounded_channel();
    let config = browser::SessionConfig {
        original_location: session.original_location.clone().map(|t| (t, requests)),
        ..config
    };
    let up: Mutex<Option<SessionInfo>> = Mutex::new(None);
    let served = browser::serve(disk, config, |s| {
        let info = SessionInfo {
            url: s.url,
            certificate_sha256: s.certificate_sha256,
            public_key_sha256: s.public_key_sha256,
            original_location: None,
        };
        *up.lock().unwrap_or_else(|p| p.into_inner()) = Some(info.clone());
        report_session(reporter, id, info)
    });
    // Each staged request is reported with the session, and reported again
    // every REPORT_AGAIN while the session serves (a report can be lost;
    // the controller follows a request once).
    let forward = async {
        let mut last: Option<crate::messages::OriginalRequest> = None;
        let mut again = tokio::time::interval(REPORT_AGAIN);
        again.tick().await;
        loop {
            tokio::select! {
                request = requested.recv() => match request {
                    Some(request) => last = Some(request),
                    None => return,
                },
                _ = again.tick() => {}
            }
            let known = up.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let (Some(info), Some(request)) = (known, last.clone()) {
                let info = SessionInfo {
                    original_location: Some(request),
                    ..info
                };
                report_session(reporter, id, info).await;
            }
        }
    };
    tokio::pin!(served, forward);
    let ended = tokio::select! {
        ended = &mut served => ended,
        () = &mut forward => served.await,
    }
    .map_err(|e| failure(FailureReason::SessionFailed, e))?;
    let why = match ended.by {
        browser::EndedBy::Idle => format!("after {} s idle", idle.as_secs()),
        browser::EndedBy::MaxLife => format!("at its maximum life of {} s", max_life.as_secs()),
    };
    Ok(Done {
        detail: format!(
            "file-level recovery session of {id} ended {why} ({} s in all)",
            ended.ran.as_secs()
        ),
        restore_point: Some(id.clone()),
        snapshots: Vec::new(),
        machine: None,
        retention: None,
        verification: None,
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
            FailureReason::VolumeNotInRestorePoint,
            format!(
                "restore point {id} has no volume {}",
                device.unwrap_or("at all")
            ),
        )
    })
}

/// Tells the controller where the session is and how to trust it, and
/// its last request to restore files onto the source instance.
async fn report_session(reporter: &Reporter, id: &str, s: SessionInfo) {
    let detail = match &s.original_location {
        Some(o) => format!(
            "file-level recovery session of {id} at {}: {} file(s) staged for the original location (request {})",
            s.url, o.files, o.request
        ),
        None => format!("file-level recovery session of {id} is up at {}", s.url),
    };
    let event = WorkerEvent::Progress {
        percent: 100,
        detail,
        bytes: None,
        session: Some(s),
    };
    if let Err(e) = reporter.send(event).await {
        warn!(error = %e, "could not report the session");
    }
}
