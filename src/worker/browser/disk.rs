//! Disk access: the restore point's volume as a byte device read from the
//! repository's chunks, its partitions (`super::partitions`), the ext2/3/4
//! filesystem on one of them, and the paths people ask for in it.
//!
//! `ext4_view::Ext4` is not `Send`: every use opens it on the blocking
//! thread that does the work (the chunk cache makes opening cheap).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use ext4_view::{Ext4, Ext4Read, Metadata};
use sha2::{Digest, Sha256};

use super::partitions::{self, Partition, ReadAt, Scheme};
use crate::aws::AwsClients;
use crate::aws::ebs::BLOCK_SIZE;
use crate::aws::repository::Chunk;
use crate::mover::manifest::{RepositoryLocation, VolumeImage};

/// Decompressed chunks kept in memory (512 KiB each).
const CACHE_CHUNKS: usize = 64;

/// Something a session can open the filesystem of: the restore point's
/// volume, or an image in memory in tests.
pub(super) trait Volume: Send + Sync + 'static {
    /// Opens the filesystem. Blocking: every read may wait on S3.
    fn open(&self) -> Result<Ext4, String>;
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
    runtime: tokio::runtime::Handle,
    /// The partition that holds its ext2/3/4 filesystem, once found.
    ext4: OnceLock<Partition>,
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
                runtime: tokio::runtime::Handle::current(),
                ext4: OnceLock::new(),
            }),
        }
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
            let cache = inner.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, data)) = cache.iter().find(|(i, _)| *i == index) {
                return Ok(data.clone());
            }
        }
        let data = match inner.blocks.get(&index) {
            None => vec![0u8; BLOCK_SIZE],
            Some(hash) => self.fetch_chunk(hash)?,
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

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct DiskError(String);

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
    /// Its partition is found once (a session opens the filesystem at
    /// every request); a failure to find it (a read that failed) is not
    /// kept, so the next request looks again.
    fn open(&self) -> Result<Ext4, String> {
        let known = self.inner.ext4.get().cloned();
        let p = match known {
            Some(p) => p,
            None => {
                let p = find_ext4(self)?;
                let _ = self.inner.ext4.set(p.clone());
                p
            }
        };
        load_ext4(self, &p)
    }
}

/// One partition of a volume as a byte device of its own.
struct Slice<D> {
    disk: D,
    start: u64,
    size: u64,
}

impl<D: ReadAt + 'static> Ext4Read for Slice<D> {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        let end = start_byte.saturating_add(dst.len() as u64);
        if end > self.size {
            return Err(Box::new(DiskError(format!(
                "read past the end of the partition ({end} > {})",
                self.size
            ))));
        }
        self.disk
            .read_at(self.start + start_byte, dst)
            .map_err(|e| Box::new(DiskError(e)) as Box<dyn std::error::Error + Send + Sync>)
    }
}

/// What a partition holds, by the magic numbers at the start of the
/// filesystems an EC2 volume has; `Err` when its start cannot be read (a
/// chunk missing, S3 failing).
pub(super) fn filesystem_of(disk: &dyn ReadAt, p: &Partition) -> Result<&'static str, String> {
    let mut head = vec![0u8; 4096.min(p.size) as usize];
    disk.read_at(p.start, &mut head)?;
    Ok(filesystem_in(&head))
}

/// The filesystem whose magic numbers `head` (a partition's first 4 KiB)
/// holds.
fn filesystem_in(head: &[u8]) -> &'static str {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    if at(1080, &[0x53, 0xEF]) {
        "ext2/3/4"
    } else if at(0, b"XFSB") {
        "XFS"
    } else if at(3, b"NTFS    ") {
        "NTFS"
    } else if at(82, b"FAT32   ") || at(54, b"FAT12   ") || at(54, b"FAT16   ") {
        "FAT"
    } else if at(3, b"EXFAT   ") {
        "exFAT"
    } else if at(512, b"LABELONE") || at(24, b"LVM2 001") {
        "LVM physical volume"
    } else if at(4086, b"SWAPSPACE2") {
        "Linux swap"
    } else if head.iter().all(|b| *b == 0) {
        "no filesystem"
    } else {
        "unknown"
    }
}

/// The ext2/3/4 filesystem of a volume: the whole volume's, or that of its
/// largest ext partition (a Linux root volume's root). When there is none,
/// an error that names each partition and what it holds.
#[cfg(test)]
pub(super) fn open_ext4<D: ReadAt + Clone + 'static>(disk: &D) -> Result<Ext4, String> {
    load_ext4(disk, &find_ext4(disk)?)
}

