//! Pure decisions about where a worker goes and what it is: launch token,
//! subnet, instance type, tags, queue name. No I/O here; unit tests call
//! these directly.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::api::{InstanceTypes, WorkerSubnet};
use crate::names::tags;

/// Backup workers below this total EBS size get the small instance type.
pub const SMALL_BACKUP_LIMIT_GIB: i64 = 1024;
/// Backup workers up to this total EBS size get the medium instance type.
pub const MEDIUM_BACKUP_LIMIT_GIB: i64 = 16 * 1024;

/// The launch token of one attempt of one resource's worker: the
/// RunInstances ClientToken (at most 64 ASCII characters) and the value of
/// the `tender.dev/launch-token` tag. Stable for the same inputs, so a
/// restarted controller finds what it launched.
pub fn launch_token(job_uid: &str, resource: &str, attempt: i32) -> String {
    let digest = Sha256::digest(format!("{job_uid}/{resource}/{attempt}").as_bytes());
    let hex: String = digest.iter().take(20).map(|b| format!("{b:02x}")).collect();
    format!("tender-{hex}")
}

/// The subnet a worker goes to, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetChoice {
    pub subnet_id: String,
    pub reason: String,
}

/// Picks the subnet in the resource's availability zone when the
/// configuration lists one, else the first configured subnet.
pub fn choose_subnet(
    subnets: &[WorkerSubnet],
    resource_zone: Option<&str>,
) -> Option<SubnetChoice> {
    if let Some(zone) = resource_zone
        && let Some(s) = subnets
            .iter()
            .find(|s| s.availability_zone.as_deref() == Some(zone))
    {
        return Some(SubnetChoice {
            subnet_id: s.subnet_id.clone(),
            reason: format!("subnet in the resource's availability zone {zone}"),
        });
    }
    let first = subnets.first()?;
    let reason = match resource_zone {
        Some(zone) => format!(
            "no configured subnet in the resource's availability zone {zone}; first configured subnet"
        ),
        None => "first configured subnet".to_string(),
    };
    Some(SubnetChoice {
        subnet_id: first.subnet_id.clone(),
        reason,
    })
}

/// Tender's default instance type for an EC2 backup worker, by the total
/// EBS size of the protected instance.
pub fn default_backup_instance_type(total_ebs_gib: i64) -> &'static str {
    if total_ebs_gib < SMALL_BACKUP_LIMIT_GIB {
        "c5.large"
    } else if total_ebs_gib <= MEDIUM_BACKUP_LIMIT_GIB {
        "c5.2xlarge"
    } else {
        "c5.4xlarge"
    }
}

/// The instance type of a backup worker: the configuration's backup
/// profile when set, else the size-based default.
pub fn backup_instance_type(configured: Option<&InstanceTypes>, total_ebs_gib: i64) -> String {
    configured
        .and_then(|t| t.backup.clone())
        .unwrap_or_else(|| default_backup_instance_type(total_ebs_gib).to_string())
}

/// Who owns a worker; becomes Tender's ownership tags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerOwner<'a> {
    pub cluster_id: &'a str,
    pub namespace: &'a str,
    pub job_kind: &'a str,
    pub job_name: &'a str,
    pub job_uid: &'a str,
    pub resource: &'a str,
    pub attempt: i32,
    pub launch_token: &'a str,
    pub operation: &'a str,
    pub configuration: &'a str,
}

