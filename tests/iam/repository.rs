//! The repository in the policies: placeholders an admin replaces
//! (`iam/README.md`), and a sample repository that replaces them, with the
//! keys the code's own layout (`RepositoryLocation`) gives its objects.

use tender::api::BackupRepositorySpec;
use tender::mover::manifest::RepositoryLocation;

use crate::policy::{self, Policy};
use crate::{ACCOUNT, REGION};

/// The bucket's name.
pub const BUCKET: &str = "REPOSITORY_BUCKET";
/// `spec.prefix` ending in `/`, or nothing when the repository has none.
pub const PREFIX: &str = "REPOSITORY_PREFIX";
/// `spec.expectedBucketOwner`.
pub const OWNER: &str = "REPOSITORY_ACCOUNT";

/// A sample repository for the placeholders: bucket, prefix, owner.
pub struct Sample {
    pub spec: BackupRepositorySpec,
    /// What an admin puts for `REPOSITORY_PREFIX`: the prefix, ending in `/`.
    pub prefix: &'static str,
}

impl Sample {
    pub fn new(prefix: &'static str) -> Sample {
        let spec = serde_json::from_value(serde_json::json!({
            "bucket": "acme-backups",
            "prefix": prefix,
            "region": REGION,
            "expectedBucketOwner": ACCOUNT,
        }))
        .unwrap();
        Sample { spec, prefix }
    }

    /// The policy in `iam/<file>`, with this repository for the
    /// placeholders.
    pub fn load(&self, file: &'static str) -> Policy {
        policy::load_with(
            file,
            &[
                (BUCKET, self.spec.bucket.as_str()),
                (PREFIX, self.prefix),
                (OWNER, self.spec.expected_bucket_owner.as_str()),
            ],
        )
    }

    pub fn object(&self, key: &str) -> String {
        format!("arn:aws:s3:::{}/{key}", self.spec.bucket)
    }
}

/// The keys of one namespace's restore points, as the code names them.
pub struct Keys {
    pub chunk: String,
    pub manifest: String,
    pub latest: String,
    pub restored: String,
    /// A garbage collection run's marker.
    pub marker: String,
    /// A request staged for the original location: a file, its list, the
    /// controller's plan and answer.
    pub staged_file: String,
    pub staged_manifest: String,
    pub staged_plan: String,
    pub staged_answer: String,
}

pub fn keys(sample: &Sample) -> Keys {
    let ns = RepositoryLocation::of(&sample.spec, "team-a");
    let restored = RepositoryLocation::restored_files(&sample.spec, "team-a", "restore-1", "etc");
    let staging = RepositoryLocation::staging(&sample.spec, "cluster-1", "team-a", "6f1c2d3e-uid");
    Keys {
        chunk: ns.chunk_key(&"ab".repeat(32)),
        manifest: ns.manifest_key("weekly/i-0123456789abcdef0"),
        latest: ns.latest_key(REGION, "i-0123456789abcdef0"),
        restored: format!("{}passwd", restored.prefix),
        marker: format!("{}20261201T000000Z-0123/marker", ns.condemned_prefix()),
        staged_file: format!("{}0123456789abcdef/files/0", staging.prefix),
        staged_manifest: format!("{}0123456789abcdef/manifest.json", staging.prefix),
        staged_plan: format!("{}0123456789abcdef/plan", staging.prefix),
        staged_answer: format!("{}0123456789abcdef/answer.json", staging.prefix),
    }
}
