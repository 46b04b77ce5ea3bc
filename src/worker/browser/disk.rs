//! Disk access: the restore point's volume as a byte device read from the
//! repository's chunks, what is on it (`super::volume`), and the paths
//! people ask for in it.
//!
//! A filesystem is not `Send` (`ext4_view::Ext4` is not): every use opens
//! it on the blocking thread that does the work (the chunk cache makes
//! opening cheap).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use sha2::{Digest, Sha256};

use super::filesystem::{Filesystem, Meta};
use super::partitions::ReadAt;
use super::volume::{Found, Survey, filesystem_of, open_volume, survey};
use crate::aws::AwsClients;
use crate::aws::ebs::BLOCK_SIZE;
use crate::aws::repository::Chunk;
use crate::mover::manifest::{RepositoryLocation, VolumeImage};

/// Decompressed chunks kept in memory (512 KiB each): 64 MiB. Listing a
/// folder reads its directory blocks, then its inodes, and XFS puts both
/// in the same stretch of disk: 100 000 entries span some 110 chunks,
/// which a smaller cache would read twice (`benches/browser.rs`).
const CACHE_CHUNKS: usize = 128;

/// Something a session can open the filesystem of: the restore point's
/// volume, or an image in memory in tests.
pub(super) trait Volume: Send + Sync + 'static {
    /// Opens what the session browses: the volume's filesystem, or its
    /// partitions. Blocking: every read may wait on S3.
    fn open(&self) -> Result<Box<dyn Filesystem>, String>;

    /// The filesystem `path` is in: where its root is shown, its type
    /// and UUID. Blocking, as [`Volume::open`].
    fn filesystem_of(&self, path: &str) -> Result<(String, Found), String> {
        let _ = path;
        Err("this volume does not tell its filesystems apart".into())
    }
}

/// The restore point's volume as a byte device: blocks come from the
/// repository's chunks, verified against their names, cached.
#[derive(Clone)]
pub struct RepositoryDisk {
    inner: Arc<DiskInner>,
}

struct DiskInner {
    aws: AwsClients,
    location: RepositoryLocation,
    /// Block index → chunk hash.
    blocks: BTreeMap<i32, String>,
    size: u64,
    cache: Mutex<VecDeque<(i32, Arc<Vec<u8>>)>>,
    /// Chunks fetched from the repository (cache misses).
    fetched: AtomicU64,
    runtime: tokio::runtime::Handle,
    /// Its partitions and what they hold, once read.
    survey: OnceLock<Arc<Survey>>,
}

impl RepositoryDisk {
    pub fn new(aws: AwsClients, location: RepositoryLocation, volume: &VolumeImage) -> Self {
        Self {
            inner: Arc::new(DiskInner {
                aws,
                location,
                blocks: volume
                    .blocks
                    .iter()
                    .map(|b| (b.index, b.chunk.clone()))
                    .collect(),
                size: volume.size_gib.max(0) as u64 * (1 << 30),
                cache: Mutex::new(VecDeque::new()),
                fetched: AtomicU64::new(0),
                runtime: tokio::runtime::Handle::current(),
                survey: OnceLock::new(),
            }),
        }
    }

    /// Chunks fetched from the repository so far (the cache's misses).
    pub fn chunks_fetched(&self) -> u64 {
        self.inner.fetched.load(Ordering::Relaxed)
    }

    /// The clients the disk reads with (restores write with them too).
    pub(super) fn aws(&self) -> &AwsClients {
        &self.inner.aws
    }

