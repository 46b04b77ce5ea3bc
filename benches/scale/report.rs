//! The markdown tables the benchmark prints: one column per size (or per
//! controller and size), one row per figure.

use std::collections::BTreeMap;

use crate::runs::agents::AgentsResult;
use crate::runs::floor::FloorResult;
use crate::runs::tender::TenderResult;
use crate::system::{fmt_cpu, percentile};
use crate::{NOT_EC2, VIEW_MAX_AGE_SECONDS};

/// A size's results: Tender's run and the two baselines.
pub type Run = (TenderResult, Option<FloorResult>, Option<AgentsResult>);

/// Rows of figures over columns of results.
struct Table<'a, C> {
    columns: &'a [C],
    rows: Vec<(String, Vec<String>)>,
}

impl<'a, C> Table<'a, C> {
    fn new(columns: &'a [C]) -> Self {
        Table {
            columns,
            rows: Vec::new(),
        }
    }

    fn row(&mut self, label: &str, cell: impl Fn(&C) -> String) {
        let values = self.columns.iter().map(cell).collect();
        self.rows.push((label.to_string(), values));
    }

    fn print(&self, header: impl Fn(&C) -> String) {
        let header: Vec<String> = self.columns.iter().map(header).collect();
        println!("| | {} |", header.join(" | "));
        println!("|---|{}", "---|".repeat(header.len()));
        for (label, values) in &self.rows {
            println!("| {label} | {} |", values.join(" | "));
        }
    }
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}"))
}

fn fmt_pair(values: &[f64]) -> String {
    format!(
        "{} / {}",
        fmt_ms(percentile(values, 0.50)),
        fmt_ms(percentile(values, 0.99))
    )
}

fn fmt_secs(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| {
        if v.is_infinite() {
            "> 1638".into()
        } else {
            format!("{:.0}", v * 1000.0)
        }
    })
}

/// `a 1, b 2` of the non-zero values, or `0`.
fn list(values: &BTreeMap<String, f64>) -> String {
    let items: Vec<String> = values
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(k, v)| format!("{k} {v:.0}"))
        .collect();
    if items.is_empty() {
        "0".into()
    } else {
        items.join(", ")
    }
}

/// `"{done} / {n}"`, marked when the run timed out.
fn jobs_done(t: &TenderResult) -> String {
    let mark = if t.completed { "" } else { " (TIMEOUT)" };
    format!("{} / {}{mark}", t.done, t.n)
}

/// Mutating EC2 calls (not Describe…, not SQS, STS or SSM) during the run.
fn mutating_ec2_calls(t: &TenderResult) -> f64 {
    t.delta
        .by("tender_aws_calls_total", "operation")
        .iter()
        .filter(|(op, _)| !NOT_EC2.contains(&op.as_str()) && !op.starts_with("Describe"))
        .map(|(_, v)| v)
        .sum()
}

/// The benchmark's table: Tender, the floor and the agents alone.
pub fn print_table(results: &[Run]) {
    let mut t = Table::new(results);
    outcome_rows(&mut t);
    cpu_rows(&mut t);
    latency_rows(&mut t);
    aws_rows(&mut t);
    write_rows(&mut t);
    controller_rows(&mut t);
    t.print(|(r, _, _)| format!("N = {}", r.n));
}

