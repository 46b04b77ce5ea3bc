//! The file-level recovery browser: HTTPS on the worker, with a self-signed
//! certificate made when the session starts, reading the restore point's
//! ext2/3/4 filesystem straight from the repository's chunks (no restore to
//! a volume, no mount, no root). People browse folders, search by name, and
//! download a file or a folder (as a tar archive). Every request needs the
//! session token the controller keeps in a Secret next to the RestoreJob;
//! the worker knows only its SHA-256. The session ends after its idle
//! timeout.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use ext4_view::{Ext4, Ext4Read, Metadata};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

use crate::aws::AwsClients;
use crate::aws::ebs::BLOCK_SIZE;
use crate::mover::manifest::{RepositoryLocation, VolumeImage};

/// Decompressed chunks kept in memory (512 KiB each).
const CACHE_CHUNKS: usize = 64;
/// The largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// The largest folder archive built for one download.
const MAX_ARCHIVE: u64 = 1 << 30;
/// Search stops after this many entries or results.
const SEARCH_SCAN_LIMIT: usize = 200_000;
const SEARCH_RESULTS: usize = 500;
const COOKIE: &str = "tender_session";

/// What the worker reports once the session is up.
#[derive(Clone, Debug)]
pub struct Session {
    pub url: String,
    /// SHA-256 of the certificate (DER), as `AB:CD:…`.
    pub certificate_sha256: String,
    /// SHA-256 of the certificate's public key (SubjectPublicKeyInfo),
    /// base64: the pin browsers and curl accept (`--pinnedpubkey sha256//…`).
    pub public_key_sha256: String,
}

// ---------------------------------------------------------------- the disk

/// The restore point's volume as a byte device: blocks come from the
/// repository's chunks, verified against their names, cached.
#[derive(Clone)]
pub struct RepositoryDisk {
    inner: Arc<DiskInner>,
}

struct DiskInner {
    aws: AwsClients,
    location: RepositoryLocation,
    /// Block index → (chunk hash, length).
    blocks: BTreeMap<i32, (String, u32)>,
    size: u64,
    cache: Mutex<VecDeque<(i32, Arc<Vec<u8>>)>>,
    runtime: tokio::runtime::Handle,
}

impl RepositoryDisk {
    pub fn new(aws: AwsClients, location: RepositoryLocation, volume: &VolumeImage) -> Self {
        Self {
            inner: Arc::new(DiskInner {
                aws,
                location,
                blocks: volume
                    .blocks
                    .iter()
                    .map(|b| (b.index, (b.chunk.clone(), b.length)))
                    .collect(),
                size: volume.size_gib.max(0) as u64 * (1 << 30),
                cache: Mutex::new(VecDeque::new()),
                runtime: tokio::runtime::Handle::current(),
            }),
        }
    }

    /// One whole block (zeros where the restore point has none). Runs on a
    /// blocking thread: it waits for S3 through the runtime.
    fn block(&self, index: i32) -> Result<Arc<Vec<u8>>, String> {
        let inner = &self.inner;
        {
            let cache = inner.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, data)) = cache.iter().find(|(i, _)| *i == index) {
                return Ok(data.clone());
            }
        }
        let data = match inner.blocks.get(&index) {
            None => vec![0u8; BLOCK_SIZE],
            Some((hash, _)) => {
                let key = inner.location.chunk_key(hash);
                let packed = inner
                    .runtime
                    .block_on(inner.aws.get_object(
                        &inner.location.region,
                        &inner.location.bucket,
                        &key,
                    ))
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("chunk {key} is missing from the repository"))?;
                let mut data = zstd::bulk::decompress(&packed, BLOCK_SIZE)
                    .map_err(|e| format!("chunk {key} is corrupt: {e}"))?;
                let actual: String = Sha256::digest(&data)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                if actual != *hash {
                    return Err(format!(
                        "chunk {key} is corrupt: its data hashes to {actual}"
                    ));
                }
                data.resize(BLOCK_SIZE, 0);
                data
            }
        };
        let data = Arc::new(data);
        let mut cache = inner.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.push_back((index, data.clone()));
        while cache.len() > CACHE_CHUNKS {
            cache.pop_front();
        }
        Ok(data)
    }
}

