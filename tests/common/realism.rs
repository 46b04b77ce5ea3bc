//! The test world's realism layer (`scripts/realism`): whether it is on,
//! what it counted, and its IAM plumbing: worker roles bound to the shipped
//! policies, and the credentials EC2 would hand an instance through its
//! profile.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The emulator's own account and the tests' region.
pub const ACCOUNT: &str = "123456789012";
pub const REGION: &str = "us-east-1";

/// Whether the environment runs the realism layer (`scripts/testenv` says
/// so in `TENDER_REALISM`).
pub fn enabled() -> bool {
    std::env::var("TENDER_REALISM").is_ok_and(|v| v != "0")
}

fn endpoint() -> String {
    let url = std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL");
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// One HTTP/1.1 request to the layer's control API: (status, body).
async fn call(method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let host = endpoint();
    let Ok(mut stream) = tokio::net::TcpStream::connect(&host).await else {
        return (0, String::new());
    };
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut answer = String::new();
    if stream.write_all(request.as_bytes()).await.is_err()
        || stream.read_to_string(&mut answer).await.is_err()
    {
        return (0, String::new());
    }
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// What the layer did so far (`GET /realism/`): its settings and counters
/// such as `s3:403-for-missing-key` or `not-found:DescribeSnapshots`.
pub async fn status() -> serde_json::Value {
    let (code, body) = call("GET", "/realism/", None).await;
    assert_eq!(code, 200, "realism status: {body}");
    serde_json::from_str(&body).unwrap()
}

/// A counter of [`status`] (0 when the layer never counted it).
pub async fn counter(name: &str) -> u64 {
    status().await["counters"][name].as_u64().unwrap_or(0)
}

/// Makes DB instance `identifier` (existing, or created later) of the
/// emulator's account a stand-in for a real server: its Endpoint becomes
/// `host:port` and its RDS-managed master secret holds `password`
/// (`POST /realism/rds/backing`). Returns the layer's answer.
#[allow(dead_code)]
pub async fn rds_backing(
    identifier: &str,
    host: &str,
    port: u16,
    password: &str,
) -> serde_json::Value {
    let spec = serde_json::json!({
        "account": ACCOUNT, "region": REGION, "dbInstanceIdentifier": identifier,
        "host": host, "port": port, "password": password,
    });
    let (code, body) = call("POST", "/realism/rds/backing", Some(&spec.to_string())).await;
    assert_eq!(code, 200, "back DB instance {identifier}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Creates (or updates) role `name` of the emulator's account with
/// `policy` inline and an instance profile of the same name holding it, as
/// an administrator would for Tender's workers.
pub async fn ensure_role(name: &str, policy: &serde_json::Value) {
    let spec = serde_json::json!({"name": name, "policy": policy.to_string()});
    let (code, body) = call("POST", "/realism/roles", Some(&spec.to_string())).await;
    assert_eq!(code, 200, "create role {name}: {body}");
}

/// The credentials EC2 gives instance `id` of `account` through its
/// instance profile (a session of the profile's role named after the
/// instance), or None when it has no profile.
pub async fn instance_credentials(
    account: &str,
    region: &str,
    id: &str,
) -> Option<(String, String, String)> {
    let path = format!("/realism/instance-credentials/{id}?account={account}&region={region}");
    let (code, body) = call("GET", &path, None).await;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some((
        v["AccessKeyId"].as_str()?.to_string(),
        v["SecretAccessKey"].as_str()?.to_string(),
        v["Token"].as_str()?.to_string(),
    ))
}

/// The shipped worker policy `file` (iam/) for the test world: the
/// repository's bucket and prefix are any (tests use many buckets; the key
/// layout under them stays enforced), its account is the emulator's.
pub fn worker_policy(file: &str) -> serde_json::Value {
    let text = match file {
        "backup" => include_str!("../../iam/worker-backup-policy.json"),
        "restore" => include_str!("../../iam/worker-restore-policy.json"),
        "file-level" => include_str!("../../iam/worker-file-level-policy.json"),
        "retention" => include_str!("../../iam/worker-retention-policy.json"),
        "verification" => include_str!("../../iam/worker-verification-policy.json"),
        other => panic!("no worker policy {other}"),
    };
    fill(text)
}

/// The shipped controller policy (iam/) for the test world, placeholders
/// filled as for [`worker_policy`].
pub fn controller_policy() -> serde_json::Value {
    fill(include_str!("../../iam/controller-policy.json"))
}

fn fill(text: &str) -> serde_json::Value {
    let text = text
        .replace("REPOSITORY_BUCKET", "*")
        .replace("REPOSITORY_PREFIX", "")
        .replace("REPOSITORY_ACCOUNT", ACCOUNT)
        .replace("INTEGRITY_KEY_ID", "*");
    serde_json::from_str(&text).expect("a shipped policy is JSON")
}

/// Registers (or changes) the SSM Agent of instance `id`: `platform`
/// `Linux` or `Windows`, `ping` `Online`, `ConnectionLost` or `Gone`
/// (unregistered).
pub async fn ssm_agent(id: &str, platform: &str, ping: &str) {
    let spec = serde_json::json!({
        "account": ACCOUNT, "region": REGION, "instanceId": id,
        "platform": platform, "ping": ping,
    });
    let (code, body) = call("POST", "/realism/ssm/agents", Some(&spec.to_string())).await;
    assert_eq!(code, 200, "register the SSM Agent of {id}: {body}");
}

/// What the agent of instance `id` picks up: each pending invocation's
/// `commandId`, `documentName` and `parameters`, now in progress.
pub async fn ssm_deliver(id: &str) -> Vec<serde_json::Value> {
    let path = format!("/realism/ssm/deliver?account={ACCOUNT}&region={REGION}&instanceId={id}");
    let (code, body) = call("GET", &path, None).await;
    assert_eq!(code, 200, "deliver commands to {id}: {body}");
    serde_json::from_str(&body).expect("a list of invocations")
}

/// Ends the invocation of `command` on `id` as its agent would report it.
pub async fn ssm_finish(
    command: &str,
    id: &str,
    status: &str,
    code: i32,
    stdout: &str,
    stderr: &str,
) {
    let result = serde_json::json!({
        "status": status, "responseCode": code, "stdout": stdout, "stderr": stderr,
    });
    let path = format!("/realism/ssm/invocations/{command}/{id}");
    let (answer, body) = call("POST", &path, Some(&result.to_string())).await;
    assert_eq!(answer, 200, "finish {command} on {id}: {body}");
}

/// Runs `script` (a Run Command `commands` value) with `sh` as the SSM
/// Agent of an instance would, where `disk` stands for the filesystem
/// with UUID `uuid` on EBS volume `volume` (`findmnt` and `lsblk` there
/// say so); what the agent reports: status, exit code, output, errors.
pub fn run_as_agent(
    script: &str,
    disk: &std::path::Path,
    uuid: &str,
    volume: &str,
) -> (String, i32, String, String) {
    use std::os::unix::fs::PermissionsExt;
    let machine = disk
        .parent()
        .expect("the disk's folder is in the instance's");
    let bin = machine.join("bin");
    tender::controller::original_location::stand_ins(&bin, disk, uuid, volume)
        .expect("findmnt and lsblk");
    std::fs::set_permissions(machine, std::fs::Permissions::from_mode(0o755))
        .expect("open the instance's folder to its users");
    std::fs::write(machine.join("script.sh"), script).expect("write the script");
    let ran = std::process::Command::new("sh")
        .arg(machine.join("script.sh"))
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .current_dir("/")
        .output()
        .expect("run the command");
    let code = ran.status.code().unwrap_or(-1);
    let status = if code == 0 { "Success" } else { "Failed" };
    (
        status.to_string(),
        code,
        String::from_utf8_lossy(&ran.stdout).into_owned(),
        String::from_utf8_lossy(&ran.stderr).into_owned(),
    )
}
