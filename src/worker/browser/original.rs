//! "Restore to the original location": the selected files and folders of
//! one filesystem are staged in the repository (`files/<index>` and
//! `manifest.json` under the request's folder of the task's staging
//! location) and the request is reported to the controller, which sends
//! the Run Command command onto the source instance and writes what
//! happened to `answer.json` there. The request's page follows it.
//!
//! One request runs at a time per session. Nothing is staged when the
//! session was told restores there are unavailable (no reachable SSM
//! Agent, ...): the page says why instead of offering the button.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::http::header::LOCATION;
use axum::response::IntoResponse;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::disk::Volume;
use super::pages::{self, Problem};
use super::restore::selected_paths;
use super::routes::{Answer, Browser, on_fs, refused, server_error};
use super::selection::{self, Owner, select};
use super::session::Activity;
use crate::api::{OriginalLocationPhase, OriginalLocationStatus};
use crate::aws::AwsClients;
use crate::messages::{
    OriginalLocationTask, OriginalRequest, StagedEntry, StagedFile, StagedManifest,
};
use crate::mover::manifest::RepositoryLocation;

/// The session's restores onto the source instance.
pub(super) struct OriginalTarget {
    pub aws: AwsClients,
    pub task: OriginalLocationTask,
    /// Where staged requests are reported (to the controller).
    pub report: mpsc::UnboundedSender<OriginalRequest>,
    pub requests: Mutex<Requests>,
}

impl OriginalTarget {
    pub(super) fn new(
        aws: AwsClients,
        task: OriginalLocationTask,
        report: mpsc::UnboundedSender<OriginalRequest>,
    ) -> Self {
        Self {
            aws,
            task,
            report,
            requests: Mutex::new(Requests::default()),
        }
    }

    fn requests(&self) -> std::sync::MutexGuard<'_, Requests> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the page offers: the instance, and why restores there cannot
    /// be made when they cannot.
    pub(super) fn offer(&self) -> pages::OriginalOffer {
        pages::OriginalOffer {
            instance_id: self.task.instance_id.clone(),
            unavailable: self.task.unavailable.clone(),
            suffix: self.task.suffix.clone(),
        }
    }
}

/// The session's requests, by ID.
#[derive(Default)]
pub(super) struct Requests {
    by_id: HashMap<String, Local>,
    /// The request not finished yet.
    active: Option<String>,
}

/// Where a request is, as this worker knows it.
#[derive(Clone, Debug)]
enum Local {
    Staging {
        staged: usize,
        files: usize,
    },
    /// Staging failed: nothing was reported, nothing runs.
    Failed(String),
    /// Staged and reported; the controller's answer says the rest.
    Reported {
        files: usize,
        bytes: u64,
        overwrite: bool,
        answer: Option<Box<OriginalLocationStatus>>,
    },
}

/// A request's files to stage: (index, path in the session, size).
type ToStage = Vec<(usize, String, u64)>;

/// `POST /original` (form fields `path`, and `overwrite=on` to replace
/// existing files): stages the selection and answers with its page.
pub(super) async fn request(
    State(browser): State<Browser>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Answer {
    let Some(target) = browser.original.clone() else {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "this RestoreJob does not restore files to the original location: create one with spec.restoreToOriginalLocation: true",
        ));
    };
    let staging = match (&target.task.staging, &target.task.unavailable) {
        (Some(staging), None) => staging.clone(),
        (_, why) => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                format!(
                    "files cannot be restored onto {}: {}",
                    target.task.instance_id,
                    why.as_deref()
                        .unwrap_or("the session has no staging location")
                ),
            ));
        }
    };
    let overwrite = fields.iter().any(|(k, v)| k == "overwrite" && v == "on");
    let selected = selected_paths(fields)?;
    if let Some(active) = target.requests().active.clone() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!(
                "a restore onto {} is under way: wait until it finished (/original/{active})",
                target.task.instance_id
            ),
        ));
    }
    let volume = browser.volume.clone();
    let (manifest, files) = on_fs(&browser.volume, move |fs| {
        plan(volume.as_ref(), fs, &selected, overwrite)
    })
    .await?;
    let id = request_id().map_err(server_error)?;
    {
        let mut requests = target.requests();
        if let Some(active) = &requests.active {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                format!("a restore is under way: /original/{active}"),
            ));
        }
        requests.active = Some(id.clone());
        requests.by_id.insert(
            id.clone(),
            Local::Staging {
                staged: 0,
                files: files.len(),
            },
        );
    }
    let manifest = StagedManifest {
        request: id.clone(),
        ..manifest
    };
    tokio::spawn(stage(
        browser.volume.clone(),
        target,
        browser.activity.clone(),
        staging,
        manifest,
        files,
    ));
    Ok((
        StatusCode::SEE_OTHER,
        [(LOCATION, format!("/original/{id}"))],
    )
        .into_response())
}

