//! PostgreSQL dumps into the repository and back, with the data mover a
//! database worker runs, against the test environment's real PostgreSQL
//! server and the emulator's S3 and KMS: a full dump, 1 % of the rows
//! changed, an incremental dump that stores about that much, both restored
//! into fresh databases and compared table by table; a target that holds
//! tables, a damaged chunk and a wrong password are refused with what to
//! fix.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::REGION;
use common::disks;
use common::postgres::{self, contents, psql, schema};
use tender::aws::AwsClients;
use tender::mover::dump::{self, DumpRequest, LoadTarget};
use tender::mover::manifest::{DatabaseImage, Manifest, RepositoryLocation};
use tender::mover::{BackupRequest, MoverError, Progress};
use tender::reasons::FailureReason;

const ROWS: u64 = 200_000;

/// A shop's database: orders keyed by id (with a generated column and a
/// foreign key), customers, an append-only table without a primary key,
/// a view, a sequence, an index, a role granted to read it.
fn create_shop(db: &str, reader: &str) {
    psql("postgres", &format!("CREATE DATABASE {db}"));
    psql(
        db,
        &format!(
            "CREATE ROLE {reader} NOLOGIN;
             CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
             INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 500) g;
             CREATE TABLE orders (
               id bigint PRIMARY KEY,
               customer int NOT NULL REFERENCES customers(id),
               cents int NOT NULL,
               placed_at timestamptz NOT NULL,
               note text,
               dollars numeric GENERATED ALWAYS AS (cents / 100.0) STORED);
             INSERT INTO orders (id, customer, cents, placed_at, note)
               SELECT g, 1 + g % 500, (g::bigint * 7919) % 100000,
                      timestamptz '2026-01-01' + g * interval '1 minute',
                      md5(g::text) || repeat(' note', 1 + g % 9)
               FROM generate_series(1, {ROWS}) g;
             CREATE INDEX orders_by_customer ON orders (customer, placed_at);
             CREATE TABLE events (kind text, at int);
             INSERT INTO events SELECT 'e' || g % 7, g FROM generate_series(1, 2000) g;
             CREATE SEQUENCE invoice_numbers START 1000;
             SELECT setval('invoice_numbers', 4242);
             SELECT lo_from_bytea(0, 'a large object');
             CREATE VIEW big_orders AS SELECT * FROM orders WHERE cents > 90000;
             GRANT SELECT ON orders, customers TO {reader};"
        ),
    );
}

fn request<'a>(
    aws: &'a AwsClients,
    loc: &'a RepositoryLocation,
    (job, uid): (&'a str, &'a str),
    lineage: &'a str,
) -> BackupRequest<'a> {
    BackupRequest {
        source: aws,
        repository: aws,
        location: loc,
        region: REGION,
        resource: lineage,
        lineage,
        job_name: job,
        job_uid: uid,
        volumes: &[],
        machine: None,
        policy: None,
        grace: None,
    }
}

async fn back_up(
    aws: &AwsClients,
    loc: &RepositoryLocation,
    job: &str,
    lineage: &str,
    db: &str,
) -> Result<Manifest, MoverError> {
    let uid = format!("uid-{job}");
    let server = postgres::server();
    let only = [db.to_string()];
    let progress = Progress::default();
    let m = dump::backup(
        DumpRequest {
            backup: request(aws, loc, (job, &uid), lineage),
            server: &server,
            database: DatabaseImage {
                identifier: "shop".into(),
                engine: "postgres".into(),
                ..DatabaseImage::default()
            },
            only: &only,
        },
        &progress,
    )
    .await?;
    let (done, total) = progress.snapshot();
    assert_eq!(done, total, "progress ends at its total");
    Ok(m)
}

async fn restore(
    aws: &AwsClients,
    loc: &RepositoryLocation,
    id: &str,
    suffix: &str,
) -> Result<dump::LoadOutcome, MoverError> {
    let m = tender::mover::load_manifest(aws, loc, id).await?;
    let server = postgres::server();
    let rename = |name: &str| format!("{name}_{suffix}");
    let progress = Progress::default();
    let outcome = dump::restore(
        aws,
        loc,
        &m,
        &LoadTarget {
            server: &server,
            rename: &rename,
            only: &[],
            tag: &format!("uid-restore-{suffix}"),
        },
        &progress,
    )
    .await?;
    let (done, total) = progress.snapshot();
    assert_eq!(
        done, total,
        "a restore's progress ends at its total, in bytes"
    );
    assert_eq!(total, outcome.bytes);
    Ok(outcome)
}

