//! RDS DB instances against the real kube-apiserver and the AWS emulator
//! (made as strict as RDS by scripts/realism/rds.py: snapshots are
//! `creating` for a while with a rising `PercentProgress`): a BackupJob
//! takes a Tender-tagged manual DB snapshot without launching any worker,
//! follows it to `available` and records a restore point; a RestoreJob of
//! mode `database` creates a new DB instance from it and never overwrites
//! one; a controller killed while RDS works goes on with the same snapshot;
//! and the sweep deletes the snapshots whose restore point is gone.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_rds::types::Tag;
use common::{REGION, TestEnv, eventually};
use kube::ResourceExt;
use kube::api::DeleteParams;
use serde_json::json;
use tender::api::{BackupJob, BackupRepository, Phase, RestorePoint, VerificationJob};
use tender::mover::manifest::RepositoryLocation;

const TIMEOUT: Duration = Duration::from_secs(120);

async fn rds() -> aws_sdk_rds::Client {
    aws_sdk_rds::Client::new(&common::config_as(None).await)
}

/// A PostgreSQL DB instance in the emulator, tagged `team=shop`.
async fn database(rds: &aws_sdk_rds::Client, id: &str) {
    tagged_database(rds, id, "team", "shop").await;
}

/// A PostgreSQL DB instance in the emulator, tagged `key=value`.
async fn tagged_database(rds: &aws_sdk_rds::Client, id: &str, key: &str, value: &str) {
    rds.create_db_instance()
        .db_instance_identifier(id)
        .engine("postgres")
        .engine_version("15.4")
        .db_instance_class("db.t3.micro")
        .allocated_storage(20)
        .master_username("shop")
        .master_user_password("not-a-real-password")
        .tags(Tag::builder().key(key).value(value).build())
        .send()
        .await
        .expect("create a DB instance");
}

async fn snapshot(rds: &aws_sdk_rds::Client, id: &str) -> Option<aws_sdk_rds::types::DbSnapshot> {
    match rds
        .describe_db_snapshots()
        .db_snapshot_identifier(id)
        .send()
        .await
    {
        Ok(out) => out.db_snapshots().first().cloned(),
        Err(e) if format!("{e:?}").contains("DBSnapshotNotFound") => None,
        Err(e) => panic!("describe DB snapshot {id}: {e:?}"),
    }
}

/// The manual DB snapshots tagged with `job_uid`.
async fn snapshots_of(
    rds: &aws_sdk_rds::Client,
    job_uid: &str,
) -> Vec<aws_sdk_rds::types::DbSnapshot> {
    rds.describe_db_snapshots()
        .snapshot_type("manual")
        .send()
        .await
        .expect("list DB snapshots")
        .db_snapshots()
        .iter()
        .filter(|s| {
            s.tag_list()
                .iter()
                .any(|t| t.key() == Some("tender.dev/job-uid") && t.value() == Some(job_uid))
        })
        .cloned()
        .collect()
}

