//! The checks a WorkerConfiguration's reconcile makes, each before any
//! worker depends on it: the region, the image, the subnets and their way
//! to AWS (routes, public IPs, VPC endpoints per worker profile), the
//! security groups, the instance types. Each failure is a [`Finding`]
//! (reason and what to fix) or a condition of its own.

use std::collections::BTreeMap;

use crate::api::conditions::DesiredCondition;
use crate::api::{WorkerConfiguration, WorkerConfigurationStatus, WorkerSubnet};
use crate::aws::instances::Instances;
use crate::aws::network::{Network, RegionState, SubnetInfo};
use crate::aws::{AwsClients, AwsError};
use crate::controller::Result;
use crate::controller::events;
use crate::messages::WorkerProfile;
use crate::placement::DefaultTypes;
use crate::reachability;

/// Condition: the network has what workers need.
pub const NETWORK_READY: &str = "NetworkReady";
/// Condition: the region offers every worker instance type.
pub const INSTANCE_TYPES_OFFERED: &str = "InstanceTypesOffered";

/// What a check found wrong, for `Ready`: a reason and what to fix.
pub struct Finding {
    pub reason: &'static str,
    pub message: String,
}

/// Whether the region exists, is enabled and answers. Asked of EC2 in the
/// controller's own region when it has one (a region that does not exist
/// cannot answer for itself), else in the region. `None` when nothing
/// speaks against it, or when the answer cannot tell (no permission).
pub async fn check_region(cfg: &WorkerConfiguration, aws: &AwsClients) -> Option<Finding> {
    let region = cfg.spec.region.as_str();
    let home = aws.home_region().filter(|h| h != region);
    let asked_in = home.as_deref().unwrap_or(region);
    let answer = aws.network().region_state(asked_in, region).await;
    region_finding(region, asked_in, answer)
}

/// The finding for `answer`, DescribeRegions asked in `asked_in`.
pub fn region_finding(
    region: &str,
    asked_in: &str,
    answer: Result<RegionState, AwsError>,
) -> Option<Finding> {
    let (reason, message) = match answer {
        Ok(RegionState::Enabled) => return None,
        Ok(RegionState::Unknown) => (
            events::REGION_NOT_FOUND,
            format!(
                "AWS has no region {region:?} (EC2 in {asked_in} does not list it); fix spec.region"
            ),
        ),
        Ok(RegionState::NotEnabled) => (
            events::REGION_NOT_ENABLED,
            format!(
                "{region} is an opt-in region this account has not enabled; enable it (Account settings, AWS Regions) or choose another spec.region"
            ),
        ),
        // No permission to ask, a throttled or failing service, or another
        // region that does not answer: nothing is known about this one.
        Err(e)
            if e.category() == "AwsPermissionDenied"
                || e.code().is_some_and(is_server_side)
                || asked_in != region =>
        {
            return None;
        }
        Err(AwsError::Unreachable { detail, .. }) => (
            events::REGION_UNREACHABLE,
            format!(
                "cannot reach AWS in {region}: {}; check spec.region and the controller's network (DNS, egress, proxy)",
                crate::aws::unreachable_cause(&detail)
            ),
        ),
        Err(e) => (
            events::REGION_UNREACHABLE,
            format!("AWS in {region} does not answer as a region does ({e}); check spec.region"),
        ),
    };
    Some(Finding { reason, message })
}

/// Error codes of a service that is there but failing or busy for now.
fn is_server_side(code: &str) -> bool {
    matches!(
        code,
        "InternalError"
            | "InternalFailure"
            | "ServiceUnavailable"
            | "Unavailable"
            | "RequestLimitExceeded"
            | "Throttling"
            | "ThrottlingException"
    )
}

/// The configured security groups must exist, in the workers' VPC.
pub async fn check_security_groups(
    cfg: &WorkerConfiguration,
    network: Network<'_>,
    vpc_id: Option<&str>,
    findings: &mut Vec<Finding>,
) -> Result<()> {
    let wanted = &cfg.spec.security_group_ids;
    if wanted.is_empty() {
        return Ok(());
    }
    let found = network
        .security_group_vpcs(&cfg.spec.region, wanted)
        .await?;
    if let Some(finding) = security_group_finding(&cfg.spec.region, wanted, &found, vpc_id) {
        findings.push(finding);
    }
    Ok(())
}

