//! Disks for data tests: real ext4 images made by `mkfs.ext4 -d`, written
//! into EBS snapshots and read back through the EBS direct APIs, and S3
//! buckets for repositories.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use tender::aws::AwsClients;
use tender::aws::ebs::BLOCK_SIZE;
use tender::mover::BackupRequest;
use tender::mover::SourceVolume;
use tender::mover::manifest::RepositoryLocation;

use super::{REGION, unique};

/// An ext4 filesystem image: its bytes, and the file it was built in.
pub struct Ext4Image {
    pub bytes: Vec<u8>,
    pub path: PathBuf,
}

impl Ext4Image {
    /// Builds an image of `size_mib` holding `files` (path, contents), with
    /// 4 KiB filesystem blocks.
    pub fn build(files: &[(&str, Vec<u8>)], size_mib: u32) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("ext4"));
        let root = dir.join("root");
        for (path, data) in files {
            let at = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            std::fs::write(at, data).unwrap();
        }
        let path = dir.join("disk.img");
        // An existing file of the right size: mkfs.ext4 then says nothing.
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(u64::from(size_mib) << 20))
            .unwrap();
        let status = Command::new(mkfs())
            .args(["-q", "-F", "-b", "4096", "-E", "root_owner=0:0", "-d"])
            .arg(&root)
            .arg(&path)
            .arg(format!("{size_mib}M"))
            .status()
            .expect("run mkfs.ext4 (Debian package e2fsprogs)");
        assert!(status.success(), "mkfs.ext4 failed");
        Self {
            bytes: std::fs::read(&path).unwrap(),
            path,
        }
    }

    /// Byte offsets of the filesystem blocks of `file`, from debugfs.
    pub fn file_offsets(&self, file: &str) -> Vec<u64> {
        let out = Command::new(debugfs())
            .args(["-R", &format!("blocks {file}")])
            .arg(&self.path)
            .output()
            .expect("run debugfs");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|b| b.parse::<u64>().ok())
            .map(|b| b * 4096)
            .collect()
    }

    /// Overwrites bytes in place (the file's data blocks stay where they are).
    pub fn overwrite(&mut self, offset: u64, data: &[u8]) {
        let at = offset as usize;
        self.bytes[at..at + data.len()].copy_from_slice(data);
        std::fs::write(&self.path, &self.bytes).unwrap();
    }
}

/// The image's folder goes with it: tests build hundreds.
impl Drop for Ext4Image {
    fn drop(&mut self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn tool(name: &str) -> String {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p.display().to_string();
        }
    }
    name.to_string()
}

fn mkfs() -> String {
    tool("mkfs.ext4")
}

fn debugfs() -> String {
    tool("debugfs")
}

/// Reproducible bytes that do not compress (xorshift).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The image's 512 KiB blocks that hold data, by index.
pub fn data_blocks(image: &[u8]) -> BTreeMap<i32, &[u8]> {
    image
        .chunks(BLOCK_SIZE)
        .enumerate()
        .filter(|(_, b)| b.iter().any(|x| *x != 0))
        .map(|(i, b)| (i as i32, b))
        .collect()
}

/// Writes `image` into a new EBS snapshot of `size_gib` (blocks of zeros
/// are not written, as for any sparse disk) and returns its ID.
pub async fn write_snapshot(aws: &AwsClients, image: &[u8], size_gib: i64) -> String {
    write_encrypted_snapshot(aws, image, size_gib, None).await
}

/// [`write_snapshot`], encrypted with the KMS key `key` when one is given.
pub async fn write_encrypted_snapshot(
    aws: &AwsClients,
    image: &[u8],
    size_gib: i64,
    key: Option<&str>,
) -> String {
    let token = unique("snap");
    let encryption = key.map(|k| tender::mover::manifest::VolumeEncryption {
        kms_key_arn: Some(k.to_string()),
    });
    let id = aws
        .snapshots()
        .start_snapshot_encrypted(
            REGION,
            size_gib,
            "test disk",
            &[],
            &token,
            encryption.as_ref(),
        )
        .await
        .unwrap();
    let blocks = data_blocks(image);
    for (index, data) in &blocks {
        let mut data = data.to_vec();
        data.resize(BLOCK_SIZE, 0);
        aws.snapshots()
            .put_snapshot_block(REGION, &id, *index, data)
            .await
            .unwrap();
    }
    aws.snapshots()
        .complete_snapshot(REGION, &id, blocks.len() as i32)
        .await
        .unwrap();
    wait_completed(aws, &id).await;
    id
}

