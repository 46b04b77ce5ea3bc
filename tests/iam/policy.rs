//! The policies in `iam/`, read and checked for form, and the little of IAM's
//! evaluation the checks need: wildcards, conditions by key, explicit denies.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub struct Statement {
    pub sid: String,
    /// `Effect: Allow`; else `Deny`.
    pub allow: bool,
    pub actions: Vec<String>,
    pub resources: Vec<String>,
    pub condition: serde_json::Map<String, Value>,
}

pub struct Policy {
    pub file: &'static str,
    pub statements: Vec<Statement>,
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

/// Reads `iam/<file>` and checks it is a well-formed identity policy.
pub fn load(file: &'static str) -> Policy {
    load_with(file, &[])
}

/// [`load`], with each placeholder of `substitutions` replaced by its
/// value first, as an admin does.
pub fn load_with(file: &'static str, substitutions: &[(&str, &str)]) -> Policy {
    let path = root().join("iam").join(file);
    let mut text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    for (placeholder, value) in substitutions {
        text = text.replace(placeholder, value);
    }
    parse(file, &text)
}

/// Version 2012-10-17, and statements that each have a unique Sid, an
/// Effect, Action and Resource (never NotAction, NotResource or Principal).
/// A Deny has no Condition: it always applies, so the checks can rely on it.
fn parse(file: &'static str, text: &str) -> Policy {
    let doc: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{file} is not valid JSON: {e}"));
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
            let s = parse_statement(file, s);
            assert!(
                sids.insert(s.sid.clone()),
                "{file}: Sid {} is used twice",
                s.sid
            );
            s
        })
        .collect();
    Policy { file, statements }
}

fn parse_statement(file: &str, s: &Value) -> Statement {
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
    for key in s.keys() {
        assert!(
            matches!(
                key.as_str(),
                "Sid" | "Effect" | "Action" | "Resource" | "Condition"
            ),
            "{file} {sid}: {key} is not allowed in Tender's policies"
        );
    }
    let allow = match s.get("Effect").and_then(Value::as_str) {
        Some("Allow") => true,
        Some("Deny") => false,
        other => panic!("{file} {sid}: Effect must be Allow or Deny, not {other:?}"),
    };
    let field = |name: &str| {
        let value = s
            .get(name)
            .unwrap_or_else(|| panic!("{file} {sid}: no {name}"));
        strings(value, file, &sid, name)
    };
    let actions = field("Action");
    for a in actions.iter().filter(|a| *a != "*") {
        let (service, name) = a
            .split_once(':')
            .unwrap_or_else(|| panic!("{file} {sid}: action {a} is not service:Name"));
        assert!(
            !service.is_empty() && !name.is_empty(),
            "{file} {sid}: action {a} is not service:Name"
        );
    }
    let resources = field("Resource");
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
    assert!(
        allow || condition.is_empty(),
        "{file} {sid}: a Deny must apply unconditionally"
    );
    Statement {
        sid,
        allow,
        actions,
        resources,
        condition,
    }
}

