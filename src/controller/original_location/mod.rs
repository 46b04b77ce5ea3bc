//! Restoring files onto the running source instance through Systems
//! Manager Run Command (#17; the plan is
//! docs/design/restore-to-original-location.md). This part is what runs
//! there: the plan the command follows ([`Plan`]), the command itself
//! (`restore.sh`, [`command`]) and reading what it did ([`Outcome`]).
//!
//! Everything put into the command or the plan comes from a restore point
//! (whoever wrote the source disk chose its names) or from presigning, and
//! runs as root on a production instance: values are checked against
//! narrow character sets before they are placed, paths travel base64, and
//! the plan is fetched by URL and checked against its SHA-256, so the
//! command stays small whatever is restored.

mod flow;
#[cfg(test)]
mod tests;

pub use flow::{ACCEPTS_TAG, RECHECK, advance, in_flight, staged, task};

use base64::Engine;

/// The script Run Command runs (`AWS-RunShellScript`).
const SCRIPT: &str = include_str!("restore.sh");
/// The largest command sent (AWS documents 64 KB for a whole document; the
/// command is kept well inside it).
pub const MAX_COMMAND_BYTES: usize = 16 << 10;
/// The longest path a plan carries (Linux's `PATH_MAX`).
const MAX_PATH_BYTES: usize = 4096;

/// What an entry of a plan is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum What {
    Folder,
    /// A file, fetched from `url` and written only when `size` and
    /// `sha256` (lower-case hex) match.
    File {
        sha256: String,
        size: u64,
        url: String,
    },
}

/// A folder or file to restore, with what it had in the restore point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the filesystem's root, `/`-separated.
    pub path: String,
    /// Permission bits, `0o7777` at most.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the Unix epoch.
    pub mtime: i64,
    pub what: What,
}

/// What one command restores, onto one filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The filesystem's UUID as `blkid` prints it (where the instance has
    /// it mounted is looked up there).
    pub filesystem_uuid: String,
    /// The EBS volume that filesystem must be on (`vol-…`; the instance
    /// names it in the NVMe disk's serial): another volume attached with
    /// the same UUID is never written to.
    pub volume_id: String,
    /// Appended to a file's name when the name is taken and not
    /// overwritten (`.restored-<job>`).
    pub suffix: String,
    pub overwrite: bool,
    pub entries: Vec<Entry>,
}

fn only(value: &str, what: &str, allowed: impl Fn(char) -> bool, max: usize) -> Result<(), String> {
    if value.is_empty() || value.len() > max || !value.chars().all(allowed) {
        return Err(format!("{what} {value:?} cannot be put into a command"));
    }
    Ok(())
}

fn hex(c: char) -> bool {
    c.is_ascii_digit() || ('a'..='f').contains(&c)
}

/// A presigned URL: its characters cannot leave a shell's single quotes or
/// split a plan's line.
fn url_ok(url: &str) -> Result<(), String> {
    only(
        url,
        "the URL",
        |c| c.is_ascii_alphanumeric() || "%&=._~:/?+-".contains(c),
        8192,
    )?;
    if !url.contains("://") {
        return Err(format!("{url:?} is not a URL"));
    }
    Ok(())
}

/// A path relative to the filesystem's root, without `.`, `..` or empty
/// parts.
fn path_ok(path: &str) -> Result<(), String> {
    let bad = path.is_empty()
        || path.len() > MAX_PATH_BYTES
        || path.contains('\0')
        || path
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..");
    if bad {
        return Err(format!("the path {path:?} cannot be restored"));
    }
    Ok(())
}

impl Plan {
    /// The plan as `restore.sh` reads it, and the path of each entry by
    /// its index there: folders first, each before what it holds.
    pub fn render(&self) -> Result<(String, Vec<String>), String> {
        only(
            &self.filesystem_uuid,
            "the filesystem UUID",
            |c| c.is_ascii_hexdigit() || c == '-',
            64,
        )?;
        let volume_ok = self
            .volume_id
            .strip_prefix("vol-")
            .is_some_and(|v| !v.is_empty() && v.len() <= 32 && v.chars().all(hex));
        if !volume_ok {
            return Err(format!("{:?} is not an EBS volume ID", self.volume_id));
        }
        only(
            &self.suffix,
            "the suffix",
            |c| c.is_ascii_alphanumeric() || "._-".contains(c),
            100,
        )?;
        let mut entries: Vec<&Entry> = self.entries.iter().collect();
        entries.sort_by(|a, b| {
            let file = |e: &Entry| matches!(e.what, What::File { .. });
            (file(a), &a.path).cmp(&(file(b), &b.path))
        });
        let mut out = format!(
            "TENDER-PLAN 1\nfs {}\nvolume {}\nsuffix {}\noverwrite {}\n",
            self.filesystem_uuid,
            self.volume_id,
            self.suffix,
            u8::from(self.overwrite)
        );
        let mut paths = Vec::new();
        for (index, e) in entries.iter().enumerate() {
            path_ok(&e.path)?;
            if e.mode > 0o7777 {
                return Err(format!("{}: mode {:o} is not a permission", e.path, e.mode));
            }
            let path = base64::engine::general_purpose::STANDARD.encode(e.path.as_bytes());
            let (mode, uid, gid, mtime) = (e.mode, e.uid, e.gid, e.mtime);
            match &e.what {
                What::Folder => {
                    out.push_str(&format!("d {index} {mode:o} {uid} {gid} {mtime} {path}\n"))
                }
                What::File { sha256, size, url } => {
                    if sha256.len() != 64 || !sha256.chars().all(hex) {
                        return Err(format!("{}: {sha256:?} is not a SHA-256", e.path));
                    }
                    url_ok(url)?;
                    out.push_str(&format!(
                        "f {index} {sha256} {size} {mode:o} {uid} {gid} {mtime} {url} {path}\n"
                    ));
                }
            }
            paths.push(e.path.clone());
        }
        out.push_str(&format!("end {}\n", entries.len()));
        Ok((out, paths))
    }
}

