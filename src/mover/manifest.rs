//! The repository's layout and the restore point's manifest: pure types and
//! decisions, no I/O.
//!
//! ```text
//! <prefix>chunks/<h[0..2]>/<h>             zstd(block data), h = SHA-256 of the data
//! <prefix>restore-points/<job>/<resource>.json   a Manifest
//! <prefix>latest/<region>/<resource>.json        a LatestPointer (the parent of the next backup)
//! <prefix>condemned/<run>/marker                 a garbage collection run's time (its LastModified)
//! <prefix>condemned/<run>/<h[0..2]>.json         chunks that run found unreferenced (`super::gc`)
//! ```
//!
//! Manifests and pointers are stored authenticated (see `super::integrity`);
//! chunks need no MAC, their name is the hash of their data.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::aws::ebs::{ChangedBlock, SnapshotBlocks};

/// Version of the manifest format this build writes for volumes (and
/// reads).
pub const MANIFEST_VERSION: u32 = 1;
/// Version of the manifest of a database's restore point (a
/// [`DatabaseImage`], no volumes). A build that reads only version 1
/// refuses it, so its garbage collection stops instead of mistaking it for
/// a restore point that references nothing.
pub const DATABASE_MANIFEST_VERSION: u32 = 2;

/// The device of a volume whose restore point names none (a snapshot's):
/// restored as the boot disk.
pub const SNAPSHOT_DEVICE: &str = "/dev/xvda";

