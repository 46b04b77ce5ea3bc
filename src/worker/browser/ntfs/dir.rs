//! NTFS folders: the `$I30` index of file names, a B+ tree whose root is
//! the resident `$INDEX_ROOT` and whose other nodes are `INDX` blocks of
//! `$INDEX_ALLOCATION`. A listing walks every node reachable from the
//! root, each once (a crafted index can point back up), and reads each
//! entry's own file record for what it is.

use std::collections::HashSet;
use std::rc::Rc;

use super::{
    FIRST_USER_RECORD, Kind, Meta, Ntfs, RECORD_IS_DIRECTORY, ReadAt, fixup, le16, le32, le64,
};

const AT_INDEX_ROOT: u32 = 0x90;
const AT_INDEX_ALLOCATION: u32 = 0xa0;
/// The index of a folder is named `$I30` and indexes `$FILE_NAME` (0x30).
const FOLDER_INDEX: &str = "$I30";
const AT_FILE_NAME: u32 = 0x30;

const ENTRY_HAS_CHILD: u32 = 0x1;
const ENTRY_LAST: u32 = 0x2;
/// A name in the DOS namespace only: the 8.3 alias of a long name that
/// has its own entry.
const NAMESPACE_DOS: u8 = 2;

/// One entry of a folder.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub name: String,
    pub meta: Meta,
}

/// A name an index node holds: the name, the record and the sequence
/// number it expects there.
pub(super) type Named = (String, u64, u16);

/// The most names one folder may list (Windows has no limit; ten million
/// is more than any real folder and bounds a crafted one's memory).
const MAX_FOLDER_NAMES: usize = 10_000_000;
/// Bytes of budget a name costs beyond its own (what it takes in memory).
const NAME_COST: u64 = 48;

/// The entries of one index node (its header first), and the index
/// blocks below it.
fn node_entries(
    node: &[u8],
    names: &mut Vec<Named>,
    children: &mut Vec<u64>,
) -> Result<(), String> {
    let bad = || "an NTFS folder index is damaged".to_string();
    if node.len() < 16 {
        return Err(bad());
    }
    let mut at = le32(node, 0) as usize;
    let end = (le32(node, 4) as usize).min(node.len());
    loop {
        if at.checked_add(16).is_none_or(|e| e > end) {
            return Err(bad());
        }
        let len = usize::from(le16(node, at + 8));
        let key_len = usize::from(le16(node, at + 10));
        let flags = le32(node, at + 12);
        if len < 16 || len % 8 != 0 || len > end - at {
            return Err(bad());
        }
        if flags & ENTRY_HAS_CHILD != 0 {
            if len < 24 {
                return Err(bad());
            }
            children.push(le64(node, at + len - 8));
        }
        if flags & ENTRY_LAST != 0 {
            return Ok(());
        }
        let key = node.get(at + 16..at + 16 + key_len).ok_or_else(bad)?;
        if key_len > len - 16 || key.len() < 66 {
            return Err(bad());
        }
        let name_len = usize::from(key[64]);
        let raw = key.get(66..66 + 2 * name_len).ok_or_else(bad)?;
        if key[65] != NAMESPACE_DOS {
            let units: Vec<u16> = raw.chunks_exact(2).map(|u| le16(u, 0)).collect();
            let reference = le64(node, at);
            names.push((
                String::from_utf16_lossy(&units),
                reference & 0xffff_ffff_ffff,
                (reference >> 48) as u16,
            ));
        }
        at += len;
    }
}

impl<D: ReadAt> Ntfs<D> {
    /// The entries of the folder in record `n`, listed once per opened
    /// filesystem.
    pub(super) fn folder(&self, n: u64) -> Result<Rc<Vec<Entry>>, String> {
        if let Some(found) = self.folders.borrow().get(&n) {
            return Ok(found.clone());
        }
        let entries = Rc::new(self.list(n)?);
        self.folders.borrow_mut().insert(n, entries.clone());
        Ok(entries)
    }

    /// The names folder `n` lists, found once per opened filesystem:
    /// without NTFS's own files, the folder itself (`.` in the root), DOS
    /// aliases and a second entry of a name already listed.
    pub(super) fn folder_names(&self, n: u64) -> Result<Rc<Vec<Named>>, String> {
        if let Some(found) = self.names.borrow().get(&n) {
            return Ok(found.clone());
        }
        let names = Rc::new(self.names(n)?);
        self.names.borrow_mut().insert(n, names.clone());
        Ok(names)
    }

