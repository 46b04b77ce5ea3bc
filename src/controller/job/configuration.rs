//! Which WorkerConfiguration a job uses, and whether it is ready to launch.

use std::sync::Arc;

use kube::{Resource, ResourceExt};

use super::core::Problem;
use super::kind::WorkerJob;
use crate::api::WorkerConfiguration;
use crate::api::conditions::{self, READY};
use crate::reasons::BlockedReason;

/// Picks the configuration a job uses: the one it names, else the only one
/// of its namespace for its resources' region.
pub fn choose_configuration<'a, K: WorkerJob>(
    job: &K,
    candidates: &'a [Arc<WorkerConfiguration>],
) -> Result<&'a Arc<WorkerConfiguration>, Problem> {
    if job.repository().is_none() {
        return Err(Problem {
            reason: BlockedReason::RepositoryMissing,
            message: format!(
                "this {} has no spec.repository (it was created before Tender required one); create it again with a repository",
                K::KIND
            ),
        });
    }
    let ns = job.namespace().unwrap_or_default();
    let in_ns = || {
        candidates
            .iter()
            .filter(move |c| c.namespace().as_deref() == Some(ns.as_str()))
    };
    let chosen = if let Some(reference) = &job.configuration_ref() {
        in_ns()
            .find(|c| c.name_any() == reference.name)
            .ok_or_else(|| Problem {
                reason: BlockedReason::WorkerConfigurationNotFound,
                message: format!(
                    "WorkerConfiguration {:?} does not exist in this namespace; create it or fix spec.workerConfigurationRef",
                    reference.name
                ),
            })?
    } else {
        only_one_for_region(job, in_ns().collect())?
    };
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

/// The only configuration of the job's namespace for its resources' region.
fn only_one_for_region<'a, K: WorkerJob>(
    job: &K,
    in_namespace: Vec<&'a Arc<WorkerConfiguration>>,
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
    let matching: Vec<_> = in_namespace
        .into_iter()
        .filter(|c| c.spec.region == region)
        .collect();
    match matching[..] {
        [one] => Ok(one),
        [] => Err(Problem {
            reason: BlockedReason::WorkerConfigurationNotFound,
            message: format!(
                "no WorkerConfiguration for region {region} in this namespace; create one or set spec.workerConfigurationRef"
            ),
        }),
        _ => Err(Problem {
            reason: BlockedReason::WorkerConfigurationAmbiguous,
            message: format!(
                "{} WorkerConfigurations serve region {region} in this namespace; set spec.workerConfigurationRef",
                matching.len()
            ),
        }),
    }
}

/// Why a configuration is not ready for backup workers, for people.
pub fn not_ready_message(config: &WorkerConfiguration) -> String {
    let Some(status) = config.status.as_ref() else {
        return "it has not been reconciled yet".into();
    };
    let condition = |type_: &str| status.conditions.iter().find(|c| c.type_ == type_);
    let ready = condition(READY).filter(|c| c.status != "True");
    let network =
        condition("NetworkReady").filter(|_| status.missing_endpoints.contains_key("backup"));
    match (ready, network) {
        (Some(c), _) | (None, Some(c)) => c.message.clone(),
        (None, None) => "its worker queue is not there yet".into(),
    }
}

/// A configuration's queue URL when it is ready for backup workers.
pub fn ready_configuration(config: &WorkerConfiguration) -> Option<String> {
    let status = config.status.as_ref()?;
    let ready = conditions::is_true(&status.conditions, READY);
    let network_ok = !status.missing_endpoints.contains_key("backup");
    (ready && network_ok)
        .then(|| status.queue_url.clone())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        BackupJob, BackupJobSpec, BackupResource, LocalObjectReference, WorkerConfigurationSpec,
        WorkerSubnet,
    };

    fn config(name: &str, ns: &str, region: &str) -> Arc<WorkerConfiguration> {
        let mut c = WorkerConfiguration::new(
            name,
            WorkerConfigurationSpec {
                region: region.into(),
                subnets: vec![WorkerSubnet {
                    subnet_id: "subnet-aaaaaaaa".into(),
                    availability_zone: None,
                }],
                security_group_ids: vec!["sg-aaaaaaaa".into()],
                image_id: Some("ami-aaaaaaaa".into()),
                image_ssm_parameter: None,
                account: Default::default(),
                backup_account: None,
                production_account: None,
                iam_instance_profile: None,
                instance_types: None,
                tags: Default::default(),
                heartbeat_timeout_seconds: 300,
                file_level_recovery_cidrs: Vec::new(),
                assign_public_ip: false,
                private_network: false,
                root_volume: Default::default(),
                max_concurrent_workers: None,
            },
        );
        c.metadata.namespace = Some(ns.into());
        Arc::new(c)
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
                        region: (*r).into(),
                    })
                    .collect(),
                repository: Some(crate::api::Repository {
                    bucket: "backups".into(),
                    prefix: String::new(),
                    region: None,
                }),
                limits: Default::default(),
                suspend: false,
            },
        );
        j.metadata.namespace = Some("ns".into());
        j
    }

    #[test]
    fn a_job_stored_before_repositories_loads_and_stalls_with_a_reason() {
        // What an older Tender stored: no spec.repository.
        let stored = serde_json::json!({
            "apiVersion": "tender.dev/v1alpha1", "kind": "BackupJob",
            "metadata": {"name": "old", "namespace": "ns"},
            "spec": {"resources": [{"instanceId": "i-00000001", "region": "us-east-1"}]}
        });
        let job: BackupJob = serde_json::from_value(stored).expect("it still loads");
        let configs = vec![config("east", "ns", "us-east-1")];
        let problem = choose_configuration(&job, &configs).expect_err("no repository");
        assert_eq!(problem.reason, "RepositoryMissing");
        assert!(problem.message.contains("spec.repository"));
    }

    #[test]
    fn configuration_by_reference_or_by_region() {
        let configs = vec![
            config("east", "ns", "us-east-1"),
            config("west", "ns", "us-west-2"),
            config("east", "other", "us-east-1"),
        ];
        let chosen = choose_configuration(&job(None, &["us-west-2"]), &configs).expect("chosen");
        assert_eq!(chosen.name_any(), "west");
        let chosen =
            choose_configuration(&job(Some("east"), &["us-east-1"]), &configs).expect("chosen");
        assert_eq!(chosen.namespace().as_deref(), Some("ns"));
        let missing = choose_configuration(&job(Some("nope"), &["us-east-1"]), &configs)
            .expect_err("missing");
        assert_eq!(missing.reason, "WorkerConfigurationNotFound");
        let none = choose_configuration(&job(None, &["eu-west-1"]), &configs).expect_err("none");
        assert_eq!(none.reason, "WorkerConfigurationNotFound");
        assert!(none.message.contains("eu-west-1"));
        let mismatch = choose_configuration(&job(Some("east"), &["us-west-2"]), &configs)
            .expect_err("mismatch");
        assert_eq!(mismatch.reason, "RegionMismatch");
    }

    #[test]
    fn two_configurations_for_one_region_are_ambiguous() {
        let configs = vec![
            config("a", "ns", "us-east-1"),
            config("b", "ns", "us-east-1"),
        ];
        let err =
            choose_configuration(&job(None, &["us-east-1"]), &configs).expect_err("ambiguous");
        assert_eq!(err.reason, "WorkerConfigurationAmbiguous");
        let err = choose_configuration(&job(None, &["us-east-1", "us-west-2"]), &configs)
            .expect_err("ambiguous");
        assert_eq!(err.reason, "WorkerConfigurationAmbiguous");
    }
}
