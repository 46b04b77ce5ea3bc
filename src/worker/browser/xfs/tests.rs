//! XFS images made by `mkfs.xfs` (Debian package xfsprogs) from proto
//! files, version 5 and version 4, and one made on a mounted filesystem
//! (`fixtures/make.sh`: a file in btree form, a directory in node form with
//! entries removed); then damaged at random where the reader looks.

use std::process::Command;

use super::*;
use crate::worker::browser::disk::testing::{sbin, scratch, sorted_names};
use crate::worker::browser::partitions::tests::{Borrowed, Image, damage_rounds, xorshift};

/// A proto file's line for a regular file: mode as mkfs.xfs spells it
/// (type, set-user-ID, set-group-ID, permissions in octal).
fn proto_mode(kind: char, mode: u32) -> String {
    format!(
        "{kind}{}{}{:03o}",
        if mode & 0o4000 != 0 { 'u' } else { '-' },
        if mode & 0o2000 != 0 { 'g' } else { '-' },
        mode & 0o777
    )
}

/// What the proto images hold.
struct Tree {
    dir: std::path::PathBuf,
    proto: String,
}

/// The pattern of `/srv/data.bin`: not compressible, not repetitive.
fn data(len: usize) -> Vec<u8> {
    let mut next = xorshift(0x2545_f491_4f6c_dd1d);
    (0..len).map(|_| next() as u8).collect()
}

fn tree() -> Tree {
    let dir = scratch("xfs");
    let file = |name: &str, contents: &[u8]| {
        let at = dir.join(name);
        std::fs::write(&at, contents).expect("source file");
        at.display().to_string()
    };
    let mut p = String::from("/dev/null\n0 0\nd--755 0 0\n");
    p += &format!(
        "etc d--755 0 0\nhostname {} 0 0 {}\n$\n",
        proto_mode('-', 0o644),
        file("hostname", b"web-1\n")
    );
    p += &format!(
        "home d--755 0 0\nec2-user d--700 1000 1000\nnotes.txt {} 1000 1000 {}\n$\n$\n",
        proto_mode('-', 0o600),
        file("notes", b"remember the milk\n")
    );
    p += &format!(
        "run.sh {} 0 0 {}\n",
        proto_mode('-', 0o4755),
        file("run", b"#!/bin/sh\n")
    );
    p += "link l--777 0 0 /etc/hostname\n";
    p += &format!(
        "srv d--755 0 0\ndata.bin ---644 0 0 {}\nbig d--755 0 0\n",
        file("data", &data(300_000))
    );
    for i in 0..600 {
        p += &format!(
            "f{i} ---644 0 0 {}\n",
            file(&format!("f{i}"), format!("{i}\n").as_bytes())
        );
    }
    p += "$\n$\n$\n";
    Tree { dir, proto: p }
}

