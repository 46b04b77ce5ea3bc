//! Partition tables of a restore point's volume: GPT (with its protective
//! MBR, both headers and their CRCs) and MBR (primary and logical
//! partitions through the extended partition's EBR chain), read with every
//! offset and count checked, since the volume is data whoever could write
//! the source disk chose. Hand-written: the crates looked at (`gpt`,
//! `gptman`, `mbrman`) panic or allocate by counts read from disk (see
//! docs/design/file-level-real-disks.md).
//!
//! A volume without a partition table is one partition: the whole volume.

/// Bytes of a logical block as partition tables count them. EBS volumes
/// present 512-byte sectors.
pub const SECTOR: u64 = 512;

/// The most a GPT's entry array may be (128 entries of 128 bytes is 16
/// KiB; nothing sane is larger than this).
const MAX_GPT_ENTRIES_BYTES: u64 = 1 << 20;

/// Logical partitions an EBR chain may hold before it is given up.
const MAX_LOGICAL: usize = 128;

/// Where a volume's bytes come from.
pub trait ReadAt {
    /// Fills `buf` from byte `offset`; an error past the end.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String>;
    /// The volume's size in bytes.
    fn size(&self) -> u64;
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        (**self).read_at(offset, buf)
    }
    fn size(&self) -> u64 {
        (**self).size()
    }
}

/// How a volume is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Gpt,
    Mbr,
    /// No partition table: the filesystem starts at byte 0.
    Whole,
}

/// One partition of a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as `lsblk` numbers them (`nvme0n1p2`; MBR logical
    /// partitions from 5).
    pub number: u32,
    /// Its first byte in the volume.
    pub start: u64,
    pub size: u64,
    /// What its table says it is: a GPT type's name, or an MBR type byte.
    pub kind: String,
    /// A GPT partition's name.
    pub name: Option<String>,
}

/// A volume's partitions, and notes on what was odd about its table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub scheme: Scheme,
    pub partitions: Vec<Partition>,
    /// For people: a damaged primary GPT header read from the backup, a
    /// partition cut at the end of the volume, an EBR chain given up.
    pub notes: Vec<String>,
}

/// Reads the partition table of `disk`.
pub fn read(disk: &dyn ReadAt) -> Result<Layout, String> {
    let size = disk.size();
    let whole = || Layout {
        scheme: Scheme::Whole,
        partitions: vec![Partition {
            number: 1,
            start: 0,
            size,
            kind: "whole volume".into(),
            name: None,
        }],
        notes: Vec::new(),
    };
    if size < 2 * SECTOR {
        return Ok(whole());
    }
    let mut mbr = [0u8; 512];
    disk.read_at(0, &mut mbr)?;
    if mbr[510..512] != [0x55, 0xAA] {
        return Ok(whole());
    }
    let entries: Vec<MbrEntry> = (0..4).map(|i| MbrEntry::at(&mbr, 446 + 16 * i)).collect();
    // A filesystem's boot sector also ends in 55 AA (FAT, NTFS): a table
    // whose entries are not plausible is not one.
    if entries
        .iter()
        .any(|e| e.kind != 0 && (e.status & 0x7F != 0 || e.sectors == 0))
    {
        return Ok(whole());
    }
    if entries.iter().any(|e| e.kind == 0xEE) {
        return gpt(disk);
    }
    if entries.iter().all(|e| e.kind == 0) {
        return Ok(whole());
    }
    mbr_layout(disk, &entries)
}

#[derive(Clone, Copy, Debug)]
struct MbrEntry {
    status: u8,
    kind: u8,
    first: u32,
    sectors: u32,
}

impl MbrEntry {
    fn at(sector: &[u8; 512], at: usize) -> Self {
        MbrEntry {
            status: sector[at],
            kind: sector[at + 4],
            first: le32(&sector[at + 8..at + 12]),
            sectors: le32(&sector[at + 12..at + 16]),
        }
    }