/// The tags of a worker instance: the configuration's tags, then Tender's
/// ownership tags, which a configuration tag can never override.
pub fn worker_tags(
    owner: &WorkerOwner<'_>,
    configured: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = configured
        .iter()
        .filter(|(k, _)| !k.starts_with(tags::PREFIX) && !k.starts_with("aws:"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.entry(tags::NAME.to_string()).or_insert_with(|| {
        format!(
            "tender-{}-{}-{}",
            owner.operation, owner.job_name, owner.resource
        )
    });
    for (k, v) in [
        (tags::MANAGED_BY, tags::MANAGED_BY_VALUE.to_string()),
        (tags::CLUSTER_ID, owner.cluster_id.to_string()),
        (tags::NAMESPACE, owner.namespace.to_string()),
        (tags::JOB_KIND, owner.job_kind.to_string()),
        (tags::JOB_NAME, owner.job_name.to_string()),
        (tags::JOB_UID, owner.job_uid.to_string()),
        (tags::RESOURCE, owner.resource.to_string()),
        (tags::ATTEMPT, owner.attempt.to_string()),
        (tags::LAUNCH_TOKEN, owner.launch_token.to_string()),
        (tags::OPERATION, owner.operation.to_string()),
        (tags::CONFIGURATION, owner.configuration.to_string()),
    ] {
        out.insert(k.to_string(), v);
    }
    out
}

/// Name of the SQS queue of one configuration: unique per cluster,
/// namespace and name, within SQS's 80 characters of `[A-Za-z0-9_-]`.
pub fn queue_name(cluster_id: &str, namespace: &str, configuration: &str) -> String {
    let digest = Sha256::digest(format!("{cluster_id}/{namespace}/{configuration}").as_bytes());
    let hash: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    let readable: String = format!("{namespace}-{configuration}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(80 - "tender--".len() - hash.len())
        .collect();
    format!("tender-{readable}-{hash}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(id: &str, zone: Option<&str>) -> WorkerSubnet {
        WorkerSubnet {
            subnet_id: id.into(),
            availability_zone: zone.map(Into::into),
        }
    }

    #[test]
    fn launch_token_is_stable_distinct_per_attempt_and_fits_client_token() {
        let a = launch_token("uid-1", "i-0123456789abcdef0", 1);
        assert_eq!(a, launch_token("uid-1", "i-0123456789abcdef0", 1));
        assert_ne!(a, launch_token("uid-1", "i-0123456789abcdef0", 2));
        assert_ne!(a, launch_token("uid-2", "i-0123456789abcdef0", 1));
        assert!(a.len() <= 64 && a.is_ascii());
    }

    #[test]
    fn subnet_in_the_resource_zone_wins() {
        let subnets = [
            subnet("subnet-aaaaaaaa", Some("us-east-1a")),
            subnet("subnet-bbbbbbbb", Some("us-east-1b")),
        ];
        let choice = choose_subnet(&subnets, Some("us-east-1b")).expect("a subnet");
        assert_eq!(choice.subnet_id, "subnet-bbbbbbbb");
        assert!(choice.reason.contains("us-east-1b"));
    }

    #[test]
    fn falls_back_to_the_first_subnet_and_says_so() {
        let subnets = [
            subnet("subnet-aaaaaaaa", Some("us-east-1a")),
            subnet("subnet-bbbbbbbb", None),
        ];
        let choice = choose_subnet(&subnets, Some("us-east-1c")).expect("a subnet");
        assert_eq!(choice.subnet_id, "subnet-aaaaaaaa");
        assert!(
            choice.reason.contains("no configured subnet"),
            "{}",
            choice.reason
        );
        assert_eq!(choose_subnet(&[], Some("us-east-1a")), None);
    }

    #[test]
    fn backup_instance_type_follows_the_size_table() {
        assert_eq!(default_backup_instance_type(8), "c5.large");
        assert_eq!(default_backup_instance_type(1023), "c5.large");
        assert_eq!(default_backup_instance_type(1024), "c5.2xlarge");
        assert_eq!(default_backup_instance_type(16 * 1024), "c5.2xlarge");
        assert_eq!(default_backup_instance_type(16 * 1024 + 1), "c5.4xlarge");
        let configured = InstanceTypes {
            backup: Some("m5.xlarge".into()),
            ..Default::default()
        };
        assert_eq!(backup_instance_type(Some(&configured), 50_000), "m5.xlarge");
        assert_eq!(backup_instance_type(None, 50_000), "c5.4xlarge");
    }

    #[test]
    fn ownership_tags_cannot_be_overridden() {
        let owner = WorkerOwner {
            cluster_id: "c1",
            namespace: "ns",
            job_kind: "BackupJob",
            job_name: "nightly",
            job_uid: "uid",
            resource: "i-0123456789abcdef0",
            attempt: 2,
            launch_token: "tok",
            operation: "backup",
            configuration: "default",
        };
        let configured = BTreeMap::from([
            ("team".to_string(), "storage".to_string()),
            (tags::JOB_UID.to_string(), "forged".to_string()),
            ("Name".to_string(), "my-worker".to_string()),
        ]);
        let t = worker_tags(&owner, &configured);
        assert_eq!(t[tags::JOB_UID], "uid");
        assert_eq!(t["team"], "storage");
        assert_eq!(t["Name"], "my-worker");
        assert_eq!(t[tags::ATTEMPT], "2");
        assert_eq!(t[tags::CLUSTER_ID], "c1");
    }

    #[test]
    fn queue_names_are_valid_and_unique() {
        let a = queue_name("c1", "team-a", "default");
        let b = queue_name("c1", "team-b", "default");
        assert_ne!(a, b);
        let long = queue_name("c1", &"n".repeat(63), &"x.y".repeat(80));
        assert!(long.len() <= 80, "{}", long.len());
        assert!(
            long.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
    }
}
