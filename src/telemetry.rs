//! Logs, metrics, and the HTTP endpoint that serves `/metrics`, `/healthz`
//! and `/readyz`.
//!
//! Logs are human-readable by default, JSON with `--log-format json`; the
//! level comes from `RUST_LOG` (default `info`). Metric labels are always
//! low-cardinality (region, profile, operation, error category, reason),
//! never error messages or object names.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};
use tracing_subscriber::EnvFilter;

pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionLabels {
    pub region: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    pub region: String,
    pub profile: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationErrorLabels {
    pub operation: String,
    pub category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindErrorLabels {
    pub kind: String,
    pub category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SweepLabels {
    pub region: String,
    pub reason: String,
}

fn aws_call_histogram() -> Histogram {
    // 5 ms to about 40 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

fn seconds_histogram() -> Histogram {
    // 0.05 s to about 30 min.
    Histogram::new(exponential_buckets(0.05, 2.0, 16))
}

/// Every metric Tender exports.
pub struct Metrics {
    registry: Registry,
    pub workers_launched: Family<WorkerLabels, Counter>,
    pub workers_terminated: Family<RegionLabels, Counter>,
    pub workers_active: Family<RegionLabels, Gauge>,
    pub launch_latency: Histogram,
    pub termination_latency: Histogram,
    pub jobs_finished: Family<OutcomeLabels, Counter>,
    /// Worker messages dropped unapplied, by `Refusal` reason.
    pub messages_refused: Family<ReasonLabels, Counter>,
    pub job_duration: Family<OutcomeLabels, Histogram, fn() -> Histogram>,
    pub aws_calls: Family<OperationLabels, Counter>,
    pub aws_errors: Family<OperationErrorLabels, Counter>,
    pub aws_call_seconds: Family<OperationLabels, Histogram, fn() -> Histogram>,
    pub reconciles: Family<KindLabels, Counter>,
    pub status_writes: Family<KindLabels, Counter>,
    /// Job entries launch admission read (see `controller::index`).
    pub admission_entries_read: Counter,
    pub reconcile_errors: Family<KindErrorLabels, Counter>,
    pub gc_orphans_terminated: Family<SweepLabels, Counter>,
    pub gc_queues_deleted: Family<RegionLabels, Counter>,
    /// Restores' leftover intermediate snapshots deleted.
    pub gc_intermediates_deleted: Family<RegionLabels, Counter>,
    pub gc_sweeps: Family<RegionLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("tender"),
            workers_launched: Family::default(),
            workers_terminated: Family::default(),
            workers_active: Family::default(),
            launch_latency: seconds_histogram(),
            termination_latency: seconds_histogram(),
            jobs_finished: Family::default(),
            messages_refused: Family::default(),
            job_duration: Family::new_with_constructor(seconds_histogram),
            aws_calls: Family::default(),
            aws_errors: Family::default(),
            aws_call_seconds: Family::new_with_constructor(aws_call_histogram),
            reconciles: Family::default(),
            status_writes: Family::default(),
            admission_entries_read: Counter::default(),
            reconcile_errors: Family::default(),
            gc_orphans_terminated: Family::default(),
            gc_queues_deleted: Family::default(),
            gc_intermediates_deleted: Family::default(),
            gc_sweeps: Family::default(),
        };
        m.register_worker_metrics();
        m.register_operation_metrics();
        m
    }
}

impl Metrics {
    /// Workers and jobs.
    fn register_worker_metrics(&mut self) {
        let m = self;
        let r = &mut m.registry;
        r.register(
            "workers_launched",
            "Worker instances launched",
            m.workers_launched.clone(),
        );
        r.register(
            "workers_terminated",
            "Worker instances terminated",
            m.workers_terminated.clone(),
        );
        r.register(
            "workers_active",
            "Live worker instances seen by the last sweep",
            m.workers_active.clone(),
        );
        r.register(
            "worker_launch_seconds",
            "Seconds from a worker being planned to RunInstances returning",
            m.launch_latency.clone(),
        );
        r.register(
            "worker_termination_seconds",
            "Seconds from a worker finishing to TerminateInstances being accepted",
            m.termination_latency.clone(),
        );
        r.register(
            "jobs_finished",
            "Jobs finished, by outcome",
            m.jobs_finished.clone(),
        );
        r.register(
            "worker_messages_refused",
            "Worker messages dropped without being applied, by reason",
            m.messages_refused.clone(),
        );
        r.register(
            "job_duration_seconds",
            "Job durations, by outcome",
            m.job_duration.clone(),
        );
    }

    /// AWS calls, reconciles and garbage collection.
    fn register_operation_metrics(&mut self) {
        let m = self;
        let r = &mut m.registry;
        r.register(
            "aws_calls",
            "AWS API calls, by operation",
            m.aws_calls.clone(),
        );
        r.register(
            "aws_errors",
            "Failed AWS API calls, by operation and category",
            m.aws_errors.clone(),
        );
        r.register(
            "aws_call_seconds",
            "Seconds an AWS API call took (with the SDK's retries), by operation",
            m.aws_call_seconds.clone(),
        );
        r.register("reconciles", "Reconciles, by kind", m.reconciles.clone());
        r.register(
            "status_writes",
            "Status writes to the API server, by kind",
            m.status_writes.clone(),
        );
        r.register(
            "admission_entries_read",
            "Job entries read by launch admission under maxConcurrentWorkers",
            m.admission_entries_read.clone(),
        );
        r.register(
            "reconcile_errors",
            "Failed reconciles, by kind and category",
            m.reconcile_errors.clone(),
        );
        r.register(
            "gc_orphans_terminated",
            "Orphaned worker instances terminated by the garbage collector",
            m.gc_orphans_terminated.clone(),
        );
        r.register(
            "gc_queues_deleted",
            "Orphaned worker queues deleted",
            m.gc_queues_deleted.clone(),
        );
        r.register(
            "gc_intermediates_deleted",
            "Leftover intermediate snapshots of restores deleted",
            m.gc_intermediates_deleted.clone(),
        );
        r.register(
            "gc_sweeps",
            "Garbage-collection sweeps",
            m.gc_sweeps.clone(),
        );
    }
}

impl Metrics {
    pub fn aws_call(&self, operation: &str) {
        self.aws_calls
            .get_or_create(&OperationLabels {
                operation: operation.to_string(),
            })
            .inc();
    }

    pub fn aws_call_took(&self, operation: &str, took: Duration) {
        self.aws_call_seconds
            .get_or_create(&OperationLabels {
                operation: operation.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn aws_error(&self, operation: &str, category: &str) {
        self.aws_errors
            .get_or_create(&OperationErrorLabels {
                operation: operation.to_string(),
                category: category.to_string(),
            })
            .inc();
    }

    pub fn record_sweep(&self, region: &str, live: usize, orphans: &HashMap<&'static str, usize>) {
        let labels = RegionLabels {
            region: region.to_string(),
        };
        self.gc_sweeps.get_or_create(&labels).inc();
        self.workers_active.get_or_create(&labels).set(live as i64);
        for (reason, n) in orphans {
            self.gc_orphans_terminated
                .get_or_create(&SweepLabels {
                    region: region.to_string(),
                    reason: (*reason).to_string(),
                })
                .inc_by(*n as u64);
        }
    }

    /// Counts a worker message dropped unapplied.
    pub fn message_refused(&self, reason: &str) {
        self.messages_refused
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn record_intermediate_sweep(&self, region: &str, deleted: usize) {
        self.gc_intermediates_deleted
            .get_or_create(&RegionLabels {
                region: region.to_string(),
            })
            .inc_by(deleted as u64);
    }

    pub fn record_queue_sweep(&self, region: &str, deleted: usize) {
        self.gc_queues_deleted
            .get_or_create(&RegionLabels {
                region: region.to_string(),
            })
            .inc_by(deleted as u64);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            warn!(error = %e, "could not encode metrics");
        }
        out
    }
}

/// Readiness as `/readyz` reports it.
#[derive(Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Prometheus' text exposition format.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// How long a client has to send its request's head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// `/metrics`, `/healthz` and `/readyz`; anything else is 404.
pub fn router(metrics: Arc<Metrics>, ready: Arc<Readiness>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || async move { ([(CONTENT_TYPE, METRICS_CONTENT_TYPE)], metrics.encode()) }),
        )
        .route("/healthz", get(|| async { plain(StatusCode::OK, "ok\n") }))
        .route(
            "/readyz",
            get(move || async move {
                if ready.get() {
                    plain(StatusCode::OK, "ok\n")
                } else {
                    plain(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }),
        )
        .fallback(|| async { plain(StatusCode::NOT_FOUND, "not found\n") })
}

fn plain(status: StatusCode, body: &'static str) -> Response {
    (status, [(CONTENT_TYPE, "text/plain")], body).into_response()
}

/// Serves [`router`] on `listener` until dropped, one request per
/// connection.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, ready: Arc<Readiness>) {
    info!(address = ?listener.local_addr().ok(), "serving /metrics, /healthz, /readyz");
    serve_router(listener, router(metrics, ready)).await;
}

/// Serves `app` over plain HTTP/1.1 on `listener` until dropped, one
/// request per connection (clients may read an answer to its end).
pub(crate) async fn serve_router(listener: TcpListener, app: Router) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let served = http1::Builder::new()
                .keep_alive(false)
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                debug!(error = %e, "HTTP client went away");
            }
        });
    }
}

