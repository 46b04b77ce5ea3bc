//! What GitOps tools see of Tender's objects, against the real
//! kube-apiserver, the moto AWS emulator and the real controller: real
//! WorkerConfigurations, BackupJobs and RestoreJobs are driven through
//! their phases, and at each phase
//!
//! - Argo CD's view: gitops/argocd-health.lua (the health check that
//!   gitops/argocd-cm.yaml installs) runs on the live object's JSON in a
//!   Lua interpreter, as Argo CD runs it, and must say Progressing,
//!   Healthy, Degraded or Suspended;
//! - Flux's view: kstatus itself (sigs.k8s.io/cli-utils `status.Compute`,
//!   through scripts/kstatus) computes the same object's status;
//!
//! and manifests applied twice with `kubectl apply --server-side` change
//! nothing the second time, because the controller never writes spec.
//!
//! Needs the environment of `scripts/testenv up`, `kubectl`, the kstatus
//! tool and Lua 5.4 or 5.3 with the cjson module on PATH (`scripts/testenv
//! install` builds the one and installs Debian's lua5.4 and lua-cjson).
// Its helpers (not only its #[test]s, which clippy.toml covers) unwrap and panic.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::commands::{self, Output, kstatus, repo, run};
use common::{REGION, TestEnv};
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Api, CustomResourceExt};
use serde_json::{Value, json};
use tender::api::{
    BackupJob, BackupPolicy, BackupRepository, RestoreJob, RetentionJob, WorkerConfiguration,
};
use tender::names::FIELD_MANAGER as CONTROLLER_MANAGER;

const TIMEOUT: Duration = Duration::from_secs(90);
/// The field manager the "GitOps tool" (kubectl here) applies with.
const GITOPS_MANAGER: &str = "tender-gitops-tests";
/// A source instance that does not exist: its backup fails at once.
const MISSING_INSTANCE: &str = "i-00000000deadbeef0";

// ---------------------------------------------------------------------------
// Argo CD: the Lua health check, run the way Argo CD runs it.

/// Runs the health script as Argo CD does (util/lua in argo-cd): the object
/// in the global `obj`, JSON null as nil, numbers that print as integers,
/// and only the libraries Argo CD opens (base, table, a reduced os; no
/// string or math library, no string methods), so that a script that works
/// here works there. Prints the returned status and message as JSON.
const LUA_HARNESS: &str = r#"
local cjson = require("cjson")
local function argo_value(v)
  if v == cjson.null then return nil end
  if type(v) == "number" and math.type(v) == "float" and math.tointeger(v) then
    return math.tointeger(v)
  end
  if type(v) == "table" then
    local out = {}
    for k, x in pairs(v) do out[k] = argo_value(x) end
    return out
  end
  return v
end
local path = os.getenv("TENDER_HEALTH_SCRIPT")
local file = assert(io.open(path))
local source = file:read("a")
file:close()
local input = io.read("a")

local env = {}
for _, name in ipairs({"assert", "error", "getmetatable", "ipairs", "next", "pairs",
    "pcall", "print", "rawequal", "rawget", "rawset", "select", "setmetatable",
    "tonumber", "tostring", "type", "xpcall"}) do
  env[name] = _G[name]
end
env.unpack = table.unpack
env.table = {concat = table.concat, insert = table.insert, remove = table.remove,
  sort = table.sort}
env.os = {clock = os.clock, date = os.date, difftime = os.difftime, time = os.time}
env._G = env
env.obj = argo_value(cjson.decode(input))

local check = assert(load(source, "=" .. path, "t", env))
-- No string methods either ("x"):sub(1) fails in Argo CD.
local string_mt = getmetatable("")
debug.setmetatable("", nil)
local hs = check()
debug.setmetatable("", string_mt)
if type(hs) ~= "table" then error("the health script returned " .. type(hs)) end
io.write(cjson.encode({status = hs.status, message = hs.message}))
"#;

/// `name` in a directory of PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A Lua interpreter that has the cjson module.
fn lua() -> &'static Path {
    static LUA: OnceLock<PathBuf> = OnceLock::new();
    LUA.get_or_init(|| {
        for name in ["lua5.4", "lua5.3"] {
            let Some(path) = on_path(name) else { continue };
            let has_cjson = Command::new(&path)
                .args(["-e", "require('cjson')"])
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success());
            if has_cjson {
                return path;
            }
        }
        panic!(
            "no Lua interpreter with the cjson module on PATH (lua5.4 or lua5.3 and Debian's \
             lua-cjson): run scripts/testenv install"
        )
    })
}

