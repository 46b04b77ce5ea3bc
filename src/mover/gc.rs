//! Garbage collection of a repository's chunks, in two phases, so that a
//! backup running at the same time never loses a chunk (restic's and
//! Proxmox Backup Server's way):
//!
//! 1. **Condemn.** A run first writes a marker (`condemned/<run>/marker`);
//!    its store time `T` is when the run began. Every chunk no manifest
//!    references is listed in `condemned/<run>/<fan>.json`. A backup reads
//!    these lists when it starts ([`load_condemned`]) and never depends on
//!    a condemned name: it does not reuse such a chunk from its parent, and
//!    when it needs that data it stores it under a *rescue name*
//!    (`<sha256>~<tag>`, `manifest::rescue_name`) that no collection has
//!    listed, so no delete can ever race with its write.
//! 2. **Delete**, in a later run, once `grace` (longer than any backup may
//!    run) has passed since the list was written: a condemned chunk is
//!    deleted only if no manifest references it now and it was not written
//!    since `T`. Then the list goes.
//!
//! A backup that started before a list was written finishes within the
//! grace period, so its manifest is there (and references what it used)
//! when the delete phase looks; one that started after it never relies on
//! what the list names. Either way no live restore point loses a chunk.
//! (The randomized test `tests/gc_interleaved.rs` found the two races this
//! rules out: a grace period counted from the run's start instead of the
//! list's, and a backup writing a condemned chunk again between the
//! collector's listing and its delete.)
//!
//! **Memory** does not grow with the number of restore points: manifests
//! are streamed one at a time, and every chunk hash they reference (and
//! every condemned one) is spilled to a local file per fan-out prefix (the
//! first byte of the hash, 256 of them: `chunks/<h[0..2]>/`), through a
//! buffer of 512 distinct records per prefix (about 10 MiB in all), so the many
//! restore points of one volume spill a shared chunk about once. Each
//! prefix is then collected alone: its distinct referenced and condemned
//! hashes are read (32 bytes each, in a hash set, then sorted) and compared
//! with a listing of that prefix, a page at a time. So memory is the
//! buffers, one manifest, one listing page, and 1/256 of the distinct
//! chunks: ~4 000 hashes (about 300 KiB with the set's overhead) per
//! million chunks, about 30 MiB at a hundred million. One manifest is
//! held whole: a 16 TiB volume's (33 million blocks) is gigabytes, a limit
//! of the manifest format rather than of the collector.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use super::MoverError;
use super::manifest::{self, RepositoryLocation};
use super::store::{Object, PAGE, ReadStore, Store, for_each_object};

/// Version of the condemned lists this build writes and reads.
const LIST_VERSION: u32 = 1;

/// The least grace period: longer than any job's deadline should be.
pub const MIN_GRACE: SignedDuration = SignedDuration::from_hours(24);

/// One fan-out prefix's list of condemned chunks.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
struct CondemnedList {
    version: u32,
    run: String,
    chunks: Vec<String>,
    /// The grace period its run was made with: it is ripe no sooner, and
    /// a backup judges by it whether it ran past it (see [`outlived_by`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    grace_seconds: Option<u64>,
}

/// What one collection run does.
#[derive(Clone, Debug)]
pub struct Collection {
    /// How long a chunk stays condemned before it may be deleted.
    pub grace: SignedDuration,
    /// Where the spill files go (the worker's local disk).
    pub spill_dir: PathBuf,
    /// This run's ID (sortable: time first).
    pub run: String,
}

/// What a collection run found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Collected {
    /// Manifests read (live restore points).
    pub manifests: u64,
    /// The blocks' bytes those restore points describe (before
    /// deduplication and compression).
    pub logical_bytes: u64,
    /// Chunks stored, and their bytes, before this run deleted any.
    pub chunks: u64,
    pub chunk_bytes: u64,
    /// Chunks some restore point references.
    pub live_chunks: u64,
    pub live_bytes: u64,
    /// Chunks deleted by this run, and their bytes.
    pub deleted_chunks: u64,
    pub deleted_bytes: u64,
    /// Chunks condemned (now or before) and not deleted yet: what the next
    /// runs will reclaim, and from when.
    pub pending_chunks: u64,
    pub pending_bytes: u64,
    pub reclaimable_at: Option<Timestamp>,
    /// Condemned chunks kept because a backup wrote them again since.
    pub rewritten_chunks: u64,
    /// Earlier runs' lists that were done with and removed.
    pub lists_removed: u64,
}

