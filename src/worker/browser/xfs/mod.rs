//! A read-only XFS reader (v4 with version 2 directories, and v5): the
//! default filesystem of Amazon Linux 2 and 2023, RHEL, CentOS and Rocky.
//! Hand-written because no sound crate exists (see
//! docs/design/file-level-real-disks.md); it reads only what the browser
//! needs: the superblock, inodes, the data fork's extents (inline or in a
//! bmap btree) and directories in every form (short form, block, leaf and
//! node: their data blocks hold the entries).
//!
//! The image is attacker-controllable: every offset is checked against
//! the block or fork it is in, every count against the space it claims,
//! block numbers against the allocation groups, btree levels must step
//! down by one, and the work a request may do is capped (`MAX_*`).
//! Layouts: the kernel's `fs/xfs/libxfs/xfs_format.h` and
//! `xfs_da_format.h`; all integers are big-endian.

mod dir;
mod log;
#[cfg(test)]
pub(in crate::worker::browser) mod tests;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::rc::Rc;

use super::filesystem::{Budget, Filesystem, Kind, Meta};
use super::partitions::ReadAt;

/// The most extents one file's map may have before the reader gives up.
const MAX_EXTENTS: usize = 1 << 20;
/// The most bmap btree blocks one file's map may take: a real tree holds
/// at least 16 extents in each of its leaves.
const MAX_BTREE_BLOCKS: usize = MAX_EXTENTS / 16 + 64;
/// The deepest a bmap btree is (the kernel's limit is below this).
const MAX_BTREE_LEVEL: u16 = 9;
/// Bytes read from a file at a time.
const READ_CHUNK: usize = 1 << 20;
/// Directory entries kept parsed (per opened filesystem, so per request).
const CACHED_ENTRIES: usize = 1 << 18;

const SB_VERSION_DIRV2: u16 = 0x2000;
const SB_VERSION2_FTYPE: u32 = 0x200;
const INCOMPAT_FTYPE: u32 = 1;
/// Incompatible features this reader understands: file types in
/// directories, sparse inodes, metadata UUID, big timestamps, "needs
/// repair" (reading is still sound), 64-bit extent counts, exchange
/// range, parent pointers (kept as attributes, not read).
const INCOMPAT_KNOWN: u32 = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x80;

const DIFLAG_REALTIME: u16 = 0x1;
const DIFLAG2_BIGTIME: u64 = 1 << 3;
const DIFLAG2_NREXT64: u64 = 1 << 4;

const S_IFMT: u16 = 0o170000;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

/// What the superblock says about the layout.
#[derive(Clone, Debug)]
struct Super {
    block_log: u32,
    ag_blocks: u64,
    ag_count: u64,
    ag_blk_log: u32,
    inode_size: usize,
    inop_log: u32,
    root: u64,
    /// The internal log: first filesystem block and length in blocks.
    log_start: u64,
    log_blocks: u64,
    v5: bool,
    ftype: bool,
    dir_block: usize,
}

