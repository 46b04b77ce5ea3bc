//! A session over a volume whose every partition is hostile, driven
//! through the browser's routes: a truncated XFS, an ext4 with a corrupted
//! superblock, a FAT with a folder inside itself and a file declaring
//! 4 GiB, an NTFS with a file declaring an exabyte. Every page answers,
//! damage is an error page that says what is wrong, and the session keeps
//! serving.

use std::sync::Arc;

use axum::http::StatusCode;

use super::disk::Volume;
use super::filesystem::Filesystem;
use super::partitions::ReadAt;
use super::partitions::tests::{EFI, LINUX, gpt_disk};
use super::routes::tests::{TOKEN, app_over, call, text_of};
use super::volume::{open_volume, survey};

/// A disk image shared by every request.
#[derive(Clone)]
struct Shared(Arc<Vec<u8>>);

impl ReadAt for Shared {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        let end = offset.saturating_add(buf.len() as u64);
        let src = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(end).ok())
            .and_then(|(s, e)| self.0.get(s..e))
            .ok_or("read past the end of the disk")?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn size(&self) -> u64 {
        self.0.len() as u64
    }
}

impl Volume for Shared {
    fn open(&self) -> Result<Box<dyn Filesystem>, String> {
        open_volume(self, &survey(self)?)
    }
}

/// Sets the little-endian field at `at` of every 32-byte FAT entry named
/// `name` (8.3, padded) in `d`.
fn patch_fat_entries(d: &mut [u8], name: &[u8; 11], at: usize, value: &[u8]) -> usize {
    let mut patched = 0;
    for e in d.chunks_exact_mut(32) {
        if e[0..11] == *name {
            e[at..at + value.len()].copy_from_slice(value);
            patched += 1;
        }
    }
    patched
}

fn hostile_disk() -> Vec<u8> {
    // A truncated XFS: its first MiB in a 1 MiB partition.
    let xfs = super::xfs::tests::image(&[]).0;
    // An ext4 whose superblock claims 2^40-byte blocks.
    let mut ext4 = super::disk::testing::image(&[("etc/hostname", b"web-1\n", 0o644)]).0;
    ext4[1024 + 24] = 30;
    // A FAT whose folder EFI/BOOT is EFI itself, and whose data.bin
    // claims 4 GiB.
    let mut fat = super::fat::tests::image(16, &["-F", "16"]).0;
    let efi = fat
        .chunks_exact(32)
        .find(|e| &e[0..11] == b"EFI        ")
        .map(|e| [e[26], e[27]])
        .expect("the EFI folder's entry");
    assert_eq!(patch_fat_entries(&mut fat, b"BOOT       ", 26, &efi), 1);
    assert_eq!(
        patch_fat_entries(&mut fat, b"DATA    BIN", 28, &[0xff; 4]),
        1
    );
    // An NTFS whose report claims an exabyte.
    let ntfs_image = super::ntfs::tests::image(48, 4096);
    let mut ntfs = ntfs_image.0.clone();
    {
        use super::ntfs::{Ntfs, tests::patch_record};
        let fs = Ntfs::load(ntfs_image).expect("NTFS");
        let record = fs.record_of("/Users/Administrator/Documents/report.txt");
        patch_record(&fs, &mut ntfs, record, |rec| {
            let mut a = usize::from(u16::from_le_bytes([rec[20], rec[21]]));
            while rec[a] != 0x80 {
                a += u32::from_le_bytes([rec[a + 4], rec[a + 5], rec[a + 6], rec[a + 7]]) as usize;
            }
            rec[a + 48..a + 56].copy_from_slice(&(1u64 << 60).to_le_bytes());
        });
    }
    let mib = 1u64 << 20;
    let sectors = |bytes: usize| bytes as u64 / 512;
    let starts = [
        1,
        2,
        2 + ext4.len() as u64 / mib + 1,
        2 + ext4.len() as u64 / mib + 18,
    ];
    let starts: Vec<u64> = starts.iter().map(|s| s * mib / 512).collect();
    let mut d = gpt_disk(
        (starts[3] * 512) + ntfs.len() as u64 + mib,
        &[
            (LINUX, starts[0], starts[0] + 2047, "truncated"),
            (
                LINUX,
                starts[1],
                starts[1] + sectors(ext4.len()) - 1,
                "corrupt",
            ),
            (EFI, starts[2], starts[2] + sectors(fat.len()) - 1, "EFI"),
            (
                "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
                starts[3],
                starts[3] + sectors(ntfs.len()) - 1,
                "Windows",
            ),
        ],
    );
    for (image, start) in [
        (&xfs[..1 << 20], starts[0]),
        (&ext4[..], starts[1]),
        (&fat[..], starts[2]),
        (&ntfs[..], starts[3]),
    ] {
        let at = start as usize * 512;
        d[at..at + image.len()].copy_from_slice(image);
    }
    d
}

#[tokio::test]
async fn a_hostile_volume_gets_error_pages_and_the_session_keeps_serving() {
    let disk = tokio::task::spawn_blocking(hostile_disk)
        .await
        .expect("the disk");
    let app = app_over(Arc::new(Shared(Arc::new(disk))));
    let get = |uri: &'static str| {
        let app = app.clone();
        async move {
            let response = call(&app, "GET", uri, Some(TOKEN)).await;
            (response.status(), text_of(response).await)
        }
    };

    let (status, root) = get("/browse/").await;
    assert_eq!(status, StatusCode::OK, "{root}");
    for row in ["partition-1", "partition-2", "partition-3/", "partition-4/"] {
        assert!(root.contains(row), "{row} not in {root}");
    }
    assert!(root.contains("XFS · truncated"), "{root}");

    // The truncated XFS and the corrupted ext4: an error page each,
    // saying which partition and why.
    for (uri, says) in [
        (
            "/browse/partition-1",
            "partition 1 of the restore point's volume is not readable",
        ),
        (
            "/browse/partition-2",
            "partition 2 of the restore point's volume is not readable",
        ),
    ] {
        let (status, page) = get(uri).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: {page}");
        assert!(page.contains(says), "{uri}: {page}");
    }

    // The folder inside itself browses, is searched within bounds, and is
    // refused as an archive.
    let (status, page) = get("/browse/partition-3/EFI/BOOT/BOOT/BOOT/amzn").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let (status, page) = get("/search?q=grub").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("/partition-3/EFI/amzn/grub.cfg"), "{page}");
    let (status, page) = get("/archive/partition-3/EFI").await;
    assert_ne!(status, StatusCode::OK, "{page}");

    // Huge declared sizes: an error page, not a download that never ends.
    let (status, page) = get("/file/partition-3/data.bin").await;
    assert_ne!(status, StatusCode::OK, "{page}");
    assert!(page.contains("more than the volume holds"), "{page}");
    let (status, page) = get("/browse/partition-4/Users/Administrator/Documents").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("damaged"), "{page}");
    let (status, page) = get("/file/partition-4/Users/Administrator/Documents/report.txt").await;
    assert_ne!(status, StatusCode::OK, "{page}");

    // And the session keeps serving.
    let (status, page) = get("/browse/partition-4/Windows/System32/drivers/etc").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("hosts"), "{page}");
    let (status, _) = get("/browse/").await;
    assert_eq!(status, StatusCode::OK);
}
