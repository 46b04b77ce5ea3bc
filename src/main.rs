use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use std::time::Duration;
use tender::aws::AwsClients;

use tender::controller::garbage_collector::SweepConfig;
use tender::controller::leader::ElectionConfig;
use tender::controller::{self, Options};
use tender::messages::WorkerTask;
use tender::{api, telemetry, worker};

/// Tender runs short-lived EC2 worker instances for backup and restore,
/// driven by Kubernetes custom resources.
#[derive(Parser)]
#[command(name = "tender", version)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        value_enum,
        default_value = "text",
        global = true,
        env = "TENDER_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

// Parsed once, at startup: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the controller against the cluster of the current kubeconfig (or
    /// the in-cluster service account).
    Controller {
        /// ID that tags every AWS resource this controller creates (default:
        /// the UID of namespace kube-system).
        #[arg(long, env = "TENDER_CLUSTER_ID")]
        cluster_id: Option<String>,
        /// Watch only this namespace (default: all namespaces).
        #[arg(long, env = "TENDER_NAMESPACE")]
        namespace: Option<String>,
        /// Manage only the WorkerConfigurations and BackupRepositories whose
        /// labels match this selector, such as `tender.dev/install=canary`
        /// (default: all), to run a second Tender beside the first.
        #[arg(long, env = "TENDER_CLASS_SELECTOR")]
        class_selector: Option<String>,
        /// Seconds between worker heartbeats.
        #[arg(long, default_value_t = 30, env = "TENDER_HEARTBEAT_SECONDS")]
        heartbeat_seconds: u64,
        /// Address that serves /metrics, /healthz and /readyz (no
        /// authentication: loopback unless you choose otherwise; the chart
        /// listens on the pod's address for its Service and probes).
        #[arg(long, default_value = "127.0.0.1:8080", env = "TENDER_METRICS_ADDRESS")]
        metrics_address: String,
        /// Run only while holding the Lease, so several replicas can run.
        #[arg(long, env = "TENDER_LEADER_ELECT")]
        leader_elect: bool,
        /// Namespace of the Lease (default: POD_NAMESPACE, else --namespace, else `default`).
        #[arg(long, env = "TENDER_LEADER_ELECTION_NAMESPACE")]
        leader_election_namespace: Option<String>,
        /// Name of the Lease.
        #[arg(long, default_value = "tender-controller")]
        leader_election_lease: String,
        /// Seconds a Lease stays valid without renewal.
        #[arg(long, default_value_t = 15)]
        leader_election_lease_seconds: u64,
        /// Seconds between Lease renewals.
        #[arg(long, default_value_t = 5)]
        leader_election_renew_seconds: u64,
        /// Seconds between checks of each configuration's subnets, VPC
        /// endpoints and instance type offerings.
        #[arg(long, default_value_t = 300, env = "TENDER_NETWORK_RECHECK_SECONDS")]
        network_recheck_seconds: u64,
        /// Seconds between counts of each BackupRepository's restore points
        /// and bytes (a listing: one S3 call per 1 000 objects).
        #[arg(long, default_value_t = 3600, env = "TENDER_REPOSITORY_COUNT_SECONDS")]
        repository_count_seconds: u64,
        /// Seconds a chunk that retention found unreferenced stays before
        /// it may be deleted: longer than any backup may run (backups that
        /// run longer fail rather than risk a chunk). At least 86400 (a
        /// day); only test builds (feature `fault-injection`) take less.
        #[arg(long, default_value_t = 86_400, env = "TENDER_GC_GRACE_SECONDS")]
        gc_grace_seconds: u64,
        #[command(flatten)]
        sweep: SweepFlags,
        /// Seconds a restore waits, after its worker completed, for EBS to
        /// seal the restored snapshots (and for its AMI to become
        /// available) before it fails with RestoredSnapshotTimedOut.
        #[arg(
            long,
            default_value_t = 21600,
            env = "TENDER_RESTORED_SNAPSHOT_TIMEOUT_SECONDS"
        )]
        restored_snapshot_timeout_seconds: u64,
        /// Accept a worker message only when SQS names the worker instance
        /// itself as its sender (SenderId `<role ID>:<instance ID>`). Set it
        /// to false only against an AWS emulator, which names one fixed
        /// sender for every message.
        #[arg(long, env = "TENDER_REQUIRE_WORKER_SENDER", default_value_t = true, action = clap::ArgAction::Set)]
        require_worker_sender: bool,
        /// Hosts (comma-separated) a file-level recovery session URL may
        /// name besides the worker instance's own addresses, for agents that
        /// run outside EC2 (tests, the demo: 127.0.0.1). Leave empty on AWS.
        #[arg(long, env = "TENDER_TRUSTED_BROWSER_HOSTS", value_delimiter = ',')]
        trusted_browser_hosts: Vec<String>,
        /// Directory of the worker agents the controller publishes to the
        /// repository and workers download at boot
        /// (`tender-worker-x86_64.gz`, `tender-worker-arm64.gz`; the
        /// controller image carries both).
        #[arg(
            long,
            env = "TENDER_AGENTS_DIR",
            default_value = "/usr/lib/tender/agents"
        )]
        agents_dir: std::path::PathBuf,
    },
    /// Print the CustomResourceDefinitions as YAML, or write one file per
    /// CRD into a folder.
    Crd {
        /// Write `<name>.yaml` files into this folder instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Check an AWS account before the first job, the way a user would:
    /// credentials, region, roles, subnets and their routes, security
    /// groups, the AMI, instance types, the repository buckets, and what the
    /// policies allow. Reads the WorkerConfigurations and BackupRepositories
    /// from the cluster of the current kubeconfig; prints one line per check
    /// and exits non-zero when one fails.
    Doctor {
        /// Check only these WorkerConfigurations (default: all).
        #[arg(long = "configuration")]
        configurations: Vec<String>,
        /// Check only these BackupRepositories (default: all).
        #[arg(long = "repository")]
        repositories: Vec<String>,
    },
    /// Run the worker agent (on a worker instance, or locally in tests).
    Worker {
        /// The task as JSON (what the controller puts in the user data).
        #[arg(long, env = "TENDER_TASK", conflicts_with = "task_file")]
        task: Option<String>,
        /// A file holding the task as JSON.
        #[arg(long)]
        task_file: Option<PathBuf>,
        /// The EC2 instance ID of this worker.
        #[arg(long, env = "TENDER_INSTANCE_ID")]
        instance_id: String,
    },
}