    fn extended(self) -> bool {
        matches!(self.kind, 0x05 | 0x0F | 0x85)
    }
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// A partition `[first, first + sectors)` in sectors, cut to the volume.
fn place(
    disk_size: u64,
    (number, first, sectors): (u32, u64, u64),
    kind: String,
    name: Option<String>,
    notes: &mut Vec<String>,
) -> Option<Partition> {
    let start = first.checked_mul(SECTOR)?;
    if start >= disk_size || sectors == 0 {
        notes.push(format!(
            "partition {number} starts past the end of the volume and is left out"
        ));
        return None;
    }
    let mut size = sectors.saturating_mul(SECTOR);
    if size > disk_size - start {
        notes.push(format!(
            "partition {number} runs past the end of the volume and is cut there"
        ));
        size = disk_size - start;
    }
    Some(Partition {
        number,
        start,
        size,
        kind,
        name,
    })
}

fn mbr_layout(disk: &dyn ReadAt, entries: &[MbrEntry]) -> Result<Layout, String> {
    let size = disk.size();
    let mut layout = Layout {
        scheme: Scheme::Mbr,
        partitions: Vec::new(),
        notes: Vec::new(),
    };
    for (i, e) in entries.iter().enumerate() {
        if e.kind == 0 || e.extended() {
            continue;
        }
        let at = (i as u32 + 1, u64::from(e.first), u64::from(e.sectors));
        layout
            .partitions
            .extend(place(size, at, mbr_kind(e.kind), None, &mut layout.notes));
    }
    if let Some(ext) = entries.iter().find(|e| e.extended()) {
        logical(disk, *ext, &mut layout)?;
    }
    Ok(layout)
}

/// The logical partitions of the extended partition `ext`: each EBR names
/// one, and the next EBR relative to the extended partition's start.
fn logical(disk: &dyn ReadAt, ext: MbrEntry, layout: &mut Layout) -> Result<(), String> {
    let base = u64::from(ext.first);
    let end = base + u64::from(ext.sectors);
    let mut ebr_at = base;
    let mut number = 5;
    for _ in 0..MAX_LOGICAL {
        if ebr_at >= end || ebr_at.saturating_mul(SECTOR) >= disk.size() {
            layout
                .notes
                .push("the extended partition's chain leaves it; the rest is left out".into());
            return Ok(());
        }
        let mut sector = [0u8; 512];
        disk.read_at(ebr_at * SECTOR, &mut sector)?;
        if sector[510..512] != [0x55, 0xAA] {
            layout.notes.push(format!(
                "the extended partition's record at sector {ebr_at} is not one; the rest is left out"
            ));
            return Ok(());
        }
        let this = MbrEntry::at(&sector, 446);
        let next = MbrEntry::at(&sector, 462);
        if this.kind != 0 && this.sectors != 0 {
            let first = ebr_at + u64::from(this.first);
            let at = (number, first, u64::from(this.sectors));
            let kind = mbr_kind(this.kind);
            layout
                .partitions
                .extend(place(disk.size(), at, kind, None, &mut layout.notes));
            number += 1;
        }
        if next.kind == 0 || next.first == 0 {
            return Ok(());
        }
        // Strictly forward: a chain that points back would loop.
        let following = base + u64::from(next.first);
        if following <= ebr_at {
            layout
                .notes
                .push("the extended partition's chain loops; the rest is left out".into());
            return Ok(());
        }
        ebr_at = following;
    }
    layout.notes.push(format!(
        "more than {MAX_LOGICAL} logical partitions; the rest are left out"
    ));
    Ok(())
}

fn mbr_kind(kind: u8) -> String {
    let name = match kind {
        0x01 | 0x04 | 0x06 | 0x0B | 0x0C | 0x0E => "FAT",
        0x07 => "NTFS/exFAT",
        0x82 => "Linux swap",
        0x83 => "Linux",
        0x8E => "Linux LVM",
        0xEF => "EFI system",
        0xFD => "Linux RAID",
        _ => return format!("type 0x{kind:02x}"),
    };
    format!("{name} (0x{kind:02x})")
}

/// The GPT of `disk`: the primary header, else the backup at the last
/// sector, each used only when its CRCs hold.
fn gpt(disk: &dyn ReadAt) -> Result<Layout, String> {
    let last = disk.size() / SECTOR - 1;
    let mut notes = Vec::new();
    let (header, entries) = match gpt_at(disk, 1) {
        Ok(found) => found,
        Err(primary) => match gpt_at(disk, last) {
            Ok(found) => {
                notes.push(format!(
                    "the primary GPT header is damaged ({primary}); read from the backup header"
                ));
                found
            }
            Err(backup) => {
                return Err(format!(
                    "the volume has a protective MBR but no usable GPT: primary header: {primary}; backup header: {backup}"
                ));
            }
        },
    };
    let mut partitions = Vec::new();
    for i in 0..header.count {
        let at = (i * header.entry_size) as usize;
        let e = &entries[at..at + 128];
        let type_guid = &e[0..16];
        if type_guid.iter().all(|b| *b == 0) {
            continue;
        }
        let (first, last) = (le64(&e[32..40]), le64(&e[40..48]));
        let number = i as u32 + 1;
        if last < first {
            notes.push(format!(
                "partition {number} ends before it starts and is left out"
            ));
            continue;
        }
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|u| *u != 0)
            .collect();
        let name = String::from_utf16_lossy(&units);
        let at = (number, first, last - first + 1);
        partitions.extend(place(
            disk.size(),
            at,
            gpt_kind(type_guid),
            (!name.is_empty()).then_some(name),
            &mut notes,
        ));
    }
    Ok(Layout {
        scheme: Scheme::Gpt,
        partitions,
        notes,
    })
}

