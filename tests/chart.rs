//! The Helm chart (charts/tender) and the kustomize base (deploy/): they
//! lint, render, enforce their values schema and carry the repository's
//! CRDs; what they render is accepted by the real local API server, whose
//! RBAC authorizer grants the controller's ServiceAccount what the
//! controller does and nothing more; and the real controller binary,
//! started as the Deployment starts it and authenticated as that
//! ServiceAccount, gets elected, reconciles and shuts down cleanly.
//!
//! Needs `helm` (built by `scripts/testenv install`; or set HELM) and
//! `kubectl` with the environment of `scripts/testenv up` (KUBECONFIG, the
//! AWS emulator). Every test uses its own release name and namespaces, so
//! runs and tests in parallel do not collide; the namespaces stay
//! Terminating afterwards (the local API server runs no namespace
//! controller).
// Its helpers (not only its #[test]s, which clippy.toml covers) unwrap and panic.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use common::commands::{Output, helm, kubectl, repo, run, run_ok};
use common::{free_port, unique};
use serde::Deserialize;
use serde_json::{Value, json};

const FIELD_MANAGER: &str = "tender-chart-tests";
/// The Lease the controller's leader election uses.
const LEASE: &str = "tender-controller";
/// Labels only Helm puts on objects; the kustomize base has the others.
const HELM_ONLY_LABELS: [&str; 2] = ["helm.sh/chart", "app.kubernetes.io/managed-by"];

fn chart() -> PathBuf {
    repo().join("charts/tender")
}

/// The documents of a multi-document YAML stream, as JSON, without empty ones.
fn parse_documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .map(|v| serde_json::to_value(v).unwrap())
        .collect()
}

fn kind(obj: &Value) -> &str {
    obj["kind"].as_str().unwrap()
}

fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap()
}

fn find<'a>(objects: &'a [Value], kind_: &str, name_: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| kind(o) == kind_ && name(o) == name_)
        .unwrap_or_else(|| panic!("no {kind_} {name_} among {:?}", kinds_and_names(objects)))
}

fn kinds_and_names(objects: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = objects
        .iter()
        .map(|o| format!("{}/{}", kind(o), name(o)))
        .collect();
    v.sort();
    v
}

/// `helm template RELEASE charts/tender --namespace NAMESPACE --set ...`.
fn helm_template(release: &str, namespace: &str, set: &[&str]) -> Output {
    let mut cmd = Command::new(helm());
    cmd.arg("template")
        .arg(release)
        .arg(chart())
        .args(["--namespace", namespace]);
    for s in set {
        cmd.args(["--set", s]);
    }
    run(&mut cmd, None)
}

fn render(release: &str, namespace: &str, set: &[&str]) -> Vec<Value> {
    let out = helm_template(release, namespace, set);
    assert!(
        out.success(),
        "helm template {set:?} failed:\n{}",
        out.stderr
    );
    parse_documents(&out.stdout)
}

fn list(objects: &[Value]) -> String {
    json!({"apiVersion": "v1", "kind": "List", "items": objects}).to_string()
}

fn server_side_apply(objects: &[Value], dry_run: bool) {
    let mut cmd = kubectl();
    cmd.args([
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager",
        FIELD_MANAGER,
        "-f",
        "-",
    ]);
    if dry_run {
        cmd.arg("--dry-run=server");
    }
    let out = run_ok(&mut cmd, Some(&list(objects)));
    // One line per object: "<kind>/<name> serverside-applied".
    let applied = out
        .lines()
        .filter(|l| l.contains("serverside-applied"))
        .count();
    assert_eq!(applied, objects.len(), "kubectl apply said:\n{out}");
}

/// Namespaces of one test, deleted when it ends, whatever happens.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn create(names: &[&str]) -> Self {
        let guard = Namespaces(names.iter().map(|s| s.to_string()).collect());
        for n in names {
            run_ok(kubectl().args(["create", "namespace", n]), None);
        }
        guard
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            // Never waited for: nothing here finalizes namespaces.
            let _ = run(
                kubectl().args([
                    "delete",
                    "namespace",
                    ns,
                    "--wait=false",
                    "--ignore-not-found",
                ]),
                None,
            );
        }
    }
}

/// The rendered objects, applied for real. Deleted by `uninstall`, or,
/// when a test fails first, on drop.
struct Installed {
    objects: Vec<Value>,
    done: bool,
}

impl Installed {
    /// Applies `objects` server-side.
    fn apply(objects: Vec<Value>) -> Self {
        let installed = Installed {
            objects,
            done: false,
        };
        server_side_apply(&installed.objects, false);
        installed
    }

    /// The object as the API server stores it.
    fn get(&self, kind_: &str, name_: &str) -> Value {
        let obj = find(&self.objects, kind_, name_);
        let mut cmd = kubectl();
        cmd.args([
            "get",
            &format!("{}/{}", resource_type(obj), name_),
            "-o",
            "json",
        ]);
        if let Some(ns) = obj["metadata"]["namespace"].as_str() {
            cmd.args(["-n", ns]);
        }
        serde_json::from_str(&run_ok(&mut cmd, None)).unwrap()
    }

