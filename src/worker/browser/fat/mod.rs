//! A read-only FAT12/16/32 reader: EFI system partitions (and the odd
//! data volume). Hand-written: `fatfs` 0.3.6 underflows on a crafted first
//! cluster and follows cyclic cluster chains (see
//! docs/design/file-level-real-disks.md).
//!
//! The image is attacker-controllable: the boot sector's geometry is
//! checked before use, every cluster number against the data area, every
//! chain is cut at the length its file or the volume allows (a cycle ends
//! there), and long names are taken only when their checksum matches the
//! short entry that follows them. Layout: Microsoft's "FAT: General
//! Overview of On-Disk Format"; integers are little-endian.

#[cfg(test)]
pub(in crate::worker::browser) mod tests;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::rc::Rc;

use super::filesystem::{Budget, Filesystem, Kind, Meta};
use super::partitions::ReadAt;

/// The most bytes a folder may have: 65 536 entries, as Linux allows
/// (`FAT_MAX_DIR_SIZE`).
const MAX_DIR_BYTES: u64 = 2 << 20;
/// Bytes read from a file at a time.
const READ_CHUNK: usize = 1 << 20;

const ATTR_READ_ONLY: u8 = 0x01;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_LONG_NAME: u8 = 0x0f;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Width {
    Fat12,
    Fat16,
    Fat32,
}

/// Where a folder's entries are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Place {
    /// FAT12/16's root: a fixed run of sectors.
    FixedRoot,
    Chain(u32),
}

/// One entry of a folder.
#[derive(Clone, Debug)]
struct Entry {
    name: String,
    attr: u8,
    cluster: u32,
    size: u32,
    mtime: i64,
}

impl Entry {
    fn meta(&self) -> Meta {
        let dir = self.attr & ATTR_DIRECTORY != 0;
        let mode = match (dir, self.attr & ATTR_READ_ONLY != 0) {
            (true, _) => 0o755,
            (false, true) => 0o444,
            (false, false) => 0o644,
        };
        Meta {
            kind: if dir { Kind::Dir } else { Kind::File },
            size: if dir { 0 } else { u64::from(self.size) },
            mode,
            uid: 0,
            gid: 0,
            mtime: self.mtime,
            note: None,
        }
    }
}

/// A FAT filesystem on `dev`.
pub(super) struct Fat<D> {
    dev: D,
    width: Width,
    cluster_size: u64,
    /// Byte offsets of the first FAT, the fixed root (FAT12/16) and the
    /// data area (cluster 2).
    fat_at: u64,
    root_at: u64,
    root_entries: u64,
    data_at: u64,
    /// Clusters in the data area; valid numbers are 2..clusters + 2.
    clusters: u32,
    root_cluster: u32,
    /// Metadata bytes it may still read.
    budget: Budget,
    /// Folders' entries by place, as parsed (a path is looked up from the
    /// root at every call).
    folders: RefCell<HashMap<Place, Rc<Vec<Entry>>>>,
}

impl<D: ReadAt> Fat<D> {
    pub(super) fn load(dev: D) -> Result<Self, String> {
        let mut b = vec![0u8; 512];
        dev.read_at(0, &mut b)?;
        let bad = |what: &str| Err(format!("the FAT boot sector is damaged: {what}"));
        if b[510..512] != [0x55, 0xaa] {
            return bad("no boot signature");
        }
        let bps = u64::from(le16(&b, 11));
        let spc = u64::from(b[13]);
        let reserved = u64::from(le16(&b, 14));
        let fats = u64::from(b[16]);
        let root_entries = u64::from(le16(&b, 17));
        let total = match le16(&b, 19) {
            0 => u64::from(le32(&b, 32)),
            n => u64::from(n),
        };
        let fat_size = match le16(&b, 22) {
            0 => u64::from(le32(&b, 36)),
            n => u64::from(n),
        };
        if !matches!(bps, 512 | 1024 | 2048 | 4096) {
            return bad("bytes per sector");
        }
        if !spc.is_power_of_two() || bps * spc > 1 << 16 {
            return bad("sectors per cluster");
        }
        if reserved == 0 || fats == 0 || fat_size == 0 {
            return bad("reserved sectors or FATs");
        }
        let root_sectors = (root_entries * 32).div_ceil(bps);
        let meta = reserved + fats * fat_size + root_sectors;
        if total <= meta || total * bps > dev.size() {
            return bad("total sectors");
        }
        let clusters = (total - meta) / spc;
        let width = match clusters {
            c if c < 4085 => Width::Fat12,
            c if c < 65525 => Width::Fat16,
            _ => Width::Fat32,
        };
        // The FAT must have an entry for every cluster.
        let entry_bits = match width {
            Width::Fat12 => 12,
            Width::Fat16 => 16,
            Width::Fat32 => 32,
        };
        if (clusters + 2) * entry_bits > fat_size * bps * 8 || clusters > 0x0fff_fff5 {
            return bad("the FAT is smaller than the volume");
        }
        let root_cluster = le32(&b, 44);
        // FAT32 may mirror one FAT only: the active one (flags bits 0-3).
        let ext_flags = le16(&b, 40);
        let active = if width == Width::Fat32 && ext_flags & 0x80 != 0 {
            u64::from(ext_flags & 0xf)
        } else {
            0
        };
        if active >= fats {
            return bad("active FAT");
        }
        if width == Width::Fat32 && (root_entries != 0 || root_cluster < 2) {
            return bad("FAT32 root folder");
        }
        if width != Width::Fat32 && root_entries == 0 {
            return bad("root folder size");
        }
        Ok(Self {
            dev,
            width,
            cluster_size: bps * spc,
            fat_at: (reserved + active * fat_size) * bps,
            root_at: (reserved + fats * fat_size) * bps,
            root_entries,
            data_at: meta * bps,
            clusters: clusters as u32,
            root_cluster,
            budget: Budget::new(),
            folders: RefCell::new(HashMap::new()),
        })
    }

