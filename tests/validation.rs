//! Every field a user writes is validated by the schema the API server
//! enforces: a table of invalid manifests, each refused by the real
//! kube-apiserver with a message that names what is wrong, and the valid
//! ones next to them accepted (server-side dry run: nothing is stored).
// Its helpers (not only its #[test]s, which clippy.toml covers) unwrap and panic.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
use serde_json::{Value, json};

/// What a case changes in its kind's valid spec: fields set (a JSON merge
/// patch: `null` removes a field).
struct Case {
    kind: &'static str,
    change: Value,
    /// A piece of the API server's answer: the field or the message.
    refused_with: &'static str,
}

fn case(kind: &'static str, change: Value, refused_with: &'static str) -> Case {
    Case {
        kind,
        change,
        refused_with,
    }
}

fn valid_spec(kind: &str) -> Value {
    match kind {
        "WorkerConfiguration" => json!({
            "region": "us-east-1",
            "imageId": "ami-0123456789abcdef0",
            "namespaceSelector": {},
        }),
        "BackupRepository" => json!({
            "bucket": "acme-backups",
            "region": "us-east-1",
            "expectedBucketOwner": "123456789012",
            "integrity": {"macKeyId": "arn:aws:kms:us-east-1:123456789012:key/0987dcba-09fe-87dc-65ba-ab0987654321"},
        }),
        "BackupJob" => json!({
            "resources": [{"instanceId": "i-0123456789abcdef0", "region": "us-east-1"}],
            "repositoryRef": {"name": "acme-backups"},
        }),
        "RestoreJob" => json!({
            "mode": "volume",
            "restorePoint": "nightly/i-0123456789abcdef0",
            "repositoryRef": {"name": "acme-backups"},
            "region": "us-east-1",
        }),
        "BackupPolicy" => json!({
            "schedule": "@daily",
            "region": "us-east-1",
            "resources": [{"instanceId": "i-0123456789abcdef0"}],
            "repositoryRef": {"name": "acme-backups"},
        }),
        "VerificationJob" => json!({
            "restorePoints": ["nightly/i-0123456789abcdef0"],
            "repositoryRef": {"name": "acme-backups"},
            "region": "us-east-1",
        }),
        other => panic!("no valid spec for {other}"),
    }
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn invalid_manifests() -> Vec<Case> {
    let long = "x".repeat(300);
    vec![
        // BackupPolicy: what it protects
        case(
            "BackupPolicy",
            json!({"resources": null}),
            "name what to protect",
        ),
        case(
            "BackupPolicy",
            json!({"resources": [{}]}),
            "set exactly one of instanceId, dbInstanceId, dbClusterId and postgres",
        ),
        case(
            "BackupPolicy",
            json!({"resources": [{"instanceId": "i-0123456789abcdef0", "dbInstanceId": "orders"}]}),
            "set exactly one of instanceId, dbInstanceId, dbClusterId and postgres",
        ),
        case(
            "BackupPolicy",
            json!({"resources": [{"dbInstanceId": "orders--eu"}]}),
            "no two hyphens in a row",
        ),
        case(
            "BackupPolicy",
            json!({"resources": [{"dbClusterId": "ledger", "dbInstanceId": "ledger-1"}]}),
            "set exactly one of instanceId, dbInstanceId, dbClusterId and postgres",
        ),
        case(
            "BackupPolicy",
            json!({"resources": [{"dbClusterId": "ledger--eu"}]}),
            "an RDS DB cluster identifier has no two hyphens in a row",
        ),
        case(
            "BackupJob",
            json!({"resources": [{"dbClusterId": "ledger", "dbInstanceId": "ledger-1", "region": "us-east-1"}]}),
            "set exactly one of instanceId, snapshotId, dbInstanceId, dbClusterId and postgres",
        ),
        case(
            "BackupJob",
            json!({"resources": [{"dbClusterId": "Ledger", "region": "us-east-1"}]}),
            "spec.resources[0].dbClusterId",
        ),
        case(
            "BackupJob",
            json!({"resources": [{"dbClusterId": "ledger", "region": "us-east-1"}, {"dbClusterId": "ledger", "region": "us-east-1"}]}),
            "each resource may be listed once",
        ),
        case(
            "RestoreJob",
            json!({"mode": "database", "restorePoint": "nightly/rds-cluster-ledger",
                   "database": {"dbInstanceId": "ledger-1", "dbClusterId": "ledger-copy", "databases": ["ledger"]}}),
            "databases applies to a PostgreSQL dump's restore point, dbClusterId to a DB cluster snapshot's",
        ),
        case(
            "RestoreJob",
            json!({"mode": "database", "restorePoint": "nightly/rds-cluster-ledger",
                   "database": {"dbInstanceId": "ledger-1", "dbClusterId": "ledger--copy"}}),
            "an RDS DB cluster identifier has no two hyphens in a row",
        ),
        case(
            "BackupPolicy",
            json!({"resources": [{"dbInstanceId": "1orders"}]}),
            "spec.resources[0].dbInstanceId",
        ),
        case(
            "BackupPolicy",
            json!({"databaseSelectors": [{"matchTags": {}}]}),
            "spec.databaseSelectors[0].matchTags",
        ),
        case(
            "BackupPolicy",
            json!({"instanceSelectors": [{"matchTags": {}}]}),
            "spec.instanceSelectors[0].matchTags",
        ),
        case(
            "BackupPolicy",
            json!({"databaseSelectors": [{"matchTags": {"team": "x".repeat(257)}}]}),
            "tag keys must be 1-128 characters and values at most 256",
        ),
        case(
            "BackupPolicy",
            json!({"instanceSelectors": [{"matchTags": {"k".repeat(129): "*"}}]}),
            "tag keys must be 1-128 characters and values at most 256",
        ),
        case(
            "BackupPolicy",
            json!({"databaseSelectors": [{"matchTags": {"team": "shop"}, "method": "copy"}]}),
            "spec.databaseSelectors[0].method",
        ),
        // WorkerConfiguration
        case(
            "WorkerConfiguration",
            json!({"region": "us-east"}),
            "spec.region",
        ),
        case(
            "WorkerConfiguration",
            json!({"region": "US-EAST-1"}),
            "spec.region",
        ),
        case(
            "WorkerConfiguration",
            json!({"imageSsmParameter": "/aws/ami"}),
            "set at most one of imageId and imageSsmParameter",
        ),
        case(
            "WorkerConfiguration",
            json!({"architecture": "aarch64"}),
            "spec.architecture",
        ),
        case(
            "WorkerConfiguration",
            json!({"bootTimeoutSeconds": 5}),
            "spec.bootTimeoutSeconds",
        ),
        case(
            "WorkerConfiguration",
            json!({"imageId": "ami-XYZ"}),
            "spec.imageId",
        ),
        case(
            "WorkerConfiguration",
            json!({"imageId": null, "imageSsmParameter": "no-slash"}),
            "spec.imageSsmParameter",
        ),
        case(
            "WorkerConfiguration",
            json!({"subnets": [{"subnetId": "subnet-xyz"}]}),
            "subnetId",
        ),
        case(
            "WorkerConfiguration",
            json!({"subnets": [{"subnetId": "subnet-0123abcd", "availabilityZone": "us-east-1"}]}),
            "availabilityZone",
        ),
        case(
            "WorkerConfiguration",
            json!({"securityGroupIds": ["sg-123"]}),
            "spec.securityGroupIds",
        ),
        case(
            "WorkerConfiguration",
            json!({"restoreSecurityGroupIds": ["default"]}),
            "spec.restoreSecurityGroupIds",
        ),
        case(
            "WorkerConfiguration",
            json!({"securityGroupIds": ["sg-0123456789abcdef"]}),
            "spec.securityGroupIds",
        ),
        case(
            "WorkerConfiguration",
            json!({"securityGroupIds": ["sg-0123abcd", "sg-1123abcd", "sg-2123abcd", "sg-3123abcd", "sg-4123abcd", "sg-5123abcd"]}),
            "spec.securityGroupIds",
        ),
        case(
            "WorkerConfiguration",
            json!({"fileLevelRecoveryCidrs": ["999.1.1.1/40"]}),
            "must be IPv4 CIDRs",
        ),
        case(
            "WorkerConfiguration",
            json!({"fileLevelRecoveryCidrs": ["10.0.0.0/33"]}),
            "must be IPv4 CIDRs",
        ),
        case(
            "WorkerConfiguration",
            json!({"fileLevelRecoveryCidrs": ["0.0.0.0/0"]}),
            "0.0.0.0/0 is the whole internet",
        ),
        case(
            "WorkerConfiguration",
            json!({"fileLevelRecoveryCidrs": ["10.1.2.3/16"]}),
            "use the network address",
        ),
        case(
            "WorkerConfiguration",
            json!({"fileLevelRecoveryCidrs": ["10.0.0.0"]}),
            "spec.fileLevelRecoveryCidrs",
        ),
        case(
            "WorkerConfiguration",
            json!({"privateNetwork": true, "assignPublicIp": true}),
            "privateNetwork workers get no public IP",
        ),
        case(
            "WorkerConfiguration",
            json!({"account": "everything"}),
            "spec.account",
        ),
        case(
            "WorkerConfiguration",
            json!({"backupAccount": {"roleArn": "arn:aws:iam::123:role/x"}}),
            "roleArn",
        ),
        case(
            "WorkerConfiguration",
            json!({"productionAccount": {"roleArn": "arn:aws:iam::123456789012:role/x", "externalId": "a"}}),
            "externalId",
        ),
        case(
            "WorkerConfiguration",
            json!({"productionAccount": {"roleArn": "arn:aws:iam::123456789012:role/x", "externalId": "a b"}}),
            "externalId",
        ),
        case(
            "WorkerConfiguration",
            json!({"iamInstanceProfile": "bad profile!"}),
            "spec.iamInstanceProfile",
        ),
        case(
            "WorkerConfiguration",
            json!({"instanceProfiles": {"fileLevelRecovery": "bad profile!"}}),
            "spec.instanceProfiles.fileLevelRecovery",
        ),
        case(
            "WorkerConfiguration",
            json!({"instanceProfiles": {"backup": "arn:aws:iam::123:instance-profile/x"}}),
            "spec.instanceProfiles.backup",
        ),
        case(
            "WorkerConfiguration",
            json!({"rootVolume": {"sizeGib": 4}}),
            "sizeGib",
        ),
        case(
            "WorkerConfiguration",
            json!({"rootVolume": {"deviceName": "xvda"}}),
            "deviceName",
        ),
        case(
            "WorkerConfiguration",
            json!({"rootVolume": {"kmsKeyId": "not-a-key"}}),
            "kmsKeyId",
        ),
        case(
            "WorkerConfiguration",
            json!({"maxConcurrentWorkers": 0}),
            "spec.maxConcurrentWorkers",
        ),
        case(
            "WorkerConfiguration",
            json!({"instanceTypes": {"backup": "large"}}),
            "instanceTypes.backup",
        ),
        case(
            "WorkerConfiguration",
            json!({"tags": {"aws:owner": "x"}}),
            "must not start with 'aws:' or 'tender.dev/'",
        ),
        case(
            "WorkerConfiguration",
            json!({"tags": {"tender.dev/cluster-id": "x"}}),
            "must not start with 'aws:' or 'tender.dev/'",
        ),
        case(
            "WorkerConfiguration",
            json!({"tags": {"team": long.clone()}}),
            "tag values must be at most 256 characters",
        ),
        case(
            "WorkerConfiguration",
            json!({"heartbeatTimeoutSeconds": 1}),
            "spec.heartbeatTimeoutSeconds",
        ),
        case(
            "WorkerConfiguration",
            json!({"allowedSources": {"accounts": ["12345"]}}),
            "allowedSources.accounts",
        ),
        case(
            "WorkerConfiguration",
            json!({"allowedSources": {"tags": {"team": long.clone()}}}),
            "values at most 256",
        ),
        // BackupRepository
        case(
            "BackupRepository",
            json!({"bucket": "Acme_Backups"}),
            "spec.bucket",
        ),
        case("BackupRepository", json!({"bucket": "ab"}), "spec.bucket"),
        case(
            "BackupRepository",
            json!({"expectedBucketOwner": "12345"}),
            "spec.expectedBucketOwner",
        ),
        case(
            "BackupRepository",
            json!({"expectedBucketOwner": null}),
            "expectedBucketOwner",
        ),
        case(
            "BackupRepository",
            json!({"prefix": "../other-team"}),
            "prefix may not contain '..'",
        ),
        case(
            "BackupRepository",
            json!({"prefix": "/abs"}),
            "start with '/'",
        ),
        case(
            "BackupRepository",
            json!({"encryption": {"type": "SSE-KMS"}}),
            "SSE-KMS needs kmsKeyId",
        ),
        case(
            "BackupRepository",
            json!({"encryption": {"type": "SSE-S3", "kmsKeyId": "alias/backups"}}),
            "kmsKeyId applies only to type SSE-KMS",
        ),
        case(
            "BackupRepository",
            json!({"encryption": {"type": "AES"}}),
            "spec.encryption.type",
        ),
        case(
            "BackupRepository",
            json!({"encryption": {"type": "SSE-KMS", "kmsKeyId": "my key"}}),
            "kmsKeyId",
        ),
        case(
            "BackupRepository",
            json!({"region": "mars-1"}),
            "spec.region",
        ),
        // Every restore point is authenticated: no repository without a key.
        case(
            "BackupRepository",
            json!({"integrity": null}),
            "integrity.macKeyId is required: a KMS key with KeySpec HMAC_256",
        ),
        case(
            "BackupRepository",
            json!({"integrity": {"macKeyId": null}}),
            "spec.integrity.macKeyId",
        ),
        case(
            "BackupRepository",
            json!({"integrity": {"macKeyId": "my key"}}),
            "spec.integrity.macKeyId",
        ),
        // BackupJob
        case(
            "BackupJob",
            json!({"repositoryRef": null}),
            "spec.repositoryRef is required",
        ),
        case("BackupJob", json!({"resources": []}), "spec.resources"),
        case(
            "BackupJob",
            json!({"resources": [{"instanceId": "i-xyz", "region": "us-east-1"}]}),
            "instanceId",
        ),
        case(
            "BackupJob",
            json!({"resources": [{"instanceId": "i-0123456789abcdef0", "snapshotId": "snap-0123456789abcdef0", "region": "us-east-1"}]}),
            "set exactly one of instanceId, snapshotId, dbInstanceId, dbClusterId and postgres",
        ),
        case(
            "BackupJob",
            json!({"resources": [{"instanceId": "i-0123456789abcdef0", "region": "us-east-1"}],
                   "copyTo": [{"region": "us-west-2"}]}),
            "copyTo applies to RDS DB instances (dbInstanceId) and DB clusters (dbClusterId) only",
        ),
        case(
            "BackupJob",
            json!({"resources": [{"dbInstanceId": "orders", "region": "us-east-1"}],
                   "copyTo": [{"region": "us-east-1"}]}),
            "copyTo names another Region than the database's",
        ),
        case(
            "BackupJob",
            json!({"resources": [{"instanceId": "i-0123456789abcdef0", "region": "us-east-1"}, {"instanceId": "i-0123456789abcdef0", "region": "us-east-1"}]}),
            "each resource may be listed once",
        ),
        case(
            "BackupJob",
            json!({"resources": [{"snapshotId": "snap-1", "region": "us-east-1"}]}),
            "snapshotId",
        ),
        case(
            "BackupJob",
            json!({"backoffLimit": -1}),
            "spec.backoffLimit",
        ),
        case(
            "BackupJob",
            json!({"activeDeadlineSeconds": 0}),
            "spec.activeDeadlineSeconds",
        ),
        // RestoreJob
        case(
            "RestoreJob",
            json!({"availabilityZone": "us-east-1"}),
            "spec.availabilityZone",
        ),
        case("RestoreJob", json!({"device": "xvdf"}), "spec.device"),
        case(
            "RestoreJob",
            json!({"device": "/dev/../sda"}),
            "spec.device",
        ),
        case(
            "RestoreJob",
            json!({"mode": "full"}),
            "mode full needs instanceType",
        ),
        case(
            "RestoreJob",
            json!({"instanceType": "m5.large"}),
            "instanceType and securityGroupIds apply only to mode full",
        ),
        case(
            "RestoreJob",
            json!({"mode": "full", "instanceType": "m5.large", "securityGroupIds": ["sg-1"]}),
            "spec.securityGroupIds",
        ),
        case(
            "RestoreJob",
            json!({"restoreFilesTo": {"repositoryRef": {"name": "acme-backups"}}}),
            "restoreFilesTo applies only to mode fileLevel",
        ),
        case(
            "RestoreJob",
            json!({"mode": "fileLevel", "restoreFilesTo": {"repositoryRef": {"name": "acme-backups"}, "prefix": "../manifests"}}),
            "prefix may not contain '..'",
        ),
        case(
            "RestoreJob",
            json!({"idleTimeoutMinutes": 10}),
            "idleTimeoutMinutes applies only to mode fileLevel",
        ),
        case(
            "RestoreJob",
            json!({"restorePoint": "../../etc"}),
            "spec.restorePoint",
        ),
        case("RestoreJob", json!({"mode": "partial"}), "spec.mode"),
        case(
            "RestoreJob",
            json!({"repositoryRef": null}),
            "spec.repositoryRef is required",
        ),
        // VerificationJob
        case(
            "VerificationJob",
            json!({"restorePoints": []}),
            "spec.restorePoints",
        ),
        case(
            "VerificationJob",
            json!({"restorePoints": ["../../etc"]}),
            "spec.restorePoints",
        ),
        case(
            "VerificationJob",
            json!({"restorePoints": (0..51).map(|i| format!("nightly/i-{i:017x}")).collect::<Vec<_>>()}),
            "spec.restorePoints",
        ),
        case(
            "VerificationJob",
            json!({"restorePoints": ["a/i-1", "a/i-1"]}),
            "spec.restorePoints",
        ),
        case("VerificationJob", json!({"region": "mars"}), "spec.region"),
        case(
            "VerificationJob",
            json!({"repositoryRef": null}),
            "spec.repositoryRef is required",
        ),
    ]
}

/// Valid variants, which the schema must keep accepting.
fn valid_manifests() -> Vec<(&'static str, Value)> {
    vec![
        ("WorkerConfiguration", json!({})),
        (
            "WorkerConfiguration",
            json!({"fileLevelRecoveryCidrs": ["10.0.0.0/8", "192.168.1.7/32"]}),
        ),
        (
            "WorkerConfiguration",
            json!({"iamInstanceProfile": "arn:aws:iam::123456789012:instance-profile/tender/worker"}),
        ),
        (
            "WorkerConfiguration",
            json!({"instanceProfiles": {
                "backup": "tender-worker-backup",
                "restore": "arn:aws:iam::123456789012:instance-profile/tender/restore",
                "fileLevelRecovery": "tender-worker-file-level"
            }}),
        ),
        (
            "WorkerConfiguration",
            json!({"rootVolume": {"deviceName": "/dev/sda1", "kmsKeyId": "alias/ebs"}}),
        ),
        (
            "WorkerConfiguration",
            json!({"securityGroupIds": ["sg-0123abcd", "sg-0123456789abcdef0"]}),
        ),
        (
            "WorkerConfiguration",
            json!({"allowedSources": {"accounts": ["111122223333"], "tags": {"backup": "true"}}}),
        ),
        (
            "BackupRepository",
            json!({"prefix": "prod/", "encryption": {"type": "SSE-KMS", "kmsKeyId": "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"}}),
        ),
        (
            "BackupJob",
            json!({"resources": [{"snapshotId": "snap-0123456789abcdef0", "region": "eu-west-1"}]}),
        ),
        (
            "RestoreJob",
            json!({"device": "/dev/sda1", "availabilityZone": "us-east-1a"}),
        ),
        (
            "RestoreJob",
            json!({"mode": "full", "instanceType": "m5.large", "securityGroupIds": ["sg-0123abcd"]}),
        ),
        (
            "RestoreJob",
            json!({"mode": "fileLevel", "idleTimeoutMinutes": 10, "restoreFilesTo": {"repositoryRef": {"name": "acme-backups"}, "prefix": "incident-42/"}}),
        ),
        (
            "BackupPolicy",
            json!({"resources": [{"dbInstanceId": "orders"}, {"dbClusterId": "orders"}, {"postgres": {"dbInstanceId": "ledger", "databases": ["ledger"]}}]}),
        ),
        (
            "RestoreJob",
            json!({"mode": "database", "restorePoint": "nightly.rds-cluster-ledger",
                   "database": {"dbInstanceId": "ledger-1", "dbClusterId": "ledger-copy", "dbInstanceClass": "db.r6g.large"}}),
        ),
        (
            "BackupJob",
            json!({"resources": [{"dbClusterId": "ledger", "region": "us-east-1"}, {"dbInstanceId": "ledger", "region": "us-east-1"}],
                   "copyTo": [{"region": "us-west-2"}]}),
        ),
        (
            "BackupPolicy",
            json!({"resources": null, "databaseSelectors": [{"matchTags": {"team": "shop-*"}, "method": "dump"}, {"matchTags": {"backup": "*"}}]}),
        ),
        (
            "VerificationJob",
            json!({"restorePoints": ["nightly.i-0123456789abcdef0", "nightly/snap-0123456789abcdef0"], "backoffLimit": 0}),
        ),
    ]
}

fn api(client: &kube::Client, kind: &str, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("tender.dev", "v1alpha1", kind);
    let plural = format!("{}s", kind.to_ascii_lowercase());
    let plural = plural
        .replace("repositorys", "repositories")
        .replace("policys", "policies");
    let resource = ApiResource::from_gvk_with_plural(&gvk, &plural);
    match kind {
        "WorkerConfiguration" | "BackupRepository" => Api::all_with(client.clone(), &resource),
        _ => Api::namespaced_with(client.clone(), namespace, &resource),
    }
}

/// Creates the object in a server-side dry run: `Err` holds the API
/// server's refusal.
async fn dry_run(
    client: &kube::Client,
    namespace: &str,
    kind: &str,
    change: &Value,
) -> Result<(), String> {
    let mut spec = valid_spec(kind);
    merge(&mut spec, change);
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "tender.dev/v1alpha1", "kind": kind,
        "metadata": {"name": common::unique("validation")}, "spec": spec,
    }))
    .expect("a manifest");
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    match api(client, kind, namespace).create(&params, &object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 422 => Err(status.message),
        Err(e) => panic!("{kind} {change}: not a validation answer: {e}"),
    }
}

#[tokio::test]
async fn the_api_server_refuses_every_invalid_manifest_and_says_why() {
    let client = common::kube_client().await;
    common::install_crds(&client).await;
    // Dry runs of namespaced objects still need the namespace.
    let namespace = "default";
    let cases = invalid_manifests();
    assert!(cases.len() >= 40, "{} invalid manifests", cases.len());
    let mut wrong = Vec::new();
    for c in &cases {
        match dry_run(&client, namespace, c.kind, &c.change).await {
            Ok(()) => wrong.push(format!("{} {}: accepted", c.kind, c.change)),
            Err(message) if !message.contains(c.refused_with) => wrong.push(format!(
                "{} {}: refused, but the answer does not say {:?}: {message}",
                c.kind, c.change, c.refused_with
            )),
            Err(_) => {}
        }
    }
    for (kind, change) in valid_manifests() {
        if let Err(message) = dry_run(&client, namespace, kind, &change).await {
            wrong.push(format!(
                "{kind} {change}: a valid manifest was refused: {message}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