    /// Deletes every object, and checks that the cluster-scoped ones
    /// (ClusterRoles, ClusterRoleBindings) are gone.
    fn uninstall(mut self) {
        self.done = true;
        run_ok(
            kubectl().args(["delete", "--wait=false", "-f", "-"]),
            Some(&list(&self.objects)),
        );
        // A deleted Namespace stays Terminating here (no namespace controller).
        for obj in self
            .objects
            .iter()
            .filter(|o| is_cluster_scoped(o) && kind(o) != "Namespace")
        {
            let out = run(
                kubectl().args(["get", &format!("{}/{}", resource_type(obj), name(obj))]),
                None,
            );
            assert!(
                !out.success() && out.stderr.contains("NotFound"),
                "{} {} is still there after delete: {}{}",
                kind(obj),
                name(obj),
                out.stdout,
                out.stderr
            );
        }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.done {
            let _ = run(
                kubectl().args(["delete", "--wait=false", "--ignore-not-found", "-f", "-"]),
                Some(&list(&self.objects)),
            );
        }
    }
}

fn is_cluster_scoped(obj: &Value) -> bool {
    matches!(
        kind(obj),
        "ClusterRole" | "ClusterRoleBinding" | "Namespace" | "CustomResourceDefinition"
    )
}

/// `kind.group` for kubectl, so no discovery guesswork is involved.
fn resource_type(obj: &Value) -> String {
    let group = obj["apiVersion"]
        .as_str()
        .unwrap()
        .rsplit_once('/')
        .map(|(g, _)| g)
        .unwrap_or("");
    let kind_ = kind(obj).to_lowercase();
    if group.is_empty() {
        kind_
    } else {
        format!("{kind_}.{group}")
    }
}

/// One question for the authorizer: may the ServiceAccount `verb` the
/// `resource` (`type` or `type/name`), in `namespace` (None: cluster-scoped),
/// on `subresource`? And the answer the controller's RBAC must give.
struct Check {
    verb: &'static str,
    resource: String,
    namespace: Option<String>,
    subresource: Option<&'static str>,
    allowed: bool,
}

fn check(verb: &'static str, resource: &str, namespace: Option<&str>, allowed: bool) -> Check {
    Check {
        verb,
        resource: resource.to_string(),
        namespace: namespace.map(str::to_string),
        subresource: None,
        allowed,
    }
}

impl Check {
    fn on(mut self, subresource: &'static str) -> Self {
        self.subresource = Some(subresource);
        self
    }
}

/// A ServiceAccount, as the API server's authorizer sees it (`kubectl auth
/// can-i`, impersonating it).
struct Sa<'a> {
    namespace: &'a str,
    name: &'a str,
}

impl Sa<'_> {
    fn can(&self, c: &Check) -> bool {
        let mut cmd = kubectl();
        cmd.args(["auth", "can-i", c.verb, &c.resource])
            .arg(format!(
                "--as=system:serviceaccount:{}:{}",
                self.namespace, self.name
            ));
        if let Some(ns) = &c.namespace {
            cmd.args(["-n", ns]);
        }
        if let Some(sub) = c.subresource {
            cmd.arg(format!("--subresource={sub}"));
        }
        let out = run(&mut cmd, None);
        match out.stdout.trim() {
            "yes" => true,
            "no" => false,
            other => panic!("{cmd:?}: unexpected answer {other:?}: {}", out.stderr),
        }
    }

    /// Asserts every check, listing all that fail. The API server's RBAC
    /// authorizer learns of new Roles and bindings from a watch, a moment
    /// after they are created: a check is asked again for up to 10 s
    /// before it counts as wrong.
    fn assert_permissions(&self, checks: &[Check]) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut pending: Vec<&Check> = checks.iter().collect();
        loop {
            pending.retain(|c| self.can(c) != c.allowed);
            if pending.is_empty() || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        let wrong: Vec<String> = pending
            .into_iter()
            .map(|c| {
                format!(
                    "{} {}{} in {}: expected {}",
                    c.verb,
                    c.resource,
                    c.subresource.map(|s| format!("/{s}")).unwrap_or_default(),
                    c.namespace.as_deref().unwrap_or("(cluster)"),
                    if c.allowed { "allowed" } else { "denied" }
                )
            })
            .collect();
        assert!(
            wrong.is_empty(),
            "ServiceAccount {}/{}:\n  {}",
            self.namespace,
            self.name,
            wrong.join("\n  ")
        );
    }
}

