//! Restoring files onto the running source instance through Systems
//! Manager Run Command (#17), in the realism layer's world: SSM Agents
//! register and ping, invocations are eventually consistent and wait to
//! be delivered, and IAM is the shipped controller policy's. The test
//! plays the instance's agent: it takes the recorded command and runs it
//! with `sh` against a scratch folder standing for the instance's disk
//! (as the worker booter plays EC2), and reports what it printed.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use aws_sdk_ec2::types::{InstanceType, ResourceType, Tag, TagSpecification};
use common::{REGION, disks, realism, unique};
use sha2::{Digest, Sha256};
use tender::api::AccountAccess;
use tender::aws::accounts::Access;
use tender::aws::run_command::{Command as RunCommand, Invocation};
use tender::controller::original_location::{Entry, Outcome, Plan, What, command};
use tender::mover::manifest::RepositoryLocation;

const UUID: &str = "6a1f0c2e-7d4b-4e3a-9c5f-0b8d2e1a4c77";
const VOLUME: &str = "vol-0123456789abcdef0";
const MTIME: i64 = 1_614_834_367;
/// A user every Debian system has (`nobody`, group `nogroup`): the
/// script writes a user's files as that user, whom it must know.
const NOBODY: u32 = 65534;

/// A running instance (the source of a backup), tagged to accept restores
/// when `accepts`.
async fn instance(ec2: &aws_sdk_ec2::Client, accepts: bool) -> String {
    let mut run = ec2
        .run_instances()
        .image_id("ami-0123456789abcdef0")
        .instance_type(InstanceType::T3Micro)
        .min_count(1)
        .max_count(1);
    if accepts {
        run = run.tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .tags(
                    Tag::builder()
                        .key("tender.dev/restore-to-original-location")
                        .value("allowed")
                        .build(),
                )
                .build(),
        );
    }
    let out = run.send().await.expect("run an instance");
    out.instances()[0]
        .instance_id()
        .expect("an instance ID")
        .to_string()
}

