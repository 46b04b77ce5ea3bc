//! The AWS layer: [`AwsClients`] and one provider per concern on it.
//!
//! Every AWS call Tender makes goes through here, with the SDK's adaptive
//! retry mode (backs off on throttling) and one error type that carries a
//! low-cardinality category. Reconcilers never hold an SDK client.
//!
//! [`AwsClients`] owns construction, scoping (`accounts`), the client
//! caches, the metrics, the call wrapper and the batched calls; the calls
//! themselves belong to the providers, each borrowing it:
//! [`AwsClients::instances`], [`AwsClients::network`],
//! [`AwsClients::queues`], [`AwsClients::snapshots`],
//! [`AwsClients::repository`] and [`AwsClients::macs`].

pub mod account_checks;
pub mod accounts;
pub mod agent_objects;
pub mod batch;
pub mod consistency;
pub mod console;
pub mod ebs;
pub mod group_pairs;
pub mod images;
pub mod instance_cache;
pub mod instance_state;
pub mod instances;
pub mod kms;
pub mod metadata;
pub mod network;
pub mod operation;
pub mod queues;
pub mod rds;
pub mod repository;
pub mod run_command;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::reasons::FailureReason;
use crate::telemetry::Metrics;

pub use self::operation::AwsOperation;

/// Attempts per AWS call, including the first.
const MAX_ATTEMPTS: u32 = 5;