/// What the controller does in a namespace where it manages jobs (all
/// `allowed` or all denied), and what it never does there: only the verbs
/// its code uses (it patches, finalizers included, and never updates).
fn managed_namespace_checks(ns: &str, allowed: bool) -> Vec<Check> {
    let ns = Some(ns);
    let mut checks = Vec::new();
    for res in [
        "backupjobs.tender.dev",
        "restorejobs.tender.dev",
        "retentionjobs.tender.dev",
        "verificationjobs.tender.dev",
    ] {
        // delete: a finished job's TTL.
        for verb in ["get", "list", "watch", "patch", "delete"] {
            checks.push(check(verb, res, ns, allowed));
        }
        checks.push(check("patch", res, ns, allowed).on("status"));
        // The controller never creates its users' resources; only a
        // BackupPolicy's runs (BackupJobs, RetentionJobs and
        // VerificationJobs).
        checks.push(check("update", res, ns, false));
        checks.push(check(
            "create",
            res,
            ns,
            allowed && res != "restorejobs.tender.dev",
        ));
        checks.push(check("update", res, ns, false).on("status"));
        checks.push(check("update", res, ns, false).on("finalizers"));
    }
    let policies = "backuppolicies.tender.dev";
    for verb in ["get", "list", "watch"] {
        checks.push(check(verb, policies, ns, allowed));
    }
    checks.push(check("patch", policies, ns, allowed).on("status"));
    checks.push(check("update", policies, ns, allowed).on("finalizers"));
    // A policy is its users': the controller never changes nor deletes it.
    for verb in ["create", "update", "patch", "delete"] {
        checks.push(check(verb, policies, ns, false));
    }
    // The catalog: made and removed by the controller, never changed (a
    // verification reads one to record its result in its status).
    for verb in ["get", "list", "create", "delete"] {
        checks.push(check(verb, "restorepoints.tender.dev", ns, allowed));
    }
    for verb in ["update", "patch"] {
        checks.push(check(verb, "restorepoints.tender.dev", ns, false));
    }
    checks.push(check("patch", "restorepoints.tender.dev", ns, allowed).on("status"));
    checks.push(check("create", "events.events.k8s.io", ns, allowed));
    checks.push(check("patch", "events.events.k8s.io", ns, allowed));
    // Its Events are events.k8s.io/v1 ones; it writes no core/v1 Event.
    checks.push(check("create", "events", ns, false));
    // A file-level session's token Secret: created once, read after.
    for verb in ["create", "get"] {
        checks.push(check(verb, "secrets", ns, allowed));
    }
    // Reading every Secret, or changing one, is not something it needs.
    for verb in ["list", "watch", "patch", "delete"] {
        checks.push(check(verb, "secrets", ns, false));
    }
    checks.push(check("create", "pods", ns, false));
    checks
}

/// What the controller does with the cluster-scoped classes an admin
/// declares (WorkerConfiguration, BackupRepository): watches them, patches
/// their finalizers and writes their status; it never creates, replaces
/// or deletes one. Events on them go to namespace `default`.
fn class_checks() -> Vec<Check> {
    let mut checks = Vec::new();
    for res in [
        "workerconfigurations.tender.dev",
        "backuprepositories.tender.dev",
    ] {
        for verb in ["get", "list", "watch", "patch"] {
            checks.push(check(verb, res, None, true));
        }
        checks.push(check("patch", res, None, true).on("status"));
        for verb in ["create", "update", "delete"] {
            checks.push(check(verb, res, None, false));
        }
    }
    checks.push(check(
        "create",
        "events.events.k8s.io",
        Some("default"),
        true,
    ));
    checks
}

/// Leader election: the Lease `tender-controller` in the release namespace,
/// and nothing else with Leases.
fn leader_election_checks(release_ns: &str, other_ns: &str) -> Vec<Check> {
    let lease = format!("leases.coordination.k8s.io/{LEASE}");
    let (release_ns, other_ns) = (Some(release_ns), Some(other_ns));
    vec![
        check("create", "leases.coordination.k8s.io", release_ns, true),
        check("get", &lease, release_ns, true),
        check("update", &lease, release_ns, true),
        check("delete", &lease, release_ns, false),
        check(
            "update",
            "leases.coordination.k8s.io/someone-else",
            release_ns,
            false,
        ),
        check("list", "leases.coordination.k8s.io", release_ns, false),
        check("create", "leases.coordination.k8s.io", other_ns, false),
    ]
}

fn deployment_container(deployment: &Value) -> &Value {
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 1, "one container: {containers:?}");
    &containers[0]
}

fn env_value<'a>(container: &'a Value, var: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == var)
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn chart_and_kustomize_crds_are_the_repositorys_crds() {
    let expected = files(&repo().join("crds"));
    assert_eq!(expected.len(), 8, "crds/ holds the eight CRDs");
    for copy in ["charts/tender/crds", "deploy/crds"] {
        let actual = files(&repo().join(copy));
        assert_eq!(
            actual.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "{copy}/ holds the same files as crds/"
        );
        for (file, bytes) in &expected {
            assert!(
                actual[file] == *bytes,
                "{copy}/{file} differs from crds/{file}: run `cp crds/*.yaml {copy}/`"
            );
        }
    }
}

