//! The IAM policies in `iam/` grant what the code calls, and no more.
//!
//! What the code calls is read from the source, not listed here: every AWS
//! call goes through `src/aws/`, where each SDK call is counted with
//! `.count("Operation")`. The service of each counted operation comes from
//! the SDK client the same function uses (an `AwsClients` accessor that
//! returns an `aws_sdk_<service>::Client`, such as `.ec2(`/`.sqs(`, or an
//! `aws_sdk_<service>::` client built in place). Which policy needs it comes
//! from who calls the function: `src/worker/` and `src/mover/` (the data
//! mover, which only the agent runs) need the worker policy,
//! everything else (and any function nobody outside `src/aws/` calls yet)
//! the controller policy. Permissions a request needs besides its own action
//! are derived from the request too: tags at creation (`ec2:CreateTags` with
//! `ec2:CreateAction`, `sqs:TagQueue`), an instance profile
//! (`iam:PassRole`), an STS `AssumeRoleProvider` (`sts:AssumeRole`).
// Its helpers (not only its #[test]s, which clippy.toml covers) unwrap and panic.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;
use tender::names::tags;

/// Services whose SDK crate (`aws_sdk_<name>`) is named like their IAM
/// action prefix. A client of another service fails the analysis until it
/// is added here (with its IAM prefix if that differs).
const KNOWN_SERVICES: &[&str] = &["ebs", "ec2", "iam", "kms", "s3", "sqs", "ssm", "sts"];

/// A sample account and region for ARNs the policies' patterns must match.
const REGION: &str = "us-east-1";
const ACCOUNT: &str = "111122223333";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------
// The policies.

struct Statement {
    sid: String,
    actions: Vec<String>,
    resources: Vec<String>,
    condition: serde_json::Map<String, Value>,
}

struct Policy {
    file: &'static str,
    statements: Vec<Statement>,
}

fn strings(value: &Value, file: &str, sid: &str, field: &str) -> Vec<String> {
    let list = match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => panic!("{file} {sid}: {field} holds a non-string {other}"),
            })
            .collect(),
        other => panic!("{file} {sid}: {field} must be a string or a list, not {other}"),
    };
    assert!(!list.is_empty(), "{file} {sid}: {field} is empty");
    list
}

/// Reads `iam/<file>` and checks it is a well-formed identity policy: Version
/// 2012-10-17, and statements that each have a Sid, Effect Allow, Action and
/// Resource (never NotAction, NotResource or Principal).
fn load(file: &'static str) -> Policy {
    let path = root().join("iam").join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let doc: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file} is not valid JSON: {e}"));
    let top = doc
        .as_object()
        .unwrap_or_else(|| panic!("{file}: the policy must be a JSON object"));
    for key in top.keys() {
        assert!(
            key == "Version" || key == "Statement",
            "{file}: unexpected top-level key {key}"
        );
    }
    assert_eq!(
        top.get("Version").and_then(Value::as_str),
        Some("2012-10-17"),
        "{file}: Version must be \"2012-10-17\""
    );
    let raw = top
        .get("Statement")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{file}: Statement must be a list"));
    assert!(!raw.is_empty(), "{file}: no statements");
    let mut sids = BTreeSet::new();
    let statements = raw
        .iter()
        .map(|s| {
            let s = s
                .as_object()
                .unwrap_or_else(|| panic!("{file}: every statement must be an object"));
            let sid = s
                .get("Sid")
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("{file}: a statement has no Sid: {s:?}"))
                .to_string();
            assert!(
                !sid.is_empty() && sid.chars().all(|c| c.is_ascii_alphanumeric()),
                "{file}: Sid {sid:?} must be non-empty and alphanumeric"
            );
            assert!(sids.insert(sid.clone()), "{file}: Sid {sid} is used twice");
            for key in s.keys() {
                assert!(
                    matches!(
                        key.as_str(),
                        "Sid" | "Effect" | "Action" | "Resource" | "Condition"
                    ),
                    "{file} {sid}: {key} is not allowed in Tender's policies"
                );
            }
            assert_eq!(
                s.get("Effect").and_then(Value::as_str),
                Some("Allow"),
                "{file} {sid}: Effect must be Allow"
            );
            let actions = strings(
                s.get("Action")
                    .unwrap_or_else(|| panic!("{file} {sid}: no Action")),
                file,
                &sid,
                "Action",
            );
            for a in actions.iter().filter(|a| *a != "*") {
                let (service, name) = a
                    .split_once(':')
                    .unwrap_or_else(|| panic!("{file} {sid}: action {a} is not service:Name"));
                assert!(
                    !service.is_empty() && !name.is_empty(),
                    "{file} {sid}: action {a} is not service:Name"
                );
            }
            let resources = strings(
                s.get("Resource")
                    .unwrap_or_else(|| panic!("{file} {sid}: no Resource")),
                file,
                &sid,
                "Resource",
            );
            for r in &resources {
                assert!(
                    r == "*" || r.starts_with("arn:aws:"),
                    "{file} {sid}: resource {r} is neither * nor an ARN"
                );
            }
            let condition = match s.get("Condition") {
                None => serde_json::Map::new(),
                Some(Value::Object(c)) => {
                    for (op, keys) in c {
                        let keys = keys.as_object().unwrap_or_else(|| {
                            panic!("{file} {sid}: Condition {op} must map keys to values")
                        });
                        for (key, value) in keys {
                            strings(value, file, &sid, &format!("Condition {op} {key}"));
                        }
                    }
                    c.clone()
                }
                Some(other) => panic!("{file} {sid}: Condition must be an object, not {other}"),
            };
            Statement {
                sid,
                actions,
                resources,
                condition,
            }
        })
        .collect();
    Policy { file, statements }
}

