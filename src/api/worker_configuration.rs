//! `WorkerConfiguration`: how workers are deployed in one AWS region.
// Clippy reads the `printcolumn(...)` entries of `#[kube]` as duplicated
// attributes; they are separate columns.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    ACCOUNT_ID_PATTERN, DEVICE_PATTERN, INSTANCE_PROFILE_PATTERN, INSTANCE_TYPE_PATTERN,
    KMS_KEY_PATTERN, REGION_PATTERN, SECURITY_GROUP_PATTERN, ZONE_PATTERN,
};
use crate::messages::WorkerProfile;

/// How Tender deploys worker instances in one AWS region, declared by an
/// admin (cluster-scoped, like a StorageClass): the accounts and roles, the
/// network, the AMI and instance profiles, and which namespaces' jobs may
/// use it and which sources they may name. Jobs name a configuration, or
/// use the one annotated as their region's default. Editing it changes only
/// the workers launched afterwards.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tender.dev",
    version = "v1alpha1",
    kind = "WorkerConfiguration",
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
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(self.privateNetwork && has(self.assignPublicIp) && self.assignPublicIp)",
     "message": "privateNetwork workers get no public IP: set assignPublicIp to false"},
    {"rule": "!(has(self.imageId) && has(self.imageSsmParameter))",
     "message": "set at most one of imageId and imageSsmParameter (neither: the region's current Amazon Linux 2023)"}
]))]
#[serde(rename_all = "camelCase")]
pub struct WorkerConfigurationSpec {
    /// Namespaces whose jobs may use this configuration, by their labels.
    /// `{}` admits every namespace; unset admits none. A job in another
    /// namespace that names it stalls with reason `NamespaceNotAdmitted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// Which protected resources jobs that use this configuration may name.
    #[serde(default)]
    pub allowed_sources: AllowedSources,

    /// AWS region the workers run in, for example `eu-west-1`. Jobs for
    /// resources in another region cannot use this configuration.
    #[schemars(pattern(REGION_PATTERN), length(max = 32))]
    pub region: String,

    /// Subnets workers may be launched in, all in one VPC. A worker goes to
    /// a subnet in its protected resource's availability zone when one is
    /// listed, else to another listed subnet; when a subnet has no free
    /// address or no capacity for the instance type, the next one is tried.
    /// Empty: the region's default VPC and its default subnets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub subnets: Vec<WorkerSubnet>,

    /// Security groups attached to every worker (IDs such as `sg-0123abcd`).
    /// Empty: Tender manages one security group per configuration with
    /// exactly the rules workers need (inbound TCP 443 from
    /// `fileLevelRecoveryCidrs` only; outbound TCP 443 only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5), inner(pattern(SECURITY_GROUP_PATTERN)))]
    pub security_group_ids: Vec<String>,

    /// Security groups a full restore may attach to the instance it
    /// launches in these subnets: a RestoreJob's `securityGroupIds` must all
    /// be listed here, or its worker fails with `SecurityGroupNotAllowed`
    /// before anything is launched. Empty: restored instances get the VPC's
    /// default group only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50), inner(pattern(SECURITY_GROUP_PATTERN)))]
    pub restore_security_group_ids: Vec<String>,

