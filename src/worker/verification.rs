//! A verification worker: reads one restore point back (`mover::verify`)
//! and says what it found.

use super::{Done, Failure, failure, mib, mover_failure};
use crate::api::{VerificationOutcome, VerificationResult};
use crate::aws::AwsClients;
use crate::messages::WorkerTask;
use crate::mover::{self, Progress};
use crate::reasons::FailureReason;

/// Verifies the task's restore point. A damaged one is `Ok` with an
/// outcome that is not `Verified` (the agent reports it as a failure,
/// with the outcome); `Err` when it could not be read at all.
pub(super) async fn run(
    aws: &AwsClients,
    task: &WorkerTask,
    progress: &Progress,
) -> Result<Done, Failure> {
    let (Some(repository), Some(id)) = (&task.repository, &task.restore_point) else {
        return Err(failure(
            FailureReason::RepositoryMissing,
            "the task names no repository or no restore point; the controller that launched this worker is older than the agent",
        ));
    };
    let found = mover::verify::run(aws, repository, id, progress)
        .await
        .map_err(|e| mover_failure(e, repository))?;
    Ok(Done {
        detail: detail(&found),
        restore_point: Some(id.clone()),
        snapshots: Vec::new(),
        machine: None,
        retention: None,
        verification: Some(found),
    })
}

/// The failure reason of a restore point found damaged.
pub(super) fn reason(found: &VerificationOutcome) -> FailureReason {
    match found.result {
        VerificationResult::Unverified => FailureReason::RestorePointUnverified,
        _ if found.corrupt_chunks > 0 => FailureReason::ChunkCorrupt,
        _ => FailureReason::ChunkMissing,
    }
}

/// What a verification found, for people.
pub(crate) fn detail(found: &VerificationOutcome) -> String {
    let id = &found.restore_point;
    match found.result {
        VerificationResult::Verified => format!(
            "restore point {id} verified: all {} chunk(s) ({}) are there and match their digests",
            found.chunks,
            mib(found.logical_bytes)
        ),
        VerificationResult::Unverified => format!(
            "restore point {id} does not verify: its manifest {} was changed, replaced or written without the repository's integrity key, so nothing it says is trusted; restore another restore point, and find out who else can write to the bucket",
            found.damaged_keys.first().map_or("", String::as_str)
        ),
        VerificationResult::Damaged => format!(
            "restore point {id} is damaged: {} chunk(s) missing and {} corrupt of {} (volumes {}), for example {}; those volumes cannot be restored from it, so restore another restore point of the resource and take a new backup",
            found.missing_chunks,
            found.corrupt_chunks,
            found.chunks,
            found.damaged_volumes.join(", "),
            found.damaged_keys.join(", ")
        ),
    }
}