/// Jobs done, wall times and the ratios to the baselines.
fn outcome_rows(t: &mut Table<Run>) {
    t.row("jobs done / created", |(r, _, _)| jobs_done(r));
    t.row("jobs not Succeeded (unfinished included)", |(r, _, _)| {
        r.failed.to_string()
    });
    t.row(
        "emulator instances / tags at start (all owners)",
        |(r, _, _)| format!("{} / {}", r.moto_before.0, r.moto_before.1),
    );
    t.row("**Tender wall (s)**", |(r, _, _)| format!("{:.1}", r.wall));
    t.row("**jobs/s end to end**", |(r, _, _)| {
        format!("{:.1}", r.done as f64 / r.wall)
    });
    t.row("**floor wall (s)**", |(_, f, _)| {
        f.as_ref().map_or("-".into(), |f| format!("{:.1}", f.wall))
    });
    t.row("floor jobs/s", |(r, f, _)| {
        f.as_ref()
            .map_or("-".into(), |f| format!("{:.1}", r.n as f64 / f.wall))
    });
    t.row("**ratio Tender / floor** (target ≤ 1.25)", |(r, f, _)| {
        f.as_ref()
            .map_or("-".into(), |f| format!("{:.2}", r.wall / f.wall))
    });
    t.row(
        "agents alone: the same backups, no controller (s)",
        |(r, _, a)| {
            a.as_ref().map_or("-".into(), |a| {
                let failed = if a.failed > 0 {
                    format!(" ({} failed)", a.failed)
                } else {
                    String::new()
                };
                let ended = if a.ended < r.n {
                    format!(" (TIMEOUT: {} of {} ended)", a.ended, r.n)
                } else {
                    String::new()
                };
                format!("{:.1}{failed}{ended}", a.wall)
            })
        },
    );
    t.row(
        "ratio Tender / (floor + agents alone): what orchestration adds",
        |(r, f, a)| match (f, a) {
            (Some(f), Some(a)) => format!("{:.2}", r.wall / (f.wall + a.wall)),
            _ => "-".into(),
        },
    );
    t.row("all jobs created in (s)", |(r, _, _)| {
        format!("{:.1}", r.create_secs)
    });
}

/// CPU seconds by process in each run, and the emulator's queueing.
fn cpu_rows(t: &mut Table<Run>) {
    t.row(
        "CPU seconds by process, Tender run (controller below)",
        |(r, _, _)| fmt_cpu(&r.env_cpu, r.wall),
    );
    t.row("CPU seconds by process, floor run", |(_, f, _)| {
        f.as_ref()
            .map_or("-".into(), |f| fmt_cpu(&f.env_cpu, f.wall))
    });
    t.row("CPU seconds by process, agents alone", |(_, _, a)| {
        a.as_ref()
            .map_or("-".into(), |a| fmt_cpu(&a.env_cpu, a.wall))
    });
    t.row(
        "emulator probe (DescribeRegions) p50 / p99 ms: Tender run; floor run",
        |(r, f, _)| {
            format!(
                "{}; {}",
                fmt_pair(&r.probe_ms),
                f.as_ref().map_or("-".into(), |f| fmt_pair(&f.probe_ms))
            )
        },
    );
}

/// Launch and terminate latencies, from the watch, the status timestamps
/// and the controller's histograms.
fn latency_rows(t: &mut Table<Run>) {
    t.row(
        "launch window: first → last worker launched (s); launches/s",
        |(r, _, _)| {
            format!(
                "{:.1}; {:.1}",
                r.launch_window,
                r.n as f64 / r.launch_window.max(0.001)
            )
        },
    );
    t.row(
        "launch latency p50 / p99 (ms): created → instance ID in status (watch)",
        |(r, _, _)| fmt_pair(&r.launch_ms),
    );
    t.row(
        "  same from status.launchTime (1 s resolution)",
        |(r, _, _)| fmt_pair(&r.launch_status_ms),
    );
    t.row(
        "  controller histogram p50 / p99 (planned → RunInstances; bucket bound, ms)",
        |(r, _, _)| histogram_pair(r, "tender_worker_launch_seconds"),
    );
    t.row(
        "terminate latency p50 / p99 (ms): worker's final message sent → terminatedTime in status (watch)",
        |(r, _, _)| fmt_pair(&r.terminate_ms),
    );
    t.row(
        "  same from finishedTime → terminatedTime (1 s resolution)",
        |(r, _, _)| fmt_pair(&r.terminate_status_ms),
    );
    t.row(
        "  controller histogram p50 / p99 (finished → TerminateInstances; bucket bound, ms)",
        |(r, _, _)| histogram_pair(r, "tender_worker_termination_seconds"),
    );
}