#[derive(Debug)]
struct DiskError(String);

impl std::fmt::Display for DiskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DiskError {}

impl Ext4Read for RepositoryDisk {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        let end = start_byte + dst.len() as u64;
        if end > self.inner.size {
            return Err(Box::new(DiskError(format!(
                "read past the end of the volume ({end} > {})",
                self.inner.size
            ))));
        }
        let mut done = 0usize;
        while done < dst.len() {
            let at = start_byte + done as u64;
            let index = (at / BLOCK_SIZE as u64) as i32;
            let offset = (at % BLOCK_SIZE as u64) as usize;
            let block = self.block(index).map_err(|e| Box::new(DiskError(e)))?;
            let n = (BLOCK_SIZE - offset).min(dst.len() - done);
            dst[done..done + n].copy_from_slice(&block[offset..offset + n]);
            done += n;
        }
        Ok(())
    }
}

/// Opens the filesystem (on a blocking thread: every read may wait on S3).
fn open(disk: &RepositoryDisk) -> Result<Ext4, String> {
    Ext4::load(Box::new(disk.clone())).map_err(|e| {
        format!("the restore point's volume is not a readable ext2/3/4 filesystem: {e}")
    })
}

/// Checks, before the session starts, that the volume holds a filesystem.
pub async fn check_filesystem(disk: &RepositoryDisk) -> Result<(), String> {
    let disk = disk.clone();
    tokio::task::spawn_blocking(move || open(&disk).map(|_| ()))
        .await
        .map_err(|e| e.to_string())?
}

// ---------------------------------------------------------------- the session

/// How the session is served.
pub struct SessionConfig {
    /// Where to listen, for example `0.0.0.0:443`.
    pub listen: String,
    /// Host name or address people reach the worker at.
    pub advertise_host: String,
    pub token_sha256: String,
    pub idle_timeout: Duration,
    /// Where "Restore selected" copies files; `None`: downloads only.
    pub restore_to: Option<RepositoryLocation>,
}

/// Serves the session until it has been idle for its timeout; calls
/// `ready` once it listens. Returns how long it ran.
pub async fn serve<F, Fut>(
    disk: RepositoryDisk,
    config: SessionConfig,
    ready: F,
) -> Result<Duration, String>
where
    F: FnOnce(Session) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    let names = vec![config.advertise_host.clone(), "localhost".to_string()];
    let certified = rcgen::generate_simple_self_signed(names)
        .map_err(|e| format!("could not make the session certificate: {e}"))?;
    let cert_der = certified.cert.der().to_vec();
    let key_der = certified.signing_key.serialize_der();
    let public_key = rcgen::PublicKeyData::subject_public_key_info(&certified.signing_key);
    let certificate_sha256 = Sha256::digest(&cert_der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let public_key_sha256 =
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&public_key));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert_der.into()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key_der.into()),
        )
        .map_err(|e| format!("could not use the session certificate: {e}"))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| format!("could not listen on {}: {e}", config.listen))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let host = if config.advertise_host.contains(':') {
        format!("[{}]", config.advertise_host)
    } else {
        config.advertise_host.clone()
    };
    let url = if port == 443 {
        format!("https://{host}/")
    } else {
        format!("https://{host}:{port}/")
    };
    info!(url, certificate_sha256, "file-level recovery session is up");
    ready(Session {
        url,
        certificate_sha256,
        public_key_sha256,
    })
    .await;

    let last_use = Arc::new(Mutex::new(Instant::now()));
    let token_sha256 = Arc::new(config.token_sha256.to_ascii_lowercase());
    let restore_to = Arc::new(config.restore_to.clone());
    loop {
        let idle = last_use.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
        let Some(left) = config.idle_timeout.checked_sub(idle) else {
            info!(
                idle_s = idle.as_secs(),
                "file-level recovery session idle; ending it"
            );
            return Ok(started.elapsed());
        };
        let accepted = match tokio::time::timeout(left, listener.accept()).await {
            Err(_) => continue,
            Ok(Err(e)) => {
                warn!(error = %e, "accept failed");
                continue;
            }
            Ok(Ok((stream, _))) => stream,
        };
        let acceptor = acceptor.clone();
        let disk = disk.clone();
        let last_use = last_use.clone();
        let token_sha256 = token_sha256.clone();
        let restore_to = restore_to.clone();
        tokio::spawn(async move {
            let shared = Shared {
                disk,
                restore_to,
                last_use,
            };
            if let Err(e) = connection(accepted, acceptor, &shared, &token_sha256).await {
                warn!(error = e, "request failed");
            }
        });
    }
}

