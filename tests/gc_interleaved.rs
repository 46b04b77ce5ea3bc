//! Backups and garbage collection interleaved at random points, seeded and
//! reproducible: hundreds of rounds against an in-memory store whose every
//! call may let the backups in flight take a step, with restore points
//! expired and backups abandoned at random in between. At the end every
//! restore point's chunks must all be there, and once nothing runs, the
//! store holds exactly the chunks the restore points reference.
//!
//! `TENDER_GC_SEED=<n>` replays one seed; `TENDER_GC_ROUNDS` sets the
//! rounds (default 200).
#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use jiff::SignedDuration;
use tender::aws::ebs::{ChangedBlock, SnapshotBlocks};
use tender::mover::gc::{self, Collection};
use tender::mover::manifest::{
    BackupStats, BlockRef, BlockSource, MANIFEST_VERSION, Manifest, RepositoryLocation,
    VolumeImage, chunk_digest, plan_blocks, rescue_name,
};
use tender::mover::store::{MemoryInner, MemoryStore};

const POOL: u64 = 400;
const BLOCKS: i32 = 24;
const RESOURCES: usize = 3;
/// Restore points kept (besides each resource's newest) when they expire.
const KEEP: usize = 9;
/// In store ticks (one per write).
const GRACE_MS: i64 = 4_000;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn chunk_name(n: u64) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(n.to_le_bytes()))
}

fn location() -> RepositoryLocation {
    RepositoryLocation::new("bucket", "repo/team", "us-east-1")
}

/// A backup in flight.
struct Backup {
    id: String,
    resource: usize,
    started: i64,
    /// Its restore point's chunk per block index: the parent's name for an
    /// unchanged block, a new digest for a changed one; replaced by the
    /// name it is stored under once its block is copied.
    content: Vec<String>,
    /// Makes its rescue names its own (the mover's is from the job UID).
    tag: String,
    /// What each block does (the mover's own plan).
    plan: Vec<BlockSource>,
    condemned: HashSet<String>,
    known: HashSet<String>,
    step: usize,
}

/// The world the hook drives.
struct World {
    rng: Rng,
    backups: Vec<Backup>,
    next_id: u64,
    /// Newest restore point per resource: (id, chunks).
    newest: BTreeMap<usize, (String, Vec<String>)>,
    /// Store writes the backups made.
    writes: u64,
    completed: u64,
    abandoned: u64,
}

fn manifest_bytes(id: &str, resource: usize, chunks: &[String]) -> Vec<u8> {
    let m = Manifest {
        version: MANIFEST_VERSION,
        id: id.into(),
        resource: format!("i-{resource}"),
        region: "us-east-1".into(),
        namespace: "team".into(),
        job_name: id.split('/').next().unwrap().into(),
        job_uid: id.into(),
        created_at: "2026-01-01T00:00:00Z".into(),
        parent: None,
        parent_refused: None,
        volumes: vec![VolumeImage {
            device: None,
            volume_id: None,
            snapshot_id: "snap-1".into(),
            size_gib: 1,
            block_size: 524_288,
            blocks: chunks
                .iter()
                .enumerate()
                .map(|(i, c)| BlockRef {
                    index: i as i32,
                    chunk: c.clone(),
                    length: 524_288,
                })
                .collect(),
            encryption: None,
        }],
        stats: BackupStats::default(),
        machine: None,
        policy: None,
        database: None,
    };
    serde_json::to_vec(&m).unwrap()
}

