//! [`AwsOperation`]: every AWS operation Tender calls, and its IAM needs.
//!
//! Each with the IAM permissions it needs, the role that calls it and, for
//! the worker's, which worker profiles (backup, restore, file-level
//! recovery) call it. `tests/iam.rs` checks the policies in `iam/` against
//! this list; in test builds an SDK interceptor ([`KnownOperations`]) fails
//! any call of an operation missing from it, so no call escapes the check.

use std::fmt;
use std::sync::OnceLock;

use crate::messages::WorkerProfile;

/// An AWS service Tender calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AwsService {
    Ec2,
    Ebs,
    S3,
    Sqs,
    Sts,
    Ssm,
    Kms,
    Iam,
    Rds,
    SecretsManager,
}

impl AwsService {
    /// The IAM action prefix (`ec2`, `sqs`, …).
    pub const fn iam_prefix(self) -> &'static str {
        match self {
            AwsService::Ec2 => "ec2",
            AwsService::Ebs => "ebs",
            AwsService::S3 => "s3",
            AwsService::Sqs => "sqs",
            AwsService::Sts => "sts",
            AwsService::Ssm => "ssm",
            AwsService::Kms => "kms",
            AwsService::Iam => "iam",
            AwsService::Rds => "rds",
            AwsService::SecretsManager => "secretsmanager",
        }
    }

    /// The service name the SDK records with each call (`EC2`, `SQS`, …).
    pub const fn sdk_name(self) -> &'static str {
        match self {
            AwsService::Ec2 => "EC2",
            AwsService::Ebs => "EBS",
            AwsService::S3 => "S3",
            AwsService::Sqs => "SQS",
            AwsService::Sts => "STS",
            AwsService::Ssm => "SSM",
            AwsService::Kms => "KMS",
            AwsService::Iam => "IAM",
            AwsService::Rds => "RDS",
            AwsService::SecretsManager => "Secrets Manager",
        }
    }

    /// The last part of the service's VPC endpoint name
    /// (`com.amazonaws.<region>.<name>`), which a worker in private-network
    /// mode needs to call it.
    pub const fn endpoint_name(self) -> &'static str {
        self.iam_prefix()
    }
}

/// Which of Tender's roles makes a call: the controller, the worker agent
/// (with the data mover), or both; or the person who runs `tender doctor`
/// with their own credentials (in no shipped policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    Controller,
    Worker,
    Both,
    Operator,
}

impl Caller {
    pub fn includes_controller(self) -> bool {
        matches!(self, Caller::Controller | Caller::Both)
    }

    pub fn includes_worker(self) -> bool {
        matches!(self, Caller::Worker | Caller::Both)
    }
}

/// `Operation => Service, Caller [worker profiles];` — the profiles (which
/// worker operations call it) are given exactly when the worker calls it.
macro_rules! operations {
    ($($op:ident => $service:ident, $caller:ident $([$($profile:ident),+])?;)*) => {
        /// An AWS API operation Tender calls.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum AwsOperation {
            $($op,)*
        }

        impl AwsOperation {
            /// Every operation, for the IAM checks.
            pub const ALL: &'static [AwsOperation] = &[$(AwsOperation::$op,)*];

            /// The SDK operation name (`RunInstances`); also the `operation`
            /// label of the AWS metrics.
            pub const fn name(self) -> &'static str {
                match self {
                    $(AwsOperation::$op => stringify!($op),)*
                }
            }

            pub const fn service(self) -> AwsService {
                match self {
                    $(AwsOperation::$op => AwsService::$service,)*
                }
            }

            /// Which role calls it, and so which policy must grant it.
            pub const fn caller(self) -> Caller {
                match self {
                    $(AwsOperation::$op => Caller::$caller,)*
                }
            }

            /// The worker profiles that call it, and so whose policies
            /// (`iam/worker-<profile>-policy.json`) must grant it; empty
            /// when only the controller calls it.
            pub const fn worker_profiles(self) -> &'static [WorkerProfile] {
                match self {
                    $(AwsOperation::$op => &[$($(WorkerProfile::$profile,)+)?],)*
                }
            }
        }
    };
}