/// Waits until EC2 says snapshot `id` is `completed`, as a user does before
/// using a snapshot: CompleteSnapshot answers `pending`, and a snapshot
/// just made may not be described at all for a moment.
pub async fn wait_completed(aws: &AwsClients, id: &str) {
    let start = std::time::Instant::now();
    loop {
        let found = aws.snapshots().describe_snapshot(REGION, id).await;
        if let Ok(Some(s)) = &found {
            assert_ne!(s.state, "error", "snapshot {id} failed");
            if s.state == "completed" {
                return;
            }
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "snapshot {id} is not completed after 60 s: {found:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A snapshot's contents, read through the EBS direct APIs, as `len` bytes
/// (blocks not written read as zeros). Panics when the snapshot holds data
/// beyond `len`.
pub async fn read_snapshot(aws: &AwsClients, snapshot_id: &str, len: usize) -> Vec<u8> {
    // The EBS direct APIs read completed snapshots only.
    wait_completed(aws, snapshot_id).await;
    let listing = aws
        .snapshots()
        .list_snapshot_blocks(REGION, snapshot_id)
        .await
        .unwrap();
    let mut out = vec![0u8; len];
    for (index, token) in listing.blocks {
        let data = aws
            .snapshots()
            .get_snapshot_block(REGION, snapshot_id, index, &token)
            .await
            .unwrap();
        let at = index as usize * BLOCK_SIZE;
        if at >= len {
            assert!(
                data.iter().all(|b| *b == 0),
                "block {index} holds data past the image"
            );
            continue;
        }
        let end = (at + data.len()).min(len);
        out[at..end].copy_from_slice(&data[..end - at]);
    }
    out
}

pub async fn s3() -> aws_sdk_s3::Client {
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .load()
        .await;
    let conf = aws_sdk_s3::config::Builder::from(&conf)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// A new, empty bucket.
pub async fn create_bucket(s3: &aws_sdk_s3::Client) -> String {
    let name = unique("tender-repo").to_lowercase();
    s3.create_bucket().bucket(&name).send().await.unwrap();
    name
}

/// Keys under `prefix`.
pub async fn keys(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut next = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(next)
            .send()
            .await
            .unwrap();
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(String::from)),
        );
        next = page.next_continuation_token().map(String::from);
        if next.is_none() {
            return keys;
        }
    }
}

/// EBS snapshots of this account tagged `key=value` (tests run in
/// parallel: count only your own).
pub async fn snapshots_tagged(ec2: &aws_sdk_ec2::Client, key: &str, value: &str) -> Vec<String> {
    ec2.describe_snapshots()
        .owner_ids("self")
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name(format!("tag:{key}"))
                .values(value)
                .build(),
        )
        .send()
        .await
        .unwrap()
        .snapshots()
        .iter()
        .filter_map(|s| s.snapshot_id().map(String::from))
        .collect()
}

/// EBS snapshots this account owns.
pub async fn own_snapshots(ec2: &aws_sdk_ec2::Client) -> Vec<String> {
    ec2.describe_snapshots()
        .owner_ids("self")
        .send()
        .await
        .unwrap()
        .snapshots()
        .iter()
        .filter_map(|s| s.snapshot_id().map(String::from))
        .collect()
}

/// A backup by the job `(name, UID)` of `volumes` into `loc`, as the
/// resource (and lineage) `disk-1`; `aws` reads the snapshots and writes
/// the repository.
pub fn backup_request<'a>(
    aws: &'a AwsClients,
    loc: &'a RepositoryLocation,
    (job_name, job_uid): (&'a str, &'a str),
    volumes: &'a [SourceVolume],
) -> BackupRequest<'a> {
    BackupRequest {
        source: aws,
        repository: aws,
        location: loc,
        region: REGION,
        resource: "disk-1",
        lineage: "disk-1",
        job_name,
        job_uid,
        volumes,
        machine: None,
        policy: None,
        grace: None,
    }
}

/// Backs `data` (a fresh EBS snapshot of it) up as `job`'s restore point
/// of `resource`, made by the BackupPolicy `policy` (`None`: a BackupJob
/// made by hand), with the data mover a backup worker runs.
pub async fn back_up_as(
    aws: &AwsClients,
    loc: &RepositoryLocation,
    (job, resource): (&str, &str),
    policy: Option<&str>,
    data: &[u8],
) -> tender::mover::manifest::Manifest {
    let snapshot = write_snapshot(aws, data, 1).await;
    let volumes = snapshot_volume(&snapshot);
    let uid = format!("uid-{job}");
    let request = BackupRequest {
        resource,
        lineage: resource,
        policy,
        ..backup_request(aws, loc, (job, &uid), &volumes)
    };
    tender::mover::backup(request, &tender::mover::Progress::default())
        .await
        .expect("the backup succeeds")
}

/// The one volume of a snapshot that came from no instance.
pub fn snapshot_volume(snapshot_id: &str) -> [SourceVolume; 1] {
    [SourceVolume {
        snapshot_id: snapshot_id.to_string(),
        device: None,
        volume_id: None,
    }]
}
