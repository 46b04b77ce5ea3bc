//! The controller's part of a restore onto the source instance: whether a
//! session may offer it (checked before anything is staged), sending the
//! command once the worker staged a request, following it to its end,
//! and clearing the staging folder. What happened is the worker's
//! `originalLocation` status, an Event, and `answer.json` in the request's
//! folder (which the session's page reads).

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use sha2::{Digest, Sha256};
use tracing::warn;

use super::{Entry, Outcome, Plan, What, command};
use crate::api::{
    OriginalLocationPhase as Phase, OriginalLocationStatus, RestoreJob, RestoreWorkerStatus,
    WorkerConfiguration,
};
use crate::aws::AwsClients;
use crate::aws::run_command::{Command, Invocation};
use crate::controller::job::job_access;
use crate::controller::{Context, Error, Result, events};
use crate::messages::{OriginalLocationTask, OriginalRequest, StagedManifest};
use crate::mover::manifest::RepositoryLocation;

/// The tag an instance's owner sets to let restores onto it (the command
/// runs as root there); the controller's IAM policy requires it too.
pub const ACCEPTS_TAG: (&str, &str) = ("tender.dev/restore-to-original-location", "allowed");
/// How long Run Command may wait to deliver the command.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(600);
/// How often a command is looked at while it runs.
pub const RECHECK: Duration = Duration::from_secs(3);

/// The instance a job's restore point was taken of: `<job>/i-…`.
fn source_instance(job: &RestoreJob) -> Option<String> {
    let id = job.spec.restore_point_id();
    let resource = id.rsplit('/').next()?;
    resource.starts_with("i-").then(|| resource.to_string())
}

/// The job's staging folder in its repository.
fn staging(job: &RestoreJob, ctx: &Context) -> Result<RepositoryLocation> {
    let name = job
        .spec
        .repository_ref
        .as_ref()
        .ok_or(Error::MissingObjectKey("spec.repositoryRef"))?;
    let repository =
        ctx.repositories
            .get(&ObjectRef::new(&name.name))
            .ok_or(Error::MissingObjectKey(
                "the BackupRepository of spec.repositoryRef",
            ))?;
    Ok(RepositoryLocation::staging(
        &repository.spec,
        &job.namespace().unwrap_or_default(),
        &job.uid().unwrap_or_default(),
    ))
}

/// What a restored file's name gets when the name is taken and kept:
/// `.restored-<backup job>`.
fn suffix(job: &RestoreJob) -> String {
    let id = job.spec.restore_point_id();
    let backup: String = id
        .split('/')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
        .take(80)
        .collect();
    format!(".restored-{backup}")
}

/// The session's task, when the job asks for restores onto the source
/// instance: where to stage, or why it cannot (no SSM Agent, not tagged,
/// not running, not an instance's restore point). Checked before the
/// session starts, so that nothing is staged for an instance that cannot
/// run the command; an unavailable restore is an Event and the worker's
/// status too.
pub async fn task(
    job: &RestoreJob,
    config: &WorkerConfiguration,
    worker: &mut RestoreWorkerStatus,
    ctx: &Context,
) -> Result<Option<OriginalLocationTask>> {
    if !job.spec.restore_to_original_location {
        return Ok(None);
    }
    let instance = source_instance(job);
    let unavailable = match &instance {
        None => Some(format!(
            "restore point {} is not of an instance: there is no instance to restore files onto",
            job.spec.restore_point_id()
        )),
        Some(id) => {
            let access = worker
                .access
                .as_ref()
                .or(config.spec.production_account.as_ref());
            let aws = ctx.aws.scoped(&job_access(job, access)).await;
            why_not(&aws, &job.spec.region, id).await
        }
    };
    let instance_id = instance.unwrap_or_default();
    let mut status = OriginalLocationStatus {
        phase: Phase::Available,
        instance_id: instance_id.clone(),
        request: None,
        message: None,
        overwrite: false,
        filesystem_uuid: None,
        manifest_sha256: None,
        files: 0,
        bytes: 0,
        command_id: None,
        restored: None,
        kept_beside: None,
        overwritten: None,
        unchanged: None,
        failed: None,
        sent_time: None,
        completion_time: None,
        staged: false,
    };
    if let Some(why) = &unavailable {
        status.phase = Phase::Unavailable;
        status.message = Some(why.clone());
        ctx.event(
            job,
            EventType::Warning,
            events::ORIGINAL_LOCATION_UNAVAILABLE,
            "CheckSourceInstance",
            format!("files cannot be restored onto {instance_id}: {why}"),
        )
        .await;
    }
    worker.original_location = Some(status);
    Ok(Some(OriginalLocationTask {
        instance_id,
        staging: unavailable
            .is_none()
            .then(|| staging(job, ctx))
            .transpose()?,
        unavailable,
        suffix: suffix(job),
    }))
}