    fn spend(&self, len: u64) -> Result<(), String> {
        self.budget.spend(len)
    }

    /// The FAT's entry for cluster `n`: the next cluster, or `None` at the
    /// end of the chain (or where it is broken: free, bad, out of range).
    fn next(&self, n: u32) -> Result<Option<u32>, String> {
        let n64 = u64::from(n);
        let (at, len) = match self.width {
            Width::Fat12 => (n64 + n64 / 2, 2),
            Width::Fat16 => (n64 * 2, 2),
            Width::Fat32 => (n64 * 4, 4),
        };
        let mut b = [0u8; 4];
        self.spend(len as u64)?;
        self.dev.read_at(self.fat_at + at, &mut b[..len])?;
        let v = match self.width {
            Width::Fat12 => {
                let v = le16(&b, 0);
                u32::from(if n % 2 == 1 { v >> 4 } else { v & 0xfff })
            }
            Width::Fat16 => u32::from(le16(&b, 0)),
            Width::Fat32 => le32(&b, 0) & 0x0fff_ffff,
        };
        Ok(self.valid(v).then_some(v))
    }

    fn valid(&self, cluster: u32) -> bool {
        cluster >= 2 && cluster - 2 < self.clusters
    }

    /// The clusters of a folder's chain from `first`, at most `max` of
    /// them; a chain that comes back to a cluster is damaged.
    fn chain(&self, first: u32, max: u64) -> Result<Vec<u32>, String> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut at = self.valid(first).then_some(first);
        while let Some(c) = at {
            if out.len() as u64 >= max {
                break;
            }
            if !seen.insert(c) {
                return Err("a folder's cluster chain is damaged: it loops".into());
            }
            out.push(c);
            at = self.next(c)?;
        }
        Ok(out)
    }

    /// The first `need` clusters of a file's chain (no more than the
    /// volume has, checked by the caller); a chain that comes back to a
    /// cluster is damaged.
    fn file_chain(&self, first: u32, need: u64) -> Result<Vec<u32>, String> {
        let mut out = Vec::new();
        let mut seen = vec![0u64; (self.clusters as usize + 2).div_ceil(64)];
        let mut at = (need > 0 && self.valid(first)).then_some(first);
        while let Some(c) = at {
            let (word, bit) = (c as usize / 64, 1u64 << (c % 64));
            if seen[word] & bit != 0 {
                return Err("a file's cluster chain is damaged: it loops".into());
            }
            seen[word] |= bit;
            out.push(c);
            if out.len() as u64 == need {
                break;
            }
            at = self.next(c)?;
        }
        Ok(out)
    }

    fn cluster_at(&self, c: u32) -> u64 {
        self.data_at + u64::from(c - 2) * self.cluster_size
    }

    /// A folder's raw 32-byte entries.
    fn raw_dir(&self, place: Place) -> Result<Vec<u8>, String> {
        match place {
            Place::FixedRoot => {
                let mut b = vec![0u8; (self.root_entries * 32) as usize];
                self.spend(b.len() as u64)?;
                self.dev.read_at(self.root_at, &mut b)?;
                Ok(b)
            }
            Place::Chain(first) => {
                let chain = self.chain(first, MAX_DIR_BYTES.div_ceil(self.cluster_size))?;
                if chain.is_empty() {
                    return Err("a folder's cluster chain is damaged".into());
                }
                let cs = self.cluster_size as usize;
                let mut b = vec![0u8; chain.len() * cs];
                self.spend(b.len() as u64)?;
                for (i, c) in chain.iter().enumerate() {
                    self.dev
                        .read_at(self.cluster_at(*c), &mut b[i * cs..(i + 1) * cs])?;
                }
                Ok(b)
            }
        }
    }

    /// A folder's entries, parsed once per opened filesystem.
    fn folder(&self, place: Place) -> Result<Rc<Vec<Entry>>, String> {
        if let Some(found) = self.folders.borrow().get(&place) {
            return Ok(found.clone());
        }
        let entries = Rc::new(self.entries(place)?);
        self.folders.borrow_mut().insert(place, entries.clone());
        Ok(entries)
    }

    /// A folder's entries without `.`, `..`, volume labels, deleted ones
    /// and a second entry of a name already listed (the one a lookup finds
    /// is the first).
    fn entries(&self, place: Place) -> Result<Vec<Entry>, String> {
        let raw = self.raw_dir(place)?;
        let mut out = Vec::new();
        let mut names = HashSet::new();
        let mut long = LongName::default();
        for e in raw.chunks_exact(32) {
            match e[0] {
                0x00 => break,
                0xe5 => {
                    long = LongName::default();
                    continue;
                }
                _ => {}
            }
            let attr = e[11];
            if attr & 0x3f == ATTR_LONG_NAME {
                long.add(e);
                continue;
            }
            let taken = std::mem::take(&mut long);
            if attr & ATTR_VOLUME_ID != 0 {
                continue;
            }
            let short: [u8; 11] = e[0..11].try_into().unwrap_or([b' '; 11]);
            let name = taken
                .name_for(&short)
                .unwrap_or_else(|| short_name(&short, e[12]));
            if name.is_empty()
                || short[0] == b' '
                || name == "."
                || name == ".."
                || name.contains('/')
                || name.contains('\0')
                || !names.insert(name.to_lowercase())
            {
                continue;
            }
            let hi = if self.width == Width::Fat32 {
                u32::from(le16(e, 20))
            } else {
                0
            };
            out.push(Entry {
                name,
                attr,
                cluster: (hi << 16) | u32::from(le16(e, 26)),
                size: le32(e, 28),
                mtime: dos_time(le16(e, 24), le16(e, 22)),
            });
        }
        Ok(out)
    }

    fn root(&self) -> Place {
        match self.width {
            Width::Fat32 => Place::Chain(self.root_cluster),
            _ => Place::FixedRoot,
        }
    }

    /// The entry `path` names; `None` for the root.
    fn lookup(&self, path: &str) -> Result<Option<Entry>, String> {
        let mut place = self.root();
        let mut found = None;
        for name in path.split('/').filter(|c| !c.is_empty()) {
            if found
                .as_ref()
                .is_some_and(|e: &Entry| e.attr & ATTR_DIRECTORY == 0)
            {
                return Err(format!("{path}: not found"));
            }
            let entries = self.folder(place)?;
            // FAT names are case-insensitive; an exact match first.
            let entry = entries
                .iter()
                .find(|e| e.name == name)
                .or_else(|| {
                    entries
                        .iter()
                        .find(|e| e.name.to_lowercase() == name.to_lowercase())
                })
                .ok_or_else(|| format!("{path}: not found"))?
                .clone();
            place = Place::Chain(entry.cluster);
            found = Some(entry);
        }
        Ok(found)
    }
}

