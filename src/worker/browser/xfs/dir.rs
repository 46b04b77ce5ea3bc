//! XFS directories (version 2 and 3). A small directory is "short form",
//! its entries inline in the inode; a larger one keeps its entries in
//! data blocks mapped below the 32 GiB logical offset (block, leaf and
//! node forms alike; their hash indexes live above it and are not needed
//! to list or to look a name up by reading the entries).

use super::{Inode, Xfs, be16, be32, be64};
use crate::worker::browser::partitions::ReadAt;

/// The logical byte where a directory's hash index starts.
const LEAF_OFFSET: u64 = 32 << 30;
/// The most entries a directory may have before the reader gives up.
const MAX_ENTRIES: usize = 1 << 20;
/// The most bytes of names a directory may have (a million entries of
/// 64 bytes; 255-byte names in every entry would be four times that).
const MAX_NAME_BYTES: usize = 64 << 20;
/// Inode numbers have 56 bits.
const MAX_INO: u64 = (1 << 56) - 1;

/// One name in a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    pub name: Vec<u8>,
    pub ino: u64,
}

impl<D: ReadAt> Xfs<D> {
    /// The directory's entries without `.` and `..`, in on-disk order.
    pub(super) fn entries(&self, dir: &Inode) -> Result<Vec<Entry>, String> {
        let mut out = Vec::new();
        match dir.format {
            1 => self.short_form(dir, &mut out)?,
            2 | 3 => self.blocks(dir, &mut out)?,
            f => return Err(format!("directory inode {} has format {f}", dir.ino)),
        }
        // The kernel refuses names with '/' or NUL; so does Tender, so that
        // no name becomes two path components or climbs out of a folder.
        // A name shown twice (a crafted directory, or two names that are
        // not UTF-8 and show alike) is listed once: the one a lookup finds.
        let mut shown = std::collections::HashSet::new();
        out.retain(|e| {
            e.name != b"."
                && e.name != b".."
                && !e.name.iter().any(|c| *c == b'/' || *c == 0)
                && shown.insert(String::from_utf8_lossy(&e.name).into_owned())
        });
        Ok(out)
    }

    fn short_form(&self, dir: &Inode, out: &mut Vec<Entry>) -> Result<(), String> {
        let f = &dir.fork;
        let damaged = || format!("directory inode {} is damaged", dir.ino);
        if f.len() < 6 {
            return Err(damaged());
        }
        let (count, wide) = (usize::from(f[0]), f[1] != 0);
        let ino_len = if wide { 8 } else { 4 };
        let mut p = 2 + ino_len;
        let ftype = usize::from(self.sb.ftype);
        for _ in 0..count {
            // namelen, a 2-byte offset, the name, [file type], the inode.
            let name_len = usize::from(*f.get(p).ok_or_else(damaged)?);
            let name_at = p + 3;
            let ino_at = name_at + name_len + ftype;
            let end = ino_at + ino_len;
            if name_len == 0 || end > f.len() {
                return Err(damaged());
            }
            let ino = if wide {
                be64(f, ino_at) & MAX_INO
            } else {
                u64::from(be32(f, ino_at))
            };
            out.push(Entry {
                name: f[name_at..name_at + name_len].to_vec(),
                ino,
            });
            p = end;
        }
        Ok(())
    }

    /// Entries from every data block of a directory in extents or btree
    /// form.
    fn blocks(&self, dir: &Inode, out: &mut Vec<Entry>) -> Result<(), String> {
        let sb = &self.sb;
        let extents = self.extents(dir)?;
        let db = sb.dir_block as u64;
        // Every directory block that has a mapped block below the index.
        let mut blocks: Vec<u64> = Vec::new();
        for e in &extents {
            let first = (e.offset << sb.block_log) / db;
            let end = ((e.offset + e.count) << sb.block_log).min(LEAF_OFFSET);
            let last = end.div_ceil(db);
            for b in first..last {
                if blocks.last() != Some(&b) {
                    blocks.push(b);
                }
                if blocks.len() > MAX_ENTRIES / 8 {
                    return Err(format!("directory inode {} is too large to read", dir.ino));
                }
            }
        }
        let mut buf = vec![0u8; sb.dir_block];
        let mut name_bytes = 0usize;
        for b in blocks {
            self.spend(buf.len())?;
            self.read_mapped(&extents, b * db, &mut buf)?;
            let before = out.len();
            self.data_block(dir.ino, &buf, out)?;
            name_bytes += out[before..].iter().map(|e| e.name.len()).sum::<usize>();
            if out.len() > MAX_ENTRIES || name_bytes > MAX_NAME_BYTES {
                return Err(format!(
                    "directory inode {} has too many entries to read",
                    dir.ino
                ));
            }
        }
        Ok(())
    }

    /// The entries of one directory data block.
    fn data_block(&self, ino: u64, b: &[u8], out: &mut Vec<Entry>) -> Result<(), String> {
        let damaged = |what: &str| format!("directory inode {ino} is damaged: {what}");
        let magic = &b[0..4];
        let (header, block_form) = match magic {
            b"XD2B" if !self.sb.v5 => (16, true),
            b"XD2D" if !self.sb.v5 => (16, false),
            b"XDB3" if self.sb.v5 => (64, true),
            b"XDD3" if self.sb.v5 => (64, false),
            // A hole's zeros or a free block: nothing in it.
            [0, 0, 0, 0] => return Ok(()),
            _ => return Err(damaged("a data block has no magic")),
        };
        let end = if block_form {
            // The tail: leaf count, stale count; the leaf entries before it.
            let leaves = be32(b, b.len() - 8) as usize;
            leaves
                .checked_mul(8)
                .and_then(|l| b.len().checked_sub(8 + l))
                .filter(|e| *e >= header)
                .ok_or_else(|| damaged("block tail"))?
        } else {
            b.len()
        };
        let ftype = usize::from(self.sb.ftype);
        let mut p = header;
        while p + 8 <= end {
            if be16(b, p) == 0xffff {
                // Unused space: its length follows the tag.
                let len = usize::from(be16(b, p + 2));
                if len < 8 || len % 8 != 0 || p + len > end {
                    return Err(damaged("unused space"));
                }
                p += len;
                continue;
            }
            // inode, name length, name, [file type], tag; 8-byte aligned.
            let ino = be64(b, p);
            let name_len = usize::from(*b.get(p + 8).ok_or_else(|| damaged("entry"))?);
            let size = (8 + 1 + name_len + ftype + 2).div_ceil(8) * 8;
            if name_len == 0 || p + size > end {
                return Err(damaged("entry"));
            }
            out.push(Entry {
                name: b[p + 9..p + 9 + name_len].to_vec(),
                ino,
            });
            p += size;
        }
        Ok(())
    }
}