/// What every request of a session shares.
struct Shared {
    disk: RepositoryDisk,
    restore_to: Arc<Option<RepositoryLocation>>,
    last_use: Arc<Mutex<Instant>>,
}

/// The largest form body accepted (a list of selected paths).
const MAX_BODY: usize = 1 << 20;

async fn connection(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: &Shared,
    token_sha256: &str,
) -> Result<(), String> {
    let mut tls = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
            .await
            .map_err(|_| "request timed out".to_string())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return respond(&mut tls, text(431, "request head too large")).await;
        }
    }
    let split = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(head.len(), |p| p + 4);
    let mut request = Request::parse(&String::from_utf8_lossy(&head[..split]))
        .ok_or_else(|| "malformed request".to_string())?;
    if request.method == "POST" {
        let length: usize = request
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if length > MAX_BODY {
            return respond(&mut tls, text(413, "too many selected paths")).await;
        }
        let mut body = head[split..].to_vec();
        while body.len() < length {
            let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
                .await
                .map_err(|_| "request body timed out".to_string())?
                .map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&buf[..n]);
        }
        body.truncate(length);
        request.form = parse_form(&String::from_utf8_lossy(&body));
    }
    let response = if !matches!(request.method.as_str(), "GET" | "HEAD" | "POST") {
        text(405, "only GET and POST are served here")
    } else {
        match request.token() {
            Some((token, from_query)) if token_matches(&token, token_sha256) => {
                *shared.last_use.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                let mut response = route(&request, shared).await;
                if from_query {
                    // Later links carry the token in a cookie, not the URL.
                    response.headers.push((
                        "Set-Cookie".into(),
                        format!("{COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict"),
                    ));
                }
                response
            }
            _ => text(
                401,
                "this file-level recovery session needs its token: open the URL with ?token=<token from the RestoreJob's session Secret>",
            ),
        }
    };
    let response = if request.method == "HEAD" {
        Response {
            body: Vec::new(),
            ..response
        }
    } else {
        response
    };
    respond(&mut tls, response).await
}

