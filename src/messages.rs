//! The wire format between workers and the controller: versioned JSON on
//! the configuration's SQS queue, and the task a worker is launched with.

use serde::{Deserialize, Serialize};

/// Version of [`WorkerMessage`] and [`WorkerTask`] this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// What a worker is asked to do; the controller puts it in the instance's
/// user data, and the agent reads it at boot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerTask {
    pub version: u32,
    pub operation: Operation,
    pub namespace: String,
    pub job_name: String,
    pub job_uid: String,
    /// The protected resource (an EC2 instance ID for backups).
    pub resource: String,
    /// Region of the protected resource.
    pub resource_region: String,
    pub attempt: i32,
    /// Queue the worker reports to.
    pub queue_url: String,
    /// Region of the queue.
    pub queue_region: String,
    /// Seconds between heartbeats.
    pub heartbeat_seconds: u64,
    /// The controller's cluster ID, tagged (`tender.dev/cluster-id`) on
    /// the snapshots the worker creates so that IAM conditions and sweeps
    /// can tell this cluster's snapshots apart; `None` from older
    /// controllers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Role the worker assumes to read the protected resource when it runs
    /// in another account (the backup account reading production).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_access: Option<crate::api::AccountAccess>,
    /// The repository a backup writes to or a restore reads from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<crate::mover::manifest::RepositoryLocation>,
    /// For a restore: the restore point to restore (`<job>/<resource>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_point: Option<String>,
    /// For a restore: the device of the volume to restore (default: the
    /// restore point's first volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// For a restore: every volume of the restore point (a whole instance).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all_volumes: bool,
    /// For a file-level recovery session: how to serve it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_level: Option<FileLevelTask>,
    /// For a backup made by a BackupPolicy: the policy, recorded in the
    /// restore point so that the policy's retention rules apply to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Garbage collection's grace period, in seconds: a backup that copies
    /// for longer stores no restore point. `None` from older controllers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gc_grace_seconds: Option<u64>,
    /// For a retention run: what to expire and how to collect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionTask>,
    /// For a dump of an RDS for PostgreSQL DB instance: where it is and
    /// where its password is (never the password itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseTask>,
}

/// The PostgreSQL server a dump worker signs in to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseTask {
    /// The DB instance's identifier (recorded in the restore point).
    pub db_instance_id: String,
    /// Its endpoint's host name and port.
    pub host: String,
    pub port: u16,
    /// The master user.
    pub user: String,
    /// ARN of the RDS-managed secret holding the master user's password
    /// (`{"username": …, "password": …}`); the worker reads it itself.
    pub secret_arn: String,
    /// The engine version (`16.4`): the user data installs a PostgreSQL
    /// client of that major version where the image has none.
    pub engine_version: String,
    /// libpq's `sslmode`: `verify-full`.
    pub sslmode: String,
    /// Where the user data fetches the certificate authorities that sign
    /// the DB instance's certificate (AWS's RDS trust store for its Region).
    pub ca_bundle_url: String,
    /// Only these databases; empty: every one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<String>,
    /// The DB instance's own description, recorded in the restore point.
    pub image: crate::mover::manifest::DatabaseImage,
}

/// What a retention worker does in its repository's namespace part.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RetentionTask {
    /// The policy whose restore points the rules apply to; `None` expires
    /// nothing and only collects chunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The policy's rules (its `spec.retention`).
    #[serde(default)]
    pub rules: crate::policy::retention::Retention,
    /// IANA zone the calendar rules (daily, weekly…) count in.
    pub time_zone: String,
    /// Seconds a condemned chunk waits before it may be deleted.
    pub grace_seconds: u64,
    /// Restore points to delete on purpose (their RestorePoint objects
    /// were annotated `tender.dev/delete`), unless held.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delete: Vec<String>,
    /// Restore points unfinished RestoreJobs read: kept whatever the rules
    /// say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_use: Vec<String>,
}

