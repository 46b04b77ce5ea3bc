//! A read-only NTFS reader: the C: drive of Windows instances (and the
//! "System Reserved" partition beside it). Hand-written: the `ntfs` crate
//! 0.4.0 panics on crafted records, loops on index cycles and addresses
//! index blocks wrongly above 4 KiB clusters (see
//! docs/design/file-level-real-disks.md).
//!
//! It reads the boot sector, the MFT (through its own run list, extension
//! records included), file records with their update sequence fixups,
//! attribute lists, run lists, and the `$I30` folder index (its root and
//! its allocation blocks, walked as a tree). It does not read compressed,
//! encrypted or WOF-compacted files: they are listed with why.
//!
//! The image is attacker-controllable: every offset is checked against
//! the record or attribute it is in, every cluster against the volume,
//! index blocks are visited once each, and the metadata a request reads
//! is capped by its [`Budget`]. Layout: the Linux kernel's
//! `fs/ntfs3/ntfs.h`; integers are little-endian.

mod dir;
#[cfg(test)]
pub(in crate::worker::browser) mod tests;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::rc::Rc;

use super::filesystem::{Budget, Filesystem, Kind, Meta};
use super::partitions::ReadAt;

use dir::Entry;

/// Bytes read from a file at a time.
const READ_CHUNK: usize = 1 << 20;
/// Extension records one file may have (each holds a part of its
/// attributes: a file in tens of thousands of fragments needs hundreds).
const MAX_EXTENSIONS: usize = 4096;
/// The largest attribute list read.
const MAX_ATTRIBUTE_LIST: u64 = 4 << 20;
/// Clusters a stream may map: with 2 MiB clusters (the largest), no byte
/// offset in it overflows.
const MAX_STREAM_CLUSTERS: u64 = 1 << 41;
/// Bytes of budget a decoded run costs (what it takes in memory).
const RUN_COST: u64 = 32;

/// The MFT's own record, and the root folder's.
const MFT_RECORD: u64 = 0;
const ROOT_RECORD: u64 = 5;
const VOLUME_RECORD: u64 = 3;
/// Records below this are NTFS's own files (`$MFT`, `$LogFile`, ...),
/// which Windows does not show.
const FIRST_USER_RECORD: u64 = 16;

const AT_STANDARD_INFORMATION: u32 = 0x10;
const AT_ATTRIBUTE_LIST: u32 = 0x20;
const AT_VOLUME_NAME: u32 = 0x60;
const AT_DATA: u32 = 0x80;
const AT_REPARSE_POINT: u32 = 0xc0;
const AT_END: u32 = 0xffff_ffff;

const RECORD_IN_USE: u16 = 0x1;
const RECORD_IS_DIRECTORY: u16 = 0x2;

#[cfg(test)]
const ATTR_COMPRESSED: u16 = 0x0001;
const ATTR_COMPRESSION_MASK: u16 = 0x00ff;
const ATTR_SPARSE: u16 = 0x8000;
const ATTR_ENCRYPTED: u16 = 0x4000;

const FILE_READ_ONLY: u32 = 0x1;
const FILE_REPARSE_POINT: u32 = 0x400;

const REPARSE_MOUNT_POINT: u32 = 0xa000_0003;
const REPARSE_SYMLINK: u32 = 0xa000_000c;
const REPARSE_WOF: u32 = 0x8000_0017;
/// A tag with this bit names another file (a link).
const REPARSE_NAME_SURROGATE: u32 = 0x2000_0000;

/// Seconds from 1601-01-01 (NTFS's epoch) to 1970-01-01.
const EPOCH_DELTA: i64 = 11_644_473_600;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// 100 ns ticks since 1601 as seconds since the Unix epoch.
fn unix_time(ticks: u64) -> i64 {
    (ticks / 10_000_000) as i64 - EPOCH_DELTA
}

