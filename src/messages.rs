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
}

/// Where a file-level recovery session is, and how to trust it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    pub url: String,
    pub certificate_sha256: String,
    pub public_key_sha256: String,
}

/// Markers around the task in a worker's user data.
const TASK_BEGIN: &str = "cat > /run/tender/task.json <<'TENDER_TASK'\n";
const TASK_END: &str = "\nTENDER_TASK\n";

/// The systemd unit the agent runs in (`$INSTANCE_ID` is filled in by the
/// user data's shell): an unprivileged user of its own (`DynamicUser`)
/// whose one capability is binding port 443 (the file-level browser). The
/// agent needs no more: it reads disks through the EBS direct APIs and
/// restore points from S3, never a block device, so it gets none
/// (`PrivateDevices`); the task (root's, mode 0600) reaches it as a
/// systemd credential.
const WORKER_UNIT: &str = "[Unit]\n\
     Description=Tender worker agent\n\
     Wants=network-online.target\n\
     After=network-online.target\n\
     [Service]\n\
     Type=exec\n\
     ExecStart=tender worker --task-file %d/task --instance-id ${INSTANCE_ID}\n\
     LoadCredential=task:/run/tender/task.json\n\
     DynamicUser=yes\n\
     AmbientCapabilities=CAP_NET_BIND_SERVICE\n\
     CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n\
     NoNewPrivileges=yes\n\
     UMask=0077\n\
     PrivateDevices=yes\n\
     ProtectSystem=strict\n\
     ProtectHome=yes\n\
     ProtectKernelTunables=yes\n\
     ProtectKernelModules=yes\n\
     ProtectControlGroups=yes\n\
     RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX\n";

impl WorkerTask {
    /// The user data of a worker instance: a script that writes the task,
    /// reads the instance ID through IMDSv2, and starts the agent (which
    /// the worker AMI carries as `tender`) as the systemd service
    /// [`WORKER_UNIT`], unprivileged.
    pub fn user_data(&self) -> Result<String, serde_json::Error> {
        let task = serde_json::to_string(self)?;
        Ok(format!(
            "#!/bin/sh\n\
             # Tender worker bootstrap: run the worker agent with this task,\n\
             # as an unprivileged user that may bind port 443 and nothing more.\n\
             set -eu\n\
             umask 077\n\
             mkdir -p /run/tender\n\
             {TASK_BEGIN}{task}{TASK_END}\
             IMDS=http://169.254.169.254/latest\n\
             TOKEN=$(curl -sS -X PUT \"$IMDS/api/token\" -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')\n\
             INSTANCE_ID=$(curl -sS -H \"X-aws-ec2-metadata-token: $TOKEN\" \"$IMDS/meta-data/instance-id\")\n\
             case \"$INSTANCE_ID\" in i-[0-9a-f]*) ;; *) echo \"not an instance ID: $INSTANCE_ID\" >&2; exit 1 ;; esac\n\
             cat > /run/systemd/system/tender-worker.service <<TENDER_UNIT\n\
             {WORKER_UNIT}\
             TENDER_UNIT\n\
             systemctl daemon-reload\n\
             exec systemctl start tender-worker.service\n"
        ))
    }

    /// The task inside a worker's user data, as [`WorkerTask::user_data`]
    /// wrote it.
    pub fn from_user_data(user_data: &str) -> Option<WorkerTask> {
        let start = user_data.find(TASK_BEGIN)? + TASK_BEGIN.len();
        let len = user_data[start..].find(TASK_END)?;
        serde_json::from_str(&user_data[start..start + len]).ok()
    }
}

/// The operation a worker runs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Operation {
    Backup,
    Restore,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Backup => "backup",
            Operation::Restore => "restore",
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
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bytes: Option<ByteProgress>,
    },
    Failed {
        reason: crate::reasons::FailureReason,
        message: String,
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

/// Why a message body was refused.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("not a Tender worker message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("unsupported protocol version {0} (this controller speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u32),
}

impl WorkerMessage {
    /// Parses and checks a message body.
    pub fn parse(body: &str) -> Result<Self, MessageError> {
        let message: WorkerMessage = serde_json::from_str(body)?;
        if message.version != PROTOCOL_VERSION {
            return Err(MessageError::UnsupportedVersion(message.version));
        }
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_a_type_tag() {
        let msg = WorkerMessage {
            version: PROTOCOL_VERSION,
            namespace: "ns".into(),
            job_name: "job".into(),
            job_uid: "uid".into(),
            resource: "i-0123456789abcdef0".into(),
            instance_id: "i-00000000000000001".into(),
            attempt: 1,
            sequence: 3,
            event: WorkerEvent::Progress {
                percent: 50,
                detail: "half".into(),
                bytes: Some(ByteProgress {
                    done: 1,
                    total: 2,
                    per_second: 1,
                }),
                session: None,
            },
        };
        let body = serde_json::to_string(&msg).expect("serializes");
        assert!(body.contains(r#""type":"progress""#), "{body}");
        assert_eq!(WorkerMessage::parse(&body).expect("parses"), msg);
    }

    #[test]
    fn the_task_travels_in_a_boot_script() {
        let task = WorkerTask {
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
        };
        let script = task.user_data().expect("renders");
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains(
            "\nExecStart=tender worker --task-file %d/task --instance-id ${INSTANCE_ID}\n"
        ));
        assert!(script.contains("\nLoadCredential=task:/run/tender/task.json\n"));
        for unprivileged in [
            "DynamicUser=yes",
            "AmbientCapabilities=CAP_NET_BIND_SERVICE",
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
            "NoNewPrivileges=yes",
            "PrivateDevices=yes",
        ] {
            assert!(
                script.contains(&format!("\n{unprivileged}\n")),
                "{unprivileged}"
            );
        }
        assert!(script.ends_with("\nexec systemctl start tender-worker.service\n"));
        assert!(script.contains("X-aws-ec2-metadata-token"), "IMDSv2");
        assert_eq!(WorkerTask::from_user_data(&script), Some(task));
        assert_eq!(WorkerTask::from_user_data("#!/bin/sh\necho hi\n"), None);
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
