//! `BackupPolicy`: which resources are protected, when, where to, and for
//! how long. Each scheduled run creates one BackupJob owned by the policy;
//! with `retention`, each retention run creates one RetentionJob.
// Clippy reads the `printcolumn(...)` entries of `#[kube]` as duplicated
// attributes; they are separate columns.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DB_IDENTIFIER_PATTERN, INSTANCE_ID_PATTERN, LocalObjectReference, REGION_PATTERN};
pub use crate::policy::runs::ConcurrencyPolicy;

/// Back up a set of EC2 instances and RDS DB instances on a schedule. Like
/// a CronJob: each run creates a BackupJob (named `<policy>-<scheduled
/// minute>`, owned by the policy), so a policy's name is at most 52 characters, as a CronJob's.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tender.dev",
    version = "v1alpha1",
    kind = "BackupPolicy",
    namespaced,
    status = "BackupPolicyStatus",
    shortname = "bpol",
    category = "tender",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "TimeZone", type_ = "string", json_path = ".spec.timeZone"),
    printcolumn(name = "Suspend", type_ = "boolean", json_path = ".spec.suspend"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Resources",
        type_ = "integer",
        json_path = ".status.protectedResources",
        description = "Resources the last run backed up"
    ),
    printcolumn(
        name = "LastSchedule",
        type_ = "date",
        json_path = ".status.lastScheduleTime"
    ),
    printcolumn(
        name = "LastSuccess",
        type_ = "date",
        json_path = ".status.lastSuccessfulTime",
        priority = 1
    ),
    printcolumn(
        name = "Next",
        type_ = "string",
        json_path = ".status.nextScheduleTime",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.resources) || has(self.instanceSelectors) || has(self.databaseSelectors)",
     "message": "name what to protect: spec.resources, spec.instanceSelectors, spec.databaseSelectors, or several"}
]))]
#[serde(rename_all = "camelCase")]
pub struct BackupPolicySpec {
    /// When to back up, in cron syntax as a CronJob has it (`minute hour
    /// day-of-month month day-of-week`, or `@daily`, `@hourly`, …),
    /// interpreted in `timeZone`.
    #[schemars(length(min = 1, max = 128))]
    pub schedule: String,
    /// The IANA time zone of `schedule` and of retention's calendar (days,
    /// weeks…), for example `Europe/Berlin` (default `UTC`). The zone
    /// database is compiled into Tender; nothing is read from the host.
    #[serde(default = "utc", skip_serializing_if = "is_utc")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: String,
    /// Seconds after its scheduled time within which a run may still start
    /// (after a controller outage, or while `Forbid` held it); a run later
    /// than that is skipped and reported. Unset: no deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub starting_deadline_seconds: Option<i64>,
    /// What a run does while the previous one is still active: `Forbid`
    /// (default: it waits, and is skipped if the deadline passes),
    /// `Allow`, or `Replace` (the active run's BackupJob is deleted).
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// While true, no run starts (active runs go on).
    #[serde(default)]
    pub suspend: bool,
    /// The region of every resource of this policy, for example
    /// `eu-west-1`. One policy per region: its workers and configuration
    /// are regional too.
    #[schemars(pattern(REGION_PATTERN), length(max = 32))]
    pub region: String,
    /// Instances and RDS DB instances protected by ID. One that no longer
    /// exists is reported in `status.missingResources` and left out of the
    /// run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub resources: Vec<PolicyResource>,
    /// Instances protected by their tags, looked up at every run: an
    /// instance tagged after the policy was made is protected from the next
    /// run on. Instances that match any selector are protected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub instance_selectors: Vec<InstanceSelector>,
    /// RDS DB instances protected by their tags, looked up at every run
    /// (DB instances being deleted, members of a DB cluster, and those the
    /// configuration's `allowedSources.tags` refuse never match). A DB
    /// instance that matches a `snapshot` selector gets a DB snapshot (as a
    /// BackupJob's `dbInstanceId`); an RDS for PostgreSQL one that matches a
    /// `dump` selector is dumped by a worker (as `postgres`, every
    /// database); one that matches both gets both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub database_selectors: Vec<DatabaseSelector>,
    /// The BackupRepository the restore points go to (it must admit this
    /// namespace).
    pub repository_ref: LocalObjectReference,
    /// The WorkerConfiguration the runs' workers are launched with; unset:
    /// the default configuration of `region`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_configuration_ref: Option<LocalObjectReference>,
    /// Retries and deadline of each run's BackupJob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_limits: Option<PolicyJobLimits>,
    /// Finished runs that succeeded to keep (default 3); older ones'
    /// BackupJobs are deleted (their restore points stay).
    #[serde(default = "three")]
    #[schemars(range(min = 0, max = 100))]
    pub successful_jobs_history_limit: i32,
    /// Finished runs that failed to keep (default 1).
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 100))]
    pub failed_jobs_history_limit: i32,
    /// How long this policy's restore points are kept. Unset: for ever
    /// (nothing of this policy is ever expired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<PolicyRetention>,
    /// Whether and when this policy's newest restore points are read back
    /// and checked (VerificationJobs). Unset: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<PolicyVerification>,
}