/// Applies a multi-sector record's update sequence (`FILE` and `INDX`
/// records): the last two bytes of every 512-byte stride hold the
/// sequence number, and their real bytes are kept in the array. A stride
/// whose bytes do not match was torn in writing.
fn fixup(buf: &mut [u8], magic: &[u8; 4]) -> Result<(), String> {
    let what = String::from_utf8_lossy(magic);
    if buf.len() < 512 || buf[0..4] != *magic {
        return Err(format!("an NTFS {what} record is damaged: no signature"));
    }
    let usa = usize::from(le16(buf, 4));
    let count = usize::from(le16(buf, 6));
    let strides = buf.len() / 512;
    if count != strides + 1 || usa < 8 || usa + 2 * count > buf.len() {
        return Err(format!(
            "an NTFS {what} record is damaged: its update sequence does not fit"
        ));
    }
    let array = buf[usa..usa + 2 * count].to_vec();
    for i in 1..count {
        let end = i * 512;
        if buf[end - 2..end] != array[0..2] {
            return Err(format!(
                "an NTFS {what} record is damaged: it was torn in writing"
            ));
        }
        buf[end - 2..end].copy_from_slice(&array[2 * i..2 * i + 2]);
    }
    Ok(())
}

/// A run of clusters of a non-resident attribute: `lcn` `None` is sparse
/// (zeros).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    vcn: u64,
    len: u64,
    lcn: Option<u64>,
}

/// An attribute as its record holds it.
#[derive(Clone, Debug)]
struct Attr {
    ty: u32,
    name: String,
    flags: u16,
    body: Body,
}

#[derive(Clone, Debug)]
enum Body {
    Resident(Vec<u8>),
    NonResident {
        /// The first cluster of the attribute this piece maps, and how
        /// many it maps.
        start: u64,
        count: u64,
        runs: Vec<Run>,
        /// Only in the first piece: the value's size, how much of it was
        /// written (the rest reads as zeros) and its compression unit.
        size: u64,
        initialized: u64,
        compression: u16,
    },
}

/// An attribute's value as a byte stream.
#[derive(Clone, Debug)]
enum Stream {
    Resident(Vec<u8>),
    NonResident {
        runs: Vec<Run>,
        size: u64,
        initialized: u64,
    },
}

impl Stream {
    fn len(&self) -> u64 {
        match self {
            Self::Resident(v) => v.len() as u64,
            Self::NonResident { size, .. } => *size,
        }
    }
}

/// A file record with its extension records' attributes.
#[derive(Clone, Debug)]
struct Record {
    sequence: u16,
    flags: u16,
    /// For an extension record, the record it extends; 0 for a base
    /// record.
    base: u64,
    attrs: Vec<Attr>,
}

/// Decodes a run list mapping `count` clusters from `start`, each cluster
/// inside a volume of `clusters`.
fn decode_runs(b: &[u8], start: u64, count: u64, clusters: u64) -> Result<Vec<Run>, String> {
    let bad = || "an NTFS run list is damaged".to_string();
    let mut runs = Vec::new();
    let (mut at, mut vcn, mut lcn) = (0usize, start, 0i64);
    let end = start.checked_add(count).ok_or_else(bad)?;
    while let Some(&head) = b.get(at) {
        if head == 0 {
            break;
        }
        let (len_size, off_size) = (usize::from(head & 0xf), usize::from(head >> 4));
        if !(1..=8).contains(&len_size) || off_size > 8 {
            return Err(bad());
        }
        let field = b
            .get(at + 1..at + 1 + len_size + off_size)
            .ok_or_else(bad)?;
        let mut len = 0u64;
        for (i, byte) in field[..len_size].iter().enumerate() {
            len |= u64::from(*byte) << (8 * i);
        }
        let sparse = off_size == 0;
        if !sparse {
            let mut delta = 0i64;
            for (i, byte) in field[len_size..].iter().enumerate() {
                delta |= i64::from(*byte) << (8 * i);
            }
            // Sign-extend from the field's width.
            let shift = 64 - 8 * off_size as u32;
            delta = if shift == 0 {
                delta
            } else {
                (delta << shift) >> shift
            };
            lcn = lcn.checked_add(delta).ok_or_else(bad)?;
        }
        let next = vcn.checked_add(len).ok_or_else(bad)?;
        if len == 0 || next > end {
            return Err(bad());
        }
        let at_lcn = if sparse {
            None
        } else {
            let first = u64::try_from(lcn).map_err(|_| bad())?;
            if first.checked_add(len).is_none_or(|e| e > clusters) {
                return Err("an NTFS run list points outside the volume".into());
            }
            Some(first)
        };
        runs.push(Run {
            vcn,
            len,
            lcn: at_lcn,
        });
        vcn = next;
        at += 1 + len_size + off_size;
    }
    if vcn != end {
        return Err(bad());
    }
    Ok(runs)
}