/// A method that builds a client of SDK `$sdk` for a region each time it is
/// called, from the shared configuration and with [`interceptors`].
macro_rules! client_per_use {
    ($(#[$doc:meta])* $name:ident, $sdk:ident) => {
        $(#[$doc])*
        pub(crate) fn $name(&self, region: &str) -> $sdk::Client {
            let mut conf =
                $sdk::config::Builder::from(&self.base).region(Region::new(region.to_string()));
            conf.set_interceptors(interceptors());
            $sdk::Client::from_conf(conf.build())
        }
    };
}

/// Shared AWS clients, one per region, built from one loaded configuration
/// (credentials chain, `AWS_ENDPOINT_URL`, retry mode).
#[derive(Clone)]
pub struct AwsClients {
    base: SdkConfig,
    metrics: Arc<Metrics>,
    /// Clients for assumed roles, by access (see `accounts`).
    scopes: Arc<Mutex<HashMap<accounts::Access, AwsClients>>>,
    ec2: Arc<Mutex<HashMap<String, aws_sdk_ec2::Client>>>,
    sqs: Arc<Mutex<HashMap<String, aws_sdk_sqs::Client>>>,
    ebs: Arc<Mutex<HashMap<String, aws_sdk_ebs::Client>>>,
    s3: Arc<Mutex<HashMap<String, aws_sdk_s3::Client>>>,
    /// Calls that concurrent callers of this scope share.
    batches: Arc<Batches>,
}

/// The batched calls (see `batch`), per scope: only callers with the same
/// credentials share a call.
pub(crate) struct Batches {
    snapshots: batch::Batcher<String, ebs::SnapshotInfo>,
    sources: batch::Batcher<String, instances::SourceInstance>,
    terminations: batch::Batcher<String, instances::WorkerInstance>,
    deletions: batch::Batcher<String, ()>,
}

impl Default for Batches {
    fn default() -> Self {
        Self {
            snapshots: batch::Batcher::new(AwsOperation::DescribeSnapshots, 200),
            sources: batch::Batcher::new(AwsOperation::DescribeInstances, 200),
            terminations: batch::Batcher::new(AwsOperation::TerminateInstances, 200),
            deletions: batch::Batcher::new(AwsOperation::DeleteMessageBatch, 10),
        }
    }
}

impl AwsClients {
    /// Loads the AWS configuration from the environment, the way every AWS
    /// tool does (env, profile, web identity for IRSA, instance metadata).
    pub async fn from_env() -> Self {
        let base = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::adaptive().with_max_attempts(MAX_ATTEMPTS))
            .load()
            .await;
        Self::with(base, Arc::default())
    }

    /// As [`AwsClients::from_env`], with every service at `endpoint` (a
    /// proxy in front of the emulator, in tests).
    pub async fn from_env_with_endpoint(endpoint: &str) -> Self {
        let base = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::adaptive().with_max_attempts(MAX_ATTEMPTS))
            .endpoint_url(endpoint)
            .load()
            .await;
        Self::with(base, Arc::default())
    }

    /// Clients from `base`, counted in `metrics`, with no client built yet.
    fn with(base: SdkConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            base,
            metrics,
            scopes: Arc::default(),
            ec2: Arc::default(),
            sqs: Arc::default(),
            ebs: Arc::default(),
            s3: Arc::default(),
            batches: Arc::default(),
        }
    }

    /// The region of the loaded configuration (`AWS_REGION`, the profile),
    /// if it names one.
    pub fn home_region(&self) -> Option<String> {
        self.base.region().map(|r| r.to_string())
    }

    /// The metrics every AWS call is counted in; the controller serves them.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Worker instances, restored instances and the images they start from.
    pub fn instances(&self) -> instances::Instances<'_> {
        instances::Instances { aws: self }
    }

    /// Subnets, security groups, VPC endpoints and offered instance types.
    pub fn network(&self) -> network::Network<'_> {
        network::Network { aws: self }
    }

    /// The SQS queues that carry worker reports.
    pub fn queues(&self) -> queues::Queues<'_> {
        queues::Queues { aws: self }
    }

    /// EBS snapshots and volumes, and their blocks (the EBS direct APIs).
    pub fn snapshots(&self) -> ebs::Snapshots<'_> {
        ebs::Snapshots { aws: self }
    }

    /// The backup repository's objects in S3.
    pub fn repository(&self) -> repository::Repository<'_> {
        repository::Repository { aws: self }
    }

    /// What `tender doctor` asks of an account and nothing else does.
    pub fn account_checks(&self) -> account_checks::AccountChecks<'_> {
        account_checks::AccountChecks { aws: self }
    }

    /// RDS DB instances and the snapshots Tender takes of them.
    pub fn databases(&self) -> rds::Databases<'_> {
        rds::Databases { aws: self }
    }

    /// HMACs by the repository's integrity key, in KMS.
    pub fn macs(&self) -> kms::Macs<'_> {
        kms::Macs { aws: self }
    }

    /// Makes one AWS call: counts it, times it and turns its error into an
    /// [`AwsError`] (counted by category). Every SDK call goes through here
    /// (or [`AwsClients::page`]), naming its operation once.
    pub(crate) async fn call<T, E, R>(
        &self,
        op: AwsOperation,
        request: impl Future<Output = Result<T, SdkError<E, R>>>,
    ) -> Result<T, AwsError>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + HttpStatus,
    {
        self.metrics.aws_call(op.name());
        let started = Instant::now();
        let outcome = request.await;
        self.metrics.aws_call_took(op.name(), started.elapsed());
        outcome.map_err(|e| {
            let e = aws_error(op.name(), e);
            self.metrics.aws_error(op.name(), e.category());
            e
        })
    }

    /// The next page of a paginated call (`pages.next()`), as
    /// [`AwsClients::call`] makes a call: each page is one call.
    pub(crate) async fn page<T, E, R>(
        &self,
        op: AwsOperation,
        next: impl Future<Output = Option<Result<T, SdkError<E, R>>>>,
    ) -> Result<Option<T>, AwsError>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + HttpStatus,
    {
        let started = Instant::now();
        let Some(outcome) = next.await else {
            return Ok(None);
        };
        self.metrics.aws_call(op.name());
        self.metrics.aws_call_took(op.name(), started.elapsed());
        outcome.map(Some).map_err(|e| {
            let e = aws_error(op.name(), e);
            self.metrics.aws_error(op.name(), e.category());
            e
        })
    }

    pub(crate) fn ec2(&self, region: &str) -> aws_sdk_ec2::Client {
        let mut clients = self.ec2.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry(region.to_string())
            .or_insert_with(|| {
                let mut conf = aws_sdk_ec2::config::Builder::from(&self.base)
                    .region(Region::new(region.to_string()));
                conf.set_interceptors(interceptors());
                let conf = conf.build();
                aws_sdk_ec2::Client::from_conf(conf)
            })
            .clone()
    }

    pub(crate) fn ebs(&self, region: &str) -> aws_sdk_ebs::Client {
        let mut clients = self.ebs.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry(region.to_string())
            .or_insert_with(|| {
                let mut conf = aws_sdk_ebs::config::Builder::from(&self.base)
                    .region(Region::new(region.to_string()));
                conf.set_interceptors(interceptors());
                let conf = conf.build();
                aws_sdk_ebs::Client::from_conf(conf)
            })
            .clone()
    }

    pub(crate) fn s3(&self, region: &str) -> aws_sdk_s3::Client {
        let mut clients = self.s3.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry(region.to_string())
            .or_insert_with(|| {
                // An endpoint override (a VPC endpoint, a local emulator)
                // serves buckets by path, not by host name.
                let mut conf = aws_sdk_s3::config::Builder::from(&self.base)
                    .region(Region::new(region.to_string()))
                    .force_path_style(self.base.endpoint_url().is_some());
                conf.set_interceptors(interceptors());
                let conf = conf.build();
                aws_sdk_s3::Client::from_conf(conf)
            })
            .clone()
    }

    pub(crate) fn sqs(&self, region: &str) -> aws_sdk_sqs::Client {
        let mut clients = self.sqs.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry(region.to_string())
            .or_insert_with(|| {
                let mut conf = aws_sdk_sqs::config::Builder::from(&self.base)
                    .region(Region::new(region.to_string()));
                conf.set_interceptors(interceptors());
                let conf = conf.build();
                aws_sdk_sqs::Client::from_conf(conf)
            })
            .clone()
    }

    client_per_use!(
        /// An STS client (built for each use: the controller rarely asks).
        sts,
        aws_sdk_sts
    );
    client_per_use!(
        /// An SSM client (built for each use: the controller rarely asks).
        ssm,
        aws_sdk_ssm
    );
    client_per_use!(
        /// An RDS client (built for each use: a database job makes a call
        /// every few seconds at most).
        rds,
        aws_sdk_rds
    );
    client_per_use!(
        /// A Secrets Manager client (a dump worker reads one secret).
        secretsmanager,
        aws_sdk_secretsmanager
    );
    client_per_use!(
        /// An IAM client (`tender doctor` only).
        iam,
        aws_sdk_iam
    );
    client_per_use!(
        /// A KMS client (built for each use: a task makes a few MAC calls).
        kms,
        aws_sdk_kms
    );
}