/// The condemned chunks a backup starting now must write again when it
/// needs them.
pub async fn load_condemned<S: ReadStore>(
    store: &S,
    location: &RepositoryLocation,
) -> Result<HashSet<String>, MoverError> {
    let mut keys = Vec::new();
    for_each_object(store, &location.condemned_prefix(), |o| {
        if o.key.ends_with(".json") {
            keys.push(o.key);
        }
    })
    .await?;
    let mut condemned = HashSet::new();
    for key in keys {
        if let Some(list) = read_list(store, &key).await? {
            condemned.extend(list.chunks);
        }
    }
    Ok(condemned)
}

async fn read_list<S: ReadStore>(
    store: &S,
    key: &str,
) -> Result<Option<CondemnedList>, MoverError> {
    let Some(body) = store.get(key).await? else {
        return Ok(None);
    };
    parse_list(&body)
        .map(Some)
        .map_err(|detail| MoverError::ManifestInvalid {
            key: key.to_string(),
            detail,
        })
}

fn parse_list(body: &[u8]) -> Result<CondemnedList, String> {
    let list: CondemnedList =
        serde_json::from_slice(body).map_err(|e| format!("not a condemned-chunk list: {e}"))?;
    if list.version != LIST_VERSION {
        return Err(format!(
            "condemned-chunk list version {} (this build reads {LIST_VERSION})",
            list.version
        ));
    }
    Ok(list)
}

/// The chunks one stored condemned list names (what [`load_condemned`]
/// reads of each list).
pub fn condemned_chunks(body: &[u8]) -> Result<Vec<String>, String> {
    parse_list(body).map(|l| l.chunks)
}

/// An earlier run's list of one fan-out prefix.
#[derive(Debug)]
struct EarlierList {
    key: String,
    /// When its run began (its marker's time): a chunk written since may be
    /// needed by a backup that run could not see. `None` (the marker is
    /// gone): its chunks are never deleted on its word, only condemned again.
    scanned: Option<Timestamp>,
    /// When the list itself was written: backups that start later see it,
    /// so it is ripe a grace period after this.
    visible: Timestamp,
    /// That grace period: this run's, or the list's own when longer (a
    /// grace period lowered since never ripens a list sooner).
    grace: SignedDuration,
}

