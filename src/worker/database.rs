//! A PostgreSQL dump on a worker, or the load of one: the master password read from the DB
//! instance's RDS-managed secret (GetSecretValue, by this worker's role;
//! never in user data, logs or the tools' arguments), the server verified
//! against the RDS certificate authorities the user data fetched, and the
//! dump written or loaded by the data mover (`mover::dump`).

use tracing::info;

use super::{Done, Failure, failure, mib, mover_failure};
use crate::aws::AwsClients;
use crate::messages::{DatabaseTask, WorkerTask};
use crate::mover::dump::{DumpRequest, LoadTarget, PgServer};
use crate::mover::manifest::Manifest;
use crate::mover::{self, BackupRequest, Progress};
use crate::reasons::FailureReason;

/// The Region of a secret's ARN (`arn:aws:secretsmanager:<region>:…`).
fn secret_region(arn: &str) -> Option<&str> {
    arn.split(':').nth(3).filter(|r| !r.is_empty())
}

/// The user name and password of an RDS-managed master secret
/// (`{"username": …, "password": …}`).
fn credentials(secret: &str) -> Option<(Option<String>, String)> {
    let value: serde_json::Value = serde_json::from_str(secret).ok()?;
    let password = value.get("password")?.as_str()?.to_string();
    let user = value
        .get("username")
        .and_then(|u| u.as_str())
        .map(String::from);
    Some((user, password))
}

/// Reads the master user's credentials from the DB instance's secret.
async fn read_secret(
    aws: &AwsClients,
    db: &DatabaseTask,
    fallback_region: &str,
) -> Result<(String, String), Failure> {
    let region = secret_region(&db.secret_arn).unwrap_or(fallback_region);
    let value = aws
        .databases()
        .master_secret(region, &db.secret_arn)
        .await
        .map_err(|e| {
            let reason = e.failure_reason();
            let hint = if reason == FailureReason::AwsPermissionDenied {
                "; the worker's role needs secretsmanager:GetSecretValue on it (and kms:Decrypt on its key when that is a customer managed key), see iam/worker-backup-policy.json and iam/worker-restore-policy.json"
            } else {
                ""
            };
            failure(
                reason,
                format!(
                    "cannot read DB instance {}'s master secret {}: {e}{hint}",
                    db.db_instance_id, db.secret_arn
                ),
            )
        })?;
    let (user, password) = credentials(&value).ok_or_else(|| {
        failure(
            FailureReason::DatabaseDumpFailed,
            format!(
                "secret {} holds no RDS master credentials (a JSON object with a password)",
                db.secret_arn
            ),
        )
    })?;
    Ok((user.unwrap_or_else(|| db.user.clone()), password))
}

/// The task's server, signed in to as its master user.
async fn server(
    aws: &AwsClients,
    task: &WorkerTask,
    db: &DatabaseTask,
) -> Result<PgServer, Failure> {
    let (user, password) = read_secret(aws, db, &task.resource_region).await?;
    Ok(PgServer {
        host: db.host.clone(),
        port: db.port,
        user,
        password,
        sslmode: db.sslmode.clone(),
        root_cert: Some(crate::user_data::RDS_CA_FILE.into()),
        // The user data made sure the tools on the PATH are new enough.
        tools: None,
        maintenance_database: "postgres".into(),
    })
}

