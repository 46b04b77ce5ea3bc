//! PostgreSQL logical dumps into the repository, and back.
//!
//! RDS gives no access to a database's files, so what Tender keeps in its
//! own repository is a logical dump, made with PostgreSQL's own tools (the
//! worker's `pg_dump`, `pg_dumpall` and `psql`, at least as new as the
//! server):
//!
//! - the roles (`pg_dumpall --globals-only --no-role-passwords`: RDS's
//!   master user cannot read passwords, and a restore never sets any);
//! - for each database, in one snapshot exported by a session that stays
//!   open until the database is done: the schema that comes before the
//!   data (`pg_dump --section=pre-data --snapshot`), each table's rows
//!   (`COPY (SELECT … ORDER BY <primary key>) TO STDOUT` in a transaction
//!   that imported the snapshot), and the schema after the data (indexes,
//!   constraints, triggers: `--section=post-data`).
//!
//! Each stream is cut by content (FastCDC 2020, [`MIN_CHUNK`] to
//! [`MAX_CHUNK`] bytes, [`AVG_CHUNK`] on average) and stored as the
//! repository's chunks, named by their SHA-256 and compressed like volume
//! blocks: a row that changes changes the chunk around it, and every
//! other chunk is found in the repository already. Rows are dumped in
//! primary-key order because storage order moves an updated row (MVCC
//! writes a new version elsewhere), which would change chunks all over
//! the dump; a table without a primary key is dumped in storage order.
//!
//! A restore creates each database on the target (or uses an existing one
//! that holds no relation yet; it refuses one that does before anything is
//! written), runs the roles script (a role that exists already is
//! reported, not fatal), the schema before the data, loads each table with
//! `COPY … FROM STDIN` in one transaction, the schema after the data, and
//! `ANALYZE`. Every chunk is checked against its name and every stream
//! against its SHA-256 before its end reaches the server.
//!
//! Passwords reach the tools in a `.pgpass` file only this process can
//! read, in a private folder removed when the dump or restore ends: never
//! in arguments or in the environment.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

use super::chunks::BlockCopy;
use super::manifest::{
    self, BackupStats, DatabaseDump, DatabaseImage, DumpStream, DumpedDatabase, DumpedTable,
    Manifest, StreamChunk,
};
use super::pace::{BLOCKS_PER_SECOND, Pace};
use super::restore::fetch_chunk;
use super::{BackupRequest, CONCURRENCY, MoverError, Progress, lock};
use crate::aws::AwsClients;

/// Smallest chunk a dump is cut into.
pub const MIN_CHUNK: u32 = 32 * 1024;
/// The chunks' average size: small enough that a 1 % change of clustered
/// rows stores about 1 % anew, large enough that a 100 GiB dump is under a
/// million objects.
pub const AVG_CHUNK: u32 = 128 * 1024;
/// Largest chunk: an EBS block, the most a stored chunk may hold.
pub const MAX_CHUNK: u32 = crate::aws::ebs::BLOCK_SIZE as u32;
const _: () = assert!(MIN_CHUNK < AVG_CHUNK && AVG_CHUNK < MAX_CHUNK);

/// What the manifest says of how the streams were cut.
fn chunking() -> String {
    format!("fastcdc-2020 {MIN_CHUNK}/{AVG_CHUNK}/{MAX_CHUNK}")
}

/// The database no dump includes: RDS's own, which its master user cannot
/// connect to.
const RDS_ADMIN_DATABASE: &str = "rdsadmin";

/// A PostgreSQL server, and the tools that reach it.
#[derive(Clone)]
pub struct PgServer {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    /// libpq's `sslmode`: `verify-full` for RDS (with `root_cert`);
    /// `disable` only for a server on loopback.
    pub sslmode: String,
    /// The CA bundle that signs the server's certificate.
    pub root_cert: Option<PathBuf>,
    /// The folder of `pg_dump`, `pg_dumpall` and `psql`; `None`: `PATH`.
    pub tools: Option<PathBuf>,
    /// The database sessions connect to first (`postgres`).
    pub maintenance_database: String,
}

impl fmt::Debug for PgServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgServer")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("sslmode", &self.sslmode)
            .field("tools", &self.tools)
            .finish_non_exhaustive()
    }
}

/// One dump: the backup's request (its repository, job and lineage; its
/// `volumes` are empty), the server, and what the restore point records of
/// the DB instance.
pub struct DumpRequest<'a> {
    pub backup: BackupRequest<'a>,
    pub server: &'a PgServer,
    pub database: DatabaseImage,
    /// Only these databases; empty: every one the server has (but RDS's
    /// own and the templates).
    pub only: &'a [String],
}

/// Dumps every database of `request.server` into one restore point and
/// returns its manifest (stored, and made the lineage's latest). A retried
/// attempt whose earlier attempt stored the restore point returns that one.
pub async fn backup(request: DumpRequest<'_>, progress: &Progress) -> Result<Manifest, MoverError> {
    super::finish(&request.backup, |id| dump(&request, id, progress)).await
}

fn failed(step: impl Into<String>, detail: impl Into<String>) -> MoverError {
    MoverError::Database {
        step: step.into(),
        detail: detail.into(),
        restore: false,
    }
}

