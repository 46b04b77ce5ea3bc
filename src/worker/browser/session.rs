//! The session: TLS, the token every request must carry, and the accept
//! loop, which bounds the connections it holds and how long a client may
//! take to send a request's head, and ends once no request came for the
//! idle timeout or at the session's maximum life.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use super::certificate::SessionCertificate;
use super::connections::{Admission, Connections, Slot};
use super::disk::{RepositoryDisk, Volume};
use super::original::OriginalTarget;
use super::routes::{self, Browser, RestoreTarget};
use crate::mover::manifest::RepositoryLocation;

/// How long a client has from connecting to the end of its request's head
/// (TLS handshake included).
pub(super) const HEAD_DEADLINE: Duration = Duration::from_secs(10);
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
    /// The session ends after this long whatever happens; its certificate
    /// is valid no longer ([`super::session_life`]).
    pub max_life: Duration,
    /// Where "Restore selected" copies files; `None`: downloads only.
    pub restore_to: Option<RepositoryLocation>,
    /// Restores onto the source instance, and where staged requests are
    /// reported; `None`: the job does not ask for them.
    pub original_location: Option<(
        crate::messages::OriginalLocationTask,
        tokio::sync::mpsc::UnboundedSender<crate::messages::OriginalRequest>,
    )>,
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

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndedBy {
    /// No request came for the idle timeout.
    Idle,
    /// It reached its maximum life (and its certificate's end).
    MaxLife,
}

/// How a session ended, and after how long.
#[derive(Clone, Copy, Debug)]
pub struct Ended {
    pub by: EndedBy,
    pub ran: Duration,
}

/// Serves the session until it has been idle for its timeout or reaches
/// its maximum life; calls `ready` once it listens.
pub async fn serve<F, Fut>(
    disk: RepositoryDisk,
    config: SessionConfig,
    ready: F,
) -> Result<Ended, String>
where
    F: FnOnce(Session) -> Fut,
    Fut: Future<Output = ()>,
{
    let restore_to = config.restore_to.clone().map(|location| RestoreTarget {
        aws: disk.aws().clone(),
        location,
    });
    let original = config
        .original_location
        .clone()
        .map(|(task, report)| Arc::new(OriginalTarget::new(disk.aws().clone(), task, report)));
    serve_volume(
        Arc::new(disk),
        (restore_to.map(Arc::new), original),
        config,
        ready,
    )
    .await
}

/// What a session may restore to: an S3 location, the source instance.
pub(super) type Targets = (Option<Arc<RestoreTarget>>, Option<Arc<OriginalTarget>>);

/// [`serve`] over any volume (tests serve an image in memory).
pub(super) async fn serve_volume<F, Fut>(
    volume: Arc<dyn Volume>,
    (restore_to, original): Targets,
    config: SessionConfig,
    ready: F,
) -> Result<Ended, String>
where
    F: FnOnce(Session) -> Fut,
    Fut: Future<Output = ()>,
{
    let started = Instant::now();
    let certificate = SessionCertificate::generate(&config.advertise_host, config.max_life)?;
    let acceptor = certificate.acceptor()?;
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|e| format!("could not listen on {}: {e}", config.listen))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let url = session_url(&config.advertise_host, port);
    info!(
        url,
        certificate_sha256 = certificate.sha256,
        max_life_s = config.max_life.as_secs(),
        "file-level recovery session is up"
    );
    ready(Session {
        url,
        certificate_sha256: certificate.sha256.clone(),
        public_key_sha256: certificate.public_key_sha256.clone(),
    })
    .await;

    let activity = Activity::new();
    let app = routes::router(Browser {
        volume,
        restore_to,
        original,
        token: Arc::new(SessionToken::from_sha256_hex(&config.token_sha256)),
        activity: activity.clone(),
    });
    let lifetime = Lifetime {
        activity,
        idle_timeout: config.idle_timeout,
        ends_at: started + config.max_life,
    };
    let by = accept_until_done(listener, acceptor, app, &lifetime).await;
    Ok(Ended {
        by,
        ran: started.elapsed(),
    })
}

/// When the session ends: after its idle timeout, or at its maximum life.
struct Lifetime {
    activity: Activity,
    idle_timeout: Duration,
    ends_at: Instant,
}

impl Lifetime {
    /// How long the session may still wait for a connection; `Err`: it
    /// ends now, and why.
    fn left(&self) -> Result<Duration, EndedBy> {
        let idle = self.activity.idle();
        let idle_left = self.idle_timeout.checked_sub(idle).ok_or(EndedBy::Idle)?;
        let life_left = self.ends_at.saturating_duration_since(Instant::now());
        if life_left.is_zero() {
            return Err(EndedBy::MaxLife);
        }
        Ok(idle_left.min(life_left))
    }
}

/// Accepts connections (within the limits of [`Connections`]) until the
/// session ends, then lets the requests still running finish (for at most
/// `GRACE`).
async fn accept_until_done(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: axum::Router,
    lifetime: &Lifetime,
) -> EndedBy {
    let (end, ended) = watch::channel(false);
    let open = Connections::default();
    let mut tasks = JoinSet::new();
    let by = loop {
        while tasks.try_join_next().is_some() {}
        let left = match lifetime.left() {
            Ok(left) => left,
            Err(by) => break by,
        };
        let stream = match tokio::time::timeout(left, listener.accept()).await {
            Err(_) => continue,
            Ok(Err(e)) => {
                warn!(error = %e, "accept failed");
                continue;
            }
            Ok(Ok((stream, _))) => stream,
        };
        let decision = open.open(|slot| {
            let serve = connection(stream, acceptor.clone(), app.clone(), slot, ended.clone());
            tasks.spawn(serve)
        });
        if decision != Admission::Accept {
            debug!(?decision, "connection limit reached");
        }
    };
    info!(?by, "file-level recovery session ending");
    drop(listener);
    let _ = end.send(true);
    let finished =
        tokio::time::timeout(GRACE, async { while tasks.join_next().await.is_some() {} }).await;
    if finished.is_err() {
        warn!("requests still running when the session ended were cut off");
    }
    by
}

/// One connection: the TLS handshake, then HTTP/1.1, one request per
/// connection, ended gracefully when the session ends. The handshake and
/// the request's head share one deadline, however slowly bytes come.
async fn connection(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    app: axum::Router,
    slot: Slot,
    mut ended: watch::Receiver<bool>,
) {
    let deadline = tokio::time::Instant::now() + HEAD_DEADLINE;
    let tls = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
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
    // Requests carry what admits their connection once they show the token.
    let admit = slot.admitter();
    let app = app.map_request(move |mut request: axum::http::Request<Incoming>| {
        request.extensions_mut().insert(admit.clone());
        request
    });
    let head_left = deadline
        .saturating_duration_since(tokio::time::Instant::now())
        .max(Duration::from_millis(1));
    let served = http1::Builder::new()
        .keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(head_left)
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
        debug!(error = %e, "connection ended with an error");
    }
    drop(slot);
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
    fn urls_are_written_as_people_expect() {
        assert_eq!(session_url("10.0.0.5", 443), "https://10.0.0.5/");
        assert_eq!(session_url("127.0.0.1", 8443), "https://127.0.0.1:8443/");
        assert_eq!(session_url("::1", 8443), "https://[::1]:8443/");
    }
}