/// The attributes of a file record (after its fixups).
fn attributes(buf: &[u8], clusters: u64) -> Result<Vec<Attr>, String> {
    let bad = |what: &str| format!("an NTFS file record is damaged: {what}");
    let mut at = usize::from(le16(buf, 20));
    let end = (le32(buf, 24) as usize).min(buf.len());
    let mut out = Vec::new();
    loop {
        if at + 4 > end {
            return Err(bad("its attributes run past it"));
        }
        let ty = le32(buf, at);
        if ty == AT_END {
            break;
        }
        let len = if at + 16 <= end {
            le32(buf, at + 4) as usize
        } else {
            0
        };
        if len < 16 || len % 8 != 0 || len > end - at {
            return Err(bad("an attribute's length"));
        }
        let a = &buf[at..at + len];
        let (name_len, name_at) = (usize::from(a[9]), usize::from(le16(a, 10)));
        let name = if name_len == 0 {
            String::new()
        } else {
            let raw = a
                .get(name_at..name_at + 2 * name_len)
                .ok_or_else(|| bad("an attribute's name"))?;
            let units: Vec<u16> = raw.chunks_exact(2).map(|u| le16(u, 0)).collect();
            String::from_utf16_lossy(&units)
        };
        let body = if a[8] == 0 {
            if len < 24 {
                return Err(bad("a resident attribute's header"));
            }
            let (vlen, vat) = (le32(a, 16) as usize, usize::from(le16(a, 20)));
            let value = vat
                .checked_add(vlen)
                .and_then(|e| a.get(vat..e))
                .ok_or_else(|| bad("a resident attribute's value"))?;
            Body::Resident(value.to_vec())
        } else {
            if len < 64 {
                return Err(bad("a non-resident attribute's header"));
            }
            let (start, last) = (le64(a, 16), le64(a, 24));
            // An empty attribute maps clusters 0 to -1. A sparse one may
            // map more clusters than the volume has, within a stream's
            // largest size (2^63 bytes at 2 MiB clusters).
            let count = last.wrapping_sub(start).wrapping_add(1);
            if count > MAX_STREAM_CLUSTERS || start > MAX_STREAM_CLUSTERS {
                return Err(bad(
                    "an attribute maps more clusters than a stream can have",
                ));
            }
            let runs_at = usize::from(le16(a, 32));
            let runs = a.get(runs_at..).ok_or_else(|| bad("a run list"))?;
            Body::NonResident {
                start,
                count,
                runs: decode_runs(runs, start, count, clusters)?,
                size: le64(a, 48),
                initialized: le64(a, 56),
                compression: le16(a, 34),
            }
        };
        out.push(Attr {
            ty,
            name,
            flags: le16(a, 12),
            body,
        });
        at += len;
    }
    Ok(out)
}

/// Whether `a` is a piece of a file's unnamed data stream.
fn is_data(a: &Attr) -> bool {
    a.ty == AT_DATA && a.name.is_empty()
}

/// An NTFS volume on `dev`.
pub(super) struct Ntfs<D> {
    dev: D,
    cluster_size: u64,
    clusters: u64,
    record_size: u64,
    /// The MFT's `$DATA`.
    mft: Stream,
    budget: Budget,
    /// Folders' entries by record, as listed.
    folders: RefCell<HashMap<u64, Rc<Vec<Entry>>>>,
    /// Folders' names by record, as their indexes hold them.
    names: RefCell<HashMap<u64, Rc<Vec<dir::Named>>>>,
}