fn controller_policy() -> Policy {
    load("controller-policy.json")
}

fn worker_policy() -> Policy {
    load("worker-policy.json")
}

/// `*` and `?` wildcards, as IAM matches actions and resources.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

impl Statement {
    /// IAM action names are case-insensitive.
    fn grants(&self, action: &str) -> bool {
        self.actions
            .iter()
            .any(|a| glob(&a.to_ascii_lowercase(), &action.to_ascii_lowercase()))
    }

    fn covers(&self, arn: &str) -> bool {
        self.resources.iter().any(|r| glob(r, arn))
    }

    /// The values of a `StringEquals` condition on `key`.
    fn string_equals(&self, key: &str) -> Option<Vec<String>> {
        let v = self.condition.get("StringEquals")?.get(key)?;
        Some(strings(v, "", &self.sid, key))
    }

    /// True when the statement only applies when `key` is exactly `value`.
    fn requires(&self, key: &str, value: &str) -> bool {
        self.string_equals(key).is_some_and(|v| v == [value])
    }
}

impl Policy {
    fn granting(&self, action: &str) -> Vec<&Statement> {
        self.statements
            .iter()
            .filter(|s| s.grants(action))
            .collect()
    }

    fn actions(&self) -> BTreeSet<String> {
        self.statements
            .iter()
            .flat_map(|s| s.actions.iter().cloned())
            .collect()
    }
}

fn managed_by_resource_tag() -> String {
    format!("aws:ResourceTag/{}", tags::MANAGED_BY)
}

fn managed_by_request_tag() -> String {
    format!("aws:RequestTag/{}", tags::MANAGED_BY)
}

fn ec2_arn(resource_type: &str) -> String {
    format!("arn:aws:ec2:{REGION}:{ACCOUNT}:{resource_type}/{resource_type}-0123456789abcdef0")
}

// ---------------------------------------------------------------------------
// Reading the source.

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// If a string or char literal starts at `i`, the index just after it.
fn literal_end(b: &[u8], i: usize) -> Option<usize> {
    let prev_ident = i > 0 && is_ident(b[i - 1]);
    match b[i] {
        b'"' => {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            Some((j + 1).min(b.len()))
        }
        b'b' if !prev_ident && b.get(i + 1) == Some(&b'"') => literal_end(b, i + 1),
        b'b' if !prev_ident && b.get(i + 1) == Some(&b'r') => raw_string_end(b, i + 1),
        b'r' if !prev_ident => raw_string_end(b, i),
        b'\'' => {
            if b.get(i + 1) == Some(&b'\\') {
                // '\n', '\'', '\u{..}': the escaped char is never the end.
                let mut j = i + 3;
                while j < b.len() && b[j] != b'\'' {
                    j += 1;
                }
                return Some((j + 1).min(b.len()));
            }
            let first = *b.get(i + 1)?;
            let len = match first {
                0..=0x7f => 1,
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                _ => 4,
            };
            // A char literal; otherwise a lifetime such as 'static.
            (b.get(i + 1 + len) == Some(&b'\'')).then_some(i + 2 + len)
        }
        _ => None,
    }
}