#[test]
fn helm_lint_passes_strictly() {
    for values in [
        &[][..],
        &["watchNamespace=apps", "clusterId=c1"][..],
        &[
            "serviceMonitor.enabled=true",
            "podDisruptionBudget.enabled=true",
        ][..],
    ] {
        for strict in [false, true] {
            let mut cmd = Command::new(helm());
            cmd.arg("lint").arg(chart());
            if strict {
                cmd.arg("--strict");
            }
            for v in values {
                cmd.args(["--set", v]);
            }
            let out = run_ok(&mut cmd, None);
            assert!(
                out.contains("1 chart(s) linted, 0 chart(s) failed"),
                "helm lint {values:?} (strict: {strict}):\n{out}"
            );
            assert!(
                !out.contains("[ERROR]") && !out.contains("[WARNING]"),
                "{out}"
            );
        }
    }
}

#[test]
fn values_schema_rejects_wrong_values() {
    let rejected: &[(&str, &str)] = &[
        ("replicaCount=zero", "/replicaCount"),
        ("replicaCount=0", "/replicaCount"),
        ("logFormat=xml", "/logFormat"),
        ("heartbeatSeconds=often", "/heartbeatSeconds"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("serviceAccount.create=maybe", "/serviceAccount/create"),
        ("watchNamespace=Not_A_Namespace", "/watchNamespace"),
        ("replicaCont=2", "replicaCont"),
    ];
    for (set, path) in rejected {
        let out = helm_template("schema", "default", &[set]);
        assert!(!out.success(), "--set {set} was accepted");
        assert!(
            out.stderr.contains("schema") && out.stderr.contains(path),
            "--set {set} failed, but not on the schema at {path}:\n{}",
            out.stderr
        );
    }
    // The same keys with right values render.
    let objects = render(
        "schema",
        "default",
        &[
            "replicaCount=3",
            "logFormat=text",
            "heartbeatSeconds=10",
            "watchNamespace=apps",
        ],
    );
    let deployment = find(&objects, "Deployment", "schema-tender");
    assert_eq!(deployment["spec"]["replicas"], 3);
    let container = deployment_container(deployment);
    assert_eq!(
        env_value(container, "TENDER_LOG_FORMAT").unwrap()["value"],
        "text"
    );
    assert_eq!(
        env_value(container, "TENDER_HEARTBEAT_SECONDS").unwrap()["value"],
        "10"
    );
    assert_eq!(
        env_value(container, "TENDER_NAMESPACE").unwrap()["value"],
        "apps"
    );
}

#[test]
fn default_values_apply_and_grant_the_controller_what_it_needs() {
    let release = unique("ch");
    let ns = unique("chart");
    let elsewhere = unique("chart-jobs");
    let objects = render(&release, &ns, &[]);
    let full = format!("{release}-tender");

    assert_eq!(
        kinds_and_names(&objects),
        [
            format!("ClusterRole/{full}"),
            format!("ClusterRoleBinding/{full}"),
            format!("Deployment/{full}"),
            format!("Role/{full}-leader-election"),
            format!("RoleBinding/{full}-leader-election"),
            format!("Service/{full}-metrics"),
            format!("ServiceAccount/{full}"),
        ]
    );
    for obj in objects.iter().filter(|o| !is_cluster_scoped(o)) {
        assert_eq!(obj["metadata"]["namespace"], ns.as_str(), "{}", name(obj));
    }

    let _namespaces = Namespaces::create(&[&ns, &elsewhere]);
    let installed = Installed::apply(objects);

    // The Deployment as the API server stored it.
    let deployment = installed.get("Deployment", &full);
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], full.as_str());
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = deployment_container(&deployment);
    assert_eq!(container["image"], "ghcr.io/tender-dev/tender:0.1.0");
    assert_eq!(
        container["args"],
        json!([
            "controller",
            "--leader-elect",
            "--metrics-address=0.0.0.0:8080"
        ])
    );
    assert_eq!(
        container["ports"],
        json!([{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}])
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "metrics");
    for (var, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        assert_eq!(
            env_value(container, var).unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
            field
        );
    }
    assert_eq!(
        env_value(container, "TENDER_LOG_FORMAT").unwrap()["value"],
        "json"
    );
    assert!(
        env_value(container, "TENDER_NAMESPACE").is_none(),
        "watches all namespaces"
    );
    assert!(env_value(container, "TENDER_CLUSTER_ID").is_none());
    let sc = &container["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");

    // The metrics Service selects the controller pods, on the named port.
    let service = installed.get("Service", &format!("{full}-metrics"));
    let pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap();
    for (k, v) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(
            pod_labels.get(k),
            Some(v),
            "pods carry the Service's selector {k}"
        );
    }
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");

    // RBAC, as the real authorizer sees it: jobs in any namespace, the
    // classes, and the labels of every namespace (the classes'
    // namespaceSelector).
    let sa = Sa {
        namespace: &ns,
        name: &full,
    };
    sa.assert_permissions(&managed_namespace_checks(&elsewhere, true));
    sa.assert_permissions(&managed_namespace_checks(&ns, true));
    sa.assert_permissions(&class_checks());
    sa.assert_permissions(&[
        check("get", "namespaces/kube-system", None, true),
        check("get", "namespaces/default", None, false),
        check("list", "namespaces", None, true),
        check("watch", "namespaces", None, true),
        check("patch", "namespaces", None, false),
        check("create", "deployments.apps", Some(&ns), false),
    ]);
    sa.assert_permissions(&leader_election_checks(&ns, &elsewhere));

    installed.uninstall();
}

