//! The collector against an in-memory store: the two phases, the grace
//! period, chunks written again, and chunks a manifest needs again.

use super::*;
use crate::mover::manifest::{BackupStats, BlockRef, MANIFEST_VERSION, Manifest, VolumeImage};
use crate::mover::store::MemoryStore;

fn location() -> RepositoryLocation {
    RepositoryLocation::new("bucket", "repo/team", "us-east-1")
}

pub(crate) fn hash(n: u32) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(n.to_le_bytes()))
}

pub(crate) fn manifest_bytes(id: &str, chunks: &[String]) -> Vec<u8> {
    let m = Manifest {
        version: MANIFEST_VERSION,
        id: id.into(),
        resource: "i-1".into(),
        region: "us-east-1".into(),
        namespace: "team".into(),
        job_name: "job".into(),
        job_uid: "uid".into(),
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
    serde_json::to_vec(&m).expect("json")
}

fn put_chunk(store: &MemoryStore, n: u32) {
    let key = location().chunk_key(&hash(n));
    store.with(|s| s.write(&key, None, 100));
}

fn put_manifest(store: &MemoryStore, id: &str, chunks: &[u32]) {
    let names: Vec<String> = chunks.iter().map(|n| hash(*n)).collect();
    let key = location().manifest_key(id);
    store.with(|s| s.write(&key, Some(manifest_bytes(id, &names)), 0));
}

fn chunks(store: &MemoryStore) -> Vec<String> {
    let prefix = location().chunks_prefix();
    store.with(|s| {
        s.objects
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .map(|k| k.rsplit('/').next().unwrap_or_default().to_string())
            .collect()
    })
}

fn advance(store: &MemoryStore, by: SignedDuration) {
    store.with(|s| s.clock += by.as_millis() as i64);
}

fn run(n: u32) -> Collection {
    Collection {
        grace: SignedDuration::from_secs(3600),
        spill_dir: std::env::temp_dir(),
        run: format!("run-{n:04}"),
    }
}

#[tokio::test]
async fn unreferenced_chunks_are_condemned_first_and_deleted_only_after_the_grace_period() {
    let store = MemoryStore::default();
    for n in 0..10 {
        put_chunk(&store, n);
    }
    put_manifest(&store, "a/i-1", &[0, 1, 2]);
    let first = collect(&store, &location(), &run(1))
        .await
        .expect("collect");
    assert_eq!(
        (first.manifests, first.chunks, first.live_chunks),
        (1, 10, 3)
    );
    assert_eq!((first.deleted_chunks, first.pending_chunks), (0, 7));
    assert_eq!(
        chunks(&store).len(),
        10,
        "nothing deleted in the first phase"
    );
    let condemned = load_condemned(&store, &location()).await.expect("load");
    assert_eq!(condemned.len(), 7);
    // Within the grace period: still nothing deleted.
    advance(&store, SignedDuration::from_secs(1800));
    let second = collect(&store, &location(), &run(2))
        .await
        .expect("collect");
    assert_eq!((second.deleted_chunks, second.pending_chunks), (0, 7));
    assert!(second.reclaimable_at.is_some());
    // After it: exactly the referenced chunks remain, and the lists go.
    advance(&store, SignedDuration::from_secs(3600));
    let third = collect(&store, &location(), &run(3))
        .await
        .expect("collect");
    assert_eq!(third.deleted_chunks, 7);
    assert_eq!(third.deleted_bytes, 700);
    let mut left = chunks(&store);
    left.sort();
    let mut want: Vec<String> = (0..3).map(hash).collect();
    want.sort();
    assert_eq!(left, want);
    assert!(
        load_condemned(&store, &location())
            .await
            .expect("load")
            .is_empty()
    );
    let lists = store.with(|s| {
        s.objects
            .keys()
            .filter(|k| k.starts_with(&location().condemned_prefix()))
            .count()
    });
    assert_eq!(lists, 0, "no list or marker is left");
}

#[tokio::test]
async fn a_condemned_chunk_written_again_or_referenced_again_is_kept() {
    let store = MemoryStore::default();
    for n in 0..4 {
        put_chunk(&store, n);
    }
    put_manifest(&store, "a/i-1", &[0]);
    collect(&store, &location(), &run(1))
        .await
        .expect("collect");
    advance(&store, SignedDuration::from_secs(7200));
    // A backup started after the condemnation: it needed chunk 1 and wrote
    // it again; another finished and references chunk 2.
    put_chunk(&store, 1);
    put_manifest(&store, "b/i-1", &[0, 2]);
    let r = collect(&store, &location(), &run(2))
        .await
        .expect("collect");
    assert_eq!(r.deleted_chunks, 1, "only chunk 3");
    assert_eq!(r.rewritten_chunks, 1);
    let left = chunks(&store);
    for n in 0..3 {
        assert!(left.contains(&hash(n)), "chunk {n} kept");
    }
    // Chunk 1 is condemned again (still unreferenced), from this run on.
    assert!(
        load_condemned(&store, &location())
            .await
            .expect("load")
            .contains(&hash(1))
    );
}

#[tokio::test]
async fn an_unreadable_manifest_stops_the_collection_before_anything_is_deleted() {
    let store = MemoryStore::default();
    put_chunk(&store, 0);
    let key = location().manifest_key("bad/i-1");
    store.with(|s| s.write(&key, Some(b"not json".to_vec()), 0));
    let e = collect(&store, &location(), &run(1))
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("bad/i-1"), "{e}");
    assert!(
        load_condemned(&store, &location())
            .await
            .expect("load")
            .is_empty()
    );
}

