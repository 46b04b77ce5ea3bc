//! Test harness: a fresh namespace on the real local API server, the real
//! `tender` controller binary scoped to it, and a stand-in for EC2's boot:
//! every worker instance the emulator "starts" gets the real worker agent
//! as a local process, fed the instance's own user data.
//!
//! Needs the environment of `scripts/testenv up` (KUBECONFIG,
//! AWS_ENDPOINT_URL, ...); `scripts/test` provides it.
#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::Filter;
use k8s_openapi::api::core::v1::{Event, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, CustomResourceExt};
use tender::api::{BackupJob, Phase, RestoreJob, WorkerConfiguration};

pub mod commands;
pub mod disks;
pub mod reports;
pub mod workers;

use workers::Account;

pub const REGION: &str = "us-east-1";
static COUNTER: AtomicU64 = AtomicU64::new(0);

fn require_env() {
    for var in ["KUBECONFIG", "AWS_ENDPOINT_URL"] {
        if std::env::var_os(var).is_none() {
            panic!(
                "{var} is not set: run the tests with scripts/test, or `eval \"$(scripts/testenv up)\"` first"
            );
        }
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{n}-{:x}", std::process::id(), nanos % 0xfffff)
}

pub async fn kube_client() -> Client {
    require_env();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    Client::try_default()
        .await
        .expect("kube client from KUBECONFIG")
}

pub async fn ec2() -> aws_sdk_ec2::Client {
    require_env();
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .load()
        .await;
    aws_sdk_ec2::Client::new(&conf)
}

pub async fn sqs() -> aws_sdk_sqs::Client {
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .load()
        .await;
    aws_sdk_sqs::Client::new(&conf)
}

/// Installs (server-side applies) the CRDs and waits until they are served.
pub async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [
        WorkerConfiguration::crd(),
        BackupJob::crd(),
        RestoreJob::crd(),
    ] {
        let name = crd.metadata.name.clone().unwrap();
        api.patch(
            &name,
            &PatchParams::apply("tender-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("apply CRD");
        eventually(Duration::from_secs(30), || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let crd = api.get(&name).await.ok()?;
                let established = crd
                    .status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                established.then_some(())
            }
        })
        .await;
    }
}

/// Polls `check` until it returns Some, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("condition not met within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Where test workers go.
pub struct Network {
    pub subnet: String,
    pub zone: String,
    pub security_group: String,
}

/// A network and a WorkerConfiguration for it that has its queue: what a
/// job needs before it can launch a worker.
pub struct Configured {
    pub net: Network,
    pub configuration: WorkerConfiguration,
}

impl Configured {
    /// The configuration's SQS queue.
    pub fn queue_url(&self) -> String {
        self.configuration
            .status
            .as_ref()
            .and_then(|s| s.queue_url.clone())
            .expect("a ready configuration has its queue")
    }
}

/// Whether a job's first worker has been launched.
pub fn launched<W: std::ops::Deref<Target = tender::api::WorkerStatus>>(
    status: &Option<tender::api::JobStatus<W>>,
) -> bool {
    status
        .as_ref()
        .is_some_and(|s| s.workers.first().is_some_and(|w| w.instance_id.is_some()))
}

/// The name of an instance's state (`running`, `terminated`, ...).
pub fn state(instance: &aws_sdk_ec2::types::Instance) -> String {
    instance
        .state()
        .and_then(|s| s.name())
        .expect("an instance has a state")
        .as_str()
        .to_string()
}

fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
    if let (Some(b), serde_json::Value::Object(e)) = (base.as_object_mut(), extra) {
        for (k, v) in e {
            b.insert(k, v);
        }
    }
}

