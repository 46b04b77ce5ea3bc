//! Every manifest in examples/ is applied to the real API server with
//! kubectl and reconciled by the controller, against the moto emulator.

mod common;

use std::time::Duration;

use serde::Deserialize;

use common::commands::{kubectl, read, run_ok};
use common::{TEST_LABEL, TestEnv};
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::Value;
use tender::api::{BackupJob, BackupPolicy, Phase, RestoreJob, WorkerConfiguration};

const TIMEOUT: Duration = Duration::from_secs(90);

/// Applies `manifest` made this test's: its WorkerConfigurations and
/// BackupRepositories (cluster-scoped) get this test's names and label, so
/// that its controller manages them and no other test sees them; its jobs
/// name them so. The namespace gets the labels the objects'
/// `namespaceSelector`s ask for, as a team's namespace would.
async fn kubectl_apply(env: &TestEnv, manifest: &str) {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(manifest) {
        let mut doc = Value::deserialize(doc).expect("a YAML document");
        if doc.is_null() {
            continue;
        }
        match doc["kind"].as_str().unwrap_or_default() {
            "WorkerConfiguration" | "BackupRepository" => {
                let name = doc["metadata"]["name"]
                    .as_str()
                    .expect("a name")
                    .to_string();
                doc["metadata"]["name"] = env.cluster_name(&name).into();
                doc["metadata"]["labels"][TEST_LABEL] = env.namespace.clone().into();
                let wanted = doc["spec"]["namespaceSelector"]["matchLabels"].clone();
                if wanted.is_object() {
                    Api::<Namespace>::all(env.client.clone())
                        .patch(
                            &env.namespace,
                            &PatchParams::default(),
                            &Patch::Merge(serde_json::json!({"metadata": {"labels": wanted}})),
                        )
                        .await
                        .expect("label the namespace");
                }
            }
            "BackupJob" | "RestoreJob" | "BackupPolicy" => {
                doc["spec"] = env.with_cluster_names(doc["spec"].take());
            }
            _ => {}
        }
        docs.push(serde_yaml::to_string(&doc).expect("YAML"));
    }
    run_ok(
        kubectl().args(["apply", "-n", &env.namespace, "-f", "-"]),
        Some(&docs.join("---\n")),
    );
}

fn condition<'a>(
    conditions: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[tokio::test]