struct GptHeader {
    count: u64,
    entry_size: u64,
}

/// The GPT header at sector `lba` and its entry array, once both CRCs
/// hold and every size is within bounds.
fn gpt_at(disk: &dyn ReadAt, lba: u64) -> Result<(GptHeader, Vec<u8>), String> {
    let mut h = [0u8; 512];
    disk.read_at(lba * SECTOR, &mut h)?;
    if &h[0..8] != b"EFI PART" {
        return Err(format!("no GPT signature at sector {lba}"));
    }
    let header_size = le32(&h[12..16]) as usize;
    if !(92..=512).contains(&header_size) {
        return Err(format!("header size {header_size} is not valid"));
    }
    let stored = le32(&h[16..20]);
    let mut copy = h;
    copy[16..20].fill(0);
    if crc32fast::hash(&copy[..header_size]) != stored {
        return Err("its CRC does not match".into());
    }
    let entries_lba = le64(&h[72..80]);
    let count = u64::from(le32(&h[80..84]));
    let entry_size = u64::from(le32(&h[84..88]));
    if entry_size < 128 || !entry_size.is_power_of_two() {
        return Err(format!("entry size {entry_size} is not valid"));
    }
    let bytes = count.saturating_mul(entry_size);
    if bytes > MAX_GPT_ENTRIES_BYTES {
        return Err(format!(
            "{count} entries of {entry_size} bytes is more than a partition table holds"
        ));
    }
    let at = entries_lba
        .checked_mul(SECTOR)
        .filter(|at| at.saturating_add(bytes) <= disk.size())
        .ok_or_else(|| format!("its entries at sector {entries_lba} are past the end"))?;
    let mut entries = vec![0u8; bytes as usize];
    disk.read_at(at, &mut entries)?;
    if crc32fast::hash(&entries) != le32(&h[88..92]) {
        return Err("the CRC of its entries does not match".into());
    }
    Ok((GptHeader { count, entry_size }, entries))
}

/// The name of a GPT partition type, from its GUID as stored (the first
/// three fields little-endian).
fn gpt_kind(guid: &[u8]) -> String {
    let text = format!(
        "{:08X}-{:04X}-{:04X}-{}-{}",
        le32(&guid[0..4]),
        u16::from_le_bytes([guid[4], guid[5]]),
        u16::from_le_bytes([guid[6], guid[7]]),
        hex::encode_upper(&guid[8..10]),
        hex::encode_upper(&guid[10..16])
    );
    let name = match text.as_str() {
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => "EFI system",
        "21686148-6449-6E6F-744E-656564454649" => "BIOS boot",
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => "Linux filesystem",
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" => "Linux root (x86-64)",
        "B921B045-1DF0-41C3-AF44-4C6F280D3FAE" => "Linux root (ARM64)",
        "BC13C2FF-59E6-4262-A352-B275FD6F7172" => "Linux extended boot",
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => "Linux swap",
        "E6D6D379-F507-44C2-A23C-238F2A3DF928" => "Linux LVM",
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => "Microsoft basic data",
        "E3C9E316-0B5C-4DB8-817D-F92DF00215AE" => "Microsoft reserved",
        "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC" => "Windows recovery",
        _ => return text,
    };
    name.into()
}

#[cfg(test)]
pub(super) mod tests;