impl<D: ReadAt> Ntfs<D> {
    pub(super) fn load(dev: D) -> Result<Self, String> {
        let mut b = vec![0u8; 512];
        dev.read_at(0, &mut b)?;
        let bad = |what: &str| Err(format!("the NTFS boot sector is damaged: {what}"));
        if b[3..11] != *b"NTFS    " || b[510..512] != [0x55, 0xaa] {
            return bad("no signature");
        }
        let sector = u64::from(le16(&b, 11));
        if !matches!(sector, 256 | 512 | 1024 | 2048 | 4096) {
            return bad("bytes per sector");
        }
        // Sectors per cluster; above 0x80, a negative power of two.
        let cluster_size = match b[13] {
            n @ 1..=0x80 if n.is_power_of_two() => sector * u64::from(n),
            n @ 0xf4..=0xff => sector << (256 - u32::from(n)),
            _ => return bad("sectors per cluster"),
        };
        if cluster_size > 2 << 20 || cluster_size < sector {
            return bad("cluster size");
        }
        let clusters = le64(&b, 0x28).saturating_mul(sector) / cluster_size;
        if clusters == 0 || clusters.saturating_mul(cluster_size) > dev.size() {
            return bad("its size is larger than the partition");
        }
        let record_size = match b[0x40] as i8 {
            n @ 1..=127 => u64::from(n as u8) * cluster_size,
            n @ -12..=-9 => 1 << (-i32::from(n)),
            _ => return bad("file record size"),
        };
        if !(1024..=4096).contains(&record_size) || !record_size.is_power_of_two() {
            return bad("file record size");
        }
        let mft_lcn = le64(&b, 0x30);
        if mft_lcn.saturating_add(1).saturating_mul(cluster_size) > dev.size() {
            return bad("where the MFT is");
        }
        let mut ntfs = Self {
            dev,
            cluster_size,
            clusters,
            record_size,
            // Until the MFT's own record is read: its first record only.
            mft: Stream::NonResident {
                runs: vec![Run {
                    vcn: 0,
                    len: record_size.div_ceil(cluster_size),
                    lcn: Some(mft_lcn),
                }],
                size: record_size,
                initialized: record_size,
            },
            budget: Budget::new(),
            folders: RefCell::new(HashMap::new()),
            names: RefCell::new(HashMap::new()),
        };
        // Its own record maps the start of the MFT; an attribute list may
        // map the rest, from extension records in that start.
        let own = ntfs.base_record(MFT_RECORD)?;
        let first: Vec<&Attr> = own.attrs.iter().filter(|a| is_data(a)).collect();
        ntfs.mft = ntfs.stream(&first, "the MFT", true)?;
        let whole = ntfs.with_extensions(MFT_RECORD, own)?;
        ntfs.mft = ntfs.stream_of(&whole.attrs, AT_DATA, "", "the MFT")?;
        Ok(ntfs)
    }

    /// The volume's label (`$Volume`'s name), if it has one.
    pub(super) fn label(&self) -> Option<String> {
        let rec = self.base_record(VOLUME_RECORD).ok()?;
        let name = rec.attrs.iter().find(|a| a.ty == AT_VOLUME_NAME)?;
        let Body::Resident(raw) = &name.body else {
            return None;
        };
        let units: Vec<u16> = raw.chunks_exact(2).map(|u| le16(u, 0)).collect();
        let label: String = String::from_utf16_lossy(&units)
            .chars()
            .filter(|c| !c.is_control())
            .take(64)
            .collect();
        (!label.trim().is_empty()).then(|| label.trim().to_string())
    }

    fn spend(&self, len: u64) -> Result<(), String> {
        self.budget.spend(len)
    }

