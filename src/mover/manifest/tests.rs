use super::*;

fn block(index: i32, chunk: char) -> BlockRef {
    BlockRef {
        index,
        chunk: chunk.to_string().repeat(64),
        length: 512 * 1024,
    }
}

fn image(blocks: Vec<BlockRef>) -> VolumeImage {
    VolumeImage {
        encryption: None,
        device: None,
        volume_id: None,
        snapshot_id: "snap-1".into(),
        size_gib: 1,
        block_size: 512 * 1024,
        blocks,
    }
}

fn listing(indexes: &[i32]) -> SnapshotBlocks {
    SnapshotBlocks {
        volume_size_gib: 1,
        blocks: indexes.iter().map(|i| (*i, format!("t{i}"))).collect(),
    }
}

#[test]
fn keys_normalise_the_prefix() {
    let repo = RepositoryLocation::new("b", "/backups/prod/", "us-east-1");
    assert_eq!(repo.prefix, "backups/prod/");
    let h = "ab".repeat(32);
    assert_eq!(repo.chunk_key(&h), format!("backups/prod/chunks/ab/{h}"));
    assert_eq!(
        repo.manifest_key("nightly/i-1"),
        "backups/prod/restore-points/nightly/i-1.json"
    );
    assert_eq!(
        RepositoryLocation::new("b", "", "r").chunks_prefix(),
        "chunks/"
    );
}

#[test]
fn condemned_chunks_get_rescue_names_and_only_chunk_names_are_valid() {
    let h = "ab".repeat(32);
    let none = HashSet::new();
    assert_eq!(rescue_name(&h, "t1", &none), h);
    let condemned: HashSet<String> = [h.clone()].into();
    let rescued = rescue_name(&h, "t1", &condemned);
    assert_eq!(rescued, format!("{h}~t1"));
    assert_eq!(chunk_digest(&rescued), h);
    let both: HashSet<String> = [h.clone(), format!("{h}~t1")].into();
    assert_eq!(rescue_name(&h, "t1", &both), format!("{h}~t1-2"));
    for good in [h.clone(), rescued, format!("{h}~t1-2")] {
        assert!(is_chunk_name(&good), "{good}");
    }
    for bad in [
        "ab".repeat(31),
        format!("{h}~"),
        format!("{h}~../x"),
        format!("{h}~A"),
        format!("{h}x"),
        "AB".repeat(32),
        format!("{h}~{}", "a".repeat(33)),
    ] {
        assert!(!is_chunk_name(&bad), "{bad}");
    }
}

#[test]
fn an_unchanged_block_whose_chunk_is_condemned_is_read_again() {
    let parent = image(vec![block(0, 'a'), block(1, 'b')]);
    let condemned: HashSet<String> = [block(1, 'b').chunk].into();
    let plan = plan_blocks(&listing(&[0, 1]), Some(&parent), Some(&[]), &condemned);
    assert_eq!(
        plan,
        vec![
            BlockSource::Reuse(block(0, 'a')),
            BlockSource::Read {
                index: 1,
                token: "t1".into()
            },
        ]
    );
}

#[test]
fn without_a_parent_every_block_is_read() {
    let plan = plan_blocks(&listing(&[0, 3]), None, None, &HashSet::new());
    assert_eq!(plan.len(), 2);
    assert!(plan.iter().all(|p| matches!(p, BlockSource::Read { .. })));
}

#[test]
fn an_incremental_reads_changed_and_new_blocks_only() {
    let parent = image(vec![block(0, 'a'), block(1, 'b'), block(2, 'c')]);
    let changed = [ChangedBlock {
        index: 1,
        token: Some("x".into()),
    }];
    // Block 5 is new; the change list (as moto's) does not name it.
    let plan = plan_blocks(
        &listing(&[0, 1, 5]),
        Some(&parent),
        Some(&changed),
        &HashSet::new(),
    );
    assert_eq!(
        plan,
        vec![
            BlockSource::Reuse(block(0, 'a')),
            BlockSource::Read {
                index: 1,
                token: "t1".into()
            },
            BlockSource::Read {
                index: 5,
                token: "t5".into()
            },
        ]
    );
}

#[test]
fn a_manifest_of_another_version_is_refused() {
    let m = Manifest {
        version: 2,
        id: "j/r".into(),
        resource: "r".into(),
        region: "us-east-1".into(),
        namespace: "ns".into(),
        job_name: "j".into(),
        job_uid: "u".into(),
        created_at: "2026-01-01T00:00:00Z".into(),
        parent: None,
        parent_refused: None,
        volumes: vec![image(vec![block(0, 'a')])],
        stats: BackupStats::default(),
        machine: None,
        policy: None,
        database: None,
    };
    let text = serde_json::to_vec(&m).unwrap_or_default();
    assert!(matches!(parse_manifest(&text), Err(e) if e.contains("version 2")));
    let ok = Manifest { version: 1, ..m };
    let text = serde_json::to_vec(&ok).unwrap_or_default();
    assert_eq!(parse_manifest(&text), Ok(ok));
}

