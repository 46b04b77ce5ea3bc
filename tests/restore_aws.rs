//! Restores against what AWS really does after a create, played by a
//! stricter EC2 in front of the emulator (`common::strict`): a restored
//! snapshot is unknown for a moment, then `pending` while EBS seals it, and
//! CreateVolume and RegisterImage refuse it until then; the job waits,
//! shows the progress, and fails plainly when the wait runs out. A Graviton
//! (arm64) UEFI instance, backed up and fully restored in the test world
//! (the realism layer), comes back as an arm64 UEFI image whose root is the
//! recorded root device. And the sweep deletes what
//! failed restores left behind, and nothing else.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::Duration;

use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, BootModeValues, EbsBlockDevice, Filter, InstanceType,
    ResourceType, Tag, TagSpecification,
};
use common::disks::{self, Ext4Image};
use common::strict::{StrictEc2, strict_ec2};
use common::{TestEnv, described};
use kube::ResourceExt;
use serde_json::json;
use tender::api::{BackupRepository, MachineImage, Phase, RestoreJob};
use tender::aws::AwsClients;
use tender::mover;
use tender::mover::manifest::RepositoryLocation;

const TIMEOUT: Duration = Duration::from_secs(90);

/// A test world whose controller talks to EC2 through the stricter proxy
/// (restored snapshots hidden for `hidden`, then pending for `pending`).
async fn strict_world(
    name: &str,
    (hidden, pending): (Duration, Duration),
    args: &[&str],
) -> (TestEnv, StrictEc2) {
    let env = TestEnv::without_controller(name).await;
    let upstream = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let strict = strict_ec2(&upstream, hidden, pending).await;
    env.start_controller_with(args, &[("AWS_ENDPOINT_URL", strict.endpoint.as_str())]);
    (env, strict)
}

/// A backed-up disk: its restore point's ID.
async fn backed_up_disk(env: &TestEnv, strict: &StrictEc2, job: &str) -> String {
    let aws = AwsClients::from_env().await;
    let image = Ext4Image::build(&[("etc/hostname", b"db-1\n".to_vec())], 8);
    let disk = disks::write_snapshot(&aws, &image.bytes, 1).await;
    strict.settled(&disk); // the user's own snapshot, made long ago
    env.back_up(job, &disk, TIMEOUT).await;
    format!("{job}/{disk}")
}

fn progress(job: &RestoreJob) -> Option<String> {
    job.status
        .as_ref()?
        .workers
        .first()?
        .snapshot_progress
        .clone()
}

#[tokio::test]
async fn a_volume_restore_waits_until_ebs_has_sealed_its_snapshot() {
    let timing = (Duration::from_secs(1), Duration::from_secs(6));
    let (env, strict) = strict_world("restore-sealing", timing, &[]).await;
    let net = env.default_configuration().await.net;
    let point = backed_up_disk(&env, &strict, "nightly").await;
    env.create_restore(
        "later",
        "volume",
        &point,
        json!({"availabilityZone": net.zone}),
    )
    .await;

    // While EBS seals the snapshot, the worker is done, the job is not, and
    // its status says what it waits for.
    let sealing = env
        .wait_restore("later", TIMEOUT, |j| progress(j).as_deref() == Some("40%"))
        .await;
    let status = sealing.status.clone().unwrap();
    assert_eq!(status.phase, Phase::Running, "{status:?}");
    let worker = &status.workers[0];
    assert_eq!(worker.phase, Phase::Succeeded, "{worker:?}");
    assert!(worker.restored_volume_id.is_none(), "{worker:?}");
    let snapshot = worker.restored_snapshot_id.clone().unwrap();
    let reconciling = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Reconciling")
        .unwrap();
    assert_eq!(reconciling.status, "True");
    assert!(
        reconciling.message.contains(&snapshot) && reconciling.message.contains("40%"),
        "{reconciling:?}"
    );

    let done = env.wait_restore_finished("later", TIMEOUT).await;
    let status = done.status.clone().unwrap();
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    let worker = &status.workers[0];
    assert_eq!(worker.snapshot_progress, None);
    let volume = worker.restored_volume_id.clone().unwrap();
    // One CreateVolume, once the snapshot was completed: none was refused.
    let creates = strict.requests("CreateVolume");
    assert_eq!(creates.len(), 1, "{creates:?}");
    assert_eq!(creates[0]["SnapshotId"], snapshot);
    // EC2 may not describe a volume made a moment ago: ask until it does.
    let described = described(|| env.ec2.describe_volumes().volume_ids(&volume).send()).await;
    assert_eq!(
        described.volumes()[0].snapshot_id(),
        Some(snapshot.as_str())
    );
}