/// An XFS image of [`tree`], made with `options`.
pub(in crate::worker::browser) fn image(options: &[&str]) -> Image {
    let t = tree();
    let proto = t.dir.join("proto");
    std::fs::write(&proto, &t.proto).expect("proto file");
    let img = t.dir.join("xfs.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(32 << 20))
        .expect("image file");
    let out = Command::new(sbin("mkfs.xfs"))
        .args(["-q", "-f"])
        .args(options)
        .arg("-p")
        .arg(&proto)
        .arg(&img)
        // mkfs.xfs refuses filesystems under 300 MB otherwise.
        .envs([("TEST_DIR", "1"), ("TEST_DEV", "1"), ("QA_CHECK_FS", "1")])
        .output()
        .expect("run mkfs.xfs (Debian package xfsprogs)");
    assert!(
        out.status.success(),
        "mkfs.xfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&img).expect("read the image");
    std::fs::remove_dir_all(&t.dir).expect("remove the temporary folder");
    Image(bytes)
}

fn names(fs: &Xfs<Image>, dir: &str) -> Vec<String> {
    sorted_names(fs, dir)
}

fn check_tree(fs: &Xfs<Image>) {
    assert_eq!(names(fs, "/"), ["etc", "home", "link", "run.sh", "srv"]);
    assert_eq!(fs.read_file("/etc/hostname", 100).unwrap(), b"web-1\n");
    let notes = fs.metadata("/home/ec2-user/notes.txt").unwrap();
    assert_eq!(
        (notes.kind, notes.mode, notes.uid, notes.gid, notes.size),
        (Kind::File, 0o600, 1000, 1000, 18)
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs() as i64;
    assert!(
        (notes.mtime - now).abs() < 600,
        "mtime {} is not about now ({now})",
        notes.mtime
    );
    assert_eq!(fs.metadata("/home/ec2-user").unwrap().mode, 0o700);
    assert_eq!(fs.metadata("/run.sh").unwrap().mode, 0o4755);
    assert_eq!(fs.metadata("/link").unwrap().kind, Kind::Symlink);
    assert!(fs.open("/link").is_err(), "a symbolic link is not followed");
    assert!(fs.open("/srv").is_err(), "a folder is not a file");
    assert_eq!(
        fs.read_file("/srv/data.bin", 1 << 20).unwrap(),
        data(300_000)
    );
    let big = names(fs, "/srv/big");
    assert_eq!(big.len(), 600);
    for i in [0, 299, 599] {
        assert!(big.contains(&format!("f{i}")));
        assert_eq!(
            fs.read_file(&format!("/srv/big/f{i}"), 100).unwrap(),
            format!("{i}\n").as_bytes()
        );
    }
    let e = fs.metadata("/srv/nothing").unwrap_err();
    assert!(e.contains("not found"), "{e}");
    assert!(fs.metadata("/etc/hostname/x").is_err());
}

#[test]
fn a_version_5_filesystem_reads_back() {
    let fs = Xfs::load(image(&[])).expect("a v5 XFS");
    assert!(fs.sb.v5 && fs.sb.ftype);
    check_tree(&fs);
}

#[test]
fn a_version_4_filesystem_without_file_types_reads_back() {
    let fs = Xfs::load(image(&["-m", "crc=0", "-n", "ftype=0"])).expect("a v4 XFS");
    assert!(!fs.sb.v5 && !fs.sb.ftype);
    check_tree(&fs);
}

#[test]
fn large_blocks_and_directory_blocks_read_back() {
    let fs = Xfs::load(image(&["-b", "size=1024", "-n", "size=8192"])).expect("an XFS");
    assert_eq!((fs.sb.block_size(), fs.sb.dir_block), (1024, 8192));
    check_tree(&fs);
}

/// The image `fixtures/make.sh` made on a mounted filesystem.
fn mounted() -> Image {
    let packed = include_bytes!("fixtures/v5.img.zst");
    Image(zstd::stream::decode_all(&packed[..]).expect("the fixture decompresses"))
}

#[test]
fn a_file_in_btree_form_and_a_directory_with_removed_entries_read_back() {
    let fs = Xfs::load(mounted()).expect("the fixture");
    let frag = fs.lookup("/frag.bin").unwrap();
    assert_eq!(frag.format, 3, "the fixture's file is in btree form");
    let data = fs.read_file("/frag.bin", 8 << 20).unwrap();
    assert_eq!(data.len(), 299 * 8192 + 4096);
    for i in 0..300usize {
        let block = &data[i * 8192..i * 8192 + 4096];
        assert!(block.iter().all(|b| *b == (i % 251) as u8 + 1), "block {i}");
        if let Some(hole) = data.get(i * 8192 + 4096..(i + 1) * 8192) {
            assert!(hole.iter().all(|b| *b == 0), "hole after block {i}");
        }
    }
    let many = names(&fs, "/many");
    let expected: Vec<String> = {
        let mut v: Vec<String> = (0..3000)
            .filter(|n| n % 3 != 0)
            .map(|n| format!("f{n}"))
            .collect();
        v.sort();
        v
    };
    assert_eq!(many, expected);
    assert_eq!(fs.read_file("/many/f2999", 100).unwrap(), b"2999\n");
    assert!(
        fs.metadata("/many/f2997").is_err(),
        "a removed entry is gone"
    );
    assert_eq!(names(&fs, "/few"), ["a", "b"]);
}

#[test]
fn unknown_features_and_damaged_superblocks_are_refused_with_a_reason() {
    let base = image(&[]);
    let with = |at: usize, bytes: &[u8]| {
        let mut d = base.0.clone();
        d[at..at + bytes.len()].copy_from_slice(bytes);
        Xfs::load(Image(d)).err().unwrap_or_default()
    };
    let e = with(216, &0x8000_0000u32.to_be_bytes());
    assert!(e.contains("features Tender cannot read yet"), "{e}");
    assert!(with(4, &3000u32.to_be_bytes()).contains("block size"));
    assert!(with(104, &100u16.to_be_bytes()).contains("inode size"));
    assert!(with(88, &0u32.to_be_bytes()).contains("allocation groups"));
    assert!(with(100, &0x0004u16.to_be_bytes()).contains("version 1 directories"));
    assert!(with(56, &u64::MAX.to_be_bytes()).contains("root inode"));
}

/// Offsets of the blocks the reader parses: superblocks, inodes, btree
/// and directory blocks.
fn metadata_blocks(d: &[u8]) -> Vec<usize> {
    d.chunks(512)
        .enumerate()
        .filter(|(_, b)| {
            [&b"XFSB"[..], b"IN", b"BMA3", b"XDB3", b"XDD3"]
                .iter()
                .any(|m| b.starts_with(m))
        })
        .map(|(i, _)| i * 512)
        .collect()
}

/// Lists every folder reachable and reads the first files of each, up to
/// a budget; errors are fine, a panic or a hang is not.
fn walk(fs: &Xfs<Borrowed<'_>>, dir: &str, budget: &mut usize) {
    let Ok(list) = fs.read_dir(dir) else { return };
    for (name, meta) in list.into_iter().take(4) {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        let path = if dir == "/" {
            format!("/{name}")
        } else {
            format!("{dir}/{name}")
        };
        match meta.kind {
            Kind::Dir => walk(fs, &path, budget),
            _ => {
                if let Ok(mut f) = fs.open(&path) {
                    let mut buf = vec![0u8; 64 << 10];
                    let _ = f.read(&mut buf);
                }
            }
        }
    }
}

#[test]
fn random_damage_where_the_reader_looks_never_panics() {
    let mut d = mounted().0;
    let targets = metadata_blocks(&d);
    assert!(targets.len() > 10, "the fixture has metadata to damage");
    let damage = |next: &mut dyn FnMut() -> u64| {
        let at = targets[next() as usize % targets.len()] + next() as usize % 512;
        let value = match next() % 3 {
            0 => 0xff,
            1 => 0,
            _ => next() as u8,
        };
        (at, value)
    };
    damage_rounds(&mut d, 0x9e37_79b9_7f4a_7c15, 1000, damage, |d| {
        if let Ok(fs) = Xfs::load(Borrowed(d)) {
            let mut budget = 30;
            walk(&fs, "/", &mut budget);
        }
    });
}

#[test]
fn a_btree_whose_pointers_repeat_a_block_is_refused_at_once() {
    let mut d = mounted().0;
    let fs = Xfs::load(Borrowed(&d)).expect("the fixture");
    let frag = fs.lookup("/frag.bin").unwrap();
    let at = fs.sb.inode_at(frag.ino).unwrap() as usize + 176;
    let (level, n) = (be16(&d, at), usize::from(be16(&d, at + 2)));
    assert!(level >= 1 && n >= 1, "the fixture's file has a btree root");
    // A second root pointer naming the first's block.
    let max = (frag.fork.len() - 4) / 16;
    let first = at + 4 + max * 8;
    let ptr: [u8; 8] = d[first..first + 8].try_into().unwrap();
    d[first + n * 8..first + n * 8 + 8].copy_from_slice(&ptr);
    d[at + 2..at + 4].copy_from_slice(&(n as u16 + 1).to_be_bytes());
    let fs = Xfs::load(Borrowed(&d)).expect("the fixture");
    let e = fs.open("/frag.bin").err().expect("a repeated block");
    assert!(e.contains("pointed to twice"), "{e}");
}

#[test]
fn a_damaged_inode_shows_in_its_folder_instead_of_hiding_it() {
    let mut d = mounted().0;
    let fs = Xfs::load(Borrowed(&d)).expect("the fixture");
    let ino = fs.lookup("/few/a").unwrap().ino;
    let at = fs.sb.inode_at(ino).unwrap() as usize;
    d[at..at + 2].copy_from_slice(b"XX");
    let fs = Xfs::load(Borrowed(&d)).expect("the fixture");
    let list = fs.read_dir("/few").expect("the folder still lists");
    let a = list.iter().find(|(n, _)| n == "a").expect("a is listed");
    assert_eq!(a.1.kind, Kind::Other);
    assert!(
        a.1.note
            .as_deref()
            .unwrap_or_default()
            .contains("no inode magic"),
        "{a:?}"
    );
    assert_eq!(fs.read_file("/few/b", 10).unwrap(), b"b\n");
}

#[test]
fn a_folder_inside_itself_runs_out_of_budget_not_forever() {
    let mut d = mounted().0;
    let fs = Xfs::load(Borrowed(&d)).expect("the fixture");
    let few = fs.lookup("/few").unwrap();
    assert_eq!(few.format, 1, "short form");
    let a = fs.lookup("/few/a").unwrap().ino;
    // /few/a now names /few itself.
    let at = fs.sb.inode_at(few.ino).unwrap() as usize + 176;
    let f = &few.fork;
    let wide = f[1] != 0;
    let ino_len = if wide { 8 } else { 4 };
    let mut p = 2 + ino_len;
    for _ in 0..f[0] {
        let len = usize::from(f[p]);
        let ino_at = p + 3 + len + 1;
        if &f[p + 3..p + 3 + len] == b"a" {
            assert_eq!(u64::from(be32(f, ino_at)), a);
            d[at + ino_at..at + ino_at + 4].copy_from_slice(&(few.ino as u32).to_be_bytes());
        }
        p = ino_at + ino_len;
    }
    let fs = Xfs::load(Borrowed(&d)).expect("the fixture");
    assert!(fs.metadata("/few/a/a/a/b").is_ok(), "the loop is there");
    let found = crate::worker::browser::disk::search(&fs, "b");
    assert!(found.len() <= 500, "search is bounded");
    assert!(found.iter().any(|(p, _)| p == "/few/b"), "{found:?}");
}

/// The image `fixtures/make.sh` shut down with changes only in its log.
pub(in crate::worker::browser) fn dirty() -> Image {
    let packed = include_bytes!("fixtures/dirty.img.zst");
    Image(zstd::stream::decode_all(&packed[..]).expect("the fixture decompresses"))
}

#[test]
fn a_log_with_changes_not_yet_in_place_is_told_from_a_clean_one() {
    let dirty = dirty().0;
    let fs = Xfs::load(Borrowed(&dirty)).expect("the fixture");
    assert_eq!(fs.log_pending(), Ok(true));
    // What the log holds is not shown: the reader does not replay it.
    assert!(fs.metadata("/late.txt").is_err());
    let fs = Xfs::load(mounted()).expect("the fixture");
    assert_eq!(fs.log_pending(), Ok(false), "unmounted cleanly");
    // Mounted and idle: no unmount record, but only the superblock logged.
    let packed = include_bytes!("fixtures/covered.img.zst");
    let covered = zstd::stream::decode_all(&packed[..]).expect("the fixture decompresses");
    let fs = Xfs::load(Borrowed(&covered)).expect("the fixture");
    assert_eq!(fs.log_pending(), Ok(false), "covered");
    assert_eq!(fs.read_file("/a.txt", 10).unwrap(), b"a\n");
    let fs = Xfs::load(image(&[])).expect("an XFS");
    assert_eq!(fs.log_pending(), Ok(false), "as mkfs.xfs leaves it");
    let fs = Xfs::load(image(&["-m", "crc=0", "-n", "ftype=0"])).expect("a v4 XFS");
    assert_eq!(fs.log_pending(), Ok(false), "as mkfs.xfs leaves it");
}

#[test]
fn random_damage_to_the_log_never_panics() {
    let mut d = dirty().0;
    let fs = Xfs::load(Borrowed(&d)).expect("the fixture");
    let log = fs.sb.block_at(fs.sb.log_start, fs.sb.log_blocks).unwrap() as usize;
    let mut told = [0usize; 3];
    // The records sit in the log's first 8 KiB.
    let damage = |next: &mut dyn FnMut() -> u64| (log + next() as usize % 8192, next() as u8);
    damage_rounds(&mut d, 0x51_7cc1_b727_220a, 1000, damage, |d| {
        if let Ok(fs) = Xfs::load(Borrowed(d)) {
            told[match fs.log_pending() {
                Ok(true) => 0,
                Ok(false) => 1,
                Err(_) => 2,
            }] += 1;
        }
    });
    assert!(told[0] > 0, "{told:?}");
}