    /// The names in folder `n`'s index, in no particular order, each
    /// once.
    fn names(&self, n: u64) -> Result<Vec<Named>, String> {
        let rec = self.record(n)?;
        let damaged = |what: &str| format!("an NTFS folder's index is damaged: {what}");
        if rec.flags & RECORD_IS_DIRECTORY == 0 {
            return Err("not a folder".into());
        }
        let root = rec
            .attrs
            .iter()
            .find(|a| a.ty == AT_INDEX_ROOT && a.name == FOLDER_INDEX)
            .and_then(|a| match &a.body {
                super::Body::Resident(v) if v.len() >= 32 => Some(v.clone()),
                _ => None,
            })
            .ok_or_else(|| damaged("no index root"))?;
        if le32(&root, 0) != AT_FILE_NAME {
            return Err(damaged("it does not index names"));
        }
        let block_size = u64::from(le32(&root, 8));
        let mut out = Vec::new();
        let mut listed = HashSet::new();
        let mut keep = |found: Vec<Named>| -> Result<(), String> {
            for (name, record, sequence) in found {
                if record < FIRST_USER_RECORD
                    || record == n
                    || name.is_empty()
                    || name == "."
                    || name == ".."
                    || name.contains('/')
                    || name.contains('\0')
                    || listed.contains(&name)
                {
                    continue;
                }
                self.spend(name.len() as u64 + NAME_COST)?;
                if out.len() >= MAX_FOLDER_NAMES {
                    return Err(damaged("it lists more than ten million names"));
                }
                listed.insert(name.clone());
                out.push((name, record, sequence));
            }
            Ok(())
        };
        let mut found = Vec::new();
        let mut children = Vec::new();
        node_entries(&root[16..], &mut found, &mut children)?;
        keep(std::mem::take(&mut found))?;
        if children.is_empty() {
            return Ok(out);
        }
        if !(512..=65536).contains(&block_size) || !block_size.is_power_of_two() {
            return Err(damaged("its block size"));
        }
        let blocks = self.stream_of(
            &rec.attrs,
            AT_INDEX_ALLOCATION,
            FOLDER_INDEX,
            "a folder's index",
        )?;
        // Blocks are numbered in clusters, or in 512-byte units when a
        // cluster holds more than one.
        let unit = if block_size >= self.cluster_size {
            self.cluster_size
        } else {
            512
        };
        let mut seen: HashSet<u64> = children.iter().copied().collect();
        let mut todo = children;
        let mut buf = vec![0u8; block_size as usize];
        while let Some(vcn) = todo.pop() {
            let at = vcn
                .checked_mul(unit)
                .filter(|at| at % block_size == 0)
                .ok_or_else(|| damaged("a block number"))?;
            self.spend(block_size)?;
            self.read_stream(&blocks, at, &mut buf)?;
            fixup(&mut buf, b"INDX")?;
            if le64(&buf, 16) != vcn {
                return Err(damaged("a block is not the one its parent names"));
            }
            let mut below = Vec::new();
            node_entries(&buf[24..], &mut found, &mut below)?;
            keep(std::mem::take(&mut found))?;
            todo.extend(below.into_iter().filter(|c| seen.insert(*c)));
        }
        Ok(out)
    }

    /// Folder `n`'s entries, each with what its own record says; an
    /// entry whose record cannot be read is listed with why.
    fn list(&self, n: u64) -> Result<Vec<Entry>, String> {
        let mut out = Vec::new();
        for (name, record, sequence) in self.folder_names(n)?.iter() {
            let (name, record, sequence) = (name.clone(), *record, *sequence);
            let meta = match self.record(record) {
                Ok(rec) if sequence != 0 && rec.sequence != sequence => Meta::synthetic(
                    Kind::Other,
                    0,
                    Some(
                        "the folder's entry names a file that was deleted: the index is damaged"
                            .into(),
                    ),
                ),
                Ok(rec) => match self.describe_record(record, &rec) {
                    Ok((meta, _)) => meta,
                    Err(e) if e == super::Budget::SPENT => return Err(e),
                    Err(e) => Meta::synthetic(Kind::Other, 0, Some(e)),
                },
                Err(e) if e == super::Budget::SPENT => return Err(e),
                Err(e) => Meta::synthetic(Kind::Other, 0, Some(e)),
            };
            out.push(Entry { name, meta });
        }
        Ok(out)
    }
}