/// Runs one collection: the delete phase for earlier runs' lists that are
/// ripe, then the condemn phase for chunks nothing references.
pub async fn collect<S: Store>(
    store: &S,
    location: &RepositoryLocation,
    c: &Collection,
) -> Result<Collected, MoverError> {
    let marker = format!("{}{}/marker", location.condemned_prefix(), c.run);
    let now = store.put(&marker, c.run.clone().into_bytes()).await?;
    let mut report = Collected::default();
    let mut spill = Spill::create(&c.spill_dir)?;
    reference_set(store, location, &mut spill, &mut report).await?;
    let (mut lists, markers) = earlier_lists(store, location, &c.run, c.grace).await?;
    for (i, list) in lists.iter_mut().enumerate() {
        if let Some(found) = read_list(store, &list.key).await? {
            let own = found
                .grace_seconds
                .map(|s| SignedDuration::from_secs(i64::try_from(s).unwrap_or(i64::MAX)));
            list.grace = list.grace.max(own.unwrap_or(list.grace));
            for chunk in &found.chunks {
                if let Some(hash) = chunk_identity(chunk) {
                    spill.push(Tag::Condemned(i as u32), &hash)?;
                }
            }
        }
    }
    spill.finish()?;
    let judge = Judge {
        lists: lists
            .iter()
            .map(|l| ListTimes {
                scanned: l.scanned,
                ripe_at: ripe_at(l.visible, l.grace),
            })
            .collect(),
        now,
    };
    let mut own_lists = 0;
    for fan in 0..=255u8 {
        own_lists +=
            u32::from(collect_fan(store, location, c, fan, &spill, &judge, &mut report).await?);
    }
    // Every ripe list's chunks are dealt with: the list goes, and so does
    // the marker of a run with no list left.
    let ripe: Vec<String> = lists
        .iter()
        .filter(|l| ripe_at(l.visible, l.grace) <= now)
        .map(|l| l.key.clone())
        .collect();
    delete_keys(store, &ripe).await?;
    report.lists_removed = ripe.len() as u64;
    let left: HashSet<&str> = lists
        .iter()
        .filter(|l| ripe_at(l.visible, l.grace) > now)
        .filter_map(|l| l.key.rsplit_once('/').map(|(run, _)| run))
        .collect();
    let spent: Vec<String> = markers
        .into_iter()
        .filter(|(key, time)| {
            *time + c.grace <= now
                && !key
                    .rsplit_once('/')
                    .is_some_and(|(run, _)| left.contains(run))
        })
        .map(|(key, _)| key)
        .collect();
    delete_keys(store, &spent).await?;
    if own_lists == 0 {
        store.delete(std::slice::from_ref(&marker)).await?;
    }
    spill.remove();
    Ok(report)
}

/// When a list written at `visible` (its S3 `LastModified`) is ripe: a
/// grace period later, plus 1 % of it (14 minutes at 24 h), because
/// `LastModified` has a one-second precision and is not the very moment a
/// listing starts to show the object.
fn ripe_at(visible: Timestamp, grace: SignedDuration) -> Timestamp {
    visible + grace + grace / 100
}

/// Streams every manifest into the spill, one at a time. A manifest that
/// cannot be read stops the collection: its chunks would look unused.
async fn reference_set<S: Store>(
    store: &S,
    location: &RepositoryLocation,
    spill: &mut Spill,
    report: &mut Collected,
) -> Result<(), MoverError> {
    let prefix = location.restore_points_prefix();
    let mut after: Option<String> = None;
    loop {
        let page = store.list_page(&prefix, after.as_deref()).await?;
        let more = page.truncated;
        after = page.objects.last().map(|o| o.key.clone()).or(after);
        for object in page
            .objects
            .into_iter()
            .filter(|o| o.key.ends_with(".json"))
        {
            let Some(stored) = store.get(&object.key).await? else {
                continue; // deleted since the listing
            };
            let manifest = read_manifest(&object.key, &stored)?;
            report.manifests += 1;
            // A DB snapshot's restore point holds no chunk: its data is in
            // RDS. A dump's chunks are the repository's like a volume's.
            if manifest.database.as_ref().is_none_or(|d| d.dump.is_some()) {
                report.logical_bytes += manifest.stats.bytes_total;
            }
            for (chunk, _) in manifest.chunk_refs() {
                let hash = chunk_identity(chunk).ok_or_else(|| MoverError::ManifestInvalid {
                    key: object.key.clone(),
                    detail: format!("chunk name {chunk:?} is not a SHA-256"),
                })?;
                spill.push(Tag::Referenced, &hash)?;
            }
        }
        if !more {
            return Ok(());
        }
    }
}

/// A stored manifest's content, authenticated or not: for the reference
/// set a forged manifest can only keep chunks alive, never lose one, so
/// the MAC is not checked here (retention checks it before it deletes a
/// restore point).
fn read_manifest(key: &str, stored: &[u8]) -> Result<manifest::Manifest, MoverError> {
    let payload = super::integrity::unseal(stored)
        .map(|s| s.payload)
        .unwrap_or_else(|_| stored.to_vec());
    manifest::parse_manifest(&payload).map_err(|detail| MoverError::ManifestInvalid {
        key: key.to_string(),
        detail: format!("{detail}; garbage collection stops rather than lose its chunks"),
    })
}

