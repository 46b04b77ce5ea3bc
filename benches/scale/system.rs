//! What the machine and its processes used: CPU seconds and memory from
//! `/proc`, and percentiles of what the runs timed.

use std::collections::BTreeMap;

/// CPU seconds (user + system) of a process.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of stat; the list starts at field 3.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds used so far by each process of the environment (by the pid
/// files `scripts/testenv` keeps: moto, etcd, kube-apiserver) and by this
/// one (the in-process agents, the floor, the watch).
pub fn env_cpu() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    if let Some(dir) = std::env::var_os("TENDER_TESTENV")
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "pid")
                && let (Some(name), Ok(pid)) = (
                    path.file_stem().and_then(|n| n.to_str()),
                    std::fs::read_to_string(&path),
                )
                && let Ok(pid) = pid.trim().parse::<u32>()
            {
                out.insert(name.to_string(), cpu_seconds(pid));
            }
        }
    }
    out.insert("bench".into(), cpu_seconds(std::process::id()));
    out
}

pub fn cpu_delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .collect()
}

/// "moto 3.1, etcd 0.4, …; total 9.3 of 12.6" (CPU seconds the run used,
/// and what the machine had in its wall time).
pub fn fmt_cpu(cpu: &BTreeMap<String, f64>, wall: f64) -> String {
    let total: f64 = cpu.values().sum();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let parts: Vec<String> = cpu.iter().map(|(k, v)| format!("{k} {v:.1}")).collect();
    format!(
        "{}; total {total:.1} of {:.1}",
        parts.join(", "),
        wall * cores
    )
}

/// A line of /proc/PID/status in KiB (VmHWM, VmRSS).
pub fn proc_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// CPUs, their model and the memory of this machine, for the report.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "{cpus} CPUs ({model}), {:.1} GiB memory; controller, kube-apiserver, etcd, moto and this bench share them",
        mem_kib as f64 / 1024.0 / 1024.0
    )
}