/// Why `instance_id` cannot take a restore now, if it cannot.
async fn why_not(aws: &AwsClients, region: &str, instance_id: &str) -> Option<String> {
    let described = aws
        .instances()
        .describe_source_instance(region, instance_id)
        .await;
    match described {
        Err(e) => return Some(format!("it could not be described: {e}")),
        Ok(None) => {
            return Some(format!(
                "it is not running in {region} (stopped, terminated, or not there)"
            ));
        }
        Ok(Some(found)) => {
            let (key, value) = ACCEPTS_TAG;
            if found.tags.get(key).map(String::as_str) != Some(value) {
                return Some(format!(
                    "it does not carry the tag {key}={value}, which its owner sets to let Tender's restores in (the command runs as root there)"
                ));
            }
        }
    }
    match aws.run_command().managed_node(region, instance_id).await {
        Err(e) => Some(format!("Systems Manager could not be asked about it: {e}")),
        Ok(None) => Some(
            "no SSM Agent has registered it with Systems Manager (the agent is not running, the instance profile lacks AmazonSSMManagedInstanceCore, or there is no route to the ssm, ssmmessages and ec2messages endpoints)".into(),
        ),
        Ok(Some(node)) if !node.online() => Some(format!(
            "its SSM Agent is {} (last heard {}): Run Command cannot reach it",
            node.ping,
            node.last_ping.as_deref().unwrap_or("never")
        )),
        Ok(Some(node)) if node.windows() => Some(
            "it runs Windows, and restores onto Windows instances are not supported yet: download the files instead".into(),
        ),
        Ok(Some(_)) => None,
    }
}

/// A staged request the worker reported, as the status records it; `None`
/// when it is not well formed (the request is then not followed).
pub fn staged(
    worker: &RestoreWorkerStatus,
    request: &OriginalRequest,
) -> Option<OriginalLocationStatus> {
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    };
    if !hex(&request.request, 16) || !hex(&request.manifest_sha256, 64) {
        warn!(
            request = request.request,
            "a session reported a malformed request"
        );
        return None;
    }
    let known = worker.original_location.as_ref()?;
    // One request at a time: a new one while the last is staged or sent
    // is not followed (the session refuses it; only a worker that does
    // not would send it).
    let busy = matches!(
        known.phase,
        Phase::Staged | Phase::Pending | Phase::InProgress | Phase::Delayed
    );
    if known.phase == Phase::Unavailable
        || busy
        || known.request.as_deref() == Some(request.request.as_str())
    {
        return None;
    }
    Some(OriginalLocationStatus {
        phase: Phase::Staged,
        request: Some(request.request.clone()),
        message: Some(format!(
            "{} file(s) staged; sending the command to {}",
            request.files, known.instance_id
        )),
        overwrite: request.overwrite,
        manifest_sha256: Some(request.manifest_sha256.clone()),
        files: request.files.min(i64::MAX as u64) as i64,
        bytes: request.bytes.min(i64::MAX as u64) as i64,
        staged: true,
        ..base(known)
    })
}