/// What is wrong with the configured groups, given the VPC of each that
/// exists.
pub fn security_group_finding(
    region: &str,
    wanted: &[String],
    found: &BTreeMap<String, String>,
    vpc_id: Option<&str>,
) -> Option<Finding> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|g| !found.contains_key(*g))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Some(Finding {
            reason: events::SECURITY_GROUP_NOT_FOUND,
            message: format!(
                "security group(s) {} do not exist in {region}; fix spec.securityGroupIds (or leave it empty for a group Tender manages)",
                missing.join(", ")
            ),
        });
    }
    let elsewhere: Vec<String> = found
        .iter()
        .filter(|(g, _)| wanted.contains(g))
        .filter(|(_, vpc)| vpc_id.is_some_and(|v| v != vpc.as_str()))
        .map(|(g, vpc)| format!("{g} ({vpc})"))
        .collect();
    (!elsewhere.is_empty()).then(|| Finding {
        reason: events::SECURITY_GROUP_NOT_FOUND,
        message: format!(
            "security group(s) {} are not in the workers' VPC {}; list groups of that VPC in spec.securityGroupIds",
            elsewhere.join(", "),
            vpc_id.unwrap_or_default()
        ),
    })
}

/// The AMI: given, or resolved from its SSM parameter, else from AWS's
/// public parameter of the current Amazon Linux 2023 for the workers'
/// architecture.
pub async fn resolve_image(
    cfg: &WorkerConfiguration,
    instances: Instances<'_>,
    findings: &mut Vec<Finding>,
) -> Option<String> {
    let region = &cfg.spec.region;
    let default_parameter = cfg.spec.architecture.default_image_parameter();
    let parameter = match (&cfg.spec.image_id, &cfg.spec.image_ssm_parameter) {
        (Some(id), _) => return Some(id.clone()),
        (None, Some(parameter)) => parameter,
        (None, None) => &default_parameter,
    };
    let what = if cfg.spec.image_ssm_parameter.is_some() {
        "fix spec.imageSsmParameter"
    } else {
        "Tender reads AWS's public Amazon Linux 2023 parameter there: allow ssm:GetParameter on arn:aws:ssm:*::parameter/aws/service/* to the controller, or set spec.imageId"
    };
    {
        match instances.ssm_parameter(region, parameter).await {
            Ok(id) if id.starts_with("ami-") => Some(id),
            Ok(other) => {
                findings.push(Finding {
                    reason: events::IMAGE_NOT_RESOLVED,
                    message: format!(
                        "SSM parameter {parameter} holds {other:?}, not an AMI ID; {what}"
                    ),
                });
                None
            }
            Err(e) => {
                findings.push(Finding {
                    reason: events::IMAGE_NOT_RESOLVED,
                    message: format!("cannot read SSM parameter {parameter}: {e}; {what}"),
                });
                None
            }
        }
    }
}

