//! Scale benchmark: N single-resource BackupJobs created at once against the
//! real local API server and the AWS emulator, with the real worker agent
//! (`tender::worker::run`, in-process) answering for every instance the
//! controller launches; then the floor: a minimal program that launches and
//! terminates the same N instances and makes the same number of status
//! writes, and nothing else; then the agents alone: the same N backups by
//! the same agent code, without a controller. Prints Tender's time over the
//! floor's, and over the sum of both baselines, with the CPU seconds every
//! process used in each run.
//!
//! ```sh
//! scripts/bench              # N = 100 and 1000
//! scripts/bench 5000         # N = 5000 only (slow: the emulator degrades)
//! scripts/bench compare 100 1000   # Tender runs of two controller builds
//! ```
//!
//! `cargo bench --bench scale -- [N ...]` works too, in an environment from
//! `eval "$(scripts/testenv up)"`, after `cargo build --release --bin tender`
//! and `kubectl apply --server-side -f crds/`. `TENDER_BIN` names the
//! controller binary (default: target/release/tender); `BENCH_CONCURRENCY`
//! (default 32) bounds job creation and the floor's pipelines; `BENCH_AGENTS`
//! (default: all) the agents running at once.
//!
//! With `BENCH_COMPARE=label=path,label=path` it runs only Tender's run, once
//! per size and controller binary, with `maxConcurrentWorkers` = N on the
//! configuration (so that launch admission runs without throttling), and
//! prints the controllers' bookkeeping side by side (`scripts/bench compare`).
#![allow(clippy::unwrap_used, clippy::panic)]

mod boot;
mod emulator;
mod metrics;
mod report;
mod runs;
mod system;
mod watch;
mod world;
// The tests' stand-in for EC2's boot (this benchmark uses its user-data
// reading; the tests' process launcher is not used here).
#[allow(dead_code)]
#[path = "../../tests/common/workers.rs"]
mod workers;
// The realism layer's plumbing the tests' launcher uses.
#[allow(dead_code)]
#[path = "../../tests/common/realism.rs"]
mod realism;
// The tests' KMS keys: the run's repository integrity key.
#[path = "../../tests/common/keys.rs"]
mod keys;

use std::path::PathBuf;
use std::time::Duration;

use runs::tender::{Controller, tender_run};
use world::World;

pub const REGION: &str = "us-east-1";
/// Protected instances the jobs share (a backup only reads its source).
pub const PROTECTED: usize = 8;
pub const IMAGE_ID: &str = "ami-0123456789abcdef0";
/// Tag on what this process creates.
pub const BENCH_TAG: &str = "tender-bench";
/// The controller's heartbeat period; longer than any job here.
pub const HEARTBEAT_SECONDS: &str = "30";
/// How old the controller's shared instance view may be (INSTANCE_VIEW_MAX_AGE).
pub const VIEW_MAX_AGE_SECONDS: f64 = 5.0;
/// AWS operations that are not EC2.
pub const NOT_EC2: &[&str] = &[
    "CreateQueue",
    "DeleteQueue",
    "ReceiveMessage",
    "SendMessage",
    "DeleteMessageBatch",
    "ListQueues",
    "ListQueueTags",
    "GetCallerIdentity",
    "AssumeRole",
    "GetParameter",
];