impl World {
    /// Starts a backup: it reads the condemned lists now, and plans its
    /// blocks with the mover's `plan_blocks` against its parent.
    fn start(&mut self, store: &mut MemoryInner) {
        let resource = self.rng.below(RESOURCES as u64) as usize;
        let prefix = location().condemned_prefix();
        let condemned: HashSet<String> = store
            .objects
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| k.ends_with(".json"))
            .flat_map(|(_, o)| gc::condemned_chunks(o.body.as_deref().unwrap()).unwrap())
            .collect();
        let parent = self.newest.get(&resource).cloned();
        let mut content = Vec::new();
        let mut changed = Vec::new();
        for i in 0..BLOCKS {
            match &parent {
                Some((_, chunks)) if !self.rng.chance(30) => {
                    content.push(chunks[i as usize].clone())
                }
                _ => {
                    content.push(chunk_name(self.rng.below(POOL)));
                    changed.push(ChangedBlock {
                        index: i,
                        token: Some(format!("t{i}")),
                    });
                }
            }
        }
        let listing = SnapshotBlocks {
            volume_size_gib: 1,
            blocks: (0..BLOCKS).map(|i| (i, format!("t{i}"))).collect(),
        };
        let parent_image = parent.as_ref().map(|(id, chunks)| {
            let m: Manifest =
                serde_json::from_slice(&manifest_bytes(id, resource, chunks)).unwrap();
            m.volumes[0].clone()
        });
        let plan = plan_blocks(
            &listing,
            parent_image.as_ref(),
            parent.as_ref().map(|_| changed.as_slice()),
            &condemned,
        );
        let known = parent
            .iter()
            .flat_map(|(_, c)| c.iter().cloned())
            .filter(|c| !condemned.contains(c))
            .collect();
        self.next_id += 1;
        self.backups.push(Backup {
            id: format!("job-{:05}/i-{resource}", self.next_id),
            resource,
            started: store.clock,
            content,
            plan,
            condemned,
            known,
            tag: format!("{:012x}", self.next_id),
            step: 0,
        });
    }

    /// One step of backup `b`: one block, or (after the last) its manifest.
    fn step(&mut self, b: usize, store: &mut MemoryInner) -> bool {
        let backup = &mut self.backups[b];
        if backup.step < backup.plan.len() {
            let i = backup.step;
            backup.step += 1;
            if let BlockSource::Read { .. } = backup.plan[i] {
                // The mover's rule (`chunks.rs`): a condemned name is never
                // written; the data goes under a rescue name instead; a
                // known or stored name is not written again.
                let digest = chunk_digest(&backup.content[i]).to_string();
                let name = rescue_name(&digest, &backup.tag, &backup.condemned);
                let key = location().chunk_key(&name);
                let claimed = backup.known.insert(name.clone());
                if claimed && !store.objects.contains_key(&key) {
                    store.write(&key, None, 100);
                    self.writes += 1;
                }
                backup.content[i] = name;
            }
            return false;
        }
        let backup = self.backups.remove(b);
        let key = location().manifest_key(&backup.id);
        store.write(
            &key,
            Some(manifest_bytes(&backup.id, backup.resource, &backup.content)),
            0,
        );
        self.newest
            .insert(backup.resource, (backup.id, backup.content));
        self.completed += 1;
        true
    }

    /// What the hook does before a store call.
    fn act(&mut self, store: &mut MemoryInner) {
        // Backups never outlive the grace period (their deadline).
        while let Some(b) = self
            .backups
            .iter()
            .position(|b| store.clock - b.started > GRACE_MS / 2)
        {
            while !self.step(b, store) {}
        }
        if self.backups.len() < 3 && self.rng.chance(20) {
            self.start(store);
        }
        if !self.backups.is_empty() && self.rng.chance(60) {
            let b = self.rng.below(self.backups.len() as u64) as usize;
            if self.rng.chance(2) {
                self.backups.remove(b); // failed: its chunks stay, no manifest
                self.abandoned += 1;
            } else {
                self.step(b, store);
            }
        }
    }

    fn finish_all(&mut self, store: &mut MemoryInner) {
        while !self.backups.is_empty() {
            while !self.step(0, store) {}
        }
    }
}

/// Every chunk each stored manifest references, and how many are missing.
fn audit(store: &MemoryStore) -> (usize, usize, HashSet<String>) {
    store.with(|s| {
        let prefix = location().restore_points_prefix();
        let mut referenced = HashSet::new();
        let mut manifests = 0;
        for (_, o) in s
            .objects
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
        {
            let m: Manifest = serde_json::from_slice(o.body.as_deref().unwrap()).unwrap();
            manifests += 1;
            referenced.extend(m.volumes[0].blocks.iter().map(|b| b.chunk.clone()));
        }
        let lost = referenced
            .iter()
            .filter(|c| !s.objects.contains_key(&location().chunk_key(c)))
            .count();
        (manifests, lost, referenced)
    })
}