/// Where the volume's ext2/3/4 filesystem is: its partition (number,
/// first byte, size), or why there is none.
fn find_ext4(disk: &dyn ReadAt) -> Result<Partition, String> {
    let layout = partitions::read(disk)
        .map_err(|e| format!("the restore point's volume cannot be read: {e}"))?;
    let mut found: Vec<(&Partition, &'static str)> = Vec::new();
    for p in &layout.partitions {
        let fs = filesystem_of(disk, p).map_err(|e| {
            format!(
                "partition {} of the restore point's volume cannot be read: {e}",
                p.number
            )
        })?;
        found.push((p, fs));
    }
    let ext = found
        .iter()
        .filter(|(_, fs)| *fs == "ext2/3/4")
        .max_by_key(|(p, _)| p.size);
    let Some((p, _)) = ext else {
        let what: Vec<String> = found
            .iter()
            .map(|(p, fs)| match layout.scheme {
                Scheme::Whole => format!("the whole volume holds {fs}"),
                _ => format!(
                    "partition {} ({}, {} MiB) holds {fs}",
                    p.number,
                    p.kind,
                    p.size >> 20
                ),
            })
            .collect();
        return Err(format!(
            "the restore point's volume holds no ext2/3/4 filesystem, the only kind file-level recovery reads so far: {}",
            what.join("; ")
        ));
    };
    Ok((*p).clone())
}

/// The ext2/3/4 filesystem on partition `p` of `disk`.
fn load_ext4<D: ReadAt + Clone + 'static>(disk: &D, p: &Partition) -> Result<Ext4, String> {
    let slice = Slice {
        disk: disk.clone(),
        start: p.start,
        size: p.size,
    };
    Ext4::load(Box::new(slice)).map_err(|e| {
        format!(
            "partition {} of the restore point's volume is not a readable ext2/3/4 filesystem: {e}",
            p.number
        )
    })
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
pub(super) fn entries(fs: &Ext4, dir: &str) -> Result<Vec<(String, Metadata)>, String> {
    let mut out = Vec::new();
    for entry in fs.read_dir(dir).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name().display().to_string();
        if name == "." || name == ".." {
            continue;
        }
        let meta = entry.metadata().map_err(|e| e.to_string())?;
        out.push((name, meta));
    }
    out.sort_by(|a, b| (!a.1.is_dir(), &a.0).cmp(&(!b.1.is_dir(), &b.0)));
    Ok(out)
}

/// Search stops after this many entries or results.
const SEARCH_SCAN_LIMIT: usize = 200_000;
const SEARCH_RESULTS: usize = 500;

/// Paths (and whether each is a folder) whose name contains `needle`,
/// ignoring case, sorted; bounded by the limits above.
pub(super) fn search(fs: &Ext4, needle: &str) -> Vec<(String, bool)> {
    let needle = needle.to_lowercase();
    let mut found = Vec::new();
    let mut scanned = 0usize;
    let mut todo = vec!["/".to_string()];
    while let Some(dir) = todo.pop() {
        let Ok(list) = entries(fs, &dir) else {
            continue;
        };
        for (name, meta) in list {
            scanned += 1;
            let path = join(&dir, &name);
            if name.to_lowercase().contains(&needle) {
                found.push((path.clone(), meta.is_dir()));
            }
            if meta.is_dir() {
                todo.push(path);
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

    /// An ext4 image in memory.
    pub struct Image(pub Vec<u8>);

    impl Volume for Image {
        fn open(&self) -> Result<Ext4, String> {
            Ext4::load(Box::new(self.0.clone())).map_err(|e| e.to_string())
        }
    }

    /// An image holding `files` (path, contents, mode).
    pub fn image(files: &[(&str, &[u8], u32)]) -> Image {
        image_owned(files, None)
    }

    /// [`image`], its files owned by `owner` (uid, gid) when this process
    /// may give them away (as root), else by whoever runs the tests.
    pub fn image_owned(files: &[(&str, &[u8], u32)], owner: Option<(u32, u32)>) -> Image {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("tender-browser-{}-{n}", std::process::id()));
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
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(4 << 20))
            .unwrap();
        let mkfs = ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("mkfs.ext4");
        let status = Command::new(mkfs)
            .args(["-q", "-F", "-b", "4096", "-O", "^has_journal"])
            .args(["-E", "root_owner=0:0", "-d"])
            .arg(&root)
            .arg(&img)
            .arg("4M")
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

    #[test]
    fn the_ext4_partition_of_a_partitioned_volume_is_found() {
        use super::super::partitions::tests::{EFI, Image as Disk, LINUX, gpt_disk};
        let fs = image(&[("etc/hostname", b"web-1\n", 0o644)]);
        // An Ubuntu-like layout: EFI first, the ext4 root after it.
        let mut d = gpt_disk(
            16 << 20,
            &[(EFI, 2048, 4095, "EFI"), (LINUX, 8192, 16383, "root")],
        );
        d[8192 * 512..8192 * 512 + fs.0.len()].copy_from_slice(&fs.0);
        let found = open_ext4(&Disk(d)).expect("the root partition's filesystem");
        assert_eq!(found.read("/etc/hostname").unwrap(), b"web-1\n");
    }

    #[test]
    fn a_volume_without_ext4_says_what_each_partition_holds() {
        use super::super::partitions::tests::{EFI, Image as Disk, LINUX, gpt_disk};
        let mut d = gpt_disk(
            16 << 20,
            &[(EFI, 2048, 4095, "EFI"), (LINUX, 8192, 16383, "root")],
        );
        d[2048 * 512 + 82..2048 * 512 + 90].copy_from_slice(b"FAT32   ");
        d[8192 * 512..8192 * 512 + 4].copy_from_slice(b"XFSB");
        let Err(e) = open_ext4(&Disk(d)) else {
            panic!("no ext4 anywhere, yet one was opened");
        };
        assert!(
            e.contains("partition 1 (EFI system, 1 MiB) holds FAT")
                && e.contains("partition 2 (Linux filesystem, 4 MiB) holds XFS"),
            "{e}"
        );
        let Err(e) = open_ext4(&Disk(vec![0u8; 1 << 20])) else {
            panic!("an empty volume opened");
        };
        assert!(e.contains("the whole volume holds no filesystem"), "{e}");
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
        let Err(e) = open_ext4(&Holed(Disk(d))) else {
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
        let found = search(&fs, "TODO");
        assert_eq!(found, vec![("/docs/notes/todo.txt".to_string(), false)]);
    }
}
