//! [`Repository`]: the backup repository's objects in S3.
//!
//! Objects in a bucket under a prefix: content-addressed chunks and
//! restore-point manifests (see `crate::mover`). Every call names the
//! account that must own the bucket (`ExpectedBucketOwner`), and every
//! write asks for server-side encryption, with the repository's KMS key
//! when it has one.

use aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;

use super::{AwsClients, AwsError, AwsOperation};
use crate::mover::manifest::RepositoryLocation;

/// S3's answer to a conditional PUT (`If-None-Match: *`) whose key exists.
const PRECONDITION_FAILED: &str = "PreconditionFailed";

/// A key that does not exist: S3 says so (404 `NoSuchKey`, or a HEAD's
/// bare 404) only to a caller allowed `s3:ListBucket` for that key. To any
/// other it answers 403 AccessDenied, exactly as for a key it may not read
/// (GetObject and HeadObject, "Permissions":
/// <https://docs.aws.amazon.com/AmazonS3/latest/API/API_HeadObject.html>),
/// so a 403 is never taken for "absent": it would turn a missing
/// permission into a full backup, or a restore point into "not found".
pub(super) fn is_missing(e: &AwsError) -> bool {
    e.code()
        .is_some_and(|c| matches!(c, "NoSuchKey" | "NotFound" | "Http404"))
}

/// S3's 403 on a repository key, as the named error that says what to
/// grant; any other error as it is.
fn denied(e: AwsError, loc: &RepositoryLocation, key: &str, action: &'static str) -> AwsError {
    match &e {
        AwsError::Service {
            operation, code, ..
        } if matches!(code.as_str(), "AccessDenied" | "Http403" | "Forbidden") => {
            AwsError::RepositoryAccessDenied {
                operation,
                code: code.clone(),
                bucket: loc.bucket.clone(),
                key: key.to_string(),
                action,
            }
        }
        _ => e,
    }
}

/// SSE-KMS with `kms_key_id`, else SSE-S3: asked for on every write, so
/// that no object depends on the bucket's default encryption.
fn encrypted(put: PutObjectFluentBuilder, kms_key_id: Option<&str>) -> PutObjectFluentBuilder {
    match kms_key_id {
        Some(k) => put
            .server_side_encryption(ServerSideEncryption::AwsKms)
            .ssekms_key_id(k),
        None => put.server_side_encryption(ServerSideEncryption::Aes256),
    }
}

/// What a PUT that must not overwrite found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    /// The object is written.
    Written,
    /// The key already held an object, which is left as it was.
    AlreadyExists,
}

/// The most a stored chunk can be: one EBS block compressed by zstd at its
/// worst (zstd's bound is the input plus 1/256 of it plus a few hundred
/// bytes), with room to spare.
pub const MAX_PACKED_CHUNK: usize = crate::aws::ebs::BLOCK_SIZE + crate::aws::ebs::BLOCK_SIZE / 64;

/// A chunk object as read.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    /// There is no such key.
    Missing,
    /// Larger than any chunk can be (its size, or the bytes read before
    /// it was given up): not read further.
    Oversized(u64),
    /// Its stored (compressed) bytes.
    Packed(Vec<u8>),
}

/// The backup repository's objects ([`AwsClients::repository`]).
#[derive(Clone, Copy)]
pub struct Repository<'a> {
    pub(super) aws: &'a AwsClients,
}