fn load_failed(step: impl Into<String>, detail: impl Into<String>) -> MoverError {
    MoverError::Database {
        step: step.into(),
        detail: detail.into(),
        restore: true,
    }
}

async fn dump(
    request: &DumpRequest<'_>,
    id: String,
    progress: &Progress,
) -> Result<Manifest, MoverError> {
    let b = &request.backup;
    let parent = super::parent(b.repository, b.location, b.region, b.lineage).await?;
    let store = super::store::S3Store {
        aws: b.repository,
        location: b.location,
    };
    let condemned = super::gc::load_condemned(&store, b.location).await?;
    let known: HashSet<String> = parent
        .manifest
        .iter()
        .flat_map(|p| p.chunk_refs().map(|(c, _)| c.to_string()))
        .filter(|c| !condemned.contains(c))
        .collect();
    let copy = BlockCopy {
        request: b,
        progress,
        pace: Pace::new(BLOCKS_PER_SECOND),
        known: Mutex::new(known),
        condemned,
        rescue_tag: hex::encode(&Sha256::digest(b.job_uid.as_bytes())[..6]),
        stats: Mutex::new(BackupStats::default()),
    };
    let server = request.server;
    let tools = Tools::new(server).map_err(|e| failed("preparing the PostgreSQL tools", e))?;
    let tools_version = tools
        .version("pg_dump")
        .await
        .map_err(|e| failed("pg_dump", e))?;

    let mut control = Session::open(&tools, &server.maintenance_database, None, false).await?;
    let server_version = control
        .value("SELECT current_setting('server_version')")
        .await?;
    let names: Vec<String> = control
        .hex_rows(&format!(
            "SELECT {} FROM pg_database WHERE datallowconn AND NOT datistemplate AND datname <> '{RDS_ADMIN_DATABASE}' ORDER BY datname",
            hex("datname")
        ))
        .await?
        .into_iter()
        .filter_map(|mut r| r.pop())
        .filter(|n| request.only.is_empty() || request.only.contains(n))
        .collect();
    if let Some(missing) = request.only.iter().find(|n| !names.contains(n)) {
        return Err(failed(
            "choosing databases",
            format!("the server has no database {missing:?} that can be dumped"),
        ));
    }
    // What the progress starts from: the last dump's size, else what the
    // databases take on disk (tables and indexes; a dump is usually
    // smaller, and the total is corrected at the end).
    let last = parent
        .manifest
        .as_ref()
        .filter(|p| p.database.as_ref().is_some_and(|d| d.dump.is_some()))
        .map(|p| p.stats.bytes_total);
    let estimate = match last {
        Some(bytes) => bytes,
        None if names.is_empty() => 0,
        None => {
            let list: Vec<String> = names.iter().map(|n| literal(n)).collect();
            control
                .value(&format!(
                    "SELECT coalesce(sum(pg_database_size(datname)), 0) FROM pg_database WHERE datname IN ({})",
                    list.join(", ")
                ))
                .await?
                .parse()
                .unwrap_or(0)
        }
    };
    progress.total.store(estimate, Ordering::Relaxed);
    control.close().await;

    let globals = stream(
        &copy,
        tools.command(
            "pg_dumpall",
            &server.maintenance_database,
            None,
            &["--globals-only", "--no-role-passwords", "--no-password"],
        ),
        "pg_dumpall --globals-only",
        &tools,
    )
    .await?;
    let mut databases = Vec::new();
    for name in names {
        databases.push(dump_database(&copy, &tools, &name).await?);
    }
    let dump = DatabaseDump {
        server_version,
        tools_version,
        chunking: chunking(),
        globals,
        databases,
    };
    let mut stats = lock(&copy.stats).clone();
    stats.bytes_total = dump.streams().iter().map(|(_, s)| s.bytes).sum();
    progress.total.store(stats.bytes_total, Ordering::Relaxed);
    progress.done.store(stats.bytes_total, Ordering::Relaxed);
    Ok(Manifest {
        version: manifest::DATABASE_MANIFEST_VERSION,
        id,
        resource: b.resource.to_string(),
        region: b.region.to_string(),
        namespace: b.location.namespace.clone().unwrap_or_default(),
        job_name: b.job_name.to_string(),
        job_uid: b.job_uid.to_string(),
        created_at: k8s_openapi::jiff::Timestamp::now().to_string(),
        parent: parent.manifest.map(|p| p.id),
        parent_refused: parent.refused,
        volumes: Vec::new(),
        stats,
        machine: None,
        policy: b.policy.map(String::from),
        database: Some(DatabaseImage {
            snapshots: Vec::new(),
            dump: Some(dump),
            ..request.database.clone()
        }),
    })
}