/// Long-name parts gathered before the short entry they belong to.
#[derive(Default)]
struct LongName {
    /// (order, checksum, 13 UTF-16 units) as they came, last part first.
    parts: Vec<(u8, u8, [u16; 13])>,
}

impl LongName {
    fn add(&mut self, e: &[u8]) {
        let order = e[0];
        if order & 0x40 != 0 {
            self.parts.clear();
        } else if self.parts.is_empty() {
            // A part without the first (last-numbered) one: an orphan.
            return;
        }
        let mut units = [0u16; 13];
        let offsets = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
        for (u, at) in units.iter_mut().zip(offsets) {
            *u = le16(e, at);
        }
        if self.parts.len() < 20 {
            self.parts.push((order & 0x1f, e[13], units));
        }
    }

    /// The long name, when its parts are complete, in order and match
    /// `short`'s checksum.
    fn name_for(&self, short: &[u8; 11]) -> Option<String> {
        let sum = short
            .iter()
            .fold(0u8, |s, b| s.rotate_right(1).wrapping_add(*b));
        let n = self.parts.len();
        if n == 0 {
            return None;
        }
        let mut units = Vec::new();
        for (i, (order, check, part)) in self.parts.iter().rev().enumerate() {
            if usize::from(*order) != i + 1 || *check != sum {
                return None;
            }
            units.extend_from_slice(part);
        }
        let end = units
            .iter()
            .position(|u| *u == 0 || *u == 0xffff)
            .unwrap_or(units.len());
        let name = String::from_utf16(&units[..end]).ok()?;
        (!name.is_empty()).then_some(name)
    }
}

