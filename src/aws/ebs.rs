//! [`Snapshots`]: EBS snapshots, their blocks, and volumes made from them.
//!
//! Snapshots are read and written block by block through the EBS direct
//! APIs (the data mover's source and target); the EC2 calls around them
//! snapshot an instance, describe and delete snapshots and create a volume
//! from one.

use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::{ChecksumAlgorithm, Tag};
use std::collections::HashMap;

use base64::Engine;
use sha2::{Digest, Sha256};

use super::{AwsClients, AwsError, AwsOperation};
use crate::mover::manifest::VolumeEncryption;

/// Size of every EBS snapshot block: the EBS direct APIs read and write
/// whole 512 KiB blocks.
pub const BLOCK_SIZE: usize = 512 * 1024;

/// The blocks a snapshot holds (blocks never written are not listed and
/// read as zeros), with the tokens that read them.
#[derive(Clone, Debug, Default)]
pub struct SnapshotBlocks {
    pub volume_size_gib: i64,
    /// `(block index, block token)`, by index.
    pub blocks: Vec<(i32, String)>,
}

/// A block that differs between two snapshots; `token` reads it from the
/// second one, and is `None` when the second snapshot no longer has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangedBlock {
    pub index: i32,
    pub token: Option<String>,
}

/// An EC2 snapshot, as DescribeSnapshots reports it.
#[derive(Clone, Debug)]
pub struct SnapshotInfo {
    pub snapshot_id: String,
    /// `pending`, `completed`, `error` (or `recoverable`, `recovering`).
    pub state: String,
    /// EBS's progress while `pending`, for example `45%`.
    pub progress: Option<String>,
    /// Why it is in state `error`, when EBS says.
    pub state_message: Option<String>,
    pub volume_size_gib: i64,
    /// The volume it was taken of; `None` when EBS does not know it (a
    /// copied snapshot names `vol-ffffffff`).
    pub volume_id: Option<String>,
    pub tags: std::collections::BTreeMap<String, String>,
    /// The account that owns it (a snapshot shared with this account, or
    /// public, is owned by another).
    pub owner_id: Option<String>,
    /// When it was started.
    pub start_time: Option<k8s_openapi::jiff::Timestamp>,
}

/// An unknown or malformed snapshot ID.
fn is_snapshot_not_found(e: &AwsError) -> bool {
    e.code().is_some_and(|c| c.starts_with("InvalidSnapshot"))
}

fn missing(operation: AwsOperation, what: &str) -> AwsError {
    AwsError::Service {
        operation: operation.name(),
        code: "IncompleteResponse".into(),
        message: format!("{operation} returned no {what}"),
    }
}

/// EBS snapshots, their blocks and the volumes made of them
/// ([`AwsClients::snapshots`]).
#[derive(Clone, Copy)]
pub struct Snapshots<'a> {
    pub(super) aws: &'a AwsClients,
}

