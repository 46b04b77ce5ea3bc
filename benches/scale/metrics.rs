//! The controller's `/metrics`: fetched over plain HTTP and parsed from the
//! Prometheus / OpenMetrics text format (samples only: `# HELP`, `# TYPE`
//! and `# EOF` lines, timestamps and exemplars are skipped).

use std::collections::BTreeMap;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A series: metric name and labels.
type Series = (String, BTreeMap<String, String>);

/// A Prometheus text exposition, by series.
#[derive(Clone, Default)]
pub struct Prom(BTreeMap<Series, f64>);

impl Prom {
    /// Parses a text exposition; lines that are not well-formed samples
    /// are skipped.
    pub fn parse(text: &str) -> Self {
        Prom(text.lines().filter_map(parse_sample).collect())
    }

    /// Whether the exposition has any series of `name` (a controller that
    /// does not know a metric does not show it).
    pub fn has(&self, name: &str) -> bool {
        self.0.keys().any(|(n, _)| n == name)
    }

    /// The sum of every series of `name`.
    pub fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, v)| v)
            .sum()
    }

    /// Values of `name` by the value of `label`.
    pub fn by(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for ((n, labels), v) in &self.0 {
            if n == name
                && let Some(l) = labels.get(label)
            {
                *out.entry(l.clone()).or_insert(0.0) += v;
            }
        }
        out
    }

    /// The value of `name` whose `label` is `value` (summed over other
    /// labels), 0 when there is none.
    pub fn get(&self, name: &str, label: &str, value: &str) -> f64 {
        self.by(name, label).get(value).copied().unwrap_or(0.0)
    }

    /// `self - before`, series by series.
    pub fn minus(&self, before: &Prom) -> Prom {
        Prom(
            self.0
                .iter()
                .map(|(series, v)| {
                    let old = before.0.get(series).copied().unwrap_or(0.0);
                    (series.clone(), v - old)
                })
                .collect(),
        )
    }

    /// The upper bound of the histogram bucket holding quantile `q`.
    pub fn quantile(&self, histogram: &str, q: f64) -> Option<f64> {
        let count = self.sum(&format!("{histogram}_count"));
        if count <= 0.0 {
            return None;
        }
        let bucket = format!("{histogram}_bucket");
        let mut buckets: Vec<(f64, f64)> = self
            .0
            .iter()
            .filter(|((n, _), _)| *n == bucket)
            .filter_map(|((_, l), v)| Some((l.get("le")?.parse::<f64>().ok()?, *v)))
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
            .into_iter()
            .find(|(_, cum)| *cum >= q * count)
            .map(|(le, _)| le)
    }
}

/// One sample line: `name{label="value",...} value [timestamp] [# exemplar]`.
fn parse_sample(line: &str) -> Option<(Series, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let (name, mut rest) = line.split_at(name_end);
    let mut labels = BTreeMap::new();
    if let Some(body) = rest.strip_prefix('{') {
        (labels, rest) = parse_labels(body)?;
    }
    // Rust's float parser takes `+Inf`, `-Inf` and `NaN` as the format writes them.
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some(((name.to_string(), labels), value))
}

/// The labels after `{`, up to `}`; and what follows it.
fn parse_labels(mut s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let (key, after) = s.split_once('=')?;
        let (value, rest) = unquote(after.trim_start().strip_prefix('"')?)?;
        labels.insert(key.trim().to_string(), value);
        s = rest;
    }
}

/// A label value up to its closing quote, with `\\`, `\"` and `\n`
/// unescaped; and what follows the quote.
fn unquote(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                escaped => out.push(escaped),
            },
            c => out.push(c),
        }
    }
    None
}

/// The parser's cases (a benchmark has no test harness: `cargo test
/// --all-targets` runs this instead of the benchmark).
pub fn self_check() {
    let text = concat!(
        "# HELP tender_reconciles Reconciles, by kind.\n",
        "# TYPE tender_reconciles counter\n",
        "tender_reconciles_total{kind=\"BackupJob\"} 12\n",
        "tender_reconciles_total{kind=\"WorkerConfiguration\"} 3.5e0\n",
        "tender_aws_errors_total{operation=\"RunInstances\",category=\"a \\\"b\\\", c\\\\d\\n\"} 2 1700000000000\n",
        "tender_h_bucket{le=\"0.5\"} 1\n",
        "tender_h_bucket{le=\"+Inf\",} 4\n",
        "tender_h_count 4\n",
        "tender_up 1 # {trace_id=\"x\"} 1\n",
        "broken{kind=\"unterminated} 1\n",
        "# EOF\n",
    );
    let p = Prom::parse(text);
    assert_eq!(p.sum("tender_reconciles_total"), 15.5);
    assert_eq!(p.get("tender_reconciles_total", "kind", "BackupJob"), 12.0);
    assert_eq!(p.get("tender_reconciles_total", "kind", "RestoreJob"), 0.0);
    let errors = p.by("tender_aws_errors_total", "category");
    assert_eq!(errors.get("a \"b\", c\\d\n"), Some(&2.0), "{errors:?}");
    assert_eq!(p.quantile("tender_h", 0.25), Some(0.5));
    assert_eq!(p.quantile("tender_h", 0.99), Some(f64::INFINITY));
    assert_eq!(p.sum("tender_up"), 1.0);
    assert!(!p.has("broken"));
    assert!(!p.has("tender_admission_entries_read_total"));
    let later = Prom::parse("tender_reconciles_total{kind=\"BackupJob\"} 20\n");
    assert_eq!(later.minus(&p).sum("tender_reconciles_total"), 8.0);
}

async fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await.ok()?;
    Some(body.split_once("\r\n\r\n")?.1.to_string())
}

/// Whether the controller on `port` answers /healthz.
pub async fn healthy(port: u16) -> bool {
    http_get(port, "/healthz").await.is_some()
}

/// The controller's metrics (empty when it does not answer).
pub async fn scrape(port: u16) -> Prom {
    Prom::parse(&http_get(port, "/metrics").await.unwrap_or_default())
}
