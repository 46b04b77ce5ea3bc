//! The IAM policies in `iam/` grant what the code calls, and no more.
//!
//! What the code calls is `tender::aws::AwsOperation`: every AWS call goes
//! through `src/aws/`, where each SDK call names its operation, and in test
//! builds an SDK interceptor fails any call whose operation is missing from
//! that enum. Each operation says which role calls it (controller, worker,
//! or both) and which permissions it needs besides its own action: tags at
//! creation (`ec2:CreateTags` with `ec2:CreateAction`), an instance profile
//! (`iam:PassRole`), a queue's tags (`sqs:TagQueue`).
// Its helpers (not only its #[test]s, which clippy.toml covers) unwrap and panic.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;
use tender::aws::AwsOperation;
use tender::names::tags;

/// A sample account and region for ARNs the policies' patterns must match.
const REGION: &str = "us-east-1";
const ACCOUNT: &str = "111122223333";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------
// The policies.

struct Statement {
    sid: String,
    actions: Vec<String>,
    resources: Vec<String>,
    condition: serde_json::Map<String, Value>,
}

struct Policy {
    file: &'static str,
    statements: Vec<Statement>,
}

fn strings(value: &Value, file: &str, sid: &str, field: &str) -> Vec<String> {
    let list = match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => panic!("{file} {sid}: {field} holds a non-string {other}"),
            })
            .collect(),
        other => panic!("{file} {sid}: {field} must be a string or a list, not {other}"),
    };
    assert!(!list.is_empty(), "{file} {sid}: {field} is empty");
    list
}

/// Reads `iam/<file>` and checks it is a well-formed identity policy: Version
/// 2012-10-17, and statements that each have a Sid, Effect Allow, Action and
/// Resource (never NotAction, NotResource or Principal).
fn load(file: &'static str) -> Policy {
    let path = root().join("iam").join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let doc: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file} is not valid JSON: {e}"));
    let top = doc
        .as_object()
        .unwrap_or_else(|| panic!("{file}: the policy must be a JSON object"));
    for key in top.keys() {
        assert!(
            key == "Version" || key == "Statement",
            "{file}: unexpected top-level key {key}"
        );
    }
    assert_eq!(
        top.get("Version").and_then(Value::as_str),
        Some("2012-10-17"),
        "{file}: Version must be \"2012-10-17\""
    );
    let raw = top
        .get("Statement")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{file}: Statement must be a list"));
    assert!(!raw.is_empty(), "{file}: no statements");
    let mut sids = BTreeSet::new();
    let statements = raw
        .iter()
        .map(|s| {
            let s = s
                .as_object()
                .unwrap_or_else(|| panic!("{file}: every statement must be an object"));
            let sid = s
                .get("Sid")
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("{file}: a statement has no Sid: {s:?}"))
                .to_string();
            assert!(
                !sid.is_empty() && sid.chars().all(|c| c.is_ascii_alphanumeric()),
                "{file}: Sid {sid:?} must be non-empty and alphanumeric"
            );
            assert!(sids.insert(sid.clone()), "{file}: Sid {sid} is used twice");
            for key in s.keys() {
                assert!(
                    matches!(
                        key.as_str(),
                        "Sid" | "Effect" | "Action" | "Resource" | "Condition"
                    ),
                    "{file} {sid}: {key} is not allowed in Tender's policies"
                );
            }
            assert_eq!(
                s.get("Effect").and_then(Value::as_str),
                Some("Allow"),
                "{file} {sid}: Effect must be Allow"
            );
            let actions = strings(
                s.get("Action")
                    .unwrap_or_else(|| panic!("{file} {sid}: no Action")),
                file,
                &sid,
                "Action",
            );
            for a in actions.iter().filter(|a| *a != "*") {
                let (service, name) = a
                    .split_once(':')
                    .unwrap_or_else(|| panic!("{file} {sid}: action {a} is not service:Name"));
                assert!(
                    !service.is_empty() && !name.is_empty(),
                    "{file} {sid}: action {a} is not service:Name"
                );
            }
            let resources = strings(
                s.get("Resource")
                    .unwrap_or_else(|| panic!("{file} {sid}: no Resource")),
                file,
                &sid,
                "Resource",
            );
            for r in &resources {
                assert!(
                    r == "*" || r.starts_with("arn:aws:"),
                    "{file} {sid}: resource {r} is neither * nor an ARN"
                );
            }
            let condition = match s.get("Condition") {
                None => serde_json::Map::new(),
                Some(Value::Object(c)) => {
                    for (op, keys) in c {
                        let keys = keys.as_object().unwrap_or_else(|| {
                            panic!("{file} {sid}: Condition {op} must map keys to values")
                        });
                        for (key, value) in keys {
                            strings(value, file, &sid, &format!("Condition {op} {key}"));
                        }
                    }
                    c.clone()
                }
                Some(other) => panic!("{file} {sid}: Condition must be an object, not {other}"),
            };
            Statement {
                sid,
                actions,
                resources,
                condition,
            }
        })
        .collect();
    Policy { file, statements }
}

