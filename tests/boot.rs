//! Workers boot a stock image: the user data downloads the agent the
//! controller published, checks its SHA-256 and starts it; a worker that
//! does not start in time is reported with its console.
//!
//! The instances run their real user data (tests/common/workers.rs): IMDSv2
//! from AWS's metadata mock, the agent through its presigned URL from the
//! emulator's S3.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumMode;
use base64::Engine;
use common::{TestEnv, condition};
use kube::ResourceExt;
use tender::api::{Phase, WorkerConfiguration};

const TIMEOUT: Duration = Duration::from_secs(120);
const AL2023_X86: &str = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64";
const AL2023_ARM: &str = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64";

async fn ssm_parameter(name: &str) -> String {
    let conf = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    aws_sdk_ssm::Client::new(&conf)
        .get_parameter()
        .name(name)
        .send()
        .await
        .unwrap()
        .parameter()
        .unwrap()
        .value()
        .unwrap()
        .to_string()
}

async fn s3() -> aws_sdk_s3::Client {
    common::disks::s3().await
}

/// The agent objects in `bucket`, with their sizes.
async fn agent_objects(bucket: &str) -> Vec<(String, i64)> {
    let out = s3()
        .await
        .list_objects_v2()
        .bucket(bucket)
        .prefix(".tender-agents/sha256/")
        .send()
        .await
        .unwrap();
    out.contents()
        .iter()
        .map(|o| (o.key().unwrap().to_string(), o.size().unwrap_or_default()))
        .collect()
}

async fn console(env: &TestEnv, instance: &str) -> String {
    let out = env
        .ec2
        .get_console_output()
        .instance_id(instance)
        .latest(true)
        .send()
        .await
        .unwrap();
    let text = base64::engine::general_purpose::STANDARD
        .decode(out.output().unwrap_or_default())
        .unwrap();
    String::from_utf8_lossy(&text).into_owned()
}