/// Earlier runs' lists, each with its run's marker time, and the markers
/// (key, time).
async fn earlier_lists<S: Store>(
    store: &S,
    location: &RepositoryLocation,
    own: &str,
    grace: SignedDuration,
) -> Result<(Vec<EarlierList>, Vec<(String, Timestamp)>), MoverError> {
    let prefix = location.condemned_prefix();
    let mut markers: BTreeMap<String, (String, Timestamp)> = BTreeMap::new();
    let mut lists = Vec::new();
    for_each_object(store, &prefix, |o: Object| {
        let Some((run, name)) = o.key[prefix.len()..].split_once('/') else {
            return;
        };
        if run == own {
            return;
        }
        if name == "marker" {
            markers.insert(run.to_string(), (o.key, o.modified));
        } else if name.ends_with(".json") {
            lists.push((run.to_string(), o.key, o.modified));
        }
    })
    .await?;
    let lists = lists
        .into_iter()
        .map(|(run, key, visible)| EarlierList {
            scanned: markers.get(&run).map(|(_, t)| *t),
            key,
            visible,
            grace,
        })
        .collect();
    Ok((lists, markers.into_values().collect()))
}

/// An earlier list's times, as the judge reads them.
struct ListTimes {
    scanned: Option<Timestamp>,
    ripe_at: Timestamp,
}

/// Decides each chunk of a fan-out prefix.
struct Judge {
    lists: Vec<ListTimes>,
    now: Timestamp,
}

/// What becomes of one stored chunk.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    Live,
    Delete,
    /// Condemned by an earlier run, not ripe yet (until when).
    Pending(Timestamp),
    /// Condemned by a ripe run but written since: condemned again.
    Rewritten,
    /// Newly unreferenced: condemned by this run.
    Condemn,
}

impl Judge {
    fn fate(&self, referenced: bool, condemned_by: &[u32], modified: Timestamp) -> Fate {
        if referenced {
            return Fate::Live;
        }
        let mut rewritten = false;
        let mut pending: Option<Timestamp> = None;
        for list in condemned_by
            .iter()
            .filter_map(|i| self.lists.get(*i as usize))
        {
            if list.ripe_at <= self.now {
                match list.scanned {
                    Some(t) if modified < t => return Fate::Delete,
                    _ => rewritten = true,
                }
            } else {
                pending = Some(pending.map_or(list.ripe_at, |p: Timestamp| p.min(list.ripe_at)));
            }
        }
        match (pending, rewritten) {
            (Some(until), _) => Fate::Pending(until),
            (None, true) => Fate::Rewritten,
            (None, false) => Fate::Condemn,
        }
    }
}

