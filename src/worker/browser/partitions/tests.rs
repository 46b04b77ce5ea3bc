//! Partition tables built byte by byte as `sfdisk` writes them (GPT with
//! its protective MBR and backup header; MBR with an extended partition),
//! then damaged and made hostile.

use super::*;
use crate::worker::browser::filesystem::Filesystem;

/// A volume in memory.
#[derive(Clone)]
pub(in crate::worker::browser) struct Image(pub Vec<u8>);

impl ReadAt for Image {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        Self::read_slice(&self.0, offset, buf)
    }
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
}

/// A seeded xorshift generator: the same "random" damage every run.
pub(in crate::worker::browser) fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// `rounds` rounds of seeded damage to `d`: each changes 1 to 4 bytes, at
/// the offset and to the value `damage` draws with the generator, lets
/// `look` read the damaged volume, and puts the bytes back.
pub(in crate::worker::browser) fn damage_rounds(
    d: &mut [u8],
    seed: u64,
    rounds: usize,
    mut damage: impl FnMut(&mut dyn FnMut() -> u64) -> (usize, u8),
    mut look: impl FnMut(&[u8]),
) {
    let mut next = xorshift(seed);
    for _ in 0..rounds {
        let mut saved = Vec::new();
        for _ in 0..1 + next() % 4 {
            let (at, value) = damage(&mut next);
            saved.push((at, d[at]));
            d[at] = value;
        }
        look(d);
        for (at, b) in saved.into_iter().rev() {
            d[at] = b;
        }
    }
}

/// Damage to the first 512 bytes a quarter of the time, else within
/// `hot`, to any value.
pub(in crate::worker::browser) fn boot_or(
    hot: std::ops::Range<usize>,
) -> impl FnMut(&mut dyn FnMut() -> u64) -> (usize, u8) {
    move |next| {
        let at = if next().is_multiple_of(4) {
            next() as usize % 512
        } else {
            hot.start + next() as usize % hot.len()
        };
        (at, next() as u8)
    }
}

/// What a person does first with a volume: its root folder, and the first
/// six entries in it opened or read a little; errors are fine, panics not.
pub(in crate::worker::browser) fn browse_a_little(fs: &dyn Filesystem) {
    let Ok(list) = fs.read_dir("/") else {
        return;
    };
    for (name, meta) in list.into_iter().take(6) {
        let path = format!("/{name}");
        if meta.is_dir() {
            let _ = fs.read_dir(&path);
        } else if let Ok(mut f) = fs.open(&path) {
            let mut buf = vec![0u8; 64 << 10];
            let _ = std::io::Read::read(&mut f, &mut buf);
        }
    }
}

/// A volume borrowed, so that damaging it in place needs no copy.
pub(in crate::worker::browser) struct Borrowed<'a>(pub &'a [u8]);

impl ReadAt for Borrowed<'_> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        Image::read_slice(self.0, offset, buf)
    }
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
}

impl Image {
    fn read_slice(data: &[u8], offset: u64, buf: &mut [u8]) -> Result<(), String> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|end| *end <= data.len() as u64)
            .ok_or("read past the end")?;
        buf.copy_from_slice(&data[offset as usize..end as usize]);
        Ok(())
    }
}

const MIB: u64 = 1 << 20;
pub(in crate::worker::browser) const EFI: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
pub(in crate::worker::browser) const LINUX: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
const BASIC_DATA: &str = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7";

/// A GUID as GPT stores it (first three fields little-endian).
fn guid(text: &str) -> [u8; 16] {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let b = hex::decode(hex).unwrap();
    let mut out = [0u8; 16];
    out[0..4].copy_from_slice(&[b[3], b[2], b[1], b[0]]);
    out[4..6].copy_from_slice(&[b[5], b[4]]);
    out[6..8].copy_from_slice(&[b[7], b[6]]);
    out[8..16].copy_from_slice(&b[8..16]);
    out
}

pub(in crate::worker::browser) fn mbr_entry(
    sector: &mut [u8],
    i: usize,
    kind: u8,
    first: u32,
    sectors: u32,
) {
    let at = 446 + 16 * i;
    sector[at + 4] = kind;
    sector[at + 8..at + 12].copy_from_slice(&first.to_le_bytes());
    sector[at + 12..at + 16].copy_from_slice(&sectors.to_le_bytes());
    sector[510] = 0x55;
    sector[511] = 0xAA;
}

