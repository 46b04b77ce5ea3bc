//! A proxy between a mover and the emulator that plays the EBS direct
//! APIs' per-snapshot throttling on chosen blocks: every request to a
//! block whose index is a multiple of `every` is answered 400
//! `RequestThrottledException` (as EBS answers one over its quota) its first
//! `times` times, per snapshot, index and method; a block index set in
//! `broken` is answered `ValidationException` (which no retry fixes) for as
//! long as it is set. Everything else goes to the emulator as it is.

use super::proxy::read_request;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
pub struct Tally {
    /// Throttling answers given.
    pub throttled: AtomicUsize,
    /// Block requests (GET or PUT) that reached the emulator.
    pub gets_forwarded: AtomicUsize,
    pub puts_forwarded: AtomicUsize,
    /// How often each (method, snapshot, index) was throttled so far.
    seen: Mutex<BTreeMap<(String, String, i32), usize>>,
    /// Block indexes that fail with a ValidationException.
    pub broken: Mutex<BTreeSet<i32>>,
}

pub struct Throttle {
    pub endpoint: String,
    pub tally: Arc<Tally>,
}

/// `(method, snapshot, index)` of a GetSnapshotBlock or PutSnapshotBlock.
fn block_request(head: &str) -> Option<(String, String, i32)> {
    let line = head.lines().next()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.split('?').next()?;
    let rest = path.strip_prefix("/snapshots/")?;
    let (snapshot, index) = rest.split_once("/blocks/")?;
    let index = index.parse().ok()?;
    (method == "GET" || method == "PUT").then(|| (method, snapshot.to_string(), index))
}

pub async fn start(every: i32, times: usize) -> Throttle {
    let upstream = std::env::var("AWS_ENDPOINT_URL")
        .expect("AWS_ENDPOINT_URL")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let tally = Arc::new(Tally::default());
    let shared = tally.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(serve(
                client,
                upstream.clone(),
                shared.clone(),
                (every, times),
            ));
        }
    });
    Throttle { endpoint, tally }
}

async fn serve(
    mut client: TcpStream,
    upstream: String,
    tally: Arc<Tally>,
    (every, times): (i32, usize),
) {
    let Some(request) = read_request(&mut client).await else {
        return;
    };
    let end = request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&request[..end]).to_string();
    if let Some(key) = block_request(&head) {
        let broken = tally.broken.lock().unwrap().contains(&key.2);
        let throttle = !broken && key.2 % every == 0 && {
            let mut seen = tally.seen.lock().unwrap();
            let n = seen.entry(key.clone()).or_default();
            *n += 1;
            *n <= times
        };
        if broken || throttle {
            let kind = if broken {
                "ValidationException"
            } else {
                "RequestThrottledException"
            };
            if throttle {
                tally.throttled.fetch_add(1, Ordering::SeqCst);
            }
            let body = format!(r#"{{"message":"injected {kind}"}}"#);
            let answer = format!(
                "HTTP/1.1 400 Bad Request\r\nx-amzn-ErrorType: {kind}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = client.write_all(answer.as_bytes()).await;
            return;
        }
        let forwarded = if key.0 == "GET" {
            &tally.gets_forwarded
        } else {
            &tally.puts_forwarded
        };
        forwarded.fetch_add(1, Ordering::SeqCst);
    }
    let Ok(mut server) = TcpStream::connect(&upstream).await else {
        return;
    };
    if server.write_all(&force_close(&request)).await.is_err() {
        return;
    }
    let mut response = Vec::new();
    let _ = server.read_to_end(&mut response).await;
    let _ = client.write_all(&response).await;
}

/// The request with `Connection: close`, so one connection carries one
/// request and the response ends where the stream does.
fn force_close(request: &[u8]) -> Vec<u8> {
    let end = request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&request[..end]);
    let mut out: String = head
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect::<Vec<_>>()
        .join("\r\n");
    out.push_str("\r\nConnection: close\r\n\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&request[end + 4..]);
    bytes
}
