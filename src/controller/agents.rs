//! The worker agent, delivered by the controller: workers boot a stock
//! image (by default the region's Amazon Linux 2023), and their user data
//! downloads the agent that this controller publishes.
//!
//! The controller's image carries one compressed static `tender` per
//! architecture (`<agents-dir>/tender-worker-<arch>.gz`, built by
//! `scripts/build-agents`). At start it hashes them; before a launch it
//! makes sure the repository bucket holds the one the worker needs under
//! a content-addressed key (`<prefix>.tender-agents/sha256/<hex>.gz`),
//! checked by the SHA-256 that S3 itself computed on upload, and puts into
//! the user data a short-lived presigned GET URL and the SHA-256, which the
//! user data checks before it runs anything.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::api::{AccountAccess, Architecture, WorkerConfiguration};
use crate::aws::accounts::Access;
use crate::aws::{AwsClients, AwsError};
use crate::controller::Context;
use crate::controller::job::core::Problem;
use crate::mover::manifest::RepositoryLocation;
use crate::reasons::BlockedReason;
pub use crate::user_data::AgentDownload;

/// How long a presigned agent URL works: the boot timeout's maximum (one
/// hour) would do, but a URL is a bearer credential; a worker that boots
/// later than this fails with `WorkerBootTimeout`, and its retry gets a
/// new URL.
pub const URL_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// How long a publication is trusted before the next launch checks the
/// object again (a HEAD): a replaced object is found within this time, and
/// at once after a worker of it failed to boot ([`AgentStore::forget`]).
const RECHECK_AFTER: Duration = Duration::from_secs(10 * 60);

/// The file name of an architecture's agent in the agents directory.
pub fn file_name(arch: Architecture) -> String {
    format!("tender-worker-{}.gz", arch.as_str())
}

/// One agent this controller can deliver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    pub path: PathBuf,
    /// SHA-256 of the compressed file, hex.
    pub sha256: String,
    pub size: u64,
}

impl Artifact {
    /// Its key in a repository: content-addressed, next to the
    /// repository's objects (not inside a namespace's part of it).
    pub fn key(&self, repository_prefix: &str) -> String {
        let prefix = repository_prefix.trim_end_matches('/');
        let dot = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        format!("{dot}.tender-agents/sha256/{}.gz", self.sha256)
    }

    fn sha256_b64(&self) -> String {
        let bytes = hex::decode(&self.sha256).unwrap_or_default();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }
}

/// The agents this controller carries, and where it has published them.
#[derive(Debug, Default)]
pub struct AgentStore {
    artifacts: BTreeMap<Architecture, Artifact>,
    /// (bucket, key) → when its object was last seen right.
    published: Mutex<HashMap<(String, String), Instant>>,
}

