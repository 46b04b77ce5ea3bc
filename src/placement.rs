//! Pure decisions about where a worker goes and what it is: launch token,
//! subnet, instance type, tags, queue name. No I/O here; unit tests call
//! these directly.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::api::{Architecture, InstanceTypes, WorkerSubnet};
use crate::names::tags;

/// One TCP rule of a security group: port and peer CIDR.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TcpRule {
    pub port: i32,
    pub cidr: String,
}

/// A VPC endpoint as EC2 describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    pub service_name: String,
    pub interface: bool,
    pub private_dns: bool,
    pub available: bool,
    /// The route tables a gateway endpoint is attached to.
    pub route_table_ids: Vec<String>,
}

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
    format!("tender-{}", hex::encode(&digest[..20]))
}

/// A subnet a worker may go to, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetChoice {
    pub subnet_id: String,
    pub reason: String,
}

/// The subnets to try for a worker, best first: those in the resource's
/// availability zone, then the others in their configured order. The
/// launch goes to the first one with free addresses and capacity.
pub fn subnet_candidates(
    subnets: &[WorkerSubnet],
    resource_zone: Option<&str>,
) -> Vec<SubnetChoice> {
    let in_zone = |s: &WorkerSubnet| {
        resource_zone.is_some() && s.availability_zone.as_deref() == resource_zone
    };
    let zone = resource_zone.unwrap_or("unknown");
    let mut out: Vec<SubnetChoice> = subnets
        .iter()
        .filter(|s| in_zone(s))
        .map(|s| SubnetChoice {
            subnet_id: s.subnet_id.clone(),
            reason: format!("subnet in the resource's availability zone {zone}"),
        })
        .collect();
    let none_in_zone = out.is_empty();
    out.extend(
        subnets
            .iter()
            .filter(|s| !in_zone(s))
            .map(|s| SubnetChoice {
                subnet_id: s.subnet_id.clone(),
                reason: match (none_in_zone, resource_zone) {
                    (true, Some(zone)) => format!(
                        "no subnet in the resource's availability zone {zone}; subnet in {}",
                        s.availability_zone.as_deref().unwrap_or("another zone")
                    ),
                    _ => format!(
                        "subnet in {}",
                        s.availability_zone.as_deref().unwrap_or("another zone")
                    ),
                },
            }),
    );
    out
}

/// True for launch errors that another subnet may not have: no free
/// address, no capacity for the type, or the type not offered in the zone.
pub fn is_capacity_error(code: &str) -> bool {
    matches!(
        code,
        "InsufficientInstanceCapacity"
            | "InsufficientFreeAddressesInSubnet"
            | "Unsupported"
            | "InsufficientCapacity"
    )
}

/// True for launch errors that mean the configuration's network changed
/// under it (a subnet or security group deleted): worth retrying once the
/// configuration has been checked again, not a reason to fail the job.
pub fn is_stale_network_error(code: &str) -> bool {
    matches!(
        code,
        "InvalidSubnetID.NotFound" | "InvalidGroup.NotFound" | "InvalidSecurityGroupID.NotFound"
    )
}

/// The rules of the security group Tender manages: inbound TCP 443 from the
/// file-level recovery CIDRs only; outbound TCP 443 (AWS endpoints) only.
/// Ingress first, then egress; both sorted.
pub fn managed_rules(file_level_recovery_cidrs: &[String]) -> (Vec<TcpRule>, Vec<TcpRule>) {
    let mut ingress: Vec<TcpRule> = file_level_recovery_cidrs
        .iter()
        .map(|c| TcpRule {
            port: 443,
            cidr: c.clone(),
        })
        .collect();
    ingress.sort();
    ingress.dedup();
    let egress = vec![TcpRule {
        port: 443,
        cidr: "0.0.0.0/0".into(),
    }];
    (ingress, egress)
}