impl Super {
    fn parse(b: &[u8]) -> Result<Self, String> {
        if b.len() < 512 || &b[0..4] != b"XFSB" {
            return Err("no XFS superblock".into());
        }
        let block_size = be32(b, 4);
        let ag_blocks = be32(b, 84);
        let ag_count = be32(b, 88);
        let version = be16(b, 100);
        let inode_size = be16(b, 104);
        let inop_block = be16(b, 106);
        let (block_log, inode_log, inop_log, ag_blk_log) = (b[120], b[122], b[123], b[124]);
        let dir_blk_log = b[192];
        let bad = |what: &str| Err(format!("the XFS superblock is damaged: {what}"));
        let v5 = match version & 0xf {
            4 if version & SB_VERSION_DIRV2 == 0 => {
                return Err("XFS with version 1 directories is not supported".into());
            }
            4 => false,
            5 => true,
            v => return Err(format!("XFS version {v} is not supported")),
        };
        if !(9..=16).contains(&block_log) || block_size != 1 << block_log {
            return bad("block size");
        }
        if !(8..=11).contains(&inode_log) || u32::from(inode_size) != 1 << inode_log {
            return bad("inode size");
        }
        if inode_log > block_log
            || u32::from(inop_log) != u32::from(block_log - inode_log)
            || u32::from(inop_block) != 1 << inop_log
        {
            return bad("inodes per block");
        }
        if ag_count == 0
            || ag_blocks == 0
            || !(1..=31).contains(&ag_blk_log)
            || u64::from(ag_blocks) > 1u64 << ag_blk_log
        {
            return bad("allocation groups");
        }
        if u32::from(block_log) + u32::from(dir_blk_log) > 16 {
            return bad("directory block size");
        }
        let ftype = if v5 {
            let incompat = be32(b, 216);
            if incompat & !INCOMPAT_KNOWN != 0 {
                return Err(format!(
                    "this XFS uses features Tender cannot read yet (incompatible feature bits {:#x})",
                    incompat & !INCOMPAT_KNOWN
                ));
            }
            incompat & INCOMPAT_FTYPE != 0
        } else {
            (be32(b, 200) | be32(b, 204)) & SB_VERSION2_FTYPE != 0
        };
        let sb = Self {
            block_log: u32::from(block_log),
            ag_blocks: u64::from(ag_blocks),
            ag_count: u64::from(ag_count),
            ag_blk_log: u32::from(ag_blk_log),
            inode_size: usize::from(inode_size),
            inop_log: u32::from(inop_log),
            root: be64(b, 56),
            log_start: be64(b, 48),
            log_blocks: u64::from(be32(b, 96)),
            v5,
            ftype,
            dir_block: 1 << (block_log + dir_blk_log),
        };
        sb.inode_at(sb.root)
            .map_err(|_| "the XFS root inode number is damaged")?;
        Ok(sb)
    }

    fn block_size(&self) -> usize {
        1 << self.block_log
    }

    /// The byte where filesystem block `fsb` (allocation group in the high
    /// bits) starts, checking that `count` blocks from it stay in its
    /// allocation group.
    fn block_at(&self, fsb: u64, count: u64) -> Result<u64, String> {
        let ag = fsb >> self.ag_blk_log;
        let agbno = fsb & ((1u64 << self.ag_blk_log) - 1);
        let outside = || format!("block {fsb} is outside the filesystem");
        if ag >= self.ag_count || agbno.saturating_add(count) > self.ag_blocks {
            return Err(outside());
        }
        // Below 2^63 bytes, so that offsets added to it cannot overflow.
        ag.checked_mul(self.ag_blocks)
            .and_then(|b| b.checked_add(agbno))
            .filter(|b| b.leading_zeros() > self.block_log)
            .map(|b| b << self.block_log)
            .ok_or_else(outside)
    }

    /// The byte where inode `ino` starts.
    fn inode_at(&self, ino: u64) -> Result<u64, String> {
        let per_ag = self.ag_blk_log + self.inop_log;
        let block = ino >> self.inop_log;
        let index = ino & ((1u64 << self.inop_log) - 1);
        if ino >> per_ag >= self.ag_count || per_ag >= 64 {
            return Err(format!("inode {ino} is outside the filesystem"));
        }
        Ok(self.block_at(block, 1)? + index * self.inode_size as u64)
    }
}

/// One mapping of a file's logical blocks to disk blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Extent {
    /// First logical block.
    offset: u64,
    /// First filesystem block.
    block: u64,
    count: u64,
    /// Allocated but never written: reads as zeros.
    unwritten: bool,
}

impl Extent {
    /// A 16-byte bmbt record.
    fn parse(r: &[u8]) -> Self {
        let (l0, l1) = (be64(r, 0), be64(r, 8));
        Self {
            unwritten: l0 >> 63 == 1,
            offset: (l0 & ((1 << 63) - 1)) >> 9,
            block: ((l0 & 0x1ff) << 43) | (l1 >> 21),
            count: l1 & ((1 << 21) - 1),
        }
    }
}

/// The parts of an inode the browser uses.
#[derive(Clone, Debug)]
struct Inode {
    ino: u64,
    mode: u16,
    format: u8,
    uid: u32,
    gid: u32,
    mtime: i64,
    size: u64,
    nextents: u64,
    flags: u16,
    /// The data fork's bytes.
    fork: Vec<u8>,
}