#[test]
fn watch_namespace_grants_access_there_only() {
    let release = unique("cw");
    let ns = unique("chart-w");
    let watched = unique("chart-watched");
    let other = unique("chart-other");
    let full = format!("{release}-tender");
    let _namespaces = Namespaces::create(&[&ns, &watched, &other]);

    for (cluster_id, kube_system) in [(None, true), (Some("cluster-1"), false)] {
        let mut set = vec![format!("watchNamespace={watched}")];
        if let Some(id) = cluster_id {
            set.push(format!("clusterId={id}"));
        }
        let set: Vec<&str> = set.iter().map(String::as_str).collect();
        let objects = render(&release, &ns, &set);

        let role = find(&objects, "Role", &full);
        assert_eq!(role["metadata"]["namespace"], watched.as_str());
        assert_eq!(
            find(&objects, "RoleBinding", &full)["metadata"]["namespace"],
            watched.as_str()
        );
        // Cluster-wide: the classes (cluster-scoped), the labels of the
        // watched namespace only, and at most kube-system's UID.
        let cluster_roles: Vec<&Value> = objects
            .iter()
            .filter(|o| kind(o) == "ClusterRole")
            .collect();
        assert_eq!(cluster_roles.len(), 1);
        assert!(objects.iter().any(|o| kind(o) == "ClusterRoleBinding"));
        let mut rules = vec![
            json!({"apiGroups": ["tender.dev"], "resources": ["workerconfigurations", "backuprepositories"], "verbs": ["get", "list", "watch", "patch"]}),
            json!({"apiGroups": ["tender.dev"], "resources": ["workerconfigurations/status", "backuprepositories/status"], "verbs": ["patch"]}),
            json!({"apiGroups": [""], "resources": ["namespaces"], "resourceNames": [watched], "verbs": ["get", "list", "watch"]}),
        ];
        if kube_system {
            rules.push(json!({"apiGroups": [""], "resources": ["namespaces"], "resourceNames": ["kube-system"], "verbs": ["get"]}));
        }
        assert_eq!(cluster_roles[0]["rules"], json!(rules));
        let container = deployment_container(find(&objects, "Deployment", &full));
        assert_eq!(
            env_value(container, "TENDER_NAMESPACE").unwrap()["value"],
            watched.as_str()
        );
        assert_eq!(
            env_value(container, "TENDER_CLUSTER_ID").map(|e| e["value"].clone()),
            cluster_id.map(|id| json!(id))
        );

        let installed = Installed::apply(objects);
        let sa = Sa {
            namespace: &ns,
            name: &full,
        };
        sa.assert_permissions(&managed_namespace_checks(&watched, true));
        sa.assert_permissions(&managed_namespace_checks(&other, false));
        sa.assert_permissions(&managed_namespace_checks(&ns, false));
        sa.assert_permissions(&class_checks());
        sa.assert_permissions(&[
            check("get", "namespaces/kube-system", None, kube_system),
            check("get", "namespaces/default", None, false),
            check("get", &format!("namespaces/{watched}"), None, true),
            check("get", &format!("namespaces/{other}"), None, false),
        ]);
        // Events on the cluster-scoped classes land in namespace default:
        // creating them there, and nothing else.
        sa.assert_permissions(&[
            check("create", "events.events.k8s.io", Some("default"), true),
            check("patch", "events.events.k8s.io", Some("default"), true),
            check("create", "secrets", Some("default"), false),
            check("list", "backupjobs.tender.dev", Some("default"), false),
        ]);
        sa.assert_permissions(&leader_election_checks(&ns, &watched));
        installed.uninstall();
    }
}

#[test]
fn pdb_and_service_monitor_render_when_enabled() {
    let release = unique("co");
    let ns = unique("chart-o");
    let full = format!("{release}-tender");

    let defaults = render(&release, &ns, &[]);
    assert!(
        !defaults
            .iter()
            .any(|o| matches!(kind(o), "PodDisruptionBudget" | "ServiceMonitor")),
        "neither is rendered by default"
    );

    let objects = render(
        &release,
        &ns,
        &[
            "podDisruptionBudget.enabled=true",
            "serviceMonitor.enabled=true",
            "serviceMonitor.labels.release=prometheus",
        ],
    );
    let deployment = find(&objects, "Deployment", &full);
    let selector = &deployment["spec"]["selector"];

    let pdb = find(&objects, "PodDisruptionBudget", &full);
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(&pdb["spec"]["selector"], selector);

    let monitor = find(&objects, "ServiceMonitor", &full);
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    let service = find(&objects, "Service", &format!("{full}-metrics"));
    let service_labels = service["metadata"]["labels"].as_object().unwrap();
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            service_labels.get(k),
            Some(v),
            "the Service carries the monitor's selector {k}"
        );
    }
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"],
        json!([ns])
    );
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        service["spec"]["ports"][0]["name"]
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");

    // A ServiceMonitor without the Service it scrapes is refused.
    let out = helm_template(
        &release,
        &ns,
        &[
            "serviceMonitor.enabled=true",
            "metrics.service.enabled=false",
        ],
    );
    assert!(
        !out.success() && out.stderr.contains("needs metrics.service.enabled"),
        "{}",
        out.stderr
    );

    // The local API server has no ServiceMonitor CRD; everything else applies.
    let applicable: Vec<Value> = objects
        .into_iter()
        .filter(|o| kind(o) != "ServiceMonitor")
        .collect();
    let _namespaces = Namespaces::create(&[&ns]);
    let installed = Installed::apply(applicable);
    let pdb = installed.get("PodDisruptionBudget", &full);
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    installed.uninstall();
}

