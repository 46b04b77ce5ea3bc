//! Effects the core asks the reconciler to carry out on AWS: which workers
//! to terminate now, grouped so that one TerminateInstances call serves
//! every instance of one region and account.

use std::ops::Deref;

use crate::api::{AccountAccess, Phase, WorkerStatus};

/// Terminate these instances, all in one region and reached through one
/// role (`None`: the controller's own account).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Termination {
    pub region: String,
    pub access: Option<AccountAccess>,
    pub instance_ids: Vec<String>,
}

/// The instances of workers that are done (finished, or suspended) and not
/// terminated yet, grouped by region and account in the workers' order.
pub fn terminations<W: Deref<Target = WorkerStatus>>(workers: &[W]) -> Vec<Termination> {
    let mut groups: Vec<Termination> = Vec::new();
    let done = workers
        .iter()
        .filter(|w| w.phase.is_finished() || w.phase == Phase::Suspended)
        .filter(|w| w.is_active());
    for w in done {
        let Some(id) = &w.instance_id else { continue };
        match groups
            .iter_mut()
            .find(|g| g.region == w.region && g.access == w.access)
        {
            Some(g) => g.instance_ids.push(id.clone()),
            None => groups.push(Termination {
                region: w.region.clone(),
                access: w.access.clone(),
                instance_ids: vec![id.clone()],
            }),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn worker(id: &str, phase: Phase, region: &str, role: Option<&str>) -> WorkerStatus {
        WorkerStatus {
            resource: id.to_string(),
            instance_id: Some(id.to_string()),
            phase,
            region: region.to_string(),
            access: role.map(|r| AccountAccess {
                role_arn: r.to_string(),
                external_id: None,
            }),
            ..WorkerStatus::default()
        }
    }

    #[test]
    fn terminates_done_workers_grouped_by_region_and_account() {
        let mut terminated = worker("i-done-before", Phase::Succeeded, "us-east-1", None);
        terminated.terminated_time = Some(Time(Timestamp::UNIX_EPOCH));
        let mut waiting = worker("never-launched", Phase::Failed, "us-east-1", None);
        waiting.instance_id = None;
        let workers = [
            worker("i-1", Phase::Succeeded, "us-east-1", None),
            worker("i-running", Phase::Running, "us-east-1", None),
            worker("i-2", Phase::Failed, "eu-west-1", None),
            worker("i-3", Phase::Suspended, "us-east-1", Some("arn:role/a")),
            worker("i-4", Phase::Failed, "us-east-1", None),
            worker("i-provisioning", Phase::Provisioning, "us-east-1", None),
            terminated,
            waiting,
        ];
        let refs: Vec<&WorkerStatus> = workers.iter().collect();
        let groups = terminations(&refs);
        let summary: Vec<(&str, Option<&str>, Vec<&str>)> = groups
            .iter()
            .map(|g| {
                (
                    g.region.as_str(),
                    g.access.as_ref().map(|a| a.role_arn.as_str()),
                    g.instance_ids.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("us-east-1", None, vec!["i-1", "i-4"]),
                ("eu-west-1", None, vec!["i-2"]),
                ("us-east-1", Some("arn:role/a"), vec!["i-3"]),
            ]
        );
    }

    #[test]
    fn nothing_to_terminate_while_workers_run() {
        let workers = [
            worker("i-1", Phase::Running, "us-east-1", None),
            worker("i-2", Phase::Provisioning, "us-east-1", None),
        ];
        let refs: Vec<&WorkerStatus> = workers.iter().collect();
        assert!(terminations(&refs).is_empty());
    }
}
