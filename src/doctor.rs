//! `tender doctor`: checks an AWS account the way a user would before the
//! first job, for the WorkerConfigurations and BackupRepositories given:
//! credentials, region, each role, subnets and their way to AWS, security
//! groups, the AMI and its architecture, instance type offerings, each
//! repository bucket's owner, versioning and encryption, and what the
//! caller's policies allow (IAM's simulator, where the account has one).
//! One line per check: `ok`, `warn` or `fail` with what to fix.

use std::fmt;

use crate::api::{BackupRepository, WorkerConfiguration, WorkerConfigurationStatus};
use crate::aws::accounts::Access;
use crate::aws::operation::AwsOperation;
use crate::aws::{AwsClients, AwsError};
use crate::controller::configuration_checks as checks;
use kube::ResourceExt;

/// A check's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        })
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub verdict: Verdict,
    /// What was checked, such as `wc/east subnets`.
    pub subject: String,
    /// What was found, and for `warn`/`fail` what to fix.
    pub detail: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.verdict, self.subject, self.detail)
    }
}

/// The report: every check in order.
#[derive(Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    fn add(&mut self, verdict: Verdict, subject: impl Into<String>, detail: impl Into<String>) {
        self.checks.push(Check {
            verdict,
            subject: subject.into(),
            detail: detail.into(),
        });
    }

    /// True when any check failed.
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.verdict == Verdict::Fail)
    }
}

/// Runs every check for `configurations` and `repositories`.
pub async fn run(
    aws: &AwsClients,
    configurations: &[WorkerConfiguration],
    repositories: &[BackupRepository],
) -> Report {
    let mut report = Report::default();
    let region = aws.home_region().unwrap_or_else(|| "us-east-1".into());
    let principal = match aws.caller_identity(&region).await {
        Ok(id) => {
            report.add(
                Verdict::Ok,
                "credentials",
                format!("account {} as {}", id.account, id.arn),
            );
            Some(id.arn)
        }
        Err(e) => {
            report.add(
                Verdict::Fail,
                "credentials",
                format!("{e}; give this shell the credentials the controller uses (AWS_PROFILE, AWS_ACCESS_KEY_ID, …)"),
            );
            None
        }
    };
    for cfg in configurations {
        configuration(aws, cfg, &mut report).await;
    }
    for repo in repositories {
        repository(aws, repo, &mut report).await;
    }
    if let Some(arn) = principal {
        policies(aws, &arn, &mut report).await;
    }
    report
}

/// A failed call's line: what failed, and that it could not be checked; an
/// endpoint that does not answer the call as AWS does (an emulator) is
/// said so, not failed.
fn call_failed(report: &mut Report, subject: &str, e: &AwsError) {
    if is_unsupported(e) {
        return report.add(
            Verdict::Warn,
            subject,
            format!("not checkable here: this endpoint does not answer as AWS does ({e})"),
        );
    }
    report.add(Verdict::Fail, subject, format!("{e}; cannot check further"));
}

async fn configuration(aws: &AwsClients, cfg: &WorkerConfiguration, report: &mut Report) {
    let name = format!("WorkerConfiguration/{}", cfg.name_any());
    let region = &cfg.spec.region;
    if let Some(f) = checks::check_region(cfg, aws).await {
        report.add(
            Verdict::Fail,
            format!("{name} region"),
            format!("{}: {}", f.reason, f.message),
        );
        return;
    }
    report.add(
        Verdict::Ok,
        format!("{name} region"),
        format!("{region} exists and is enabled"),
    );
    for (what, role) in [
        ("backupAccount", &cfg.spec.backup_account),
        ("productionAccount", &cfg.spec.production_account),
    ] {
        let Some(role) = role else { continue };
        let scoped = aws.scoped(&Access::new(Some(role), &["doctor"])).await;
        match scoped.caller_identity(region).await {
            Ok(id) => report.add(
                Verdict::Ok,
                format!("{name} {what}"),
                format!("role {} assumable (account {})", role.role_arn, id.account),
            ),
            Err(e) => report.add(
                Verdict::Fail,
                format!("{name} {what}"),
                format!(
                    "cannot assume {}: {e}; check its trust policy and external ID",
                    role.role_arn
                ),
            ),
        }
    }
    let scoped = aws
        .scoped(&Access::new(cfg.spec.worker_access(), &["doctor"]))
        .await;
    network(&scoped, cfg, &name, report).await;
}