/// `≤ p50 / ≤ p99` of a controller histogram, in ms.
fn histogram_pair(r: &TenderResult, histogram: &str) -> String {
    format!(
        "≤ {} / ≤ {}",
        fmt_secs(r.delta.quantile(histogram, 0.5)),
        fmt_secs(r.delta.quantile(histogram, 0.99))
    )
}

/// The controller's AWS calls: by operation, errors, the shared view's
/// pages, the mutating EC2 calls.
fn aws_rows(t: &mut Table<Run>) {
    let mut ops: Vec<String> = t
        .columns
        .iter()
        .flat_map(|(r, _, _)| r.delta.by("tender_aws_calls_total", "operation"))
        .filter(|(_, v)| *v > 0.0)
        .map(|(k, _)| k)
        .collect();
    ops.sort();
    ops.dedup();
    for op in &ops {
        t.row(&format!("controller AWS calls/job: {op}"), |(r, _, _)| {
            format!("{:.2}", r.per_job(r.calls(op)))
        });
    }
    t.row("controller AWS calls/job: all", |(r, _, _)| {
        format!("{:.2}", r.per_job(r.delta.sum("tender_aws_calls_total")))
    });
    t.row("controller AWS errors by operation", |(r, _, _)| {
        list(&r.delta.by("tender_aws_errors_total", "operation"))
    });
    t.row("controller AWS errors by category", |(r, _, _)| {
        list(&r.delta.by("tender_aws_errors_total", "category"))
    });
    let view_pages = |r: &TenderResult| r.calls("DescribeInstances") - r.calls("DescribeVolumes");
    t.row(
        "DescribeInstances total = source lookups + shared-view pages",
        |(r, _, _)| {
            let (total, source) = (r.calls("DescribeInstances"), r.calls("DescribeVolumes"));
            format!("{total:.0} = {source:.0} + {:.0}", total - source)
        },
    );
    t.row("  shared-view pages per job", |(r, _, _)| {
        format!("{:.2}", r.per_job(view_pages(r)))
    });
    t.row(
        "  shared-view pages per 5 s view window (\"per poll\"; ideal ≈ 1 per 1000 instances)",
        |(r, _, _)| {
            let windows = (r.wall / VIEW_MAX_AGE_SECONDS).max(1.0);
            format!("{:.1} ({:.1} windows)", view_pages(r) / windows, windows)
        },
    );
    t.row("**mutating EC2 calls/job** (target ≤ 2)", |(r, _, _)| {
        format!("{:.2}", r.per_job(mutating_ec2_calls(r)))
    });
}

/// Status writes, API-server writes and reconciles per job.
fn write_rows(t: &mut Table<Run>) {
    t.row(
        "**status writes/job** BackupJob (target ≤ 6)",
        |(r, _, _)| format!("{:.2}", r.per_job(r.status_writes("BackupJob"))),
    );
    t.row("  WorkerConfiguration status writes/job", |(r, _, _)| {
        format!("{:.3}", r.per_job(r.status_writes("WorkerConfiguration")))
    });
    t.row(
        "API-server writes/job: job object (create + changes, watch) + Events",
        |(r, _, _)| {
            format!(
                "{:.2} + {:.2} = {:.2}",
                r.per_job(r.object_writes as f64),
                r.per_job(r.event_writes as f64),
                r.per_job((r.object_writes + r.event_writes) as f64)
            )
        },
    );
    t.row(
        "floor API-server writes/job (create + status)",
        |(_, f, _)| {
            f.as_ref()
                .map_or("-".into(), |f| format!("{}", 1 + f.writes_per_job))
        },
    );
    t.row("reconciles/job: BackupJob", |(r, _, _)| {
        format!("{:.2}", r.per_job(r.reconciles("BackupJob")))
    });
    t.row("reconciles/job: WorkerConfiguration", |(r, _, _)| {
        format!("{:.2}", r.per_job(r.reconciles("WorkerConfiguration")))
    });
    t.row("reconcile errors by category", |(r, _, _)| {
        list(&r.delta.by("tender_reconcile_errors_total", "category"))
    });
}

