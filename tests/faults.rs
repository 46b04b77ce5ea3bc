//! The fault-injection suite: the controller killed at each step of the
//! lifecycle, the API server and the AWS emulator restarted mid-run,
//! injected AWS throttling and 5xx errors, a worker message arriving after
//! its attempt was replaced, and a table of invalid resources. Each case
//! checks that every job reaches a true final state and that no worker
//! instance is left running; the suite ends with a summary line.
//!
//! The cases run one after another in one test: two of them restart shared
//! services, which no other test may see (cargo runs test binaries one at a
//! time).
// Its helpers (not only its #[test]s, which clippy.toml covers) unwrap and panic.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use common::proxy::read_request;
use common::{REGION, TestEnv};
use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::{Api, ResourceExt};
use tender::api::{BackupJob, BackupRepository, Phase, RestoreJob, WorkerConfiguration};
use tender::messages::{PROTOCOL_VERSION, WorkerEvent, WorkerMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Default)]
struct Tally {
    cases: usize,
    faults: usize,
    leaked: usize,
    /// Restore points of succeeded resources checked, and those missing.
    restore_points: usize,
    lost: usize,
}

fn finished(j: &BackupJob) -> bool {
    j.status.as_ref().is_some_and(|s| s.phase.is_finished())
}

/// Live worker instances of this test's cluster (each case has its own).
async fn live_workers(env: &TestEnv) -> Vec<String> {
    let out = env
        .ec2
        .describe_instances()
        .filters(
            Filter::builder()
                .name("tag:tender.dev/cluster-id")
                .values(&env.cluster_id)
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
        .send()
        .await
        .unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.instance_id().map(String::from))
        .collect()
}

/// After a case: no live worker, and each job's instances are exactly its
/// attempts (no duplicate launch).
async fn check_no_leaks(env: &TestEnv, jobs: &[&str], tally: &mut Tally) {
    let live = live_workers(env).await;
    if !live.is_empty() {
        eprintln!("leaked workers in {}: {live:?}", env.namespace);
    }
    tally.leaked += live.len();
    let api: Api<BackupJob> = env.api();
    let aws = tender::aws::AwsClients::from_env().await;
    for name in jobs {
        let job = api.get(name).await.unwrap();
        // Every resource that succeeded has its restore point, readable, in
        // the namespace's part of the repository.
        let repo: BackupRepository = env
            .cluster_api()
            .get(&job.spec.repository_ref.as_ref().unwrap().name)
            .await
            .unwrap();
        let repository =
            tender::mover::manifest::RepositoryLocation::of(&repo.spec, &env.namespace);
        for w in &job.status.as_ref().unwrap().workers {
            if w.phase != Phase::Succeeded {
                continue;
            }
            tally.restore_points += 1;
            let found = match &w.restore_point {
                Some(id) => tender::mover::load_manifest(&aws, &repository, id)
                    .await
                    .is_ok(),
                None => false,
            };
            if !found {
                eprintln!(
                    "{name}: restore point {:?} of {} is lost",
                    w.restore_point, w.resource
                );
                tally.lost += 1;
            }
        }
        let attempts: i32 = job
            .status
            .as_ref()
            .unwrap()
            .workers
            .iter()
            .map(|w| w.attempt)
            .sum();
        let launched = env.workers_of(&job.uid().unwrap()).await.len() as i32;
        assert!(
            launched <= attempts,
            "{name}: {launched} instances for {attempts} attempts"
        );
    }
    tally.cases += 1;
}

fn testenv(args: &[&str]) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/testenv");
    let status = std::process::Command::new(script)
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "scripts/testenv {args:?} failed");
}

async fn crash_at(point: &str, tally: &mut Tally) {
    let env = TestEnv::without_controller("crash").await;
    let net = env.network().await;
    let protected = env.protected_disk().await;
    env.start_controller_with(&[], &[("TENDER_CRASH_AT", point)]);
    env.create_configuration("default", &net, serde_json::json!({}))
        .await;
    env.wait_configuration_ready("default").await;
    env.create_job("job", &protected, serde_json::json!({}))
        .await;
    common::eventually(TIMEOUT, || async {
        (!env.exited_controllers().is_empty()).then_some(())
    })
    .await;
    tally.faults += 1;
    env.kill_controller();
    env.start_controller();
    let job = env.wait_job("job", TIMEOUT, finished).await;
    assert_eq!(
        job.status.as_ref().unwrap().phase,
        Phase::Succeeded,
        "crash at {point}: {:?}",
        job.status
    );
    let instances = env.workers_of(&job.uid().unwrap()).await;
    assert_eq!(instances.len(), 1, "crash at {point}: exactly one worker");
    check_no_leaks(&env, &["job"], tally).await;
}