/// Subnets, security groups, routes and endpoints, image, instance types:
/// the configuration reconcile's own checks, reported line by line.
async fn network(aws: &AwsClients, cfg: &WorkerConfiguration, name: &str, report: &mut Report) {
    let mut status = WorkerConfigurationStatus::default();
    let mut findings = Vec::new();
    let image = checks::resolve_image(cfg, aws.instances(), &mut findings).await;
    let subnets = match checks::check_subnets(cfg, aws.network(), &mut status, &mut findings).await
    {
        Ok(s) => s,
        Err(e) => return report.add(Verdict::Fail, format!("{name} subnets"), e.to_string()),
    };
    if !subnets.is_empty() {
        let ids: Vec<&str> = subnets.iter().map(|s| s.subnet_id.as_str()).collect();
        report.add(
            Verdict::Ok,
            format!("{name} subnets"),
            format!(
                "{} in {}",
                ids.join(", "),
                status.vpc_id.as_deref().unwrap_or("?")
            ),
        );
    }
    let vpc = status.vpc_id.clone();
    if let Err(e) =
        checks::check_security_groups(cfg, aws.network(), vpc.as_deref(), &mut findings).await
    {
        report.add(
            Verdict::Fail,
            format!("{name} security groups"),
            e.to_string(),
        );
    }
    match checks::check_network(
        cfg,
        aws.network(),
        (&mut status, &subnets),
        &mut findings,
        None,
    )
    .await
    {
        Ok(c) if c.status => report.add(Verdict::Ok, format!("{name} network"), c.message),
        Ok(c) if findings.iter().any(|f| f.message == c.message) => {}
        Ok(c) => report.add(
            Verdict::Fail,
            format!("{name} network"),
            format!("{}: {}", c.reason, c.message),
        ),
        Err(e) => report.add(Verdict::Fail, format!("{name} network"), e.to_string()),
    }
    match checks::check_instance_types(cfg, aws.network(), &mut findings).await {
        Ok(c) if c.status => report.add(Verdict::Ok, format!("{name} instance types"), c.message),
        Ok(_) => {}
        Err(e) => report.add(
            Verdict::Fail,
            format!("{name} instance types"),
            e.to_string(),
        ),
    }
    for f in &findings {
        report.add(
            Verdict::Fail,
            name.to_string(),
            format!("{}: {}", f.reason, f.message),
        );
    }
    if let Some(image) = image {
        ami(aws, cfg, &image, name, report).await;
    }
}

/// The AMI must exist, be available, and be built for the configuration's
/// `architecture`, which its default worker instance types are.
async fn ami(
    aws: &AwsClients,
    cfg: &WorkerConfiguration,
    image: &str,
    name: &str,
    report: &mut Report,
) {
    let subject = format!("{name} image");
    match aws.account_checks().image(&cfg.spec.region, image).await {
        Ok(None) => report.add(Verdict::Fail, subject, format!("{image} does not exist in {}; fix spec.imageId", cfg.spec.region)),
        Ok(Some(i)) if i.state != "available" => report.add(Verdict::Fail, subject, format!("{image} is {}, not available", i.state)),
        Ok(Some(i)) if i.architecture != cfg.spec.architecture.as_str() => report.add(
            Verdict::Fail,
            subject,
            format!(
                "{image} is {}, and the configuration's architecture is {}: EC2 would refuse every launch; set spec.architecture to {} or use an image of {}",
                i.architecture,
                cfg.spec.architecture,
                i.architecture,
                cfg.spec.architecture
            ),
        ),
        Ok(Some(i)) => report.add(Verdict::Ok, subject, format!("{image} available, {}", i.architecture)),
        Err(e) => call_failed(report, &subject, &e),
    }
}

async fn repository(aws: &AwsClients, repo: &BackupRepository, report: &mut Report) {
    let name = format!("BackupRepository/{}", repo.name_any());
    let spec = &repo.spec;
    let aws = aws
        .scoped(&Access::new(spec.access.as_ref(), &["doctor"]))
        .await;
    let bucket = crate::aws::repository::Bucket {
        region: &spec.region,
        name: &spec.bucket,
        expected_owner: &spec.expected_bucket_owner,
    };
    let subject = format!("{name} bucket");
    match aws.repository().head_bucket(bucket).await {
        Ok(()) => report.add(
            Verdict::Ok,
            &subject,
            format!(
                "s3://{} exists, owned by {}",
                spec.bucket, spec.expected_bucket_owner
            ),
        ),
        Err(e) => {
            let fix = match e.code() {
                Some("NotFound" | "NoSuchBucket" | "Http404") => "create it, or fix spec.bucket",
                Some("AccessDenied" | "Http403" | "Forbidden") => {
                    "it belongs to another account than spec.expectedBucketOwner, or s3:ListBucket is not granted"
                }
                _ => "check spec.bucket and spec.region",
            };
            return report.add(
                Verdict::Fail,
                subject,
                format!("s3://{}: {e}; {fix}", spec.bucket),
            );
        }
    }
    let checks = aws.account_checks();
    let owner = spec.expected_bucket_owner.as_str();
    match checks.bucket_versioning(&spec.region, &spec.bucket, owner).await {
        Ok(Some(s)) if s == "Enabled" => report.add(Verdict::Ok, format!("{name} versioning"), "enabled"),
        Ok(s) => report.add(
            Verdict::Warn,
            format!("{name} versioning"),
            format!("{}: an overwritten or deleted restore point cannot be brought back; enable versioning (with a lifecycle rule for noncurrent versions)", s.as_deref().unwrap_or("never enabled")),
        ),
        Err(e) => call_failed(report, &format!("{name} versioning"), &e),
    }
    let wanted = spec.encryption.kms_key();
    match checks
        .bucket_encryption(&spec.region, &spec.bucket, owner)
        .await
    {
        Ok(Some((algorithm, key))) => {
            let mismatch = wanted.is_some_and(|w| {
                key.as_deref()
                    .is_none_or(|k| !k.ends_with(w) && !w.ends_with(k))
            });
            if mismatch {
                report.add(Verdict::Warn, format!("{name} encryption"), format!("default {algorithm} with {}; spec.encryption names {}: objects Tender writes use the spec's key, others the bucket's", key.as_deref().unwrap_or("the S3-managed key"), wanted.unwrap_or_default()));
            } else {
                report.add(
                    Verdict::Ok,
                    format!("{name} encryption"),
                    format!(
                        "default {algorithm}{}",
                        key.map(|k| format!(" with {k}")).unwrap_or_default()
                    ),
                );
            }
        }
        Ok(None) => report.add(
            Verdict::Warn,
            format!("{name} encryption"),
            "no default encryption; set SSE-KMS (or SSE-S3) as the bucket's default",
        ),
        Err(e) => call_failed(report, &format!("{name} encryption"), &e),
    }
}

