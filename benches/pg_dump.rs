//! PostgreSQL dump benchmark: the data mover's dump of a database into the
//! repository (emulated S3 and KMS) and its restore into a fresh database,
//! against a floor measured in the same run on the same server: plain
//! `pg_dump` into /dev/null, and `psql` loading that plain dump. Then 1 % of
//! the rows change, once in one range of keys and once scattered at
//! random, and an incremental dump prints what it stored anew: the
//! stored/logical ratio.
//!
//! ```sh
//! scripts/bench pgdump            # 1 000 000 rows (~110 MiB dumped)
//! scripts/bench pgdump 200000     # another size, in rows
//! ```
#![allow(clippy::unwrap_used, clippy::panic)]

#[path = "../tests/common/keys.rs"]
mod keys;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use tender::aws::AwsClients;
use tender::mover::dump::{self, DumpRequest, LoadTarget, PgServer};
use tender::mover::manifest::{DatabaseImage, Manifest, RepositoryLocation};
use tender::mover::{BackupRequest, Progress};

const REGION: &str = "us-east-1";
const MIB: f64 = 1024.0 * 1024.0;

fn main() {
    // `cargo test --all-targets` runs this binary without `--bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rows: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.parse().expect("a number of rows"))
        .unwrap_or(1_000_000);
    for var in ["AWS_ENDPOINT_URL", "TENDER_PG_PORT", "TENDER_PG_BIN"] {
        assert!(
            std::env::var_os(var).is_some(),
            "{var} is not set: run scripts/bench pgdump"
        );
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench(rows));
}

fn server() -> PgServer {
    let password =
        std::fs::read_to_string(std::env::var("TENDER_PG_PASSWORD_FILE").unwrap()).unwrap();
    PgServer {
        host: "127.0.0.1".into(),
        port: std::env::var("TENDER_PG_PORT").unwrap().parse().unwrap(),
        user: std::env::var("TENDER_PG_USER").unwrap(),
        password: password.trim().to_string(),
        sslmode: "disable".into(),
        root_cert: None,
        tools: Some(PathBuf::from(std::env::var("TENDER_PG_BIN").unwrap())),
        maintenance_database: "postgres".into(),
    }
}

fn tool(name: &str, database: &str) -> Command {
    let s = server();
    let mut c = Command::new(s.tools.unwrap().join(name));
    c.env("PGHOST", &s.host)
        .env("PGPORT", s.port.to_string())
        .env("PGUSER", &s.user)
        .env("PGPASSWORD", &s.password)
        .env("PGDATABASE", database);
    c
}

