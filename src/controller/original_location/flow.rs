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
use crate::aws::accounts::Access;
use crate::aws::run_command::{Command, Invocation};
use crate::controller::job::job_access;
use crate::controller::{Context, Error, Result, events};
use crate::messages::{OriginalLocationTask, OriginalRequest, StagedFile, StagedManifest};
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

/// The clients and places one job's restores use: the production
/// account's (the instance, Run Command), the repository's (its access
/// role: staging, presigning), and the job's staging folder.
struct Clients {
    production: AwsClients,
    repository: AwsClients,
    folder: RepositoryLocation,
    /// The job's namespace's part of the repository (its restore points).
    restore_points: RepositoryLocation,
}

async fn clients(job: &RestoreJob, config: &WorkerConfiguration, ctx: &Context) -> Result<Clients> {
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
    let namespace = job.namespace().unwrap_or_default();
    let access = Access::new(
        repository.spec.access.as_ref(),
        &["repository", &repository.name_any()],
    );
    Ok(Clients {
        production: ctx
            .aws
            .scoped(&job_access(job, config.spec.production_account.as_ref()))
            .await,
        repository: ctx.aws.scoped(&access).await,
        folder: RepositoryLocation::staging(
            &repository.spec,
            &ctx.cluster_id,
            &namespace,
            &job.uid().unwrap_or_default(),
        ),
        restore_points: RepositoryLocation::of(&repository.spec, &namespace),
    })
}

/// What a restored file's name gets when the name is taken and kept:
/// `.restored-<backup job>`, the job's name without dots (so that it never
/// ends like a configuration file; the command adds `~`, which loaders of
/// `*.d` folders skip).
fn suffix(job: &RestoreJob) -> String {
    let id = job.spec.restore_point_id();
    let backup: String = id
        .split('/')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(80)
        .collect();
    format!(".restored-{backup}")
}

/// The session's task, when the job asks for restores onto the source
/// instance: where to stage, or why it cannot (not an instance's restore
/// point, not running, not admitted by the configuration's
/// `allowedSources`, not tagged, no SSM Agent online, Windows). Checked
/// before the session starts, so that nothing is staged for an instance
/// that cannot run the command; an unavailable restore is an Event and the
/// worker's status too. A worker launched again while a request is staged
/// or sent keeps following it.
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
    let clients = clients(job, config, ctx).await?;
    let mut volume = None;
    let unavailable = match &instance {
        None => Some(format!(
            "restore point {} is not of an instance: there is no instance to restore files onto",
            job.spec.restore_point_id()
        )),
        Some(id) => match why_not(&clients.production, config, &job.spec.region, id).await {
            Some(why) => Some(why),
            None => match browsed_volume(job, &clients).await {
                Ok(found) => {
                    volume = Some(found);
                    None
                }
                Err(why) => Some(why),
            },
        },
    };
    let instance_id = instance.unwrap_or_default();
    let earlier = worker
        .original_location
        .take()
        .filter(|o| o.instance_id == instance_id && (o.staged || is_under_way(o.phase)));
    let mut status = match earlier {
        Some(kept) => kept,
        None => OriginalLocationStatus {
            volume_id: volume.clone(),
            ..fresh(&instance_id)
        },
    };
    if let Some(why) = &unavailable {
        if !is_under_way(status.phase) {
            status.phase = Phase::Unavailable;
            status.message = Some(why.clone());
        }
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
        staging: unavailable.is_none().then_some(clients.folder),
        unavailable,
        suffix: format!("{}~", suffix(job)),
    }))
}

/// The EBS volume whose restore point the session browses (the job's
/// `device`, else the first), from the restore point's manifest, verified
/// with the repository's integrity key: the command writes only onto the
/// filesystem of that volume.
async fn browsed_volume(
    job: &RestoreJob,
    clients: &Clients,
) -> std::result::Result<String, String> {
    let id = job.spec.restore_point_id();
    let manifest = crate::mover::load_manifest(&clients.repository, &clients.restore_points, &id)
        .await
        .map_err(|e| format!("restore point {id} could not be read: {e}"))?;
    let volume = match job.spec.device.as_deref() {
        Some(device) => manifest
            .volumes
            .iter()
            .find(|v| v.device.as_deref() == Some(device)),
        None => manifest.volumes.first(),
    };
    volume
        .and_then(|v| v.volume_id.clone())
        .filter(|v| v.starts_with("vol-") && v[4..].chars().all(|c| c.is_ascii_hexdigit()))
        .ok_or_else(|| {
            format!("restore point {id} does not record which EBS volume it was taken of, which is how the instance finds where to write")
        })
}