/// Collects one fan-out prefix: reads its spilled hashes, lists its
/// chunks, deletes the ripe ones, and writes this run's list for it.
/// Returns whether it wrote one.
async fn collect_fan<S: Store>(
    store: &S,
    location: &RepositoryLocation,
    c: &Collection,
    fan: u8,
    spill: &Spill,
    judge: &Judge,
    report: &mut Collected,
) -> Result<bool, MoverError> {
    let (referenced, condemned) = spill.read(fan)?;
    let prefix = format!("{}{fan:02x}/", location.chunks_prefix());
    let mut doomed: Vec<String> = Vec::new();
    let mut newly: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list_page(&prefix, after.as_deref()).await?;
        let more = page.truncated;
        after = page.objects.last().map(|o| o.key.clone()).or(after);
        for object in page.objects {
            let name = &object.key[prefix.len()..];
            let Some(hash) = chunk_identity(name) else {
                continue; // not a chunk
            };
            report.chunks += 1;
            report.chunk_bytes += object.size;
            let is_referenced = referenced.binary_search(&hash).is_ok();
            let start = condemned.partition_point(|(h, _)| *h < hash);
            let by: Vec<u32> = condemned[start..]
                .iter()
                .take_while(|(h, _)| *h == hash)
                .map(|(_, run)| *run)
                .collect();
            match judge.fate(is_referenced, &by, object.modified) {
                Fate::Live => {
                    report.live_chunks += 1;
                    report.live_bytes += object.size;
                }
                Fate::Delete => {
                    report.deleted_chunks += 1;
                    report.deleted_bytes += object.size;
                    doomed.push(object.key);
                }
                Fate::Pending(until) => pend(report, object.size, until),
                fate @ (Fate::Rewritten | Fate::Condemn) => {
                    if fate == Fate::Rewritten {
                        report.rewritten_chunks += 1;
                    }
                    pend(report, object.size, judge.now + c.grace);
                    newly.push(name.to_string());
                }
            }
            if doomed.len() == PAGE {
                store.delete(&doomed).await?;
                doomed.clear();
            }
        }
        if !more {
            break;
        }
    }
    if !doomed.is_empty() {
        store.delete(&doomed).await?;
    }
    if newly.is_empty() {
        return Ok(false);
    }
    {
        let list = CondemnedList {
            version: LIST_VERSION,
            run: c.run.clone(),
            chunks: newly,
            grace_seconds: Some(c.grace.as_secs().unsigned_abs()),
        };
        let key = format!("{}{}/{fan:02x}.json", location.condemned_prefix(), c.run);
        let body = serde_json::to_vec(&list).map_err(|e| MoverError::ManifestInvalid {
            key: key.clone(),
            detail: e.to_string(),
        })?;
        store.put(&key, body).await?;
    }
    Ok(true)
}

fn pend(report: &mut Collected, size: u64, until: Timestamp) {
    report.pending_chunks += 1;
    report.pending_bytes += size;
    report.reclaimable_at = Some(report.reclaimable_at.map_or(until, |t| t.min(until)));
}

async fn delete_keys<S: Store>(store: &S, keys: &[String]) -> Result<(), MoverError> {
    for batch in keys.chunks(PAGE) {
        store.delete(batch).await?;
    }
    Ok(())
}

/// A chunk's name as the 32 bytes the collector compares: its SHA-256 for
/// a plain name; for a rescue name (`<sha256>~<tag>`, see
/// `manifest::rescue_name`) the digest's first byte (so it falls in the same
/// fan-out prefix) and 31 bytes of the name's own SHA-256.
pub fn chunk_identity(name: &str) -> Option<[u8; 32]> {
    if !manifest::is_chunk_name(name) {
        return None;
    }
    let digest = manifest::chunk_digest(name);
    let mut id = [0u8; 32];
    hex::decode_to_slice(digest, &mut id).ok()?;
    if digest.len() < name.len() {
        use sha2::Digest;
        let whole = sha2::Sha256::digest(name.as_bytes());
        id[1..].copy_from_slice(&whole[1..]);
    }
    Some(id)
}

/// What a spilled record says of a hash.
#[derive(Clone, Copy)]
enum Tag {
    Referenced,
    /// Condemned by the earlier run of this index.
    Condemned(u32),
}

/// One prefix's referenced hashes, and its condemned ones with their run.
type FanHashes = (Vec<[u8; 32]>, Vec<([u8; 32], u32)>);

/// Records are 36 bytes: the hash, and the index of the list that condemns
/// it (`u32::MAX`: referenced by a manifest).
const RECORD: usize = 36;

/// The spill files, one per fan-out prefix.
struct Spill {
    dir: PathBuf,
    writers: Vec<Option<BufWriter<File>>>,
    /// Records not written yet, per prefix, so that the many restore points
    /// of one volume (which share most chunks) spill each chunk about once.
    pending: Vec<HashSet<([u8; 32], u32)>>,
}

/// Records held per prefix before they are written: 131 072 in all, about
/// 10 MiB with the sets' overhead.
const PENDING: usize = 512;

fn io_error(what: &str, path: &Path, e: std::io::Error) -> MoverError {
    MoverError::Spill(format!("{what} {}: {e}", path.display()))
}