fn psql(database: &str, sql: &str) -> String {
    let out = tool("psql", database)
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn back_up(
    aws: &AwsClients,
    loc: &RepositoryLocation,
    job: &str,
    db: &str,
) -> (Manifest, f64) {
    let server = server();
    let uid = format!("uid-{job}");
    let only = [db.to_string()];
    let started = Instant::now();
    let m = dump::backup(
        DumpRequest {
            backup: BackupRequest {
                source: aws,
                repository: aws,
                location: loc,
                region: REGION,
                resource: "rds-pg-bench",
                lineage: "rds-pg-bench",
                job_name: job,
                job_uid: &uid,
                volumes: &[],
                machine: None,
                policy: None,
                grace: None,
            },
            server: &server,
            database: DatabaseImage {
                identifier: "bench".into(),
                engine: "postgres".into(),
                ..DatabaseImage::default()
            },
            only: &only,
        },
        &Progress::default(),
    )
    .await
    .unwrap();
    (m, started.elapsed().as_secs_f64())
}

fn print_incremental(what: &str, m: &Manifest, secs: f64) {
    let s = &m.stats;
    println!(
        "| {what} | {:.1} MiB in {secs:.2} s ({:.1} MiB/s) | {:.2} % new ({} of {} chunks) | {:.4} |",
        s.bytes_total as f64 / MIB,
        s.bytes_total as f64 / MIB / secs,
        100.0 * s.bytes_new as f64 / s.bytes_total as f64,
        s.chunks_uploaded,
        s.blocks_read,
        s.bytes_uploaded as f64 / s.bytes_total as f64,
    );
}

async fn bench(rows: u64) {
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .load()
        .await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&conf)
            .force_path_style(true)
            .build(),
    );
    let bucket = format!("tender-bench-pg-{}", std::process::id());
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let loc =
        RepositoryLocation::new(&bucket, "", REGION).with_mac_key(&keys::hmac_key(&conf).await);
    let aws = AwsClients::from_env().await;

    let db = format!("bench_{}", std::process::id());
    psql("postgres", &format!("CREATE DATABASE {db}"));
    let started = Instant::now();
    psql(
        &db,
        &format!(
            "CREATE TABLE orders (id bigint PRIMARY KEY, customer int NOT NULL, cents int NOT NULL,
                                  placed_at timestamptz NOT NULL, note text);
             INSERT INTO orders SELECT g, 1 + g % 5000, (g::bigint * 7919) % 100000,
                    timestamptz '2026-01-01' + g * interval '1 minute',
                    md5(g::text) || repeat(' note', 1 + g % 9)
             FROM generate_series(1, {rows}) g;
             CREATE INDEX orders_by_customer ON orders (customer, placed_at);"
        ),
    );
    psql(&db, "VACUUM ANALYZE orders");
    eprintln!(
        "loaded {rows} rows in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Floor: the same server's pg_dump, then psql loading its output.
    let plain = std::env::temp_dir().join(format!("tender-bench-{db}.sql"));
    let started = Instant::now();
    let status = tool("pg_dump", &db)
        .arg("--no-password")
        .stdout(std::fs::File::create(&plain).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let floor_dump = started.elapsed().as_secs_f64();
    let plain_bytes = std::fs::metadata(&plain).unwrap().len() as f64;
    // The same bytes put into S3 as pieces of the chunks' average size, 16
    // at a time: the S3 part of the floor (no hashing, compression, lookup).
    let data = std::fs::read(&plain).unwrap();
    let started = Instant::now();
    {
        use futures::StreamExt;
        let pieces: Vec<(usize, Vec<u8>)> = data
            .chunks(dump::AVG_CHUNK as usize)
            .map(<[u8]>::to_vec)
            .enumerate()
            .collect();
        futures::stream::iter(pieces)
            .map(|(i, piece)| {
                let (s3, bucket) = (&s3, &bucket);
                async move {
                    s3.put_object()
                        .bucket(bucket)
                        .key(format!("floor/{i}"))
                        .body(piece.into())
                        .send()
                        .await
                        .unwrap();
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<()>>()
            .await;
    }
    let floor_put = started.elapsed().as_secs_f64();
    drop(data);
    let floor_db = format!("{db}_floor");
    psql("postgres", &format!("CREATE DATABASE {floor_db}"));
    let started = Instant::now();
    let status = tool("psql", &floor_db)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(&plain)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let floor_load = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&plain);

    let (full, full_secs) = back_up(&aws, &loc, "bench-1", &db).await;
    let logical = full.stats.bytes_total as f64;

    let manifest = tender::mover::load_manifest(&aws, &loc, &full.id)
        .await
        .unwrap();
    let srv = server();
    let rename = |name: &str| format!("{name}_restored");
    let started = Instant::now();
    dump::restore(
        &aws,
        &loc,
        &manifest,
        &LoadTarget {
            server: &srv,
            rename: &rename,
            only: &[],
            tag: "bench",
        },
        &Progress::default(),
    )
    .await
    .unwrap();
    let restore_secs = started.elapsed().as_secs_f64();

    // 1 % of the rows, in one range of keys.
    let changed = rows / 100;
    psql(
        &db,
        &format!(
            "UPDATE orders SET note = note || ' (refunded)', cents = 0 WHERE id > {} AND id <= {}",
            rows / 2,
            rows / 2 + changed
        ),
    );
    psql(&db, "VACUUM orders");
    let (clustered, clustered_secs) = back_up(&aws, &loc, "bench-2", &db).await;
    // Another 1 %, scattered: every hundredth row.
    psql(
        &db,
        "UPDATE orders SET cents = cents + 1 WHERE id % 100 = 7",
    );
    psql(&db, "VACUUM orders");
    let (scattered, scattered_secs) = back_up(&aws, &loc, "bench-3", &db).await;

    println!();
    println!(
        "PostgreSQL dump, {rows} rows: {:.1} MiB of COPY text ({:.1} MiB plain pg_dump), chunks of {}/{}/{} bytes",
        logical / MIB,
        plain_bytes / MIB,
        dump::MIN_CHUNK,
        dump::AVG_CHUNK,
        dump::MAX_CHUNK
    );
    println!();
    println!(
        "| | Tender (into the repository) | floor: plain pg_dump / psql, same server | Tender / floor |"
    );
    println!("|---|---|---|---|");
    println!(
        "| full dump | {:.1} MiB/s ({full_secs:.2} s) | {:.1} MiB/s ({floor_dump:.2} s, into a file) | {:.2} |",
        logical / MIB / full_secs,
        plain_bytes / MIB / floor_dump,
        (logical / MIB / full_secs) / (plain_bytes / MIB / floor_dump)
    );
    println!(
        "| full dump, against pg_dump then S3 PUTs of its {} KiB pieces | {:.1} MiB/s | {:.1} MiB/s ({floor_dump:.2} + {floor_put:.2} s) | {:.2} |",
        dump::AVG_CHUNK / 1024,
        logical / MIB / full_secs,
        plain_bytes / MIB / (floor_dump + floor_put),
        (logical / MIB / full_secs) / (plain_bytes / MIB / (floor_dump + floor_put))
    );
    println!(
        "| restore into a new database | {:.1} MiB/s ({restore_secs:.2} s) | {:.1} MiB/s ({floor_load:.2} s) | {:.2} |",
        logical / MIB / restore_secs,
        plain_bytes / MIB / floor_load,
        (logical / MIB / restore_secs) / (plain_bytes / MIB / floor_load)
    );
    println!(
        "| stored by the full dump | {:.1} MiB compressed ({:.3} of logical) | | |",
        full.stats.bytes_uploaded as f64 / MIB,
        full.stats.bytes_uploaded as f64 / logical
    );
    println!();
    println!("| incremental dump after | dumped | new | stored / logical |");
    println!("|---|---|---|---|");
    print_incremental(
        "1 % of rows changed, one key range",
        &clustered,
        clustered_secs,
    );
    print_incremental("1 % of rows changed, scattered", &scattered, scattered_secs);

    for name in [db.clone(), floor_db, format!("{db}_restored")] {
        psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        );
    }
}