#[tokio::test]
async fn a_dump_with_one_percent_changed_stores_about_that_much_and_both_restore_table_by_table() {
    let aws = AwsClients::from_env().await;
    let s3 = disks::s3().await;
    let bucket = disks::create_bucket(&s3).await;
    let loc = RepositoryLocation::new(&bucket, "team-a/", REGION)
        .with_mac_key(&common::hmac_key(None).await);
    let db = postgres::unique_database("shop");
    let reader = postgres::unique_database("reader");
    create_shop(&db, &reader);
    let before = contents(&db);
    let lineage = format!("rds-pg-{}", db.replace('_', "-"));

    let first = back_up(&aws, &loc, "dump-1", &lineage, &db).await.unwrap();
    let image = first.database.as_ref().unwrap();
    let dumped = image.dump.as_ref().unwrap();
    assert!(image.snapshots.is_empty());
    assert_eq!(dumped.databases.len(), 1);
    assert_eq!(dumped.databases[0].name, db);
    let tables: Vec<(&str, &str)> = dumped.databases[0]
        .tables
        .iter()
        .map(|t| (t.name.as_str(), t.order_by.as_str()))
        .collect();
    assert_eq!(
        tables,
        [
            ("public.customers", "id"),
            ("public.events", ""),
            ("public.orders", "id")
        ]
    );
    assert!(
        dumped.globals.bytes > 0 && dumped.databases[0].post_data.bytes > 0,
        "roles and the schema after the data are dumped"
    );
    let chunks_after_first = disks::keys(&s3, &bucket, "team-a/chunks/").await.len() as u64;
    assert_eq!(chunks_after_first, first.stats.chunks_uploaded);
    assert!(first.stats.bytes_total > 5 << 20, "{:?}", first.stats);

    // 1 % of the orders change, in one range of ids (a day's orders, say).
    psql(
        &db,
        &format!(
            "UPDATE orders SET note = note || ' (refunded)', cents = 0 WHERE id > {} AND id <= {}",
            ROWS / 2,
            ROWS / 2 + ROWS / 100
        ),
    );
    psql(&db, "VACUUM orders");
    let after = contents(&db);
    assert_ne!(before, after);

    let second = back_up(&aws, &loc, "dump-2", &lineage, &db).await.unwrap();
    assert_eq!(second.parent, Some(format!("dump-1/{lineage}")));
    let new = second.stats.bytes_new as f64 / second.stats.bytes_total as f64;
    eprintln!(
        "incremental dump: {} of {} bytes new ({:.2} %), {} chunks uploaded",
        second.stats.bytes_new,
        second.stats.bytes_total,
        new * 100.0,
        second.stats.chunks_uploaded
    );
    assert!(
        new < 0.05,
        "1 % of rows changed, {:.1} % stored anew",
        new * 100.0
    );
    let chunks_after_second = disks::keys(&s3, &bucket, "team-a/chunks/").await.len() as u64;
    assert_eq!(
        chunks_after_second,
        chunks_after_first + second.stats.chunks_uploaded
    );

    // Both restore points, into fresh databases: every table's rows and
    // the whole schema as they were.
    let outcome = restore(&aws, &loc, &second.id, "r2").await.unwrap();
    let r2 = format!("{db}_r2");
    assert_eq!(outcome.created, [r2.as_str()]);
    assert_eq!(outcome.tables, 3);
    assert_eq!(contents(&r2), after);
    assert_eq!(schema(&r2), schema(&db));
    restore(&aws, &loc, &first.id, "r1").await.unwrap();
    let r1 = format!("{db}_r1");
    assert_eq!(contents(&r1), before);
    // The sequence's position, the large object, the view and the grant
    // came back too.
    assert_eq!(psql(&r1, "SELECT last_value FROM invoice_numbers"), "4242");
    assert_eq!(
        psql(
            &r1,
            "SELECT convert_from(lo_get(oid), 'UTF8') FROM pg_largeobject_metadata"
        ),
        "a large object"
    );
    assert_eq!(
        psql(&r1, "SELECT count(*) FROM big_orders"),
        psql(&r1, "SELECT count(*) FROM orders WHERE cents > 90000")
    );
    assert_eq!(
        psql(
            &r1,
            &format!("SELECT has_table_privilege('{reader}', 'orders', 'SELECT')")
        ),
        "t"
    );

    // A target that holds tables is refused before anything is written.
    let err = restore(&aws, &loc, &first.id, "r2").await.unwrap_err();
    assert!(
        matches!(&err, MoverError::TargetNotEmpty { database, .. } if *database == r2),
        "{err}"
    );
    assert_eq!(err.reason(), FailureReason::DatabaseRestoreTargetNotEmpty);
    assert_eq!(contents(&r2), after, "the target is unchanged");

    for name in [&db, &r1, &r2] {
        postgres::drop_database(name);
    }
    psql("postgres", &format!("DROP ROLE {reader}"));
}

