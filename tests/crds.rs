//! The CRDs in `crds/` are exactly what `tender crd` generates, and the API
//! server enforces their validation.

mod common;

use kube::api::PostParams;
use tender::api::{BackupJob, BackupRepository};

#[test]
fn checked_in_crds_match_the_rust_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let docs = tender::api::crd_documents().unwrap();
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut generated: Vec<String> = docs.iter().map(|(f, _)| f.clone()).collect();
    generated.sort();
    assert_eq!(on_disk, generated, "crds/ holds one file per CRD");
    for (file, yaml) in docs {
        let current = std::fs::read_to_string(dir.join(&file)).unwrap();
        assert!(
            current == yaml,
            "crds/{file} is stale: run `cargo run -- crd --out-dir crds` and commit the result"
        );
    }
}

#[test]
fn every_schema_field_has_a_description() {
    fn walk(path: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
            for (name, sub) in props {
                let here = format!("{path}.{name}");
                let top_level = matches!(here.as_str(), ".apiVersion" | ".kind" | ".metadata");
                if sub.get("description").is_none() && !top_level {
                    missing.push(here.clone());
                }
                walk(&here, sub, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    for (file, yaml) in tender::api::crd_documents().unwrap() {
        let crd: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut missing = Vec::new();
        walk("", schema, &mut missing);
        // Fields of Kubernetes' own Condition type are described upstream.
        missing.retain(|p| !p.contains(".conditions[]."));
        assert!(
            missing.is_empty(),
            "{file}: fields without a description: {missing:?}"
        );
    }
}

#[tokio::test]
async fn a_backup_job_spec_is_immutable() {
    let client = common::kube_client().await;
    common::install_crds(&client).await;
    let api: kube::Api<BackupJob> = kube::Api::namespaced(client.clone(), "default");
    let name = format!("immutable-{}", std::process::id());
    let job: BackupJob = serde_json::from_value(serde_json::json!({
        "apiVersion": "tender.dev/v1alpha1", "kind": "BackupJob", "metadata": {"name": name},
        "spec": {"resources": [{"instanceId": "i-0123abcd", "region": "us-east-1"}],
                 "repositoryRef": {"name": "acme-backups"}}
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &job).await.unwrap();
    let mut other_resource = created.clone();
    other_resource.spec.resources[0].instance_id = Some("i-0123abce".into());
    let mut other_repository = created.clone();
    other_repository.spec.repository_ref = Some(tender::api::LocalObjectReference {
        name: "elsewhere".into(),
    });
    for changed in [other_resource, other_repository] {
        let err = api
            .replace(&name, &PostParams::default(), &changed)
            .await
            .unwrap_err();
        match err {
            kube::Error::Api(s) => assert!(s.message.contains("immutable"), "{}", s.message),
            other => panic!("unexpected {other:?}"),
        }
    }
    // No controller runs for "default" in this test; remove the object
    // directly (it carries no finalizer).
    api.delete(&name, &Default::default()).await.unwrap();

    // Nor do a database's copies change once asked for.
    let name = format!("immutable-copies-{}", std::process::id());
    let job: BackupJob = serde_json::from_value(serde_json::json!({
        "apiVersion": "tender.dev/v1alpha1", "kind": "BackupJob", "metadata": {"name": name},
        "spec": {"resources": [{"dbInstanceId": "orders", "region": "us-east-1"}],
                 "copyTo": [{"region": "us-west-2"}],
                 "repositoryRef": {"name": "acme-backups"}}
    }))
    .unwrap();
    let mut changed = api.create(&PostParams::default(), &job).await.unwrap();
    changed.spec.copy_to = None;
    match api.replace(&name, &PostParams::default(), &changed).await {
        Err(kube::Error::Api(s)) => assert!(s.message.contains("copyTo"), "{}", s.message),
        other => panic!("unexpected {other:?}"),
    }
    api.delete(&name, &Default::default()).await.unwrap();
}

#[tokio::test]
async fn where_a_backup_repository_keeps_restore_points_is_immutable() {
    let client = common::kube_client().await;
    common::install_crds(&client).await;
    // Cluster-scoped, and labelled for no test's controller: nothing
    // reconciles it.
    let api: kube::Api<BackupRepository> = kube::Api::all(client.clone());
    let name = common::unique("immutable-repo");
    let repo: BackupRepository = serde_json::from_value(serde_json::json!({
        "apiVersion": "tender.dev/v1alpha1", "kind": "BackupRepository", "metadata": {"name": name},
        "spec": {"bucket": "acme-backups", "prefix": "prod/", "region": "us-east-1",
                 "expectedBucketOwner": "123456789012",
                 "integrity": {"macKeyId": "alias/tender-integrity"}}
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &repo).await.unwrap();
    let changes: [fn(&mut BackupRepository); 3] = [
        |r| r.spec.bucket = "other-backups".into(),
        |r| r.spec.prefix = "staging/".into(),
        |r| r.spec.region = "eu-west-1".into(),
    ];
    for change in changes {
        let mut changed = created.clone();
        change(&mut changed);
        match api.replace(&name, &PostParams::default(), &changed).await {
            Err(kube::Error::Api(s)) => {
                assert!(s.message.contains("immutable"), "{}", s.message)
            }
            other => panic!("{:?} was accepted: {other:?}", changed.spec),
        }
    }
    // Who may use it, and how it is checked, may change.
    let mut admitted = created.clone();
    admitted.spec.namespace_selector = Some(Default::default());
    admitted.spec.expected_bucket_owner = "210987654321".into();
    api.replace(&name, &PostParams::default(), &admitted)
        .await
        .unwrap();
    api.delete(&name, &Default::default()).await.unwrap();
}

fn kubectl(args: &[&str]) -> String {
    let out = std::process::Command::new("kubectl")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("kubectl runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn kubectl_applies_crds_and_examples_and_shows_the_printer_columns() {
    let client = common::kube_client().await;
    let ns = format!("kubectl-{}", std::process::id());
    kubectl(&["apply", "-f", "crds/"]);
    kubectl(&[
        "wait",
        "--for",
        "condition=Established",
        "crd",
        "--all",
        "--timeout=60s",
    ]);
    kubectl(&["create", "namespace", &ns]);
    kubectl(&["apply", "-n", &ns, "-f", "examples/"]);
    // Applying the same manifests again changes nothing.
    let again = kubectl(&["apply", "-n", &ns, "-f", "examples/"]);
    assert!(again.lines().all(|l| l.ends_with("unchanged")), "{again}");

    let jobs = kubectl(&["get", "backupjobs", "-n", &ns]);
    let header: Vec<&str> = jobs.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "PHASE", "WORKERS", "AGE"], "{jobs}");
    assert!(jobs.contains("web-server-nightly"));
    let configs = kubectl(&["get", "wc", "-n", &ns]);
    let header: Vec<&str> = configs.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "REGION", "PHASE", "WORKERS", "AGE"],
        "{configs}"
    );
    let explain = kubectl(&["explain", "backupjob.spec.resources.instanceId"]);
    assert!(
        explain.contains("ID of the EC2 instance to back up"),
        "{explain}"
    );

    // No controller watches this namespace: the objects carry no finalizer.
    kubectl(&["delete", "-n", &ns, "-f", "examples/"]);
    let api: kube::Api<BackupJob> = kube::Api::namespaced(client, &ns);
    assert!(
        api.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}