/// One database, read in one exported snapshot.
async fn dump_database(
    copy: &BlockCopy<'_, '_>,
    tools: &Tools,
    name: &str,
) -> Result<DumpedDatabase, MoverError> {
    let mut session = Session::open(tools, name, None, false).await?;
    session
        .rows("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await?;
    let snapshot = session.value("SELECT pg_export_snapshot()").await?;
    if snapshot.is_empty() || !snapshot.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(failed(
            format!("{name}: exporting a snapshot"),
            format!("the server answered {snapshot:?}, not a snapshot ID"),
        ));
    }
    let settings = session
        .hex_rows(&format!(
            "SELECT {}, {}, {} FROM pg_database WHERE datname = current_database()",
            hex("pg_encoding_to_char(encoding)"),
            hex("datcollate"),
            hex("datctype")
        ))
        .await?;
    let Some([encoding, collate, ctype]) = settings
        .into_iter()
        .next()
        .and_then(|r| <[String; 3]>::try_from(r).ok())
    else {
        return Err(failed(format!("{name}: reading its encoding"), "no answer"));
    };
    let tables = session.hex_rows(&tables_query()).await?;
    // As pg_dump does: a table cannot be truncated, rewritten or dropped
    // while it waits to be copied (the snapshot would then see it empty).
    if !tables.is_empty() {
        let names: Vec<&str> = tables.iter().map(|t| t[0].as_str()).collect();
        session
            .rows(&format!(
                "LOCK TABLE {} IN ACCESS SHARE MODE",
                names.join(", ")
            ))
            .await?;
    }
    let snapshot_arg = format!("--snapshot={snapshot}");
    let pre_data = stream(
        copy,
        tools.command(
            "pg_dump",
            name,
            None,
            &["--section=pre-data", &snapshot_arg, "--no-password"],
        ),
        &format!("{name}: pg_dump --section=pre-data"),
        tools,
    )
    .await?;
    let mut dumped = Vec::new();
    for row in tables {
        let [table, columns, order_by] = <[String; 3]>::try_from(row)
            .map_err(|r| failed(format!("{name}: listing tables"), format!("{r:?}")))?;
        let order = if order_by.is_empty() {
            String::new()
        } else {
            format!(" ORDER BY {order_by}")
        };
        let select = format!("COPY (SELECT {columns} FROM ONLY {table}{order}) TO STDOUT");
        // Names and rows in UTF-8 whatever the database's encoding: the
        // server converts, and a restore converts back.
        let mut command = tools.command("psql", name, Some("UTF8"), &PSQL_FLAGS);
        command.args([
            "-c",
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            "-c",
            &format!("SET TRANSACTION SNAPSHOT '{snapshot}'"),
            // Rows a policy would hide make the COPY fail, not shrink.
            "-c",
            "SET row_security = off",
            "-c",
            &select,
            "-c",
            "COMMIT",
        ]);
        let data = stream(copy, command, &format!("{name}: {table}"), tools).await?;
        dumped.push(DumpedTable {
            name: table,
            columns,
            order_by,
            data,
        });
    }
    // The data section without the rows copied above: sequences'
    // positions, large objects, extensions' configuration rows.
    let mut args = vec![
        "--section=data".to_string(),
        snapshot_arg.clone(),
        "--no-password".to_string(),
    ];
    args.extend(
        dumped
            .iter()
            .map(|t| format!("--exclude-table-data={}", t.name)),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let other_data = stream(
        copy,
        tools.command("pg_dump", name, None, &args),
        &format!("{name}: pg_dump --section=data (sequences, large objects)"),
        tools,
    )
    .await?;
    let post_data = stream(
        copy,
        tools.command(
            "pg_dump",
            name,
            None,
            &["--section=post-data", &snapshot_arg, "--no-password"],
        ),
        &format!("{name}: pg_dump --section=post-data"),
        tools,
    )
    .await?;
    session.rows("COMMIT").await?;
    session.close().await;
    Ok(DumpedDatabase {
        name: name.to_string(),
        encoding,
        pre_data,
        tables: dumped,
        other_data,
        post_data,
        collate,
        ctype,
    })
}

/// `expr` as hex of its UTF-8, so that no name can break a row apart.
fn hex(expr: &str) -> String {
    format!("encode(convert_to({expr}, 'UTF8'), 'hex')")
}

/// The tables whose rows a dump copies, as (quoted name, quoted copied
/// columns, quoted primary key columns): ordinary tables and partitions
/// outside the system schemas, not an extension's (as `pg_dump`).
fn tables_query() -> String {
    let name = hex("format('%I.%I', n.nspname, c.relname)");
    let columns = hex(
        "(SELECT string_agg(format('%I', a.attname), ', ' ORDER BY a.attnum) FROM pg_attribute a \
          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '')",
    );
    let key = hex(
        "coalesce((SELECT string_agg(format('%I', a.attname), ', ' ORDER BY k.ord) \
          FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
          WHERE i.indrelid = c.oid AND i.indisprimary), '')",
    );
    format!(
        "SELECT {name}, {columns}, {key} FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
         AND n.nspname !~ '^pg_(toast|temp_)' \
         AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                         AND d.objid = c.oid AND d.deptype = 'e') \
         ORDER BY 1"
    )
}

/// psql as a pipe: no `.psqlrc`, no prompts, stop at the first error.
const PSQL_FLAGS: [&str; 5] = ["-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=1"];

