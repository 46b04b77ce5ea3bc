//! `tender doctor` against the local test world: a good setup passes every
//! check it can make (and says IAM's simulator is not checkable here), a
//! broken one (a missing bucket, a missing subnet) fails by name and exits
//! non-zero.

mod common;

use common::TestEnv;

/// Runs `tender doctor` for one configuration and one repository.
fn doctor(configuration: &str, repository: &str) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tender"))
        .args([
            "doctor",
            "--configuration",
            configuration,
            "--repository",
            repository,
        ])
        .output()
        .expect("run tender doctor");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// The report's line about `subject` (empty when there is none, which
/// every assertion on it then fails, showing the report).
fn line<'a>(report: &'a str, subject: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.contains(subject))
        .unwrap_or_default()
}

#[tokio::test]
async fn doctor_passes_a_good_setup_and_names_what_is_broken() {
    let env = TestEnv::new("doctor").await;
    let net = env.network().await;
    // A good setup: an AMI that exists (one of the emulator's own x86_64
    // images), a versioned bucket with default encryption.
    let images = env
        .ec2
        .describe_images()
        .owners("amazon")
        .send()
        .await
        .unwrap();
    let image = images
        .images()
        .iter()
        .find(|i| i.architecture() == Some(&aws_sdk_ec2::types::ArchitectureValues::X8664))
        .and_then(|i| i.image_id())
        .expect("an x86_64 image")
        .to_string();
    env.create_configuration("good", &net, serde_json::json!({"imageId": image}))
        .await;
    let bucket = env.bucket().await;
    let s3 = common::disks::s3().await;
    s3.put_bucket_versioning()
        .bucket(&bucket)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let by_default = aws_sdk_s3::types::ServerSideEncryptionByDefault::builder()
        .sse_algorithm(aws_sdk_s3::types::ServerSideEncryption::Aes256)
        .build()
        .unwrap();
    s3.put_bucket_encryption()
        .bucket(&bucket)
        .server_side_encryption_configuration(
            aws_sdk_s3::types::ServerSideEncryptionConfiguration::builder()
                .rules(
                    aws_sdk_s3::types::ServerSideEncryptionRule::builder()
                        .apply_server_side_encryption_by_default(by_default)
                        .build(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let repository = env.repository().await;
    let good = env.cluster_name("good");

    let (ok, report) = doctor(&good, &repository);
    assert!(ok, "{report}");
    assert!(line(&report, "credentials").starts_with("ok"), "{report}");
    assert!(line(&report, "region").starts_with("ok"), "{report}");
    assert!(line(&report, "network").starts_with("ok"), "{report}");
    assert!(
        line(&report, "instance types").starts_with("ok"),
        "{report}"
    );
    assert!(line(&report, " bucket:").starts_with("ok"), "{report}");
    assert!(line(&report, "image").starts_with("ok"), "{report}");
    // The emulator answers GetBucketVersioning with a document AWS never
    // sends (root `GetBucketVersioningResponse`), which the SDK cannot read.
    let versioning = line(&report, "versioning");
    assert!(
        versioning.starts_with("ok") || versioning.contains("not checkable here"),
        "{report}"
    );
    assert!(line(&report, "encryption").starts_with("ok"), "{report}");
    let policies = line(&report, "policies");
    assert!(
        policies.starts_with("warn") && policies.contains("not checkable here"),
        "{report}"
    );

    // Broken: a subnet that does not exist, and a repository whose bucket
    // is gone.
    env.create_configuration_spec(
        "broken",
        serde_json::json!({"region": common::REGION, "imageId": "ami-0fedcba9876543210",
            "subnets": [{"subnetId": "subnet-0123456789abcdef0"}]}),
    )
    .await;
    let gone = env
        .create_repository(
            "gone",
            "tender-doctor-no-such-bucket",
            serde_json::json!({}),
        )
        .await
        .metadata
        .name
        .unwrap();
    let (ok, report) = doctor(&env.cluster_name("broken"), &gone);
    assert!(!ok, "a failed check exits non-zero:\n{report}");
    let subnet = line(&report, "SubnetNotFound");
    assert!(
        subnet.starts_with("fail") && subnet.contains("subnet-0123456789abcdef0"),
        "{report}"
    );
    let bucket = line(&report, " bucket:");
    assert!(
        bucket.starts_with("fail") && bucket.contains("tender-doctor-no-such-bucket"),
        "{report}"
    );
}