/// Subnets: the configured ones (all in one VPC), else the default VPC's.
pub async fn check_subnets(
    cfg: &WorkerConfiguration,
    network: Network<'_>,
    status: &mut WorkerConfigurationStatus,
    findings: &mut Vec<Finding>,
) -> Result<Vec<SubnetInfo>> {
    let region = &cfg.spec.region;
    let subnets = if cfg.spec.subnets.is_empty() {
        network.default_subnets(region).await?
    } else {
        let ids: Vec<String> = cfg
            .spec
            .subnets
            .iter()
            .map(|s| s.subnet_id.clone())
            .collect();
        match network.describe_subnets(region, &ids).await {
            Ok(found) => found,
            Err(e) if e.code().is_some_and(|c| c.starts_with("InvalidSubnetID")) => {
                findings.push(Finding {
                    reason: events::SUBNET_NOT_FOUND,
                    message: format!("{e}; fix spec.subnets"),
                });
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        }
    };
    let mut vpcs: Vec<&str> = subnets.iter().map(|s| s.vpc_id.as_str()).collect();
    vpcs.sort_unstable();
    vpcs.dedup();
    status.vpc_id = None;
    match vpcs[..] {
        [vpc] => status.vpc_id = Some(vpc.to_string()),
        [] if findings.is_empty() => findings.push(Finding {
            reason: events::NO_SUBNETS,
            message: format!("{region} has no default VPC; list subnets in spec.subnets"),
        }),
        [] => {}
        _ => findings.push(Finding {
            reason: events::SUBNETS_IN_SEVERAL_VPCS,
            message: format!(
                "the subnets are in several VPCs ({}); list subnets of one VPC",
                vpcs.join(", ")
            ),
        }),
    }
    status.subnets = subnets
        .iter()
        .map(|s| WorkerSubnet {
            subnet_id: s.subnet_id.clone(),
            availability_zone: Some(s.availability_zone.clone()),
        })
        .collect();
    Ok(subnets)
}

/// How each subnet's workers reach AWS: their public IP, the route
/// table's default route, and the VPC endpoints each worker profile needs
/// (an interface endpoint with private DNS, or a gateway endpoint on the
/// subnet's route table). In private-network mode the endpoints must be
/// there (jobs of a profile that lacks one wait); otherwise a subnet with
/// no way out at all is a finding. `unreachable` is what the job
/// lifecycle saw of workers that never reported (lost before their first
/// message), shown while everything else looks right.
pub async fn check_network(
    cfg: &WorkerConfiguration,
    network: Network<'_>,
    (status, subnets): (&mut WorkerConfigurationStatus, &[SubnetInfo]),
    findings: &mut Vec<Finding>,
    unreachable: Option<String>,
) -> Result<DesiredCondition> {
    let region = &cfg.spec.region;
    status.missing_endpoints.clear();
    status.public_ip_subnets.clear();
    status.routes_to_aws.clear();
    let Some(vpc) = status.vpc_id.clone() else {
        return Ok(DesiredCondition::new(
            NETWORK_READY,
            false,
            "NoVpc",
            "no VPC to check",
        ));
    };
    let endpoints = network.vpc_endpoints(region, &vpc).await?;
    let tables = network.route_tables(region, &vpc).await?;
    let mut closed = Vec::new();
    for subnet in subnets {
        let table = reachability::route_table_of(&subnet.subnet_id, &tables);
        let table_id = table.map(|t| t.route_table_id.as_str());
        let public = reachability::public_ip(
            cfg.spec.assign_public_ip,
            cfg.spec.private_network,
            subnet.map_public_ip_on_launch,
        );
        if public {
            status.public_ip_subnets.push(subnet.subnet_id.clone());
        }
        let mut all_missing: Vec<String> = Vec::new();
        for profile in WorkerProfile::ALL {
            let missing = reachability::missing_endpoints(region, profile, &endpoints, table_id);
            for m in &missing {
                if !all_missing.contains(m) {
                    all_missing.push(m.clone());
                }
            }
            if cfg.spec.private_network && !missing.is_empty() {
                let entry = status
                    .missing_endpoints
                    .entry(profile.as_str().to_string())
                    .or_default();
                entry.extend(
                    missing
                        .into_iter()
                        .filter(|m| !entry.contains(m))
                        .collect::<Vec<_>>(),
                );
            }
        }
        if cfg.spec.private_network {
            continue;
        }
        match reachability::way_out(&subnet.subnet_id, public, table, &all_missing) {
            Ok(way) => status.routes_to_aws.push(way),
            Err(why) => closed.push(why),
        }
    }
    Ok(network_condition(
        cfg,
        status,
        &vpc,
        closed,
        findings,
        unreachable,
    ))
}

/// `NetworkReady` from what [`check_network`] found.
fn network_condition(
    cfg: &WorkerConfiguration,
    status: &WorkerConfigurationStatus,
    vpc: &str,
    closed: Vec<String>,
    findings: &mut Vec<Finding>,
    unreachable: Option<String>,
) -> DesiredCondition {
    let region = &cfg.spec.region;
    if !closed.is_empty() {
        let message = format!(
            "workers could not reach AWS from {}; jobs wait until they can",
            closed.join("; ")
        );
        findings.push(Finding {
            reason: events::NO_ROUTE_TO_AWS,
            message: message.clone(),
        });
        return DesiredCondition::new(NETWORK_READY, false, events::NO_ROUTE_TO_AWS, message);
    }
    if !status.missing_endpoints.is_empty() {
        let list: Vec<String> = status
            .missing_endpoints
            .iter()
            .map(|(op, m)| {
                let names: Vec<String> = m
                    .iter()
                    .map(|e| format!("com.amazonaws.{region}.{e}"))
                    .collect();
                format!("{op}: {}", names.join(", "))
            })
            .collect();
        return DesiredCondition::new(
            NETWORK_READY,
            false,
            "EndpointsMissing",
            format!(
                "{vpc} lacks VPC endpoints that workers need in private-network mode (interface endpoints with private DNS; for S3 a gateway endpoint on the subnets' route tables also counts): {}; jobs of those profiles wait",
                list.join("; ")
            ),
        );
    }
    if let Some(message) = unreachable {
        return DesiredCondition::new(NETWORK_READY, false, events::WORKERS_UNREACHABLE, message);
    }
    let message = if cfg.spec.private_network {
        format!("{vpc} has every VPC endpoint workers need")
    } else {
        format!("workers reach AWS: {}", status.routes_to_aws.join("; "))
    };
    let reason = if cfg.spec.private_network {
        "EndpointsPresent"
    } else {
        "RoutesToAws"
    };
    DesiredCondition::new(NETWORK_READY, true, reason, message)
}

/// Instance types: every one a worker may get must be offered here.
pub async fn check_instance_types(
    cfg: &WorkerConfiguration,
    network: Network<'_>,
    findings: &mut Vec<Finding>,
) -> Result<DesiredCondition> {
    let region = &cfg.spec.region;
    let mut wanted: Vec<String> = configured_instance_types(cfg);
    wanted.sort();
    wanted.dedup();
    let offered = network.offered_instance_types(region, &wanted).await?;
    let unoffered: Vec<String> = wanted
        .iter()
        .filter(|t| !offered.contains(t))
        .cloned()
        .collect();
    let arch = cfg.spec.architecture;
    let architectures = network
        .instance_type_architectures(region, &offered)
        .await?;
    let other_arch: Vec<String> = offered
        .iter()
        .filter(|t| {
            architectures
                .get(*t)
                .is_some_and(|a| !a.iter().any(|a| a == arch.as_str()))
        })
        .map(|t| format!("{t} ({})", architectures[t].join(", ")))
        .collect();
    if unoffered.is_empty() && !other_arch.is_empty() {
        let message = format!(
            "{} cannot run {arch} images; set spec.instanceTypes to {arch} types, or spec.architecture to theirs",
            other_arch.join(", ")
        );
        findings.push(Finding {
            reason: events::INSTANCE_TYPE_WRONG_ARCHITECTURE,
            message: message.clone(),
        });
        return Ok(DesiredCondition::new(
            INSTANCE_TYPES_OFFERED,
            false,
            events::INSTANCE_TYPE_WRONG_ARCHITECTURE,
            message,
        ));
    }
    Ok(if unoffered.is_empty() {
        DesiredCondition::new(
            INSTANCE_TYPES_OFFERED,
            true,
            "Offered",
            format!("{region} offers every worker instance type"),
        )
    } else {
        let message = format!(
            "{region} does not offer {}; choose other types in spec.instanceTypes",
            unoffered.join(", ")
        );
        findings.push(Finding {
            reason: events::INSTANCE_TYPE_NOT_OFFERED,
            message: message.clone(),
        });
        DesiredCondition::new(
            INSTANCE_TYPES_OFFERED,
            false,
            events::INSTANCE_TYPE_NOT_OFFERED,
            message,
        )
    })
}

/// Every instance type a worker of this configuration may get: the
/// configured profiles, and Tender's defaults for the others.
pub fn configured_instance_types(cfg: &WorkerConfiguration) -> Vec<String> {
    let t = cfg.spec.instance_types.clone().unwrap_or_default();
    let defaults = DefaultTypes::of(cfg.spec.architecture);
    let mut out = match t.backup {
        Some(b) => vec![b],
        None => defaults.backup_sizes().to_vec(),
    };
    out.push(t.restore.unwrap_or_else(|| defaults.restore()));
    out.push(
        t.file_level_recovery
            .unwrap_or_else(|| defaults.file_level()),
    );
    out.push(t.indexing.unwrap_or_else(|| defaults.indexing()));
    // Retention and verification workers: the configured type, or every
    // size Tender may pick for them.
    for configured in [t.retention, t.verification] {
        match configured {
            Some(c) => out.push(c),
            None => out.extend(defaults.upkeep_sizes()),
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable(detail: &str) -> AwsError {
        AwsError::Unreachable {
            operation: "DescribeRegions",
            detail: detail.into(),
        }
    }

    #[test]
    fn a_region_that_is_not_there_is_named() {
        let f = region_finding("xx-nowhere-1", "us-east-1", Ok(RegionState::Unknown)).unwrap();
        assert_eq!(f.reason, "RegionNotFound");
        assert!(f.message.contains("\"xx-nowhere-1\"") && f.message.contains("spec.region"));
        let f = region_finding("ap-east-2", "us-east-1", Ok(RegionState::NotEnabled)).unwrap();
        assert_eq!(f.reason, "RegionNotEnabled");
        assert!(region_finding("us-east-1", "us-east-1", Ok(RegionState::Enabled)).is_none());
        let denied = AwsError::Service {
            operation: "DescribeRegions",
            code: "UnauthorizedOperation".into(),
            message: String::new(),
        };
        assert!(
            region_finding("us-east-1", "us-east-1", Err(denied)).is_none(),
            "no permission to ask: nothing speaks against the region"
        );
        let failing = AwsError::Service {
            operation: "DescribeRegions",
            code: "InternalError".into(),
            message: String::new(),
        };
        assert!(region_finding("us-east-1", "us-east-1", Err(failing)).is_none());
        assert!(
            region_finding("eu-west-1", "us-east-1", Err(unreachable("dns error"))).is_none(),
            "the home region's trouble says nothing of this one"
        );
        let f = region_finding("xx-nowhere-1", "xx-nowhere-1", Err(unreachable(
            "dispatch failure: io error: client error (Connect): dns error: failed to lookup address information: Name or service not known",
        )))
        .unwrap();
        assert_eq!(f.reason, "RegionUnreachable");
        assert!(f.message.contains("does not resolve"), "{}", f.message);
    }

    #[test]
    fn unreachable_endpoints_say_why() {
        use crate::aws::unreachable_cause;
        assert!(
            unreachable_cause("tcp connect error: Connection refused (os error 111)")
                .contains("refused")
        );
        assert!(unreachable_cause("operation timed out").contains("in time"));
        assert_eq!(unreachable_cause("something else"), "something else");
    }

    #[test]
    fn missing_security_groups_are_named() {
        let wanted = vec!["sg-1".to_string(), "sg-2".to_string(), "sg-3".to_string()];
        let found = BTreeMap::from([("sg-2".to_string(), "vpc-1".to_string())]);
        let f = security_group_finding("us-east-1", &wanted, &found, Some("vpc-1")).unwrap();
        assert_eq!(f.reason, "SecurityGroupNotFound");
        assert!(f.message.contains("sg-1, sg-3"), "{}", f.message);
        let found = BTreeMap::from([
            ("sg-1".to_string(), "vpc-1".to_string()),
            ("sg-2".to_string(), "vpc-2".to_string()),
        ]);
        let wanted = &wanted[..2];
        let f = security_group_finding("us-east-1", wanted, &found, Some("vpc-1")).unwrap();
        assert!(f.message.contains("sg-2 (vpc-2)"), "{}", f.message);
        assert!(security_group_finding("us-east-1", &wanted[..1], &found, Some("vpc-1")).is_none());
    }
}
