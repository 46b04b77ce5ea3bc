//! RestoreJobs on the BackupJob lifecycle: a restore point written by a
//! BackupJob comes back as a new EBS volume, byte for byte, with its worker
//! terminated; a restore point that does not exist fails the job plainly;
//! forged worker reports make nothing from a snapshot the job did not
//! write, and show no browser session but the worker's own.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use common::disks::{self, Ext4Image};
use common::{TestEnv, launched, reports};
use kube::ResourceExt;
use serde_json::json;
use tender::api::{Phase, RestoreJob, RestoredSnapshot};
use tender::messages::{SessionInfo, WorkerEvent};

const TIMEOUT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn a_volume_restore_brings_the_backed_up_disk_back_as_a_new_volume() {
    let env = TestEnv::new("restore").await;
    let net = env.default_configuration().await.net;
    let aws = tender::aws::AwsClients::from_env().await;
    let image = Ext4Image::build(
        &[
            ("home/alice/notes.txt", b"remember the milk\n".to_vec()),
            (
                "var/lib/data.bin",
                (0..700_000u32).map(|i| (i * 7) as u8).collect(),
            ),
        ],
        16,
    );
    let disk = disks::write_snapshot(&aws, &image.bytes, 1).await;

    env.create_job("nightly", &disk, serde_json::json!({}))
        .await;
    let backup = env.wait_job_finished("nightly", TIMEOUT).await;
    let point = backup.status.as_ref().unwrap().workers[0]
        .restore_point
        .clone()
        .expect("the backup recorded its restore point");
    assert_eq!(point, format!("nightly/{disk}"));

    let restore = env
        .create_restore(
            "bring-back",
            "volume",
            &point,
            serde_json::json!({"availabilityZone": net.zone}),
        )
        .await;
    let done = env.wait_restore_finished("bring-back", TIMEOUT).await;
    let status = done.status.clone().unwrap();
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    assert_eq!(status.active_workers, 0);
    let worker = &status.workers[0];
    assert_eq!(worker.resource, point);
    assert!(worker.terminated_time.is_some(), "{worker:?}");
    let snapshot = worker.restored_snapshot_id.clone().unwrap();
    let volume = worker.restored_volume_id.clone().unwrap();
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Complete" && c.status == "True"),
        "{status:?}"
    );

    // EC2: the worker is terminated, the volume exists where asked, made
    // from the restored snapshot, which holds the disk's bytes.
    let workers = env.workers_of(&restore.uid().unwrap()).await;
    assert_eq!(workers.len(), 1);
    common::assert_terminating(&workers[0]);
    // EC2 may not describe a volume made a moment ago: ask until it does.
    let described =
        common::described(|| env.ec2.describe_volumes().volume_ids(&volume).send()).await;
    let v = &described.volumes()[0];
    assert_eq!(v.snapshot_id(), Some(snapshot.as_str()));
    assert_eq!(v.availability_zone(), Some(net.zone.as_str()));
    let bytes = disks::read_snapshot(&aws, &snapshot, image.bytes.len()).await;
    assert!(bytes == image.bytes, "the restored disk differs");
    let events = env.events().await;
    assert!(
        events
            .iter()
            .any(|(r, n)| r == "VolumeRestored" && n.contains(&volume)),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_restore_point_that_does_not_exist_fails_the_restore_and_creates_nothing() {
    let env = TestEnv::new("restore-missing").await;
    env.default_configuration().await;
    let restore = env
        .create_restore(
            "ghost",
            "volume",
            "never-ran/snap-0123456789abcdef0",
            serde_json::json!({"backoffLimit": 0}),
        )
        .await;
    let done = env.wait_restore_finished("ghost", TIMEOUT).await;
    let status = done.status.clone().unwrap();
    assert_eq!(status.phase, Phase::Failed);
    let worker = &status.workers[0];
    assert_eq!(
        worker.reason.as_deref(),
        Some("RestorePointNotFound"),
        "{worker:?}"
    );
    assert!(
        worker
            .message
            .as_deref()
            .unwrap()
            .contains("never-ran/snap-0123456789abcdef0"),
        "{worker:?}"
    );
    assert!(worker.restored_volume_id.is_none());
    // Checked before the launch: no worker was paid for.
    let workers = env.workers_of(&restore.uid().unwrap()).await;
    assert!(workers.is_empty(), "no worker launched: {workers:?}");
    let volumes = env
        .ec2
        .describe_volumes()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:tender.dev/job-uid")
                .values(restore.uid().unwrap())
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(volumes.volumes().is_empty());
}

#[tokio::test]
async fn a_full_restore_launches_an_instance_from_the_restored_disk() {
    let env = TestEnv::new("restore-full").await;
    env.default_configuration().await;
    let aws = tender::aws::AwsClients::from_env().await;
    let image = Ext4Image::build(&[("etc/hostname", b"web-1\n".to_vec())], 8);
    let disk = disks::write_snapshot(&aws, &image.bytes, 1).await;
    env.back_up("boot-disk", &disk, TIMEOUT).await;

    let restore = env
        .create_restore(
            "rebuild",
            "full",
            &format!("boot-disk/{disk}"),
            serde_json::json!({"instanceType": "t3.small"}),
        )
        .await;
    let done = env.wait_restore_finished("rebuild", TIMEOUT).await;
    let status = done.status.clone().unwrap();
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    let worker = &status.workers[0];
    let restored = worker.restored_instance_id.clone().unwrap();
    let ami = worker.restored_image_id.clone().unwrap();
    assert_eq!(worker.restored_snapshots.len(), 1, "{worker:?}");
    assert_eq!(worker.restored_snapshots[0].device, "/dev/xvda");
    let snapshot = worker.restored_snapshots[0].snapshot_id.clone();
    let bytes = disks::read_snapshot(&aws, &snapshot, image.bytes.len()).await;
    assert!(bytes == image.bytes, "the restored disk differs");

    // EC2: the restored instance runs from the registered image, with the
    // asked type, in the worker's subnet; the worker is terminated; and
    // the sweep (every second here) leaves the restored instance alone.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let out = env
        .ec2
        .describe_instances()
        .instance_ids(&restored)
        .send()
        .await
        .unwrap();
    let instance = &out.reservations()[0].instances()[0];
    assert_eq!(instance.image_id(), Some(ami.as_str()));
    assert_eq!(instance.instance_type().unwrap().as_str(), "t3.small");
    assert_eq!(instance.subnet_id(), worker.subnet_id.as_deref());
    assert_eq!(common::state(instance), "running");
    let tags = TestEnv::tags(instance);
    assert_eq!(tags["tender.dev/job-name"], "rebuild");
    assert!(!tags.contains_key("tender.dev/cluster-id"), "{tags:?}");
    let workers = env.workers_of(&restore.uid().unwrap()).await;
    let worker_instance = workers
        .iter()
        .find(|i| i.instance_id() != Some(restored.as_str()))
        .unwrap();
    common::assert_terminating(worker_instance);
}

#[tokio::test]
async fn backup_jobs_full_then_incremental_and_restore_jobs_bring_each_back() {
    let env = TestEnv::new("restore-incr").await;
    env.default_configuration().await;
    let aws = tender::aws::AwsClients::from_env().await;
    let s3 = disks::s3().await;
    let bucket = env.bucket().await;
    // The namespace's own chunks, under its prefix of the repository.
    let chunks = format!("{}/chunks/", env.namespace);
    let mut image = Ext4Image::build(&[("data/big.bin", disks::random_bytes(2 << 20, 5))], 16);
    let first = image.bytes.clone();
    let first_disk = disks::write_snapshot(&aws, &first, 1).await;
    env.create_job("monday", &first_disk, serde_json::json!({}))
        .await;
    let monday = env.wait_job_finished("monday", TIMEOUT).await;
    assert_eq!(monday.status.as_ref().unwrap().phase, Phase::Succeeded);
    let chunks_monday = disks::keys(&s3, &bucket, &chunks).await.len();
    let blocks = disks::data_blocks(&first);
    let unique: std::collections::HashSet<&[u8]> = blocks.values().copied().collect();
    assert_eq!(chunks_monday, unique.len());

    // Tuesday: one file changed in place; the disk is snapshotted again.
    let offsets = image.file_offsets("/data/big.bin");
    image.overwrite(offsets[10], &disks::random_bytes(50_000, 77));
    let second = image.bytes.clone();
    let second_disk = disks::write_snapshot(&aws, &second, 1).await;
    let changed = disks::data_blocks(&second)
        .into_iter()
        .filter(|(i, b)| blocks.get(i) != Some(b))
        .count();
    assert!(changed >= 1);
    // The same resource as Monday's: its restore point is the parent.
    env.create_job(
        "tuesday",
        &second_disk,
        serde_json::json!({"resources": [{"snapshotId": second_disk, "region": common::REGION}]}),
    )
    .await;
    let tuesday = env.wait_job_finished("tuesday", TIMEOUT).await;
    assert_eq!(tuesday.status.as_ref().unwrap().phase, Phase::Succeeded);
    let chunks_tuesday = disks::keys(&s3, &bucket, &chunks).await.len();
    // A different snapshot is a different resource: a full backup whose
    // unchanged blocks deduplicate, so only the changed chunks are new.
    assert_eq!(chunks_tuesday, chunks_monday + changed);

    for (name, point, expected) in [
        ("back-monday", format!("monday/{first_disk}"), &first),
        ("back-tuesday", format!("tuesday/{second_disk}"), &second),
    ] {
        env.create_restore(name, "volume", &point, serde_json::json!({}))
            .await;
        let done = env.wait_restore_finished(name, TIMEOUT).await;
        let w = &done.status.as_ref().unwrap().workers[0];
        assert_eq!(
            done.status.as_ref().unwrap().phase,
            Phase::Succeeded,
            "{w:?}"
        );
        let bytes = disks::read_snapshot(
            &aws,
            w.restored_snapshot_id.as_ref().unwrap(),
            expected.len(),
        )
        .await;
        assert!(bytes == *expected, "{name} restored different bytes");
    }
}

/// A `completed` forged for a restore's worker names a snapshot the job
/// did not write (someone else's, which the controller may well read):
/// nothing is made from it, neither a volume nor an image, and the restore
/// fails for good with `SnapshotNotOwned`.
#[tokio::test]
async fn a_completion_naming_a_snapshot_the_job_did_not_write_creates_nothing() {
    let env = TestEnv::new("forged-restore").await;
    env.boot_workers.store(false, Ordering::SeqCst);
    let configured = env.default_configuration().await;
    let queue = configured.queue_url();
    let foreign = env.protected_disk().await;
    let point = "nightly/snap-0123456789abcdef0";
    env.plant_restore_point(point).await;
    let modes = [
        (
            "as-volume",
            "volume",
            json!({"availabilityZone": configured.net.zone}),
        ),
        ("as-instance", "full", json!({"instanceType": "t3.micro"})),
    ];
    for (name, mode, extra) in modes {
        let created = env.create_restore(name, mode, point, extra).await;
        let job = env
            .wait_restore(name, TIMEOUT, |j| launched(&j.status))
            .await;
        let w = job.status.as_ref().unwrap().workers[0].worker.clone();
        let forged = WorkerEvent::Completed {
            detail: "restored".into(),
            restore_point: Some(point.into()),
            snapshot_id: Some(foreign.clone()),
            snapshots: vec![RestoredSnapshot {
                device: "/dev/xvda".into(),
                snapshot_id: foreign.clone(),
            }],
            bytes: None,
            machine: None,
            retention: None,
            verification: None,
        };
        reports::send(&queue, reports::message(&job, &w, 1, WorkerEvent::Started)).await;
        reports::send(&queue, reports::message(&job, &w, 2, forged)).await;

        let done = env.wait_restore_finished(name, TIMEOUT).await;
        let status = done.status.unwrap();
        assert_eq!(status.phase, Phase::Failed, "{mode}: {status:?}");
        let worker = &status.workers[0];
        assert_eq!(
            worker.reason.as_deref(),
            Some("SnapshotNotOwned"),
            "{worker:?}"
        );
        let message = worker.message.as_deref().unwrap();
        assert!(
            message.contains(&foreign) && message.contains("tender.dev/job-uid"),
            "{message}"
        );
        assert!(worker.restored_volume_id.is_none() && worker.restored_image_id.is_none());

        // EC2: no volume from the snapshot or for the job, no image.
        let uid = created.uid().unwrap();
        let from_snapshot = Filter::builder()
            .name("snapshot-id")
            .values(&foreign)
            .build();
        let for_job = Filter::builder()
            .name("tag:tender.dev/job-uid")
            .values(&uid)
            .build();
        for filter in [from_snapshot, for_job] {
            let volumes = env
                .ec2
                .describe_volumes()
                .filters(filter)
                .send()
                .await
                .unwrap();
            assert!(volumes.volumes().is_empty(), "{mode}: {volumes:?}");
        }
        let images = env
            .ec2
            .describe_images()
            .owners("self")
            .filters(
                Filter::builder()
                    .name("name")
                    .values(format!("tender-restore-{name}-*"))
                    .build(),
            )
            .send()
            .await
            .unwrap();
        assert!(images.images().is_empty(), "{mode}: {images:?}");
    }
    // One Event per job (listed through both Event APIs).
    let events = env.events().await;
    let refusals: std::collections::BTreeSet<&String> = events
        .iter()
        .filter(|(r, n)| r == "SnapshotNotOwned" && n.contains(&foreign))
        .map(|(_, n)| n)
        .collect();
    assert_eq!(refusals.len(), 2, "{events:?}");
}

/// A `progress` forged for a file-level restore announces a browser
/// session at another host (with its own certificate pins), so that the
/// user would hand the session token to the forger: it is refused, and
/// only a session at the worker's own address, as EC2 reports it, counts.
#[tokio::test]
async fn a_session_announced_at_a_foreign_host_is_not_recorded() {
    let (env, port) = TestEnv::with_silent_workers("forged-session").await;
    let queue = env.default_configuration().await.queue_url();
    let point = "nightly/snap-0123456789abcdef0";
    env.plant_restore_point(point).await;
    env.create_restore("browse", "fileLevel", point, json!({}))
        .await;
    let job = env
        .wait_restore("browse", TIMEOUT, |j| launched(&j.status))
        .await;
    let w = job.status.as_ref().unwrap().workers[0].worker.clone();
    let session = |url: &str, pin: &str| WorkerEvent::Progress {
        percent: 100,
        detail: format!("session is up at {url}"),
        bytes: None,
        session: Some(SessionInfo {
            url: url.into(),
            certificate_sha256: pin.into(),
            public_key_sha256: pin.into(),
            original_location: None,
        }),
    };
    reports::send(&queue, reports::message(&job, &w, 1, WorkerEvent::Started)).await;
    let forged = session("https://203.0.113.7/", "FORGED");
    reports::send(&queue, reports::message(&job, &w, 2, forged)).await;
    env.wait_refused(port, "ForeignBrowserHost", 1).await;
    reports::wait_drained(&queue).await;
    let held: RestoreJob = env.api().get("browse").await.unwrap();
    let worker = &held.status.unwrap().workers[0];
    assert_eq!(worker.phase, Phase::Running);
    assert!(
        worker.browser_url.is_none() && worker.certificate_sha256.is_none(),
        "{worker:?}"
    );

    // The worker's private address, as EC2 reports it.
    let instance = w.instance_id.clone().unwrap();
    let described = common::describe_instance(&env.ec2, &instance).await;
    let address = described.private_ip_address().unwrap().to_string();
    let own = format!("https://{address}/");
    reports::send(&queue, reports::message(&job, &w, 3, session(&own, "REAL"))).await;
    let shown = env
        .wait_restore("browse", TIMEOUT, |j| {
            j.status
                .as_ref()
                .is_some_and(|s| s.workers[0].browser_url.is_some())
        })
        .await;
    let worker = &shown.status.unwrap().workers[0];
    assert_eq!(worker.browser_url.as_deref(), Some(own.as_str()));
    assert_eq!(worker.certificate_sha256.as_deref(), Some("REAL"));
}

/// The instance path end to end, as it runs on AWS: an instance whose data
/// volume holds a real ext4 filesystem is backed up (EC2 snapshots its
/// volumes, the worker waits for them and reads their blocks through the
/// EBS direct APIs), and that volume comes back byte for byte. The test
/// world serves an EC2 snapshot of a volume made from a snapshot with that
/// snapshot's blocks, as EBS does.
#[tokio::test]
async fn an_instance_backup_moves_its_volumes_data_and_restores_it_byte_for_byte() {
    if !common::realism::enabled() {
        eprintln!("skipped: the environment runs plain moto (TENDER_REALISM=0)");
        return;
    }
    let env = TestEnv::new("instance-data").await;
    let net = env.default_configuration().await.net;
    let aws = tender::aws::AwsClients::from_env().await;
    let image = Ext4Image::build(&[("srv/data.bin", disks::random_bytes(600_000, 14))], 16);
    let seed = disks::write_snapshot(&aws, &image.bytes, 1).await;
    let data_volume = aws_sdk_ec2::types::BlockDeviceMapping::builder()
        .device_name("/dev/sdf")
        .ebs(
            aws_sdk_ec2::types::EbsBlockDevice::builder()
                .snapshot_id(&seed)
                .build(),
        )
        .build();
    let run = env
        .ec2
        .run_instances()
        .image_id("ami-0123456789abcdef0")
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .subnet_id(&net.subnet)
        .block_device_mappings(data_volume)
        .send()
        .await
        .unwrap();
    let instance = run.instances()[0].instance_id().unwrap().to_string();

    env.create_job("nightly", &instance, json!({})).await;
    let backup = env.wait_job_finished("nightly", TIMEOUT).await;
    let status = backup.status.clone().unwrap();
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    let point = status.workers[0].restore_point.clone().unwrap();
    assert_eq!(point, format!("nightly/{instance}"));

    env.create_restore(
        "data-back",
        "volume",
        &point,
        json!({"availabilityZone": net.zone, "device": "/dev/sdf"}),
    )
    .await;
    let done = env.wait_restore_finished("data-back", TIMEOUT).await;
    let status = done.status.clone().unwrap();
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    let snapshot = status.workers[0].restored_snapshot_id.clone().unwrap();
    let bytes = disks::read_snapshot(&aws, &snapshot, image.bytes.len()).await;
    assert!(bytes == image.bytes, "the restored data volume differs");
}

/// What a restore can know before its launch is checked before it: a type
/// the zone does not offer for the restored instance, and a bucket to
/// restore files to that does not exist, each fail the job with a reason
/// and an Event, and no worker is launched (and paid for).
#[tokio::test]
async fn restores_that_could_not_succeed_launch_no_worker() {
    let env = TestEnv::new("restore-preflight").await;
    env.default_configuration().await;
    // Only the restore point's presence matters before a launch.
    let point = "nightly/snap-0123456789abcdef0";
    env.plant_restore_point(point).await;

    let odd = env
        .create_restore(
            "odd-type",
            "full",
            point,
            json!({"instanceType": "zz9.large", "backoffLimit": 0}),
        )
        .await;
    env.create_repository("nobucket", "tender-no-such-bucket-preflight", json!({}))
        .await;
    let nowhere = env
        .create_restore(
            "nowhere",
            "fileLevel",
            point,
            json!({"restoreFilesTo": {"repositoryRef": {"name": "nobucket"}}, "backoffLimit": 0}),
        )
        .await;
    for (job, name, reason, names) in [
        (&odd, "odd-type", "InstanceTypeNotOffered", "zz9.large"),
        (
            &nowhere,
            "nowhere",
            "RestoreTargetMissing",
            "tender-no-such-bucket-preflight",
        ),
    ] {
        let done = env.wait_restore_finished(name, TIMEOUT).await;
        let status = done.status.clone().unwrap();
        assert_eq!(status.phase, Phase::Failed, "{status:?}");
        let worker = &status.workers[0];
        assert_eq!(worker.reason.as_deref(), Some(reason), "{worker:?}");
        assert!(
            worker.message.as_deref().unwrap().contains(names),
            "{worker:?}"
        );
        assert!(
            env.events()
                .await
                .iter()
                .any(|(r, note)| r == reason && note.contains(names)),
            "an Event names {names}"
        );
        let workers = env.workers_of(&job.uid().unwrap()).await;
        assert!(
            workers.is_empty(),
            "{name}: no worker launched: {workers:?}"
        );
    }
}