/// The interceptors of every client: in test builds, one that fails calls
/// of operations missing from [`AwsOperation`].
fn interceptors() -> Vec<aws_sdk_ec2::config::SharedInterceptor> {
    #[cfg(any(test, feature = "fault-injection"))]
    {
        vec![aws_sdk_ec2::config::SharedInterceptor::new(
            operation::KnownOperations,
        )]
    }
    #[cfg(not(any(test, feature = "fault-injection")))]
    {
        Vec::new()
    }
}

/// A failed AWS call.
#[derive(Clone, Debug, thiserror::Error)]
pub enum AwsError {
    /// AWS answered with an error code.
    #[error("AWS {operation} failed with {code}: {message}")]
    Service {
        operation: &'static str,
        code: String,
        message: String,
    },
    /// The call never got an answer (network, endpoint, credentials).
    #[error("AWS {operation} could not be sent: {detail}")]
    Unreachable {
        operation: &'static str,
        detail: String,
    },
    /// S3 refused a key of the backup repository (403). S3 answers 403 for
    /// a key that does not exist, too, when the caller lacks `s3:ListBucket`
    /// on the bucket for that key (see `repository`), so both are named.
    #[error(
        "S3 {operation} of s3://{bucket}/{key} was denied (403 {code}): the worker's role needs {action} on arn:aws:s3:::{bucket}/{key}, and s3:ListBucket on arn:aws:s3:::{bucket} with an s3:prefix condition covering {key} (without it S3 answers 403 for a key that does not exist yet); S3 also answers 403 when the bucket is not owned by the repository's expectedBucketOwner. See iam/README.md"
    )]
    RepositoryAccessDenied {
        operation: &'static str,
        code: String,
        bucket: String,
        key: String,
        /// The IAM action the call needs (`s3:GetObject`, `s3:PutObject`).
        action: &'static str,
    },
}