/// PostgreSQL tools this process still has running.
fn tools_running() -> Vec<String> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in children.split_whitespace() {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // A zombie has exited; only a live tool counts.
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            if ["psql", "pg_dump", "pg_dumpall"].contains(&comm.trim()) && state != Some("Z") {
                found.push(format!("{pid} {}", comm.trim()));
            }
        }
    }
    found
}

#[tokio::test]
async fn a_dump_cut_off_midway_leaves_no_restore_point_and_its_retry_restores() {
    let aws = AwsClients::from_env().await;
    let s3 = disks::s3().await;
    let bucket = disks::create_bucket(&s3).await;
    let loc =
        RepositoryLocation::new(&bucket, "", REGION).with_mac_key(&common::hmac_key(None).await);
    let db = postgres::unique_database("cut");
    let reader = postgres::unique_database("cut_reader");
    create_shop(&db, &reader);
    let expected = contents(&db);

    // The first attempt stops (its worker dies) once a few chunks are in.
    let server = postgres::server();
    let only = [db.clone()];
    let progress = Progress::default();
    let attempt = dump::backup(
        DumpRequest {
            backup: request(&aws, &loc, ("cut-1", "uid-cut-1"), "rds-pg-cut"),
            server: &server,
            database: DatabaseImage::default(),
            only: &only,
        },
        &progress,
    );
    let cut = async {
        while progress.done.load(std::sync::atomic::Ordering::Relaxed) < 1 << 20 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    tokio::select! {
        done = attempt => panic!("the dump ended before it was cut: {:?}", done.map(|m| m.id)),
        () = cut => {}
    }
    assert!(
        !disks::keys(&s3, &bucket, "chunks/").await.is_empty(),
        "the attempt had stored chunks"
    );
    assert!(
        disks::keys(&s3, &bucket, "restore-points/")
            .await
            .is_empty()
    );
    // No tool outlives its dump.
    let mut left = tools_running();
    for _ in 0..100 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        left = tools_running();
    }
    assert!(left.is_empty(), "tools still running: {left:?}");

    // The retry (same job) stores the restore point, which restores.
    let m = back_up(&aws, &loc, "cut-1", "rds-pg-cut", &db)
        .await
        .unwrap();
    assert!(m.stats.chunks_deduplicated > 0, "{:?}", m.stats);
    // A restore's worker died half-way: the database it created holds
    // part of the data, and its comment says whose it is. Another
    // restore's refuses it; the same restore's retry makes it again.
    let target = format!("{db}_r");
    psql("postgres", &format!("CREATE DATABASE {target}"));
    psql(
        &target,
        &format!(
            "CREATE TABLE customers (id int); COMMENT ON DATABASE {target} IS 'tender.dev: restore uid-restore-r in progress'"
        ),
    );
    let server = postgres::server();
    let rename = |name: &str| format!("{name}_r");
    let err = dump::restore(
        &aws,
        &loc,
        &m,
        &LoadTarget {
            server: &server,
            rename: &rename,
            only: &[],
            tag: "uid-another-restore",
        },
        &Progress::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, MoverError::TargetNotEmpty { .. }), "{err}");
    restore(&aws, &loc, &m.id, "r").await.unwrap();
    assert_eq!(contents(&format!("{db}_r")), expected);
    postgres::drop_database(&db);
    postgres::drop_database(&format!("{db}_r"));
    psql("postgres", &format!("DROP ROLE {reader}"));
}

