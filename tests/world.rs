//! The test world is as strict as AWS where Tender depends on it: these
//! tests hold the realism layer (`scripts/realism`) to AWS's documented
//! behaviour, so that a test of Tender passing here means what it says.
//! They are skipped (and say so) only when the environment runs plain moto
//! (`TENDER_REALISM=0`).

mod common;

use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{BlockDeviceMapping, EbsBlockDevice, InstanceType};
use common::{REGION, disks, realism, unique};
use tender::aws::ebs::BLOCK_SIZE;

fn strict() -> bool {
    if !realism::enabled() {
        eprintln!("skipped: the environment runs plain moto (TENDER_REALISM=0)");
        return false;
    }
    true
}

fn code<E, R>(e: &aws_sdk_ec2::error::SdkError<E, R>) -> String
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata,
{
    e.as_service_error()
        .and_then(|s| s.code())
        .unwrap_or("no service error")
        .to_string()
}

async fn instance_state(ec2: &aws_sdk_ec2::Client, id: &str) -> Option<String> {
    let out = ec2
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .ok()?;
    Some(common::state(&out.reservations()[0].instances()[0]))
}

/// Polls `check` every 100 ms until it is true, for at most `secs`.
async fn within<F, Fut>(secs: u64, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn instances_are_pending_then_running_and_shutting_down_then_terminated() {
    if !strict() {
        return;
    }
    let ec2 = common::ec2().await;
    let run = ec2
        .run_instances()
        .image_id("ami-0123456789abcdef0")
        .instance_type(InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap();
    let id = run.instances()[0].instance_id().unwrap().to_string();
    assert_eq!(common::state(&run.instances()[0]), "pending");
    // Eventual consistency: the new instance is not described at once.
    let early = ec2.describe_instances().instance_ids(&id).send().await;
    assert_eq!(
        code(&early.unwrap_err()),
        "InvalidInstanceID.NotFound",
        "a Describe right after the create"
    );
    assert!(
        within(10, || async {
            instance_state(&ec2, &id).await.as_deref() == Some("running")
        })
        .await
    );
    let term = ec2
        .terminate_instances()
        .instance_ids(&id)
        .send()
        .await
        .unwrap();
    let now = term.terminating_instances()[0].current_state().unwrap();
    assert_eq!(now.name().unwrap().as_str(), "shutting-down");
    assert!(
        within(10, || async {
            instance_state(&ec2, &id).await.as_deref() == Some("terminated")
        })
        .await
    );
}

#[tokio::test]
async fn snapshots_are_pending_until_completed_and_nothing_uses_them_before() {
    if !strict() {
        return;
    }
    let ec2 = common::ec2().await;
    let aws = tender::aws::AwsClients::from_env().await;
    let id = aws
        .snapshots()
        .start_snapshot(REGION, 1, "world test", &[], &unique("snap"))
        .await
        .unwrap();
    let mut block = vec![7u8; BLOCK_SIZE];
    block[0] = 1;
    aws.snapshots()
        .put_snapshot_block(REGION, &id, 2, block.clone())
        .await
        .unwrap();
    aws.snapshots()
        .complete_snapshot(REGION, &id, 1)
        .await
        .unwrap();
    // Pending after CompleteSnapshot: EC2 refuses a volume from it, and the
    // EBS direct APIs do not read it.
    let volume = ec2
        .create_volume()
        .snapshot_id(&id)
        .availability_zone(format!("{REGION}a"))
        .send()
        .await;
    assert_eq!(code(&volume.unwrap_err()), "IncorrectState");
    assert!(
        aws.snapshots()
            .list_snapshot_blocks(REGION, &id)
            .await
            .is_err(),
        "a pending snapshot's blocks were listed"
    );
    disks::wait_completed(&aws, &id).await;

    // A volume made from it is `creating` first, then `available`; an
    // instance booted from it, snapshotted by EC2, serves the same blocks.
    let volume = ec2
        .create_volume()
        .snapshot_id(&id)
        .availability_zone(format!("{REGION}a"))
        .send()
        .await
        .unwrap();
    assert_eq!(volume.state().unwrap().as_str(), "creating");
    let run = ec2
        .run_instances()
        .image_id("ami-0123456789abcdef0")
        .instance_type(InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name("/dev/xvda")
                .ebs(EbsBlockDevice::builder().snapshot_id(&id).build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    let instance = run.instances()[0].instance_id().unwrap().to_string();
    let made = aws
        .snapshots()
        .snapshot_instance(
            REGION,
            &instance,
            "world test",
            &[("purpose".to_string(), "world test".to_string())],
        )
        .await
        .unwrap();
    assert_eq!(made.len(), 1, "{made:?}");
    let copy = made[0].0.clone();
    let bytes = disks::read_snapshot(&aws, &copy, 3 * BLOCK_SIZE).await;
    assert_eq!(&bytes[2 * BLOCK_SIZE..], &block[..]);
    assert!(realism::counter("refused:read-pending-snapshot").await > 0);
}

#[tokio::test]
async fn register_image_keeps_what_it_is_given_and_defaults_to_i386() {
    if !strict() {
        return;
    }
    let ec2 = common::ec2().await;
    let aws = tender::aws::AwsClients::from_env().await;
    let image = disks::Ext4Image::build(&[("etc/hostname", b"world\n".to_vec())], 8);
    let snap = disks::write_snapshot(&aws, &image.bytes, 1).await;
    let root = |device: &str| {
        BlockDeviceMapping::builder()
            .device_name(device)
            .ebs(EbsBlockDevice::builder().snapshot_id(&snap).build())
            .build()
    };
    let plain = ec2
        .register_image()
        .name(unique("world-plain"))
        .root_device_name("/dev/xvda")
        .block_device_mappings(root("/dev/xvda"))
        .send()
        .await
        .unwrap();
    let graviton = ec2
        .register_image()
        .name(unique("world-arm"))
        .architecture(aws_sdk_ec2::types::ArchitectureValues::Arm64)
        .boot_mode(aws_sdk_ec2::types::BootModeValues::Uefi)
        .ena_support(true)
        .root_device_name("/dev/sda1")
        .block_device_mappings(root("/dev/sda1"))
        .send()
        .await
        .unwrap();
    let ids = [plain.image_id().unwrap(), graviton.image_id().unwrap()];
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let described = ec2
        .describe_images()
        .set_image_ids(Some(ids.iter().map(|s| s.to_string()).collect()))
        .send()
        .await
        .unwrap();
    let by_id = |id: &str| {
        described
            .images()
            .iter()
            .find(|i| i.image_id() == Some(id))
            .unwrap()
            .clone()
    };
    assert_eq!(by_id(ids[0]).architecture().unwrap().as_str(), "i386");
    let arm = by_id(ids[1]);
    assert_eq!(arm.architecture().unwrap().as_str(), "arm64");
    assert_eq!(arm.boot_mode().unwrap().as_str(), "uefi");
    assert_eq!(arm.root_device_name(), Some("/dev/sda1"));
    assert_eq!(arm.ena_support(), Some(true));
    // An x86 instance type cannot boot an arm64 image.
    assert!(
        within(10, || async {
            let img = ec2.describe_images().image_ids(ids[1]).send().await;
            img.is_ok_and(|o| o.images()[0].state().map(|s| s.as_str()) == Some("available"))
        })
        .await
    );
    let wrong = ec2
        .run_instances()
        .image_id(ids[1])
        .instance_type(InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .send()
        .await;
    assert_eq!(code(&wrong.unwrap_err()), "InvalidParameterValue");
}

#[tokio::test]
async fn iam_identities_act_with_their_policies_and_s3_hides_missing_keys_without_list() {
    if !strict() {
        return;
    }
    let s3_admin = disks::s3().await;
    let bucket = disks::create_bucket(&s3_admin).await;
    let role = unique("world-reader");
    let object_only = serde_json::json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": format!("arn:aws:s3:::{bucket}/*")},
    ]});
    realism::ensure_role(&role, &object_only).await;
    let arn = format!("arn:aws:iam::{}:role/{role}", realism::ACCOUNT);
    let s3_as = |conf: aws_config::SdkConfig| {
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&conf)
                .force_path_style(true)
                .build(),
        )
    };
    let reader = s3_as(common::config_as(Some(&arn)).await);
    let missing = reader.get_object().bucket(&bucket).key("nope").send().await;
    let err = missing.unwrap_err();
    assert_eq!(
        err.as_service_error()
            .and_then(|e| aws_sdk_s3::error::ProvideErrorMetadata::code(e)),
        Some("AccessDenied")
    );
    let head = reader
        .head_object()
        .bucket(&bucket)
        .key("nope")
        .send()
        .await;
    assert_eq!(
        head.unwrap_err()
            .raw_response()
            .map(|r| r.status().as_u16()),
        Some(403)
    );
    // An action the policy does not grant is denied.
    let put = reader
        .put_object()
        .bucket(&bucket)
        .key("k")
        .body(b"x".to_vec().into())
        .send()
        .await;
    assert!(put.is_err(), "PutObject without s3:PutObject");
    let ec2 = aws_sdk_ec2::Client::new(&common::config_as(Some(&arn)).await);
    let describe = ec2.describe_instances().send().await;
    assert!(
        describe.is_err(),
        "DescribeInstances without ec2:DescribeInstances"
    );

    // ListBucket narrowed by s3:prefix: S3's implicit check asks with the
    // key as the prefix, so a missing key under it is a 404 and one outside
    // a 403 (scripts/realism/access.py).
    let narrowed = serde_json::json!({"Version": "2012-10-17", "Statement": [
        object_only["Statement"][0].clone(),
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": format!("arn:aws:s3:::{bucket}"),
         "Condition": {"StringLike": {"s3:prefix": "ns/*"}}},
    ]});
    realism::ensure_role(&role, &narrowed).await;
    let head = reader
        .head_object()
        .bucket(&bucket)
        .key("ns/nope")
        .send()
        .await;
    assert_eq!(
        head.unwrap_err()
            .raw_response()
            .map(|r| r.status().as_u16()),
        Some(404)
    );
    let head = reader
        .head_object()
        .bucket(&bucket)
        .key("other/nope")
        .send()
        .await;
    assert_eq!(
        head.unwrap_err()
            .raw_response()
            .map(|r| r.status().as_u16()),
        Some(403)
    );
    let listed = reader
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("ns/x")
        .send()
        .await;
    assert!(
        listed.is_ok(),
        "a listing under the granted prefix: {listed:?}"
    );
    // Unconditional ListBucket: a missing key is a 404.
    let full = serde_json::json!({"Version": "2012-10-17", "Statement": [
        object_only["Statement"][0].clone(),
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": format!("arn:aws:s3:::{bucket}")},
    ]});
    realism::ensure_role(&role, &full).await;
    let head = reader
        .head_object()
        .bucket(&bucket)
        .key("nope")
        .send()
        .await;
    assert_eq!(
        head.unwrap_err()
            .raw_response()
            .map(|r| r.status().as_u16()),
        Some(404)
    );
    assert!(realism::counter("s3:403-for-missing-key").await >= 3);
}

/// RDS as AWS documents it (`scripts/realism/rds.py`): DB and cluster
/// snapshots `creating` / `copying` with a rising `PercentProgress` and the
/// instance `backing-up` meanwhile; InvalidDBSnapshotState,
/// InvalidDBInstanceState and InvalidDBClusterSnapshotStateFault where a
/// state forbids a call (deleting a `copying` copy cancels it); 100 manual
/// snapshots per account and Region, automated ones not counted; a
/// snapshot ARN of another account only when shared with the caller; no
/// encrypted copy across Regions or accounts without a KmsKeyId; no cluster
/// silently replaced; a DbiResourceId per instance; and instances backed by
/// a database the tests started (`POST /realism/rds/backing`: endpoint and
/// managed master secret). `scripts/realism/check_rds.py` asserts each with
/// boto3; it runs here with the test world's own Python (the virtualenv
/// `scripts/testenv` installed moto in) against the same endpoint, and a
/// check that fails fails this test.
#[test]
fn rds_snapshots_states_quotas_accounts_and_backed_instances_are_as_aws_documents() {
    if !strict() {
        return;
    }
    let moto = include_str!("../scripts/versions.env")
        .lines()
        .find_map(|line| line.strip_prefix("MOTO_VERSION="))
        .expect("MOTO_VERSION in scripts/versions.env")
        .trim();
    // Where scripts/testenv keeps the virtualenv: $TENDER_CACHE, else
    // ~/.cache/tender.
    let cache = std::env::var("TENDER_CACHE")
        .ok()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| format!("{}/.cache/tender", std::env::var("HOME").expect("HOME")));
    let python = format!("{cache}/venv-moto-{moto}/bin/python");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/realism/check_rds.py");
    let endpoint =
        std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL from scripts/testenv");
    let out = std::process::Command::new(&python)
        .arg(script)
        .arg(&endpoint)
        .output()
        .unwrap_or_else(|e| panic!("run {python} {script}: {e}"));
    assert!(
        out.status.success(),
        "check_rds.py against {endpoint} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