    /// One whole block (zeros where the restore point has none). Runs on a
    /// blocking thread: it waits for S3 through the runtime.
    fn block(&self, index: i32) -> Result<Arc<Vec<u8>>, String> {
        let inner = &self.inner;
        {
            let mut cache = inner.cache.lock().unwrap_or_else(|p| p.into_inner());
            let at = cache.iter().position(|(i, _)| *i == index);
            // Least recently used goes first: a hit moves to the back.
            if let Some(hit) = at.and_then(|at| cache.remove(at)) {
                let data = hit.1.clone();
                cache.push_back(hit);
                return Ok(data);
            }
        }
        let data = match inner.blocks.get(&index) {
            None => vec![0u8; BLOCK_SIZE],
            Some(hash) => {
                inner.fetched.fetch_add(1, Ordering::Relaxed);
                self.fetch_chunk(hash)?
            }
        };
        let data = Arc::new(data);
        let mut cache = inner.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.push_back((index, data.clone()));
        while cache.len() > CACHE_CHUNKS {
            cache.pop_front();
        }
        Ok(data)
    }

    /// A chunk from the repository, decompressed, checked against its
    /// name and padded to a whole block.
    fn fetch_chunk(&self, hash: &str) -> Result<Vec<u8>, String> {
        let inner = &self.inner;
        let key = inner.location.chunk_key(hash);
        let found = inner
            .runtime
            .block_on(inner.aws.repository().get_chunk(&inner.location, &key))
            .map_err(|e| e.to_string())?;
        let packed = match found {
            Chunk::Packed(packed) => packed,
            Chunk::Missing => return Err(format!("chunk {key} is missing from the repository")),
            Chunk::Oversized(size) => {
                return Err(format!(
                    "chunk {key} is corrupt: it is {size} bytes, more than a compressed block can be"
                ));
            }
        };
        let mut data = zstd::bulk::decompress(&packed, BLOCK_SIZE)
            .map_err(|e| format!("chunk {key} is corrupt: {e}"))?;
        let actual = hex::encode(Sha256::digest(&data));
        if actual != crate::mover::manifest::chunk_digest(hash) {
            return Err(format!(
                "chunk {key} is corrupt: its data hashes to {actual}"
            ));
        }
        data.resize(BLOCK_SIZE, 0);
        Ok(data)
    }
}

impl ReadAt for RepositoryDisk {
    fn read_at(&self, start_byte: u64, dst: &mut [u8]) -> Result<(), String> {
        let end = start_byte.saturating_add(dst.len() as u64);
        if end > self.inner.size {
            return Err(format!(
                "read past the end of the volume ({end} > {})",
                self.inner.size
            ));
        }
        let mut done = 0usize;
        while done < dst.len() {
            let at = start_byte + done as u64;
            let index = (at / BLOCK_SIZE as u64) as i32;
            let offset = (at % BLOCK_SIZE as u64) as usize;
            let block = self.block(index)?;
            let n = (BLOCK_SIZE - offset).min(dst.len() - done);
            dst[done..done + n].copy_from_slice(&block[offset..offset + n]);
            done += n;
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.inner.size
    }
}

impl Volume for RepositoryDisk {
    /// Its partitions are surveyed once (a session opens the filesystem at
    /// every request); a survey that failed (a read that failed) is not
    /// kept, so the next request looks again.
    fn open(&self) -> Result<Box<dyn Filesystem>, String> {
        let known = self.inner.survey.get().cloned();
        let survey = match known {
            Some(s) => s,
            None => {
                let s = Arc::new(survey(self)?);
                let _ = self.inner.survey.set(s.clone());
                s
            }
        };
        open_volume(self, &survey)
    }