fn controller_policy() -> Policy {
    load("controller-policy.json")
}

fn worker_policy() -> Policy {
    load("worker-policy.json")
}

/// `*` and `?` wildcards, as IAM matches actions and resources.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

impl Statement {
    /// IAM action names are case-insensitive.
    fn grants(&self, action: &str) -> bool {
        self.actions
            .iter()
            .any(|a| glob(&a.to_ascii_lowercase(), &action.to_ascii_lowercase()))
    }

    fn covers(&self, arn: &str) -> bool {
        self.resources.iter().any(|r| glob(r, arn))
    }

    /// The values of a `StringEquals` condition on `key`.
    fn string_equals(&self, key: &str) -> Option<Vec<String>> {
        let v = self.condition.get("StringEquals")?.get(key)?;
        Some(strings(v, "", &self.sid, key))
    }

    /// True when the statement only applies when `key` is exactly `value`.
    fn requires(&self, key: &str, value: &str) -> bool {
        self.string_equals(key).is_some_and(|v| v == [value])
    }

    /// True when the statement only applies when tag `key` is present
    /// (`Null` `key` = `false`).
    fn requires_present(&self, key: &str) -> bool {
        self.condition
            .get("Null")
            .and_then(|n| n.get(key))
            .is_some_and(|v| v == "false")
    }
}

impl Policy {
    fn granting(&self, action: &str) -> Vec<&Statement> {
        self.statements
            .iter()
            .filter(|s| s.grants(action))
            .collect()
    }

    fn actions(&self) -> BTreeSet<String> {
        self.statements
            .iter()
            .flat_map(|s| s.actions.iter().cloned())
            .collect()
    }
}

fn managed_by_resource_tag() -> String {
    format!("aws:ResourceTag/{}", tags::MANAGED_BY)
}

fn managed_by_request_tag() -> String {
    format!("aws:RequestTag/{}", tags::MANAGED_BY)
}

fn ec2_arn(resource_type: &str) -> String {
    format!("arn:aws:ec2:{REGION}:{ACCOUNT}:{resource_type}/{resource_type}-0123456789abcdef0")
}

// ---------------------------------------------------------------------------
// What the code calls.