/// `r"..."`, `r#"..."#`, ... starting at `i` (the `r`).
fn raw_string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    let mut hashes = 0;
    while b.get(j) == Some(&b'#') {
        hashes += 1;
        j += 1;
    }
    if b.get(j) != Some(&b'"') {
        return None;
    }
    j += 1;
    while j < b.len() {
        if b[j] == b'"'
            && b[j + 1..]
                .iter()
                .take(hashes)
                .filter(|&&c| c == b'#')
                .count()
                == hashes
        {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(b.len())
}

/// The index of the bracket closing the one at `open` (`{`/`(`), skipping
/// string and char literals.
fn matching(b: &[u8], open: usize) -> usize {
    let (o, c) = (b[open], if b[open] == b'{' { b'}' } else { b')' });
    let mut depth = 0;
    let mut i = open;
    while i < b.len() {
        if let Some(end) = literal_end(b, i) {
            i = end;
            continue;
        }
        if b[i] == o {
            depth += 1;
        } else if b[i] == c {
            depth -= 1;
            if depth == 0 {
                return i;
            }
        }
        i += 1;
    }
    panic!("unbalanced brackets in the source")
}

/// The source with comments and `#[cfg(test)]` modules blanked out (so that
/// doc comments and unit tests never look like calls); literals stay.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = b.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let mut i = 0;
    while i < b.len() {
        if let Some(end) = literal_end(b, i) {
            i = end;
        } else if b[i..].starts_with(b"//") {
            let end = b[i..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |p| i + p);
            blank(&mut out, i, end);
            i = end;
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            let mut j = i;
            while j < b.len() {
                if b[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if b[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else {
            i += 1;
        }
    }
    let mut code = String::from_utf8(out).unwrap();
    while let Some(at) = code.find("#[cfg(test)]") {
        let b = code.as_bytes().to_vec();
        let after = at + "#[cfg(test)]".len();
        let rest = code[after..].trim_start();
        let inline_mod = (rest.starts_with("mod ") || rest.starts_with("pub mod "))
            && rest
                .find('{')
                .is_some_and(|o| rest.find(';').is_none_or(|s| o < s));
        let end = if inline_mod {
            matching(&b, after + code[after..].find('{').unwrap()) + 1
        } else {
            after
        };
        let mut bytes = code.into_bytes();
        blank(&mut bytes, at, end);
        code = String::from_utf8(bytes).unwrap();
    }
    code
}

/// One function of `src/aws/`.
struct Func {
    /// `src/aws/<file>.rs fn <name>`, for messages.
    origin: String,
    name: String,
    signature: String,
    body: String,
}

impl Func {
    fn text(&self) -> String {
        format!("{}{}", self.signature, self.body)
    }
}

/// Every function with a body in `code` (nested ones are part of their
/// enclosing function).
fn functions(file: &str, code: &str) -> Vec<Func> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if let Some(end) = literal_end(b, i) {
            i = end;
            continue;
        }
        let is_fn = b[i..].starts_with(b"fn")
            && (i == 0 || !is_ident(b[i - 1]))
            && b.get(i + 2).is_some_and(|c| c.is_ascii_whitespace());
        if !is_fn {
            i += 1;
            continue;
        }
        let mut j = i + 2;
        while b[j].is_ascii_whitespace() {
            j += 1;
        }
        let name_start = j;
        while j < b.len() && is_ident(b[j]) {
            j += 1;
        }
        let name = code[name_start..j].to_string();
        // The body starts at the first `{` outside the parameter list; a
        // `;` first means a declaration without a body.
        let mut k = j;
        let mut open = None;
        while k < b.len() {
            if let Some(end) = literal_end(b, k) {
                k = end;
                continue;
            }
            match b[k] {
                b'(' => {
                    k = matching(b, k) + 1;
                    continue;
                }
                b'{' => {
                    open = Some(k);
                    break;
                }
                b';' => break,
                _ => {}
            }
            k += 1;
        }
        let Some(open) = open else {
            i = k;
            continue;
        };
        let close = matching(b, open);
        out.push(Func {
            origin: format!("{file} fn {name}"),
            name,
            signature: code[i..open].to_string(),
            body: code[open..=close].to_string(),
        });
        i = close + 1;
    }
    out
}

/// `RunInstances` → `run_instances`, as the Rust SDK names its operations.
fn snake(op: &str) -> String {
    let cs: Vec<char> = op.chars().collect();
    let mut s = String::new();
    for (i, c) in cs.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let after_lower =
                i > 0 && (cs[i - 1].is_ascii_lowercase() || cs[i - 1].is_ascii_digit());
            let acronym_end = i > 0
                && cs[i - 1].is_ascii_uppercase()
                && cs.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            if after_lower || acronym_end {
                s.push('_');
            }
            s.push(c.to_ascii_lowercase());
        } else {
            s.push(*c);
        }
    }
    s
}

/// `SecurityGroup` → `security-group`, as EC2 ARNs name resource types.
fn kebab(name: &str) -> String {
    snake(name).replace('_', "-")
}

/// Byte offsets of `needle` in `hay`.
fn find_all(hay: &str, needle: &str) -> Vec<usize> {
    hay.match_indices(needle).map(|(i, _)| i).collect()
}

/// The identifier that ends just before `end`.
fn ident_before(text: &str, end: usize) -> &str {
    let b = text.as_bytes();
    let mut start = end;
    while start > 0 && is_ident(b[start - 1]) {
        start -= 1;
    }
    &text[start..end]
}

/// The `.count("Operation")` calls of a function, in order. Any other
/// argument than a string literal cannot be checked and fails the analysis.
fn counted_operations(f: &Func) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for at in find_all(&f.body, ".count(") {
        let rest = f.body[at + ".count(".len()..].trim_start();
        if rest.starts_with(')') {
            continue; // Iterator::count()
        }
        let Some(lit) = rest.strip_prefix('"') else {
            let arg: String = rest.chars().take_while(|&c| c != ')').collect();
            panic!(
                "{}: count({arg}) does not name its operation with a string literal; \
                 tests/iam.rs cannot tell which IAM action it needs",
                f.origin
            );
        };
        let op: String = lit.chars().take_while(|&c| c != '"').collect();
        assert!(
            !op.is_empty() && op.chars().all(|c| c.is_ascii_alphanumeric()),
            "{}: count(\"{op}\") is not an AWS API operation name",
            f.origin
        );
        out.push((at, op));
    }
    out
}