/// Expands `{{job}}`, `{{namespace}}`, `{{operation}}` and `{{resource}}` in
/// the configuration's tag values.
pub fn expand_tag_values(
    configured: &BTreeMap<String, String>,
    owner: &WorkerOwner<'_>,
) -> BTreeMap<String, String> {
    configured
        .iter()
        .map(|(k, v)| {
            let value = v
                .replace("{{job}}", owner.job_name)
                .replace("{{namespace}}", owner.namespace)
                .replace("{{operation}}", owner.operation)
                .replace("{{resource}}", owner.resource);
            // A tag value is at most 256 characters, also after expansion.
            (k.clone(), value.chars().take(256).collect())
        })
        .collect()
}

/// How many of a job's waiting workers may launch now under a
/// configuration's `maxConcurrentWorkers`, and the job's place in the queue
/// when some must wait (1 = next). `active` counts live workers of the
/// configuration; `waiting_ahead` counts workers of older jobs still waiting.
pub fn launch_allowance(
    max: Option<i32>,
    active: usize,
    waiting_ahead: usize,
    mine: usize,
) -> (usize, Option<usize>) {
    let Some(max) = max else { return (mine, None) };
    let free = (max.max(0) as usize).saturating_sub(active);
    let for_me = free.saturating_sub(waiting_ahead).min(mine);
    if for_me == mine {
        (for_me, None)
    } else {
        // Workers ahead that cannot start now, plus this job's first one.
        (for_me, Some(waiting_ahead.saturating_sub(free) + 1))
    }
}

/// Tender's default instance types for workers of one architecture: the
/// same sizes of the compute-optimized family for backups and restores
/// (`c5`, on Graviton `c7g`) and of the burstable one for file-level
/// recovery and indexing (`t3`, on Graviton `t4g`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DefaultTypes {
    compute: &'static str,
    burstable: &'static str,
}

/// Chunks up to which a retention worker is a `large` (about 5 TiB of
/// unique data at 512 KiB a chunk), and then an `xlarge`.
pub const RETENTION_LARGE_CHUNKS: u64 = 10_000_000;
pub const RETENTION_XLARGE_CHUNKS: u64 = 100_000_000;

/// Logical GiB up to which a verification worker is a `large` (4 GiB of
/// memory), and then an `xlarge` (8 GiB).
pub const VERIFICATION_LARGE_GIB: i64 = 4 * 1024;
pub const VERIFICATION_XLARGE_GIB: i64 = 12 * 1024;

impl DefaultTypes {
    pub const fn of(arch: Architecture) -> Self {
        match arch {
            Architecture::X86_64 => Self {
                compute: "c5",
                burstable: "t3",
            },
            Architecture::Arm64 => Self {
                compute: "c7g",
                burstable: "t4g",
            },
        }
    }

    /// A backup worker's, by the total EBS size of the protected instance.
    pub fn backup(self, total_ebs_gib: i64) -> String {
        let size = if total_ebs_gib < SMALL_BACKUP_LIMIT_GIB {
            "large"
        } else if total_ebs_gib <= MEDIUM_BACKUP_LIMIT_GIB {
            "2xlarge"
        } else {
            "4xlarge"
        };
        format!("{}.{size}", self.compute)
    }

    /// Every size a backup worker may get.
    pub fn backup_sizes(self) -> [String; 3] {
        ["large", "2xlarge", "4xlarge"].map(|s| format!("{}.{s}", self.compute))
    }

    /// Every size a retention or verification worker may get.
    pub fn upkeep_sizes(self) -> [String; 3] {
        ["large", "xlarge", "2xlarge"].map(|s| format!("{}.{s}", self.compute))
    }

    /// A PostgreSQL dump's: pg_dump, COPY text and zstd keep a core or
    /// two busy; the disk does nothing.
    pub fn dump(self) -> String {
        format!("{}.large", self.compute)
    }

    pub fn restore(self) -> String {
        format!("{}.large", self.compute)
    }