operations! {
    // EC2: worker instances and the restored instance.
    RunInstances => Ec2, Controller;
    TerminateInstances => Ec2, Controller;
    // What a worker that did not start printed (its user data's output).
    GetConsoleOutput => Ec2, Controller;
    DescribeInstances => Ec2, Both [Backup];
    DescribeVolumes => Ec2, Both [Backup];
    DescribeImages => Ec2, Controller;
    RegisterImage => Ec2, Controller;
    // EC2: network.
    DescribeSubnets => Ec2, Controller;
    DescribeSecurityGroups => Ec2, Controller;
    CreateSecurityGroup => Ec2, Controller;
    DeleteSecurityGroup => Ec2, Controller;
    AuthorizeSecurityGroupIngress => Ec2, Controller;
    AuthorizeSecurityGroupEgress => Ec2, Controller;
    RevokeSecurityGroupIngress => Ec2, Controller;
    RevokeSecurityGroupEgress => Ec2, Controller;
    DescribeVpcEndpoints => Ec2, Controller;
    DescribeInstanceTypeOfferings => Ec2, Controller;
    DescribeInstanceTypes => Ec2, Controller;
    DescribeRouteTables => Ec2, Controller;
    DescribeRegions => Ec2, Controller;
    // EC2: snapshots and volumes. A backup worker in the backup account
    // makes the snapshot calls with the production role it assumes.
    CreateSnapshots => Ec2, Worker [Backup];
    // The controller's sweep deletes restores' intermediate snapshots.
    DeleteSnapshot => Ec2, Both [Backup];
    DescribeSnapshots => Ec2, Both [Backup];
    CreateVolume => Ec2, Controller;
    // EBS direct APIs: the data mover.
    ListSnapshotBlocks => Ebs, Worker [Backup];
    ListChangedBlocks => Ebs, Worker [Backup];
    GetSnapshotBlock => Ebs, Worker [Backup];
    StartSnapshot => Ebs, Worker [Restore];
    PutSnapshotBlock => Ebs, Worker [Restore];
    CompleteSnapshot => Ebs, Worker [Restore];
    // S3: the repository.
    // The controller publishes the worker agent (HeadObject, PutObject)
    // and presigns its GetObject for the workers' user data.
    HeadObject => S3, Both [Backup, Retention];
    GetObject => S3, Both [Backup, Restore, FileLevel, Retention, Verification];
    PutObject => S3, Both [Backup, FileLevel, Retention];
    // S3: the controller checks a BackupRepository and counts what it
    // holds; a backup lists garbage collection's condemned-chunk lists; a
    // retention run lists restore points and chunks and deletes what
    // expired (DeleteObjects is authorized as s3:DeleteObject per key).
    HeadBucket => S3, Controller;
    ListObjectsV2 => S3, Both [Backup, Retention];
    DeleteObject => S3, Controller;
    DeleteObjects => S3, Both [Retention];
    // KMS: the repository's integrity key authenticates manifests and
    // `latest` pointers.
    // The controller seals the manifests of database restore points.
    GenerateMac => Kms, Both [Backup];
    // The controller verifies the manifests it lists as RestorePoints.
    VerifyMac => Kms, Both [Backup, Restore, FileLevel, Retention, Verification];
    // RDS: the controller snapshots DB instances (BackupJob), restores
    // snapshots into new DB instances (RestoreJob), and its sweep deletes
    // its own snapshots whose restore point is gone.
    DescribeDBInstances => Rds, Controller;
    CreateDBSnapshot => Rds, Controller;
    DescribeDBSnapshots => Rds, Controller;
    // `copyTo`: a copy in another Region, started in that Region.
    CopyDBSnapshot => Rds, Controller;
    DeleteDBSnapshot => Rds, Controller;
    RestoreDBInstanceFromDBSnapshot => Rds, Controller;
    // The same for Aurora and Multi-AZ DB clusters: cluster snapshots,
    // their copies, restores into a new cluster and its writer instance.
    DescribeDBClusters => Rds, Controller;
    CreateDBClusterSnapshot => Rds, Controller;
    DescribeDBClusterSnapshots => Rds, Controller;
    CopyDBClusterSnapshot => Rds, Controller;
    DeleteDBClusterSnapshot => Rds, Controller;
    RestoreDBClusterFromSnapshot => Rds, Controller;
    CreateDBInstance => Rds, Controller;
    // A PostgreSQL dump, or the load of one: the controller adds the
    // job's security group to the DB instance and removes it; the worker
    // reads the master password RDS keeps in Secrets Manager.
    ModifyDBInstance => Rds, Controller;
    GetSecretValue => SecretsManager, Worker [Backup, Restore];
    // SQS: worker reports.
    CreateQueue => Sqs, Controller;
    DeleteQueue => Sqs, Controller;
    ReceiveMessage => Sqs, Controller;
    DeleteMessageBatch => Sqs, Controller;
    ListQueues => Sqs, Controller;
    ListQueueTags => Sqs, Controller;
    SetQueueAttributes => Sqs, Controller;
    SendMessage => Sqs, Worker [Backup, Restore, FileLevel, Retention, Verification];
    // STS and SSM. AssumeRole is called by the SDK's AssumeRoleProvider
    // (see `accounts`), not through `AwsClients::call`.
    AssumeRole => Sts, Both [Backup];
    GetCallerIdentity => Sts, Controller;
    GetParameter => Ssm, Controller;
    // Restoring files to the original location: the controller checks the
    // source instance's SSM Agent, sends the command and follows it.
    DescribeInstanceInformation => Ssm, Controller;
    SendCommand => Ssm, Controller;
    GetCommandInvocation => Ssm, Controller;
    // `tender doctor`, run by a person with their own credentials.
    GetBucketVersioning => S3, Operator;
    GetBucketEncryption => S3, Operator;
    SimulatePrincipalPolicy => Iam, Operator;
}