#[cfg(test)]
mod tests {

    use axum::body::Body;
    use tower::ServiceExt;

    use super::*;

    async fn get(app: &Router, path: &str) -> (StatusCode, String, String) {
        let response = app
            .clone()
            .oneshot(axum::http::Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let content_type = response.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            content_type,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    #[tokio::test]
    async fn metrics_health_and_readiness() {
        let metrics = Arc::new(Metrics::default());
        metrics.aws_call("RunInstances");
        let ready = Arc::new(Readiness::default());
        let app = router(metrics, ready.clone());
        let (status, content_type, body) = get(&app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, METRICS_CONTENT_TYPE);
        assert!(
            body.contains("tender_aws_calls_total{operation=\"RunInstances\"} 1"),
            "{body}"
        );
        assert_eq!(
            get(&app, "/healthz").await,
            (StatusCode::OK, "text/plain".into(), "ok\n".into())
        );
        assert_eq!(
            get(&app, "/readyz").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain".into(),
                "not ready\n".into()
            )
        );
        ready.set(true);
        assert_eq!(get(&app, "/readyz").await.0, StatusCode::OK);
        assert_eq!(get(&app, "/nope").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn a_client_that_reads_to_the_end_gets_the_whole_answer() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(Metrics::default()),
            Arc::new(Readiness::default()),
        ));
        // As the integration tests ask: HTTP/1.1 without "Connection:
        // close", read until the server closes.
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nok\n"), "{answer}");
        server.abort();
    }
}
