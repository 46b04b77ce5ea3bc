//! Each worker profile has its own policy (`iam/worker-<profile>-policy.json`)
//! that grants exactly what that profile's worker calls: a backup takes and
//! reads snapshots and writes restore points, a restore reads restore
//! points and writes new snapshots, a file-level recovery session reads
//! restore points and writes restored files only. The repository is named
//! by placeholders an admin replaces (`iam/README.md`); the checks replace
//! them with a sample repository and ask which keys the code's own layout
//! (`RepositoryLocation`) lets each profile read and write.

use super::*;
use crate::repository::{BUCKET, OWNER, PREFIX, Sample, keys};

pub fn file(profile: WorkerProfile) -> &'static str {
    match profile {
        WorkerProfile::Backup => "worker-backup-policy.json",
        WorkerProfile::Restore => "worker-restore-policy.json",
        WorkerProfile::FileLevel => "worker-file-level-policy.json",
        WorkerProfile::Retention => "worker-retention-policy.json",
        WorkerProfile::Verification => "worker-verification-policy.json",
    }
}

pub fn policy(profile: WorkerProfile) -> Policy {
    load(file(profile))
}

fn snapshot_arn() -> String {
    format!("arn:aws:ec2:{REGION}::snapshot/snap-0123456789abcdef0")
}

#[test]
fn each_worker_policy_grants_exactly_what_its_operation_calls() {
    let needs = needs();
    for profile in WorkerProfile::ALL {
        let (policy, facts) = (policy(profile), &needs.workers[&profile]);
        let missing = missing(&policy, facts);
        assert!(
            missing.is_empty(),
            "iam/{} does not grant:\n  {}",
            policy.file,
            missing.join("\n  ")
        );
        let extra: Vec<String> = policy
            .actions()
            .into_iter()
            .filter(|a| !facts.actions.contains_key(a))
            .collect();
        assert!(
            extra.is_empty(),
            "iam/{} grants actions its {} worker never calls: {extra:?}",
            policy.file,
            profile.as_str()
        );
    }
}

/// The separation the profiles exist for, spelled out.
#[test]
fn file_level_recovery_touches_no_snapshot_and_restore_writes_no_restore_point() {
    let file_level = policy(WorkerProfile::FileLevel);
    for a in file_level.actions() {
        assert!(
            !a.starts_with("ebs:") && !a.starts_with("ec2:"),
            "iam/{}: a file-level session needs no EBS or EC2, yet {a} is granted",
            file_level.file
        );
    }
    let restore = policy(WorkerProfile::Restore);
    for a in [
        "ec2:CreateSnapshots",
        "ec2:DeleteSnapshot",
        "ebs:GetSnapshotBlock",
        "ebs:ListSnapshotBlocks",
        "s3:PutObject",
        "sts:AssumeRole",
    ] {
        assert!(
            restore.granting(a).is_empty(),
            "iam/{}: a restore never calls {a}",
            restore.file
        );
    }
    let backup = policy(WorkerProfile::Backup);
    for a in ["ebs:StartSnapshot", "ebs:PutSnapshotBlock"] {
        assert!(
            backup.granting(a).is_empty(),
            "iam/{}: a backup never writes snapshot blocks ({a})",
            backup.file
        );
    }
}

/// The EC2 and EBS changes a worker may make: take snapshots (tagged at
/// creation) and delete them, or start, write and complete a snapshot.
const WORKER_EC2_CHANGES: &[&str] = &[
    "ec2:CreateSnapshots",
    "ec2:CreateTags",
    "ec2:DeleteSnapshot",
    "ebs:StartSnapshot",
    "ebs:PutSnapshotBlock",
    "ebs:CompleteSnapshot",
];

/// The tag condition each change needs: existing snapshots by their tag,
/// new ones by the tag they are created with.
fn tag_condition(action: &str) -> Option<String> {
    match action {
        "ec2:DeleteSnapshot" | "ebs:PutSnapshotBlock" | "ebs:CompleteSnapshot" => {
            Some(managed_by_resource_tag())
        }
        "ec2:CreateTags" | "ebs:StartSnapshot" => Some(managed_by_request_tag()),
        _ => None,
    }
}

#[test]
fn workers_change_only_the_snapshots_they_make() {
    let needs = needs();
    for profile in WorkerProfile::ALL {
        let policy = policy(profile);
        for s in policy.statements.iter().filter(|s| s.allow) {
            for a in &s.actions {
                let service = a.split_once(':').map_or(a.as_str(), |(s, _)| s);
                if !matches!(service, "ec2" | "ebs") || is_read_only(a) {
                    continue;
                }
                assert!(
                    WORKER_EC2_CHANGES.contains(&a.as_str()),
                    "iam/{} {}: {a} could change EC2 resources; workers only make and \
                     delete their own snapshots",
                    policy.file,
                    s.sid
                );
                let key = tag_condition(a).or_else(|| {
                    // CreateSnapshots on the instance and its volumes cannot
                    // carry Tender's tag; on the new snapshots it must.
                    (a == "ec2:CreateSnapshots" && s.covers(&snapshot_arn()))
                        .then(managed_by_request_tag)
                });
                if let Some(key) = key {
                    assert!(
                        s.requires(&key, tags::MANAGED_BY_VALUE),
                        "iam/{} {}: {a} must be conditioned on StringEquals {key} = {}",
                        policy.file,
                        s.sid,
                        tags::MANAGED_BY_VALUE
                    );
                }
            }
        }
        tags_only_at_creation(&policy, &needs.workers[&profile]);
    }
}