/// EC2 resource types tagged at creation by one operation.
struct TagOnCreate {
    /// The API operation, e.g. `RunInstances`.
    operation: String,
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

/// What the code needs, for the controller and for the worker.
struct Needs {
    controller: Facts,
    worker: Facts,
}

fn needs() -> Needs {
    let mut needs = Needs {
        controller: Facts::default(),
        worker: Facts::default(),
    };
    for &op in AwsOperation::ALL {
        if op.caller().includes_controller() {
            needs.controller.add(op);
        }
        if op.caller().includes_worker() {
            needs.worker.add(op);
        }
    }
    needs
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

fn is_read_only(action: &str) -> bool {
    let name = action.split_once(':').map_or(action, |(_, n)| n);
    ["Describe", "Get", "List"]
        .iter()
        .any(|p| name.starts_with(p))
}

// ---------------------------------------------------------------------------
// The tests.

#[test]
fn policies_are_well_formed() {
    for policy in [controller_policy(), worker_policy()] {
        assert!(
            !policy.statements.is_empty(),
            "{}: no statements",
            policy.file
        );
    }
}

#[test]
fn every_operation_names_one_iam_action() {
    let needs = needs();
    println!("controller needs:\n{}", describe(&needs.controller));
    println!("worker needs:\n{}", describe(&needs.worker));
    assert!(!needs.controller.actions.is_empty());
    assert!(!needs.worker.actions.is_empty());
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
fn worker_policy_grants_exactly_what_the_worker_calls() {
    let needs = needs();
    let policy = worker_policy();
    let missing = missing(&policy, &needs.worker);
    assert!(
        missing.is_empty(),
        "iam/worker-policy.json does not grant:\n  {}",
        missing.join("\n  ")
    );
    let extra: Vec<String> = policy
        .actions()
        .into_iter()
        .filter(|a| !needs.worker.actions.contains_key(a))
        .collect();
    assert!(
        extra.is_empty(),
        "iam/worker-policy.json grants actions the worker never calls: {extra:?}"
    );
}

/// The EC2 changes a worker may make: snapshot the protected instance
/// (tagging the snapshots at creation only), and delete the snapshots
/// Tender took.
const WORKER_EC2_CHANGES: &[&str] = &[
    "ec2:CreateSnapshots",
    "ec2:CreateTags",
    "ec2:DeleteSnapshot",
];

fn condition_value<'a>(s: &'a Statement, op: &str, key: &str) -> Option<Vec<&'a str>> {
    let v = s.condition.get(op)?.get(key)?;
    Some(match v {
        Value::String(x) => vec![x.as_str()],
        Value::Array(xs) => xs.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    })
}

#[test]
fn worker_policy_changes_on_ec2_only_the_snapshots_it_takes() {
    for s in &worker_policy().statements {
        for a in &s.actions {
            let service = a.split_once(':').map_or(a.as_str(), |(s, _)| s);
            if !glob(&service.to_ascii_lowercase(), "ec2") || is_read_only(a) {
                continue;
            }
            assert!(
                WORKER_EC2_CHANGES.contains(&a.as_str()),
                "iam/worker-policy.json {}: {a} could change EC2 resources; workers only take and delete their snapshots",
                s.sid
            );
            match a.as_str() {
                "ec2:CreateTags" => assert_eq!(
                    condition_value(s, "StringEquals", "ec2:CreateAction"),
                    Some(vec!["CreateSnapshots"]),
                    "{}: tags only at CreateSnapshots",
                    s.sid
                ),
                "ec2:DeleteSnapshot" => assert_eq!(
                    condition_value(
                        s,
                        "StringEquals",
                        &format!("aws:ResourceTag/{}", tags::MANAGED_BY)
                    ),
                    Some(vec![tags::MANAGED_BY_VALUE]),
                    "{}: deletes only Tender's snapshots",
                    s.sid
                ),
                _ => {}
            }
        }
    }
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
}

#[test]
fn no_statement_grants_every_action() {
    for policy in [controller_policy(), worker_policy()] {
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
    for policy in [controller_policy(), worker_policy()] {
        for s in &policy.statements {
            let all = s.resources.iter().any(|r| r == "*");
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
    for policy in [controller_policy(), worker_policy()] {
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

#[test]
fn the_integrity_key_is_named_not_every_key() {
    let policy = worker_policy();
    for action in ["kms:GenerateMac", "kms:VerifyMac"] {
        let grants = policy.granting(action);
        assert!(
            !grants.is_empty(),
            "iam/worker-policy.json does not grant {action}"
        );
        for s in grants {
            assert!(
                s.resources
                    .iter()
                    .all(|r| r.contains(":key/") && !r.ends_with("key/*")),
                "iam/worker-policy.json {}: {action} on {:?}: name the integrity key, not every key",
                s.sid,
                s.resources
            );
            assert!(
                s.requires("kms:MacAlgorithm", tender::mover::integrity::ALGORITHM),
                "iam/worker-policy.json {}: {action} must require kms:MacAlgorithm {}",
                s.sid,
                tender::mover::integrity::ALGORITHM
            );
        }
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