/// Why `instance_id` cannot take a restore now, if it cannot.
async fn why_not(
    aws: &AwsClients,
    config: &WorkerConfiguration,
    region: &str,
    instance_id: &str,
) -> Option<String> {
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
            if let Err(tag) = config.spec.allowed_sources.admits_tags(&found.tags) {
                return Some(format!(
                    "WorkerConfiguration {:?} does not admit it any more (spec.allowedSources: it does not carry tag {tag})",
                    config.name_any()
                ));
            }
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

/// Whether a request is staged or sent and not finished.
fn is_under_way(phase: Phase) -> bool {
    matches!(
        phase,
        Phase::Staged | Phase::Pending | Phase::InProgress | Phase::Delayed
    )
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
    if known.phase == Phase::Unavailable
        || is_under_way(known.phase)
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
        volume_id: known.volume_id.clone(),
        ..fresh(&known.instance_id)
    })
}

/// A status with nothing requested yet, for `instance_id`.
fn fresh(instance_id: &str) -> OriginalLocationStatus {
    OriginalLocationStatus {
        phase: Phase::Available,
        instance_id: instance_id.to_string(),
        volume_id: None,
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
    worker
        .original_location
        .as_ref()
        .is_some_and(|o| is_under_way(o.phase) || (o.staged && worker.phase.is_finished()))
}

/// Moves every worker's restore on: sends what was staged, follows what
/// was sent, clears the staging folder once the session ended. The page's
/// answer is written before a finished request's files are removed; when
/// it cannot be, the reconcile fails and the next one looks again.
pub async fn advance(
    job: &RestoreJob,
    config: &WorkerConfiguration,
    workers: &mut [RestoreWorkerStatus],
    ctx: &Context,
    now: Timestamp,
) -> Result<()> {
    for w in workers.iter_mut() {
        if !in_flight(w) {
            continue;
        }
        let Some(o) = w.original_location.clone() else {
            continue;
        };
        let c = clients(job, config, ctx).await?;
        let next = match o.phase {
            Phase::Staged => {
                match why_not(&c.production, config, &job.spec.region, &o.instance_id).await {
                    // What held when the session started may not any more.
                    Some(why) => failed(
                        &o,
                        now,
                        format!("files cannot be restored onto {}: {why}", o.instance_id),
                    ),
                    None => send(job, &o, &c, now).await,
                }
            }
            Phase::Pending | Phase::InProgress | Phase::Delayed => follow(job, &o, &c, now).await,
            _ => {
                // The session ended: its requests' answers go too.
                match clear(&c, &c.folder.prefix, None).await {
                    Ok(()) => OriginalLocationStatus {
                        staged: false,
                        ..o.clone()
                    },
                    // Not for ever: the garbage collector's sweep deletes
                    // what a finished job left.
                    Err(e) if ended_long_ago(w, now) => {
                        warn!(error = %e, "could not clear the staging folder; the sweep will");
                        OriginalLocationStatus {
                            staged: false,
                            ..o.clone()
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "could not clear the staging folder; trying again");
                        o.clone()
                    }
                }
            }
        };
        if next.phase != o.phase {
            tell(job, &next, &c, ctx).await?;
            // Not when Run Command did not answer whether it took the
            // command (sent, no command ID): it may yet run, and fetch them.
            let maybe_running = next.command_id.is_none() && next.sent_time.is_some();
            if next.phase.is_finished() && next.staged && !maybe_running {
                let prefix = request_prefix(&c, &next);
                if let Err(e) = clear(&c, &prefix, Some("answer.json")).await {
                    warn!(error = %e, "could not remove the staged files; they go when the session ends");
                }
            }
        }
        w.original_location = Some(next);
    }
    Ok(())
}

/// Whether the worker finished more than 10 minutes ago.
fn ended_long_ago(w: &RestoreWorkerStatus, now: Timestamp) -> bool {
    w.finished_time
        .as_ref()
        .is_some_and(|t| now.duration_since(t.0).as_secs() > 600)
}

/// The request's folder under the job's staging folder.
fn request_prefix(c: &Clients, o: &OriginalLocationStatus) -> String {
    format!(
        "{}{}/",
        c.folder.prefix,
        o.request.as_deref().unwrap_or_default()
    )
}

/// Writes `answer.json` for the session's page and, for the ends and the
/// sending, an Event. An answer that cannot be written is an error, except
/// for a sent command's (the next change writes it).
async fn tell(
    job: &RestoreJob,
    o: &OriginalLocationStatus,
    c: &Clients,
    ctx: &Context,
) -> Result<()> {
    let request = o.request.clone().unwrap_or_default();
    let body =
        serde_json::to_vec(o).map_err(|_| Error::MissingObjectKey("a serializable status"))?;
    let key = format!("{}answer.json", request_prefix(c, o));
    let put = c
        .repository
        .repository()
        .put_object(&c.folder, &key, body, "application/json")
        .await;
    match put {
        Ok(()) => {}
        Err(e) if o.phase == Phase::Pending => {
            warn!(request, error = %e, "could not write the answer for the session's page");
        }
        Err(e) => return Err(e.into()),
    }
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
    Ok(())
}

/// The request `o`, failed with `message` before anything ran.
fn failed(o: &OriginalLocationStatus, now: Timestamp, message: String) -> OriginalLocationStatus {
    OriginalLocationStatus {
        phase: Phase::Failed,
        message: Some(message),
        completion_time: Some(Time(now)),
        ..o.clone()
    }
}

/// The most a request may hold (as the browser's selection allows).
const MAX_ENTRIES: usize = 20_000;
const MAX_FILES: usize = 10_000;
const MAX_BYTES: u64 = 8 << 30;
const MAX_FILE_BYTES: u64 = 256 << 20;
/// The largest `manifest.json` read.
const MAX_MANIFEST_BYTES: u64 = 16 << 20;

/// How long the command may run: a minute, plus 5 MiB/s, plus 2 s a file
/// (each is fetched, checked and placed by its own processes); at most 6 h.
fn execution_timeout(o: &OriginalLocationStatus) -> Duration {
    let seconds = 60 + o.bytes.max(0) as u64 / (5 << 20) + 2 * o.files.max(0) as u64;
    Duration::from_secs(seconds.min(6 * 3600))
}

/// Sends the command for a staged request.
async fn send(
    job: &RestoreJob,
    o: &OriginalLocationStatus,
    c: &Clients,
    now: Timestamp,
) -> OriginalLocationStatus {
    let request = o.request.clone().unwrap_or_default();
    let prefix = request_prefix(c, o);
    let manifest = match staged_manifest(c, &prefix, o).await {
        Ok(m) => m,
        Err(why) => return failed(o, now, why),
    };
    let Some(volume) = o.volume_id.clone() else {
        return failed(
            o,
            now,
            "the session does not know which EBS volume it browses".into(),
        );
    };
    // What is sent follows the list, never the report.
    let files: Vec<&StagedFile> = manifest
        .entries
        .iter()
        .filter_map(|e| e.file.as_ref())
        .collect();
    let o = &OriginalLocationStatus {
        overwrite: manifest.overwrite,
        files: files.len() as i64,
        bytes: files.iter().map(|f| f.size).sum::<u64>() as i64,
        filesystem_uuid: Some(manifest.filesystem_uuid.clone()),
        ..o.clone()
    };
    let execution = execution_timeout(o);
    let lifetime = DELIVERY_TIMEOUT + execution;
    let repository = c.repository.repository();
    let mut entries = Vec::new();
    let mut set_id = 0;
    for e in &manifest.entries {
        let what = match &e.file {
            None => What::Folder,
            Some(f) => {
                let key = format!("{prefix}files/{}", f.index);
                let url = match repository.presigned_get(&c.folder, &key, lifetime).await {
                    Ok(url) => url,
                    Err(e) => return failed(o, now, format!("could not presign {key}: {e}")),
                };
                What::File {
                    sha256: f.sha256.clone(),
                    size: f.size,
                    url,
                }
            }
        };
        if e.mode & 0o6000 != 0 {
            set_id += 1;
        }
        entries.push(Entry {
            path: e.path.clone(),
            // Never set-user-ID or set-group-ID: what a restore point
            // holds is not trusted to run as its owner.
            mode: e.mode & 0o1777,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
            what,
        });
    }
    let plan = Plan {
        filesystem_uuid: manifest.filesystem_uuid.clone(),
        volume_id: volume,
        suffix: suffix(job),
        overwrite: manifest.overwrite,
        entries,
    };
    let text = match plan.render() {
        Ok((text, _)) => text,
        Err(why) => {
            return failed(
                o,
                now,
                format!("the staged request cannot be restored: {why}"),
            );
        }
    };
    let plan_sha256 = hex::encode(Sha256::digest(text.as_bytes()));
    let plan_key = format!("{prefix}plan");
    let put = repository
        .put_object(&c.folder, &plan_key, text.into_bytes(), "text/plain")
        .await;
    // The plan is fetched first thing; its URL (which Run Command keeps
    // with the command) lives no longer than the delivery can take.
    let plan_url = match put {
        Ok(()) => {
            repository
                .presigned_get(
                    &c.folder,
                    &plan_key,
                    DELIVERY_TIMEOUT + Duration::from_secs(120),
                )
                .await
        }
        Err(e) => Err(e),
    };
    let script = plan_url
        .map_err(|e| format!("could not stage the plan: {e}"))
        .and_then(|url| command(&request, &url, &plan_sha256));
    let script = match script {
        Ok(s) => s,
        Err(why) => return failed(o, now, why),
    };
    let comment: String = format!(
        "tender {}/{} {request}",
        job.namespace().unwrap_or_default(),
        job.name_any()
    )
    .chars()
    .take(100)
    .collect();
    let sent = c
        .production
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
    let mut note = String::new();
    if set_id > 0 {
        note = format!(
            "; {set_id} set-user-ID or set-group-ID bit(s) are not restored: set them again by hand where they belong"
        );
    }
    match sent {
        Ok(command_id) => OriginalLocationStatus {
            phase: Phase::Pending,
            message: Some(format!(
                "sent to {} as Run Command command {command_id}; waiting for its SSM Agent{note}",
                o.instance_id
            )),
            command_id: Some(command_id),
            sent_time: Some(Time(now)),
            ..o.clone()
        },
        Err(e) => {
            // A server error or no answer at all: it may have been taken.
            let ambiguous = matches!(
                e.code(),
                None | Some("InternalServerError" | "InternalFailure" | "ServiceUnavailable")
            );
            let why = match e.code().filter(|_| !ambiguous) {
                Some("InvalidInstanceId") => format!(
                    "Run Command refused {}: its SSM Agent is no longer reachable ({e})",
                    o.instance_id
                ),
                Some("AccessDeniedException") => format!(
                    "Tender may not run commands on {}: the instance must carry the tag {}={} and the production account's role the SSM statements of iam/controller-policy.json ({e})",
                    o.instance_id, ACCEPTS_TAG.0, ACCEPTS_TAG.1
                ),
                Some(_) => format!("Run Command refused the command: {e}"),
                // It may have been sent. It is not sent again (it runs as
                // root); its files stay staged until the session ends.
                None => format!(
                    "Run Command did not answer ({e}): the command may or may not run on {}; Tender does not send it again: look for \"{comment}\" in Run Command's history, and restore again if it is not there",
                    o.instance_id
                ),
            };
            OriginalLocationStatus {
                sent_time: ambiguous.then_some(Time(now)),
                ..failed(o, now, why)
            }
        }
    }
}

/// The request's `manifest.json`, checked against the digest the worker
/// reported and against the limits a request has.
async fn staged_manifest(
    c: &Clients,
    prefix: &str,
    o: &OriginalLocationStatus,
) -> std::result::Result<StagedManifest, String> {
    let key = format!("{prefix}manifest.json");
    let repository = c.repository.repository();
    let listed = repository
        .list_page(&c.folder, &key, None)
        .await
        .map_err(|e| format!("could not look for {key}: {e}"))?;
    match listed.0.iter().find(|(k, _, _)| *k == key) {
        None => return Err(format!("the staged request's list {key} is missing")),
        Some((_, size, _)) if *size > MAX_MANIFEST_BYTES => {
            return Err(format!(
                "{key} is {size} bytes, more than a request's list may be ({MAX_MANIFEST_BYTES})"
            ));
        }
        Some(_) => {}
    }
    let body = match repository.get_object(&c.folder, &key).await {
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
    let files: Vec<&StagedFile> = manifest
        .entries
        .iter()
        .filter_map(|e| e.file.as_ref())
        .collect();
    let bytes: u64 = files.iter().map(|f| f.size).fold(0, u64::saturating_add);
    if manifest.entries.len() > MAX_ENTRIES
        || files.len() > MAX_FILES
        || bytes > MAX_BYTES
        || files.iter().any(|f| f.size > MAX_FILE_BYTES)
    {
        return Err(format!(
            "the request holds more than one may ({MAX_FILES} files, {MAX_ENTRIES} entries, {MAX_BYTES} bytes, {MAX_FILE_BYTES} bytes a file)"
        ));
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

/// Follows a sent command; gives up once it is past its delivery and
/// execution time.
async fn follow(
    job: &RestoreJob,
    o: &OriginalLocationStatus,
    c: &Clients,
    now: Timestamp,
) -> OriginalLocationStatus {
    let (Some(command_id), Some(sent)) = (&o.command_id, &o.sent_time) else {
        return failed(o, now, "the command was not recorded".into());
    };
    let seen = c
        .production
        .run_command()
        .invocation(&job.spec.region, command_id, &o.instance_id)
        .await;
    let waited = Duration::try_from(now.duration_since(sent.0)).unwrap_or_default();
    let deadline = DELIVERY_TIMEOUT + execution_timeout(o) + Duration::from_secs(120);
    let given_up = || OriginalLocationStatus {
        phase: Phase::TimedOut,
        message: Some(format!(
            "Run Command said nothing of command {command_id} on {} within {} s: Tender stopped following it",
            o.instance_id,
            deadline.as_secs()
        )),
        completion_time: Some(Time(now)),
        ..o.clone()
    };
    let (status, details, stdout, stderr) = match seen {
        Err(_) | Ok(Invocation::NotYet) if waited > deadline => return given_up(),
        Err(e) => {
            warn!(command_id, error = %e, "could not look at the command");
            return o.clone();
        }
        Ok(Invocation::NotYet) => return o.clone(),
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
        if waited > deadline {
            return given_up();
        }
        return OriginalLocationStatus {
            phase,
            message: Some(format!("Run Command: {status} ({details})")),
            ..o.clone()
        };
    }
    let outcome = Outcome::parse(&stdout);
    // The plan's entries by index, to name what was not restored.
    let paths = match staged_manifest(c, &request_prefix(c, o), o).await {
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

/// Deletes every object under `prefix` of the staging folder, but the one
/// named `keep` (directly under it).
async fn clear(
    c: &Clients,
    prefix: &str,
    keep: Option<&str>,
) -> std::result::Result<(), crate::aws::AwsError> {
    let repository = c.repository.repository();
    let mut after: Option<String> = None;
    loop {
        let (objects, more) = repository
            .list_page(&c.folder, prefix, after.as_deref())
            .await?;
        let keys: Vec<String> = objects
            .iter()
            .map(|(k, _, _)| k.clone())
            .filter(|k| keep.is_none_or(|name| k.strip_prefix(prefix) != Some(name)))
            .collect();
        repository.delete_objects(&c.folder, &keys).await?;
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
            volume_id: "vol-0123456789abcdef0".into(),
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