#[tokio::test]
async fn a_snapshot_still_pending_at_the_timeout_fails_the_restore_saying_so() {
    let timing = (Duration::ZERO, Duration::from_secs(3600));
    let args = ["--restored-snapshot-timeout-seconds", "4"];
    let (env, strict) = strict_world("restore-sealing-timeout", timing, &args).await;
    let net = env.default_configuration().await.net;
    let point = backed_up_disk(&env, &strict, "nightly").await;
    let restore = env
        .create_restore(
            "stuck",
            "volume",
            &point,
            json!({"availabilityZone": net.zone}),
        )
        .await;
    let done = env.wait_restore_finished("stuck", TIMEOUT).await;
    let status = done.status.clone().unwrap();
    assert_eq!(status.phase, Phase::Failed, "{status:?}");
    let worker = &status.workers[0];
    assert_eq!(
        worker.reason.as_deref(),
        Some("RestoredSnapshotTimedOut"),
        "{worker:?}"
    );
    let snapshot = worker.restored_snapshot_id.clone().unwrap();
    let message = worker.message.clone().unwrap();
    assert!(
        message.contains(&snapshot)
            && message.contains("40%")
            && message.contains("--restored-snapshot-timeout-seconds"),
        "{message}"
    );
    assert!(strict.requests("CreateVolume").is_empty());
    let volumes = env
        .ec2
        .describe_volumes()
        .filters(
            Filter::builder()
                .name("tag:tender.dev/job-uid")
                .values(restore.uid().unwrap())
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(volumes.volumes().is_empty());
    let events = env.events().await;
    assert!(
        events
            .iter()
            .any(|(r, n)| r == "RestoredSnapshotTimedOut" && n.contains(&snapshot)),
        "{events:?}"
    );
}

/// This test's repository, as its workers see it.
async fn location(env: &TestEnv) -> RepositoryLocation {
    let repo: BackupRepository = env
        .cluster_api()
        .get(&env.repository().await)
        .await
        .unwrap();
    RepositoryLocation::of(&repo.spec, &env.namespace)
}

#[tokio::test]
async fn a_graviton_uefi_instance_comes_back_as_an_arm64_uefi_image() {
    let env = TestEnv::new("restore-graviton").await;
    let configured = env.default_configuration().await;
    let aws = AwsClients::from_env().await;
    // A Graviton instance booting UEFI from an image whose data volume is
    // listed before its root volume.
    let root = Ext4Image::build(&[("etc/hostname", b"graviton-1\n".to_vec())], 8);
    let data = Ext4Image::build(&[("srv/data.txt", b"payload\n".to_vec())], 8);
    let root_disk = disks::write_snapshot(&aws, &root.bytes, 1).await;
    let data_disk = disks::write_snapshot(&aws, &data.bytes, 1).await;
    let mapping = |device: &str, snapshot: &str| {
        BlockDeviceMapping::builder()
            .device_name(device)
            .ebs(EbsBlockDevice::builder().snapshot_id(snapshot).build())
            .build()
    };
    let source_image = env
        .ec2
        .register_image()
        .name(format!("graviton-{}", env.namespace))
        .architecture(ArchitectureValues::Arm64)
        .boot_mode(BootModeValues::Uefi)
        .ena_support(true)
        .virtualization_type("hvm")
        .root_device_name("/dev/xvda")
        .block_device_mappings(mapping("/dev/sdf", &data_disk))
        .block_device_mappings(mapping("/dev/xvda", &root_disk))
        .send()
        .await
        .unwrap()
        .image_id()
        .unwrap()
        .to_string();
    let available = |state: Option<&str>| state == Some("available");
    wait_image(&env, &source_image, available).await;
    let run = env
        .ec2
        .run_instances()
        .image_id(&source_image)
        .instance_type(InstanceType::T4gSmall)
        .min_count(1)
        .max_count(1)
        .subnet_id(&configured.net.subnet)
        .send()
        .await
        .unwrap();
    let instance = run.instances()[0].instance_id().unwrap().to_string();

    // The backup records the machine from DescribeInstances.
    let backup = env.back_up("graviton-nightly", &instance, TIMEOUT).await;
    let point = backup.status.as_ref().unwrap().workers[0]
        .restore_point
        .clone()
        .unwrap();
    let manifest = mover::load_manifest(&aws, &location(&env).await, &point)
        .await
        .unwrap();
    let machine = manifest.machine.clone().expect("the machine is recorded");
    assert_eq!(
        machine,
        MachineImage {
            architecture: "arm64".into(),
            boot_mode: Some("uefi".into()),
            ena_support: true,
            sriov_net_support: machine.sriov_net_support.clone(),
            virtualization_type: "hvm".into(),
            root_device_name: "/dev/xvda".into(),
        }
    );

    env.create_restore(
        "rebuild",
        "full",
        &point,
        json!({"instanceType": "t4g.small"}),
    )
    .await;
    let done = env.wait_restore_finished("rebuild", TIMEOUT).await;
    let status = done.status.clone().unwrap();
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    let worker = &status.workers[0];
    assert_eq!(
        worker.restored_machine.as_ref(),
        Some(&machine),
        "{worker:?}"
    );
    let image = worker.restored_image_id.clone().unwrap();
    let restored_root = worker
        .restored_snapshots
        .iter()
        .find(|s| s.device == "/dev/xvda")
        .unwrap()
        .snapshot_id
        .clone();
    let bytes = disks::read_snapshot(&aws, &restored_root, root.bytes.len()).await;
    assert!(bytes == root.bytes, "the restored root disk differs");

    // EC2: the image is an arm64 UEFI image with ENA, booting from the
    // restored root volume on the recorded root device.
    let images = env
        .ec2
        .describe_images()
        .image_ids(&image)
        .send()
        .await
        .unwrap();
    let registered = &images.images()[0];
    assert_eq!(registered.architecture(), Some(&ArchitectureValues::Arm64));
    assert_eq!(registered.boot_mode(), Some(&BootModeValues::Uefi));
    assert_eq!(registered.ena_support(), Some(true));
    assert_eq!(registered.root_device_name(), Some("/dev/xvda"));
    let mapped: Vec<(String, String)> = registered
        .block_device_mappings()
        .iter()
        .map(|m| {
            let snapshot = m.ebs().and_then(|e| e.snapshot_id()).unwrap_or_default();
            (
                m.device_name().unwrap_or_default().to_string(),
                snapshot.to_string(),
            )
        })
        .collect();
    assert!(
        mapped.contains(&("/dev/xvda".to_string(), restored_root.clone())),
        "{mapped:?}"
    );
    assert!(mapped.iter().any(|(d, _)| d == "/dev/sdf"), "{mapped:?}");
    let restored = worker.restored_instance_id.clone().unwrap();
    let out = described(|| env.ec2.describe_instances().instance_ids(&restored).send()).await;
    let launched = &out.reservations()[0].instances()[0];
    assert_eq!(launched.image_id(), Some(image.as_str()));
    assert_eq!(launched.instance_type().unwrap().as_str(), "t4g.small");
    assert_eq!(launched.architecture(), Some(&ArchitectureValues::Arm64));
}

/// Waits until DescribeImages says `image`'s state passes `check`.
async fn wait_image(env: &TestEnv, image: &str, check: impl Fn(Option<&str>) -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let out = env.ec2.describe_images().image_ids(image).send().await;
        let state = out.ok().and_then(|o| {
            o.images()
                .first()
                .and_then(|i| i.state().map(|s| s.as_str().to_string()))
        });
        if check(state.as_deref()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "image {image}: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A snapshot in moto's account tagged `tags` (a planted leftover, or not).
async fn planted_snapshot(env: &TestEnv, zone: &str, tags: &[(&str, String)]) -> String {
    let volume = env
        .ec2
        .create_volume()
        .availability_zone(zone)
        .size(1)
        .send()
        .await
        .unwrap();
    let tags: Vec<Tag> = tags
        .iter()
        .map(|(k, v)| Tag::builder().key(*k).value(v).build())
        .collect();
    let mut create = env
        .ec2
        .create_snapshot()
        .volume_id(volume.volume_id().unwrap());
    if !tags.is_empty() {
        create = create.tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Snapshot)
                .set_tags(Some(tags))
                .build(),
        );
    }
    create
        .send()
        .await
        .unwrap()
        .snapshot_id()
        .unwrap()
        .to_string()
}

async fn planted(env: &TestEnv, zone: &str, tags: Vec<(&'static str, String)>) -> String {
    planted_snapshot(env, zone, &tags).await
}

async fn exists(env: &TestEnv, snapshot: &str) -> bool {
    env.ec2
        .describe_snapshots()
        .snapshot_ids(snapshot)
        .send()
        .await
        .is_ok_and(|o| !o.snapshots().is_empty())
}

#[tokio::test]
async fn the_sweep_deletes_what_failed_restores_left_and_nothing_else() {
    let env = TestEnv::without_controller("sweep-intermediates").await;
    env.start_controller_with(&["--intermediate-grace-seconds", "2"], &[]);
    let net = env.default_configuration().await.net;
    let ns = env.namespace.clone();
    let cluster = env.cluster_id.clone();
    // A RestoreJob that failed (its restore point does not exist) and names
    // no snapshot.
    let failed = env
        .create_restore(
            "ghost",
            "volume",
            "never-ran/snap-0123456789abcdef0",
            json!({"backoffLimit": 0}),
        )
        .await;
    let failed_uid = failed.uid().unwrap();
    env.wait_restore_finished("ghost", TIMEOUT).await;

    let intermediate = |name: &'static str, uid: &'static str, cluster: &str| {
        vec![
            ("tender.dev/managed-by", "tender"),
            ("tender.dev/intermediate", "true"),
            ("tender.dev/job-kind", "RestoreJob"),
            ("tender.dev/job-name", name),
            ("tender.dev/job-uid", uid),
            ("tender.dev/namespace", ns.as_str()),
            ("tender.dev/cluster-id", cluster),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect::<Vec<_>>()
    };
    let plant = |tags: Vec<(&'static str, String)>| planted(&env, &net.zone, tags);
    // Left by a restore whose job is gone: deleted.
    let orphan = plant(intermediate(
        "deleted-job",
        "uid-of-a-deleted-job",
        &cluster,
    ))
    .await;
    // Left by an earlier attempt of a job that finished without it: deleted.
    let mut earlier = intermediate("ghost", "placeholder", &cluster);
    for (k, v) in earlier.iter_mut() {
        if *k == "tender.dev/job-uid" {
            *v = failed_uid.clone();
        }
    }
    let earlier = plant(earlier).await;
    // Another cluster's: kept.
    let foreign = plant(intermediate(
        "deleted-job",
        "uid-of-a-deleted-job",
        "another-cluster",
    ))
    .await;
    // What a restore handed to the user (no intermediate tag, no cluster):
    // kept.
    let result = plant(vec![
        ("tender.dev/managed-by", "tender".to_string()),
        ("tender.dev/job-kind", "RestoreJob".to_string()),
        ("tender.dev/job-uid", "uid-of-a-deleted-job".to_string()),
        ("tender.dev/namespace", ns.clone()),
    ])
    .await;
    // A restore point's snapshot (a backup's: no intermediate tag): kept.
    let base = plant(vec![
        ("tender.dev/managed-by", "tender".to_string()),
        ("tender.dev/job-uid", "uid-of-a-backup".to_string()),
        ("tender.dev/cluster-id", cluster.clone()),
    ])
    .await;
    // Someone else's, untagged: kept.
    let untagged = plant(Vec::new()).await;
    // Files staged for restores onto source instances: of a job that is
    // gone, of one that finished (both deleted), of another cluster's job
    // (kept).
    let repo: BackupRepository = env
        .cluster_api()
        .get(&env.repository().await)
        .await
        .unwrap();
    let s3 = disks::s3().await;
    let staged = |cluster: &str, uid: &str| {
        let folder = RepositoryLocation::staging(&repo.spec, cluster, &ns, uid);
        format!("{}0123456789abcdef/files/0", folder.prefix)
    };
    let staged_keys = [
        staged(&cluster, "uid-of-a-deleted-job"),
        staged(&cluster, &failed_uid),
        staged("another-cluster", "uid-of-a-deleted-job"),
    ];
    for key in &staged_keys {
        s3.put_object()
            .bucket(&repo.spec.bucket)
            .key(key)
            .body(b"a production file".to_vec().into())
            .send()
            .await
            .unwrap();
    }
    let staged_exists = |key: String| {
        let (s3, bucket) = (s3.clone(), repo.spec.bucket.clone());
        async move {
            s3.list_objects_v2()
                .bucket(bucket)
                .prefix(&key)
                .send()
                .await
                .unwrap()
                .key_count()
                .unwrap_or(0)
                > 0
        }
    };

    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while exists(&env, &orphan).await
        || exists(&env, &earlier).await
        || staged_exists(staged_keys[0].clone()).await
        || staged_exists(staged_keys[1].clone()).await
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sweep did not delete the leftovers"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A few more sweeps: the others stay.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (what, id) in [
        ("another cluster's", &foreign),
        ("a restore's result", &result),
        ("a restore point's", &base),
        ("an untagged", &untagged),
    ] {
        assert!(exists(&env, id).await, "{what} snapshot {id} was deleted");
    }
    assert!(
        staged_exists(staged_keys[2].clone()).await,
        "another cluster's staged file was deleted"
    );
}
