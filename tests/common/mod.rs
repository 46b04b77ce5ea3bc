//! Test harness: a fresh namespace on the real local API server, the real
//! `tender` controller binary scoped to it, and a stand-in for EC2's boot:
//! every worker instance the emulator "starts" gets the real worker agent
//! as a local process, fed the instance's own user data.
//!
//! WorkerConfigurations and BackupRepositories are cluster-scoped, and the
//! tests run in parallel against one API server: each test's are its own by
//! name (`<namespace>-<logical name>`, [`TestEnv::cluster_name`]) and by the
//! label `tender.dev/test=<namespace>`, which its controller's
//! `--class-selector` selects and which its namespace carries for their
//! `namespaceSelector`. Nothing deletes a test's objects afterwards (nor its
//! namespace): no other controller selects them.
//!
//! Needs the environment of `scripts/testenv up` (KUBECONFIG,
//! AWS_ENDPOINT_URL, ...); `scripts/test` provides it.
#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::Filter;
use k8s_openapi::api::core::v1::{Event, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, CustomResourceExt};
use tender::api::{
    BackupJob, BackupRepository, DEFAULT_CONFIGURATION_ANNOTATION, Phase, RestoreJob,
    WorkerConfiguration,
};

pub mod commands;
pub mod disks;
pub mod keys;
pub mod postgres;
pub mod proxy;
pub mod realism;
pub mod reports;
pub mod stock_disks;
pub mod strict;
pub mod throttle;
pub mod workers;

use workers::Account;

pub const REGION: &str = "us-east-1";
/// The label that makes cluster-scoped objects (and namespaces) a test's:
/// its value is the test's namespace.
pub const TEST_LABEL: &str = "tender.dev/test";
/// The account the emulator acts in without an assumed role.
pub const EMULATOR_ACCOUNT: &str = "123456789012";
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

/// The emulator's configuration, acting through `role_arn` when given.
pub async fn config_as(role_arn: Option<&str>) -> aws_config::SdkConfig {
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .load()
        .await;
    match role_arn {
        Some(role_arn) => with_credentials(&conf, &assumed(&conf, role_arn).await),
        None => conf,
    }
}

/// A session of `role_arn` in the emulator: key, secret and token.
async fn assumed(conf: &aws_config::SdkConfig, role_arn: &str) -> (String, String, String) {
    let out = aws_sdk_sts::Client::new(conf)
        .assume_role()
        .role_arn(role_arn)
        .role_session_name("tender-tests")
        .send()
        .await
        .expect("assume role in the emulator");
    let c = out.credentials().unwrap();
    (
        c.access_key_id().to_string(),
        c.secret_access_key().to_string(),
        c.session_token().to_string(),
    )
}

/// `conf` acting with the session `(key, secret, token)`.
fn with_credentials(
    conf: &aws_config::SdkConfig,
    (key, secret, token): &(String, String, String),
) -> aws_config::SdkConfig {
    let creds =
        aws_credential_types::Credentials::new(key, secret, Some(token.clone()), None, "tests");
    conf.to_builder()
        .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(creds))
        .build()
}

/// In the realism layer's world, a role for the controller of test
/// `namespace` holding the shipped controller policy (iam/), and a
/// session of it: the controller acts with exactly those permissions.
async fn controller_session(namespace: &str) -> Option<(String, String, String)> {
    if !realism::enabled() {
        return None;
    }
    let name = format!("tender-{namespace}-controller");
    realism::ensure_role(&name, &realism::controller_policy()).await;
    let conf = config_as(None).await;
    let arn = format!("arn:aws:iam::{EMULATOR_ACCOUNT}:role/{name}");
    Some(assumed(&conf, &arn).await)
}

/// A new KMS HMAC key (the integrity key of a BackupRepository) in the
/// account of `role_arn` (the emulator's own without one); its ARN.
pub async fn hmac_key(role_arn: Option<&str>) -> String {
    keys::hmac_key(&config_as(role_arn).await).await
}

