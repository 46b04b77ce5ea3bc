//! The file-level recovery browser, end to end: a BackupJob's restore point
//! of a real ext4 disk, a RestoreJob in mode fileLevel, and headless
//! Chromium (Debian's `chromium`) that accepts the session's self-signed
//! certificate by its key's pin, browses to a file and downloads it, and
//! restores a selected folder to the S3 location the job allows; the
//! served certificate's SHA-256 is the one in the RestoreJob's status; a
//! request without the session token is refused; the session ends once idle
//! and its worker is terminated.

mod common;

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::TestEnv;
use common::disks::{self, Ext4Image};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use sha2::{Digest, Sha256};
use tender::api::{Phase, RestoreJob};

const TIMEOUT: Duration = Duration::from_secs(90);

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The worker of RestoreJob `name` once its browser is up.
async fn session_up(env: &TestEnv, name: &str) -> tender::api::RestoreWorkerStatus {
    let up = env
        .wait_restore(name, TIMEOUT, |j| {
            j.status
                .as_ref()
                .and_then(|s| s.workers.first())
                .is_some_and(|w| w.browser_url.is_some())
        })
        .await;
    up.status.as_ref().expect("a status").workers[0].clone()
}

/// The session's Secret and the token in it.
async fn session_token(
    env: &TestEnv,
    worker: &tender::api::RestoreWorkerStatus,
) -> (Secret, String) {
    let secrets: kube::Api<Secret> = env.api();
    let secret = secrets
        .get(worker.session_secret.as_deref().expect("a session Secret"))
        .await
        .expect("the session Secret");
    let token = secret.data.as_ref().expect("data")["token"].0.clone();
    (secret, String::from_utf8(token).expect("a UTF-8 token"))
}

