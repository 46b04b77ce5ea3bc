//! The IAM policies in `iam/` grant what the code calls, and no more.
//!
//! What the code calls is `tender::aws::AwsOperation`: every AWS call goes
//! through `src/aws/`, where each SDK call names its operation, and in test
//! builds an SDK interceptor fails any call whose operation is missing from
//! that enum. Each operation says which role calls it (controller, worker,
//! or both), which worker profiles (backup, restore, file-level recovery)
//! call it, and which permissions it needs besides its own action: tags at
//! creation (`ec2:CreateTags` with `ec2:CreateAction`), an instance profile
//! (`iam:PassRole`), a queue's tags (`sqs:TagQueue`), `s3:ListBucket` to
//! tell a missing key from a denial. The controller's checks are here, the
//! workers' in `workers.rs`.
// Its helpers (not only its #[test]s, which clippy.toml covers) unwrap and panic.
#![allow(clippy::unwrap_used, clippy::panic)]

mod ebs_keys;
mod missing_keys;
mod policy;
mod repository;
mod workers;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use policy::{Policy, Statement, glob, is_read_only, load, root};
use tender::aws::AwsOperation;
use tender::messages::WorkerProfile;
use tender::mover::manifest::RepositoryLocation;
use tender::names::tags;

/// A sample account and region for ARNs the policies' patterns must match.
const REGION: &str = "us-east-1";
const ACCOUNT: &str = "111122223333";

fn managed_by_resource_tag() -> String {
    format!("aws:ResourceTag/{}", tags::MANAGED_BY)
}

fn managed_by_request_tag() -> String {
    format!("aws:RequestTag/{}", tags::MANAGED_BY)
}

fn ec2_arn(resource_type: &str) -> String {
    // Images and snapshots are named without an account
    // (`arn:aws:ec2:REGION::image/ami-…`), as the Service Authorization
    // Reference lists them.
    let account = if matches!(resource_type, "image" | "snapshot") {
        ""
    } else {
        ACCOUNT
    };
    format!("arn:aws:ec2:{REGION}:{account}:{resource_type}/{resource_type}-0123456789abcdef0")
}

// ---------------------------------------------------------------------------
// What the code calls.

/// EC2 resource types tagged at creation by one operation.
struct TagOnCreate {
    /// The API operation, e.g. `RunInstances`.
    operation: String,
    /// The `ec2:CreateAction` EC2 authorizes the tags with, if AWS sets one.
    create_action: Option<&'static str>,
    /// ARN resource types, e.g. `instance`, `volume`.
    resource_types: BTreeSet<String>,
    origin: String,
}

/// What one role needs.
#[derive(Default)]
struct Facts {
    /// IAM action → the operations that need it.
    actions: BTreeMap<String, BTreeSet<String>>,
    tag_on_create: Vec<TagOnCreate>,
}

impl Facts {
    fn need(&mut self, action: String, origin: &str) {
        self.actions
            .entry(action)
            .or_default()
            .insert(origin.to_string());
    }

    fn add(&mut self, op: AwsOperation) {
        let origin = format!("AwsOperation::{op:?}");
        self.need(op.iam_action(), &origin);
        for action in op.also_needs() {
            self.need(action.to_string(), &origin);
        }
        if !op.tags_at_creation().is_empty() {
            self.tag_on_create.push(TagOnCreate {
                operation: op.name().to_string(),
                create_action: op.create_action(),
                resource_types: op
                    .tags_at_creation()
                    .iter()
                    .map(|t| t.to_string())
                    .collect(),
                origin,
            });
        }
    }
}

/// What the code needs, for the controller and for each worker profile.
struct Needs {
    controller: Facts,
    workers: BTreeMap<WorkerProfile, Facts>,
}

