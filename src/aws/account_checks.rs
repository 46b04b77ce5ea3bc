//! [`AccountChecks`]: the calls `tender doctor` makes that nothing else
//! does: a bucket's versioning and default encryption, an image's state and
//! architecture, and IAM's policy simulation.

use super::{AwsClients, AwsError, AwsOperation};

/// What `tender doctor` asks of an account ([`AwsClients::account_checks`]).
#[derive(Clone, Copy)]
pub struct AccountChecks<'a> {
    pub(super) aws: &'a AwsClients,
}

/// An AMI as far as a worker launch cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    pub state: String,
    pub architecture: String,
}

/// What IAM's simulation says of one action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionDecision {
    pub action: String,
    /// `allowed`, `implicitDeny` or `explicitDeny`.
    pub decision: String,
}

impl AccountChecks<'_> {
    /// A bucket's versioning status (`Enabled`, `Suspended`, or `None` when
    /// it was never turned on).
    pub async fn bucket_versioning(
        &self,
        region: &str,
        bucket: &str,
        owner: &str,
    ) -> Result<Option<String>, AwsError> {
        let get = self
            .aws
            .s3(region)
            .get_bucket_versioning()
            .bucket(bucket)
            .expected_bucket_owner(owner)
            .send();
        let out = self
            .aws
            .call(AwsOperation::GetBucketVersioning, get)
            .await?;
        Ok(out.status().map(|s| s.as_str().to_string()))
    }

    /// A bucket's default encryption: the algorithm (`AES256`, `aws:kms`)
    /// and the KMS key, if any. Every bucket has one since January 2023
    /// (SSE-S3 at least).
    /// <https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetBucketEncryption.html>
    pub async fn bucket_encryption(
        &self,
        region: &str,
        bucket: &str,
        owner: &str,
    ) -> Result<Option<(String, Option<String>)>, AwsError> {
        let get = self
            .aws
            .s3(region)
            .get_bucket_encryption()
            .bucket(bucket)
            .expected_bucket_owner(owner)
            .send();
        let out = match self.aws.call(AwsOperation::GetBucketEncryption, get).await {
            Ok(out) => out,
            Err(e) if e.code() == Some("ServerSideEncryptionConfigurationNotFoundError") => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        Ok(out
            .server_side_encryption_configuration()
            .and_then(|c| c.rules().first())
            .and_then(|r| r.apply_server_side_encryption_by_default())
            .map(|d| {
                (
                    d.sse_algorithm().as_str().to_string(),
                    d.kms_master_key_id().map(String::from),
                )
            }))
    }

    /// An AMI's state and architecture; `None` when it does not exist.
    pub async fn image(&self, region: &str, image_id: &str) -> Result<Option<ImageInfo>, AwsError> {
        let describe = self
            .aws
            .ec2(region)
            .describe_images()
            .image_ids(image_id)
            .send();
        let out = match self.aws.call(AwsOperation::DescribeImages, describe).await {
            Ok(out) => out,
            Err(e) if e.code().is_some_and(|c| c.starts_with("InvalidAMIID")) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(out.images().first().map(|i| ImageInfo {
            state: i
                .state()
                .map(|s| s.as_str())
                .unwrap_or("unknown")
                .to_string(),
            architecture: i
                .architecture()
                .map(|a| a.as_str())
                .unwrap_or("unknown")
                .to_string(),
        }))
    }

    /// What the policies of `principal_arn` (a user or role) decide for
    /// `actions`, as IAM's policy simulator evaluates them.
    /// <https://docs.aws.amazon.com/IAM/latest/APIReference/API_SimulatePrincipalPolicy.html>
    pub async fn simulate(
        &self,
        principal_arn: &str,
        actions: &[String],
    ) -> Result<Vec<ActionDecision>, AwsError> {
        // IAM is global; its endpoint is us-east-1's in the aws partition.
        let simulate = self
            .aws
            .iam("us-east-1")
            .simulate_principal_policy()
            .policy_source_arn(principal_arn)
            .set_action_names(Some(actions.to_vec()))
            .send();
        let out = self
            .aws
            .call(AwsOperation::SimulatePrincipalPolicy, simulate)
            .await?;
        Ok(out
            .evaluation_results()
            .iter()
            .map(|r| ActionDecision {
                action: r.eval_action_name().to_string(),
                decision: r.eval_decision().as_str().to_string(),
            })
            .collect())
    }
}