    /// Reads `buf.len()` bytes of `stream` from `at`: zeros where it is
    /// sparse or was never written, an error past its end.
    fn read_stream(&self, stream: &Stream, at: u64, buf: &mut [u8]) -> Result<(), String> {
        let end = at.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > stream.len()) {
            return Err("a read past the end of an NTFS attribute".into());
        }
        let (runs, initialized) = match stream {
            Stream::Resident(v) => {
                buf.copy_from_slice(&v[at as usize..at as usize + buf.len()]);
                return Ok(());
            }
            Stream::NonResident {
                runs, initialized, ..
            } => (runs, *initialized),
        };
        let cs = self.cluster_size;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = at + done as u64;
            let vcn = pos / cs;
            let i = runs.partition_point(|r| r.vcn + r.len <= vcn);
            let run = runs
                .get(i)
                .filter(|r| r.vcn <= vcn)
                .ok_or("an NTFS attribute's run list ends before its size")?;
            let run_end = (run.vcn + run.len).saturating_mul(cs);
            let n = ((run_end - pos) as usize).min(buf.len() - done);
            let part = &mut buf[done..done + n];
            match run.lcn {
                Some(lcn) if pos < initialized => {
                    self.dev.read_at(lcn * cs + (pos - run.vcn * cs), part)?;
                    // Bytes past the written part read as zeros.
                    let keep = (initialized - pos).min(n as u64) as usize;
                    part[keep..].fill(0);
                }
                _ => part.fill(0),
            }
            done += n;
        }
        Ok(())
    }

    /// File record `n` as written, without its extension records.
    fn base_record(&self, n: u64) -> Result<Record, String> {
        // Spent first: a reference past the MFT costs as much as one in it.
        self.spend(self.record_size)?;
        let at = n
            .checked_mul(self.record_size)
            .ok_or("an NTFS file record number is out of range")?;
        if at.saturating_add(self.record_size) > self.mft.len() {
            return Err(format!("NTFS file record {n} is past the end of the MFT"));
        }
        let mut buf = vec![0u8; self.record_size as usize];
        self.read_stream(&self.mft, at, &mut buf)?;
        fixup(&mut buf, b"FILE")?;
        let flags = le16(&buf, 22);
        if flags & RECORD_IN_USE == 0 {
            return Err(format!("NTFS file record {n} is not in use (deleted)"));
        }
        let attrs = attributes(&buf, self.clusters)?;
        let runs: usize = attrs
            .iter()
            .map(|a| match &a.body {
                Body::NonResident { runs, .. } => runs.len(),
                Body::Resident(_) => 0,
            })
            .sum();
        self.spend(runs as u64 * RUN_COST)?;
        Ok(Record {
            sequence: le16(&buf, 16),
            flags,
            base: le64(&buf, 32) & 0xffff_ffff_ffff,
            attrs,
        })
    }

    /// File record `n` with the attributes its attribute list puts in
    /// extension records.
    fn record(&self, n: u64) -> Result<Record, String> {
        let base = self.base_record(n)?;
        if base.base != 0 {
            return Err(format!(
                "NTFS file record {n} holds part of another file's attributes, not a file"
            ));
        }
        self.with_extensions(n, base)
    }

    fn with_extensions(&self, n: u64, mut base: Record) -> Result<Record, String> {
        let Some(list) = base.attrs.iter().find(|a| a.ty == AT_ATTRIBUTE_LIST) else {
            return Ok(base);
        };
        // Windows leaves junk in an attribute list's flags (ntfs-3g ignores
        // them too).
        let mut list = list.clone();
        list.flags = 0;
        let stream = self.stream(&[&list], "an attribute list", false)?;
        if stream.len() > MAX_ATTRIBUTE_LIST {
            return Err(format!(
                "NTFS file record {n}'s attribute list is too large"
            ));
        }
        let mut raw = vec![0u8; stream.len() as usize];
        self.spend(raw.len() as u64)?;
        self.read_stream(&stream, 0, &mut raw)?;
        let mut segments = Vec::new();
        let mut seen = HashSet::new();
        let mut at = 0usize;
        while at + 26 <= raw.len() {
            let len = usize::from(le16(&raw, at + 4));
            if len < 26 || at + len > raw.len() {
                return Err(format!("NTFS file record {n}'s attribute list is damaged"));
            }
            let reference = le64(&raw, at + 16);
            let record = reference & 0xffff_ffff_ffff;
            if record != n && seen.insert(record) {
                segments.push((record, (reference >> 48) as u16));
            }
            at += len;
        }
        if segments.len() > MAX_EXTENSIONS {
            return Err(format!(
                "NTFS file record {n} has too many extension records"
            ));
        }
        base.attrs.retain(|a| a.ty != AT_ATTRIBUTE_LIST);
        for (record, sequence) in segments {
            let ext = self.base_record(record)?;
            if ext.sequence != sequence || ext.base != n {
                return Err(format!(
                    "NTFS file record {n}'s attribute list names a stale record"
                ));
            }
            base.attrs.extend(ext.attrs);
        }
        Ok(base)
    }

    /// The value of attribute `ty` named `name`, joined from its pieces.
    fn stream_of(&self, attrs: &[Attr], ty: u32, name: &str, what: &str) -> Result<Stream, String> {
        let pieces: Vec<&Attr> = attrs
            .iter()
            .filter(|a| a.ty == ty && a.name == name)
            .collect();
        if pieces.is_empty() {
            return Err(format!("{what} has no data attribute"));
        }
        self.stream(&pieces, what, false)
    }

    /// Joins an attribute's pieces (one unless an attribute list split
    /// it) into one stream; `partial`: as far as the pieces go (the MFT
    /// before its extension records are read).
    fn stream(&self, pieces: &[&Attr], what: &str, partial: bool) -> Result<Stream, String> {
        let damaged = || format!("{what} is damaged: its NTFS attribute's pieces do not join");
        if pieces.iter().any(|a| a.flags & ATTR_ENCRYPTED != 0) {
            return Err(format!("{what} is encrypted (EFS)"));
        }
        if let [one] = pieces
            && let Body::Resident(v) = &one.body
        {
            return Ok(Stream::Resident(v.clone()));
        }
        let mut parts: Vec<&Attr> = pieces.to_vec();
        parts.sort_by_key(|a| match a.body {
            Body::NonResident { start, .. } => start,
            Body::Resident(_) => 0,
        });
        let mut runs = Vec::new();
        let mut next = 0u64;
        let (mut size, mut initialized) = (0, 0);
        for (i, a) in parts.iter().enumerate() {
            let Body::NonResident {
                start,
                count,
                runs: r,
                size: s,
                initialized: init,
                compression,
            } = &a.body
            else {
                return Err(damaged());
            };
            if *start != next {
                return Err(damaged());
            }
            if i == 0 {
                // Sparse attributes have a compression unit too: the
                // flags tell them apart.
                let unit_without_sparse = *compression != 0 && a.flags & ATTR_SPARSE == 0;
                if a.flags & ATTR_COMPRESSION_MASK != 0 || unit_without_sparse {
                    return Err(format!("{what} is compressed by NTFS"));
                }
                (size, initialized) = (*s, (*init).min(*s));
            }
            runs.extend_from_slice(r);
            next = start + count;
        }
        if partial {
            size = size.min(next.saturating_mul(self.cluster_size));
            initialized = initialized.min(size);
        }
        if size.div_ceil(self.cluster_size) > next {
            return Err(damaged());
        }
        Ok(Stream::NonResident {
            runs,
            size,
            initialized,
        })
    }

    /// What record `n` is, for people; its unnamed data stream when it is
    /// a file Tender reads.
    fn describe(&self, n: u64) -> Result<(Meta, Option<Stream>), String> {
        self.describe_record(n, &self.record(n)?)
    }

    fn describe_record(&self, n: u64, rec: &Record) -> Result<(Meta, Option<Stream>), String> {
        let si = rec
            .attrs
            .iter()
            .find(|a| a.ty == AT_STANDARD_INFORMATION)
            .and_then(|a| match &a.body {
                Body::Resident(v) if v.len() >= 36 => Some(v.clone()),
                _ => None,
            })
            .ok_or_else(|| format!("NTFS file record {n} has no standard information"))?;
        let (mtime, attributes) = (unix_time(le64(&si, 8)), le32(&si, 32));
        let meta = |kind: Kind, size: u64, note: Option<String>| Meta {
            kind,
            size,
            mode: match kind {
                Kind::Dir => 0o755,
                _ if attributes & FILE_READ_ONLY != 0 => 0o444,
                _ => 0o644,
            },
            uid: 0,
            gid: 0,
            mtime,
            note,
        };
        let is_dir = rec.flags & RECORD_IS_DIRECTORY != 0;
        if attributes & FILE_REPARSE_POINT != 0 {
            let tag = rec
                .attrs
                .iter()
                .find(|a| a.ty == AT_REPARSE_POINT)
                .and_then(|a| match &a.body {
                    Body::Resident(v) if v.len() >= 4 => Some(le32(v, 0)),
                    _ => None,
                });
            match tag {
                Some(REPARSE_SYMLINK | REPARSE_MOUNT_POINT) => {
                    return Ok((meta(Kind::Symlink, 0, None), None));
                }
                Some(REPARSE_WOF) => {
                    return Ok((
                        meta(
                            Kind::Other,
                            0,
                            Some("compacted by Windows (CompactOS/WOF): file-level recovery does not read it yet; restore the volume".into()),
                        ),
                        None,
                    ));
                }
                // A folder whose tag is no link (cloud files, containers):
                // its entries are its own.
                Some(tag) if is_dir && tag & REPARSE_NAME_SURROGATE == 0 => {}
                _ => {
                    return Ok((
                        meta(
                            Kind::Other,
                            0,
                            Some(format!(
                                "a Windows reparse point (tag {:#x}): file-level recovery does not follow it",
                                tag.unwrap_or(0)
                            )),
                        ),
                        None,
                    ));
                }
            }
        }
        if is_dir {
            return Ok((meta(Kind::Dir, 0, None), None));
        }
        match self.stream_of(&rec.attrs, AT_DATA, "", "this file") {
            Ok(stream) => Ok((meta(Kind::File, stream.len(), None), Some(stream))),
            Err(e) => Ok((
                meta(
                    Kind::Other,
                    0,
                    Some(format!(
                        "{e}: file-level recovery does not read it; restore the volume"
                    )),
                ),
                None,
            )),
        }
    }

    /// The record `path` names and what it is: each folder on the way is
    /// looked up in its index, and only the record found is read.
    fn lookup(&self, path: &str) -> Result<(u64, Meta), String> {
        let mut at = ROOT_RECORD;
        let mut meta = None;
        for name in path.split('/').filter(|c| !c.is_empty()) {
            if meta.as_ref().is_some_and(|m: &Meta| !m.is_dir()) {
                return Err(format!("{path}: not found"));
            }
            let names = self.folder_names(at)?;
            // Windows names are case-insensitive; an exact match first.
            let (_, record, sequence) = names
                .iter()
                .find(|(n, _, _)| n == name)
                .or_else(|| {
                    let lower = name.to_lowercase();
                    names.iter().find(|(n, _, _)| n.to_lowercase() == lower)
                })
                .ok_or_else(|| format!("{path}: not found"))?;
            let rec = self.record(*record)?;
            if *sequence != 0 && rec.sequence != *sequence {
                return Err(format!(
                    "{path}: the folder's entry names a file that was deleted (the index is damaged)"
                ));
            }
            meta = Some(self.describe_record(*record, &rec)?.0);
            at = *record;
        }
        match meta {
            Some(m) => Ok((at, m)),
            None => Ok((ROOT_RECORD, self.describe(ROOT_RECORD)?.0)),
        }
    }
}