impl Snapshots<'_> {
    /// Snapshots every EBS volume of an instance at one point in time
    /// (crash-consistent across its volumes), tagged; returns
    /// `(snapshot ID, volume ID)` pairs.
    pub async fn snapshot_instance(
        &self,
        region: &str,
        instance_id: &str,
        description: &str,
        tags: &[(String, String)],
    ) -> Result<Vec<(String, String)>, AwsError> {
        use aws_sdk_ec2::types::{InstanceSpecification, ResourceType};
        let spec = super::tag_specification(
            ResourceType::Snapshot,
            super::ec2_tags(tags.iter().map(|(k, v)| (k, v))),
        );
        let create = self
            .aws
            .ec2(region)
            .create_snapshots()
            .instance_specification(
                InstanceSpecification::builder()
                    .instance_id(instance_id)
                    .exclude_boot_volume(false)
                    .build(),
            )
            .description(description)
            .tag_specifications(spec)
            .send();
        let out = self.aws.call(AwsOperation::CreateSnapshots, create).await?;
        Ok(out
            .snapshots()
            .iter()
            .filter_map(|s| {
                Some((
                    s.snapshot_id()?.to_string(),
                    s.volume_id().unwrap_or_default().to_string(),
                ))
            })
            .collect())
    }

    /// Deletes a snapshot; one already gone counts as deleted.
    pub async fn delete_snapshot(&self, region: &str, snapshot_id: &str) -> Result<(), AwsError> {
        let delete = self
            .aws
            .ec2(region)
            .delete_snapshot()
            .snapshot_id(snapshot_id)
            .send();
        match self.aws.call(AwsOperation::DeleteSnapshot, delete).await {
            Ok(_) => Ok(()),
            Err(e) if is_snapshot_not_found(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every written block of a snapshot (all pages).
    pub async fn list_snapshot_blocks(
        &self,
        region: &str,
        snapshot_id: &str,
    ) -> Result<SnapshotBlocks, AwsError> {
        let ebs = self.aws.ebs(region);
        let mut out = SnapshotBlocks::default();
        let mut next: Option<String> = None;
        loop {
            let list = ebs
                .list_snapshot_blocks()
                .snapshot_id(snapshot_id)
                .set_next_token(next.take())
                .max_results(10_000)
                .send();
            let page = self
                .aws
                .call(AwsOperation::ListSnapshotBlocks, list)
                .await?;
            out.volume_size_gib = page.volume_size().unwrap_or(out.volume_size_gib);
            out.blocks.extend(page.blocks().iter().filter_map(|b| {
                Some((
                    b.block_index()?,
                    b.block_token().unwrap_or_default().to_string(),
                ))
            }));
            match page.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_string()),
                _ => break,
            }
        }
        out.blocks.sort_by_key(|(i, _)| *i);
        out.blocks.dedup_by_key(|(i, _)| *i);
        Ok(out)
    }

    /// The blocks that differ between `first` and `second` (all pages).
    pub async fn list_changed_blocks(
        &self,
        region: &str,
        first: &str,
        second: &str,
    ) -> Result<Vec<ChangedBlock>, AwsError> {
        let ebs = self.aws.ebs(region);
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let list = ebs
                .list_changed_blocks()
                .first_snapshot_id(first)
                .second_snapshot_id(second)
                .set_next_token(next.take())
                .max_results(10_000)
                .send();
            let page = self.aws.call(AwsOperation::ListChangedBlocks, list).await?;
            out.extend(page.changed_blocks().iter().filter_map(|b| {
                Some(ChangedBlock {
                    index: b.block_index()?,
                    token: b.second_block_token().map(String::from),
                })
            }));
            match page.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(out)
    }

    /// The data of one block.
    pub async fn get_snapshot_block(
        &self,
        region: &str,
        snapshot_id: &str,
        index: i32,
        token: &str,
    ) -> Result<Vec<u8>, AwsError> {
        let op = AwsOperation::GetSnapshotBlock;
        let get = self
            .aws
            .ebs(region)
            .get_snapshot_block()
            .snapshot_id(snapshot_id)
            .block_index(index)
            .block_token(token)
            .send();
        let out = self.aws.call(op, get).await?;
        super::read_body(op, out.block_data).await
    }

    /// Starts a new, empty snapshot of `volume_size_gib`; `client_token`
    /// makes a retried start return the same snapshot.
    pub async fn start_snapshot(
        &self,
        region: &str,
        volume_size_gib: i64,
        description: &str,
        tags: &[(String, String)],
        client_token: &str,
    ) -> Result<String, AwsError> {
        self.start_snapshot_encrypted(
            region,
            volume_size_gib,
            description,
            tags,
            client_token,
            None,
        )
        .await
    }

    /// [`Snapshots::start_snapshot`], encrypted when `encryption` is set:
    /// `Encrypted` and, when it names one, `KmsKeyArn`. Without a parent
    /// snapshot, EBS encrypts the new snapshot with that key, or with the
    /// account's default EBS key when none is named; without `Encrypted`
    /// the snapshot is encrypted only if the account has EBS encryption by
    /// default on ("Encryption outcomes" for StartSnapshot,
    /// <https://docs.aws.amazon.com/ebs/latest/userguide/ebsapis-using-encryption.html>).
    /// The caller needs the key's KMS permissions through EBS (see
    /// iam/README.md, "Encrypted snapshots").
    pub async fn start_snapshot_encrypted(
        &self,
        region: &str,
        volume_size_gib: i64,
        description: &str,
        tags: &[(String, String)],
        client_token: &str,
        encryption: Option<&VolumeEncryption>,
    ) -> Result<String, AwsError> {
        let tags: Vec<Tag> = tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        let start = self
            .aws
            .ebs(region)
            .start_snapshot()
            .volume_size(volume_size_gib)
            .description(description)
            .set_tags(Some(tags))
            .client_token(client_token)
            .set_encrypted(encryption.map(|_| true))
            .set_kms_key_arn(encryption.and_then(|e| e.kms_key_arn.clone()))
            .send();
        let op = AwsOperation::StartSnapshot;
        let out = self.aws.call(op, start).await?;
        out.snapshot_id()
            .map(String::from)
            .ok_or_else(|| missing(op, "snapshot ID"))
    }

    /// Writes one whole block, with its SHA-256 so that EBS checks it.
    pub async fn put_snapshot_block(
        &self,
        region: &str,
        snapshot_id: &str,
        index: i32,
        data: Vec<u8>,
    ) -> Result<(), AwsError> {
        let checksum = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&data));
        let len = i32::try_from(data.len()).unwrap_or(i32::MAX);
        let put = self
            .aws
            .ebs(region)
            .put_snapshot_block()
            .snapshot_id(snapshot_id)
            .block_index(index)
            .data_length(len)
            .checksum(checksum)
            .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
            .block_data(ByteStream::from(data))
            .send();
        self.aws.call(AwsOperation::PutSnapshotBlock, put).await?;
        Ok(())
    }

    /// Seals a snapshot written with [`Snapshots::put_snapshot_block`].
    pub async fn complete_snapshot(
        &self,
        region: &str,
        snapshot_id: &str,
        changed_blocks: i32,
    ) -> Result<(), AwsError> {
        let complete = self
            .aws
            .ebs(region)
            .complete_snapshot()
            .snapshot_id(snapshot_id)
            .changed_blocks_count(changed_blocks)
            .send();
        self.aws
            .call(AwsOperation::CompleteSnapshot, complete)
            .await?;
        Ok(())
    }

    /// How a snapshot is encrypted (DescribeSnapshots' `Encrypted` and
    /// `KmsKeyId`, the key's ARN); `None` when it is not.
    pub async fn snapshot_encryption(
        &self,
        region: &str,
        snapshot_id: &str,
    ) -> Result<Option<VolumeEncryption>, AwsError> {
        let op = AwsOperation::DescribeSnapshots;
        let describe = self
            .aws
            .ec2(region)
            .describe_snapshots()
            .snapshot_ids(snapshot_id)
            .send();
        let out = self.aws.call(op, describe).await?;
        let snapshot = out
            .snapshots()
            .iter()
            .find(|s| s.snapshot_id() == Some(snapshot_id))
            .ok_or_else(|| missing(op, "snapshot"))?;
        Ok(snapshot
            .encrypted()
            .unwrap_or(false)
            .then(|| VolumeEncryption {
                kms_key_arn: snapshot.kms_key_id().map(String::from),
            }))
    }

    /// One snapshot; `None` when it does not exist (or this account may
    /// not see it). Concurrent lookups in one region share a call.
    pub async fn describe_snapshot(
        &self,
        region: &str,
        snapshot_id: &str,
    ) -> Result<Option<SnapshotInfo>, AwsError> {
        let (clients, target) = (self.aws.clone(), region.to_string());
        self.aws
            .batches
            .snapshots
            .call(region, snapshot_id.to_string(), move |ids| {
                let (clients, region) = (clients.clone(), target.clone());
                async move {
                    clients
                        .snapshots()
                        .describe_snapshots_now(&region, ids)
                        .await
                }
            })
            .await
    }

    /// Snapshots by ID: one call for all of them. One unknown ID fails
    /// such a call as a whole; then each is asked for alone, so the others
    /// are still found.
    async fn describe_snapshots_now(
        &self,
        region: &str,
        snapshot_ids: Vec<String>,
    ) -> Result<HashMap<String, SnapshotInfo>, AwsError> {
        super::batch::all_or_each(&snapshot_ids, is_snapshot_not_found, |ids| async move {
            self.describe_snapshots_by_id(region, &ids).await
        })
        .await
    }

    async fn describe_snapshots_by_id(
        &self,
        region: &str,
        snapshot_ids: &[String],
    ) -> Result<HashMap<String, SnapshotInfo>, AwsError> {
        let describe = self
            .aws
            .ec2(region)
            .describe_snapshots()
            .set_snapshot_ids(Some(snapshot_ids.to_vec()))
            .send();
        let out = self
            .aws
            .call(AwsOperation::DescribeSnapshots, describe)
            .await?;
        Ok(out
            .snapshots()
            .iter()
            .filter_map(|s| {
                let info = snapshot_info(s)?;
                Some((info.snapshot_id.clone(), info))
            })
            .collect())
    }

    /// This account's snapshots that carry every tag of `tags` (all pages):
    /// what the garbage collector looks at.
    pub async fn snapshots_tagged(
        &self,
        region: &str,
        tags: &[(&str, &str)],
    ) -> Result<Vec<SnapshotInfo>, AwsError> {
        let filters = tags
            .iter()
            .map(|(k, v)| {
                aws_sdk_ec2::types::Filter::builder()
                    .name(format!("tag:{k}"))
                    .values(*v)
                    .build()
            })
            .collect();
        let mut pages = self
            .aws
            .ec2(region)
            .describe_snapshots()
            .owner_ids("self")
            .set_filters(Some(filters))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = self
            .aws
            .page(AwsOperation::DescribeSnapshots, pages.next())
            .await?
        {
            out.extend(page.snapshots().iter().filter_map(snapshot_info));
        }
        Ok(out)
    }
}

