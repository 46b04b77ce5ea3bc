//! A worker instance's user data: the shell script that cloud-init runs
//! once at first boot on a stock image. It writes the worker's task, reads
//! the instance ID through IMDSv2, fetches the worker agent through the
//! presigned URL the controller made (unless the image already carries
//! `tender` at the controller's version), refuses it unless its SHA-256 is
//! the one given, and starts it unprivileged: as a systemd service with a
//! dynamic user where the image has systemd, else as UID 65532 through
//! `setpriv`. Everything it prints goes to the instance's console, which the
//! controller reads (GetConsoleOutput) when a worker does not start in
//! time. The README's "What the user data does" walks through it.

use crate::messages::WorkerTask;

/// EC2's limit on user data, before base64 ("Work with instance user data",
/// EC2 User Guide).
pub const USER_DATA_LIMIT: usize = 16 * 1024;

/// Markers around the task in a worker's user data.
pub(crate) const TASK_BEGIN: &str = "cat > /run/tender/task.json <<'TENDER_TASK'\n";
pub(crate) const TASK_END: &str = "\nTENDER_TASK\n";

/// Where a worker gets its agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentDownload {
    /// A presigned GET URL of the compressed agent (gzip).
    pub url: String,
    /// SHA-256 of what the URL serves, hex.
    pub sha256: String,
}

/// The systemd unit the agent runs in (`$AGENT` and `$INSTANCE_ID` are
/// filled in by the script's shell): an unprivileged user of its own
/// (`DynamicUser`) whose one capability is binding port 443 (the
/// file-level browser). The agent needs no more: it reads disks through
/// the EBS direct APIs and restore points from S3, never a block device, so
/// it gets none (`PrivateDevices`); the task (root's, mode 0600) reaches it
/// as a systemd credential. Its logs go to the journal. Garbage
/// collection spills chunk hashes to its cache directory
/// (`/var/cache/tender-worker`, on the root volume), not to `/tmp`, which
/// is memory on many images (a tmpfs on Amazon Linux 2023).
const WORKER_UNIT: &str = "[Unit]
Description=Tender worker agent
Wants=network-online.target
After=network-online.target
[Service]
Type=exec
ExecStart=${AGENT} worker --task-file %d/task --instance-id ${INSTANCE_ID}
LoadCredential=task:/run/tender/task.json
DynamicUser=yes
AmbientCapabilities=CAP_NET_BIND_SERVICE
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
NoNewPrivileges=yes
UMask=0077
PrivateDevices=yes
ProtectSystem=strict
ProtectHome=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
CacheDirectory=tender-worker
";

/// The script; `@TASK@`, `@VERSION@`, `@SHA256@`, `@URL@` and `@UNIT@` are
/// filled in by [`render`].
const SCRIPT: &str = r#"#!/bin/sh
# Tender worker bootstrap, run once at first boot. It fetches the worker
# agent, checks its SHA-256 and runs it with this task as an unprivileged
# user whose one capability is binding port 443. What it prints is the
# instance's console output, which Tender shows when a worker does not
# start in time.
set -eu
umask 077
say() { echo "tender-boot: $*"; }
fail() { echo "tender-boot: error: $*"; exit 1; }
mkdir -p /run/tender
@TASK@# The instance ID, through IMDSv2 (AWS_EC2_METADATA_SERVICE_ENDPOINT
# overrides the address, as it does for the AWS SDKs).
IMDS=${AWS_EC2_METADATA_SERVICE_ENDPOINT:-http://169.254.169.254}
IMDS=${IMDS%/}
TOKEN=$(curl -fsS --retry 5 --retry-connrefused --max-time 10 -X PUT "$IMDS/latest/api/token" -H 'X-aws-ec2-metadata-token-ttl-seconds: 300') || fail "cannot reach the instance metadata service at $IMDS"
INSTANCE_ID=$(curl -fsS --retry 5 --max-time 10 -H "X-aws-ec2-metadata-token: $TOKEN" "$IMDS/latest/meta-data/instance-id") || fail "cannot read the instance ID from $IMDS"
case "$INSTANCE_ID" in i-[0-9a-f]*) ;; *) fail "not an instance ID: $INSTANCE_ID" ;; esac
say "instance $INSTANCE_ID, task for tender @VERSION@"
VERSION='@VERSION@'
SHA256='@SHA256@'
URL='@URL@'
if command -v tender >/dev/null 2>&1 && [ "$(tender --version 2>/dev/null)" = "tender $VERSION" ]; then
  AGENT=$(command -v tender)
  say "the image carries tender $VERSION ($AGENT): no download"
