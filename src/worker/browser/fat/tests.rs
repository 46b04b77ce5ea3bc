//! FAT32, FAT16 and FAT12 images made by `mkfs.vfat` (Debian package
//! dosfstools) and filled by `mcopy` (mtools), then damaged at random.

use std::process::Command;

use super::*;
use crate::worker::browser::disk::testing::{sbin, scratch, sorted_names};
use crate::worker::browser::partitions::tests::{
    Borrowed, Image, boot_or, browse_a_little, damage_rounds,
};

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// Times `mcopy -m` keeps: 2021-03-04 05:06:08 (FAT counts 2 seconds).
const MTIME: i64 = 1_614_834_368;

fn run(cmd: &mut Command) {
    let out = cmd
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?} (Debian packages dosfstools, mtools): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A FAT image of `size_mib` made with `mkfs_args`, holding an EFI
/// system partition's usual files, long and non-ASCII names, a folder of
/// 600 files and a file of many clusters.
pub(in crate::worker::browser) fn image(size_mib: u64, mkfs_args: &[&str]) -> Image {
    let dir = scratch("fat");
    let src = dir.join("src");
    let file = |path: &str, contents: &[u8]| {
        let at = src.join(path);
        std::fs::create_dir_all(at.parent().expect("a parent")).expect("source folder");
        std::fs::write(&at, contents).expect("source file");
        let t = std::fs::FileTimes::new()
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(MTIME as u64));
        std::fs::File::options()
            .write(true)
            .open(&at)
            .and_then(|f| f.set_times(t))
            .expect("set the time");
    };
    file("EFI/BOOT/BOOTX64.EFI", b"MZ boot");
    file("EFI/amzn/grub.cfg", b"set timeout=0\n");
    file("A long file name with spaces.txt", b"long");
    // Long names (mtools writes a lone lower-case non-ASCII 8.3 name in
    // its own code page, 850, with no long name: see `short_names`).
    file("ünïcode name.txt", b"utf");
    file("Ärger.txt", b"upper");
    file("data.bin", &data(300_000));
    for i in 0..600 {
        file(&format!("many/file-{i}.txt"), format!("{i}\n").as_bytes());
    }
    let img = dir.join("fat.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(size_mib << 20))
        .expect("image file");
    run(Command::new(sbin("mkfs.vfat"))
        .args(mkfs_args)
        .args(["-n", "ESP"])
        .arg(&img));
    for entry in std::fs::read_dir(&src).expect("the source") {
        let path = entry.expect("an entry").path();
        run(Command::new("mcopy")
            .args(["-s", "-m", "-i"])
            .arg(&img)
            .arg(&path)
            .arg("::/"));
    }
    let bytes = std::fs::read(&img).expect("read the image");
    std::fs::remove_dir_all(&dir).expect("remove the temporary folder");
    Image(bytes)
}

fn names(fs: &Fat<Image>, dir: &str) -> Vec<String> {
    sorted_names(fs, dir)
}

fn check(fs: &Fat<Image>) {
    assert_eq!(
        names(fs, "/"),
        [
            "A long file name with spaces.txt",
            "EFI",
            "data.bin",
            "many",
            "Ärger.txt",
            "ünïcode name.txt"
        ]
    );
    assert_eq!(names(fs, "/EFI"), ["BOOT", "amzn"]);
    assert_eq!(
        fs.read_file("/EFI/BOOT/BOOTX64.EFI", 100).unwrap(),
        b"MZ boot"
    );
    assert_eq!(
        fs.read_file("/efi/boot/bootx64.efi", 100).unwrap(),
        b"MZ boot",
        "names ignore case"
    );
    assert_eq!(
        fs.read_file("/EFI/amzn/grub.cfg", 100).unwrap(),
        b"set timeout=0\n"
    );
    assert_eq!(
        fs.read_file("/A long file name with spaces.txt", 100)
            .unwrap(),
        b"long"
    );
    assert_eq!(fs.read_file("/ünïcode name.txt", 100).unwrap(), b"utf");
    assert_eq!(fs.read_file("/Ärger.txt", 100).unwrap(), b"upper");
    assert_eq!(fs.read_file("/data.bin", 1 << 20).unwrap(), data(300_000));
    let meta = fs.metadata("/data.bin").unwrap();
    assert_eq!(
        (meta.kind, meta.size, meta.mode, meta.mtime),
        (Kind::File, 300_000, 0o644, MTIME)
    );
    assert!(fs.metadata("/EFI").unwrap().is_dir());
    let many = names(fs, "/many");
    assert_eq!(many.len(), 600);
    assert_eq!(fs.read_file("/many/file-599.txt", 100).unwrap(), b"599\n");
    assert!(fs.metadata("/nothing").unwrap_err().contains("not found"));
    assert!(fs.open("/EFI").is_err());
    assert!(fs.read_dir("/data.bin").is_err());
}