/// Code page 437 from 0x80: how Linux (`codepage=437`) and DOS read the
/// bytes of a short name above ASCII.
const CP437_HIGH: &str = "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u{a0}";

/// An 8.3 name as people read it, lower-cased where Windows NT marked it
/// so (`flags` bit 3: the base, bit 4: the extension).
fn short_name(raw: &[u8; 11], flags: u8) -> String {
    let high: Vec<char> = CP437_HIGH.chars().collect();
    // 0x05 first stands for 0xE5 there (0xE5 first marks a deleted entry).
    let mut raw = *raw;
    if raw[0] == 0x05 {
        raw[0] = 0xe5;
    }
    let part = |b: &[u8], lower: bool| -> String {
        let s: String = b
            .iter()
            .map(|c| match *c {
                c @ 0..0x80 => char::from(c),
                _ => high.get(usize::from(c - 0x80)).copied().unwrap_or('_'),
            })
            .collect::<String>()
            .trim_end()
            .to_string();
        if lower { s.to_lowercase() } else { s }
    };
    let base = part(&raw[0..8], flags & 0x08 != 0);
    let ext = part(&raw[8..11], flags & 0x10 != 0);
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

/// A DOS date and time (local time, kept as if UTC) as seconds since the
/// Unix epoch.
fn dos_time(date: u16, time: u16) -> i64 {
    let year = 1980 + i64::from(date >> 9);
    let month = i64::from((date >> 5) & 0xf).clamp(1, 12);
    let day = i64::from(date & 0x1f).max(1);
    let secs = i64::from(time >> 11) * 3600
        + i64::from((time >> 5) & 0x3f) * 60
        + i64::from(time & 0x1f) * 2;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe - 719_468) * 86_400 + secs
}

impl<D: ReadAt> Filesystem for Fat<D> {
    fn metadata(&self, path: &str) -> Result<Meta, String> {
        Ok(match self.lookup(path)? {
            Some(e) => e.meta(),
            None => Meta::synthetic(Kind::Dir, 0, None),
        })
    }

    fn read_dir(&self, path: &str) -> Result<Vec<(String, Meta)>, String> {
        let place = match self.lookup(path)? {
            None => self.root(),
            Some(e) if e.attr & ATTR_DIRECTORY != 0 => Place::Chain(e.cluster),
            Some(_) => return Err(format!("{path} is not a folder")),
        };
        Ok(self
            .folder(place)?
            .iter()
            .map(|e| (e.name.clone(), e.meta()))
            .collect())
    }

    fn open(&self, path: &str) -> Result<Box<dyn Read + '_>, String> {
        let Some(e) = self.lookup(path)? else {
            return Err(format!("{path} is not a regular file"));
        };
        if e.attr & ATTR_DIRECTORY != 0 {
            return Err(format!("{path} is not a regular file"));
        }
        let size = u64::from(e.size);
        let need = size.div_ceil(self.cluster_size);
        if need > u64::from(self.clusters) {
            return Err(format!(
                "{path} is damaged: its {size} bytes are more than the volume holds"
            ));
        }
        let chain = self.file_chain(e.cluster, need)?;
        if (chain.len() as u64) < need {
            return Err(format!(
                "{path} is damaged: its cluster chain ends before its {size} bytes"
            ));
        }
        Ok(Box::new(File {
            fs: self,
            chain,
            size,
            pos: 0,
        }))
    }
}

/// A file being read.
struct File<'a, D> {
    fs: &'a Fat<D>,
    chain: Vec<u32>,
    size: u64,
    pos: u64,
}

impl<D: ReadAt> Read for File<'_, D> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let cs = self.fs.cluster_size;
        let left = self.size.saturating_sub(self.pos);
        let index = (self.pos / cs) as usize;
        let within = self.pos % cs;
        let n = (buf.len().min(READ_CHUNK) as u64)
            .min(left)
            .min(cs - within) as usize;
        if n == 0 {
            return Ok(0);
        }
        let at = self.fs.cluster_at(self.chain[index]) + within;
        self.fs
            .dev
            .read_at(at, &mut buf[..n])
            .map_err(std::io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}
