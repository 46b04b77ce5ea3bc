use super::*;
use crate::api::{BackupJobSpec, BackupJobStatus, BackupWorkerStatus, JobLimits};

fn t(text: &str) -> Timestamp {
    text.parse().expect("timestamp")
}

fn job(name: &str, phase: Phase, done: Option<&str>, points: &[(&str, Phase)]) -> BackupJob {
    let mut j = BackupJob::new(
        name,
        BackupJobSpec {
            worker_configuration_ref: None,
            resources: Vec::new(),
            repository_ref: None,
            copy_to: None,
            limits: JobLimits::default(),
            suspend: false,
        },
    );
    let mut status = BackupJobStatus {
        phase,
        completion_time: done.map(|d| Time(t(d))),
        ..Default::default()
    };
    for (resource, phase) in points {
        let mut w = BackupWorkerStatus::default();
        w.worker.resource = (*resource).into();
        w.worker.phase = *phase;
        w.restore_point = Some(format!("{name}/{resource}"));
        status.workers.push(w);
    }
    j.status = Some(status);
    j
}

#[test]
fn active_runs_history_and_newest_restore_points() {
    let jobs = [
        job(
            "p-1",
            Phase::Succeeded,
            Some("2026-01-01T00:01:30Z"),
            &[("i-a", Phase::Succeeded)],
        ),
        job(
            "p-2",
            Phase::Failed,
            Some("2026-01-01T00:02:30Z"),
            &[("i-a", Phase::Failed)],
        ),
        job(
            "p-3",
            Phase::Succeeded,
            Some("2026-01-01T00:03:30Z"),
            &[("i-a", Phase::Succeeded)],
        ),
        job(
            "p-4",
            Phase::PartiallySucceeded,
            Some("2026-01-01T00:04:30Z"),
            &[("i-b", Phase::Succeeded), ("i-a", Phase::Failed)],
        ),
        job("p-5", Phase::Running, None, &[]),
    ];
    let refs: Vec<&BackupJob> = jobs.iter().collect();
    let runs = runs(&refs, 1, 1);
    assert_eq!(runs.active, ["p-5"]);
    // One success kept (p-3), one failure kept (p-4, the newest).
    assert_eq!(runs.prune, ["p-1", "p-2"]);
    assert_eq!(runs.last_successful, Some(t("2026-01-01T00:03:30Z")));
    assert_eq!(runs.newest["i-a"].0, "p-3/i-a");
    assert_eq!(runs.newest["i-b"].0, "p-4/i-b");
}

#[test]
fn ages_read_as_people_say_them() {
    let now = t("2026-01-02T00:00:00Z");
    assert_eq!(age(t("2026-01-01T23:59:15Z"), now), "45s");
    assert_eq!(age(t("2026-01-01T23:48:00Z"), now), "12m");
    assert_eq!(age(t("2026-01-01T21:00:00Z"), now), "3h");
    assert_eq!(age(t("2025-12-30T00:00:00Z"), now), "3d");
}

#[test]
fn pruned_runs_keep_their_restore_points_in_the_status() {
    let before = vec![ProtectedResource {
        id: "i-a".into(),
        source: NAMED.into(),
        newest_restore_point: Some("p-9/i-a".into()),
        newest_restore_point_time: Some(Time(t("2026-01-01T09:00:00Z"))),
        age: None,
    }];
    let newest = BTreeMap::from([(
        "i-b".to_string(),
        ("p-10/i-b".to_string(), t("2026-01-01T10:00:00Z")),
    )]);
    let sources = BTreeMap::from([("i-b".to_string(), SELECTED)]);
    let list = protected_resources(&before, &sources, &newest, t("2026-01-01T12:00:00Z"));
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].newest_restore_point.as_deref(), Some("p-9/i-a"));
    assert_eq!(list[0].age.as_deref(), Some("3h"));
    assert_eq!(list[1].source, SELECTED);
    assert_eq!(list[1].age.as_deref(), Some("2h"));
}

#[test]
fn missing_resources_are_named_ones_not_found_and_selected_ones_gone() {
    let before = vec![
        ProtectedResource {
            id: "i-gone".into(),
            source: SELECTED.into(),
            ..Default::default()
        },
        ProtectedResource {
            id: "i-here".into(),
            source: SELECTED.into(),
            ..Default::default()
        },
    ];
    let found = BTreeSet::from(["i-here".to_string()]);
    let now = t("2026-01-01T00:00:00Z");
    let missing = missing_resources(&[], &before, &["i-named".into()], &found, now);
    let ids: Vec<&str> = missing.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["i-gone", "i-named"]);
    // The first time missed is kept.
    let later = missing_resources(
        &missing,
        &before,
        &["i-named".into()],
        &found,
        t("2026-02-01T00:00:00Z"),
    );
    assert_eq!(later[1].since, Time(now));
}
