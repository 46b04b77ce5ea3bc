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

/// An RDS for PostgreSQL DB instance in the default VPC whose endpoint and
/// managed master secret are the test environment's server; returns its
/// VPC security groups.
#[allow(dead_code)]
pub async fn backed_instance(
    rds: &aws_sdk_rds::Client,
    ec2: &aws_sdk_ec2::Client,
    id: &str,
) -> Vec<String> {
    let vpcs = ec2
        .describe_vpcs()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("is-default")
                .values("true")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let vpc = vpcs.vpcs()[0].vpc_id().unwrap().to_string();
    let subnets = ec2
        .describe_subnets()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("vpc-id")
                .values(&vpc)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let subnet_ids: Vec<String> = subnets
        .subnets()
        .iter()
        .filter_map(|s| s.subnet_id().map(String::from))
        .collect();
    let group_name = format!("{id}-subnets");
    rds.create_db_subnet_group()
        .db_subnet_group_name(&group_name)
        .db_subnet_group_description("the default VPC's subnets")
        .set_subnet_ids(Some(subnet_ids))
        .send()
        .await
        .unwrap();
    let owners = ec2
        .create_security_group()
        .group_name(format!("{id}-owners"))
        .description("the DB instance's own group")
        .vpc_id(&vpc)
        .send()
        .await
        .unwrap();
    let own_group = owners.group_id().unwrap().to_string();
    let pg = server();
    let answer = super::realism::rds_backing(id, &pg.host, pg.port, &pg.password).await;
    assert!(!answer["applied"].as_bool().unwrap_or(true), "{answer}");
    rds.create_db_instance()
        .db_instance_identifier(id)
        .engine("postgres")
        .engine_version("15.8")
        .db_instance_class("db.t4g.micro")
        .allocated_storage(20)
        .master_username(&pg.user)
        .manage_master_user_password(true)
        .db_subnet_group_name(&group_name)
        .vpc_security_group_ids(&own_group)
        // Its owner lets Tender add the dump's security group.
        .tags(
            aws_sdk_rds::types::Tag::builder()
                .key("tender.dev/dump-access")
                .value("allowed")
                .build(),
        )
        .send()
        .await
        .expect("create a DB instance");
    vec![own_group]
}
