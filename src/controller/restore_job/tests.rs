use super::usable::workers_account;
use super::*;
use crate::aws::ebs::SnapshotInfo;

fn snapshot(owner: &str, job_uid: Option<&str>) -> SnapshotInfo {
    SnapshotInfo {
        snapshot_id: "snap-0123456789abcdef0".into(),
        state: "completed".into(),
        progress: Some("100%".into()),
        state_message: None,
        volume_size_gib: 8,
        volume_id: None,
        tags: job_uid
            .map(|u| (tags::JOB_UID.to_string(), u.to_string()))
            .into_iter()
            .collect(),
        owner_id: Some(owner.into()),
        start_time: None,
    }
}

#[test]
fn only_the_workers_own_snapshots_are_restored() {
    const ACCOUNT: &str = "111122223333";
    const UID: &str = "5f0c7a1e-job";
    let id = "snap-0123456789abcdef0";
    let own = snapshot(ACCOUNT, Some(UID));
    let cases = [
        ("its own", Some(own.clone()), Some(ACCOUNT), None),
        ("missing", None, Some(ACCOUNT), Some("does not exist")),
        (
            "another account's",
            Some(snapshot("444455556666", Some(UID))),
            Some(ACCOUNT),
            Some("owned by account 444455556666"),
        ),
        (
            "untagged",
            Some(snapshot(ACCOUNT, None)),
            Some(ACCOUNT),
            Some("does not carry this job's tag"),
        ),
        (
            "another job's",
            Some(snapshot(ACCOUNT, Some("other-job"))),
            Some(ACCOUNT),
            Some("does not carry this job's tag"),
        ),
        (
            "no known account",
            Some(own),
            None,
            Some("not by the workers' account ?"),
        ),
    ];
    for (name, found, account, want) in cases {
        let got = snapshot_problem(id, found.as_ref(), UID, account);
        match (got, want) {
            (None, None) => {}
            (Some(problem), Some(want)) => assert!(problem.contains(want), "{name}: {problem}"),
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn the_workers_account_is_their_roles() {
    let mut config: WorkerConfiguration = serde_json::from_value(serde_json::json!({
        "apiVersion": "tender.dev/v1alpha1", "kind": "WorkerConfiguration",
        "metadata": {"name": "c"}, "spec": {"region": "us-east-1", "imageId": "ami-01234567"},
        "status": {"accountId": "111122223333"}
    }))
    .unwrap();
    let mut w = WorkerStatus::default();
    assert_eq!(
        workers_account(&w, &config).as_deref(),
        Some("111122223333")
    );
    w.access = Some(crate::api::AccountAccess {
        role_arn: "arn:aws:iam::444455556666:role/tender-backup".into(),
        external_id: None,
    });
    assert_eq!(
        workers_account(&w, &config).as_deref(),
        Some("444455556666")
    );
    config.status = None;
    w.access = None;
    assert_eq!(workers_account(&w, &config), None);
}

#[test]
fn a_restore_attaches_only_groups_the_admin_lists() {
    let listed = vec!["sg-0aaaaaaa".to_string(), "sg-0bbbbbbb".to_string()];
    let cases: [(&[&str], &[String], Option<&str>); 5] = [
        (&[], &[], None),
        (&["sg-0aaaaaaa"], &listed, None),
        (&["sg-0aaaaaaa", "sg-0bbbbbbb"], &listed, None),
        (
            &["sg-0aaaaaaa", "sg-0ccccccc"],
            &listed,
            Some("sg-0ccccccc"),
        ),
        (&["sg-0aaaaaaa"], &[], Some("sg-0aaaaaaa")),
    ];
    for (requested, allowed, want) in cases {
        let requested: Vec<String> = requested.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            group_not_allowed(&requested, allowed),
            want,
            "{requested:?}"
        );
    }
}