#[tokio::test]
async fn a_restore_command_runs_on_the_source_instance_and_restores_the_files() {
    if !realism::enabled() {
        eprintln!("skipped: the environment runs plain moto (TENDER_REALISM=0)");
        return;
    }
    let ec2 = common::ec2().await;
    let source = instance(&ec2, true).await;
    let no_agent = instance(&ec2, true).await;
    let not_tagged = instance(&ec2, false).await;
    realism::ssm_agent(&source, "Linux", "Online").await;
    realism::ssm_agent(&not_tagged, "Linux", "Online").await;

    // The controller, with the shipped policy.
    let role = unique("tender-original");
    realism::ensure_role(&role, &realism::controller_policy()).await;
    let access = Access::new(
        Some(&AccountAccess {
            role_arn: format!("arn:aws:iam::{}:role/{role}", realism::ACCOUNT),
            external_id: None,
        }),
        &["original-location"],
    );
    let aws = tender::aws::AwsClients::from_env()
        .await
        .scoped(&access)
        .await;
    let run = aws.run_command();

    // Only an instance whose agent registered is a managed node.
    let node = run.managed_node(REGION, &source).await.unwrap();
    let node = node.expect("the source instance is a managed node");
    assert!(node.online() && !node.windows(), "{node:?}");
    assert_eq!(run.managed_node(REGION, &no_agent).await.unwrap(), None);

    // What the worker stages: the files, under the request's prefix.
    let s3 = disks::s3().await;
    let bucket = disks::create_bucket(&s3).await;
    let staging = RepositoryLocation::new(&bucket, "_staging/team-a/job-uid/0f1e/", REGION);
    let files: [(&str, &[u8], u32, u32); 3] = [
        ("etc/app.conf", b"from the backup\n", 0o640, 0),
        ("srv/data/report.bin", &[9u8; 300_000], 0o600, NOBODY),
        ("srv/name with spaces & $(x)", b"odd", 0o644, NOBODY),
    ];
    let mut entries = vec![
        folder("srv", 0o755, NOBODY),
        folder("srv/data", 0o750, NOBODY),
    ];
    for (i, (path, data, mode, uid)) in files.iter().enumerate() {
        let key = format!("{}files/{i}", staging.prefix);
        s3.put_object()
            .bucket(&bucket)
            .key(&key)
            .body(data.to_vec().into())
            .send()
            .await
            .expect("stage a file");
        let url = aws
            .repository()
            .presigned_get(&staging, &key, Duration::from_secs(900))
            .await
            .unwrap();
        entries.push(Entry {
            path: path.to_string(),
            mode: *mode,
            uid: *uid,
            gid: *uid,
            mtime: MTIME,
            what: What::File {
                sha256: hex::encode(Sha256::digest(data)),
                size: data.len() as u64,
                url,
            },
        });
    }
    let plan = Plan {
        filesystem_uuid: UUID.into(),
        volume_id: VOLUME.into(),
        suffix: ".restored-nightly".into(),
        overwrite: false,
        entries,
    };
    let (text, _) = plan.render().unwrap();
    let plan_key = format!("{}plan", staging.prefix);
    aws.repository()
        .put_object(&staging, &plan_key, text.clone().into_bytes(), "text/plain")
        .await
        .unwrap();
    let plan_url = aws
        .repository()
        .presigned_get(&staging, &plan_key, Duration::from_secs(900))
        .await
        .unwrap();
    let script = command(
        "0f1e",
        &plan_url,
        &hex::encode(Sha256::digest(text.as_bytes())),
    )
    .unwrap();
    let spec = |instance_id| RunCommand {
        instance_id,
        windows: false,
        script: &script,
        comment: "tender team-a/browse 0f1e",
        delivery_timeout_seconds: 600,
        execution_timeout_seconds: 900,
    };

    // Refused: an instance without an agent, and one not tagged to accept
    // restores (the policy's condition).
    let e = run.send(REGION, &spec(&no_agent)).await.unwrap_err();
    assert_eq!(e.code(), Some("InvalidInstanceId"), "{e}");
    let e = run.send(REGION, &spec(&not_tagged)).await.unwrap_err();
    assert_eq!(e.code(), Some("AccessDeniedException"), "{e}");

    let before = realism::counter("ssm:invocation-not-found").await;
    let command_id = run.send(REGION, &spec(&source)).await.unwrap();
    // Eventually consistent: not visible at once.
    assert_eq!(
        run.invocation(REGION, &command_id, &source).await.unwrap(),
        Invocation::NotYet
    );
    assert!(realism::counter("ssm:invocation-not-found").await > before);
    let pending = common::eventually(Duration::from_secs(10), || async {
        match run.invocation(REGION, &command_id, &source).await {
            Ok(i @ Invocation::Seen { .. }) => Some(i),
            _ => None,
        }
    })
    .await;
    assert!(
        matches!(&pending, Invocation::Seen { status, .. } if status == "Pending"),
        "{pending:?}"
    );

    // The instance's agent runs what was sent.
    let delivered = realism::ssm_deliver(&source).await;
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0]["documentName"], "AWS-RunShellScript");
    let sent = delivered[0]["parameters"]["commands"][0]
        .as_str()
        .expect("the command's script");
    // Under the system's temporary folder: the script writes a user's
    // files as that user, who must be able to reach them (the build's own
    // folder may be under root's home, which nobody else may enter).
    let machine = std::env::temp_dir().join(unique("tender-instance"));
    let disk = machine.join("disk");
    std::fs::create_dir_all(disk.join("etc")).unwrap();
    std::fs::write(disk.join("etc/app.conf"), b"changed since\n").unwrap();
    let (status, code, stdout, stderr) = realism::run_as_agent(sent, &disk, UUID, VOLUME);
    let status = status.as_str();
    realism::ssm_finish(&command_id, &source, status, code, &stdout, &stderr).await;

    let done = run.invocation(REGION, &command_id, &source).await.unwrap();
    assert!(done.finished(), "{done:?}");
    let Invocation::Seen {
        status,
        response_code,
        stdout,
        ..
    } = done
    else {
        panic!("the invocation is seen");
    };
    assert_eq!(
        (status.as_str(), response_code),
        ("Success", 0),
        "{stdout} {stderr}"
    );
    let outcome = Outcome::parse(&stdout);
    assert_eq!(
        (
            outcome.restored,
            outcome.beside,
            outcome.failed,
            outcome.error
        ),
        (2, 1, 0, None),
        "{stdout}"
    );

    // On the instance's disk: kept, beside, owners, modes and times.
    assert_eq!(
        std::fs::read(disk.join("etc/app.conf")).unwrap(),
        b"changed since\n"
    );
    assert_eq!(
        std::fs::read(disk.join("etc/app.conf.restored-nightly~")).unwrap(),
        b"from the backup\n"
    );
    for (path, data, mode, uid) in files {
        let at = match path {
            "etc/app.conf" => disk.join("etc/app.conf.restored-nightly~"),
            _ => disk.join(path),
        };
        assert_eq!(std::fs::read(&at).unwrap(), data, "{path}");
        let m = std::fs::metadata(&at).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777, m.mtime()),
            (uid, uid, mode, MTIME),
            "{path}"
        );
    }
    let m = std::fs::metadata(disk.join("srv/data")).unwrap();
    assert_eq!(
        (m.uid(), m.mode() & 0o7777, m.mtime()),
        (NOBODY, 0o750, MTIME)
    );
    std::fs::remove_dir_all(&machine).unwrap();
}

fn folder(path: &str, mode: u32, uid: u32) -> Entry {
    Entry {
        path: path.into(),
        mode,
        uid,
        gid: uid,
        mtime: MTIME,
        what: What::Folder,
    }
}
