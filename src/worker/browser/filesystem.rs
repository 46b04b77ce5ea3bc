//! What the browser reads files through: the [`Filesystem`] trait, with one
//! implementation per kind of filesystem an EC2 volume holds (ext2/3/4
//! through `ext4-view`, XFS and FAT through Tender's own readers in
//! `super::xfs` and `super::fat`), and the partition view that puts
//! several of them under one root.
//!
//! Every implementation reads attacker-controllable data (whoever could
//! write the source disk chose its bytes): offsets and counts are checked
//! before use, loops are bounded, and nothing panics or allocates by a
//! size read from disk without a cap.

use std::cell::Cell;
use std::io::Read;

use ext4_view::{Ext4, Ext4Read};

use super::partitions::{Partition, ReadAt};

/// What a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Dir,
    File,
    Symlink,
    /// Devices, pipes, sockets; a partition without a filesystem Tender
    /// reads.
    Other,
}

/// What the browser shows and copies of a file or folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Meta {
    pub kind: Kind,
    pub size: u64,
    /// Permission bits (`0o7777`). FAT has none: 0o644 for files, 0o755
    /// for folders.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Last change of the contents, seconds since the Unix epoch.
    pub mtime: i64,
    /// For a row that is not a plain file or folder (a partition): what it
    /// holds, for people.
    pub note: Option<String>,
}

impl Meta {
    /// Something that has no inode of its own (the root of a volume's
    /// partitions or of a FAT, a partition's row, an entry that cannot be
    /// read): root's, no time, `note` for people.
    pub(super) fn synthetic(kind: Kind, size: u64, note: Option<String>) -> Self {
        Self {
            kind,
            size,
            mode: if kind == Kind::Dir { 0o755 } else { 0 },
            uid: 0,
            gid: 0,
            mtime: 0,
            note,
        }
    }

    pub(super) fn is_dir(&self) -> bool {
        self.kind == Kind::Dir
    }

    pub(super) fn is_file(&self) -> bool {
        self.kind == Kind::File
    }
}

/// A filesystem read-only, by absolute paths without `.`, `..` or a
/// trailing slash (`super::disk::normalize`). Errors are messages for
/// people. Blocking: a read may wait on S3.
pub(super) trait Filesystem {
    fn metadata(&self, path: &str) -> Result<Meta, String>;
    /// A folder's entries without `.` and `..`, in no particular order.
    fn read_dir(&self, path: &str) -> Result<Vec<(String, Meta)>, String>;
    /// A regular file's contents.
    fn open(&self, path: &str) -> Result<Box<dyn Read + '_>, String>;

    /// What people should know before trusting what they see at `path`
    /// (an XFS log with changes not yet in place), shown on its page.
    fn notice(&self, _path: &str) -> Option<String> {
        None
    }

    /// A regular file's contents, whole; no more than `limit` bytes.
    fn read_file(&self, path: &str, limit: u64) -> Result<Vec<u8>, String> {
        let mut data = Vec::new();
        self.open(path)?
            .take(limit.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|e| format!("{path}: {e}"))?;
        if data.len() as u64 > limit {
            return Err(format!("{path} is larger than {limit} bytes"));
        }
        Ok(data)
    }
}

/// Metadata (inodes, FAT entries, folders, btree and log blocks) one
/// opened filesystem may read: one request's worth, since each request
/// opens it anew. Enough to list a folder of a million entries; a crafted
/// image that loops runs out of it instead of running for days.
pub(super) struct Budget(Cell<u64>);

impl Budget {
    const BYTES: u64 = 2 << 30;
    /// The error once it is spent.
    pub(super) const SPENT: &str =
        "the filesystem's metadata is too large or loops: this request read more than 2 GiB of it";

    pub(super) fn new() -> Self {
        Self(Cell::new(Self::BYTES))
    }

    /// Counts `len` bytes against it.
    pub(super) fn spend(&self, len: u64) -> Result<(), String> {
        let left = self.0.get();
        if left < len {
            return Err(Self::SPENT.into());
        }
        self.0.set(left - len);
        Ok(())
    }
}

/// One partition of a volume as a byte device of its own: reads are
/// clamped to it.
#[derive(Clone)]
pub(super) struct Slice<D> {
    pub disk: D,
    pub start: u64,
    pub size: u64,
}

impl<D> Slice<D> {
    pub(super) fn new(disk: D, p: &Partition) -> Self {
        Self {
            disk,
            start: p.start,
            size: p.size,
        }
    }
}

impl<D: ReadAt> ReadAt for Slice<D> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        let end = offset.saturating_add(buf.len() as u64);
        if end > self.size {
            return Err(format!(
                "read past the end of the partition ({end} > {})",
                self.size
            ));
        }
        self.disk.read_at(self.start + offset, buf)
    }

    fn size(&self) -> u64 {
        self.size
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ReadError(String);

impl<D: ReadAt + 'static> Ext4Read for Slice<D> {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.read_at(start_byte, dst)
            .map_err(|e| Box::new(ReadError(e)) as Box<dyn std::error::Error + Send + Sync>)
    }
}

/// ext2/3/4, read by `ext4-view`.
pub(super) struct Ext4Fs(pub Ext4);

impl Ext4Fs {
    pub(super) fn load<D: ReadAt + 'static>(slice: Slice<D>) -> Result<Self, String> {
        Ext4::load(Box::new(slice))
            .map(Self)
            .map_err(|e| e.to_string())
    }
}

fn ext4_meta(m: &ext4_view::Metadata) -> Meta {
    let t = m.file_type();
    Meta {
        kind: if t.is_dir() {
            Kind::Dir
        } else if t.is_regular_file() {
            Kind::File
        } else if t.is_symlink() {
            Kind::Symlink
        } else {
            Kind::Other
        },
        size: m.len(),
        mode: u32::from(m.mode()),
        uid: m.uid(),
        gid: m.gid(),
        mtime: m.modified().seconds(),
        note: None,
    }
}

impl Filesystem for Ext4Fs {
    fn metadata(&self, path: &str) -> Result<Meta, String> {
        self.0
            .symlink_metadata(path)
            .map(|m| ext4_meta(&m))
            .map_err(|e| e.to_string())
    }

    fn read_dir(&self, path: &str) -> Result<Vec<(String, Meta)>, String> {
        let mut out = Vec::new();
        for entry in self.0.read_dir(path).map_err(|e| e.to_string())? {
            let entry = entry.map_err(|e| e.to_string())?;
            let name = entry.file_name().display().to_string();
            if name == "." || name == ".." {
                continue;
            }
            let meta = entry.metadata().map_err(|e| e.to_string())?;
            out.push((name, ext4_meta(&meta)));
        }
        Ok(out)
    }

    fn open(&self, path: &str) -> Result<Box<dyn Read + '_>, String> {
        let meta = self.metadata(path)?;
        if !meta.is_file() {
            return Err(format!("{path} is not a regular file"));
        }
        let file = self.0.open(path).map_err(|e| e.to_string())?;
        Ok(Box::new(file))
    }
}

/// What `Volume::open` returns reads as what it holds.
impl<F: Filesystem + ?Sized> Filesystem for Box<F> {
    fn metadata(&self, path: &str) -> Result<Meta, String> {
        self.as_ref().metadata(path)
    }

    fn read_dir(&self, path: &str) -> Result<Vec<(String, Meta)>, String> {
        self.as_ref().read_dir(path)
    }

    fn open(&self, path: &str) -> Result<Box<dyn Read + '_>, String> {
        self.as_ref().open(path)
    }

    fn notice(&self, path: &str) -> Option<String> {
        self.as_ref().notice(path)
    }
}
