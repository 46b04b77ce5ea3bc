//! `RestorePoint`: the catalog of what can be restored. The controller
//! lists the restore points of each BackupRepository's namespace parts and
//! keeps one read-only object per restore point in its namespace, made
//! from its manifest (read only once its MAC verifies): `kubectl get
//! restorepoints` answers "what can I restore?", and a new cluster pointed
//! at an existing repository sees every restore point made before.
//!
//! The object is a view, never the data: deleting it deletes nothing (the
//! next listing makes it again while its manifest is there), and it goes
//! when its manifest does (a retention run expired it).
// Clippy reads the `printcolumn(...)` entries of `#[kube]` as duplicated
// attributes; they are separate columns.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::LocalObjectReference;

/// Label on a RestorePoint: the BackupRepository that holds it.
pub const REPOSITORY_LABEL: &str = "tender.dev/repository";

/// Annotation on a RestorePoint: `"true"` holds it against expiry and
/// deletion (recorded in the repository as `holds/<id>`, so every cluster
/// sees it), `"false"` releases a hold (whoever placed it); absent, the
/// repository's record stands.
pub const HOLD_ANNOTATION: &str = "tender.dev/hold";

/// Annotation on a RestorePoint: `"true"` asks the next retention run on
/// its repository in this namespace to delete it (unless it is held).
pub const DELETE_ANNOTATION: &str = "tender.dev/delete";

/// What the repository says of a restore point besides its manifest.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestorePointStatus {
    /// A hold is recorded for it in the repository: no retention run
    /// expires or deletes it.
    #[serde(default)]
    pub held: bool,
    /// The last time a VerificationJob read it back, and what it found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verification: Option<LastVerification>,
}

/// One verification of a restore point.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastVerification {
    /// When the worker finished reading.
    pub time: Time,
    /// The VerificationJob.
    #[schemars(length(max = 253))]
    pub job: String,
    pub result: super::VerificationResult,
    /// Distinct chunks read and found intact.
    pub intact_chunks: u64,
    /// Distinct chunks the restore point references.
    pub chunks: u64,
    /// What was wrong, when something was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One restore point of a repository, as its manifest says. Written by the
/// controller only; its spec never changes.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tender.dev",
    version = "v1alpha1",
    kind = "RestorePoint",
    namespaced,
    status = "RestorePointStatus",
    shortname = "rp",
    category = "tender",
    printcolumn(name = "Resource", type_ = "string", json_path = ".spec.resource"),
    printcolumn(name = "Region", type_ = "string", json_path = ".spec.region"),
    printcolumn(name = "Created", type_ = "date", json_path = ".spec.createdAt"),
    printcolumn(
        name = "Size",
        type_ = "integer",
        json_path = ".spec.logicalBytes",
        description = "Bytes of the volumes' blocks it describes"
    ),
    printcolumn(name = "Policy", type_ = "string", json_path = ".spec.policy"),
    printcolumn(name = "Held", type_ = "boolean", json_path = ".status.held"),
    printcolumn(
        name = "Verified",
        type_ = "string",
        json_path = ".status.lastVerification.result",
        description = "What the last verification found"
    ),
    printcolumn(
        name = "Repository",
        type_ = "string",
        json_path = ".spec.repositoryRef.name",
        priority = 1
    ),
    printcolumn(name = "Id", type_ = "string", json_path = ".spec.id", priority = 1)
)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self == oldSelf", "message": "a RestorePoint is a view of its manifest and never changes"}
]))]
#[serde(rename_all = "camelCase")]
pub struct RestorePointSpec {
    /// The BackupRepository that holds it.
    pub repository_ref: LocalObjectReference,
    /// Its ID, `<BackupJob>/<resource>`: what a RestoreJob's
    /// `restorePoint` takes.
    #[schemars(length(max = 512))]
    pub id: String,
    /// The protected resource (an EC2 instance or EBS snapshot ID, or
    /// `rds-db-<identifier>` for an RDS DB instance).
    #[schemars(length(max = 80))]
    pub resource: String,
    /// The resource's region.
    #[schemars(length(max = 32))]
    pub region: String,
    /// When the backup that made it finished copying.
    pub created_at: Time,
    /// The BackupJob that made it.
    #[schemars(length(max = 253))]
    pub job_name: String,
    /// The BackupPolicy whose run made it, whose retention rules expire it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub policy: Option<String>,
    /// The restore point it was taken incrementally from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub parent: Option<String>,
    /// Its volumes.
    pub volumes: i32,
    /// Bytes of the volumes' blocks it describes (before deduplication and
    /// compression).
    pub logical_bytes: i64,
    /// Bytes its backup stored new (compressed); the rest it shares.
    pub stored_bytes: i64,
    /// A database's restore point: its engine (`postgres`, `mysql`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub engine: Option<String>,
    /// A database's restore point: the ARNs of the DB snapshots that hold
    /// it (RDS keeps the data; the repository keeps this record).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub database_snapshots: Vec<String>,
}

/// The name of the RestorePoint object of restore point `<job>/<resource>`
/// (`<job>.<resource>`: a resource ID holds no dot), if it is a valid
/// object name.
pub fn object_name(id: &str) -> Option<String> {
    let (job, resource) = id.split_once('/')?;
    let name = format!("{job}.{resource}");
    let valid = name.len() <= 253
        && !resource.is_empty()
        && resource
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    valid.then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_points_object_is_named_after_its_job_and_resource() {
        assert_eq!(
            object_name("nightly-29400000/i-0123456789abcdef0").as_deref(),
            Some("nightly-29400000.i-0123456789abcdef0")
        );
        assert_eq!(object_name("a.b/snap-1").as_deref(), Some("a.b.snap-1"));
        for bad in [
            "no-slash",
            "job/",
            "Job/i-1",
            "job/i_1",
            &format!("{}/i-1", "a".repeat(260)),
        ] {
            assert_eq!(object_name(bad), None, "{bad}");
        }
    }
}