    /// A retention worker's, by the chunks the namespace part held at the
    /// last run (listing and comparing them is what takes the time; memory
    /// stays bounded whatever the count, see `mover::gc`).
    pub fn retention(self, chunks: u64) -> String {
        let size = if chunks <= RETENTION_LARGE_CHUNKS {
            "large"
        } else if chunks <= RETENTION_XLARGE_CHUNKS {
            "xlarge"
        } else {
            "2xlarge"
        };
        format!("{}.{size}", self.compute)
    }

    /// A verification worker's, by the restore point's logical size (0:
    /// unknown): reading and hashing go at the network's pace, which a
    /// `large` has enough of; what grows is the memory of its chunk list
    /// (about 250 bytes a 512 KiB block, so some 500 MiB a TiB).
    pub fn verification(self, logical_gib: i64) -> String {
        let size = if logical_gib <= VERIFICATION_LARGE_GIB {
            "large"
        } else if logical_gib <= VERIFICATION_XLARGE_GIB {
            "xlarge"
        } else {
            "2xlarge"
        };
        format!("{}.{size}", self.compute)
    }

    pub fn file_level(self) -> String {
        format!("{}.medium", self.burstable)
    }

    pub fn indexing(self) -> String {
        format!("{}.medium", self.burstable)
    }
}

/// The instance type of a backup worker: the configuration's backup
/// profile when set, else the size-based default of its architecture.
pub fn backup_instance_type(
    configured: Option<&InstanceTypes>,
    arch: Architecture,
    total_ebs_gib: i64,
) -> String {
    configured
        .and_then(|t| t.backup.clone())
        .unwrap_or_else(|| DefaultTypes::of(arch).backup(total_ebs_gib))
}