/// Loads the dump of the task's restore point into the task's server:
/// each database created there, or filled if it exists empty (one that
/// holds anything is refused before anything is written).
pub(super) async fn load(
    aws: &AwsClients,
    task: &WorkerTask,
    db: &DatabaseTask,
    progress: &Progress,
) -> Result<Done, Failure> {
    let (Some(repository), Some(id)) = (&task.repository, &task.restore_point) else {
        return Err(failure(
            FailureReason::RestorePointMissing,
            "the task names no repository or restore point",
        ));
    };
    let manifest = mover::load_manifest(aws, repository, id)
        .await
        .map_err(|e| mover_failure(e, repository))?;
    let server = server(aws, task, db).await?;
    info!(
        db = db.db_instance_id,
        host = db.host,
        port = db.port,
        restore_point = id,
        "loading a PostgreSQL dump"
    );
    let same = |name: &str| name.to_string();
    let target = LoadTarget {
        server: &server,
        rename: &same,
        only: &db.databases,
        // A database this job's dead worker left half-loaded is dropped
        // and loaded again by its retry.
        tag: &task.job_uid,
    };
    let outcome = mover::dump::restore(aws, repository, &manifest, &target, progress)
        .await
        .map_err(|e| mover_failure(e, repository))?;
    let loaded: Vec<String> = manifest
        .database
        .as_ref()
        .and_then(|d| d.dump.as_ref())
        .map(|d| {
            d.databases
                .iter()
                .filter(|x| db.databases.is_empty() || db.databases.contains(&x.name))
                .map(|x| x.name.clone())
                .collect()
        })
        .unwrap_or_default();
    let warnings = match outcome.role_warnings.len() {
        0 => String::new(),
        n => format!(
            "; {n} statement(s) of the roles script refused (roles are the server's: {})",
            outcome
                .role_warnings
                .first()
                .map(String::as_str)
                .unwrap_or_default()
        ),
    };
    Ok(Done {
        detail: format!(
            "loaded {} of restore point {id} into DB instance {} ({} table(s), {}; created {}){warnings}",
            loaded.join(", "),
            db.db_instance_id,
            outcome.tables,
            mib(outcome.bytes),
            if outcome.created.is_empty() {
                "none: every database existed empty".to_string()
            } else {
                outcome.created.join(", ")
            }
        ),
        restore_point: Some(id.clone()),
        snapshots: Vec::new(),
        machine: None,
        retention: None,
        verification: None,
    })
}

/// Dumps the task's server into one restore point.
pub(super) async fn dump(
    aws: &AwsClients,
    task: &WorkerTask,
    db: &DatabaseTask,
    progress: &Progress,
) -> Result<Done, Failure> {
    let Some(repository) = &task.repository else {
        return Err(failure(
            FailureReason::RepositoryMissing,
            "the task names no repository; the controller that launched this worker is older than the agent",
        ));
    };
    let server = server(aws, task, db).await?;
    info!(
        db = db.db_instance_id,
        host = db.host,
        port = db.port,
        "dumping PostgreSQL"
    );
    let manifest = mover::dump::backup(
        DumpRequest {
            backup: BackupRequest {
                source: aws,
                repository: aws,
                location: repository,
                region: &task.resource_region,
                resource: &task.resource,
                job_name: &task.job_name,
                job_uid: &task.job_uid,
                lineage: &task.resource,
                volumes: &[],
                machine: None,
                policy: task.policy.as_deref(),
                grace: task.gc_grace_seconds.map(std::time::Duration::from_secs),
            },
            server: &server,
            database: db.image.clone(),
            only: &db.databases,
        },
        progress,
    )
    .await
    .map_err(|e| mover_failure(e, repository))?;
    Ok(Done {
        detail: dump_detail(&manifest),
        restore_point: Some(manifest.id.clone()),
        snapshots: Vec::new(),
        machine: None,
        retention: None,
        verification: None,
    })
}

/// What a dump did, for the job's status.
fn dump_detail(manifest: &Manifest) -> String {
    let s = &manifest.stats;
    let databases = manifest
        .database
        .as_ref()
        .and_then(|d| d.dump.as_ref())
        .map(|d| {
            d.databases
                .iter()
                .map(|db| db.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    format!(
        "restore point {}: a dump of {} ({databases}), {} new in {} chunk(s) uploaded ({} stored), {} chunk(s) already stored; parent {}",
        manifest.id,
        mib(s.bytes_total),
        mib(s.bytes_new),
        s.chunks_uploaded,
        mib(s.bytes_uploaded),
        s.chunks_deduplicated,
        manifest.parent.as_deref().unwrap_or("none (full dump)")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_rds_secret_gives_its_user_and_password() {
        assert_eq!(
            credentials(r#"{"username":"master","password":"p4ss"}"#),
            Some((Some("master".into()), "p4ss".into()))
        );
        assert_eq!(
            credentials(r#"{"password":"p4ss"}"#),
            Some((None, "p4ss".into()))
        );
        assert_eq!(credentials(r#"{"username":"master"}"#), None);
        assert_eq!(credentials("p4ss"), None);
        assert_eq!(
            secret_region("arn:aws:secretsmanager:eu-west-1:123456789012:secret:rds!db-1-AbCdEf"),
            Some("eu-west-1")
        );
        assert_eq!(secret_region("rds!db-1"), None);
    }
}
