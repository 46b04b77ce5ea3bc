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
//! ```
//!
//! `cargo bench --bench scale -- [N ...]` works too, in an environment from
//! `eval "$(scripts/testenv up)"`, after `cargo build --release --bin tender`
//! and `kubectl apply --server-side -f crds/`. `BENCH_CONCURRENCY` (default
//! 32) bounds job creation and the floor's pipelines; `BENCH_AGENTS` (default:
//! all) the agents running at once.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, InstanceAttributeName,
    InstanceMetadataOptionsRequest, InstanceNetworkInterfaceSpecification, InstanceType,
    ResourceType, Tag, TagSpecification, VolumeType,
};
use base64::Engine;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tender::api::{BackupJob, BackupJobStatus, Phase, WorkerConfiguration};
use tender::aws::AwsClients;
use tender::messages::WorkerTask;
use tender::names::tags;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

const REGION: &str = "us-east-1";
/// Protected instances the jobs share (a backup only reads its source).
const PROTECTED: usize = 8;
const IMAGE_ID: &str = "ami-0123456789abcdef0";
/// Tag on what this process creates.
const BENCH_TAG: &str = "tender-bench";
/// The controller's heartbeat period; longer than any job here.
const HEARTBEAT_SECONDS: &str = "30";
/// How old the controller's shared instance view may be (INSTANCE_VIEW_MAX_AGE).
const VIEW_MAX_AGE_SECONDS: f64 = 5.0;
/// AWS operations that are not EC2.
const NOT_EC2: &[&str] = &[
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
fn run_timeout(n: usize) -> Duration {
    Duration::from_secs(
        std::env::var("BENCH_TIMEOUT_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300 + n as u64),
    )
}

fn concurrency() -> usize {
    std::env::var("BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&c| c > 0)
        .unwrap_or(32)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // binary without it, and a benchmark is not a test: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
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
    rt.block_on(bench(sizes));
}

// ---------------------------------------------------------------- the world

/// What every run shares: clients; the network, the protected snapshots and the repository
/// of the current run.
struct World {
    client: Client,
    ec2: aws_sdk_ec2::Client,
    sqs: aws_sdk_sqs::Client,
    bin: PathBuf,
    log_dir: PathBuf,
    subnet: String,
    zone: String,
    security_group: String,
    protected: Vec<String>,
    /// The repository bucket of the current run.
    bucket: String,
    /// Distinguishes this process's namespaces and cluster IDs.
    tag: String,
    /// Empty the emulator before every run (BENCH_RESET_EMULATOR=1: only
    /// for an emulator nobody else uses, as `scripts/bench` sets up).
    reset: bool,
    /// Untag finished jobs' instances during the run (see `forget_finished`;
    /// only with BENCH_FORGET_TERMINATED=1).
    forget_terminated: bool,
}

fn require_env() {
    for var in ["KUBECONFIG", "AWS_ENDPOINT_URL"] {
        if std::env::var_os(var).is_none() {
            panic!(
                "{var} is not set: run scripts/bench, or `eval \"$(scripts/testenv env)\"` first"
            );
        }
    }
}

async fn world() -> World {
    require_env();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = std::env::var_os("TENDER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/release/tender"));
    if !bin.exists() {
        panic!(
            "{} does not exist: cargo build --release --bin tender",
            bin.display()
        );
    }
    let log_dir = root.join("target/bench-logs");
    std::fs::create_dir_all(&log_dir).unwrap();
    let client = Client::try_default().await.expect("kube client");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in ["backupjobs.tender.dev", "workerconfigurations.tender.dev"] {
        let crd = crds.get(name).await.unwrap_or_else(|e| {
            panic!("CRD {name} is missing ({e}): kubectl apply --server-side -f crds/")
        });
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        assert!(established, "CRD {name} is not established");
    }
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .load()
        .await;
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let sqs = aws_sdk_sqs::Client::new(&conf);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let tag = format!("{:x}", (nanos ^ u128::from(std::process::id())) % 0xff_ffff);

    World {
        client,
        ec2,
        sqs,
        bin,
        log_dir,
        subnet: String::new(),
        zone: String::new(),
        security_group: String::new(),
        protected: Vec::new(),
        bucket: String::new(),
        tag,
        reset: std::env::var("BENCH_RESET_EMULATOR").is_ok_and(|v| v == "1"),
        forget_terminated: std::env::var("BENCH_FORGET_TERMINATED").is_ok_and(|v| v == "1"),
    }
}

impl World {
    /// Before each run: empty the emulator (when allowed) or drop what the
    /// last run left, then a security group, the protected snapshots and a bucket.
    async fn prepare(&mut self) {
        if self.reset {
            reset_emulator().await;
        } else if !self.protected.is_empty() {
            self.cleanup().await;
        }
        let subnets = self
            .ec2
            .describe_subnets()
            .filters(
                Filter::builder()
                    .name("default-for-az")
                    .values("true")
                    .build(),
            )
            .send()
            .await
            .expect("describe subnets");
        let s = subnets.subnets().first().expect("a default subnet");
        self.subnet = s.subnet_id().unwrap().to_string();
        self.zone = s.availability_zone().unwrap().to_string();
        let suffix = format!(
            "{:x}",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_nanos()
        );
        self.security_group = self
            .ec2
            .create_security_group()
            .group_name(format!("tender-bench-{}-{suffix}", self.tag))
            .description("tender scale benchmark workers")
            .send()
            .await
            .expect("create security group")
            .group_id()
            .unwrap()
            .to_string();
        // The protected disks: EBS snapshots of one 512 KiB block each,
        // written through the EBS direct APIs (the emulator serves blocks only
        // of those), and a fresh repository bucket per run.
        let aws = AwsClients::from_env().await;
        self.protected.clear();
        for i in 0..PROTECTED {
            let token = format!("bench-{}-{suffix}-{i}", self.tag);
            let id = aws
                .start_snapshot(REGION, 1, "tender bench disk", &[], &token)
                .await
                .expect("start a protected snapshot");
            let block: Vec<u8> = (0..tender::aws::ebs::BLOCK_SIZE)
                .map(|b| ((b * 31 + i * 7) % 251) as u8)
                .collect();
            aws.put_snapshot_block(REGION, &id, 0, block)
                .await
                .expect("write its block");
            aws.complete_snapshot(REGION, &id, 1)
                .await
                .expect("complete it");
            self.protected.push(id);
        }
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .load()
            .await;
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&conf)
                .force_path_style(true)
                .build(),
        );
        self.bucket = format!("tender-bench-{}-{suffix}", self.tag).to_lowercase();
        s3.create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .expect("create the repository bucket");
    }

    async fn create_namespace(&self, name: &str) {
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
        }))
        .unwrap();
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
    }

    fn job(&self, i: usize) -> BackupJob {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "tender.dev/v1alpha1", "kind": "BackupJob",
            "metadata": {"name": job_name(i)},
            "spec": {
                "resources": [{
                    "snapshotId": self.protected[i % self.protected.len()],
                    "region": REGION,
                }],
                "repository": {"bucket": self.bucket},
            }
        }))
        .unwrap()
    }

    /// Instances (any state) and tags in the emulator, all owners: context
    /// for the emulator's speed, which degrades with both.
    async fn moto_size(&self) -> (usize, usize) {
        // DescribeInstanceStatus: no tags in the answer, cheap for the emulator.
        let mut pages = self
            .ec2
            .describe_instance_status()
            .include_all_instances(true)
            .max_results(1000)
            .into_paginator()
            .send();
        let mut instances = 0;
        while let Some(page) = pages.next().await {
            let Ok(page) = page else { break };
            instances += page.instance_statuses().len();
        }
        let mut tag_count = 0;
        let mut token: Option<String> = None;
        loop {
            let Ok(out) = self
                .ec2
                .describe_tags()
                .set_next_token(token.clone())
                .send()
                .await
            else {
                break;
            };
            tag_count += out.tags().len();
            token = out.next_token().map(String::from);
            if token.is_none() {
                break;
            }
        }
        (instances, tag_count)
    }

    /// Live instances carrying `cluster_id`.
    async fn live_instances(&self, cluster_id: &str) -> Vec<String> {
        let mut pages = self
            .ec2
            .describe_instances()
            .filters(
                Filter::builder()
                    .name("tag:tender.dev/cluster-id")
                    .values(cluster_id)
                    .build(),
            )
            .filters(
                Filter::builder()
                    .name("instance-state-name")
                    .values("pending")
                    .values("running")
                    .values("stopping")
                    .values("stopped")
                    .build(),
            )
            .max_results(1000)
            .into_paginator()
            .send();
        let mut ids = Vec::new();
        while let Some(page) = pages.next().await {
            let Ok(page) = page else { break };
            for i in page.reservations().iter().flat_map(|r| r.instances()) {
                ids.push(i.instance_id().unwrap_or_default().to_string());
            }
        }
        ids
    }

    /// Terminates whatever of `cluster_id` is still live; returns how many.
    async fn terminate_leftovers(&self, cluster_id: &str) -> usize {
        let ids = self.live_instances(cluster_id).await;
        for chunk in ids.chunks(500) {
            let _ = self
                .ec2
                .terminate_instances()
                .set_instance_ids(Some(chunk.to_vec()))
                .send()
                .await;
        }
        ids.len()
    }

    /// Deletes the tags of every resource tagged with `key` = `value`.
    async fn forget_tags(&self, key: &str, value: &str) -> usize {
        forget_tagged(&self.ec2, key, &[value.to_string()]).await
    }

    /// Removes the finalizers of a namespace's jobs and configurations (no
    /// controller runs any more), deletes them and the namespace.
    async fn clear_namespace(&self, ns: &str) {
        let strip = serde_json::json!({"metadata": {"finalizers": null}});
        let jobs: Api<BackupJob> = Api::namespaced(self.client.clone(), ns);
        if let Ok(list) = jobs.list_metadata(&ListParams::default()).await {
            let with: Vec<String> = list
                .items
                .iter()
                .filter(|j| !j.finalizers().is_empty())
                .map(|j| j.name_any())
                .collect();
            futures::stream::iter(with)
                .map(|name| {
                    let jobs = jobs.clone();
                    let strip = strip.clone();
                    async move {
                        let _ = jobs
                            .patch(&name, &PatchParams::default(), &Patch::Merge(&strip))
                            .await;
                    }
                })
                .buffer_unordered(concurrency())
                .collect::<Vec<_>>()
                .await;
        }
        let _ = jobs
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await;
        let configs: Api<WorkerConfiguration> = Api::namespaced(self.client.clone(), ns);
        if let Ok(list) = configs.list_metadata(&ListParams::default()).await {
            for c in list.items {
                let _ = configs
                    .patch(
                        &c.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&strip),
                    )
                    .await;
            }
        }
        let _ = configs
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await;
        // Stays Terminating here: no namespace controller runs.
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(ns, &DeleteParams::default())
            .await;
    }

    async fn cleanup(&self) {
        for id in &self.protected {
            let _ = self.ec2.delete_snapshot().snapshot_id(id).send().await;
        }
        self.forget_tags(BENCH_TAG, &self.tag).await;
        // Fails while the emulator still counts terminated workers in it.
        let _ = self
            .ec2
            .delete_security_group()
            .group_id(&self.security_group)
            .send()
            .await;
    }
}