/// The garbage collector's flags.
#[derive(clap::Args, Debug)]
struct SweepFlags {
    /// Seconds between garbage-collection sweeps.
    #[arg(long, default_value_t = 60, env = "TENDER_SWEEP_INTERVAL_SECONDS")]
    sweep_interval_seconds: u64,
    /// Seconds an orphaned worker must have existed before the sweep terminates it.
    #[arg(long, default_value_t = 120, env = "TENDER_SWEEP_GRACE_SECONDS")]
    sweep_grace_seconds: u64,
    /// Seconds an orphaned intermediate snapshot (what a restore wrote
    /// on the way, tagged `tender.dev/intermediate`) must have existed,
    /// and been owned by no job, before the sweep deletes it; also how
    /// long a staging folder of a restore to the original location whose
    /// job is gone or finished must have been unchanged.
    #[arg(
        long,
        default_value_t = 3600,
        env = "TENDER_INTERMEDIATE_GRACE_SECONDS"
    )]
    intermediate_grace_seconds: u64,
}

impl SweepFlags {
    fn config(&self) -> SweepConfig {
        SweepConfig {
            interval: Duration::from_secs(self.sweep_interval_seconds.max(1)),
            grace: Duration::from_secs(self.sweep_grace_seconds),
            intermediate_grace: Duration::from_secs(self.intermediate_grace_seconds),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // kube and the AWS SDK both bring rustls; pick one crypto provider for
    // the process, or the first TLS connection panics.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    telemetry::init(matches!(cli.log_format, LogFormat::Json));
    match cli.command {
        Command::Crd { out_dir } => print_crds(out_dir),
        Command::Controller {
            cluster_id,
            namespace,
            class_selector,
            heartbeat_seconds,
            metrics_address,
            leader_elect,
            leader_election_namespace,
            leader_election_lease,
            leader_election_lease_seconds,
            leader_election_renew_seconds,
            sweep,
            restored_snapshot_timeout_seconds,
            network_recheck_seconds,
            repository_count_seconds,
            gc_grace_seconds,
            require_worker_sender,
            trusted_browser_hosts,
            agents_dir,
        } => {
            let election = leader_elect.then(|| ElectionConfig {
                namespace: leader_election_namespace
                    .or_else(|| std::env::var("POD_NAMESPACE").ok())
                    .or_else(|| namespace.clone())
                    .unwrap_or_else(|| "default".into()),
                lease_name: leader_election_lease,
                identity: std::env::var("POD_NAME")
                    .unwrap_or_else(|_| format!("{}-{}", hostname(), std::process::id())),
                lease_duration: Duration::from_secs(leader_election_lease_seconds.max(1)),
                renew_period: Duration::from_secs(leader_election_renew_seconds.max(1)),
            });
            let options = Options {
                cluster_id,
                namespace,
                class_selector,
                heartbeat_seconds,
                network_recheck: Duration::from_secs(network_recheck_seconds.max(1)),
                repository_count: Duration::from_secs(repository_count_seconds.max(1)),
                gc_grace: controller::gc_grace(gc_grace_seconds),
                metrics_address,
                election,
                sweep: sweep.config(),
                restored_snapshot_timeout: Duration::from_secs(
                    restored_snapshot_timeout_seconds.max(1),
                ),
                require_worker_sender,
                trusted_browser_hosts,
                agents_dir,
            };
            run_async(async move { controller::run(options).await })
        }
        Command::Doctor {
            configurations,
            repositories,
        } => doctor(configurations, repositories),
        Command::Worker {
            task,
            task_file,
            instance_id,
        } => run_async(async move {
            let json = match (task, task_file) {
                (Some(json), _) => json,
                (None, Some(path)) => std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read the task file {}: {e}", path.display()))?,
                (None, None) => {
                    return Err("give the task with --task, --task-file or TENDER_TASK".into());
                }
            };
            let task: WorkerTask =
                serde_json::from_str(&json).map_err(|e| format!("the task is not valid: {e}"))?;
            let aws = AwsClients::from_env().await;
            // The agent process works as one profile: test builds refuse
            // any call the operation table does not give it (declared here,
            // not in `worker::run`, which tests also call in-process).
            tender::aws::operation::declare_worker_profile(task.profile());
            worker::run(aws, task, instance_id).await?;
            Ok(())
        }),
    }
}

fn doctor(configurations: Vec<String>, repositories: Vec<String>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let (configs, repos) = match read_classes(&configurations, &repositories).await {
            Ok(found) => found,
            Err(e) => {
                eprintln!("fail cluster: {e}; point KUBECONFIG at the cluster Tender runs in");
                return ExitCode::FAILURE;
            }
        };
        let aws = AwsClients::from_env().await;
        let report = tender::doctor::run(&aws, &configs, &repos).await;
        for check in &report.checks {
            println!("{check}");
        }
        if report.failed() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    })
}

