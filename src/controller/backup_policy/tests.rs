use super::*;
use crate::api::{BackupPolicySpec, LocalObjectReference, PolicyResource};

fn policy(schedule: &str, zone: &str) -> BackupPolicy {
    let mut p = BackupPolicy::new(
        "nightly",
        BackupPolicySpec {
            schedule: schedule.into(),
            time_zone: zone.into(),
            starting_deadline_seconds: None,
            concurrency_policy: Default::default(),
            suspend: false,
            region: "eu-west-1".into(),
            resources: vec![PolicyResource {
                instance_id: Some("i-0123456789abcdef0".into()),
                ..Default::default()
            }],
            instance_selectors: Vec::new(),
            database_selectors: Vec::new(),
            repository_ref: LocalObjectReference {
                name: "main".into(),
            },
            worker_configuration_ref: None,
            job_limits: None,
            successful_jobs_history_limit: 3,
            failed_jobs_history_limit: 1,
            retention: None,
            verification: None,
        },
    );
    p.metadata.namespace = Some("team".into());
    p.metadata.uid = Some("uid-1".into());
    p
}

#[test]
fn invalid_schedules_zones_and_names_say_what_to_fix() {
    assert!(parse(&policy("0 2 * * *", "Europe/Berlin")).is_ok());
    let e = parse(&policy("0 25 * * *", "UTC")).err().expect("invalid");
    assert!(e.contains("spec.schedule") && e.contains("hour 25"), "{e}");
    let e = parse(&policy("@daily", "Mars/Olympus"))
        .err()
        .expect("invalid");
    assert!(e.contains("spec.timeZone") && e.contains("IANA"), "{e}");
    let mut p = policy("@daily", "UTC");
    p.metadata.name = Some("p".repeat(53));
    let e = parse(&p).err().expect("invalid");
    assert!(e.contains("longer than 52"), "{e}");
}

#[test]
fn a_run_is_a_backup_job_owned_by_the_policy_and_named_after_its_minute() {
    let p = policy("* * * * *", "UTC");
    let due: Timestamp = "2026-12-01T10:00:00Z".parse().expect("ts");
    let name = runs::job_name("nightly", due);
    let job = job_for(&p, &name, due, &["i-0123456789abcdef0".into()]).expect("job");
    assert_eq!(job.name_any(), name);
    assert_eq!(
        job.labels().get(POLICY_LABEL).map(String::as_str),
        Some("nightly")
    );
    assert_eq!(
        job.annotations()
            .get(SCHEDULED_TIME_ANNOTATION)
            .map(String::as_str),
        Some("2026-12-01T10:00:00Z")
    );
    let owner = &job.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("BackupPolicy", "uid-1")
    );
    assert_eq!(owner.controller, Some(true));
    assert_eq!(job.spec.resources[0].region, "eu-west-1");
    assert_eq!(
        job.spec.repository_ref.as_ref().map(|r| r.name.as_str()),
        Some("main")
    );
    assert_eq!(
        job.spec.limits.ttl_seconds_after_finished, None,
        "history limits prune, not a TTL"
    );
}

#[test]
fn the_next_run_is_awaited_to_its_minute_but_never_longer_than_the_refresh() {
    let now: Timestamp = "2026-12-01T10:00:20Z".parse().expect("ts");
    let next: Timestamp = "2026-12-01T10:01:00Z".parse().expect("ts");
    assert_eq!(requeue_after(Some(next), now), Duration::from_secs(40));
    let far: Timestamp = "2026-12-02T10:01:00Z".parse().expect("ts");
    assert_eq!(requeue_after(Some(far), now), REFRESH);
    assert_eq!(requeue_after(None, now), REFRESH);
}

#[test]
fn the_preview_names_what_the_next_run_expires() {
    use crate::api::restore_point::{DELETE_ANNOTATION, RestorePointStatus};
    use crate::api::{RestorePoint, RestorePointSpec};
    use crate::policy::retention::{Retention, Rules};
    let point = |job: &str, minute: i64, policy: Option<&str>| {
        let id = format!("{job}/i-1");
        let mut p = RestorePoint::new(
            &format!("{job}.i-1"),
            RestorePointSpec {
                repository_ref: LocalObjectReference {
                    name: "main".into(),
                },
                id,
                resource: "i-1".into(),
                region: "eu-west-1".into(),
                created_at: Time(Timestamp::from_second(1_800_000_000 + minute * 60).expect("t")),
                job_name: job.into(),
                policy: policy.map(String::from),
                parent: None,
                volumes: 1,
                logical_bytes: 0,
                stored_bytes: 0,
                engine: None,
                database_snapshots: Vec::new(),
            },
        );
        if let Some(name) = policy {
            p.labels_mut().insert(POLICY_LABEL.into(), name.into());
        }
        p
    };
    let mut held = point("a", 1, Some("nightly"));
    held.status = Some(RestorePointStatus {
        held: true,
        last_verification: None,
    });
    let mut asked = point("manual", 0, None);
    asked
        .annotations_mut()
        .insert(DELETE_ANNOTATION.into(), "true".into());
    let points = [
        held,
        point("b", 2, Some("nightly")),
        point("c", 3, Some("nightly")),
        point("other", 4, Some("weekly")),
        asked,
    ];
    let rules = Rules::of(&Retention {
        keep_last: Some(1),
        ..Retention::default()
    })
    .expect("rules");
    let at = Timestamp::from_second(1_800_010_000).expect("t");
    let p = preview::expiring(&rules, &TimeZone::UTC, ("nightly", &points), at);
    // keepLast 1 keeps c; a is held; b expires; another policy's point is
    // not this policy's to expire; the one asked for goes.
    assert_eq!(p.expires, ["b/i-1", "manual/i-1"]);
    assert_eq!((p.expires_count, p.restore_points), (2, 3));
}

#[test]
fn a_run_backs_up_each_kind_of_resource_as_its_job_resource() {
    let mut p = policy("@daily", "UTC");
    p.spec.resources.push(PolicyResource {
        postgres: Some(PostgresSource {
            db_instance_id: "orders".into(),
            databases: vec!["shop".into()],
        }),
        ..Default::default()
    });
    let ids = [
        "i-0123456789abcdef0".to_string(),
        "rds-db-ledger".to_string(),
        "rds-pg-orders".to_string(),
        "rds-pg-other".to_string(),
    ];
    let job = job_for(&p, "nightly-1", Timestamp::UNIX_EPOCH, &ids).expect("a job");
    let ids_back: Vec<String> = job.spec.resources.iter().map(|r| r.id()).collect();
    assert_eq!(ids_back, ids, "each resource keeps its ID");
    let r = &job.spec.resources;
    assert_eq!(r[1].db_instance_id.as_deref(), Some("ledger"));
    // The databases named for a dump in spec.resources; a selected DB
    // instance's every database.
    assert_eq!(
        r[2].postgres.as_ref().map(|p| p.databases.clone()),
        Some(vec!["shop".into()])
    );
    assert_eq!(r[3].postgres.as_ref().map(|p| p.databases.len()), Some(0));
}