#[test]
fn short_names() {
    assert_eq!(short_name(b"README  TXT", 0), "README.TXT");
    assert_eq!(short_name(b"README  TXT", 0x08 | 0x10), "readme.txt");
    assert_eq!(short_name(b"MAKEFILE   ", 0x08), "makefile");
    // Code page 437 above ASCII; 0x05 stands for a leading 0xE5 (σ).
    assert_eq!(short_name(b"\x81BER    TXT", 0), "üBER.TXT");
    assert_eq!(short_name(b"\x05ABC    TXT", 0), "σABC.TXT");
}

#[test]
fn fat32_reads_back() {
    let fs = Fat::load(image(40, &["-F", "32", "-s", "1"])).expect("FAT32");
    assert_eq!(fs.width, Width::Fat32);
    check(&fs);
}

#[test]
fn fat16_reads_back() {
    let fs = Fat::load(image(16, &["-F", "16"])).expect("FAT16");
    assert_eq!(fs.width, Width::Fat16);
    check(&fs);
}

#[test]
fn fat12_reads_back() {
    let fs = Fat::load(image(4, &["-F", "12"])).expect("FAT12");
    assert_eq!(fs.width, Width::Fat12);
    check(&fs);
}

#[test]
fn a_looping_chain_and_a_short_one_are_refused() {
    let mut d = image(16, &["-F", "16"]).0;
    let fs = Fat::load(Image(d.clone())).expect("FAT16");
    let first = fs.lookup("/data.bin").unwrap().expect("an entry").cluster;
    // The file's second cluster points back at its first, in every FAT.
    let second = fs.next(first).unwrap().expect("a second cluster");
    let fat_size = u64::from(le16(&d, 22)) * 512;
    for copy in 0..u64::from(d[16]) {
        let at = (fs.fat_at + copy * fat_size) as usize + second as usize * 2;
        d[at..at + 2].copy_from_slice(&(first as u16).to_le_bytes());
    }
    let fs = Fat::load(Image(d.clone())).expect("FAT16");
    // 300 000 bytes need many clusters; the cycle gives two over and over.
    let e = fs.open("/data.bin").err().expect("a looping chain");
    assert!(e.contains("it loops"), "{e}");
    // A chain that ends early is refused.
    for copy in 0..u64::from(d[16]) {
        let at = (fs.fat_at + copy * fat_size) as usize + second as usize * 2;
        d[at..at + 2].copy_from_slice(&0xffffu16.to_le_bytes());
    }
    let fs = Fat::load(Image(d)).expect("FAT16");
    let e = fs.open("/data.bin").err().expect("a short chain");
    assert!(e.contains("cluster chain ends before"), "{e}");
}

#[test]
fn a_folder_inside_itself_is_searched_within_bounds() {
    let mut d = image(16, &["-F", "16"]).0;
    let fs = Fat::load(Image(d.clone())).expect("FAT16");
    let efi = fs.lookup("/EFI").unwrap().expect("EFI");
    // /EFI's entry for its folder BOOT now names /EFI itself.
    let boot = fs.lookup("/EFI/BOOT").unwrap().expect("BOOT").cluster;
    let at = fs.cluster_at(efi.cluster) as usize;
    let mut patched = 0;
    for e in d[at..at + fs.cluster_size as usize].chunks_exact_mut(32) {
        if e[11] & ATTR_DIRECTORY != 0 && u32::from(le16(e, 26)) == boot && e[0] != b'.' {
            e[26..28].copy_from_slice(&(efi.cluster as u16).to_le_bytes());
            patched += 1;
        }
    }
    assert_eq!(patched, 1);
    let fs = Fat::load(Image(d)).expect("FAT16");
    assert!(
        fs.metadata("/EFI/BOOT/BOOT/BOOT/amzn").is_ok(),
        "the loop is there"
    );
    let found = crate::worker::browser::disk::search(&fs, "grub");
    assert!(found.len() <= 500, "search is bounded");
    assert!(
        found.iter().any(|(p, _)| p == "/EFI/amzn/grub.cfg"),
        "{found:?}"
    );
}

#[test]
fn a_name_listed_twice_is_listed_once() {
    let mut d = image(16, &["-F", "16"]).0;
    let fs = Fat::load(Image(d.clone())).expect("FAT16");
    let efi = fs.lookup("/EFI").unwrap().expect("EFI");
    let at = fs.cluster_at(efi.cluster) as usize;
    // The entry of BOOT renamed AMZN, the name of the folder after it.
    for e in d[at..at + fs.cluster_size as usize].chunks_exact_mut(32) {
        if &e[0..11] == b"BOOT       " {
            e[0..11].copy_from_slice(b"AMZN       ");
        }
    }
    let fs = Fat::load(Image(d)).expect("FAT16");
    let names: Vec<String> = fs
        .read_dir("/EFI")
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        names
            .iter()
            .filter(|n| n.eq_ignore_ascii_case("amzn"))
            .count(),
        1,
        "{names:?}"
    );
}

#[test]
fn random_damage_never_panics() {
    let mut d = image(16, &["-F", "16"]).0;
    // The boot sector, the FATs, the root folder and the first clusters.
    damage_rounds(
        &mut d,
        0x2545_f491_4f6c_dd1d,
        1000,
        boot_or(0..200 << 10),
        |d| {
            if let Ok(fs) = Fat::load(Borrowed(d)) {
                browse_a_little(&fs);
            }
        },
    );
}