impl AwsOperation {
    /// The IAM action that authorizes the call. SQS authorizes a batch with
    /// the single-message action; S3 authorizes HEAD with `s3:GetObject`.
    /// (`sts:GetCallerIdentity` is always allowed; the policy names it all
    /// the same.)
    pub fn iam_action(self) -> String {
        let action = match self {
            AwsOperation::DeleteMessageBatch => "DeleteMessage",
            AwsOperation::DeleteObjects => "DeleteObject",
            AwsOperation::HeadObject => "GetObject",
            AwsOperation::HeadBucket | AwsOperation::ListObjectsV2 => "ListBucket",
            AwsOperation::GetBucketEncryption => "GetEncryptionConfiguration",
            op => op.name(),
        };
        format!("{}:{action}", self.service().iam_prefix())
    }

    /// EC2 resource types (as ARNs name them) the request tags at creation:
    /// EC2 then also authorizes `ec2:CreateTags` with `ec2:CreateAction`
    /// set to this operation.
    pub const fn tags_at_creation(self) -> &'static [&'static str] {
        match self {
            AwsOperation::RunInstances => &["instance", "volume"],
            AwsOperation::CreateSecurityGroup => &["security-group"],
            AwsOperation::CreateSnapshots => &["snapshot"],
            AwsOperation::CreateVolume => &["volume"],
            AwsOperation::RegisterImage => &["image"],
            // The EBS direct APIs tag a new snapshot through EC2 as well.
            AwsOperation::StartSnapshot => &["snapshot"],
            _ => &[],
        }
    }

    /// The `ec2:CreateAction` EC2 sets when it authorizes the tags this
    /// request sets at creation: the operation's name for EC2's own
    /// requests. `None` for the EBS direct APIs' StartSnapshot, whose tags
    /// need `ec2:CreateTags` too but for which AWS documents no
    /// `ec2:CreateAction` value (so a policy cannot rely on one).
    pub fn create_action(self) -> Option<&'static str> {
        match self.service() {
            AwsService::Ec2 if !self.tags_at_creation().is_empty() => Some(self.name()),
            _ => None,
        }
    }

    /// Actions the request needs besides [`AwsOperation::iam_action`]:
    /// `ec2:CreateTags` for tags at creation, `iam:PassRole` for a worker's
    /// instance profile, `sqs:TagQueue` for a queue's tags, and
    /// `s3:ListBucket` for reads of keys that may be missing: without it S3
    /// answers a missing key with 403, which the code cannot tell from a
    /// denial, instead of the 404 it reads as "absent"; and the KMS
    /// actions EBS performs for the caller on an encrypted snapshot.
    pub fn also_needs(self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if !self.tags_at_creation().is_empty() {
            out.push("ec2:CreateTags");
        }
        match self {
            AwsOperation::RunInstances => out.push("iam:PassRole"),
            AwsOperation::CreateQueue => out.push("sqs:TagQueue"),
            AwsOperation::GetObject | AwsOperation::HeadObject => out.push("s3:ListBucket"),
            // "If tags are specified in the create action, RDS performs
            // additional authorization on the rds:AddTagsToResource action"
            // (Amazon RDS User Guide, "Grant permission to tag resources on
            // creation").
            AwsOperation::CreateDBSnapshot | AwsOperation::CreateDBClusterSnapshot => {
                out.push("rds:AddTagsToResource");
            }
            // A copy encrypted with a customer managed key of its Region.
            AwsOperation::CopyDBSnapshot | AwsOperation::CopyDBClusterSnapshot => out.extend([
                "rds:AddTagsToResource",
                "kms:CreateGrant",
                "kms:DescribeKey",
            ]),
            // A DB instance encrypted with a customer managed key: RDS
            // makes a grant on it for the caller ("Amazon RDS KMS key
            // management": kms:CreateGrant and kms:DescribeKey).
            AwsOperation::RestoreDBInstanceFromDBSnapshot
            | AwsOperation::RestoreDBClusterFromSnapshot => out.extend([
                "rds:AddTagsToResource",
                "kms:CreateGrant",
                "kms:DescribeKey",
            ]),
            // An Aurora cluster's writer: tagged at creation; the cluster
            // holds the storage and its key.
            AwsOperation::CreateDBInstance => out.push("rds:AddTagsToResource"),
            // An encrypted snapshot's blocks: EBS uses its KMS key on the
            // caller's behalf ("To access an encrypted snapshot, the user
            // must have access to the KMS key used to encrypt the snapshot,
            // and to the AWS KMS decrypt action", EBS direct APIs FAQ;
            // "Permissions to use AWS KMS keys" in
            // <https://docs.aws.amazon.com/ebs/latest/userguide/ebsapi-permissions.html>).
            AwsOperation::GetSnapshotBlock | AwsOperation::PutSnapshotBlock => {
                out.push("kms:Decrypt");
            }
            // A new encrypted snapshot: EBS makes its data key and a grant.
            AwsOperation::StartSnapshot => out.extend([
                "kms:GenerateDataKeyWithoutPlaintext",
                "kms:CreateGrant",
                "kms:DescribeKey",
            ]),
            _ => {}
        }
        out
    }

    /// The operation the SDK names `service`/`name` (as in its
    /// `Metadata`), if Tender calls it.
    pub fn find(service: &str, name: &str) -> Option<AwsOperation> {
        AwsOperation::ALL
            .iter()
            .copied()
            .find(|op| op.name() == name && op.service().sdk_name().eq_ignore_ascii_case(service))
    }
}