async fn the_examples_apply_and_reach_their_states() {
    let env = TestEnv::new("examples").await;
    let net = env.network().await;
    let protected = env.protected_disk().await;
    // The example configuration admits only sources tagged backup=true.
    env.ec2
        .create_tags()
        .resources(&protected)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("backup")
                .value("true")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let bucket = env.bucket().await;
    let mac_key = common::hmac_key(None).await;
    let mac_key_id = mac_key.rsplit('/').next().unwrap().to_string();
    // The examples' placeholder IDs, replaced by the emulator's. The
    // instance stays a placeholder: the emulator cannot serve the blocks of
    // an instance's snapshots, so that example must fail, and say why.
    let localize = |text: String| {
        text.replace("subnet-0123456789abcdef0", &net.subnet)
            .replace("us-east-1a", &net.zone)
            .replace("sg-0123456789abcdef0", &net.security_group)
            .replace("snap-0123456789abcdef0", &protected)
            .replace("acme-backups", &bucket)
            .replace("0987dcba-09fe-87dc-65ba-ab0987654321", &mac_key_id)
            // The example repository's bucket owner, here the emulator's
            // own account.
            .replace("111122223333", common::EMULATOR_ACCOUNT)
    };
    for file in [
        "examples/backup-repository.yaml",
        "examples/worker-configuration.yaml",
        "examples/backup-job.yaml",
        "examples/more/backup-job-snapshot.yaml",
        "examples/backup-policy.yaml",
    ] {
        kubectl_apply(&env, &localize(read(file))).await;
    }
    // The other configurations name accounts, parameters and subnets that
    // do not exist here: the controller must say so plainly.
    kubectl_apply(
        &env,
        &read("examples/more/worker-configuration-cross-account.yaml"),
    )
    .await;
    kubectl_apply(
        &env,
        &read("examples/more/worker-configuration-private.yaml"),
    )
    .await;

    let missing = env
        .wait_job_phase("web-server-nightly", TIMEOUT, Phase::Failed)
        .await;
    assert_eq!(
        missing.status.as_ref().unwrap().workers[0]
            .reason
            .as_deref(),
        Some("SourceInstanceNotFound")
    );
    let job = env
        .wait_job_phase("data-volume-weekly", TIMEOUT, Phase::Succeeded)
        .await;
    let point = format!("data-volume-weekly/{protected}");
    assert_eq!(
        job.status.as_ref().unwrap().workers[0]
            .restore_point
            .as_deref(),
        Some(point.as_str())
    );
    let instances = env.workers_of(job.metadata.uid.as_deref().unwrap()).await;
    assert_eq!(instances.len(), 1);
    common::assert_terminating(&instances[0]);
    // The repository answers, and counts the restore point.
    let repository = env
        .wait_repository(&bucket, TIMEOUT, |r| {
            r.status
                .as_ref()
                .is_some_and(|s| s.phase.as_deref() == Some("Ready") && s.restore_points == 1)
        })
        .await;
    assert_eq!(
        repository.status.unwrap().restore_points_by_namespace,
        [(env.namespace.clone(), 1)].into()
    );

    // The policy is valid and says when it runs next, in Berlin and in UTC.
    let policy = common::eventually(TIMEOUT, || async {
        let p = env.api::<BackupPolicy>().get("nightly").await.ok()?;
        let s = p.status.clone()?;
        let ready = condition(&s.conditions, "Ready")?.clone();
        (ready.status == "True").then_some((s, ready))
    })
    .await;
    let (status, ready) = policy;
    let local = status.next_schedule_time_local.expect("next run, local");
    assert!(
        local.contains("T02:30:00") && local.contains("[Europe/Berlin]"),
        "{local}"
    );
    assert!(status.next_schedule_time.is_some());
    assert!(ready.message.contains(&local), "{}", ready.message);

    let configs: Api<WorkerConfiguration> = env.cluster_api();
    let config_condition = |name: &'static str, type_: &'static str| {
        let configs = configs.clone();
        let name = env.cluster_name(name);
        async move {
            let c = configs.get(&name).await.ok()?;
            let cond = condition(&c.status?.conditions, type_)?.clone();
            Some(cond)
        }
    };
    let ready = common::eventually(TIMEOUT, || async {
        config_condition("us-east-1", "Ready")
            .await
            .filter(|c| c.status == "True")
    })
    .await;
    assert!(
        ready.message.contains("workers report to"),
        "{}",
        ready.message
    );
    let cross = common::eventually(TIMEOUT, || async {
        config_condition("central-backup", "Ready")
            .await
            .filter(|c| c.status == "False")
    })
    .await;
    assert_eq!(cross.reason, "ImageNotResolved");
    assert!(
        cross.message.contains("/tender/worker-ami"),
        "{}",
        cross.message
    );
    let private = common::eventually(TIMEOUT, || async {
        config_condition("private", "Ready")
            .await
            .filter(|c| c.status == "False")
    })
    .await;
    assert_eq!(private.reason, "SubnetNotFound");
    assert!(
        private.message.contains("spec.subnets"),
        "{}",
        private.message
    );

    // The volume and full examples, pointed at the restore point the
    // snapshot example wrote: a new volume in the example's zone, and a new
    // instance.
    for file in [
        "examples/restore-job-volume.yaml",
        "examples/restore-job-full.yaml",
    ] {
        kubectl_apply(
            &env,
            &localize(read(file)).replace("web-server-nightly/i-0123456789abcdef0", &point),
        )
        .await;
    }
    for name in ["web-server-volume-restore", "web-server-full-restore"] {
        let restored = env.wait_restore_finished(name, TIMEOUT).await;
        let worker = &restored.status.as_ref().unwrap().workers[0];
        assert_eq!(
            restored.status.as_ref().unwrap().phase,
            Phase::Succeeded,
            "{name}: {worker:?}"
        );
        assert!(
            worker.restored_volume_id.is_some() || worker.restored_instance_id.is_some(),
            "{name}: {worker:?}"
        );
    }

    // The file-level example: a session comes up; marking it finished ends
    // it (the worker is terminated, the job Succeeded); then the job goes.
    kubectl_apply(
        &env,
        &localize(read("examples/restore-job-file-level.yaml"))
            .replace("web-server-nightly/i-0123456789abcdef0", &point),
    )
    .await;
    let session = env
        .wait_restore("web-server-files", TIMEOUT, |j| {
            j.status
                .as_ref()
                .and_then(|s| s.workers.first())
                .is_some_and(|w| w.browser_url.is_some() && w.certificate_sha256.is_some())
        })
        .await;
    let restores: Api<RestoreJob> = env.api();
    restores
        .patch(
            "web-server-files",
            &Default::default(),
            &kube::api::Patch::Merge(serde_json::json!({
                "metadata": {"annotations": {"tender.dev/finish-session": "true"}}
            })),
        )
        .await
        .unwrap();
    let ended = env
        .wait_restore("web-server-files", TIMEOUT, |j| {
            j.status
                .as_ref()
                .is_some_and(|s| s.phase.is_finished() && s.active_workers == 0)
        })
        .await;
    let status = ended.status.as_ref().unwrap();
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    assert!(
        status.workers[0]
            .message
            .as_deref()
            .unwrap()
            .contains("tender.dev/finish-session"),
        "{status:?}"
    );
    restores
        .delete("web-server-files", &Default::default())
        .await
        .unwrap();
    common::eventually(TIMEOUT, || {
        let restores = restores.clone();
        async move {
            restores
                .get_opt("web-server-files")
                .await
                .ok()
                .flatten()
                .is_none()
                .then_some(())
        }
    })
    .await;
    let workers = env
        .instances_tagged(
            "tender.dev/job-uid",
            session.metadata.uid.as_deref().unwrap(),
        )
        .await;
    assert_eq!(workers.len(), 1);
    common::assert_terminating(&workers[0]);
    let jobs: Api<BackupJob> = env.api();
    assert_eq!(jobs.list(&Default::default()).await.unwrap().items.len(), 2);
}
