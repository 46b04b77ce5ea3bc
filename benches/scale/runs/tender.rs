//! Tender's run: the controller binary scoped to a fresh namespace, one
//! configuration, N jobs created at once, every worker booted in-process,
//! until every job is done with its worker terminated.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use kube::Api;
use kube::api::{ListParams, PostParams};
use tender::api::{BackupJob, Phase, WorkerConfiguration};
use tender::aws::AwsClients;
use tender::names::tags;

use crate::boot::{Booter, agent_slots, boot_workers};
use crate::metrics::{self, Prom};
use crate::system::{cpu_delta, cpu_seconds, env_cpu, proc_kib};
use crate::watch::{Track, Tracker, forget_finished, watch_jobs};
use crate::world::{RUN_LABEL, World, job_name};
use crate::{HEARTBEAT_SECONDS, IMAGE_ID, REGION, concurrency, emulator, run_timeout};

/// The controller binary a run starts, and how.
pub struct Controller {
    /// Its name in the report.
    pub label: String,
    pub bin: PathBuf,
    /// Appended to the run's namespace and cluster ID, so that several
    /// controllers can run at the same N in one invocation.
    pub slug: String,
    /// `maxConcurrentWorkers` of the run's configuration (none: no limit).
    pub max_concurrent_workers: Option<usize>,
}

impl Controller {
    /// The release build: TENDER_BIN, or target/release/tender.
    pub fn release() -> Self {
        let bin = std::env::var_os("TENDER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/tender")
            });
        if !bin.exists() {
            panic!(
                "{} does not exist: cargo build --release --bin tender",
                bin.display()
            );
        }
        Controller {
            label: "tender".into(),
            bin,
            slug: String::new(),
            max_concurrent_workers: None,
        }
    }
}

pub struct TenderResult {
    /// The controller's label.
    pub label: String,
    pub n: usize,
    pub completed: bool,
    pub wall: f64,
    pub done: usize,
    pub failed: usize,
    pub moto_before: (usize, usize),
    /// Creation (POST returned) → instance ID in status, ms (watch).
    pub launch_ms: Vec<f64>,
    /// Worker's final message sent → terminatedTime in status, ms (watch).
    pub terminate_ms: Vec<f64>,
    /// The same from the status timestamps (1 s resolution), ms.
    pub launch_status_ms: Vec<f64>,
    pub terminate_status_ms: Vec<f64>,
    /// Counter deltas over the run.
    pub delta: Prom,
    /// Metric names the controller serves (an older one lacks some).
    pub served: Prom,
    pub agent_calls: BTreeMap<String, f64>,
    pub object_writes: u64,
    pub event_writes: u64,
    pub cpu_run: f64,
    pub cpu_total: f64,
    pub hwm_kib: u64,
    /// Seconds to create every job.
    pub create_secs: f64,
    /// Latencies of a trivial emulator call during the run, ms.
    pub probe_ms: Vec<f64>,
    /// CPU seconds of each process during the run (controller excluded).
    pub env_cpu: BTreeMap<String, f64>,
    /// Resources whose tags `forget_finished` deleted during the run.
    pub forgotten: usize,
    /// Seconds from the first to the last instance ID seen in status.
    pub launch_window: f64,
    pub agents_started: u64,
    pub agent_slots: usize,
    pub agents_failed: u64,
    pub watch_restarts: u64,
    pub leftovers: usize,
}

impl TenderResult {
    /// `v` per job.
    pub fn per_job(&self, v: f64) -> f64 {
        v / self.n as f64
    }

    /// The controller's AWS calls of `operation` during the run.
    pub fn calls(&self, operation: &str) -> f64 {
        self.delta
            .get("tender_aws_calls_total", "operation", operation)
    }

    /// Reconciles of `kind` during the run.
    pub fn reconciles(&self, kind: &str) -> f64 {
        self.delta.get("tender_reconciles_total", "kind", kind)
    }

    /// Status writes to objects of `kind` during the run.
    pub fn status_writes(&self, kind: &str) -> f64 {
        self.delta.get("tender_status_writes_total", "kind", kind)
    }
}

/// A controller process and its metrics port.
struct Running {
    child: Child,
    pid: u32,
    port: u16,
    log_path: PathBuf,
    started: Instant,
}