/// A GPT disk of `size` bytes with `parts` (type, first LBA, last LBA,
/// name), 128 entries, the backup header and entries at the end.
pub(in crate::worker::browser) fn gpt_disk(size: u64, parts: &[(&str, u64, u64, &str)]) -> Vec<u8> {
    let mut d = vec![0u8; size as usize];
    let sectors = size / SECTOR;
    mbr_entry(&mut d[..512], 0, 0xEE, 1, (sectors - 1) as u32);
    let mut entries = vec![0u8; 128 * 128];
    for (i, (kind, first, last, name)) in parts.iter().enumerate() {
        let e = &mut entries[i * 128..(i + 1) * 128];
        e[0..16].copy_from_slice(&guid(kind));
        e[16] = i as u8 + 1; // a unique GUID, whatever it is
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&last.to_le_bytes());
        for (j, u) in name.encode_utf16().enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
        }
    }
    let entries_crc = crc32fast::hash(&entries);
    let header = |this: u64, other: u64, entries_lba: u64| {
        let mut h = [0u8; 92];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&this.to_le_bytes());
        h[32..40].copy_from_slice(&other.to_le_bytes());
        h[40..48].copy_from_slice(&34u64.to_le_bytes());
        h[48..56].copy_from_slice(&(sectors - 34).to_le_bytes());
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    let last = sectors - 1;
    d[512..604].copy_from_slice(&header(1, last, 2));
    d[1024..1024 + entries.len()].copy_from_slice(&entries);
    let backup_entries = (last - 32) * SECTOR;
    d[backup_entries as usize..backup_entries as usize + entries.len()].copy_from_slice(&entries);
    let at = (last * SECTOR) as usize;
    d[at..at + 92].copy_from_slice(&header(last, 1, last - 32));
    d
}

/// The layout of an Amazon Linux 2023 root volume (EFI, BIOS boot, root),
/// as a small disk.
fn al2023_like() -> Vec<u8> {
    gpt_disk(
        64 * MIB,
        &[
            (LINUX, 24576, 131_038, "Linux"),
            (
                "21686148-6449-6E6F-744E-656564454649",
                2048,
                4095,
                "BIOS Boot Partition",
            ),
            (EFI, 4096, 24575, "EFI System Partition"),
        ],
    )
}

#[test]
fn a_gpt_volume_lists_every_partition_with_its_type_and_name() {
    let layout = read(&Image(al2023_like())).unwrap();
    assert_eq!(layout.scheme, Scheme::Gpt);
    assert!(layout.notes.is_empty(), "{:?}", layout.notes);
    let got: Vec<(u32, u64, u64, &str, Option<&str>)> = layout
        .partitions
        .iter()
        .map(|p| {
            (
                p.number,
                p.start,
                p.size,
                p.kind.as_str(),
                p.name.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                1,
                24576 * 512,
                (131_038 - 24576 + 1) * 512,
                "Linux filesystem",
                Some("Linux")
            ),
            (
                2,
                2048 * 512,
                2048 * 512,
                "BIOS boot",
                Some("BIOS Boot Partition")
            ),
            (
                3,
                4096 * 512,
                20480 * 512,
                "EFI system",
                Some("EFI System Partition")
            ),
        ]
    );
}

#[test]
fn a_damaged_primary_header_is_read_from_the_backup_and_said() {
    let mut d = gpt_disk(8 * MIB, &[(BASIC_DATA, 2048, 16000, "data")]);
    d[512 + 40] ^= 0xFF; // the primary header's CRC no longer matches
    let layout = read(&Image(d.clone())).unwrap();
    assert_eq!(layout.partitions.len(), 1);
    assert_eq!(layout.partitions[0].kind, "Microsoft basic data");
    assert!(layout.notes[0].contains("backup"), "{:?}", layout.notes);
    // Both damaged: an error that says so, not an empty volume.
    let last = d.len() - 512;
    d[last + 40] ^= 0xFF;
    let e = read(&Image(d)).unwrap_err();
    assert!(e.contains("no usable GPT") && e.contains("CRC"), "{e}");
}

#[test]
fn hostile_gpt_sizes_are_refused_without_allocating_them() {
    let mut d = gpt_disk(8 * MIB, &[(LINUX, 2048, 4000, "x")]);
    // 2^32-1 entries of 2^31 bytes, CRC recomputed: refused by size.
    d[512 + 80..512 + 84].copy_from_slice(&u32::MAX.to_le_bytes());
    d[512 + 84..512 + 88].copy_from_slice(&(1u32 << 31).to_le_bytes());
    d[512 + 16..512 + 20].fill(0);
    let crc = crc32fast::hash(&d[512..604]);
    d[512 + 16..512 + 20].copy_from_slice(&crc.to_le_bytes());
    let layout = read(&Image(d)).unwrap();
    assert!(layout.notes[0].contains("more than a partition table holds"));
    // A partition past the end is left out; one running past it is cut.
    let d = gpt_disk(
        8 * MIB,
        &[
            (LINUX, 2048, 1 << 40, "long"),
            (LINUX, 1 << 50, 1 << 51, "far"),
        ],
    );
    let layout = read(&Image(d)).unwrap();
    assert_eq!(layout.partitions.len(), 1);
    assert_eq!(layout.partitions[0].size, 8 * MIB - 2048 * 512);
    assert_eq!(layout.notes.len(), 2, "{:?}", layout.notes);
}

