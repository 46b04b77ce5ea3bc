//! What every run shares: the clients, and the network, protected
//! snapshots and repository bucket of the current run.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_ec2::types::Filter;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use tender::api::{BackupJob, BackupRepository, WorkerConfiguration};
use tender::aws::AwsClients;

use crate::{BENCH_TAG, PROTECTED, REGION, concurrency, emulator};

/// What every run shares: clients; the network, the protected snapshots and the repository
/// of the current run.
pub struct World {
    pub client: Client,
    pub ec2: aws_sdk_ec2::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub log_dir: PathBuf,
    pub subnet: String,
    pub zone: String,
    pub security_group: String,
    pub protected: Vec<String>,
    /// The repository bucket of the current run.
    pub bucket: String,
    /// The repository's integrity key (a KMS HMAC key) of the current run.
    pub mac_key: String,
    /// Distinguishes this process's namespaces and cluster IDs.
    pub tag: String,
    /// Empty the emulator before every run (BENCH_RESET_EMULATOR=1: only
    /// for an emulator nobody else uses, as `scripts/bench` sets up).
    pub reset: bool,
    /// Untag finished jobs' instances during the run (see
    /// `watch::forget_finished`; only with BENCH_FORGET_TERMINATED=1).
    pub forget_terminated: bool,
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

/// Fails unless the CRDs are installed and established.
async fn require_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in [
        "backupjobs.tender.dev",
        "workerconfigurations.tender.dev",
        "backuprepositories.tender.dev",
    ] {
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
}

pub async fn aws_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .load()
        .await
}

pub async fn world() -> World {
    require_env();
    let log_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-logs");
    std::fs::create_dir_all(&log_dir).unwrap();
    let client = Client::try_default().await.expect("kube client");
    require_crds(&client).await;
    let conf = aws_config().await;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let tag = format!("{:x}", (nanos ^ u128::from(std::process::id())) % 0xff_ffff);

    World {
        client,
        ec2: aws_sdk_ec2::Client::new(&conf),
        sqs: aws_sdk_sqs::Client::new(&conf),
        log_dir,
        subnet: String::new(),
        zone: String::new(),
        security_group: String::new(),
        protected: Vec::new(),
        bucket: String::new(),
        mac_key: String::new(),
        tag,
        reset: std::env::var("BENCH_RESET_EMULATOR").is_ok_and(|v| v == "1"),
        forget_terminated: std::env::var("BENCH_FORGET_TERMINATED").is_ok_and(|v| v == "1"),
    }
}

pub fn job_name(i: usize) -> String {
    format!("job-{i:05}")
}

/// The label that makes a run's namespace, configuration and repository
/// its own: the run's controller manages only the classes that carry it
/// (`--class-selector`), whose `namespaceSelector` admits the namespace
/// that carries it. Its value is the run's namespace.
pub const RUN_LABEL: &str = "tender.dev/bench-run";

impl World {
    /// Before each run: empty the emulator (when allowed) or drop what the
    /// last run left, then a security group, the protected snapshots and a bucket.
    pub async fn prepare(&mut self) {
        if self.reset {
            emulator::reset().await;
        } else if !self.protected.is_empty() {
            self.cleanup().await;
        }
        (self.subnet, self.zone) = self.default_subnet().await;
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
        self.protected = self.protected_snapshots(&suffix).await;
        self.bucket = format!("tender-bench-{}-{suffix}", self.tag).to_lowercase();
        let conf = aws_config().await;
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&conf)
                .force_path_style(true)
                .build(),
        );
        s3.create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .expect("create the repository bucket");
        self.mac_key = crate::keys::hmac_key(&conf).await;
    }

    /// A default subnet and its zone.
    async fn default_subnet(&self) -> (String, String) {
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
        (
            s.subnet_id().unwrap().to_string(),
            s.availability_zone().unwrap().to_string(),
        )
    }

    /// The protected disks: EBS snapshots of one 512 KiB block each, written
    /// through the EBS direct APIs (the emulator serves blocks only of those).
    async fn protected_snapshots(&self, suffix: &str) -> Vec<String> {
        let aws = AwsClients::from_env().await;
        let mut protected = Vec::new();
        for i in 0..PROTECTED {
            let token = format!("bench-{}-{suffix}-{i}", self.tag);
            let id = aws
                .snapshots()
                .start_snapshot(REGION, 1, "tender bench disk", &[], &token)
                .await
                .expect("start a protected snapshot");
            let block: Vec<u8> = (0..tender::aws::ebs::BLOCK_SIZE)
                .map(|b| ((b * 31 + i * 7) % 251) as u8)
                .collect();
            aws.snapshots()
                .put_snapshot_block(REGION, &id, 0, block)
                .await
                .expect("write its block");
            aws.snapshots()
                .complete_snapshot(REGION, &id, 1)
                .await
                .expect("complete it");
            protected.push(id);
        }
        protected
    }

    pub async fn create_namespace(&self, name: &str) {
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {RUN_LABEL: name}}
        }))
        .unwrap();
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
    }

    /// Creates the run's BackupRepository (named after its namespace `ns`)
    /// for the run's bucket.
    pub async fn create_repository(&self, ns: &str) {
        let repo: BackupRepository = serde_json::from_value(serde_json::json!({
            "apiVersion": "tender.dev/v1alpha1", "kind": "BackupRepository",
            "metadata": {"name": ns, "labels": {RUN_LABEL: ns}},
            "spec": {
                "bucket": self.bucket,
                "region": REGION,
                "expectedBucketOwner": "123456789012",
                "integrity": {"macKeyId": self.mac_key},
                "namespaceSelector": {"matchLabels": {RUN_LABEL: ns}},
            }
        }))
        .unwrap();
        Api::<BackupRepository>::all(self.client.clone())
            .create(&PostParams::default(), &repo)
            .await
            .expect("create the repository");
    }

    /// Job `i` of the run in namespace `ns`, into the run's repository.
    pub fn job(&self, i: usize, ns: &str) -> BackupJob {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "tender.dev/v1alpha1", "kind": "BackupJob",
            "metadata": {"name": job_name(i)},
            "spec": {
                "resources": [{
                    "snapshotId": self.protected[i % self.protected.len()],
                    "region": REGION,
                }],
                "repositoryRef": {"name": ns},
            }
        }))
        .unwrap()
    }

    /// Instances (any state) and tags in the emulator, all owners: context
    /// for the emulator's speed, which degrades with both.
    pub async fn moto_size(&self) -> (usize, usize) {
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
    pub async fn terminate_leftovers(&self, cluster_id: &str) -> usize {
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
    pub async fn forget_tags(&self, key: &str, value: &str) -> usize {
        emulator::forget_tagged(&self.ec2, key, &[value.to_string()]).await
    }

    /// Removes the finalizers of a namespace's jobs and of the run's
    /// configuration (no controller runs any more), deletes them, the run's
    /// repository and the namespace.
    pub async fn clear_namespace(&self, ns: &str) {
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
        // The run's classes are cluster-scoped, and carry its label.
        let of_run = ListParams::default().labels(&format!("{RUN_LABEL}={ns}"));
        let configs: Api<WorkerConfiguration> = Api::all(self.client.clone());
        if let Ok(list) = configs.list_metadata(&of_run).await {
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
            .delete_collection(&DeleteParams::default(), &of_run)
            .await;
        let _ = Api::<BackupRepository>::all(self.client.clone())
            .delete_collection(&DeleteParams::default(), &of_run)
            .await;
        // Stays Terminating here: no namespace controller runs.
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(ns, &DeleteParams::default())
            .await;
    }

    pub async fn cleanup(&self) {
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
