//! Every tag key, label, finalizer name and field manager Tender uses, in one
//! place, so that the garbage collector, the IAM policies and the docs agree.

/// API group of Tender's custom resources.
pub const API_GROUP: &str = "tender.dev";
/// Version of Tender's custom resources.
pub const API_VERSION: &str = "v1alpha1";

/// Field manager for every server-side apply the controller makes.
pub const FIELD_MANAGER: &str = "tender-controller";
/// Field manager of the configurations' `status.activeWorkers`, written
/// apart from the rest of their status (see `controller::worker_count`).
pub const WORKER_COUNT_FIELD_MANAGER: &str = "tender-worker-count";
/// Name the controller reports Events under.
pub const CONTROLLER_NAME: &str = "tender-controller";

/// Finalizer on jobs: their workers are terminated before the job goes.
pub const JOB_FINALIZER: &str = "tender.dev/workers";
/// Finalizer on worker configurations: their queue is deleted, and only once
/// no unfinished job uses the configuration.
pub const CONFIGURATION_FINALIZER: &str = "tender.dev/queue";

/// The label on a BackupJob a BackupPolicy created: the policy's name.
pub const POLICY_LABEL: &str = "tender.dev/policy";

/// The annotation on a BackupJob a BackupPolicy created: the run's
/// scheduled time (RFC 3339).
pub const SCHEDULED_TIME_ANNOTATION: &str = "tender.dev/scheduled-time";

/// Annotation that ends a file-level recovery session now (value `true`):
/// `kubectl annotate restorejob NAME tender.dev/finish-session=true`.
pub const FINISH_SESSION_ANNOTATION: &str = "tender.dev/finish-session";

/// AWS tag keys that mark what Tender owns. A configuration's own tags can
/// never override them (see `placement::worker_tags`).
pub mod tags {
    /// Prefix reserved for Tender's ownership tags.
    pub const PREFIX: &str = "tender.dev/";
    pub const MANAGED_BY: &str = "tender.dev/managed-by";
    pub const MANAGED_BY_VALUE: &str = "tender";
    pub const CLUSTER_ID: &str = "tender.dev/cluster-id";
    pub const NAMESPACE: &str = "tender.dev/namespace";
    pub const JOB_KIND: &str = "tender.dev/job-kind";
    pub const JOB_NAME: &str = "tender.dev/job-name";
    pub const JOB_UID: &str = "tender.dev/job-uid";
    pub const RESOURCE: &str = "tender.dev/resource";
    pub const ATTEMPT: &str = "tender.dev/attempt";
    /// The BackupRepository a database's restore point is in (on its DB
    /// snapshot: the sweep reads the restore point there).
    pub const REPOSITORY: &str = "tender.dev/repository";
    /// That BackupRepository's UID: one deleted and made again under the
    /// same name is another repository.
    pub const REPOSITORY_UID: &str = "tender.dev/repository-uid";
    /// When Tender asked for what carries it (RFC 3339): the sweep's clock
    /// for a snapshot RDS gives no creation time.
    pub const REQUESTED_AT: &str = "tender.dev/requested-at";
    /// On a DB (cluster) snapshot: the Regions `spec.copyTo` copies it to,
    /// space-separated. The sweep deletes those copies before the snapshot,
    /// so a copy is found even once its job is gone and no configuration
    /// is in its Region.
    pub const COPY_REGIONS: &str = "tender.dev/copy-regions";
    pub const LAUNCH_TOKEN: &str = "tender.dev/launch-token";
    pub const OPERATION: &str = "tender.dev/operation";
    pub const CONFIGURATION: &str = "tender.dev/worker-configuration";
    /// Marks what a worker or the controller made on the way to a result
    /// (a restore's snapshots): the garbage collector deletes it once no
    /// job owns it. What a restore hands to the user never carries it.
    pub const INTERMEDIATE: &str = "tender.dev/intermediate";
    pub const INTERMEDIATE_VALUE: &str = "true";
    /// Conventional EC2 `Name` tag, so the console shows what a worker is for.
    pub const NAME: &str = "Name";
    /// On an RDS DB instance, set by its owner: Tender may add the
    /// security group of a worker that dumps it or loads a dump into it,
    /// and remove it (the only change Tender makes to a DB instance; the
    /// shipped controller policy allows ModifyDBInstance on such instances
    /// only).
    pub const DUMP_ACCESS: &str = "tender.dev/dump-access";
    pub const DUMP_ACCESS_VALUE: &str = "allowed";
    /// On a worker's security group pair: the DB instance it opens.
    pub const DB_INSTANCE: &str = "tender.dev/db-instance";
}