/// How a worker serves a file-level recovery session.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FileLevelTask {
    /// TCP port of the HTTPS server (443).
    pub port: u16,
    /// SHA-256 (hex) of the session token; the token itself stays in the
    /// Secret next to the RestoreJob, never in user data.
    pub token_sha256: String,
    /// The session ends after this many seconds without a request.
    pub idle_timeout_seconds: u64,
    /// The session ends after this many seconds whatever happens (the
    /// job's `activeDeadlineSeconds`); its certificate is valid no longer.
    /// At most a day, and a day when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_life_seconds: Option<u64>,
    /// Where "Restore selected" copies files, if the job allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_to: Option<crate::mover::manifest::RepositoryLocation>,
    /// Restoring selected files onto the source instance, when the job
    /// asks for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_location: Option<OriginalLocationTask>,
}

/// What a session needs to restore files onto the source instance: the
/// worker stages them under `staging`; the controller sends the command.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OriginalLocationTask {
    pub instance_id: String,
    /// `<repository prefix>_staging/<namespace>/<job UID>/`: each request
    /// is a folder under it, named by its ID. `None` when unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staging: Option<crate::mover::manifest::RepositoryLocation>,
    /// Why the session cannot restore there (shown in its pages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    /// Appended to a restored file's name when the name is taken and not
    /// overwritten (`.restored-<backup job>`).
    pub suffix: String,
}

/// A request, staged by the worker, to restore files onto the source
/// instance (a session reports its last one with every report).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OriginalRequest {
    /// 16 lower-case hex digits, chosen by the worker: the folder under the
    /// task's staging location.
    pub request: String,
    /// SHA-256 (hex) of the request's `manifest.json`.
    pub manifest_sha256: String,
    pub files: u64,
    pub bytes: u64,
    pub overwrite: bool,
}

/// `manifest.json` of a staged request: what to restore, onto which
/// filesystem; file `index` is staged as `files/<index>`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StagedManifest {
    pub request: String,
    /// The filesystem's UUID as `blkid` prints it.
    pub filesystem_uuid: String,
    pub overwrite: bool,
    pub entries: Vec<StagedEntry>,
}

/// A folder (no `file`) or file of a staged request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StagedEntry {
    /// Relative to the filesystem's root, `/`-separated.
    pub path: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<StagedFile>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StagedFile {
    pub index: usize,
    pub size: u64,
    pub sha256: String,
}

/// Where a file-level recovery session is, and how to trust it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    pub url: String,
    pub certificate_sha256: String,
    pub public_key_sha256: String,
    /// The last request to restore files onto the source instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_location: Option<OriginalRequest>,
}

/// A backup task for unit tests.
#[cfg(test)]
impl WorkerTask {
    pub(crate) fn sample() -> WorkerTask {
        WorkerTask {
            version: PROTOCOL_VERSION,
            operation: Operation::Backup,
            namespace: "ns".into(),
            job_name: "job".into(),
            job_uid: "uid".into(),
            resource: "i-0123456789abcdef0".into(),
            resource_region: "us-east-1".into(),
            attempt: 2,
            queue_url: "https://sqs.us-east-1.amazonaws.com/1/q".into(),
            queue_region: "us-east-1".into(),
            heartbeat_seconds: 30,
            cluster_id: Some("cluster".into()),
            source_access: None,
            repository: Some(crate::mover::manifest::RepositoryLocation::new(
                "bucket",
                "prefix",
                "us-east-1",
            )),
            restore_point: None,
            device: None,
            all_volumes: false,
            file_level: None,
            policy: None,
            gc_grace_seconds: None,
            retention: None,
            database: None,
        }
    }
}

impl WorkerTask {
    /// What this task does, and so which permissions its worker needs.
    pub fn profile(&self) -> WorkerProfile {
        match self.operation {
            Operation::Backup => WorkerProfile::Backup,
            Operation::Restore if self.file_level.is_some() => WorkerProfile::FileLevel,
            Operation::Restore => WorkerProfile::Restore,
            Operation::Retention => WorkerProfile::Retention,
            Operation::Verification => WorkerProfile::Verification,
        }
    }

    /// The user data of a worker with this task (see [`crate::user_data`]).
    pub fn user_data(
        &self,
        agent: Option<&crate::user_data::AgentDownload>,
    ) -> Result<String, crate::user_data::UserDataError> {
        crate::user_data::render(self, agent)
    }