fn token_matches(token: &str, expected_sha256: &str) -> bool {
    let actual: String = Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // Same length always (hex SHA-256); compare without an early exit.
    actual.len() == expected_sha256.len()
        && actual
            .bytes()
            .zip(expected_sha256.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

// ---------------------------------------------------------------- HTTP

struct Request {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    /// A POSTed form's fields.
    form: Vec<(String, String)>,
}

fn parse_form(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

impl Request {
    fn parse(head: &str) -> Option<Request> {
        let mut lines = head.split("\r\n");
        let mut first = lines.next()?.split(' ');
        let method = first.next()?.to_string();
        let target = first.next()?;
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let headers = lines
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Some(Request {
            method,
            path: percent_decode(path),
            query: parse_form(query),
            headers,
            form: Vec::new(),
        })
    }

    fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The session token, and whether it came in the query string.
    fn token(&self) -> Option<(String, bool)> {
        if let Some(t) = self.query("token") {
            return Some((t.to_string(), true));
        }
        if let Some(t) = self
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            return Some((t.trim().to_string(), false));
        }
        self.header("cookie").and_then(|c| {
            c.split(';')
                .filter_map(|p| p.trim().split_once('='))
                .find(|(k, _)| *k == COOKIE)
                .map(|(_, v)| (v.to_string(), false))
        })
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(hex) = std::str::from_utf8(&bytes[i + 1..i + 3])
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode_path(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn text(status: u16, message: &str) -> Response {
    Response {
        status,
        headers: vec![("Content-Type".into(), "text/plain; charset=utf-8".into())],
        body: format!("{message}\n").into_bytes(),
    }
}

fn html(title: &str, body: &str) -> Response {
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}td{{padding:0 1em}}</style></head>\
         <body><h1>{t}</h1>\
         <form action=\"/search\" method=\"get\"><input name=\"q\" placeholder=\"file name\">\
         <button type=\"submit\">Search</button></form>{body}</body></html>",
        t = html_escape(title)
    );
    Response {
        status: 200,
        headers: vec![("Content-Type".into(), "text/html; charset=utf-8".into())],
        body: page.into_bytes(),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        _ => "Internal Server Error",
    }
}

async fn respond<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    r: Response,
) -> Result<(), String> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", r.status, reason(r.status));
    for (k, v) in &r.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\
         X-Content-Type-Options: nosniff\r\nStrict-Transport-Security: max-age=300\r\n\r\n",
        r.body.len()
    ));
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    stream.write_all(&r.body).await.map_err(|e| e.to_string())?;
    stream.shutdown().await.map_err(|e| e.to_string())
}

// ---------------------------------------------------------------- pages

async fn route(request: &Request, shared: &Shared) -> Response {
    let path = request.path.clone();
    let query = request.query("q").map(String::from);
    let disk = shared.disk.clone();
    let restore_to = (*shared.restore_to).clone();
    let method = request.method.clone();
    let selected: Vec<String> = request
        .form
        .iter()
        .filter(|(k, _)| k == "path")
        .map(|(_, v)| normalize(v))
        .collect();
    tokio::task::spawn_blocking(move || {
        let fs = match open(&disk) {
            Ok(fs) => fs,
            Err(e) => return text(500, &e),
        };
        if path == "/" {
            return Response {
                status: 302,
                headers: vec![("Location".into(), "/browse/".into())],
                body: Vec::new(),
            };
        }
        if path == "/restore" && method == "POST" {
            return match &restore_to {
                Some(target) => restore_selected(&fs, &disk, target, &selected),
                None => text(
                    403,
                    "this RestoreJob allows downloads only: set spec.restoreFilesTo to restore files to S3",
                ),
            };
        }
        if let Some(p) = path.strip_prefix("/browse") {
            return browse(&fs, &normalize(p), restore_to.as_ref());
        }
        if let Some(p) = path.strip_prefix("/file") {
            return download(&fs, &normalize(p));
        }
        if let Some(p) = path.strip_prefix("/archive") {
            return archive(&fs, &normalize(p));
        }
        if path == "/search" {
            return search(&fs, query.as_deref().unwrap_or(""));
        }
        text(404, "no such page")
    })
    .await
    .unwrap_or_else(|e| text(500, &e.to_string()))
}

/// An absolute path without `.`/`..` components or a trailing slash.
fn normalize(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

fn not_found(path: &str, e: impl std::fmt::Display) -> Response {
    text(404, &format!("{path}: {e}"))
}

fn entries(fs: &Ext4, dir: &str) -> Result<Vec<(String, Metadata)>, String> {
    let mut out = Vec::new();
    for entry in fs.read_dir(dir).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name().display().to_string();
        if name == "." || name == ".." {
            continue;
        }
        let meta = entry.metadata().map_err(|e| e.to_string())?;
        out.push((name, meta));
    }
    out.sort_by(|a, b| (!a.1.is_dir(), &a.0).cmp(&(!b.1.is_dir(), &b.0)));
    Ok(out)
}