/// Strips what only Helm adds, so chart and kustomize objects compare equal.
fn without_helm_labels(mut obj: Value) -> Value {
    for pointer in ["/metadata/labels", "/spec/template/metadata/labels"] {
        if let Some(labels) = obj.pointer_mut(pointer).and_then(Value::as_object_mut) {
            for l in HELM_ONLY_LABELS {
                labels.remove(l);
            }
        }
    }
    obj
}

/// `1440.0` and `1440` are the same number to the API server; kustomize
/// writes the latter.
fn normalize_numbers(v: Value) -> Value {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e15 => json!(f as i64),
            _ => Value::Number(n),
        },
        Value::Array(a) => Value::Array(a.into_iter().map(normalize_numbers).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (k, normalize_numbers(v)))
                .collect(),
        ),
        other => other,
    }
}

/// Where `a` and `b` first differ, as a JSON pointer with both values.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys()) {
                let p = format!("{path}/{key}");
                match (x.get(key), y.get(key)) {
                    (Some(u), Some(v)) => {
                        if let Some(d) = first_difference(u, v, &p) {
                            return Some(d);
                        }
                    }
                    (u, v) => return Some(format!("{p}: {u:?} vs {v:?}")),
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (u, v))| first_difference(u, v, &format!("{path}/{i}"))),
        _ => (a != b).then(|| format!("{path}: {a} vs {b}")),
    }
}

/// Asserts `actual == expected`, naming the first difference.
fn assert_same(what: &str, actual: &Value, expected: &Value) {
    if let Some(d) = first_difference(actual, expected, "") {
        panic!("{what}: {d}");
    }
}

/// `to` relative to `from` (kustomize refuses absolute paths to bases).
fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let (from, to) = (from.canonicalize().unwrap(), to.canonicalize().unwrap());
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..from.len() {
        rel.push("..");
    }
    for c in &to[common..] {
        rel.push(c);
    }
    rel
}

#[test]
fn kustomize_base_is_the_charts_defaults_and_applies() {
    let rendered = parse_documents(&run_ok(
        kubectl().arg("kustomize").arg(repo().join("deploy")),
        None,
    ));

    // The Namespace and the repository's CRDs...
    let namespace = find(&rendered, "Namespace", "tender-system");
    assert_eq!(namespace["apiVersion"], "v1");
    let crds: BTreeMap<String, Value> = rendered
        .iter()
        .filter(|o| kind(o) == "CustomResourceDefinition")
        .map(|o| (name(o).to_string(), normalize_numbers(o.clone())))
        .collect();
    let expected_crds: BTreeMap<String, Value> = files(&repo().join("crds"))
        .values()
        .flat_map(|bytes| parse_documents(std::str::from_utf8(bytes).unwrap()))
        .map(|o| (name(&o).to_string(), normalize_numbers(o)))
        .collect();
    assert_eq!(
        crds.keys().collect::<Vec<_>>(),
        expected_crds.keys().collect::<Vec<_>>()
    );
    for (crd, expected) in &expected_crds {
        assert_same(
            &format!("CRD {crd} from deploy/ vs crds/"),
            &crds[crd],
            expected,
        );
    }

    // ...and exactly the chart's objects with default values.
    let chart: BTreeMap<String, Value> = render("tender", "tender-system", &[])
        .into_iter()
        .map(|o| (format!("{}/{}", kind(&o), name(&o)), without_helm_labels(o)))
        .collect();
    let base: BTreeMap<String, Value> = rendered
        .iter()
        .filter(|o| !matches!(kind(o), "Namespace" | "CustomResourceDefinition"))
        .map(|o| {
            (
                format!("{}/{}", kind(o), name(o)),
                without_helm_labels(o.clone()),
            )
        })
        .collect();
    assert_eq!(
        base.keys().collect::<Vec<_>>(),
        chart.keys().collect::<Vec<_>>(),
        "deploy/ holds the chart's objects"
    );
    for (key, expected) in &chart {
        assert_same(
            &format!(
                "{key} in deploy/ (left) differs from `helm template tender charts/tender -n tender-system` (right)"
            ),
            &base[key],
            expected,
        );
    }

    // Applied through an overlay that gives it its own namespace and names,
    // as a user customises the base.
    let ns = unique("kustomize");
    let prefix = format!("{}-", unique("k"));
    let overlay = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&ns);
    std::fs::create_dir_all(&overlay).unwrap();
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: {ns}\nnamePrefix: {prefix}\nresources:\n  - {}\n",
            relative_path(&overlay, &repo().join("deploy")).display()
        ),
    )
    .unwrap();
    let objects = parse_documents(&run_ok(kubectl().arg("kustomize").arg(&overlay), None));
    std::fs::remove_dir_all(&overlay).unwrap();
    find(&objects, "Namespace", &ns);
    let (crds, objects): (Vec<Value>, Vec<Value>) = objects
        .into_iter()
        .partition(|o| kind(o) == "CustomResourceDefinition");
    assert_eq!(crds.len(), 8);
    // The CRDs are shared with the other tests: validated, not replaced.
    server_side_apply(&crds, true);

    let full = format!("{prefix}tender");
    // The overlay's Namespace object creates it; the guard deletes it.
    let _namespaces = Namespaces(vec![ns.clone()]);
    let installed = Installed::apply(objects);
    let deployment = installed.get("Deployment", &full);
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        full.as_str()
    );
    let elsewhere = unique("kustomize-jobs");
    let sa = Sa {
        namespace: &ns,
        name: &full,
    };
    sa.assert_permissions(&managed_namespace_checks(&elsewhere, true));
    sa.assert_permissions(&class_checks());
    sa.assert_permissions(&[check("get", "namespaces/kube-system", None, true)]);
    sa.assert_permissions(&leader_election_checks(&ns, &elsewhere));
    installed.uninstall();
}

