//! The instances, RDS DB instances and DB clusters a policy's run protects, looked up
//! at the run, and the ones it protected before and cannot find any more.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::events::EventType;

use super::{history, reasons};
use crate::api::{
    BackupPolicy, BackupPolicyStatus, DB_CLUSTER_RESOURCE_PREFIX, DB_DUMP_RESOURCE_PREFIX,
    DB_INSTANCE_RESOURCE_PREFIX, DatabaseBackupMethod, WorkerConfiguration,
};
use crate::aws::AwsError;
use crate::aws::accounts::Access;
use crate::aws::rds::{DbClusterInfo, DbInstanceInfo};
use crate::controller::{Context, Error, Result};

/// The resources a run protects, found now.
pub(super) struct FoundResources {
    /// BackupJob resource IDs to back up (instance IDs, `rds-db-<id>`,
    /// `rds-cluster-<id>`, `rds-pg-<id>`), sorted.
    pub ids: Vec<String>,
    /// Each with where it came from.
    pub sources: BTreeMap<String, &'static str>,
    /// IDs named in spec.resources.
    pub named: Vec<String>,
    /// What the run could not look at and why (each a Warning Event);
    /// the run goes on with what was found.
    pub warnings: Vec<(&'static str, String)>,
}

pub(super) enum Found {
    /// No configuration to use, with the reason and the message.
    NoConfiguration(&'static str, String),
    Failed(Error),
}

/// Looks the policy's instances up in its region, with the production
/// account access of the configuration its jobs will use.
pub(super) async fn find_resources(
    ctx: &Context,
    policy: &BackupPolicy,
) -> Result<FoundResources, Found> {
    let config = configuration_of(ctx, policy)
        .map_err(|(reason, message)| Found::NoConfiguration(reason, message))?;
    let access = Access::new(
        config.spec.production_account.as_ref(),
        &[&policy.namespace().unwrap_or_default(), &policy.name_any()],
    );
    let aws = ctx.aws.scoped(&access).await;
    let region = &policy.spec.region;
    let named: Vec<String> = policy.spec.resources.iter().map(|r| r.id()).collect();
    let named_instances: Vec<String> = policy
        .spec
        .resources
        .iter()
        .filter_map(|r| r.instance_id.clone())
        .collect();
    let found_named = aws
        .instances()
        .find_protected_instances(region, &named_instances, &[])
        .await
        .map_err(|e| Found::Failed(e.into()))?;
    let selectors: Vec<BTreeMap<String, String>> = policy
        .spec
        .instance_selectors
        .iter()
        .map(|s| s.match_tags.clone())
        .collect();
    let selected = if selectors.is_empty() {
        Vec::new()
    } else {
        aws.instances()
            .find_protected_instances(region, &[], &selectors)
            .await
            .map_err(|e| Found::Failed(e.into()))?
    };
    let mut sources = BTreeMap::new();
    for id in selected {
        sources.insert(id, history::SELECTED);
    }
    for id in found_named {
        sources.insert(id, history::NAMED);
    }
    let mut warnings = Vec::new();
    // RDS DB instances: one listing serves the named ones and the
    // selectors.
    let wants_databases = !policy.spec.database_selectors.is_empty()
        || policy
            .spec
            .resources
            .iter()
            .any(|r| r.instance_id.is_none());
    if wants_databases {
        let databases = aws
            .databases()
            .list_instances(region)
            .await
            .map_err(|e| Found::Failed(e.into()))?;
        // DB clusters, only when something may name or select one.
        let names_cluster = policy
            .spec
            .resources
            .iter()
            .any(|r| r.db_cluster_id.is_some());
        let wants_clusters = policy
            .spec
            .database_selectors
            .iter()
            .any(|s| s.method.unwrap_or_default() == DatabaseBackupMethod::Snapshot)
            || names_cluster;
        let clusters = if wants_clusters {
            let listed = aws.databases().list_clusters(region).await;
            clusters_or_warning(listed, (region, names_cluster), &mut warnings)
                .map_err(|e| Found::Failed(e.into()))?
        } else {
            Vec::new()
        };
        for (id, source) in protected_databases(policy, &config, &databases, &clusters) {
            sources.insert(id, source);
        }
    }
    Ok(FoundResources {
        ids: sources.keys().cloned().collect(),
        sources,
        named,
        warnings,
    })
}

/// The DB clusters a run listed. A role made before DB clusters were
/// backed up lacks rds:DescribeDBClusters: its selectors go on matching DB
/// instances, and the run says what it could not see (a warning). A named
/// cluster cannot be looked for without it: the run fails as before.
fn clusters_or_warning(
    listed: std::result::Result<Vec<DbClusterInfo>, AwsError>,
    (region, names_cluster): (&str, bool),
    warnings: &mut Vec<(&'static str, String)>,
) -> std::result::Result<Vec<DbClusterInfo>, AwsError> {
    match listed {
        Err(e) if e.is_permission_denied() && !names_cluster => {
            warnings.push((
                reasons::DB_CLUSTERS_NOT_LISTED,
                format!(
                    "DB clusters in {region} were not looked at for spec.databaseSelectors: {e}; add rds:DescribeDBClusters to the role that reads the production account (iam/controller-policy.json has it)"
                ),
            ));
            Ok(Vec::new())
        }
        other => other,
    }
}

/// Whether every tag of a selector is on `tags` (an empty selector, which
/// the schema refuses, matches nothing).
fn selects(match_tags: &BTreeMap<String, String>, tags: &BTreeMap<String, String>) -> bool {
    !match_tags.is_empty()
        && match_tags.iter().all(|(key, pattern)| {
            tags.get(key)
                .is_some_and(|value| matches_pattern(pattern, value))
        })
}

/// The BackupJob resource IDs of the policy's DB instances among
/// `databases` (`rds-db-<id>` for a snapshot, `rds-pg-<id>` for a dump)
/// and DB clusters among `clusters` (`rds-cluster-<id>`, matched by
/// snapshot selectors), with where each came from. A DB instance or
/// cluster being deleted is left out, as is a member of a DB cluster
/// matched by a selector (RDS snapshots DB clusters as a whole: the
/// cluster's own tags select it); a DB instance that both a snapshot and
/// a dump selector match gets both.
fn protected_databases(
    policy: &BackupPolicy,
    config: &WorkerConfiguration,
    databases: &[DbInstanceInfo],
    clusters: &[DbClusterInfo],
) -> BTreeMap<String, &'static str> {
    let alive = |d: &&DbInstanceInfo| !matches!(d.status.as_str(), "deleting" | "deleted");
    let cluster_alive = |c: &&DbClusterInfo| !matches!(c.status.as_str(), "deleting" | "deleted");
    let mut out = BTreeMap::new();
    for c in clusters.iter().filter(cluster_alive) {
        if config.spec.allowed_sources.admits_tags(&c.tags).is_err() {
            continue;
        }
        let selected = policy.spec.database_selectors.iter().any(|s| {
            s.method.unwrap_or_default() == DatabaseBackupMethod::Snapshot
                && selects(&s.match_tags, &c.tags)
        });
        if selected {
            out.insert(
                format!("{DB_CLUSTER_RESOURCE_PREFIX}{}", c.identifier),
                history::DATABASE_SELECTED,
            );
        }
    }
    for d in databases.iter().filter(alive) {
        // A source the configuration refuses is no candidate (its jobs
        // would fail); a named one still goes to the job, which says why.
        if d.db_cluster_identifier.is_some()
            || config.spec.allowed_sources.admits_tags(&d.tags).is_err()
        {
            continue;
        }
        for selector in &policy.spec.database_selectors {
            if selects(&selector.match_tags, &d.tags) {
                let prefix = match selector.method.unwrap_or_default() {
                    DatabaseBackupMethod::Snapshot => DB_INSTANCE_RESOURCE_PREFIX,
                    // Only PostgreSQL is dumped.
                    DatabaseBackupMethod::Dump if d.engine == "postgres" => DB_DUMP_RESOURCE_PREFIX,
                    DatabaseBackupMethod::Dump => continue,
                };
                out.insert(
                    format!("{prefix}{}", d.identifier),
                    history::DATABASE_SELECTED,
                );
            }
        }
    }
    for r in &policy.spec.resources {
        if let Some(cluster) = &r.db_cluster_id {
            if clusters
                .iter()
                .filter(cluster_alive)
                .any(|c| &c.identifier == cluster)
            {
                out.insert(r.id(), history::NAMED);
            }
            continue;
        }
        if r.instance_id.is_some() {
            continue;
        }
        let db = r
            .db_instance_id
            .as_deref()
            .or(r.postgres.as_ref().map(|p| p.db_instance_id.as_str()));
        if databases
            .iter()
            .filter(alive)
            .any(|d| Some(d.identifier.as_str()) == db)
        {
            out.insert(r.id(), history::NAMED);
        }
    }
    out
}

/// Whether `value` matches `pattern`, where `*` is any characters, `?` one
/// character and `\` makes the next character literal, as in EC2's tag
/// filters.
fn matches_pattern(pattern: &str, value: &str) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum Token {
        Any,
        One,
        Char(char),
    }
    let mut tokens = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        tokens.push(match c {
            '*' => Token::Any,
            '?' => Token::One,
            '\\' => Token::Char(chars.next().unwrap_or('\\')),
            c => Token::Char(c),
        });
    }
    let value: Vec<char> = value.chars().collect();
    // Positions of `value` reachable after each token (a set, so `*`s do
    // not backtrack exponentially).
    let mut reach = vec![false; value.len() + 1];
    reach[0] = true;
    for token in tokens {
        let mut next = vec![false; value.len() + 1];
        for i in 0..=value.len() {
            if !reach[i] {
                continue;
            }
            match token {
                // Everything from the first reachable position on: once
                // set, the rest of this token's pass adds nothing (linear).
                Token::Any => {
                    next[i..].iter_mut().for_each(|r| *r = true);
                    break;
                }
                Token::One if i < value.len() => next[i + 1] = true,
                Token::Char(c) if value.get(i) == Some(&c) => next[i + 1] = true,
                _ => {}
            }
        }
        reach = next;
    }
    reach[value.len()]
}