    /// The task inside a worker's user data.
    pub fn from_user_data(user_data: &str) -> Option<WorkerTask> {
        crate::user_data::task_of(user_data)
    }
}

/// The operation a worker runs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Operation {
    Backup,
    Restore,
    Retention,
    Verification,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Backup => "backup",
            Operation::Restore => "restore",
            Operation::Retention => "retention",
            Operation::Verification => "verification",
        }
    }
}

/// What a worker does as far as its AWS permissions go: each has its own
/// instance profile (`WorkerConfiguration.spec.instanceProfiles`) and its
/// own policy in `iam/`. A file-level recovery session is a restore
/// ([`Operation::Restore`] with a [`FileLevelTask`]) that touches no EBS
/// snapshot and writes only restored files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkerProfile {
    Backup,
    Restore,
    FileLevel,
    Retention,
    Verification,
}

impl WorkerProfile {
    pub const ALL: [WorkerProfile; 5] = [
        WorkerProfile::Backup,
        WorkerProfile::Restore,
        WorkerProfile::FileLevel,
        WorkerProfile::Retention,
        WorkerProfile::Verification,
    ];

    /// As in the `profile` metric label and the `instanceProfiles` keys'
    /// documentation.
    pub const fn as_str(self) -> &'static str {
        match self {
            WorkerProfile::Backup => "backup",
            WorkerProfile::Restore => "restore",
            WorkerProfile::FileLevel => "fileLevel",
            WorkerProfile::Retention => "retention",
            WorkerProfile::Verification => "verification",
        }
    }
}

/// One report from a worker. Applied idempotently: the controller keeps the
/// highest `sequence` per job, resource and attempt, and ignores the rest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerMessage {
    pub version: u32,
    pub namespace: String,
    pub job_name: String,
    pub job_uid: String,
    pub resource: String,
    pub instance_id: String,
    pub attempt: i32,
    /// Increases by one with every message of one worker attempt, from 1.
    pub sequence: i64,
    #[serde(flatten)]
    pub event: WorkerEvent,
}

/// What happened on the worker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum WorkerEvent {
    Started,
    Progress {
        percent: i32,
        detail: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bytes: Option<ByteProgress>,
        /// A file-level recovery session that is up.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<SessionInfo>,
    },
    Heartbeat,
    Completed {
        detail: String,
        /// The restore point a backup wrote.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        restore_point: Option<String>,
        /// The snapshot a restore wrote (the first, when it wrote several).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        snapshot_id: Option<String>,
        /// Every snapshot a restore wrote, by device.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        snapshots: Vec<crate::api::RestoredSnapshot>,
        /// What a full restore's image is registered as, from the restore
        /// point (absent from older workers: the controller then falls back
        /// as `Manifest::machine_or_fallback` does).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        machine: Option<crate::api::MachineImage>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bytes: Option<ByteProgress>,
        /// What a retention run expired and collected.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retention: Option<Box<crate::api::RetentionOutcome>>,
        /// What a verification found (every chunk intact).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        verification: Option<Box<crate::api::VerificationOutcome>>,
    },
    Failed {
        reason: crate::reasons::FailureReason,
        message: String,
        /// What a verification found when the restore point is damaged.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        verification: Option<Box<crate::api::VerificationOutcome>>,
    },
}

/// Bytes moved so far, of the total, and the recent rate.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ByteProgress {
    pub done: u64,
    pub total: u64,
    pub per_second: u64,
}

impl WorkerEvent {
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            WorkerEvent::Completed { .. } | WorkerEvent::Failed { .. }
        )
    }
}

/// How large a worker message and its fields may be. The controller
/// refuses a message over any bound ([`MessageError::TooLarge`],
/// [`MessageError::Oversized`]) rather than cut it: what it says could not
/// be trusted whole. The agent cuts its own free text to [`TEXT_BYTES`]
/// before sending ([`WorkerEvent::within_bounds`]), so only a broken or
/// forged worker goes over.
pub mod bounds {
    /// A whole message body.
    pub const BODY_BYTES: usize = 64 * 1024;
    /// Free text: a `detail`, a failure `message`.
    pub const TEXT_BYTES: usize = 4 * 1024;
    /// A browser session's URL.
    pub const URL_BYTES: usize = 2048;
    /// Every ID and name: namespace, job name and UID, resource (a restore
    /// point is up to 512), instance and snapshot IDs, devices, reasons,
    /// certificate fingerprints.
    pub const ID_BYTES: usize = 512;
    /// Snapshots one restore names.
    pub const SNAPSHOTS: usize = 128;
}