#[test]
fn a_document_copied_to_another_place_is_refused() {
    let m = Manifest {
        version: 1,
        id: "nightly/i-1".into(),
        resource: "i-1".into(),
        region: "us-east-1".into(),
        namespace: "team-a".into(),
        job_name: "nightly".into(),
        job_uid: "u".into(),
        created_at: "2026-01-01T00:00:00Z".into(),
        parent: None,
        parent_refused: None,
        volumes: vec![],
        stats: BackupStats::default(),
        machine: None,
        policy: None,
        database: None,
    };
    assert_eq!(m.placed("nightly/i-1", Some("team-a")), Ok(()));
    assert_eq!(m.placed("nightly/i-1", None), Ok(()));
    assert!(
        m.placed("weekly/i-1", Some("team-a"))
            .is_err_and(|e| e.contains("nightly/i-1"))
    );
    assert!(
        m.placed("nightly/i-1", Some("team-b"))
            .is_err_and(|e| e.contains("team-a"))
    );
    let p = LatestPointer {
        restore_point: "nightly/i-1".into(),
        namespace: "team-a".into(),
        region: "us-east-1".into(),
        lineage: "i-1".into(),
    };
    assert_eq!(p.placed(Some("team-a"), "us-east-1", "i-1"), Ok(()));
    assert_eq!(p.placed(None, "us-east-1", "i-1"), Ok(()));
    for (ns, region, lineage) in [
        (Some("team-b"), "us-east-1", "i-1"),
        (Some("team-a"), "eu-west-1", "i-1"),
        (Some("team-a"), "us-east-1", "i-2"),
    ] {
        assert!(
            p.placed(ns, region, lineage).is_err(),
            "{ns:?} {region} {lineage}"
        );
    }
}

#[test]
fn chunk_users_group_identical_blocks() {
    let users = chunk_users(&[image(vec![block(0, 'a'), block(7, 'a'), block(2, 'c')])]);
    assert_eq!(users["a".repeat(64).as_str()], vec![0, 7]);
    assert_eq!(users.len(), 2);
}

/// A manifest written before encryption was recorded still reads (as
/// "not recorded"); one that records it keeps it through a round trip.
#[test]
fn encryption_is_recorded_and_old_manifests_still_read() {
    let old = format!(
        r#"{{"version":1,"id":"j/snap-1","resource":"snap-1","region":"eu-west-1","namespace":"a","jobName":"j","jobUid":"u","createdAt":"2026-01-01T00:00:00Z",
           "volumes":[{{"snapshotId":"snap-1","sizeGib":8,"blockSize":524288,"blocks":[{{"index":0,"chunk":"{}","length":4}}]}}],
           "stats":{{"blocksRead":1,"blocksReused":0,"zeroBlocks":0,"chunksUploaded":1,"bytesUploaded":4,"chunksDeduplicated":0,"bytesTotal":4}}}}"#,
        "a".repeat(64)
    );
    let mut m = parse_manifest(old.as_bytes()).expect("an old manifest reads");
    assert_eq!(m.volumes[0].encryption, None);
    assert_eq!(m.stats.blocks_retried, 0);
    let key = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    m.volumes[0].encryption = Some(VolumeEncryption {
        kms_key_arn: Some(key.into()),
    });
    let text = serde_json::to_vec(&m).expect("serializes");
    assert!(
        String::from_utf8_lossy(&text)
            .contains(r#""encryption":{"kmsKeyArn":"arn:aws:kms:eu-west-1"#)
    );
    assert_eq!(parse_manifest(&text).expect("reads back"), m);
}

#[test]
fn a_restore_is_encrypted_like_its_source_with_its_key_where_it_can_be_used() {
    let key = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    let with = |encryption: Option<VolumeEncryption>| VolumeImage {
        encryption,
        ..image(Vec::new())
    };
    let keyed = |k: Option<&str>| {
        Some(VolumeEncryption {
            kms_key_arn: k.map(String::from),
        })
    };
    // Not encrypted (or not recorded): no Encrypted at all.
    assert_eq!(restore_encryption(&with(None), "eu-west-1"), None);
    // The source's key, in its own Region.
    assert_eq!(
        restore_encryption(&with(keyed(Some(key))), "eu-west-1"),
        keyed(Some(key))
    );
    // Another Region cannot use it: encrypted with the default key there.
    assert_eq!(
        restore_encryption(&with(keyed(Some(key))), "us-east-1"),
        keyed(None)
    );
    // A key EBS named by something else than an ARN, or not at all.
    assert_eq!(
        restore_encryption(&with(keyed(Some("alias/aws/ebs"))), "eu-west-1"),
        keyed(None)
    );
    assert_eq!(
        restore_encryption(&with(keyed(None)), "eu-west-1"),
        keyed(None)
    );
}