/// What Argo CD's health check says of an object.
#[derive(Debug)]
struct Health {
    status: String,
    message: String,
}

fn argocd_health(obj: &Value) -> Health {
    let out = run(
        Command::new(lua()).args(["-e", LUA_HARNESS]).env(
            "TENDER_HEALTH_SCRIPT",
            repo().join("gitops/argocd-health.lua"),
        ),
        Some(&obj.to_string()),
    );
    assert!(
        out.success(),
        "the health check failed on {obj}:\n{}",
        out.stderr
    );
    let hs: Value = serde_json::from_str(&out.stdout).expect("the health check's JSON");
    let health = Health {
        status: hs["status"].as_str().unwrap_or_default().to_string(),
        message: hs["message"].as_str().unwrap_or_default().to_string(),
    };
    assert!(
        ["Healthy", "Progressing", "Degraded", "Suspended"].contains(&health.status.as_str()),
        "not an Argo CD health status: {health:?}"
    );
    assert!(!health.message.is_empty(), "no message: {health:?}");
    health
}

/// Asserts Argo CD's health of `obj`: `status`, with `message` in its message.
fn assert_argocd(obj: &Value, status: &str, message: &str) {
    let health = argocd_health(obj);
    assert_eq!(
        health.status, status,
        "Argo CD health of {} {}: {health:?}\nstatus: {}",
        obj["kind"], obj["metadata"]["name"], obj["status"]
    );
    assert!(
        health.message.contains(message),
        "Argo CD message {:?} lacks {message:?}",
        health.message
    );
}

// ---------------------------------------------------------------------------
// Flux: kstatus' verdict, and the conditions it reads.

fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn condition_status<'a>(obj: &'a Value, type_: &str) -> Option<&'a str> {
    condition(obj, type_)?["status"].as_str()
}

/// The controller has seen the object's latest spec: status and every
/// condition carry `metadata.generation`.
fn assert_reconciled(obj: &Value) {
    let generation = &obj["metadata"]["generation"];
    assert!(generation.is_i64(), "{obj}");
    assert_eq!(
        &obj["status"]["observedGeneration"], generation,
        "status.observedGeneration: {}",
        obj["status"]
    );
    let conditions = obj["status"]["conditions"].as_array().unwrap();
    assert!(!conditions.is_empty());
    for c in conditions {
        assert_eq!(
            &c["observedGeneration"], generation,
            "condition {} is of another generation",
            c["type"]
        );
    }
}

/// kstatus' verdict on a reconciled object, and its conditions: `Reconciling`
/// is True exactly while in progress, `Stalled` exactly on failure, `Ready`
/// exactly on success.
fn assert_kstatus(obj: &Value, expected: &str) {
    assert_reconciled(obj);
    let what = format!("{} {}", obj["kind"], obj["metadata"]["name"]);
    let verdict = kstatus(obj);
    assert_eq!(
        verdict.status, expected,
        "kstatus of {what} ({}): {}",
        verdict.message, obj["status"]
    );
    let is_true = |t: &str| condition_status(obj, t) == Some("True");
    let ready = condition_status(obj, "Ready");
    assert!(ready.is_some(), "{what} has no Ready condition");
    match expected {
        "Current" => {
            assert_eq!(ready, Some("True"), "{what}");
            assert!(!is_true("Reconciling") && !is_true("Stalled"), "{what}");
        }
        "Failed" => {
            assert!(is_true("Stalled"), "{what}");
            assert_eq!(ready, Some("False"), "{what}");
            assert!(!is_true("Reconciling"), "{what}");
        }
        "InProgress" => {
            assert_eq!(ready, Some("False"), "{what}");
            assert!(!is_true("Stalled"), "{what}");
        }
        other => panic!("unexpected kstatus {other}"),
    }
}

// ---------------------------------------------------------------------------
// Live objects, as JSON.