/// The worker profile this process works as, once the worker agent said so
/// ([`declare_worker_profile`]). Test builds then refuse every call that
/// [`AwsOperation::worker_profiles`] does not give to that profile, so the
/// table the worker policies and the private-network endpoint lists derive
/// from is checked against the calls each kind of worker really makes.
static WORKER_PROFILE: OnceLock<WorkerProfile> = OnceLock::new();

/// Says which worker profile this process works as (the worker agent, once
/// it has read its task). Only the first declaration counts.
pub fn declare_worker_profile(profile: WorkerProfile) {
    let _ = WORKER_PROFILE.set(profile);
}

/// Whether a worker of `profile` may call `op` according to the table:
/// `Err` says what to add where.
pub fn worker_may_call(op: AwsOperation, profile: WorkerProfile) -> Result<(), String> {
    if op.worker_profiles().contains(&profile) {
        return Ok(());
    }
    Err(format!(
        "a {} worker called {} {op}, which src/aws/operation.rs does not list for that profile: \
         add it there (the worker policy in iam/ and the private-network endpoint list follow \
         from that table)",
        profile.as_str(),
        op.service().sdk_name()
    ))
}

impl fmt::Display for AwsOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Test builds: an SDK interceptor that fails every call of an operation
/// that is not an [`AwsOperation`], so that no call escapes the IAM checks.
#[cfg(any(test, feature = "fault-injection"))]
pub use strict::KnownOperations;