/// Where a repository lives.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryLocation {
    pub bucket: String,
    /// Key prefix, empty or ending in `/`.
    pub prefix: String,
    pub region: String,
    /// The account that must own the bucket (`ExpectedBucketOwner` on every
    /// call); `None` only for locations made by hand (tests, tools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_owner: Option<String>,
    /// SSE-KMS with this key; `None`: SSE-S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    /// The KMS HMAC key that authenticates manifests and `latest` pointers
    /// (the repository's `spec.integrity.macKeyId`). Without one the mover
    /// neither writes nor trusts any: there is no unauthenticated mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_key_id: Option<String>,
    /// The namespace whose part of the repository this is; manifests and
    /// pointers carry it, and one of another namespace is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl RepositoryLocation {
    pub fn new(bucket: &str, prefix: &str, region: &str) -> Self {
        let prefix = prefix.trim_matches('/');
        Self {
            bucket: bucket.to_string(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            region: region.to_string(),
            expected_owner: None,
            kms_key_id: None,
            mac_key_id: None,
            namespace: None,
        }
    }

    /// The same location, its manifests and pointers authenticated by the
    /// KMS HMAC key `key_id`.
    pub fn with_mac_key(mut self, key_id: &str) -> Self {
        self.mac_key_id = Some(key_id.to_string());
        self
    }

    /// Where one namespace's restore points (and their chunks) live in a
    /// repository: under `<prefix><namespace>/`, so that namespaces never
    /// read, overwrite or collide with each other's.
    pub fn of(repository: &crate::api::BackupRepositorySpec, namespace: &str) -> Self {
        let mut location = Self::new(
            &repository.bucket,
            &format!("{}/{namespace}", repository.prefix.trim_end_matches('/')),
            &repository.region,
        )
        .owned_by(repository);
        location.mac_key_id = repository.integrity.as_ref().map(|i| i.mac_key_id.clone());
        location.namespace = Some(namespace.to_string());
        location
    }

    /// Where a file-level session copies the files it restores: under
    /// `<prefix>_restored/<namespace>/<job>/<extra>`, apart from every
    /// namespace's restore points (no namespace name starts with `_`).
    pub fn restored_files(
        repository: &crate::api::BackupRepositorySpec,
        namespace: &str,
        job: &str,
        extra: &str,
    ) -> Self {
        let base = repository.prefix.trim_end_matches('/');
        let extra = extra.trim_matches('/');
        Self::new(
            &repository.bucket,
            &format!("{base}/_restored/{namespace}/{job}/{extra}"),
            &repository.region,
        )
        .owned_by(repository)
    }

    /// Where a file-level session stages files for a restore onto the
    /// source instance: `<prefix>_staging/<cluster>/<namespace>/<job
    /// UID>/`, apart from every namespace's restore points (which garbage
    /// collection and retention list) as `_restored/` is; by cluster, so
    /// that each cluster's sweep judges only its own jobs' folders.
    pub fn staging(
        repository: &crate::api::BackupRepositorySpec,
        cluster_id: &str,
        namespace: &str,
        job_uid: &str,
    ) -> Self {
        let root = Self::staging_root(repository, cluster_id);
        Self {
            prefix: format!("{}{namespace}/{job_uid}/", root.prefix),
            ..root
        }
    }

    /// Where one cluster's jobs stage files: `<prefix>_staging/<cluster>/`
    /// (the cluster ID kept to letters, digits and `-`).
    pub fn staging_root(repository: &crate::api::BackupRepositorySpec, cluster_id: &str) -> Self {
        let base = repository.prefix.trim_end_matches('/');
        let cluster: String = cluster_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(64)
            .collect();
        Self::new(
            &repository.bucket,
            &format!("{base}/_staging/{cluster}/"),
            &repository.region,
        )
        .owned_by(repository)
    }

    pub fn owned_by(mut self, repository: &crate::api::BackupRepositorySpec) -> Self {
        self.expected_owner = Some(repository.expected_bucket_owner.clone());
        self.kms_key_id = repository.encryption.kms_key().map(String::from);
        self
    }

    /// The object that stores the chunk whose data hashes to `hash`.
    pub fn chunk_key(&self, hash: &str) -> String {
        let fan = hash.get(..2).unwrap_or("00");
        format!("{}chunks/{fan}/{hash}", self.prefix)
    }

    /// Prefix of every chunk object.
    pub fn chunks_prefix(&self) -> String {
        format!("{}chunks/", self.prefix)
    }

    /// The manifest of restore point `id` (`<job>/<resource>`).
    pub fn manifest_key(&self, id: &str) -> String {
        format!("{}restore-points/{id}.json", self.prefix)
    }

    /// Prefix of every manifest.
    pub fn restore_points_prefix(&self) -> String {
        format!("{}restore-points/", self.prefix)
    }

    /// Prefix of the holds placed on restore points.
    pub fn holds_prefix(&self) -> String {
        format!("{}holds/", self.prefix)
    }

    /// The hold of restore point `id`: while it exists, no retention run
    /// expires or deletes it.
    pub fn hold_key(&self, id: &str) -> String {
        format!("{}{id}", self.holds_prefix())
    }

    /// Prefix of garbage collection's condemned-chunk lists.
    pub fn condemned_prefix(&self) -> String {
        format!("{}condemned/", self.prefix)
    }

    /// The pointer to the newest restore point of a resource.
    pub fn latest_key(&self, region: &str, resource: &str) -> String {
        format!("{}latest/{region}/{resource}.json", self.prefix)
    }
}

/// The SHA-256 of a chunk's data, from its name: the name itself, or what
/// precedes `~` in a rescue name.
pub fn chunk_digest(name: &str) -> &str {
    name.split_once('~').map_or(name, |(digest, _)| digest)
}

/// Whether `name` is a chunk's name: 64 lowercase hex digits (the SHA-256
/// of its data), optionally followed by `~` and a tag of 1 to 32 lowercase
/// letters, digits and `-` (a rescue name). Nothing else ever becomes part
/// of a key.
pub fn is_chunk_name(name: &str) -> bool {
    let digest = chunk_digest(name);
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    let tag_ok = match name.get(digest.len()..) {
        Some("") => true,
        Some(rest) => {
            let tag = &rest[1..];
            (1..=32).contains(&tag.len())
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'-')
        }
        None => false,
    };
    digest.len() == 64 && digest.bytes().all(hex) && tag_ok
}

