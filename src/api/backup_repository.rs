//! BackupRepository: where restore points live, declared by an admin.
//!
//! Cluster-scoped, like a StorageClass: an admin says which S3 bucket and
//! prefix, which account must own the bucket, how objects are encrypted,
//! and which namespaces' jobs may use it. Jobs name it in
//! `spec.repositoryRef`; each namespace's restore points (and chunks) live
//! under `<prefix><namespace>/`, so namespaces never see, overwrite or
//! collide with each other's. Every manifest and `latest` pointer in it is
//! authenticated with the KMS HMAC key `spec.integrity.macKeyId`.
// Clippy reads the `printcolumn(...)` entries of `#[kube]` as duplicated
// attributes; they are separate columns.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    ACCOUNT_ID_PATTERN, AccountAccess, BUCKET_PATTERN, KMS_KEY_PATTERN, PREFIX_PATTERN,
    REGION_PATTERN,
};

/// An S3 bucket (and prefix) that holds restore points, and the namespaces
/// whose jobs may write and read them.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tender.dev",
    version = "v1alpha1",
    kind = "BackupRepository",
    status = "BackupRepositoryStatus",
    shortname = "brepo",
    category = "tender",
    printcolumn(name = "Bucket", type_ = "string", json_path = ".spec.bucket"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "RestorePoints",
        type_ = "integer",
        json_path = ".status.restorePoints"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!self.prefix.contains('..') && !self.prefix.startsWith('/')",
     "message": "prefix may not contain '..' or start with '/'"},
    {"rule": "self.encryption.type == 'SSE-KMS' || !has(self.encryption.kmsKeyId)",
     "message": "encryption.kmsKeyId applies only to type SSE-KMS"},
    {"rule": "self.encryption.type != 'SSE-KMS' || has(self.encryption.kmsKeyId)",
     "message": "encryption type SSE-KMS needs kmsKeyId: the KMS key that encrypts the objects"},
    {"rule": "has(self.integrity)",
     "message": "integrity.macKeyId is required: a KMS key with KeySpec HMAC_256 and KeyUsage GENERATE_VERIFY_MAC that authenticates every manifest and latest pointer (aws kms create-key --key-spec HMAC_256 --key-usage GENERATE_VERIFY_MAC)"},
    {"rule": "self.bucket == oldSelf.bucket && self.prefix == oldSelf.prefix && self.region == oldSelf.region",
     "message": "bucket, prefix and region are immutable: restore points stay where they were written; create another BackupRepository instead"}
]))]
#[serde(rename_all = "camelCase")]
pub struct BackupRepositorySpec {
    /// Name of the S3 bucket, for example `acme-backups`.
    #[schemars(pattern(BUCKET_PATTERN), length(min = 3, max = 63))]
    pub bucket: String,
    /// Key prefix inside the bucket, for example `prod/` (default: none).
    /// Each namespace's restore points go under `<prefix><namespace>/`.
    #[serde(default)]
    #[schemars(pattern(PREFIX_PATTERN), length(max = 256))]
    pub prefix: String,
    /// Region of the bucket, for example `eu-west-1`.
    #[schemars(pattern(REGION_PATTERN), length(max = 32))]
    pub region: String,
    /// The AWS account that must own the bucket (12 digits). Every S3 call
    /// carries it (`ExpectedBucketOwner`), so backups never go to a bucket
    /// of the same name that someone else owns.
    #[schemars(pattern(ACCOUNT_ID_PATTERN))]
    pub expected_bucket_owner: String,
    /// How the objects are encrypted at rest (default SSE-S3).
    #[serde(default)]
    pub encryption: RepositoryEncryption,
    /// The key that authenticates restore points. Required: there is no
    /// unauthenticated mode to fall back to, so a repository without it is
    /// refused by the API server with a message that says how to make one.
    /// (It is optional in the structural schema only so that this rule,
    /// not a bare "Required value", is what an admin reads; a repository
    /// stored before the field existed is `NotReady` and its jobs wait
    /// with `RepositoryIntegrityMissing`.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrity: Option<RepositoryIntegrity>,
    /// Namespaces whose jobs may use this repository, by their labels.
    /// `{}` admits every namespace; unset admits none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// How the controller reaches the bucket to check it and count what it
    /// holds; unset: its own credentials. Workers always use their
    /// instance profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<AccountAccess>,
}