#[cfg(any(test, feature = "fault-injection"))]
mod strict {
    use aws_sdk_ec2::config::interceptors::BeforeSerializationInterceptorContextRef;
    use aws_sdk_ec2::config::{ConfigBag, Intercept, RuntimeComponents};
    use aws_sdk_ec2::error::BoxError;
    use aws_smithy_runtime_api::client::orchestrator::Metadata;

    use super::AwsOperation;

    /// Fails calls of operations missing from [`AwsOperation`].
    #[derive(Debug, Default)]
    pub struct KnownOperations;

    /// A call of an operation missing from [`AwsOperation`].
    #[derive(Debug, thiserror::Error)]
    #[error(
        "{service} {operation} is not an AwsOperation: add it to src/aws/operation.rs (and its \
         permission to iam/) before calling it"
    )]
    pub struct UnknownOperation {
        pub service: String,
        pub operation: String,
    }

    impl Intercept for KnownOperations {
        fn name(&self) -> &'static str {
            "KnownOperations"
        }

        // Not `read_before_execution`: a client's interceptors run it before
        // the operation's configuration (and so its `Metadata`) is loaded.
        fn read_before_serialization(
            &self,
            _context: &BeforeSerializationInterceptorContextRef<'_>,
            _components: &RuntimeComponents,
            cfg: &mut ConfigBag,
        ) -> Result<(), BoxError> {
            let Some(meta) = cfg.load::<Metadata>() else {
                return Err("the SDK recorded no operation metadata for this call".into());
            };
            match AwsOperation::find(meta.service(), meta.name()) {
                Some(op) => match super::WORKER_PROFILE.get() {
                    Some(&profile) => super::worker_may_call(op, profile).map_err(|e| {
                        tracing::error!(error = %e, "AWS call refused");
                        e.into()
                    }),
                    None => Ok(()),
                },
                None => {
                    let e = UnknownOperation {
                        service: meta.service().to_string(),
                        operation: meta.name().to_string(),
                    };
                    tracing::error!(error = %e, "AWS call refused");
                    Err(e.into())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_actions() {
        assert_eq!(AwsOperation::RunInstances.name(), "RunInstances");
        assert_eq!(AwsOperation::RunInstances.iam_action(), "ec2:RunInstances");
        assert_eq!(
            AwsOperation::DeleteMessageBatch.iam_action(),
            "sqs:DeleteMessage"
        );
        assert_eq!(AwsOperation::HeadObject.iam_action(), "s3:GetObject");
        assert_eq!(
            AwsOperation::GetBucketEncryption.iam_action(),
            "s3:GetEncryptionConfiguration"
        );
        assert_eq!(
            AwsOperation::GetSnapshotBlock.iam_action(),
            "ebs:GetSnapshotBlock"
        );
        assert_eq!(
            AwsOperation::find("EC2", "TerminateInstances"),
            Some(AwsOperation::TerminateInstances)
        );
        assert_eq!(AwsOperation::find("SQS", "TerminateInstances"), None);
        assert_eq!(AwsOperation::find("EC2", "DescribeVpcs"), None);
    }

    #[test]
    fn worker_profiles_are_named_exactly_for_worker_calls() {
        for &op in AwsOperation::ALL {
            assert_eq!(
                op.caller().includes_worker(),
                !op.worker_profiles().is_empty(),
                "{op:?}: a worker call names the profiles that make it, a controller call none"
            );
        }
        assert_eq!(
            AwsOperation::SendMessage.worker_profiles(),
            WorkerProfile::ALL.as_slice()
        );
        assert_eq!(
            AwsOperation::PutObject.worker_profiles(),
            [
                WorkerProfile::Backup,
                WorkerProfile::FileLevel,
                WorkerProfile::Retention
            ]
            .as_slice()
        );
        // Only a retention run deletes from the repository.
        assert_eq!(
            AwsOperation::DeleteObjects.worker_profiles(),
            [WorkerProfile::Retention].as_slice()
        );
        assert!(AwsOperation::RunInstances.worker_profiles().is_empty());
    }

    #[test]
    fn tags_at_creation_name_their_create_action_where_aws_sets_one() {
        assert_eq!(
            AwsOperation::CreateSnapshots.create_action(),
            Some("CreateSnapshots")
        );
        assert_eq!(AwsOperation::StartSnapshot.create_action(), None);
        assert_eq!(
            AwsOperation::StartSnapshot.also_needs(),
            vec![
                "ec2:CreateTags",
                "kms:GenerateDataKeyWithoutPlaintext",
                "kms:CreateGrant",
                "kms:DescribeKey"
            ]
        );
        assert_eq!(
            AwsOperation::GetSnapshotBlock.also_needs(),
            vec!["kms:Decrypt"]
        );
        assert_eq!(AwsOperation::DescribeInstances.create_action(), None);
        assert_eq!(AwsOperation::HeadObject.also_needs(), vec!["s3:ListBucket"]);
    }

    #[test]
    fn a_worker_may_make_only_the_calls_its_profile_lists() {
        assert!(worker_may_call(AwsOperation::StartSnapshot, WorkerProfile::Restore).is_ok());
        let refused = worker_may_call(AwsOperation::CreateSnapshots, WorkerProfile::FileLevel)
            .expect_err("a file-level worker takes no snapshot");
        assert!(
            refused.contains("fileLevel worker called EC2 CreateSnapshots"),
            "{refused}"
        );
        assert!(worker_may_call(AwsOperation::RunInstances, WorkerProfile::Backup).is_err());
    }

    /// A client as `AwsClients` builds them, pointed at a closed port.
    fn ec2_client() -> aws_sdk_ec2::Client {
        use aws_config::retry::RetryConfig;
        use aws_config::{BehaviorVersion, Region};
        let mut conf = aws_sdk_ec2::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                "AKIDEXAMPLE",
                "secret",
                None,
                None,
                "test",
            ))
            .endpoint_url("http://127.0.0.1:1")
            .retry_config(RetryConfig::disabled());
        conf.set_interceptors(super::super::interceptors());
        aws_sdk_ec2::Client::from_conf(conf.build())
    }

    #[tokio::test]
    async fn test_builds_refuse_operations_missing_from_the_enum() {
        use aws_sdk_ec2::error::DisplayErrorContext;
        let ec2 = ec2_client();
        let refused = ec2.describe_vpcs().send().await.expect_err("refused");
        let refused = DisplayErrorContext(&refused).to_string();
        assert!(
            refused.contains("EC2 DescribeVpcs is not an AwsOperation"),
            "{refused}"
        );
        // A known operation gets past the interceptor (and fails to connect).
        let unreachable = ec2
            .describe_subnets()
            .send()
            .await
            .expect_err("no endpoint");
        let unreachable = DisplayErrorContext(&unreachable).to_string();
        assert!(!unreachable.contains("AwsOperation"), "{unreachable}");
    }
}