fn stored_chunks(store: &MemoryStore) -> HashSet<String> {
    let prefix = location().chunks_prefix();
    store.with(|s| {
        s.objects
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.rsplit('/').next().unwrap().to_string())
            .collect()
    })
}

async fn run_seed(seed: u64, rounds: u64) {
    let store = MemoryStore::default();
    // Every third seed lists in short pages, as S3 may while more keys
    // follow (slower: every call lets the backups act).
    store.with(|s| s.short_pages = if seed.is_multiple_of(3) { 31 } else { 0 });
    let world = Arc::new(Mutex::new(World {
        rng: Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
        backups: Vec::new(),
        next_id: 0,
        newest: BTreeMap::new(),
        writes: 0,
        completed: 0,
        abandoned: 0,
    }));
    let hooked = world.clone();
    let collection = |round: u64| Collection {
        grace: SignedDuration::from_millis(GRACE_MS),
        spill_dir: std::env::temp_dir(),
        run: format!("{round:06}"),
    };
    let mut deleted = 0;
    for round in 0..rounds {
        let hooked = hooked.clone();
        store.set_hook(Some(Box::new(move |s: &mut MemoryInner| {
            hooked.lock().unwrap().act(s)
        })));
        let report = gc::collect(&store, &location(), &collection(round))
            .await
            .unwrap();
        deleted += report.deleted_chunks;
        store.set_hook(None);
        let mut w = world.lock().unwrap();
        store.with(|s| {
            // Between runs: backups go on, restore points expire (never a
            // resource's newest), and sometimes time jumps, once nothing runs.
            for _ in 0..w.rng.below(20) {
                w.act(s);
            }
            // Retention: restore points expire, down to at most KEEP
            // besides each resource's newest (never expired).
            let prefix = location().restore_points_prefix();
            let newest: HashSet<String> = w
                .newest
                .values()
                .map(|(id, _)| location().manifest_key(id))
                .collect();
            let mut keys: Vec<String> = s
                .objects
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, _)| k.clone())
                .filter(|k| !newest.contains(k))
                .collect();
            while keys.len() > KEEP || (!keys.is_empty() && w.rng.chance(20)) {
                let k = keys.swap_remove(w.rng.below(keys.len() as u64) as usize);
                s.objects.remove(&k);
            }
            if w.rng.chance(25) {
                w.finish_all(s);
                s.clock += w.rng.below(2 * GRACE_MS as u64) as i64;
            }
        });
        drop(w);
        let (_, lost, _) = audit(&store);
        assert_eq!(
            lost, 0,
            "seed {seed}: a live restore point lost a chunk in round {round}"
        );
    }
    // Nothing runs any more: two runs a grace period apart leave exactly
    // the chunks the restore points reference.
    store.with(|s| world.lock().unwrap().finish_all(s));
    for round in rounds..rounds + 2 {
        gc::collect(&store, &location(), &collection(round))
            .await
            .unwrap();
        store.with(|s| s.clock += 2 * GRACE_MS);
    }
    gc::collect(&store, &location(), &collection(rounds + 2))
        .await
        .unwrap();
    let (manifests, lost, referenced) = audit(&store);
    let stored = stored_chunks(&store);
    let w = world.lock().unwrap();
    println!(
        "seed {seed}: {rounds} rounds, {} backups ({} abandoned), {} chunk writes, {deleted} chunks deleted, {manifests} restore points; {lost} lost chunks",
        w.completed, w.abandoned, w.writes
    );
    assert_eq!(lost, 0, "seed {seed}");
    assert_eq!(
        stored, referenced,
        "seed {seed}: the store holds exactly what restore points reference"
    );
}

#[tokio::test]
async fn backups_interleaved_with_garbage_collection_never_lose_a_chunk() {
    let rounds = std::env::var("TENDER_GC_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(200);
    let seeds: Vec<u64> = match std::env::var("TENDER_GC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(seed) => vec![seed],
        None => (1..=3).collect(),
    };
    for seed in seeds {
        run_seed(seed, rounds).await;
    }
    println!("0 lost chunks");
}