/// When a policy's restore points are verified: at each time of
/// `schedule`, a VerificationJob reads back the newest restore point of
/// each of the policy's resources, as the catalog lists them (at most 50 a
/// run, those verified longest ago first), every chunk checked against its
/// digest on a worker in the repository's region.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyVerification {
    /// In cron syntax, in `timeZone` (default `@weekly`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub schedule: Option<String>,
}

/// How long a policy's restore points are kept, and when retention runs.
/// The rules are restic's `forget` rules, applied per resource: a restore
/// point any rule keeps is kept, and a resource's newest restore point is
/// never expired, whatever the rules say.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRetention {
    #[serde(flatten)]
    pub rules: crate::policy::retention::Retention,
    /// When retention runs (a RetentionJob, on a worker in the
    /// repository's region), in cron syntax, in `timeZone` (default
    /// `@daily`). Each run deletes the expired restore points' manifests,
    /// deletes the chunks condemned by an earlier run at least a grace
    /// period ago (the controller's `--gc-grace-seconds`, a day) that are
    /// still unreferenced, and condemns the chunks nothing references now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub schedule: Option<String>,
}

fn utc() -> String {
    "UTC".into()
}
fn is_utc(zone: &str) -> bool {
    zone == "UTC"
}
fn three() -> i32 {
    3
}
fn one() -> i32 {
    1
}

/// A resource protected by ID: set exactly one field.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "[has(self.instanceId), has(self.dbInstanceId), has(self.dbClusterId), has(self.postgres)].filter(x, x).size() == 1",
     "message": "set exactly one of instanceId, dbInstanceId, dbClusterId and postgres"},
    {"rule": "!has(self.dbInstanceId) || !self.dbInstanceId.contains('--')",
     "message": "an RDS DB instance identifier has no two hyphens in a row"},
    {"rule": "!has(self.dbClusterId) || !self.dbClusterId.contains('--')",
     "message": "an RDS DB cluster identifier has no two hyphens in a row"}
]))]
pub struct PolicyResource {
    /// ID of an EC2 instance, for example `i-0123456789abcdef0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(INSTANCE_ID_PATTERN), length(max = 19))]
    pub instance_id: Option<String>,
    /// Identifier of an RDS DB instance (any engine), backed up as a DB
    /// snapshot, as a BackupJob's `dbInstanceId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DB_IDENTIFIER_PATTERN), length(max = 63))]
    pub db_instance_id: Option<String>,
    /// Identifier of an RDS DB cluster (Aurora, or a Multi-AZ DB cluster),
    /// backed up as a DB cluster snapshot, as a BackupJob's `dbClusterId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DB_IDENTIFIER_PATTERN), length(max = 63))]
    pub db_cluster_id: Option<String>,
    /// An RDS for PostgreSQL DB instance dumped by a worker, as a
    /// BackupJob's `postgres`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<super::PostgresSource>,
}

impl PolicyResource {
    /// The ID of the BackupJob resource it becomes (`i-…`, `rds-db-<id>`,
    /// `rds-cluster-<id>`, `rds-pg-<id>`).
    pub fn id(&self) -> String {
        if let Some(id) = &self.instance_id {
            return id.clone();
        }
        if let Some(cluster) = &self.db_cluster_id {
            return format!("{}{cluster}", super::DB_CLUSTER_RESOURCE_PREFIX);
        }
        if let Some(db) = &self.db_instance_id {
            return format!("{}{db}", super::DB_INSTANCE_RESOURCE_PREFIX);
        }
        match &self.postgres {
            Some(pg) => format!("{}{}", super::DB_DUMP_RESOURCE_PREFIX, pg.db_instance_id),
            None => String::new(),
        }
    }
}

/// How a policy backs up the DB instances a selector matches: `snapshot`
/// (a DB snapshot, any engine; the default when unset; it matches DB
/// clusters too, each taken as a DB cluster snapshot) or `dump` (a
/// PostgreSQL dump into the repository by a worker).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DatabaseBackupMethod {
    /// A DB snapshot (any engine).
    #[default]
    Snapshot,
    /// A PostgreSQL dump into the repository by a worker (RDS for
    /// PostgreSQL with the dump's requirements; see BackupJob `postgres`).
    Dump,
}

/// RDS DB instances by tags.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSelector {
    /// Tags a DB instance must all carry, as `key: value`; a value may use
    /// `*` (any characters) and `?` (one), as EC2's filters do, so `"*"`
    /// matches any value.
    #[schemars(extend(
        "minProperties" = 1,
        "maxProperties" = 10,
        "x-kubernetes-validations" = [
            {"rule": "self.all(k, size(k) >= 1 && size(k) <= 128 && size(self[k]) <= 256)",
             "message": "tag keys must be 1-128 characters and values at most 256 (AWS's limits)"}
        ]
    ))]
    pub match_tags: BTreeMap<String, String>,
    /// `snapshot` (unset: the default) or `dump`. Not defaulted by the API
    /// server, so a manifest applied again (kubectl, Argo CD, Flux) shows
    /// no change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<DatabaseBackupMethod>,
}