async fn api_server_restart(tally: &mut Tally) {
    let env = TestEnv::new("apirestart").await;
    env.boot_workers.store(false, Ordering::SeqCst);
    env.default_configuration().await;
    let protected = env.protected_disk().await;
    let names = ["a", "b", "c"];
    for n in names {
        env.create_job(n, &protected, serde_json::json!({})).await;
    }
    for n in names {
        env.wait_job(n, TIMEOUT, |j| {
            j.status.as_ref().is_some_and(|s| s.active_workers == 1)
        })
        .await;
    }
    testenv(&["restart", "apiserver"]);
    tally.faults += 1;
    env.boot_workers.store(true, Ordering::SeqCst);
    for n in names {
        let job = env.wait_job(n, TIMEOUT, finished).await;
        assert_eq!(job.status.unwrap().phase, Phase::Succeeded);
    }
    check_no_leaks(&env, &names, tally).await;
}

async fn aws_emulator_restart(tally: &mut Tally) {
    let env = TestEnv::new("awsrestart").await;
    env.boot_workers.store(false, Ordering::SeqCst);
    let protected = env.protected_disk().await;
    // Default VPC and a managed group: both exist again after the restart,
    // under new IDs, and the configuration follows them.
    env.create_configuration_spec(
        "default",
        serde_json::json!({"region": REGION, "imageId": "ami-0fedcba9876543210", "heartbeatTimeoutSeconds": 5, "bootTimeoutSeconds": 10}),
    )
    .await;
    env.wait_configuration_ready("default").await;
    env.create_job("job", &protected, serde_json::json!({"backoffLimit": 3}))
        .await;
    env.wait_job("job", TIMEOUT, |j| {
        j.status.as_ref().is_some_and(|s| s.active_workers == 1)
    })
    .await;
    // Everything in AWS is gone: the worker, the queue, the protected
    // snapshot, the repository. The worker is lost and retried; the retry's
    // agent finds no source and fails for good.
    testenv(&["restart", "moto"]);
    tally.faults += 1;
    // The admin puts the workers' roles back (IAM was lost too); the
    // controller's own session is unknown now, and acts as the account.
    if common::realism::enabled() {
        env.create_worker_roles().await;
    }
    // And the repository's bucket, empty: the agent the workers download
    // is published there again once a worker fails to boot without it.
    common::disks::s3()
        .await
        .create_bucket()
        .bucket(env.bucket().await)
        .send()
        .await
        .unwrap();
    env.boot_workers.store(true, Ordering::SeqCst);
    let job = env.wait_job("job", TIMEOUT, finished).await;
    let status = job.status.clone().unwrap();
    assert_eq!(status.phase, Phase::Failed, "{status:?}");
    let worker = &status.workers[0];
    assert!(
        worker.attempt >= 2,
        "the lost worker was retried: {worker:?}"
    );
    assert_eq!(
        worker.reason.as_deref(),
        Some("SourceSnapshotNotFound"),
        "{worker:?}"
    );
    check_no_leaks(&env, &["job"], tally).await;
}

/// A proxy in front of the emulator that answers some requests with an
/// error instead of forwarding them: every `every`-th EC2 call gets a 503
/// RequestLimitExceeded, every `every`-th SQS call a 500. One request per
/// connection.
async fn fault_proxy(upstream: String, every: usize, injected: Arc<AtomicUsize>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let counter = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            let upstream = upstream.clone();
            let counter = counter.clone();
            let injected = injected.clone();
            tokio::spawn(async move {
                let Some(request) = read_request(&mut client).await else {
                    return;
                };
                let head = String::from_utf8_lossy(&request).to_string();
                let sqs = head
                    .to_ascii_lowercase()
                    .contains("x-amz-target: amazonsqs.");
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                if n.is_multiple_of(every) {
                    injected.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = if sqs {
                        (
                            "500 Internal Server Error",
                            r#"{"__type":"InternalError","message":"injected"}"#.to_string(),
                        )
                    } else {
                        (
                            "503 Service Unavailable",
                            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded (injected).</Message></Error></Errors><RequestID>fault</RequestID></Response>".to_string(),
                        )
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = client.write_all(response.as_bytes()).await;
                    return;
                }
                let Ok(mut server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let request = force_close(&request);
                if server.write_all(&request).await.is_err() {
                    return;
                }
                let mut response = Vec::new();
                let _ = server.read_to_end(&mut response).await;
                let _ = client.write_all(&response).await;
            });
        }
    });
    port
}

/// The request with `Connection: close`, so the upstream ends the response.
fn force_close(request: &[u8]) -> Vec<u8> {
    let end = request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&request[..end]);
    let mut out: String = head
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect::<Vec<_>>()
        .join("\r\n");
    out.push_str("\r\nConnection: close\r\n\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&request[end + 4..]);
    bytes
}