/// Why a message body was refused.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("not a Tender worker message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("unsupported protocol version {0} (this controller speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u32),
    #[error("message of {0} bytes is over the bound of {bound} bytes", bound = bounds::BODY_BYTES)]
    TooLarge(usize),
    #[error("{field} holds {size} (bytes or entries), over its bound of {bound}")]
    Oversized {
        field: &'static str,
        size: usize,
        bound: usize,
    },
}

impl WorkerMessage {
    /// Parses and checks a message body: its size, its version, and the
    /// bounds of every field.
    pub fn parse(body: &str) -> Result<Self, MessageError> {
        if body.len() > bounds::BODY_BYTES {
            return Err(MessageError::TooLarge(body.len()));
        }
        let message: WorkerMessage = serde_json::from_str(body)?;
        if message.version != PROTOCOL_VERSION {
            return Err(MessageError::UnsupportedVersion(message.version));
        }
        message.check_bounds()?;
        Ok(message)
    }

    /// Every field within its bound (see [`bounds`]).
    pub fn check_bounds(&self) -> Result<(), MessageError> {
        use bounds::{ID_BYTES, SNAPSHOTS, TEXT_BYTES, URL_BYTES};
        let mut fields: Vec<(&'static str, usize, usize)> = vec![
            ("namespace", self.namespace.len(), ID_BYTES),
            ("jobName", self.job_name.len(), ID_BYTES),
            ("jobUid", self.job_uid.len(), ID_BYTES),
            ("resource", self.resource.len(), ID_BYTES),
            ("instanceId", self.instance_id.len(), ID_BYTES),
        ];
        match &self.event {
            WorkerEvent::Started | WorkerEvent::Heartbeat => {}
            WorkerEvent::Progress {
                detail, session, ..
            } => {
                fields.push(("detail", detail.len(), TEXT_BYTES));
                if let Some(s) = session {
                    fields.push(("session.url", s.url.len(), URL_BYTES));
                    let pins = [&s.certificate_sha256, &s.public_key_sha256];
                    fields.extend(pins.map(|p| ("session pin", p.len(), ID_BYTES)));
                    if let Some(o) = &s.original_location {
                        fields.push(("session.originalLocation.request", o.request.len(), 16));
                        let digest = o.manifest_sha256.len();
                        fields.push(("session.originalLocation.manifestSha256", digest, 64));
                    }
                }
            }
            WorkerEvent::Completed {
                detail,
                restore_point,
                snapshot_id,
                snapshots,
                machine,
                retention,
                verification,
                ..
            } => {
                fields.push(("detail", detail.len(), TEXT_BYTES));
                if let Some(m) = machine {
                    fields.push(("machine.architecture", m.architecture.len(), ID_BYTES));
                    let boot = m.boot_mode.as_ref().map_or(0, String::len);
                    fields.push(("machine.bootMode", boot, ID_BYTES));
                    let sriov = m.sriov_net_support.as_ref().map_or(0, String::len);
                    fields.push(("machine.sriovNetSupport", sriov, ID_BYTES));
                    let virt = m.virtualization_type.len();
                    fields.push(("machine.virtualizationType", virt, ID_BYTES));
                    let root = m.root_device_name.len();
                    fields.push(("machine.rootDeviceName", root, ID_BYTES));
                }
                let point = restore_point.as_ref().map_or(0, String::len);
                fields.push(("restorePoint", point, ID_BYTES));
                let id = snapshot_id.as_ref().map_or(0, String::len);
                fields.push(("snapshotId", id, ID_BYTES));
                fields.push(("snapshots", snapshots.len(), SNAPSHOTS));
                for s in snapshots {
                    fields.push(("snapshots[].device", s.device.len(), ID_BYTES));
                    fields.push(("snapshots[].snapshotId", s.snapshot_id.len(), ID_BYTES));
                }
                if let Some(r) = retention {
                    let ids = crate::api::retention_job::OUTCOME_IDS;
                    fields.push(("retention.expired", r.expired.len(), ids));
                    for id in &r.expired {
                        fields.push(("retention.expired[]", id.len(), ID_BYTES));
                    }
                }
                verification_fields(verification.as_deref(), &mut fields);
            }
            WorkerEvent::Failed {
                reason,
                message,
                verification,
            } => {
                fields.push(("reason", reason.as_str().len(), ID_BYTES));
                fields.push(("message", message.len(), TEXT_BYTES));
                verification_fields(verification.as_deref(), &mut fields);
            }
        }
        match fields.into_iter().find(|(_, size, bound)| size > bound) {
            Some((field, size, bound)) => Err(MessageError::Oversized { field, size, bound }),
            None => Ok(()),
        }
    }
}

