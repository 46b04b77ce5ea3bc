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
    // Chromium's profile is tens of MiB; the downloads stay for the test
    // to read.
    let _ = std::fs::remove_dir_all(work.join("profile"));
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

/// What a test expects of a stock volume in the browser.
struct Stock<'a> {
    /// The test environment's name.
    name: &'a str,
    disk: Vec<u8>,
    /// Rows of the root page (the partitions).
    rows: &'a [&'a str],
    /// A folder to open and a name its page lists.
    folder: (&'a str, &'a str),
    /// A file to download from its folder's page, and its contents.
    file: (&'a str, Vec<u8>),
    /// A name to search for, and a path the results list.
    search: (&'a str, &'a str),
    /// A folder to download as tar, and paths the archive holds.
    archive: (&'a str, &'a [&'a str]),
}

/// Backs up `stock.disk`, opens a file-level session on it and browses it
/// in Chromium: the root page's partitions, a folder, a download, a
/// search, a folder as tar; then the session ends and its worker is
/// terminated.
async fn browse_stock_disk(stock: Stock<'_>) {
    let env = TestEnv::new(stock.name).await;
    env.default_configuration().await;
    let aws = tender::aws::AwsClients::from_env().await;
    let disk = disks::write_snapshot(&aws, &stock.disk, 1).await;
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
    let url = worker.browser_url.clone().expect("a browser URL");
    let pin = worker.public_key_sha256.clone().expect("a key pin");
    let token = session_token(&env, &worker).await.1;

    let (file, contents) = &stock.file;
    let (parent, _) = file.rsplit_once('/').expect("a file in a folder");
    let steps = serde_json::json!([
        {"navigate": format!("{url}?token={token}")},
        {"navigate": format!("{url}browse/{}", stock.folder.0)},
        {"navigate": format!("{url}browse/{parent}")},
        {"download": format!("a[href='/file/{file}']")},
        {"navigate": format!("{url}search?q={}", stock.search.0)},
        {"navigate": format!("{url}browse/{}", stock.archive.0)},
        {"download": format!("a.archive[href='/archive/{}']", stock.archive.0)},
    ]);
    let seen = drive(&steps, &pin);
    let pages: Vec<&str> = seen["pages"]
        .as_array()
        .expect("pages")
        .iter()
        .map(|p| p.as_str().expect("a page's text"))
        .collect();
    for row in stock.rows {
        assert!(pages[0].contains(row), "{row:?} not in {:?}", pages[0]);
    }
    assert!(pages[1].contains(stock.folder.1), "{seen}");
    let got =
        std::fs::read(seen["downloads"][0].as_str().expect("a download")).expect("the download");
    assert!(&got == contents, "{file} downloads byte for byte");
    assert!(pages[3].contains(stock.search.1), "{seen}");
    let tar = seen["downloads"][1].as_str().expect("an archive");
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(tar)
        .output()
        .expect("run tar");
    let listing = String::from_utf8_lossy(&listing.stdout);
    for member in stock.archive.1 {
        assert!(
            listing.lines().any(|l| l == *member),
            "{member} not in {listing}"
        );
    }

    let done = env
        .wait_restore("browse", Duration::from_secs(150), |j: &RestoreJob| {
            j.status.as_ref().is_some_and(|s| s.phase.is_finished())
        })
        .await;
    let status = done.status.clone().expect("a status");
    assert_eq!(status.phase, Phase::Succeeded, "{status:?}");
    let workers = env.workers_of(&restore.uid().expect("a uid")).await;
    assert_eq!(workers.len(), 1);
    common::assert_terminating(&workers[0]);
}

/// A stock Amazon Linux 2023 root volume: GPT; XFS root as partition 1,
/// BIOS boot as 127, the FAT EFI system partition as 128.
#[tokio::test]
async fn a_stock_amazon_linux_volume_is_browsed_by_partition() {
    let journal = disks::random_bytes(200_000, 7);
    let disk = common::stock_disks::amazon_linux(
        &[
            ("etc/os-release", b"NAME=\"Amazon Linux\"\n".to_vec()),
            ("var/log/journal/system.journal", journal.clone()),
        ],
        &[("EFI/amzn/grubx64.efi", b"MZ grub".to_vec())],
    );
    browse_stock_disk(Stock {
        name: "filelevelxfs",
        disk,
        rows: &[
            "partition-1/\tXFS · / · 45 MiB",
            "partition-128/\tFAT · ESP · 16 MiB",
            "partition-127\tno filesystem · BIOS Boot Partition · 1 MiB · it holds no filesystem",
        ],
        folder: ("partition-128/EFI/amzn", "grubx64.efi"),
        file: ("partition-1/var/log/journal/system.journal", journal),
        search: ("os-rel", "/partition-1/etc/os-release"),
        archive: ("partition-1/etc", &["etc/os-release"]),
    })
    .await;
}

/// A stock Ubuntu root volume: GPT; ext4 root as partition 1, BIOS boot
/// as 14, the EFI system partition as 15.
#[tokio::test]
async fn a_stock_ubuntu_volume_is_browsed_by_partition() {
    let syslog = disks::random_bytes(150_000, 9);
    let disk = common::stock_disks::ubuntu(
        &[
            ("etc/hostname", b"ip-10-0-0-1\n".to_vec()),
            ("var/log/syslog", syslog.clone()),
        ],
        &[("EFI/ubuntu/shimx64.efi", b"MZ shim".to_vec())],
    );
    browse_stock_disk(Stock {
        name: "filelevelext4",
        disk,
        rows: &[
            "partition-1/\text2/3/4 · cloudimg-rootfs",
            "partition-15/\tFAT · UEFI · 10 MiB",
            "partition-14\tno filesystem",
        ],
        folder: ("partition-15/EFI/ubuntu", "shimx64.efi"),
        file: ("partition-1/var/log/syslog", syslog),
        search: ("hostn", "/partition-1/etc/hostname"),
        archive: ("partition-1/etc", &["etc/hostname"]),
    })
    .await;
}

/// A stock Windows Server root volume: MBR; "System Reserved" NTFS as
/// partition 1, C: (NTFS) as 2.
#[tokio::test]
async fn a_stock_windows_volume_is_browsed_by_partition() {
    let report = disks::random_bytes(300_000, 11);
    let disk = common::stock_disks::windows(&[
        (
            "Windows/System32/drivers/etc/hosts",
            b"127.0.0.1 localhost\r\n".to_vec(),
        ),
        ("Users/Administrator/Documents/report.docx", report.clone()),
        ("Users/Administrator/Desktop/notes.txt", b"notes".to_vec()),
    ]);
    browse_stock_disk(Stock {
        name: "filelevelntfs",
        disk,
        rows: &[
            "partition-1/\tNTFS · System Reserved · 16 MiB",
            "partition-2/\tNTFS · Windows · 47 MiB",
        ],
        folder: ("partition-1/Boot", "BCD"),
        file: (
            "partition-2/Users/Administrator/Documents/report.docx",
            report,
        ),
        search: ("hosts", "/partition-2/Windows/System32/drivers/etc/hosts"),
        archive: (
            "partition-2/Users/Administrator",
            &[
                "Administrator/Desktop/notes.txt",
                "Administrator/Documents/report.docx",
            ],
        ),
    })
    .await;
}

/// The first bytes' UUID of the ext4 filesystem at byte `at` of `disk`, as
/// `blkid` prints it.
fn ext4_uuid(disk: &[u8], at: usize) -> String {
    let raw = hex::encode(&disk[at + 1024 + 104..at + 1024 + 120]);
    format!(
        "{}-{}-{}-{}-{}",
        &raw[..8],
        &raw[8..12],
        &raw[12..16],
        &raw[16..20],
        &raw[20..]
    )
}

/// The keys under the test repository's staging folders.
async fn staged_keys(env: &TestEnv) -> Vec<String> {
    let listed = disks::s3()
        .await
        .list_objects_v2()
        .bucket(env.bucket().await)
        .send()
        .await
        .expect("list the repository");
    listed
        .contents()
        .iter()
        .filter_map(|o| o.key())
        .filter(|k| k.contains("_staging/"))
        .map(String::from)
        .collect()
}

/// Overwrites every staged file in `bucket` (as someone with write
/// access to the repository could).
async fn tamper_staged_files(bucket: &str) {
    let s3 = disks::s3().await;
    let listed = s3
        .list_objects_v2()
        .bucket(bucket)
        .send()
        .await
        .expect("list the repository");
    for key in listed
        .contents()
        .iter()
        .filter_map(|o| o.key())
        .filter(|k| k.contains("_staging/") && k.contains("/files/"))
    {
        s3.put_object()
            .bucket(bucket)
            .key(key)
            .body(b"tampered\n".to_vec().into())
            .send()
            .await
            .expect("tamper with a staged file");
    }
}

/// Files chosen in the browser are restored onto the running instance the
/// backup was taken of, through Run Command (the realism layer's SSM; the
/// test plays the instance's agent over a scratch folder standing for its
/// root filesystem): first without overwriting (the kept file's restored
/// copy goes beside it), then replacing it when the page is told to. The
/// RestoreJob's status and the page say what the command did; staged
/// files go once it finished, and the rest once the session ended.
#[tokio::test]
async fn files_chosen_in_the_browser_are_restored_onto_the_source_instance() {
    if !common::realism::enabled() {
        eprintln!("skipped: the environment runs plain moto (TENDER_REALISM=0)");
        return;
    }
    use common::realism;
    let env = TestEnv::new("original").await;
    env.default_configuration().await;
    let aws = tender::aws::AwsClients::from_env().await;
    let report = disks::random_bytes(200_000, 5);
    let conf = b"listen 8080\n".to_vec();
    let disk = common::stock_disks::ubuntu(
        &[
            ("etc/app.conf", conf.clone()),
            ("etc/hostname", b"web-1\n".to_vec()),
            ("srv/data/report.bin", report.clone()),
        ],
        &[("EFI/BOOT/BOOTX64.EFI", b"MZ shim".to_vec())],
    );
    let uuid = ext4_uuid(&disk, 30720 * 512);
    let snapshot = disks::write_snapshot(&aws, &disk, 1).await;

    // The source instance: its root volume made from that disk, tagged by
    // its owner to accept restores, its SSM Agent online.
    let (subnet, _) = env.default_subnet().await;
    let launched = common::ec2()
        .await
        .run_instances()
        .image_id("ami-0123456789abcdef0")
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .subnet_id(&subnet)
        .block_device_mappings(
            aws_sdk_ec2::types::BlockDeviceMapping::builder()
                .device_name("/dev/xvda")
                .ebs(
                    aws_sdk_ec2::types::EbsBlockDevice::builder()
                        .snapshot_id(&snapshot)
                        .volume_size(1)
                        .build(),
                )
                .build(),
        )
        .tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Instance)
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key("tender.dev/restore-to-original-location")
                        .value("allowed")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .expect("run the source instance");
    let instance = launched.instances()[0]
        .instance_id()
        .expect("an instance ID")
        .to_string();
    realism::ssm_agent(&instance, "Linux", "Online").await;
    env.back_up("nightly", &instance, TIMEOUT).await;
    // Its root volume, which the instance names in its NVMe disk's serial.
    let described = common::describe_instance(&common::ec2().await, &instance).await;
    let volume = described
        .block_device_mappings()
        .iter()
        .find_map(|m| m.ebs().and_then(|e| e.volume_id()))
        .expect("the root volume")
        .to_string();

    // The instance's root filesystem, changed since the backup.
    let machine = std::env::temp_dir().join(common::unique("tender-instance"));
    let root = machine.join("disk");
    std::fs::create_dir_all(root.join("etc")).expect("the instance's /etc");
    std::fs::write(root.join("etc/app.conf"), b"listen 9090\n").expect("a changed file");
    std::fs::write(root.join("etc/hostname"), b"web-2\n").expect("a changed file");

    // Its agent: runs what Run Command delivers, until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bucket = env.bucket().await;
    let agent = {
        let (instance, root, uuid, volume, stop) = (
            instance.clone(),
            root.clone(),
            uuid.clone(),
            volume.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut ran = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for delivered in realism::ssm_deliver(&instance).await {
                    // The third request's staged files are changed after
                    // the controller planned them.
                    if ran.len() == 2 {
                        tamper_staged_files(&bucket).await;
                    }
                    let script = delivered["parameters"]["commands"][0]
                        .as_str()
                        .expect("a script")
                        .to_string();
                    let (root, uuid, volume) = (root.clone(), uuid.clone(), volume.clone());
                    let (status, code, stdout, stderr) = tokio::task::spawn_blocking(move || {
                        realism::run_as_agent(&script, &root, &uuid, &volume)
                    })
                    .await
                    .expect("the agent's run");
                    let id = delivered["commandId"].as_str().expect("a command ID");
                    realism::ssm_finish(id, &instance, &status, code, &stdout, &stderr).await;
                    ran.push(delivered);
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            ran
        })
    };

    env.create_restore(
        "onto",
        "fileLevel",
        &format!("nightly/{instance}"),
        serde_json::json!({"restoreToOriginalLocation": true}),
    )
    .await;
    let worker = session_up(&env, "onto").await;
    let offered = worker.original_location.clone().expect("the offer");
    assert_eq!(
        (offered.phase, offered.instance_id.as_str()),
        (
            tender::api::OriginalLocationPhase::Available,
            instance.as_str()
        ),
        "{offered:?}"
    );
    let url = worker.browser_url.clone().expect("a browser URL");
    let pin = worker.public_key_sha256.clone().expect("a key pin");
    let token = session_token(&env, &worker).await.1;
    let steps = serde_json::json!([
        {"navigate": format!("{url}?token={token}")},
        {"navigate": format!("{url}browse/partition-1")},
        {"check": "input[value='/partition-1/etc']"},
        {"check": "input[value='/partition-1/srv']"},
        {"click": "button.original"},
        {"until": "Succeeded", "timeout": 90},
        {"navigate": format!("{url}browse/partition-1/etc")},
        {"check": "input[value='/partition-1/etc/app.conf']"},
        {"check": "input[name='overwrite']"},
        {"click": "button.original"},
        {"until": "Succeeded", "timeout": 90},
        {"navigate": format!("{url}browse/partition-1/etc")},
        {"check": "input[value='/partition-1/etc/hostname']"},
        {"check": "input[name='overwrite']"},
        {"click": "button.original"},
        {"until": "Failed", "timeout": 90},
    ]);
    let seen = tokio::task::spawn_blocking(move || drive(&steps, &pin))
        .await
        .expect("the browser's run");
    let pages: Vec<String> = seen["pages"]
        .as_array()
        .expect("pages")
        .iter()
        .map(|p| p.as_str().expect("a page's text").to_string())
        .collect();
    assert!(
        pages[1].contains("Restore selected to their original location on"),
        "{}",
        pages[1]
    );
    // Kept by default: the restored copies beside them.
    assert!(
        pages[3].contains("restored: 1 · kept beside: 2 · replaced: 0"),
        "{}",
        pages[3]
    );
    assert!(pages[6].contains("replaced: 1"), "{}", pages[6]);
    // A staged file changed after it was planned is not written, and the
    // page says so, naming it.
    assert!(
        pages[9].contains("not restored: 1") && pages[9].contains("etc/hostname: failed-digest"),
        "{}",
        pages[9]
    );
    let read = |p: &str| std::fs::read(root.join(p)).unwrap_or_default();
    assert_eq!(read("etc/app.conf"), conf, "replaced in the second request");
    assert_eq!(read("etc/app.conf.restored-nightly~"), conf);
    assert_eq!(
        read("etc/hostname"),
        b"web-2\n",
        "not replaced by what was tampered with"
    );
    assert_eq!(read("etc/hostname.restored-nightly~"), b"web-1\n");
    assert!(read("srv/data/report.bin") == report, "report.bin restored");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(root.join("etc/hostname.restored-nightly~"))
        .expect("hostname")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o644);

    // The status says what the last command did; only the answers stay
    // staged while the session lasts.
    let job = env
        .wait_restore("onto", TIMEOUT, |j| {
            j.status.as_ref().is_some_and(|s| {
                s.workers[0]
                    .original_location
                    .as_ref()
                    .is_some_and(|o| o.phase.is_finished())
            })
        })
        .await;
    let done = job.status.as_ref().expect("a status").workers[0]
        .original_location
        .clone()
        .expect("the restore");
    assert_eq!(
        (done.phase, done.overwrite, done.overwritten, done.failed),
        (
            tender::api::OriginalLocationPhase::Failed,
            true,
            Some(0),
            Some(1)
        ),
        "{done:?}"
    );
    assert!(
        done.message
            .as_deref()
            .is_some_and(|m| m.contains("etc/hostname: failed-digest")),
        "{done:?}"
    );
    assert_eq!(done.filesystem_uuid.as_deref(), Some(uuid.as_str()));
    assert_eq!(done.volume_id.as_deref(), Some(volume.as_str()));
    let events = env.events().await;
    // (Repeats of one reason are counted in the first's series.)
    for reason in [
        "OriginalLocationCommandSent",
        "FilesRestoredToOriginalLocation",
        "OriginalLocationRestoreFailed",
    ] {
        assert!(
            events.iter().any(|(r, _)| r == reason),
            "{reason}: {events:?}"
        );
    }
    assert!(
        events
            .iter()
            .any(|(r, note)| r == "OriginalLocationRestoreFailed" && note.contains("failed-digest")),
        "{events:?}"
    );
    let staged = staged_keys(&env).await;
    assert!(
        staged.len() == 3 && staged.iter().all(|k| k.ends_with("/answer.json")),
        "{staged:?}"
    );

    let restores: kube::Api<RestoreJob> = env.api();
    restores
        .patch(
            "onto",
            &Default::default(),
            &kube::api::Patch::Merge(serde_json::json!({
                "metadata": {"annotations": {"tender.dev/finish-session": "true"}}
            })),
        )
        .await
        .expect("finish the session");
    env.wait_restore("onto", TIMEOUT, |j| {
        j.status.as_ref().is_some_and(|s| s.phase.is_finished())
    })
    .await;
    assert_eq!(staged_keys(&env).await, Vec::<String>::new());
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let ran = agent.await.expect("the agent");
    assert_eq!(ran.len(), 3, "{ran:?}");
    assert!(
        ran.iter()
            .all(|c| c["documentName"] == "AWS-RunShellScript"),
        "{ran:?}"
    );

    // An instance whose agent lost its connection: the session says so
    // and nothing is staged or sent.
    realism::ssm_agent(&instance, "Linux", "ConnectionLost").await;
    env.create_restore(
        "offline",
        "fileLevel",
        &format!("nightly/{instance}"),
        serde_json::json!({"restoreToOriginalLocation": true}),
    )
    .await;
    let worker = session_up(&env, "offline").await;
    let refused = worker.original_location.clone().expect("the refusal");
    assert_eq!(
        refused.phase,
        tender::api::OriginalLocationPhase::Unavailable,
        "{refused:?}"
    );
    assert!(
        refused
            .message
            .as_deref()
            .is_some_and(|m| m.contains("ConnectionLost")),
        "{refused:?}"
    );
    assert!(realism::ssm_deliver(&instance).await.is_empty());
    assert!(
        env.events()
            .await
            .iter()
            .any(|(r, note)| r == "OriginalLocationUnavailable" && note.contains("ConnectionLost")),
        "the refusal is an Event"
    );
    assert_eq!(staged_keys(&env).await, Vec::<String>::new());
    std::fs::remove_dir_all(&machine).expect("remove the scratch instance");
}