/// A fresh status for the instance of `known`.
fn base(known: &OriginalLocationStatus) -> OriginalLocationStatus {
    OriginalLocationStatus {
        phase: Phase::Available,
        instance_id: known.instance_id.clone(),
        request: None,
        message: None,
        overwrite: false,
        filesystem_uuid: None,
        manifest_sha256: None,
        files: 0,
        bytes: 0,
        command_id: None,
        restored: None,
        kept_beside: None,
        overwritten: None,
        unchanged: None,
        failed: None,
        sent_time: None,
        completion_time: None,
        staged: false,
    }
}

/// Whether a worker's restore still needs the controller to look again
/// soon (sent and not finished, or staged and not sent).
pub fn in_flight(worker: &RestoreWorkerStatus) -> bool {
    worker.original_location.as_ref().is_some_and(|o| {
        matches!(
            o.phase,
            Phase::Staged | Phase::Pending | Phase::InProgress | Phase::Delayed
        ) || (o.staged && worker.phase.is_finished())
    })
}

/// Moves every worker's restore on: sends what was staged, follows what
/// was sent, clears the staging folder once the session ended.
pub async fn advance(
    job: &RestoreJob,
    workers: &mut [RestoreWorkerStatus],
    ctx: &Context,
    now: Timestamp,
) -> Result<()> {
    for w in workers.iter_mut() {
        let Some(o) = w.original_location.clone() else {
            continue;
        };
        if !in_flight(w) {
            continue;
        }
        let folder = staging(job, ctx)?;
        let aws = ctx.aws.scoped(&job_access(job, w.access.as_ref())).await;
        let next = match o.phase {
            Phase::Staged => send(job, &o, &folder, &aws, ctx, now).await,
            Phase::Pending | Phase::InProgress | Phase::Delayed => {
                follow(job, &o, &folder, &aws, ctx, now).await
            }
            _ if o.staged && w.phase.is_finished() => {
                // The session ended: its requests' answers go too.
                match clear(ctx, &folder, &folder.prefix, None).await {
                    Ok(()) => OriginalLocationStatus {
                        staged: false,
                        ..o.clone()
                    },
                    Err(e) => {
                        warn!(error = %e, "could not clear the staging folder; trying again");
                        o.clone()
                    }
                }
            }
            _ => o.clone(),
        };
        if next != o {
            if next.phase != o.phase {
                tell(job, &next, &folder, ctx).await;
            }
            w.original_location = Some(next);
        }
    }
    Ok(())
}

/// Writes `answer.json` for the session's page and, for the ends, an
/// Event.
async fn tell(
    job: &RestoreJob,
    o: &OriginalLocationStatus,
    folder: &RepositoryLocation,
    ctx: &Context,
) {
    let request = o.request.clone().unwrap_or_default();
    let message = o.message.clone().unwrap_or_default();
    let event = match o.phase {
        Phase::Pending => Some((EventType::Normal, events::ORIGINAL_LOCATION_COMMAND_SENT)),
        Phase::Succeeded => Some((
            EventType::Normal,
            events::FILES_RESTORED_TO_ORIGINAL_LOCATION,
        )),
        Phase::Failed | Phase::TimedOut | Phase::Cancelled => {
            Some((EventType::Warning, events::ORIGINAL_LOCATION_RESTORE_FAILED))
        }
        _ => None,
    };
    if let Some((type_, reason)) = event {
        let note = format!("request {request} onto {}: {message}", o.instance_id);
        ctx.event(job, type_, reason, "RestoreToOriginalLocation", note)
            .await;
    }
    let Ok(body) = serde_json::to_vec(o) else {
        return;
    };
    let key = format!("{}{request}/answer.json", folder.prefix);
    let put = ctx
        .aws
        .repository()
        .put_object(folder, &key, body, "application/json")
        .await;
    if let Err(e) = put {
        warn!(request, error = %e, "could not write the answer for the session's page");
    }
}

/// The request `o`, failed with `message`; its staged files removed.
async fn failed(
    o: &OriginalLocationStatus,
    folder: &RepositoryLocation,
    ctx: &Context,
    now: Timestamp,
    message: String,
) -> OriginalLocationStatus {
    let request = o.request.clone().unwrap_or_default();
    let prefix = format!("{}{request}/", folder.prefix);
    let kept = clear(ctx, folder, &prefix, Some("answer.json")).await;
    if let Err(e) = kept {
        warn!(request, error = %e, "could not remove the staged files");
    }
    OriginalLocationStatus {
        phase: Phase::Failed,
        message: Some(message),
        completion_time: Some(Time(now)),
        ..o.clone()
    }
}

