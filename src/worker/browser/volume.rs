//! A volume as the browser presents it: when it has no partition table,
//! its filesystem; when it has one, a root folder with a row per
//! partition (`partition-<N>`, as `lsblk` numbers them), each showing its
//! filesystem, label and size, and opening into that filesystem. A
//! partition whose filesystem Tender cannot read is shown with its type
//! and why, never as an empty folder.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::io::Read;

use super::fat::Fat;
use super::filesystem::{Ext4Fs, Filesystem, Kind, Meta, Slice};
use super::ntfs::Ntfs;
use super::partitions::{self, Partition, ReadAt, Scheme};
use super::xfs::Xfs;

/// A partition and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Found {
    pub partition: Partition,
    /// The filesystem its magic numbers name ([`filesystem_in`]).
    pub fs: &'static str,
    /// The filesystem's label, else the GPT partition's name.
    pub label: Option<String>,
    /// What people should know before trusting what they see in it.
    pub warning: Option<String>,
    /// The filesystem's UUID as `blkid` prints it (what finds it where the
    /// source instance mounts it).
    pub uuid: Option<String>,
}

/// XFS logs checked on one volume at most.
const MAX_LOGS_CHECKED: usize = 16;

/// The warning for an XFS whose log could not be told clean.
pub(super) const XFS_LOG_UNKNOWN: &str = "Tender could not tell whether this XFS's log held changes not yet in place when the snapshot was taken, and file-level recovery does not replay it: the newest changes may be missing or older here";

/// The warning for an XFS whose log holds changes not yet in place.
pub(super) const XFS_LOG_PENDING: &str = "this XFS's log was not empty when the snapshot was taken (the instance was busy), and file-level recovery does not replay it: changes made in the moments before the snapshot may be missing or older here; a volume restore, once mounted, has them";

impl Found {
    /// Why Tender cannot show its files, when it cannot.
    pub(super) fn unreadable(&self) -> Option<&'static str> {
        match self.fs {
            "ext2/3/4" | "XFS" | "FAT" | "NTFS" => None,
            "exFAT" => Some("file-level recovery does not read this filesystem yet"),
            "LVM physical volume" => Some(
                "file-level recovery does not read LVM: restore the volume with a RestoreJob and attach it to an instance",
            ),
            "Linux swap" => Some("swap space holds no files"),
            "no filesystem" => Some("it holds no filesystem (a BIOS boot partition, or unused)"),
            _ => Some("it holds no filesystem Tender recognizes"),
        }
    }

    /// The row's note: filesystem, label, size, and why it cannot be read.
    fn note(&self) -> String {
        let mut note = self.fs.to_string();
        if let Some(label) = &self.label {
            note.push_str(&format!(" · {label}"));
        }
        note.push_str(&format!(" · {}", size(self.partition.size)));
        if let Some(why) = self.unreadable() {
            note.push_str(&format!(" · {why}"));
        }
        if let Some(warning) = &self.warning {
            note.push_str(&format!(" · {warning}"));
        }
        note
    }
}

/// `bytes` as people read it.
fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30)),
        b => format!("{} MiB", b >> 20),
    }
}

/// A volume's layout and what each partition holds.
#[derive(Clone, Debug)]
pub(super) struct Survey {
    pub scheme: Scheme,
    pub parts: Vec<Found>,
}

/// Reads the partition table and the start of every partition.
pub(super) fn survey(disk: &dyn ReadAt) -> Result<Survey, String> {
    let layout = partitions::read(disk)
        .map_err(|e| format!("the restore point's volume cannot be read: {e}"))?;
    let mut parts = Vec::new();
    // Logs checked, by where their XFS is (a crafted table can name one
    // filesystem thousands of times).
    let mut logs: HashMap<(u64, u64), Option<String>> = HashMap::new();
    for p in layout.partitions {
        let mut head = vec![0u8; 4096.min(p.size) as usize];
        disk.read_at(p.start, &mut head).map_err(|e| {
            format!(
                "partition {} of the restore point's volume cannot be read: {e}",
                p.number
            )
        })?;
        let fs = filesystem_in(&head);
        let label = label_in(&head, fs)
            .or_else(|| match fs {
                // NTFS keeps its label in a file of its own.
                "NTFS" => Ntfs::load(Slice::new(disk, &p)).ok()?.label(),
                _ => None,
            })
            .or_else(|| p.name.clone().filter(|n| !n.is_empty()));
        let warning = match fs {
            "XFS" if logs.len() < MAX_LOGS_CHECKED || logs.contains_key(&(p.start, p.size)) => logs
                .entry((p.start, p.size))
                .or_insert_with(|| xfs_warning(disk, &p))
                .clone(),
            "XFS" => Some(XFS_LOG_UNKNOWN.to_string()),
            _ => None,
        };
        parts.push(Found {
            partition: p,
            fs,
            label,
            warning,
            uuid: uuid_in(&head, fs),
        });
    }
    Ok(Survey {
        scheme: layout.scheme,
        parts,
    })
}