/// The bounds of a verification outcome's fields.
fn verification_fields(
    outcome: Option<&crate::api::VerificationOutcome>,
    fields: &mut Vec<(&'static str, usize, usize)>,
) {
    use bounds::{ID_BYTES, SNAPSHOTS};
    let Some(v) = outcome else { return };
    let keys = crate::api::verification_job::OUTCOME_KEYS;
    fields.push(("verification.restorePoint", v.restore_point.len(), ID_BYTES));
    fields.push(("verification.damagedKeys", v.damaged_keys.len(), keys));
    for key in &v.damaged_keys {
        fields.push(("verification.damagedKeys[]", key.len(), ID_BYTES));
    }
    fields.push((
        "verification.damagedVolumes",
        v.damaged_volumes.len(),
        SNAPSHOTS,
    ));
    for device in &v.damaged_volumes {
        fields.push(("verification.damagedVolumes[]", device.len(), ID_BYTES));
    }
}

impl WorkerEvent {
    /// This event with its free text cut to [`bounds::TEXT_BYTES`] (at a
    /// character boundary, ending in `…`): what the agent sends.
    pub fn within_bounds(mut self) -> Self {
        match &mut self {
            WorkerEvent::Progress { detail, .. } | WorkerEvent::Completed { detail, .. } => {
                cut(detail)
            }
            WorkerEvent::Failed { message, .. } => cut(message),
            WorkerEvent::Started | WorkerEvent::Heartbeat => {}
        }
        self
    }
}

/// Cuts `text` to [`bounds::TEXT_BYTES`], marking the cut with `…`.
fn cut(text: &mut String) {
    const MARK: char = '…';
    if text.len() > bounds::TEXT_BYTES {
        let end = text.floor_char_boundary(bounds::TEXT_BYTES - MARK.len_utf8());
        text.truncate(end);
        text.push(MARK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message of one worker, with `event`.
    fn message(event: WorkerEvent) -> WorkerMessage {
        WorkerMessage {
            version: PROTOCOL_VERSION,
            namespace: "ns".into(),
            job_name: "job".into(),
            job_uid: "uid".into(),
            resource: "i-0123456789abcdef0".into(),
            instance_id: "i-00000000000000001".into(),
            attempt: 1,
            sequence: 3,
            event,
        }
    }

    #[test]
    fn round_trips_with_a_type_tag() {
        let msg = message(WorkerEvent::Progress {
            percent: 50,
            detail: "half".into(),
            bytes: Some(ByteProgress {
                done: 1,
                total: 2,
                per_second: 1,
            }),
            session: None,
        });
        let body = serde_json::to_string(&msg).expect("serializes");
        assert!(body.contains(r#""type":"progress""#), "{body}");
        assert_eq!(WorkerMessage::parse(&body).expect("parses"), msg);
    }

    #[test]
    fn what_a_task_does_picks_its_permissions() {
        let task = WorkerTask::sample();
        // What it does picks the worker's permissions.
        assert_eq!(task.profile(), WorkerProfile::Backup);
        let restore = WorkerTask {
            operation: Operation::Restore,
            ..task
        };
        assert_eq!(restore.profile(), WorkerProfile::Restore);
        let file_level = WorkerTask {
            file_level: Some(FileLevelTask {
                port: 443,
                token_sha256: "00".into(),
                idle_timeout_seconds: 60,
                max_life_seconds: None,
                restore_to: None,
                original_location: None,
            }),
            ..restore
        };
        assert_eq!(file_level.profile(), WorkerProfile::FileLevel);
    }

    fn completed(detail: String) -> WorkerMessage {
        message(WorkerEvent::Completed {
            detail,
            restore_point: Some("job/i-0123456789abcdef0".into()),
            snapshot_id: None,
            snapshots: Vec::new(),
            bytes: None,
            machine: None,
            retention: None,
            verification: None,
        })
    }

    #[test]
    fn a_message_over_a_bound_is_refused_whole() {
        let at_bound = completed("d".repeat(bounds::TEXT_BYTES));
        let body = serde_json::to_string(&at_bound).unwrap();
        assert_eq!(WorkerMessage::parse(&body).unwrap(), at_bound);

        let over = serde_json::to_string(&completed("d".repeat(bounds::TEXT_BYTES + 1))).unwrap();
        assert!(matches!(
            WorkerMessage::parse(&over),
            Err(MessageError::Oversized { field: "detail", size, bound })
                if size == bounds::TEXT_BYTES + 1 && bound == bounds::TEXT_BYTES
        ));
        // A body over the whole bound is not even parsed.
        let huge = serde_json::to_string(&completed("d".repeat(1024 * 1024))).unwrap();
        assert!(matches!(
            WorkerMessage::parse(&huge),
            Err(MessageError::TooLarge(n)) if n > 1024 * 1024
        ));
        let mut many = completed("ok".into());
        if let WorkerEvent::Completed { snapshots, .. } = &mut many.event {
            *snapshots = vec![crate::api::RestoredSnapshot::default(); bounds::SNAPSHOTS + 1];
        }
        assert!(matches!(
            many.check_bounds(),
            Err(MessageError::Oversized {
                field: "snapshots",
                ..
            })
        ));
        let mut long_id = completed("ok".into());
        long_id.instance_id = "i".repeat(bounds::ID_BYTES + 1);
        assert!(long_id.check_bounds().is_err());
        let mut odd_machine = completed("ok".into());
        if let WorkerEvent::Completed { machine, .. } = &mut odd_machine.event {
            *machine = Some(crate::api::MachineImage {
                architecture: "a".repeat(bounds::ID_BYTES + 1),
                ..Default::default()
            });
        }
        assert!(matches!(
            odd_machine.check_bounds(),
            Err(MessageError::Oversized {
                field: "machine.architecture",
                ..
            })
        ));
    }

    #[test]
    fn the_agent_cuts_its_free_text_to_the_bound() {
        // Multi-byte characters across the cut stay whole.
        let long = "é".repeat(bounds::TEXT_BYTES);
        let WorkerEvent::Failed { message, .. } = (WorkerEvent::Failed {
            reason: crate::reasons::FailureReason::SnapshotFailed,
            message: long,
            verification: None,
        })
        .within_bounds() else {
            unreachable!()
        };
        assert!(message.len() <= bounds::TEXT_BYTES, "{}", message.len());
        assert!(message.ends_with('…'));
        let short = WorkerEvent::Started.within_bounds();
        assert_eq!(short, WorkerEvent::Started);
        let cut = completed("x".repeat(10 * bounds::TEXT_BYTES));
        let cut = WorkerMessage {
            event: cut.event.within_bounds(),
            ..cut
        };
        assert!(cut.check_bounds().is_ok());
    }

    #[test]
    fn refuses_garbage_and_other_versions() {
        assert!(matches!(
            WorkerMessage::parse("{not json"),
            Err(MessageError::Malformed(_))
        ));
        let other = r#"{"version":2,"namespace":"n","jobName":"j","jobUid":"u","resource":"r",
            "instanceId":"i","attempt":1,"sequence":1,"type":"started"}"#;
        assert!(matches!(
            WorkerMessage::parse(other),
            Err(MessageError::UnsupportedVersion(2))
        ));
    }
}