/// `*` and `?` wildcards, as IAM matches actions and resources.
pub fn glob(pattern: &str, text: &str) -> bool {
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

pub fn is_read_only(action: &str) -> bool {
    let name = action.split_once(':').map_or(action, |(_, n)| n);
    ["Describe", "Get", "List"]
        .iter()
        .any(|p| name.starts_with(p))
}

impl Statement {
    /// IAM action names are case-insensitive.
    pub fn grants(&self, action: &str) -> bool {
        self.actions
            .iter()
            .any(|a| glob(&a.to_ascii_lowercase(), &action.to_ascii_lowercase()))
    }

    pub fn covers(&self, arn: &str) -> bool {
        self.resources.iter().any(|r| glob(r, arn))
    }

    /// The values of condition operator `op` on `key`.
    pub fn condition_values(&self, op: &str, key: &str) -> Option<Vec<String>> {
        let v = self.condition.get(op)?.get(key)?;
        Some(strings(v, "", &self.sid, key))
    }

    /// The values of a `StringEquals` condition on `key`.
    pub fn string_equals(&self, key: &str) -> Option<Vec<String>> {
        self.condition_values("StringEquals", key)
    }

    /// True when the statement only applies when `key` is exactly `value`.
    pub fn requires(&self, key: &str, value: &str) -> bool {
        self.string_equals(key).is_some_and(|v| v == [value])
    }

    /// True when the statement only applies when tag `key` is present
    /// (`Null` `key` = `false`).
    pub fn requires_present(&self, key: &str) -> bool {
        self.condition
            .get("Null")
            .and_then(|n| n.get(key))
            .is_some_and(|v| v == "false")
    }
}

impl Policy {
    /// The statements that allow `action` (on some resource).
    pub fn granting(&self, action: &str) -> Vec<&Statement> {
        self.statements
            .iter()
            .filter(|s| s.allow && s.grants(action))
            .collect()
    }

    /// Every action some statement allows.
    pub fn actions(&self) -> BTreeSet<String> {
        self.statements
            .iter()
            .filter(|s| s.allow)
            .flat_map(|s| s.actions.iter().cloned())
            .collect()
    }

    /// Whether the policy allows `action` on `arn` under some condition:
    /// an Allow covers it and no Deny does.
    pub fn may(&self, action: &str, arn: &str) -> bool {
        let matching = |s: &&Statement| s.grants(action) && s.covers(arn);
        self.statements
            .iter()
            .filter(|s| s.allow)
            .any(|s| matching(&s))
            && !self
                .statements
                .iter()
                .filter(|s| !s.allow)
                .any(|s| matching(&s))
    }
}

/// One request as IAM sees it: the action, the resource and the request's
/// context keys (a key may carry several values, as `aws:TagKeys` does).
pub struct Request<'a> {
    pub action: &'a str,
    pub resource: &'a str,
    pub context: &'a [(&'a str, &'a str)],
}

impl Statement {
    /// Whether every condition of the statement holds for `context`, by
    /// the IAM evaluation rules for the operators the policies use
    /// (<https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html>):
    /// operators AND together, and so do keys; a key's values OR; a
    /// positive operator on a key the request lacks does not hold;
    /// `ForAllValues:` holds when every value of the request's key matches
    /// (and when it has none); `Bool` compares `true`/`false`; `Null`
    /// `false` requires the key, `true` its absence. An operator this
    /// evaluator does not know fails the check, so a policy cannot pass by
    /// using one.
    pub fn conditions_hold(&self, context: &[(&str, &str)]) -> bool {
        let values = |key: &str| -> Vec<&str> {
            context
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| *v)
                .collect()
        };
        self.condition.iter().all(|(op, keys)| {
            keys.as_object().is_some_and(|keys| {
                keys.iter().all(|(key, wanted)| {
                    let wanted = strings(wanted, "", &self.sid, key);
                    let got = values(key);
                    let any = |m: &dyn Fn(&str, &str) -> bool| {
                        got.iter().any(|g| wanted.iter().any(|w| m(w, g)))
                    };
                    match op.as_str() {
                        "StringEquals" | "Bool" => any(&|w, g| w == g),
                        "StringEqualsIgnoreCase" => any(&|w, g| w.eq_ignore_ascii_case(g)),
                        "StringLike" => any(&|w, g| glob(w, g)),
                        "ArnLike" | "ArnEquals" => any(&|w, g| glob(w, g)),
                        "ForAllValues:StringLike" => {
                            got.iter().all(|g| wanted.iter().any(|w| glob(w, g)))
                        }
                        "Null" => {
                            wanted == ["true"] && got.is_empty()
                                || wanted == ["false"] && !got.is_empty()
                        }
                        _ => false,
                    }
                })
            })
        })
    }
}

impl Policy {
    /// Whether the policy allows `request`: an Allow whose action,
    /// resource and conditions match, and no Deny that matches.
    pub fn allows(&self, request: &Request) -> bool {
        let matches = |s: &&Statement| {
            s.grants(request.action)
                && s.covers(request.resource)
                && s.conditions_hold(request.context)
        };
        self.statements
            .iter()
            .filter(|s| s.allow)
            .any(|s| matches(&s))
            && !self
                .statements
                .iter()
                .filter(|s| !s.allow)
                .any(|s| matches(&s))
    }
}