/// The name a backup stores a chunk of data `hash` under: `hash`, unless
/// garbage collection condemned it (`condemned`); then a name no collection
/// ever listed, `hash~<tag>` (or `hash~<tag>-2`, …, if that one is
/// condemned too). A backup never writes a condemned name, so the delete
/// phase can never remove a chunk a backup wrote after it looked
/// (`super::gc`); restores check the data against the digest part.
pub fn rescue_name(hash: &str, tag: &str, condemned: &HashSet<String>) -> String {
    if !condemned.contains(hash) {
        return hash.to_string();
    }
    (1..)
        .map(|n| match n {
            1 => format!("{hash}~{tag}"),
            n => format!("{hash}~{tag}-{n}"),
        })
        .find(|name| !condemned.contains(name))
        .unwrap_or_else(|| hash.to_string())
}

/// The ID of the restore point a job writes for one resource.
pub fn restore_point_id(job_name: &str, resource: &str) -> String {
    format!("{job_name}/{resource}")
}

/// One restore point: everything needed to bring the resource's volumes
/// back, block by block, from the repository's chunks.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub version: u32,
    /// `<job>/<resource>`.
    pub id: String,
    /// The protected resource (an instance or snapshot ID).
    pub resource: String,
    pub region: String,
    /// The namespace of the BackupJob that wrote it.
    pub namespace: String,
    /// The BackupJob that wrote it (name and UID).
    pub job_name: String,
    pub job_uid: String,
    /// RFC 3339.
    pub created_at: String,
    /// The restore point this one was taken incrementally from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Why the resource's latest restore point was not the parent: its
    /// `latest` pointer or manifest did not verify, so this backup is a
    /// full one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_refused: Option<String>,
    pub volumes: Vec<VolumeImage>,
    pub stats: BackupStats,
    /// What the backed-up instance's AMI said (architecture, boot mode,
    /// root device…), recorded from DescribeInstances at backup time so that
    /// a full restore registers an image that boots. `None` in a snapshot's
    /// restore point and in manifests written before it was recorded: see
    /// [`Manifest::machine_or_fallback`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<crate::api::MachineImage>,
    /// The BackupPolicy whose run wrote it, whose retention rules then
    /// apply to it; `None` for a BackupJob made by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// A database's restore point: the DB snapshot that holds it and what
    /// a restore needs of the DB instance (version 2 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseImage>,
}

/// What a database's restore point holds: the DB snapshot RDS keeps, and
/// the DB instance it was taken of, as it was.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseImage {
    /// The DB instance identifier.
    pub identifier: String,
    pub engine: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    pub allocated_gib: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_group: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vpc_security_group_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameter_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_username: Option<String>,
    pub storage_encrypted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    /// The DB snapshots that hold it; the first is the one taken in the
    /// DB instance's account and Region. Empty for a dump.
    #[serde(default)]
    pub snapshots: Vec<DatabaseSnapshotRef>,
    /// A logical dump in the repository's chunks instead of a DB snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dump: Option<DatabaseDump>,
}

/// A PostgreSQL server's logical dump: its roles, then for each database
/// the schema before the data, each table's rows, and the schema after
/// the data (indexes, constraints, triggers), each a stream of chunks cut
/// by content (`super::dump`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseDump {
    /// `server_version` of the dumped server (`15.18`).
    pub server_version: String,
    /// `pg_dump --version` of the tools that dumped it; a restore needs
    /// tools at least as new.
    pub tools_version: String,
    /// How the streams were cut (the chunker and its sizes).
    pub chunking: String,
    /// `pg_dumpall --globals-only --no-role-passwords`.
    pub globals: DumpStream,
    pub databases: Vec<DumpedDatabase>,
}

/// One database of a dump, all of it read in one snapshot.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DumpedDatabase {
    pub name: String,
    /// Its encoding: the rows' bytes are in it.
    pub encoding: String,
    /// `pg_dump --section=pre-data`.
    pub pre_data: DumpStream,
    pub tables: Vec<DumpedTable>,
    /// `pg_dump --section=data` without the tables' rows: sequences'
    /// positions, large objects, extensions' configuration rows.
    #[serde(default)]
    pub other_data: DumpStream,
    /// `pg_dump --section=post-data`.
    pub post_data: DumpStream,
    /// The database's collation and character type.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub collate: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ctype: String,
}