async fn throttled_aws(tally: &mut Tally) {
    let env = TestEnv::without_controller("throttle").await;
    let upstream = std::env::var("AWS_ENDPOINT_URL")
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    let injected = Arc::new(AtomicUsize::new(0));
    let port = fault_proxy(upstream, 4, injected.clone()).await;
    let endpoint = format!("http://127.0.0.1:{port}");
    env.start_controller_with(&[], &[("AWS_ENDPOINT_URL", endpoint.as_str())]);
    env.default_configuration().await;
    let protected = env.protected_disk().await;
    let names = ["t1", "t2", "t3", "t4"];
    for n in names {
        env.create_job(n, &protected, serde_json::json!({})).await;
    }
    for n in names {
        let job = env.wait_job(n, TIMEOUT, finished).await;
        assert_eq!(job.status.unwrap().phase, Phase::Succeeded, "{n}");
        let launched = env
            .instances_tagged(
                "tender.dev/job-uid",
                &env.api::<BackupJob>().get(n).await.unwrap().uid().unwrap(),
            )
            .await;
        assert_eq!(
            launched.len(),
            1,
            "{n}: a throttled launch is retried, never duplicated"
        );
    }
    let n = injected.load(Ordering::SeqCst);
    assert!(n > 0, "the proxy injected faults");
    tally.faults += n;
    check_no_leaks(&env, &names, tally).await;
}

/// A database's backup under faults: the controller killed right after
/// CreateDBSnapshot (before its status names the snapshot), then every
/// fifth AWS request failed by a proxy. The job succeeds with exactly one
/// DB snapshot, no worker instance is launched, and nothing is left.
async fn database_under_faults(tally: &mut Tally) {
    let env = TestEnv::without_controller("rdsfaults").await;
    let upstream = std::env::var("AWS_ENDPOINT_URL")
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    let injected = Arc::new(AtomicUsize::new(0));
    let port = fault_proxy(upstream, 5, injected.clone()).await;
    let endpoint = format!("http://127.0.0.1:{port}");
    let conf = common::config_as(None).await;
    let rds = aws_sdk_rds::Client::new(&conf);
    let names = ["db1", "db2"];
    let mut ids = Vec::new();
    for n in names {
        let id = common::unique(&format!("faults-{n}"));
        rds.create_db_instance()
            .db_instance_identifier(&id)
            .engine("mysql")
            .db_instance_class("db.t3.micro")
            .allocated_storage(20)
            .master_username("admin")
            .master_user_password("not-a-real-password")
            .send()
            .await
            .unwrap();
        ids.push(id);
    }
    env.start_controller_with(
        &[],
        &[
            ("TENDER_CRASH_AT", "after-create-db-snapshot"),
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ],
    );
    env.default_configuration().await;
    let repository = env.repository().await;
    for (n, id) in names.iter().zip(&ids) {
        env.create_job_spec(
            n,
            serde_json::json!({
                "resources": [{"dbInstanceId": id, "region": REGION}],
                "repositoryRef": {"name": repository},
            }),
        )
        .await;
    }
    common::eventually(TIMEOUT, || async {
        (!env.exited_controllers().is_empty()).then_some(())
    })
    .await;
    tally.faults += 1;
    env.kill_controller();
    env.start_controller_with(&[], &[("AWS_ENDPOINT_URL", endpoint.as_str())]);
    for n in names {
        let job = env.wait_job(n, TIMEOUT, finished).await;
        let uid = job.uid().unwrap();
        let status = job.status.unwrap();
        assert_eq!(status.phase, Phase::Succeeded, "{n}: {status:?}");
        assert!(
            env.workers_of(&uid).await.is_empty(),
            "{n}: no worker instance"
        );
        let named = status.workers[0].database_snapshot.clone().unwrap();
        let taken: Vec<String> = rds
            .describe_db_snapshots()
            .snapshot_type("manual")
            .send()
            .await
            .unwrap()
            .db_snapshots()
            .iter()
            .filter(|s| {
                s.tag_list()
                    .iter()
                    .any(|t| t.key() == Some("tender.dev/job-uid") && t.value() == Some(&uid))
            })
            .filter_map(|s| s.db_snapshot_identifier().map(String::from))
            .collect();
        if taken != [named.snapshot_id.clone()] {
            eprintln!(
                "{n}: DB snapshots {taken:?}, the job names {}",
                named.snapshot_id
            );
            tally.leaked += taken.len().saturating_sub(1).max(1);
        }
    }
    tally.faults += injected.load(Ordering::SeqCst);
    check_no_leaks(&env, &names, tally).await;
}