/// The command Run Command runs: `restore.sh` for request `request`
/// (lower-case hex), fetching the plan from `plan_url` and checking it
/// against `plan_sha256`.
pub fn command(request: &str, plan_url: &str, plan_sha256: &str) -> Result<String, String> {
    only(request, "the request", hex, 64)?;
    url_ok(plan_url)?;
    if plan_sha256.len() != 64 || !plan_sha256.chars().all(hex) {
        return Err(format!("{plan_sha256:?} is not a SHA-256"));
    }
    let command = SCRIPT
        .replace("@REQUEST@", request)
        .replace("@PLAN_URL@", plan_url)
        .replace("@PLAN_SHA256@", plan_sha256);
    if command.len() > MAX_COMMAND_BYTES {
        return Err(format!(
            "the command is {} bytes, more than {MAX_COMMAND_BYTES}",
            command.len()
        ));
    }
    Ok(command)
}

/// Stand-ins for an instance's `findmnt`, `lsblk` and `stat -f` (tests): the
/// filesystem with UUID `uuid` is mounted at `root` from partition 1 of
/// an NVMe disk whose serial names EBS volume `volume_id`. Written into
/// `bin`, which goes first on the command's PATH.
#[doc(hidden)]
pub fn stand_ins(
    bin: &std::path::Path,
    root: &std::path::Path,
    uuid: &str,
    volume_id: &str,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let serial = volume_id.replace('-', "");
    let tools = [
        (
            "findmnt",
            format!(
                "#!/bin/sh\nfor a; do [ \"$a\" = UUID={uuid} ] && {{ echo '{} / /dev/nvme0n1p1'; exit 0; }}; done\nexit 1\n",
                root.display()
            ),
        ),
        (
            "lsblk",
            format!(
                "#!/bin/sh\ncase \"$*\" in\n*PKNAME*/dev/nvme0n1p1) echo nvme0n1 ;;\n*SERIAL*/dev/nvme0n1) echo '{serial}' ;;\nesac\n"
            ),
        ),
        // The instance's filesystem has room (4 GB free of 4 GB), whatever
        // the disk of the machine the test runs on has left.
        (
            "stat",
            "#!/bin/sh\n[ \"$1\" = -f ] && { echo '1000000 1000000 4096'; exit 0; }\nexec /usr/bin/stat \"$@\"\n".to_string(),
        ),
    ];
    std::fs::create_dir_all(bin)?;
    for (name, text) in tools {
        std::fs::write(bin.join(name), text)?;
        std::fs::set_permissions(bin.join(name), std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// What a command did, from its output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub restored: u64,
    /// Written beside a file that was kept.
    pub beside: u64,
    pub overwritten: u64,
    /// Already there, the same (a retry).
    pub unchanged: u64,
    pub failed: u64,
    /// Entries that were not simply restored: (index in the plan, what
    /// happened), as many as the output holds.
    pub listed: Vec<(usize, String)>,
    /// Entries not listed for want of room.
    pub unlisted: u64,
    /// Why nothing was done, or why the output says too little.
    pub error: Option<String>,
}

impl Outcome {
    /// Reads `restore.sh`'s output (as much as Run Command kept of it).
    pub fn parse(stdout: &str) -> Self {
        let mut out = Self::default();
        let mut finished = false;
        for line in stdout.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("TENDER-FILE") => {
                    if let (Some(what), Some(Ok(index))) =
                        (words.next(), words.next().map(str::parse::<usize>))
                    {
                        out.listed.push((index, what.to_string()));
                    }
                }
                Some("TENDER-MORE") => {
                    out.unlisted = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                }
                Some("TENDER-ERROR") => {
                    out.error = Some(line["TENDER-ERROR".len()..].trim().to_string());
                    finished = true;
                }
                Some("TENDER-RESULT") => {
                    for word in words {
                        let Some((key, value)) = word.split_once('=') else {
                            continue;
                        };
                        let value = value.parse().unwrap_or(0);
                        match key {
                            "restored" => out.restored = value,
                            "beside" => out.beside = value,
                            "overwritten" => out.overwritten = value,
                            "unchanged" => out.unchanged = value,
                            "failed" => out.failed = value,
                            _ => {}
                        }
                    }
                    finished = true;
                }
                _ => {}
            }
        }
        if !finished {
            out.error = Some(
                "the command's output ends before its result: it was stopped or its output cut short"
                    .into(),
            );
        }
        out
    }
}
