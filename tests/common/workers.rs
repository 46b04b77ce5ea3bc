//! Plays EC2's part of booting workers: every instance the emulator runs
//! runs its own user data (what EC2 hands an instance at boot, read back
//! with DescribeInstanceAttribute), which downloads, checks and starts the
//! real worker agent.
//!
//! The integration tests boot each instance this way ([`Launcher`]); the
//! scale benchmark (`benches/scale`, which includes this file) runs the
//! agents in its own process, reading their tasks with [`user_data_task`]:
//! it measures orchestration, not boot.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, InstanceAttributeName};
use base64::Engine;
use tender::messages::WorkerTask;

/// An emulated account whose workers the launcher boots, with the
/// credentials its agents get (none: the environment's).
#[derive(Clone)]
pub struct Account {
    pub ec2: aws_sdk_ec2::Client,
    pub credentials: Option<(String, String, String)>,
}

/// The worker task in instance `id`'s user data: `Err` when the emulator
/// did not answer (the caller may ask again), `Ok(None)` when the user data
/// holds no task (not a Tender worker).
#[allow(dead_code)]
pub async fn user_data_task(
    ec2: &aws_sdk_ec2::Client,
    id: &str,
) -> Result<Option<WorkerTask>, aws_sdk_ec2::Error> {
    Ok(user_data(ec2, id)
        .await?
        .and_then(|script| WorkerTask::from_user_data(&script)))
}

/// Instance `id`'s user data, as EC2 hands it to the instance.
pub async fn user_data(
    ec2: &aws_sdk_ec2::Client,
    id: &str,
) -> Result<Option<String>, aws_sdk_ec2::Error> {
    let attr = ec2
        .describe_instance_attribute()
        .instance_id(id)
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await?;
    let Some(data) = attr.user_data().and_then(|u| u.value()) else {
        return Ok(None);
    };
    // EC2 hands back what it was given: anything else is a broken emulator.
    let script = base64::engine::general_purpose::STANDARD
        .decode(data)
        .unwrap();
    Ok(Some(String::from_utf8(script).unwrap()))
}

/// Boots a `tender worker` process for every running instance of a
/// cluster, in every account it is told about, until stopped.
pub struct Launcher {
    /// Accounts whose workers it boots (tests add some as they go).
    pub accounts: Arc<Mutex<Vec<Account>>>,
    pub cluster_id: String,
    /// The agents it started, for the test to stop.
    pub workers: Arc<Mutex<Vec<Child>>>,
    pub stop: Arc<AtomicBool>,
    /// When false, instances are left without an agent.
    pub boot: Arc<AtomicBool>,
    /// When false, instances boot without a network: only the metadata
    /// service answers them (no S3, no SQS).
    pub online: Arc<AtomicBool>,
    /// Where each agent logs (`<namespace>-worker-<instance>.log`).
    pub log_dir: PathBuf,
    pub namespace: String,
}

