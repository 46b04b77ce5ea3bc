//! NTFS images made by `mkntfs` and filled through `ntfs-3g` (Debian
//! package ntfs-3g, mounted over FUSE, as root), then damaged.

use std::path::Path;
use std::process::{Child, Command};

use super::*;
use crate::worker::browser::disk::testing::{sbin, scratch, sorted_names};
use crate::worker::browser::partitions::tests::{
    Borrowed, Image, boot_or, browse_a_little, damage_rounds,
};

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// 2021-03-04 05:06:07 UTC.
const MTIME: i64 = 1_614_834_367;

/// `ntfs-3g` serving an image in the foreground: unmounted, and waited
/// for (it writes its last changes as it exits), when dropped.
struct Mounted {
    at: std::path::PathBuf,
    daemon: Option<Child>,
}

impl Mounted {
    fn new(image: &Path, at: &Path) -> Self {
        std::fs::create_dir_all(at).expect("a mount point");
        let daemon = Command::new("ntfs-3g")
            .args(["-o", "no_detach,big_writes"])
            .arg(image)
            .arg(at)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run ntfs-3g (Debian package ntfs-3g; needs FUSE and root)");
        let mounted = Self {
            at: at.to_path_buf(),
            daemon: Some(daemon),
        };
        for _ in 0..200 {
            let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
            if mounts.contains(&format!(" {} fuseblk", at.display()))
                || mounts.contains(&format!(" {} fuse", at.display()))
            {
                return mounted;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("ntfs-3g did not mount {}", image.display());
    }

    fn finish(mut self) {
        self.unmount();
    }

    fn unmount(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let _ = Command::new("umount").arg(&self.at).status();
            let _ = daemon.wait();
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.unmount();
    }
}

fn set_mtime(path: &Path, secs: i64) {
    let t = std::fs::FileTimes::new()
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64));
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_times(t))
        .expect("set the time");
}

/// A Windows symbolic link at `at` to `target` (relative), as Windows
/// writes it: a reparse point (ntfs-3g's own symbolic links are Interix
/// files, which Windows shows as files).
fn windows_symlink(at: &Path, target: &str) {
    std::fs::write(at, b"").expect("the link's file");
    let name: Vec<u8> = target
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    let len = name.len() as u16;
    let mut data = Vec::new();
    data.extend_from_slice(&REPARSE_SYMLINK.to_le_bytes());
    data.extend_from_slice(&(12 + 2 * len).to_le_bytes());
    data.extend_from_slice(&[0, 0]);
    for field in [0, len, len, len] {
        data.extend_from_slice(&field.to_le_bytes());
    }
    data.extend_from_slice(&1u32.to_le_bytes());
    data.extend_from_slice(&name);
    data.extend_from_slice(&name);
    let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, sys; os.setxattr(sys.argv[1], 'system.ntfs_reparse_data', bytes.fromhex(sys.argv[2]))",
        ])
        .arg(at)
        .arg(hex)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "set the reparse point: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the test images hold, written through `ntfs-3g` at `root`.