    fn filesystem_of(&self, path: &str) -> Result<(String, Found), String> {
        self.open()?;
        let survey = self
            .inner
            .survey
            .get()
            .ok_or("the volume's partitions could not be read")?;
        filesystem_of(survey, path).map(|(root, found)| (root, found.clone()))
    }
}

/// Checks, before the session starts, that the volume holds a filesystem.
pub async fn check_filesystem(disk: &RepositoryDisk) -> Result<(), String> {
    let disk = disk.clone();
    tokio::task::spawn_blocking(move || disk.open().map(|_| ()))
        .await
        .map_err(|e| e.to_string())?
}

/// An absolute path without `.`/`..` components or a trailing slash: what
/// a request may name, never above the root.
pub(super) fn normalize(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// `dir`/`name`.
pub(super) fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// The last component of `path`, fit for a `Content-Disposition` file
/// name (`root` for `/`).
pub(super) fn file_name(path: &str) -> String {
    let name = path.rsplit('/').next().unwrap_or("download");
    let name: String = name
        .chars()
        .map(|c| if c == '"' || c.is_control() { '_' } else { c })
        .collect();
    if name.is_empty() { "root".into() } else { name }
}

/// A folder's entries without `.` and `..`: folders first, then by name.
pub(super) fn entries(fs: &dyn Filesystem, dir: &str) -> Result<Vec<(String, Meta)>, String> {
    let mut out = fs.read_dir(dir)?;
    out.sort_by(|a, b| (!a.1.is_dir(), &a.0).cmp(&(!b.1.is_dir(), &b.0)));
    Ok(out)
}

/// Search stops after this many entries or results, and goes no deeper
/// than this many folders (a damaged filesystem can hold a folder inside
/// itself).
const SEARCH_SCAN_LIMIT: usize = 200_000;
const SEARCH_RESULTS: usize = 500;
const SEARCH_DEPTH: usize = 128;
/// A folder whose path is longer is not searched (Linux's `PATH_MAX`), and
/// the folders waiting to be searched hold no more than this many bytes of
/// paths: a crafted tree of long names that link back cannot fill memory.
const SEARCH_PATH_BYTES: usize = 4096;
const SEARCH_QUEUE_BYTES: usize = 64 << 20;

/// Paths (and whether each is a folder) whose name contains `needle`,
/// ignoring case, sorted; bounded by the limits above.
pub(super) fn search(fs: &dyn Filesystem, needle: &str) -> Vec<(String, bool)> {
    let needle = needle.to_lowercase();
    let mut found = Vec::new();
    let mut scanned = 0usize;
    let mut todo = vec![("/".to_string(), 0usize)];
    let mut queued = 0usize;
    while let Some((dir, depth)) = todo.pop() {
        queued -= dir.len().min(queued);
        let Ok(list) = entries(fs, &dir) else {
            continue;
        };
        for (name, meta) in list {
            scanned += 1;
            let path = join(&dir, &name);
            if name.to_lowercase().contains(&needle) && found.len() < SEARCH_RESULTS {
                found.push((path.clone(), meta.is_dir()));
            }
            if meta.is_dir()
                && depth < SEARCH_DEPTH
                && path.len() <= SEARCH_PATH_BYTES
                && queued + path.len() <= SEARCH_QUEUE_BYTES
            {
                queued += path.len();
                todo.push((path, depth + 1));
            }
        }
        if scanned >= SEARCH_SCAN_LIMIT || found.len() >= SEARCH_RESULTS {
            break;
        }
    }
    found.sort();
    found
}

#[cfg(test)]
pub(super) mod testing {
    //! Real ext4 images for the browser's tests, made by `mkfs.ext4 -d`
    //! (Debian package e2fsprogs), held in memory.

    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::process::Command;

    use ext4_view::Ext4;

    use super::Volume;
    use crate::worker::browser::filesystem::{Ext4Fs, Filesystem};

    /// An ext4 image in memory.
    pub struct Image(pub Vec<u8>);

    impl Volume for Image {
        fn open(&self) -> Result<Box<dyn Filesystem>, String> {
            Ext4::load(Box::new(self.0.clone()))
                .map(|fs| Box::new(Ext4Fs(fs)) as Box<dyn Filesystem>)
                .map_err(|e| e.to_string())
        }
    }

    /// A new folder of its own under the system's temporary folder, for
    /// one test's files (`what`: which kind of test).
    pub fn scratch(what: &str) -> std::path::PathBuf {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("tender-{what}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary folder");
        dir
    }

    /// Where a Debian system tool is: `/usr/sbin` or `/sbin` are not on
    /// every PATH.
    pub fn sbin(name: &str) -> String {
        ["/usr/sbin/", "/sbin/"]
            .iter()
            .map(|d| format!("{d}{name}"))
            .find(|p| Path::new(p).exists())
            .unwrap_or_else(|| name.to_string())
    }

    /// A folder's names, sorted.
    pub fn sorted_names(fs: &dyn Filesystem, dir: &str) -> Vec<String> {
        let mut names: Vec<String> = fs
            .read_dir(dir)
            .expect("a folder")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        names.sort();
        names
    }

    /// An image holding `files` (path, contents, mode).
    pub fn image(files: &[(&str, &[u8], u32)]) -> Image {
        image_owned(files, None)
    }

    /// [`image`], its files owned by `owner` (uid, gid) when this process
    /// may give them away (as root), else by whoever runs the tests.
    pub fn image_owned(files: &[(&str, &[u8], u32)], owner: Option<(u32, u32)>) -> Image {
        let dir = scratch("browser");
        let root = dir.join("root");
        std::fs::create_dir_all(&root).unwrap();
        for (path, data, mode) in files {
            let at = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            std::fs::write(&at, data).unwrap();
            if let Some((uid, gid)) = owner {
                let _ = std::os::unix::fs::chown(&at, Some(uid), Some(gid));
            }
            // After chown, which clears set-user-ID.
            std::fs::set_permissions(&at, std::fs::Permissions::from_mode(*mode)).unwrap();
        }
        let img = dir.join("disk.img");
        // Room for every file's block and inode.
        let size = (4 << 20) + files.len() as u64 * (8 << 10);
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(size))
            .unwrap();
        let status = Command::new(sbin("mkfs.ext4"))
            .args(["-q", "-F", "-b", "4096", "-O", "^has_journal"])
            .args(["-N", &(files.len() + 128).max(1024).to_string()])
            .args(["-E", "root_owner=0:0", "-d"])
            .arg(&root)
            .arg(&img)
            .arg(format!("{}k", size >> 10))
            .status()
            .expect("run mkfs.ext4 (Debian package e2fsprogs)");
        assert!(status.success(), "mkfs.ext4 failed");
        let bytes = std::fs::read(&img).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        Image(bytes)
    }
}

#[cfg(test)]
mod tests {