#[tokio::test]
async fn a_damaged_chunk_fails_the_restore_before_any_database_is_created() {
    let aws = AwsClients::from_env().await;
    let s3 = disks::s3().await;
    let bucket = disks::create_bucket(&s3).await;
    let loc =
        RepositoryLocation::new(&bucket, "", REGION).with_mac_key(&common::hmac_key(None).await);
    let db = postgres::unique_database("ledger");
    psql("postgres", &format!("CREATE DATABASE {db}"));
    psql(
        &db,
        "CREATE TABLE entries (id int PRIMARY KEY, memo text);
         INSERT INTO entries SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 20000) g;",
    );
    let m = back_up(&aws, &loc, "ledger-1", "rds-pg-ledger", &db)
        .await
        .unwrap();
    let table = &m
        .database
        .as_ref()
        .unwrap()
        .dump
        .as_ref()
        .unwrap()
        .databases[0]
        .tables[0];
    let victim = table.data.chunks.last().unwrap().chunk.clone();
    s3.put_object()
        .bucket(&bucket)
        .key(loc.chunk_key(&victim))
        .body(zstd::bulk::compress(b"not the rows", 3).unwrap().into())
        .send()
        .await
        .unwrap();

    let err = restore(&aws, &loc, &m.id, "r").await.unwrap_err();
    assert!(matches!(err, MoverError::ChunkCorrupt { .. }), "{err}");
    assert_eq!(
        psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}_r'")
        ),
        "0",
        "nothing was created"
    );
    postgres::drop_database(&db);
}

#[tokio::test]
async fn a_wrong_password_fails_the_dump_with_what_the_server_said_and_stores_nothing() {
    let aws = AwsClients::from_env().await;
    let s3 = disks::s3().await;
    let bucket = disks::create_bucket(&s3).await;
    let loc =
        RepositoryLocation::new(&bucket, "", REGION).with_mac_key(&common::hmac_key(None).await);
    let mut server = postgres::server();
    server.password = "not-the-password".into();
    let err = dump::backup(
        DumpRequest {
            backup: request(&aws, &loc, ("bad-1", "uid-bad-1"), "rds-pg-bad"),
            server: &server,
            database: DatabaseImage::default(),
            only: &[],
        },
        &Progress::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason(), FailureReason::DatabaseDumpFailed);
    assert!(
        err.to_string().contains("password authentication failed"),
        "{err}"
    );
    assert!(disks::keys(&s3, &bucket, "").await.is_empty());
}

/// `verify-full` against a CA that did not sign the server's certificate
/// (the RDS CA bundle of another Region, say) fails before a password is
/// sent; against the one that did, the dump goes on (`tests/rds_dump.rs`
/// dumps that way end to end).
#[tokio::test]
async fn a_server_whose_certificate_the_ca_bundle_does_not_sign_is_refused() {
    let aws = AwsClients::from_env().await;
    let s3 = disks::s3().await;
    let bucket = disks::create_bucket(&s3).await;
    let loc =
        RepositoryLocation::new(&bucket, "", REGION).with_mac_key(&common::hmac_key(None).await);
    let dir = std::env::temp_dir().join(common::unique("other-ca"));
    std::fs::create_dir_all(&dir).unwrap();
    let other_ca = dir.join("other-ca.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=not-the-rds-ca", "-keyout"])
        .arg(dir.join("other-ca.key"))
        .arg("-out")
        .arg(&other_ca)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let mut server = postgres::server();
    server.sslmode = "verify-full".into();
    server.root_cert = Some(other_ca);
    let err = dump::backup(
        DumpRequest {
            backup: request(&aws, &loc, ("tls-1", "uid-tls-1"), "rds-pg-tls"),
            server: &server,
            database: DatabaseImage::default(),
            only: &[],
        },
        &Progress::default(),
    )
    .await
    .unwrap_err();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(err.reason(), FailureReason::DatabaseDumpFailed);
    assert!(
        err.to_string().contains("certificate verify failed"),
        "{err}"
    );
    assert!(disks::keys(&s3, &bucket, "").await.is_empty());
}