/// The warning for partition `p`'s XFS: changes only in its log, or a log
/// that cannot be told clean (kept for the session, like the survey). A
/// filesystem that does not load is left for opening it to report.
fn xfs_warning(disk: &dyn ReadAt, p: &Partition) -> Option<String> {
    let xfs = Xfs::load(Slice::new(disk, p)).ok()?;
    match xfs.log_pending() {
        Ok(true) => Some(XFS_LOG_PENDING.to_string()),
        Ok(false) => None,
        Err(e) => {
            tracing::warn!(partition = p.number, error = %e, "cannot tell whether the XFS log is clean");
            Some(format!("{XFS_LOG_UNKNOWN} ({e})"))
        }
    }
}

/// The filesystem whose magic numbers `head` (a partition's first 4 KiB)
/// holds.
pub(super) fn filesystem_in(head: &[u8]) -> &'static str {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    if at(1080, &[0x53, 0xEF]) {
        "ext2/3/4"
    } else if at(0, b"XFSB") {
        "XFS"
    } else if at(3, b"NTFS    ") {
        "NTFS"
    } else if at(82, b"FAT32   ") || at(54, b"FAT12   ") || at(54, b"FAT16   ") {
        "FAT"
    } else if at(3, b"EXFAT   ") {
        "exFAT"
    } else if at(512, b"LABELONE") || at(24, b"LVM2 001") {
        "LVM physical volume"
    } else if at(4086, b"SWAPSPACE2") {
        "Linux swap"
    } else if head.iter().all(|b| *b == 0) {
        "no filesystem"
    } else {
        "unknown"
    }
}

/// The label a filesystem keeps in its first 4 KiB, if it has one.
fn label_in(head: &[u8], fs: &str) -> Option<String> {
    let (at, len) = match fs {
        "ext2/3/4" => (1024 + 120, 16),
        "XFS" => (108, 12),
        "FAT" if head.get(82..87) == Some(b"FAT32") => (71, 11),
        "FAT" => (43, 11),
        _ => return None,
    };
    let raw = head.get(at..at + len)?;
    let end = raw.iter().position(|b| *b == 0).unwrap_or(len);
    let label: String = String::from_utf8_lossy(&raw[..end])
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let label = label.trim();
    (!label.is_empty() && label != "NO NAME").then(|| label.to_string())
}

/// The UUID a filesystem keeps in its first 4 KiB, formatted as `blkid`
/// prints it (and `findmnt -S UUID=` finds it): ext4 and XFS as 8-4-4-4-12
/// lower-case hex, FAT's serial as `ABCD-1234`, NTFS's as 16 upper-case hex
/// digits.
pub(super) fn uuid_in(head: &[u8], fs: &str) -> Option<String> {
    let bytes = |at: usize, len: usize| head.get(at..at + len);
    let rfc4122 = |b: &[u8]| {
        let h = hex::encode(b);
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    };
    let serial = |b: &[u8]| {
        b.iter()
            .rev()
            .map(|x| format!("{x:02X}"))
            .collect::<String>()
    };
    let uuid = match fs {
        "ext2/3/4" => rfc4122(bytes(1024 + 104, 16)?),
        "XFS" => rfc4122(bytes(32, 16)?),
        "NTFS" => serial(bytes(0x48, 8)?),
        "FAT" => {
            let at = if head.get(82..87) == Some(b"FAT32") {
                67
            } else {
                39
            };
            let s = serial(bytes(at, 4)?);
            format!("{}-{}", &s[0..4], &s[4..8])
        }
        _ => return None,
    };
    (!uuid.chars().all(|c| c == '0' || c == '-')).then_some(uuid)
}