    use super::testing::image;
    use super::*;

    #[test]
    fn paths_cannot_escape_the_root() {
        assert_eq!(normalize("/../../etc/./passwd/"), "/etc/passwd");
        assert_eq!(normalize(""), "/");
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/a", "b"), "/a/b");
        assert_eq!(file_name("/"), "root");
        assert_eq!(file_name("/a/say \"hi\""), "say _hi_");
    }

    /// What a session on `disk` browses.
    fn open_disk<D: ReadAt + Clone + 'static>(disk: &D) -> Result<Box<dyn Filesystem>, String> {
        open_volume(disk, &survey(disk)?)
    }

    #[test]
    fn a_partitioned_volume_is_shown_as_its_partitions() {
        use super::super::filesystem::Kind;
        use super::super::partitions::tests::{EFI, Image as Disk, LINUX, gpt_disk};
        let fs = image(&[("etc/hostname", b"web-1\n", 0o644)]);
        // An Ubuntu-like layout: EFI first (empty here), the ext4 root after it.
        let mut d = gpt_disk(
            16 << 20,
            &[(EFI, 2048, 4095, "EFI"), (LINUX, 8192, 16383, "root")],
        );
        d[8192 * 512..8192 * 512 + fs.0.len()].copy_from_slice(&fs.0);
        let found = open_disk(&Disk(d)).expect("the volume's partitions");
        let rows = entries(found.as_ref(), "/").unwrap();
        let names: Vec<(&str, Kind, Option<&str>)> = rows
            .iter()
            .map(|(n, m)| (n.as_str(), m.kind, m.note.as_deref()))
            .collect();
        assert_eq!(
            names,
            vec![
                // Folders first.
                ("partition-2", Kind::Dir, Some("ext2/3/4 · root · 4 MiB")),
                (
                    "partition-1",
                    Kind::Other,
                    Some(
                        "no filesystem · EFI · 1 MiB · it holds no filesystem (a BIOS boot partition, or unused)"
                    )
                ),
            ]
        );
        assert_eq!(
            found.read_file("/partition-2/etc/hostname", 100).unwrap(),
            b"web-1\n"
        );
        assert!(found.metadata("/partition-2").unwrap().is_dir());
        let e = found.read_dir("/partition-1").unwrap_err();
        assert!(
            e.contains("partition 1 of the restore point's volume is not readable: no filesystem"),
            "{e}"
        );
        assert!(found.read_dir("/partition-3").is_err());
    }

