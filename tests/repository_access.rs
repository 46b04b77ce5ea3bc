//! A worker whose role cannot `s3:ListBucket` the repository meets S3's
//! answer for a key that does not exist yet: 403, not 404 (the test world
//! plays that rule). The job must fail at once, by name, saying what to
//! grant, not retry nor take the 403 for "absent".

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::TestEnv;
use common::disks::{self, Ext4Image};
use tender::api::Phase;
use tender::aws::AwsClients;

/// An IAM user of the emulator allowed everything but `s3:ListBucket`;
/// returns its access key and secret.
async fn user_without_list_bucket(name: &str) -> (String, String) {
    let conf = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let iam = aws_sdk_iam::Client::new(&conf);
    iam.create_user().user_name(name).send().await.unwrap();
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "NotAction": "s3:ListBucket", "Resource": "*"}]
    });
    iam.put_user_policy()
        .user_name(name)
        .policy_name("everything-but-list-bucket")
        .policy_document(policy.to_string())
        .send()
        .await
        .unwrap();
    let key = iam
        .create_access_key()
        .user_name(name)
        .send()
        .await
        .unwrap();
    let key = key.access_key().unwrap();
    (
        key.access_key_id().to_string(),
        key.secret_access_key().to_string(),
    )
}

#[tokio::test]
async fn a_worker_without_list_bucket_fails_by_name_with_what_to_grant() {
    let env = TestEnv::new("no-list-bucket").await;
    env.default_configuration().await;
    let aws = AwsClients::from_env().await;
    let image = Ext4Image::build(&[("a.txt", b"protected\n".to_vec())], 8);
    let disk = disks::write_snapshot(&aws, &image.bytes, 1).await;
    let (key, secret) = user_without_list_bucket(&common::unique("worker")).await;
    env.set_worker_credentials((key, secret, String::new()));

    env.create_job("first", &disk, serde_json::json!({})).await;
    let job = env
        .wait_job_finished("first", Duration::from_secs(120))
        .await;
    let status = job.status.unwrap();
    assert_eq!(status.phase, Phase::Failed);
    let worker = &status.workers[0];
    assert_eq!(worker.reason.as_deref(), Some("RepositoryAccessDenied"));
    assert_eq!(
        worker.attempt, 1,
        "a permission a retry cannot fix is not retried"
    );
    let message = worker.message.clone().unwrap();
    for needed in [
        "s3:GetObject",
        "s3:ListBucket",
        "s3:prefix",
        "/restore-points/first/",
    ] {
        assert!(message.contains(needed), "{needed} not in {message}");
    }
    let failed = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Failed")
        .expect("a Failed condition");
    assert!(
        failed.message.contains("RepositoryAccessDenied"),
        "{}",
        failed.message
    );
    let events = env.events().await;
    assert!(
        events
            .iter()
            .any(|(reason, note)| reason == "RepositoryAccessDenied"
                || note.contains("RepositoryAccessDenied")),
        "{events:?}"
    );
}
