//! `restore.sh` run by `sh` (dash on Debian, as on Ubuntu) as root, the
//! way Run Command runs it, against a scratch folder standing for the
//! instance's filesystem: `findmnt` is a stand-in on PATH that names the
//! folder for the plan's UUID, and files are fetched by `file://` URLs.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::*;

const UUID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
const SUFFIX: &str = ".restored-nightly";
/// The EBS volume the scratch filesystem is on.
const VOLUME: &str = "vol-0123456789abcdef0";
const MTIME: i64 = 1_614_834_367;
/// A user every Debian system has (`nobody`, group `nogroup`): the
/// script writes a user's files as that user, whom it must know.
const NOBODY: u32 = 65534;

/// A scratch "instance": its filesystem (`disk`), a `findmnt` that
/// finds it, and staged files.
struct Instance {
    base: PathBuf,
}

impl Instance {
    fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let base = std::env::temp_dir().join(format!("tender-original-{}-{n}", std::process::id()));
        for dir in ["disk", "bin", "staged"] {
            std::fs::create_dir_all(base.join(dir)).expect("a scratch folder");
        }
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).expect("mode");
        super::stand_ins(&base.join("bin"), &base.join("disk"), UUID, VOLUME)
            .expect("findmnt and lsblk");
        Self { base }
    }

    fn disk(&self, path: &str) -> PathBuf {
        self.base.join("disk").join(path)
    }

    /// A file staged for restoring, as `entry` at `path`.
    fn file(&self, path: &str, contents: &[u8], mode: u32, uid: u32) -> Entry {
        let staged = self
            .base
            .join("staged")
            .join(hex::encode(Sha256::digest(path)));
        std::fs::write(&staged, contents).expect("staged");
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o644)).expect("mode");
        Entry {
            path: path.into(),
            mode,
            uid,
            gid: uid,
            mtime: MTIME,
            what: What::File {
                sha256: hex::encode(Sha256::digest(contents)),
                size: contents.len() as u64,
                url: format!("file://{}", staged.display()),
            },
        }
    }

    /// Runs the command for `entries`; its output and exit status.
    fn restore(&self, entries: Vec<Entry>, overwrite: bool) -> (Outcome, Vec<String>, i32) {
        let plan = Plan {
            filesystem_uuid: UUID.into(),
            volume_id: VOLUME.into(),
            suffix: SUFFIX.into(),
            overwrite,
            entries,
        };
        let (text, paths) = plan.render().expect("a plan");
        let at = self.base.join("plan");
        std::fs::write(&at, &text).expect("the plan");
        let cmd = command(
            "00112233445566778899aabbccddeeff",
            &format!("file://{}", at.display()),
            &hex::encode(Sha256::digest(&text)),
        )
        .expect("a command");
        std::fs::write(self.base.join("cmd.sh"), cmd).expect("the command");
        let path = format!(
            "{}:{}",
            self.base.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new("sh")
            .arg(self.base.join("cmd.sh"))
            .env("PATH", path)
            .current_dir("/")
            .output()
            .expect("run sh");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.stderr.is_empty(),
            "stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            Outcome::parse(&stdout),
            paths,
            out.status.code().unwrap_or(-1),
        )
    }
}