/// The instance type of a PostgreSQL dump's worker: the configuration's
/// backup profile when set, else a `large` compute type.
pub fn dump_instance_type(configured: Option<&InstanceTypes>, arch: Architecture) -> String {
    configured
        .and_then(|t| t.backup.clone())
        .unwrap_or_else(|| DefaultTypes::of(arch).dump())
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
    let mut out: BTreeMap<String, String> = expand_tag_values(configured, owner)
        .into_iter()
        .filter(|(k, _)| !k.starts_with(tags::PREFIX) && !k.starts_with("aws:"))
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
pub fn queue_name(cluster_id: &str, configuration: &str) -> String {
    let digest = Sha256::digest(format!("{cluster_id}/{configuration}").as_bytes());
    let hash = hex::encode(&digest[..6]);
    let readable: String = configuration
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
    fn subnets_in_the_resource_zone_come_first() {
        let subnets = [
            subnet("subnet-aaaaaaaa", Some("us-east-1a")),
            subnet("subnet-bbbbbbbb", Some("us-east-1b")),
            subnet("subnet-cccccccc", Some("us-east-1b")),
        ];
        let order: Vec<String> = subnet_candidates(&subnets, Some("us-east-1b"))
            .into_iter()
            .map(|c| c.subnet_id)
            .collect();
        assert_eq!(
            order,
            ["subnet-bbbbbbbb", "subnet-cccccccc", "subnet-aaaaaaaa"]
        );
        let first = &subnet_candidates(&subnets, Some("us-east-1b"))[0];
        assert!(first.reason.contains("us-east-1b"), "{}", first.reason);
    }

    #[test]
    fn without_a_subnet_in_the_zone_the_others_are_tried_and_the_reason_says_so() {
        let subnets = [
            subnet("subnet-aaaaaaaa", Some("us-east-1a")),
            subnet("subnet-bbbbbbbb", None),
        ];
        let candidates = subnet_candidates(&subnets, Some("us-east-1c"));
        assert_eq!(candidates[0].subnet_id, "subnet-aaaaaaaa");
        assert!(
            candidates[0]
                .reason
                .contains("no subnet in the resource's availability zone us-east-1c")
        );
        assert_eq!(candidates.len(), 2);
        assert!(subnet_candidates(&[], Some("us-east-1a")).is_empty());
    }

    #[test]
    fn capacity_errors_move_on_to_the_next_subnet() {
        assert!(is_capacity_error("InsufficientInstanceCapacity"));
        assert!(is_capacity_error("InsufficientFreeAddressesInSubnet"));
        assert!(!is_capacity_error("InvalidAMIID.NotFound"));
    }

    #[test]
    fn managed_rules_are_exactly_what_workers_need() {
        let (ingress, egress) = managed_rules(&[
            "10.0.0.0/8".into(),
            "192.168.1.0/24".into(),
            "10.0.0.0/8".into(),
        ]);
        assert_eq!(
            ingress,
            [
                TcpRule {
                    port: 443,
                    cidr: "10.0.0.0/8".into()
                },
                TcpRule {
                    port: 443,
                    cidr: "192.168.1.0/24".into()
                }
            ]
        );
        assert_eq!(egress.iter().map(|r| r.port).collect::<Vec<_>>(), [443]);
        assert!(
            managed_rules(&[]).0.is_empty(),
            "no inbound rule without CIDRs"
        );
    }

    #[test]
    fn the_queue_lets_older_jobs_go_first() {
        assert_eq!(launch_allowance(None, 100, 100, 3), (3, None));
        assert_eq!(launch_allowance(Some(4), 1, 0, 2), (2, None));
        assert_eq!(launch_allowance(Some(4), 3, 0, 2), (1, Some(1)));
        assert_eq!(launch_allowance(Some(4), 4, 0, 1), (0, Some(1)));
        assert_eq!(launch_allowance(Some(4), 2, 5, 1), (0, Some(4)));
        assert_eq!(launch_allowance(Some(2), 0, 1, 1), (1, None));
    }

    #[test]
    fn backup_instance_type_follows_the_size_table() {
        let x86 = DefaultTypes::of(Architecture::X86_64);
        let default_backup_instance_type = |gib| x86.backup(gib);
        assert_eq!(default_backup_instance_type(8), "c5.large");
        assert_eq!(default_backup_instance_type(1023), "c5.large");
        assert_eq!(default_backup_instance_type(1024), "c5.2xlarge");
        assert_eq!(default_backup_instance_type(16 * 1024), "c5.2xlarge");
        assert_eq!(default_backup_instance_type(16 * 1024 + 1), "c5.4xlarge");
        let configured = InstanceTypes {
            backup: Some("m5.xlarge".into()),
            ..Default::default()
        };
        let x86 = Architecture::X86_64;
        assert_eq!(
            backup_instance_type(Some(&configured), x86, 50_000),
            "m5.xlarge"
        );
        assert_eq!(backup_instance_type(None, x86, 50_000), "c5.4xlarge");
        assert_eq!(
            backup_instance_type(None, Architecture::Arm64, 50_000),
            "c7g.4xlarge"
        );
        let graviton = DefaultTypes::of(Architecture::Arm64);
        assert_eq!(graviton.backup(8), "c7g.large");
        assert_eq!(graviton.restore(), "c7g.large");
        assert_eq!(graviton.file_level(), "t4g.medium");
    }

    #[test]
    fn tag_values_expand_per_worker() {
        let owner = WorkerOwner {
            cluster_id: "c1",
            namespace: "prod",
            job_kind: "BackupJob",
            job_name: "nightly",
            job_uid: "uid",
            resource: "i-0123456789abcdef0",
            attempt: 1,
            launch_token: "tok",
            operation: "backup",
            configuration: "default",
        };
        let configured = BTreeMap::from([(
            "purpose".to_string(),
            "{{operation}} of {{resource}} for {{namespace}}/{{job}}".to_string(),
        )]);
        let t = worker_tags(&owner, &configured);
        assert_eq!(
            t["purpose"],
            "backup of i-0123456789abcdef0 for prod/nightly"
        );
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
        let a = queue_name("c1", "team-a");
        let b = queue_name("c1", "team-b");
        assert_ne!(a, b);
        assert_ne!(queue_name("c2", "team-a"), a);
        let long = queue_name("c1", &"x.y".repeat(100));
        assert!(long.len() <= 80, "{}", long.len());
        assert!(
            long.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
    }
}