impl Inode {
    fn kind(&self) -> Kind {
        match self.mode & S_IFMT {
            0o040000 => Kind::Dir,
            0o100000 => Kind::File,
            0o120000 => Kind::Symlink,
            _ => Kind::Other,
        }
    }

    fn meta(&self) -> Meta {
        Meta {
            kind: self.kind(),
            size: self.size,
            mode: u32::from(self.mode & 0o7777),
            uid: self.uid,
            gid: self.gid,
            mtime: self.mtime,
            note: None,
        }
    }
}

/// A folder's entries, parsed.
type Folder = Rc<Vec<dir::Entry>>;

/// An XFS filesystem on `dev`.
pub(super) struct Xfs<D> {
    dev: D,
    sb: Super,
    /// Metadata bytes it may still read.
    budget: Budget,
    /// Folders' entries by inode, as parsed (a path is looked up from the
    /// root at every call), and how many entries that is.
    folders: RefCell<(HashMap<u64, Folder>, usize)>,
    /// Shown on every page ([`Filesystem::notice`]).
    notice: Option<String>,
}

impl<D: ReadAt> Xfs<D> {
    pub(super) fn load(dev: D) -> Result<Self, String> {
        let mut b = vec![0u8; 512];
        dev.read_at(0, &mut b)?;
        let sb = Super::parse(&b)?;
        // sb_dblocks: a filesystem larger than its partition was cut short
        // (a partition table or a copy that lost its end).
        let size = be64(&b, 8).saturating_mul(sb.block_size() as u64);
        if size > dev.size() {
            return Err(format!(
                "the XFS is larger than its partition ({size} > {} bytes): the volume is truncated",
                dev.size()
            ));
        }
        Ok(Self {
            dev,
            sb,
            budget: Budget::new(),
            folders: RefCell::new((HashMap::new(), 0)),
            notice: None,
        })
    }

    /// The same filesystem, with `notice` on every page.
    pub(super) fn with_notice(mut self, notice: Option<String>) -> Self {
        self.notice = notice;
        self
    }

    /// Counts `len` bytes of metadata against the budget.
    fn spend(&self, len: usize) -> Result<(), String> {
        self.budget.spend(len as u64)
    }

    /// Metadata: counted against the budget.
    fn read(&self, at: u64, len: usize) -> Result<Vec<u8>, String> {
        self.spend(len)?;
        let mut b = vec![0u8; len];
        self.dev.read_at(at, &mut b)?;
        Ok(b)
    }

    fn inode(&self, ino: u64) -> Result<Inode, String> {
        let sb = &self.sb;
        let b = self.read(sb.inode_at(ino)?, sb.inode_size)?;
        let damaged = |what: &str| Err(format!("inode {ino} is damaged: {what}"));
        if &b[0..2] != b"IN" {
            return damaged("no inode magic");
        }
        let version = b[4];
        let core = match version {
            3 if sb.v5 => 176,
            1 | 2 if !sb.v5 => 100,
            _ => return damaged("unknown inode version"),
        };
        let flags2 = if version == 3 { be64(&b, 120) } else { 0 };
        let time = |at: usize| -> i64 {
            if flags2 & DIFLAG2_BIGTIME != 0 {
                (be64(&b, at) / 1_000_000_000) as i64 - (1i64 << 31)
            } else {
                i64::from(be32(&b, at) as i32)
            }
        };
        let nextents = if flags2 & DIFLAG2_NREXT64 != 0 {
            be64(&b, 24)
        } else {
            u64::from(be32(&b, 76))
        };
        let fork_size = match b[82] {
            0 => sb.inode_size - core,
            off => usize::from(off) * 8,
        };
        if core + fork_size > sb.inode_size {
            return damaged("attribute fork offset");
        }
        Ok(Inode {
            ino,
            mode: be16(&b, 2),
            format: b[5],
            uid: be32(&b, 8),
            gid: be32(&b, 12),
            mtime: time(40),
            size: be64(&b, 56),
            nextents,
            flags: be16(&b, 90),
            fork: b[core..core + fork_size].to_vec(),
        })
    }