/// The configuration the policy's jobs will use: the one it names, else
/// the default of its region; either way one that admits the policy's
/// namespace (else its role would list another team's resources into the
/// policy's status).
pub(super) fn configuration_of(
    ctx: &Context,
    policy: &BackupPolicy,
) -> Result<Arc<WorkerConfiguration>, (&'static str, String)> {
    let chosen = chosen_configuration(ctx, policy).map_err(|m| (reasons::NO_CONFIGURATION, m))?;
    let labels =
        crate::controller::job::namespace_labels(ctx, &policy.namespace().unwrap_or_default());
    crate::controller::job::configuration::admits(chosen.spec.namespace_selector.as_ref(), &labels)
        .map_err(|why| {
            (
                reasons::NAMESPACE_NOT_ADMITTED,
                format!(
                    "WorkerConfiguration {:?} does not admit this namespace: {why}; ask an admin to admit it or name another in spec.workerConfigurationRef",
                    chosen.name_any()
                ),
            )
        })?;
    Ok(chosen)
}

fn chosen_configuration(
    ctx: &Context,
    policy: &BackupPolicy,
) -> Result<Arc<WorkerConfiguration>, String> {
    let all = ctx.configurations.state();
    match &policy.spec.worker_configuration_ref {
        Some(r) => all.into_iter().find(|c| c.name_any() == r.name).ok_or_else(|| {
            format!(
                "WorkerConfiguration {:?} does not exist; create it or fix spec.workerConfigurationRef",
                r.name
            )
        }),
        None => all
            .into_iter()
            .find(|c| {
                c.spec.region == policy.spec.region
                    && c.annotations()
                        .get(crate::api::DEFAULT_CONFIGURATION_ANNOTATION)
                        .is_some_and(|v| v == "true")
            })
            .ok_or_else(|| {
                format!(
                    "no WorkerConfiguration is the default for {} (annotation {}=\"true\"); name one in spec.workerConfigurationRef",
                    policy.spec.region,
                    crate::api::DEFAULT_CONFIGURATION_ANNOTATION
                )
            }),
    }
}