/// The filesystem on one partition, when Tender reads it.
fn open_partition<D: ReadAt + Clone + 'static>(
    disk: &D,
    found: &Found,
) -> Result<Box<dyn Filesystem>, String> {
    let p = &found.partition;
    let slice = Slice::new(disk.clone(), p);
    let opened: Result<Box<dyn Filesystem>, String> = match found.fs {
        "ext2/3/4" => Ext4Fs::load(slice).map(|f| Box::new(f) as Box<dyn Filesystem>),
        "XFS" => Xfs::load(slice)
            .map(|f| Box::new(f.with_notice(found.warning.clone())) as Box<dyn Filesystem>),
        "FAT" => Fat::load(slice).map(|f| Box::new(f) as Box<dyn Filesystem>),
        "NTFS" => Ntfs::load(slice).map(|f| Box::new(f) as Box<dyn Filesystem>),
        fs => Err(format!(
            "{fs}: {}",
            found.unreadable().unwrap_or("not readable")
        )),
    };
    opened.map_err(|e| match p.kind.as_str() {
        "whole volume" => format!("the restore point's volume is not readable: {e}"),
        _ => format!(
            "partition {} of the restore point's volume is not readable: {e}",
            p.number
        ),
    })
}

/// The filesystem `path` (as the session shows it) is in: the folder its
/// root is shown at (`/`, or `/partition-<N>` on a partitioned volume) and
/// what the survey found there.
pub(super) fn filesystem_of<'a>(
    survey: &'a Survey,
    path: &str,
) -> Result<(String, &'a Found), String> {
    if survey.scheme == Scheme::Whole {
        let found = survey
            .parts
            .first()
            .ok_or("the volume holds no filesystem")?;
        return Ok(("/".into(), found));
    }
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let found = first
        .strip_prefix("partition-")
        .and_then(|n| n.parse::<u32>().ok())
        .and_then(|n| survey.parts.iter().find(|f| f.partition.number == n))
        .ok_or_else(|| format!("{path} is in no partition: select files inside one"))?;
    Ok((format!("/{first}"), found))
}

/// What a session browses on `disk`: its filesystem, or its partitions.
/// An error when nothing on it can be read, naming what each partition
/// holds.
pub(super) fn open_volume<D: ReadAt + Clone + 'static>(
    disk: &D,
    survey: &Survey,
) -> Result<Box<dyn Filesystem>, String> {
    if survey.scheme == Scheme::Whole
        && let Some(found) = survey.parts.first()
    {
        return open_partition(disk, found);
    }
    if survey.parts.iter().all(|f| f.unreadable().is_some()) {
        let what: Vec<String> = survey
            .parts
            .iter()
            .map(|f| {
                format!(
                    "partition {} ({}, {} MiB) holds {}",
                    f.partition.number,
                    f.partition.kind,
                    f.partition.size >> 20,
                    f.fs
                )
            })
            .collect();
        return Err(format!(
            "the restore point's volume holds no filesystem file-level recovery reads (ext2/3/4, XFS, NTFS, FAT): {}",
            what.join("; ")
        ));
    }
    Ok(Box::new(Partitioned {
        disk: disk.clone(),
        parts: survey.parts.clone(),
        opened: survey.parts.iter().map(|_| OnceCell::new()).collect(),
    }))
}

/// A partitioned volume: `/partition-<N>/...` is partition N's
/// filesystem.
struct Partitioned<D> {
    disk: D,
    parts: Vec<Found>,
    /// Each partition's filesystem, opened at its first use.
    opened: Vec<OnceCell<Result<Box<dyn Filesystem>, String>>>,
}