/// One table's rows, in `COPY` text format.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DumpedTable {
    /// Schema-qualified and quoted (`public."Order"`).
    pub name: String,
    /// The copied columns, quoted and comma-separated (generated ones
    /// are not copied).
    pub columns: String,
    /// The primary key's columns the rows are ordered by, so that a
    /// changed row changes only the chunks around it; empty for a table
    /// without one (its rows in storage order).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub order_by: String,
    pub data: DumpStream,
}

/// A byte stream stored as chunks, in order.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DumpStream {
    pub bytes: u64,
    /// SHA-256 of the whole stream.
    pub sha256: String,
    pub chunks: Vec<StreamChunk>,
}

/// One chunk of a stream.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StreamChunk {
    pub chunk: String,
    pub length: u32,
}

impl DatabaseDump {
    /// Every stream, named for messages, in restore order.
    pub fn streams(&self) -> Vec<(String, &DumpStream)> {
        self.streams_where(|_| true)
    }

    /// The roles, and the streams of the databases `keep` picks, named
    /// for messages, in restore order.
    pub fn streams_where(
        &self,
        keep: impl Fn(&DumpedDatabase) -> bool,
    ) -> Vec<(String, &DumpStream)> {
        let mut all = vec![("roles".to_string(), &self.globals)];
        for db in self.databases.iter().filter(|d| keep(d)) {
            all.push((format!("{}: schema before data", db.name), &db.pre_data));
            for t in &db.tables {
                all.push((format!("{}: {}", db.name, t.name), &t.data));
            }
            all.push((format!("{}: other data", db.name), &db.other_data));
            all.push((format!("{}: schema after data", db.name), &db.post_data));
        }
        all
    }
}

impl Manifest {
    /// Every chunk the restore point names, with its length: the volumes'
    /// blocks and a dump's streams.
    pub fn chunk_refs(&self) -> impl Iterator<Item = (&str, u32)> {
        let blocks = self
            .volumes
            .iter()
            .flat_map(|v| v.blocks.iter().map(|b| (b.chunk.as_str(), b.length)));
        let streams = self
            .database
            .iter()
            .filter_map(|d| d.dump.as_ref())
            .flat_map(|d| d.streams().into_iter().map(|(_, s)| s))
            .flat_map(|s| s.chunks.iter().map(|c| (c.chunk.as_str(), c.length)));
        blocks.chain(streams)
    }
}

/// One DB snapshot of a database's restore point.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSnapshotRef {
    pub identifier: String,
    pub arn: String,
    pub region: String,
    /// The account that owns it.
    pub account: String,
}

impl Manifest {
    /// The machine to register a full restore's image as: the recorded
    /// one, else (a snapshot's restore point, or one written before Tender
    /// recorded it) a 64-bit x86 HVM machine with ENA, the instance type's
    /// default boot mode, and as root device `/dev/xvda`, else `/dev/sda1`,
    /// else the first volume's device, whichever the restore point has:
    /// what nearly every current EC2 instance is, where RegisterImage's own
    /// default (i386) never is.
    pub fn machine_or_fallback(&self) -> crate::api::MachineImage {
        match &self.machine {
            Some(machine) => machine.clone(),
            None => {
                super::machine::fallback_machine(self.volumes.iter().map(|v| v.device.as_deref()))
            }
        }
    }

    /// Whether this is the manifest of restore point `id` of `namespace`
    /// (when the reader knows its namespace): a genuine manifest copied to
    /// another key, or into another namespace's part, is not.
    pub fn placed(&self, id: &str, namespace: Option<&str>) -> Result<(), String> {
        if self.id != id {
            return Err(format!("it is the manifest of restore point {}", self.id));
        }
        match namespace {
            Some(ns) if ns != self.namespace => Err(format!(
                "it is a restore point of namespace {:?}",
                self.namespace
            )),
            _ => Ok(()),
        }
    }
}