fn browse(fs: &Ext4, dir: &str, restore_to: Option<&RepositoryLocation>) -> Response {
    let list = match entries(fs, dir) {
        Ok(l) => l,
        Err(e) => return not_found(dir, e),
    };
    let mut body = String::new();
    if dir != "/" {
        let parent = normalize(&format!("{dir}/.."));
        body.push_str(&format!(
            "<p><a class=\"up\" href=\"/browse{}\">↑ up</a></p>",
            percent_encode_path(&parent)
        ));
    }
    body.push_str(&format!(
        "<p><a class=\"archive\" href=\"/archive{}\">Download this folder (.tar)</a></p>",
        percent_encode_path(dir)
    ));
    if let Some(target) = restore_to {
        body.push_str(&format!(
            "<form method=\"post\" action=\"/restore\"><p><button type=\"submit\">Restore selected to s3://{}/{}</button></p>",
            html_escape(&target.bucket),
            html_escape(&target.prefix)
        ));
    }
    body.push_str("<table>");
    for (name, meta) in list {
        let path = join(dir, &name);
        let (href, kind, size) = if meta.is_dir() {
            (
                format!("/browse{}", percent_encode_path(&path)),
                "dir",
                String::new(),
            )
        } else {
            (
                format!("/file{}", percent_encode_path(&path)),
                "file",
                format!("{} bytes", meta.len()),
            )
        };
        let select = if restore_to.is_some() {
            format!(
                "<input type=\"checkbox\" name=\"path\" value=\"{}\">",
                html_escape(&path)
            )
        } else {
            String::new()
        };
        body.push_str(&format!(
            "<tr class=\"{kind}\"><td>{select}</td><td><a href=\"{href}\">{}{}</a></td><td>{size}</td></tr>",
            html_escape(&name),
            if kind == "dir" { "/" } else { "" }
        ));
    }
    body.push_str("</table>");
    if restore_to.is_some() {
        body.push_str("</form>");
    }
    html(&format!("Restore point: {dir}"), &body)
}

fn file_name(path: &str) -> String {
    let name = path.rsplit('/').next().unwrap_or("download");
    let name: String = name
        .chars()
        .map(|c| if c == '"' || c.is_control() { '_' } else { c })
        .collect();
    if name.is_empty() { "root".into() } else { name }
}

fn download(fs: &Ext4, path: &str) -> Response {
    match fs.read(path) {
        Ok(data) => Response {
            status: 200,
            headers: vec![
                ("Content-Type".into(), "application/octet-stream".into()),
                (
                    "Content-Disposition".into(),
                    format!("attachment; filename=\"{}\"", file_name(path)),
                ),
            ],
            body: data,
        },
        Err(e) => not_found(path, e),
    }
}

fn archive(fs: &Ext4, dir: &str) -> Response {
    let mut tar = Tar::default();
    let base = file_name(dir);
    let mut todo = vec![(dir.to_string(), base.clone())];
    while let Some((path, name)) = todo.pop() {
        let list = match entries(fs, &path) {
            Ok(l) => l,
            Err(e) => return not_found(&path, e),
        };
        if let Err(e) = tar.dir(&name) {
            return text(400, &e);
        }
        for (child, meta) in list {
            let child_path = join(&path, &child);
            let child_name = format!("{name}/{child}");
            if meta.is_dir() {
                todo.push((child_path, child_name));
            } else if meta.file_type().is_regular_file() {
                if tar.len() + meta.len() > MAX_ARCHIVE {
                    return text(
                        413,
                        "this folder is larger than 1 GiB: download its subfolders or files one by one",
                    );
                }
                match fs.read(child_path.as_str()) {
                    Ok(data) => {
                        if let Err(e) = tar.file(&child_name, &data, meta.mode()) {
                            return text(400, &e);
                        }
                    }
                    Err(e) => return not_found(&child_path, e),
                }
            }
        }
    }
    Response {
        status: 200,
        headers: vec![
            ("Content-Type".into(), "application/x-tar".into()),
            (
                "Content-Disposition".into(),
                format!("attachment; filename=\"{base}.tar\""),
            ),
        ],
        body: tar.finish(),
    }
}

