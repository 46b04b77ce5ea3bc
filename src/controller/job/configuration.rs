//! Which WorkerConfiguration and BackupRepository a job uses, whether they
//! admit its namespace, and whether the configuration is ready to launch.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};
use kube::{Resource, ResourceExt};

use super::core::Problem;
use super::kind::WorkerJob;
use crate::api::conditions::{self, READY};
use crate::api::{
    BackupRepository, DEFAULT_CONFIGURATION_ANNOTATION, LocalObjectReference, WorkerConfiguration,
};
use crate::messages::WorkerProfile;
use crate::reasons::BlockedReason;

/// Whether a class's `namespaceSelector` admits a namespace with these
/// labels: unset admits none, `{}` every one. `Err` says why not.
pub fn admits(
    selector: Option<&LabelSelector>,
    labels: &BTreeMap<String, String>,
) -> Result<(), String> {
    let Some(selector) = selector else {
        return Err("its spec.namespaceSelector is unset, which admits no namespace".into());
    };
    match Selector::try_from(selector.clone()) {
        Ok(s) if s.matches(labels) => Ok(()),
        Ok(_) => Err("its spec.namespaceSelector does not match this namespace's labels".into()),
        Err(e) => Err(format!("its spec.namespaceSelector is invalid ({e})")),
    }
}

fn not_admitted(kind: &str, name: &str, why: String) -> Problem {
    Problem {
        reason: BlockedReason::NamespaceNotAdmitted,
        message: format!(
            "{kind} {name:?} does not admit this namespace: {why}; ask an admin to admit it or use another {kind}"
        ),
    }
}

/// Picks the configuration a job uses: the one it names, else its region's
/// default; either way one that admits the job's namespace (`labels`).
pub fn choose_configuration<'a, K: WorkerJob>(
    job: &K,
    candidates: &'a [Arc<WorkerConfiguration>],
    labels: &BTreeMap<String, String>,
) -> Result<&'a Arc<WorkerConfiguration>, Problem> {
    if job.repository_ref().is_none() {
        return Err(Problem {
            reason: BlockedReason::RepositoryMissing,
            message: format!(
                "this {} has no spec.repositoryRef (it was created before Tender had BackupRepositories); create it again naming a BackupRepository",
                K::KIND
            ),
        });
    }
    let chosen = if let Some(reference) = &job.configuration_ref() {
        candidates
            .iter()
            .find(|c| c.name_any() == reference.name)
            .ok_or_else(|| Problem {
                reason: BlockedReason::WorkerConfigurationNotFound,
                message: format!(
                    "WorkerConfiguration {:?} does not exist; create it or fix spec.workerConfigurationRef",
                    reference.name
                ),
            })?
    } else {
        region_default(job, candidates)?
    };
    admits(chosen.spec.namespace_selector.as_ref(), labels)
        .map_err(|why| not_admitted("WorkerConfiguration", &chosen.name_any(), why))?;
    if chosen.meta().deletion_timestamp.is_some() {
        return Err(Problem {
            reason: BlockedReason::WorkerConfigurationDeleting,
            message: format!(
                "WorkerConfiguration {:?} is being deleted; no new workers are launched with it",
                chosen.name_any()
            ),
        });
    }
    if let Some(r) = job
        .targets()
        .into_iter()
        .find(|r| r.region != chosen.spec.region)
    {
        return Err(Problem {
            reason: BlockedReason::RegionMismatch,
            message: format!(
                "resource {} is in {} but WorkerConfiguration {:?} launches workers in {}; use a configuration for that region",
                r.id,
                r.region,
                chosen.name_any(),
                chosen.spec.region
            ),
        });
    }
    Ok(chosen)
}

/// The BackupRepository `reference` names, if it admits the namespace.
pub fn choose_repository<'a>(
    reference: &LocalObjectReference,
    candidates: &'a [Arc<BackupRepository>],
    labels: &BTreeMap<String, String>,
) -> Result<&'a Arc<BackupRepository>, Problem> {
    let chosen = candidates
        .iter()
        .find(|r| r.name_any() == reference.name)
        .ok_or_else(|| Problem {
            reason: BlockedReason::BackupRepositoryNotFound,
            message: format!(
                "BackupRepository {:?} does not exist; ask an admin to create it or fix the reference",
                reference.name
            ),
        })?;
    admits(chosen.spec.namespace_selector.as_ref(), labels)
        .map_err(|why| not_admitted("BackupRepository", &chosen.name_any(), why))?;
    if chosen.spec.integrity.is_none() {
        return Err(Problem {
            reason: BlockedReason::RepositoryIntegrityMissing,
            message: format!(
                "BackupRepository {:?} has no spec.integrity.macKeyId, so its restore points could not be authenticated; ask an admin to set it (a KMS HMAC_256 key)",
                chosen.name_any()
            ),
        });
    }
    Ok(chosen)
}