impl Launcher {
    /// Polls the emulator every 200 ms in a task of its own.
    pub fn start(self) {
        tokio::spawn(async move {
            let mut booted: HashMap<String, Option<u32>> = HashMap::new();
            while !self.stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let known: Vec<Account> = self.accounts.lock().unwrap().clone();
                for account in &known {
                    self.halt_stopped(account, &mut booted).await;
                }
                if !self.boot.load(Ordering::SeqCst) {
                    continue;
                }
                for account in &known {
                    self.boot_running(account, &mut booted).await;
                }
            }
        });
    }

    /// Kills the agents of instances EC2 is stopping or terminating, as
    /// EC2 does: what ran on them stops with them.
    async fn halt_stopped(&self, account: &Account, booted: &mut HashMap<String, Option<u32>>) {
        if booted.values().all(Option::is_none) {
            return;
        }
        let Ok(out) = account
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
                    .name("instance-state-name")
                    .values("shutting-down")
                    .values("terminated")
                    .values("stopping")
                    .values("stopped")
                    .build(),
            )
            .send()
            .await
        else {
            return;
        };
        for instance in out.reservations().iter().flat_map(|r| r.instances()) {
            let id = instance.instance_id().unwrap_or_default();
            if let Some(pid) = booted.get_mut(id).and_then(Option::take) {
                // The namespace's first process: the whole instance goes
                // with it (`unshare --kill-child`).
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }

    /// Boots the running instances of `account` not booted yet.
    async fn boot_running(&self, account: &Account, booted: &mut HashMap<String, Option<u32>>) {
        let ec2 = &account.ec2;
        let Ok(out) = ec2
            .describe_instances()
            .filters(
                Filter::builder()
                    .name("tag:tender.dev/cluster-id")
                    .values(&self.cluster_id)
                    .build(),
            )
            .filters(
                Filter::builder()
                    .name("instance-state-name")
                    .values("running")
                    .build(),
            )
            .send()
            .await
        else {
            return;
        };
        for instance in out.reservations().iter().flat_map(|r| r.instances()) {
            let id = instance.instance_id().unwrap_or_default().to_string();
            if booted.contains_key(&id) {
                continue;
            }
            let Ok(Some(script)) = user_data(ec2, &id).await else {
                continue;
            };
            if WorkerTask::from_user_data(&script).is_none() {
                continue;
            }
            let profile = match &account.credentials {
                // EC2 gives an instance its profile's role session.
                None => {
                    super::realism::instance_credentials(
                        super::realism::ACCOUNT,
                        super::realism::REGION,
                        &id,
                    )
                    .await
                }
                Some(_) => None,
            };
            // An instance with a profile never runs as the environment's
            // administrator: without its session yet, it is booted at a
            // later poll.
            if profile.is_none()
                && account.credentials.is_none()
                && instance.iam_instance_profile().is_some()
                && super::realism::enabled()
            {
                continue;
            }
            let agent = self.spawn_agent(account, &id, &script, profile);
            let pid = agent.id();
            self.workers.lock().unwrap().push(agent);
            booted.insert(id, Some(pid));
        }
    }

    /// Boots instance `id` as EC2 would: its user data runs (as root, in
    /// a mount namespace of its own with private `/run` and `/var/lib`,
    /// so nothing of the host is touched and no systemd is found), with
    /// IMDSv2 served by AWS's metadata mock, which hands out the instance
    /// ID and `profile` as the instance role's credentials. What the
    /// script prints is the instance's console (GetConsoleOutput answers
    /// it); the agent it starts logs there too. The whole namespace dies
    /// with the returned process.
    fn spawn_agent(
        &self,
        account: &Account,
        id: &str,
        script: &str,
        profile: Option<(String, String, String)>,
    ) -> Child {
        let console = console_path(id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&console)
            .unwrap();
        // Where the tests' own logs are read from.
        let _ = std::os::unix::fs::symlink(
            &console,
            self.log_dir
                .join(format!("{}-worker-{id}.log", self.namespace)),
        );
        let dir = self.log_dir.join(format!("boot-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let user_data = dir.join("user-data");
        std::fs::write(&user_data, script).unwrap();
        // Its role's session, else (an instance without a profile, which a
        // test world without IAM launches) the environment's own key.
        let fallback = (
            std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_default(),
            std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_default(),
            std::env::var("AWS_SESSION_TOKEN").unwrap_or_else(|_| "none".into()),
        );
        let credentials = profile
            .as_ref()
            .or(account.credentials.as_ref())
            .or(Some(&fallback));
        let metadata = dir.join("metadata.json");
        std::fs::write(&metadata, metadata_config(id, credentials).to_string()).unwrap();
        let online = self.online.load(Ordering::SeqCst);
        let port = free_port();
        // The metadata service and the script share the namespace; without
        // a network, only its loopback (and so only the metadata service).
        let boot = format!(
            "set -e\n\
             mount -t tmpfs -o mode=0755 tmpfs /run\n\
             mount -t tmpfs -o mode=0755 tmpfs /var/lib\n\
             {lo}\
             \"$TENDER_METADATA_MOCK\" -c {metadata} -I -n 127.0.0.1 -p {port} >{dir}/metadata.log 2>&1 &\n\
             MOCK=$!\n\
             for i in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:{port}/ && break; sleep 0.1; done\n\
             export AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:{port}\n\
             rc=0; sh {user_data} || rc=$?\n\
             kill $MOCK\n\
             exit $rc\n",
            lo = if online { "" } else { "ip link set lo up\n" },
            metadata = metadata.display(),
            dir = dir.display(),
            user_data = user_data.display(),
        );
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--kill-child",
        ]);
        if !online {
            cmd.arg("--net");
        }
        cmd.args(["sh", "-c", &boot]);
        // What an instance has: no credentials of the test's (its role's
        // come from the metadata service), the emulator's address as its
        // AWS endpoints (the tests' DNS), and the file-level browser on a
        // free loopback port, not on 443 of every interface as on EC2.
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TENDER_METADATA_MOCK", metadata_mock())
            .env("TENDER_BROWSER_ADDRESS", "127.0.0.1:0")
            .env("TENDER_ADVERTISE_HOST", "127.0.0.1")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        for (k, v) in std::env::vars() {
            if k.starts_with("AWS_ENDPOINT_URL") {
                cmd.env(k, v);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("boot a worker instance")
    }
}

/// Where the test world keeps instance `id`'s console output (the realism
/// layer's GetConsoleOutput reads it there).
pub fn console_path(id: &str) -> PathBuf {
    let dir = PathBuf::from(std::env::var("TENDER_TESTENV").expect("scripts/testenv env"))
        .join("console");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(id)
}

/// AWS's EC2 metadata mock, built by scripts/testenv.
fn metadata_mock() -> String {
    std::env::var("TENDER_METADATA_MOCK").expect("scripts/testenv env: TENDER_METADATA_MOCK")
}

/// The metadata mock's configuration for instance `id`: its ID, and its
/// role's credentials when it has a role.
fn metadata_config(id: &str, credentials: Option<&(String, String, String)>) -> serde_json::Value {
    let mut values = serde_json::json!({
        "instance-id": id,
        "placement-region": super::realism::REGION,
    });
    if let Some((key, secret, token)) = credentials {
        let expires =
            k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_hours(6);
        values["iam-security-credentials-role"] = "tender-worker".into();
        values["iam-security-credentials"] = serde_json::json!({
            "Code": "Success",
            "LastUpdated": k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            "Type": "AWS-HMAC",
            "AccessKeyId": key,
            "SecretAccessKey": secret,
            "Token": token,
            "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        });
    }
    serde_json::json!({"metadata": {"values": values}})
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The agents directory the tests' controllers publish from: this test
/// build of `tender` for this machine's architecture, stripped and
/// compressed as `scripts/build-agents` packs a release (gzip, no name or
/// time), made once per build; or `TENDER_TEST_AGENTS_DIR`, to boot the
/// workers with other agents (the static release ones of
/// `scripts/build-agents`).
pub fn agents_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(dir) = std::env::var("TENDER_TEST_AGENTS_DIR") {
            return PathBuf::from(dir);
        }
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_tender"));
        let meta = std::fs::metadata(&bin).unwrap();
        let modified = meta
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("agents")
            .join(format!("{}-{}", meta.len(), modified.as_nanos()));
        let arch = match std::env::consts::ARCH {
            "aarch64" => "arm64",
            other => other,
        };
        let out = dir.join(format!("tender-worker-{arch}.gz"));
        if !out.exists() {
            std::fs::create_dir_all(&dir).unwrap();
            let stripped = dir.join(format!("tender.{}", std::process::id()));
            let strip = Command::new("strip")
                .arg("-o")
                .arg(&stripped)
                .arg(&bin)
                .status();
            if !strip.is_ok_and(|s| s.success()) {
                std::fs::copy(&bin, &stripped).unwrap();
            }
            let packed = dir.join(format!("agent.{}.gz", std::process::id()));
            let gz = Command::new("gzip")
                .args(["-1", "-n", "-c"])
                .arg(&stripped)
                .stdout(std::fs::File::create(&packed).unwrap())
                .status()
                .unwrap();
            assert!(gz.success(), "gzip the test agent");
            std::fs::remove_file(&stripped).unwrap();
            std::fs::rename(&packed, &out).unwrap();
        }
        dir
    })
    .clone()
}
