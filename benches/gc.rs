//! Garbage collection benchmark: time and peak memory of a collection run
//! (the condemn phase, then the delete phase a grace period later) over a
//! repository of 100 000 and of 1 000 000 chunks, generated manifests in
//! an in-memory store (the emulator scans every key on every listing, so it
//! cannot hold this size; the end-to-end path runs against it in the
//! tests). Prints each size's figures and the growth from one to the other:
//! time should grow about linearly (×10), memory far less (it holds one
//! fan-out prefix's hashes, 1/256 of them, not all).
//!
//! ```sh
//! scripts/bench gc
//! ```
#![allow(clippy::unwrap_used, clippy::panic)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use jiff::SignedDuration;
use tender::mover::gc::{self, Collection};
use tender::mover::manifest::{
    BackupStats, BlockRef, MANIFEST_VERSION, Manifest, RepositoryLocation, VolumeImage,
};
use tender::mover::store::MemoryStore;

/// Counts the heap in use and its peak.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded to the system allocator with the same layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = IN_USE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) };
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Blocks per generated manifest.
const BLOCKS: usize = 10_000;
/// One chunk in this many is referenced by no manifest.
const UNREFERENCED_ONE_IN: u64 = 5;

fn chunk_name(n: u64) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(n.to_le_bytes()))
}

fn manifest(id: &str, chunks: Vec<String>) -> Vec<u8> {
    let m = Manifest {
        version: MANIFEST_VERSION,
        id: id.into(),
        resource: "i-1".into(),
        region: "us-east-1".into(),
        namespace: "team".into(),
        job_name: "job".into(),
        job_uid: "uid".into(),
        created_at: "2026-01-01T00:00:00Z".into(),
        parent: None,
        parent_refused: None,
        volumes: vec![VolumeImage {
            device: None,
            volume_id: None,
            snapshot_id: "snap-1".into(),
            size_gib: 1,
            block_size: 524_288,
            blocks: chunks
                .into_iter()
                .enumerate()
                .map(|(i, chunk)| BlockRef {
                    index: i as i32,
                    chunk,
                    length: 524_288,
                })
                .collect(),
            encryption: None,
        }],
        stats: BackupStats::default(),
        machine: None,
        policy: None,
        database: None,
    };
    serde_json::to_vec(&m).unwrap()
}

/// A repository of `chunks` chunks, four in five referenced (each by one
/// manifest of up to 10 000 blocks).
fn repository(chunks: u64, location: &RepositoryLocation) -> MemoryStore {
    let store = MemoryStore::default();
    store.with(|s| {
        let mut referenced = Vec::with_capacity(BLOCKS);
        let mut manifests = 0;
        for n in 0..chunks {
            let name = chunk_name(n);
            s.write(&location.chunk_key(&name), None, 300_000);
            if n % UNREFERENCED_ONE_IN != 0 {
                referenced.push(name);
            }
            if referenced.len() == BLOCKS || (n + 1 == chunks && !referenced.is_empty()) {
                manifests += 1;
                let id = format!("job-{manifests}/i-1");
                let body = manifest(&id, std::mem::take(&mut referenced));
                s.write(&location.manifest_key(&id), Some(body), 0);
            }
        }
    });
    store
}

struct Figures {
    chunks: u64,
    /// What the first run's condemned lists take in the in-memory store
    /// (counted in the peak; on S3 they are not in the worker's memory).
    lists_bytes: u64,
    condemn: Duration,
    delete: Duration,
    peak_bytes: usize,
    deleted: u64,
}

async fn measure(chunks: u64) -> Figures {
    let location = RepositoryLocation::new("bucket", "repo/team", "us-east-1");
    let store = repository(chunks, &location);
    let collection = |run: &str| Collection {
        grace: SignedDuration::from_hours(24),
        spill_dir: std::env::temp_dir(),
        run: run.into(),
    };
    let mut peak = 0;
    let base = IN_USE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let started = Instant::now();
    let first = gc::collect(&store, &location, &collection("run-1"))
        .await
        .unwrap();
    let condemn = started.elapsed();
    peak = peak.max(PEAK.load(Ordering::Relaxed) - base);
    assert_eq!(first.pending_chunks, chunks.div_ceil(UNREFERENCED_ONE_IN));
    let prefix = location.condemned_prefix();
    let lists_bytes = store.with(|s| {
        s.objects
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, o)| o.size)
            .sum()
    });
    store.with(|s| s.clock += 25 * 3_600_000);
    let base = IN_USE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let started = Instant::now();
    let second = gc::collect(&store, &location, &collection("run-2"))
        .await
        .unwrap();
    let delete = started.elapsed();
    peak = peak.max(PEAK.load(Ordering::Relaxed).saturating_sub(base));
    assert_eq!(second.deleted_chunks, chunks.div_ceil(UNREFERENCED_ONE_IN));
    Figures {
        chunks,
        lists_bytes,
        condemn,
        delete,
        peak_bytes: peak,
        deleted: second.deleted_chunks,
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let small = runtime.block_on(measure(100_000));
    let large = runtime.block_on(measure(1_000_000));
    println!("garbage collection, in-memory store, 4 of 5 chunks referenced:");
    println!(
        "chunks      condemn run  delete run  deleted   peak heap   of which the lists it wrote (in the store)"
    );
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    for f in [&small, &large] {
        println!(
            "{:>9}  {:>10.2} s  {:>8.2} s  {:>8}  {:>6.2} MiB  {:>6.2} MiB",
            f.chunks,
            f.condemn.as_secs_f64(),
            f.delete.as_secs_f64(),
            f.deleted,
            mib(f.peak_bytes as u64),
            mib(f.lists_bytes)
        );
    }
    let time = |f: &Figures| (f.condemn + f.delete).as_secs_f64();
    println!(
        "growth ×10 chunks: time ×{:.1}, peak memory ×{:.1}",
        time(&large) / time(&small),
        large.peak_bytes as f64 / small.peak_bytes as f64
    );
}
