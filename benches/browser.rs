//! File-level recovery benchmark (#17): a 20 GiB XFS volume (sparse, made
//! by `mkfs.xfs -p`) with a folder of 100 000 entries, stored as a restore
//! point's chunks in the local emulator's S3. It lists the folder and
//! searches the volume by name as a session does (partitions surveyed,
//! filesystem opened, entries read and sorted, the page rendered; chunks
//! fetched from S3, verified, cached), each with a cold cache, and prints
//! the time, the chunks read and their share of the volume. Baseline, in
//! the same run: the same listing from the image on the local disk (no
//! S3), as a ratio.
//!
//! ```sh
//! scripts/bench browser
//! ```
#![allow(clippy::unwrap_used, clippy::panic)]

use std::os::unix::fs::FileExt;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};
use tender::aws::AwsClients;
use tender::aws::ebs::BLOCK_SIZE;
use tender::mover::manifest::{BlockRef, RepositoryLocation, VolumeImage};
use tender::worker::browser::partitions::ReadAt;
use tender::worker::browser::{RepositoryDisk, render_folder, search_volume};

const REGION: &str = "us-east-1";
const ENTRIES: usize = 100_000;
const SIZE_GIB: u64 = 20;
const LARGE_GIB: u64 = 1;

fn main() {
    // `cargo test --all-targets` runs this binary without `--bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    assert!(
        std::env::var_os("AWS_ENDPOINT_URL").is_some(),
        "AWS_ENDPOINT_URL is not set: run scripts/bench browser"
    );
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench());
}

/// The image on the local disk, read as the worker reads a volume.
#[derive(Clone)]
struct LocalDisk(Arc<std::fs::File>, u64);

impl ReadAt for LocalDisk {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        self.0.read_exact_at(buf, offset).map_err(|e| e.to_string())
    }
    fn size(&self) -> u64 {
        self.1
    }
}