/// Sends the command for a staged request.
async fn send(
    job: &RestoreJob,
    o: &OriginalLocationStatus,
    folder: &RepositoryLocation,
    aws: &AwsClients,
    ctx: &Context,
    now: Timestamp,
) -> OriginalLocationStatus {
    let request = o.request.clone().unwrap_or_default();
    let prefix = format!("{}{request}/", folder.prefix);
    let manifest = match staged_manifest(ctx, folder, &prefix, o).await {
        Ok(m) => m,
        Err(why) => return failed(o, folder, ctx, now, why).await,
    };
    let execution = 60 + o.bytes.max(0) as u64 / (5 << 20);
    let execution = Duration::from_secs(execution.min(3600));
    let lifetime = DELIVERY_TIMEOUT + execution;
    let mut entries = Vec::new();
    for e in &manifest.entries {
        let what = match &e.file {
            None => What::Folder,
            Some(f) => {
                let key = format!("{prefix}files/{}", f.index);
                let url = match ctx
                    .aws
                    .repository()
                    .presigned_get(folder, &key, lifetime)
                    .await
                {
                    Ok(url) => url,
                    Err(e) => {
                        return failed(
                            o,
                            folder,
                            ctx,
                            now,
                            format!("could not presign {key}: {e}"),
                        )
                        .await;
                    }
                };
                What::File {
                    sha256: f.sha256.clone(),
                    size: f.size,
                    url,
                }
            }
        };
        entries.push(Entry {
            path: e.path.clone(),
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
            what,
        });
    }
    let plan = Plan {
        filesystem_uuid: manifest.filesystem_uuid.clone(),
        suffix: suffix(job),
        overwrite: manifest.overwrite,
        entries,
    };
    let text = match plan.render() {
        Ok((text, _)) => text,
        Err(why) => {
            let why = format!("the staged request cannot be restored: {why}");
            return failed(o, folder, ctx, now, why).await;
        }
    };
    let plan_sha256 = hex::encode(Sha256::digest(text.as_bytes()));
    let plan_key = format!("{prefix}plan");
    let repository = ctx.aws.repository();
    let put = repository
        .put_object(folder, &plan_key, text.into_bytes(), "text/plain")
        .await;
    let plan_url = match put {
        Ok(()) => repository.presigned_get(folder, &plan_key, lifetime).await,
        Err(e) => Err(e),
    };
    let script = plan_url
        .map_err(|e| format!("could not stage the plan: {e}"))
        .and_then(|url| command(&request, &url, &plan_sha256));
    let script = match script {
        Ok(s) => s,
        Err(why) => return failed(o, folder, ctx, now, why).await,
    };
    let comment: String = format!(
        "tender {}/{} {request}",
        job.namespace().unwrap_or_default(),
        job.name_any()
    )
    .chars()
    .take(100)
    .collect();
    let sent = aws
        .run_command()
        .send(
            &job.spec.region,
            &Command {
                instance_id: &o.instance_id,
                windows: false,
                script: &script,
                comment: &comment,
                delivery_timeout_seconds: DELIVERY_TIMEOUT.as_secs() as i32,
                execution_timeout_seconds: execution.as_secs() as u32,
            },
        )
        .await;
    match sent {
        Ok(command_id) => OriginalLocationStatus {
            phase: Phase::Pending,
            message: Some(format!(
                "sent to {} as Run Command command {command_id}; waiting for its SSM Agent",
                o.instance_id
            )),
            filesystem_uuid: Some(manifest.filesystem_uuid),
            command_id: Some(command_id),
            sent_time: Some(Time(now)),
            ..o.clone()
        },
        Err(e) => {
            let why = match e.code() {
                Some("InvalidInstanceId") => format!(
                    "Run Command refused {}: its SSM Agent is no longer reachable ({e})",
                    o.instance_id
                ),
                Some("AccessDeniedException") => format!(
                    "Tender may not run commands on {}: the instance must carry the tag {}={} and the controller's role the SSM statements of iam/controller-policy.json ({e})",
                    o.instance_id, ACCEPTS_TAG.0, ACCEPTS_TAG.1
                ),
                _ => format!("could not send the command: {e}"),
            };
            failed(o, folder, ctx, now, why).await
        }
    }
}

