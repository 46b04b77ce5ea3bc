//! [`Repository`]: the backup repository's objects in S3.
//!
//! Objects in a bucket under a prefix: content-addressed chunks and
//! restore-point manifests (see `crate::mover`).

use aws_sdk_s3::primitives::ByteStream;

use super::{AwsClients, AwsError, AwsOperation};

fn is_missing(e: &AwsError) -> bool {
    e.code()
        .is_some_and(|c| matches!(c, "NoSuchKey" | "NotFound" | "404"))
}

/// The backup repository's objects ([`AwsClients::repository`]).
#[derive(Clone, Copy)]
pub struct Repository<'a> {
    pub(super) aws: &'a AwsClients,
}

impl Repository<'_> {
    /// Whether an object exists.
    pub async fn object_exists(
        &self,
        region: &str,
        bucket: &str,
        key: &str,
    ) -> Result<bool, AwsError> {
        let head = self
            .aws
            .s3(region)
            .head_object()
            .bucket(bucket)
            .key(key)
            .send();
        match self.aws.call(AwsOperation::HeadObject, head).await {
            Ok(_) => Ok(true),
            Err(e) if is_missing(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Writes an object.
    pub async fn put_object(
        &self,
        region: &str,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<(), AwsError> {
        let put = self
            .aws
            .s3(region)
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send();
        self.aws.call(AwsOperation::PutObject, put).await?;
        Ok(())
    }

    /// Reads an object; `None` when there is no such key.
    pub async fn get_object(
        &self,
        region: &str,
        bucket: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, AwsError> {
        let op = AwsOperation::GetObject;
        let get = self
            .aws
            .s3(region)
            .get_object()
            .bucket(bucket)
            .key(key)
            .send();
        let out = match self.aws.call(op, get).await {
            Ok(out) => out,
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        super::read_body(op, out.body).await.map(Some)
    }
}
