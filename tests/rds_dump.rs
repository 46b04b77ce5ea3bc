//! PostgreSQL dumps of RDS DB instances through a worker, against the real
//! kube-apiserver, the AWS emulator (made as strict as AWS by
//! scripts/realism: IAM per role, RDS states) and a real PostgreSQL server:
//! the emulated DB instance's endpoint and RDS-managed master secret point
//! at `scripts/testenv`'s server (`POST /realism/rds/backing`), which
//! speaks TLS with a certificate of the environment's CA, given to the
//! controller as the "RDS CA bundle". The worker is booted from its user
//! data like any other (tests/common/workers.rs): the script checks its
//! PostgreSQL client and fetches the CA bundle, the agent reads the secret
//! with its own role and dumps into the repository.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use common::postgres::{contents, drop_database, psql, server, unique_database};
use common::{REGION, TestEnv};
use kube::ResourceExt;
use serde_json::json;
use tender::api::{BackupRepository, Phase};
use tender::aws::AwsClients;
use tender::mover::Progress;
use tender::mover::dump::{self, LoadTarget};
use tender::mover::manifest::{Manifest, RepositoryLocation};

const TIMEOUT: Duration = Duration::from_secs(180);

async fn rds() -> aws_sdk_rds::Client {
    aws_sdk_rds::Client::new(&common::config_as(None).await)
}

async fn ec2() -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&common::config_as(None).await)
}

async fn db_groups(rds: &aws_sdk_rds::Client, id: &str) -> Vec<String> {
    let out = rds
        .describe_db_instances()
        .db_instance_identifier(id)
        .send()
        .await
        .unwrap();
    out.db_instances()[0]
        .vpc_security_groups()
        .iter()
        .filter_map(|g| g.vpc_security_group_id().map(String::from))
        .collect()
}

/// Tender's security groups tagged with `job_uid`.
async fn pair_of(ec2: &aws_sdk_ec2::Client, job_uid: &str) -> Vec<String> {
    ec2.describe_security_groups()
        .filters(
            Filter::builder()
                .name("tag:tender.dev/job-uid")
                .values(job_uid)
                .build(),
        )
        .send()
        .await
        .unwrap()
        .security_groups()
        .iter()
        .filter_map(|g| g.group_id().map(String::from))
        .collect()
}

/// Restore point `point` of the test's repository, as stored.
async fn stored(env: &TestEnv, point: &str) -> (AwsClients, RepositoryLocation, Manifest) {
    let repo: BackupRepository = env
        .cluster_api()
        .get(&env.repository().await)
        .await
        .unwrap();
    let loc = RepositoryLocation::of(&repo.spec, &env.namespace);
    let aws = AwsClients::from_env().await;
    let manifest = tender::mover::load_manifest(&aws, &loc, point)
        .await
        .unwrap();
    (aws, loc, manifest)
}

