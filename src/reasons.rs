//! The stable CamelCase reasons that reach a job's status: why a worker
//! failed (set by the worker agent or by the controller) and why a job
//! cannot launch workers. Statuses and worker messages carry them as
//! strings; code compares them as these types.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! failure_reasons {
    (
        permanent: [$($(#[$pm:meta])* $permanent:ident,)*]
        retriable: [$($(#[$rm:meta])* $retriable:ident,)*]
    ) => {
        /// Why a worker failed. A failure whose reason is not
        /// [permanent](FailureReason::is_permanent) counts against
        /// `backoffLimit` and is retried.
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub enum FailureReason {
            $($(#[$pm])* $permanent,)*
            $($(#[$rm])* $retriable,)*
            /// A reason this build does not know (from a newer worker);
            /// retried.
            Unknown(String),
        }

        impl FailureReason {
            /// The CamelCase reason, as statuses and messages carry it.
            pub const fn as_str(&self) -> &str {
                match self {
                    $(FailureReason::$permanent => stringify!($permanent),)*
                    $(FailureReason::$retriable => stringify!($retriable),)*
                    FailureReason::Unknown(reason) => reason.as_str(),
                }
            }

            /// True when retrying cannot fix the failure.
            pub fn is_permanent(&self) -> bool {
                matches!(self, $(FailureReason::$permanent)|*)
            }

            /// The reason named `reason`; [`FailureReason::Unknown`] when this
            /// build does not know it.
            pub fn parse(reason: &str) -> Self {
                match reason {
                    $(stringify!($permanent) => FailureReason::$permanent,)*
                    $(stringify!($retriable) => FailureReason::$retriable,)*
                    other => FailureReason::Unknown(other.to_string()),
                }
            }
        }
    };
}

failure_reasons! {
    permanent: [
        // What the job names does not exist, or is broken.
        SourceInstanceNotFound,
        SourceSnapshotNotFound,
        SourceSnapshotFailed,
        /// The source is not one the configuration's `allowedSources` admits.
        SourceNotAllowed,
        /// A full restore names a security group its configuration's
        /// `restoreSecurityGroupIds` does not list.
        SecurityGroupNotAllowed,
        /// The availability zone does not offer the restored instance's type.
        InstanceTypeNotOffered,
        /// The bucket a file-level session would restore files to is not there.
        RestoreTargetMissing,
        RepositoryNotFound,
        /// S3 answered 403 for a key of the repository: the worker's role
        /// lacks the object action, or `s3:ListBucket` for the key's prefix
        /// (without which a missing key is a 403, not a 404).
        RepositoryAccessDenied,
        RestorePointExists,
        RestorePointNotFound,
        RestorePointMissing,
        VolumeNotInRestorePoint,
        ChunkMissing,
        ChunkCorrupt,
        ManifestInvalid,
        /// A manifest does not verify with the repository's integrity key
        /// (changed, replaced, moved, or written without the key).
        RestorePointUnverified,
        /// A retention task's rules or time zone are not valid.
        RetentionInvalid,
        /// A RetentionJob's region is not its repository's.
        RepositoryRegionMismatch,
        // Set by the controller.
        VolumeCreateFailed,
        InstanceRestoreFailed,
        /// A restore worker named a snapshot that is not its own (not in
        /// the workers' account, or without the job's UID tag).
        SnapshotNotOwned,
        /// EBS put a restored snapshot (or the AMI registered from them)
        /// in state `error`/`failed` while sealing it.
        RestoredSnapshotFailed,
        /// A restored snapshot (or the AMI) was still not usable when the
        /// controller's `--restored-snapshot-timeout-seconds` ran out.
        RestoredSnapshotTimedOut,
        /// The RDS DB instance a job names does not exist.
        SourceDatabaseNotFound,
        /// The DB instance is in a state RDS cannot snapshot and that does
        /// not end by itself (stopped, failed, storage full, …).
        SourceDatabaseUnavailable,
        /// The Region's manual DB snapshot quota is used up.
        DatabaseSnapshotQuotaExceeded,
        /// A RestoreJob's new DB instance identifier is taken.
        DatabaseAlreadyExists,
        /// A restore point's DB snapshot is gone.
        DatabaseSnapshotMissing,
        /// RDS refused the restore's parameters (class, subnet group,
        /// security groups, parameter group, quota).
        DatabaseRestoreRefused,
        /// RDS failed the DB instance a restore created.
        DatabaseRestoreFailed,
        /// A copy of a DB snapshot to another Region cannot be made as
        /// asked (an encrypted snapshot and no key of that Region, a key
        /// RDS cannot use there).
        DatabaseCopyRefused,
        /// A dump is restored only into databases that hold nothing yet,
        /// and one on the target holds tables.
        DatabaseRestoreTargetNotEmpty,
        /// The DB instance a dump is to be loaded into does not exist (a
        /// dump is loaded into an existing DB instance only).
        DatabaseRestoreTargetNotFound,
        /// A PostgreSQL dump (or the load of one) cannot reach or sign in
        /// to the DB instance as it is set up: not RDS for PostgreSQL, no RDS-managed master
        /// password, another VPC than the configuration's, a worker that
        /// would run in another account, no room for one more security
        /// group on the DB instance.
        DatabaseDumpNotPossible,
        /// A RestoreJob's mode does not fit its restore point (a database
        /// restored as a volume, an instance as a database).
        RestoreModeMismatch,
        DeadlineExceeded,
        LaunchFailed,
        WorkerConfigurationDeleted,
    ]
    retriable: [
        /// The worker went silent, or its instance stopped or died.
        WorkerLost,
        /// The worker did not send `started` within `bootTimeoutSeconds`;
        /// the message ends with its console output.
        WorkerBootTimeout,
        RepositoryMissing,
        SnapshotFailed,
        SnapshotUnreadable,
        FilesystemUnreadable,
        SessionFailed,
        /// The worker's local disk failed (full, or unwritable) while
        /// garbage collection spilled chunk hashes to it.
        WorkerDiskFailed,
        /// A backup copied for longer than garbage collection's grace
        /// period and stored no restore point (a retry starts over).
        BackupOutlivedGracePeriod,
        /// RDS failed the DB snapshot, or it disappeared while being taken.
        DatabaseSnapshotFailed,
        /// The PostgreSQL tools could not dump the database (connection,
        /// authentication, permission, a table changed under them).
        DatabaseDumpFailed,
        /// The PostgreSQL tools could not load a dump into the target.
        DatabaseLoadFailed,
        // AWS errors, by category (see `AwsError::category`).
        AwsThrottled,
        AwsPermissionDenied,
        AwsRequestFailed,
        AwsUnreachable,
    ]
}

impl From<&str> for FailureReason {
    fn from(reason: &str) -> Self {
        FailureReason::parse(reason)
    }
}

impl From<&FailureReason> for FailureReason {
    fn from(reason: &FailureReason) -> Self {
        reason.clone()
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for FailureReason {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for FailureReason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for FailureReason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FailureReason {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(FailureReason::parse(&String::deserialize(deserializer)?))
    }
}

/// Why a job cannot launch workers until something is fixed (its `Ready`
/// and `Stalled` conditions' reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockedReason {
    RepositoryMissing,
    WorkerConfigurationNotFound,
    WorkerConfigurationAmbiguous,
    /// Its configuration is being deleted: workers waiting to launch fail
    /// with [`FailureReason::WorkerConfigurationDeleted`].
    WorkerConfigurationDeleting,
    RegionMismatch,
    WaitingForWorkerConfiguration,
    /// The configuration or repository does not admit the job's namespace.
    NamespaceNotAdmitted,
    BackupRepositoryNotFound,
    /// The repository names no integrity key (it was stored before
    /// `spec.integrity` existed): nothing is written or read unauthenticated.
    RepositoryIntegrityMissing,
    /// The worker agent cannot be delivered: it cannot be published to the
    /// repository, or this controller carries none for the workers'
    /// architecture and their image has none either.
    AgentUnavailable,
}

impl BlockedReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            BlockedReason::RepositoryMissing => "RepositoryMissing",
            BlockedReason::WorkerConfigurationNotFound => "WorkerConfigurationNotFound",
            BlockedReason::WorkerConfigurationAmbiguous => "WorkerConfigurationAmbiguous",
            BlockedReason::WorkerConfigurationDeleting => "WorkerConfigurationDeleting",
            BlockedReason::RegionMismatch => "RegionMismatch",
            BlockedReason::WaitingForWorkerConfiguration => "WaitingForWorkerConfiguration",
            BlockedReason::NamespaceNotAdmitted => "NamespaceNotAdmitted",
            BlockedReason::BackupRepositoryNotFound => "BackupRepositoryNotFound",
            BlockedReason::RepositoryIntegrityMissing => "RepositoryIntegrityMissing",
            BlockedReason::AgentUnavailable => "AgentUnavailable",
        }
    }
}

impl fmt::Display for BlockedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for BlockedReason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_keep_their_wire_names() {
        for reason in [
            "WorkerLost",
            "ChunkCorrupt",
            "AwsThrottled",
            "FromANewerWorker",
        ] {
            assert_eq!(FailureReason::parse(reason).as_str(), reason);
        }
        assert_eq!(
            FailureReason::parse("FromANewerWorker"),
            FailureReason::Unknown("FromANewerWorker".into())
        );
        let json = serde_json::to_string(&FailureReason::DeadlineExceeded).unwrap_or_default();
        assert_eq!(json, "\"DeadlineExceeded\"");
    }

    #[test]
    fn only_what_a_retry_cannot_fix_is_permanent() {
        assert!(FailureReason::SourceInstanceNotFound.is_permanent());
        assert!(FailureReason::LaunchFailed.is_permanent());
        assert!(FailureReason::RepositoryAccessDenied.is_permanent());
        assert!(!FailureReason::WorkerLost.is_permanent());
        assert!(!FailureReason::AwsThrottled.is_permanent());
        assert!(!FailureReason::parse("FromANewerWorker").is_permanent());
    }
}