/// A PostgreSQL dump under faults: the controller killed right after it
/// added the dump's security group to the DB instance (before its status
/// names the pair), then the next one's every fifth AWS request failed by
/// a proxy. The job succeeds through one worker; afterwards no worker, no
/// security group of the job, and the DB instance's own groups only.
async fn dump_under_faults(tally: &mut Tally) {
    let env = TestEnv::without_controller("dumpfaults").await;
    let upstream = std::env::var("AWS_ENDPOINT_URL")
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    let injected = Arc::new(AtomicUsize::new(0));
    let port = fault_proxy(upstream, 5, injected.clone()).await;
    let endpoint = format!("http://127.0.0.1:{port}");
    let conf = common::config_as(None).await;
    let rds = aws_sdk_rds::Client::new(&conf);
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let id = common::unique("faults-pg");
    let own_groups = common::postgres::backed_instance(&rds, &ec2, &id).await;
    let database = common::postgres::unique_database("faults");
    common::postgres::psql("postgres", &format!("CREATE DATABASE \"{database}\""));
    common::postgres::psql(
        &database,
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 1000)",
    );
    let ca = format!("file://{}", std::env::var("TENDER_PG_CA").unwrap());
    let ca_env = ("TENDER_RDS_CA_BUNDLE_URL", ca.as_str());
    // The first controller talks to the emulator directly, so that the
    // crash point is reached for sure (behind the proxy, a failed answer to
    // a ModifyDBInstance that RDS applied makes the retry skip the call).
    env.start_controller_with(
        &[],
        &[("TENDER_CRASH_AT", "after-modify-db-instance"), ca_env],
    );
    env.default_configuration().await;
    env.create_job_spec(
        "dump",
        serde_json::json!({
            "resources": [{"postgres": {"dbInstanceId": id, "databases": [database]}, "region": REGION}],
            "repositoryRef": {"name": env.repository().await},
        }),
    )
    .await;
    common::eventually(TIMEOUT, || async {
        (!env.exited_controllers().is_empty()).then_some(())
    })
    .await;
    tally.faults += 1;
    env.kill_controller();
    env.start_controller_with(&[], &[("AWS_ENDPOINT_URL", endpoint.as_str()), ca_env]);
    let job = env.wait_job("dump", TIMEOUT, finished).await;
    let uid = job.uid().unwrap();
    let status = job.status.unwrap();
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    assert_eq!(status.workers[0].database_access, None);
    let groups: Vec<String> = ec2
        .describe_security_groups()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:tender.dev/job-uid")
                .values(&uid)
                .build(),
        )
        .send()
        .await
        .unwrap()
        .security_groups()
        .iter()
        .filter_map(|g| g.group_id().map(String::from))
        .collect();
    if !groups.is_empty() {
        eprintln!("dump: security groups left: {groups:?}");
        tally.leaked += groups.len();
    }
    let on_db: Vec<String> = rds
        .describe_db_instances()
        .db_instance_identifier(&id)
        .send()
        .await
        .unwrap()
        .db_instances()[0]
        .vpc_security_groups()
        .iter()
        .filter_map(|g| g.vpc_security_group_id().map(String::from))
        .collect();
    if on_db != own_groups {
        eprintln!("dump: the DB instance's groups are {on_db:?}, were {own_groups:?}");
        tally.leaked += 1;
    }
    common::postgres::drop_database(&database);
    tally.faults += injected.load(Ordering::SeqCst);
    check_no_leaks(&env, &["dump"], tally).await;
}

async fn late_message_after_retry(tally: &mut Tally) {
    let env = TestEnv::new("late").await;
    env.boot_workers.store(false, Ordering::SeqCst);
    let net = env.network().await;
    let protected = env.protected_disk().await;
    env.create_configuration(
        "default",
        &net,
        serde_json::json!({"heartbeatTimeoutSeconds": 5, "bootTimeoutSeconds": 10}),
    )
    .await;
    let cfg = env.wait_configuration_ready("default").await;
    let queue = cfg.status.unwrap().queue_url.unwrap();
    let job = env
        .create_job("job", &protected, serde_json::json!({"backoffLimit": 2}))
        .await;
    let first = env
        .wait_job("job", TIMEOUT, |j| {
            j.status
                .as_ref()
                .is_some_and(|s| s.workers.first().is_some_and(|w| w.instance_id.is_some()))
        })
        .await;
    let old_instance = first.status.unwrap().workers[0]
        .instance_id
        .clone()
        .unwrap();
    let retried = env
        .wait_job("job", TIMEOUT, |j| {
            j.status
                .as_ref()
                .is_some_and(|s| s.workers[0].attempt == 2 && s.workers[0].instance_id.is_some())
        })
        .await;
    // Attempt 1 "completes" long after it was declared lost and replaced.
    let late = WorkerMessage {
        version: PROTOCOL_VERSION,
        namespace: env.namespace.clone(),
        job_name: "job".into(),
        job_uid: job.uid().unwrap(),
        resource: protected.clone(),
        instance_id: old_instance,
        attempt: 1,
        sequence: 99,
        event: WorkerEvent::Completed {
            detail: "too late".into(),
            restore_point: Some("job/too-late".into()),
            snapshot_id: None,
            snapshots: Vec::new(),
            bytes: None,
            machine: None,
            retention: None,
            verification: None,
        },
    };
    common::sqs()
        .await
        .send_message()
        .queue_url(&queue)
        .message_body(serde_json::to_string(&late).unwrap())
        .send()
        .await
        .unwrap();
    tally.faults += 1;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: BackupJob = env.api().get("job").await.unwrap();
    let w = &after.status.as_ref().unwrap().workers[0];
    assert_eq!(
        (w.attempt, w.phase),
        (2, Phase::Provisioning),
        "the late message changed nothing: {w:?}"
    );
    assert_eq!(
        w.instance_id,
        retried.status.unwrap().workers[0].instance_id
    );
    env.boot_workers.store(true, Ordering::SeqCst);
    let done = env.wait_job("job", TIMEOUT, finished).await;
    assert_eq!(done.status.unwrap().phase, Phase::Succeeded);
    check_no_leaks(&env, &["job"], tally).await;
}