impl AwsError {
    /// The AWS error code, when AWS answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            AwsError::Service { code, .. } | AwsError::RepositoryAccessDenied { code, .. } => {
                Some(code)
            }
            AwsError::Unreachable { .. } => None,
        }
    }

    /// True when the same call may well succeed if tried again as it is
    /// (throttled, or no answer): retried with backoff, not reported as a
    /// failure of the job.
    pub fn is_transient(&self) -> bool {
        match self {
            AwsError::Service { code, .. } => is_throttling(code),
            AwsError::Unreachable { .. } => true,
            AwsError::RepositoryAccessDenied { .. } => false,
        }
    }

    /// True when AWS refused the call for want of a permission (the
    /// caller's policies do not allow it).
    pub fn is_permission_denied(&self) -> bool {
        match self {
            AwsError::Service { code, .. } => is_permission(code),
            AwsError::Unreachable { .. } => false,
            AwsError::RepositoryAccessDenied { .. } => true,
        }
    }

    /// A low-cardinality category for Event reasons and metric labels.
    pub fn category(&self) -> &'static str {
        match self {
            AwsError::Service { code, .. } if is_throttling(code) => "AwsThrottled",
            AwsError::Service { code, .. } if is_permission(code) => "AwsPermissionDenied",
            AwsError::Service { .. } => "AwsRequestFailed",
            AwsError::Unreachable { .. } => "AwsUnreachable",
            AwsError::RepositoryAccessDenied { .. } => "AwsPermissionDenied",
        }
    }

    /// The category as the reason of a worker that failed with this error.
    pub fn failure_reason(&self) -> FailureReason {
        match self {
            AwsError::Service { code, .. } if is_throttling(code) => FailureReason::AwsThrottled,
            AwsError::Service { code, .. } if is_permission(code) => {
                FailureReason::AwsPermissionDenied
            }
            AwsError::Service { .. } => FailureReason::AwsRequestFailed,
            AwsError::Unreachable { .. } => FailureReason::AwsUnreachable,
            AwsError::RepositoryAccessDenied { .. } => FailureReason::RepositoryAccessDenied,
        }
    }
}

/// The whole body of `op`'s answer (an S3 object, an EBS block); a body
/// cut short counts as no answer.
pub(crate) async fn read_body(
    op: AwsOperation,
    body: aws_sdk_s3::primitives::ByteStream,
) -> Result<Vec<u8>, AwsError> {
    let data = body.collect().await.map_err(|e| AwsError::Unreachable {
        operation: op.name(),
        detail: e.to_string(),
    })?;
    Ok(data.into_bytes().to_vec())
}

/// What kept a call from being answered, for people: a name that does not
/// resolve, a refused or timed-out connection, or the SDK's own words.
pub fn unreachable_cause(detail: &str) -> String {
    let lower = detail.to_ascii_lowercase();
    if lower.contains("dns error") || lower.contains("failed to lookup address") {
        "the endpoint's name does not resolve (a region that does not exist has no endpoints)"
            .into()
    } else if lower.contains("connection refused") || lower.contains("tcp connect error") {
        "the connection to the endpoint was refused".into()
    } else if lower.contains("timeout") || lower.contains("timed out") {
        "the endpoint did not answer in time".into()
    } else {
        detail.to_string()
    }
}

/// EC2 tags for a request, from key-value pairs.
pub(crate) fn ec2_tags<'a>(
    tags: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Vec<aws_sdk_ec2::types::Tag> {
    tags.into_iter()
        .map(|(k, v)| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build())
        .collect()
}

/// Tags a resource of type `resource` gets at creation.
pub(crate) fn tag_specification(
    resource: aws_sdk_ec2::types::ResourceType,
    tags: Vec<aws_sdk_ec2::types::Tag>,
) -> aws_sdk_ec2::types::TagSpecification {
    aws_sdk_ec2::types::TagSpecification::builder()
        .resource_type(resource)
        .set_tags(Some(tags))
        .build()
}

/// Throttling, as each service names it: EC2 `RequestLimitExceeded`, the
/// EBS direct APIs `RequestThrottledException` (and
/// `ConcurrentLimitExceededException` for too many requests at once), S3
/// `SlowDown` (503), and a bare 429 or 503 without a code ([`aws_error`]
/// names those `Http429`/`Http503`).
fn is_throttling(code: &str) -> bool {
    matches!(
        code,
        "Throttling"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "RequestThrottled"
            | "RequestThrottledException"
            | "ConcurrentLimitExceededException"
            | "TooManyRequestsException"
            | "SlowDown"
            | "Http429"
            | "Http503"
    )
}