    #[test]
    fn an_amazon_linux_like_volume_shows_its_efi_and_xfs_partitions() {
        use super::super::partitions::tests::{EFI, Image as Disk, LINUX, gpt_disk};
        let esp = super::super::fat::tests::image(16, &["-F", "16"]);
        let root = super::super::xfs::tests::image(&[]);
        let mut d = gpt_disk(
            64 << 20,
            &[
                (LINUX, 36864, 36864 + 65535, "Linux"),
                (
                    "21686148-6449-6E6F-744E-656564454649",
                    2048,
                    4095,
                    "BIOS Boot Partition",
                ),
                (EFI, 4096, 36863, "EFI System Partition"),
            ],
        );
        d[4096 * 512..4096 * 512 + esp.0.len()].copy_from_slice(&esp.0);
        d[36864 * 512..36864 * 512 + root.0.len()].copy_from_slice(&root.0);
        let found = open_disk(&Disk(d)).expect("the volume's partitions");
        let rows: Vec<(String, Option<String>)> = entries(found.as_ref(), "/")
            .unwrap()
            .into_iter()
            .map(|(n, m)| (n, m.note))
            .collect();
        let note = |n: &str| {
            rows.iter()
                .find(|r| r.0 == n)
                .and_then(|r| r.1.clone())
                .unwrap_or_default()
        };
        assert_eq!(note("partition-1"), "XFS · Linux · 32 MiB");
        assert_eq!(note("partition-3"), "FAT · ESP · 16 MiB");
        assert!(note("partition-2").starts_with("no filesystem · BIOS Boot Partition"));
        assert_eq!(
            found.read_file("/partition-1/etc/hostname", 100).unwrap(),
            b"web-1\n"
        );
        assert_eq!(
            found
                .read_file("/partition-3/EFI/BOOT/BOOTX64.EFI", 100)
                .unwrap(),
            b"MZ boot"
        );
        assert_eq!(
            search(found.as_ref(), "grub.cfg"),
            [("/partition-3/EFI/amzn/grub.cfg".to_string(), false)]
        );
    }

    #[test]
    fn an_xfs_caught_with_changes_in_its_log_is_shown_with_a_warning() {
        use super::super::partitions::tests::{Image as Disk, LINUX, gpt_disk};
        use super::super::volume::XFS_LOG_PENDING;
        let xfs = super::super::xfs::tests::dirty();
        // On the whole volume: every page carries the notice.
        let whole = open_disk(&xfs).expect("an XFS volume");
        assert_eq!(whole.notice("/").as_deref(), Some(XFS_LOG_PENDING));
        // On a partition: its row says so too.
        let mut d = gpt_disk(64 << 20, &[(LINUX, 2048, 2048 + 65535, "root")]);
        d[2048 * 512..2048 * 512 + xfs.0.len()].copy_from_slice(&xfs.0);
        let found = open_disk(&Disk(d)).expect("the volume's partitions");
        let rows = entries(found.as_ref(), "/").unwrap();
        let note = rows[0].1.note.clone().unwrap_or_default();
        assert!(note.ends_with(XFS_LOG_PENDING), "{note}");
        assert_eq!(
            found.notice("/partition-1/etc").as_deref(),
            Some(XFS_LOG_PENDING),
            "and on its pages"
        );
        assert_eq!(found.notice("/"), None);
        // A clean one has none.
        let clean = open_disk(&super::super::xfs::tests::image(&[])).expect("an XFS volume");
        assert_eq!(clean.notice("/"), None);
    }