/// `ec2:CreateTags` only for the snapshots the profile's requests create:
/// bound to their `ec2:CreateAction` where AWS sets one; where it sets
/// none (StartSnapshot), to Tender's own tag keys only.
fn tags_only_at_creation(policy: &Policy, facts: &Facts) {
    let snapshot = snapshot_arn();
    for t in &facts.tag_on_create {
        let tagging = policy.granting("ec2:CreateTags").into_iter().any(|s| {
            s.covers(&snapshot)
                && match t.create_action {
                    Some(action) => s
                        .string_equals("ec2:CreateAction")
                        .is_some_and(|v| v.iter().any(|x| x == action)),
                    None => true,
                }
        });
        assert!(
            tagging,
            "iam/{} lets {} not tag the snapshots it creates ({})",
            policy.file, t.operation, t.origin
        );
    }
    let unbound_allowed = facts
        .tag_on_create
        .iter()
        .any(|t| t.create_action.is_none());
    for s in policy.granting("ec2:CreateTags") {
        match s.string_equals("ec2:CreateAction") {
            Some(actions) => {
                for a in actions {
                    assert!(
                        facts
                            .tag_on_create
                            .iter()
                            .any(|t| t.create_action == Some(a.as_str())),
                        "iam/{} {}: this worker never tags at creation with {a}",
                        policy.file,
                        s.sid
                    );
                }
            }
            None => {
                assert!(
                    unbound_allowed,
                    "iam/{} {}: ec2:CreateTags without ec2:CreateAction would let the worker \
                     retag any resource",
                    policy.file, s.sid
                );
                let keys = s
                    .condition_values("ForAllValues:StringLike", "aws:TagKeys")
                    .unwrap_or_default();
                assert!(
                    !keys.is_empty()
                        && keys
                            .iter()
                            .all(|k| k.starts_with(tags::PREFIX) && !k.starts_with('*')),
                    "iam/{} {}: ec2:CreateTags without ec2:CreateAction must limit \
                     ForAllValues:StringLike aws:TagKeys to Tender's keys ({}*)",
                    policy.file,
                    s.sid,
                    tags::PREFIX
                );
            }
        }
    }
}

#[test]
fn repository_statements_name_the_repository_and_its_owner() {
    let bucket = format!("arn:aws:s3:::{BUCKET}");
    let objects = format!("{bucket}/{PREFIX}");
    for profile in WorkerProfile::ALL {
        let policy = policy(profile);
        let s3: Vec<&Statement> = policy
            .statements
            .iter()
            .filter(|s| s.allow && s.actions.iter().any(|a| a.starts_with("s3:")))
            .collect();
        assert!(!s3.is_empty(), "iam/{}: no S3 statement", policy.file);
        for s in s3 {
            let (file, sid) = (policy.file, &s.sid);
            assert!(
                s.requires("s3:ResourceAccount", OWNER),
                "iam/{file} {sid}: S3 access must be conditioned on StringEquals \
                 s3:ResourceAccount = {OWNER} (the repository's expectedBucketOwner)"
            );
            if s.grants("s3:ListBucket") {
                assert_eq!(
                    s.actions,
                    ["s3:ListBucket"],
                    "iam/{file} {sid}: ListBucket in a statement of its own"
                );
                assert_eq!(
                    s.resources,
                    std::slice::from_ref(&bucket),
                    "iam/{file} {sid}"
                );
                assert_eq!(
                    s.condition_values("StringLike", "s3:prefix"),
                    Some(vec![format!("{PREFIX}*")]),
                    "iam/{file} {sid}: ListBucket only on the repository's prefix"
                );
            } else {
                for r in &s.resources {
                    assert!(
                        r.starts_with(&objects),
                        "iam/{file} {sid}: {r} is not under {objects}"
                    );
                }
            }
        }
    }
}