/// Installs (server-side applies) the CRDs and waits until they are served.
pub async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [
        WorkerConfiguration::crd(),
        BackupRepository::crd(),
        BackupJob::crd(),
        RestoreJob::crd(),
        tender::api::BackupPolicy::crd(),
        tender::api::RetentionJob::crd(),
        tender::api::RestorePoint::crd(),
        tender::api::VerificationJob::crd(),
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

/// Instance `id` as DescribeInstances tells it, asked again while EC2 does
/// not know it yet (eventual consistency right after RunInstances).
pub async fn describe_instance(
    ec2: &aws_sdk_ec2::Client,
    id: &str,
) -> aws_sdk_ec2::types::Instance {
    let start = Instant::now();
    loop {
        match ec2.describe_instances().instance_ids(id).send().await {
            Ok(out) => return out.reservations()[0].instances()[0].clone(),
            Err(e) if start.elapsed() < Duration::from_secs(10) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("describe instance {id}: {e:?}"),
        }
    }
}

/// Asserts that `instance` was told to terminate: EC2 answers
/// TerminateInstances with `shutting-down`, and reaches `terminated` later
/// (the test world plays that delay, as AWS does).
pub fn assert_terminating(instance: &aws_sdk_ec2::types::Instance) {
    let state = state(instance);
    assert!(
        state == "shutting-down" || state == "terminated",
        "instance {:?} is {state}, not shutting-down or terminated",
        instance.instance_id()
    );
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
/// Gives the account's default VPC what AWS gives every default VPC and
/// plain moto does not: an internet gateway and a default route to it in the
/// main route table (so that workers with a public IP have a way out, as
/// Tender checks). The realism layer's default VPCs have them already (also
/// after an emulator restart), and then this does nothing. Idempotent;
/// tests running at once may race, and a lost race leaves the other's
/// gateway in place.
pub async fn default_vpc_internet_gateway(ec2: &aws_sdk_ec2::Client) {
    let vpcs = ec2
        .describe_vpcs()
        .filters(Filter::builder().name("is-default").values("true").build())
        .send()
        .await
        .expect("describe vpcs");
    let Some(vpc) = vpcs.vpcs().first().and_then(|v| v.vpc_id()) else {
        return;
    };
    let tables = ec2
        .describe_route_tables()
        .filters(Filter::builder().name("vpc-id").values(vpc).build())
        .filters(
            Filter::builder()
                .name("association.main")
                .values("true")
                .build(),
        )
        .send()
        .await
        .expect("describe route tables");
    let Some(main) = tables.route_tables().first() else {
        return;
    };
    if main
        .routes()
        .iter()
        .any(|r| r.destination_cidr_block() == Some("0.0.0.0/0"))
    {
        return;
    }
    let table = main.route_table_id().unwrap_or_default().to_string();
    let igw = ec2
        .create_internet_gateway()
        .send()
        .await
        .expect("create internet gateway");
    let igw = igw
        .internet_gateway()
        .and_then(|g| g.internet_gateway_id())
        .unwrap_or_default()
        .to_string();
    if ec2
        .attach_internet_gateway()
        .internet_gateway_id(&igw)
        .vpc_id(vpc)
        .send()
        .await
        .is_err()
    {
        return;
    }
    let _ = ec2
        .create_route()
        .route_table_id(table)
        .destination_cidr_block("0.0.0.0/0")
        .gateway_id(igw)
        .send()
        .await;
}

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

/// The answer of a Describe call by ID, asked again while EC2 does not
/// know the resource yet (eventual consistency), for up to ten seconds.
pub async fn described<T, E, F, Fut>(call: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Debug,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match call().await {
            Ok(out) => return out,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}

/// The condition of `type_` in a list of conditions, if present.
pub fn condition_of<'a>(
    conditions: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    conditions.iter().find(|c| c.type_ == type_)
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
    /// When false, worker instances boot without a network (see
    /// [`workers::Launcher::online`]).
    pub workers_online: Arc<AtomicBool>,
    bucket: Mutex<Option<String>>,
    /// The BackupRepository of [`TestEnv::bucket`] (created on first use).
    repository: tokio::sync::OnceCell<String>,
    /// WorkerConfigurations created so far: the first is its region's default.
    configurations: AtomicUsize,
    /// This test's worker roles and instance profiles (created on first use).
    worker_roles: tokio::sync::OnceCell<serde_json::Value>,
    /// A session of this test's controller role, which holds the shipped
    /// controller policy (in the realism layer's world; else None: the
    /// environment's own key).
    controller_credentials: Option<(String, String, String)>,
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
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": namespace, "labels": {TEST_LABEL: namespace}}
        }))
        .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        let log_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-logs");
        std::fs::create_dir_all(&log_dir).unwrap();
        let controller_credentials = controller_session(&namespace).await;
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
            workers_online: Arc::new(AtomicBool::new(true)),
            bucket: Mutex::new(None),
            repository: tokio::sync::OnceCell::new(),
            configurations: AtomicUsize::new(0),
            worker_roles: tokio::sync::OnceCell::new(),
            controller_credentials,
        };
        default_vpc_internet_gateway(&env.ec2).await;
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

    /// An Api of a cluster-scoped kind (WorkerConfiguration,
    /// BackupRepository); their names are [`TestEnv::cluster_name`]s.
    pub fn cluster_api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope, DynamicType = ()>,
    {
        Api::all(self.client.clone())
    }

    /// The cluster-wide name of this test's cluster-scoped object `logical`
    /// (`<namespace>-<logical>`); a name that already is one stays as it is.
    pub fn cluster_name(&self, logical: &str) -> String {
        let prefix = format!("{}-", self.namespace);
        if logical.starts_with(&prefix) {
            logical.to_string()
        } else {
            format!("{prefix}{logical}")
        }
    }

    /// The label selector of this test's cluster-scoped objects, which its
    /// controllers manage (`--class-selector`).
    pub fn class_selector(&self) -> String {
        format!("{TEST_LABEL}={}", self.namespace)
    }

    /// A `namespaceSelector` that admits this test's namespace only.
    pub fn admits_this_namespace(&self) -> serde_json::Value {
        serde_json::json!({"matchLabels": {TEST_LABEL: self.namespace}})
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
    /// the port of its /metrics endpoint. It manages this test's
    /// configurations and repositories ([`TestEnv::class_selector`]) unless
    /// `args` has a `--class-selector` of its own.
    pub fn start_controller_with(&self, args: &[&str], env: &[(&str, &str)]) -> u16 {
        let log = self.log_file("controller");
        let port = free_port();
        let class_selector = self.class_selector();
        let classes: &[&str] = if args.contains(&"--class-selector") {
            &[]
        } else {
            &["--class-selector", &class_selector]
        };
        let child = Command::new(env!("CARGO_BIN_EXE_tender"))
            .args([
                "controller",
                "--namespace",
                &self.namespace,
                "--cluster-id",
                &self.cluster_id,
            ])
            .args(classes)
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
            .args(["--repository-count-seconds", "1"])
            .args(args)
            // The emulator names one fixed SenderId for every message, and
            // its agents serve file-level sessions on loopback, not at the
            // instance's address: both checks stay on in production.
            .env("TENDER_REQUIRE_WORKER_SENDER", "false")
            .env("TENDER_TRUSTED_BROWSER_HOSTS", "127.0.0.1")
            // The agent the workers download: this test build of tender.
            .env("TENDER_AGENTS_DIR", workers::agents_dir())
            .envs(env.iter().copied())
            .env("RUST_LOG", "info,tender=debug")
            .envs(self.controller_environment())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the controller");
        self.controllers.lock().unwrap().push((child, port));
        port
    }

    /// The credentials a controller of this test acts with: a session of
    /// its role bound to the shipped controller policy, when there is one.
    pub fn controller_environment(&self) -> Vec<(&'static str, String)> {
        match &self.controller_credentials {
            Some((key, secret, token)) => vec![
                ("AWS_ACCESS_KEY_ID", key.clone()),
                ("AWS_SECRET_ACCESS_KEY", secret.clone()),
                ("AWS_SESSION_TOKEN", token.clone()),
            ],
            None => Vec::new(),
        }
    }

    /// Who this test's controllers are to AWS: (account, user ID), as STS
    /// GetCallerIdentity tells it with their credentials.
    pub async fn controller_identity(&self) -> (String, String) {
        let conf = config_as(None).await;
        let conf = match &self.controller_credentials {
            Some(session) => with_credentials(&conf, session),
            None => conf,
        };
        let me = aws_sdk_sts::Client::new(&conf)
            .get_caller_identity()
            .send()
            .await
            .expect("GetCallerIdentity");
        (
            me.account().unwrap_or_default().to_string(),
            me.user_id().unwrap_or_default().to_string(),
        )
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
            online: self.workers_online.clone(),
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
        let conf = config_as(Some(role_arn)).await;
        let scoped = aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(true)
            .build();
        disks::create_bucket(&aws_sdk_s3::Client::from_conf(scoped)).await
    }

    /// Assumes a role in another (emulated) account, and boots the workers
    /// launched there too. Returns EC2 and SQS clients that act in it.
    pub async fn assume(&self, role_arn: &str) -> (aws_sdk_ec2::Client, aws_sdk_sqs::Client) {
        let conf = config_as(None).await;
        let session = assumed(&conf, role_arn).await;
        let scoped = with_credentials(&conf, &session);
        let ec2 = aws_sdk_ec2::Client::new(&scoped);
        default_vpc_internet_gateway(&ec2).await;
        self.accounts.lock().unwrap().push(Account {
            ec2: ec2.clone(),
            credentials: Some(session),
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
            // No image: the region's current Amazon Linux 2023, as a user
            // who changes nothing gets.
            "instanceTypes": {"backup": "m5.large"},
            "tags": {"team": "storage", "cost-center": "42"}
        });
        merge(&mut spec, extra);
        self.create_configuration_spec(name, spec).await
    }

    /// Creates this test's WorkerConfiguration `name` (logical: it is named
    /// [`TestEnv::cluster_name`]) with `spec` as given, labelled for this
    /// test's controllers and admitting this test's namespace unless `spec`
    /// has a `namespaceSelector`. The first one a test creates is annotated
    /// as its region's default.
    pub async fn create_configuration_spec(
        &self,
        name: &str,
        mut spec: serde_json::Value,
    ) -> WorkerConfiguration {
        if spec.get("namespaceSelector").is_none() {
            spec["namespaceSelector"] = self.admits_this_namespace();
        }
        // Workers that run in another account need profiles there; those
        // tests act in that account with its role instead.
        let elsewhere =
            spec.get("backupAccount").is_some() || spec.get("productionAccount").is_some();
        let unnamed =
            spec.get("iamInstanceProfile").is_none() && spec.get("instanceProfiles").is_none();
        let profiles = if !elsewhere && unnamed {
            self.worker_profiles().await
        } else {
            None
        };
        if let Some(profiles) = profiles {
            spec["instanceProfiles"] = profiles;
        }
        let first = self.configurations.fetch_add(1, Ordering::SeqCst) == 0;
        let annotations = if first {
            serde_json::json!({DEFAULT_CONFIGURATION_ANNOTATION: "true"})
        } else {
            serde_json::json!({})
        };
        let cfg: WorkerConfiguration = serde_json::from_value(serde_json::json!({
            "apiVersion": "tender.dev/v1alpha1", "kind": "WorkerConfiguration",
            "metadata": {
                "name": self.cluster_name(name),
                "labels": {TEST_LABEL: self.namespace},
                "annotations": annotations,
            },
            "spec": spec
        }))
        .unwrap();
        self.cluster_api::<WorkerConfiguration>()
            .create(&PostParams::default(), &cfg)
            .await
            .unwrap()
    }

    /// This test's instance profiles for each worker operation (the
    /// `instanceProfiles` of a configuration), whose roles hold the shipped
    /// worker policies: in the realism layer's world, workers act with
    /// exactly those permissions. None without the layer.
    pub async fn worker_profiles(&self) -> Option<serde_json::Value> {
        if !realism::enabled() {
            return None;
        }
        let profiles = self
            .worker_roles
            .get_or_init(|| self.create_worker_roles())
            .await;
        Some(profiles.clone())
    }

    /// Creates (again: after the emulator lost everything) this test's
    /// worker roles and their instance profiles; their names by operation.
    pub async fn create_worker_roles(&self) -> serde_json::Value {
        let mut names = serde_json::Map::new();
        for (field, policy) in [
            ("backup", "backup"),
            ("restore", "restore"),
            ("fileLevelRecovery", "file-level"),
            ("retention", "retention"),
            ("verification", "verification"),
        ] {
            let name = format!("tender-{}-{policy}", self.namespace);
            realism::ensure_role(&name, &realism::worker_policy(policy)).await;
            names.insert(field.to_string(), name.into());
        }
        serde_json::Value::Object(names)
    }

    /// Creates this test's BackupRepository `name` (logical, as for
    /// configurations) for `bucket` of the emulator's own account, admitting
    /// this test's namespace; `extra` is merged into its spec. Unless
    /// `extra` names one, its integrity key is a new HMAC key of the account
    /// its `access` role acts in (the workers', which MAC with it).
    pub async fn create_repository(
        &self,
        name: &str,
        bucket: &str,
        extra: serde_json::Value,
    ) -> BackupRepository {
        let mut spec = serde_json::json!({
            "bucket": bucket,
            "region": REGION,
            "expectedBucketOwner": EMULATOR_ACCOUNT,
            "namespaceSelector": self.admits_this_namespace(),
        });
        if extra.get("integrity").is_none() {
            let role = extra.pointer("/access/roleArn").and_then(|r| r.as_str());
            spec["integrity"] = serde_json::json!({"macKeyId": hmac_key(role).await});
        }
        merge(&mut spec, extra);
        let repo: BackupRepository = serde_json::from_value(serde_json::json!({
            "apiVersion": "tender.dev/v1alpha1", "kind": "BackupRepository",
            "metadata": {"name": self.cluster_name(name), "labels": {TEST_LABEL: self.namespace}},
            "spec": spec
        }))
        .unwrap();
        self.cluster_api::<BackupRepository>()
            .create(&PostParams::default(), &repo)
            .await
            .unwrap()
    }

    /// The (cluster) name of this test's BackupRepository for
    /// [`TestEnv::bucket`], created on first use: the repository of
    /// [`TestEnv::create_job`] and [`TestEnv::create_restore`].
    pub async fn repository(&self) -> String {
        self.repository
            .get_or_init(|| async {
                let bucket = self.bucket().await;
                self.create_repository("repo", &bucket, serde_json::json!({}))
                    .await
                    .metadata
                    .name
                    .unwrap()
            })
            .await
            .clone()
    }

    /// Waits until this test's BackupRepository `name` passes `check`.
    pub async fn wait_repository<F>(
        &self,
        name: &str,
        timeout: Duration,
        check: F,
    ) -> BackupRepository
    where
        F: Fn(&BackupRepository) -> bool,
    {
        let api: Api<BackupRepository> = self.cluster_api();
        let name = self.cluster_name(name);
        let start = Instant::now();
        loop {
            let repo = api.get(&name).await.expect("get the BackupRepository");
            if check(&repo) {
                return repo;
            }
            if start.elapsed() > timeout {
                panic!(
                    "BackupRepository {name} did not reach the expected state in {timeout:?}; status: {}",
                    serde_json::to_string_pretty(&repo.status).unwrap()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `extra` of a job's spec with the names of its references
    /// (`workerConfigurationRef`, `repositoryRef`,
    /// `restoreFilesTo.repositoryRef`) made [`TestEnv::cluster_name`]s.
    pub fn with_cluster_names(&self, mut extra: serde_json::Value) -> serde_json::Value {
        for path in [
            &["workerConfigurationRef", "name"][..],
            &["repositoryRef", "name"],
            &["restoreFilesTo", "repositoryRef", "name"],
        ] {
            let mut at = Some(&mut extra);
            for key in path {
                at = at.and_then(|v| v.get_mut(*key));
            }
            if let Some(v) = at
                && let Some(name) = v.as_str()
            {
                *v = self.cluster_name(name).into();
            }
        }
        extra
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
        let api: Api<WorkerConfiguration> = self.cluster_api();
        let name = self.cluster_name(name);
        // Generous: behind the fault suite's throttling proxy the SDK's
        // adaptive retry slows every call of the configuration's checks.
        eventually(Duration::from_secs(180), || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let cfg = api.get(&name).await.ok()?;
                cfg.status.as_ref()?.queue_url.as_ref()?;
                Some(cfg)
            }
        })
        .await
    }

    /// A BackupJob of one resource (an instance, or a snapshot when the ID
    /// starts with `snap-`) into this test's repository; `extra` is merged
    /// into the spec, the names it references being logical ones
    /// ([`TestEnv::cluster_name`]).
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
        let extra = self.with_cluster_names(extra);
        let mut spec = serde_json::json!({
            "resources": [{key: resource_id, "region": REGION}],
        });
        if extra.get("repositoryRef").is_none() {
            spec["repositoryRef"] = serde_json::json!({"name": self.repository().await});
        }
        merge(&mut spec, extra);
        self.create_job_spec(name, spec).await
    }

    /// Creates the BackupJob `name` with `spec` exactly as given.
    pub async fn create_job_spec(&self, name: &str, spec: serde_json::Value) -> BackupJob {
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

    /// Creates a RestoreJob from this test's repository; `extra` is merged
    /// into its spec, the names it references being logical ones.
    pub async fn create_restore(
        &self,
        name: &str,
        mode: &str,
        restore_point: &str,
        extra: serde_json::Value,
    ) -> RestoreJob {
        let extra = self.with_cluster_names(extra);
        let mut spec = serde_json::json!({
            "mode": mode, "restorePoint": restore_point, "region": REGION,
        });
        if extra.get("repositoryRef").is_none() {
            spec["repositoryRef"] = serde_json::json!({"name": self.repository().await});
        }
        merge(&mut spec, extra);
        self.create_restore_spec(name, spec).await
    }

    /// Puts a placeholder at the manifest key of restore point `point` in
    /// this namespace's part of the test repository, for tests whose
    /// workers are played by the test (the controller checks that the
    /// restore point is there before it launches a worker; the worker would
    /// find the placeholder unreadable).
    pub async fn plant_restore_point(&self, point: &str) {
        self.repository().await;
        let bucket = self.bucket().await;
        disks::s3()
            .await
            .put_object()
            .bucket(bucket)
            .key(format!("{}/restore-points/{point}.json", self.namespace))
            .body(b"{}".to_vec().into())
            .send()
            .await
            .expect("plant a restore point");
    }

    /// Creates the RestoreJob `name` with `spec` exactly as given.
    pub async fn create_restore_spec(&self, name: &str, spec: serde_json::Value) -> RestoreJob {
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

    /// Events recorded on objects of this namespace, and on this test's
    /// cluster-scoped objects (whose events go to namespace `default`), as
    /// (reason, note).
    pub async fn events(&self) -> Vec<(String, String)> {
        let ours = format!("{}-", self.namespace);
        let mut out = Vec::new();
        for ns in [self.namespace.as_str(), "default"] {
            let about_ours = |name: Option<String>| {
                ns == self.namespace || name.is_some_and(|n| n.starts_with(&ours))
            };
            let api: Api<k8s_openapi::api::events::v1::Event> =
                Api::namespaced(self.client.clone(), ns);
            out.extend(
                api.list(&ListParams::default())
                    .await
                    .expect("list events")
                    .items
                    .into_iter()
                    .filter(|e| about_ours(e.regarding.as_ref().and_then(|r| r.name.clone())))
                    .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default())),
            );
            let core: Api<Event> = Api::namespaced(self.client.clone(), ns);
            out.extend(
                core.list(&ListParams::default())
                    .await
                    .expect("list events")
                    .items
                    .into_iter()
                    .filter(|e| about_ours(e.involved_object.name.clone()))
                    .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default())),
            );
        }
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