/// The WorkerConfigurations and BackupRepositories to check: those named,
/// else all; a name that does not exist is an error.
async fn read_classes(
    configurations: &[String],
    repositories: &[String],
) -> Result<(Vec<api::WorkerConfiguration>, Vec<api::BackupRepository>), String> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("cannot reach the cluster: {e}"))?;
    let configs: kube::Api<api::WorkerConfiguration> = kube::Api::all(client.clone());
    let repos: kube::Api<api::BackupRepository> = kube::Api::all(client);
    Ok((
        pick(&configs, configurations).await?,
        pick(&repos, repositories).await?,
    ))
}

async fn pick<K>(api: &kube::Api<K>, names: &[String]) -> Result<Vec<K>, String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if names.is_empty() {
        let all = api
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        return Ok(all.items);
    }
    let mut out = Vec::new();
    for name in names {
        match api.get_opt(name).await.map_err(|e| e.to_string())? {
            Some(found) => out.push(found),
            None => return Err(format!("{name} does not exist")),
        }
    }
    Ok(out)
}

fn print_crds(out_dir: Option<PathBuf>) -> ExitCode {
    let docs = match api::crd_documents() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: cannot render the CRDs: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (file, yaml) in docs {
        match &out_dir {
            Some(dir) => {
                if let Err(e) = std::fs::write(dir.join(&file), yaml) {
                    eprintln!("error: cannot write {}: {e}", dir.join(&file).display());
                    return ExitCode::FAILURE;
                }
            }
            None => print!("---\n{yaml}"),
        }
    }
    ExitCode::SUCCESS
}

fn run_async<F>(fut: F) -> ExitCode
where
    F: std::future::Future<Output = controller::anyhow_like::Result>,
{
    // A reconcile's futures nest deep (job lifecycle, kind, AWS calls):
    // 8 MiB stacks instead of 2 leave room in unoptimized builds too.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(8 << 20)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "tender".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/metrics` answers without authentication: by default only on
    /// loopback, and the worker sender check is on.
    #[test]
    fn the_controller_defaults_are_the_safe_ones() {
        // The defaults, as the parser gives them with none of these set.
        for var in ["TENDER_METRICS_ADDRESS", "TENDER_REQUIRE_WORKER_SENDER"] {
            assert!(std::env::var_os(var).is_none(), "{var} is set");
        }
        let cli = Cli::try_parse_from(["tender", "controller"]).expect("parses");
        let Command::Controller {
            metrics_address,
            require_worker_sender,
            ..
        } = cli.command
        else {
            panic!("not the controller command");
        };
        assert_eq!(metrics_address, "127.0.0.1:8080");
        assert!(require_worker_sender);
    }
}
