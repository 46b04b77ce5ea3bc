//! The browser's real server (TLS, hyper, the router, the accept loop),
//! started in-process on loopback and attacked the ways issue #13 names;
//! each test is one attack, refused.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::certificate::testing::validity;
use super::certificate::{MAX_SESSION_LIFE, colon_hex};
use super::connections::MAX_PENDING;
use super::disk::Volume;
use super::disk::testing::{Image, image_owned};
use super::session::{HEAD_DEADLINE, SessionConfig, serve_volume};

const TOKEN: &str = "the-session-token";
/// Not root: the owner the files have on the restored disk.
const OWNER: u32 = 1234;

/// A session serving a small disk, stopped when dropped.
struct Server {
    addr: SocketAddr,
    certificate_sha256: String,
    volume: Arc<Image>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start() -> Server {
    let volume = Arc::new(image_owned(
        &[
            ("docs/run.sh", b"#!/bin/sh\nid\n", 0o4755),
            ("docs/shared/group.bin", b"g", 0o2775),
            ("docs/tmp/sticky", b"", 0o1777),
            ("hello.txt", b"hi\n", 0o644),
        ],
        Some((OWNER, OWNER)),
    ));
    let config = SessionConfig {
        listen: "127.0.0.1:0".into(),
        advertise_host: "127.0.0.1".into(),
        token_sha256: hex::encode(Sha256::digest(TOKEN)),
        idle_timeout: Duration::from_secs(600),
        max_life: MAX_SESSION_LIFE,
        restore_to: None,
        original_location: None,
    };
    let (up_tx, up_rx) = tokio::sync::oneshot::channel();
    let served: Arc<dyn Volume> = volume.clone();
    let task = tokio::spawn(async move {
        let ready = |session| async move {
            let _ = up_tx.send(session);
        };
        serve_volume(served, (None, None), config, ready)
            .await
            .unwrap();
    });
    let session = up_rx.await.unwrap();
    let port = session
        .url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap();
    Server {
        addr: SocketAddr::from(([127, 0, 0, 1], port.parse().unwrap())),
        certificate_sha256: session.certificate_sha256,
        volume,
        task,
    }
}

/// Accepts the session's certificate by its SHA-256 (as the RestoreJob's
/// status names it) and keeps it.
#[derive(Debug)]
struct Pinned {
    sha256: String,
    seen: Mutex<Option<Vec<u8>>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Some(end_entity.to_vec());
        if colon_hex(&Sha256::digest(end_entity)) == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "not the session's certificate".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS connection to the session, and the certificate it showed.
async fn connect(server: &Server) -> (TlsStream<TcpStream>, Arc<Pinned>) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let pinned = Arc::new(Pinned {
        sha256: server.certificate_sha256.clone(),
        seen: Mutex::new(None),
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(pinned.clone())
        .with_no_client_auth();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    (tls, pinned)
}

/// An answer: status, head (lower-case header names), body (de-chunked).
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn parse(raw: &[u8]) -> Reply {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(raw)));
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap()[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut reply = Reply {
            status,
            headers,
            body: raw[end + 4..].to_vec(),
        };
        if reply.header("transfer-encoding") == Some("chunked") {
            reply.body = dechunk(&reply.body);
        }
        reply
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..line]).unwrap(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[line + 2..line + 2 + size]);
        raw = &raw[line + 2 + size + 2..];
    }
}

/// Reads until the server closes (a TLS close without `close_notify`
/// counts too), or only the head when `head_only`.
async fn read_reply(stream: &mut (impl AsyncRead + Unpin), head_only: bool) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return raw,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
        if head_only && raw.windows(4).any(|w| w == b"\r\n\r\n") {
            return raw;
        }
    }
}

/// Sends `head` (its lines, without the request's Host) and `body`, and
/// reads the answer (only its head when `head_only`).
async fn exchange(server: &Server, head: &str, body: &[u8], head_only: bool) -> Reply {
    let (mut tls, _) = connect(server).await;
    let (request_line, rest) = head.split_once("\r\n").unwrap_or((head, ""));
    let head = format!("{request_line}\r\nHost: {}\r\n{rest}\r\n", server.addr);
    tls.write_all(head.as_bytes()).await.unwrap();
    // The server may answer, and close, before all of it is sent.
    let _ = tls.write_all(body).await;
    let _ = tls.flush().await;
    let raw = tokio::time::timeout(Duration::from_secs(10), read_reply(&mut tls, head_only))
        .await
        .expect("an answer within 10 s");
    Reply::parse(&raw)
}