/// How long a Tender run or the agents' run may take (BENCH_TIMEOUT_SECONDS,
/// default 300 s + 1 s per job).
pub fn run_timeout(n: usize) -> Duration {
    Duration::from_secs(
        std::env::var("BENCH_TIMEOUT_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300 + n as u64),
    )
}

pub fn concurrency() -> usize {
    std::env::var("BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&c| c > 0)
        .unwrap_or(32)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // binary without it, and a benchmark is not a test: only check the
    // metrics parser then.
    if !std::env::args().any(|a| a == "--bench") {
        metrics::self_check();
        return;
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // Every argument other than `--bench` is a job count.
    let mut sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .map(|a| {
            a.replace(['_', ' '], "")
                .parse()
                .unwrap_or_else(|_| panic!("not a job count: {a:?}"))
        })
        .collect();
    if sizes.is_empty() {
        sizes = vec![100, 1000];
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    match compared_controllers() {
        Some(controllers) => rt.block_on(compare(sizes, controllers)),
        None => rt.block_on(bench(sizes)),
    }
}

/// The controllers of BENCH_COMPARE (`label=path,label=path`), if set.
fn compared_controllers() -> Option<Vec<(String, PathBuf)>> {
    let spec = std::env::var("BENCH_COMPARE").ok()?;
    let controllers: Vec<(String, PathBuf)> = spec
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|item| {
            let (label, path) = item
                .split_once('=')
                .unwrap_or_else(|| panic!("BENCH_COMPARE: not label=path: {item:?}"));
            let path = PathBuf::from(path.trim());
            assert!(
                path.exists(),
                "BENCH_COMPARE: {} is missing",
                path.display()
            );
            (label.trim().to_string(), path)
        })
        .collect();
    (!controllers.is_empty()).then_some(controllers)
}

/// Tender, the floor and the agents alone, for every size.
async fn bench(sizes: Vec<usize>) {
    println!("# Tender scale benchmark");
    println!();
    let mut w = world::world().await;
    let controller = Controller::release();
    print_setup(&w, &sizes, &controller.bin.display().to_string());
    let mut results = Vec::new();
    for &n in &sizes {
        eprintln!("== N = {n}: Tender");
        w.prepare().await;
        let t = tender_run(&w, n, &controller).await;
        eprintln!(
            "  tender N={n}: {:.1} s for {}/{} jobs",
            t.wall, t.done, t.n
        );
        let writes = t.status_writes("BackupJob");
        let k = ((writes / n as f64).ceil() as usize).max(1);
        eprintln!("== N = {n}: floor ({k} status writes per job)");
        w.prepare().await;
        let f = runs::floor::floor_run(&w, n, k).await;
        eprintln!("  floor N={n}: {:.1} s", f.wall);
        eprintln!("== N = {n}: the agents alone");
        w.prepare().await;
        let a = runs::agents::agents_run(&w, n).await;
        eprintln!("  agents alone N={n}: {:.1} s", a.wall);
        results.push((t, Some(f), Some(a)));
    }
    w.cleanup().await;
    println!();
    report::print_table(&results);
    println!();
    println!(
        "Latencies are measured by this process (one clock): creation is when the job's POST returned; the watch sees each status write within milliseconds. \
         The controller looks up each job's source with DescribeSnapshots, so every DescribeInstances is a page of the shared view."
    );
}

/// Tender's run only, for every size and controller binary, with
/// `maxConcurrentWorkers` = N.
async fn compare(sizes: Vec<usize>, binaries: Vec<(String, PathBuf)>) {
    println!("# Tender scale benchmark: controllers compared");
    println!();
    let mut w = world::world().await;
    let described: Vec<String> = binaries
        .iter()
        .map(|(label, path)| format!("{label} = {}", path.display()))
        .collect();
    print_setup(&w, &sizes, &described.join(", "));
    println!(
        "the configuration has maxConcurrentWorkers = N: launch admission runs for every launch, and never holds a worker back"
    );
    println!();
    let mut results = Vec::new();
    for &n in &sizes {
        for (i, (label, path)) in binaries.iter().enumerate() {
            eprintln!("== N = {n}: Tender, controller {label}");
            let controller = Controller {
                label: label.clone(),
                bin: path.clone(),
                slug: format!("c{i}"),
                max_concurrent_workers: Some(n),
            };
            w.prepare().await;
            let t = tender_run(&w, n, &controller).await;
            eprintln!(
                "  tender {label} N={n}: {:.1} s for {}/{} jobs",
                t.wall, t.done, t.n
            );
            results.push(t);
        }
    }
    w.cleanup().await;
    report::print_compare(&results);
}

fn print_setup(w: &World, sizes: &[usize], controllers: &str) {
    println!("machine: {}", system::machine());
    println!(
        "sizes: {sizes:?}; concurrency {} (job creation, floor pipelines); agents: every worker boots one; {PROTECTED} protected EBS snapshots shared by the jobs (one 512 KiB block each, backed up for real by the agents); controller {controllers}; logs in {}",
        concurrency(),
        w.log_dir.display()
    );
    let endpoints = emulator::endpoints();
    println!(
        "emulator: {} moto process(es): {}{}",
        endpoints.len(),
        if endpoints.len() > 1 {
            "EC2 and EBS on one (they share snapshots), S3 and SQS each on its own, as AWS serves each service apart; "
        } else {
            "every service on one; "
        },
        if w.reset {
            "emptied (moto reset) before every run: each run starts from the same empty state"
        } else {
            "shared, not reset (BENCH_RESET_EMULATOR unset): earlier instances slow it down, see its size per run"
        }
    );
    println!(
        "terminated workers: {}",
        if w.forget_terminated {
            "untagged once their job is seen done (BENCH_FORGET_TERMINATED=1), as AWS drops terminated instances from DescribeInstances after about an hour (moto never does, and its tag filter costs instances x tags); the untagging loads the emulator during the run"
        } else {
            "kept, as on AWS for an hour after termination (BENCH_FORGET_TERMINATED=1 untags them once their job is done)"
        }
    );
    println!();
}