/// Deletes the tags of every resource (instances, volumes) tagged with
/// `key` = one of `values`. The emulator keeps terminated instances and
/// their tags forever, and evaluates a tag filter, and renders each instance
/// it returns, by scanning all the tags it holds: without this, each run
/// slows the emulator down for every later run and every other user.
async fn forget_tagged(ec2: &aws_sdk_ec2::Client, key: &str, values: &[String]) -> usize {
    let mut resources: Vec<String> = Vec::new();
    for chunk in values.chunks(50) {
        let mut token: Option<String> = None;
        loop {
            let Ok(out) = ec2
                .describe_tags()
                .filters(Filter::builder().name("key").values(key).build())
                .filters(
                    Filter::builder()
                        .name("value")
                        .set_values(Some(chunk.to_vec()))
                        .build(),
                )
                .set_next_token(token.clone())
                .send()
                .await
            else {
                break;
            };
            resources.extend(
                out.tags()
                    .iter()
                    .filter_map(|t| t.resource_id().map(String::from)),
            );
            token = out.next_token().map(String::from);
            if token.is_none() {
                break;
            }
        }
    }
    resources.sort();
    resources.dedup();
    let Some(first) = resources.first() else {
        return 0;
    };
    let mut keys: Vec<String> = [
        tags::MANAGED_BY,
        tags::CLUSTER_ID,
        tags::NAMESPACE,
        tags::JOB_KIND,
        tags::JOB_NAME,
        tags::JOB_UID,
        tags::RESOURCE,
        tags::ATTEMPT,
        tags::LAUNCH_TOKEN,
        tags::OPERATION,
        tags::CONFIGURATION,
        tags::NAME,
        BENCH_TAG,
    ]
    .iter()
    .map(|k| k.to_string())
    .collect();
    if let Ok(out) = ec2
        .describe_tags()
        .filters(Filter::builder().name("resource-id").values(first).build())
        .send()
        .await
    {
        keys.extend(out.tags().iter().filter_map(|t| t.key().map(String::from)));
    }
    keys.sort();
    keys.dedup();
    let tag_list: Vec<Tag> = keys.iter().map(|k| Tag::builder().key(k).build()).collect();
    for chunk in resources.chunks(200) {
        let _ = ec2
            .delete_tags()
            .set_resources(Some(chunk.to_vec()))
            .set_tags(Some(tag_list.clone()))
            .send()
            .await;
    }
    resources.len()
}

