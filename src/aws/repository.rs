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

/// A bucket as the controller checks it: its name and region, and the
/// account that must own it.
#[derive(Clone, Copy, Debug)]
pub struct Bucket<'a> {
    pub region: &'a str,
    pub name: &'a str,
    pub expected_owner: &'a str,
}

/// What a prefix of a bucket holds: every object's key and size summed,
/// and the keys that `keep` selects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub objects: u64,
    pub bytes: u64,
    pub kept: Vec<String>,
}

impl Repository<'_> {
    /// Whether the bucket exists, answers, and is owned by the expected
    /// account (S3 answers 403 for a bucket of another owner).
    pub async fn head_bucket(&self, bucket: Bucket<'_>) -> Result<(), AwsError> {
        let head = self
            .aws
            .s3(bucket.region)
            .head_bucket()
            .bucket(bucket.name)
            .expected_bucket_owner(bucket.expected_owner)
            .send();
        self.aws.call(AwsOperation::HeadBucket, head).await?;
        Ok(())
    }

    /// Writes and deletes a small object at `key`, to show that the bucket
    /// takes writes with these credentials.
    pub async fn probe_write(
        &self,
        bucket: Bucket<'_>,
        key: &str,
        kms_key_id: Option<&str>,
    ) -> Result<(), AwsError> {
        let s3 = self.aws.s3(bucket.region);
        let mut put = s3
            .put_object()
            .bucket(bucket.name)
            .key(key)
            .expected_bucket_owner(bucket.expected_owner)
            .body(ByteStream::from_static(b"tender write probe\n"));
        put = match kms_key_id {
            Some(k) => put
                .server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::AwsKms)
                .ssekms_key_id(k),
            None => put.server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::Aes256),
        };
        self.aws.call(AwsOperation::PutObject, put.send()).await?;
        let delete = s3
            .delete_object()
            .bucket(bucket.name)
            .key(key)
            .expected_bucket_owner(bucket.expected_owner)
            .send();
        self.aws.call(AwsOperation::DeleteObject, delete).await?;
        Ok(())
    }

    /// Lists every object under `prefix` (one call per 1 000 objects).
    pub async fn list_prefix(
        &self,
        bucket: Bucket<'_>,
        prefix: &str,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Listing, AwsError> {
        let mut pages = self
            .aws
            .s3(bucket.region)
            .list_objects_v2()
            .bucket(bucket.name)
            .prefix(prefix)
            .expected_bucket_owner(bucket.expected_owner)
            .into_paginator()
            .send();
        let mut listing = Listing::default();
        while let Some(page) = self
            .aws
            .page(AwsOperation::ListObjectsV2, pages.next())
            .await?
        {
            for object in page.contents() {
                listing.objects += 1;
                listing.bytes += object.size().unwrap_or(0).max(0) as u64;
                if let Some(key) = object.key().filter(|k| keep(k)) {
                    listing.kept.push(key.to_string());
                }
            }
        }
        Ok(listing)
    }
}