    /// Networks (CIDRs) whose browsers may reach the file-level recovery
    /// browser on TCP 443 of a worker, for the managed security group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 20),
        inner(pattern(r"^([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}$"), length(max = 18))
    )]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.all(c, isCIDR(c) && cidr(c).ip().family() == 4)",
         "message": "fileLevelRecoveryCidrs must be IPv4 CIDRs such as 10.0.0.0/8 (each octet 0-255, prefix length 0-32)"},
        {"rule": "self.all(c, !isCIDR(c) || cidr(c).prefixLength() >= 8)",
         "message": "fileLevelRecoveryCidrs may not open the browser to more than a /8 (0.0.0.0/0 is the whole internet): list the networks your users browse from"},
        {"rule": "self.all(c, !isCIDR(c) || cidr(c).masked() == cidr(c))",
         "message": "fileLevelRecoveryCidrs must name networks, not hosts with a prefix: use the network address (10.1.0.0/16, not 10.1.2.3/16)"}
    ]))]
    pub file_level_recovery_cidrs: Vec<String>,

    /// Give workers a public IP address (`true`) or not (`false`). Unset:
    /// as each subnet does by default (its `MapPublicIpOnLaunch`, which is
    /// on in the default VPC's subnets: there workers reach AWS through the
    /// VPC's internet gateway). Never in private-network mode. Tender checks
    /// that each subnet's workers have a way to AWS (a public IP and an
    /// internet gateway, a NAT gateway, or VPC endpoints; condition
    /// `NetworkReady`, `status.routesToAws`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assign_public_ip: Option<bool>,

    /// Private-network mode: workers get no public IP and reach AWS through
    /// VPC interface endpoints, which Tender checks for each operation
    /// (condition `NetworkReady`); jobs wait while one they need is missing.
    #[serde(default)]
    pub private_network: bool,

    /// Which account workers run in: `backup` (default; the account given
    /// by `backupAccount`, else the controller's own) or `production` (the
    /// protected resources' account, `productionAccount`).
    #[serde(default)]
    pub account: WorkerAccount,

    /// How Tender reaches the backup account; unset: its own credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_account: Option<AccountAccess>,

    /// How Tender reaches the protected resources' account (to read them,
    /// and to run workers there with `account: production`); unset: its
    /// own credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub production_account: Option<AccountAccess>,

    /// CPU architecture of the workers: `x86_64` (default) or `arm64`
    /// (Graviton). It picks the default image, the agent Tender delivers
    /// and the default instance types (`c5`/`t3`, or `c7g`/`t4g`); every
    /// instance type a worker may get must be offered in the region and
    /// be of this architecture (condition `InstanceTypesOffered`).
    #[serde(default)]
    pub architecture: Architecture,

    /// AMI the workers boot, for example `ami-0123456789abcdef0`. Unset,
    /// with `imageSsmParameter` unset too: the region's current Amazon
    /// Linux 2023 for `architecture`, from AWS's public SSM parameter
    /// `/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-<arch>`.
    /// Any image with a shell, `curl`, `sha256sum`, `gzip` and cloud-init
    /// (or another runner of user data) works: the user data downloads the
    /// worker agent that Tender publishes, checks its SHA-256 and starts it;
    /// an image that already carries `tender` at the controller's version
    /// skips the download.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^ami-[0-9a-f]{8,17}$"))]
    pub image_id: Option<String>,

    /// SSM parameter that holds the AMI ID, such as a public parameter
    /// `/aws/service/...`; resolved on every check and shown in
    /// `status.imageId`. At most one of this and `imageId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^/[A-Za-z0-9_./-]+$"), length(max = 2048))]
    pub image_ssm_parameter: Option<String>,

    /// IAM instance profile (name or ARN) of the workers whose operation
    /// `instanceProfiles` leaves unset. One profile shared by every
    /// operation is the least safe choice: its role must hold the union of
    /// their permissions, so a file-level recovery worker (reachable from
    /// the network) could then take and delete snapshots and overwrite
    /// restore points. Prefer `instanceProfiles`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(INSTANCE_PROFILE_PATTERN), length(max = 2048))]
    pub iam_instance_profile: Option<String>,

    /// IAM instance profile (name or ARN) per worker operation, each with
    /// only the permissions of that operation (`iam/worker-*-policy.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_profiles: Option<InstanceProfiles>,

    /// The workers' root volume, always encrypted.
    #[serde(default)]
    pub root_volume: RootVolume,

    /// Workers of this configuration that may run at once; further workers
    /// wait in a queue in job creation order. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_concurrent_workers: Option<i32>,

    /// Instance type per worker profile. Unset profiles use Tender's
    /// defaults: backup sized by the protected instance's total EBS size
    /// (`c5.large` under 1 024 GiB, `c5.2xlarge` up to 16 TiB, `c5.4xlarge`
    /// above; on arm64 the same sizes of `c7g`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_types: Option<InstanceTypes>,

    /// AWS tags added to every worker and its volumes next to Tender's own
    /// ownership tags, which they can never override. At most 25; keys up to
    /// 128 characters, values up to 256; keys may not start with `aws:` or
    /// `tender.dev/`. Values may use `{{job}}`, `{{namespace}}`,
    /// `{{operation}}` and `{{resource}}`, expanded per worker.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 25, "x-kubernetes-validations" = [
        {"rule": "self.all(k, size(k) >= 1 && size(k) <= 128 && !k.startsWith('aws:') && !k.startsWith('tender.dev/'))",
         "message": "tag keys must be 1-128 characters and must not start with 'aws:' or 'tender.dev/'"},
        {"rule": "self.all(k, size(self[k]) <= 256)", "message": "tag values must be at most 256 characters"}
    ]))]
    pub tags: BTreeMap<String, String>,

    /// Seconds a worker that has started may stay silent (no message, no
    /// heartbeat) before it is declared lost (`WorkerLost`), terminated,
    /// and retried or failed.
    #[serde(default = "default_heartbeat_timeout")]
    #[schemars(range(min = 5, max = 86400))]
    pub heartbeat_timeout_seconds: i64,

    /// Seconds from a worker's launch to its `started` message (the
    /// instance boots, the user data downloads and checks the agent, the
    /// agent starts). A worker that takes longer fails with reason
    /// `WorkerBootTimeout` and the last lines of its console output (EC2
    /// GetConsoleOutput), is terminated, and is retried or failed.
    #[serde(default = "default_boot_timeout")]
    #[schemars(range(min = 10, max = 3600))]
    pub boot_timeout_seconds: i64,
}

