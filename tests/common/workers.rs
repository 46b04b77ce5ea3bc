//! Plays EC2's part of booting workers: every instance the emulator runs
//! gets the real worker agent, fed the instance's own user data (what EC2
//! hands an instance at boot, read back with DescribeInstanceAttribute).
//!
//! The integration tests boot each agent as a `tender worker` process
//! ([`Launcher`]); the scale benchmark (`benches/scale`, which includes this
//! file) runs the agents in its own process but reads their tasks with the
//! same [`user_data_task`].

use std::collections::HashSet;
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
pub async fn user_data_task(
    ec2: &aws_sdk_ec2::Client,
    id: &str,
) -> Result<Option<WorkerTask>, aws_sdk_ec2::Error> {
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
    Ok(WorkerTask::from_user_data(
        &String::from_utf8(script).unwrap(),
    ))
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
    /// Where each agent logs (`<namespace>-worker-<instance>.log`).
    pub log_dir: PathBuf,
    pub namespace: String,
}

impl Launcher {
    /// Polls the emulator every 200 ms in a task of its own.
    pub fn start(self) {
        tokio::spawn(async move {
            let mut booted: HashSet<String> = HashSet::new();
            while !self.stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if !self.boot.load(Ordering::SeqCst) {
                    continue;
                }
                let known: Vec<Account> = self.accounts.lock().unwrap().clone();
                for account in known {
                    self.boot_running(&account, &mut booted).await;
                }
            }
        });
    }

    /// Boots the running instances of `account` not booted yet.
    async fn boot_running(&self, account: &Account, booted: &mut HashSet<String>) {
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
            if booted.contains(&id) {
                continue;
            }
            let Ok(Some(task)) = user_data_task(ec2, &id).await else {
                continue;
            };
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
            let agent = self.spawn_agent(account, &id, &task, profile);
            self.workers.lock().unwrap().push(agent);
            booted.insert(id);
        }
    }

    /// Starts the worker agent of instance `id` as a process.
    fn spawn_agent(
        &self,
        account: &Account,
        id: &str,
        task: &WorkerTask,
        profile: Option<(String, String, String)>,
    ) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(
                self.log_dir
                    .join(format!("{}-worker-{id}.log", self.namespace)),
            )
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tender"));
        cmd.args(["worker", "--instance-id", id])
            .env("TENDER_TASK", serde_json::to_string(task).unwrap())
            // A file-level recovery session listens on a free loopback
            // port, not on 443 of every interface as on EC2.
            .env("TENDER_BROWSER_ADDRESS", "127.0.0.1:0")
            .env("TENDER_ADVERTISE_HOST", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // The agent acts with its instance profile's credentials; in
        // another account (without a profile there), as that account.
        if let Some((key, secret, token)) = profile.as_ref().or(account.credentials.as_ref()) {
            cmd.env("AWS_ACCESS_KEY_ID", key)
                .env("AWS_SECRET_ACCESS_KEY", secret)
                .env("AWS_SESSION_TOKEN", token);
        }
        cmd.spawn().expect("start a worker agent")
    }
}