/// Restores a dump's databases into new ones named `<name>_back`.
async fn restore_back(
    aws: &AwsClients,
    loc: &RepositoryLocation,
    manifest: &Manifest,
    tag: &str,
) -> dump::LoadOutcome {
    let rename = |n: &str| format!("{n}_back");
    dump::restore(
        aws,
        loc,
        manifest,
        &LoadTarget {
            server: &server(),
            rename: &rename,
            only: &[],
            tag,
        },
        &Progress::default(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_postgres_instance_is_dumped_by_a_worker_that_alone_may_reach_it() {
    let env = TestEnv::without_controller("rds-dump").await;
    let ca = std::env::var("TENDER_PG_CA").expect("TENDER_PG_CA from scripts/testenv");
    env.start_controller_with(
        &[],
        &[("TENDER_RDS_CA_BUNDLE_URL", &format!("file://{ca}"))],
    );
    env.default_configuration().await;
    let (rds, ec2) = (rds().await, ec2().await);
    let db = common::unique("shop");
    let own_groups = common::postgres::backed_instance(&rds, &ec2, &db).await;

    // A database of the server with some rows, and one the job leaves out.
    let name = unique_database("orders");
    let other = unique_database("other");
    for d in [&name, &other] {
        psql("postgres", &format!("CREATE DATABASE \"{d}\""));
    }
    psql(
        &name,
        "CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, total numeric(12,2)); \
         INSERT INTO orders SELECT g, 'customer ' || (g % 97), g * 1.25 FROM generate_series(1, 20000) g",
    );
    let before = contents(&name);

    env.create_job_spec(
        "nightly",
        json!({
            "resources": [{"postgres": {"dbInstanceId": db, "databases": [name]}, "region": REGION}],
            "repositoryRef": {"name": env.repository().await},
            "backoffLimit": 0,
        }),
    )
    .await;
    // While the worker runs, the DB instance admits the job's database
    // group, and the worker is in the worker group.
    let running = env
        .wait_job("nightly", TIMEOUT, |j| {
            j.status.as_ref().is_some_and(|s| {
                s.workers
                    .first()
                    .is_some_and(|w| w.instance_id.is_some() && w.database_access.is_some())
            })
        })
        .await;
    let uid = running.uid().unwrap();
    let access = running.status.unwrap().workers[0]
        .database_access
        .clone()
        .unwrap();
    let groups_while = db_groups(&rds, &db).await;
    assert!(
        groups_while.contains(&access.database_security_group_id)
            && own_groups.iter().all(|g| groups_while.contains(g)),
        "{groups_while:?}"
    );
    let worker = env.workers_of(&uid).await;
    // Launched with one network interface that carries the groups.
    let worker_groups: Vec<String> = worker[0]
        .network_interfaces()
        .iter()
        .flat_map(|n| n.groups())
        .chain(worker[0].security_groups())
        .filter_map(|g| g.group_id().map(String::from))
        .collect();
    assert!(
        worker_groups.contains(&access.worker_security_group_id),
        "{worker_groups:?}"
    );
    // The pair's rules: worker → database group on the port, nothing else.
    let described = ec2
        .describe_security_groups()
        .group_ids(&access.worker_security_group_id)
        .group_ids(&access.database_security_group_id)
        .send()
        .await
        .unwrap();
    for g in described.security_groups() {
        let is_worker = g.group_id() == Some(access.worker_security_group_id.as_str());
        let (open, closed) = if is_worker {
            (g.ip_permissions_egress(), g.ip_permissions())
        } else {
            (g.ip_permissions(), g.ip_permissions_egress())
        };
        assert!(closed.is_empty(), "{g:?}");
        assert_eq!(open.len(), 1, "{g:?}");
        let rule = &open[0];
        assert_eq!(rule.from_port(), Some(i32::from(server().port)));
        assert!(rule.ip_ranges().is_empty(), "{g:?}");
        let peer = if is_worker {
            &access.database_security_group_id
        } else {
            &access.worker_security_group_id
        };
        assert_eq!(
            rule.user_id_group_pairs()[0].group_id(),
            Some(peer.as_str())
        );
    }

    let done = env.wait_job_finished("nightly", TIMEOUT).await;
    let status = done.status.unwrap();
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    let w = &status.workers[0];
    let point = format!("nightly/rds-pg-{db}");
    assert_eq!(w.resource, format!("rds-pg-{db}"));
    assert_eq!(w.restore_point.as_deref(), Some(point.as_str()));
    assert!(
        w.message.as_deref().is_some_and(|m| m.contains(&name)),
        "{w:?}"
    );
    assert!(w.terminated_time.is_some(), "{w:?}");
    // The pair is gone, from the DB instance and from EC2, before the job
    // finished.
    assert_eq!(w.database_access, None);
    assert_eq!(db_groups(&rds, &db).await, own_groups);
    assert!(pair_of(&ec2, &uid).await.is_empty());
    if common::realism::enabled() {
        // Whether a DeleteSecurityGroup met a DependencyViolation on the
        // way depends on how fast the emulator answers (RDS's removal lasts
        // 2 s), so it is not asserted; the pair being gone above while
        // realism refuses to delete a group still in use is the proof.
        // RDS took its time to add and to remove the group (`modifying`,
        // memberships `adding` / `removing`), and Tender waited for it.
        assert!(common::realism::counter("rds:security-groups-modifying").await >= 2);
    }
    let instances = env.workers_of(&uid).await;
    assert!(
        instances
            .iter()
            .all(|i| i.state().and_then(|s| s.name()).map(|n| n.as_str()) == Some("terminated")),
        "{instances:?}"
    );

    // The restore point holds the named database only, and restores.
    let (aws, loc, manifest) = stored(&env, &point).await;
    let dumped = manifest.database.as_ref().unwrap();
    assert_eq!(dumped.identifier, db);
    assert_eq!(
        dumped.vpc_security_group_ids, own_groups,
        "the DB instance's own groups"
    );
    let names: Vec<&str> = dumped
        .dump
        .as_ref()
        .unwrap()
        .databases
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(names, [name.as_str()]);
    let outcome = restore_back(&aws, &loc, &manifest, "rds-dump-test").await;
    let back = format!("{name}_back");
    assert_eq!(outcome.created, [back.as_str()]);
    assert_eq!(contents(&back), before);
    for d in [&name, &other, &back] {
        drop_database(d);
    }
}

/// A worker killed in the middle of a dump (its instance terminated, as a
/// Spot interruption or a person would): the attempt is lost, the next
/// one dumps again with the same security groups, and the restore point
/// is the retry's, whole; the dead attempt left no session on the server.
#[tokio::test]
async fn a_dump_whose_worker_dies_is_retried_and_leaves_only_the_retrys_restore_point() {
    let env = TestEnv::without_controller("rds-dump-kill").await;
    let ca = std::env::var("TENDER_PG_CA").expect("TENDER_PG_CA from scripts/testenv");
    env.start_controller_with(
        &[],
        &[("TENDER_RDS_CA_BUNDLE_URL", &format!("file://{ca}"))],
    );
    env.default_configuration().await;
    let (rds, ec2) = (rds().await, ec2().await);
    let db = common::unique("big");
    let own_groups = common::postgres::backed_instance(&rds, &ec2, &db).await;
    let name = unique_database("ledger");
    psql("postgres", &format!("CREATE DATABASE \"{name}\""));
    // Large enough to take seconds with a debug build's agent.
    psql(
        &name,
        "CREATE TABLE entries (id bigint PRIMARY KEY, account text NOT NULL, note text); \
         INSERT INTO entries SELECT g, 'account ' || (g % 1013), repeat(md5(g::text), 2) FROM generate_series(1, 400000) g",
    );
    let before = contents(&name);

    env.create_job_spec(
        "nightly",
        json!({
            "resources": [{"postgres": {"dbInstanceId": db, "databases": [name]}, "region": REGION}],
            "repositoryRef": {"name": env.repository().await},
            "backoffLimit": 1,
        }),
    )
    .await;
    let moving = env
        .wait_job("nightly", TIMEOUT, |j| {
            j.status.as_ref().is_some_and(|s| {
                s.workers.first().is_some_and(|w| {
                    w.attempt == 1 && w.phase == Phase::Running && w.bytes_done.unwrap_or(0) > 0
                })
            })
        })
        .await;
    let first = moving.status.unwrap().workers[0].clone();
    let killed_at = k8s_openapi::jiff::Timestamp::now();
    ec2.terminate_instances()
        .instance_ids(first.instance_id.clone().unwrap())
        .send()
        .await
        .unwrap();

    let done = env.wait_job_finished("nightly", TIMEOUT).await;
    let uid = done.uid().unwrap();
    let status = done.status.unwrap();
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    let w = &status.workers[0];
    assert_eq!((w.attempt, w.failures), (2, 1), "{w:?}");
    assert_ne!(w.instance_id, first.instance_id);
    assert_eq!(w.database_access, None);
    assert_eq!(db_groups(&rds, &db).await, own_groups);
    assert!(pair_of(&ec2, &uid).await.is_empty());
    // No session of the dead worker lingers on the server.
    assert_eq!(
        psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}'")
        ),
        "0"
    );

    let point = format!("nightly/rds-pg-{db}");
    let (aws, loc, manifest) = stored(&env, &point).await;
    let created: k8s_openapi::jiff::Timestamp = manifest.created_at.parse().unwrap();
    assert!(
        created > killed_at,
        "the retry's: {created} after {killed_at}"
    );
    restore_back(&aws, &loc, &manifest, "rds-dump-kill-test").await;
    let back = format!("{name}_back");
    assert_eq!(contents(&back), before);
    for d in [&name, &back] {
        drop_database(d);
    }
}

/// A dump restored through a worker into an existing, empty DB instance
/// (RestoreJob of mode `database`): the same kind of security group pair
/// opens the worker's path to that DB instance and closes it afterwards;
/// the database lost on the server comes back table for table, with the
/// progress in bytes; loading it a second time is refused, because the
/// database now holds tables, and changes nothing.
#[tokio::test]
async fn a_dump_is_loaded_by_a_worker_into_an_existing_empty_db_instance() {
    let env = TestEnv::without_controller("rds-dump-load").await;
    let ca = std::env::var("TENDER_PG_CA").expect("TENDER_PG_CA from scripts/testenv");
    env.start_controller_with(
        &[],
        &[("TENDER_RDS_CA_BUNDLE_URL", &format!("file://{ca}"))],
    );
    env.default_configuration().await;
    let (rds, ec2) = (rds().await, ec2().await);
    let db = common::unique("shop");
    common::postgres::backed_instance(&rds, &ec2, &db).await;
    // Another DB instance to load into (the emulator's endpoints of both
    // lead to the test's server).
    let spare = common::unique("spare");
    let spare_groups = common::postgres::backed_instance(&rds, &ec2, &spare).await;

    let name = unique_database("orders");
    psql("postgres", &format!("CREATE DATABASE \"{name}\""));
    psql(
        &name,
        "CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, total numeric(12,2)); \
         INSERT INTO orders SELECT g, 'customer ' || (g % 97), g * 1.25 FROM generate_series(1, 20000) g; \
         CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 100",
    );
    let before = contents(&name);
    env.create_job_spec(
        "nightly",
        json!({
            "resources": [{"postgres": {"dbInstanceId": db, "databases": [name]}, "region": REGION}],
            "repositoryRef": {"name": env.repository().await},
            "backoffLimit": 0,
        }),
    )
    .await;
    let backup = env.wait_job_finished("nightly", TIMEOUT).await;
    assert_eq!(backup.status.unwrap().phase, Phase::Succeeded);
    let point = format!("nightly/rds-pg-{db}");
    // The database is lost.
    drop_database(&name);

    // Refused before any worker: a DB instance that does not exist (a
    // dump is loaded into an existing one), and a new DB instance's
    // settings.
    let missing = common::unique("nowhere");
    env.create_restore(
        "to-nowhere",
        "database",
        &point,
        json!({"database": {"dbInstanceId": missing}}),
    )
    .await;
    env.create_restore(
        "as-new",
        "database",
        &point,
        json!({"database": {"dbInstanceId": spare, "dbInstanceClass": "db.t3.small"}}),
    )
    .await;
    for (job, reason) in [
        ("to-nowhere", "DatabaseRestoreTargetNotFound"),
        ("as-new", "RestoreModeMismatch"),
    ] {
        let s = env
            .wait_restore_finished(job, TIMEOUT)
            .await
            .status
            .unwrap();
        assert_eq!(s.phase, Phase::Failed, "{job}: {s:?}");
        assert_eq!(s.workers[0].reason.as_deref(), Some(reason), "{job}: {s:?}");
        assert!(s.workers[0].instance_id.is_none(), "{job}: no worker");
    }

    env.create_restore(
        "orders-back",
        "database",
        &point,
        json!({"database": {"dbInstanceId": spare, "databases": [name]}, "backoffLimit": 0}),
    )
    .await;
    // While the worker runs, the DB instance loaded into admits the job's
    // database group.
    let running = env
        .wait_restore("orders-back", TIMEOUT, |j| {
            j.status.as_ref().is_some_and(|s| {
                s.workers
                    .first()
                    .is_some_and(|w| w.instance_id.is_some() && w.database_access.is_some())
            })
        })
        .await;
    let uid = running.uid().unwrap();
    let access = running.status.unwrap().workers[0]
        .database_access
        .clone()
        .unwrap();
    let groups_while = db_groups(&rds, &spare).await;
    assert!(
        groups_while.contains(&access.database_security_group_id),
        "{groups_while:?}"
    );
    assert_eq!(pair_of(&ec2, &uid).await.len(), 2);

    let done = env.wait_restore_finished("orders-back", TIMEOUT).await;
    let status = done.status.unwrap();
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    let w = &status.workers[0];
    assert!(
        w.message
            .as_deref()
            .is_some_and(|m| m.contains(&name) && m.contains(&spare)),
        "{w:?}"
    );
    let loaded = w
        .restored_database
        .clone()
        .expect("the DB instance loaded into");
    assert_eq!(loaded.db_instance_id, spare);
    assert!(loaded.endpoint_address.is_some(), "{loaded:?}");
    // Progress in bytes, to the end.
    assert!(
        w.bytes_total.unwrap_or(0) > 0 && w.bytes_done == w.bytes_total,
        "{w:?}"
    );
    // The path is closed: no pair in EC2, the DB instance's own groups.
    assert!(w.terminated_time.is_some(), "{w:?}");
    assert_eq!(w.database_access, None);
    assert_eq!(db_groups(&rds, &spare).await, spare_groups);
    assert!(pair_of(&ec2, &uid).await.is_empty());
    assert_eq!(contents(&name), before, "every table as it was backed up");
    assert_eq!(
        psql(&name, "SELECT count(*) FROM big_orders"),
        psql(&name, "SELECT count(*) FROM orders WHERE total > 100")
    );

    // Loaded again into the same DB instance: the database holds tables
    // now, so the worker refuses before writing anything.
    env.create_restore(
        "orders-again",
        "database",
        &point,
        json!({"database": {"dbInstanceId": spare, "databases": [name]}}),
    )
    .await;
    let again = env.wait_restore_finished("orders-again", TIMEOUT).await;
    let again_uid = again.uid().unwrap();
    let s = again.status.unwrap();
    assert_eq!(s.phase, Phase::Failed, "{s:?}");
    assert_eq!(
        s.workers[0].reason.as_deref(),
        Some("DatabaseRestoreTargetNotEmpty"),
        "{s:?}"
    );
    assert_eq!(s.workers[0].database_access, None);
    assert!(pair_of(&ec2, &again_uid).await.is_empty());
    assert_eq!(db_groups(&rds, &spare).await, spare_groups);
    assert_eq!(contents(&name), before, "left as it was");
    drop_database(&name);
}