/// CPU architecture of worker instances, as EC2 names it.
#[derive(
    Deserialize,
    Serialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    JsonSchema,
)]
pub enum Architecture {
    /// 64-bit x86 (Intel, AMD).
    #[default]
    #[serde(rename = "x86_64")]
    X86_64,
    /// 64-bit Arm (AWS Graviton).
    #[serde(rename = "arm64")]
    Arm64,
}

impl Architecture {
    pub const ALL: [Architecture; 2] = [Architecture::X86_64, Architecture::Arm64];

    /// As EC2 and the SSM parameter names spell it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Architecture::X86_64 => "x86_64",
            Architecture::Arm64 => "arm64",
        }
    }

    /// AWS's public SSM parameter of the current Amazon Linux 2023 image.
    pub fn default_image_parameter(self) -> String {
        format!(
            "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{}",
            self.as_str()
        )
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The annotation that marks a configuration as its region's default, for
/// jobs that name none (value `"true"`), as StorageClass does.
pub const DEFAULT_CONFIGURATION_ANNOTATION: &str = "tender.dev/is-default-configuration";

/// Which protected resources jobs may name: a namespace backs up, restores
/// or browses only what the admin gave it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllowedSources {
    /// AWS accounts (12 digits) whose EBS snapshots jobs may name. Empty:
    /// only the account Tender reads sources in (`productionAccount`'s, else
    /// its own). Instances are always those of that account.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50), inner(pattern(ACCOUNT_ID_PATTERN)))]
    pub accounts: Vec<String>,
    /// Tags every source (instance or snapshot) must carry, with these
    /// values. Empty: any source of an allowed account.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 10, "x-kubernetes-validations" = [
        {"rule": "self.all(k, size(k) >= 1 && size(k) <= 128 && size(self[k]) <= 256)",
         "message": "tag keys must be 1-128 characters and values at most 256"}
    ]))]
    pub tags: BTreeMap<String, String>,
}

impl AllowedSources {
    /// Whether a source's tags carry every required tag; `Err` names the
    /// first one missing or different.
    pub fn admits_tags(&self, tags: &BTreeMap<String, String>) -> Result<(), String> {
        match self.tags.iter().find(|(k, v)| tags.get(*k) != Some(*v)) {
            None => Ok(()),
            Some((k, v)) => Err(format!("{k}={v}")),
        }
    }
}

fn default_heartbeat_timeout() -> i64 {
    300
}

fn default_boot_timeout() -> i64 {
    180
}