/// Copies the selected files (folders: every regular file in them) to the
/// allowed S3 location, each under its path in the filesystem.
fn restore_selected(
    fs: &Ext4,
    disk: &RepositoryDisk,
    target: &RepositoryLocation,
    selected: &[String],
) -> Response {
    if selected.is_empty() {
        return text(400, "select at least one file or folder");
    }
    let mut files: Vec<String> = Vec::new();
    let mut todo: Vec<String> = selected.to_vec();
    while let Some(path) = todo.pop() {
        let meta = match fs.metadata(path.as_str()) {
            Ok(m) => m,
            Err(e) => return not_found(&path, e),
        };
        if meta.is_dir() {
            match entries(fs, &path) {
                Ok(list) => todo.extend(list.into_iter().map(|(n, _)| join(&path, &n))),
                Err(e) => return not_found(&path, e),
            }
        } else if meta.file_type().is_regular_file() {
            files.push(path);
        }
    }
    files.sort();
    files.dedup();
    let inner = &disk.inner;
    let mut done = Vec::new();
    for path in &files {
        let data = match fs.read(path.as_str()) {
            Ok(d) => d,
            Err(e) => return not_found(path, e),
        };
        let key = format!("{}{}", target.prefix, path.trim_start_matches('/'));
        let put = inner.runtime.block_on(inner.aws.put_object(
            &target.region,
            &target.bucket,
            &key,
            data,
            "application/octet-stream",
        ));
        if let Err(e) = put {
            return text(
                500,
                &format!(
                    "restored {} of {} files; {path} failed: {e}",
                    done.len(),
                    files.len()
                ),
            );
        }
        done.push(format!("s3://{}/{key}", target.bucket));
    }
    info!(
        files = done.len(),
        bucket = target.bucket,
        "restored selected files"
    );
    let list: String = done
        .iter()
        .map(|d| format!("<li>{}</li>", html_escape(d)))
        .collect();
    html(
        "Restored",
        &format!("<p>{} file(s) restored:</p><ul>{list}</ul>", done.len()),
    )
}

fn search(fs: &Ext4, q: &str) -> Response {
    let needle = q.to_lowercase();
    if needle.is_empty() {
        return text(400, "search needs a name: /search?q=<part of a file name>");
    }
    let mut found = Vec::new();
    let mut scanned = 0usize;
    let mut todo = vec!["/".to_string()];
    while let Some(dir) = todo.pop() {
        let Ok(list) = entries(fs, &dir) else {
            continue;
        };
        for (name, meta) in list {
            scanned += 1;
            let path = join(&dir, &name);
            if name.to_lowercase().contains(&needle) {
                found.push((path.clone(), meta.is_dir()));
            }
            if meta.is_dir() {
                todo.push(path);
            }
        }
        if scanned >= SEARCH_SCAN_LIMIT || found.len() >= SEARCH_RESULTS {
            break;
        }
    }
    found.sort();
    let mut body = format!(
        "<p>{} match(es) for “{}”</p><ul>",
        found.len(),
        html_escape(q)
    );
    for (path, is_dir) in found {
        let href = if is_dir {
            format!("/browse{}", percent_encode_path(&path))
        } else {
            format!("/file{}", percent_encode_path(&path))
        };
        body.push_str(&format!(
            "<li><a href=\"{href}\">{}</a></li>",
            html_escape(&path)
        ));
    }
    body.push_str("</ul>");
    html(&format!("Search: {q}"), &body)
}

