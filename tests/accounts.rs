//! Account placement through STS AssumeRole, against the real kube-apiserver
//! and the moto AWS emulator (which keeps one state per account and
//! answers AssumeRole with credentials for the role's account), and the AMI
//! from an SSM parameter.

mod common;

use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use common::{REGION, TestEnv, condition};
use kube::{Api, ResourceExt};
use tender::api::{Phase, WorkerConfiguration};

const TIMEOUT: Duration = Duration::from_secs(90);

async fn wait_ready(env: &TestEnv, name: &str) -> WorkerConfiguration {
    let api: Api<WorkerConfiguration> = env.cluster_api();
    let name = env.cluster_name(name);
    common::eventually(TIMEOUT, || {
        let api = api.clone();
        let name = name.clone();
        async move {
            let cfg = api.get(&name).await.ok()?;
            (cfg.status.as_ref()?.phase.as_deref() == Some("Ready")).then_some(cfg)
        }
    })
    .await
}

fn credentials_condition(cfg: &WorkerConfiguration) -> (String, String) {
    let c = cfg
        .status
        .as_ref()
        .expect("the configuration has a status")
        .conditions
        .iter()
        .find(|c| c.type_ == "CredentialsReady")
        .expect("a CredentialsReady condition");
    (c.status.clone(), c.message.clone())
}

async fn workers_in(ec2: &aws_sdk_ec2::Client, job_uid: &str) -> Vec<aws_sdk_ec2::types::Instance> {
    let out = ec2
        .describe_instances()
        .filters(
            Filter::builder()
                .name("tag:tender.dev/job-uid")
                .values(job_uid)
                .build(),
        )
        .send()
        .await
        .expect("describe instances");
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .cloned()
        .collect()
}

#[tokio::test]
async fn workers_run_in_the_production_account_through_its_role() {
    let env = TestEnv::new("prodacct").await;
    let account = format!("2{:011}", std::process::id());
    let role = format!("arn:aws:iam::{account}:role/tender-production");
    let (prod_ec2, _) = env.assume(&role).await;
    // A disk and a repository bucket in production, where the workers run.
    let protected = env.protected_disk_in(&env.aws_as(Some(&role)).await).await;
    let bucket = env.bucket_in(&role).await;
    env.create_repository(
        "prod",
        &bucket,
        serde_json::json!({"expectedBucketOwner": account, "access": {"roleArn": role}}),
    )
    .await;

    env.create_configuration_spec(
        "prod",
        serde_json::json!({
            "region": REGION, "account": "production",
            "productionAccount": {"roleArn": role, "externalId": "tender-test-external-id"},
            "imageId": "ami-0fedcba9876543210"
        }),
    )
    .await;
    let cfg = wait_ready(&env, "prod").await;
    let status = cfg.status.clone().unwrap();
    assert_eq!(status.account_id.as_deref(), Some(account.as_str()));
    let (ok, message) = credentials_condition(&cfg);
    assert_eq!(ok, "True");
    assert!(
        message.contains(&account) && message.contains("tender-production"),
        "{message}"
    );
    // The queue and the managed security group live in that account too.
    assert!(
        status.queue_url.as_deref().unwrap().contains(&account),
        "{status:?}"
    );
    let group = status.managed_security_group_id.clone().unwrap();
    assert!(
        prod_ec2
            .describe_security_groups()
            .group_ids(&group)
            .send()
            .await
            .is_ok()
    );
    assert!(
        env.ec2
            .describe_security_groups()
            .group_ids(&group)
            .send()
            .await
            .is_err()
    );

    let job = env
        .create_job(
            "nightly",
            &protected,
            serde_json::json!({"repositoryRef": {"name": "prod"}}),
        )
        .await;
    let uid = job.uid().unwrap();
    let job = env
        .wait_job_phase("nightly", TIMEOUT, Phase::Succeeded)
        .await;
    let worker = &job.status.as_ref().unwrap().workers[0];
    assert_eq!(
        worker.access.as_ref().unwrap().role_arn,
        role,
        "the worker records its role"
    );

    let there = workers_in(&prod_ec2, &uid).await;
    assert_eq!(there.len(), 1, "the worker ran in the production account");
    common::assert_terminating(&there[0]);
    assert!(
        workers_in(&env.ec2, &uid).await.is_empty(),
        "and not in the controller's own"
    );
}