fn fill(root: &Path, cluster: u32) {
    let file = |path: &str, contents: &[u8]| {
        let at = root.join(path);
        std::fs::create_dir_all(at.parent().expect("a parent")).expect("a folder");
        std::fs::write(&at, contents).expect("a file");
        set_mtime(&at, MTIME);
    };
    file(
        "Windows/System32/drivers/etc/hosts",
        b"127.0.0.1 localhost\r\n",
    );
    file("Users/Administrator/Documents/report.txt", &data(3_000_000));
    file("Users/Administrator/Desktop/small.txt", b"resident");
    file("empty.txt", b"");
    file("\u{dc}n\u{ef}code \u{c4}rger.txt", b"utf");
    for i in 0..2000 {
        file(
            &format!("Program Files/App/many/file-{i}.txt"),
            format!("{i}\n").as_bytes(),
        );
    }
    std::fs::hard_link(
        root.join("Users/Administrator/Desktop/small.txt"),
        root.join("Users/Administrator/Desktop/link.txt"),
    )
    .expect("a hard link");
    windows_symlink(&root.join("Users/Administrator/Desktop/sym"), "small.txt");
    // Sparse: 8 MiB of which only the last bytes are written.
    let sparse = std::fs::File::create(root.join("sparse.bin")).expect("sparse");
    sparse.set_len(8 << 20).expect("sparse length");
    use std::os::unix::fs::FileExt;
    sparse
        .write_all_at(b"end", (8 << 20) - 3)
        .expect("sparse end");
    drop(sparse);
    // A volume filled with small files, every other one deleted, then a
    // file as large as the holes: in hundreds of fragments, more than its
    // record's run list holds.
    let hole = cluster.max(4096) as usize;
    let filler = root.join("filler");
    std::fs::create_dir(&filler).expect("filler");
    let mut made = 0usize;
    while std::fs::write(filler.join(made.to_string()), vec![1u8; hole]).is_ok() {
        made += 1;
    }
    let _ = std::fs::remove_file(filler.join(made.to_string()));
    for i in (0..made).step_by(2) {
        std::fs::remove_file(filler.join(i.to_string())).expect("free a hole");
    }
    let mut holes = made.div_ceil(2);
    while std::fs::write(root.join("frag.bin"), data(holes * hole)).is_err() {
        holes -= 16;
    }
    std::fs::write(filler.join("count"), holes.to_string()).expect("count");
}