fn tags(list: &[Tag]) -> BTreeMap<String, String> {
    list.iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// RestorePoint `name` of the test's namespace, once the catalog lists it.
async fn listed(env: &TestEnv, name: &str) -> RestorePoint {
    eventually(TIMEOUT, || async {
        env.api::<RestorePoint>().get_opt(name).await.ok().flatten()
    })
    .await
}

/// The emulator's RDS in us-west-2, where `copyTo` copies go.
async fn west() -> aws_sdk_rds::Client {
    aws_sdk_rds::Client::from_conf(
        aws_sdk_rds::config::Builder::from(&common::config_as(None).await)
            .region(aws_sdk_rds::config::Region::new("us-west-2"))
            .build(),
    )
}

/// A BackupJob of DB instance `db` with a copy in us-west-2.
async fn back_up_with_copy(env: &TestEnv, name: &str, db: &str) -> BackupJob {
    env.create_job_spec(
        name,
        json!({
            "resources": [{"dbInstanceId": db, "region": REGION}],
            "repositoryRef": {"name": env.repository().await},
            "copyTo": [{"region": "us-west-2"}],
            "backoffLimit": 0,
        }),
    )
    .await
}

async fn back_up_database(env: &TestEnv, name: &str, db: &str) -> BackupJob {
    env.create_job_spec(
        name,
        json!({
            "resources": [{"dbInstanceId": db, "region": REGION}],
            "repositoryRef": {"name": env.repository().await},
            "backoffLimit": 0,
        }),
    )
    .await
}

#[tokio::test]
async fn a_database_is_snapshotted_by_the_controller_and_restored_into_a_new_instance() {
    let env = TestEnv::new("rds-backup").await;
    env.default_configuration().await;
    let rds = rds().await;
    let db = common::unique("orders");
    database(&rds, &db).await;

    let job = back_up_database(&env, "nightly", &db).await;
    let uid = job.uid().unwrap();
    // RDS takes a while: the job shows the snapshot creating, with its
    // progress, before it is done.
    let running = env
        .wait_job("nightly", TIMEOUT, |j| {
            j.status.as_ref().is_some_and(|s| {
                s.workers.first().is_some_and(|w| {
                    w.phase == Phase::Running
                        && w.database_snapshot
                            .as_ref()
                            .is_some_and(|d| d.state == "creating")
                })
            })
        })
        .await;
    let w = &running.status.unwrap().workers[0];
    assert!(
        w.progress_percent.is_some_and(|p| (0..100).contains(&p)),
        "{w:?}"
    );
    assert_eq!(w.instance_id, None, "no worker instance for a database");

    let done = env.wait_job_finished("nightly", TIMEOUT).await;
    let status = done.status.unwrap();
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    let w = &status.workers[0];
    let point = format!("nightly/rds-db-{db}");
    assert_eq!(w.resource, format!("rds-db-{db}"));
    assert_eq!(w.restore_point.as_deref(), Some(point.as_str()));
    assert_eq!(w.progress_percent, Some(100));
    let recorded = w
        .database_snapshot
        .clone()
        .expect("the snapshot is recorded");
    assert_eq!(recorded.state, "available");

    // RDS's side: one manual snapshot, Tender's, available; no worker.
    let taken = snapshots_of(&rds, &uid).await;
    assert_eq!(taken.len(), 1, "{taken:?}");
    let s = &taken[0];
    assert_eq!(
        s.db_snapshot_identifier(),
        Some(recorded.snapshot_id.as_str())
    );
    assert_eq!(s.db_instance_identifier(), Some(db.as_str()));
    assert_eq!(s.status(), Some("available"));
    let t = tags(s.tag_list());
    assert_eq!(t["tender.dev/managed-by"], "tender");
    assert_eq!(t["tender.dev/cluster-id"], env.cluster_id);
    assert_eq!(t["tender.dev/namespace"], env.namespace);
    assert_eq!(t["tender.dev/resource"], format!("rds-db-{db}"));
    assert_eq!(t["tender.dev/repository"], env.repository().await);
    assert!(
        env.workers_of(&uid).await.is_empty(),
        "no EC2 worker was launched"
    );
    let events = env.events().await;
    assert!(
        events
            .iter()
            .any(|(r, n)| r == "DatabaseSnapshotStarted" && n.contains(&db)),
        "{events:?}"
    );

    // The catalog lists it with the snapshot's ARN.
    let name = format!("nightly.rds-db-{db}");
    let listed = listed(&env, &name).await;
    assert_eq!(listed.spec.engine.as_deref(), Some("postgres"));
    assert_eq!(listed.spec.volumes, 0);
    assert_eq!(listed.spec.logical_bytes, 20 << 30);
    assert_eq!(
        listed.spec.database_snapshots,
        vec![s.db_snapshot_arn().unwrap().to_string()]
    );

    // Restored into a new DB instance of another class.
    let restored_id = common::unique("orders-copy");
    env.create_restore(
        "orders-back",
        "database",
        &name,
        json!({"database": {"dbInstanceId": restored_id, "dbInstanceClass": "db.t3.small"}}),
    )
    .await;
    let restore = env.wait_restore_finished("orders-back", TIMEOUT).await;
    let restore_uid = restore.uid().unwrap();
    let status = restore.status.unwrap();
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    let made = status.workers[0]
        .restored_database
        .clone()
        .expect("the new DB instance is recorded");
    assert_eq!(made.db_instance_id, restored_id);
    assert_eq!(made.state, "available");
    assert!(
        made.endpoint_address.is_some() && made.endpoint_port.is_some(),
        "{made:?}"
    );
    assert_eq!(status.workers[0].instance_id, None);
    let described = rds
        .describe_db_instances()
        .db_instance_identifier(&restored_id)
        .send()
        .await
        .expect("the restored DB instance");
    let instance = &described.db_instances()[0];
    assert_eq!(instance.db_instance_class(), Some("db.t3.small"));
    assert_eq!(
        tags(instance.tag_list()).get("tender.dev/job-uid"),
        Some(&restore_uid)
    );

    // A second restore to the same identifier never touches it.
    env.create_restore(
        "orders-again",
        "database",
        &name,
        json!({"database": {"dbInstanceId": restored_id}}),
    )
    .await;
    let again = env.wait_restore_finished("orders-again", TIMEOUT).await;
    let s = again.status.unwrap();
    assert_eq!(s.phase, Phase::Failed);
    assert_eq!(
        s.workers[0].reason.as_deref(),
        Some("DatabaseAlreadyExists"),
        "{s:?}"
    );
    let still = rds
        .describe_db_instances()
        .db_instance_identifier(&restored_id)
        .send()
        .await
        .expect("still there");
    assert_eq!(
        tags(still.db_instances()[0].tag_list()).get("tender.dev/job-uid"),
        Some(&restore_uid),
        "the existing DB instance is left as it was"
    );

    // A database's restore point is not a volume, and an instance's is
    // not a database.
    env.create_restore("as-volume", "volume", &name, json!({}))
        .await;
    let s = env
        .wait_restore_finished("as-volume", TIMEOUT)
        .await
        .status
        .unwrap();
    assert_eq!(
        s.workers[0].reason.as_deref(),
        Some("RestoreModeMismatch"),
        "{s:?}"
    );
    assert!(
        s.workers[0].instance_id.is_none(),
        "no worker launched for it"
    );

    // Nor does a VerificationJob pretend to verify it: its data is in RDS.
    let verification: VerificationJob = serde_json::from_value(json!({
        "apiVersion": "tender.dev/v1alpha1", "kind": "VerificationJob",
        "metadata": {"name": "check"},
        "spec": {"repositoryRef": {"name": env.repository().await}, "region": REGION,
                 "restorePoints": [name], "backoffLimit": 0},
    }))
    .unwrap();
    env.api::<VerificationJob>()
        .create(&Default::default(), &verification)
        .await
        .unwrap();
    let checked = eventually(TIMEOUT, || async {
        let job = env.api::<VerificationJob>().get("check").await.ok()?;
        job.status.clone().filter(|s| s.phase.is_finished())
    })
    .await;
    assert_eq!(checked.phase, Phase::Failed, "{checked:?}");
    assert_eq!(
        checked.workers[0].reason.as_deref(),
        Some("RestoreModeMismatch"),
        "{checked:?}"
    );
    assert!(checked.workers[0].instance_id.is_none());
}

#[tokio::test]
async fn a_missing_database_fails_the_job_with_its_reason() {
    let env = TestEnv::new("rds-missing").await;
    env.default_configuration().await;
    back_up_database(&env, "nothing", "no-such-db").await;
    let job = env.wait_job_finished("nothing", TIMEOUT).await;
    let status = job.status.unwrap();
    assert_eq!(status.phase, Phase::Failed);
    let w = &status.workers[0];
    assert_eq!(w.reason.as_deref(), Some("SourceDatabaseNotFound"), "{w:?}");
    assert!(
        w.message
            .as_deref()
            .unwrap_or_default()
            .contains("no-such-db")
    );
    let events = env.events().await;
    assert!(
        events.iter().any(|(r, _)| r == "SourceDatabaseNotFound"),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_controller_killed_while_rds_works_goes_on_with_the_same_snapshot() {
    let env = TestEnv::new("rds-restart").await;
    env.default_configuration().await;
    let rds = rds().await;
    let db = common::unique("ledger");
    database(&rds, &db).await;
    let job = back_up_database(&env, "ledger", &db).await;
    let uid = job.uid().unwrap();
    env.wait_job("ledger", TIMEOUT, |j| {
        j.status.as_ref().is_some_and(|s| {
            s.workers
                .first()
                .is_some_and(|w| w.database_snapshot.is_some())
        })
    })
    .await;
    env.kill_controller();
    env.start_controller();
    let done = env.wait_job_finished("ledger", TIMEOUT).await;
    assert_eq!(done.status.unwrap().phase, Phase::Succeeded);
    assert_eq!(
        snapshots_of(&rds, &uid).await.len(),
        1,
        "the restarted controller followed the snapshot it had started"
    );
}

#[tokio::test]
async fn the_sweep_deletes_database_snapshots_whose_restore_point_is_gone() {
    let env = TestEnv::without_controller("rds-sweep").await;
    env.start_controller_with(&["--intermediate-grace-seconds", "2"], &[]);
    env.default_configuration().await;
    let rds = rds().await;
    let db = common::unique("billing");
    database(&rds, &db).await;
    back_up_database(&env, "kept", &db).await;
    // This one with a copy in us-west-2: it goes with its restore point.
    back_up_with_copy(&env, "expired", &db).await;
    let mut taken = BTreeMap::new();
    for name in ["kept", "expired"] {
        let job = env.wait_job_finished(name, TIMEOUT).await;
        let status = job.status.unwrap();
        assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
        let snap = status.workers[0].database_snapshot.clone().unwrap();
        taken.insert(name, snap.snapshot_id);
    }
    // Both jobs are deleted; one restore point expires (its manifest goes,
    // as retention deletes it) while no controller runs: the next one never
    // saw the job, and no configuration is in us-west-2, so only the
    // source snapshot's tag tells it where the copy is.
    for name in ["kept", "expired"] {
        env.api::<BackupJob>()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    for name in ["kept", "expired"] {
        eventually(TIMEOUT, || async {
            let gone = env.api::<BackupJob>().get_opt(name).await.ok()?.is_none();
            gone.then_some(())
        })
        .await;
    }
    env.kill_controller();
    let repo: BackupRepository = env
        .cluster_api()
        .get(&env.repository().await)
        .await
        .unwrap();
    let loc = RepositoryLocation::of(&repo.spec, &env.namespace);
    common::disks::s3()
        .await
        .delete_object()
        .bucket(&repo.spec.bucket)
        .key(loc.manifest_key(&format!("expired/rds-db-{db}")))
        .send()
        .await
        .unwrap();
    // Another cluster's snapshot of a deleted job, with no restore point:
    // not this controller's to judge.
    let foreign = common::unique("tender-foreign");
    rds.create_db_snapshot()
        .db_snapshot_identifier(&foreign)
        .db_instance_identifier(&db)
        .set_tags(Some(
            [
                ("tender.dev/managed-by", "tender"),
                ("tender.dev/cluster-id", "another-cluster"),
                ("tender.dev/job-kind", "BackupJob"),
                ("tender.dev/job-name", "expired"),
                ("tender.dev/job-uid", "uid-of-another-cluster"),
                ("tender.dev/namespace", env.namespace.as_str()),
            ]
            .into_iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect(),
        ))
        .send()
        .await
        .expect("another cluster's snapshot");

    let expired = taken["expired"].clone();
    let west = west().await;
    assert!(
        snapshot(&west, &expired).await.is_some(),
        "the copy was made"
    );
    let source = snapshot(&rds, &expired).await.unwrap();
    assert_eq!(
        tags(source.tag_list())
            .get("tender.dev/copy-regions")
            .map(String::as_str),
        Some("us-west-2")
    );
    env.start_controller_with(&["--intermediate-grace-seconds", "2"], &[]);
    eventually(TIMEOUT, || async {
        let gone =
            snapshot(&rds, &expired).await.is_none() && snapshot(&west, &expired).await.is_none();
        gone.then_some(())
    })
    .await;
    // A few more sweeps: the others stay.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        snapshot(&rds, &taken["kept"]).await.is_some(),
        "the snapshot of a restore point that exists was deleted"
    );
    assert!(
        snapshot(&rds, &foreign).await.is_some(),
        "another cluster's snapshot was deleted"
    );
}

#[tokio::test]
async fn a_full_snapshot_quota_fails_the_job_and_says_which_quota() {
    let env = TestEnv::new("rds-quota").await;
    // Its own production account: the quota filled here is no other
    // test's.
    let account = format!("5{:011}", std::process::id());
    let role = format!("arn:aws:iam::{account}:role/tender-production");
    env.configured("quota", json!({"productionAccount": {"roleArn": role}}))
        .await;
    let rds = aws_sdk_rds::Client::new(&common::config_as(Some(&role)).await);
    let db = common::unique("full");
    database(&rds, &db).await;
    // The Region's 100 manual snapshots: one taken, 99 copies of it.
    let first = common::unique("filler");
    rds.create_db_snapshot()
        .db_snapshot_identifier(&first)
        .db_instance_identifier(&db)
        .send()
        .await
        .expect("a snapshot");
    eventually(TIMEOUT, || async {
        (snapshot(&rds, &first).await?.status() == Some("available")).then_some(())
    })
    .await;
    for i in 1..100 {
        rds.copy_db_snapshot()
            .source_db_snapshot_identifier(&first)
            .target_db_snapshot_identifier(format!("{first}-{i}"))
            .send()
            .await
            .expect("a copy within the quota");
    }
    let job = env
        .create_job_spec(
            "over",
            json!({
                "resources": [{"dbInstanceId": db, "region": REGION}],
                "repositoryRef": {"name": env.repository().await},
                "workerConfigurationRef": {"name": env.cluster_name("quota")},
            }),
        )
        .await;
    let done = env.wait_job_finished("over", TIMEOUT).await;
    let status = done.status.unwrap();
    assert_eq!(status.phase, Phase::Failed);
    let w = &status.workers[0];
    assert_eq!(
        w.reason.as_deref(),
        Some("DatabaseSnapshotQuotaExceeded"),
        "{w:?}"
    );
    let message = w.message.clone().unwrap_or_default();
    assert!(
        message.contains("Manual DB instance snapshots"),
        "{message}"
    );
    assert!(
        snapshots_of(&rds, &job.uid().unwrap()).await.is_empty(),
        "no snapshot was made"
    );
    let events = env.events().await;
    assert!(
        events
            .iter()
            .any(|(r, _)| r == "DatabaseSnapshotQuotaExceeded"),
        "{events:?}"
    );
}

#[tokio::test]
async fn copy_to_puts_a_copy_in_another_region_and_refuses_an_encrypted_one_without_its_key() {
    let env = TestEnv::new("rds-copy").await;
    env.default_configuration().await;
    let rds = rds().await;
    let west = west().await;
    let db = common::unique("catalog");
    database(&rds, &db).await;
    back_up_with_copy(&env, "copied", &db).await;
    let done = env.wait_job_finished("copied", TIMEOUT).await;
    let status = done.status.unwrap();
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    let snap = status.workers[0].database_snapshot.clone().unwrap();
    assert_eq!(snap.copies.len(), 1, "{snap:?}");
    let copy = &snap.copies[0];
    assert_eq!(
        (copy.region.as_str(), copy.state.as_str()),
        ("us-west-2", "available")
    );
    // RDS's side: the copy in us-west-2, same name, Tender's tags.
    let there = snapshot(&west, &snap.snapshot_id)
        .await
        .expect("the copy in us-west-2");
    assert_eq!(there.status(), Some("available"));
    assert_eq!(there.db_snapshot_arn(), copy.snapshot_arn.as_deref());
    let t = tags(there.tag_list());
    assert_eq!(t["tender.dev/job-uid"], done.metadata.uid.clone().unwrap());
    assert_eq!(t["tender.dev/cluster-id"], env.cluster_id);
    // The restore point names both.
    let name = format!("copied.rds-db-{db}");
    let listed = listed(&env, &name).await;
    assert_eq!(
        listed.spec.database_snapshots,
        vec![
            snap.snapshot_arn.clone().unwrap(),
            copy.snapshot_arn.clone().unwrap()
        ]
    );

    // An encrypted DB instance's copy needs a key of the other Region.
    let secret = common::unique("vault");
    rds.create_db_instance()
        .db_instance_identifier(&secret)
        .engine("postgres")
        .db_instance_class("db.t3.micro")
        .allocated_storage(20)
        .master_username("vault")
        .master_user_password("not-a-real-password")
        .storage_encrypted(true)
        .send()
        .await
        .expect("an encrypted DB instance");
    let job = back_up_with_copy(&env, "unkeyed", &secret).await;
    let failed = env.wait_job_finished("unkeyed", TIMEOUT).await;
    let status = failed.status.unwrap();
    assert_eq!(status.phase, Phase::Failed, "{status:?}");
    let w = &status.workers[0];
    assert_eq!(w.reason.as_deref(), Some("DatabaseCopyRefused"), "{w:?}");
    assert!(
        w.message
            .as_deref()
            .unwrap_or_default()
            .contains("kmsKeyId"),
        "{w:?}"
    );
    assert!(
        snapshots_of(&west, &job.uid().unwrap()).await.is_empty(),
        "no copy was made"
    );
}

#[tokio::test]
async fn a_policy_snapshots_the_db_instances_its_selectors_match_and_reports_a_named_one_missing() {
    let env = TestEnv::new("rds-policy").await;
    env.default_configuration().await;
    let rds = rds().await;
    // Tags of this test's own: other tests' DB instances never match.
    let key = format!("backup-{}", env.namespace);
    let daily = common::unique("ledger");
    tagged_database(&rds, &daily, &key, "daily-db").await;
    let other = common::unique("scratch");
    tagged_database(&rds, &other, &key, "never").await;
    let gone = common::unique("gone");
    let policy: tender::api::BackupPolicy = serde_json::from_value(json!({
        "apiVersion": "tender.dev/v1alpha1", "kind": "BackupPolicy",
        "metadata": {"name": "databases"},
        "spec": env.with_cluster_names(json!({
            "schedule": "* * * * *",
            "region": REGION,
            "resources": [{"dbInstanceId": gone}],
            "databaseSelectors": [{"matchTags": {key.clone(): "daily-*"}}],
            "repositoryRef": {"name": env.repository().await},
            "workerConfigurationRef": {"name": "default"},
        })),
    }))
    .unwrap();
    env.api::<tender::api::BackupPolicy>()
        .create(&Default::default(), &policy)
        .await
        .expect("create the policy");

    // The first run backs up the tagged DB instance alone, as a DB
    // snapshot; the named one that does not exist is reported.
    let job = eventually(Duration::from_secs(90), || async {
        env.api::<BackupJob>()
            .list(
                &kube::api::ListParams::default()
                    .labels(&format!("{}=databases", tender::names::POLICY_LABEL)),
            )
            .await
            .ok()?
            .items
            .into_iter()
            .next()
    })
    .await;
    let ids: Vec<String> = job.spec.resources.iter().map(|r| r.id()).collect();
    assert_eq!(ids, [format!("rds-db-{daily}")]);
    assert_eq!(
        job.spec.resources[0].db_instance_id.as_deref(),
        Some(daily.as_str())
    );
    let done = env.wait_job_finished(&job.name_any(), TIMEOUT).await;
    let status = done.status.unwrap();
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    assert_eq!(status.workers[0].instance_id, None, "no worker instance");

    // The emulator's side: one snapshot, of that DB instance, no manual
    // one of the other (RDS's automated backups are not Tender's).
    let taken = snapshots_of(&rds, &job.uid().unwrap()).await;
    assert_eq!(taken.len(), 1, "{taken:?}");
    assert_eq!(taken[0].db_instance_identifier(), Some(daily.as_str()));
    assert_eq!(taken[0].status(), Some("available"));
    let of_other = rds
        .describe_db_snapshots()
        .db_instance_identifier(&other)
        .snapshot_type("manual")
        .send()
        .await
        .unwrap();
    assert!(of_other.db_snapshots().is_empty(), "{of_other:?}");

    // The policy's side: where it came from, its restore point, and the
    // missing one with a condition and an Event.
    let policy = eventually(TIMEOUT, || async {
        let p = env
            .api::<tender::api::BackupPolicy>()
            .get("databases")
            .await
            .ok()?;
        let s = p.status.clone()?;
        s.resources
            .iter()
            .any(|r| r.newest_restore_point.is_some())
            .then_some(s)
    })
    .await;
    let protected = &policy.resources[0];
    assert_eq!(protected.id, format!("rds-db-{daily}"));
    assert_eq!(protected.source, "databaseSelectors");
    assert_eq!(policy.missing_resources.len(), 1, "{policy:?}");
    assert_eq!(policy.missing_resources[0].id, format!("rds-db-{gone}"));
    let missing = common::condition_of(&policy.conditions, "ResourcesMissing").expect("condition");
    assert!(missing.message.contains(&gone), "{missing:?}");
    let events = env.events().await;
    assert!(
        events
            .iter()
            .any(|(r, n)| r == "ResourcesMissing" && n.contains(&gone)),
        "{events:?}"
    );
    env.api::<tender::api::BackupPolicy>()
        .delete("databases", &DeleteParams::default())
        .await
        .unwrap();
}

/// An Aurora PostgreSQL DB cluster with its writer DB instance, tagged
/// `team=shop`.
async fn aurora_cluster(rds: &aws_sdk_rds::Client, id: &str, writer: &str) {
    rds.create_db_cluster()
        .db_cluster_identifier(id)
        .engine("aurora-postgresql")
        .engine_version("15.4")
        .master_username("shop")
        .master_user_password("not-a-real-password")
        .tags(Tag::builder().key("team").value("shop").build())
        .send()
        .await
        .expect("create a DB cluster");
    rds.create_db_instance()
        .db_instance_identifier(writer)
        .db_cluster_identifier(id)
        .engine("aurora-postgresql")
        .db_instance_class("db.r6g.large")
        .send()
        .await
        .expect("create the cluster's writer");
}

/// The manual DB cluster snapshots tagged with `job_uid`.
async fn cluster_snapshots_of(
    rds: &aws_sdk_rds::Client,
    job_uid: &str,
) -> Vec<aws_sdk_rds::types::DbClusterSnapshot> {
    rds.describe_db_cluster_snapshots()
        .snapshot_type("manual")
        .send()
        .await
        .expect("list DB cluster snapshots")
        .db_cluster_snapshots()
        .iter()
        .filter(|s| {
            tags(s.tag_list())
                .get("tender.dev/job-uid")
                .map(String::as_str)
                == Some(job_uid)
        })
        .cloned()
        .collect()
}

async fn cluster(rds: &aws_sdk_rds::Client, id: &str) -> Option<aws_sdk_rds::types::DbCluster> {
    match rds
        .describe_db_clusters()
        .db_cluster_identifier(id)
        .send()
        .await
    {
        Ok(out) => out.db_clusters().first().cloned(),
        Err(e) if format!("{e:?}").contains("DBClusterNotFoundFault") => None,
        Err(e) => panic!("describe DB cluster {id}: {e:?}"),
    }
}

#[tokio::test]
async fn an_aurora_cluster_is_snapshotted_copied_restored_with_its_writer_and_swept() {
    let env = TestEnv::without_controller("rds-cluster").await;
    env.start_controller_with(&["--intermediate-grace-seconds", "2"], &[]);
    env.default_configuration().await;
    let rds = rds().await;
    let west = west().await;
    let id = common::unique("ledger");
    let writer = format!("{id}-writer");
    aurora_cluster(&rds, &id, &writer).await;

    // A member DB instance is not snapshotted on its own: RDS snapshots
    // the cluster's storage as a whole.
    env.create_job_spec(
        "member",
        json!({
            "resources": [{"dbInstanceId": writer, "region": REGION}],
            "repositoryRef": {"name": env.repository().await},
            "backoffLimit": 0,
        }),
    )
    .await;
    let member = env.wait_job_finished("member", TIMEOUT).await;
    let s = member.status.unwrap();
    assert_eq!(s.phase, Phase::Failed);
    let message = s.workers[0].message.clone().unwrap_or_default();
    assert_eq!(
        s.workers[0].reason.as_deref(),
        Some("SourceDatabaseUnavailable"),
        "{s:?}"
    );
    assert!(message.contains(&format!("dbClusterId: {id}")), "{message}");
    assert!(
        snapshots_of(&rds, &member.metadata.uid.unwrap())
            .await
            .is_empty()
    );

    let job = env
        .create_job_spec(
            "nightly",
            json!({
                "resources": [{"dbClusterId": id, "region": REGION}],
                "repositoryRef": {"name": env.repository().await},
                "copyTo": [{"region": "us-west-2"}],
                "backoffLimit": 0,
            }),
        )
        .await;
    let uid = job.uid().unwrap();
    env.wait_job("nightly", TIMEOUT, |j| {
        j.status.as_ref().is_some_and(|s| {
            s.workers.first().is_some_and(|w| {
                w.phase == Phase::Running
                    && w.database_snapshot
                        .as_ref()
                        .is_some_and(|d| d.state == "creating")
            })
        })
    })
    .await;
    let done = env.wait_job_finished("nightly", TIMEOUT).await;
    let status = done.status.unwrap();
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    let w = &status.workers[0];
    assert_eq!(w.resource, format!("rds-cluster-{id}"));
    assert_eq!(w.instance_id, None, "no worker instance for a DB cluster");
    let recorded = w
        .database_snapshot
        .clone()
        .expect("the snapshot is recorded");
    assert_eq!(recorded.state, "available");
    assert_eq!(recorded.copies.len(), 1, "{recorded:?}");

    // RDS's side: one manual DB cluster snapshot, Tender's, and its copy.
    let taken = cluster_snapshots_of(&rds, &uid).await;
    assert_eq!(taken.len(), 1, "{taken:?}");
    let s = &taken[0];
    assert_eq!(
        s.db_cluster_snapshot_identifier(),
        Some(recorded.snapshot_id.as_str())
    );
    assert_eq!(s.db_cluster_identifier(), Some(id.as_str()));
    assert_eq!(s.status(), Some("available"));
    let t = tags(s.tag_list());
    assert_eq!(t["tender.dev/cluster-id"], env.cluster_id);
    assert_eq!(t["tender.dev/resource"], format!("rds-cluster-{id}"));
    assert!(snapshots_of(&rds, &uid).await.is_empty(), "no DB snapshot");
    let copies = cluster_snapshots_of(&west, &uid).await;
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(copies[0].status(), Some("available"));
    assert!(env.workers_of(&uid).await.is_empty());
    let events = env.events().await;
    assert!(
        events.iter().any(|(r, n)| r == "DatabaseSnapshotStarted"
            && n.contains(&format!("DB cluster snapshot {}", recorded.snapshot_id))
            && n.contains(&format!("DB cluster {id}"))),
        "{events:?}"
    );

    // The catalog lists it with both ARNs.
    let name = format!("nightly.rds-cluster-{id}");
    let point = listed(&env, &name).await;
    assert_eq!(point.spec.engine.as_deref(), Some("aurora-postgresql"));
    assert_eq!(
        point.spec.database_snapshots,
        vec![
            s.db_cluster_snapshot_arn().unwrap().to_string(),
            copies[0].db_cluster_snapshot_arn().unwrap().to_string()
        ]
    );

    // Restored without dbClusterId: refused before anything is made.
    let restored = common::unique("ledger-copy");
    let restored_writer = format!("{restored}-1");
    env.create_restore(
        "no-cluster",
        "database",
        &name,
        json!({"database": {"dbInstanceId": restored_writer}}),
    )
    .await;
    let s = env
        .wait_restore_finished("no-cluster", TIMEOUT)
        .await
        .status
        .unwrap();
    assert_eq!(
        s.workers[0].reason.as_deref(),
        Some("RestoreModeMismatch"),
        "{s:?}"
    );
    assert!(cluster(&rds, &restored).await.is_none());

    // Restored into a new cluster with its writer, of the backed-up
    // writer's class.
    env.create_restore(
        "ledger-back",
        "database",
        &name,
        json!({"database": {"dbClusterId": restored, "dbInstanceId": restored_writer}}),
    )
    .await;
    let restore = env.wait_restore_finished("ledger-back", TIMEOUT).await;
    let restore_uid = restore.uid().unwrap();
    let status = restore.status.unwrap();
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    let made = status.workers[0]
        .restored_database
        .clone()
        .expect("the new DB cluster is recorded");
    assert_eq!(made.db_cluster_id.as_deref(), Some(restored.as_str()));
    assert_eq!(made.db_instance_id, restored_writer);
    assert_eq!(made.cluster_state.as_deref(), Some("available"));
    assert_eq!(made.state, "available");
    assert!(made.endpoint_address.is_some(), "{made:?}");
    let described = cluster(&rds, &restored)
        .await
        .expect("the restored cluster");
    assert_eq!(
        tags(described.tag_list()).get("tender.dev/job-uid"),
        Some(&restore_uid)
    );
    let members: Vec<(Option<&str>, Option<bool>)> = described
        .db_cluster_members()
        .iter()
        .map(|m| (m.db_instance_identifier(), m.is_cluster_writer()))
        .collect();
    assert_eq!(members, [(Some(restored_writer.as_str()), Some(true))]);
    let instance = rds
        .describe_db_instances()
        .db_instance_identifier(&restored_writer)
        .send()
        .await
        .expect("the restored writer");
    let instance = &instance.db_instances()[0];
    assert_eq!(instance.db_instance_class(), Some("db.r6g.large"));
    assert_eq!(
        tags(instance.tag_list()).get("tender.dev/job-uid"),
        Some(&restore_uid)
    );
    let events = env.events().await;
    assert!(
        events
            .iter()
            .any(|(r, n)| r == "DatabaseWriterStarted" && n.contains(&restored_writer)),
        "{events:?}"
    );

    // A second restore onto the same cluster never touches it.
    env.create_restore(
        "ledger-again",
        "database",
        &name,
        json!({"database": {"dbClusterId": restored, "dbInstanceId": common::unique("w")}}),
    )
    .await;
    let s = env
        .wait_restore_finished("ledger-again", TIMEOUT)
        .await
        .status
        .unwrap();
    assert_eq!(
        s.workers[0].reason.as_deref(),
        Some("DatabaseAlreadyExists"),
        "{s:?}"
    );
    assert_eq!(
        cluster(&rds, &restored)
            .await
            .unwrap()
            .db_cluster_members()
            .len(),
        1,
        "no second writer"
    );

    // The restore point expires: the sweep deletes the cluster snapshot
    // and its copy.
    env.api::<BackupJob>()
        .delete("nightly", &DeleteParams::default())
        .await
        .unwrap();
    let repo: BackupRepository = env
        .cluster_api()
        .get(&env.repository().await)
        .await
        .unwrap();
    let loc = RepositoryLocation::of(&repo.spec, &env.namespace);
    common::disks::s3()
        .await
        .delete_object()
        .bucket(&repo.spec.bucket)
        .key(loc.manifest_key(&format!("nightly/rds-cluster-{id}")))
        .send()
        .await
        .unwrap();
    eventually(TIMEOUT, || async {
        let gone = cluster_snapshots_of(&rds, &uid).await.is_empty()
            && cluster_snapshots_of(&west, &uid).await.is_empty();
        gone.then_some(())
    })
    .await;
    assert!(
        cluster(&rds, &id).await.is_some(),
        "the source cluster stays"
    );
}

/// DescribeDBClusters also answers Neptune (and DocumentDB) clusters, and
/// RDS cannot copy a Multi-AZ DB cluster's snapshots: both are refused
/// with what to do, before any snapshot is made.
#[tokio::test]
async fn a_neptune_cluster_and_a_copied_multi_az_cluster_are_refused_before_any_snapshot() {
    let env = TestEnv::without_controller("rds-cluster-refused").await;
    env.start_controller();
    env.default_configuration().await;
    let rds = rds().await;
    let graph = common::unique("graph");
    rds.create_db_cluster()
        .db_cluster_identifier(&graph)
        .engine("neptune")
        .send()
        .await
        .expect("create a Neptune cluster");
    let multi_az = common::unique("orders-maz");
    rds.create_db_cluster()
        .db_cluster_identifier(&multi_az)
        .engine("postgres")
        .engine_version("15.4")
        .db_cluster_instance_class("db.m6gd.large")
        .allocated_storage(100)
        .storage_type("io1")
        .iops(1000)
        .master_username("shop")
        .master_user_password("not-a-real-password")
        .send()
        .await
        .expect("create a Multi-AZ DB cluster");
    let repository = env.repository().await;
    for (name, cluster_id, reason, says) in [
        ("graph", &graph, "SourceDatabaseUnavailable", "runs neptune"),
        (
            "maz",
            &multi_az,
            "DatabaseCopyRefused",
            "cannot copy a Multi-AZ DB cluster's snapshots",
        ),
    ] {
        let job = env
            .create_job_spec(
                name,
                json!({
                    "resources": [{"dbClusterId": cluster_id, "region": REGION}],
                    "repositoryRef": {"name": repository},
                    "copyTo": [{"region": "us-west-2"}],
                    "backoffLimit": 0,
                }),
            )
            .await;
        let done = env.wait_job_finished(name, TIMEOUT).await;
        let s = done.status.unwrap();
        assert_eq!(s.phase, Phase::Failed, "{s:?}");
        assert_eq!(s.workers[0].reason.as_deref(), Some(reason), "{s:?}");
        let message = s.workers[0].message.clone().unwrap_or_default();
        assert!(message.contains(says), "{message}");
        assert!(
            cluster_snapshots_of(&rds, &job.uid().unwrap())
                .await
                .is_empty(),
            "no snapshot of {cluster_id}"
        );
    }
    // Without copyTo the Multi-AZ DB cluster is snapshotted.
    let job = env
        .create_job_spec(
            "maz-local",
            json!({
                "resources": [{"dbClusterId": multi_az, "region": REGION}],
                "repositoryRef": {"name": repository},
                "backoffLimit": 0,
            }),
        )
        .await;
    let done = env.wait_job_finished("maz-local", TIMEOUT).await;
    let s = done.status.unwrap();
    assert_eq!(s.phase, Phase::Succeeded, "{s:?}");
    assert_eq!(
        cluster_snapshots_of(&rds, &job.uid().unwrap()).await.len(),
        1
    );
}
