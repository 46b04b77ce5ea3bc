//! The reasons of the Events the controller publishes: stable CamelCase
//! names that people and alerts filter on. A worker's failure reason
//! ([`crate::reasons::FailureReason`]), a job's blocked reason
//! ([`crate::reasons::BlockedReason`]) and an AWS error's category are
//! Event reasons too.

// Jobs.
pub const JOB_SUCCEEDED: &str = "JobSucceeded";
pub const JOB_PARTIALLY_SUCCEEDED: &str = "JobPartiallySucceeded";
pub const JOB_FAILED: &str = "JobFailed";

// Workers.
pub const WORKER_LAUNCHED: &str = "WorkerLaunched";
pub const WORKER_ADOPTED: &str = "WorkerAdopted";
pub const WORKER_STARTED: &str = "WorkerStarted";
pub const WORKER_SUCCEEDED: &str = "WorkerSucceeded";
pub const WORKER_FAILED: &str = "WorkerFailed";
pub const WORKER_SUSPENDED: &str = "WorkerSuspended";
pub const WORKER_RETRIED: &str = "WorkerRetried";
pub const WORKER_TERMINATED: &str = "WorkerTerminated";
pub const WORKERS_TERMINATED: &str = "WorkersTerminated";
pub const SUBNET_SKIPPED: &str = "SubnetSkipped";
pub const NETWORK_CHANGED: &str = "NetworkChanged";
pub const LAUNCH_FAILED: &str = "LaunchFailed";

// Restores.
pub const VOLUME_RESTORED: &str = "VolumeRestored";
pub const INSTANCE_RESTORED: &str = "InstanceRestored";
pub const ORIGINAL_LOCATION_UNAVAILABLE: &str = "OriginalLocationUnavailable";
pub const ORIGINAL_LOCATION_COMMAND_SENT: &str = "OriginalLocationCommandSent";
pub const FILES_RESTORED_TO_ORIGINAL_LOCATION: &str = "FilesRestoredToOriginalLocation";
pub const ORIGINAL_LOCATION_RESTORE_FAILED: &str = "OriginalLocationRestoreFailed";

// Worker configurations.
pub const QUEUE_READY: &str = "QueueReady";

// BackupRepository.
pub const BUCKET_UNREACHABLE: &str = "BucketUnreachable";
pub const BUCKET_NOT_WRITABLE: &str = "BucketNotWritable";
pub const INTEGRITY_KEY_MISSING: &str = "IntegrityKeyMissing";

pub const CANNOT_ASSUME_ROLE: &str = "CannotAssumeRole";
pub const DELETION_WAITING: &str = "DeletionWaiting";
pub const IMAGE_NOT_RESOLVED: &str = "ImageNotResolved";
pub const SUBNET_NOT_FOUND: &str = "SubnetNotFound";
pub const NO_SUBNETS: &str = "NoSubnets";
pub const SUBNETS_IN_SEVERAL_VPCS: &str = "SubnetsInSeveralVpcs";
pub const INSTANCE_TYPE_NOT_OFFERED: &str = "InstanceTypeNotOffered";
/// Configured instance types that cannot run the configuration's architecture.
pub const INSTANCE_TYPE_WRONG_ARCHITECTURE: &str = "InstanceTypeWrongArchitecture";
pub const SECURITY_GROUP_NOT_FOUND: &str = "SecurityGroupNotFound";
pub const NO_ROUTE_TO_AWS: &str = "NoRouteToAws";
pub const WORKERS_UNREACHABLE: &str = "WorkersUnreachable";
pub const REGION_NOT_FOUND: &str = "RegionNotFound";
pub const REGION_NOT_ENABLED: &str = "RegionNotEnabled";
pub const REGION_UNREACHABLE: &str = "RegionUnreachable";
