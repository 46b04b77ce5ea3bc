//! Pure decisions about how a worker reaches AWS: which services each kind
//! of worker calls (derived from the one table of calls,
//! [`AwsOperation`]), which VPC endpoints count for a subnet, whether a
//! worker gets a public IP, and whether a subnet's routes lead out. No I/O;
//! unit tests call these directly.

use crate::aws::operation::{AwsOperation, AwsService};
use crate::messages::WorkerProfile;
use crate::placement::EndpointInfo;

/// The services a worker of `profile` calls, in order: every service of an
/// operation that [`AwsOperation::worker_profiles`] gives to it. (Test
/// builds refuse a worker's call the table does not list, so the table is
/// what workers call.) SQS is among them: every worker reports over it.
pub fn worker_services(profile: WorkerProfile) -> Vec<AwsService> {
    let mut services: Vec<AwsService> = AwsOperation::ALL
        .iter()
        .filter(|op| op.worker_profiles().contains(&profile))
        .map(|op| op.service())
        .collect();
    services.sort();
    services.dedup();
    services
}

/// The VPC endpoints (`com.amazonaws.<region>.<name>`) a worker of
/// `profile` needs when it has no other way out. Secrets Manager is left
/// out: only a PostgreSQL dump's backup worker calls it, and a private
/// network without its endpoint must not hold every other backup (the
/// README's private-network section lists it for dumps).
pub fn required_endpoints(profile: WorkerProfile) -> Vec<&'static str> {
    worker_services(profile)
        .into_iter()
        .filter(|s| *s != AwsService::SecretsManager)
        .map(AwsService::endpoint_name)
        .collect()
}

/// Services AWS offers as *gateway* endpoints (a route in the subnet's
/// route table instead of a network interface).
/// <https://docs.aws.amazon.com/vpc/latest/privatelink/gateway-endpoints.html>
const GATEWAY_SERVICES: [&str; 2] = ["s3", "dynamodb"];

/// Whether `endpoint` serves `service` to a subnet whose route table is
/// `route_table`: an available interface endpoint with private DNS (the SDK
/// calls the service's public name, which only private DNS points at the
/// endpoint), or an available gateway endpoint attached to that route table.
pub fn endpoint_serves(
    endpoint: &EndpointInfo,
    region: &str,
    service: &str,
    route_table: Option<&str>,
) -> bool {
    if endpoint.service_name != format!("com.amazonaws.{region}.{service}") || !endpoint.available {
        return false;
    }
    if endpoint.interface {
        return endpoint.private_dns;
    }
    GATEWAY_SERVICES.contains(&service)
        && route_table.is_some_and(|t| endpoint.route_table_ids.iter().any(|r| r == t))
}

/// The endpoints a worker of `profile` in a subnet with `route_table`
/// needs that the VPC lacks.
pub fn missing_endpoints(
    region: &str,
    profile: WorkerProfile,
    endpoints: &[EndpointInfo],
    route_table: Option<&str>,
) -> Vec<String> {
    required_endpoints(profile)
        .into_iter()
        .filter(|service| {
            !endpoints
                .iter()
                .any(|e| endpoint_serves(e, region, service, route_table))
        })
        .map(String::from)
        .collect()
}

/// Whether a worker gets a public IP: as `assign_public_ip` says when it is
/// set, never in private-network mode, else as the subnet's own
/// `MapPublicIpOnLaunch` says (on in a default VPC's subnets), as EC2 does
/// for an instance launched without the setting.
pub fn public_ip(assign_public_ip: Option<bool>, private_network: bool, subnet_maps: bool) -> bool {
    !private_network && assign_public_ip.unwrap_or(subnet_maps)
}

/// A route table as far as the way out matters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTableInfo {
    pub route_table_id: String,
    /// Subnets explicitly associated with it.
    pub subnet_ids: Vec<String>,
    /// The VPC's main route table, used by every subnet not associated
    /// with another.
    pub main: bool,
    /// Where the default route (`0.0.0.0/0`) goes, if anywhere: an internet
    /// gateway (`igw-`), a NAT gateway (`nat-`), a transit gateway, ….
    pub default_target: Option<String>,
}

/// The route table a subnet uses: its own association, else the main one.
pub fn route_table_of<'a>(
    subnet_id: &str,
    tables: &'a [RouteTableInfo],
) -> Option<&'a RouteTableInfo> {
    tables
        .iter()
        .find(|t| t.subnet_ids.iter().any(|s| s == subnet_id))
        .or_else(|| tables.iter().find(|t| t.main))
}