/// Runs `command` and stores its output as a stream of chunks. A tool
/// that fails, or a chunk that cannot be stored, fails the dump.
async fn stream(
    copy: &BlockCopy<'_, '_>,
    mut command: Command,
    step: &str,
    tools: &Tools,
) -> Result<DumpStream, MoverError> {
    let errors = tools.error_file();
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(errors.file().map_err(|e| failed(step, e))?);
    let mut child = command
        .spawn()
        .map_err(|e| failed(step, format!("cannot run {:?}: {e}", command.get_program())))?;
    let stdout = child.stdout.take();
    let child = Arc::new(Mutex::new(child));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(CONCURRENCY);
    let waiter = Arc::clone(&child);
    let reader = tokio::task::spawn_blocking(move || -> Result<(u64, String), String> {
        let read = || -> Result<(u64, String), String> {
            let stdout = stdout.ok_or("no output pipe")?;
            let mut whole = Sha256::new();
            let mut bytes = 0u64;
            for chunk in fastcdc::v2020::StreamCDC::new(stdout, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK) {
                let chunk = chunk.map_err(|e| format!("reading the output: {e}"))?;
                whole.update(&chunk.data);
                bytes += chunk.length as u64;
                if tx.blocking_send(chunk.data).is_err() {
                    return Err("stopped".into());
                }
            }
            Ok((bytes, hex::encode(whole.finalize())))
        };
        let read = read();
        // The tool is always waited for, and killed first when the dump
        // stops early (an error, or the dump dropped): no tool outlives it.
        let mut child = lock(&waiter);
        if read.is_err() {
            let _ = child.kill();
        }
        let status = child.wait().map_err(|e| e.to_string())?;
        let read = read?;
        if !status.success() {
            return Err(format!("exited with {status}"));
        }
        Ok(read)
    });
    let chunks = futures::stream::poll_fn(|cx| rx.poll_recv(cx))
        .map(|data| copy.stream_chunk(data))
        .buffered(CONCURRENCY)
        .try_collect::<Vec<StreamChunk>>()
        .await;
    let chunks = match chunks {
        Ok(chunks) => chunks,
        Err(e) => {
            let _ = lock(&child).kill();
            drop(rx);
            let _ = reader.await;
            return Err(e);
        }
    };
    let (bytes, sha256) = reader
        .await
        .map_err(|e| failed(step, e.to_string()))?
        .map_err(|e| failed(step, format!("{e}: {}", errors.tail())))?;
    Ok(DumpStream {
        bytes,
        sha256,
        chunks,
    })
}

/// The tools, and the private folder that holds the password file and the
/// tools' error output; removed when dropped.
struct Tools {
    server: PgServer,
    dir: PathBuf,
    errors: std::sync::atomic::AtomicU64,
}