/// `GET path` on loopback; the status code, or None when nothing answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    // One write: the controller's small responder reads the request once.
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// Polls `check` every 250 ms until it returns Some, or panics with `what`
/// and the controller's log after `secs` seconds.
fn eventually<T>(what: &str, secs: u64, log: &Path, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "{what}: not within {secs} s. Controller log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// A kubeconfig for the current cluster that authenticates as the
/// ServiceAccount, with a token from the TokenRequest API.
fn service_account_kubeconfig(sa: &Sa, path: &Path) {
    let token = run_ok(
        kubectl().args([
            "create",
            "token",
            sa.name,
            "-n",
            sa.namespace,
            "--duration=1h",
        ]),
        None,
    );
    let current: Value = serde_json::from_str(&run_ok(
        kubectl().args(["config", "view", "--raw", "--minify", "-o", "json"]),
        None,
    ))
    .unwrap();
    let cluster = current["clusters"][0]["cluster"].clone();
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testenv", "cluster": cluster}],
        "users": [{"name": sa.name, "user": {"token": token.trim()}}],
        "contexts": [{"name": "sa", "context": {"cluster": "testenv", "user": sa.name}}],
        "current-context": "sa",
    });
    std::fs::write(path, serde_json::to_string(&config).unwrap()).unwrap();
}