    #[test]
    fn a_volume_nothing_on_which_is_readable_says_what_each_partition_holds() {
        use super::super::partitions::tests::{EFI, Image as Disk, LINUX, gpt_disk};
        let mut d = gpt_disk(
            16 << 20,
            &[(EFI, 2048, 4095, "EFI"), (LINUX, 8192, 16383, "root")],
        );
        d[2048 * 512 + 3..2048 * 512 + 11].copy_from_slice(b"EXFAT   ");
        d[8192 * 512 + 512..8192 * 512 + 520].copy_from_slice(b"LABELONE");
        let Err(e) = open_disk(&Disk(d)) else {
            panic!("nothing readable, yet the volume opened");
        };
        assert!(
            e.contains("partition 1 (EFI system, 1 MiB) holds exFAT")
                && e.contains("partition 2 (Linux filesystem, 4 MiB) holds LVM physical volume"),
            "{e}"
        );
        let Err(e) = open_disk(&Disk(vec![0u8; 1 << 20])) else {
            panic!("an empty volume opened");
        };
        assert!(
            e.contains("the restore point's volume is not readable: no filesystem"),
            "{e}"
        );
    }

    #[test]
    fn a_damaged_filesystem_is_said_so_when_browsed() {
        use super::super::partitions::tests::{EFI, Image as Disk, LINUX, gpt_disk};
        let mut d = gpt_disk(
            16 << 20,
            &[(EFI, 2048, 4095, "EFI"), (LINUX, 8192, 16383, "root")],
        );
        d[8192 * 512..8192 * 512 + 4].copy_from_slice(b"XFSB");
        let found = open_disk(&Disk(d)).expect("an XFS partition is worth showing");
        let e = found.read_dir("/partition-2").unwrap_err();
        assert!(
            e.contains("partition 2 of the restore point's volume is not readable: XFS version 0 is not supported"),
            "{e}"
        );
    }

    #[test]
    fn a_partition_that_cannot_be_read_is_said_so_not_called_empty() {
        use super::super::partitions::tests::{EFI, Image as Disk, LINUX, gpt_disk};
        /// A volume whose second partition's chunk is missing.
        #[derive(Clone)]
        struct Holed(Disk);
        impl ReadAt for Holed {
            fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
                if offset >= 8192 * 512 {
                    return Err("chunk chunks/ab/abcd is missing from the repository".into());
                }
                self.0.read_at(offset, buf)
            }
            fn size(&self) -> u64 {
                self.0.size()
            }
        }
        let d = gpt_disk(
            16 << 20,
            &[(EFI, 2048, 4095, "EFI"), (LINUX, 8192, 16383, "root")],
        );
        let Err(e) = open_disk(&Holed(Disk(d))) else {
            panic!("a volume that cannot be read opened");
        };
        assert!(
            e.contains("partition 2 of the restore point's volume cannot be read")
                && e.contains("missing from the repository"),
            "{e}"
        );
    }

    #[test]
    fn search_walks_the_tree() {
        let fs = image(&[
            ("docs/notes/todo.txt", b"x", 0o644),
            ("docs/report.bin", b"y", 0o644),
            ("hello.txt", b"hi", 0o644),
        ])
        .open()
        .unwrap();
        let found = search(fs.as_ref(), "TODO");
        assert_eq!(found, vec![("/docs/notes/todo.txt".to_string(), false)]);
    }
}