/// What the caller's own policies allow of the controller's calls, by IAM's
/// policy simulator; an account (or emulator) without it is said so.
async fn policies(aws: &AwsClients, caller_arn: &str, report: &mut Report) {
    let principal = principal_of(caller_arn);
    let mut actions: Vec<String> = AwsOperation::ALL
        .iter()
        .filter(|op| op.caller().includes_controller())
        .flat_map(|op| {
            let mut a = vec![op.iam_action()];
            a.extend(op.also_needs().into_iter().map(String::from));
            a
        })
        .collect();
    actions.sort();
    actions.dedup();
    let subject = "policies";
    match aws.account_checks().simulate(&principal, &actions).await {
        Ok(decisions) => {
            let denied: Vec<String> = decisions
                .iter()
                .filter(|d| d.decision != "allowed")
                .map(|d| format!("{} ({})", d.action, d.decision))
                .collect();
            if denied.is_empty() {
                report.add(Verdict::Ok, subject, format!("{principal} may make every call the controller makes ({} actions)", actions.len()));
            } else {
                report.add(Verdict::Fail, subject, format!("{principal} is denied {}; attach iam/controller-policy.json", denied.join(", ")));
            }
        }
        Err(e) if is_unsupported(&e) => report.add(
            Verdict::Warn,
            subject,
            format!("not checkable here: this endpoint has no iam:SimulatePrincipalPolicy ({e})"),
        ),
        Err(e) => report.add(Verdict::Warn, subject, format!("cannot simulate the policies of {principal}: {e}; grant iam:SimulatePrincipalPolicy to check them")),
    }
}

/// The IAM principal behind an STS ARN: an assumed role's role.
pub fn principal_of(arn: &str) -> String {
    let parts: Vec<&str> = arn.split(':').collect();
    match (parts.get(2), parts.get(5)) {
        (Some(&"sts"), Some(resource)) if resource.starts_with("assumed-role/") => {
            let role = resource.split('/').nth(1).unwrap_or_default();
            format!("arn:{}:iam::{}:role/{role}", parts[1], parts[4])
        }
        _ => arn.to_string(),
    }
}

/// Whether an error means the service has no such call (an emulator).
fn is_unsupported(e: &AwsError) -> bool {
    match e {
        // An answer the SDK could not read as AWS's (named by its HTTP
        // status: a 200 it could not parse, a 5xx page) or a call the
        // endpoint does not know.
        AwsError::Service { code, .. } => {
            matches!(
                code.as_str(),
                "Unknown" | "NotImplemented" | "InvalidAction" | "UnknownOperationException"
            ) || code
                .strip_prefix("Http")
                .and_then(|s| s.parse::<u16>().ok())
                .is_some_and(|s| !(300..500).contains(&s))
        }
        // The SDK could not read the answer at all.
        AwsError::Unreachable { detail, .. } => {
            detail.contains("unhandled") || detail.contains("response")
        }
        AwsError::RepositoryAccessDenied { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assumed_role_is_checked_as_its_role() {
        assert_eq!(
            principal_of("arn:aws:sts::111122223333:assumed-role/tender-controller/session-1"),
            "arn:aws:iam::111122223333:role/tender-controller"
        );
        assert_eq!(
            principal_of("arn:aws:iam::111122223333:user/alice"),
            "arn:aws:iam::111122223333:user/alice"
        );
    }

    #[test]
    fn a_failed_check_fails_the_report() {
        let mut report = Report::default();
        report.add(Verdict::Warn, "policies", "not checkable here");
        assert!(!report.failed());
        report.add(Verdict::Fail, "BackupRepository/x bucket", "missing");
        assert!(report.failed());
        assert_eq!(
            report.checks[1].to_string(),
            "fail BackupRepository/x bucket: missing"
        );
    }
}