/// Records the resources a run could not find, with an Event when the
/// list changes.
pub(super) async fn record_missing(
    ctx: &Context,
    policy: &BackupPolicy,
    status: &mut BackupPolicyStatus,
    found: &FoundResources,
) {
    let ids: BTreeSet<String> = found.ids.iter().cloned().collect();
    let missing = history::missing_resources(
        &status.missing_resources,
        &status.resources,
        &found.named,
        &ids,
        Timestamp::now(),
    );
    let changed = missing
        .iter()
        .map(|m| &m.id)
        .ne(status.missing_resources.iter().map(|m| &m.id));
    if changed && !missing.is_empty() {
        let list: Vec<String> = missing
            .iter()
            .map(|m| format!("{} ({})", m.id, m.reason))
            .collect();
        ctx.event(
            policy,
            EventType::Warning,
            reasons::RESOURCES_MISSING,
            "Schedule",
            format!(
                "protected resources not found in {}: {}",
                policy.spec.region,
                list.join("; ")
            ),
        )
        .await;
    }
    // A missing resource stays in `resources` with its newest restore
    // point: it is still restorable, only no longer backed up.
    status.missing_resources = missing;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PolicyResource;

    #[test]
    fn a_role_without_describe_db_clusters_warns_unless_a_cluster_is_named() {
        let denied = || {
            Err(AwsError::Service {
                operation: "DescribeDBClusters",
                code: "AccessDenied".into(),
                message: "not authorized to perform: rds:DescribeDBClusters".into(),
            })
        };
        let mut warnings = Vec::new();
        let found = clusters_or_warning(denied(), ("us-east-1", false), &mut warnings);
        assert!(found.is_ok_and(|c| c.is_empty()));
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].0, reasons::DB_CLUSTERS_NOT_LISTED);
        assert!(
            warnings[0].1.contains("rds:DescribeDBClusters"),
            "{warnings:?}"
        );
        let mut warnings = Vec::new();
        assert!(clusters_or_warning(denied(), ("us-east-1", true), &mut warnings).is_err());
        assert!(warnings.is_empty());
        let throttled = Err(AwsError::Service {
            operation: "DescribeDBClusters",
            code: "Throttling".into(),
            message: "Rate exceeded".into(),
        });
        assert!(clusters_or_warning(throttled, ("us-east-1", false), &mut warnings).is_err());
        assert!(warnings.is_empty());
    }

    #[test]
    fn patterns_match_as_ec2_filters_do() {
        for (pattern, value, expected) in [
            ("*", "", true),
            ("*", "anything", true),
            ("shop", "shop", true),
            ("shop", "shops", false),
            ("sh?p", "ship", true),
            ("sh?p", "shp", false),
            ("prod-*-db", "prod-eu-db", true),
            ("prod-*-db", "prod-eu-db2", false),
            ("a*b*c", "aXbYbZc", true),
            ("\\*", "*", true),
            ("\\*", "x", false),
        ] {
            assert_eq!(
                matches_pattern(pattern, value),
                expected,
                "{pattern} ~ {value}"
            );
        }
        // No exponential backtracking (a `*` is one pass over the value).
        let long = "a".repeat(200);
        assert!(!matches_pattern(
            &"*a".repeat(30).replace("a", "a*b"),
            &long
        ));
        assert!(!matches_pattern(&("*".repeat(255) + "b"), &"a".repeat(256)));
        assert!(matches_pattern(&("*".repeat(255) + "a"), &"a".repeat(256)));
    }

    #[test]
    fn selected_and_named_db_instances_become_snapshots_or_dumps() {
        let db = |id: &str, team: &str, status: &str, cluster: Option<&str>| DbInstanceInfo {
            identifier: id.into(),
            status: status.into(),
            engine: "postgres".into(),
            db_cluster_identifier: cluster.map(String::from),
            tags: BTreeMap::from([("team".into(), team.into())]),
            ..Default::default()
        };
        let mysql = DbInstanceInfo {
            engine: "mysql".into(),
            ..db("shop-mysql", "shop", "available", None)
        };
        let databases = [
            db("orders", "shop", "available", None),
            db("ledger", "finance", "available", None),
            db("old", "shop", "deleting", None),
            db("aurora-1", "shop", "available", Some("aurora")),
            db("named", "other", "backing-up", None),
            mysql,
        ];
        let config = |extra: serde_json::Value| {
            let mut spec = serde_json::json!({
                "region": "eu-west-1", "imageId": "ami-0123456789abcdef0", "namespaceSelector": {},
            });
            spec.as_object_mut()
                .expect("an object")
                .extend(extra.as_object().expect("an object").clone());
            WorkerConfiguration::new("c", serde_json::from_value(spec).expect("a spec"))
        };
        let open = config(serde_json::json!({}));
        let mut policy = BackupPolicy::new(
            "p",
            serde_json::from_value(serde_json::json!({
                "schedule": "@daily", "region": "eu-west-1", "repositoryRef": {"name": "main"},
                "databaseSelectors": [
                    {"matchTags": {"team": "shop"}},
                    {"matchTags": {"team": "sh*"}, "method": "dump"}
                ]
            }))
            .expect("a spec"),
        );
        policy.spec.resources = vec![
            PolicyResource {
                db_instance_id: Some("named".into()),
                ..Default::default()
            },
            PolicyResource {
                db_instance_id: Some("gone".into()),
                ..Default::default()
            },
        ];
        let cluster = |id: &str, team: &str, status: &str| DbClusterInfo {
            identifier: id.into(),
            status: status.into(),
            engine: "aurora-postgresql".into(),
            tags: BTreeMap::from([("team".into(), team.into())]),
            ..Default::default()
        };
        let clusters = [
            cluster("aurora", "shop", "available"),
            cluster("books", "finance", "available"),
            cluster("going", "shop", "deleting"),
            cluster("reports", "other", "available"),
        ];
        policy.spec.resources.push(PolicyResource {
            db_cluster_id: Some("reports".into()),
            ..Default::default()
        });
        policy.spec.resources.push(PolicyResource {
            db_cluster_id: Some("gone".into()),
            ..Default::default()
        });
        let found = protected_databases(&policy, &open, &databases, &clusters);
        let ids: Vec<&str> = found.keys().map(String::as_str).collect();
        // MySQL gets its snapshot, not a dump; the cluster member aurora-1
        // nothing (its cluster is snapshotted), the cluster a snapshot
        // only (a dump selector does not take clusters).
        assert_eq!(
            ids,
            [
                "rds-cluster-aurora",
                "rds-cluster-reports",
                "rds-db-named",
                "rds-db-orders",
                "rds-db-shop-mysql",
                "rds-pg-orders"
            ]
        );
        assert_eq!(found["rds-cluster-aurora"], history::DATABASE_SELECTED);
        assert_eq!(found["rds-cluster-reports"], history::NAMED);
        assert_eq!(found["rds-db-named"], history::NAMED);
        assert_eq!(found["rds-pg-orders"], history::DATABASE_SELECTED);
        // A configuration that allows only sources tagged team=finance:
        // the selectors find none of the shop's DB instances; the named
        // one still goes to the job, whose check says why it is refused.
        let finance = config(serde_json::json!({"allowedSources": {"tags": {"team": "finance"}}}));
        let found = protected_databases(&policy, &finance, &databases, &clusters);
        let ids: Vec<&str> = found.keys().map(String::as_str).collect();
        assert_eq!(ids, ["rds-cluster-reports", "rds-db-named"]);
    }
}