/// The configuration annotated as the default for the job's region.
fn region_default<'a, K: WorkerJob>(
    job: &K,
    candidates: &'a [Arc<WorkerConfiguration>],
) -> Result<&'a Arc<WorkerConfiguration>, Problem> {
    let targets = job.targets();
    let mut regions: Vec<&str> = targets.iter().map(|r| r.region.as_str()).collect();
    regions.sort_unstable();
    regions.dedup();
    let [region] = regions[..] else {
        return Err(Problem {
            reason: BlockedReason::WorkerConfigurationAmbiguous,
            message: format!(
                "the resources are in several regions ({}); set spec.workerConfigurationRef or split the job per region",
                regions.join(", ")
            ),
        });
    };
    let matching: Vec<_> = candidates
        .iter()
        .filter(|c| c.spec.region == region)
        .filter(|c| {
            c.annotations()
                .get(DEFAULT_CONFIGURATION_ANNOTATION)
                .is_some_and(|v| v == "true")
        })
        .collect();
    match matching[..] {
        [one] => Ok(one),
        [] => Err(Problem {
            reason: BlockedReason::WorkerConfigurationNotFound,
            message: format!(
                "no WorkerConfiguration is the default for region {region}; set spec.workerConfigurationRef, or ask an admin to annotate one {DEFAULT_CONFIGURATION_ANNOTATION}: \"true\""
            ),
        }),
        _ => Err(Problem {
            reason: BlockedReason::WorkerConfigurationAmbiguous,
            message: format!(
                "{} WorkerConfigurations are annotated as the default for region {region}; set spec.workerConfigurationRef",
                matching.len()
            ),
        }),
    }
}

/// Why a configuration is not ready for workers of `profile`, for people.
pub fn not_ready_message(config: &WorkerConfiguration, profile: WorkerProfile) -> String {
    let Some(status) = config.status.as_ref() else {
        return "it has not been reconciled yet".into();
    };
    let condition = |type_: &str| status.conditions.iter().find(|c| c.type_ == type_);
    let ready = condition(READY).filter(|c| c.status != "True");
    let network = condition("NetworkReady")
        .filter(|_| status.missing_endpoints.contains_key(profile.as_str()));
    match (ready, network) {
        (Some(c), _) | (None, Some(c)) => c.message.clone(),
        (None, None) => "its worker queue is not there yet".into(),
    }
}