/// An NTFS image of `size_mib` with `cluster`-byte clusters, filled by
/// [`fill`].
pub(in crate::worker::browser) fn image(size_mib: u64, cluster: u32) -> Image {
    let dir = scratch("ntfs");
    let img = dir.join("ntfs.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(size_mib << 20))
        .expect("image file");
    let out = Command::new(sbin("mkntfs"))
        .args(["-F", "-Q", "-q", "-L", "Windows", "-c"])
        .arg(cluster.to_string())
        .arg(&img)
        .output()
        .expect("run mkntfs (Debian package ntfs-3g)");
    assert!(
        out.status.success(),
        "mkntfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mounted = Mounted::new(&img, &dir.join("mnt"));
    fill(&mounted.at, cluster);
    mounted.finish();
    let bytes = std::fs::read(&img).expect("read the image");
    std::fs::remove_dir_all(&dir).expect("remove the temporary folder");
    Image(bytes)
}

fn check(fs: &Ntfs<Image>) {
    assert_eq!(
        sorted_names(fs, "/"),
        [
            "Program Files",
            "Users",
            "Windows",
            "empty.txt",
            "filler",
            "frag.bin",
            "sparse.bin",
            "\u{dc}n\u{ef}code \u{c4}rger.txt"
        ],
        "NTFS's own files ($MFT, ...) are not listed"
    );
    assert_eq!(
        fs.read_file("/Windows/System32/drivers/etc/hosts", 100)
            .unwrap(),
        b"127.0.0.1 localhost\r\n"
    );
    assert_eq!(
        fs.read_file("/windows/SYSTEM32/Drivers/etc/HOSTS", 100)
            .unwrap(),
        b"127.0.0.1 localhost\r\n",
        "names ignore case"
    );
    let report = "/Users/Administrator/Documents/report.txt";
    assert_eq!(fs.read_file(report, 4 << 20).unwrap(), data(3_000_000));
    let meta = fs.metadata(report).unwrap();
    assert_eq!(
        (meta.kind, meta.size, meta.mode, meta.mtime),
        (Kind::File, 3_000_000, 0o644, MTIME)
    );
    let desktop = "/Users/Administrator/Desktop";
    assert_eq!(sorted_names(fs, desktop), ["link.txt", "small.txt", "sym"]);
    for name in ["small.txt", "link.txt"] {
        assert_eq!(
            fs.read_file(&format!("{desktop}/{name}"), 100).unwrap(),
            b"resident"
        );
    }
    assert_eq!(
        fs.metadata(&format!("{desktop}/sym")).unwrap().kind,
        Kind::Symlink
    );
    assert!(fs.open(&format!("{desktop}/sym")).is_err());
    assert_eq!(fs.read_file("/empty.txt", 10).unwrap(), b"");
    assert_eq!(
        fs.read_file("/\u{dc}n\u{ef}code \u{c4}rger.txt", 10)
            .unwrap(),
        b"utf"
    );
    let sparse = fs.read_file("/sparse.bin", 8 << 20).unwrap();
    assert_eq!(sparse.len(), 8 << 20);
    assert!(sparse[..(8 << 20) - 3].iter().all(|b| *b == 0));
    assert_eq!(&sparse[(8 << 20) - 3..], b"end");
    let holes: usize = String::from_utf8(fs.read_file("/filler/count", 10).unwrap())
        .unwrap()
        .parse()
        .unwrap();
    let hole = (fs.cluster_size as usize).max(4096);
    assert!(holes > 100, "{holes} holes");
    assert!(fs.read_file("/frag.bin", 1 << 30).unwrap() == data(holes * hole));
    let many = sorted_names(fs, "/Program Files/App/many");
    assert_eq!(many.len(), 2000);
    assert_eq!(
        fs.read_file("/Program Files/App/many/file-1999.txt", 10)
            .unwrap(),
        b"1999\n"
    );
    assert!(fs.metadata("/Windows").unwrap().is_dir());
    assert!(fs.metadata("/nothing").unwrap_err().contains("not found"));
    assert!(fs.metadata("/$MFT").unwrap_err().contains("not found"));
    assert!(fs.open("/Windows").is_err());
    assert!(fs.read_dir("/empty.txt").is_err());
}

impl Ntfs<Image> {
    /// The record `path` names.
    pub(in crate::worker::browser) fn record_of(&self, path: &str) -> u64 {
        self.lookup(path).expect("the path").0
    }
}

#[test]
fn ntfs_with_4k_clusters_reads_back() {
    let fs = Ntfs::load(image(48, 4096)).expect("NTFS");
    assert_eq!(fs.label().as_deref(), Some("Windows"));
    check(&fs);
    // The fragmented files' runs do not fit their records: an attribute
    // list puts them in extension records.
    let (record, _) = fs.lookup("/frag.bin").unwrap();
    let base = fs.base_record(record).unwrap();
    assert!(
        base.attrs.iter().any(|a| a.ty == AT_ATTRIBUTE_LIST),
        "frag.bin has an attribute list"
    );
}

#[test]
fn ntfs_with_64k_clusters_reads_back() {
    // Index blocks (4 KiB) smaller than a cluster are numbered in 512-byte
    // units.
    let fs = Ntfs::load(image(96, 65536)).expect("NTFS");
    assert_eq!(fs.cluster_size, 65536);
    check(&fs);
}

#[test]
fn ntfs_with_512_byte_clusters_reads_back() {
    let fs = Ntfs::load(image(32, 512)).expect("NTFS");
    check(&fs);
}

/// Where record `n` is in the image, when the MFT is in one piece there.
pub(in crate::worker::browser) fn record_at(fs: &Ntfs<Image>, n: u64) -> usize {
    let Stream::NonResident { runs, .. } = &fs.mft else {
        panic!("the MFT is non-resident");
    };
    let lcn = runs[0].lcn.expect("the MFT's first run");
    assert!(n * fs.record_size < runs[0].len * fs.cluster_size);
    (lcn * fs.cluster_size + n * fs.record_size) as usize
}

/// Changes record `n` of image `d` as `change` does to it with its
/// fixups applied, and protects it again.
pub(in crate::worker::browser) fn patch_record(
    fs: &Ntfs<Image>,
    d: &mut [u8],
    n: u64,
    change: impl FnOnce(&mut [u8]),
) {
    let at = record_at(fs, n);
    let raw = &mut d[at..at + fs.record_size as usize];
    let mut rec = raw.to_vec();
    fixup(&mut rec, b"FILE").expect("a sound record");
    change(&mut rec);
    let usa = usize::from(le16(&rec, 4));
    for i in 1..=rec.len() / 512 {
        let end = i * 512;
        let saved = [rec[end - 2], rec[end - 1]];
        rec[usa + 2 * i..usa + 2 * i + 2].copy_from_slice(&saved);
        let usn = [rec[usa], rec[usa + 1]];
        rec[end - 2..end].copy_from_slice(&usn);
    }
    raw.copy_from_slice(&rec);
}

/// Points the entry for `name` in the resident index of folder record
/// `folder` at `reference` (record number and sequence).
fn set_reference(fs: &Ntfs<Image>, d: &mut [u8], folder: u64, name: &str, reference: u64) {
    patch_record(fs, d, folder, |rec| {
        let name: Vec<u8> = name.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
        let found = rec
            .windows(name.len())
            .position(|w| w == name.as_slice())
            .expect("the name's index entry");
        // The name is 66 bytes into the key, the key 16 into the entry.
        let entry = found - 66 - 16;
        rec[entry..entry + 8].copy_from_slice(&reference.to_le_bytes());
    });
}

#[test]
fn a_folder_inside_itself_is_searched_within_bounds() {
    let mut d = image(48, 4096).0;
    let fs = Ntfs::load(Image(d.clone())).expect("NTFS");
    let (desktop, _) = fs.lookup("/Users/Administrator/Desktop").unwrap();
    let (users, _) = fs.lookup("/Users").unwrap();
    let users_seq = fs.base_record(users).unwrap().sequence;
    // Desktop's entry for small.txt now names /Users.
    let reference = users | (u64::from(users_seq) << 48);
    set_reference(&fs, &mut d, desktop, "small.txt", reference);
    let fs = Ntfs::load(Image(d)).expect("NTFS");
    assert!(
        fs.metadata("/Users/Administrator/Desktop/small.txt/Administrator/Desktop/small.txt")
            .unwrap()
            .is_dir(),
        "the loop is there"
    );
    let found = crate::worker::browser::disk::search(&fs, "hosts");
    assert!(found.len() <= 500, "search is bounded");
    assert!(
        found
            .iter()
            .any(|(p, _)| p == "/Windows/System32/drivers/etc/hosts"),
        "{found:?}"
    );
}

#[test]
fn compressed_and_encrypted_files_are_listed_with_why() {
    let mut d = image(48, 4096).0;
    let fs = Ntfs::load(Image(d.clone())).expect("NTFS");
    let (report, _) = fs
        .lookup("/Users/Administrator/Documents/report.txt")
        .unwrap();
    let (hosts, _) = fs.lookup("/Windows/System32/drivers/etc/hosts").unwrap();
    // The flags of each file's $DATA attribute.
    for (n, flag) in [(report, ATTR_COMPRESSED), (hosts, ATTR_ENCRYPTED)] {
        patch_record(&fs, &mut d, n, |rec| {
            let mut a = usize::from(le16(rec, 20));
            while le32(rec, a) != AT_DATA {
                a += le32(rec, a + 4) as usize;
            }
            let flags = le16(rec, a + 12) | flag;
            rec[a + 12..a + 14].copy_from_slice(&flags.to_le_bytes());
        });
    }
    let fs = Ntfs::load(Image(d)).expect("NTFS");
    let documents = fs.read_dir("/Users/Administrator/Documents").unwrap();
    let (_, meta) = &documents[0];
    assert_eq!(meta.kind, Kind::Other);
    assert!(
        meta.note
            .as_deref()
            .unwrap_or("")
            .contains("compressed by NTFS"),
        "{meta:?}"
    );
    let e = fs
        .open("/Users/Administrator/Documents/report.txt")
        .err()
        .expect("not readable");
    assert!(e.contains("not a regular file"), "{e}");
    let meta = fs.metadata("/Windows/System32/drivers/etc/hosts").unwrap();
    assert!(
        meta.note.as_deref().unwrap_or("").contains("encrypted"),
        "{meta:?}"
    );
}

#[test]
fn runs_decode_and_bounds_hold() {
    // 0x21: one length byte, two offset bytes.
    assert_eq!(
        decode_runs(
            &[0x21, 0x10, 0x00, 0x01, 0x01, 0x08, 0x11, 0x04, 0xf0, 0],
            0,
            28,
            1000
        )
        .unwrap(),
        [
            Run {
                vcn: 0,
                len: 16,
                lcn: Some(256)
            },
            Run {
                vcn: 16,
                len: 8,
                lcn: None
            },
            Run {
                vcn: 24,
                len: 4,
                lcn: Some(240)
            },
        ]
    );
    // Outside the volume, backwards past cluster 0, short of its count.
    assert!(decode_runs(&[0x21, 0x10, 0x00, 0x10, 0], 0, 16, 1000).is_err());
    assert!(decode_runs(&[0x11, 0x10, 0xf0, 0], 0, 16, 1000).is_err());
    assert!(decode_runs(&[0x11, 0x10, 0x10, 0], 0, 32, 1000).is_err());
    assert!(decode_runs(&[0x91, 0x10], 0, 16, 1000).is_err());
}

#[test]
fn random_damage_never_panics() {
    let mut d = image(48, 4096).0;
    let fs = Ntfs::load(Image(d.clone())).expect("NTFS");
    // The MFT's first records (NTFS's own files, the folders and files
    // above) and the index blocks and files right after them.
    let start = record_at(&fs, 0);
    let hot = start..start + (256 << 10);
    damage_rounds(&mut d, 0x9e37_79b9_7f4a_7c15, 1000, boot_or(hot), |d| {
        if let Ok(fs) = Ntfs::load(Borrowed(d)) {
            browse_a_little(&fs);
            let _ = fs.read_dir("/Users/Administrator/Desktop");
            let _ = fs.read_file("/Users/Administrator/Desktop/small.txt", 100);
        }
    });
}

#[test]
fn an_entry_naming_a_record_past_the_mft_is_listed_with_why() {
    let mut d = image(48, 4096).0;
    let fs = Ntfs::load(Image(d.clone())).expect("NTFS");
    let desktop = fs.record_of("/Users/Administrator/Desktop");
    set_reference(&fs, &mut d, desktop, "small.txt", (1u64 << 48) | (1 << 30));
    let fs = Ntfs::load(Image(d)).expect("NTFS");
    let list = fs.read_dir("/Users/Administrator/Desktop").unwrap();
    let (_, small) = list.iter().find(|(n, _)| n == "small.txt").expect("listed");
    assert_eq!(small.kind, Kind::Other);
    assert!(
        small
            .note
            .as_deref()
            .unwrap_or("")
            .contains("past the end of the MFT"),
        "{small:?}"
    );
    let e = fs
        .metadata("/Users/Administrator/Desktop/small.txt")
        .unwrap_err();
    assert!(e.contains("past the end of the MFT"), "{e}");
}

#[test]
fn clusters_above_64_kib_are_counted_in_sectors() {
    // A boot sector of a volume with 128 KiB clusters: 0xF8 is 2^8 sectors.
    let mut b = vec![0u8; 4 << 20];
    b[3..11].copy_from_slice(b"NTFS    ");
    b[11..13].copy_from_slice(&512u16.to_le_bytes());
    b[13] = 0xf8;
    b[0x28..0x30].copy_from_slice(&8192u64.to_le_bytes());
    b[0x30..0x38].copy_from_slice(&4u64.to_le_bytes());
    b[0x40] = 0xf6; // 1 KiB records
    b[510] = 0x55;
    b[511] = 0xaa;
    let e = Ntfs::load(Image(b)).err().expect("no MFT there");
    // The geometry is accepted; what fails is the (missing) MFT at 512 KiB.
    assert!(e.contains("record is damaged: no signature"), "{e}");
}
