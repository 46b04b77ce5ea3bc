//! Partitioned disks laid out as stock EC2 images lay them out, made by the
//! tools their installers use (`sfdisk`, `mkfs.xfs`, `mkfs.vfat` and
//! `mcopy`; Debian packages fdisk, xfsprogs, dosfstools, mtools).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::unique;

fn sbin(name: &str) -> String {
    ["/usr/sbin/", "/sbin/"]
        .iter()
        .map(|d| format!("{d}{name}"))
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| name.to_string())
}

fn run(cmd: &mut Command) {
    let out = cmd
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `files` (path, contents) under `root`.
fn write_tree(root: &Path, files: &[(&str, Vec<u8>)]) {
    for (path, data) in files {
        let at = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::fs::write(at, data).unwrap();
    }
}

/// `mkfs.xfs -p` lines for the folder `dir`'s contents, root-owned.
fn proto_lines(dir: &Path, out: &mut String) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_str().unwrap();
        if path.is_dir() {
            out.push_str(&format!("{name} d--755 0 0\n"));
            proto_lines(&path, out);
            out.push_str("$\n");
        } else {
            out.push_str(&format!("{name} ---644 0 0 {}\n", path.display()));
        }
    }
}

/// An Amazon Linux 2023 root volume, 64 MiB: GPT, the root filesystem
/// (XFS, v5 as mkfs.xfs makes it) holding `files` as partition 1, the
/// BIOS boot partition as 127 and the EFI system partition (FAT16, label
/// ESP) holding `efi_files` as 128.
pub fn amazon_linux(files: &[(&str, Vec<u8>)], efi_files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("al2023"));
    let (root, efi) = (dir.join("root"), dir.join("efi"));
    write_tree(&root, files);
    write_tree(&efi, efi_files);
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(64 << 20))
        .unwrap();
    let table = "label: gpt\n\
        disk.img1 : start=36864, type=L, name=\"Linux\"\n\
        disk.img127 : start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name=\"BIOS Boot Partition\"\n\
        disk.img128 : start=4096, size=32768, type=U, name=\"EFI System Partition\"\n";
    let mut sfdisk = Command::new(sbin("sfdisk"))
        .args(["-q"])
        .arg(&disk)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run sfdisk (Debian package fdisk)");
    {
        use std::io::Write;
        sfdisk
            .stdin
            .take()
            .unwrap()
            .write_all(table.as_bytes())
            .unwrap();
    }
    assert!(sfdisk.wait().unwrap().success(), "sfdisk failed");

    let mut proto = String::from("/dev/null\n0 0\nd--755 0 0\n");
    proto_lines(&root, &mut proto);
    proto.push_str("$\n");
    std::fs::write(dir.join("proto"), proto).unwrap();
    let xfs = dir.join("root.img");
    std::fs::File::create(&xfs)
        .and_then(|f| f.set_len(45 << 20))
        .unwrap();
    run(Command::new(sbin("mkfs.xfs"))
        .args(["-q", "-f", "-L", "/", "-p"])
        .arg(dir.join("proto"))
        .arg(&xfs)
        // mkfs.xfs refuses filesystems under 300 MB otherwise.
        .envs([("TEST_DIR", "1"), ("TEST_DEV", "1"), ("QA_CHECK_FS", "1")]));

    let esp = dir.join("esp.img");
    std::fs::File::create(&esp)
        .and_then(|f| f.set_len(16 << 20))
        .unwrap();
    run(Command::new(sbin("mkfs.vfat"))
        .args(["-F", "16", "-n", "ESP"])
        .arg(&esp));
    for entry in std::fs::read_dir(&efi).unwrap() {
        run(Command::new("mcopy")
            .args(["-s", "-i"])
            .arg(&esp)
            .arg(entry.unwrap().path())
            .arg("::/"));
    }

    let mut bytes = std::fs::read(&disk).unwrap();
    for (image, sector) in [(&xfs, 36864usize), (&esp, 4096)] {
        let data = std::fs::read(image).unwrap();
        bytes[sector * 512..sector * 512 + data.len()].copy_from_slice(&data);
    }
    std::fs::remove_dir_all(&dir).unwrap();
    bytes
}
