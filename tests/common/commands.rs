//! The command-line tools the tests run: `kubectl`, and the ones
//! `scripts/testenv install` builds into its cache (`helm`, `kstatus`).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file of the repository, as text.
pub fn read(path: &str) -> String {
    let path = repo().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What a finished command said.
pub struct Output {
    /// The exit code; None when a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `cmd`, with `stdin` as its input, to the end.
pub fn run(cmd: &mut Command, stdin: Option<&str>) -> Output {
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the command and returns its stdout; panics, with its output, when it fails.
pub fn run_ok(cmd: &mut Command, stdin: Option<&str>) -> String {
    let out = run(cmd, stdin);
    assert!(
        out.success(),
        "{cmd:?} failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// `kubectl`, for the cluster of `scripts/testenv up`.
pub fn kubectl() -> Command {
    super::require_env();
    Command::new("kubectl")
}

/// A tool `scripts/testenv install` builds: `$OVERRIDE` when set, else
/// `<name>-<version>` in the cache (`$TENDER_CACHE`, by default
/// `~/.cache/tender`), the version read from `scripts/versions.env`.
pub fn cached_tool(name: &str, version_var: &str, override_var: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(override_var) {
        return PathBuf::from(path);
    }
    let versions = read("scripts/versions.env");
    let prefix = format!("{version_var}=");
    let version = versions
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("{version_var} in scripts/versions.env"))
        .trim_matches(|c| c == '"' || c == '\'');
    let cache = std::env::var_os("TENDER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/tender"));
    let path = cache.join("bin").join(format!("{name}-{version}"));
    assert!(
        path.is_file(),
        "{} is missing: run `scripts/testenv install` (or set {override_var})",
        path.display()
    );
    path
}

/// Helm (`$HELM`, else the one `scripts/testenv install` builds).
pub fn helm() -> PathBuf {
    cached_tool("helm", "HELM_VERSION", "HELM")
}

/// What kstatus (sigs.k8s.io/cli-utils `status.Compute`, the library Flux
/// uses) says of an object.
#[derive(Debug, serde::Deserialize)]
pub struct Kstatus {
    /// `InProgress`, `Failed`, `Current`, `Terminating`, `NotFound` or `Unknown`.
    pub status: String,
    pub message: String,
}

/// kstatus' verdict on `obj`, from scripts/kstatus (built by `scripts/testenv
/// install`; or set KSTATUS to its binary).
pub fn kstatus(obj: &Value) -> Kstatus {
    let tool = cached_tool("kstatus", "CLI_UTILS_VERSION", "KSTATUS");
    let out = run_ok(&mut Command::new(tool), Some(&obj.to_string()));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("kstatus said {out:?}: {e}"))
}