/// The default VPC's default subnets of the account `ec2` acts in, as
/// (subnet, zone, VPC), by zone.
pub async fn default_subnets(ec2: &aws_sdk_ec2::Client) -> Vec<(String, String, String)> {
    let out = ec2
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
    let mut v: Vec<(String, String, String)> = out
        .subnets()
        .iter()
        .map(|s| {
            (
                s.subnet_id().unwrap().to_string(),
                s.availability_zone().unwrap().to_string(),
                s.vpc_id().unwrap().to_string(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.1.cmp(&b.1));
    v
}

/// The condition of `type_` on a job, if present.
pub fn condition<'a>(
    job: &'a BackupJob,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    job.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// One test's world: its namespace, its controller, its cluster ID.
pub struct TestEnv {
    pub client: Client,
    pub ec2: aws_sdk_ec2::Client,
    pub namespace: String,
    pub cluster_id: String,
    pub log_dir: PathBuf,
    controllers: Mutex<Vec<(Child, u16)>>,
    workers: Arc<Mutex<Vec<Child>>>,
    launcher_stop: Arc<AtomicBool>,
    /// Accounts whose workers the launcher boots.
    accounts: Arc<Mutex<Vec<Account>>>,
    /// When false, instances are left without an agent (they never report).
    pub boot_workers: Arc<AtomicBool>,
    bucket: Mutex<Option<String>>,
}

impl TestEnv {
    pub async fn new(name: &str) -> Self {
        let env = Self::without_controller(name).await;
        env.start_controller();
        env
    }

    /// A test world whose controllers the test starts itself.
    pub async fn without_controller(name: &str) -> Self {
        let client = kube_client().await;
        install_crds(&client).await;
        let namespace = unique(name);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}
        }))
        .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        let log_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-logs");
        std::fs::create_dir_all(&log_dir).unwrap();
        let env = Self {
            client,
            ec2: ec2().await,
            cluster_id: unique("test-cluster"),
            namespace,
            log_dir,
            controllers: Mutex::new(Vec::new()),
            workers: Arc::default(),
            launcher_stop: Arc::default(),
            accounts: Arc::default(),
            boot_workers: Arc::new(AtomicBool::new(true)),
            bucket: Mutex::new(None),
        };
        env.accounts.lock().unwrap().push(Account {
            ec2: env.ec2.clone(),
            credentials: None,
        });
        env.start_launcher();
        env
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn log_file(&self, what: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_dir.join(format!("{}-{what}.log", self.namespace)))
            .unwrap()
    }

    /// Starts the controller binary, scoped to this test's namespace.
    pub fn start_controller(&self) {
        self.start_controller_with(&[], &[]);
    }

    /// Starts another controller with extra flags and environment; returns
    /// the port of its /metrics endpoint.
    pub fn start_controller_with(&self, args: &[&str], env: &[(&str, &str)]) -> u16 {
        let log = self.log_file("controller");
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_tender"))
            .args([
                "controller",
                "--namespace",
                &self.namespace,
                "--cluster-id",
                &self.cluster_id,
            ])
            .args([
                "--heartbeat-seconds",
                "1",
                "--metrics-address",
                &format!("127.0.0.1:{port}"),
            ])
            .args([
                "--sweep-interval-seconds",
                "1",
                "--sweep-grace-seconds",
                "2",
            ])
            .args(["--network-recheck-seconds", "1"])
            .args(args)
            // The emulator names one fixed SenderId for every message, and
            // its agents serve file-level sessions on loopback, not at the
            // instance's address: both checks stay on in production.
            .env("TENDER_REQUIRE_WORKER_SENDER", "false")
            .env("TENDER_TRUSTED_BROWSER_HOSTS", "127.0.0.1")
            .envs(env.iter().copied())
            .env("RUST_LOG", "info,tender=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the controller");
        self.controllers.lock().unwrap().push((child, port));
        port
    }

    /// Kills every controller of this test with SIGKILL.
    pub fn kill_controller(&self) {
        for (mut c, _) in self.controllers.lock().unwrap().drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills one controller (by its metrics port) with SIGKILL.
    pub fn kill_controller_on(&self, port: u16) {
        let mut controllers = self.controllers.lock().unwrap();
        if let Some(i) = controllers.iter().position(|(_, p)| *p == port) {
            let (mut c, _) = controllers.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Exit statuses of controllers that are no longer running.
    pub fn exited_controllers(&self) -> Vec<std::process::ExitStatus> {
        let mut controllers = self.controllers.lock().unwrap();
        controllers
            .iter_mut()
            .filter_map(|(c, _)| c.try_wait().ok().flatten())
            .collect()
    }

    /// The Prometheus text a controller serves.
    pub async fn metrics(&self, port: u16) -> String {
        self.http_get(port, "/metrics").await
    }

    /// The whole HTTP response of a GET on a controller's metrics port.
    pub async fn http_get(&self, port: u16, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to /metrics");
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut body = String::new();
        stream.read_to_string(&mut body).await.unwrap();
        body
    }

    /// Plays EC2's part of booting a worker: for every running instance of
    /// this cluster, start the worker agent with the instance's user data.
    fn start_launcher(&self) {
        workers::Launcher {
            accounts: self.accounts.clone(),
            cluster_id: self.cluster_id.clone(),
            workers: self.workers.clone(),
            stop: self.launcher_stop.clone(),
            boot: self.boot_workers.clone(),
            log_dir: self.log_dir.clone(),
            namespace: self.namespace.clone(),
        }
        .start();
    }

    /// Tender's own AWS clients acting through `role_arn` (the default
    /// account's without one): for writing protected disks in an account.
    pub async fn aws_as(&self, role_arn: Option<&str>) -> tender::aws::AwsClients {
        let aws = tender::aws::AwsClients::from_env().await;
        let role = role_arn.map(|arn| tender::api::AccountAccess {
            role_arn: arn.to_string(),
            external_id: None,
        });
        aws.scoped(&tender::aws::accounts::Access::new(
            role.as_ref(),
            &["tests"],
        ))
        .await
    }

    /// A bucket in the account of `role_arn`, for workers that run there.
    pub async fn bucket_in(&self, role_arn: &str) -> String {
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .load()
            .await;
        let out = aws_sdk_sts::Client::new(&conf)
            .assume_role()
            .role_arn(role_arn)
            .role_session_name("tender-tests")
            .send()
            .await
            .expect("assume role in the emulator");
        let c = out.credentials().unwrap();
        let creds = aws_credential_types::Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_string()),
            None,
            "tests",
        );
        let scoped = aws_sdk_s3::config::Builder::from(&conf)
            .credentials_provider(creds)
            .force_path_style(true)
            .build();
        disks::create_bucket(&aws_sdk_s3::Client::from_conf(scoped)).await
    }

    /// Assumes a role in another (emulated) account, and boots the workers
    /// launched there too. Returns EC2 and SQS clients that act in it.
    pub async fn assume(&self, role_arn: &str) -> (aws_sdk_ec2::Client, aws_sdk_sqs::Client) {
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .load()
            .await;
        let out = aws_sdk_sts::Client::new(&conf)
            .assume_role()
            .role_arn(role_arn)
            .role_session_name("tender-tests")
            .send()
            .await
            .expect("assume role in the emulator");
        let c = out.credentials().unwrap();
        let (key, secret, token) = (
            c.access_key_id().to_string(),
            c.secret_access_key().to_string(),
            c.session_token().to_string(),
        );
        let creds = aws_credential_types::Credentials::new(
            &key,
            &secret,
            Some(token.clone()),
            None,
            "tests",
        );
        let scoped = conf
            .to_builder()
            .credentials_provider(
                aws_credential_types::provider::SharedCredentialsProvider::new(creds),
            )
            .build();
        let ec2 = aws_sdk_ec2::Client::new(&scoped);
        self.accounts.lock().unwrap().push(Account {
            ec2: ec2.clone(),
            credentials: Some((key, secret, token)),
        });
        (ec2, aws_sdk_sqs::Client::new(&scoped))
    }

    /// A subnet, its zone and a fresh security group in the emulator.
    pub async fn network(&self) -> Network {
        let (subnet, zone) = self.default_subnet().await;
        let security_group = self.security_group().await;
        Network {
            subnet,
            zone,
            security_group,
        }
    }

    /// Creates a WorkerConfiguration for `net`; `extra` is merged into its spec.
    pub async fn create_configuration(
        &self,
        name: &str,
        net: &Network,
        extra: serde_json::Value,
    ) -> WorkerConfiguration {
        let mut spec = serde_json::json!({
            "region": REGION,
            "subnets": [{"subnetId": net.subnet, "availabilityZone": net.zone}],
            "securityGroupIds": [net.security_group],
            "imageId": "ami-0fedcba9876543210",
            "instanceTypes": {"backup": "m5.large"},
            "tags": {"team": "storage", "cost-center": "42"}
        });
        merge(&mut spec, extra);
        let cfg: WorkerConfiguration = serde_json::from_value(serde_json::json!({
            "apiVersion": "tender.dev/v1alpha1", "kind": "WorkerConfiguration",
            "metadata": {"name": name}, "spec": spec
        }))
        .unwrap();
        self.api::<WorkerConfiguration>()
            .create(&PostParams::default(), &cfg)
            .await
            .unwrap()
    }

    /// A network, and the WorkerConfiguration `name` for it (`extra` merged
    /// into its spec), waited for until it has its queue.
    pub async fn configured(&self, name: &str, extra: serde_json::Value) -> Configured {
        let net = self.network().await;
        self.create_configuration(name, &net, extra).await;
        let configuration = self.wait_configuration_ready(name).await;
        Configured { net, configuration }
    }

    /// [`TestEnv::configured`] with the configuration most tests use:
    /// `default`, nothing added to its spec.
    pub async fn default_configuration(&self) -> Configured {
        self.configured("default", serde_json::json!({})).await
    }

    /// Waits until the configuration has its queue.
    pub async fn wait_configuration_ready(&self, name: &str) -> WorkerConfiguration {
        let api: Api<WorkerConfiguration> = self.api();
        eventually(Duration::from_secs(60), || {
            let api = api.clone();
            async move {
                let cfg = api.get(name).await.ok()?;
                cfg.status.as_ref()?.queue_url.as_ref()?;
                Some(cfg)
            }
        })
        .await
    }

    /// Creates a BackupJob of one instance; `extra` is merged into its spec.
    /// A BackupJob of one resource (an instance, or a snapshot when the ID
    /// starts with `snap-`) into this test's bucket; `extra` is merged into
    /// the spec.
    pub async fn create_job(
        &self,
        name: &str,
        resource_id: &str,
        extra: serde_json::Value,
    ) -> BackupJob {
        let key = if resource_id.starts_with("snap-") {
            "snapshotId"
        } else {
            "instanceId"
        };
        let mut spec = serde_json::json!({
            "resources": [{key: resource_id, "region": REGION}],
            "repository": {"bucket": self.bucket().await},
        });
        merge(&mut spec, extra);
        let job: BackupJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "tender.dev/v1alpha1", "kind": "BackupJob",
            "metadata": {"name": name}, "spec": spec
        }))
        .unwrap();
        self.api::<BackupJob>()
            .create(&PostParams::default(), &job)
            .await
            .unwrap()
    }

    /// A subnet of the emulator's default VPC, with its availability zone.
    pub async fn default_subnet(&self) -> (String, String) {
        let (subnet, zone, _) = default_subnets(&self.ec2).await.remove(0);
        (subnet, zone)
    }

    /// A fresh security group in the default VPC.
    pub async fn security_group(&self) -> String {
        let out = self
            .ec2
            .create_security_group()
            .group_name(unique("tender-test"))
            .description("tender test workers")
            .send()
            .await
            .expect("create security group");
        out.group_id().unwrap().to_string()
    }

    /// This test's repository bucket (created on first use).
    pub async fn bucket(&self) -> String {
        if let Some(b) = self.bucket.lock().unwrap().clone() {
            return b;
        }
        let b = disks::create_bucket(&disks::s3().await).await;
        self.bucket.lock().unwrap().get_or_insert(b).clone()
    }

    /// A protected disk: an EBS snapshot holding a small ext4 filesystem,
    /// written through the EBS direct APIs in the account of `aws` (the
    /// emulator keeps block data only for snapshots written that way).
    pub async fn protected_disk_in(&self, aws: &tender::aws::AwsClients) -> String {
        let image = disks::Ext4Image::build(
            &[("etc/hostname", format!("{}\n", self.namespace).into_bytes())],
            8,
        );
        disks::write_snapshot(aws, &image.bytes, 1).await
    }

    /// [`TestEnv::protected_disk_in`] the default account.
    pub async fn protected_disk(&self) -> String {
        self.protected_disk_in(&tender::aws::AwsClients::from_env().await)
            .await
    }

    /// A running "protected" instance in `subnet`, the thing a backup protects.
    pub async fn protected_instance(&self, subnet: &str) -> String {
        let out = self
            .ec2
            .run_instances()
            .image_id("ami-0123456789abcdef0")
            .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
            .min_count(1)
            .max_count(1)
            .subnet_id(subnet)
            .send()
            .await
            .expect("run the protected instance");
        out.instances()[0].instance_id().unwrap().to_string()
    }

    /// Instances (any state) that carry `tag` = `value` and this cluster's ID.
    pub async fn instances_tagged(
        &self,
        tag: &str,
        value: &str,
    ) -> Vec<aws_sdk_ec2::types::Instance> {
        let out = self
            .ec2
            .describe_instances()
            .filters(
                Filter::builder()
                    .name("tag:tender.dev/cluster-id")
                    .values(&self.cluster_id)
                    .build(),
            )
            .filters(
                Filter::builder()
                    .name(format!("tag:{tag}"))
                    .values(value)
                    .build(),
            )
            .send()
            .await
            .expect("describe instances");
        out.reservations()
            .iter()
            .flat_map(|r| r.instances())
            .cloned()
            .collect()
    }

    /// Creates a BackupJob of `resource_id` and waits until it succeeded.
    pub async fn back_up(&self, name: &str, resource_id: &str, timeout: Duration) -> BackupJob {
        self.create_job(name, resource_id, serde_json::json!({}))
            .await;
        self.wait_job(name, timeout, |j| {
            j.status
                .as_ref()
                .is_some_and(|s| s.phase == tender::api::Phase::Succeeded)
        })
        .await
    }

    /// Waits until the BackupJob `name` passes `check`.
    pub async fn wait_job<F>(&self, name: &str, timeout: Duration, check: F) -> BackupJob
    where
        F: Fn(&BackupJob) -> bool,
    {
        self.wait_for(name, timeout, check, |j| &j.status).await
    }

    /// Waits until the BackupJob `name` is in `phase`.
    pub async fn wait_job_phase(&self, name: &str, timeout: Duration, phase: Phase) -> BackupJob {
        self.wait_job(name, timeout, |j| {
            j.status.as_ref().is_some_and(|s| s.phase == phase)
        })
        .await
    }

    /// Waits until the BackupJob `name` has finished, whichever way.
    pub async fn wait_job_finished(&self, name: &str, timeout: Duration) -> BackupJob {
        self.wait_job(name, timeout, |j| {
            j.status.as_ref().is_some_and(|s| s.phase.is_finished())
        })
        .await
    }

    /// Waits until the RestoreJob `name` has finished, whichever way.
    pub async fn wait_restore_finished(&self, name: &str, timeout: Duration) -> RestoreJob {
        self.wait_restore(name, timeout, |j| {
            j.status.as_ref().is_some_and(|s| s.phase.is_finished())
        })
        .await
    }

    /// Waits until the object `name` is gone from the API server.
    pub async fn wait_deleted<K>(&self, name: &str, timeout: Duration)
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = self.api();
        eventually(timeout, || {
            let api = api.clone();
            async move { api.get_opt(name).await.ok()?.is_none().then_some(()) }
        })
        .await;
    }

    /// The workers of the job whose UID is `job_uid`, in any state.
    pub async fn workers_of(&self, job_uid: &str) -> Vec<aws_sdk_ec2::types::Instance> {
        self.instances_tagged(tender::names::tags::JOB_UID, job_uid)
            .await
    }

    /// Waits until the RestoreJob `name` passes `check`.
    pub async fn wait_restore<F>(&self, name: &str, timeout: Duration, check: F) -> RestoreJob
    where
        F: Fn(&RestoreJob) -> bool,
    {
        self.wait_for(name, timeout, check, |j| &j.status).await
    }

    async fn wait_for<K, F, S, T>(&self, name: &str, timeout: Duration, check: F, status: S) -> K
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        F: Fn(&K) -> bool,
        S: Fn(&K) -> &Option<T>,
        T: serde::Serialize,
    {
        let api: Api<K> = self.api();
        let start = Instant::now();
        loop {
            let job = api.get(name).await.expect("get job");
            if check(&job) {
                return job;
            }
            if start.elapsed() > timeout {
                panic!(
                    "{} {name} did not reach the expected state in {timeout:?}; status: {}",
                    K::kind(&()),
                    serde_json::to_string_pretty(status(&job)).unwrap()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Creates a RestoreJob from this test's bucket; `extra` is merged into
    /// its spec.
    pub async fn create_restore(
        &self,
        name: &str,
        mode: &str,
        restore_point: &str,
        extra: serde_json::Value,
    ) -> RestoreJob {
        let mut spec = serde_json::json!({
            "mode": mode, "restorePoint": restore_point, "region": REGION,
            "repository": {"bucket": self.bucket().await},
        });
        merge(&mut spec, extra);
        let job: RestoreJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "tender.dev/v1alpha1", "kind": "RestoreJob",
            "metadata": {"name": name}, "spec": spec
        }))
        .unwrap();
        self.api::<RestoreJob>()
            .create(&PostParams::default(), &job)
            .await
            .unwrap()
    }

    /// Events recorded on objects of this namespace, as (reason, note).
    pub async fn events(&self) -> Vec<(String, String)> {
        let api: Api<k8s_openapi::api::events::v1::Event> = self.api();
        let mut out: Vec<(String, String)> = api
            .list(&ListParams::default())
            .await
            .expect("list events")
            .items
            .into_iter()
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect();
        let core: Api<Event> = self.api();
        out.extend(
            core.list(&ListParams::default())
                .await
                .expect("list events")
                .items
                .into_iter()
                .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default())),
        );
        out
    }

    /// Tags of an instance as a map.
    pub fn tags(instance: &aws_sdk_ec2::types::Instance) -> BTreeMap<String, String> {
        instance
            .tags()
            .iter()
            .map(|t| {
                (
                    t.key().unwrap_or_default().to_string(),
                    t.value().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.launcher_stop.store(true, Ordering::SeqCst);
        self.kill_controller();
        for mut w in self.workers.lock().unwrap().drain(..) {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}