fn is_permission(code: &str) -> bool {
    matches!(
        code,
        "UnauthorizedOperation"
            | "AccessDenied"
            | "AccessDeniedException"
            | "AuthFailure"
            | "Http403"
    )
}

/// The HTTP status of a raw response, for errors that carry no code.
pub(crate) trait HttpStatus {
    fn http_status(&self) -> u16;
}

impl HttpStatus for aws_smithy_runtime_api::http::Response {
    fn http_status(&self) -> u16 {
        self.status().as_u16()
    }
}

/// Turns an SDK error into an [`AwsError`] for `operation`. An answer
/// without an error code (S3 answers a HEAD with no body) is named by its
/// status: `Http403`, `Http503`.
fn aws_error<E, R>(operation: &'static str, err: SdkError<E, R>) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + HttpStatus,
{
    match &err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let code = match e.code() {
                Some(code) => code.to_string(),
                None => format!("Http{}", service.raw().http_status()),
            };
            AwsError::Service {
                operation,
                code,
                message: e.message().unwrap_or_default().to_string(),
            }
        }
        _ => AwsError::Unreachable {
            operation,
            detail: DisplayErrorContext(&err).to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the SDK really says when a region's endpoint does not resolve
    /// (`.invalid` never does, RFC 2606), as the check classifies it.
    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_classified_as_such() {
        use aws_config::retry::RetryConfig;
        use aws_config::{BehaviorVersion, Region};
        let conf = aws_sdk_ec2::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("xx-nowhere-1"))
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                "AKIDEXAMPLE",
                "secret",
                None,
                None,
                "test",
            ))
            .endpoint_url("https://ec2.xx-nowhere-1.tender-test.invalid")
            .retry_config(RetryConfig::disabled())
            .build();
        let err = aws_sdk_ec2::Client::from_conf(conf)
            .describe_regions()
            .send()
            .await
            .expect_err("no such host");
        let detail = aws_sdk_ec2::error::DisplayErrorContext(&err).to_string();
        assert!(
            crate::aws::unreachable_cause(&detail).contains("does not resolve"),
            "{detail}"
        );
    }

    /// A HEAD answered 403 or 404 has no body, so no error code: the error
    /// is named by the status, as S3's missing and forbidden buckets are.
    #[tokio::test]
    async fn an_answer_without_a_code_is_named_by_its_status() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // S3 models HeadBucket's 404 as `NotFound`; its 403 has no model.
        for (status, code) in [("403 Forbidden", "Http403"), ("404 Not Found", "NotFound")] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let port = listener.local_addr().expect("addr").port();
            let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
            tokio::spawn(async move {
                while let Ok((mut conn, _)) = listener.accept().await {
                    let mut buf = [0u8; 4096];
                    let _ = conn.read(&mut buf).await;
                    let _ = conn.write_all(answer.as_bytes()).await;
                }
            });
            let base = aws_config::SdkConfig::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .endpoint_url(format!("http://127.0.0.1:{port}"))
                .credentials_provider(
                    aws_credential_types::provider::SharedCredentialsProvider::new(
                        aws_credential_types::Credentials::new(
                            "AKID", "secret", None, None, "test",
                        ),
                    ),
                )
                .retry_config(RetryConfig::disabled())
                .build();
            let aws = AwsClients::with(base, Arc::default());
            let bucket = repository::Bucket {
                region: "us-east-1",
                name: "b",
                expected_owner: "111122223333",
            };
            let e = aws
                .repository()
                .head_bucket(bucket)
                .await
                .expect_err("refused");
            assert_eq!(e.code(), Some(code), "{e}");
        }
    }

    #[test]
    fn a_failure_reason_is_the_error_category() {
        let service = |code: &str| AwsError::Service {
            operation: AwsOperation::RunInstances.name(),
            code: code.into(),
            message: String::new(),
        };
        for e in [
            service("RequestLimitExceeded"),
            service("UnauthorizedOperation"),
            service("InvalidParameterValue"),
            AwsError::Unreachable {
                operation: AwsOperation::RunInstances.name(),
                detail: String::new(),
            },
        ] {
            assert_eq!(e.failure_reason().as_str(), e.category());
        }
    }
}