impl Instance {
    /// Writes `plan` as `name` and runs its command under `sh` with the
    /// stand-ins first on PATH (no stderr check: refusals may say why
    /// there); the exit status and what it printed.
    fn run_plan(&self, plan: &Plan, name: &str) -> (Option<i32>, Outcome) {
        let (text, _) = plan.render().expect("a plan");
        let at = self.base.join(name);
        std::fs::write(&at, &text).expect("the plan");
        let cmd = command(
            "00ff",
            &format!("file://{}", at.display()),
            &hex::encode(Sha256::digest(&text)),
        )
        .expect("a command");
        let out = Command::new("sh")
            .args(["-c", &cmd])
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    self.base.join("bin").display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .output()
            .expect("run sh");
        (
            out.status.code(),
            Outcome::parse(&String::from_utf8_lossy(&out.stdout)),
        )
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
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

fn owner_mode_mtime(path: &Path) -> (u32, u32, u32, i64) {
    let m = std::fs::symlink_metadata(path).expect("restored");
    (m.uid(), m.gid(), m.mode() & 0o7777, m.mtime())
}

/// Asserts what the output says of each (path, outcome).
fn assert_outcomes(out: &Outcome, paths: &[String], expected: &[(&str, &str)]) {
    for (path, outcome) in expected {
        let index = paths.iter().position(|p| p == path);
        let said = out
            .listed
            .iter()
            .find(|(i, _)| Some(*i) == index)
            .map(|(_, what)| what.as_str());
        assert_eq!(said, Some(*outcome), "{path}: {out:?}");
    }
}

#[test]
fn files_are_restored_with_owner_mode_and_time_and_nothing_is_overwritten() {
    let vm = Instance::new();
    std::fs::create_dir_all(vm.disk("etc")).expect("etc");
    std::fs::write(vm.disk("etc/app.conf"), b"changed since").expect("app.conf");
    // Were it run, the name would write to stderr (which must stay empty).
    let hostile = "srv/$(echo pwned >&2)\n-rf *.txt";
    let entries = vec![
        folder("srv", 0o750, NOBODY),
        folder("srv/data", 0o755, NOBODY),
        folder("opt", 0o755, 0),
        vm.file("etc/app.conf", b"from the backup", 0o640, 0),
        vm.file("srv/data/report.bin", &[7u8; 100_000], 0o600, NOBODY),
        vm.file("opt/tool", b"#!/bin/sh\n", 0o4755, 0),
        vm.file(hostile, b"odd", 0o644, NOBODY),
    ];
    let (out, paths, status) = vm.restore(entries.clone(), false);
    assert_eq!(status, 0, "{out:?}");
    assert_eq!(
        (out.restored, out.beside, out.overwritten, out.failed),
        (3, 1, 0, 0),
        "{out:?}"
    );
    assert_outcomes(&out, &paths, &[("etc/app.conf", "beside")]);
    // Kept, and the restored one beside it.
    assert_eq!(
        std::fs::read(vm.disk("etc/app.conf")).unwrap(),
        b"changed since"
    );
    let beside = vm.disk(&format!("etc/app.conf{SUFFIX}~"));
    assert_eq!(std::fs::read(&beside).unwrap(), b"from the backup");
    assert_eq!(owner_mode_mtime(&beside), (0, 0, 0o640, MTIME));
    assert_eq!(
        owner_mode_mtime(&vm.disk("srv/data/report.bin")),
        (NOBODY, NOBODY, 0o600, MTIME)
    );
    assert_eq!(
        std::fs::read(vm.disk("srv/data/report.bin")).unwrap(),
        [7u8; 100_000]
    );
    assert_eq!(
        owner_mode_mtime(&vm.disk("opt/tool")),
        (0, 0, 0o4755, MTIME)
    );
    assert_eq!(
        owner_mode_mtime(&vm.disk("srv")),
        (NOBODY, NOBODY, 0o750, MTIME)
    );
    assert_eq!(std::fs::read(vm.disk(hostile)).unwrap(), b"odd");
    let leftovers: Vec<_> = std::fs::read_dir(vm.disk("etc"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".tender-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Again: everything is there already.
    let (out, _, status) = vm.restore(entries, false);
    assert_eq!(status, 0, "{out:?}");
    assert_eq!(
        (out.unchanged, out.restored, out.beside),
        (4, 0, 0),
        "{out:?}"
    );
    assert!(!vm.disk(&format!("etc/app.conf{SUFFIX}-2~")).exists());
}

#[test]
fn overwriting_is_a_choice() {
    let vm = Instance::new();
    std::fs::create_dir_all(vm.disk("etc")).expect("etc");
    std::fs::write(vm.disk("etc/app.conf"), b"changed since").expect("app.conf");
    let (out, _, status) = vm.restore(
        vec![vm.file("etc/app.conf", b"from the backup", 0o644, 0)],
        true,
    );
    assert_eq!(status, 0, "{out:?}");
    assert_eq!((out.overwritten, out.beside), (1, 0), "{out:?}");
    assert_eq!(
        std::fs::read(vm.disk("etc/app.conf")).unwrap(),
        b"from the backup"
    );
    assert!(!vm.disk(&format!("etc/app.conf{SUFFIX}~")).exists());
}

#[test]
fn a_file_that_does_not_match_its_digest_is_not_written() {
    let vm = Instance::new();
    let mut entry = vm.file("notes.txt", b"the real notes", 0o644, 0);
    if let What::File { sha256, .. } = &mut entry.what {
        *sha256 = hex::encode(Sha256::digest(b"other notes!!!"));
    }
    let (out, paths, status) = vm.restore(vec![entry, vm.file("ok.txt", b"ok", 0o644, 0)], false);
    assert_eq!(status, 1, "{out:?}");
    assert_eq!((out.failed, out.restored), (1, 1), "{out:?}");
    assert_outcomes(&out, &paths, &[("notes.txt", "failed-digest")]);
    assert!(!vm.disk("notes.txt").exists());
}

#[test]
fn a_file_larger_than_the_room_left_is_not_fetched() {
    let vm = Instance::new();
    let mut entry = vm.file("huge.bin", b"small really", 0o644, 0);
    if let What::File { size, .. } = &mut entry.what {
        *size = 1 << 50;
    }
    let (out, paths, status) = vm.restore(vec![entry, vm.file("ok.txt", b"ok", 0o644, 0)], false);
    assert_eq!(status, 1, "{out:?}");
    assert_eq!((out.failed, out.restored), (1, 1), "{out:?}");
    assert_outcomes(&out, &paths, &[("huge.bin", "failed-no-space")]);
    assert!(!vm.disk("huge.bin").exists());
}

#[test]
fn links_on_the_way_and_other_users_folders_are_refused() {
    let vm = Instance::new();
    // A folder on the way is a symbolic link out of the filesystem.
    let outside = vm.base.join("outside");
    std::fs::create_dir_all(&outside).expect("outside");
    std::os::unix::fs::symlink(&outside, vm.disk("var")).expect("a link");
    // A home folder: its user's files are written by that user; another
    // user's file is not written there.
    let home = vm.disk("home/alice");
    std::fs::create_dir_all(&home).expect("home");
    std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).expect("chown");
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).expect("mode");
    let (out, paths, status) = vm.restore(
        vec![
            folder("var/lib", 0o755, 0),
            vm.file("var/data.txt", b"x", 0o644, 0),
            vm.file("home/alice/notes.txt", b"alice's", 0o600, NOBODY),
            vm.file("home/alice/.bashrc", b"root's", 0o644, 0),
        ],
        false,
    );
    assert_eq!(status, 1, "{out:?}");
    assert_outcomes(
        &out,
        &paths,
        &[
            ("var/lib", "refused-link-or-shared"),
            ("var/data.txt", "refused-link-or-shared"),
            ("home/alice/.bashrc", "refused-another-users-folder"),
        ],
    );
    assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
    assert!(!home.join(".bashrc").exists());
    assert_eq!(std::fs::read(home.join("notes.txt")).unwrap(), b"alice's");
    assert_eq!(
        owner_mode_mtime(&home.join("notes.txt")),
        (NOBODY, NOBODY, 0o600, MTIME)
    );
}

#[test]
fn a_filesystem_that_is_not_mounted_is_said_so() {
    let vm = Instance::new();
    let plan = Plan {
        filesystem_uuid: "aaaa-bbbb".into(),
        volume_id: VOLUME.into(),
        suffix: SUFFIX.into(),
        overwrite: false,
        entries: vec![vm.file("a.txt", b"a", 0o644, 0)],
    };
    let (code, outcome) = vm.run_plan(&plan, "plan");
    assert_eq!(code, Some(3));
    assert_eq!(outcome.error.as_deref(), Some("not-mounted aaaa-bbbb"));
    // The filesystem with the plan's UUID, on another volume than the
    // plan's (a volume carrying a copy of the UUID): nothing is written.
    let plan = Plan {
        filesystem_uuid: UUID.into(),
        volume_id: "vol-0fedcba9876543210".into(),
        suffix: SUFFIX.into(),
        overwrite: false,
        entries: vec![vm.file("a.txt", b"a", 0o644, 0)],
    };
    let (code, outcome) = vm.run_plan(&plan, "other-plan");
    assert_eq!(code, Some(3));
    assert!(
        outcome
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("not-the-volume vol-0fedcba9876543210")),
        "{outcome:?}"
    );
    assert!(!vm.disk("a.txt").exists());
    // A plan whose digest does not match is not followed.
    let at = vm.base.join("plan");
    let cmd = command("00ff", &format!("file://{}", at.display()), &"0".repeat(64)).unwrap();
    let out = Command::new("sh").args(["-c", &cmd]).output().unwrap();
    let outcome = Outcome::parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(outcome.error.as_deref(), Some("plan-digest"));
}

#[test]
fn values_that_could_leave_their_quotes_are_refused() {
    assert!(command("00ff", "https://s3/x?a=b'; rm -rf /", &"0".repeat(64)).is_err());
    assert!(command("00ff", "https://s3/x y", &"0".repeat(64)).is_err());
    assert!(command("00FF'", "https://s3/x", &"0".repeat(64)).is_err());
    assert!(command("00ff", "https://s3/x", "nothex").is_err());
    let ok = command(
        "00ff",
        "https://bucket.s3.amazonaws.com/k?X-Amz-Signature=ab%2F",
        &"0".repeat(64),
    )
    .unwrap();
    assert!(ok.len() <= MAX_COMMAND_BYTES);
    let plan = |path: &str, suffix: &str, uuid: &str| {
        Plan {
            filesystem_uuid: uuid.into(),
            volume_id: VOLUME.into(),
            suffix: suffix.into(),
            overwrite: false,
            entries: vec![folder(path, 0o755, 0)],
        }
        .render()
    };
    assert!(plan("a/b", SUFFIX, UUID).is_ok());
    for path in ["", "/etc", "a/../b", "a//b", "./a", "a\0b"] {
        assert!(plan(path, SUFFIX, UUID).is_err(), "{path:?}");
    }
    assert!(plan("a", ".x y", UUID).is_err());
    assert!(plan("a", SUFFIX, "x;y").is_err());
}

#[test]
fn an_output_cut_short_says_so() {
    let out = Outcome::parse("TENDER-FILE beside 3\nTENDER-FILE failed-digest 4\n");
    assert_eq!(
        out.listed,
        [(3, "beside".into()), (4, "failed-digest".into())]
    );
    assert!(out.error.as_deref().unwrap_or("").contains("cut short"));
    let out = Outcome::parse(
        "TENDER-MORE 12\nTENDER-RESULT restored=5 beside=1 overwritten=0 unchanged=2 failed=13\n",
    );
    assert_eq!(
        (
            out.restored,
            out.beside,
            out.unchanged,
            out.failed,
            out.unlisted,
            out.error
        ),
        (5, 1, 2, 13, 12, None)
    );
}

#[test]
fn shared_folders_are_refused_and_copies_beside_lose_set_id_bits() {
    let vm = Instance::new();
    // Group-writable, not sticky: anyone in the group could swap names.
    std::fs::create_dir_all(vm.disk("var/mail")).unwrap();
    std::fs::set_permissions(vm.disk("var/mail"), std::fs::Permissions::from_mode(0o2775)).unwrap();
    // Root's folder inside a user's: the user could move it.
    std::fs::create_dir_all(vm.disk("home/nobody/.cache/pip")).unwrap();
    std::os::unix::fs::chown(vm.disk("home/nobody"), Some(NOBODY), Some(NOBODY)).unwrap();
    // Sticky and world-writable, as /tmp: root writes there.
    std::fs::create_dir_all(vm.disk("tmp")).unwrap();
    std::fs::set_permissions(vm.disk("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    // A file where the restored one goes: a sparse terabyte, which must
    // not be read whole.
    std::fs::create_dir_all(vm.disk("opt")).unwrap();
    std::fs::File::create(vm.disk("opt/tool"))
        .and_then(|f| f.set_len(1 << 40))
        .unwrap();
    let tool = vm.file("opt/tool", b"#!/bin/sh\n", 0o4755, 0);
    let (out, paths, status) = vm.restore(
        vec![
            vm.file("var/mail/root", b"mail", 0o600, 0),
            vm.file("home/nobody/.cache/pip/x", b"x", 0o644, 0),
            vm.file("tmp/scratch", b"scratch", 0o644, NOBODY),
            tool.clone(),
        ],
        false,
    );
    assert_eq!(status, 1, "{out:?}");
    assert_outcomes(
        &out,
        &paths,
        &[
            ("var/mail/root", "refused-link-or-shared"),
            ("home/nobody/.cache/pip/x", "refused-link-or-shared"),
        ],
    );
    assert_eq!(
        owner_mode_mtime(&vm.disk("tmp/scratch")),
        (NOBODY, NOBODY, 0o644, MTIME)
    );
    let beside = vm.disk(&format!("opt/tool{SUFFIX}~"));
    assert_eq!(
        owner_mode_mtime(&beside),
        (0, 0, 0o755, MTIME),
        "no set-user-ID beside"
    );
    assert_eq!(
        std::fs::metadata(vm.disk("opt/tool")).unwrap().len(),
        1 << 40
    );

    // Overwriting after a copy was put beside: the file itself is replaced.
    let (out, _, status) = vm.restore(vec![tool], true);
    assert_eq!(status, 0, "{out:?}");
    assert_eq!(out.overwritten, 1, "{out:?}");
    assert_eq!(
        owner_mode_mtime(&vm.disk("opt/tool")),
        (0, 0, 0o4755, MTIME)
    );
    assert_eq!(std::fs::read(vm.disk("opt/tool")).unwrap(), b"#!/bin/sh\n");
}