#[test]
fn fates_follow_the_two_phase_rules() {
    let t = |s: i64| Timestamp::from_second(s).expect("ts");
    let judge = Judge {
        lists: vec![
            // Ripe: scanned at 100, visible at 200, ripe at 3800.
            ListTimes {
                scanned: Some(t(100)),
                ripe_at: t(3800),
            },
            // Not ripe until 8600.
            ListTimes {
                scanned: Some(t(4900)),
                ripe_at: t(8600),
            },
            // Ripe, but its run's marker is gone.
            ListTimes {
                scanned: None,
                ripe_at: t(3800),
            },
        ],
        now: t(6000),
    };
    assert_eq!(judge.fate(true, &[0], t(50)), Fate::Live);
    assert_eq!(judge.fate(false, &[0], t(50)), Fate::Delete);
    assert_eq!(
        judge.fate(false, &[0], t(150)),
        Fate::Rewritten,
        "written since the scan"
    );
    assert_eq!(judge.fate(false, &[1], t(50)), Fate::Pending(t(8600)));
    assert_eq!(
        judge.fate(false, &[2], t(50)),
        Fate::Rewritten,
        "no marker: never deleted"
    );
    assert_eq!(judge.fate(false, &[], t(50)), Fate::Condemn);
}

#[test]
fn a_backup_outlives_only_a_list_written_while_it_ran_once_that_list_is_ripe() {
    let t = |s: i64| Timestamp::from_second(1_800_000_000 + s).expect("time");
    let grace = SignedDuration::from_secs(10_000);
    // (visible, started, now, outlives): the margin is 1 % of the grace
    // period (100 s).
    let cases = [
        (
            "read at the start, long ago",
            t(-50_000),
            t(0),
            t(90_000),
            false,
        ),
        (
            "read at the start, 100 s before",
            t(-101),
            t(0),
            t(90_000),
            false,
        ),
        (
            "within the clock margin of the start",
            t(-99),
            t(0),
            t(9_901),
            true,
        ),
        (
            "written while it ran, not ripe",
            t(500),
            t(0),
            t(10_399),
            false,
        ),
        ("ripe within the margin", t(500), t(0), t(10_400), true),
        ("ripe", t(500), t(0), t(20_000), true),
    ];
    for (name, visible, started, now, want) in cases {
        assert_eq!(outlives(visible, grace, started, now), want, "{name}");
    }
}
