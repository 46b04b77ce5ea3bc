//! A stricter EC2 in front of the emulator, for one controller: it plays
//! two documented AWS behaviours that moto skips, and records what the
//! controller asked.
//!
//! - Eventual consistency: DescribeSnapshots by ID answers
//!   `InvalidSnapshot.NotFound` for `hidden` after it first hears of a
//!   snapshot (AWS: "Eventual consistency in the Amazon EC2 API").
//! - Sealing takes time: for `pending` after that, the snapshot reads
//!   `pending` at 40%, and CreateVolume and RegisterImage refuse it with
//!   `IncorrectState` (as AWS does until a snapshot is `completed`).
//!
//! Every EC2 Query request's parameters are kept ([`StrictEc2::requests`]),
//! so a test can check what RegisterImage was asked (moto stores neither
//! its architecture nor its boot mode nor its mappings).

use super::proxy::read_request as read_message;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One EC2 Query request: its parameters, in order.
pub type Params = Vec<(String, String)>;

/// The proxy: where it listens, and what it saw.
#[derive(Clone)]
pub struct StrictEc2 {
    pub endpoint: String,
    requests: Arc<Mutex<Vec<Params>>>,
    world: Arc<World>,
}

impl StrictEc2 {
    /// Treats `snapshot` as created long ago: visible and completed (a
    /// protected disk the test made before Tender looks at it).
    pub fn settled(&self, snapshot: &str) {
        let long_ago = Instant::now()
            .checked_sub(self.world.hidden + self.world.pending)
            .unwrap_or_else(Instant::now);
        self.world
            .first_heard
            .lock()
            .unwrap()
            .insert(snapshot.to_string(), long_ago);
    }

    /// The parameters of every request of `action` so far.
    pub fn requests(&self, action: &str) -> Vec<HashMap<String, String>> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.iter().any(|(k, v)| k == "Action" && v == action))
            .map(|p| p.iter().cloned().collect())
            .collect()
    }
}

struct World {
    upstream: String,
    hidden: Duration,
    pending: Duration,
    first_heard: Mutex<HashMap<String, Instant>>,
    requests: Arc<Mutex<Vec<Params>>>,
}

impl World {
    /// How long ago the proxy first heard of `snapshot` (now, if never).
    fn age(&self, snapshot: &str) -> Duration {
        let mut heard = self.first_heard.lock().unwrap();
        heard
            .entry(snapshot.to_string())
            .or_insert_with(Instant::now)
            .elapsed()
    }

    fn sealing(&self, snapshot: &str) -> bool {
        self.age(snapshot) < self.hidden + self.pending
    }
}

/// Starts the proxy in front of `upstream` (`host:port`).
pub async fn strict_ec2(upstream: &str, hidden: Duration, pending: Duration) -> StrictEc2 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let world = Arc::new(World {
        upstream: upstream.trim_start_matches("http://").to_string(),
        hidden,
        pending,
        first_heard: Mutex::default(),
        requests: requests.clone(),
    });
    let served = world.clone();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(serve(client, served.clone()));
        }
    });
    StrictEc2 {
        endpoint: format!("http://127.0.0.1:{port}"),
        requests,
        world,
    }
}

async fn serve(mut client: TcpStream, world: Arc<World>) {
    let Some(request) = read_message(&mut client).await else {
        return;
    };
    let (head, body) = split(&request);
    let params: Params = if head.to_ascii_lowercase().contains("x-www-form-urlencoded") {
        url::form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    } else {
        Vec::new()
    };
    let action = params
        .iter()
        .find(|(k, _)| k == "Action")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    if !params.is_empty() {
        world.requests.lock().unwrap().push(params.clone());
    }
    let named = |suffix: &str| -> Vec<String> {
        params
            .iter()
            .filter(|(k, _)| {
                k == suffix
                    || k.ends_with(&format!(".{suffix}"))
                    || k.starts_with(&format!("{suffix}."))
            })
            .map(|(_, v)| v.clone())
            .collect()
    };
    let snapshots = named("SnapshotId");
    if action == "DescribeSnapshots"
        && let Some(id) = snapshots.iter().find(|id| world.age(id) < world.hidden)
    {
        let message = format!("The snapshot '{id}' does not exist.");
        return answer(&mut client, "InvalidSnapshot.NotFound", &message).await;
    }
    if matches!(action.as_str(), "CreateVolume" | "RegisterImage")
        && let Some(id) = snapshots.iter().find(|id| world.sealing(id))
    {
        let message = format!("Snapshot '{id}' is not 'completed'.");
        return answer(&mut client, "IncorrectState", &message).await;
    }
    let Ok(mut server) = TcpStream::connect(&world.upstream).await else {
        return;
    };
    if server.write_all(&force_close(&request)).await.is_err() {
        return;
    }
    let mut response = Vec::new();
    let _ = server.read_to_end(&mut response).await;
    if action == "DescribeSnapshots" {
        response = still_sealing(&response, &world);
    }
    let _ = client.write_all(&response).await;
}

/// The response with every snapshot still sealing shown `pending` at 40%.
fn still_sealing(response: &[u8], world: &World) -> Vec<u8> {
    let (head, body) = split(response);
    let body = String::from_utf8_lossy(body);
    let mut items = body.split("<item>");
    let mut out = items.next().unwrap_or_default().to_string();
    for item in items {
        out.push_str("<item>");
        let id = item
            .split("<snapshotId>")
            .nth(1)
            .and_then(|rest| rest.split("</snapshotId>").next())
            .unwrap_or_default();
        let known = world.first_heard.lock().unwrap().contains_key(id);
        if known && world.sealing(id) {
            out.push_str(
                &item
                    .replace("<status>completed</status>", "<status>pending</status>")
                    .replace("<progress>100%</progress>", "<progress>40%</progress>"),
            );
        } else {
            out.push_str(item);
        }
    }
    let head: String = head
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("content-length:"))
        .collect::<Vec<_>>()
        .join("\r\n");
    let mut bytes = format!("{head}\r\nContent-Length: {}\r\n\r\n", out.len()).into_bytes();
    bytes.extend_from_slice(out.as_bytes());
    bytes
}

async fn answer(client: &mut TcpStream, code: &str, message: &str) {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>strict</RequestID></Response>"
    );
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(response.as_bytes()).await;
}

fn split(message: &[u8]) -> (String, &[u8]) {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(message.len().saturating_sub(4));
    (
        String::from_utf8_lossy(&message[..end]).to_string(),
        message.get(end + 4..).unwrap_or_default(),
    )
}

/// The request with `Connection: close`, so the upstream ends the response.
fn force_close(request: &[u8]) -> Vec<u8> {
    let (head, body) = split(request);
    let mut out: String = head
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect::<Vec<_>>()
        .join("\r\n");
    out.push_str("\r\nConnection: close\r\n\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}