impl Repository<'_> {
    /// Whether the object `key` of `loc` exists.
    pub async fn object_exists(
        &self,
        loc: &RepositoryLocation,
        key: &str,
    ) -> Result<bool, AwsError> {
        let head = self
            .aws
            .s3(&loc.region)
            .head_object()
            .bucket(&loc.bucket)
            .key(key)
            .set_expected_bucket_owner(loc.expected_owner.clone())
            .send();
        match self.aws.call(AwsOperation::HeadObject, head).await {
            Ok(_) => Ok(true),
            Err(e) if is_missing(&e) => Ok(false),
            Err(e) => Err(denied(e, loc, key, "s3:GetObject")),
        }
    }

    /// Writes the object `key` of `loc`, replacing any.
    pub async fn put_object(
        &self,
        loc: &RepositoryLocation,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<(), AwsError> {
        let put = self.put(loc, key, body, content_type).send();
        self.aws
            .call(AwsOperation::PutObject, put)
            .await
            .map_err(|e| denied(e, loc, key, "s3:PutObject"))?;
        Ok(())
    }

    /// Writes the object `key` of `loc` only if the key holds none
    /// (`If-None-Match: *`): S3 decides, so of two writers racing for one
    /// key exactly one writes.
    pub async fn create_object(
        &self,
        loc: &RepositoryLocation,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<Created, AwsError> {
        let put = self
            .put(loc, key, body, content_type)
            .if_none_match("*")
            .send();
        match self.aws.call(AwsOperation::PutObject, put).await {
            Ok(_) => Ok(Created::Written),
            Err(e) if e.code() == Some(PRECONDITION_FAILED) => Ok(Created::AlreadyExists),
            Err(e) => Err(denied(e, loc, key, "s3:PutObject")),
        }
    }

    fn put(
        &self,
        loc: &RepositoryLocation,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> PutObjectFluentBuilder {
        let put = self
            .aws
            .s3(&loc.region)
            .put_object()
            .bucket(&loc.bucket)
            .key(key)
            .set_expected_bucket_owner(loc.expected_owner.clone())
            .content_type(content_type)
            .body(ByteStream::from(body));
        encrypted(put, loc.kms_key_id.as_deref())
    }

    /// Up to 1 000 objects under `prefix` after `start_after`, in key
    /// order: `(key, size, LastModified)`, and whether more follow (S3's
    /// `IsTruncated`: a page may hold fewer keys while more follow). An
    /// object listed without a key or a time is an error, never skipped.
    pub async fn list_page(
        &self,
        loc: &RepositoryLocation,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<(Vec<(String, u64, jiff::Timestamp)>, bool), AwsError> {
        let list = self
            .aws
            .s3(&loc.region)
            .list_objects_v2()
            .bucket(&loc.bucket)
            .prefix(prefix)
            .set_start_after(start_after.map(String::from))
            .set_expected_bucket_owner(loc.expected_owner.clone())
            .send();
        let out = self
            .aws
            .call(AwsOperation::ListObjectsV2, list)
            .await
            .map_err(|e| denied(e, loc, prefix, "s3:ListBucket"))?;
        let incomplete = |what: &str| AwsError::Unreachable {
            operation: "ListObjectsV2",
            detail: format!("S3 listed an object under {prefix} without {what}"),
        };
        let mut objects = Vec::new();
        for o in out.contents() {
            let key = o.key().ok_or_else(|| incomplete("a key"))?;
            let modified = o
                .last_modified()
                .ok_or_else(|| incomplete("a LastModified"))?;
            let at = jiff::Timestamp::new(modified.secs(), modified.subsec_nanos() as i32)
                .map_err(|_| incomplete("a valid LastModified"))?;
            objects.push((key.to_string(), o.size().unwrap_or(0).max(0) as u64, at));
        }
        Ok((objects, out.is_truncated().unwrap_or(false)))
    }

    /// Reads the object `key` of `loc`; `None` when there is no such key.
    pub async fn get_object(
        &self,
        loc: &RepositoryLocation,
        key: &str,
    ) -> Result<Option<Vec<u8>>, AwsError> {
        let Some(out) = self.open_object(loc, key).await? else {
            return Ok(None);
        };
        super::read_body(AwsOperation::GetObject, out.body)
            .await
            .map(Some)
    }

    /// GetObject of `key` of `loc`, its body not read yet; `None` when
    /// there is no such key.
    async fn open_object(
        &self,
        loc: &RepositoryLocation,
        key: &str,
    ) -> Result<Option<aws_sdk_s3::operation::get_object::GetObjectOutput>, AwsError> {
        let get = self
            .aws
            .s3(&loc.region)
            .get_object()
            .bucket(&loc.bucket)
            .key(key)
            .set_expected_bucket_owner(loc.expected_owner.clone())
            .send();
        match self.aws.call(AwsOperation::GetObject, get).await {
            Ok(out) => Ok(Some(out)),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(denied(e, loc, key, "s3:GetObject")),
        }
    }

    /// Reads the chunk object `key` of `loc`, at most
    /// [`MAX_PACKED_CHUNK`] bytes of it: whoever can write the bucket could
    /// put gigabytes under a chunk's name, and a worker holding 16 chunks
    /// at a time must not run out of memory on that (it is a corrupt chunk,
    /// and said so).
    pub async fn get_chunk(&self, loc: &RepositoryLocation, key: &str) -> Result<Chunk, AwsError> {
        let op = AwsOperation::GetObject;
        let Some(mut out) = self.open_object(loc, key).await? else {
            return Ok(Chunk::Missing);
        };
        let declared = out.content_length.unwrap_or(0).max(0) as u64;
        if declared > MAX_PACKED_CHUNK as u64 {
            return Ok(Chunk::Oversized(declared));
        }
        let mut packed = Vec::with_capacity(declared as usize);
        while let Some(piece) = out.body.next().await {
            let piece = piece.map_err(|e| AwsError::Unreachable {
                operation: op.name(),
                detail: e.to_string(),
            })?;
            if packed.len() + piece.len() > MAX_PACKED_CHUNK {
                return Ok(Chunk::Oversized((packed.len() + piece.len()) as u64));
            }
            packed.extend_from_slice(&piece);
        }
        Ok(Chunk::Packed(packed))
    }

    /// Deletes the object `key` of `loc` (a missing one is no error).
    pub async fn delete_object(&self, loc: &RepositoryLocation, key: &str) -> Result<(), AwsError> {
        let delete = self
            .aws
            .s3(&loc.region)
            .delete_object()
            .bucket(&loc.bucket)
            .key(key)
            .set_expected_bucket_owner(loc.expected_owner.clone())
            .send();
        self.aws
            .call(AwsOperation::DeleteObject, delete)
            .await
            .map_err(|e| denied(e, loc, key, "s3:DeleteObject"))?;
        Ok(())
    }

    /// When S3 last wrote `key` (its `LastModified`, to the second); `None`
    /// when there is no such key.
    pub async fn last_modified(
        &self,
        loc: &RepositoryLocation,
        key: &str,
    ) -> Result<Option<jiff::Timestamp>, AwsError> {
        let head = self
            .aws
            .s3(&loc.region)
            .head_object()
            .bucket(&loc.bucket)
            .key(key)
            .set_expected_bucket_owner(loc.expected_owner.clone())
            .send();
        let out = match self.aws.call(AwsOperation::HeadObject, head).await {
            Ok(out) => out,
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(denied(e, loc, key, "s3:GetObject")),
        };
        let at = out
            .last_modified()
            .and_then(|m| jiff::Timestamp::new(m.secs(), m.subsec_nanos() as i32).ok());
        at.map(Some).ok_or_else(|| AwsError::Unreachable {
            operation: "HeadObject",
            detail: format!("S3 answered for {key} without a valid LastModified"),
        })
    }

    /// Deletes up to 1 000 keys with one DeleteObjects call, in quiet mode
    /// (S3 then names only the keys it could not delete). A key that does
    /// not exist counts as deleted, as S3 has it. Any key S3 could not
    /// delete (S3 checks `s3:DeleteObject` key by key and answers 200 with
    /// per-key errors) makes the call an error that names it.
    pub async fn delete_objects(
        &self,
        loc: &RepositoryLocation,
        keys: &[String],
    ) -> Result<(), AwsError> {
        use aws_sdk_s3::types::{Delete, ObjectIdentifier};
        if keys.is_empty() {
            return Ok(());
        }
        let invalid = |e: aws_sdk_s3::error::BuildError| AwsError::Unreachable {
            operation: "DeleteObjects",
            detail: e.to_string(),
        };
        let objects = keys
            .iter()
            .map(|k| ObjectIdentifier::builder().key(k).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(invalid)?;
        let call = self
            .aws
            .s3(&loc.region)
            .delete_objects()
            .bucket(&loc.bucket)
            .set_expected_bucket_owner(loc.expected_owner.clone())
            .delete(delete)
            .send();
        let first = keys.first().map(String::as_str).unwrap_or_default();
        let out = self
            .aws
            .call(AwsOperation::DeleteObjects, call)
            .await
            .map_err(|e| denied(e, loc, first, "s3:DeleteObject"))?;
        match out.errors().first() {
            None => Ok(()),
            Some(failed) => {
                let code = failed.code().unwrap_or("Unknown").to_string();
                let key = failed.key().unwrap_or_default().to_string();
                let error = AwsError::Service {
                    operation: "DeleteObjects",
                    code,
                    message: format!(
                        "{} of {} keys were not deleted, {key} first: {}",
                        out.errors().len(),
                        keys.len(),
                        failed.message().unwrap_or_default()
                    ),
                };
                Err(denied(error, loc, &key, "s3:DeleteObject"))
            }
        }
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
        let put = s3
            .put_object()
            .bucket(bucket.name)
            .key(key)
            .expected_bucket_owner(bucket.expected_owner)
            .body(ByteStream::from_static(b"tender write probe\n"));
        let put = encrypted(put, kms_key_id).send();
        self.aws.call(AwsOperation::PutObject, put).await?;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use aws_config::retry::RetryConfig;
    use aws_config::{BehaviorVersion, Region, SdkConfig};
    use aws_credential_types::Credentials;
    use aws_credential_types::provider::SharedCredentialsProvider;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::reasons::FailureReason;

    const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/0987dcba-09fe-87dc-65ba-ab0987654321";

    /// An S3 stand-in on loopback that answers each request in turn with
    /// one of `answers` (status line and body) and returns the heads of
    /// the requests it got, lowercased.
    async fn s3_answering(
        answers: Vec<(&'static str, &'static str)>,
    ) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        let served = tokio::spawn(async move {
            let mut heads = Vec::new();
            for (status, body) in answers {
                let (mut conn, _) = listener.accept().await.expect("a request");
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                let head_end = loop {
                    let n = conn.read(&mut buf).await.expect("read the request");
                    got.extend_from_slice(&buf[..n]);
                    if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while got.len() < head_end + length {
                    let n = conn.read(&mut buf).await.expect("read the body");
                    got.extend_from_slice(&buf[..n]);
                }
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                conn.write_all(answer.as_bytes()).await.expect("answer");
                heads.push(head);
            }
            heads
        });
        (url, served)
    }

    fn clients(url: &str) -> AwsClients {
        let base = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(url)
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "AKIDEXAMPLE",
                "secret",
                None,
                None,
                "test",
            )))
            .retry_config(RetryConfig::disabled())
            .build();
        AwsClients::with(base, Arc::default())
    }

    fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(str::trim)
    }

    #[tokio::test]
    async fn every_call_names_the_bucket_owner_and_every_write_asks_for_encryption() {
        let exists = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>PreconditionFailed</Code><Message>At least one of the pre-conditions you specified did not hold</Message></Error>";
        let (url, served) = s3_answering(vec![
            ("412 Precondition Failed", exists),
            ("200 OK", ""),
            ("200 OK", "stored"),
            ("200 OK", ""),
        ])
        .await;
        let aws = clients(&url);
        let repo = aws.repository();
        let mut loc = RepositoryLocation::new("acme-backups", "prod/team-a/", "us-east-1");
        loc.expected_owner = Some("111122223333".into());
        loc.kms_key_id = Some(KEY.into());
        let created = repo
            .create_object(
                &loc,
                "prod/team-a/m.json",
                b"{}".to_vec(),
                "application/json",
            )
            .await;
        assert_eq!(created.ok(), Some(Created::AlreadyExists));
        let s3_managed = RepositoryLocation {
            kms_key_id: None,
            ..loc.clone()
        };
        repo.put_object(
            &s3_managed,
            "prod/team-a/c",
            b"chunk".to_vec(),
            "application/zstd",
        )
        .await
        .expect("written");
        let read = repo
            .get_object(&loc, "prod/team-a/m.json")
            .await
            .expect("read");
        assert_eq!(read.as_deref(), Some(&b"stored"[..]));
        assert!(
            repo.object_exists(&loc, "prod/team-a/c")
                .await
                .expect("head")
        );

        let heads = served.await.expect("the stand-in ran");
        for head in &heads {
            assert_eq!(
                header(head, "x-amz-expected-bucket-owner"),
                Some("111122223333"),
                "{head}"
            );
        }
        let (conditional, plain) = (&heads[0], &heads[1]);
        assert!(
            conditional.starts_with("put /acme-backups/prod/team-a/m.json"),
            "{conditional}"
        );
        assert_eq!(header(conditional, "if-none-match"), Some("*"));
        assert_eq!(
            header(conditional, "x-amz-server-side-encryption"),
            Some("aws:kms")
        );
        assert_eq!(
            header(conditional, "x-amz-server-side-encryption-aws-kms-key-id"),
            Some(KEY.to_lowercase().as_str())
        );
        assert_eq!(
            header(plain, "if-none-match"),
            None,
            "chunks may be written again"
        );
        assert_eq!(
            header(plain, "x-amz-server-side-encryption"),
            Some("aes256")
        );
        assert!(heads[2].starts_with("get ") && heads[3].starts_with("head "));
    }

    /// A missing key is "absent" only when S3 says 404; its 403 (what a
    /// caller without `s3:ListBucket` gets for a missing key, and anyone for
    /// a key it may not read) is the named error, never "absent".
    #[tokio::test]
    async fn only_a_404_is_absent_and_a_403_names_what_to_grant() {
        let no_such_key = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>";
        let denied_body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
        let (url, served) = s3_answering(vec![
            ("404 Not Found", no_such_key),
            ("404 Not Found", ""),
            ("403 Forbidden", denied_body),
            ("403 Forbidden", ""),
            ("403 Forbidden", denied_body),
        ])
        .await;
        let aws = clients(&url);
        let repo = aws.repository();
        let loc = RepositoryLocation::new("acme-backups", "prod/team-a/", "us-east-1");
        let key = "prod/team-a/latest/us-east-1/snap-1.json";
        assert_eq!(repo.get_object(&loc, key).await.ok(), Some(None));
        assert_eq!(repo.object_exists(&loc, key).await.ok(), Some(false));
        let got = repo.get_object(&loc, key).await.err();
        let head = repo
            .object_exists(&loc, "prod/team-a/chunks/ab/abcd")
            .await
            .err();
        let put = repo
            .put_object(
                &loc,
                "prod/team-a/chunks/ab/abcd",
                b"x".to_vec(),
                "application/zstd",
            )
            .await
            .err();
        served.await.expect("the stand-in ran");
        for (e, action, key) in [
            (got, "s3:GetObject", key),
            (head, "s3:GetObject", "prod/team-a/chunks/ab/abcd"),
            (put, "s3:PutObject", "prod/team-a/chunks/ab/abcd"),
        ] {
            let e = e.expect("a 403 is an error");
            assert_eq!(e.failure_reason(), FailureReason::RepositoryAccessDenied);
            assert!(e.failure_reason().is_permanent());
            assert!(!e.is_transient());
            let message = e.to_string();
            for needed in [
                action,
                "s3:ListBucket",
                "arn:aws:s3:::acme-backups",
                &format!("arn:aws:s3:::acme-backups/{key}"),
            ] {
                assert!(message.contains(needed), "{needed} not in {message}");
            }
        }
    }
}