/// The request's `manifest.json`, checked against the digest the worker
/// reported.
async fn staged_manifest(
    ctx: &Context,
    folder: &RepositoryLocation,
    prefix: &str,
    o: &OriginalLocationStatus,
) -> std::result::Result<StagedManifest, String> {
    let key = format!("{prefix}manifest.json");
    let body = match ctx.aws.repository().get_object(folder, &key).await {
        Ok(Some(body)) => body,
        Ok(None) => return Err(format!("the staged request's list {key} is missing")),
        Err(e) => return Err(format!("could not read {key}: {e}")),
    };
    if Some(hex::encode(Sha256::digest(&body))) != o.manifest_sha256 {
        return Err(format!(
            "{key} is not the list the session staged (its SHA-256 differs)"
        ));
    }
    let manifest: StagedManifest =
        serde_json::from_slice(&body).map_err(|e| format!("{key} cannot be read: {e}"))?;
    if Some(manifest.request.as_str()) != o.request.as_deref() {
        return Err(format!("{key} is of another request"));
    }
    Ok(manifest)
}

/// The paths of a staged request's plan by index, in the order
/// [`Plan::render`] gives them: folders, then files, each by path.
fn plan_paths(manifest: &StagedManifest) -> Vec<String> {
    let mut entries: Vec<(bool, &str)> = manifest
        .entries
        .iter()
        .map(|e| (e.file.is_some(), e.path.as_str()))
        .collect();
    entries.sort();
    entries.into_iter().map(|(_, p)| p.to_string()).collect()
}

/// Follows a sent command.
async fn follow(
    job: &RestoreJob,
    o: &OriginalLocationStatus,
    folder: &RepositoryLocation,
    aws: &AwsClients,
    ctx: &Context,
    now: Timestamp,
) -> OriginalLocationStatus {
    let (Some(command_id), Some(sent)) = (&o.command_id, &o.sent_time) else {
        return failed(o, folder, ctx, now, "the command was not recorded".into()).await;
    };
    let seen = aws
        .run_command()
        .invocation(&job.spec.region, command_id, &o.instance_id)
        .await;
    let waited = Duration::try_from(now.duration_since(sent.0)).unwrap_or_default();
    let (status, details, stdout, stderr) = match seen {
        Err(e) => {
            warn!(command_id, error = %e, "could not look at the command");
            return o.clone();
        }
        Ok(Invocation::NotYet) if waited < DELIVERY_TIMEOUT + Duration::from_secs(60) => {
            return o.clone();
        }
        Ok(Invocation::NotYet) => {
            let why = format!(
                "Run Command never showed command {command_id} on {}",
                o.instance_id
            );
            return failed(o, folder, ctx, now, why).await;
        }
        Ok(Invocation::Seen {
            status,
            details,
            stdout,
            stderr,
            ..
        }) => (status, details, stdout, stderr),
    };
    let phase = match status.as_str() {
        "Pending" => Phase::Pending,
        "InProgress" | "Cancelling" => Phase::InProgress,
        "Delayed" => Phase::Delayed,
        "Success" => Phase::Succeeded,
        "Cancelled" => Phase::Cancelled,
        "TimedOut" => Phase::TimedOut,
        _ => Phase::Failed,
    };
    if !phase.is_finished() {
        return OriginalLocationStatus {
            phase,
            message: Some(format!("Run Command: {status} ({details})")),
            ..o.clone()
        };
    }
    let outcome = Outcome::parse(&stdout);
    let request = o.request.clone().unwrap_or_default();
    let prefix = format!("{}{request}/", folder.prefix);
    // The plan's entries by index, to name what was not restored.
    let paths = match staged_manifest(ctx, folder, &prefix, o).await {
        Ok(manifest) => plan_paths(&manifest),
        Err(_) => Vec::new(),
    };
    let count = |n: u64| Some(n.min(i64::MAX as u64) as i64);
    let mut message = format!(
        "{status} ({details}): {} restored, {} kept beside, {} replaced, {} already there, {} not restored",
        outcome.restored, outcome.beside, outcome.overwritten, outcome.unchanged, outcome.failed
    );
    if let Some(error) = &outcome.error {
        message.push_str(&format!("; {error}"));
    }
    let problems: Vec<String> = outcome
        .listed
        .iter()
        .filter(|(_, what)| what.starts_with("failed") || what.starts_with("refused"))
        .take(5)
        .map(|(index, what)| match paths.get(*index) {
            Some(path) => format!("{path}: {what}"),
            None => format!("entry {index}: {what}"),
        })
        .collect();
    if !problems.is_empty() {
        message.push_str(&format!("; {}", problems.join(", ")));
    }
    if phase != Phase::Succeeded
        && let Some(line) = stderr.lines().find(|l| !l.trim().is_empty())
    {
        message.push_str(&format!(
            "; stderr: {}",
            line.chars().take(300).collect::<String>()
        ));
    }
    let phase = if phase == Phase::Succeeded && (outcome.failed > 0 || outcome.error.is_some()) {
        Phase::Failed
    } else {
        phase
    };
    if let Err(e) = clear(ctx, folder, &prefix, Some("answer.json")).await {
        warn!(request, error = %e, "could not remove the staged files");
    }
    OriginalLocationStatus {
        phase,
        message: Some(message),
        restored: count(outcome.restored),
        kept_beside: count(outcome.beside),
        overwritten: count(outcome.overwritten),
        unchanged: count(outcome.unchanged),
        failed: count(outcome.failed),
        completion_time: Some(Time(now)),
        ..o.clone()
    }
}