impl<D: ReadAt + Clone + 'static> Partitioned<D> {
    /// A partition's row: a folder when its filesystem opens, else what
    /// it holds and why it cannot be read (so that a folder archive of the
    /// root leaves it out instead of failing).
    fn row(&self, i: usize) -> (String, Meta) {
        let found = &self.parts[i];
        let mut note = found.note();
        let readable = found.unreadable().is_none()
            && match self.fs(i) {
                Ok(_) => true,
                Err(e) => {
                    note.push_str(&format!(" · {e}"));
                    false
                }
            };
        (
            format!("partition-{}", found.partition.number),
            Meta::synthetic(
                if readable { Kind::Dir } else { Kind::Other },
                found.partition.size,
                Some(note),
            ),
        )
    }

    /// The partition `path` is in, and the path inside it; `None` for
    /// the root.
    fn route(&self, path: &str) -> Result<Option<(usize, String)>, String> {
        let rest = path.trim_start_matches('/');
        if rest.is_empty() {
            return Ok(None);
        }
        let (first, inner) = rest.split_once('/').unwrap_or((rest, ""));
        let i = self
            .parts
            .iter()
            .position(|f| format!("partition-{}", f.partition.number) == first)
            .ok_or_else(|| format!("{path}: not found"))?;
        Ok(Some((i, format!("/{inner}"))))
    }

    fn fs(&self, i: usize) -> Result<&dyn Filesystem, String> {
        self.opened[i]
            .get_or_init(|| open_partition(&self.disk, &self.parts[i]))
            .as_ref()
            .map(|f| f.as_ref())
            .map_err(Clone::clone)
    }
}

impl<D: ReadAt + Clone + 'static> Filesystem for Partitioned<D> {
    fn metadata(&self, path: &str) -> Result<Meta, String> {
        match self.route(path)? {
            None => Ok(Meta::synthetic(Kind::Dir, 0, None)),
            Some((i, inner)) if inner == "/" => Ok(self.row(i).1),
            Some((i, inner)) => self.fs(i)?.metadata(&inner),
        }
    }

    fn read_dir(&self, path: &str) -> Result<Vec<(String, Meta)>, String> {
        match self.route(path)? {
            None => Ok((0..self.parts.len()).map(|i| self.row(i)).collect()),
            Some((i, inner)) => self.fs(i)?.read_dir(&inner),
        }
    }

    fn open(&self, path: &str) -> Result<Box<dyn Read + '_>, String> {
        match self.route(path)? {
            None => Err(format!("{path} is not a regular file")),
            Some((i, inner)) => self.fs(i)?.open(&inner),
        }
    }

    fn notice(&self, path: &str) -> Option<String> {
        let (i, _) = self.route(path).ok()??;
        self.parts[i].warning.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `blkid`'s UUID for `image`.
    fn blkid(image: &[u8]) -> String {
        let dir = super::super::disk::testing::scratch("blkid");
        let at = dir.join("fs.img");
        std::fs::write(&at, image).expect("the image");
        let out = std::process::Command::new(super::super::disk::testing::sbin("blkid"))
            .args(["-p", "-o", "value", "-s", "UUID"])
            .arg(&at)
            .output()
            .expect("run blkid (Debian package util-linux)");
        std::fs::remove_dir_all(&dir).expect("remove the scratch folder");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    #[test]
    fn filesystem_uuids_are_read_as_blkid_prints_them() {
        let images = [
            (
                "ext2/3/4",
                super::super::disk::testing::image(&[("a", b"a", 0o644)]).0,
            ),
            ("XFS", super::super::xfs::tests::image(&[]).0),
            ("FAT", super::super::fat::tests::image(40, &["-F", "32"]).0),
            ("FAT", super::super::fat::tests::image(16, &["-F", "16"]).0),
            ("NTFS", super::super::ntfs::tests::image(48, 4096).0),
        ];
        for (fs, image) in images {
            assert_eq!(filesystem_in(&image[..4096]), fs);
            let expected = blkid(&image);
            assert!(
                !expected.is_empty(),
                "blkid found no UUID on the {fs} image"
            );
            assert_eq!(
                uuid_in(&image[..4096], fs).as_deref(),
                Some(expected.as_str()),
                "{fs}"
            );
        }
        assert_eq!(uuid_in(&[0u8; 4096], "XFS"), None);
        assert_eq!(uuid_in(&[0u8; 100], "ext2/3/4"), None);
    }
}