/// A configuration's queue URL when it is ready for workers of `profile`:
/// `Ready`, and in private-network mode every endpoint they call there.
pub fn ready_configuration(config: &WorkerConfiguration, profile: WorkerProfile) -> Option<String> {
    let status = config.status.as_ref()?;
    let ready = conditions::is_true(&status.conditions, READY);
    let network_ok = !status.missing_endpoints.contains_key(profile.as_str());
    (ready && network_ok)
        .then(|| status.queue_url.clone())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        BackupJob, BackupJobSpec, BackupRepositorySpec, BackupResource, WorkerConfigurationSpec,
    };

    fn selector(labels: &[(&str, &str)]) -> Option<LabelSelector> {
        Some(LabelSelector {
            match_labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        })
    }

    fn config(name: &str, region: &str, default: bool) -> Arc<WorkerConfiguration> {
        let spec: WorkerConfigurationSpec = serde_json::from_value(serde_json::json!({
            "region": region,
            "imageId": "ami-aaaaaaaa",
            "namespaceSelector": {"matchLabels": {"team": "a"}},
        }))
        .expect("spec");
        let mut c = WorkerConfiguration::new(name, spec);
        if default {
            c.metadata.annotations = Some(BTreeMap::from([(
                DEFAULT_CONFIGURATION_ANNOTATION.to_string(),
                "true".to_string(),
            )]));
        }
        Arc::new(c)
    }

    fn repository(name: &str, admits: Option<LabelSelector>) -> Arc<BackupRepository> {
        let mut spec: BackupRepositorySpec = serde_json::from_value(serde_json::json!({
            "bucket": "backups", "region": "us-east-1", "expectedBucketOwner": "123456789012",
            "integrity": {"macKeyId": "alias/tender-integrity"},
        }))
        .expect("spec");
        spec.namespace_selector = admits;
        Arc::new(BackupRepository::new(name, spec))
    }

    fn job(reference: Option<&str>, regions: &[&str]) -> BackupJob {
        let mut j = BackupJob::new(
            "job",
            BackupJobSpec {
                worker_configuration_ref: reference
                    .map(|n| LocalObjectReference { name: n.into() }),
                resources: regions
                    .iter()
                    .enumerate()
                    .map(|(i, r)| BackupResource {
                        instance_id: Some(format!("i-0000000{i}")),
                        snapshot_id: None,
                        db_instance_id: None,
                        db_cluster_id: None,
                        postgres: None,
                        region: (*r).into(),
                    })
                    .collect(),
                repository_ref: Some(LocalObjectReference {
                    name: "backups".into(),
                }),
                copy_to: None,
                limits: Default::default(),
                suspend: false,
            },
        );
        j.metadata.namespace = Some("ns".into());
        j
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_job_stored_before_repositories_loads_and_stalls_with_a_reason() {
        // What an older Tender stored: an inline spec.repository.
        let stored = serde_json::json!({
            "apiVersion": "tender.dev/v1alpha1", "kind": "BackupJob",
            "metadata": {"name": "old", "namespace": "ns"},
            "spec": {"resources": [{"instanceId": "i-00000001", "region": "us-east-1"}],
                     "repository": {"bucket": "backups"}}
        });
        let job: BackupJob = serde_json::from_value(stored).expect("it still loads");
        let configs = vec![config("east", "us-east-1", true)];
        let problem = choose_configuration(&job, &configs, &labels(&[("team", "a")]))
            .expect_err("no repository");
        assert_eq!(problem.reason, "RepositoryMissing");
        assert!(problem.message.contains("spec.repositoryRef"));
    }

    /// (reference, regions, namespace labels, expected name or reason)
    type Case<'a> = (
        Option<&'a str>,
        &'a [&'a str],
        &'a BTreeMap<String, String>,
        &'a str,
    );

    #[test]
    fn configuration_by_reference_or_by_region_default() {
        let configs = vec![
            config("east", "us-east-1", true),
            config("east-big", "us-east-1", false),
            config("west", "us-west-2", true),
        ];
        let team_a = labels(&[("team", "a")]);
        let cases: [Case; 8] = [
            (None, &["us-west-2"], &team_a, "west"),
            (None, &["us-east-1"], &team_a, "east"),
            (Some("east-big"), &["us-east-1"], &team_a, "east-big"),
            (
                Some("nope"),
                &["us-east-1"],
                &team_a,
                "WorkerConfigurationNotFound",
            ),
            (None, &["eu-west-1"], &team_a, "WorkerConfigurationNotFound"),
            (Some("east"), &["us-west-2"], &team_a, "RegionMismatch"),
            (
                None,
                &["us-east-1", "us-west-2"],
                &team_a,
                "WorkerConfigurationAmbiguous",
            ),
            (
                None,
                &["us-east-1"],
                &labels(&[("team", "b")]),
                "NamespaceNotAdmitted",
            ),
        ];
        for (reference, regions, ns_labels, want) in cases {
            let got = match choose_configuration(&job(reference, regions), &configs, ns_labels) {
                Ok(c) => c.name_any(),
                Err(p) => p.reason.as_str().to_string(),
            };
            assert_eq!(got, want, "{reference:?} {regions:?}");
        }
    }

    #[test]
    fn two_defaults_for_one_region_are_ambiguous() {
        let configs = vec![
            config("a", "us-east-1", true),
            config("b", "us-east-1", true),
        ];
        let err = choose_configuration(
            &job(None, &["us-east-1"]),
            &configs,
            &labels(&[("team", "a")]),
        )
        .expect_err("ambiguous");
        assert_eq!(err.reason, "WorkerConfigurationAmbiguous");
    }

    #[test]
    fn namespace_selectors_admit_only_whom_they_select() {
        let team_a = labels(&[("team", "a")]);
        let invalid = LabelSelector {
            match_expressions: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                    key: "team".into(),
                    operator: "Sometimes".into(),
                    values: None,
                },
            ]),
            ..Default::default()
        };
        let cases = [
            (None, false, "unset"),
            (Some(LabelSelector::default()), true, ""),
            (selector(&[("team", "a")]), true, ""),
            (selector(&[("team", "b")]), false, "does not match"),
            (Some(invalid), false, "invalid"),
        ];
        for (sel, admitted, why) in cases {
            let got = admits(sel.as_ref(), &team_a);
            assert_eq!(got.is_ok(), admitted, "{sel:?}");
            if let Err(message) = got {
                assert!(message.contains(why), "{message}");
            }
        }
    }

    #[test]
    fn repositories_must_exist_and_admit_the_namespace() {
        let repos = vec![
            repository("backups", selector(&[("team", "a")])),
            repository("closed", None),
        ];
        let team_a = labels(&[("team", "a")]);
        let by = |name: &str| LocalObjectReference { name: name.into() };
        assert!(choose_repository(&by("backups"), &repos, &team_a).is_ok());
        let err = choose_repository(&by("backups"), &repos, &labels(&[("team", "b")]))
            .expect_err("other team");
        assert_eq!(err.reason, "NamespaceNotAdmitted");
        assert!(
            err.message.contains("BackupRepository \"backups\""),
            "{}",
            err.message
        );
        let err = choose_repository(&by("closed"), &repos, &team_a).expect_err("admits none");
        assert_eq!(err.reason, "NamespaceNotAdmitted");
        let err = choose_repository(&by("gone"), &repos, &team_a).expect_err("missing");
        assert_eq!(err.reason, "BackupRepositoryNotFound");
        // Stored before spec.integrity existed: used by no job.
        let mut unkeyed = (*repository("unkeyed", selector(&[("team", "a")]))).clone();
        unkeyed.spec.integrity = None;
        match choose_repository(&by("unkeyed"), &[Arc::new(unkeyed)], &team_a) {
            Err(p) => assert!(
                p.reason == BlockedReason::RepositoryIntegrityMissing
                    && p.message.contains("spec.integrity.macKeyId"),
                "{p:?}"
            ),
            Ok(_) => panic!("a repository without an integrity key was chosen"),
        }
    }
}
