//! Data mover benchmark: backup and restore throughput of the worker agent
//! (`tender worker`, the release binary, as a process) for a 1 GiB volume
//! against the local AWS emulator, the agent's peak memory, and the same
//! blocks moved by bare EBS direct API calls at the same concurrency (the
//! floor: no hashing, compression, S3 or verification), as a ratio.
//!
//! ```sh
//! scripts/bench mover          # 1024 MiB
//! scripts/bench mover 256      # another size, in MiB
//! ```
#![allow(clippy::unwrap_used, clippy::panic)]

// The tests' KMS keys: the repository's integrity key.
#[path = "../tests/common/keys.rs"]
mod keys;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tender::aws::AwsClients;
use tender::aws::ebs::BLOCK_SIZE;
use tender::messages::{Operation, PROTOCOL_VERSION, WorkerTask};
use tender::mover::manifest::RepositoryLocation;

const REGION: &str = "us-east-1";

fn main() {
    // `cargo test --all-targets` runs this binary without `--bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mib: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.parse().expect("a size in MiB"))
        .unwrap_or(1024);
    for var in ["AWS_ENDPOINT_URL", "TENDER_BIN"] {
        assert!(
            std::env::var_os(var).is_some(),
            "{var} is not set: run scripts/bench mover"
        );
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench(mib));
}