#[tokio::test]
async fn backup_account_workers_read_production_through_its_role() {
    let env = TestEnv::new("backupacct").await;
    let pid = std::process::id();
    let backup_account = format!("3{pid:011}");
    let production_account = format!("4{pid:011}");
    let backup_role = format!("arn:aws:iam::{backup_account}:role/tender-workers");
    let production_role = format!("arn:aws:iam::{production_account}:role/tender-reader");
    let (backup_ec2, _) = env.assume(&backup_role).await;
    let (prod_ec2, _) = env.assume(&production_role).await;
    // The disk is in production; the repository in the backup account,
    // where the workers run.
    let protected = env
        .protected_disk_in(&env.aws_as(Some(&production_role)).await)
        .await;
    let bucket = env.bucket_in(&backup_role).await;
    let repository = env
        .create_repository(
            "backup",
            &bucket,
            serde_json::json!({
                "expectedBucketOwner": backup_account,
                "access": {"roleArn": backup_role},
            }),
        )
        .await;

    env.create_configuration_spec(
        "backup",
        serde_json::json!({
            "region": REGION,
            "backupAccount": {"roleArn": backup_role},
            "productionAccount": {"roleArn": production_role},
            "imageSsmParameter": "/aws/service/ami-amazon-linux-latest/amzn2-ami-hvm-x86_64-gp2"
        }),
    )
    .await;
    let cfg = wait_ready(&env, "backup").await;
    let status = cfg.status.clone().unwrap();
    assert_eq!(status.account_id.as_deref(), Some(backup_account.as_str()));
    let (_, message) = credentials_condition(&cfg);
    assert!(
        message.contains(&production_account),
        "the production role is checked too: {message}"
    );
    // The AMI came from the SSM parameter.
    let ssm_ami = {
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .load()
            .await;
        aws_sdk_ssm::Client::new(&conf)
            .get_parameter()
            .name("/aws/service/ami-amazon-linux-latest/amzn2-ami-hvm-x86_64-gp2")
            .send()
            .await
            .unwrap()
            .parameter()
            .unwrap()
            .value()
            .unwrap()
            .to_string()
    };
    assert_eq!(status.image_id.as_deref(), Some(ssm_ami.as_str()));

    let job = env
        .create_job(
            "cross",
            &protected,
            serde_json::json!({"repositoryRef": {"name": "backup"}}),
        )
        .await;
    let uid = job.uid().unwrap();
    let job = env.wait_job_phase("cross", TIMEOUT, Phase::Succeeded).await;
    assert!(condition(&job, "Complete").is_some());
    // The worker read the production snapshot from the backup account and
    // wrote its restore point there.
    let worker = &job.status.as_ref().unwrap().workers[0];
    let point = format!("cross/{protected}");
    assert_eq!(
        worker.restore_point.as_deref(),
        Some(point.as_str()),
        "{worker:?}"
    );
    // Under the namespace's own prefix of the repository, authenticated by
    // the repository's key in the backup account.
    let location =
        tender::mover::manifest::RepositoryLocation::of(&repository.spec, &env.namespace);
    assert_eq!(location.prefix, format!("{}/", env.namespace));
    let manifest =
        tender::mover::load_manifest(&env.aws_as(Some(&backup_role)).await, &location, &point)
            .await
            .unwrap();
    assert!(manifest.stats.blocks_read > 0, "{manifest:?}");
    let there = workers_in(&backup_ec2, &uid).await;
    assert_eq!(there.len(), 1, "the worker ran in the backup account");
    assert_eq!(there[0].image_id(), Some(ssm_ami.as_str()));
    assert!(workers_in(&prod_ec2, &uid).await.is_empty());
    assert!(workers_in(&env.ec2, &uid).await.is_empty());
}
