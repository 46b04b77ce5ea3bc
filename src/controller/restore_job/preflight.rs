//! What a RestoreJob checks before its worker is launched (and paid for):
//! that the restore point is in the repository, that the zone offers the
//! restored instance's type (mode `full`), and that the bucket files are
//! restored to exists (mode `fileLevel` with `restoreFilesTo`). Each
//! failure fails the worker before RunInstances, with a reason and an
//! Event (through `plan_workers`).

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::api::{BackupRepository, RestoreJob, RestoreMode, WorkerConfiguration};
use crate::aws::AwsError;
use crate::aws::accounts::Access;
use crate::aws::repository::Bucket;
use crate::controller::job::kind::NotLocated;
use crate::controller::{Context, Result};
use crate::mover::manifest::RepositoryLocation;
use crate::reasons::FailureReason;

/// The first pre-launch check that fails, if any. `Err` is a lookup that
/// failed for a reason worth retrying.
pub async fn check(
    job: &RestoreJob,
    config: &WorkerConfiguration,
    ctx: &Context,
) -> Result<Option<NotLocated>> {
    if let Some(problem) = restore_point(job, ctx).await? {
        return Ok(Some(problem));
    }
    if let Some(problem) = instance_type(job, config, ctx).await? {
        return Ok(Some(problem));
    }
    restore_target(job, ctx).await
}

fn repository(ctx: &Context, name: &str) -> Option<std::sync::Arc<BackupRepository>> {
    ctx.repositories.get(&ObjectRef::new(name))
}

fn bucket(repo: &BackupRepository) -> Bucket<'_> {
    Bucket {
        region: &repo.spec.region,
        name: &repo.spec.bucket,
        expected_owner: &repo.spec.expected_bucket_owner,
    }
}

/// The restore point's manifest must be in the repository (one listing of
/// exactly its key, which the controller's `s3:ListBucket` allows).
async fn restore_point(job: &RestoreJob, ctx: &Context) -> Result<Option<NotLocated>> {
    let Some(repo) = job
        .spec
        .repository_ref
        .as_ref()
        .and_then(|r| repository(ctx, &r.name))
    else {
        return Ok(None);
    };
    let location = RepositoryLocation::of(&repo.spec, &job.namespace().unwrap_or_default());
    let key = location.manifest_key(&job.spec.restore_point_id());
    let access = Access::new(repo.spec.access.as_ref(), &["repository", &repo.name_any()]);
    let aws = ctx.aws.scoped(&access).await;
    let listing = aws
        .repository()
        .list_prefix(bucket(&repo), &key, |k| k == key)
        .await;
    Ok(match listing {
        Ok(l) if l.kept.is_empty() => Some(NotLocated {
            reason: FailureReason::RestorePointNotFound,
            message: format!(
                "restore point {} is not in BackupRepository {:?} (no s3://{}/{key}); pick one that `kubectl get restorepoints` lists",
                job.spec.restore_point_id(),
                repo.name_any(),
                repo.spec.bucket
            ),
        }),
        Ok(_) => None,
        Err(e) => not_checkable(e)?,
    })
}

/// Mode `full`: the zone the restored instance goes to must offer its type.
async fn instance_type(
    job: &RestoreJob,
    config: &WorkerConfiguration,
    ctx: &Context,
) -> Result<Option<NotLocated>> {
    let (RestoreMode::Full, Some(wanted)) = (job.spec.mode, job.spec.instance_type.as_ref()) else {
        return Ok(None);
    };
    let first_subnet_zone = config
        .status
        .as_ref()
        .and_then(|s| s.subnets.first())
        .and_then(|s| s.availability_zone.clone());
    let Some(zone) = job.spec.availability_zone.clone().or(first_subnet_zone) else {
        return Ok(None);
    };
    let access = Access::new(config.spec.worker_access(), &[&config.name_any()]);
    let aws = ctx.aws.scoped(&access).await;
    let types = std::slice::from_ref(wanted);
    let offered = match aws
        .network()
        .offered_in_zone(&config.spec.region, &zone, types)
        .await
    {
        Ok(offered) => offered,
        Err(e) => return not_checkable(e),
    };
    Ok((!offered.contains(wanted)).then(|| NotLocated {
        reason: FailureReason::InstanceTypeNotOffered,
        message: format!(
            "{zone} does not offer instance type {wanted} for the restored instance; choose another spec.instanceType (or spec.availabilityZone)"
        ),
    }))
}

/// Mode `fileLevel` with `restoreFilesTo`: its bucket must exist.
async fn restore_target(job: &RestoreJob, ctx: &Context) -> Result<Option<NotLocated>> {
    let Some(to) = &job.spec.restore_files_to else {
        return Ok(None);
    };
    let Some(repo) = repository(ctx, &to.repository_ref.name) else {
        return Ok(None);
    };
    let access = Access::new(repo.spec.access.as_ref(), &["repository", &repo.name_any()]);
    let aws = ctx.aws.scoped(&access).await;
    match aws.repository().head_bucket(bucket(&repo)).await {
        Ok(()) => Ok(None),
        Err(e) if is_missing_bucket(&e) => Ok(Some(NotLocated {
            reason: FailureReason::RestoreTargetMissing,
            message: format!(
                "bucket {} of BackupRepository {:?} (spec.restoreFilesTo) does not exist, or is not account {}'s, or the controller may not list it ({e}); ask an admin to fix that repository (its Ready condition says more) or restore files to another one",
                repo.spec.bucket,
                repo.name_any(),
                repo.spec.expected_bucket_owner
            ),
        })),
        Err(e) => not_checkable(e),
    }
}

/// HeadBucket's answer for a bucket that is not there, or not there for
/// us: S3 answers 404 for a missing bucket, and 403 for one of another
/// owner than `ExpectedBucketOwner` or that the caller may not list (which
/// the BackupRepository's own check already needs); HeadBucket has no body,
/// so the answer has only its status code.
/// <https://docs.aws.amazon.com/AmazonS3/latest/API/API_HeadBucket.html>
fn is_missing_bucket(e: &AwsError) -> bool {
    matches!(
        e.code(),
        Some("NotFound" | "NoSuchBucket" | "Http404" | "Forbidden" | "AccessDenied" | "Http403")
    )
}

/// A check whose call failed: a transient failure is retried; any other
/// (a denial, say) does not hold the launch, the worker meets it itself.
fn not_checkable<T>(e: AwsError) -> Result<Option<T>> {
    if e.is_transient() {
        return Err(e.into());
    }
    tracing::warn!(error = %e, "a pre-launch check could not be made");
    Ok(None)
}