/// Which account workers run in.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum WorkerAccount {
    /// The backup account.
    #[default]
    Backup,
    /// The protected resource's (production) account.
    Production,
}

/// How Tender reaches an AWS account: by assuming a role in it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccountAccess {
    /// ARN of the role to assume, for example
    /// `arn:aws:iam::111122223333:role/tender-workers`. The session name
    /// names the configuration or the job it acts for.
    #[schemars(
        pattern(r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]+$"),
        length(max = 2048)
    )]
    pub role_arn: String,
    /// External ID the role's trust policy requires, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[A-Za-z0-9+=,.@:/_-]+$"), length(min = 2, max = 1224))]
    pub external_id: Option<String>,
}

/// The root volume of every worker.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RootVolume {
    /// Device name of the AMI's root volume (default `/dev/xvda`).
    #[serde(default = "default_root_device")]
    #[schemars(pattern(DEVICE_PATTERN), length(max = 32))]
    pub device_name: String,
    /// Size in GiB (default 16).
    #[serde(default = "default_root_size")]
    #[schemars(range(min = 8, max = 1024))]
    pub size_gib: i32,
    /// KMS key to encrypt it with (default: the account's EBS default key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(KMS_KEY_PATTERN), length(max = 2048))]
    pub kms_key_id: Option<String>,
}

impl WorkerConfigurationSpec {
    /// How Tender reaches the account workers run in.
    pub fn worker_access(&self) -> Option<&AccountAccess> {
        match self.account {
            WorkerAccount::Backup => self.backup_account.as_ref(),
            WorkerAccount::Production => self.production_account.as_ref(),
        }
    }

    /// The instance profile workers of `profile` are launched with: the
    /// operation's own from `instanceProfiles`, else `iamInstanceProfile`.
    pub fn instance_profile(&self, profile: WorkerProfile) -> Option<&str> {
        self.instance_profiles
            .as_ref()
            .and_then(|p| p.get(profile))
            .or(self.iam_instance_profile.as_deref())
    }
}

impl Default for RootVolume {
    fn default() -> Self {
        Self {
            device_name: default_root_device(),
            size_gib: default_root_size(),
            kms_key_id: None,
        }
    }
}

fn default_root_device() -> String {
    "/dev/xvda".into()
}

fn default_root_size() -> i32 {
    16
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
    #[schemars(pattern(ZONE_PATTERN))]
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
    /// Instance type of restore workers (default `c5.large`, on arm64
    /// `c7g.large`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(INSTANCE_TYPE_PATTERN))]
    pub restore: Option<String>,
    /// Instance type of file-level recovery workers (default `t3.medium`,
    /// on arm64 `t4g.medium`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(INSTANCE_TYPE_PATTERN))]
    pub file_level_recovery: Option<String>,
    /// Instance type of indexing workers (default `t3.medium`, on arm64
    /// `t4g.medium`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(INSTANCE_TYPE_PATTERN))]
    pub indexing: Option<String>,
    /// Instance type of retention workers. Default by the chunks the
    /// repository's namespace part held at the last run: `c5.large` up to
    /// 10 million, `c5.xlarge` up to 100 million, `c5.2xlarge` above (on
    /// arm64 `c7g`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(INSTANCE_TYPE_PATTERN))]
    pub retention: Option<String>,
    /// Instance type of verification workers. Default by the restore
    /// point's logical size: `c5.large` up to 4 TiB, `c5.xlarge` up to
    /// 12 TiB, `c5.2xlarge` above (on arm64 `c7g`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(INSTANCE_TYPE_PATTERN))]
    pub verification: Option<String>,
}