/// A 20 GiB XFS image: `/big` holds the 100 000 entries, `/deep/a/b` the
/// file the search looks for, `/data/large.bin` 1 GiB that a listing must
/// not read (one repeated block, so that the emulator's S3 holds one
/// chunk of it).
fn make_image(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let needle = dir.join("needle");
    std::fs::write(&needle, b"found\n").unwrap();
    let large = dir.join("large");
    {
        use std::io::Write;
        let block: Vec<u8> = (0..BLOCK_SIZE).map(|i| (i % 251) as u8 + 1).collect();
        let mut f = std::io::BufWriter::new(std::fs::File::create(&large).unwrap());
        for _ in 0..(LARGE_GIB << 30) / BLOCK_SIZE as u64 {
            f.write_all(&block).unwrap();
        }
    }
    let mut proto = String::from("/dev/null\n0 0\nd--755 0 0\nbig d--755 0 0\n");
    for i in 0..ENTRIES {
        proto.push_str(&format!("file-{i:06}.log ---644 0 0 /dev/null\n"));
    }
    proto.push_str(&format!(
        "$\ndeep d--755 0 0\na d--755 0 0\nb d--755 0 0\nneedle.txt ---644 0 0 {}\n$\n$\n$\n",
        needle.display()
    ));
    proto.push_str(&format!(
        "data d--755 0 0\nlarge.bin ---644 0 0 {}\n$\n$\n",
        large.display()
    ));
    std::fs::write(dir.join("proto"), proto).unwrap();
    let image = dir.join("volume.img");
    let _ = std::fs::remove_file(&image);
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(SIZE_GIB << 30))
        .unwrap();
    let mkfs = ["/usr/sbin/mkfs.xfs", "/sbin/mkfs.xfs"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("mkfs.xfs");
    let out = Command::new(mkfs)
        .args(["-q", "-f", "-p"])
        .arg(dir.join("proto"))
        .arg(&image)
        .output()
        .expect("run mkfs.xfs (Debian package xfsprogs)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    image
}

/// Stores the image's blocks that hold data as chunks, as a backup does;
/// returns the volume's block map.
async fn store(
    aws: &AwsClients,
    location: &RepositoryLocation,
    image: &std::path::Path,
) -> VolumeImage {
    let file = std::fs::File::open(image).unwrap();
    let mut blocks = Vec::new();
    let mut buf = vec![0u8; BLOCK_SIZE];
    let mut stored = std::collections::HashSet::new();
    for index in 0..((SIZE_GIB << 30) / BLOCK_SIZE as u64) {
        file.read_exact_at(&mut buf, index * BLOCK_SIZE as u64)
            .unwrap();
        if buf.iter().all(|b| *b == 0) {
            continue;
        }
        let hash = hex::encode(Sha256::digest(&buf));
        if stored.insert(hash.clone()) {
            let packed = zstd::bulk::compress(&buf, 3).unwrap();
            aws.repository()
                .put_object(
                    location,
                    &location.chunk_key(&hash),
                    packed,
                    "application/octet-stream",
                )
                .await
                .unwrap();
        }
        blocks.push(BlockRef {
            index: index as i32,
            chunk: hash,
            length: BLOCK_SIZE as u32,
        });
    }
    VolumeImage {
        device: None,
        volume_id: None,
        snapshot_id: "snap-bench".into(),
        size_gib: SIZE_GIB as i64,
        block_size: BLOCK_SIZE as u32,
        blocks,
        encryption: None,
    }
}

async fn bench() {
    let aws = AwsClients::from_env().await;
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-browser");
    let started = Instant::now();
    let image = make_image(&dir);
    println!(
        "image: {SIZE_GIB} GiB XFS, {ENTRIES} entries in /big, a {LARGE_GIB} GiB file, made in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let bucket = format!("tender-bench-browser-{}", std::process::id());
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .load()
        .await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(true)
            .build(),
    );
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let location = RepositoryLocation::new(&bucket, "bench/", REGION);
    let started = Instant::now();
    let volume = store(&aws, &location, &image).await;
    let total_blocks = (SIZE_GIB << 30) / BLOCK_SIZE as u64;
    println!(
        "stored: {} of {total_blocks} blocks hold data, in {:.1} s",
        volume.blocks.len(),
        started.elapsed().as_secs_f64()
    );

    // Listing, cold: a new disk has an empty chunk cache.
    let disk = RepositoryDisk::new(aws.clone(), location.clone(), &volume);
    let started = Instant::now();
    let (entries, bytes) = render_folder(disk.clone(), "/big".into()).await.unwrap();
    let listed = started.elapsed().as_secs_f64();
    let chunks = disk.chunks_fetched();
    assert_eq!(entries, ENTRIES);
    println!(
        "list /big: {entries} entries, {} KiB of page, {listed:.2} s; {chunks} chunks read = {:.3} % of the volume's blocks ({:.1} % of those holding data)",
        bytes >> 10,
        100.0 * chunks as f64 / total_blocks as f64,
        100.0 * chunks as f64 / volume.blocks.len() as f64
    );

    let disk = RepositoryDisk::new(aws.clone(), location.clone(), &volume);
    let started = Instant::now();
    let found = search_volume(disk.clone(), "needle".into()).await.unwrap();
    let searched = started.elapsed().as_secs_f64();
    assert_eq!(found, ["/deep/a/b/needle.txt"]);
    println!(
        "search 'needle': {} found, {searched:.2} s; {} chunks read = {:.3} % of the volume's blocks",
        found.len(),
        disk.chunks_fetched(),
        100.0 * disk.chunks_fetched() as f64 / total_blocks as f64
    );

    let local = LocalDisk(
        Arc::new(std::fs::File::open(&image).unwrap()),
        SIZE_GIB << 30,
    );
    let started = Instant::now();
    render_folder(local, "/big".into()).await.unwrap();
    let baseline = started.elapsed().as_secs_f64();
    println!(
        "baseline, the same listing from the local image: {baseline:.2} s; from the repository: {:.1}x that",
        listed / baseline
    );
    println!(
        "target (#17): the listing under 2 s and under 1 % of the blocks: {}",
        if listed < 2.0 && (chunks as f64) < total_blocks as f64 / 100.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
