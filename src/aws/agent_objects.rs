//! The worker agent's objects in the repository bucket: published by the
//! controller under a content-addressed key, checked by their SHA-256, and
//! handed to workers as presigned GET URLs (see `controller::agents`).

use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode, ServerSideEncryption};

use super::repository::{Repository, is_missing};
use super::{AwsError, AwsOperation};
use crate::mover::manifest::RepositoryLocation;

impl Repository<'_> {
    /// The SHA-256 S3 holds for object `key` (base64, as S3 reports it:
    /// computed by S3 from the bytes it received, so it cannot be set to
    /// anything else), `None` when the object is missing or was written
    /// without one. A 403 is an error: S3 answers it for a missing key to a
    /// caller without `s3:ListBucket`, so it never means "absent".
    pub async fn object_sha256(
        &self,
        loc: &RepositoryLocation,
        key: &str,
    ) -> Result<Option<String>, AwsError> {
        let head = self
            .aws
            .s3(&loc.region)
            .head_object()
            .bucket(&loc.bucket)
            .key(key)
            .checksum_mode(ChecksumMode::Enabled)
            .set_expected_bucket_owner(loc.expected_owner.clone())
            .send();
        match self.aws.call(AwsOperation::HeadObject, head).await {
            Ok(out) => Ok(out.checksum_sha256().map(String::from)),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Uploads the file at `path` as object `key`, with its SHA-256
    /// (`sha256_b64`), which S3 checks against what it receives and keeps.
    /// Encrypted with SSE-S3 whatever the repository's key: the agent is
    /// public code, and a presigned GET of an SSE-KMS object would need the
    /// signer's kms:Decrypt as well.
    pub async fn put_file(
        &self,
        loc: &RepositoryLocation,
        key: &str,
        path: &Path,
        sha256_b64: &str,
    ) -> Result<(), AwsError> {
        let body = ByteStream::from_path(path)
            .await
            .map_err(|e| AwsError::Unreachable {
                operation: AwsOperation::PutObject.name(),
                detail: format!("cannot read {}: {e}", path.display()),
            })?;
        let put = self
            .aws
            .s3(&loc.region)
            .put_object()
            .bucket(&loc.bucket)
            .key(key)
            .set_expected_bucket_owner(loc.expected_owner.clone())
            .content_type("application/gzip")
            // The value, and the algorithm it is of: S3 checks it and keeps
            // it either way; an implementation that reads the algorithm
            // from `x-amz-sdk-checksum-algorithm` (moto) then keeps it too.
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(sha256_b64)
            .server_side_encryption(ServerSideEncryption::Aes256)
            .body(body)
            .send();
        self.aws.call(AwsOperation::PutObject, put).await?;
        Ok(())
    }

    /// A URL that lets whoever holds it GET object `key` until `expires_in`
    /// has passed, signed with these credentials (a URL signed with a
    /// role's session also stops working when that session expires).
    /// Nothing is sent to AWS.
    pub async fn presigned_get(
        &self,
        loc: &RepositoryLocation,
        key: &str,
        expires_in: Duration,
    ) -> Result<String, AwsError> {
        let config = PresigningConfig::expires_in(expires_in).map_err(|e| AwsError::Service {
            operation: AwsOperation::GetObject.name(),
            code: "InvalidPresigningConfig".into(),
            message: e.to_string(),
        })?;
        let presigned = self
            .aws
            .s3(&loc.region)
            .get_object()
            .bucket(&loc.bucket)
            .key(key)
            // No ExpectedBucketOwner: it would be a signed header that the
            // worker's plain GET must send. The controller checked the
            // owner with the HEAD and PUT just before.
            .presigned(config)
            .await
            .map_err(|e| AwsError::Unreachable {
                operation: AwsOperation::GetObject.name(),
                detail: format!("cannot presign: {e}"),
            })?;
        Ok(presigned.uri().to_string())
    }
}