#[tokio::test]
async fn a_worker_boots_a_stock_image_with_the_agent_it_downloads() {
    let env = TestEnv::new("boot").await;
    let net = env.network().await;
    let protected = env.protected_disk().await;
    env.create_configuration("default", &net, serde_json::json!({}))
        .await;
    let cfg = env.wait_configuration_ready("default").await;
    // No image in the spec: the region's current Amazon Linux 2023.
    let al2023 = ssm_parameter(AL2023_X86).await;
    assert_eq!(
        cfg.status.unwrap().image_id.as_deref(),
        Some(al2023.as_str())
    );

    let started = Instant::now();
    let job = env
        .create_job("first", &protected, serde_json::json!({}))
        .await;
    let job = env
        .wait_job_phase(&job.name_any(), TIMEOUT, Phase::Succeeded)
        .await;
    let worker = &job.status.as_ref().unwrap().workers[0];
    let instance = worker.instance_id.clone().unwrap();

    // EC2's side: the instance booted that image.
    let described = common::describe_instance(&env.ec2, &instance).await;
    assert_eq!(described.image_id(), Some(al2023.as_str()));

    // S3's side: one agent, content-addressed, with the SHA-256 S3 computed
    // from what it received.
    let bucket = env.bucket().await;
    let objects = agent_objects(&bucket).await;
    assert_eq!(objects.len(), 1, "{objects:?}");
    let (key, size) = &objects[0];
    let digest = key
        .trim_start_matches(".tender-agents/sha256/")
        .trim_end_matches(".gz");
    let head = s3()
        .await
        .head_object()
        .bucket(&bucket)
        .key(key)
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    let held = base64::engine::general_purpose::STANDARD
        .decode(head.checksum_sha256().expect("published with its SHA-256"))
        .unwrap();
    assert_eq!(hex::encode(held), digest);
    // The tests' agent is a debug build (25.4 MiB gzipped on 2026-12-02);
    // the release agents of scripts/build-agents are some 15 MiB.
    assert!(
        *size < 32 * 1024 * 1024,
        "the agent download is {size} bytes"
    );

    // The instance's console: the download and the digest check.
    let text = console(&env, &instance).await;
    assert!(
        text.contains(&format!("downloading the worker agent (SHA-256 {digest})"))
            && text.contains("tender-boot: SHA-256 verified")
            && text.contains("running the agent as UID 65532"),
        "{text}"
    );

    // What booting cost: RunInstances to `started`, and the bytes fetched.
    let launched = worker.launch_time.as_ref().unwrap().0;
    let reported = worker.started_time.as_ref().unwrap().0;
    println!(
        "boot: RunInstances -> started {:.1} s (job created -> succeeded {:.1} s); agent download {:.1} MiB",
        reported.duration_since(launched).as_secs_f64(),
        started.elapsed().as_secs_f64(),
        *size as f64 / 1048576.0
    );

    // A second job reuses the published agent: nothing is uploaded again.
    let before = head.last_modified().cloned();
    env.create_job("second", &protected, serde_json::json!({}))
        .await;
    env.wait_job_phase("second", TIMEOUT, Phase::Succeeded)
        .await;
    let again = s3()
        .await
        .head_object()
        .bucket(&bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    assert_eq!(again.last_modified().cloned(), before, "published once");
}

#[tokio::test]
async fn a_tampered_agent_is_refused_and_published_again() {
    let env = TestEnv::new("tamper").await;
    let net = env.network().await;
    let protected = env.protected_disk().await;
    env.create_configuration(
        "default",
        &net,
        serde_json::json!({"bootTimeoutSeconds": 15}),
    )
    .await;
    env.wait_configuration_ready("default").await;
    env.create_job("first", &protected, serde_json::json!({}))
        .await;
    env.wait_job_phase("first", TIMEOUT, Phase::Succeeded).await;

    // Someone with write access to the bucket replaces the agent.
    let bucket = env.bucket().await;
    let (key, _) = agent_objects(&bucket).await.remove(0);
    let evil = b"#!/bin/sh\necho owned\n".to_vec();
    s3().await
        .put_object()
        .bucket(&bucket)
        .key(&key)
        .body(ByteStream::from(evil.clone()))
        .send()
        .await
        .unwrap();

    let job = env
        .create_job("second", &protected, serde_json::json!({"backoffLimit": 1}))
        .await;
    let job = env
        .wait_job_phase(&job.name_any(), TIMEOUT, Phase::Succeeded)
        .await;
    let worker = &job.status.as_ref().unwrap().workers[0];
    // The first attempt refused what it downloaded and never ran it; the
    // retry got the agent published again.
    assert_eq!((worker.attempt, worker.failures), (2, 1), "{worker:?}");
    let events = env.events().await;
    let refused = events
        .iter()
        .find(|(reason, _)| reason == "WorkerBootTimeout")
        .unwrap_or_else(|| panic!("no WorkerBootTimeout event: {events:?}"));
    assert!(
        refused.1.contains("digest mismatch") && refused.1.contains("refusing to run it"),
        "{refused:?}"
    );
    let body = s3()
        .await
        .get_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_ne!(
        body.as_ref(),
        evil.as_slice(),
        "the agent is published again"
    );
}

#[tokio::test]
async fn a_worker_that_cannot_download_its_agent_is_reported_with_its_console() {
    let env = TestEnv::new("nodownload").await;
    let net = env.network().await;
    let protected = env.protected_disk().await;
    env.create_configuration(
        "default",
        &net,
        serde_json::json!({"bootTimeoutSeconds": 15}),
    )
    .await;
    env.wait_configuration_ready("default").await;
    // The instance has a metadata service and nothing else: no S3.
    env.workers_online.store(false, Ordering::SeqCst);
    let job = env
        .create_job(
            "offline",
            &protected,
            serde_json::json!({"backoffLimit": 0}),
        )
        .await;
    let job = env
        .wait_job_phase(&job.name_any(), TIMEOUT, Phase::Failed)
        .await;
    let worker = &job.status.as_ref().unwrap().workers[0];
    assert_eq!(
        worker.reason.as_deref(),
        Some("WorkerBootTimeout"),
        "{worker:?}"
    );
    let message = worker.message.as_deref().unwrap();
    assert!(
        message.contains("bootTimeoutSeconds is 15")
            && message.contains("its console ends:")
            && message.contains("cannot download the worker agent")
            && message.contains("check that the workers' subnets route to S3"),
        "{message}"
    );
    // Its instance is terminated, and the configuration says its network
    // let a worker down.
    let instances = env.workers_of(&job.uid().unwrap()).await;
    instances.iter().for_each(common::assert_terminating);
    let failed = condition(&job, "Failed").unwrap();
    assert_eq!(failed.status, "True");
}

#[tokio::test]
async fn arm64_workers_get_graviton_and_wait_for_an_agent_of_their_own() {
    let env = TestEnv::new("arm64").await;
    let net = env.network().await;
    let protected = env.protected_disk().await;
    // No instance types: Tender's defaults, the Graviton ones.
    env.create_configuration(
        "default",
        &net,
        serde_json::json!({"architecture": "arm64", "instanceTypes": null}),
    )
    .await;
    let cfg: WorkerConfiguration = env.wait_configuration_ready("default").await;
    let status = cfg.status.unwrap();
    assert_eq!(
        status.image_id.as_deref(),
        Some(ssm_parameter(AL2023_ARM).await.as_str())
    );
    let offered = status
        .conditions
        .iter()
        .find(|c| c.type_ == "InstanceTypesOffered")
        .unwrap();
    assert_eq!(offered.status, "True", "{offered:?}");

    // These tests' controller carries only this machine's x86_64 agent,
    // and the stock image has none: nothing is launched, and people are
    // told why.
    let job = env
        .create_job("graviton", &protected, serde_json::json!({}))
        .await;
    let job = env
        .wait_job(&job.name_any(), TIMEOUT, |j| {
            condition(j, "Ready").is_some_and(|c| c.reason == "AgentUnavailable")
        })
        .await;
    let ready = condition(&job, "Ready").unwrap();
    assert!(
        ready.message.contains("no arm64 worker agent")
            && ready.message.contains("tender-worker-arm64.gz"),
        "{}",
        ready.message
    );
    let worker = &job.status.as_ref().unwrap().workers[0];
    assert_eq!(worker.phase, Phase::Provisioning);
    assert_eq!(worker.instance_id, None);
    assert_eq!(worker.instance_type.as_deref(), Some("c7g.large"));
    assert!(env.workers_of(&job.uid().unwrap()).await.is_empty());
    // Held, not busy: the status is not rewritten while nothing changes.
    let api: kube::Api<tender::api::BackupJob> = env.api();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = api.get(&job.name_any()).await.unwrap().resource_version();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = api.get(&job.name_any()).await.unwrap().resource_version();
    assert_eq!(before, after, "the held job's status keeps changing");
    let events = env.events().await;
    assert!(
        events.iter().any(|(r, _)| r == "AgentUnavailable"),
        "{events:?}"
    );

    // An x86_64 type on an arm64 configuration is named before any launch.
    env.create_configuration(
        "mixed",
        &net,
        serde_json::json!({"architecture": "arm64", "instanceTypes": {"backup": "m5.large"}}),
    )
    .await;
    let api: kube::Api<WorkerConfiguration> = env.cluster_api();
    let name = env.cluster_name("mixed");
    let offered = common::eventually(TIMEOUT, || {
        let (api, name) = (api.clone(), name.clone());
        async move {
            let cfg = api.get(&name).await.ok()?;
            cfg.status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "InstanceTypesOffered" && c.status == "False")
        }
    })
    .await;
    assert_eq!(offered.reason, "InstanceTypeWrongArchitecture");
    assert!(
        offered.message.contains("m5.large (")
            && offered.message.contains("cannot run arm64 images"),
        "{}",
        offered.message
    );
}