/// What to stage: the manifest (without its request ID) and the files.
/// Everything selected must be in one filesystem, which the instance can
/// find by its UUID.
fn plan(
    volume: &dyn Volume,
    fs: &dyn super::filesystem::Filesystem,
    selected: &[(String, String)],
    overwrite: bool,
) -> Result<(StagedManifest, ToStage), Problem> {
    let bad = |m: String| Problem::new(StatusCode::BAD_REQUEST, m);
    let (root, found) = volume
        .filesystem_of(&selected[0].0)
        .map_err(|e| bad(e.to_string()))?;
    for (path, _) in &selected[1..] {
        let (other, _) = volume.filesystem_of(path).map_err(bad)?;
        if other != root {
            return Err(bad(format!(
                "{path} is not in the same filesystem as {}: restore the files of one partition at a time",
                selected[0].0
            )));
        }
    }
    if found.fs == "NTFS" {
        return Err(bad(
            "files of an NTFS filesystem cannot be restored onto a Windows instance yet: download them instead".into(),
        ));
    }
    let Some(uuid) = found.uuid.clone() else {
        return Err(bad(format!(
            "Tender cannot read the UUID of the {} filesystem at {root}, which is how the instance finds it: download the files instead",
            found.fs
        )));
    };
    let relative = |path: &str| -> String {
        path.strip_prefix(root.as_str())
            .unwrap_or(path)
            .trim_start_matches('/')
            .to_string()
    };
    let selection = select(fs, selected, &selection::RESTORE).map_err(refused)?;
    let mut entries: Vec<StagedEntry> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    // The folders a selected path is in come first, so that the instance
    // can make those it lacks as they were.
    for (path, _) in selected {
        let mut above = String::new();
        let inside = relative(path);
        let parts: Vec<&str> = inside.split('/').filter(|p| !p.is_empty()).collect();
        for part in parts.iter().take(parts.len().saturating_sub(1)) {
            above = if above.is_empty() {
                part.to_string()
            } else {
                format!("{above}/{part}")
            };
            if !seen.insert(above.clone()) {
                continue;
            }
            let shown = format!("{}/{above}", root.trim_end_matches('/'));
            let meta = fs
                .metadata(shown.as_str())
                .map_err(|e| Problem::new(StatusCode::NOT_FOUND, format!("{shown}: {e}")))?;
            entries.push(entry(&above, Owner::of(&meta), None));
        }
    }
    let mut files = Vec::new();
    for e in &selection.entries {
        let path = relative(&e.path);
        if path.is_empty() || !seen.insert(path.clone()) {
            continue;
        }
        let file = e.file.map(|f| {
            files.push((files.len(), e.path.clone(), f.size));
            StagedFile {
                index: files.len() - 1,
                size: f.size,
                sha256: String::new(),
            }
        });
        entries.push(entry(&path, e.owner, file));
    }
    if files.is_empty() {
        return Err(bad(
            "the selection holds no regular file (symbolic links, devices and partitions Tender cannot read are left out): select files or folders that hold some".into(),
        ));
    }
    Ok((
        StagedManifest {
            request: String::new(),
            filesystem_uuid: uuid,
            overwrite,
            entries,
        },
        files,
    ))
}

fn entry(path: &str, owner: Owner, file: Option<StagedFile>) -> StagedEntry {
    StagedEntry {
        path: path.to_string(),
        mode: owner.mode & 0o7777,
        uid: owner.uid,
        gid: owner.gid,
        mtime: owner.mtime,
        file,
    }
}

