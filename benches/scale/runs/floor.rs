//! The floor: the least any controller must do for N jobs. For every job:
//! create it, RunInstances (tagged like a worker), a few server-side-apply
//! status writes, TerminateInstances; nothing else.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, HttpTokensState, InstanceMetadataOptionsRequest,
    InstanceNetworkInterfaceSpecification, InstanceType, ResourceType, Tag, TagSpecification,
    VolumeType,
};
use base64::Engine;
use futures::StreamExt;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use tender::api::BackupJob;
use tender::names::tags;

use crate::system::{cpu_delta, env_cpu};
use crate::world::World;
use crate::{IMAGE_ID, REGION, concurrency, emulator};

pub struct FloorResult {
    pub wall: f64,
    pub probe_ms: Vec<f64>,
    pub env_cpu: BTreeMap<String, f64>,
    pub writes_per_job: usize,
    pub errors: usize,
    pub leftovers: usize,
}

/// What every job of the floor shares.
#[derive(Clone)]
struct FloorJobs {
    jobs: Api<BackupJob>,
    ec2: aws_sdk_ec2::Client,
    cluster_id: String,
    ns: String,
    user_data: String,
    subnet: String,
    security_group: String,
    /// Status writes per job.
    writes: usize,
}

/// The floor: for every job, create it, RunInstances (tagged like a
/// worker), `writes` server-side-apply status writes, TerminateInstances.
/// Creation runs ahead at the bench's concurrency, as in Tender's run; the
/// per-job work runs at the same concurrency.
pub async fn floor_run(w: &World, n: usize, writes: usize) -> FloorResult {
    let ns = format!("bench-floor-{}-{n}", w.tag);
    let cluster_id = format!("bench-floor-{}-{n}", w.tag);
    w.create_namespace(&ns).await;
    let jobs: Api<BackupJob> = Api::namespaced(w.client.clone(), &ns);
    let floor = FloorJobs {
        jobs: jobs.clone(),
        ec2: w.ec2.clone(),
        cluster_id: cluster_id.clone(),
        ns: ns.clone(),
        user_data: base64::engine::general_purpose::STANDARD.encode("#!/bin/sh\n".repeat(80)),
        subnet: w.subnet.clone(),
        security_group: w.security_group.clone(),
        writes,
    };
    let (tx, rx) = futures::channel::mpsc::unbounded::<(String, String)>();
    let probe_stop = Arc::new(AtomicBool::new(false));
    let probe = emulator::probe(w.ec2.clone(), probe_stop.clone());
    let cpu_start = env_cpu();
    let t0 = Instant::now();
    // No controller runs: the repository the jobs name need not exist.
    let items: Vec<BackupJob> = (0..n).map(|i| w.job(i, &ns)).collect();
    let creator = async move {
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
    };
    let worker = rx
        .map(|(name, uid)| {
            let floor = floor.clone();
            async move { floor.run_job(&name, &uid).await }
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

impl FloorJobs {
    /// One job's instance and status writes.
    async fn run_job(&self, name: &str, uid: &str) -> Result<(), String> {
        let token = format!("{uid}-1");
        let id = self.run_instance(name, uid, &token).await?;
        for step in 1..=self.writes {
            self.write_status(name, &token, &id, step).await?;
        }
        self.ec2
            .terminate_instances()
            .instance_ids(&id)
            .send()
            .await
            .map_err(|e| format!("TerminateInstances: {e:?}"))?;
        Ok(())
    }

    /// RunInstances as Tender makes it: tags, network, root volume, IMDSv2.
    async fn run_instance(&self, name: &str, uid: &str, token: &str) -> Result<String, String> {
        let owner_tags: Vec<Tag> = [
            (tags::MANAGED_BY, "tender-bench-floor"),
            (tags::CLUSTER_ID, self.cluster_id.as_str()),
            (tags::NAMESPACE, self.ns.as_str()),
            (tags::JOB_KIND, "BackupJob"),
            (tags::JOB_NAME, name),
            (tags::JOB_UID, uid),
            (tags::ATTEMPT, "1"),
            (tags::LAUNCH_TOKEN, token),
            (tags::NAME, name),
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
        let out = self
            .ec2
            .run_instances()
            .image_id(IMAGE_ID)
            .instance_type(InstanceType::M5Large)
            .min_count(1)
            .max_count(1)
            .network_interfaces(
                InstanceNetworkInterfaceSpecification::builder()
                    .device_index(0)
                    .subnet_id(&self.subnet)
                    .groups(&self.security_group)
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
            .client_token(token)
            .tag_specifications(spec(ResourceType::Instance))
            .tag_specifications(spec(ResourceType::Volume))
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_tokens(HttpTokensState::Required)
                    .build(),
            )
            .user_data(&self.user_data)
            .send()
            .await
            .map_err(|e| format!("RunInstances: {e:?}"))?;
        Ok(out.instances()[0].instance_id().unwrap().to_string())
    }

    /// Status write `step` of `self.writes`: Provisioning, Running…, Succeeded.
    async fn write_status(
        &self,
        name: &str,
        token: &str,
        id: &str,
        step: usize,
    ) -> Result<(), String> {
        let phase = if step == self.writes {
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
        self.jobs
            .patch_status(
                name,
                &PatchParams::apply("tender-bench-floor").force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(|e| format!("status write: {e}"))?;
        Ok(())
    }
}
