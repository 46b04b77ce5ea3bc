//! Partitioned disks laid out as stock EC2 images lay them out, made by the
//! tools their installers use (`sfdisk`, `mkfs.xfs`, `mkfs.ext4`,
//! `mkfs.vfat` and `mcopy`, `mkntfs` and `ntfs-3g`; Debian packages fdisk,
//! xfsprogs, e2fsprogs, dosfstools, mtools, ntfs-3g).

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

/// A new disk image of `size_mib` in `dir` with the partition table
/// `table` (sfdisk's script; partitions named `disk.img<N>`).
fn partitioned(dir: &Path, size_mib: u64, table: &str) -> PathBuf {
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(size_mib << 20))
        .unwrap();
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
    disk
}

/// An empty file of `size_mib` at `path`, for a filesystem.
fn blank(path: &Path, size_mib: u64) {
    std::fs::File::create(path)
        .and_then(|f| f.set_len(size_mib << 20))
        .unwrap();
}

/// The bytes of `disk` with each (filesystem image, first sector) in
/// place; `dir` removed.
fn assemble(dir: &Path, disk: &Path, parts: &[(&Path, usize)]) -> Vec<u8> {
    let mut bytes = std::fs::read(disk).unwrap();
    for (image, sector) in parts {
        let data = std::fs::read(image).unwrap();
        bytes[sector * 512..sector * 512 + data.len()].copy_from_slice(&data);
    }
    std::fs::remove_dir_all(dir).unwrap();
    bytes
}

/// A FAT EFI system partition of `size_mib` labelled `label`, holding the
/// folder `files`.
fn esp(image: &Path, size_mib: u64, label: &str, files: &Path) {
    blank(image, size_mib);
    run(Command::new(sbin("mkfs.vfat"))
        .args(["-F", "16", "-n", label])
        .arg(image));
    for entry in std::fs::read_dir(files).unwrap() {
        run(Command::new("mcopy")
            .args(["-s", "-i"])
            .arg(image)
            .arg(entry.unwrap().path())
            .arg("::/"));
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
    std::fs::create_dir_all(&dir).unwrap();
    let disk = partitioned(
        &dir,
        64,
        "label: gpt\n\
        disk.img1 : start=36864, type=L, name=\"Linux\"\n\
        disk.img127 : start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name=\"BIOS Boot Partition\"\n\
        disk.img128 : start=4096, size=32768, type=U, name=\"EFI System Partition\"\n",
    );

    let mut proto = String::from("/dev/null\n0 0\nd--755 0 0\n");
    proto_lines(&root, &mut proto);
    proto.push_str("$\n");
    std::fs::write(dir.join("proto"), proto).unwrap();
    let xfs = dir.join("root.img");
    blank(&xfs, 45);
    run(Command::new(sbin("mkfs.xfs"))
        .args(["-q", "-f", "-L", "/", "-p"])
        .arg(dir.join("proto"))
        .arg(&xfs)
        // mkfs.xfs refuses filesystems under 300 MB otherwise.
        .envs([("TEST_DIR", "1"), ("TEST_DEV", "1"), ("QA_CHECK_FS", "1")]));

    let image = dir.join("esp.img");
    esp(&image, 16, "ESP", &efi);
    assemble(&dir, &disk, &[(&xfs, 36864), (&image, 4096)])
}

/// An Ubuntu cloud image's root volume, 64 MiB: GPT, the root filesystem
/// (ext4, label cloudimg-rootfs) holding `files` as partition 1, the BIOS
/// boot partition as 14 and the EFI system partition (FAT16, label UEFI)
/// holding `efi_files` as 15.
pub fn ubuntu(files: &[(&str, Vec<u8>)], efi_files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("ubuntu"));
    let (root, efi) = (dir.join("root"), dir.join("efi"));
    write_tree(&root, files);
    write_tree(&efi, efi_files);
    let disk = partitioned(
        &dir,
        64,
        "label: gpt\n\
        disk.img1 : start=30720, type=L\n\
        disk.img14 : start=2048, size=8192, type=21686148-6449-6E6F-744E-656564454649\n\
        disk.img15 : start=10240, size=20480, type=U\n",
    );
    let ext4 = dir.join("root.img");
    blank(&ext4, 48);
    run(Command::new(sbin("mkfs.ext4"))
        .args(["-q", "-F", "-L", "cloudimg-rootfs", "-d"])
        .arg(&root)
        .arg(&ext4));
    let image = dir.join("esp.img");
    esp(&image, 10, "UEFI", &efi);
    assemble(&dir, &disk, &[(&ext4, 30720), (&image, 10240)])
}

/// `ntfs-3g` serving an NTFS image while `fill` writes to it (FUSE, as
/// root), then unmounted and waited for: it writes its last changes as
/// it exits.
fn fill_ntfs(image: &Path, at: &Path, fill: impl FnOnce(&Path)) {
    std::fs::create_dir_all(at).unwrap();
    let mut daemon = Command::new("ntfs-3g")
        .args(["-o", "no_detach"])
        .arg(image)
        .arg(at)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run ntfs-3g (Debian package ntfs-3g)");
    let mounted = (0..200).any(|_| {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let up = mounts.contains(&format!(" {} fuse", at.display()));
        if !up {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        up
    });
    let filled =
        mounted && std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fill(at))).is_ok();
    let _ = Command::new("umount").arg(at).status();
    let _ = daemon.wait();
    assert!(mounted, "ntfs-3g did not mount {}", image.display());
    assert!(filled, "writing the NTFS failed");
}

/// A Windows Server root volume as AWS's Windows AMIs lay it out, 64 MiB:
/// MBR, a "System Reserved" NTFS partition (boot files) as 1 and the C:
/// drive (NTFS, label Windows) holding `files` as 2. Needs FUSE and root
/// (`ntfs-3g`).
pub fn windows(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("windows"));
    std::fs::create_dir_all(&dir).unwrap();
    let disk = partitioned(
        &dir,
        64,
        "label: dos\n\
        disk.img1 : start=2048, size=32768, type=7, bootable\n\
        disk.img2 : start=34816, type=7\n",
    );
    let mut parts = Vec::new();
    for (name, label, mib, sector) in [
        ("reserved.img", "System Reserved", 16, 2048usize),
        ("c.img", "Windows", 47, 34816),
    ] {
        let image = dir.join(name);
        blank(&image, mib);
        run(Command::new(sbin("mkntfs"))
            .args(["-F", "-Q", "-q", "-L", label])
            .arg(&image));
        parts.push((image, sector));
    }
    fill_ntfs(&parts[0].0, &dir.join("mnt-reserved"), |at| {
        write_tree(
            at,
            &[
                ("Boot/BCD", b"regf".to_vec()),
                ("bootmgr", b"BOOTMGR".to_vec()),
            ],
        );
    });
    fill_ntfs(&parts[1].0, &dir.join("mnt-c"), |at| write_tree(at, files));
    let parts: Vec<(&Path, usize)> = parts.iter().map(|(p, s)| (p.as_path(), *s)).collect();
    assemble(&dir, &disk, &parts)
}