/// How a subnet's workers reach AWS, for people (`Ok`), or why they cannot
/// (`Err`, saying what to fix). `missing` are the endpoints some worker
/// profile lacks in this subnet.
pub fn way_out(
    subnet_id: &str,
    public_ip: bool,
    table: Option<&RouteTableInfo>,
    missing: &[String],
) -> Result<String, String> {
    let target = table.and_then(|t| t.default_target.as_deref());
    match target {
        Some(t) if t.starts_with("igw-") && public_ip => {
            return Ok(format!("{subnet_id}: public IP and internet gateway {t}"));
        }
        Some(t) if t.starts_with("nat-") => return Ok(format!("{subnet_id}: NAT gateway {t}")),
        Some(t) if !t.starts_with("igw-") && !t.starts_with("local") => {
            // A transit gateway, an appliance or a peering: where it leads
            // is not visible from here.
            return Ok(format!(
                "{subnet_id}: default route through {t} (not followed further)"
            ));
        }
        _ => {}
    }
    if missing.is_empty() {
        return Ok(format!("{subnet_id}: VPC endpoints for every service"));
    }
    let table_name = table.map_or("no route table", |t| t.route_table_id.as_str());
    let why = match target {
        Some(t) if t.starts_with("igw-") => format!(
            "its default route goes to internet gateway {t} but workers get no public IP there (set spec.assignPublicIp: true, or route 0.0.0.0/0 to a NAT gateway)"
        ),
        _ => format!("{table_name} has no default route (0.0.0.0/0) to an internet or NAT gateway"),
    };
    Err(format!(
        "{subnet_id}: {why}, and the VPC lacks endpoints for {}",
        missing.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(service: &str, interface: bool, dns: bool, tables: &[&str]) -> EndpointInfo {
        EndpointInfo {
            service_name: format!("com.amazonaws.us-east-1.{service}"),
            interface,
            private_dns: dns,
            available: true,
            route_table_ids: tables.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn each_profile_needs_the_services_its_calls_name() {
        assert_eq!(
            required_endpoints(WorkerProfile::Backup),
            ["ec2", "ebs", "s3", "sqs", "sts", "kms"]
        );
        assert_eq!(
            required_endpoints(WorkerProfile::Restore),
            ["ebs", "s3", "sqs", "kms"]
        );
        assert_eq!(
            required_endpoints(WorkerProfile::FileLevel),
            ["s3", "sqs", "kms"]
        );
        for profile in WorkerProfile::ALL {
            assert!(
                required_endpoints(profile).contains(&"sqs"),
                "{profile:?} reports over SQS"
            );
            assert!(
                !required_endpoints(profile).contains(&"ssm"),
                "no worker calls SSM"
            );
        }
    }

    #[test]
    fn gateway_endpoints_count_only_on_the_subnets_route_table() {
        let mut endpoints: Vec<EndpointInfo> = ["ebs", "sqs", "kms"]
            .iter()
            .map(|s| ep(s, true, true, &[]))
            .collect();
        endpoints.push(ep("s3", false, false, &["rtb-1"]));
        let restore =
            |table| missing_endpoints("us-east-1", WorkerProfile::Restore, &endpoints, table);
        assert!(restore(Some("rtb-1")).is_empty());
        assert_eq!(restore(Some("rtb-2")), ["s3"], "gateway on another table");
        assert_eq!(restore(None), ["s3"]);
        // An interface endpoint counts only with private DNS.
        let mut no_dns = endpoints.clone();
        no_dns[0].private_dns = false;
        assert_eq!(
            missing_endpoints("us-east-1", WorkerProfile::Restore, &no_dns, Some("rtb-1")),
            ["ebs"]
        );
        // A gateway endpoint of a service AWS offers only as an interface
        // does not count; nor does another region's endpoint.
        let fake_gateway = [ep("sqs", false, false, &["rtb-1"])];
        assert!(!endpoint_serves(
            &fake_gateway[0],
            "us-east-1",
            "sqs",
            Some("rtb-1")
        ));
        assert_eq!(
            missing_endpoints(
                "eu-west-1",
                WorkerProfile::FileLevel,
                &endpoints,
                Some("rtb-1")
            ),
            ["s3", "sqs", "kms"]
        );
    }

    #[test]
    fn a_public_ip_as_configured_else_as_the_subnet_maps_it() {
        let cases = [
            (Some(true), false, false, true),
            (Some(false), false, true, false),
            (None, false, true, true),
            (None, false, false, false),
            (None, true, true, false),
            (Some(true), true, true, false),
        ];
        for (assign, private, maps, want) in cases {
            assert_eq!(
                public_ip(assign, private, maps),
                want,
                "{assign:?} {private} {maps}"
            );
        }
    }

    #[test]
    fn a_subnet_gets_out_through_a_gateway_or_endpoints() {
        let table = |target: Option<&str>| RouteTableInfo {
            route_table_id: "rtb-1".into(),
            subnet_ids: vec!["subnet-1".into()],
            main: false,
            default_target: target.map(String::from),
        };
        let missing = vec!["sqs".to_string()];
        let igw = table(Some("igw-1"));
        assert!(way_out("subnet-1", true, Some(&igw), &missing).is_ok());
        let no_ip = way_out("subnet-1", false, Some(&igw), &missing).expect_err("no public IP");
        assert!(no_ip.contains("assignPublicIp"), "{no_ip}");
        assert!(way_out("subnet-1", false, Some(&table(Some("nat-1"))), &missing).is_ok());
        assert!(way_out("subnet-1", false, Some(&table(Some("tgw-1"))), &missing).is_ok());
        let closed = way_out("subnet-1", true, Some(&table(None)), &missing).expect_err("none");
        assert!(
            closed.contains("no default route") && closed.contains("sqs"),
            "{closed}"
        );
        assert!(way_out("subnet-1", false, Some(&table(None)), &[]).is_ok());
    }

    #[test]
    fn a_subnet_uses_its_own_route_table_else_the_main_one() {
        let tables = vec![
            RouteTableInfo {
                route_table_id: "rtb-main".into(),
                main: true,
                ..Default::default()
            },
            RouteTableInfo {
                route_table_id: "rtb-own".into(),
                subnet_ids: vec!["subnet-1".into()],
                ..Default::default()
            },
        ];
        assert_eq!(
            route_table_of("subnet-1", &tables).unwrap().route_table_id,
            "rtb-own"
        );
        assert_eq!(
            route_table_of("subnet-2", &tables).unwrap().route_table_id,
            "rtb-main"
        );
    }
}