/// EC2 instances by tags.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceSelector {
    /// Tags an instance must all carry, as `key: value`; a value may use
    /// EC2's filter wildcards (`*` any characters, `?` one), so `"*"`
    /// matches any value. Terminated instances never match.
    #[schemars(extend(
        "minProperties" = 1,
        "maxProperties" = 10,
        "x-kubernetes-validations" = [
            {"rule": "self.all(k, size(k) >= 1 && size(k) <= 128 && size(self[k]) <= 256)",
             "message": "tag keys must be 1-128 characters and values at most 256 (AWS's limits)"}
        ]
    ))]
    pub match_tags: BTreeMap<String, String>,
}

/// Retries and deadline of each run's BackupJob.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyJobLimits {
    /// Retries per resource (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 20))]
    pub backoff_limit: Option<i32>,
    /// Seconds a run may take before its workers are terminated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,
}

/// What the controller observed of a policy.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Scheduled`, `Running` (a run is active), `Suspended` or `Invalid`,
    /// for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// `Ready` (the policy is valid and its runs start), `Stalled` (it is
    /// invalid; the message says what to fix), `RunsMissed` (runs that
    /// never started, and why), `ResourcesMissing` (protected instances
    /// and DB instances that no longer exist).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The scheduled time of the last run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// The same, in the policy's time zone (RFC 9557, with the zone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time_local: Option<String>,
    /// The next scheduled run (UTC, RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
    /// The same, in the policy's time zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time_local: Option<String>,
    /// When the last run that succeeded for every resource finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Time>,
    /// The BackupJobs of runs still active.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active: Vec<String>,
    /// Runs that were due but never started, since the policy was made.
    #[serde(default)]
    pub missed_runs: i64,
    /// Resources the last run backed up.
    #[serde(default)]
    pub protected_resources: i32,
    /// Per protected resource, its newest restore point.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ProtectedResource>,
    /// Resources named by ID that no longer exist, and instances a selector
    /// matched before but not any more (gone, or untagged).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_resources: Vec<MissingResource>,
    /// The scheduled time of the last retention run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_retention_schedule_time: Option<Time>,
    /// The next retention run (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retention_time: Option<Time>,
    /// The RetentionJob running now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_retention: Option<String>,
    /// The last retention run that finished, and what it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_retention: Option<LastRetention>,
    /// What the next retention run will expire, by the rules as they are
    /// now (a change of `retention` shows here before any run acts on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_preview: Option<RetentionPreview>,
    /// The scheduled time of the last verification run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verification_schedule_time: Option<Time>,
    /// The next verification run (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_verification_time: Option<Time>,
    /// The VerificationJob running now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_verification: Option<String>,
    /// The last verification run that finished, and what it found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verification: Option<LastVerificationRun>,
}

/// A finished verification run.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastVerificationRun {
    /// The VerificationJob.
    pub job: String,
    /// `Succeeded` (every restore point verified), `PartiallySucceeded` or
    /// `Failed`.
    pub phase: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Restore points found intact.
    pub verified: i32,
    /// Restore points found damaged: a chunk missing or corrupt, or a
    /// manifest that does not verify.
    pub damaged: i32,
    /// The first 10 of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub damaged_restore_points: Vec<String>,
    /// Restore points the run could not check (the worker failed for
    /// another reason: access, throttling, a lost worker, the deadline).
    pub unchecked: i32,
    /// What the first damaged (else unchecked) one's worker said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What the next retention run will expire.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionPreview {
    /// The time the rules were applied at (the next run's).
    pub at: Time,
    /// The policy's restore points in the catalog (RestorePoints).
    pub restore_points: i64,
    /// How many the run will delete: the policy's expired by the rules,
    /// and any of the repository's in this namespace asked for with
    /// `tender.dev/delete` (never a held one).
    pub expires_count: i64,
    /// The first 20 of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expires: Vec<String>,
}

/// A finished retention run.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastRetention {
    /// The RetentionJob.
    pub job: String,
    /// `Succeeded` or `Failed`.
    pub phase: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// What it expired and collected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<super::RetentionOutcome>,
}

/// One protected resource and its newest restore point.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProtectedResource {
    /// The resource's ID as its BackupJob has it: an instance ID,
    /// `rds-db-<DB instance>` (DB snapshots) or `rds-pg-<DB instance>`
    /// (dumps).
    pub id: String,
    /// `resources`, `instanceSelectors` or `databaseSelectors`.
    pub source: String,
    /// Its newest restore point made by this policy (`<job>/<resource>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_restore_point: Option<String>,
    /// When that restore point's run finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_restore_point_time: Option<Time>,
    /// Its age when the status was last written, such as `3h` or `12m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age: Option<String>,
}

/// A resource the policy protected that it cannot find any more.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MissingResource {
    /// The instance ID.
    pub id: String,
    /// Why: not found, terminated, or no longer matching a selector.
    pub reason: String,
    /// When the policy first noticed.
    pub since: Time,
}