/// Whether objects of `K` are cluster-scoped (and so named
/// [`TestEnv::cluster_name`]).
fn cluster_scoped<K>() -> bool
where
    K: kube::Resource<DynamicType = ()>,
{
    matches!(
        K::kind(&()).as_ref(),
        "WorkerConfiguration" | "BackupRepository"
    )
}

fn dynamic_api<K>(env: &TestEnv) -> Api<DynamicObject>
where
    K: kube::Resource<DynamicType = ()>,
{
    let resource = ApiResource::erase::<K>(&());
    if cluster_scoped::<K>() {
        Api::all_with(env.client.clone(), &resource)
    } else {
        Api::namespaced_with(env.client.clone(), &env.namespace, &resource)
    }
}

/// The live object `name` (logical, for a cluster-scoped kind) as the API
/// server serves it.
async fn live<K>(env: &TestEnv, name: &str) -> Value
where
    K: kube::Resource<DynamicType = ()>,
{
    let name = if cluster_scoped::<K>() {
        env.cluster_name(name)
    } else {
        name.to_string()
    };
    let obj = dynamic_api::<K>(env).get(&name).await.expect("get object");
    serde_json::to_value(obj).unwrap()
}

/// Waits until the live object satisfies `check`.
async fn wait_live<K, F>(env: &TestEnv, name: &str, check: F) -> Value
where
    K: kube::Resource<DynamicType = ()>,
    F: Fn(&Value) -> bool,
{
    let start = Instant::now();
    loop {
        let obj = live::<K>(env, name).await;
        if check(&obj) {
            return obj;
        }
        if start.elapsed() > TIMEOUT {
            panic!(
                "{} {name} did not reach the expected state in {TIMEOUT:?}; generation {}, status: {}",
                K::kind(&()),
                obj["metadata"]["generation"],
                obj["status"]
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn phase(obj: &Value) -> &str {
    obj["status"]["phase"].as_str().unwrap_or_default()
}

fn generation(obj: &Value) -> i64 {
    obj["metadata"]["generation"].as_i64().unwrap()
}

fn observed(obj: &Value) -> Option<i64> {
    obj["status"]["observedGeneration"].as_i64()
}

/// A phase, reached for the object's current generation.
fn at(obj: &Value, wanted: &str) -> bool {
    phase(obj) == wanted && observed(obj) == Some(generation(obj))
}

// ---------------------------------------------------------------------------
// kubectl.

/// `kubectl ARGS`, with `stdin` as its input.
fn kubectl(args: &[&str], stdin: Option<&str>) -> Output {
    run(commands::kubectl().args(args), stdin)
}

/// `kubectl apply --server-side` of `file`; returns the applied objects.
fn apply(namespace: &str, file: &Path) -> Vec<Value> {
    let out = kubectl(
        &[
            "apply",
            "--server-side",
            "--field-manager",
            GITOPS_MANAGER,
            "--namespace",
            namespace,
            "--filename",
            file.to_str().unwrap(),
            "--output",
            "json",
        ],
        None,
    );
    assert_eq!(
        out.code,
        Some(0),
        "kubectl apply failed:\n{}{}",
        out.stdout,
        out.stderr
    );
    let applied: Value = serde_json::from_str(&out.stdout).unwrap();
    match applied["kind"].as_str() {
        Some("List") => applied["items"].as_array().unwrap().clone(),
        _ => vec![applied],
    }
}

// ---------------------------------------------------------------------------
// The tests.

#[tokio::test]
async fn a_worker_configuration_is_progressing_until_reconciled_then_healthy_or_degraded() {
    // No controller yet: the configuration has no status.
    let env = TestEnv::without_controller("gitops-config").await;
    let net = env.network().await;
    env.create_configuration("default", &net, json!({})).await;
    let cfg = live::<WorkerConfiguration>(&env, "default").await;
    assert!(cfg["status"].is_null(), "{}", cfg["status"]);
    assert_argocd(&cfg, "Progressing", "to report status");

    // Reconciled: Ready.
    env.start_controller();
    let cfg = wait_live::<WorkerConfiguration, _>(&env, "default", |o| at(o, "Ready")).await;
    assert_argocd(&cfg, "Healthy", "Ready: workers report to");
    assert_kstatus(&cfg, "Current");
    assert_eq!(condition_status(&cfg, "NetworkReady"), Some("True"));
    assert_eq!(condition_status(&cfg, "InstanceTypesOffered"), Some("True"));

    // A spec change the controller has not seen yet: generation 2, status
    // still of generation 1.
    env.kill_controller();
    let configs: Api<WorkerConfiguration> = env.cluster_api();
    let default = env.cluster_name("default");
    let set_type = |t: &str| Patch::Merge(json!({"spec": {"instanceTypes": {"backup": t}}}));
    configs
        .patch(&default, &PatchParams::default(), &set_type("zz9.large"))
        .await
        .unwrap();
    let cfg = live::<WorkerConfiguration>(&env, "default").await;
    assert_eq!((generation(&cfg), observed(&cfg)), (2, Some(1)));
    assert_argocd(&cfg, "Progressing", "to observe generation 2 (observed 1)");
    assert_eq!(
        kstatus(&cfg).status,
        "InProgress",
        "a new generation is in progress"
    );

    // The controller sees it: a type the region does not offer stalls it.
    env.start_controller();
    let cfg = wait_live::<WorkerConfiguration, _>(&env, "default", |o| at(o, "NotReady")).await;
    assert_argocd(&cfg, "Degraded", "InstanceTypeNotOffered: ");
    assert_argocd(&cfg, "Degraded", "zz9.large");
    assert_kstatus(&cfg, "Failed");
    assert_eq!(
        condition(&cfg, "Stalled").unwrap()["reason"],
        "InstanceTypeNotOffered"
    );

    // Fixed in Git, applied again: Ready at generation 3.
    configs
        .patch(&default, &PatchParams::default(), &set_type("m5.large"))
        .await
        .unwrap();
    let cfg = wait_live::<WorkerConfiguration, _>(&env, "default", |o| at(o, "Ready")).await;
    assert_eq!(generation(&cfg), 3);
    assert_argocd(&cfg, "Healthy", "Ready");
    assert_kstatus(&cfg, "Current");
    assert!(condition(&cfg, "Stalled").is_none());
}

#[tokio::test]
async fn a_backup_job_is_progressing_while_provisioning_then_healthy_once_succeeded() {
    let env = TestEnv::new("gitops-job").await;
    // Worker instances boot no agent for now: the job stays Provisioning.
    env.boot_workers.store(false, Ordering::SeqCst);
    env.default_configuration().await;
    let protected = env.protected_disk().await;
    env.create_job("nightly", &protected, json!({})).await;

    let job = wait_live::<BackupJob, _>(&env, "nightly", |o| at(o, "Provisioning")).await;
    assert_argocd(&job, "Progressing", "Provisioning: ");
    assert_kstatus(&job, "InProgress");
    assert_eq!(condition_status(&job, "Reconciling"), Some("True"));
    assert_eq!(
        condition(&job, "Reconciling").unwrap()["reason"],
        "Provisioning"
    );

    // The worker boots, reports and finishes.
    env.boot_workers.store(true, Ordering::SeqCst);
    let job = wait_live::<BackupJob, _>(&env, "nightly", |o| {
        at(o, "Succeeded") && o["status"]["activeWorkers"] == 0
    })
    .await;
    assert_argocd(&job, "Healthy", "Succeeded: ");
    assert_kstatus(&job, "Current");
    assert!(condition(&job, "Reconciling").is_none());
    assert!(condition(&job, "Stalled").is_none());
    assert_eq!(condition_status(&job, "Complete"), Some("True"));
    assert_eq!(generation(&job), 1);
}

#[tokio::test]
async fn failed_and_partially_succeeded_jobs_are_degraded_and_stalled() {
    let env = TestEnv::new("gitops-failed").await;
    env.default_configuration().await;
    let protected = env.protected_disk().await;

    env.create_job("ghost", MISSING_INSTANCE, json!({})).await;
    env.create_job(
        "half",
        &protected,
        json!({"resources": [
            {"snapshotId": protected, "region": REGION},
            {"instanceId": MISSING_INSTANCE, "region": REGION},
        ]}),
    )
    .await;

    let ghost = wait_live::<BackupJob, _>(&env, "ghost", |o| at(o, "Failed")).await;
    assert_argocd(&ghost, "Degraded", "SourceInstanceNotFound");
    assert_kstatus(&ghost, "Failed");
    assert_eq!(condition_status(&ghost, "Failed"), Some("True"));
    assert!(condition(&ghost, "Reconciling").is_none());

    let half = wait_live::<BackupJob, _>(&env, "half", |o| {
        at(o, "PartiallySucceeded") && o["status"]["activeWorkers"] == 0
    })
    .await;
    assert_argocd(&half, "Degraded", "PartiallySucceeded: ");
    assert_kstatus(&half, "Failed");
    assert_eq!(condition_status(&half, "Failed"), Some("True"));
    assert!(condition(&half, "Reconciling").is_none());
}

#[tokio::test]
async fn a_suspended_job_is_suspended_then_healthy_once_resumed() {
    let env = TestEnv::new("gitops-suspend").await;
    env.default_configuration().await;
    let protected = env.protected_disk().await;
    env.create_job("paused", &protected, json!({"suspend": true}))
        .await;

    let job = wait_live::<BackupJob, _>(&env, "paused", |o| at(o, "Suspended")).await;
    assert_argocd(&job, "Suspended", "Suspended: ");
    // Nothing runs and nothing is wrong: neither Reconciling nor Stalled.
    // kstatus then falls back to Ready, which is False: a Flux
    // Kustomization that waits on a suspended job waits until its timeout.
    assert_kstatus(&job, "InProgress");
    assert!(condition(&job, "Reconciling").is_none());
    assert!(condition(&job, "Stalled").is_none());
    assert_eq!(condition_status(&job, "Suspended"), Some("True"));

    // Resumed (generation 2): it runs to the end.
    let jobs: Api<BackupJob> = env.api();
    jobs.patch(
        "paused",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": false}})),
    )
    .await
    .unwrap();
    let job = wait_live::<BackupJob, _>(&env, "paused", |o| at(o, "Succeeded")).await;
    assert_eq!(generation(&job), 2);
    assert_argocd(&job, "Healthy", "Succeeded");
    assert_kstatus(&job, "Current");
    assert!(condition(&job, "Suspended").is_none());
}

#[tokio::test]
async fn a_restore_job_whose_restore_point_is_missing_is_degraded_and_stalled() {
    let env = TestEnv::new("gitops-restore").await;
    env.default_configuration().await;
    env.create_restore(
        "bring-back",
        "volume",
        "nightly/i-0123abcd",
        json!({"backoffLimit": 0}),
    )
    .await;

    let job = wait_live::<RestoreJob, _>(&env, "bring-back", |o| {
        at(o, "Failed") && o["status"]["activeWorkers"] == 0
    })
    .await;
    assert_argocd(&job, "Degraded", "RestorePointNotFound");
    assert_kstatus(&job, "Failed");
    assert_eq!(condition_status(&job, "Failed"), Some("True"));
    assert!(condition(&job, "Reconciling").is_none());
}

#[tokio::test]
async fn a_policy_is_degraded_while_invalid_then_healthy_and_suspended() {
    let env = TestEnv::new("gitops-policy").await;
    let policy: BackupPolicy = serde_json::from_value(json!({
        "apiVersion": "tender.dev/v1alpha1", "kind": "BackupPolicy",
        "metadata": {"name": "nightly"},
        "spec": env.with_cluster_names(json!({
            "schedule": "30 2 * * *", "timeZone": "Europe/Berlni",
            "region": common::REGION,
            "resources": [{"instanceId": "i-0123456789abcdef0"}],
            "repositoryRef": {"name": "main"},
        })),
    }))
    .unwrap();
    let policies: Api<BackupPolicy> = env.api();
    policies.create(&Default::default(), &policy).await.unwrap();
    let obj = wait_live::<BackupPolicy, _>(&env, "nightly", |o| at(o, "Invalid")).await;
    assert_argocd(
        &obj,
        "Degraded",
        "InvalidPolicy: spec.timeZone \"Europe/Berlni\"",
    );
    assert_kstatus(&obj, "Failed");

    let fix = Patch::Merge(json!({"spec": {"timeZone": "Europe/Berlin"}}));
    policies
        .patch("nightly", &PatchParams::default(), &fix)
        .await
        .unwrap();
    let obj = wait_live::<BackupPolicy, _>(&env, "nightly", |o| at(o, "Scheduled")).await;
    assert_argocd(&obj, "Healthy", "Scheduled: next run ");
    assert_argocd(&obj, "Healthy", "[Europe/Berlin]");
    assert_kstatus(&obj, "Current");
    assert_reconciled(&obj);

    let suspend = Patch::Merge(json!({"spec": {"suspend": true}}));
    policies
        .patch("nightly", &PatchParams::default(), &suspend)
        .await
        .unwrap();
    let obj = wait_live::<BackupPolicy, _>(&env, "nightly", |o| at(o, "Suspended")).await;
    assert_argocd(&obj, "Suspended", "Suspended: the policy is suspended");
}

#[tokio::test]
async fn a_configuration_whose_deletion_waits_for_a_job_is_progressing() {
    let env = TestEnv::new("gitops-deleting").await;
    env.default_configuration().await;
    let protected = env.protected_disk().await;
    // A suspended job is unfinished: it holds its configuration.
    env.create_job("held", &protected, json!({"suspend": true}))
        .await;
    wait_live::<BackupJob, _>(&env, "held", |o| at(o, "Suspended")).await;

    let configs: Api<WorkerConfiguration> = env.cluster_api();
    let default = env.cluster_name("default");
    configs
        .delete(&default, &DeleteParams::default())
        .await
        .unwrap();
    let cfg = wait_live::<WorkerConfiguration, _>(&env, "default", |o| at(o, "Deleting")).await;
    assert_argocd(&cfg, "Progressing", "InUse: ");
    assert_argocd(&cfg, "Progressing", "held");
    assert_eq!(kstatus(&cfg).status, "Terminating");
    assert_reconciled(&cfg);
    assert_eq!(condition_status(&cfg, "Reconciling"), Some("True"));
    assert_eq!(condition_status(&cfg, "Ready"), Some("False"));

    // With the job gone, the configuration goes.
    env.api::<BackupJob>()
        .delete("held", &DeleteParams::default())
        .await
        .unwrap();
    common::eventually(TIMEOUT, || {
        let configs = configs.clone();
        let default = default.clone();
        async move {
            configs
                .get_opt(&default)
                .await
                .ok()?
                .is_none()
                .then_some(())
        }
    })
    .await;
}

/// The `fieldsV1` of the managedFields entries of `manager`, as
/// (subresource, fields).
fn owned_by<'a>(obj: &'a Value, manager: &str) -> Vec<(&'a str, &'a Value)> {
    obj["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["manager"] == manager)
        .map(|e| (e["subresource"].as_str().unwrap_or(""), &e["fieldsV1"]))
        .collect()
}

fn keys(fields: &Value) -> BTreeSet<&str> {
    fields
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn applying_the_same_manifests_twice_changes_nothing_and_the_controller_never_writes_spec() {
    let env = TestEnv::new("gitops-apply").await;
    let net = env.network().await;
    let protected = env.protected_disk().await;
    // The admin's cluster-scoped configuration and repository (this
    // test's, by name and label), and a team's job that uses them.
    let labels = json!({common::TEST_LABEL: env.namespace});
    let config = json!({
        "apiVersion": "tender.dev/v1alpha1", "kind": "WorkerConfiguration",
        "metadata": {"name": env.cluster_name("default"), "labels": labels},
        "spec": {
            "namespaceSelector": env.admits_this_namespace(),
            "region": REGION,
            "subnets": [{"subnetId": net.subnet, "availabilityZone": net.zone}],
            "securityGroupIds": [net.security_group],
            "imageId": "ami-0fedcba9876543210",
            "instanceTypes": {"backup": "m5.large"},
            "tags": {"team": "storage"}
        }
    });
    let repository = json!({
        "apiVersion": "tender.dev/v1alpha1", "kind": "BackupRepository",
        "metadata": {"name": env.cluster_name("gitops"), "labels": labels},
        "spec": {
            "namespaceSelector": env.admits_this_namespace(),
            "bucket": env.bucket().await,
            "prefix": "gitops/",
            "region": REGION,
            "expectedBucketOwner": common::EMULATOR_ACCOUNT,
            "integrity": {"macKeyId": common::hmac_key(None).await}
        }
    });
    let job = json!({
        "apiVersion": "tender.dev/v1alpha1", "kind": "BackupJob",
        "metadata": {"name": "nightly"},
        "spec": {
            "workerConfigurationRef": {"name": env.cluster_name("default")},
            "resources": [{"snapshotId": protected, "region": REGION}],
            "repositoryRef": {"name": env.cluster_name("gitops")}
        }
    });
    let manifests = [&config, &repository, &job]
        .map(|m| serde_yaml::to_string(m).unwrap())
        .join("---\n");
    let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{}-manifests.yaml", env.namespace));
    std::fs::write(&file, &manifests).unwrap();

    // The first apply creates all three; the controller runs the job to its
    // end.
    let first = apply(&env.namespace, &file);
    assert_eq!(first.len(), 3);
    let cfg = wait_live::<WorkerConfiguration, _>(&env, "default", |o| at(o, "Ready")).await;
    assert_argocd(&cfg, "Healthy", "Ready");
    assert_kstatus(&cfg, "Current");
    let repo = wait_live::<BackupRepository, _>(&env, "gitops", |o| at(o, "Ready")).await;
    assert_argocd(&repo, "Healthy", "is reachable");
    assert_kstatus(&repo, "Current");
    let done = wait_live::<BackupJob, _>(&env, "nightly", |o| {
        at(o, "Succeeded") && o["status"]["activeWorkers"] == 0
    })
    .await;
    assert_argocd(&done, "Healthy", "Succeeded");
    assert_kstatus(&done, "Current");

    // The repository counts the restore point, under the namespace's
    // part of its prefix.
    let repo =
        wait_live::<BackupRepository, _>(&env, "gitops", |o| o["status"]["restorePoints"] == 1)
            .await;
    assert_eq!(
        repo["status"]["restorePointsByNamespace"],
        json!({&env.namespace: 1})
    );

    // Let the controller finish writing (the resource versions hold still).
    // The repository's status is rewritten at every check (its
    // lastCheckedTime): it is compared below by its spec and generation.
    let versions = || async {
        let c = live::<WorkerConfiguration>(&env, "default").await;
        let j = live::<BackupJob>(&env, "nightly").await;
        (
            c["metadata"]["resourceVersion"].clone(),
            j["metadata"]["resourceVersion"].clone(),
        )
    };
    let settled = common::eventually(TIMEOUT, || async {
        let before = versions().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        (versions().await == before).then_some(before)
    })
    .await;

    // Nothing to change: no diff, and the second apply writes nothing. (The
    // repository's status is rewritten at each check: a diff taken across
    // one such write shows it, so a diff is taken again; one of the spec
    // would show every time.)
    let diff = || {
        kubectl(
            &[
                "diff",
                "--server-side",
                "--field-manager",
                GITOPS_MANAGER,
                "--namespace",
                &env.namespace,
                "--filename",
                file.to_str().unwrap(),
            ],
            None,
        )
    };
    let mut diffed = diff();
    for _ in 0..2 {
        if diffed.code == Some(0) {
            break;
        }
        diffed = diff();
    }
    assert_eq!(
        diffed.code,
        Some(0),
        "kubectl diff found a difference:\n{}{}",
        diffed.stdout,
        diffed.stderr
    );
    assert!(diffed.stdout.is_empty(), "{}", diffed.stdout);
    let second = apply(&env.namespace, &file);
    let applied_versions = (
        second[0]["metadata"]["resourceVersion"].clone(),
        second[2]["metadata"]["resourceVersion"].clone(),
    );
    assert_eq!(
        applied_versions, settled,
        "the second apply changed an object"
    );
    assert_eq!(versions().await, settled);

    for (obj, manifest) in [
        (live::<WorkerConfiguration>(&env, "default").await, &config),
        (live::<BackupRepository>(&env, "gitops").await, &repository),
        (live::<BackupJob>(&env, "nightly").await, &job),
    ] {
        let what = format!("{} {}", obj["kind"], obj["metadata"]["name"]);
        // Only the apply ever changed the spec, once.
        assert_eq!(generation(&obj), 1, "{what}");
        for (key, value) in manifest["spec"].as_object().unwrap() {
            assert_eq!(&obj["spec"][key], value, "{what}: spec.{key}");
        }

        // The controller applies status under its field manager; its only
        // other write is the finalizer (kube-rs' finalizer helper patches it
        // with no field manager and kube-rs sends no User-Agent, so the API
        // server records the manager "unknown").
        // Nobody but the GitOps tool owns any of the spec.
        let controller = owned_by(&obj, CONTROLLER_MANAGER);
        assert!(
            controller
                .iter()
                .any(|(sub, f)| *sub == "status" && keys(f) == BTreeSet::from(["f:status"])),
            "{what}: the controller applies status: {controller:?}"
        );
        for e in obj["metadata"]["managedFields"].as_array().unwrap() {
            let manager = e["manager"].as_str().unwrap();
            let fields = &e["fieldsV1"];
            if manager == GITOPS_MANAGER {
                assert_eq!(e["operation"], "Apply", "{what}: {e}");
                assert!(fields["f:spec"].is_object(), "{what}: {e}");
            } else if e["subresource"] == "status" {
                assert_eq!(keys(fields), BTreeSet::from(["f:status"]), "{what}: {e}");
            } else {
                assert_eq!(keys(fields), BTreeSet::from(["f:metadata"]), "{what}: {e}");
                assert_eq!(
                    keys(&fields["f:metadata"]),
                    BTreeSet::from(["f:finalizers"]),
                    "{what}: {manager} owns more than the finalizers: {e}"
                );
            }
        }
        // And the finalizer is in place (a repository has none: its
        // restore points outlive it).
        let finalizer = match obj["kind"].as_str() {
            Some("BackupJob") => Some("tender.dev/workers"),
            Some("WorkerConfiguration") => Some("tender.dev/queue"),
            _ => None,
        };
        match finalizer {
            Some(finalizer) => assert!(
                obj["metadata"]["finalizers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|f| f == finalizer),
                "{what}"
            ),
            None => assert!(obj["metadata"]["finalizers"].is_null(), "{what}"),
        }
    }
}

#[tokio::test]
async fn the_argocd_config_map_carries_the_health_check_for_every_kind() {
    let script = std::fs::read_to_string(repo().join("gitops/argocd-health.lua")).unwrap();
    let text = std::fs::read_to_string(repo().join("gitops/argocd-cm.yaml")).unwrap();
    let cm: Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(
        (
            &cm["kind"],
            &cm["metadata"]["name"],
            &cm["metadata"]["namespace"]
        ),
        (&json!("ConfigMap"), &json!("argocd-cm"), &json!("argocd"))
    );
    // One key per kind of the API, named as Argo CD looks it up.
    let expected: BTreeSet<String> = [
        WorkerConfiguration::crd(),
        BackupRepository::crd(),
        BackupJob::crd(),
        RestoreJob::crd(),
        BackupPolicy::crd(),
        RetentionJob::crd(),
        tender::api::VerificationJob::crd(),
    ]
    .iter()
    .map(|crd| {
        format!(
            "resource.customizations.health.{}_{}",
            crd.spec.group, crd.spec.names.kind
        )
    })
    .collect();
    let data = cm["data"].as_object().unwrap();
    let found: BTreeSet<String> = data.keys().cloned().collect();
    assert_eq!(found, expected);
    for (key, value) in data {
        assert!(
            value.as_str() == Some(script.as_str()),
            "{key} in gitops/argocd-cm.yaml differs from gitops/argocd-health.lua: run gitops/gen-argocd-cm"
        );
    }

    // Applied server-side next to an existing argocd-cm (here in a test
    // namespace), the snippet adds its keys and keeps the others.
    let env = TestEnv::without_controller("gitops-argocd-cm").await;
    let existing = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "argocd-cm", "namespace": env.namespace},
        "data": {"url": "https://argocd.example.com"}
    });
    let out = kubectl(
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "argocd-install",
            "-f",
            "-",
        ],
        Some(&existing.to_string()),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let mut snippet = cm.clone();
    snippet["metadata"]["namespace"] = json!(env.namespace);
    let out = kubectl(
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "tender-argocd-health",
            "-f",
            "-",
        ],
        Some(&snippet.to_string()),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> = env.api();
    let applied = configmaps.get("argocd-cm").await.unwrap();
    let live_data = applied.data.unwrap();
    assert_eq!(
        live_data.get("url").map(String::as_str),
        Some("https://argocd.example.com")
    );
    for key in &expected {
        assert_eq!(live_data.get(key), Some(&script), "{key}");
    }
}