/// Block `i` of the test volume: half incompressible, half text-like
/// (compressible, but no two blocks alike, so nothing deduplicates).
fn block(i: usize) -> Vec<u8> {
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    if i.is_multiple_of(2) {
        (0..BLOCK_SIZE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    } else {
        let line = format!("block {i:08} line of a log file with some words in it {x:016x}\n");
        line.bytes().cycle().take(BLOCK_SIZE).collect()
    }
}

/// Runs the agent on `task`; returns its wall time and peak RSS (KiB).
fn run_agent(bin: &PathBuf, task: &WorkerTask) -> (Duration, u64) {
    let dir = std::env::temp_dir().join(format!("tender-bench-mover-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("task-{}.json", task.attempt));
    std::fs::write(&path, serde_json::to_vec(task).unwrap()).unwrap();
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args([
            "worker",
            "--instance-id",
            "i-00000000000000b01",
            "--task-file",
        ])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("start the agent");
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "the agent failed: {status}");
            return (started.elapsed(), peak);
        }
        if let Ok(text) = std::fs::read_to_string(&status_path) {
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("VmHWM:") {
                    let kib = v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0);
                    peak = peak.max(kib);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mib_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64()
}

async fn bench(mib: usize) {
    let aws = AwsClients::from_env().await;
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .load()
        .await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(true)
            .build(),
    );
    let sqs = aws_sdk_sqs::Client::new(&conf);
    let bin = PathBuf::from(std::env::var("TENDER_BIN").unwrap());
    let blocks = (mib * 1024 * 1024) / BLOCK_SIZE;
    let bytes = blocks * BLOCK_SIZE;
    let size_gib = (bytes as u64).div_ceil(1 << 30).max(1) as i64;
    let tag = format!("{}-{}", std::process::id(), blocks);
    let concurrency = tender::mover::CONCURRENCY;

    // The volume, written once (not measured).
    let t = Instant::now();
    let source = aws
        .snapshots()
        .start_snapshot(REGION, size_gib, "bench volume", &[], &format!("src-{tag}"))
        .await
        .unwrap();
    futures::stream::iter(0..blocks)
        .map(|i| {
            let aws = aws.clone();
            let source = source.clone();
            async move {
                aws.snapshots()
                    .put_snapshot_block(REGION, &source, i as i32, block(i))
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
    aws.snapshots()
        .complete_snapshot(REGION, &source, blocks as i32)
        .await
        .unwrap();
    eprintln!(
        "volume of {mib} MiB written in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // Floor for backup: read every block, nothing else.
    let listing = aws
        .snapshots()
        .list_snapshot_blocks(REGION, &source)
        .await
        .unwrap();
    let t = Instant::now();
    futures::stream::iter(listing.blocks.clone())
        .map(|(i, token)| {
            let aws = aws.clone();
            let source = source.clone();
            async move {
                aws.snapshots()
                    .get_snapshot_block(REGION, &source, i, &token)
                    .await
                    .unwrap()
                    .len()
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<usize>>()
        .await;
    let read_floor = t.elapsed();

    // The agent's backup.
    let bucket = format!("tender-bench-{tag}");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let queue = sqs
        .create_queue()
        .queue_name(format!("tender-bench-{tag}"))
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    // The repository's integrity key: the agent MACs what it writes.
    let key = keys::hmac_key(&conf).await;
    let repository = RepositoryLocation::new(&bucket, "bench/", REGION).with_mac_key(&key);
    let task = |operation, attempt| WorkerTask {
        version: PROTOCOL_VERSION,
        operation,
        namespace: "bench".into(),
        job_name: "bench".into(),
        job_uid: format!("uid-{tag}-{attempt}"),
        resource: source.clone(),
        resource_region: REGION.into(),
        attempt,
        queue_url: queue.clone(),
        queue_region: REGION.into(),
        heartbeat_seconds: 2,
        cluster_id: None,
        source_access: None,
        repository: Some(repository.clone()),
        restore_point: (operation == Operation::Restore).then(|| format!("bench/{source}")),
        device: None,
        all_volumes: false,
        file_level: None,
        policy: None,
        gc_grace_seconds: None,
        retention: None,
        database: None,
    };
    let (backup_time, backup_rss) = run_agent(&bin, &task(Operation::Backup, 1));
    let manifest = tender::mover::load_manifest(&aws, &repository, &format!("bench/{source}"))
        .await
        .unwrap();

    // Floor for restore: write every block into a new snapshot, nothing else.
    let target = aws
        .snapshots()
        .start_snapshot(REGION, size_gib, "bench floor", &[], &format!("dst-{tag}"))
        .await
        .unwrap();
    let t = Instant::now();
    futures::stream::iter(0..blocks)
        .map(|i| {
            let aws = aws.clone();
            let target = target.clone();
            let data = block(i);
            async move {
                aws.snapshots()
                    .put_snapshot_block(REGION, &target, i as i32, data)
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
    aws.snapshots()
        .complete_snapshot(REGION, &target, blocks as i32)
        .await
        .unwrap();
    let write_floor = t.elapsed();

    // The agent's restore (verifies every chunk, then writes).
    let (restore_time, restore_rss) = run_agent(&bin, &task(Operation::Restore, 2));

    let s = &manifest.stats;
    let backup_rate = mib_per_s(bytes, backup_time);
    let read_rate = mib_per_s(bytes, read_floor);
    let restore_rate = mib_per_s(bytes, restore_time);
    let write_rate = mib_per_s(bytes, write_floor);
    println!("# Tender data mover benchmark\n");
    println!(
        "volume: {mib} MiB ({blocks} blocks of 512 KiB, half random, half text); concurrency {concurrency}; agent {}",
        bin.display()
    );
    println!("| | agent | floor (bare EBS calls) | agent / floor |");
    println!("|---|---|---|---|");
    println!(
        "| backup (MiB/s) | {backup_rate:.1} | {read_rate:.1} (GetSnapshotBlock only) | {:.2} |",
        backup_rate / read_rate
    );
    println!(
        "| restore (MiB/s) | {restore_rate:.1} | {write_rate:.1} (PutSnapshotBlock only) | {:.2} |",
        restore_rate / write_rate
    );
    println!(
        "| agent peak RSS (MiB) | backup {:.1}, restore {:.1} | | |",
        backup_rss as f64 / 1024.0,
        restore_rss as f64 / 1024.0
    );
    println!(
        "| stored | {} chunks, {:.1} MiB compressed of {:.1} MiB | | |",
        s.chunks_uploaded,
        s.bytes_uploaded as f64 / 1048576.0,
        s.bytes_total as f64 / 1048576.0
    );
    let _ = sqs.delete_queue().queue_url(&queue).send().await;
}