/// The controller process; killed on drop unless it was stopped.
struct Controller(Option<std::process::Child>);

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The real `tender controller` binary, started the way the chart's
/// Deployment starts it (its args and env; the downward API filled in by
/// hand) but authenticated as the chart's ServiceAccount: it must get
/// elected, reconcile a WorkerConfiguration end to end, publish Events and
/// release its Lease on SIGTERM with nothing but the chart's RBAC.
#[test]
fn the_controller_runs_with_nothing_but_the_charts_permissions() {
    let release = unique("cr");
    let ns = unique("chart-r");
    let watched = unique("chart-r-jobs");
    let full = format!("{release}-tender");
    let cluster_id = unique("chart-cluster");
    let aws_region = std::env::var("AWS_REGION").expect("AWS_REGION from scripts/testenv");
    let aws_endpoint =
        std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL from scripts/testenv");
    // Scoped to its own namespace, classes (by their label, as the other
    // tests' are) and cluster ID, so that it touches nothing of the other
    // tests (and its sweep no AWS resource of theirs).
    let class_label = format!("tender.dev/test={watched}");
    let objects = render(
        &release,
        &ns,
        &[
            &format!("watchNamespace={watched}"),
            &format!("clusterId={cluster_id}"),
            &format!("classSelector={class_label}"),
            &format!("aws.region={aws_region}"),
            &format!("aws.endpointUrl={aws_endpoint}"),
        ],
    );
    let container = deployment_container(find(&objects, "Deployment", &full)).clone();

    // The CRDs the controller watches, as this build of it prints them
    // (the same the other tests apply; the chart's copies are compared
    // with crds/ above).
    let crds = parse_documents(&run_ok(
        Command::new(env!("CARGO_BIN_EXE_tender")).arg("crd"),
        None,
    ));
    assert_eq!(crds.len(), 8);
    server_side_apply(&crds, false);
    for crd in &crds {
        run_ok(
            kubectl().args([
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                &format!("crd/{}", name(crd)),
            ]),
            None,
        );
    }

    let _namespaces = Namespaces::create(&[&ns, &watched]);
    let installed = Installed::apply(objects);
    let sa = Sa {
        namespace: &ns,
        name: &full,
    };
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&release);
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    service_account_kubeconfig(&sa, &kubeconfig);

    // The Deployment's command line, with a free local metrics port.
    let port = free_port();
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .map(|a| {
            if a.starts_with("--metrics-address=") {
                format!("--metrics-address=127.0.0.1:{port}")
            } else {
                a
            }
        })
        .collect();
    assert!(args.contains(&"--leader-elect".to_string()), "{args:?}");
    let pod_name = format!("{full}-0");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tender"));
    cmd.args(&args).env("KUBECONFIG", &kubeconfig);
    for var in container["env"].as_array().unwrap() {
        let var_name = var["name"].as_str().unwrap();
        let value = match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.name") => pod_name.clone(),
            Some("metadata.namespace") => ns.clone(),
            Some(other) => panic!("unexpected fieldRef {other}"),
            None => var["value"].as_str().unwrap().to_string(),
        };
        cmd.env(var_name, value);
    }
    let log = dir.join("controller.log");
    let log_file = std::fs::File::create(&log).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file);
    let mut controller = Controller(Some(cmd.spawn().unwrap()));

    // Elected (it reads, creates and renews the Lease), then ready.
    eventually("/readyz answers 200", 60, &log, || {
        if let Some(status) = controller.0.as_mut().unwrap().try_wait().unwrap() {
            panic!(
                "the controller exited ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        (http_status(port, "/readyz") == Some(200)).then_some(())
    });
    assert_eq!(http_status(port, "/healthz"), Some(200));
    assert_eq!(http_status(port, "/metrics"), Some(200));
    // A standby replica is ready too, so the Lease may come a moment after
    // /readyz does.
    let lease_holder = || {
        let out = run(
            kubectl().args(["get", "lease", LEASE, "-n", &ns, "-o", "json"]),
            None,
        );
        let lease: Value = serde_json::from_str(&out.stdout).ok()?;
        lease["spec"]["holderIdentity"].as_str().map(str::to_string)
    };
    let holder = eventually("the Lease is held", 30, &log, lease_holder);
    assert_eq!(holder, pod_name);

    // A WorkerConfiguration (cluster-scoped, of this test by its name and
    // label), reconciled end to end: finalizer, SQS queue, status, Event.
    let config_name = format!("{watched}-chart-test");
    let config = json!({
        "apiVersion": "tender.dev/v1alpha1",
        "kind": "WorkerConfiguration",
        "metadata": {"name": config_name, "labels": {"tender.dev/test": watched}},
        "spec": {
            "region": aws_region,
            "subnets": [{"subnetId": "subnet-0123456789abcdef0", "availabilityZone": format!("{aws_region}a")}],
            "securityGroupIds": ["sg-0123456789abcdef0"],
            "imageId": "ami-0123456789abcdef0"
        }
    });
    run_ok(
        kubectl().args(["create", "-f", "-"]),
        Some(&config.to_string()),
    );
    let get_config = || -> Option<Value> {
        let out = run(
            kubectl().args(["get", "workerconfiguration", &config_name, "-o", "json"]),
            None,
        );
        out.success()
            .then(|| serde_json::from_str(&out.stdout).unwrap())
    };
    let reconciled = eventually("the WorkerConfiguration is reconciled", 60, &log, || {
        let cfg = get_config()?;
        let status = &cfg["status"];
        (status["observedGeneration"] == cfg["metadata"]["generation"]
            && status["queueUrl"].is_string())
        .then_some(cfg)
    });
    assert!(
        !reconciled["metadata"]["finalizers"]
            .as_array()
            .unwrap()
            .is_empty(),
        "the controller holds a finalizer: {reconciled}"
    );
    // Events on a cluster-scoped object go to namespace default.
    eventually("the QueueReady Event", 30, &log, || {
        let events: Value = serde_json::from_str(&run_ok(
            kubectl().args(["get", "events.events.k8s.io", "-n", "default", "-o", "json"]),
            None,
        ))
        .unwrap();
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "QueueReady" && e["regarding"]["name"] == config_name)
            .then_some(())
    });

    // Deleted: the controller cleans up and removes its finalizer.
    run_ok(
        kubectl().args([
            "delete",
            "workerconfiguration",
            &config_name,
            "--wait=false",
        ]),
        None,
    );
    eventually("the WorkerConfiguration is gone", 60, &log, || {
        get_config().is_none().then_some(())
    });

    // SIGTERM: a clean exit that hands the Lease over.
    let mut child = controller.0.take().unwrap();
    run_ok(
        Command::new("kill").args(["-TERM", &child.id().to_string()]),
        None,
    );
    let status = eventually("the controller exits after SIGTERM", 30, &log, || {
        child.try_wait().unwrap()
    });
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "exit status {status}:\n{log_text}");
    assert_eq!(lease_holder(), None, "the Lease is released");
    for word in ["forbidden", "Forbidden", "could not publish event"] {
        assert!(
            !log_text.contains(word),
            "the controller's log says {word:?}: the chart's RBAC is missing something:\n{log_text}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
    installed.uninstall();
}
