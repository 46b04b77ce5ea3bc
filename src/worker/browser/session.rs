//! The session: its certificate and TLS, the token every request must
//! carry, and the accept loop that ends once no request came for the idle
//! timeout.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::disk::RepositoryDisk;
use super::routes::{self, Browser, RestoreTarget};
use crate::mover::manifest::RepositoryLocation;

/// How long a client has for the TLS handshake and for a request's head.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long requests still running when the session ends may take.
const GRACE: Duration = Duration::from_secs(10);

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

/// The session token, known only by its SHA-256.
pub(super) struct SessionToken {
    sha256: Vec<u8>,
}

impl SessionToken {
    /// From the hex SHA-256 the task carries. One that is not hex accepts
    /// no token.
    pub(super) fn from_sha256_hex(sha256: &str) -> Self {
        let sha256 = hex::decode(sha256.trim()).unwrap_or_default();
        if sha256.len() != 32 {
            warn!("the session token's SHA-256 is not 64 hex digits: no token will be accepted");
        }
        Self { sha256 }
    }

    /// Whether `token` is the session's, compared in constant time.
    pub(super) fn accepts(&self, token: &str) -> bool {
        Sha256::digest(token.as_bytes())
            .as_slice()
            .ct_eq(&self.sha256)
            .into()
    }
}

/// When the session last served a request (or a download moved bytes).
#[derive(Clone)]
pub(super) struct Activity(Arc<Mutex<Instant>>);

impl Activity {
    pub(super) fn new() -> Self {
        Self(Arc::new(Mutex::new(Instant::now())))
    }

    pub(super) fn touch(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn idle(&self) -> Duration {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).elapsed()
    }
}

/// The session's self-signed certificate, made when it starts.
struct SessionCertificate {
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
    /// SHA-256 of the certificate, `AB:CD:…`.
    sha256: String,
    /// SHA-256 of its SubjectPublicKeyInfo, base64.
    public_key_sha256: String,
}

impl SessionCertificate {
    fn generate(advertise_host: &str) -> Result<Self, String> {
        let names = vec![advertise_host.to_string(), "localhost".to_string()];
        let certified = rcgen::generate_simple_self_signed(names)
            .map_err(|e| format!("could not make the session certificate: {e}"))?;
        let cert_der = certified.cert.der().to_vec();
        let public_key = rcgen::PublicKeyData::subject_public_key_info(&certified.signing_key);
        Ok(Self {
            sha256: colon_hex(&Sha256::digest(&cert_der)),
            public_key_sha256: base64::engine::general_purpose::STANDARD
                .encode(Sha256::digest(&public_key)),
            key_der: certified.signing_key.serialize_der(),
            cert_der,
        })
    }

    fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(
                vec![self.cert_der.clone().into()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into()),
            )
            .map_err(|e| format!("could not use the session certificate: {e}"))?;
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
    }
}

/// `AB:CD:…`, as certificate fingerprints are written.
fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| hex::encode_upper([*b]))
        .collect::<Vec<_>>()
        .join(":")
}

/// The URL people open: `https://host/`, with the port unless it is 443.
fn session_url(advertise_host: &str, port: u16) -> String {
    let host = if advertise_host.contains(':') {
        format!("[{advertise_host}]")
    } else {
        advertise_host.to_string()
    };
    if port == 443 {
        format!("https://{host}/")
    } else {
        format!("https://{host}:{port}/")
    }
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
    Fut: Future<Output = ()>,
{
    let started = Instant::now();
    let certificate = SessionCertificate::generate(&config.advertise_host)?;
    let acceptor = certificate.acceptor()?;
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| format!("could not listen on {}: {e}", config.listen))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let url = session_url(&config.advertise_host, port);
    info!(
        url,
        certificate_sha256 = certificate.sha256,
        "file-level recovery session is up"
    );
    ready(Session {
        url,
        certificate_sha256: certificate.sha256.clone(),
        public_key_sha256: certificate.public_key_sha256.clone(),
    })
    .await;

    let activity = Activity::new();
    let restore_to = config.restore_to.map(|location| RestoreTarget {
        aws: disk.aws().clone(),
        location,
    });
    let app = routes::router(Browser {
        volume: Arc::new(disk),
        restore_to: restore_to.map(Arc::new),
        token: Arc::new(SessionToken::from_sha256_hex(&config.token_sha256)),
        activity: activity.clone(),
    });
    accept_until_idle(listener, acceptor, app, &activity, config.idle_timeout).await;
    Ok(started.elapsed())
}

/// Accepts connections until no request came for `idle_timeout`, then lets
/// the requests still running finish (for at most `GRACE`).
async fn accept_until_idle(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: axum::Router,
    activity: &Activity,
    idle_timeout: Duration,
) {
    let (end, ended) = watch::channel(false);
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let idle = activity.idle();
        let Some(left) = idle_timeout.checked_sub(idle) else {
            info!(
                idle_s = idle.as_secs(),
                "file-level recovery session idle; ending it"
            );
            break;
        };
        let stream = match tokio::time::timeout(left, listener.accept()).await {
            Err(_) => continue,
            Ok(Err(e)) => {
                warn!(error = %e, "accept failed");
                continue;
            }
            Ok(Ok((stream, _))) => stream,
        };
        connections.spawn(connection(
            stream,
            acceptor.clone(),
            app.clone(),
            ended.clone(),
        ));
    }
    drop(listener);
    let _ = end.send(true);
    let finished = tokio::time::timeout(GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        warn!("requests still running when the session ended were cut off");
    }
}

/// One connection: the TLS handshake, then HTTP/1.1, one request per
/// connection, ended gracefully when the session ends.
async fn connection(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    app: axum::Router,
    mut ended: watch::Receiver<bool>,
) {
    let tls = match tokio::time::timeout(CLIENT_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!("TLS handshake timed out");
            return;
        }
    };
    let served = http1::Builder::new()
        .keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(CLIENT_TIMEOUT)
        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app));
    tokio::pin!(served);
    let result = tokio::select! {
        r = served.as_mut() => r,
        _ = ended.changed() => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(e) = result {
        warn!(error = %e, "request failed");
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn only_the_session_token_is_accepted() {
        let token = SessionToken::from_sha256_hex(&hex::encode(Sha256::digest(b"secret")));
        assert!(token.accepts("secret"));
        assert!(!token.accepts("Secret"));
        assert!(!token.accepts("secret "));
        assert!(!token.accepts(""));
        // Upper-case hex names the same hash.
        let upper = hex::encode_upper(Sha256::digest(b"secret"));
        assert!(SessionToken::from_sha256_hex(&upper).accepts("secret"));
        // A hash that is not one accepts nothing.
        assert!(!SessionToken::from_sha256_hex("short").accepts("secret"));
        assert!(!SessionToken::from_sha256_hex("").accepts(""));
    }

    #[test]
    fn fingerprints_and_urls_are_written_as_people_expect() {
        assert_eq!(colon_hex(&[0xab, 0x01, 0xff]), "AB:01:FF");
        assert_eq!(session_url("10.0.0.5", 443), "https://10.0.0.5/");
        assert_eq!(session_url("127.0.0.1", 8443), "https://127.0.0.1:8443/");
        assert_eq!(session_url("::1", 8443), "https://[::1]:8443/");
    }

    #[test]
    fn the_certificate_names_its_host_and_serves_tls() {
        let certificate = SessionCertificate::generate("10.0.0.5").unwrap();
        assert_eq!(certificate.sha256.len(), 32 * 3 - 1);
        assert!(certificate.acceptor().is_ok());
    }
}