/// 8 random bytes, hex.
fn request_id() -> Result<String, String> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness from the OS: {e}"))?;
    Ok(hex::encode(bytes))
}

/// Stages the request's files and manifest, then reports it.
async fn stage(
    volume: Arc<dyn Volume>,
    target: Arc<OriginalTarget>,
    activity: Activity,
    staging: RepositoryLocation,
    mut manifest: StagedManifest,
    files: ToStage,
) {
    let id = manifest.request.clone();
    let total = files.len();
    let staged = stage_files(&volume, &target, &activity, &staging, &mut manifest, files).await;
    let reported = match staged {
        Ok(bytes) => put_manifest(&target, &staging, &manifest, bytes).await,
        Err(e) => Err(e),
    };
    let mut requests = target.requests();
    match reported {
        Ok(bytes) => {
            info!(
                request = id,
                files = total,
                "staged files for the original location"
            );
            requests.by_id.insert(
                id,
                Local::Reported {
                    files: total,
                    bytes,
                    overwrite: manifest.overwrite,
                    answer: None,
                },
            );
        }
        Err(e) => {
            warn!(request = id, error = %e, "staging for the original location failed");
            requests.by_id.insert(id, Local::Failed(e));
            requests.active = None;
        }
    }
}

/// Reads the files one after the other on a blocking thread while the
/// previous one is uploaded, recording each one's SHA-256; the bytes
/// staged.
async fn stage_files(
    volume: &Arc<dyn Volume>,
    target: &OriginalTarget,
    activity: &Activity,
    staging: &RepositoryLocation,
    manifest: &mut StagedManifest,
    files: ToStage,
) -> Result<u64, String> {
    let id = manifest.request.clone();
    let total = files.len();
    let (tx, mut rx) = mpsc::channel::<Result<(usize, Vec<u8>), String>>(1);
    let reader = volume.clone();
    tokio::task::spawn_blocking(move || {
        let fs = match reader.open() {
            Ok(fs) => fs,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        for (index, path, size) in files {
            let read = fs
                .read_file(path.as_str(), size)
                .map_err(|e| format!("{path}: {e}"));
            if tx.blocking_send(read.map(|data| (index, data))).is_err() {
                return;
            }
        }
    });
    let mut done = 0;
    let mut bytes = 0;
    while let Some(read) = rx.recv().await {
        let (index, data) = read?;
        let sha256 = hex::encode(Sha256::digest(&data));
        let size = data.len() as u64;
        let key = format!("{}{id}/files/{index}", staging.prefix);
        target
            .aws
            .repository()
            .put_object(staging, &key, data, "application/octet-stream")
            .await
            .map_err(|e| format!("staged {done} of {total} files; the next failed: {e}"))?;
        if let Some(file) = manifest
            .entries
            .iter_mut()
            .filter_map(|e| e.file.as_mut())
            .find(|f| f.index == index)
        {
            file.sha256 = sha256;
            file.size = size;
        }
        done += 1;
        bytes += size;
        activity.touch();
        if let Some(Local::Staging { staged, .. }) = target.requests().by_id.get_mut(&id) {
            *staged = done;
        }
    }
    if done < total {
        return Err(format!(
            "staged {done} of {total} files; reading the next one stopped"
        ));
    }
    Ok(bytes)
}

/// Writes the manifest and reports the request; the bytes staged.
async fn put_manifest(
    target: &OriginalTarget,
    staging: &RepositoryLocation,
    manifest: &StagedManifest,
    bytes: u64,
) -> Result<u64, String> {
    let body = serde_json::to_vec(manifest).map_err(|e| e.to_string())?;
    let manifest_sha256 = hex::encode(Sha256::digest(&body));
    let key = format!("{}{}/manifest.json", staging.prefix, manifest.request);
    target
        .aws
        .repository()
        .put_object(staging, &key, body, "application/json")
        .await
        .map_err(|e| format!("the files are staged, but their list could not be: {e}"))?;
    let files = manifest.entries.iter().filter(|e| e.file.is_some()).count();
    target
        .report
        .send(OriginalRequest {
            request: manifest.request.clone(),
            manifest_sha256,
            files: files as u64,
            bytes,
            overwrite: manifest.overwrite,
        })
        .map_err(|_| "the session is ending: the request could not be reported".to_string())?;
    Ok(bytes)
}

/// `GET /original/<id>`: where the request is; the page reloads itself
/// until it finished.
pub(super) async fn follow(State(browser): State<Browser>, Path(id): Path<String>) -> Answer {
    let not_found = || {
        Problem::new(
            StatusCode::NOT_FOUND,
            format!("no request {id} in this session"),
        )
    };
    let Some(target) = browser.original.clone() else {
        return Err(not_found());
    };
    let known = target.requests().by_id.get(&id).cloned();
    let local = known.ok_or_else(not_found)?;
    let instance = target.task.instance_id.clone();
    let view = match local {
        Local::Staging { staged, files } => pages::OriginalView {
            state: format!("Staging: {staged} of {files} files staged"),
            lines: vec![],
            finished: false,
        },
        Local::Failed(why) => pages::OriginalView {
            state: "Failed".into(),
            lines: vec![why],
            finished: true,
        },
        Local::Reported {
            files,
            bytes,
            overwrite,
            answer,
        } => {
            let answer = match answer {
                Some(done) => Some(*done),
                None => read_answer(&target, &id).await,
            };
            view_of(&target, &id, files, bytes, overwrite, answer)
        }
    };
    Ok(pages::original(&instance, &id, view))
}

/// The controller's answer, once there is one (kept once it finished).
async fn read_answer(target: &OriginalTarget, id: &str) -> Option<OriginalLocationStatus> {
    let staging = target.task.staging.as_ref()?;
    let key = format!("{}{id}/answer.json", staging.prefix);
    let read = target.aws.repository().get_object(staging, &key).await;
    let body = match read {
        Ok(Some(body)) => body,
        Ok(None) => return None,
        Err(e) => {
            warn!(request = id, error = %e, "could not read the controller's answer");
            return None;
        }
    };
    let answer: OriginalLocationStatus = serde_json::from_slice(&body).ok()?;
    if answer.request.as_deref() != Some(id) {
        return None;
    }
    if answer.phase.is_finished() {
        let mut requests = target.requests();
        if let Some(Local::Reported { answer: kept, .. }) = requests.by_id.get_mut(id) {
            *kept = Some(Box::new(answer.clone()));
        }
        if requests.active.as_deref() == Some(id) {
            requests.active = None;
        }
    }
    Some(answer)
}

fn view_of(
    target: &OriginalTarget,
    id: &str,
    files: usize,
    bytes: u64,
    overwrite: bool,
    answer: Option<OriginalLocationStatus>,
) -> pages::OriginalView {
    let mut lines = vec![format!(
        "{files} file(s), {bytes} bytes; existing files are {}",
        if overwrite {
            "replaced".to_string()
        } else {
            format!(
                "kept (the restored copy goes beside, ending in {})",
                target.task.suffix
            )
        }
    )];
    let Some(answer) = answer else {
        return pages::OriginalView {
            state: "Staged: waiting for the controller to send the command".into(),
            lines,
            finished: false,
        };
    };
    let _ = id;
    let counts = [
        ("restored", answer.restored),
        ("kept beside", answer.kept_beside),
        ("replaced", answer.overwritten),
        ("already there", answer.unchanged),
        ("not restored", answer.failed),
    ];
    if counts.iter().any(|(_, n)| n.is_some()) {
        lines.push(
            counts
                .iter()
                .map(|(what, n)| format!("{what}: {}", n.unwrap_or(0)))
                .collect::<Vec<_>>()
                .join(" · "),
        );
    }
    if let Some(command) = &answer.command_id {
        lines.push(format!("Run Command command {command}"));
    }
    if let Some(message) = &answer.message {
        lines.push(message.clone());
    }
    let state = match answer.phase {
        OriginalLocationPhase::InProgress => "In progress".to_string(),
        OriginalLocationPhase::TimedOut => "Timed out".to_string(),
        phase => format!("{phase:?}"),
    };
    pages::OriginalView {
        state,
        lines,
        finished: answer.phase.is_finished(),
    }
}