/// The services whose clients appear in `text`: accessor calls (`.ec2(`)
/// and `aws_sdk_<service>::` paths.
fn services_in(text: &str, accessors: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = accessors
        .iter()
        .filter(|(name, _)| text.contains(&format!(".{name}(")))
        .map(|(_, svc)| svc.clone())
        .collect();
    for at in find_all(text, "aws_sdk_") {
        let rest = &text[at + "aws_sdk_".len()..];
        let svc: String = rest.chars().take_while(|&c| c != ':').collect();
        if rest[svc.len()..].starts_with("::") && svc.bytes().all(is_ident) {
            out.insert(svc);
        }
    }
    out
}

/// Which service the SDK call `.snake(` at `at` in `f` is made on, when the
/// function uses several: the client it is called on, either a chain
/// (`self.ec2(r).describe_instances(`) or a variable bound in the function
/// (`let ec2 = self.ec2(r);` ... `ec2.describe_instances(`).
fn receiver_service(f: &Func, at: usize, accessors: &BTreeMap<String, String>) -> Option<String> {
    let body = &f.body;
    let b = body.as_bytes();
    let mut end = at;
    while end > 0 && b[end - 1].is_ascii_whitespace() {
        end -= 1;
    }
    let one = |set: BTreeSet<String>| (set.len() == 1).then(|| set.into_iter().next().unwrap());
    if end > 0 && b[end - 1] == b')' {
        // A chain: find the call that returned the client.
        let mut depth = 0;
        let mut i = end;
        while i > 0 {
            i -= 1;
            match b[i] {
                b')' => depth += 1,
                b'(' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
        }
        let method = ident_before(body, i);
        if let Some(svc) = accessors.get(method) {
            return Some(svc.clone());
        }
        let line_start = body[..i].rfind(['\n', ';', '{']).map_or(0, |p| p + 1);
        return one(services_in(&body[line_start..=i], accessors));
    }
    let receiver = ident_before(body, end);
    if receiver.is_empty() || receiver == "self" {
        return None;
    }
    let binding = [format!("let {receiver} ="), format!("let mut {receiver} =")]
        .iter()
        .filter_map(|pat| body[..at].rfind(pat.as_str()))
        .max()?;
    let stmt_end = body[binding..]
        .find(';')
        .map_or(body.len(), |p| binding + p);
    one(services_in(&body[binding..stmt_end], accessors))
}

/// The IAM action an API operation of `service` needs.
fn iam_action(service: &str, op: &str) -> String {
    // SQS authorizes its batch operations with the single-message action.
    let op = match (service, op.strip_suffix("Batch")) {
        ("sqs", Some(single)) => single,
        // S3 authorizes HEAD and ListObjectsV2 with the read and list actions.
        ("s3", _) if op == "HeadObject" => "GetObject",
        ("s3", _) if op == "ListObjectsV2" => "ListBucket",
        _ => op,
    };
    format!("{service}:{op}")
}

/// EC2 resource types tagged at creation by the request that ends at the
/// next `.tag_specifications(`.
struct TagOnCreate {
    /// The API operation, e.g. `RunInstances`.
    operation: String,
    /// ARN resource types, e.g. `instance`, `volume`.
    resource_types: BTreeSet<String>,
    origin: String,
}

/// What one function of `src/aws/` needs by itself.
#[derive(Default)]
struct Facts {
    /// IAM action → where it is needed.
    actions: BTreeMap<String, BTreeSet<String>>,
    tag_on_create: Vec<TagOnCreate>,
}

impl Facts {
    fn need(&mut self, action: String, origin: &str) {
        self.actions
            .entry(action)
            .or_default()
            .insert(origin.to_string());
    }

    fn merge(&mut self, other: &Facts) {
        for (action, origins) in &other.actions {
            self.actions
                .entry(action.clone())
                .or_default()
                .extend(origins.iter().cloned());
        }
        for t in &other.tag_on_create {
            self.tag_on_create.push(TagOnCreate {
                operation: t.operation.clone(),
                resource_types: t.resource_types.clone(),
                origin: t.origin.clone(),
            });
        }
    }
}

fn analyse(f: &Func, accessors: &BTreeMap<String, String>) -> Facts {
    let mut facts = Facts::default();
    let text = f.text();
    let fn_services = services_in(&text, accessors);
    let mut ops: Vec<(usize, String, String)> = Vec::new(); // (call site, op, service)
    for (_, op) in counted_operations(f) {
        let call = format!(".{}(", snake(&op));
        let sites = find_all(&f.body, &call);
        assert!(
            !sites.is_empty(),
            "{}: count(\"{op}\") but no SDK call {call}..) in the same function; \
             tests/iam.rs checks each counted operation against the call it counts",
            f.origin
        );
        let service = if fn_services.len() == 1 {
            fn_services.iter().next().unwrap().clone()
        } else {
            let found: BTreeSet<String> = sites
                .iter()
                .filter_map(|&at| receiver_service(f, at, accessors))
                .collect();
            assert!(
                found.len() == 1,
                "{}: cannot tell which AWS service count(\"{op}\") is for: the function uses \
                 clients {fn_services:?} and the call {call}..) is made on {found:?}. Build the \
                 client with an AwsClients accessor (self.ec2(..), self.sqs(..)) or an \
                 aws_sdk_<service>:: client in the same function",
                f.origin
            );
            found.into_iter().next().unwrap()
        };
        assert!(
            KNOWN_SERVICES.contains(&service.as_str()),
            "{}: count(\"{op}\") is made with an aws_sdk_{service} client; add its IAM \
             prefix to KNOWN_SERVICES in tests/iam.rs",
            f.origin
        );
        facts.need(iam_action(&service, &op), &f.origin);
        for at in sites {
            ops.push((at, op.clone(), service.clone()));
        }
    }
    ops.sort();

    // Tags at creation: EC2 authorizes ec2:CreateTags with ec2:CreateAction.
    for at in find_all(&f.body, ".tag_specifications(") {
        let Some((_, op, _)) = ops
            .iter()
            .rev()
            .find(|(site, _, s)| *site < at && s == "ec2")
        else {
            panic!(
                "{}: .tag_specifications( follows no counted EC2 call; tests/iam.rs cannot \
                 tell which action tags at creation",
                f.origin
            );
        };
        let resource_types = find_all(&f.body, "ResourceType::")
            .into_iter()
            .map(|p| {
                let rest = &f.body[p + "ResourceType::".len()..];
                kebab(&rest[..rest.bytes().take_while(|&c| is_ident(c)).count()])
            })
            .collect();
        facts.need("ec2:CreateTags".into(), &f.origin);
        facts.tag_on_create.push(TagOnCreate {
            operation: op.clone(),
            resource_types,
            origin: f.origin.clone(),
        });
    }
    // An instance profile on the instance: the role in it is passed to EC2.
    if f.body.contains(".iam_instance_profile(") {
        facts.need("iam:PassRole".into(), &f.origin);
    }
    // SQS tags a queue at creation only with sqs:TagQueue as well.
    let sqs_create = ops
        .iter()
        .any(|(_, op, s)| s == "sqs" && op == "CreateQueue");
    if sqs_create && (f.body.contains(".tags(") || f.body.contains(".set_tags(")) {
        facts.need("sqs:TagQueue".into(), &f.origin);
    }
    // The SDK's AssumeRoleProvider calls sts:AssumeRole (uncounted).
    if f.body.contains("AssumeRoleProvider") {
        facts.need("sts:AssumeRole".into(), &f.origin);
        if f.body.contains(".session_tags(") || f.body.contains(".tags(") {
            facts.need("sts:TagSession".into(), &f.origin);
        }
    }
    facts
}

/// What the code needs, for the controller and for the worker.
struct Needs {
    controller: Facts,
    worker: Facts,
}

/// Names of `src/aws/` functions that `code` calls as methods or paths.
fn calls_into(code: &str, names: &BTreeSet<String>) -> BTreeSet<String> {
    names
        .iter()
        .filter(|n| code.contains(&format!(".{n}(")) || code.contains(&format!("::{n}(")))
        .cloned()
        .collect()
}

fn needs() -> Needs {
    let src = root().join("src");
    let aws_dir = src.join("aws");
    let mut funcs = Vec::new();
    for path in rust_files(&aws_dir) {
        let rel = path.strip_prefix(root()).unwrap().display().to_string();
        let code = code_only(&std::fs::read_to_string(&path).unwrap());
        funcs.extend(functions(&rel, &code));
    }
    assert!(
        funcs.iter().any(|f| !counted_operations(f).is_empty()),
        "found no counted AWS call in src/aws/: has the AWS layer moved?"
    );

    // AwsClients accessors: functions that return an SDK client.
    let accessors: BTreeMap<String, String> = funcs
        .iter()
        .filter_map(|f| {
            let ret = f.signature.split("->").nth(1)?;
            let svc = ret.trim().strip_prefix("aws_sdk_")?.split("::").next()?;
            ret.contains("::Client")
                .then(|| (f.name.clone(), svc.to_string()))
        })
        .collect();

    let facts: Vec<Facts> = funcs.iter().map(|f| analyse(f, &accessors)).collect();
    let names: BTreeSet<String> = funcs.iter().map(|f| f.name.clone()).collect();
    // Calls between functions of src/aws/ (methods, paths and plain calls).
    let callees: Vec<BTreeSet<String>> = funcs
        .iter()
        .map(|f| {
            names
                .iter()
                .filter(|n| {
                    find_all(&f.body, &format!("{n}("))
                        .into_iter()
                        .any(|p| p == 0 || !is_ident(f.body.as_bytes()[p - 1]))
                })
                .cloned()
                .collect()
        })
        .collect();
    let reach = |entries: &BTreeSet<String>| -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<String> = entries.iter().cloned().collect();
        let mut done = BTreeSet::new();
        while let Some(name) = todo.pop() {
            if !done.insert(name.clone()) {
                continue;
            }
            for (i, f) in funcs.iter().enumerate() {
                if f.name == name {
                    seen.insert(i);
                    todo.extend(callees[i].iter().cloned());
                }
            }
        }
        seen
    };

    let mut worker_entries = BTreeSet::new();
    let mut controller_entries = BTreeSet::new();
    for path in rust_files(&src) {
        if path.starts_with(&aws_dir) {
            continue;
        }
        let code = code_only(&std::fs::read_to_string(&path).unwrap());
        let called = calls_into(&code, &names);
        // The data mover runs only in the worker agent.
        if path.starts_with(src.join("worker")) || path.starts_with(src.join("mover")) {
            worker_entries.extend(called);
        } else {
            controller_entries.extend(called);
        }
    }
    let worker_fns = reach(&worker_entries);
    let mut controller_fns = reach(&controller_entries);
    // Functions nobody outside src/aws/ calls yet count as the controller's.
    let all = reach(&worker_entries.union(&controller_entries).cloned().collect());
    let unreached: BTreeSet<String> = (0..funcs.len())
        .filter(|i| !all.contains(i))
        .map(|i| funcs[i].name.clone())
        .collect();
    controller_fns.extend(reach(&unreached));

    let collect = |fns: &BTreeSet<usize>| {
        let mut out = Facts::default();
        for &i in fns {
            out.merge(&facts[i]);
        }
        out
    };
    Needs {
        controller: collect(&controller_fns),
        worker: collect(&worker_fns),
    }
}