impl Tools {
    fn new(server: &PgServer) -> Result<Self, String> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let dir = std::env::temp_dir().join(format!("tender-pg-{}", super::random_tag()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let tools = Tools {
            server: server.clone(),
            dir,
            errors: Default::default(),
        };
        // host:port:database:user:password, `:` and `\` escaped.
        let escape = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
        let line = format!(
            "{}:{}:*:{}:{}\n",
            escape(&server.host),
            server.port,
            escape(&server.user),
            escape(&server.password)
        );
        let path = tools.dir.join("pgpass");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        std::io::Write::write_all(&mut file, line.as_bytes()).map_err(|e| e.to_string())?;
        Ok(tools)
    }

    fn program(&self, tool: &str) -> PathBuf {
        match &self.server.tools {
            Some(dir) => dir.join(tool),
            None => PathBuf::from(tool),
        }
    }

    /// `tool` connecting to `database`, with the client encoding when
    /// given (rows are copied in their database's encoding).
    fn command(
        &self,
        tool: &str,
        database: &str,
        encoding: Option<&str>,
        args: &[&str],
    ) -> Command {
        let mut command = Command::new(self.program(tool));
        for var in [
            "PGPASSWORD",
            "PGSERVICE",
            "PGSERVICEFILE",
            "PGOPTIONS",
            "PGCLIENTENCODING",
            "PGSSLROOTCERT",
        ] {
            command.env_remove(var);
        }
        command
            .env("PGHOST", &self.server.host)
            .env("PGPORT", self.server.port.to_string())
            .env("PGUSER", &self.server.user)
            .env("PGDATABASE", database)
            .env("PGPASSFILE", self.dir.join("pgpass"))
            .env("PGSSLMODE", &self.server.sslmode)
            .env("PGAPPNAME", "tender")
            .env("PGCONNECT_TIMEOUT", "20");
        if let Some(cert) = &self.server.root_cert {
            command.env("PGSSLROOTCERT", cert);
        }
        if let Some(encoding) = encoding {
            command.env("PGCLIENTENCODING", encoding);
        }
        if tool == "pg_dumpall" {
            command.args(["-l", database]);
        }
        command.args(args);
        command
    }

    /// `tool --version`.
    async fn version(&self, tool: &str) -> Result<String, String> {
        let program = self.program(tool);
        let out = tokio::process::Command::new(&program)
            .arg("--version")
            .output()
            .await
            .map_err(|e| {
                format!(
                    "cannot run {}: {e} (the worker needs PostgreSQL's client tools)",
                    program.display()
                )
            })?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn error_file(&self) -> ErrorFile {
        let n = self.errors.fetch_add(1, Ordering::Relaxed);
        ErrorFile(self.dir.join(format!("stderr-{n}")))
    }
}

impl Drop for Tools {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where a tool's error output goes.
struct ErrorFile(PathBuf);

impl ErrorFile {
    fn file(&self) -> Result<std::fs::File, String> {
        std::fs::File::create(&self.0).map_err(|e| format!("{}: {e}", self.0.display()))
    }

    /// The last lines the tool wrote to its error output.
    fn tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.0) {
            let _ = f.read_to_string(&mut text);
        }
        // PostgreSQL's CONTEXT and DETAIL lines can quote rows (a COPY's
        // line, a duplicate key): what reaches a status names no data.
        let text: String = text
            .lines()
            .filter(|l| {
                let l = l.trim_start();
                !l.starts_with("CONTEXT:") && !l.starts_with("DETAIL:")
            })
            .collect::<Vec<_>>()
            .join("\n");
        let text = text.trim();
        let start = text.len().saturating_sub(1500);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        if text.is_empty() {
            "no error output".to_string()
        } else {
            text[start..].to_string()
        }
    }
}

/// An interactive psql: statements in, rows out, in one session (the one
/// that holds a dump's exported snapshot).
struct Session {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    errors: ErrorFile,
    database: String,
    restore: bool,
}

/// What ends each answer: psql echoes it after the statement.
const END: &str = "--tender-end-of-answer--";

impl Session {
    async fn open(
        tools: &Tools,
        database: &str,
        encoding: Option<&str>,
        restore: bool,
    ) -> Result<Self, MoverError> {
        let errors = tools.error_file();
        let fail = |detail: String| MoverError::Database {
            step: format!("connecting to database {database:?}"),
            detail,
            restore,
        };
        let mut command = tools.command(
            "psql",
            database,
            encoding,
            &[
                "-X",
                "-q",
                "-A",
                "-t",
                "-F",
                "|",
                "--no-password",
                "-v",
                "ON_ERROR_STOP=1",
            ],
        );
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(errors.file().map_err(fail)?);
        let mut child = tokio::process::Command::from(command)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fail(format!("cannot run psql: {e}")))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(fail("psql has no pipes".into()));
        };
        let mut session = Session {
            child,
            stdin,
            lines: tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout)),
            errors,
            database: database.to_string(),
            restore,
        };
        session.rows("SELECT 1").await?;
        Ok(session)
    }

    /// The rows `sql` answers, as psql prints them.
    async fn rows(&mut self, sql: &str) -> Result<Vec<Vec<String>>, MoverError> {
        use tokio::io::AsyncWriteExt;
        let (step, restore) = (
            format!("database {:?}: {}", self.database, short(sql)),
            self.restore,
        );
        let fail = |detail: String| MoverError::Database {
            step: step.clone(),
            detail,
            restore,
        };
        let input = format!("{sql};\n\\echo {END}\n");
        if let Err(e) = self.stdin.write_all(input.as_bytes()).await {
            return Err(fail(format!("{e}: {}", self.errors.tail())));
        }
        let _ = self.stdin.flush().await;
        let mut rows = Vec::new();
        loop {
            match self.lines.next_line().await {
                Ok(Some(line)) if line == END => return Ok(rows),
                Ok(Some(line)) if line.is_empty() => {}
                Ok(Some(line)) => rows.push(line.split('|').map(String::from).collect()),
                Ok(None) => {
                    let _ = self.child.wait().await;
                    return Err(fail(self.errors.tail()));
                }
                Err(e) => return Err(fail(e.to_string())),
            }
        }
    }

    /// The rows of a query whose every field is [`hex`]-encoded, decoded.
    async fn hex_rows(&mut self, sql: &str) -> Result<Vec<Vec<String>>, MoverError> {
        let rows = self.rows(sql).await?;
        rows.into_iter()
            .map(|row| {
                row.iter()
                    .map(|field| unhex(field))
                    .collect::<Option<Vec<String>>>()
                    .ok_or_else(|| MoverError::Database {
                        step: format!("database {:?}: {}", self.database, short(sql)),
                        detail: format!("psql answered {row:?}, not hex of UTF-8"),
                        restore: self.restore,
                    })
            })
            .collect()
    }

    /// The one value `sql` answers.
    async fn value(&mut self, sql: &str) -> Result<String, MoverError> {
        let rows = self.rows(sql).await?;
        match rows.as_slice() {
            [row] if row.len() == 1 => Ok(row[0].clone()),
            _ => Err(MoverError::Database {
                step: format!("database {:?}: {}", self.database, short(sql)),
                detail: format!("expected one value, got {rows:?}"),
                restore: self.restore,
            }),
        }
    }

    async fn close(mut self) {
        drop(self.stdin);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.child.wait()).await;
        let _ = self.child.kill().await;
    }
}

/// A field a query [`hex`]-encoded.
fn unhex(field: &str) -> Option<String> {
    ::hex::decode(field)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
}

fn short(sql: &str) -> String {
    let one_line = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

/// What a restore of a dump did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadOutcome {
    /// The databases created on the target (the others existed, empty).
    pub created: Vec<String>,
    pub tables: u64,
    pub bytes: u64,
    /// Statements of the roles script the target refused (a role that
    /// exists there already, an attribute the user may not grant): roles
    /// are shared by the whole server, so these are reported, not fatal.
    pub role_warnings: Vec<String>,
}