elif [ -z "$URL" ]; then
  fail "this image has no tender $VERSION and the controller has no $(uname -m) agent to download: set the WorkerConfiguration's architecture, or use an image that carries tender $VERSION"
else
  mkdir -p -m 0755 /var/lib/tender
  say "downloading the worker agent (SHA-256 $SHA256)"
  curl -fsS --retry 3 --retry-connrefused --connect-timeout 10 --max-time 600 -o /var/lib/tender/agent.gz "$URL" || fail "cannot download the worker agent from ${URL%%\?*} (curl exit $?): check that the workers' subnets route to S3 (internet gateway, NAT gateway or S3 VPC endpoint) and that the URL has not expired"
  GOT=$(sha256sum /var/lib/tender/agent.gz | cut -d' ' -f1)
  if [ "$GOT" != "$SHA256" ]; then
    rm -f /var/lib/tender/agent.gz
    fail "digest mismatch: the downloaded agent's SHA-256 is $GOT, expected $SHA256; refusing to run it"
  fi
  say "SHA-256 verified: $(wc -c </var/lib/tender/agent.gz) bytes"
  gzip -dc /var/lib/tender/agent.gz >/var/lib/tender/tender.new || fail "cannot unpack the worker agent"
  rm -f /var/lib/tender/agent.gz
  chmod 0755 /var/lib/tender/tender.new
  mv /var/lib/tender/tender.new /var/lib/tender/tender
  AGENT=/var/lib/tender/tender
fi
@DATABASE@RUNS=$("$AGENT" --version 2>&1) || fail "the worker agent does not run on this image ($(uname -m)): $RUNS"
say "starting $RUNS"
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  cat >/run/systemd/system/tender-worker.service <<TENDER_UNIT
@UNIT@TENDER_UNIT
  systemctl daemon-reload
  systemctl start tender-worker.service || fail "the tender-worker service did not start: journalctl -u tender-worker"
  say "started tender-worker.service (its logs: journalctl -u tender-worker)"
else
  say "no systemd: running the agent as UID 65532 with CAP_NET_BIND_SERVICE only"
  chown 65532:65532 /run/tender /run/tender/task.json
  exec setpriv --reuid=65532 --regid=65532 --clear-groups --inh-caps=-all,+net_bind_service --ambient-caps=-all,+net_bind_service --bounding-set=-all,+net_bind_service --no-new-privs "$AGENT" worker --task-file /run/tender/task.json --instance-id "$INSTANCE_ID"
fi
"#;