/// One volume of a restore point.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeImage {
    /// Device name on the instance (`/dev/xvda`), when it came from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The volume the snapshot was taken of, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_id: Option<String>,
    /// The snapshot that was read; an incremental backup compares against it.
    pub snapshot_id: String,
    pub size_gib: i64,
    pub block_size: u32,
    /// Blocks with data, by index; a block that is absent reads as zeros.
    pub blocks: Vec<BlockRef>,
    /// How the snapshot that was read is encrypted; `None` when it is not
    /// (or, in a manifest written before this field, not recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<VolumeEncryption>,
}

/// An encrypted snapshot's key, as DescribeSnapshots names it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeEncryption {
    /// The KMS key's ARN (`KmsKeyId`); `None` when EBS did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_arn: Option<String>,
}

/// How a restore in `region` encrypts the snapshot it writes for `volume`:
/// like the source, with the source's key when that key can be used there
/// (a KMS key lives in one Region: an ARN of `region`), else under the
/// target account's default EBS key (`Encrypted` without `KmsKeyArn`).
/// `None` (no `Encrypted` at all) for a source that was not encrypted, or
/// whose manifest predates the record; EBS encryption by default, when the
/// account has it on, still encrypts the snapshot.
pub fn restore_encryption(volume: &VolumeImage, region: &str) -> Option<VolumeEncryption> {
    let source = volume.encryption.as_ref()?;
    let usable = source
        .kms_key_arn
        .as_deref()
        .filter(|arn| kms_key_region(arn) == Some(region));
    Some(VolumeEncryption {
        kms_key_arn: usable.map(String::from),
    })
}

/// The Region of a KMS key ARN (`arn:<partition>:kms:<region>:<account>:key/<id>`).
fn kms_key_region(arn: &str) -> Option<&str> {
    let mut parts = arn.splitn(6, ':');
    let (scheme, _, service, region) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    (scheme == "arn" && service == "kms" && !region.is_empty()).then_some(region)
}

impl VolumeImage {
    /// Logical bytes of the blocks with data.
    pub fn bytes(&self) -> u64 {
        self.blocks.iter().map(|b| u64::from(b.length)).sum()
    }
}

/// A block of a volume and the chunk holding its data.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BlockRef {
    pub index: i32,
    /// SHA-256 (hex) of the block's uncompressed data.
    pub chunk: String,
    /// Uncompressed length.
    pub length: u32,
}

/// What one backup did.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BackupStats {
    /// Blocks read from the snapshots.
    pub blocks_read: u64,
    /// Blocks taken from the parent restore point without reading them.
    pub blocks_reused: u64,
    /// Blocks that were all zeros (not stored).
    pub zero_blocks: u64,
    /// Chunks uploaded, and their compressed bytes.
    pub chunks_uploaded: u64,
    pub bytes_uploaded: u64,
    /// Uncompressed bytes of the chunks uploaded: what was new.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes_new: u64,
    /// Chunks the repository already held.
    pub chunks_deduplicated: u64,
    /// Logical bytes of the restore point.
    pub bytes_total: u64,
    /// Blocks whose read or upload the mover had to try again (after the
    /// SDK's own retries), and that then went through.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub blocks_retried: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Points at the newest restore point of a resource in a repository. It
/// names whose pointer it is, so that one copied to another key (another
/// lineage, region or namespace) is refused even though its MAC verifies.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LatestPointer {
    pub restore_point: String,
    pub namespace: String,
    pub region: String,
    pub lineage: String,
}

impl LatestPointer {
    /// Whether this is the pointer of `lineage` in `region` (and of
    /// `namespace`, when the reader knows it).
    pub fn placed(
        &self,
        namespace: Option<&str>,
        region: &str,
        lineage: &str,
    ) -> Result<(), String> {
        let namespace_ok = namespace.is_none_or(|ns| ns == self.namespace);
        if namespace_ok && self.region == region && self.lineage == lineage {
            Ok(())
        } else {
            Err(format!(
                "it is the latest pointer of {} in {} (namespace {:?})",
                self.lineage, self.region, self.namespace
            ))
        }
    }
}