/// Where a dump is restored: the server, and the name each dumped
/// database gets there.
pub struct LoadTarget<'a> {
    pub server: &'a PgServer,
    pub rename: &'a (dyn Fn(&str) -> String + Sync),
    /// Only these databases (by dumped name); empty: all.
    pub only: &'a [String],
    /// What marks the databases this restore creates (the RestoreJob's
    /// UID): a database it created and did not finish, left by a worker
    /// that died, is dropped and made again by its retry; any other
    /// database that holds something is refused.
    pub tag: &'a str,
}

/// The comment on a database a restore is still filling.
fn restoring_comment(tag: &str) -> String {
    format!("tender.dev: restore {tag} in progress")
}

/// The major version in a tool's `--version` line (`psql (PostgreSQL)
/// 15.18` → 15).
fn major_version(line: &str) -> Option<u32> {
    let version = line
        .split_whitespace()
        .skip_while(|w| *w != "(PostgreSQL)")
        .nth(1)?;
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Restores the dump of restore point `manifest` into `target`.
pub async fn restore(
    aws: &AwsClients,
    loc: &super::manifest::RepositoryLocation,
    manifest: &Manifest,
    target: &LoadTarget<'_>,
    progress: &Progress,
) -> Result<LoadOutcome, MoverError> {
    let Some(dump) = manifest.database.as_ref().and_then(|d| d.dump.as_ref()) else {
        return Err(MoverError::ManifestInvalid {
            key: loc.manifest_key(&manifest.id),
            detail: "the restore point holds no dump (a DB snapshot's is restored by RDS)".into(),
        });
    };
    if let Some(missing) = target
        .only
        .iter()
        .find(|n| !dump.databases.iter().any(|d| &d.name == *n))
    {
        return Err(load_failed(
            "choosing databases",
            format!(
                "restore point {} has no database {missing:?}; it has {:?}",
                manifest.id,
                dump.databases.iter().map(|d| &d.name).collect::<Vec<_>>()
            ),
        ));
    }
    let chosen = |d: &DumpedDatabase| target.only.is_empty() || target.only.contains(&d.name);
    let databases: Vec<&DumpedDatabase> = dump.databases.iter().filter(|d| chosen(d)).collect();
    let tools =
        Tools::new(target.server).map_err(|e| load_failed("preparing the PostgreSQL tools", e))?;
    // The scripts pg_dump wrote need a psql at least as new.
    let psql = tools
        .version("psql")
        .await
        .map_err(|e| load_failed("psql", e))?;
    if let (Some(have), Some(need)) = (major_version(&psql), major_version(&dump.tools_version))
        && have < need
    {
        return Err(load_failed(
            "checking the PostgreSQL tools",
            format!(
                "the dump was made by {:?} and this worker has {psql:?}: its scripts need a psql of version {need} or later",
                dump.tools_version
            ),
        ));
    }
    let total: u64 = dump
        .streams_where(chosen)
        .iter()
        .map(|(_, s)| s.bytes)
        .sum();
    progress.total.store(total, Ordering::Relaxed);

    // Every target database is checked before anything is written.
    let mut control =
        Session::open(&tools, &target.server.maintenance_database, None, true).await?;
    let marker = restoring_comment(target.tag);
    let mut plan = Vec::new();
    for db in &databases {
        let name = (target.rename)(&db.name);
        let found = control
            .hex_rows(&format!(
                "SELECT {} FROM pg_database WHERE datname = {}",
                hex("coalesce(shobj_description(oid, 'pg_database'), '')"),
                literal(&name)
            ))
            .await?;
        let exists = match found.first().and_then(|r| r.first()) {
            None => Existing::No,
            Some(comment) if *comment == marker => Existing::Unfinished,
            Some(_) => {
                let mut session = Session::open(&tools, &name, None, true).await?;
                let objects: u64 = session
                    .value(USER_OBJECTS)
                    .await?
                    .parse()
                    .unwrap_or(u64::MAX);
                session.close().await;
                if objects > 0 {
                    return Err(MoverError::TargetNotEmpty {
                        database: name,
                        relations: objects,
                    });
                }
                Existing::Empty
            }
        };
        plan.push((*db, name, exists));
    }
    let loader = Loader {
        aws,
        loc,
        manifest,
        progress,
        users: BTreeMap::new(),
        tools: &tools,
    };
    // Every chunk is fetched and checked before anything is written, so
    // a damaged restore point fails here, with the targets untouched.
    let streams = dump.streams_where(chosen);
    let needed: HashSet<String> = streams
        .iter()
        .flat_map(|(_, s)| s.chunks.iter().map(|c| c.chunk.clone()))
        .collect();
    // Owned items and `async move`: a closure over borrowed items makes
    // the future `Send` for one lifetime only, which a spawned task (the
    // worker's agent) does not accept.
    let users = &loader.users;
    futures::stream::iter(needed)
        .map(|hash| async move { fetch_chunk(aws, loc, (manifest, progress), &hash, users).await })
        .buffer_unordered(CONCURRENCY)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    let mut outcome = LoadOutcome::default();

    // Roles first: the schema names them as owners.
    let script = tools.command(
        "psql",
        &target.server.maintenance_database,
        None,
        &["-X", "-q", "--no-password"],
    );
    let errors = loader.feed(script, &dump.globals, "roles").await?;
    outcome.role_warnings = errors
        .lines()
        .filter(|l| l.contains("ERROR:"))
        .map(String::from)
        .collect();

    for (db, name, exists) in plan {
        if exists == Existing::Unfinished {
            // This restore's own, left unfinished by a worker that died.
            control
                .rows(&format!("DROP DATABASE {} WITH (FORCE)", ident(&name)))
                .await?;
        }
        if exists != Existing::Empty {
            let mut create = format!(
                "CREATE DATABASE {} TEMPLATE template0 ENCODING {}",
                ident(&name),
                literal(&db.encoding)
            );
            if !db.collate.is_empty() && !db.ctype.is_empty() {
                create.push_str(&format!(
                    " LC_COLLATE {} LC_CTYPE {}",
                    literal(&db.collate),
                    literal(&db.ctype)
                ));
            }
            control.rows(&create).await?;
            control
                .rows(&format!(
                    "COMMENT ON DATABASE {} IS {}",
                    ident(&name),
                    literal(&marker)
                ))
                .await?;
            outcome.created.push(name.clone());
        }
        let loaded = load_database(&loader, &tools, db, &name).await;
        if let Err(e) = loaded {
            if exists != Existing::Empty {
                // Half a database helps no one, and would stop the retry.
                let _ = control
                    .rows(&format!("DROP DATABASE {} WITH (FORCE)", ident(&name)))
                    .await;
            }
            control.close().await;
            return Err(e);
        }
        outcome.tables += db.tables.len() as u64;
        if exists != Existing::Empty {
            control
                .rows(&format!(
                    "COMMENT ON DATABASE {} IS {}",
                    ident(&name),
                    literal(&format!("restored by tender.dev from {}", manifest.id))
                ))
                .await?;
        }
    }
    control.close().await;
    outcome.bytes = total;
    Ok(outcome)
}

/// What a restore found under a database's name on the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Existing {
    No,
    /// There, holding nothing of its own.
    Empty,
    /// Created by this restore (its comment says so) and not finished.
    Unfinished,
}