fn describe(facts: &Facts) -> String {
    facts
        .actions
        .iter()
        .map(|(a, o)| {
            format!(
                "  {a:<40} {}",
                o.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn missing(policy: &Policy, facts: &Facts) -> Vec<String> {
    facts
        .actions
        .iter()
        .filter(|(action, _)| policy.granting(action).is_empty())
        .map(|(action, origins)| {
            format!(
                "{action} (called in {})",
                origins.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect()
}

fn is_read_only(action: &str) -> bool {
    let name = action.split_once(':').map_or(action, |(_, n)| n);
    ["Describe", "Get", "List"]
        .iter()
        .any(|p| name.starts_with(p))
}

// ---------------------------------------------------------------------------
// The tests.

#[test]
fn policies_are_well_formed() {
    for policy in [controller_policy(), worker_policy()] {
        assert!(
            !policy.statements.is_empty(),
            "{}: no statements",
            policy.file
        );
    }
}

#[test]
fn the_analysis_understands_every_aws_call() {
    // Fails with a message naming the function when a counted call's
    // service or IAM action cannot be determined.
    let needs = needs();
    println!("controller needs:\n{}", describe(&needs.controller));
    println!("worker needs:\n{}", describe(&needs.worker));
    assert!(!needs.controller.actions.is_empty());
    assert!(!needs.worker.actions.is_empty());
}

#[test]
fn aws_sdk_is_used_only_in_src_aws() {
    // Otherwise calls could escape the analysis above.
    let src = root().join("src");
    for path in rust_files(&src) {
        if path.starts_with(src.join("aws")) {
            continue;
        }
        let code = code_only(&std::fs::read_to_string(&path).unwrap());
        for sdk in [
            "aws_sdk_",
            "aws_config",
            "aws_credential_types",
            "aws_smithy",
        ] {
            assert!(
                !code.contains(sdk),
                "{} uses {sdk}: every AWS call must go through src/aws/ so that the IAM \
                 policies can be checked against it",
                path.display()
            );
        }
    }
}

#[test]
fn controller_policy_grants_every_action_the_controller_calls() {
    let needs = needs();
    let missing = missing(&controller_policy(), &needs.controller);
    assert!(
        missing.is_empty(),
        "iam/controller-policy.json does not grant:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn controller_policy_grants_nothing_the_controller_does_not_call() {
    let needs = needs();
    let extra: Vec<String> = controller_policy()
        .actions()
        .into_iter()
        .filter(|granted| {
            !needs
                .controller
                .actions
                .keys()
                .any(|needed| glob(&granted.to_ascii_lowercase(), &needed.to_ascii_lowercase()))
        })
        .collect();
    assert!(
        extra.is_empty(),
        "iam/controller-policy.json grants actions the controller never calls: {extra:?}"
    );
}

#[test]
fn worker_policy_grants_exactly_what_the_worker_calls() {
    let needs = needs();
    let policy = worker_policy();
    let missing = missing(&policy, &needs.worker);
    assert!(
        missing.is_empty(),
        "iam/worker-policy.json does not grant:\n  {}",
        missing.join("\n  ")
    );
    let extra: Vec<String> = policy
        .actions()
        .into_iter()
        .filter(|a| !needs.worker.actions.contains_key(a))
        .collect();
    assert!(
        extra.is_empty(),
        "iam/worker-policy.json grants actions the worker never calls: {extra:?}"
    );
}

/// The EC2 changes a worker may make: snapshot the protected instance
/// (tagging the snapshots at creation only), and delete the snapshots
/// Tender took.
const WORKER_EC2_CHANGES: &[&str] = &[
    "ec2:CreateSnapshots",
    "ec2:CreateTags",
    "ec2:DeleteSnapshot",
];

fn condition_value<'a>(s: &'a Statement, op: &str, key: &str) -> Option<Vec<&'a str>> {
    let v = s.condition.get(op)?.get(key)?;
    Some(match v {
        Value::String(x) => vec![x.as_str()],
        Value::Array(xs) => xs.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    })
}

#[test]
fn worker_policy_changes_on_ec2_only_the_snapshots_it_takes() {
    for s in &worker_policy().statements {
        for a in &s.actions {
            let service = a.split_once(':').map_or(a.as_str(), |(s, _)| s);
            if !glob(&service.to_ascii_lowercase(), "ec2") || is_read_only(a) {
                continue;
            }
            assert!(
                WORKER_EC2_CHANGES.contains(&a.as_str()),
                "iam/worker-policy.json {}: {a} could change EC2 resources; workers only take and delete their snapshots",
                s.sid
            );
            match a.as_str() {
                "ec2:CreateTags" => assert_eq!(
                    condition_value(s, "StringEquals", "ec2:CreateAction"),
                    Some(vec!["CreateSnapshots"]),
                    "{}: tags only at CreateSnapshots",
                    s.sid
                ),
                "ec2:DeleteSnapshot" => assert_eq!(
                    condition_value(
                        s,
                        "StringEquals",
                        &format!("aws:ResourceTag/{}", tags::MANAGED_BY)
                    ),
                    Some(vec![tags::MANAGED_BY_VALUE]),
                    "{}: deletes only Tender's snapshots",
                    s.sid
                ),
                _ => {}
            }
        }
    }
}

#[test]
fn controller_changes_and_deletes_only_tender_tagged_resources() {
    let needs = needs();
    let policy = controller_policy();
    let key = managed_by_resource_tag();
    // EC2 actions that act on existing resources (anything but reads and
    // creations), and SQS actions that change or delete a whole queue.
    let mut protected: BTreeSet<String> = needs
        .controller
        .actions
        .keys()
        .filter(|a| {
            let (service, name) = a.split_once(':').unwrap();
            match service {
                // RegisterImage creates an image from snapshots; it changes
                // nothing that exists.
                "ec2" => {
                    !is_read_only(a)
                        && !matches!(name, "RunInstances" | "RegisterImage")
                        && !name.starts_with("Create")
                }
                "sqs" => matches!(
                    name,
                    "DeleteQueue"
                        | "PurgeQueue"
                        | "SetQueueAttributes"
                        | "AddPermission"
                        | "RemovePermission"
                        | "UntagQueue"
                ),
                _ => false,
            }
        })
        .cloned()
        .collect();
    protected.insert("ec2:TerminateInstances".into());
    protected.insert("ec2:DeleteSecurityGroup".into());
    for action in &protected {
        for s in policy.granting(action) {
            assert!(
                s.requires(&key, tags::MANAGED_BY_VALUE),
                "iam/controller-policy.json {}: {action} must be conditioned on \
                 StringEquals {key} = {}",
                s.sid,
                tags::MANAGED_BY_VALUE
            );
        }
    }
    for action in ["ec2:TerminateInstances", "ec2:DeleteSecurityGroup"] {
        assert!(
            !policy.granting(action).is_empty(),
            "iam/controller-policy.json does not grant {action}"
        );
    }
}

#[test]
fn controller_creates_only_tender_tagged_resources() {
    let needs = needs();
    let policy = controller_policy();
    let request_tag = managed_by_request_tag();
    let value = tags::MANAGED_BY_VALUE;
    assert!(
        !needs.controller.tag_on_create.is_empty(),
        "the analysis found no EC2 request that tags at creation"
    );
    let creating: BTreeSet<&str> = needs
        .controller
        .tag_on_create
        .iter()
        .map(|t| t.operation.as_str())
        .collect();
    for t in &needs.controller.tag_on_create {
        let action = format!("ec2:{}", t.operation);
        for rt in &t.resource_types {
            let arn = ec2_arn(rt);
            let grants: Vec<&Statement> = policy
                .granting(&action)
                .into_iter()
                .filter(|s| s.covers(&arn))
                .collect();
            assert!(
                !grants.is_empty(),
                "iam/controller-policy.json does not grant {action} on {rt} resources \
                 ({} tags them at creation)",
                t.origin
            );
            for s in grants {
                assert!(
                    s.requires(&request_tag, value),
                    "iam/controller-policy.json {}: {action} on {rt} must be conditioned on \
                     StringEquals {request_tag} = {value}",
                    s.sid
                );
            }
            let tagging = policy.granting("ec2:CreateTags").into_iter().any(|s| {
                s.covers(&arn)
                    && s.requires(&request_tag, value)
                    && s.string_equals("ec2:CreateAction")
                        .is_some_and(|v| v.contains(&t.operation))
            });
            assert!(
                tagging,
                "iam/controller-policy.json lets {action} not tag {rt} resources: grant \
                 ec2:CreateTags on them with ec2:CreateAction {} and {request_tag} = {value}",
                t.operation
            );
        }
    }
    // Tags only ever at creation, by the requests that create.
    for s in policy.granting("ec2:CreateTags") {
        let actions = s.string_equals("ec2:CreateAction").unwrap_or_else(|| {
            panic!(
                "iam/controller-policy.json {}: ec2:CreateTags without an ec2:CreateAction \
                 condition would let the controller retag (and so take over) any resource",
                s.sid
            )
        });
        for a in actions {
            assert!(
                creating.contains(a.as_str()),
                "iam/controller-policy.json {}: the code never tags at creation with {a}",
                s.sid
            );
        }
    }
    // Queues too are created with Tender's tags.
    for action in ["sqs:CreateQueue", "sqs:TagQueue"] {
        for s in policy.granting(action) {
            assert!(
                s.requires(&request_tag, value),
                "iam/controller-policy.json {}: {action} must be conditioned on StringEquals \
                 {request_tag} = {value}",
                s.sid
            );
        }
    }
    // The worker role goes to EC2 only.
    for s in policy.granting("iam:PassRole") {
        assert!(
            !s.resources.iter().any(|r| r == "*"),
            "iam/controller-policy.json {}: iam:PassRole on * would pass any role",
            s.sid
        );
        assert!(
            s.requires("iam:PassedToService", "ec2.amazonaws.com"),
            "iam/controller-policy.json {}: iam:PassRole must be conditioned on \
             iam:PassedToService = ec2.amazonaws.com",
            s.sid
        );
    }
}

#[test]
fn no_statement_grants_every_action() {
    for policy in [controller_policy(), worker_policy()] {
        for s in &policy.statements {
            for a in &s.actions {
                assert!(
                    !a.contains(['*', '?']),
                    "{} {}: {a}: list exact actions, no wildcards",
                    policy.file,
                    s.sid
                );
            }
        }
    }
}

#[test]
fn only_reads_apply_to_every_resource() {
    for policy in [controller_policy(), worker_policy()] {
        for s in &policy.statements {
            let all = s.resources.iter().any(|r| r == "*");
            if all {
                for a in &s.actions {
                    assert!(
                        is_read_only(a),
                        "{} {}: {a} on Resource * : only reads may apply to every resource",
                        policy.file,
                        s.sid
                    );
                }
            }
            // EC2 Describe* actions support no resource-level permissions:
            // anything but * silently denies them.
            if s.actions.iter().any(|a| a.starts_with("ec2:Describe")) {
                assert!(
                    s.resources == ["*"],
                    "{} {}: EC2 Describe actions need Resource \"*\"",
                    policy.file,
                    s.sid
                );
            }
        }
    }
}

#[test]
fn queue_permissions_cover_tender_queues_only() {
    let name = tender::placement::queue_name("cluster-uid", "team-a", "us-east-1");
    let tender_queue = format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{name}");
    let other_queue = format!("arn:aws:sqs:{REGION}:{ACCOUNT}:orders");
    for policy in [controller_policy(), worker_policy()] {
        for s in &policy.statements {
            if !s.actions.iter().any(|a| a.starts_with("sqs:")) || s.resources == ["*"] {
                continue;
            }
            assert!(
                s.covers(&tender_queue),
                "{} {}: does not cover Tender's queue {tender_queue}",
                policy.file,
                s.sid
            );
            assert!(
                !s.covers(&other_queue),
                "{} {}: covers queues that are not Tender's ({other_queue})",
                policy.file,
                s.sid
            );
        }
    }
}

#[test]
fn the_source_reader_skips_literals_comments_and_unit_tests() {
    let src = r##"
impl AwsClients {
    /// self.count("NotACall") in a doc comment; fn ghost() {}
    pub async fn tricky(&self, region: &str) -> Result<(), AwsError> {
        let _ = ('{', '\'', "}{", r#"}"#, b"{", format!("tag:{k}"));
        /* self.count("AlsoNotACall") { */
        self.count("DeleteQueue");
        self.sqs(region).delete_queue().send().await;
        Ok(())
    }

    fn after<'a>(&'a self) -> usize { [1].iter().count() }
}

#[cfg(test)]
mod tests {
    fn unit() { self.count("TerminateInstances"); }
}
"##;
    let code = code_only(src);
    let funcs = functions("src/aws/x.rs", &code);
    let names: Vec<&str> = funcs.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["tricky", "after"]);
    let ops: Vec<String> = funcs
        .iter()
        .flat_map(|f| counted_operations(f).into_iter().map(|(_, op)| op))
        .collect();
    assert_eq!(ops, ["DeleteQueue"]);
    let accessors = BTreeMap::from([("sqs".to_string(), "sqs".to_string())]);
    let facts = analyse(&funcs[0], &accessors);
    assert_eq!(
        facts.actions.keys().collect::<Vec<_>>(),
        ["sqs:DeleteQueue"]
    );
    assert_eq!(
        snake("DescribeInstanceTypeOfferings"),
        "describe_instance_type_offerings"
    );
    assert_eq!(snake("DescribeIpv6Pools"), "describe_ipv6_pools");
    assert_eq!(kebab("SecurityGroup"), "security-group");
    assert_eq!(iam_action("sqs", "DeleteMessageBatch"), "sqs:DeleteMessage");
    assert_eq!(iam_action("ec2", "RunInstances"), "ec2:RunInstances");
    assert!(glob(
        "arn:aws:sqs:*:*:tender-*",
        "arn:aws:sqs:us-east-1:1:tender-a"
    ));
    assert!(!glob(
        "arn:aws:sqs:*:*:tender-*",
        "arn:aws:sqs:us-east-1:1:orders"
    ));
}