    /// The data fork's extents, sorted by logical block.
    fn extents(&self, inode: &Inode) -> Result<Vec<Extent>, String> {
        let mut out = Vec::new();
        match inode.format {
            2 => {
                let n = usize::try_from(inode.nextents).unwrap_or(usize::MAX);
                if n.saturating_mul(16) > inode.fork.len() {
                    return Err(format!(
                        "inode {} is damaged: more extents than its fork holds",
                        inode.ino
                    ));
                }
                out.extend(inode.fork.chunks_exact(16).take(n).map(Extent::parse));
            }
            3 => {
                let f = &inode.fork;
                if f.len() < 4 + 16 {
                    return Err(format!("inode {} is damaged: btree root", inode.ino));
                }
                let (level, n) = (be16(f, 0), usize::from(be16(f, 2)));
                let max = (f.len() - 4) / 16;
                if level == 0 || level > MAX_BTREE_LEVEL || n > max {
                    return Err(format!("inode {} is damaged: btree root", inode.ino));
                }
                let mut seen = HashSet::new();
                for i in 0..n {
                    let child = be64(f, 4 + max * 8 + i * 8);
                    self.btree(child, level - 1, &mut seen, &mut out)?;
                }
            }
            _ => {
                return Err(format!(
                    "inode {} has no block map (format {})",
                    inode.ino, inode.format
                ));
            }
        }
        // Logical ends kept below 2^63 bytes, so byte arithmetic on them
        // cannot overflow.
        let limit = 1u64 << (63 - self.sb.block_log);
        if out
            .iter()
            .any(|e| e.count == 0 || e.offset + e.count > limit)
        {
            return Err(format!(
                "inode {} is damaged: an extent is out of range",
                inode.ino
            ));
        }
        out.sort_by_key(|e| e.offset);
        for pair in out.windows(2) {
            if pair[0].offset + pair[0].count > pair[1].offset {
                return Err(format!(
                    "inode {} is damaged: its extents overlap",
                    inode.ino
                ));
            }
        }
        Ok(out)
    }

    /// Adds the extents below bmap btree block `fsb`, at `level`.
    fn btree(
        &self,
        fsb: u64,
        level: u16,
        seen: &mut HashSet<u64>,
        out: &mut Vec<Extent>,
    ) -> Result<(), String> {
        let damaged = |what: &str| Err(format!("bmap btree block {fsb} is damaged: {what}"));
        // Each block once: a tree whose pointers repeat would be read over
        // and over.
        if !seen.insert(fsb) {
            return damaged("it is pointed to twice");
        }
        if seen.len() > MAX_BTREE_BLOCKS {
            return Err("the file's block map is too large to read".into());
        }
        let bs = self.sb.block_size();
        let b = self.read(self.sb.block_at(fsb, 1)?, bs)?;
        let (magic, header) = if self.sb.v5 {
            (b"BMA3", 72)
        } else {
            (b"BMAP", 24)
        };
        if &b[0..4] != magic {
            return damaged("no magic");
        }
        if be16(&b, 4) != level {
            return damaged("wrong level");
        }
        let n = usize::from(be16(&b, 6));
        let max = (bs - header) / 16;
        if n == 0 || n > max {
            return damaged("record count");
        }
        if level == 0 {
            if out.len() + n > MAX_EXTENTS {
                return Err("the file has too many extents to read".into());
            }
            out.extend(
                b[header..header + n * 16]
                    .chunks_exact(16)
                    .map(Extent::parse),
            );
            return Ok(());
        }
        for i in 0..n {
            let child = be64(&b, header + max * 8 + i * 8);
            self.btree(child, level - 1, seen, out)?;
        }
        Ok(())
    }