/// Counts what a database holds of its own: relations, functions, types
/// and schemas outside the system's.
const USER_OBJECTS: &str = "SELECT     (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_)')   + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema'))   + (SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_)'        AND t.typrelid = 0 AND t.typelem = 0)   + (SELECT count(*) FROM pg_namespace n        WHERE n.nspname NOT IN ('public', 'information_schema') AND n.nspname !~ '^pg_')";

/// One database's schema, rows, other data, indexes and constraints.
async fn load_database(
    loader: &Loader<'_>,
    tools: &Tools,
    db: &DumpedDatabase,
    name: &str,
) -> Result<(), MoverError> {
    let script = tools.command("psql", name, None, &PSQL_FLAGS);
    loader
        .feed(script, &db.pre_data, &format!("{name}: schema before data"))
        .await?;
    for table in &db.tables {
        // Rows were dumped in UTF-8; the server converts them back.
        let mut command = tools.command("psql", name, Some("UTF8"), &PSQL_FLAGS);
        let copy = if table.columns.is_empty() {
            format!("COPY {} FROM STDIN", table.name)
        } else {
            format!("COPY {} ({}) FROM STDIN", table.name, table.columns)
        };
        command.args(["-c", &copy]);
        loader
            .feed(command, &table.data, &format!("{name}: {}", table.name))
            .await?;
    }
    let script = tools.command("psql", name, None, &PSQL_FLAGS);
    loader
        .feed(script, &db.other_data, &format!("{name}: other data"))
        .await?;
    let script = tools.command("psql", name, None, &PSQL_FLAGS);
    loader
        .feed(script, &db.post_data, &format!("{name}: schema after data"))
        .await?;
    let mut analyze = tools.command("psql", name, None, &PSQL_FLAGS);
    analyze.args(["-c", "ANALYZE"]);
    run(analyze, tools, &format!("{name}: ANALYZE")).await
}

/// What every stream of one restore is loaded with.
struct Loader<'a> {
    aws: &'a AwsClients,
    loc: &'a super::manifest::RepositoryLocation,
    manifest: &'a Manifest,
    progress: &'a Progress,
    users: BTreeMap<String, Vec<i32>>,
    tools: &'a Tools,
}