/// The controller's own resources, and the harness's counts.
fn controller_rows(t: &mut Table<Run>) {
    t.row("controller peak RSS (MiB)", |(r, _, _)| {
        format!("{:.1}", r.hwm_kib as f64 / 1024.0)
    });
    t.row(
        "controller CPU s during the run (whole life)",
        |(r, _, _)| format!("{:.1} ({:.1})", r.cpu_run, r.cpu_total),
    );
    t.row("agent AWS calls/job (in-process workers)", |(r, _, _)| {
        r.agent_calls
            .iter()
            .map(|(op, v)| format!("{op} {:.2}", r.per_job(*v)))
            .collect::<Vec<_>>()
            .join(", ")
    });
    t.row(
        "agents booted (harness: one DescribeInstanceAttribute each, for the user data); at once at most",
        |(r, _, _)| format!("{}; {}", r.agents_started, r.agent_slots),
    );
    t.row(
        "finished workers' resources untagged by the harness",
        |(r, _, _)| r.forgotten.to_string(),
    );
    t.row(
        "agents failed / watch restarts / leftovers terminated",
        |(r, f, _)| {
            format!(
                "{} / {} / {}+{}",
                r.agents_failed,
                r.watch_restarts,
                r.leftovers,
                f.as_ref().map_or(0, |f| f.leftovers)
            )
        },
    );
    t.row("floor errors", |(_, f, _)| {
        f.as_ref().map_or("-".into(), |f| f.errors.to_string())
    });
}

/// Job entries admission read per launched worker, or what an older
/// controller without the counter did.
fn admission_per_launch(r: &TenderResult) -> String {
    if !r.served.has("tender_admission_entries_read_total") {
        return format!("n/a (scans every job: {} per launch)", r.n);
    }
    let read = r.delta.sum("tender_admission_entries_read_total");
    let launches = r.delta.sum("tender_workers_launched_total");
    if launches <= 0.0 {
        return format!("- ({read:.0} read, no launch)");
    }
    format!(
        "{:.2} ({read:.0} over {launches:.0} launches)",
        read / launches
    )
}

/// Controllers side by side (`BENCH_COMPARE`): one column per controller
/// and size.
pub fn print_compare(results: &[TenderResult]) {
    let mut t = Table::new(results);
    t.row("jobs done / created", jobs_done);
    t.row("jobs not Succeeded (unfinished included)", |r| {
        r.failed.to_string()
    });
    t.row("Tender wall (s)", |r| format!("{:.1}", r.wall));
    t.row("**reconciles/job** (all kinds)", |r| {
        format!("{:.2}", r.per_job(r.delta.sum("tender_reconciles_total")))
    });
    t.row("  reconciles/job: BackupJob", |r| {
        format!("{:.2}", r.per_job(r.reconciles("BackupJob")))
    });
    t.row(
        "**configuration reconciles/job** (WorkerConfiguration)",
        |r| format!("{:.2}", r.per_job(r.reconciles("WorkerConfiguration"))),
    );
    t.row("status writes/job: BackupJob", |r| {
        format!("{:.2}", r.per_job(r.status_writes("BackupJob")))
    });
    t.row("status writes/job: WorkerConfiguration", |r| {
        format!("{:.3}", r.per_job(r.status_writes("WorkerConfiguration")))
    });
    t.row(
        "**admission: job entries read per launch** (tender_admission_entries_read_total / workers launched)",
        admission_per_launch,
    );
    t.row("mutating EC2 calls/job", |r| {
        format!("{:.2}", r.per_job(mutating_ec2_calls(r)))
    });
    t.row("reconcile errors by category", |r| {
        list(&r.delta.by("tender_reconcile_errors_total", "category"))
    });
    t.row("controller CPU s during the run; peak RSS (MiB)", |r| {
        format!("{:.1}; {:.1}", r.cpu_run, r.hwm_kib as f64 / 1024.0)
    });
    t.print(|r| format!("{} N = {}", r.label, r.n));
}
