//! The test environment's PostgreSQL server (`scripts/testenv up` starts
//! it): the stand-in for an RDS PostgreSQL instance, reached as its master
//! user, who may create databases and roles and is no superuser.

use std::path::PathBuf;
use std::process::Command;

use tender::mover::dump::PgServer;

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the tests under `scripts/testenv up` (scripts/test does)")
    })
}

/// The server, as its master user, with Debian's tools.
pub fn server() -> PgServer {
    let password = std::fs::read_to_string(env("TENDER_PG_PASSWORD_FILE")).unwrap();
    PgServer {
        host: "127.0.0.1".into(),
        port: env("TENDER_PG_PORT").parse().unwrap(),
        user: env("TENDER_PG_USER"),
        password: password.trim().to_string(),
        // Loopback only; RDS is reached with verify-full.
        sslmode: "disable".into(),
        root_cert: None,
        tools: Some(PathBuf::from(env("TENDER_PG_BIN"))),
        maintenance_database: "postgres".into(),
    }
}

/// A database name of the test's own (PostgreSQL folds it to lower case).
pub fn unique_database(prefix: &str) -> String {
    super::unique(prefix).replace('-', "_").to_lowercase()
}

/// Runs `sql` in `database` with psql and returns what it printed
/// (unaligned, tuples only); panics when psql fails.
pub fn psql(database: &str, sql: &str) -> String {
    let out = tool("psql", database)
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql {sql:?} in {database}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// One of the server's tools, connecting to `database` as the master user.
fn tool(name: &str, database: &str) -> Command {
    let server = server();
    let mut command = Command::new(server.tools.unwrap().join(name));
    command
        .env("PGHOST", &server.host)
        .env("PGPORT", server.port.to_string())
        .env("PGUSER", &server.user)
        .env("PGPASSWORD", &server.password)
        .env("PGDATABASE", database);
    command
}

/// `pg_dump --schema-only` of `database`, without the lines that differ
/// between two dumps of the same schema (psql's `\restrict` key).
pub fn schema(database: &str) -> String {
    let out = tool("pg_dump", database)
        .args(["--schema-only", "--no-password"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Each table's name and an MD5 of all its rows (sorted), in name order.
pub fn contents(database: &str) -> Vec<(String, String)> {
    let tables = psql(
        database,
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
         WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
    );
    tables
        .lines()
        .map(|t| {
            let sum = psql(
                database,
                &format!(
                    "SELECT count(*) || ':' || coalesce(md5(string_agg(r::text, E'\\n' ORDER BY r::text)), '') FROM {t} r"
                ),
            );
            (t.to_string(), sum)
        })
        .collect()
}

/// Drops `database` (and whoever is connected to it).
pub fn drop_database(name: &str) {
    psql(
        "postgres",
        &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
    );
}