impl Running {
    /// Starts `controller` scoped to `ns`, and waits until it serves /healthz.
    async fn start(w: &World, controller: &Controller, ns: &str, cluster_id: &str) -> Running {
        let port = free_port();
        let log_path = w.log_dir.join(format!("{ns}-controller.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let child: Child = Command::new(&controller.bin)
            .args(["controller", "--namespace", ns, "--cluster-id", cluster_id])
            .args(["--class-selector", &format!("{RUN_LABEL}={ns}")])
            .args(["--metrics-address", &format!("127.0.0.1:{port}")])
            .args(["--heartbeat-seconds", HEARTBEAT_SECONDS])
            .args(["--sweep-interval-seconds", "60"])
            // The emulator names one fixed SenderId for every message.
            .env("TENDER_REQUIRE_WORKER_SENDER", "false")
            .env(
                "RUST_LOG",
                std::env::var("BENCH_RUST_LOG").unwrap_or("info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the controller");
        let pid = child.id();
        let started = Instant::now();
        while !metrics::healthy(port).await {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the controller did not serve /healthz; see {}",
                log_path.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Running {
            child,
            pid,
            port,
            log_path,
            started,
        }
    }

    /// SIGTERM, then SIGKILL after 10 s.
    async fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let stopping = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if stopping.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Creates the run's configuration (named after its namespace `ns`, the
/// default of its region) and repository, and waits until the
/// configuration is Ready with its queue; returns the queue's URL.
async fn create_configuration(
    w: &World,
    ns: &str,
    controller: &Running,
    max_concurrent_workers: Option<usize>,
) -> String {
    w.create_repository(ns).await;
    let configs: Api<WorkerConfiguration> = Api::all(w.client.clone());
    let mut spec = serde_json::json!({
        "namespaceSelector": {"matchLabels": {RUN_LABEL: ns}},
        "region": REGION,
        "subnets": [{"subnetId": w.subnet, "availabilityZone": w.zone}],
        "securityGroupIds": [w.security_group],
        "imageId": IMAGE_ID,
        "instanceTypes": {"backup": "m5.large"},
    });
    if let Some(max) = max_concurrent_workers {
        spec["maxConcurrentWorkers"] = max.into();
    }
    let cfg: WorkerConfiguration = serde_json::from_value(serde_json::json!({
        "apiVersion": "tender.dev/v1alpha1", "kind": "WorkerConfiguration",
        "metadata": {
            "name": ns,
            "labels": {RUN_LABEL: ns},
            "annotations": {tender::api::DEFAULT_CONFIGURATION_ANNOTATION: "true"},
        },
        "spec": spec,
    }))
    .unwrap();
    configs
        .create(&PostParams::default(), &cfg)
        .await
        .expect("create the configuration");
    loop {
        let cfg = configs.get(ns).await.unwrap();
        let ready = cfg.status.as_ref().and_then(|s| {
            let ok = s
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            s.queue_url.clone().filter(|_| ok)
        });
        if let Some(url) = ready {
            return url;
        }
        assert!(
            controller.started.elapsed() < Duration::from_secs(120),
            "the configuration did not become Ready: {:?}",
            cfg.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The benchmark's side of a run: the job watch, the booter, and (with
/// BENCH_FORGET_TERMINATED=1) the untagging of finished workers.
struct Harness {
    tracker: Arc<Tracker>,
    watch: tokio::task::JoinHandle<()>,
    booter: Arc<Booter>,
    boot: tokio::task::JoinHandle<()>,
    agents: AwsClients,
    forget_stop: Arc<AtomicBool>,
    forgetter: Option<tokio::task::JoinHandle<usize>>,
}

impl Harness {
    async fn start(w: &World, ns: &str, n: usize, jobs: &Api<BackupJob>) -> Harness {
        let tracker = Arc::new(Tracker::default());
        let watch = tokio::spawn(watch_jobs(jobs.clone(), tracker.clone()));
        let booter = Arc::new(Booter::default());
        let agents = AwsClients::from_env().await;
        let (boot_tx, boot_rx) = futures::channel::mpsc::unbounded();
        *tracker.boot.lock().unwrap() = Some(boot_tx);
        let boot = tokio::spawn(boot_workers(
            booter.clone(),
            w.ec2.clone(),
            agents.clone(),
            ns.to_string(),
            agent_slots(n),
            boot_rx,
        ));
        let forget_stop = Arc::new(AtomicBool::new(false));
        let forgetter = w.forget_terminated.then(|| {
            tokio::spawn(forget_finished(
                w.ec2.clone(),
                tracker.clone(),
                forget_stop.clone(),
            ))
        });
        Harness {
            tracker,
            watch,
            booter,
            boot,
            agents,
            forget_stop,
            forgetter,
        }
    }

    /// Stops booting and untagging, lets running agents end (30 s at
    /// most), stops the watch; returns how many resources were untagged.
    async fn stop(&mut self) -> usize {
        // No more boots: the channel closes, the booter returns.
        self.tracker.boot.lock().unwrap().take();
        let _ = (&mut self.boot).await;
        self.forget_stop.store(true, Ordering::SeqCst);
        let forgotten = match self.forgetter.take() {
            Some(task) => task.await.unwrap_or(0),
            None => 0,
        };
        let settle = Instant::now();
        let b = &self.booter;
        while b.finished.load(Ordering::SeqCst) + b.failed.load(Ordering::SeqCst)
            < b.started.load(Ordering::SeqCst)
            && settle.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.watch.abort();
        forgotten
    }
}

/// Creates the N jobs, `concurrency()` at a time: (name, when its POST
/// returned, the same on the wall clock).
async fn create_jobs(
    w: &World,
    jobs: &Api<BackupJob>,
    n: usize,
) -> Vec<(String, Instant, SystemTime)> {
    let ns = jobs.namespace().expect("the jobs' namespace").to_string();
    futures::stream::iter(0..n)
        .map(|i| {
            let jobs = jobs.clone();
            let job = w.job(i, &ns);
            async move {
                jobs.create(&PostParams::default(), &job)
                    .await
                    .expect("create a job");
                (job_name(i), Instant::now(), SystemTime::now())
            }
        })
        .buffer_unordered(concurrency())
        .collect()
        .await
}

/// Waits until every job is done, the run times out or the controller
/// exits; whether every job is done.
async fn wait_done(h: &Harness, controller: &mut Running, n: usize, t0: Instant) -> bool {
    let timeout = run_timeout(n);
    let mut last_report = Instant::now();
    loop {
        let done = h.tracker.done.load(Ordering::SeqCst);
        if done >= n {
            return true;
        }
        if t0.elapsed() > timeout {
            eprintln!("  tender N={n}: timed out with {done}/{n} jobs done");
            return false;
        }
        if let Ok(Some(status)) = controller.child.try_wait() {
            eprintln!(
                "  tender N={n}: the controller exited ({status}); see {}",
                controller.log_path.display()
            );
            return false;
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "  tender N={n}: {:.0} s, {done}/{n} done, {} agents started",
                t0.elapsed().as_secs_f64(),
                h.booter.started.load(Ordering::SeqCst)
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Events the controller recorded on the jobs (a repeat is a patch).
async fn event_writes(w: &World, ns: &str) -> u64 {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(w.client.clone(), ns);
    events
        .list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .iter()
                .filter(|e| {
                    e.regarding
                        .as_ref()
                        .is_some_and(|r| r.kind.as_deref() == Some("BackupJob"))
                })
                .map(|e| e.series.as_ref().map_or(1, |s| s.count.max(1)) as u64)
                .sum()
        })
        .unwrap_or(0)
}

/// What the watch saw, per job, reduced to the run's figures.
#[derive(Default)]
struct Seen {
    launch_ms: Vec<f64>,
    terminate_ms: Vec<f64>,
    launch_status_ms: Vec<f64>,
    terminate_status_ms: Vec<f64>,
    launch_window: f64,
    done: usize,
    failed: usize,
    object_writes: u64,
    last_done: Option<Instant>,
}

fn epoch_ms(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1000.0
}

fn time_ms(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> f64 {
    t.0.as_millisecond() as f64
}

fn summarize(
    created: &[(String, Instant, SystemTime)],
    track: &HashMap<String, Track>,
    final_sent: &HashMap<String, Instant>,
) -> Seen {
    let mut s = Seen::default();
    let launched: Vec<Instant> = track.values().filter_map(|t| t.launched).collect();
    if let (Some(a), Some(b)) = (launched.iter().min(), launched.iter().max()) {
        s.launch_window = b.duration_since(*a).as_secs_f64();
    }
    for (name, at, wall) in created {
        let Some(t) = track.get(name) else { continue };
        s.object_writes += u64::from(t.writes);
        if let Some(l) = t.launched {
            s.launch_ms
                .push(l.saturating_duration_since(*at).as_secs_f64() * 1000.0);
        }
        if let (Some(d), Some(sent)) = (t.done, final_sent.get(name)) {
            s.terminate_ms
                .push(d.saturating_duration_since(*sent).as_secs_f64() * 1000.0);
        }
        if let Some(d) = t.done {
            s.done += 1;
            s.last_done = Some(s.last_done.map_or(d, |l| l.max(d)));
        }
        let Some(status) = &t.status else { continue };
        if status.phase != Phase::Succeeded {
            s.failed += 1;
        }
        if let Some(worker) = status.workers.first() {
            if let Some(l) = &worker.launch_time {
                s.launch_status_ms
                    .push((time_ms(l) - epoch_ms(*wall)).max(0.0));
            }
            if let (Some(f), Some(x)) = (&worker.finished_time, &worker.terminated_time) {
                s.terminate_status_ms
                    .push((time_ms(x) - time_ms(f)).max(0.0));
            }
        }
    }
    s
}

/// What a run measured while the jobs ran.
struct Measured {
    completed: bool,
    t0: Instant,
    end_seen: Instant,
    created: Vec<(String, Instant, SystemTime)>,
    create_secs: f64,
    before: Prom,
    after: Prom,
    cpu_before: f64,
    cpu_total: f64,
    hwm_kib: u64,
    env_cpu: BTreeMap<String, f64>,
    probe_ms: Vec<f64>,
}

/// The timed part: create the jobs and wait for them, with the
/// controller's counters and every process's CPU before and after.
async fn measure(
    w: &World,
    n: usize,
    controller: &mut Running,
    h: &Harness,
    jobs: &Api<BackupJob>,
) -> Measured {
    let before = metrics::scrape(controller.port).await;
    let cpu_before = cpu_seconds(controller.pid);
    let probe_stop = Arc::new(AtomicBool::new(false));
    let probe = emulator::probe(w.ec2.clone(), probe_stop.clone());
    let cpu_start = env_cpu();
    let t0 = Instant::now();
    let created = create_jobs(w, jobs, n).await;
    let create_secs = t0.elapsed().as_secs_f64();
    eprintln!("  tender N={n}: {n} jobs created in {create_secs:.1} s; waiting for them");
    let completed = wait_done(h, controller, n, t0).await;
    let end_seen = Instant::now();
    let env_cpu = cpu_delta(&cpu_start, &env_cpu());
    probe_stop.store(true, Ordering::SeqCst);
    let probe_ms = probe.await.unwrap_or_default();
    Measured {
        completed,
        t0,
        end_seen,
        created,
        create_secs,
        before,
        after: metrics::scrape(controller.port).await,
        cpu_before,
        cpu_total: cpu_seconds(controller.pid),
        hwm_kib: proc_kib(controller.pid, "VmHWM"),
        env_cpu,
        probe_ms,
    }
}

pub async fn tender_run(w: &World, n: usize, controller: &Controller) -> TenderResult {
    let ns = format!("bench-tender-{}-{n}{}", w.tag, slug(controller));
    let cluster_id = format!("bench-{}-{n}{}", w.tag, slug(controller));
    let moto_before = w.moto_size().await;
    w.create_namespace(&ns).await;
    let mut running = Running::start(w, controller, &ns, &cluster_id).await;
    let queue_url = create_configuration(w, &ns, &running, controller.max_concurrent_workers).await;
    let jobs: Api<BackupJob> = Api::namespaced(w.client.clone(), &ns);
    let mut harness = Harness::start(w, &ns, n, &jobs).await;
    // Let the watch list the (empty) namespace first.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let m = measure(w, n, &mut running, &harness, &jobs).await;
    let forgotten = harness.stop().await;
    let event_writes = event_writes(w, &ns).await;
    running.stop().await;

    let final_sent = harness.booter.final_sent.lock().unwrap().clone();
    let track = std::mem::take(&mut *harness.tracker.jobs.lock().unwrap());
    let seen = summarize(&m.created, &track, &final_sent);
    let wall = match (m.completed, seen.last_done) {
        (true, Some(last)) => last.max(m.t0).duration_since(m.t0),
        (true, None) => Duration::ZERO,
        (false, _) => m.end_seen.duration_since(m.t0),
    }
    .as_secs_f64();

    w.clear_namespace(&ns).await;
    let _ = w.sqs.delete_queue().queue_url(&queue_url).send().await;
    let leftovers = w.terminate_leftovers(&cluster_id).await;
    w.forget_tags(tags::CLUSTER_ID, &cluster_id).await;
    let b = &harness.booter;
    TenderResult {
        label: controller.label.clone(),
        n,
        completed: m.completed,
        wall,
        done: seen.done,
        failed: seen.failed,
        moto_before,
        launch_ms: seen.launch_ms,
        terminate_ms: seen.terminate_ms,
        launch_status_ms: seen.launch_status_ms,
        terminate_status_ms: seen.terminate_status_ms,
        delta: m.after.minus(&m.before),
        served: m.after,
        agent_calls: Prom::parse(&harness.agents.metrics().encode())
            .by("tender_aws_calls_total", "operation"),
        object_writes: seen.object_writes,
        event_writes,
        cpu_run: m.cpu_total - m.cpu_before,
        cpu_total: m.cpu_total,
        hwm_kib: m.hwm_kib,
        create_secs: m.create_secs,
        probe_ms: m.probe_ms,
        env_cpu: m.env_cpu,
        forgotten,
        launch_window: seen.launch_window,
        agents_started: b.started.load(Ordering::SeqCst),
        agent_slots: agent_slots(n),
        agents_failed: b.failed.load(Ordering::SeqCst),
        watch_restarts: harness.tracker.restarts.load(Ordering::SeqCst),
        leftovers,
    }
}

/// `-<slug>`, or nothing.
fn slug(controller: &Controller) -> String {
    if controller.slug.is_empty() {
        String::new()
    } else {
        format!("-{}", controller.slug)
    }
}