/// Where one block of a new backup comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockSource {
    /// Read it from the snapshot with this token.
    Read { index: i32, token: String },
    /// Unchanged since the parent: reuse its chunk.
    Reuse(BlockRef),
}

/// Decides which blocks of `current` must be read. Without a parent (or
/// without a change list) every block is read. With both, a block is
/// reused from the parent only when the parent has it and the change list
/// does not name it; a block the parent lacks is read even when the change
/// list misses it, so a short change list can cost reads but never data.
pub fn plan_blocks(
    current: &SnapshotBlocks,
    parent: Option<&VolumeImage>,
    changed: Option<&[ChangedBlock]>,
    condemned: &HashSet<String>,
) -> Vec<BlockSource> {
    let (Some(parent), Some(changed)) = (parent, changed) else {
        return current
            .blocks
            .iter()
            .map(|(index, token)| BlockSource::Read {
                index: *index,
                token: token.clone(),
            })
            .collect();
    };
    let changed: HashSet<i32> = changed.iter().map(|c| c.index).collect();
    let previous: BTreeMap<i32, &BlockRef> = parent.blocks.iter().map(|b| (b.index, b)).collect();
    current
        .blocks
        .iter()
        .map(|(index, token)| match previous.get(index) {
            // A chunk garbage collection condemned is read and written
            // again, so that its collection leaves it (`super::gc`).
            Some(block) if !changed.contains(index) && !condemned.contains(&block.chunk) => {
                BlockSource::Reuse((*block).clone())
            }
            _ => BlockSource::Read {
                index: *index,
                token: token.clone(),
            },
        })
        .collect()
}

/// Each chunk a restore point needs, with the blocks that use it (a chunk
/// can hold the data of many identical blocks).
pub fn chunk_users(volumes: &[VolumeImage]) -> BTreeMap<String, Vec<i32>> {
    let mut users: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for v in volumes {
        for b in &v.blocks {
            users.entry(b.chunk.clone()).or_default().push(b.index);
        }
    }
    users
}

/// Whether `text` is a manifest this build can read, and what is wrong
/// with it otherwise.
pub fn parse_manifest(text: &[u8]) -> Result<Manifest, String> {
    let manifest: Manifest = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    match (manifest.version, &manifest.database) {
        (MANIFEST_VERSION, None) => {}
        (DATABASE_MANIFEST_VERSION, Some(db)) if manifest.volumes.is_empty() => {
            match (db.snapshots.is_empty(), &db.dump) {
                (true, None) => {
                    return Err("the database's restore point names no DB snapshot".into());
                }
                (false, Some(_)) => {
                    return Err(
                        "the database's restore point names both DB snapshots and a dump".into(),
                    );
                }
                (true, Some(dump)) => {
                    for (name, stream) in dump.streams() {
                        if stream.chunks.iter().any(|c| !is_chunk_name(&c.chunk)) {
                            return Err(format!(
                                "the dump's stream {name} names a malformed chunk"
                            ));
                        }
                    }
                }
                (false, None) => {}
            }
        }
        (MANIFEST_VERSION | DATABASE_MANIFEST_VERSION, _) => {
            return Err(format!(
                "manifest version {} with{} a database",
                manifest.version,
                if manifest.database.is_some() {
                    ""
                } else {
                    "out"
                }
            ));
        }
        (other, _) => {
            return Err(format!(
                "manifest version {other} (this build reads {MANIFEST_VERSION} and {DATABASE_MANIFEST_VERSION})"
            ));
        }
    }
    for v in &manifest.volumes {
        if v.blocks.iter().any(|b| !is_chunk_name(&b.chunk)) {
            return Err(format!("volume {} names a malformed chunk", v.snapshot_id));
        }
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests;