/// A ustar archive, built in memory.
#[derive(Default)]
struct Tar {
    out: Vec<u8>,
}

impl Tar {
    fn len(&self) -> u64 {
        self.out.len() as u64
    }

    fn header(&mut self, name: &str, size: u64, mode: u16, kind: u8) -> Result<(), String> {
        let mut h = [0u8; 512];
        let (prefix, name) = if name.len() <= 100 {
            ("", name)
        } else {
            let cut = name[..name.len().min(156)]
                .rfind('/')
                .filter(|&i| name.len() - i - 1 <= 100)
                .ok_or_else(|| format!("{name}: the path is too long for a tar archive"))?;
            (&name[..cut], &name[cut + 1..])
        };
        h[..name.len()].copy_from_slice(name.as_bytes());
        let octal = |h: &mut [u8; 512], at: usize, width: usize, v: u64| {
            let s = format!("{v:0w$o}\0", w = width - 1);
            h[at..at + width].copy_from_slice(s.as_bytes());
        };
        octal(&mut h, 100, 8, u64::from(mode & 0o7777));
        octal(&mut h, 108, 8, 0);
        octal(&mut h, 116, 8, 0);
        octal(&mut h, 124, 12, size);
        octal(&mut h, 136, 12, 0);
        h[148..156].copy_from_slice(b"        ");
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        self.out.extend_from_slice(&h);
        Ok(())
    }

    fn dir(&mut self, name: &str) -> Result<(), String> {
        self.header(&format!("{name}/"), 0, 0o755, b'5')
    }

    fn file(&mut self, name: &str, data: &[u8], mode: u16) -> Result<(), String> {
        self.header(name, data.len() as u64, mode, b'0')?;
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0u8, pad));
        Ok(())
    }

    fn finish(mut self) -> Vec<u8> {
        self.out.extend(std::iter::repeat_n(0u8, 1024));
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_escape_the_root() {
        assert_eq!(normalize("/../../etc/./passwd/"), "/etc/passwd");
        assert_eq!(normalize(""), "/");
        assert_eq!(percent_decode("/a%20b/%2e%2e"), "/a b/..");
        assert_eq!(percent_encode_path("/a b/ü"), "/a%20b/%C3%BC");
    }

    #[test]
    fn the_token_comes_from_the_query_a_bearer_header_or_the_cookie() {
        let r = Request::parse("GET /browse/?token=abc HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.and_then(|r| r.token()), Some(("abc".into(), true)));
        let r = Request::parse("GET / HTTP/1.1\r\nCookie: a=b; tender_session=xyz\r\n\r\n");
        assert_eq!(r.and_then(|r| r.token()), Some(("xyz".into(), false)));
        let r = Request::parse("GET / HTTP/1.1\r\nAuthorization: Bearer t1\r\n\r\n");
        assert_eq!(r.and_then(|r| r.token()), Some(("t1".into(), false)));
        let hash: String = Sha256::digest(b"secret")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(token_matches("secret", &hash));
        assert!(!token_matches("Secret", &hash));
        assert!(!token_matches("secret", "short"));
    }

    #[test]
    fn tar_headers_carry_a_valid_checksum() {
        let mut t = Tar::default();
        t.file("dir/a.txt", b"hello", 0o644).unwrap_or_default();
        let out = t.finish();
        assert_eq!(out.len(), 512 + 512 + 1024);
        let header = &out[..512];
        let stored = u32::from_str_radix(
            std::str::from_utf8(&header[148..154]).unwrap_or_default(),
            8,
        )
        .unwrap_or_default();
        let sum: u32 = header
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u32::from(*b)
                }
            })
            .sum();
        assert_eq!(stored, sum);
        assert_eq!(&out[512..517], b"hello");
    }
}