/// An MBR disk: a Linux primary, an NTFS primary, and an extended
/// partition with two logical ones (sfdisk's layout: each EBR one sector
/// before its partition's start, the next EBR relative to the extended
/// partition's start).
fn mbr_disk() -> Vec<u8> {
    let mut d = vec![0u8; (16 * MIB) as usize];
    mbr_entry(&mut d[..512], 0, 0x83, 2048, 4096);
    mbr_entry(&mut d[..512], 1, 0x07, 6144, 4096);
    mbr_entry(&mut d[..512], 2, 0x05, 10240, 20480);
    // EBR 1 at 10240: a FAT partition 2048 sectors further, next EBR at +8192.
    let ebr1 = 10240 * 512;
    mbr_entry(&mut d[ebr1..ebr1 + 512], 0, 0x0C, 2048, 4096);
    mbr_entry(&mut d[ebr1..ebr1 + 512], 1, 0x05, 8192, 8192);
    // EBR 2 at 18432: a Linux partition, the last.
    let ebr2 = 18432 * 512;
    mbr_entry(&mut d[ebr2..ebr2 + 512], 0, 0x83, 2048, 4096);
    d
}

#[test]
fn an_mbr_volume_lists_primary_and_logical_partitions() {
    let layout = read(&Image(mbr_disk())).unwrap();
    assert_eq!(layout.scheme, Scheme::Mbr);
    let got: Vec<(u32, u64, &str)> = layout
        .partitions
        .iter()
        .map(|p| (p.number, p.start / 512, p.kind.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (1, 2048, "Linux (0x83)"),
            (2, 6144, "NTFS/exFAT (0x07)"),
            (5, 12288, "FAT (0x0c)"),
            (6, 20480, "Linux (0x83)"),
        ]
    );
    assert!(layout.notes.is_empty(), "{:?}", layout.notes);
}

#[test]
fn an_ebr_chain_that_loops_or_leaves_is_given_up_and_said() {
    let mut d = mbr_disk();
    // EBR 2 points back at EBR 1.
    let ebr2 = 18432 * 512;
    mbr_entry(&mut d[ebr2..ebr2 + 512], 1, 0x05, 0, 8192);
    d[ebr2 + 462 + 8..ebr2 + 462 + 12].copy_from_slice(&1u32.to_le_bytes());
    let layout = read(&Image(d)).unwrap();
    assert_eq!(layout.partitions.len(), 4);
    assert!(layout.notes[0].contains("loops"), "{:?}", layout.notes);
    // Pointing far past the end.
    let mut d = mbr_disk();
    let ebr1 = 10240 * 512;
    d[ebr1 + 462 + 8..ebr1 + 462 + 12].copy_from_slice(&u32::MAX.to_le_bytes());
    let layout = read(&Image(d)).unwrap();
    assert_eq!(layout.partitions.len(), 3);
    assert!(layout.notes[0].contains("leaves"), "{:?}", layout.notes);
}

#[test]
fn a_volume_without_a_table_is_one_partition() {
    // A filesystem at byte 0 (ext4: nothing at 510), and a FAT boot
    // sector, which ends in 55 AA but holds code where entries would be.
    let mut fat = vec![0u8; (4 * MIB) as usize];
    fat[0..3].copy_from_slice(&[0xEB, 0x58, 0x90]);
    fat[446..510].fill(0x33);
    fat[510] = 0x55;
    fat[511] = 0xAA;
    for d in [vec![0u8; (4 * MIB) as usize], fat] {
        let layout = read(&Image(d)).unwrap();
        assert_eq!(layout.scheme, Scheme::Whole);
        assert_eq!(layout.partitions.len(), 1);
        assert_eq!(
            (layout.partitions[0].start, layout.partitions[0].size),
            (0, 4 * MIB)
        );
    }
}

#[test]
fn random_tables_never_panic() {
    // Seeded: every table byte random, signatures set so that both parsers
    // run.
    let mut next = xorshift(0x2545_F491_4F6C_DD1D);
    let base = gpt_disk(MIB, &[(LINUX, 40, 1000, "x")]);
    for round in 0..3000 {
        let mut d = base.clone();
        let span = if round % 2 == 0 { 446..1024 } else { 446..2048 };
        for i in span {
            if next().is_multiple_of(4) {
                d[i] = next() as u8;
            }
        }
        d[510] = 0x55;
        d[511] = 0xAA;
        if round % 3 == 0 {
            d[446 + 4] = [0xEE, 0x05, 0x0F][(next() % 3) as usize];
        }
        let _ = read(&Image(d));
    }
}