impl Loader<'_> {
    /// Feeds `stream`'s chunks, fetched and checked, to `command`'s
    /// input. Returns what the command wrote to its error output. The
    /// input is cut off, so the command fails, when a chunk is missing or
    /// corrupt or the stream does not hash to what the manifest says.
    async fn feed(
        &self,
        command: Command,
        stream: &DumpStream,
        step: &str,
    ) -> Result<String, MoverError> {
        let (aws, loc, manifest, progress, users, tools) = (
            self.aws,
            self.loc,
            self.manifest,
            self.progress,
            &self.users,
            self.tools,
        );
        use tokio::io::AsyncWriteExt;
        let errors = tools.error_file();
        let mut command = tokio::process::Command::from(command);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(errors.file().map_err(|e| load_failed(step, e))?)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| load_failed(step, format!("cannot run psql: {e}")))?;
        let Some(mut stdin) = child.stdin.take() else {
            return Err(load_failed(step, "psql has no input pipe"));
        };
        let mut chunks = futures::stream::iter(stream.chunks.iter().cloned())
            .map(|c| async move {
                let (data, _) =
                    fetch_chunk(aws, loc, (manifest, progress), &c.chunk, users).await?;
                if data.len() != c.length as usize {
                    return Err(MoverError::ChunkCorrupt {
                        restore_point: manifest.id.clone(),
                        key: loc.chunk_key(&c.chunk),
                        blocks: Vec::new(),
                        detail: format!("it holds {} bytes, the stream {}", data.len(), c.length),
                    });
                }
                Ok(data)
            })
            .buffered(CONCURRENCY);
        let mut whole = Sha256::new();
        let mut fed = Ok(());
        let mut stopped_reading = false;
        while let Some(data) = chunks.next().await {
            let data = match data {
                Ok(data) => data,
                Err(e) => {
                    fed = Err(e);
                    break;
                }
            };
            whole.update(&data);
            if let Err(e) = stdin.write_all(&data).await {
                // The tool stopped reading: it failed, and says why below.
                tracing::debug!(step, error = %e, "the tool stopped reading its input");
                stopped_reading = true;
                break;
            }
            progress
                .done
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        if fed.is_ok() && !stopped_reading && hex::encode(whole.finalize()) != stream.sha256 {
            fed = Err(MoverError::ManifestInvalid {
                key: loc.manifest_key(&manifest.id),
                detail: format!("the stream {step} does not hash to what the manifest says"),
            });
        }
        if let Err(e) = fed {
            // Killed before its input ends: a COPY or script stops unfinished
            // (and a COPY's transaction is rolled back).
            let _ = child.kill().await;
            return Err(e);
        }
        drop(stdin);
        let status = child
            .wait()
            .await
            .map_err(|e| load_failed(step, e.to_string()))?;
        let text = errors.tail();
        if !status.success() {
            return Err(load_failed(step, text));
        }
        if stopped_reading {
            return Err(load_failed(
                step,
                format!("psql stopped reading before the end of its input: {text}"),
            ));
        }
        Ok(text)
    }
}

/// Runs a command that reads nothing.
async fn run(command: Command, tools: &Tools, step: &str) -> Result<(), MoverError> {
    let errors = tools.error_file();
    let mut command = tokio::process::Command::from(command);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(errors.file().map_err(|e| load_failed(step, e))?)
        .kill_on_drop(true);
    let status = command
        .status()
        .await
        .map_err(|e| load_failed(step, format!("cannot run psql: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(load_failed(step, errors.tail()))
    }
}

/// An SQL identifier, quoted.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An SQL string literal, read the same whatever
/// `standard_conforming_strings` is (an escape string).
fn literal(text: &str) -> String {
    format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

/// The folder a worker's tools are in, when they are not on `PATH`:
/// Debian's versioned one, newest first.
pub fn debian_tools() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            Path::new(&bin).join("pg_dump").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_fields_are_decoded() {
        assert_eq!(unhex("7075626c69632e74").as_deref(), Some("public.t"));
        assert_eq!(unhex("").as_deref(), Some(""));
        assert_eq!(unhex("15.18"), None);
        // Hex of bytes that are not UTF-8.
        assert_eq!(unhex("ff"), None);
    }

    #[test]
    fn major_versions_are_read_from_version_lines() {
        assert_eq!(major_version("psql (PostgreSQL) 15.18"), Some(15));
        assert_eq!(
            major_version("pg_dump (PostgreSQL) 17.2 (Debian 17.2-1)"),
            Some(17)
        );
        assert_eq!(major_version("something else"), None);
        assert_eq!(major_version("pg_dump (PostgreSQL) 18beta1"), Some(18));
        assert_eq!(major_version("pg_dump (PostgreSQL) 16.4"), Some(16));
    }

    #[test]
    fn names_and_literals_are_quoted() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("it's"), "E'it''s'");
        assert_eq!(literal("a\\b"), "E'a\\\\b'");
    }

    #[test]
    fn the_password_is_not_in_debug_output() {
        let server = PgServer {
            host: "db".into(),
            port: 5432,
            user: "u".into(),
            password: "hunter2".into(),
            sslmode: "verify-full".into(),
            root_cert: None,
            tools: None,
            maintenance_database: "postgres".into(),
        };
        assert!(!format!("{server:?}").contains("hunter2"));
        let tools = Tools::new(&server).unwrap();
        let pgpass = std::fs::read_to_string(tools.dir.join("pgpass")).unwrap();
        assert_eq!(pgpass, "db:5432:*:u:hunter2\n");
        let command = tools.command("psql", "x", None, &[]);
        assert!(
            command
                .get_envs()
                .all(|(_, v)| v.is_none_or(|v| !v.to_string_lossy().contains("hunter2")))
        );
        assert!(
            command
                .get_args()
                .all(|a| !a.to_string_lossy().contains("hunter2"))
        );
        let dir = tools.dir.clone();
        drop(tools);
        assert!(!dir.exists());
    }
}