impl AgentStore {
    /// Hashes the agents found in `dir`; an architecture without one can
    /// only run images that carry `tender` themselves.
    pub fn load(dir: &Path) -> std::io::Result<Self> {
        let mut artifacts = BTreeMap::new();
        for arch in Architecture::ALL {
            let path = dir.join(file_name(arch));
            match std::fs::File::open(&path) {
                Ok(file) => {
                    let (sha256, size) = hash(file)?;
                    info!(path = %path.display(), sha256, size, "worker agent available");
                    artifacts.insert(arch, Artifact { path, sha256, size });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    warn!(path = %path.display(), "no {arch} worker agent: {arch} workers need an image that carries tender {}", env!("CARGO_PKG_VERSION"));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Self {
            artifacts,
            published: Mutex::default(),
        })
    }

    pub fn artifact(&self, arch: Architecture) -> Option<&Artifact> {
        self.artifacts.get(&arch)
    }

    /// Makes sure `repository` holds the agent for `arch` (uploading it when
    /// the object is missing or its SHA-256 is not the agent's) and returns
    /// a presigned URL for it; `None` when this controller has no agent for
    /// `arch`. `aws` acts as the repository's access.
    pub async fn deliver(
        &self,
        aws: &AwsClients,
        repository: &RepositoryLocation,
        arch: Architecture,
    ) -> Result<Option<AgentDownload>, AwsError> {
        let Some(artifact) = self.artifact(arch) else {
            return Ok(None);
        };
        let key = artifact.key(&repository.prefix);
        let id = (repository.bucket.clone(), key.clone());
        let fresh = self
            .lock()
            .get(&id)
            .is_some_and(|at| at.elapsed() < RECHECK_AFTER);
        if !fresh {
            let repo = aws.repository();
            let expected = artifact.sha256_b64();
            let held = repo.object_sha256(repository, &key).await?;
            if held.as_deref() != Some(expected.as_str()) {
                info!(
                    bucket = repository.bucket,
                    key, "publishing the {arch} worker agent"
                );
                repo.put_file(repository, &key, &artifact.path, &expected)
                    .await?;
            }
            self.lock().insert(id, Instant::now());
        }
        let url = aws
            .repository()
            .presigned_get(repository, &key, URL_LIFETIME)
            .await?;
        Ok(Some(AgentDownload {
            url,
            sha256: artifact.sha256.clone(),
        }))
    }

    /// Checks the published objects again at the next launch (a worker
    /// did not boot: its agent may have been replaced).
    pub fn forget(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Instant>> {
        self.published.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The repository a job's workers use, as the agent's delivery needs it.
#[derive(Clone, Debug)]
pub struct AgentSource {
    /// The BackupRepository's name (the session name of its access).
    pub name: String,
    /// The repository's own location (not a namespace's part of it).
    pub location: RepositoryLocation,
    /// How the controller reaches the bucket.
    pub access: Option<AccountAccess>,
}

/// The agent download for the next workers of `config`, publishing the
/// agent to `source` if needed; `Ok(None)` when the workers' image is to
/// run its own `tender`. `Err` is why workers cannot be launched now.
pub async fn for_launch(
    ctx: &Context,
    config: &WorkerConfiguration,
    source: &AgentSource,
) -> Result<Option<AgentDownload>, Problem> {
    let arch = config.spec.architecture;
    let access = Access::new(source.access.as_ref(), &["repository", &source.name]);
    let aws = ctx.aws.scoped(&access).await;
    let stock_image = config.spec.image_id.is_none() && config.spec.image_ssm_parameter.is_none();
    match ctx.agents.deliver(&aws, &source.location, arch).await {
        Ok(Some(download)) => Ok(Some(download)),
        Ok(None) if stock_image => Err(Problem {
            reason: BlockedReason::AgentUnavailable,
            message: format!(
                "this controller carries no {arch} worker agent ({}) and the workers boot the stock Amazon Linux 2023, which has no tender: run the controller from its image (it carries both architectures), or set spec.imageId of WorkerConfiguration {:?} to an image that carries tender {}",
                file_name(arch),
                kube::ResourceExt::name_any(config),
                env!("CARGO_PKG_VERSION")
            ),
        }),
        Ok(None) => Ok(None),
        Err(e) => {
            let bucket = &source.location.bucket;
            let prefix = source.location.prefix.trim_end_matches('/');
            let keys = if prefix.is_empty() {
                ".tender-agents/*".to_string()
            } else {
                format!("{prefix}/.tender-agents/*")
            };
            Err(Problem {
                reason: BlockedReason::AgentUnavailable,
                message: format!(
                    "cannot publish the {arch} worker agent to s3://{bucket}: {e}; the controller needs s3:GetObject and s3:PutObject on arn:aws:s3:::{bucket}/{keys} (statement PublishWorkerAgents of iam/controller-policy.json)"
                ),
            })
        }
    }
}

/// SHA-256 (hex) and size of everything `r` yields.
fn hash(mut r: impl Read) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_are_found_by_architecture_and_hashed() {
        let dir = std::env::temp_dir().join(format!("tender-agents-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tender-worker-x86_64.gz"), b"abc").unwrap();
        let store = AgentStore::load(&dir).unwrap();
        let x86 = store.artifact(Architecture::X86_64).unwrap();
        assert_eq!(
            x86.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(x86.size, 3);
        assert_eq!(
            x86.sha256_b64(),
            "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
        );
        assert!(store.artifact(Architecture::Arm64).is_none());
        assert_eq!(
            x86.key("team-a/"),
            format!("team-a/.tender-agents/sha256/{}.gz", x86.sha256)
        );
        assert_eq!(
            x86.key(""),
            format!(".tender-agents/sha256/{}.gz", x86.sha256)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