/// What a PostgreSQL dump's worker needs before its agent starts; `@MAJOR@`
/// and `@CA_URL@` are filled in by [`render`]: a client at least as new as
/// the server (`pg_dump` refuses a newer server), installed with dnf on a
/// stock Amazon Linux image (its `postgresql<major>` packages), and the
/// certificate authorities that sign RDS's certificates, which the agent
/// verifies the server against (`sslmode=verify-full`).
const DATABASE: &str = r#"PG_MAJOR='@MAJOR@'
CA_URL='@CA_URL@'
pg_major() { pg_dump --version 2>/dev/null | sed -n 's/^pg_dump (PostgreSQL) \([0-9]*\).*/\1/p'; }
HAVE=$(pg_major || true)
if [ -z "$HAVE" ] || [ "$HAVE" -lt "$PG_MAJOR" ]; then
  if command -v dnf >/dev/null 2>&1; then
    # The newest client first: pg_dump reads older servers, and Amazon
    # Linux 2023 packages only recent majors (postgresql15 and up).
    for v in 17 16 15 "$PG_MAJOR"; do
      [ "$v" -ge "$PG_MAJOR" ] || continue
      say "installing the PostgreSQL $v client with dnf"
      dnf install -y -q --allowerasing "postgresql$v" >/dev/null 2>&1 && break
    done
    HAVE=$(pg_major || true)
  fi
  [ -n "$HAVE" ] && [ "$HAVE" -ge "$PG_MAJOR" ] || fail "this image has no pg_dump $PG_MAJOR or newer (found: ${HAVE:-none}) and dnf could not install one: check that the workers' subnets reach the image's package repository, or use an image that carries the PostgreSQL $PG_MAJOR client or newer"
fi
say "PostgreSQL client: $(pg_dump --version)"
mkdir -p -m 0755 /var/lib/tender
curl -fsS --retry 3 --retry-connrefused --connect-timeout 10 --max-time 120 -o /var/lib/tender/rds-ca.pem.new "$CA_URL" || fail "cannot download the RDS certificate authorities from $CA_URL (curl exit $?): check that the workers' subnets reach it, or set the controller's TENDER_RDS_CA_BUNDLE_URL to a copy they can reach"
grep -q 'BEGIN CERTIFICATE' /var/lib/tender/rds-ca.pem.new || fail "$CA_URL served no PEM certificates"
chmod 0644 /var/lib/tender/rds-ca.pem.new
mv /var/lib/tender/rds-ca.pem.new /var/lib/tender/rds-ca.pem
"#;

/// Where the user data puts the RDS certificate authorities for the agent.
pub const RDS_CA_FILE: &str = "/var/lib/tender/rds-ca.pem";

/// Why a user data could not be made.
#[derive(Debug, thiserror::Error)]
pub enum UserDataError {
    #[error("cannot serialize the worker task: {0}")]
    Task(#[from] serde_json::Error),
    #[error("the agent URL or digest would break the user data script")]
    UnsafeDownload,
    #[error(
        "the database's engine version {0:?} or CA bundle URL would break the user data script"
    )]
    UnsafeDatabase(String),
    #[error("the user data is {0} bytes, more than EC2's 16 KiB")]
    TooLarge(usize),
}

/// The user data of a worker with this task: it downloads the agent from
/// `agent`, or (without one) runs the image's own `tender`.
pub fn render(task: &WorkerTask, agent: Option<&AgentDownload>) -> Result<String, UserDataError> {
    let json = serde_json::to_string(task)?;
    let (url, sha256) = agent.map_or(("", ""), |a| (a.url.as_str(), a.sha256.as_str()));
    // Both go between single quotes: a presigned URL is percent-encoded and
    // a digest is hex, but nothing is assumed.
    let safe = |s: &str| !s.contains(['\'', '\n', '\r', '\\']);
    if !safe(url) || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(UserDataError::UnsafeDownload);
    }
    let database = match &task.database {
        Some(db) => {
            let major = db.engine_version.split('.').next().unwrap_or_default();
            let digits =
                !major.is_empty() && major.len() <= 3 && major.chars().all(|c| c.is_ascii_digit());
            // The bundle decides whom the worker gives the master
            // password to: fetched over TLS (or from the image) only.
            let trusted_scheme = db.ca_bundle_url.starts_with("https://")
                || db.ca_bundle_url.starts_with("file:///");
            if !digits
                || !trusted_scheme
                || !safe(&db.ca_bundle_url)
                || db.ca_bundle_url.contains('$')
            {
                return Err(UserDataError::UnsafeDatabase(format!(
                    "{} / {}",
                    db.engine_version, db.ca_bundle_url
                )));
            }
            DATABASE
                .replace("@MAJOR@", major)
                .replace("@CA_URL@", &db.ca_bundle_url)
        }
        None => String::new(),
    };
    // The task last: nothing in it is taken for a placeholder.
    let script = SCRIPT
        .replace("@VERSION@", env!("CARGO_PKG_VERSION"))
        .replace("@SHA256@", sha256)
        .replace("@URL@", url)
        .replace("@UNIT@", WORKER_UNIT)
        .replace("@DATABASE@", &database)
        .replace("@TASK@", &format!("{TASK_BEGIN}{json}{TASK_END}"));
    if script.len() > USER_DATA_LIMIT {
        return Err(UserDataError::TooLarge(script.len()));
    }
    Ok(script)
}