/// Runs `steps` in headless Chromium (`tests/browser/drive.py`), which
/// accepts the session's certificate by the key's `pin`; what it saw:
/// `pages` (each page's text) and `downloads` (files saved).
fn drive(steps: &serde_json::Value, pin: &str) -> serde_json::Value {
    let work =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(common::unique("chromium"));
    let downloads = work.join("downloads");
    std::fs::create_dir_all(&downloads).expect("a downloads folder");
    let driver = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/drive.py");
    let out = Command::new("python3")
        .arg(driver)
        .arg(steps.to_string())
        .arg(chromium())
        .arg(pin)
        .arg(&downloads)
        .arg(work.join("profile"))
        .output()
        .expect("run the Chromium driver");
    let parsed: Result<serde_json::Value, _> = serde_json::from_slice(&out.stdout);
    assert!(
        parsed.is_ok(),
        "the driver's output is not JSON: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = parsed.expect("JSON, as just checked");
    assert!(seen.get("error").is_none(), "{seen}");
    seen
}

fn chromium() -> String {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("Chromium is not installed: scripts/testenv install installs Debian's chromium")
        .to_string()
}

#[tokio::test]
async fn a_browser_downloads_a_file_from_a_file_level_recovery_session() {
    let env = TestEnv::new("filelevel").await;
    env.default_configuration().await;
    let aws = tender::aws::AwsClients::from_env().await;
    let report = disks::random_bytes(300_000, 11);
    let todo = b"water the plants\nbackup the backups\n".to_vec();
    let image = Ext4Image::build(
        &[
            ("docs/report.bin", report.clone()),
            ("docs/notes/todo.txt", todo.clone()),
            ("hello.txt", b"hi\n".to_vec()),
        ],
        16,
    );
    let disk = disks::write_snapshot(&aws, &image.bytes, 1).await;
    env.back_up("nightly", &disk, TIMEOUT).await;

    let restore = env
        .create_restore(
            "browse",
            "fileLevel",
            &format!("nightly/{disk}"),
            serde_json::json!({
                "idleTimeoutMinutes": 1,
                "restoreFilesTo": {"repositoryRef": {"name": env.repository().await}, "prefix": "restored/"},
            }),
        )
        .await;
    let worker = session_up(&env, "browse").await;
    assert_eq!(worker.phase, Phase::Running, "{worker:?}");
    let url = worker.browser_url.clone().unwrap();
    let fingerprint = worker.certificate_sha256.clone().unwrap();
    let pin = worker.public_key_sha256.clone().unwrap();
    let (secret, token) = session_token(&env, &worker).await;
    assert_eq!(
        secret.owner_references()[0].uid,
        restore.uid().unwrap(),
        "the Secret goes with its RestoreJob"
    );

    // Without the token: refused.
    let code = curl(&[
        "-k",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{url}browse/"),
    ]);
    assert_eq!(code, "401");
    let code = curl(&[
        "-k",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{url}browse/?token=not-the-token"),
    ]);
    assert_eq!(code, "401");

    // The certificate served is the one the status names.
    let certs = curl(&["-k", "-o", "/dev/null", "-w", "%{certs}", &url]);
    let pem: String = certs
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END CERTIFICATE"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(pem.trim())
        .expect("curl printed the certificate");
    let served: Vec<String> = Sha256::digest(&der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    assert_eq!(served.join(":"), fingerprint);

    // Search and a folder archive, with the token, pinned by the key.
    let pinned = format!("sha256//{pin}");
    let found = curl(&[
        "-k",
        "--pinnedpubkey",
        &pinned,
        "-H",
        &format!("Authorization: Bearer {token}"),
        &format!("{url}search?q=TODO"),
    ]);
    assert!(found.contains("/docs/notes/todo.txt"), "{found}");
    let tar = Command::new("curl")
        .args(["-sSk", "--pinnedpubkey", &pinned, "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("{url}archive/docs"))
        .output()
        .unwrap()
        .stdout;
    let listing = Command::new("tar")
        .args(["-t", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&tar)?;
            c.wait_with_output()
        })
        .unwrap();
    let names = String::from_utf8_lossy(&listing.stdout);
    assert!(
        names.contains("docs/notes/todo.txt") && names.contains("docs/report.bin"),
        "{names}"
    );

    // Chromium: the pin accepts the certificate; browse, then download.
    let steps = serde_json::json!([
        {"navigate": format!("{url}?token={token}")},
        {"click": "a[href='/browse/docs']"},
        {"download": "a[href='/file/docs/report.bin']"},
        {"check": "input[value='/docs/notes']"},
        {"click": "form[action='/restore'] button"},
    ]);
    let seen = drive(&steps, &pin);
    let pages = seen["pages"].as_array().unwrap();
    assert!(pages[0].as_str().unwrap().contains("docs/"), "{seen}");
    assert!(pages[1].as_str().unwrap().contains("report.bin"), "{seen}");
    let file = seen["downloads"][0].as_str().unwrap();
    assert_eq!(
        std::fs::read(file).unwrap(),
        report,
        "the downloaded file differs"
    );
    // "Restore selected": the folder's files, under their paths, in the
    // location the job allows: its own folder of the repository, apart from
    // every namespace's restore points.
    assert!(
        pages[2].as_str().unwrap().contains("1 file(s) restored"),
        "{seen}"
    );
    let s3 = disks::s3().await;
    let restored = s3
        .get_object()
        .bucket(env.bucket().await)
        .key(format!(
            "_restored/{}/browse/restored/docs/notes/todo.txt",
            env.namespace
        ))
        .send()
        .await
        .expect("the selected folder's file was restored")
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    assert_eq!(restored.to_vec(), todo);

    // Left alone, the session ends after its idle minute; the worker goes.
    let done = env
        .wait_restore("browse", Duration::from_secs(150), |j: &RestoreJob| {
            j.status.as_ref().is_some_and(|s| s.phase.is_finished())
        })
        .await;
    let status = done.status.clone().unwrap();
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    assert!(
        status.workers[0]
            .message
            .as_deref()
            .unwrap()
            .contains("idle"),
        "{status:?}"
    );
    let workers = env.workers_of(&restore.uid().unwrap()).await;
    assert_eq!(workers.len(), 1);
    common::assert_terminating(&workers[0]);
}

/// A stock Amazon Linux 2023 root volume (GPT; XFS root as partition 1,
/// BIOS boot as 127, the FAT EFI system partition as 128), browsed in
/// Chromium: the root page lists the partitions with their filesystem,
/// label and size, the XFS root opens, a file downloads; the EFI
/// partition lists through its folder page.
#[tokio::test]
async fn a_stock_amazon_linux_volume_is_browsed_by_partition() {
    let env = TestEnv::new("filelevelxfs").await;
    env.default_configuration().await;
    let aws = tender::aws::AwsClients::from_env().await;
    let release = b"NAME=\"Amazon Linux\"\nVERSION=\"2023\"\n".to_vec();
    let journal = disks::random_bytes(200_000, 7);
    let disk = common::stock_disks::amazon_linux(
        &[
            ("etc/os-release", release.clone()),
            ("var/log/journal/system.journal", journal.clone()),
        ],
        &[("EFI/amzn/grubx64.efi", b"MZ grub".to_vec())],
    );
    let disk = disks::write_snapshot(&aws, &disk, 1).await;
    env.back_up("nightly", &disk, TIMEOUT).await;
    let restore = env
        .create_restore(
            "browse",
            "fileLevel",
            &format!("nightly/{disk}"),
            serde_json::json!({"idleTimeoutMinutes": 1}),
        )
        .await;
    let worker = session_up(&env, "browse").await;
    let url = worker.browser_url.clone().unwrap();
    let pin = worker.public_key_sha256.clone().unwrap();
    let token = session_token(&env, &worker).await.1;

    let steps = serde_json::json!([
        {"navigate": format!("{url}?token={token}")},
        {"click": "a[href='/browse/partition-1']"},
        {"click": "a[href='/browse/partition-1/etc']"},
        {"download": "a[href='/file/partition-1/etc/os-release']"},
        {"navigate": format!("{url}browse/partition-128/EFI/amzn")},
    ]);
    let seen = drive(&steps, &pin);
    let pages: Vec<&str> = seen["pages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    // The partitions, each with what it holds.
    for row in [
        "partition-1/\tXFS · / · 45 MiB",
        "partition-128/\tFAT · ESP · 16 MiB",
        "partition-127\tno filesystem · BIOS Boot Partition · 1 MiB · it holds no filesystem",
    ] {
        assert!(pages[0].contains(row), "{row:?} not in {:?}", pages[0]);
    }
    assert!(
        pages[1].contains("etc/") && pages[1].contains("var/"),
        "{seen}"
    );
    assert!(pages[2].contains("os-release"), "{seen}");
    assert!(pages[3].contains("grubx64.efi"), "{seen}");
    let file = seen["downloads"][0].as_str().unwrap();
    assert_eq!(std::fs::read(file).unwrap(), release);

    // A larger file from the XFS root, with the token, pinned by the key.
    let got = Command::new("curl")
        .args(["-sSk", "--pinnedpubkey", &format!("sha256//{pin}"), "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!(
            "{url}file/partition-1/var/log/journal/system.journal"
        ))
        .output()
        .unwrap()
        .stdout;
    assert_eq!(got, journal);

    let done = env
        .wait_restore("browse", Duration::from_secs(150), |j: &RestoreJob| {
            j.status.as_ref().is_some_and(|s| s.phase.is_finished())
        })
        .await;
    let status = done.status.clone().unwrap();
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    let workers = env.workers_of(&restore.uid().unwrap()).await;
    assert_eq!(workers.len(), 1);
    common::assert_terminating(&workers[0]);
}
