//! `WorkerConfiguration`: how workers are deployed in one AWS region.
// Clippy reads the `printcolumn(...)` entries of `#[kube]` as duplicated
// attributes; they are separate columns.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{INSTANCE_TYPE_PATTERN, REGION_PATTERN};

/// How Tender deploys worker instances in one AWS region. Jobs name a
/// configuration, or use the only one of their namespace for their region.
/// Editing it changes only the workers launched afterwards.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tender.dev",
    version = "v1alpha1",
    kind = "WorkerConfiguration",
    namespaced,
    status = "WorkerConfigurationStatus",
    shortname = "wc",
    category = "tender",
    printcolumn(name = "Region", type_ = "string", json_path = ".spec.region"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Workers",
        type_ = "integer",
        json_path = ".status.activeWorkers",
        description = "Workers running now"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WorkerConfigurationSpec {
    /// AWS region the workers run in, for example `eu-west-1`. Jobs for
    /// resources in another region cannot use this configuration.
    #[schemars(pattern(REGION_PATTERN), length(max = 32))]
    pub region: String,

    /// Subnets workers may be launched in. A worker goes to the subnet in its
    /// protected resource's availability zone when one is listed, else to the
    /// first subnet.
    #[schemars(length(min = 1, max = 32))]
    pub subnets: Vec<WorkerSubnet>,

    /// Security groups attached to every worker (IDs such as `sg-0123abcd`).
    #[schemars(length(min = 1, max = 5), inner(pattern(r"^sg-[0-9a-f]{8,17}$")))]
    pub security_group_ids: Vec<String>,

    /// AMI the workers boot, for example `ami-0123456789abcdef0`. It must
    /// start the worker agent (`tender worker`) from the instance user data.
    #[schemars(pattern(r"^ami-[0-9a-f]{8,17}$"))]
    pub image_id: String,

    /// IAM instance profile (name or ARN) that gives workers access to SQS,
    /// EBS and the backup repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub iam_instance_profile: Option<String>,

    /// Instance type per worker profile. Unset profiles use Tender's
    /// defaults: backup sized by the protected instance's total EBS size
    /// (`c5.large` under 1 024 GiB, `c5.2xlarge` up to 16 TiB, `c5.4xlarge`
    /// above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_types: Option<InstanceTypes>,

    /// AWS tags added to every worker next to Tender's own ownership tags.
    /// At most 25; keys up to 128 characters, values up to 256; keys may not
    /// start with `aws:` or `tender.dev/`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 25, "x-kubernetes-validations" = [
        {"rule": "self.all(k, size(k) >= 1 && size(k) <= 128 && !k.startsWith('aws:') && !k.startsWith('tender.dev/'))",
         "message": "tag keys must be 1-128 characters and must not start with 'aws:' or 'tender.dev/'"},
        {"rule": "self.all(k, size(self[k]) <= 256)", "message": "tag values must be at most 256 characters"}
    ]))]
    pub tags: BTreeMap<String, String>,

    /// Seconds a worker may stay silent (no message, no heartbeat) before it
    /// is declared lost, terminated, and retried or failed. Also bounds how
    /// long a worker may take to boot and report that it started.
    #[serde(default = "default_heartbeat_timeout")]
    #[schemars(range(min = 5, max = 86400))]
    pub heartbeat_timeout_seconds: i64,
}

fn default_heartbeat_timeout() -> i64 {
    300
}

/// One subnet workers may use.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSubnet {
    /// Subnet ID, for example `subnet-0123abcd`.
    #[schemars(pattern(r"^subnet-[0-9a-f]{8,17}$"))]
    pub subnet_id: String,
    /// Availability zone of the subnet, for example `eu-west-1a`. Workers
    /// for resources in this zone are placed here first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[a-z]{2}(-gov)?-[a-z]+-[0-9][a-z]$"))]
    pub availability_zone: Option<String>,
}

/// Instance type per worker profile; each one overrides Tender's default.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceTypes {
    /// Instance type of backup workers, for example `c5.xlarge`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(INSTANCE_TYPE_PATTERN))]
    pub backup: Option<String>,
    /// Instance type of restore workers (default `c5.large`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(INSTANCE_TYPE_PATTERN))]
    pub restore: Option<String>,
    /// Instance type of file-level recovery workers (default `t3.medium`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(INSTANCE_TYPE_PATTERN))]
    pub file_level_recovery: Option<String>,
    /// Instance type of indexing workers (default `t3.medium`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(INSTANCE_TYPE_PATTERN))]
    pub indexing: Option<String>,
}

/// What the controller observed of a configuration.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerConfigurationStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` for people: `Ready`, `NotReady` or `Deleting`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Conditions: `Ready`, and `Reconciling` or `Stalled` while they apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// URL of the SQS queue that workers launched with this configuration
    /// report to. Tender creates it and deletes it with the configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_url: Option<String>,
    /// Workers of unfinished jobs that use this configuration.
    #[serde(default)]
    pub active_workers: i32,
}