/// Plays AWS dropping terminated instances from DescribeInstances (AWS does
/// after about an hour; moto never does): once a job is seen done, with its
/// worker terminated, its instance and volume lose their tags and so leave
/// the controller's tag-filtered view. Off by default: the controller no
/// longer refreshes its view often enough for the emulator's cost per
/// DescribeInstances, which grows with (instances x tags), to dominate, and
/// the untagging itself (DescribeTags and DeleteTags) loads the emulator
/// during the timed run, which the floor's run does not pay.
async fn forget_finished(
    ec2: aws_sdk_ec2::Client,
    tracker: Arc<Tracker>,
    stop: Arc<AtomicBool>,
) -> usize {
    let mut forgotten = 0;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let uids: Vec<String> = std::mem::take(&mut *tracker.finished_uids.lock().unwrap());
        if !uids.is_empty() {
            forgotten += forget_tagged(&ec2, tags::JOB_UID, &uids).await;
        }
        if stopping {
            return forgotten;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Empties the emulator (moto's reset API).
/// Every emulator process of the environment: the main one, and those of
/// services that run apart (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL_SQS).
fn emulator_endpoints() -> Vec<String> {
    let mut out = vec![std::env::var("AWS_ENDPOINT_URL").unwrap()];
    for service in ["S3", "SQS"] {
        if let Ok(url) = std::env::var(format!("AWS_ENDPOINT_URL_{service}"))
            && !out.contains(&url)
        {
            out.push(url);
        }
    }
    out
}

async fn reset_emulator() {
    for endpoint in emulator_endpoints() {
        reset_one(&endpoint).await;
    }
}

async fn reset_one(endpoint: &str) {
    let host = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut stream = tokio::net::TcpStream::connect(host.as_str())
        .await
        .expect("connect to the emulator");
    stream
        .write_all(
            format!("POST /moto-api/reset HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "moto reset: {answer}");
}

fn job_name(i: usize) -> String {
    format!("job-{i:05}")
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

// ------------------------------------------------------------ measurements

/// A Prometheus text exposition, by series (`name{labels}`).
#[derive(Clone, Default)]
struct Prom(Vec<(String, BTreeMap<String, String>, f64)>);

impl Prom {
    fn parse(text: &str) -> Self {
        let mut out = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let mut map = BTreeMap::new();
            for pair in labels.split("\",") {
                if let Some((k, v)) = pair.split_once("=\"") {
                    map.insert(k.trim().to_string(), v.trim_end_matches('"').to_string());
                }
            }
            out.push((name.to_string(), map, value));
        }
        Prom(out)
    }

    /// The sum of every series of `name`.
    fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Values of `name` by the value of `label`.
    fn by(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (n, labels, v) in &self.0 {
            if n == name
                && let Some(l) = labels.get(label)
            {
                *out.entry(l.clone()).or_insert(0.0) += v;
            }
        }
        out
    }

    /// `self - before`, series by series.
    fn minus(&self, before: &Prom) -> Prom {
        Prom(
            self.0
                .iter()
                .map(|(n, l, v)| {
                    let old = before
                        .0
                        .iter()
                        .find(|(bn, bl, _)| bn == n && bl == l)
                        .map(|(_, _, v)| *v)
                        .unwrap_or(0.0);
                    (n.clone(), l.clone(), v - old)
                })
                .collect(),
        )
    }

    /// The upper bound of the histogram bucket holding quantile `q`.
    fn quantile(&self, histogram: &str, q: f64) -> Option<f64> {
        let count = self.sum(&format!("{histogram}_count"));
        if count <= 0.0 {
            return None;
        }
        let mut buckets: Vec<(f64, f64)> = self
            .0
            .iter()
            .filter(|(n, _, _)| *n == format!("{histogram}_bucket"))
            .filter_map(|(_, l, v)| Some((l.get("le")?.parse::<f64>().ok()?, *v)))
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
            .into_iter()
            .find(|(_, cum)| *cum >= q * count)
            .map(|(le, _)| le)
    }
}

async fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await.ok()?;
    Some(body.split_once("\r\n\r\n")?.1.to_string())
}

async fn metrics(port: u16) -> Prom {
    Prom::parse(&http_get(port, "/metrics").await.unwrap_or_default())
}

/// CPU seconds (user + system) of a process.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of stat; the list starts at field 3.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds used so far by each process of the environment (by the pid
/// files `scripts/testenv` keeps: moto, etcd, kube-apiserver) and by this
/// one (the in-process agents, the floor, the watch).
fn env_cpu() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    if let Some(dir) = std::env::var_os("TENDER_TESTENV")
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "pid")
                && let (Some(name), Ok(pid)) = (
                    path.file_stem().and_then(|n| n.to_str()),
                    std::fs::read_to_string(&path),
                )
                && let Ok(pid) = pid.trim().parse::<u32>()
            {
                out.insert(name.to_string(), cpu_seconds(pid));
            }
        }
    }
    out.insert("bench".into(), cpu_seconds(std::process::id()));
    out
}

fn cpu_delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .collect()
}

/// "moto 3.1, etcd 0.4, …; total 9.3 of 12.6" (CPU seconds the run used,
/// and what the machine had in its wall time).
fn fmt_cpu(cpu: &BTreeMap<String, f64>, wall: f64) -> String {
    let total: f64 = cpu.values().sum();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let parts: Vec<String> = cpu.iter().map(|(k, v)| format!("{k} {v:.1}")).collect();
    format!(
        "{}; total {total:.1} of {:.1}",
        parts.join(", "),
        wall * cores
    )
}

/// A line of /proc/PID/status in KiB (VmHWM, VmRSS).
fn proc_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

// ------------------------------------------------------------ the job watch

/// What the watch saw of one job.
#[derive(Default)]
struct Track {
    /// Writes to the object (creation included), one watch event each.
    writes: u32,
    /// When a worker's instance ID first showed in status (RunInstances
    /// returned and the controller wrote it).
    launched: Option<Instant>,
    /// When the job was first seen finished with its workers terminated.
    done: Option<Instant>,
    status: Option<BackupJobStatus>,
}

#[derive(Default)]
struct Tracker {
    jobs: Mutex<HashMap<String, Track>>,
    done: AtomicUsize,
    restarts: AtomicU64,
    errors: AtomicU64,
    /// UIDs of jobs seen done, not yet handed to `forget_finished`.
    finished_uids: Mutex<Vec<String>>,
    /// Worker instances seen in status, each handed to the booter once.
    instances_seen: Mutex<HashSet<String>>,
    boot: Mutex<Option<futures::channel::mpsc::UnboundedSender<String>>>,
}

impl Tracker {
    fn observe(&self, job: &BackupJob, counted: bool) {
        let now = Instant::now();
        let mut jobs = self.jobs.lock().unwrap();
        let t = jobs.entry(job.name_any()).or_default();
        if counted {
            t.writes += 1;
        }
        let Some(status) = job.status.as_ref() else {
            return;
        };
        if t.launched.is_none() && status.workers.iter().any(|w| w.instance_id.is_some()) {
            t.launched = Some(now);
        }
        // A new worker instance (a first attempt or a retry) boots.
        let mut seen = self.instances_seen.lock().unwrap();
        for id in status.workers.iter().filter_map(|w| w.instance_id.as_ref()) {
            if seen.insert(id.clone())
                && let Some(boot) = self.boot.lock().unwrap().as_ref()
            {
                let _ = boot.unbounded_send(id.clone());
            }
        }
        drop(seen);
        let terminated = status
            .workers
            .iter()
            .all(|w| w.instance_id.is_none() || w.terminated_time.is_some());
        if t.done.is_none() && status.phase.is_finished() && terminated {
            t.done = Some(now);
            self.done.fetch_add(1, Ordering::SeqCst);
            if let Some(uid) = job.uid() {
                self.finished_uids.lock().unwrap().push(uid);
            }
        }
        t.status = Some(status.clone());
    }
}