    /// Fills `buf` from logical byte `at` of a file mapped by `extents`:
    /// holes and unwritten extents read as zeros.
    fn read_mapped(&self, extents: &[Extent], at: u64, buf: &mut [u8]) -> Result<(), String> {
        let log = self.sb.block_log;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = at + done as u64;
            let lblock = pos >> log;
            let i = extents.partition_point(|e| e.offset + e.count <= lblock);
            let want = buf.len() - done;
            match extents.get(i) {
                Some(e) if e.offset <= lblock => {
                    let end = (e.offset + e.count) << log;
                    let n = want.min((end - pos) as usize);
                    if e.unwritten {
                        buf[done..done + n].fill(0);
                    } else {
                        let start = self.sb.block_at(e.block, e.count)?;
                        let from = start + (pos - (e.offset << log));
                        self.dev.read_at(from, &mut buf[done..done + n])?;
                    }
                    done += n;
                }
                next => {
                    let hole_end = next.map_or(u64::MAX, |e| e.offset << log);
                    let n = want.min(usize::try_from(hole_end - pos).unwrap_or(usize::MAX));
                    buf[done..done + n].fill(0);
                    done += n;
                }
            }
        }
        Ok(())
    }

    /// A folder's entries, parsed once per opened filesystem while the
    /// cache has room.
    fn folder(&self, dir: &Inode) -> Result<Folder, String> {
        if let Some(found) = self.folders.borrow().0.get(&dir.ino) {
            return Ok(found.clone());
        }
        let entries = Rc::new(self.entries(dir)?);
        let mut cache = self.folders.borrow_mut();
        if cache.1 + entries.len() <= CACHED_ENTRIES {
            cache.1 += entries.len();
            cache.0.insert(dir.ino, entries.clone());
        }
        Ok(entries)
    }

    /// The inode `path` names, not following symbolic links.
    fn lookup(&self, path: &str) -> Result<Inode, String> {
        let mut inode = self.inode(self.sb.root)?;
        for name in path.split('/').filter(|c| !c.is_empty()) {
            if inode.kind() != Kind::Dir {
                return Err(format!("{path}: not found"));
            }
            let entries = self.folder(&inode)?;
            // As `read_dir` shows names: a name that is not UTF-8 is found
            // by what the page showed.
            let Some(entry) = entries
                .iter()
                .find(|e| e.name == name.as_bytes())
                .or_else(|| {
                    entries
                        .iter()
                        .find(|e| String::from_utf8_lossy(&e.name) == name)
                })
            else {
                return Err(format!("{path}: not found"));
            };
            inode = self.inode(entry.ino)?;
        }
        Ok(inode)
    }
}

impl<D: ReadAt> Filesystem for Xfs<D> {
    fn notice(&self, _path: &str) -> Option<String> {
        self.notice.clone()
    }

    fn metadata(&self, path: &str) -> Result<Meta, String> {
        Ok(self.lookup(path)?.meta())
    }

    fn read_dir(&self, path: &str) -> Result<Vec<(String, Meta)>, String> {
        let dir = self.lookup(path)?;
        if dir.kind() != Kind::Dir {
            return Err(format!("{path} is not a folder"));
        }
        let mut entries: Vec<dir::Entry> = self.folder(&dir)?.as_ref().clone();
        // In inode order: inodes of one folder sit together on disk.
        entries.sort_by_key(|e| e.ino);
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let meta = match self.inode(entry.ino) {
                Ok(inode) => inode.meta(),
                // One damaged inode does not hide its folder.
                Err(e) if e != Budget::SPENT => {
                    Meta::synthetic(Kind::Other, 0, Some(format!("cannot be read: {e}")))
                }
                Err(e) => return Err(e),
            };
            out.push((String::from_utf8_lossy(&entry.name).into_owned(), meta));
        }
        Ok(out)
    }

    fn open(&self, path: &str) -> Result<Box<dyn Read + '_>, String> {
        let inode = self.lookup(path)?;
        if inode.kind() != Kind::File {
            return Err(format!("{path} is not a regular file"));
        }
        if inode.flags & DIFLAG_REALTIME != 0 {
            return Err(format!(
                "{path} is on the filesystem's realtime device, which is not part of this volume"
            ));
        }
        let extents = self.extents(&inode)?;
        Ok(Box::new(File {
            fs: self,
            extents,
            size: inode.size,
            pos: 0,
        }))
    }
}

/// A regular file being read.
struct File<'a, D> {
    fs: &'a Xfs<D>,
    extents: Vec<Extent>,
    size: u64,
    pos: u64,
}

impl<D: ReadAt> Read for File<'_, D> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.size.saturating_sub(self.pos);
        let n = buf
            .len()
            .min(READ_CHUNK)
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        if n == 0 {
            return Ok(0);
        }
        self.fs
            .read_mapped(&self.extents, self.pos, &mut buf[..n])
            .map_err(std::io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}