#[test]
fn each_operation_reaches_exactly_its_keys() {
    use WorkerProfile::*;
    for sample in [Sample::new("prod/"), Sample::new("")] {
        let k = keys(&sample);
        let restore_points = [&k.chunk, &k.manifest, &k.latest];
        for profile in WorkerProfile::ALL {
            let policy = sample.load(file(profile));
            let may = |action: &str, key: &str| policy.may(action, &sample.object(key));
            assert!(may("s3:GetObject", &k.manifest), "{}", policy.file);
            // A retention run lists chunks but never reads one.
            assert_eq!(
                may("s3:GetObject", &k.chunk),
                profile != Retention,
                "{}: read {}",
                policy.file,
                k.chunk
            );
            // Only a retention run deletes: expired restore points, chunks,
            // its lists; never a resource's `latest` pointer.
            for key in [&k.chunk, &k.manifest, &k.marker] {
                assert_eq!(
                    may("s3:DeleteObject", key),
                    profile == Retention,
                    "{}: delete {key}",
                    policy.file
                );
            }
            assert!(!may("s3:DeleteObject", &k.latest), "{}", policy.file);
            if profile == Retention {
                assert!(may("s3:PutObject", &k.marker), "{}", policy.file);
                assert!(may("s3:GetObject", &k.marker), "{}", policy.file);
            }
            let writes_restore_points = profile == Backup;
            for key in restore_points {
                assert_eq!(
                    may("s3:PutObject", key),
                    writes_restore_points,
                    "{}: write {key}",
                    policy.file
                );
            }
            assert_eq!(
                may("s3:PutObject", &k.restored),
                profile == FileLevel,
                "{}: write restored file {}",
                policy.file,
                k.restored
            );
            // Only a file-level session stages files for the original
            // location, and reads only the controller's answer there; the
            // plan (what runs as root on the instance) is the controller's.
            for key in [&k.staged_file, &k.staged_manifest] {
                assert_eq!(
                    may("s3:PutObject", key),
                    profile == FileLevel,
                    "{}: stage {key}",
                    policy.file
                );
            }
            assert!(!may("s3:PutObject", &k.staged_plan), "{}", policy.file);
            assert!(!may("s3:PutObject", &k.staged_answer), "{}", policy.file);
            assert_eq!(
                may("s3:GetObject", &k.staged_answer),
                profile == FileLevel,
                "{}: read {}",
                policy.file,
                k.staged_answer
            );
            for key in [&k.staged_plan, &k.staged_file, &k.staged_manifest] {
                assert!(!may("s3:GetObject", key), "{}: read {key}", policy.file);
            }
            // Only a backup looks for the parent of its next incremental.
            assert_eq!(
                may("s3:GetObject", &k.latest),
                profile == Backup,
                "{}: read {}",
                policy.file,
                k.latest
            );
            // Nothing of another bucket, nor outside the repository's prefix.
            let elsewhere = "arn:aws:s3:::someone-elses/prod/team-a/chunks/ab";
            assert!(!policy.may("s3:GetObject", elsewhere), "{}", policy.file);
            assert!(!policy.may("s3:PutObject", elsewhere), "{}", policy.file);
            if !sample.prefix.is_empty() {
                let outside = sample.object("staging/team-a/chunks/ab");
                assert!(!policy.may("s3:GetObject", &outside), "{}", policy.file);
                assert!(!policy.may("s3:PutObject", &outside), "{}", policy.file);
            }
        }
    }
}

/// S3 answers a missing key with 404 only to a caller that may list the
/// bucket at that key (S3 sets `s3:prefix` to the key for this decision):
/// every key a worker reads and may find missing is within its
/// ListBucket's prefix condition.
#[test]
fn a_missing_key_is_a_404_for_every_key_a_worker_reads() {
    for sample in [Sample::new("prod/"), Sample::new("")] {
        let k = keys(&sample);
        let bucket = format!("arn:aws:s3:::{}", sample.spec.bucket);
        for profile in WorkerProfile::ALL {
            let policy = sample.load(file(profile));
            let reads: Vec<&String> = match profile {
                WorkerProfile::Backup => vec![&k.chunk, &k.manifest, &k.latest],
                WorkerProfile::Retention => vec![&k.manifest, &k.marker],
                WorkerProfile::FileLevel => vec![&k.chunk, &k.manifest, &k.staged_answer],
                _ => vec![&k.chunk, &k.manifest],
            };
            let listing: Vec<&Statement> = policy
                .granting("s3:ListBucket")
                .into_iter()
                .filter(|s| s.covers(&bucket))
                .collect();
            for key in reads {
                assert!(
                    listing.iter().any(|s| {
                        s.condition_values("StringLike", "s3:prefix")
                            .is_some_and(|p| p.iter().any(|p| glob(p, key)))
                    }),
                    "{}: a missing {key} would be a 403: grant s3:ListBucket on {bucket} \
                     with s3:prefix covering it",
                    policy.file
                );
            }
            if !sample.prefix.is_empty() {
                assert!(
                    !listing.iter().any(|s| {
                        s.condition_values("StringLike", "s3:prefix")
                            .is_some_and(|p| p.iter().any(|p| glob(p, "staging/")))
                    }),
                    "{}: ListBucket reaches beyond the repository's prefix",
                    policy.file
                );
            }
        }
    }
}

#[test]
fn the_snapshot_arn_sample_matches_what_policies_name() {
    assert!(glob("arn:aws:ec2:*::snapshot/*", &snapshot_arn()));
}