async fn watch_jobs(api: Api<BackupJob>, tracker: Arc<Tracker>) {
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut initial = true;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(job)) => tracker.observe(&job, true),
            Ok(watcher::Event::InitApply(job)) => tracker.observe(&job, false),
            Ok(watcher::Event::Init) => {
                if !initial {
                    tracker.restarts.fetch_add(1, Ordering::SeqCst);
                }
                initial = false;
            }
            Ok(_) => {}
            Err(_) => {
                tracker.errors.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

// ------------------------------------------------------------- the booter

/// Plays EC2's part of booting workers: every worker instance the
/// controller writes into a job's status boots the real worker agent,
/// in-process, fed its own user data (DescribeInstanceAttribute: what EC2
/// hands the instance at boot). The instance IDs come from the job watch,
/// not from polling the emulator: on AWS, booting costs the API nothing,
/// and a harness that listed every instance a few times a second would
/// cost the emulator more than the controller's own calls.
struct Booter {
    started: AtomicU64,
    finished: AtomicU64,
    failed: AtomicU64,
    /// When each job's worker sent its final message (by job name).
    final_sent: Mutex<HashMap<String, Instant>>,
}

/// Agents running at once (BENCH_AGENTS, default: every worker; the machine
/// plays all of them).
fn agent_slots(n: usize) -> usize {
    std::env::var("BENCH_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&c| c > 0)
        .unwrap_or(n.max(1))
}

async fn boot_workers(
    booter: Arc<Booter>,
    ec2: aws_sdk_ec2::Client,
    agents: AwsClients,
    namespace: String,
    slots: usize,
    mut instances: futures::channel::mpsc::UnboundedReceiver<String>,
) {
    let slots = Arc::new(Semaphore::new(slots));
    while let Some(id) = instances.next().await {
        let (booter, ec2, agents, slots, namespace) = (
            booter.clone(),
            ec2.clone(),
            agents.clone(),
            slots.clone(),
            namespace.clone(),
        );
        tokio::spawn(async move {
            let _slot = slots.acquire_owned().await.unwrap();
            // EC2 always hands an instance its user data: an emulator
            // overloaded enough to fail the call is asked again.
            let mut attr = None;
            for _ in 0..30 {
                match ec2
                    .describe_instance_attribute()
                    .instance_id(&id)
                    .attribute(InstanceAttributeName::UserData)
                    .send()
                    .await
                {
                    Ok(a) => {
                        attr = Some(a);
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            }
            let task = attr.and_then(|a| {
                let data = a.user_data()?.value()?;
                let script = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .ok()?;
                WorkerTask::from_user_data(&String::from_utf8(script).ok()?)
            });
            let Some(task) = task.filter(|t| t.namespace == namespace) else {
                booter.failed.fetch_add(1, Ordering::SeqCst);
                return;
            };
            booter.started.fetch_add(1, Ordering::SeqCst);
            let job = task.job_name.clone();
            let outcome = tender::worker::run(agents, task, id).await;
            booter
                .final_sent
                .lock()
                .unwrap()
                .insert(job, Instant::now());
            if outcome.is_ok() {
                booter.finished.fetch_add(1, Ordering::SeqCst);
            } else {
                booter.failed.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
}

/// Times a trivial emulator call twice a second until stopped: how long any
/// call waits in the (single-process) emulator's queue.
fn probe_emulator(
    ec2: aws_sdk_ec2::Client,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<f64>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let t = Instant::now();
            if ec2.describe_regions().send().await.is_ok() {
                samples.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        samples
    })
}

// ------------------------------------------------------------- Tender's run

struct TenderResult {
    n: usize,
    completed: bool,
    wall: f64,
    done: usize,
    failed: usize,
    moto_before: (usize, usize),
    /// Creation (POST returned) → instance ID in status, ms (watch).
    launch_ms: Vec<f64>,
    /// Worker's final message sent → terminatedTime in status, ms (watch).
    terminate_ms: Vec<f64>,
    /// The same from the status timestamps (1 s resolution), ms.
    launch_status_ms: Vec<f64>,
    terminate_status_ms: Vec<f64>,
    /// Counter deltas over the run.
    delta: Prom,
    agent_calls: BTreeMap<String, f64>,
    object_writes: u64,
    event_writes: u64,
    cpu_run: f64,
    cpu_total: f64,
    hwm_kib: u64,
    /// Seconds to create every job.
    create_secs: f64,
    /// Latencies of a trivial emulator call during the run, ms.
    probe_ms: Vec<f64>,
    /// CPU seconds of each process during the run (controller excluded).
    env_cpu: BTreeMap<String, f64>,
    /// Resources whose tags `forget_finished` deleted during the run.
    forgotten: usize,
    /// Seconds from the first to the last instance ID seen in status.
    launch_window: f64,
    agents_started: u64,
    agent_slots: usize,
    agents_failed: u64,
    watch_restarts: u64,
    leftovers: usize,
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

async fn tender_run(w: &World, n: usize) -> TenderResult {
    let ns = format!("bench-tender-{}-{n}", w.tag);
    let cluster_id = format!("bench-{}-{n}", w.tag);
    let moto_before = w.moto_size().await;
    w.create_namespace(&ns).await;
    let port = free_port();
    let log_path = w.log_dir.join(format!("{ns}-controller.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child: Child = Command::new(&w.bin)
        .args([
            "controller",
            "--namespace",
            &ns,
            "--cluster-id",
            &cluster_id,
        ])
        .args(["--metrics-address", &format!("127.0.0.1:{port}")])
        .args(["--heartbeat-seconds", HEARTBEAT_SECONDS])
        .args(["--sweep-interval-seconds", "60"])
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
    while http_get(port, "/healthz").await.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the controller did not serve /healthz; see {}",
            log_path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The configuration, ready with its queue.
    let configs: Api<WorkerConfiguration> = Api::namespaced(w.client.clone(), &ns);
    let cfg: WorkerConfiguration = serde_json::from_value(serde_json::json!({
        "apiVersion": "tender.dev/v1alpha1", "kind": "WorkerConfiguration",
        "metadata": {"name": "bench"},
        "spec": {
            "region": REGION,
            "subnets": [{"subnetId": w.subnet, "availabilityZone": w.zone}],
            "securityGroupIds": [w.security_group],
            "imageId": IMAGE_ID,
            "instanceTypes": {"backup": "m5.large"},
        }
    }))
    .unwrap();
    configs
        .create(&PostParams::default(), &cfg)
        .await
        .expect("create the configuration");
    let queue_url = loop {
        let cfg = configs.get("bench").await.unwrap();
        let ready = cfg.status.as_ref().and_then(|s| {
            let ok = s
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            s.queue_url.clone().filter(|_| ok)
        });
        if let Some(url) = ready {
            break url;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the configuration did not become Ready: {:?}",
            cfg.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let jobs: Api<BackupJob> = Api::namespaced(w.client.clone(), &ns);
    let tracker = Arc::new(Tracker::default());
    let watch = tokio::spawn(watch_jobs(jobs.clone(), tracker.clone()));
    let booter = Arc::new(Booter {
        started: AtomicU64::new(0),
        finished: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        final_sent: Mutex::default(),
    });
    let agents = AwsClients::from_env().await;
    let (boot_tx, boot_rx) = futures::channel::mpsc::unbounded();
    *tracker.boot.lock().unwrap() = Some(boot_tx);
    let boot = tokio::spawn(boot_workers(
        booter.clone(),
        w.ec2.clone(),
        agents.clone(),
        ns.clone(),
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
    // Let the watch list the (empty) namespace first.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let before = metrics(port).await;
    let cpu_before = cpu_seconds(pid);
    let probe_stop = Arc::new(AtomicBool::new(false));
    let probe = probe_emulator(w.ec2.clone(), probe_stop.clone());
    let cpu_start = env_cpu();
    let t0 = Instant::now();
    let created: Vec<(String, Instant, SystemTime)> = futures::stream::iter(0..n)
        .map(|i| {
            let jobs = jobs.clone();
            let job = w.job(i);
            async move {
                jobs.create(&PostParams::default(), &job)
                    .await
                    .expect("create a job");
                (job_name(i), Instant::now(), SystemTime::now())
            }
        })
        .buffer_unordered(concurrency())
        .collect()
        .await;
    let created_all = t0.elapsed().as_secs_f64();
    eprintln!("  tender N={n}: {n} jobs created in {created_all:.1} s; waiting for them");

    let timeout = run_timeout(n);
    let mut last_report = Instant::now();
    let completed = loop {
        let done = tracker.done.load(Ordering::SeqCst);
        if done >= n {
            break true;
        }
        if t0.elapsed() > timeout {
            eprintln!("  tender N={n}: timed out with {done}/{n} jobs done");
            break false;
        }
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!(
                "  tender N={n}: the controller exited ({status}); see {}",
                log_path.display()
            );
            break false;
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "  tender N={n}: {:.0} s, {done}/{n} done, {} agents started",
                t0.elapsed().as_secs_f64(),
                booter.started.load(Ordering::SeqCst)
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let end_seen = Instant::now();
    let cpu_used = cpu_delta(&cpu_start, &env_cpu());
    probe_stop.store(true, Ordering::SeqCst);
    let probe_ms = probe.await.unwrap_or_default();
    let after = metrics(port).await;
    let cpu_total = cpu_seconds(pid);
    let hwm_kib = proc_kib(pid, "VmHWM");

    // No more boots: the channel closes, the booter returns.
    tracker.boot.lock().unwrap().take();
    let _ = boot.await;
    forget_stop.store(true, Ordering::SeqCst);
    let forgotten = match forgetter {
        Some(task) => task.await.unwrap_or(0),
        None => 0,
    };
    let settle = Instant::now();
    while booter.finished.load(Ordering::SeqCst) + booter.failed.load(Ordering::SeqCst)
        < booter.started.load(Ordering::SeqCst)
        && settle.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    watch.abort();

    // Events the controller recorded on the jobs (a repeat is a patch).
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(w.client.clone(), &ns);
    let event_writes: u64 = events
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
        .unwrap_or(0);

    // Stop the controller: SIGTERM, then SIGKILL.
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let stopping = Instant::now();
    while child.try_wait().ok().flatten().is_none() {
        if stopping.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let final_sent = booter.final_sent.lock().unwrap().clone();
    let track = std::mem::take(&mut *tracker.jobs.lock().unwrap());
    let (mut launch_ms, mut terminate_ms) = (Vec::new(), Vec::new());
    let (mut launch_status_ms, mut terminate_status_ms) = (Vec::new(), Vec::new());
    let mut last_done = t0;
    let launched: Vec<Instant> = track.values().filter_map(|t| t.launched).collect();
    let launch_window = match (launched.iter().min(), launched.iter().max()) {
        (Some(a), Some(b)) => b.duration_since(*a).as_secs_f64(),
        _ => 0.0,
    };
    let (mut done, mut failed, mut object_writes) = (0, 0, 0u64);
    for (name, at, wall) in &created {
        let Some(t) = track.get(name) else { continue };
        object_writes += u64::from(t.writes);
        if let Some(l) = t.launched {
            launch_ms.push(l.saturating_duration_since(*at).as_secs_f64() * 1000.0);
        }
        if let (Some(d), Some(sent)) = (t.done, final_sent.get(name)) {
            terminate_ms.push(d.saturating_duration_since(*sent).as_secs_f64() * 1000.0);
        }
        if let Some(d) = t.done {
            done += 1;
            last_done = last_done.max(d);
        }
        let Some(status) = &t.status else { continue };
        if status.phase != Phase::Succeeded {
            failed += 1;
        }
        if let Some(worker) = status.workers.first() {
            if let Some(l) = &worker.launch_time {
                launch_status_ms.push((time_ms(l) - epoch_ms(*wall)).max(0.0));
            }
            if let (Some(f), Some(x)) = (&worker.finished_time, &worker.terminated_time) {
                terminate_status_ms.push((time_ms(x) - time_ms(f)).max(0.0));
            }
        }
    }
    let wall = if completed {
        last_done.duration_since(t0).as_secs_f64()
    } else {
        end_seen.duration_since(t0).as_secs_f64()
    };

    w.clear_namespace(&ns).await;
    let _ = w.sqs.delete_queue().queue_url(&queue_url).send().await;
    let leftovers = w.terminate_leftovers(&cluster_id).await;
    w.forget_tags(tags::CLUSTER_ID, &cluster_id).await;
    TenderResult {
        n,
        completed,
        wall,
        done,
        failed,
        moto_before,
        launch_ms,
        terminate_ms,
        launch_status_ms,
        terminate_status_ms,
        delta: after.minus(&before),
        agent_calls: Prom::parse(&agents.metrics().encode())
            .by("tender_aws_calls_total", "operation"),
        object_writes,
        event_writes,
        cpu_run: cpu_total - cpu_before,
        cpu_total,
        hwm_kib,
        create_secs: created_all,
        probe_ms,
        env_cpu: cpu_used,
        forgotten,
        launch_window,
        agents_started: booter.started.load(Ordering::SeqCst),
        agent_slots: agent_slots(n),
        agents_failed: booter.failed.load(Ordering::SeqCst),
        watch_restarts: tracker.restarts.load(Ordering::SeqCst),
        leftovers,
    }
}

// ---------------------------------------------------------------- the floor

struct FloorResult {
    wall: f64,
    probe_ms: Vec<f64>,
    env_cpu: BTreeMap<String, f64>,
    writes_per_job: usize,
    errors: usize,
    leftovers: usize,
}

/// The floor: for every job, create it, RunInstances (tagged like a
/// worker), `writes` server-side-apply status writes, TerminateInstances.
/// Creation runs ahead at the bench's concurrency, as in Tender's run; the
/// per-job work runs at the same concurrency.
async fn floor_run(w: &World, n: usize, writes: usize) -> FloorResult {
    let ns = format!("bench-floor-{}-{n}", w.tag);
    let cluster_id = format!("bench-floor-{}-{n}", w.tag);
    w.create_namespace(&ns).await;
    let jobs: Api<BackupJob> = Api::namespaced(w.client.clone(), &ns);
    let (tx, rx) = futures::channel::mpsc::unbounded::<(String, String)>();
    let user_data = base64::engine::general_purpose::STANDARD.encode("#!/bin/sh\n".repeat(80));
    let probe_stop = Arc::new(AtomicBool::new(false));
    let probe = probe_emulator(w.ec2.clone(), probe_stop.clone());
    let cpu_start = env_cpu();
    let t0 = Instant::now();
    let creator = {
        let jobs = jobs.clone();
        let items: Vec<BackupJob> = (0..n).map(|i| w.job(i)).collect();
        async move {
            futures::stream::iter(items)
                .map(|job| {
                    let jobs = jobs.clone();
                    let tx = tx.clone();
                    async move {
                        let made = jobs.create(&PostParams::default(), &job).await.unwrap();
                        let _ = tx.unbounded_send((made.name_any(), made.uid().unwrap()));
                    }
                })
                .buffer_unordered(concurrency())
                .collect::<Vec<_>>()
                .await;
            drop(tx);
        }
    };
    let worker = rx
        .map(|(name, uid)| {
            let jobs = jobs.clone();
            let ec2 = w.ec2.clone();
            let (cluster_id, ns, user_data) = (cluster_id.clone(), ns.clone(), user_data.clone());
            let (subnet, sg) = (w.subnet.clone(), w.security_group.clone());
            async move {
                let token = format!("{uid}-1");
                let owner_tags: Vec<Tag> = [
                    (tags::MANAGED_BY, "tender-bench-floor"),
                    (tags::CLUSTER_ID, cluster_id.as_str()),
                    (tags::NAMESPACE, ns.as_str()),
                    (tags::JOB_KIND, "BackupJob"),
                    (tags::JOB_NAME, name.as_str()),
                    (tags::JOB_UID, uid.as_str()),
                    (tags::ATTEMPT, "1"),
                    (tags::LAUNCH_TOKEN, token.as_str()),
                    (tags::NAME, name.as_str()),
                ]
                .iter()
                .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
                .collect();
                let spec = |rt: ResourceType| {
                    TagSpecification::builder()
                        .resource_type(rt)
                        .set_tags(Some(owner_tags.clone()))
                        .build()
                };
                let out = ec2
                    .run_instances()
                    .image_id(IMAGE_ID)
                    .instance_type(InstanceType::M5Large)
                    .min_count(1)
                    .max_count(1)
                    .network_interfaces(
                        InstanceNetworkInterfaceSpecification::builder()
                            .device_index(0)
                            .subnet_id(&subnet)
                            .groups(&sg)
                            .associate_public_ip_address(false)
                            .delete_on_termination(true)
                            .build(),
                    )
                    .block_device_mappings(
                        BlockDeviceMapping::builder()
                            .device_name("/dev/xvda")
                            .ebs(
                                EbsBlockDevice::builder()
                                    .encrypted(true)
                                    .volume_size(20)
                                    .volume_type(VolumeType::Gp3)
                                    .delete_on_termination(true)
                                    .build(),
                            )
                            .build(),
                    )
                    .client_token(&token)
                    .tag_specifications(spec(ResourceType::Instance))
                    .tag_specifications(spec(ResourceType::Volume))
                    .metadata_options(
                        InstanceMetadataOptionsRequest::builder()
                            .http_tokens(HttpTokensState::Required)
                            .build(),
                    )
                    .user_data(user_data)
                    .send()
                    .await
                    .map_err(|e| format!("RunInstances: {e:?}"))?;
                let id = out.instances()[0].instance_id().unwrap().to_string();
                for step in 1..=writes {
                    let phase = if step == writes {
                        "Succeeded"
                    } else if step == 1 {
                        "Provisioning"
                    } else {
                        "Running"
                    };
                    let patch = serde_json::json!({
                        "apiVersion": "tender.dev/v1alpha1", "kind": "BackupJob",
                        "status": {"phase": phase, "workers": [{
                            "resource": "i-floor", "region": REGION, "attempt": 1,
                            "launchToken": token, "instanceId": id, "phase": phase,
                            "lastSequence": step,
                        }]}
                    });
                    jobs.patch_status(
                        &name,
                        &PatchParams::apply("tender-bench-floor").force(),
                        &Patch::Apply(&patch),
                    )
                    .await
                    .map_err(|e| format!("status write: {e}"))?;
                }
                ec2.terminate_instances()
                    .instance_ids(&id)
                    .send()
                    .await
                    .map_err(|e| format!("TerminateInstances: {e:?}"))?;
                Ok::<(), String>(())
            }
        })
        .buffer_unordered(concurrency())
        .collect::<Vec<_>>();
    let ((), results) = futures::join!(creator, worker);
    let wall = t0.elapsed().as_secs_f64();
    let cpu_used = cpu_delta(&cpu_start, &env_cpu());
    probe_stop.store(true, Ordering::SeqCst);
    let probe_ms = probe.await.unwrap_or_default();
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    if let Some(e) = errors.first() {
        eprintln!("  floor N={n}: {} errors, first: {e}", errors.len());
    }
    let leftovers = w.terminate_leftovers(&cluster_id).await;
    w.forget_tags(tags::CLUSTER_ID, &cluster_id).await;
    w.clear_namespace(&ns).await;
    FloorResult {
        wall,
        probe_ms,
        env_cpu: cpu_used,
        writes_per_job: writes,
        errors: errors.len(),
        leftovers,
    }
}

// ------------------------------------------------------- the agents alone

struct AgentsResult {
    wall: f64,
    /// Backups that ended (well or not) before the timeout.
    ended: usize,
    failed: usize,
    env_cpu: BTreeMap<String, f64>,
}

/// The agents' share of the work, measured alone: the same N backups by
/// the same agent code (`tender::worker::run`, the same snapshots, a fresh
/// repository, all at once), each fed the task the controller would have
/// given it, reporting to a queue that a minimal consumer drains (receive
/// ten, delete them: the emulator's SendMessage slows down with every
/// message left in the queue). No controller, no API server, no instances.
/// On this machine every process shares two cores, so Tender's run pays
/// for this work on top of the floor's.
async fn agents_run(w: &World, n: usize) -> AgentsResult {
    let queue_url = w
        .sqs
        .create_queue()
        .queue_name(format!("tender-bench-agents-{}-{n}", w.tag))
        .send()
        .await
        .expect("create the agents' queue")
        .queue_url()
        .unwrap()
        .to_string();
    let agents = AwsClients::from_env().await;
    let tasks: Vec<WorkerTask> = (0..n)
        .map(|i| WorkerTask {
            version: tender::messages::PROTOCOL_VERSION,
            operation: tender::messages::Operation::Backup,
            namespace: format!("bench-agents-{}-{n}", w.tag),
            job_name: job_name(i),
            job_uid: format!("agents-{}-{n}-{i}", w.tag),
            resource: w.protected[i % w.protected.len()].clone(),
            resource_region: REGION.into(),
            attempt: 1,
            queue_url: queue_url.clone(),
            queue_region: REGION.into(),
            heartbeat_seconds: HEARTBEAT_SECONDS.parse().unwrap(),
            source_access: None,
            repository: Some(tender::mover::manifest::RepositoryLocation::new(
                &w.bucket, "", REGION,
            )),
            restore_point: None,
            device: None,
            all_volumes: false,
            file_level: None,
        })
        .collect();
    let drain_stop = Arc::new(AtomicBool::new(false));
    let drain = {
        let (sqs, stop, url) = (w.sqs.clone(), drain_stop.clone(), queue_url.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let Ok(out) = sqs
                    .receive_message()
                    .queue_url(&url)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .send()
                    .await
                else {
                    continue;
                };
                let entries: Vec<aws_sdk_sqs::types::DeleteMessageBatchRequestEntry> = out
                    .messages()
                    .iter()
                    .enumerate()
                    .filter_map(|(i, m)| {
                        aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .receipt_handle(m.receipt_handle()?)
                            .build()
                            .ok()
                    })
                    .collect();
                if !entries.is_empty() {
                    let _ = sqs
                        .delete_message_batch()
                        .queue_url(&url)
                        .set_entries(Some(entries))
                        .send()
                        .await;
                }
            }
        })
    };
    let cpu_start = env_cpu();
    let t0 = Instant::now();
    let outcomes: Arc<Mutex<Vec<bool>>> = Arc::default();
    let all = futures::stream::iter(tasks.into_iter().enumerate())
        .map(|(i, task)| {
            let (agents, outcomes) = (agents.clone(), outcomes.clone());
            async move {
                let ok = tender::worker::run(agents, task, format!("i-{i:017x}"))
                    .await
                    .is_ok();
                outcomes.lock().unwrap().push(ok);
            }
        })
        .buffer_unordered(agent_slots(n))
        .collect::<Vec<()>>();
    if tokio::time::timeout(run_timeout(n), all).await.is_err() {
        eprintln!("  agents alone N={n}: timed out");
    }
    let wall = t0.elapsed().as_secs_f64();
    let outcomes = outcomes.lock().unwrap().clone();
    let env_cpu = cpu_delta(&cpu_start, &env_cpu());
    drain_stop.store(true, Ordering::SeqCst);
    let _ = drain.await;
    let _ = w.sqs.delete_queue().queue_url(&queue_url).send().await;
    AgentsResult {
        wall,
        ended: outcomes.len(),
        failed: outcomes.iter().filter(|ok| !**ok).count(),
        env_cpu,
    }
}

// ------------------------------------------------------------------ report

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "{cpus} CPUs ({model}), {:.1} GiB memory; controller, kube-apiserver, etcd, moto and this bench share them",
        mem_kib as f64 / 1024.0 / 1024.0
    )
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}"))
}

fn fmt_pair(values: &[f64]) -> String {
    format!(
        "{} / {}",
        fmt_ms(percentile(values, 0.50)),
        fmt_ms(percentile(values, 0.99))
    )
}

fn fmt_secs(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| {
        if v.is_infinite() {
            "> 1638".into()
        } else {
            format!("{:.0}", v * 1000.0)
        }
    })
}

/// `a 1, b 2` of the non-zero values, or `0`.
fn list(values: &BTreeMap<String, f64>) -> String {
    let items: Vec<String> = values
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(k, v)| format!("{k} {v:.0}"))
        .collect();
    if items.is_empty() {
        "0".into()
    } else {
        items.join(", ")
    }
}

type Run = (TenderResult, Option<FloorResult>, Option<AgentsResult>);

fn print_table(results: &[Run]) {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    type Cell<'a> =
        &'a dyn Fn(&TenderResult, Option<&FloorResult>, Option<&AgentsResult>) -> String;
    let mut row = |label: &str, f: Cell| {
        rows.push((
            label.to_string(),
            results
                .iter()
                .map(|(t, fl, a)| f(t, fl.as_ref(), a.as_ref()))
                .collect(),
        ));
    };
    let per = |t: &TenderResult, v: f64| v / t.n as f64;
    row("jobs done / created", &|t, _, _| {
        let mark = if t.completed { "" } else { " (TIMEOUT)" };
        format!("{} / {}{mark}", t.done, t.n)
    });
    row("jobs not Succeeded (unfinished included)", &|t, _, _| {
        t.failed.to_string()
    });
    row(
        "emulator instances / tags at start (all owners)",
        &|t, _, _| format!("{} / {}", t.moto_before.0, t.moto_before.1),
    );
    row("**Tender wall (s)**", &|t, _, _| format!("{:.1}", t.wall));
    row("**jobs/s end to end**", &|t, _, _| {
        format!("{:.1}", t.done as f64 / t.wall)
    });
    row("**floor wall (s)**", &|_, f, _| {
        f.map_or("-".into(), |f| format!("{:.1}", f.wall))
    });
    row("floor jobs/s", &|t, f, _| {
        f.map_or("-".into(), |f| format!("{:.1}", t.n as f64 / f.wall))
    });
    row("**ratio Tender / floor** (target ≤ 1.25)", &|t, f, _| {
        f.map_or("-".into(), |f| format!("{:.2}", t.wall / f.wall))
    });
    row(
        "agents alone: the same backups, no controller (s)",
        &|t, _, a| {
            a.map_or("-".into(), |a| {
                let failed = if a.failed > 0 {
                    format!(" ({} failed)", a.failed)
                } else {
                    String::new()
                };
                let ended = if a.ended < t.n {
                    format!(" (TIMEOUT: {} of {} ended)", a.ended, t.n)
                } else {
                    String::new()
                };
                format!("{:.1}{failed}{ended}", a.wall)
            })
        },
    );
    row(
        "ratio Tender / (floor + agents alone): what orchestration adds",
        &|t, f, a| match (f, a) {
            (Some(f), Some(a)) => format!("{:.2}", t.wall / (f.wall + a.wall)),
            _ => "-".into(),
        },
    );
    row("all jobs created in (s)", &|t, _, _| {
        format!("{:.1}", t.create_secs)
    });
    row(
        "CPU seconds by process, Tender run (controller below)",
        &|t, _, _| fmt_cpu(&t.env_cpu, t.wall),
    );
    row("CPU seconds by process, floor run", &|_, f, _| {
        f.map_or("-".into(), |f| fmt_cpu(&f.env_cpu, f.wall))
    });
    row("CPU seconds by process, agents alone", &|_, _, a| {
        a.map_or("-".into(), |a| fmt_cpu(&a.env_cpu, a.wall))
    });
    row(
        "emulator probe (DescribeRegions) p50 / p99 ms: Tender run; floor run",
        &|t, f, _| {
            format!(
                "{}; {}",
                fmt_pair(&t.probe_ms),
                f.map_or("-".into(), |f| fmt_pair(&f.probe_ms))
            )
        },
    );
    row(
        "launch window: first → last worker launched (s); launches/s",
        &|t, _, _| {
            format!(
                "{:.1}; {:.1}",
                t.launch_window,
                t.n as f64 / t.launch_window.max(0.001)
            )
        },
    );
    row(
        "launch latency p50 / p99 (ms): created → instance ID in status (watch)",
        &|t, _, _| fmt_pair(&t.launch_ms),
    );
    row(
        "  same from status.launchTime (1 s resolution)",
        &|t, _, _| fmt_pair(&t.launch_status_ms),
    );
    row(
        "  controller histogram p50 / p99 (planned → RunInstances; bucket bound, ms)",
        &|t, _, _| {
            format!(
                "≤ {} / ≤ {}",
                fmt_secs(t.delta.quantile("tender_worker_launch_seconds", 0.5)),
                fmt_secs(t.delta.quantile("tender_worker_launch_seconds", 0.99))
            )
        },
    );
    row(
        "terminate latency p50 / p99 (ms): worker's final message sent → terminatedTime in status (watch)",
        &|t, _, _| fmt_pair(&t.terminate_ms),
    );
    row(
        "  same from finishedTime → terminatedTime (1 s resolution)",
        &|t, _, _| fmt_pair(&t.terminate_status_ms),
    );
    row(
        "  controller histogram p50 / p99 (finished → TerminateInstances; bucket bound, ms)",
        &|t, _, _| {
            format!(
                "≤ {} / ≤ {}",
                fmt_secs(t.delta.quantile("tender_worker_termination_seconds", 0.5)),
                fmt_secs(t.delta.quantile("tender_worker_termination_seconds", 0.99))
            )
        },
    );
    let mut ops: Vec<String> = results
        .iter()
        .flat_map(|(t, _, _)| t.delta.by("tender_aws_calls_total", "operation"))
        .filter(|(_, v)| *v > 0.0)
        .map(|(k, _)| k)
        .collect();
    ops.sort();
    ops.dedup();
    for op in &ops {
        row(&format!("controller AWS calls/job: {op}"), &|t, _, _| {
            let v = t
                .delta
                .by("tender_aws_calls_total", "operation")
                .get(op)
                .copied()
                .unwrap_or(0.0);
            format!("{:.2}", per(t, v))
        });
    }
    row("controller AWS calls/job: all", &|t, _, _| {
        format!("{:.2}", per(t, t.delta.sum("tender_aws_calls_total")))
    });
    row("controller AWS errors by operation", &|t, _, _| {
        list(&t.delta.by("tender_aws_errors_total", "operation"))
    });
    row("controller AWS errors by category", &|t, _, _| {
        list(&t.delta.by("tender_aws_errors_total", "category"))
    });
    let calls = |t: &TenderResult, op: &str| {
        t.delta
            .by("tender_aws_calls_total", "operation")
            .get(op)
            .copied()
            .unwrap_or(0.0)
    };
    row(
        "DescribeInstances total = source lookups + shared-view pages",
        &|t, _, _| {
            let total = calls(t, "DescribeInstances");
            let source = calls(t, "DescribeVolumes");
            format!("{total:.0} = {source:.0} + {:.0}", total - source)
        },
    );
    row("  shared-view pages per job", &|t, _, _| {
        let total = calls(t, "DescribeInstances");
        let source = calls(t, "DescribeVolumes");
        format!("{:.2}", per(t, total - source))
    });
    row(
        "  shared-view pages per 5 s view window (\"per poll\"; ideal ≈ 1 per 1000 instances)",
        &|t, _, _| {
            let total = calls(t, "DescribeInstances");
            let source = calls(t, "DescribeVolumes");
            let windows = (t.wall / VIEW_MAX_AGE_SECONDS).max(1.0);
            format!("{:.1} ({:.1} windows)", (total - source) / windows, windows)
        },
    );
    row("**mutating EC2 calls/job** (target ≤ 2)", &|t, _, _| {
        let v: f64 = t
            .delta
            .by("tender_aws_calls_total", "operation")
            .iter()
            .filter(|(op, _)| !NOT_EC2.contains(&op.as_str()) && !op.starts_with("Describe"))
            .map(|(_, v)| v)
            .sum();
        format!("{:.2}", per(t, v))
    });
    row(
        "**status writes/job** BackupJob (target ≤ 6)",
        &|t, _, _| {
            let v = t
                .delta
                .by("tender_status_writes_total", "kind")
                .get("BackupJob")
                .copied()
                .unwrap_or(0.0);
            format!("{:.2}", per(t, v))
        },
    );
    row("  WorkerConfiguration status writes/job", &|t, _, _| {
        let v = t
            .delta
            .by("tender_status_writes_total", "kind")
            .get("WorkerConfiguration")
            .copied()
            .unwrap_or(0.0);
        format!("{:.3}", per(t, v))
    });
    row(
        "API-server writes/job: job object (create + changes, watch) + Events",
        &|t, _, _| {
            format!(
                "{:.2} + {:.2} = {:.2}",
                per(t, t.object_writes as f64),
                per(t, t.event_writes as f64),
                per(t, (t.object_writes + t.event_writes) as f64)
            )
        },
    );
    row(
        "floor API-server writes/job (create + status)",
        &|_, f, _| f.map_or("-".into(), |f| format!("{}", 1 + f.writes_per_job)),
    );
    row("reconciles/job: BackupJob", &|t, _, _| {
        let v = t
            .delta
            .by("tender_reconciles_total", "kind")
            .get("BackupJob")
            .copied()
            .unwrap_or(0.0);
        format!("{:.2}", per(t, v))
    });
    row("reconciles/job: WorkerConfiguration", &|t, _, _| {
        let v = t
            .delta
            .by("tender_reconciles_total", "kind")
            .get("WorkerConfiguration")
            .copied()
            .unwrap_or(0.0);
        format!("{:.2}", per(t, v))
    });
    row("reconcile errors by category", &|t, _, _| {
        list(&t.delta.by("tender_reconcile_errors_total", "category"))
    });
    row("controller peak RSS (MiB)", &|t, _, _| {
        format!("{:.1}", t.hwm_kib as f64 / 1024.0)
    });
    row(
        "controller CPU s during the run (whole life)",
        &|t, _, _| format!("{:.1} ({:.1})", t.cpu_run, t.cpu_total),
    );
    row("agent AWS calls/job (in-process workers)", &|t, _, _| {
        t.agent_calls
            .iter()
            .map(|(op, v)| format!("{op} {:.2}", per(t, *v)))
            .collect::<Vec<_>>()
            .join(", ")
    });
    row(
        "agents booted (harness: one DescribeInstanceAttribute each, for the user data); at once at most",
        &|t, _, _| format!("{}; {}", t.agents_started, t.agent_slots),
    );
    row(
        "finished workers' resources untagged by the harness",
        &|t, _, _| t.forgotten.to_string(),
    );
    row(
        "agents failed / watch restarts / leftovers terminated",
        &|t, f, _| {
            format!(
                "{} / {} / {}+{}",
                t.agents_failed,
                t.watch_restarts,
                t.leftovers,
                f.map_or(0, |f| f.leftovers)
            )
        },
    );
    row("floor errors", &|_, f, _| {
        f.map_or("-".into(), |f| f.errors.to_string())
    });

    let header: Vec<String> = results
        .iter()
        .map(|(t, _, _)| format!("N = {}", t.n))
        .collect();
    println!("| | {} |", header.join(" | "));
    println!("|---|{}", "---|".repeat(header.len()));
    for (label, values) in rows {
        println!("| {label} | {} |", values.join(" | "));
    }
}

async fn bench(sizes: Vec<usize>) {
    println!("# Tender scale benchmark");
    println!();
    println!("machine: {}", machine());
    let mut w = world().await;
    println!(
        "sizes: {sizes:?}; concurrency {} (job creation, floor pipelines); agents: every worker boots one; {PROTECTED} protected EBS snapshots shared by the jobs (one 512 KiB block each, backed up for real by the agents); controller {}; logs in {}",
        concurrency(),
        w.bin.display(),
        w.log_dir.display()
    );
    let endpoints = emulator_endpoints();
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
    let mut results = Vec::new();
    for &n in &sizes {
        eprintln!("== N = {n}: Tender");
        w.prepare().await;
        let t = tender_run(&w, n).await;
        eprintln!(
            "  tender N={n}: {:.1} s for {}/{} jobs",
            t.wall, t.done, t.n
        );
        let writes = t
            .delta
            .by("tender_status_writes_total", "kind")
            .get("BackupJob")
            .copied()
            .unwrap_or(0.0);
        let k = ((writes / n as f64).ceil() as usize).max(1);
        eprintln!("== N = {n}: floor ({k} status writes per job)");
        w.prepare().await;
        let f = floor_run(&w, n, k).await;
        eprintln!("  floor N={n}: {:.1} s", f.wall);
        eprintln!("== N = {n}: the agents alone");
        w.prepare().await;
        let a = agents_run(&w, n).await;
        eprintln!("  agents alone N={n}: {:.1} s", a.wall);
        results.push((t, Some(f), Some(a)));
    }
    w.cleanup().await;
    println!();
    print_table(&results);
    println!();
    println!(
        "Latencies are measured by this process (one clock): creation is when the job's POST returned; the watch sees each status write within milliseconds. \
         The controller looks up each job's source with DescribeSnapshots, so every DescribeInstances is a page of the shared view."
    );
}
