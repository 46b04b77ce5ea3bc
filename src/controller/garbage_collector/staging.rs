//! The sweep of staging folders: what file-level sessions staged for
//! restores onto their source instances (`<prefix>_staging/<cluster>/
//! <namespace>/<job UID>/` in each BackupRepository). A job clears its own
//! folder when its command ends and when its session ends; a folder whose
//! RestoreJob is gone (deleted mid-request) or finished without clearing
//! it is deleted here once nothing in it changed for the grace period (a
//! command may still be fetching its files). Only this cluster's folders
//! are listed.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use tracing::{info, warn};

use crate::api::BackupRepository;
use crate::aws::accounts::Access;
use crate::controller::Context;
use crate::controller::job::status::baseline;
use crate::mover::manifest::RepositoryLocation;

/// Why a staging folder is a leftover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeftoverReason {
    /// No RestoreJob with its namespace and UID exists.
    OwnerGone,
    /// Its job finished without clearing it.
    OwnerFinished,
}

/// One job's staging folder: its keys, and when the newest changed.
#[derive(Debug, Default)]
struct Folder {
    keys: Vec<String>,
    newest: Option<Timestamp>,
}

/// The namespace and job UID of a key under a cluster's staging root
/// (`<namespace>/<uid>/...`, relative to it).
fn owner_of(relative: &str) -> Option<(&str, &str)> {
    let mut parts = relative.splitn(3, '/');
    let ns = parts.next().filter(|p| !p.is_empty())?;
    let uid = parts.next().filter(|p| !p.is_empty())?;
    parts.next()?;
    Some((ns, uid))
}

/// Judges a folder by its owner: `None` when the job that the folder is
/// named by is gone, else whether it finished.
pub fn leftover_reason(owner_finished: Option<bool>) -> Option<LeftoverReason> {
    match owner_finished {
        None => Some(LeftoverReason::OwnerGone),
        Some(true) => Some(LeftoverReason::OwnerFinished),
        Some(false) => None,
    }
}

/// Whether the RestoreJob of `namespace` with `uid` exists, and if so
/// whether it finished.
fn owner_finished(ctx: &Context, namespace: &str, uid: &str) -> Option<bool> {
    ctx.restores
        .state()
        .into_iter()
        .find(|j| j.namespace().as_deref() == Some(namespace) && j.uid().as_deref() == Some(uid))
        .map(|j| {
            baseline(&*j, ctx)
                .map(|s| s.phase.is_finished())
                .unwrap_or(false)
        })
}

/// Deletes this cluster's leftover staging folders in every repository;
/// returns how many objects.
pub(super) async fn sweep(ctx: &Context, grace: Duration) -> usize {
    let mut deleted = 0;
    for repository in ctx.repositories.state() {
        deleted += sweep_repository(ctx, &repository, grace).await;
    }
    deleted
}

async fn sweep_repository(ctx: &Context, repository: &BackupRepository, grace: Duration) -> usize {
    let root = RepositoryLocation::staging_root(&repository.spec, &ctx.cluster_id);
    let access = Access::new(
        repository.spec.access.as_ref(),
        &["repository", &repository.name_any()],
    );
    let aws = ctx.aws.scoped(&access).await;
    let s3 = aws.repository();
    let mut folders: BTreeMap<(String, String), Folder> = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = s3.list_page(&root, &root.prefix, after.as_deref()).await;
        let (objects, more) = match page {
            Ok(page) => page,
            Err(e) => {
                warn!(repository = repository.name_any(), error = %e, "garbage collection: could not list the staging folder");
                return 0;
            }
        };
        for (key, _, modified) in &objects {
            let Some((ns, uid)) = key.strip_prefix(root.prefix.as_str()).and_then(owner_of) else {
                continue;
            };
            if ctx.namespace.as_deref().is_some_and(|mine| mine != ns) {
                continue; // another controller's namespace
            }
            let folder = folders
                .entry((ns.to_string(), uid.to_string()))
                .or_default();
            folder.keys.push(key.clone());
            folder.newest = folder.newest.max(Some(*modified));
        }
        after = objects.last().map(|(k, _, _)| k.clone());
        if !more || after.is_none() {
            break;
        }
    }
    let now = Timestamp::now();
    let mut deleted = 0;
    for ((ns, uid), folder) in folders {
        let quiet = folder
            .newest
            .is_some_and(|t| now.duration_since(t).as_secs() >= grace.as_secs() as i64);
        if !quiet {
            continue;
        }
        let Some(reason) = leftover_reason(owner_finished(ctx, &ns, &uid)) else {
            continue;
        };
        for keys in folder.keys.chunks(1000) {
            match s3.delete_objects(&root, keys).await {
                Ok(()) => deleted += keys.len(),
                Err(e) => {
                    warn!(namespace = ns, job_uid = uid, error = %e, "could not delete a leftover staging folder");
                    break;
                }
            }
        }
        info!(
            repository = repository.name_any(),
            namespace = ns,
            job_uid = uid,
            reason = ?reason,
            objects = folder.keys.len(),
            "deleted a leftover staging folder"
        );
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_named_by_its_namespace_and_job() {
        assert_eq!(
            owner_of("team-a/6f1c-uid/0123456789abcdef/files/0"),
            Some(("team-a", "6f1c-uid"))
        );
        assert_eq!(
            owner_of("team-a/6f1c-uid/answer.json"),
            Some(("team-a", "6f1c-uid"))
        );
        for odd in ["team-a", "team-a/uid", "/uid/x", "team-a//x", ""] {
            assert_eq!(owner_of(odd), None, "{odd}");
        }
    }

    #[test]
    fn only_folders_of_gone_or_finished_jobs_are_leftovers() {
        assert_eq!(leftover_reason(None), Some(LeftoverReason::OwnerGone));
        assert_eq!(
            leftover_reason(Some(true)),
            Some(LeftoverReason::OwnerFinished)
        );
        assert_eq!(leftover_reason(Some(false)), None);
    }
}