fn needs() -> Needs {
    let mut needs = Needs {
        controller: Facts::default(),
        workers: BTreeMap::new(),
    };
    for &op in AwsOperation::ALL {
        if op.caller().includes_controller() {
            needs.controller.add(op);
        }
        for &profile in op.worker_profiles() {
            needs.workers.entry(profile).or_default().add(op);
        }
    }
    needs
}

fn controller_policy() -> Policy {
    load("controller-policy.json")
}

/// The controller's policy and every worker profile's.
fn all_policies() -> Vec<Policy> {
    let mut out = vec![controller_policy()];
    out.extend(WorkerProfile::ALL.map(workers::policy));
    out
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

fn describe(facts: &Facts) -> String {
    facts
        .actions
        .iter()
        .map(|(a, o)| {
            format!(
                "  {a:<40} {}",
                o.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn missing(policy: &Policy, facts: &Facts) -> Vec<String> {
    facts
        .actions
        .iter()
        .filter(|(action, _)| policy.granting(action).is_empty())
        .map(|(action, origins)| {
            format!(
                "{action} (called in {})",
                origins.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The tests.

#[test]
fn policies_are_well_formed() {
    for policy in all_policies() {
        assert!(
            !policy.statements.is_empty(),
            "{}: no statements",
            policy.file
        );
    }
}

/// No stale policy (the one shared worker policy of old) lies next to the
/// ones the tests check.
#[test]
fn iam_holds_exactly_the_checked_policies() {
    let mut found: Vec<String> = std::fs::read_dir(root().join("iam"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".json"))
        .collect();
    found.sort();
    let mut checked: Vec<String> = all_policies().iter().map(|p| p.file.to_string()).collect();
    checked.sort();
    assert_eq!(found, checked);
}

#[test]
fn every_operation_names_one_iam_action() {
    let needs = needs();
    println!("controller needs:\n{}", describe(&needs.controller));
    assert!(!needs.controller.actions.is_empty());
    for profile in WorkerProfile::ALL {
        let facts = &needs.workers[&profile];
        println!("{} worker needs:\n{}", profile.as_str(), describe(facts));
        assert!(!facts.actions.is_empty());
    }
    let mut seen = BTreeSet::new();
    for &op in AwsOperation::ALL {
        assert!(seen.insert(op), "{op:?} is listed twice");
        let action = op.iam_action();
        let (service, name) = action.split_once(':').unwrap();
        assert_eq!(service, op.service().iam_prefix(), "{op:?}: {action}");
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric()),
            "{op:?}: {action} is not service:Name"
        );
    }
}

#[test]
fn aws_sdk_is_used_only_in_src_aws() {
    // Clients built elsewhere would miss the interceptor that keeps every
    // call an AwsOperation.
    let src = root().join("src");
    for path in rust_files(&src) {
        if path.starts_with(src.join("aws")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for sdk in [
                "aws_sdk_",
                "aws_config",
                "aws_credential_types",
                "aws_smithy",
            ] {
                assert!(
                    !line.contains(sdk),
                    "{} uses {sdk}: every AWS call must go through src/aws/ so that the IAM \
                     policies can be checked against it",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn controller_policy_grants_every_action_the_controller_calls() {
    let needs = needs();
    let missing = missing(&controller_policy(), &needs.controller);
    assert!(
        missing.is_empty(),
        "iam/controller-policy.json does not grant:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn controller_policy_grants_nothing_the_controller_does_not_call() {
    let needs = needs();
    let extra: Vec<String> = controller_policy()
        .actions()
        .into_iter()
        .filter(|granted| {
            !needs
                .controller
                .actions
                .keys()
                .any(|needed| glob(&granted.to_ascii_lowercase(), &needed.to_ascii_lowercase()))
        })
        .collect();
    assert!(
        extra.is_empty(),
        "iam/controller-policy.json grants actions the controller never calls: {extra:?}"
    );
}

#[test]
fn controller_changes_and_deletes_only_tender_tagged_resources() {
    let needs = needs();
    let policy = controller_policy();
    let key = managed_by_resource_tag();
    // EC2 actions that act on existing resources (anything but reads and
    // creations), and SQS actions that change or delete a whole queue.
    let mut protected: BTreeSet<String> = needs
        .controller
        .actions
        .keys()
        .filter(|a| {
            let (service, name) = a.split_once(':').unwrap();
            match service {
                // RegisterImage creates an image from snapshots; it changes
                // nothing that exists.
                "ec2" => {
                    !is_read_only(a)
                        && !matches!(name, "RunInstances" | "RegisterImage")
                        && !name.starts_with("Create")
                }
                // Only its own DB snapshots: never a database (but for
                // ModifyDBInstance, below).
                "rds" => name.starts_with("Delete") || name.starts_with("Modify"),
                "sqs" => matches!(
                    name,
                    "DeleteQueue"
                        | "PurgeQueue"
                        | "SetQueueAttributes"
                        | "AddPermission"
                        | "RemovePermission"
                        | "UntagQueue"
                ),
                _ => false,
            }
        })
        .cloned()
        .collect();
    protected.insert("ec2:TerminateInstances".into());
    protected.insert("ec2:DeleteSecurityGroup".into());
    // The one change to a DB instance (a dump's security group, added and
    // removed): only on those their owner tagged for it.
    assert!(protected.remove("rds:ModifyDBInstance"));
    let opt_in = format!("aws:ResourceTag/{}", tags::DUMP_ACCESS);
    let granting = policy.granting("rds:ModifyDBInstance");
    assert!(!granting.is_empty());
    for s in granting {
        assert!(
            s.requires(&opt_in, tags::DUMP_ACCESS_VALUE),
            "iam/controller-policy.json {}: rds:ModifyDBInstance must be conditioned on StringEquals {opt_in} = {}",
            s.sid,
            tags::DUMP_ACCESS_VALUE
        );
    }
    // ...and never the tag that opts a DB instance in: that is its owner's.
    for s in policy.granting("rds:AddTagsToResource") {
        let excluded = s
            .condition
            .get("ForAllValues:StringNotEquals")
            .and_then(|c| c.get("aws:TagKeys"))
            .and_then(|v| v.as_str());
        assert_eq!(
            excluded,
            Some(tags::DUMP_ACCESS),
            "iam/controller-policy.json {}: rds:AddTagsToResource must exclude tag key {}",
            s.sid,
            tags::DUMP_ACCESS
        );
    }
    for action in &protected {
        for s in policy.granting(action) {
            assert!(
                s.requires(&key, tags::MANAGED_BY_VALUE),
                "iam/controller-policy.json {}: {action} must be conditioned on \
                 StringEquals {key} = {}",
                s.sid,
                tags::MANAGED_BY_VALUE
            );
        }
    }
    for action in ["ec2:TerminateInstances", "ec2:DeleteSecurityGroup"] {
        assert!(
            !policy.granting(action).is_empty(),
            "iam/controller-policy.json does not grant {action}"
        );
    }
}

/// A restored instance carries `tender.dev/managed-by` but never the
/// cluster ID nor a launch token: the controller's role can terminate
/// workers only, never what a restore gave back to the user.
#[test]
fn controller_terminates_workers_only() {
    let policy = controller_policy();
    let statements = policy.granting("ec2:TerminateInstances");
    assert!(!statements.is_empty());
    for s in statements {
        for key in [tags::CLUSTER_ID, tags::LAUNCH_TOKEN] {
            let key = format!("aws:ResourceTag/{key}");
            assert!(
                s.requires_present(&key),
                "iam/controller-policy.json {}: ec2:TerminateInstances must require {key} (Null = false)",
                s.sid
            );
        }
    }
}

/// The sweep deletes a restore's intermediate snapshots; the controller's
/// role can delete no other snapshot: not a restore point's (no
/// `tender.dev/intermediate` tag), not another cluster's or a user's
/// (no cluster ID), not what a restore handed over.
#[test]
fn controller_deletes_only_intermediate_snapshots() {
    let policy = controller_policy();
    let statements = policy.granting("ec2:DeleteSnapshot");
    assert!(!statements.is_empty(), "the sweep needs ec2:DeleteSnapshot");
    for s in statements {
        let intermediate = format!("aws:ResourceTag/{}", tags::INTERMEDIATE);
        assert!(
            s.requires(&intermediate, tags::INTERMEDIATE_VALUE),
            "iam/controller-policy.json {}: ec2:DeleteSnapshot must require {intermediate} = {}",
            s.sid,
            tags::INTERMEDIATE_VALUE
        );
        let cluster = format!("aws:ResourceTag/{}", tags::CLUSTER_ID);
        assert!(
            s.requires_present(&cluster),
            "iam/controller-policy.json {}: ec2:DeleteSnapshot must require {cluster} (Null = false)",
            s.sid
        );
    }
    for action in ["ec2:DeleteVolume", "ec2:DeregisterImage"] {
        assert!(
            policy.granting(action).is_empty(),
            "iam/controller-policy.json grants {action}, which Tender never needs"
        );
    }
}

#[test]
fn controller_creates_only_tender_tagged_resources() {
    let needs = needs();
    let policy = controller_policy();
    let request_tag = managed_by_request_tag();
    let value = tags::MANAGED_BY_VALUE;
    assert!(
        !needs.controller.tag_on_create.is_empty(),
        "the analysis found no EC2 request that tags at creation"
    );
    let creating: BTreeSet<&str> = needs
        .controller
        .tag_on_create
        .iter()
        .map(|t| t.operation.as_str())
        .collect();
    for t in &needs.controller.tag_on_create {
        let action = format!("ec2:{}", t.operation);
        for rt in &t.resource_types {
            let arn = ec2_arn(rt);
            let grants: Vec<&Statement> = policy
                .granting(&action)
                .into_iter()
                .filter(|s| s.covers(&arn))
                .collect();
            assert!(
                !grants.is_empty(),
                "iam/controller-policy.json does not grant {action} on {rt} resources \
                 ({} tags them at creation)",
                t.origin
            );
            for s in grants {
                assert!(
                    s.requires(&request_tag, value),
                    "iam/controller-policy.json {}: {action} on {rt} must be conditioned on \
                     StringEquals {request_tag} = {value}",
                    s.sid
                );
            }
            let tagging = policy.granting("ec2:CreateTags").into_iter().any(|s| {
                s.covers(&arn)
                    && s.requires(&request_tag, value)
                    && s.string_equals("ec2:CreateAction")
                        .is_some_and(|v| v.contains(&t.operation))
            });
            assert!(
                tagging,
                "iam/controller-policy.json lets {action} not tag {rt} resources: grant \
                 ec2:CreateTags on them with ec2:CreateAction {} and {request_tag} = {value}",
                t.operation
            );
        }
    }
    // Tags only ever at creation, by the requests that create.
    for s in policy.granting("ec2:CreateTags") {
        let actions = s.string_equals("ec2:CreateAction").unwrap_or_else(|| {
            panic!(
                "iam/controller-policy.json {}: ec2:CreateTags without an ec2:CreateAction \
                 condition would let the controller retag (and so take over) any resource",
                s.sid
            )
        });
        for a in actions {
            assert!(
                creating.contains(a.as_str()),
                "iam/controller-policy.json {}: the code never tags at creation with {a}",
                s.sid
            );
        }
    }
    // Queues too are created with Tender's tags.
    for action in ["sqs:CreateQueue", "sqs:TagQueue"] {
        for s in policy.granting(action) {
            assert!(
                s.requires(&request_tag, value),
                "iam/controller-policy.json {}: {action} must be conditioned on StringEquals \
                 {request_tag} = {value}",
                s.sid
            );
        }
    }
    // The worker role goes to EC2 only.
    for s in policy.granting("iam:PassRole") {
        assert!(
            !s.resources.iter().any(|r| r == "*"),
            "iam/controller-policy.json {}: iam:PassRole on * would pass any role",
            s.sid
        );
        assert!(
            s.requires("iam:PassedToService", "ec2.amazonaws.com"),
            "iam/controller-policy.json {}: iam:PassRole must be conditioned on \
             iam:PassedToService = ec2.amazonaws.com",
            s.sid
        );
    }
    // Every worker's role, as iam/README.md names them after their
    // policy files, can be passed: a profile left out fails every launch
    // of its workers on AWS (moto does not check PassRole).
    for profile in tender::messages::WorkerProfile::ALL {
        let file = workers::file(profile);
        let role = file
            .trim_end_matches("-policy.json")
            .replace("worker-", "tender-worker-");
        let arn = format!("arn:aws:iam::111122223333:role/{role}");
        let passed = policy.allows(&policy::Request {
            action: "iam:PassRole",
            resource: &arn,
            context: &[("iam:PassedToService", "ec2.amazonaws.com")],
        });
        assert!(passed, "iam/controller-policy.json cannot pass {arn}");
    }
}

/// The controller checks a BackupRepository (HeadBucket, a probe object it
/// writes and deletes), counts its restore points (ListObjectsV2) and reads
/// their manifests for the RestorePoint catalog; it never reads a chunk or
/// a pointer, and never writes or deletes what workers store.
#[test]
fn controller_reaches_only_its_probe_in_the_repository() {
    for s in controller_policy().statements.iter().filter(|s| s.allow) {
        if !s.actions.iter().any(|a| a.starts_with("s3:")) {
            continue;
        }
        assert!(
            s.requires("s3:ResourceAccount", repository::OWNER),
            "iam/controller-policy.json {}: S3 access must be conditioned on StringEquals \
             s3:ResourceAccount = {}",
            s.sid,
            repository::OWNER
        );
        for r in &s.resources {
            assert!(
                r.starts_with(&format!("arn:aws:s3:::{}", repository::BUCKET)),
                "iam/controller-policy.json {}: {r} is not the repository's bucket",
                s.sid
            );
        }
    }
    for sample in [
        repository::Sample::new("prod/"),
        repository::Sample::new(""),
    ] {
        let policy = sample.load("controller-policy.json");
        let keys = repository::keys(&sample);
        let bucket = format!("arn:aws:s3:::{}", sample.spec.bucket);
        let base = tender::mover::manifest::RepositoryLocation::new(
            &sample.spec.bucket,
            &sample.spec.prefix,
            REGION,
        );
        let probe = sample.object(&format!("{}.tender-probe/cluster-uid", base.prefix));
        assert!(policy.may("s3:ListBucket", &bucket));
        assert!(policy.may("s3:PutObject", &probe));
        assert!(policy.may("s3:DeleteObject", &probe));
        // Restoring to the original location: the request's staged files,
        // list, plan and answer.
        for key in [
            &keys.staged_file,
            &keys.staged_manifest,
            &keys.staged_plan,
            &keys.staged_answer,
        ] {
            let staged = sample.object(key);
            for action in ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"] {
                assert!(policy.may(action, &staged), "{action} on {staged}");
            }
        }
        // A database's restore point is the controller's to write (RDS
        // took the snapshot; no worker ran), and no other.
        let database_manifest = sample.object(
            &RepositoryLocation::of(&sample.spec, "team-a").manifest_key("nightly/rds-db-orders"),
        );
        assert!(policy.may("s3:PutObject", &database_manifest));
        assert!(!policy.may("s3:DeleteObject", &database_manifest));
        for key in [&keys.chunk, &keys.manifest, &keys.latest, &keys.restored] {
            for action in ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"] {
                // It reads manifests for the RestorePoint catalog, and
                // writes only databases' (above).
                let reads_manifest = action == "s3:GetObject" && key == &keys.manifest;
                assert_eq!(
                    policy.may(action, &sample.object(key)),
                    reads_manifest,
                    "iam/controller-policy.json: {action} on {key}"
                );
            }
        }
    }
}

#[test]
fn no_statement_grants_every_action() {
    for policy in all_policies() {
        for s in &policy.statements {
            for a in &s.actions {
                assert!(
                    !a.contains(['*', '?']),
                    "{} {}: {a}: list exact actions, no wildcards",
                    policy.file,
                    s.sid
                );
            }
        }
    }
}

#[test]
fn only_reads_apply_to_every_resource() {
    for policy in all_policies() {
        for s in &policy.statements {
            let all = s.allow && s.resources.iter().any(|r| r == "*");
            if all {
                for a in &s.actions {
                    assert!(
                        is_read_only(a),
                        "{} {}: {a} on Resource * : only reads may apply to every resource",
                        policy.file,
                        s.sid
                    );
                }
            }
            // EC2 Describe* actions support no resource-level permissions:
            // anything but * silently denies them.
            if s.actions.iter().any(|a| a.starts_with("ec2:Describe")) {
                assert!(
                    s.resources == ["*"],
                    "{} {}: EC2 Describe actions need Resource \"*\"",
                    policy.file,
                    s.sid
                );
            }
        }
    }
}

#[test]
fn queue_permissions_cover_tender_queues_only() {
    let name = tender::placement::queue_name("cluster-uid", "us-east-1");
    let tender_queue = format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{name}");
    let other_queue = format!("arn:aws:sqs:{REGION}:{ACCOUNT}:orders");
    for policy in all_policies() {
        for s in &policy.statements {
            if !s.actions.iter().any(|a| a.starts_with("sqs:")) || s.resources == ["*"] {
                continue;
            }
            assert!(
                s.covers(&tender_queue),
                "{} {}: does not cover Tender's queue {tender_queue}",
                policy.file,
                s.sid
            );
            assert!(
                !s.covers(&other_queue),
                "{} {}: covers queues that are not Tender's ({other_queue})",
                policy.file,
                s.sid
            );
        }
    }
}

/// Every worker policy that grants a MAC action names the integrity key
/// (not every key) and only with the algorithm the code uses.
#[test]
fn the_integrity_key_is_named_not_every_key() {
    for profile in WorkerProfile::ALL {
        let policy = workers::policy(profile);
        for action in ["kms:GenerateMac", "kms:VerifyMac"] {
            for s in policy.granting(action) {
                assert!(
                    s.resources
                        .iter()
                        .all(|r| r.contains(":key/") && !r.ends_with("key/*")),
                    "{} {}: {action} on {:?}: name the integrity key, not every key",
                    policy.file,
                    s.sid,
                    s.resources
                );
                assert!(
                    s.requires("kms:MacAlgorithm", tender::mover::integrity::ALGORITHM),
                    "{} {}: {action} must require kms:MacAlgorithm {}",
                    policy.file,
                    s.sid,
                    tender::mover::integrity::ALGORITHM
                );
            }
        }
        // Only a backup writes restore points: only it makes MACs.
        let makes_macs = !policy.granting("kms:GenerateMac").is_empty();
        assert_eq!(
            makes_macs,
            profile == WorkerProfile::Backup,
            "{}: kms:GenerateMac",
            policy.file
        );
        assert!(
            !policy.granting("kms:VerifyMac").is_empty(),
            "{}: every worker reads restore points, so needs kms:VerifyMac",
            policy.file
        );
    }
}

#[test]
fn globs_match_as_iam_does() {
    assert!(glob(
        "arn:aws:sqs:*:*:tender-*",
        "arn:aws:sqs:us-east-1:1:tender-a"
    ));
    assert!(!glob(
        "arn:aws:sqs:*:*:tender-*",
        "arn:aws:sqs:us-east-1:1:orders"
    ));
    assert!(glob("ec2:describe*", "ec2:describeinstances"));
}