async fn get(server: &Server, path: &str, headers: &str) -> Reply {
    exchange(
        server,
        &format!("GET {path} HTTP/1.1\r\n{headers}"),
        b"",
        false,
    )
    .await
}

fn bearer() -> String {
    format!("Authorization: Bearer {TOKEN}\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_head_is_cut_off_at_the_deadline() {
    let server = start().await;
    let (tls, _) = connect(&server).await;
    let connected = Instant::now();
    let (mut from_server, mut to_server) = tokio::io::split(tls);
    // One byte a second: the head would take over a minute.
    let head = format!(
        "GET /browse/ HTTP/1.1\r\nHost: {}\r\n{}\r\n",
        server.addr,
        bearer()
    );
    let dripping = tokio::spawn(async move {
        let mut sent = 0usize;
        for byte in head.bytes() {
            if to_server.write_all(&[byte]).await.is_err() || to_server.flush().await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        sent
    });
    let answer = tokio::time::timeout(
        HEAD_DEADLINE + Duration::from_secs(5),
        read_reply(&mut from_server, false),
    )
    .await
    .expect("the server closed the connection");
    let closed_after = connected.elapsed();
    dripping.abort();
    assert!(
        !String::from_utf8_lossy(&answer).contains(" 200 "),
        "{answer:?}"
    );
    assert!(
        closed_after <= HEAD_DEADLINE + Duration::from_secs(1),
        "closed after {closed_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_post_is_refused_before_its_body_is_read() {
    let server = start().await;
    // Declares a GiB, sends 64 KiB of it: every answer below comes while
    // the client is still far from done, so no body was waited for.
    let declared =
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1073741824\r\n";
    let some_body = vec![b'a'; 64 * 1024];
    for (who, extra, status, says) in [
        ("no token", String::new(), 401, "needs its token"),
        (
            "wrong token",
            "Authorization: Bearer guess\r\n".into(),
            401,
            "needs its token",
        ),
        ("token, too large", bearer(), 413, "at most"),
        (
            "token, from another site",
            format!("{}Origin: https://evil.example\r\n", bearer()),
            403,
            "another site",
        ),
    ] {
        let asked = Instant::now();
        let head = format!("POST /restore HTTP/1.1\r\n{declared}{extra}");
        let reply = exchange(&server, &head, &some_body, false).await;
        assert_eq!(reply.status, status, "{who}");
        assert!(
            String::from_utf8_lossy(&reply.body).contains(says),
            "{who}: {:?}",
            String::from_utf8_lossy(&reply.body)
        );
        assert!(asked.elapsed() < Duration::from_secs(3), "{who}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_do_not_keep_the_user_out() {
    let server = start().await;
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let asked = Instant::now();
    let reply = get(&server, "/browse/", &bearer()).await;
    assert_eq!(reply.status, 200);
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    // The idle ones were closed to make room, all but the newest few.
    let closed = futures::future::join_all(idle.iter_mut().map(|c| async move {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(1), c.read(&mut byte)).await;
        matches!(read, Ok(Ok(0)) | Ok(Err(_)))
    }))
    .await;
    let closed = closed.into_iter().filter(|c| *c).count();
    assert!(closed >= 1000 - MAX_PENDING, "{closed} closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_archive_carries_no_special_bits_and_no_owner() {
    let server = start().await;
    let fs = server.volume.open().unwrap();
    let on_disk = fs.metadata("/docs/run.sh").unwrap();
    assert_eq!(on_disk.mode & 0o4000, 0o4000, "set-user-ID on the disk");
    assert_ne!(on_disk.uid, 0, "not root's on the disk");

    let reply = get(&server, "/archive/docs", &bearer()).await;
    assert_eq!(reply.status, 200);
    let mut seen = Vec::new();
    for entry in tar::Archive::new(&reply.body[..]).entries().unwrap() {
        let entry = entry.unwrap();
        let h = entry.header();
        let path = entry.path().unwrap().display().to_string();
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0), "{path}");
        assert_eq!(h.username_bytes().unwrap_or_default(), b"", "{path}");
        assert_eq!(h.groupname_bytes().unwrap_or_default(), b"", "{path}");
        seen.push((path, h.mode().unwrap()));
    }
    seen.sort();
    let expected = [
        ("docs/", 0o755),
        ("docs/run.sh", 0o755),
        ("docs/shared/", 0o755),
        ("docs/shared/group.bin", 0o775),
        ("docs/tmp/", 0o755),
        ("docs/tmp/sticky", 0o777),
    ];
    let expected: Vec<(String, u32)> = expected.iter().map(|(p, m)| (p.to_string(), *m)).collect();
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_in_the_url_is_traded_for_a_host_only_cookie() {
    let server = start().await;
    let reply = get(&server, &format!("/browse/docs?token={TOKEN}"), "").await;
    assert_eq!(reply.status, 303);
    assert_eq!(reply.header("location"), Some("/browse/docs"));
    let cookie = reply.header("set-cookie").unwrap();
    assert_eq!(
        cookie,
        format!("__Host-tender_session={TOKEN}; Path=/; Secure; HttpOnly; SameSite=Strict")
    );
    let reply = get(
        &server,
        "/browse/docs",
        &format!("Cookie: __Host-tender_session={TOKEN}\r\n"),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(String::from_utf8_lossy(&reply.body).contains("run.sh"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_posted_from_another_site_is_refused() {
    let server = start().await;
    let own = format!("Origin: https://{}\r\n", server.addr);
    for (from, headers, allowed) in [
        ("another site", "Origin: https://evil.example\r\n", false),
        (
            "another site, as a browser says it",
            "Origin: null\r\nSec-Fetch-Site: cross-site\r\n",
            false,
        ),
        ("the session's page", own.as_str(), true),
        (
            "the session's page, as Chromium says it (no-referrer)",
            "Origin: null\r\nSec-Fetch-Site: same-origin\r\n",
            true,
        ),
    ] {
        let head = format!(
            "POST /restore HTTP/1.1\r\nCookie: __Host-tender_session={TOKEN}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 10\r\n{headers}"
        );
        let reply = exchange(&server, &head, b"path=%2Fab", false).await;
        assert_eq!(reply.status, 403, "{from}");
        let says = String::from_utf8_lossy(&reply.body);
        // Allowed, it reaches the handler, which refuses it for its own
        // reason: this session allows downloads only.
        let expected = if allowed {
            "downloads only"
        } else {
            "another site"
        };
        assert!(says.contains(expected), "{from}: {says}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_forbids_scripts_framing_and_referrers() {
    let server = start().await;
    for (path, headers, status) in [
        ("/browse/", bearer(), 200),
        ("/file/hello.txt", bearer(), 200),
        ("/style.css", bearer(), 200),
        ("/browse/nope", bearer(), 404),
        ("/browse/", String::new(), 401),
        (&format!("/?token={TOKEN}") as &str, String::new(), 303),
    ] {
        let reply = get(&server, path, &headers).await;
        assert_eq!(reply.status, status, "{path}");
        let csp = reply.header("content-security-policy").unwrap_or_default();
        assert!(
            csp.starts_with("default-src 'none'; style-src 'self';")
                && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp}"
        );
        assert_eq!(
            reply.header("referrer-policy"),
            Some("no-referrer"),
            "{path}"
        );
        assert_eq!(
            reply.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_is_valid_for_a_day_at_most() {
    let server = start().await;
    let (mut tls, pinned) = connect(&server).await;
    let _ = tls.shutdown().await;
    let der = pinned.seen.lock().unwrap().clone().unwrap();
    let (not_before, not_after) = validity(&der);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        not_before >= now - 10 * 60,
        "valid from {not_before}, now {now}"
    );
    assert!(
        not_after <= now + 24 * 3600,
        "valid until {not_after}, now {now}"
    );
    assert!(not_after - not_before <= 24 * 3600 + 5 * 60);
}