/// Invalid resources: each is refused by the API server's schema with a
/// message that names the problem, so it never reaches the controller.
async fn bad_input(tally: &mut Tally) {
    let client = common::kube_client().await;
    common::install_crds(&client).await;
    let cfg = serde_json::json!({
        "region": "us-east-1", "subnets": [{"subnetId": "subnet-0123abcd"}],
        "securityGroupIds": ["sg-0123abcd"], "imageId": "ami-0123abcd"
    });
    let with = |base: &serde_json::Value, key: &str, value: serde_json::Value| {
        let mut s = base.clone();
        s[key] = value;
        s
    };
    let without = |base: &serde_json::Value, key: &str| {
        let mut s = base.clone();
        s.as_object_mut().unwrap().remove(key);
        s
    };
    let job = serde_json::json!({
        "resources": [{"instanceId": "i-0123abcd", "region": "us-east-1"}],
        "repositoryRef": {"name": "acme-backups"}
    });
    let repository = serde_json::json!({
        "bucket": "acme-backups", "region": "us-east-1", "expectedBucketOwner": "123456789012",
        "integrity": {"macKeyId": "alias/tender-integrity"}
    });
    let resources =
        |id: &str, region: &str| serde_json::json!([{"instanceId": id, "region": region}]);
    let many: Vec<serde_json::Value> = (0..101)
        .map(|i| serde_json::json!({"instanceId": format!("i-{:08x}", i), "region": "us-east-1"}))
        .collect();
    let restore = serde_json::json!({
        "mode": "volume", "restorePoint": "nightly/i-0123abcd", "region": "us-east-1",
        "repositoryRef": {"name": "acme-backups"}
    });
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "BackupJob",
            with(&job, "resources", resources("vol-0123abcd", "us-east-1")),
            "instanceId",
        ),
        (
            "BackupJob",
            with(&job, "resources", resources("i-0123ABCD", "us-east-1")),
            "instanceId",
        ),
        (
            "BackupJob",
            with(&job, "resources", resources("i-123", "us-east-1")),
            "instanceId",
        ),
        (
            "BackupJob",
            with(&job, "resources", resources("i-0123abcd", "mars-1")),
            "region",
        ),
        (
            "BackupJob",
            with(&job, "resources", resources("i-0123abcd", "US-EAST-1")),
            "region",
        ),
        (
            "BackupJob",
            with(
                &job,
                "resources",
                serde_json::json!([{"instanceId": "i-0123abcd"}]),
            ),
            "region",
        ),
        (
            "BackupJob",
            with(&job, "resources", serde_json::json!([])),
            "resources",
        ),
        ("BackupJob", serde_json::json!({}), "resources"),
        (
            "BackupJob",
            with(&job, "resources", serde_json::json!(many)),
            "resources",
        ),
        (
            "BackupJob",
            with(
                &job,
                "resources",
                serde_json::json!([
                {"instanceId": "i-0123abcd", "region": "us-east-1"},
                {"instanceId": "i-0123abcd", "region": "us-east-1"}]),
            ),
            "each resource may be listed once",
        ),
        (
            "BackupJob",
            with(
                &job,
                "resources",
                serde_json::json!([{"instanceId": "i-0123abcd", "snapshotId": "snap-0123abcd", "region": "us-east-1"}]),
            ),
            "exactly one of instanceId, snapshotId, dbInstanceId, dbClusterId and postgres",
        ),
        (
            "BackupJob",
            with(
                &job,
                "resources",
                serde_json::json!([{"instanceId": "i-0123abcd", "dbInstanceId": "orders", "region": "us-east-1"}]),
            ),
            "exactly one of instanceId, snapshotId, dbInstanceId, dbClusterId and postgres",
        ),
        (
            "BackupJob",
            with(
                &job,
                "resources",
                serde_json::json!([{"dbInstanceId": "Orders", "region": "us-east-1"}]),
            ),
            "dbInstanceId",
        ),
        (
            "BackupJob",
            with(
                &job,
                "resources",
                serde_json::json!([{"dbInstanceId": "orders-", "region": "us-east-1"}]),
            ),
            "dbInstanceId",
        ),
        (
            "BackupJob",
            with(
                &job,
                "resources",
                serde_json::json!([{"dbInstanceId": "orders--db", "region": "us-east-1"}]),
            ),
            "no two hyphens in a row",
        ),
        (
            "BackupJob",
            with(
                &job,
                "resources",
                serde_json::json!([{"postgres": {"dbInstanceId": "orders--db"}, "region": "us-east-1"}]),
            ),
            "no two hyphens in a row",
        ),
        (
            "BackupJob",
            with(
                &job,
                "resources",
                serde_json::json!([{"postgres": {"dbInstanceId": "orders", "databases": [""]}, "region": "us-east-1"}]),
            ),
            "a PostgreSQL database name has 1 to 63 characters",
        ),
        (
            "BackupJob",
            with(
                &job,
                "resources",
                serde_json::json!([{"postgres": {"dbInstanceId": "orders"}, "dbInstanceId": "orders", "region": "us-east-1"}]),
            ),
            "exactly one of instanceId, snapshotId, dbInstanceId, dbClusterId and postgres",
        ),
        (
            "BackupJob",
            with(
                &with(&job, "copyTo", serde_json::json!([{"region": "us-west-2"}])),
                "resources",
                serde_json::json!([{"postgres": {"dbInstanceId": "orders"}, "region": "us-east-1"}]),
            ),
            "copyTo applies to RDS DB instances (dbInstanceId) and DB clusters (dbClusterId) only",
        ),
        (
            "BackupJob",
            with(
                &job,
                "resources",
                serde_json::json!([{"dbInstanceId": "1orders", "region": "us-east-1"}]),
            ),
            "dbInstanceId",
        ),
        (
            "BackupJob",
            with(
                &job,
                "resources",
                serde_json::json!([{"dbInstanceId": "o".repeat(64), "region": "us-east-1"}]),
            ),
            "dbInstanceId",
        ),
        (
            "BackupJob",
            with(
                &job,
                "resources",
                serde_json::json!([{"snapshotId": "snap-xyz", "region": "us-east-1"}]),
            ),
            "snapshotId",
        ),
        (
            "BackupJob",
            without(&job, "repositoryRef"),
            "spec.repositoryRef is required",
        ),
        (
            "BackupJob",
            with(&job, "repositoryRef", serde_json::json!({"name": ""})),
            "repositoryRef.name",
        ),
        (
            "BackupRepository",
            with(&repository, "bucket", serde_json::json!("Not_A_Bucket")),
            "bucket",
        ),
        (
            "BackupRepository",
            with(&repository, "prefix", serde_json::json!("../escape")),
            "prefix",
        ),
        ("BackupRepository", without(&repository, "region"), "region"),
        (
            "BackupRepository",
            with(
                &repository,
                "expectedBucketOwner",
                serde_json::json!("12345"),
            ),
            "expectedBucketOwner",
        ),
        (
            "BackupRepository",
            without(&repository, "expectedBucketOwner"),
            "expectedBucketOwner",
        ),
        (
            "BackupRepository",
            with(
                &repository,
                "encryption",
                serde_json::json!({"type": "SSE-KMS"}),
            ),
            "SSE-KMS needs kmsKeyId",
        ),
        (
            "BackupRepository",
            with(
                &repository,
                "encryption",
                serde_json::json!({"type": "SSE-S3", "kmsKeyId": "alias/backups"}),
            ),
            "kmsKeyId applies only to type SSE-KMS",
        ),
        (
            "BackupRepository",
            with(
                &repository,
                "encryption",
                serde_json::json!({"type": "AES"}),
            ),
            "encryption.type",
        ),
        (
            "BackupJob",
            with(&job, "backoffLimit", serde_json::json!(-1)),
            "backoffLimit",
        ),
        (
            "BackupJob",
            with(&job, "backoffLimit", serde_json::json!(1000)),
            "backoffLimit",
        ),
        (
            "BackupJob",
            with(&job, "activeDeadlineSeconds", serde_json::json!(0)),
            "activeDeadlineSeconds",
        ),
        (
            "BackupJob",
            with(&job, "ttlSecondsAfterFinished", serde_json::json!(-5)),
            "ttlSecondsAfterFinished",
        ),
        (
            "BackupJob",
            with(
                &job,
                "workerConfigurationRef",
                serde_json::json!({"name": ""}),
            ),
            "name",
        ),
        (
            "BackupJob",
            with(&job, "suspend", serde_json::json!("yes")),
            "suspend",
        ),
        (
            "WorkerConfiguration",
            with(&cfg, "tags", serde_json::json!({"aws:owner": "x"})),
            "must not start with 'aws:'",
        ),
        (
            "WorkerConfiguration",
            with(&cfg, "tags", serde_json::json!({"tender.dev/job-uid": "x"})),
            "tender.dev/",
        ),
        (
            "WorkerConfiguration",
            with(&cfg, "tags", serde_json::json!({"k".repeat(129): "v"})),
            "tag keys",
        ),
        (
            "WorkerConfiguration",
            with(&cfg, "tags", serde_json::json!({"k": "v".repeat(257)})),
            "tag values",
        ),
        (
            "WorkerConfiguration",
            with(
                &cfg,
                "tags",
                serde_json::json!(
                    (0..26)
                        .map(|i| (format!("k{i}"), "v"))
                        .collect::<std::collections::BTreeMap<_, _>>()
                ),
            ),
            "tags",
        ),
        (
            "WorkerConfiguration",
            with(&cfg, "subnets", serde_json::json!([{"subnetId": "sn-1"}])),
            "subnetId",
        ),
        (
            "WorkerConfiguration",
            with(&cfg, "securityGroupIds", serde_json::json!(["group-1"])),
            "securityGroupIds",
        ),
        (
            "WorkerConfiguration",
            with(&cfg, "imageId", serde_json::json!("ubuntu")),
            "imageId",
        ),
        (
            "WorkerConfiguration",
            with(&cfg, "bootTimeoutSeconds", serde_json::json!(0)),
            "bootTimeoutSeconds",
        ),
        (
            "WorkerConfiguration",
            with(
                &cfg,
                "imageSsmParameter",
                serde_json::json!("/aws/service/ami"),
            ),
            "at most one of imageId and imageSsmParameter",
        ),
        (
            "WorkerConfiguration",
            with(
                &with(&cfg, "privateNetwork", serde_json::json!(true)),
                "assignPublicIp",
                serde_json::json!(true),
            ),
            "no public IP",
        ),
        (
            "WorkerConfiguration",
            with(&cfg, "heartbeatTimeoutSeconds", serde_json::json!(1)),
            "heartbeatTimeoutSeconds",
        ),
        (
            "WorkerConfiguration",
            with(&cfg, "maxConcurrentWorkers", serde_json::json!(0)),
            "maxConcurrentWorkers",
        ),
        (
            "WorkerConfiguration",
            with(&cfg, "instanceTypes", serde_json::json!({"backup": "huge"})),
            "backup",
        ),
        (
            "WorkerConfiguration",
            with(
                &cfg,
                "fileLevelRecoveryCidrs",
                serde_json::json!(["everyone"]),
            ),
            "fileLevelRecoveryCidrs",
        ),
        (
            "WorkerConfiguration",
            with(&cfg, "rootVolume", serde_json::json!({"sizeGib": 4})),
            "sizeGib",
        ),
        (
            "WorkerConfiguration",
            with(&cfg, "region", serde_json::json!("earth")),
            "region",
        ),
        (
            "WorkerConfiguration",
            with(&cfg, "account", serde_json::json!("shared")),
            "account",
        ),
        (
            "WorkerConfiguration",
            with(
                &cfg,
                "backupAccount",
                serde_json::json!({"roleArn": "tender-workers"}),
            ),
            "roleArn",
        ),
        (
            "WorkerConfiguration",
            with(
                &cfg,
                "allowedSources",
                serde_json::json!({"accounts": ["prod"]}),
            ),
            "allowedSources.accounts",
        ),
        (
            "WorkerConfiguration",
            with(
                &cfg,
                "namespaceSelector",
                serde_json::json!({"matchLabels": "team-a"}),
            ),
            "namespaceSelector",
        ),
        (
            "RestoreJob",
            with(&restore, "mode", serde_json::json!("partial")),
            "mode",
        ),
        (
            "RestoreJob",
            with(&restore, "mode", serde_json::json!("database")),
            "mode database needs spec.database",
        ),
        (
            "RestoreJob",
            with(
                &restore,
                "database",
                serde_json::json!({"dbInstanceId": "orders-copy"}),
            ),
            "mode database needs spec.database",
        ),
        (
            "RestoreJob",
            with(
                &with(&restore, "mode", serde_json::json!("database")),
                "database",
                serde_json::json!({"dbInstanceId": "Orders"}),
            ),
            "dbInstanceId",
        ),
        (
            "RestoreJob",
            with(&restore, "idleTimeoutMinutes", serde_json::json!(30)),
            "idleTimeoutMinutes applies only to mode fileLevel",
        ),
        (
            "RestoreJob",
            with(&restore, "restorePoint", serde_json::json!("")),
            "restorePoint",
        ),
        (
            "RestoreJob",
            with(
                &restore,
                "restorePoint",
                serde_json::json!("no-resource-part"),
            ),
            "restorePoint",
        ),
        (
            "RestoreJob",
            without(&restore, "repositoryRef"),
            "spec.repositoryRef is required",
        ),
        (
            "RestoreJob",
            with(
                &with(&restore, "mode", serde_json::json!("fileLevel")),
                "restoreFilesTo",
                serde_json::json!({"repositoryRef": {"name": "acme-backups"}, "prefix": "../up"}),
            ),
            "prefix",
        ),
        (
            "RestoreJob",
            with(
                &with(&restore, "mode", serde_json::json!("fileLevel")),
                "restoreFilesTo",
                serde_json::json!({"bucket": "acme-backups"}),
            ),
            "restoreFilesTo.repositoryRef",
        ),
        (
            "RestoreJob",
            with(
                &restore,
                "restoreFilesTo",
                serde_json::json!({"repositoryRef": {"name": "acme-backups"}}),
            ),
            "restoreFilesTo applies only to mode fileLevel",
        ),
        (
            "RestoreJob",
            with(&restore, "mode", serde_json::json!("full")),
            "mode full needs instanceType",
        ),
        (
            "RestoreJob",
            with(&restore, "instanceType", serde_json::json!("m5.large")),
            "instanceType and securityGroupIds apply only to mode full",
        ),
        (
            "RestoreJob",
            with(&restore, "backoffLimit", serde_json::json!(99)),
            "backoffLimit",
        ),
    ];
    assert!(cases.len() >= 30, "{} cases", cases.len());
    for (kind, spec, expected) in &cases {
        // WorkerConfigurations and BackupRepositories are cluster-scoped.
        let (resource, namespaced) = match *kind {
            "BackupJob" => (ApiResource::erase::<BackupJob>(&()), true),
            "RestoreJob" => (ApiResource::erase::<RestoreJob>(&()), true),
            "BackupRepository" => (ApiResource::erase::<BackupRepository>(&()), false),
            _ => (ApiResource::erase::<WorkerConfiguration>(&()), false),
        };
        let (metadata, api): (_, Api<DynamicObject>) = if namespaced {
            (
                serde_json::json!({"name": "invalid", "namespace": "default"}),
                Api::namespaced_with(client.clone(), "default", &resource),
            )
        } else {
            (
                serde_json::json!({"name": "invalid"}),
                Api::all_with(client.clone(), &resource),
            )
        };
        let obj = serde_json::json!({
            "apiVersion": "tender.dev/v1alpha1", "kind": kind,
            "metadata": metadata, "spec": spec
        });
        let object: DynamicObject = serde_json::from_value(obj).unwrap();
        match api.create(&PostParams::default(), &object).await {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{kind} {spec}: {status:?}");
                assert!(
                    status.message.contains(expected),
                    "{kind} {spec}: {:?} does not name {expected:?}",
                    status.message
                );
            }
            other => panic!("{kind} {spec} was accepted: {other:?}"),
        }
        tally.faults += 1;
    }
    tally.cases += 1;
}

#[tokio::test]
async fn fault_injection_suite() {
    let mut tally = Tally::default();
    for point in [
        "after-token-write",
        "after-run-instances",
        "after-status-write",
        "after-terminate-instances",
    ] {
        crash_at(point, &mut tally).await;
    }
    late_message_after_retry(&mut tally).await;
    throttled_aws(&mut tally).await;
    database_under_faults(&mut tally).await;
    dump_under_faults(&mut tally).await;
    api_server_restart(&mut tally).await;
    aws_emulator_restart(&mut tally).await;
    bad_input(&mut tally).await;
    let summary = format!(
        "fault-injection summary: {} cases run, {} faults injected, {} leaked instances, security groups or DB snapshots, {} lost restore points (of {} checked)",
        tally.cases, tally.faults, tally.leaked, tally.lost, tally.restore_points
    );
    println!("{summary}");
    // scripts/test prints it after the run (cargo hides a passing test's output).
    std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fault-injection-summary.txt"),
        format!("{summary}\n"),
    )
    .unwrap();

    assert_eq!(tally.leaked, 0, "leaked worker instances");
    assert_eq!(tally.lost, 0, "lost restore points");
    assert!(tally.restore_points > 0, "the suite checked restore points");
}