/// IAM instance profile (name or ARN) per worker operation; an unset one
/// falls back to `iamInstanceProfile`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceProfiles {
    /// Backup workers: snapshot the protected instance, read its snapshots'
    /// blocks, write the repository (`iam/worker-backup-policy.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(INSTANCE_PROFILE_PATTERN), length(max = 2048))]
    pub backup: Option<String>,
    /// Restore workers: read the repository, write new snapshots
    /// (`iam/worker-restore-policy.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(INSTANCE_PROFILE_PATTERN), length(max = 2048))]
    pub restore: Option<String>,
    /// File-level recovery workers: read the repository, write restored
    /// files under its `_restored/` prefix, no EBS at all
    /// (`iam/worker-file-level-policy.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(INSTANCE_PROFILE_PATTERN), length(max = 2048))]
    pub file_level_recovery: Option<String>,
    /// Retention workers: list, read and delete in the repository's
    /// namespace parts, no EBS and no EC2 at all
    /// (`iam/worker-retention-policy.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(INSTANCE_PROFILE_PATTERN), length(max = 2048))]
    pub retention: Option<String>,
    /// Verification workers: read the repository's manifests and chunks,
    /// nothing else (`iam/worker-verification-policy.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(INSTANCE_PROFILE_PATTERN), length(max = 2048))]
    pub verification: Option<String>,
}

impl InstanceProfiles {
    /// The profile set for `profile`, if any.
    pub fn get(&self, profile: WorkerProfile) -> Option<&str> {
        match profile {
            WorkerProfile::Backup => self.backup.as_deref(),
            WorkerProfile::Restore => self.restore.as_deref(),
            WorkerProfile::FileLevel => self.file_level_recovery.as_deref(),
            WorkerProfile::Retention => self.retention.as_deref(),
            WorkerProfile::Verification => self.verification.as_deref(),
        }
    }
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
    /// The AMI workers boot: `spec.imageId`, or what `spec.imageSsmParameter`
    /// resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// The AWS account workers run in (from STS GetCallerIdentity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// The VPC the workers run in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    /// The subnets workers are launched in, with their zones: the configured
    /// ones, or the default VPC's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<WorkerSubnet>,
    /// The security group Tender manages for this configuration, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_security_group_id: Option<String>,
    /// Worker profiles (`backup`, `restore`, `fileLevel`) whose VPC
    /// endpoints are missing in private-network mode, with the missing
    /// endpoints (`ec2`, `ebs`, `s3`, `sqs`, `sts`, `kms`: the services
    /// that profile's workers call). Jobs of a listed profile wait.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub missing_endpoints: BTreeMap<String, Vec<String>>,
    /// Subnets whose workers get a public IP (`spec.assignPublicIp`, else
    /// the subnet's own default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub public_ip_subnets: Vec<String>,
    /// How each subnet's workers reach AWS, as the controller read its
    /// route table and the VPC's endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes_to_aws: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(shared: Option<&str>, profiles: Option<InstanceProfiles>) -> WorkerConfigurationSpec {
        let mut spec: WorkerConfigurationSpec =
            serde_json::from_value(serde_json::json!({"region": "us-east-1"}))
                .expect("minimal spec");
        spec.iam_instance_profile = shared.map(String::from);
        spec.instance_profiles = profiles;
        spec
    }

    #[test]
    fn each_operation_gets_its_own_profile_else_the_shared_one() {
        let own = InstanceProfiles {
            backup: Some("tender-worker-backup".into()),
            restore: None,
            file_level_recovery: Some("arn:aws:iam::111122223333:instance-profile/flr".into()),
            retention: Some("tender-worker-retention".into()),
            verification: None,
        };
        let s = spec(Some("tender-worker"), Some(own.clone()));
        assert_eq!(
            s.instance_profile(WorkerProfile::Backup),
            Some("tender-worker-backup")
        );
        assert_eq!(
            s.instance_profile(WorkerProfile::Restore),
            Some("tender-worker")
        );
        assert_eq!(
            s.instance_profile(WorkerProfile::FileLevel),
            Some("arn:aws:iam::111122223333:instance-profile/flr")
        );
        assert_eq!(
            s.instance_profile(WorkerProfile::Retention),
            Some("tender-worker-retention")
        );
        let none = spec(None, Some(own));
        assert_eq!(none.instance_profile(WorkerProfile::Restore), None);
        let shared = spec(Some("tender-worker"), None);
        for p in WorkerProfile::ALL {
            assert_eq!(shared.instance_profile(p), Some("tender-worker"));
        }
        assert_eq!(
            spec(None, None).instance_profile(WorkerProfile::Backup),
            None
        );
    }
}