impl<D: ReadAt> Filesystem for Ntfs<D> {
    fn metadata(&self, path: &str) -> Result<Meta, String> {
        self.lookup(path).map(|(_, m)| m)
    }

    fn read_dir(&self, path: &str) -> Result<Vec<(String, Meta)>, String> {
        let (record, meta) = self.lookup(path)?;
        if !meta.is_dir() {
            return Err(format!("{path} is not a folder"));
        }
        Ok(self
            .folder(record)?
            .iter()
            .map(|e| (e.name.clone(), e.meta.clone()))
            .collect())
    }

    fn open(&self, path: &str) -> Result<Box<dyn Read + '_>, String> {
        let (record, meta) = self.lookup(path)?;
        if !meta.is_file() {
            return Err(format!("{path} is not a regular file"));
        }
        let (_, stream) = self.describe(record)?;
        let stream = stream.ok_or_else(|| format!("{path} is not a regular file"))?;
        Ok(Box::new(File {
            fs: self,
            stream,
            pos: 0,
        }))
    }
}

/// A file being read.
struct File<'a, D> {
    fs: &'a Ntfs<D>,
    stream: Stream,
    pos: u64,
}

impl<D: ReadAt> Read for File<'_, D> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.stream.len().saturating_sub(self.pos);
        let n = (buf.len().min(READ_CHUNK) as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.fs
            .read_stream(&self.stream, self.pos, &mut buf[..n])
            .map_err(std::io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}