/// Deletes every object under `prefix` of `folder`, but the one named
/// `keep` (directly under it).
async fn clear(
    ctx: &Context,
    folder: &RepositoryLocation,
    prefix: &str,
    keep: Option<&str>,
) -> std::result::Result<(), crate::aws::AwsError> {
    let repository = ctx.aws.repository();
    let mut after: Option<String> = None;
    loop {
        let (objects, more) = repository
            .list_page(folder, prefix, after.as_deref())
            .await?;
        let keys: Vec<String> = objects
            .iter()
            .map(|(k, _, _)| k.clone())
            .filter(|k| keep.is_none_or(|name| k.strip_prefix(prefix) != Some(name)))
            .collect();
        repository.delete_objects(folder, &keys).await?;
        after = objects.last().map(|(k, _, _)| k.clone());
        if !more || after.is_none() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod flow_tests {
    use super::*;

    fn worker(phase: Phase, request: Option<&str>) -> RestoreWorkerStatus {
        RestoreWorkerStatus {
            original_location: Some(OriginalLocationStatus {
                phase,
                request: request.map(String::from),
                ..base_of("i-0abc")
            }),
            ..RestoreWorkerStatus::default()
        }
    }

    fn base_of(instance: &str) -> OriginalLocationStatus {
        serde_json::from_value(serde_json::json!({"phase": "Available", "instanceId": instance}))
            .expect("a status")
    }

    fn request(id: &str, digest: &str) -> OriginalRequest {
        OriginalRequest {
            request: id.into(),
            manifest_sha256: digest.into(),
            files: 3,
            bytes: 10,
            overwrite: true,
        }
    }

    #[test]
    fn a_reported_request_is_followed_once_and_only_when_well_formed() {
        let digest = "a".repeat(64);
        let id = "0123456789abcdef";
        let got = staged(&worker(Phase::Available, None), &request(id, &digest))
            .expect("a new request is followed");
        assert_eq!(
            (
                got.phase,
                got.request.as_deref(),
                got.files,
                got.overwrite,
                got.staged
            ),
            (Phase::Staged, Some(id), 3, true, true)
        );
        assert_eq!(got.instance_id, "i-0abc");
        // The same request again (a later report): already followed.
        assert_eq!(
            staged(&worker(Phase::Pending, Some(id)), &request(id, &digest)),
            None
        );
        // Nor a second one while the first is under way.
        assert_eq!(
            staged(
                &worker(Phase::Pending, Some("fedcba9876543210")),
                &request(id, &digest)
            ),
            None
        );
        // A new one after the last finished.
        assert!(
            staged(
                &worker(Phase::Succeeded, Some("fedcba9876543210")),
                &request(id, &digest)
            )
            .is_some()
        );
        // Never where the session was told restores are unavailable, nor
        // for a worker without the offer.
        assert_eq!(
            staged(&worker(Phase::Unavailable, None), &request(id, &digest)),
            None
        );
        assert_eq!(
            staged(&RestoreWorkerStatus::default(), &request(id, &digest)),
            None
        );
        for (bad_id, bad_digest) in [
            ("0123456789ABCDEF", digest.as_str()),
            ("../../x", digest.as_str()),
            ("0123456789abcde", digest.as_str()),
            (id, "zz"),
        ] {
            assert_eq!(
                staged(
                    &worker(Phase::Available, None),
                    &request(bad_id, bad_digest)
                ),
                None,
                "{bad_id} {bad_digest}"
            );
        }
    }

    #[test]
    fn what_was_not_restored_is_named_by_the_plans_order() {
        use crate::messages::{StagedEntry, StagedFile};
        let entry = |path: &str, file: Option<usize>| StagedEntry {
            path: path.into(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1,
            file: file.map(|index| StagedFile {
                index,
                size: 1,
                sha256: "a".repeat(64),
            }),
        };
        let manifest = StagedManifest {
            request: "0123456789abcdef".into(),
            filesystem_uuid: "6a1f0c2e-7d4b-4e3a-9c5f-0b8d2e1a4c77".into(),
            overwrite: false,
            entries: vec![
                entry("srv", None),
                entry("srv/b", Some(0)),
                entry("etc/a", Some(1)),
                entry("etc", None),
                entry("srv/a", Some(2)),
            ],
        };
        let plan = Plan {
            filesystem_uuid: manifest.filesystem_uuid.clone(),
            suffix: ".restored-nightly".into(),
            overwrite: false,
            entries: manifest
                .entries
                .iter()
                .map(|e| Entry {
                    path: e.path.clone(),
                    mode: e.mode,
                    uid: e.uid,
                    gid: e.gid,
                    mtime: e.mtime,
                    what: match &e.file {
                        None => What::Folder,
                        Some(f) => What::File {
                            sha256: f.sha256.clone(),
                            size: f.size,
                            url: "https://bucket.s3.amazonaws.com/k?X-Amz-Signature=ab".into(),
                        },
                    },
                })
                .collect(),
        };
        let (_, by_index) = plan.render().expect("a plan");
        assert_eq!(plan_paths(&manifest), by_index);
    }

    #[test]
    fn the_job_waits_while_a_command_is_under_way_or_its_files_are_staged() {
        for (phase, finished_worker, waits) in [
            (Phase::Available, false, false),
            (Phase::Staged, false, true),
            (Phase::Pending, false, true),
            (Phase::InProgress, true, true),
            (Phase::Delayed, false, true),
            (Phase::Succeeded, false, false),
            (Phase::Failed, false, false),
        ] {
            let mut w = worker(phase, Some("0123456789abcdef"));
            if finished_worker {
                w.phase = crate::api::Phase::Succeeded;
            }
            assert_eq!(in_flight(&w), waits, "{phase:?}");
        }
        // The session ended with answers still staged: cleared first.
        let mut w = worker(Phase::Succeeded, Some("0123456789abcdef"));
        if let Some(o) = w.original_location.as_mut() {
            o.staged = true;
        }
        assert!(!in_flight(&w));
        w.phase = crate::api::Phase::Succeeded;
        assert!(in_flight(&w));
    }
}