/// The task inside a worker's user data, as [`render`] wrote it.
pub fn task_of(user_data: &str) -> Option<WorkerTask> {
    let start = user_data.find(TASK_BEGIN)? + TASK_BEGIN.len();
    let len = user_data[start..].find(TASK_END)?;
    serde_json::from_str(&user_data[start..start + len]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn download() -> AgentDownload {
        AgentDownload {
            url: "https://bucket.s3.us-east-1.amazonaws.com/p/.tender-agents/sha256/ab.gz?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=00".into(),
            sha256: "ab".repeat(32),
        }
    }

    #[test]
    fn the_script_downloads_checks_and_starts_the_agent_unprivileged() {
        let task = WorkerTask::sample();
        let script = render(&task, Some(&download())).unwrap();
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains(&format!("\nSHA256='{}'\n", "ab".repeat(32))));
        assert!(script.contains("\nURL='https://bucket.s3.us-east-1.amazonaws.com/"));
        assert!(
            script.contains("[ \"$GOT\" != \"$SHA256\" ]"),
            "digest check"
        );
        assert!(script.contains(
            "\nExecStart=${AGENT} worker --task-file %d/task --instance-id ${INSTANCE_ID}\n"
        ));
        for unprivileged in [
            "DynamicUser=yes",
            "AmbientCapabilities=CAP_NET_BIND_SERVICE",
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
            "NoNewPrivileges=yes",
            "PrivateDevices=yes",
            "LoadCredential=task:/run/tender/task.json",
            "CacheDirectory=tender-worker",
        ] {
            assert!(
                script.contains(&format!("\n{unprivileged}\n")),
                "{unprivileged}"
            );
        }
        assert!(script.contains("--bounding-set=-all,+net_bind_service --no-new-privs"));
        assert!(script.contains("X-aws-ec2-metadata-token"), "IMDSv2");
        assert!(!script.contains('@'), "every placeholder is filled in");
        assert_eq!(task_of(&script), Some(task.clone()));
        assert_eq!(task_of("#!/bin/sh\necho hi\n"), None);
        // Without an agent to download, the image's own tender runs.
        let own = render(&task, None).unwrap();
        assert!(own.contains("\nURL=''\n"));
        assert_eq!(task_of(&own), Some(task));
    }

    #[test]
    fn nothing_can_break_out_of_the_quotes_and_the_size_is_checked() {
        let task = WorkerTask::sample();
        let mut bad = download();
        bad.url.push_str("'; rm -rf / #");
        assert!(matches!(
            render(&task, Some(&bad)),
            Err(UserDataError::UnsafeDownload)
        ));
        let mut bad = download();
        bad.sha256 = "$(reboot)".into();
        assert!(matches!(
            render(&task, Some(&bad)),
            Err(UserDataError::UnsafeDownload)
        ));
        let mut big = download();
        big.url.push_str(&"a".repeat(USER_DATA_LIMIT));
        assert!(matches!(
            render(&task, Some(&big)),
            Err(UserDataError::TooLarge(_))
        ));
    }

    /// The unit the script writes is one systemd accepts as it is, every
    /// directive known (`systemd-analyze verify`, which only warns about an
    /// unknown key: any output fails). Amazon Linux 2023 runs systemd 252,
    /// as Debian 12 does.
    #[cfg(target_os = "linux")]
    #[test]
    fn systemd_accepts_the_unit() {
        let script = render(&WorkerTask::sample(), Some(&download())).unwrap();
        let start = script.find("<<TENDER_UNIT\n").unwrap() + "<<TENDER_UNIT\n".len();
        let len = script[start..].find("TENDER_UNIT\n").unwrap();
        let unit = script[start..start + len]
            .replace("${AGENT}", "/bin/true")
            .replace("${INSTANCE_ID}", "i-0123456789abcdef0");
        let dir = std::env::temp_dir().join(format!("tender-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tender-worker.service");
        std::fs::write(&path, &unit).unwrap();
        let out = std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .expect("systemd-analyze (Debian's systemd package) checks the worker unit");
        std::fs::remove_dir_all(&dir).unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "{said}\n{unit}"
        );
    }

    /// The script is valid POSIX shell (`sh -n`), with and without an
    /// agent to download.
    #[test]
    fn the_script_parses() {
        let task = WorkerTask::sample();
        for agent in [Some(download()), None] {
            let script = render(&task, agent.as_ref()).unwrap();
            let out = std::process::Command::new("sh")
                .args(["-n", "-c", &script])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    fn dump_task(engine_version: &str, ca: &str) -> WorkerTask {
        WorkerTask {
            resource: "rds-pg-orders".into(),
            database: Some(crate::messages::DatabaseTask {
                db_instance_id: "orders".into(),
                host: "orders.abc.eu-west-1.rds.amazonaws.com".into(),
                port: 5432,
                user: "master".into(),
                secret_arn: "arn:aws:secretsmanager:eu-west-1:1:secret:rds!db-1".into(),
                engine_version: engine_version.into(),
                sslmode: "verify-full".into(),
                ca_bundle_url: ca.into(),
                databases: Vec::new(),
                image: Default::default(),
            }),
            ..WorkerTask::sample()
        }
    }

    #[test]
    fn a_dumps_script_gets_a_new_enough_client_and_the_ca_bundle_before_the_agent() {
        let ca = "https://truststore.pki.rds.amazonaws.com/eu-west-1/eu-west-1-bundle.pem";
        let script = render(&dump_task("16.4", ca), Some(&download())).unwrap();
        assert!(script.contains("\nPG_MAJOR='16'\n"), "{script}");
        assert!(script.contains(&format!("\nCA_URL='{ca}'\n")));
        assert!(script.contains("dnf install -y -q --allowerasing \"postgresql$v\""));
        assert!(script.contains("mv /var/lib/tender/rds-ca.pem.new /var/lib/tender/rds-ca.pem"));
        assert!(!script.contains("@MAJOR@") && !script.contains("@DATABASE@"));
        let client = script.find("PG_MAJOR=").unwrap();
        assert!(
            client < script.find("RUNS=").unwrap(),
            "before the agent runs"
        );
        // The secret's password is never in it: only the secret's ARN.
        assert!(script.contains("rds!db-1") && !script.contains("password"));
        // No database, no block.
        let plain = render(&WorkerTask::sample(), Some(&download())).unwrap();
        assert!(!plain.contains("PG_MAJOR"));
        // What would break out of the quotes is refused.
        for (version, url) in [
            ("16'; reboot; '", ca),
            ("", ca),
            ("16.4", "https://example.com/x' ; reboot"),
            ("16.4", "https://example.com/$(reboot)"),
            ("16.4", "http://truststore.pki.rds.amazonaws.com/x.pem"),
        ] {
            assert!(
                matches!(
                    render(&dump_task(version, url), None),
                    Err(UserDataError::UnsafeDatabase(_))
                ),
                "{version} {url}"
            );
        }
    }
}