impl Spill {
    fn create(parent: &Path) -> Result<Self, MoverError> {
        // A directory of its own, never one that exists (another run's,
        // even in another container sharing the disk).
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| MoverError::Spill(e.to_string()))?;
        let dir = parent.join(format!("tender-gc-{}", hex::encode(random)));
        std::fs::create_dir(&dir).map_err(|e| io_error("cannot create", &dir, e))?;
        Ok(Self {
            dir,
            writers: (0..256).map(|_| None).collect(),
            pending: (0..256).map(|_| HashSet::new()).collect(),
        })
    }

    fn path(&self, fan: u8) -> PathBuf {
        self.dir.join(format!("{fan:02x}"))
    }

    fn push(&mut self, tag: Tag, hash: &[u8; 32]) -> Result<(), MoverError> {
        let run = match tag {
            Tag::Referenced => u32::MAX,
            Tag::Condemned(run) => run,
        };
        let fan = hash[0] as usize;
        self.pending[fan].insert((*hash, run));
        if self.pending[fan].len() >= PENDING {
            self.flush(fan)?;
        }
        Ok(())
    }

    /// Writes a prefix's pending records.
    fn flush(&mut self, fan: usize) -> Result<(), MoverError> {
        let path = self.path(fan as u8);
        let slot = &mut self.writers[fan];
        if slot.is_none() {
            let file = File::create(&path).map_err(|e| io_error("cannot create", &path, e))?;
            *slot = Some(BufWriter::with_capacity(8 * 1024, file));
        }
        let Some(w) = slot.as_mut() else {
            return Ok(());
        };
        for (hash, run) in self.pending[fan].drain() {
            let mut record = [0u8; RECORD];
            record[..32].copy_from_slice(&hash);
            record[32..].copy_from_slice(&run.to_le_bytes());
            w.write_all(&record)
                .map_err(|e| io_error("cannot write", &path, e))?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), MoverError> {
        for fan in 0..256 {
            if !self.pending[fan].is_empty() {
                self.flush(fan)?;
            }
            if let Some(mut w) = self.writers[fan].take() {
                let path = self.path(fan as u8);
                w.flush().map_err(|e| io_error("cannot write", &path, e))?;
            }
        }
        Ok(())
    }

    /// One prefix's referenced hashes (sorted, distinct) and condemned
    /// ones with their run (sorted).
    fn read(&self, fan: u8) -> Result<FanHashes, MoverError> {
        let path = self.path(fan);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
            Err(e) => return Err(io_error("cannot read", &path, e)),
        };
        let length = file
            .metadata()
            .map_err(|e| io_error("cannot read", &path, e))?
            .len();
        if length % RECORD as u64 != 0 {
            return Err(MoverError::Spill(format!(
                "{} holds {length} bytes, not whole {RECORD}-byte records",
                path.display()
            )));
        }
        // Distinct records only: memory is the prefix's distinct chunks,
        // however many restore points reference each.
        let mut referenced = HashSet::new();
        let mut condemned = HashSet::new();
        let mut reader = BufReader::with_capacity(64 * 1024, file);
        let mut record = [0u8; RECORD];
        for _ in 0..length / RECORD as u64 {
            reader
                .read_exact(&mut record)
                .map_err(|e| io_error("cannot read", &path, e))?;
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&record[..32]);
            let mut run = [0u8; 4];
            run.copy_from_slice(&record[32..]);
            match u32::from_le_bytes(run) {
                u32::MAX => referenced.insert(hash),
                run => condemned.insert((hash, run)),
            };
        }
        let mut referenced: Vec<[u8; 32]> = referenced.into_iter().collect();
        let mut condemned: Vec<([u8; 32], u32)> = condemned.into_iter().collect();
        referenced.sort_unstable();
        condemned.sort_unstable();
        Ok((referenced, condemned))
    }

    fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

mod outlive;
pub use outlive::{outlived_by, outlives};

#[cfg(test)]
mod tests;
