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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
pub struct SweepLabels {
    pub region: String,
    pub reason: String,
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
    pub job_duration: Family<OutcomeLabels, Histogram, fn() -> Histogram>,
    pub aws_calls: Family<OperationLabels, Counter>,
    pub aws_errors: Family<OperationErrorLabels, Counter>,
    pub reconciles: Family<KindLabels, Counter>,
    pub status_writes: Family<KindLabels, Counter>,
    /// Job entries launch admission read (see `controller::index`).
    pub admission_entries_read: Counter,
    pub reconcile_errors: Family<KindErrorLabels, Counter>,
    pub gc_orphans_terminated: Family<SweepLabels, Counter>,
    pub gc_queues_deleted: Family<RegionLabels, Counter>,
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
            job_duration: Family::new_with_constructor(seconds_histogram),
            aws_calls: Family::default(),
            aws_errors: Family::default(),
            reconciles: Family::default(),
            status_writes: Family::default(),
            admission_entries_read: Counter::default(),
            reconcile_errors: Family::default(),
            gc_orphans_terminated: Family::default(),
            gc_queues_deleted: Family::default(),
            gc_sweeps: Family::default(),
        };
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
            "job_duration_seconds",
            "Job durations, by outcome",
            m.job_duration.clone(),
        );
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
            "gc_sweeps",
            "Garbage-collection sweeps",
            m.gc_sweeps.clone(),
        );
        m
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

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until dropped.
/// A deliberately small HTTP/1.1 responder: these three GETs are all it
/// answers.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, ready: Arc<Readiness>) {
    info!(address = ?listener.local_addr().ok(), "serving /metrics, /healthz, /readyz");
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            // Read until the end of the request head, however it is split.
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let request = String::from_utf8_lossy(&buf);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (code, content_type, body) = match path {
                "/metrics" => (
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    metrics.encode(),
                ),
                "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
                "/readyz" if ready.get() => ("200 OK", "text/plain", "ok\n".to_string()),
                "/readyz" => (
                    "503 Service Unavailable",
                    "text/plain",
                    "not ready\n".to_string(),
                ),
                _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {code}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if let Err(e) = stream.write_all(response.as_bytes()).await {
                debug!(error = %e, "metrics client went away");
            }
        });
    }
}