/// Server-side encryption of a repository's objects.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryEncryption {
    /// `SSE-S3` (default: S3-managed keys) or `SSE-KMS`.
    #[serde(rename = "type", default)]
    pub kind: EncryptionKind,
    /// The KMS key (ID, ARN or alias ARN) for `SSE-KMS`. Workers need
    /// `kms:GenerateDataKey` and `kms:Decrypt` on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(KMS_KEY_PATTERN), length(max = 2048))]
    pub kms_key_id: Option<String>,
}

/// How manifests and `latest` pointers are authenticated.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryIntegrity {
    /// The KMS HMAC key (KeySpec `HMAC_256`, KeyUsage `GENERATE_VERIFY_MAC`;
    /// ID, ARN or alias ARN; an ARN names its region, otherwise the
    /// bucket's region is used). Workers call `kms:GenerateMac` when they
    /// write a manifest or `latest` pointer and `kms:VerifyMac` before they
    /// trust one. It outlives the cluster: keep it (and never schedule its
    /// deletion) for as long as its restore points must be restorable,
    /// since they verify only with the key that wrote them.
    #[schemars(pattern(KMS_KEY_PATTERN), length(max = 2048))]
    pub mac_key_id: String,
}

impl RepositoryEncryption {
    /// The KMS key S3 encrypts with; `None` for SSE-S3.
    pub fn kms_key(&self) -> Option<&str> {
        match self.kind {
            EncryptionKind::SseKms => self.kms_key_id.as_deref(),
            EncryptionKind::SseS3 => None,
        }
    }
}

/// Which server-side encryption S3 applies.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum EncryptionKind {
    /// S3-managed keys (`AES256`).
    #[default]
    #[serde(rename = "SSE-S3")]
    SseS3,
    /// A KMS key (`aws:kms`).
    #[serde(rename = "SSE-KMS")]
    SseKms,
}

/// What the controller observed of a repository.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRepositoryStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` or `NotReady`, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// `Ready` (the bucket is reachable, owned by the expected account and
    /// writable), `Stalled` while it is not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Restore points in the repository, all namespaces together.
    #[serde(default)]
    pub restore_points: i64,
    /// Restore points per namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub restore_points_by_namespace: BTreeMap<String, i64>,
    /// Bytes stored under the prefix (chunks and manifests).
    #[serde(default)]
    pub stored_bytes: i64,
    /// When the counts were taken (at most hourly, and at once after a
    /// change of the spec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checked_time: Option<Time>,
    /// What the retention runs found, each namespace as of its last
    /// successful run (absent until one ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space: Option<RepositorySpace>,
}

/// The repository's space, from its retention runs.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositorySpace {
    /// Bytes the live restore points describe (before deduplication and
    /// compression).
    pub logical_bytes: i64,
    /// Bytes of the chunks they reference, as stored (compressed).
    pub live_bytes: i64,
    /// Logical bytes per byte of unique data (`logicalBytes` over the live
    /// chunks' uncompressed size), such as `"4.20"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deduplication_ratio: Option<String>,
    /// Unique data per stored byte, such as `"1.85"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_ratio: Option<String>,
    /// Bytes of condemned chunks a later retention run will delete.
    pub reclaimable_bytes: i64,
    /// When the first of them may go (each namespace's next retention run
    /// after this deletes them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reclaimable_at: Option<Time>,
    /// The last retention run on the repository
    /// (`<namespace>/<RetentionJob>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_retention: Option<String>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_retention_time: Option<Time>,
    /// Restore points it expired.
    pub last_retention_expired: i64,
    /// Bytes it deleted.
    pub last_retention_deleted_bytes: i64,
}