/// A snapshot as DescribeSnapshots describes it.
fn snapshot_info(s: &aws_sdk_ec2::types::Snapshot) -> Option<SnapshotInfo> {
    Some(SnapshotInfo {
        snapshot_id: s.snapshot_id()?.to_string(),
        state: s
            .state()
            .map(|st| st.as_str().to_string())
            .unwrap_or_default(),
        progress: s.progress().map(String::from),
        state_message: s.state_message().map(String::from),
        volume_size_gib: i64::from(s.volume_size().unwrap_or(0)),
        volume_id: s
            .volume_id()
            .filter(|v| *v != "vol-ffffffff")
            .map(String::from),
        tags: s
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
            .collect(),
        owner_id: s.owner_id().map(String::from),
        start_time: s
            .start_time()
            .and_then(|t| k8s_openapi::jiff::Timestamp::from_second(t.secs()).ok()),
    })
}

impl Snapshots<'_> {
    /// Creates a gp3 volume from a snapshot in `zone`, tagged at creation;
    /// `client_token` makes a retried call return the same volume.
    pub async fn create_volume_from_snapshot(
        &self,
        region: &str,
        snapshot_id: &str,
        zone: &str,
        tags: &[(String, String)],
        client_token: &str,
    ) -> Result<String, AwsError> {
        use aws_sdk_ec2::types::{ResourceType, VolumeType};
        let spec = super::tag_specification(
            ResourceType::Volume,
            super::ec2_tags(tags.iter().map(|(k, v)| (k, v))),
        );
        let create = self
            .aws
            .ec2(region)
            .create_volume()
            .snapshot_id(snapshot_id)
            .availability_zone(zone)
            .volume_type(VolumeType::Gp3)
            .tag_specifications(spec)
            .client_token(client_token)
            .send();
        let op = AwsOperation::CreateVolume;
        let out = self.aws.call(op, create).await?;
        out.volume_id()
            .map(String::from)
            .ok_or_else(|| missing(op, "volume ID"))
    }
}
