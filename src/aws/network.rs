//! [`Network`]: subnets, security groups, VPC endpoints, instance types.
//!
//! Subnets are the configured ones or the default VPC's; the security group
//! is the one Tender manages; instance types are those the region offers.

pub use crate::placement::{EndpointInfo, TcpRule};
pub use crate::reachability::RouteTableInfo;
use std::collections::BTreeMap;

use aws_sdk_ec2::operation::describe_subnets::builders::DescribeSubnetsFluentBuilder;
use aws_sdk_ec2::types::{Filter, IpPermission, IpRange, LocationType, ResourceType, Tag};

use super::{AwsClients, AwsError, AwsOperation};

/// A subnet as EC2 describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetInfo {
    pub subnet_id: String,
    pub availability_zone: String,
    pub vpc_id: String,
    /// Whether EC2 gives instances launched here a public IP unless told
    /// otherwise (on in a default VPC's default subnets).
    pub map_public_ip_on_launch: bool,
}

/// Whether a region exists and this account may use it, as EC2's
/// DescribeRegions says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegionState {
    Enabled,
    /// An opt-in region this account has not enabled.
    NotEnabled,
    /// AWS lists no such region.
    Unknown,
}

pub(super) fn filter(name: &str, values: &[&str]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.iter().map(|v| v.to_string()).collect()))
        .build()
}

/// The rules of a group's permissions that are plain TCP-port-to-CIDR rules,
/// and whether it has any other kind (which a managed group must not have).
fn tcp_rules(perms: &[IpPermission]) -> (Vec<TcpRule>, bool) {
    let mut rules = Vec::new();
    let mut other = false;
    for p in perms {
        let tcp_single_port = p.ip_protocol() == Some("tcp")
            && p.from_port().is_some()
            && p.from_port() == p.to_port();
        if !tcp_single_port
            || !p.user_id_group_pairs().is_empty()
            || !p.ipv6_ranges().is_empty()
            || !p.prefix_list_ids().is_empty()
        {
            other = true;
            continue;
        }
        for r in p.ip_ranges() {
            if let Some(cidr) = r.cidr_ip() {
                rules.push(TcpRule {
                    port: p.from_port().unwrap_or_default(),
                    cidr: cidr.to_string(),
                });
            }
        }
    }
    rules.sort();
    (rules, other)
}

fn permission(rule: &TcpRule) -> IpPermission {
    IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(rule.port)
        .to_port(rule.port)
        .ip_ranges(IpRange::builder().cidr_ip(&rule.cidr).build())
        .build()
}

/// Where workers run and what they may reach ([`AwsClients::network`]).
#[derive(Clone, Copy)]
pub struct Network<'a> {
    pub(super) aws: &'a AwsClients,
}

/// EC2 does not know the group (`InvalidGroup.NotFound`).
pub(super) fn is_group_unknown(e: &AwsError) -> bool {
    e.code() == Some("InvalidGroup.NotFound")
}

impl Network<'_> {
    /// Describes configured subnets; an unknown ID is an error naming it.
    pub async fn describe_subnets(
        &self,
        region: &str,
        ids: &[String],
    ) -> Result<Vec<SubnetInfo>, AwsError> {
        let describe = self.aws.ec2(region).describe_subnets();
        self.subnets(describe.set_subnet_ids(Some(ids.to_vec())))
            .await
    }

    /// The default VPC's default subnets, one per availability zone; empty
    /// when the region has no default VPC.
    pub async fn default_subnets(&self, region: &str) -> Result<Vec<SubnetInfo>, AwsError> {
        let describe = self.aws.ec2(region).describe_subnets();
        let mut subnets = self
            .subnets(describe.filters(filter("default-for-az", &["true"])))
            .await?;
        subnets.sort_by(|a, b| a.availability_zone.cmp(&b.availability_zone));
        Ok(subnets)
    }

    /// The subnets a DescribeSubnets request finds.
    async fn subnets(
        &self,
        describe: DescribeSubnetsFluentBuilder,
    ) -> Result<Vec<SubnetInfo>, AwsError> {
        let out = self
            .aws
            .call(AwsOperation::DescribeSubnets, describe.send())
            .await?;
        Ok(out
            .subnets()
            .iter()
            .map(|s| SubnetInfo {
                subnet_id: s.subnet_id().unwrap_or_default().to_string(),
                availability_zone: s.availability_zone().unwrap_or_default().to_string(),
                vpc_id: s.vpc_id().unwrap_or_default().to_string(),
                map_public_ip_on_launch: s.map_public_ip_on_launch().unwrap_or(false),
            })
            .collect())
    }

    /// Finds the security group carrying `owner_tags` in `vpc_id`, or
    /// creates it; then makes its rules exactly `ingress` and `egress`.
    /// Returns its ID.
    pub async fn ensure_security_group(
        &self,
        region: &str,
        vpc_id: &str,
        name: &str,
        owner_tags: &BTreeMap<String, String>,
        ingress: &[TcpRule],
        egress: &[TcpRule],
    ) -> Result<String, AwsError> {
        let ec2 = self.aws.ec2(region);
        let mut filters = vec![filter("vpc-id", &[vpc_id])];
        for (k, v) in owner_tags {
            filters.push(filter(&format!("tag:{k}"), &[v.as_str()]));
        }
        let describe = ec2
            .describe_security_groups()
            .set_filters(Some(filters))
            .send();
        let found = self
            .aws
            .call(AwsOperation::DescribeSecurityGroups, describe)
            .await?;
        // When the group was created here: calls right after are retried
        // while EC2 does not know it yet. (An existing group: never.)
        let long_ago = std::time::Instant::now()
            .checked_sub(super::consistency::IN_PLACE_WAIT)
            .unwrap_or_else(std::time::Instant::now);
        let mut made = long_ago;
        let (group_id, current_in, current_out) = match found.security_groups().first() {
            Some(g) => (
                g.group_id().unwrap_or_default().to_string(),
                g.ip_permissions().to_vec(),
                g.ip_permissions_egress().to_vec(),
            ),
            None => {
                let mut tags = super::ec2_tags(owner_tags);
                tags.push(Tag::builder().key("Name").value(name).build());
                let create = ec2
                    .create_security_group()
                    .group_name(name)
                    .description("Tender workers: HTTPS for file-level recovery, HTTPS and NFS out")
                    .vpc_id(vpc_id)
                    .tag_specifications(super::tag_specification(ResourceType::SecurityGroup, tags))
                    .send();
                let created = self
                    .aws
                    .call(AwsOperation::CreateSecurityGroup, create)
                    .await?;
                let id = created.group_id().unwrap_or_default().to_string();
                // A group just created may be unknown for a while (EC2 is
                // eventually consistent, see `consistency`): retried in place.
                made = std::time::Instant::now();
                let described =
                    super::consistency::retry_while_unknown(made, is_group_unknown, || {
                        let describe = ec2.describe_security_groups().group_ids(&id).send();
                        self.aws
                            .call(AwsOperation::DescribeSecurityGroups, describe)
                    })
                    .await?;
                let g = described.security_groups().first();
                (
                    id,
                    g.map(|g| g.ip_permissions().to_vec()).unwrap_or_default(),
                    g.map(|g| g.ip_permissions_egress().to_vec())
                        .unwrap_or_default(),
                )
            }
        };
        super::consistency::retry_while_unknown(made, is_group_unknown, || {
            self.sync_rules(region, &group_id, &current_in, ingress, true)
        })
        .await?;
        super::consistency::retry_while_unknown(made, is_group_unknown, || {
            self.sync_rules(region, &group_id, &current_out, egress, false)
        })
        .await?;
        Ok(group_id)
    }

    /// Makes one direction of a group's rules exactly `desired`: anything
    /// else (including the default allow-all egress) is revoked.
    async fn sync_rules(
        &self,
        region: &str,
        group_id: &str,
        current: &[IpPermission],
        desired: &[TcpRule],
        ingress: bool,
    ) -> Result<(), AwsError> {
        let ec2 = self.aws.ec2(region);
        let (have, has_other) = tcp_rules(current);
        let stale: Vec<IpPermission> = if has_other {
            current.to_vec()
        } else {
            have.iter()
                .filter(|r| !desired.contains(r))
                .map(permission)
                .collect()
        };
        let missing: Vec<IpPermission> = desired
            .iter()
            .filter(|r| has_other || !have.contains(r))
            .map(permission)
            .collect();
        // The four calls differ only in their builder: one shape for all.
        macro_rules! send_rules {
            ($builder:ident, $operation:ident, $rules:expr) => {{
                let send = ec2
                    .$builder()
                    .group_id(group_id)
                    .set_ip_permissions(Some($rules))
                    .send();
                self.aws.call(AwsOperation::$operation, send).await?;
            }};
        }
        if !stale.is_empty() {
            if ingress {
                send_rules!(
                    revoke_security_group_ingress,
                    RevokeSecurityGroupIngress,
                    stale
                );
            } else {
                send_rules!(
                    revoke_security_group_egress,
                    RevokeSecurityGroupEgress,
                    stale
                );
            }
        }
        if !missing.is_empty() {
            if ingress {
                send_rules!(
                    authorize_security_group_ingress,
                    AuthorizeSecurityGroupIngress,
                    missing
                );
            } else {
                send_rules!(
                    authorize_security_group_egress,
                    AuthorizeSecurityGroupEgress,
                    missing
                );
            }
        }
        Ok(())
    }

    /// The TCP rules of a security group, ingress then egress (for tests
    /// and status).
    pub async fn security_group_rules(
        &self,
        region: &str,
        group_id: &str,
    ) -> Result<(Vec<TcpRule>, Vec<TcpRule>), AwsError> {
        let describe = self
            .aws
            .ec2(region)
            .describe_security_groups()
            .group_ids(group_id)
            .send();
        let out = self
            .aws
            .call(AwsOperation::DescribeSecurityGroups, describe)
            .await?;
        let g = out.security_groups().first();
        Ok((
            tcp_rules(g.map(|g| g.ip_permissions()).unwrap_or_default()).0,
            tcp_rules(g.map(|g| g.ip_permissions_egress()).unwrap_or_default()).0,
        ))
    }

    /// Deletes a security group; one that is already gone counts as deleted.
    pub async fn delete_security_group(
        &self,
        region: &str,
        group_id: &str,
    ) -> Result<(), AwsError> {
        let delete = self
            .aws
            .ec2(region)
            .delete_security_group()
            .group_id(group_id)
            .send();
        match self
            .aws
            .call(AwsOperation::DeleteSecurityGroup, delete)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code().is_some_and(|c| c.starts_with("InvalidGroup")) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The VPC endpoints of a VPC.
    pub async fn vpc_endpoints(
        &self,
        region: &str,
        vpc_id: &str,
    ) -> Result<Vec<EndpointInfo>, AwsError> {
        let describe = self
            .aws
            .ec2(region)
            .describe_vpc_endpoints()
            .filters(filter("vpc-id", &[vpc_id]))
            .send();
        let out = self
            .aws
            .call(AwsOperation::DescribeVpcEndpoints, describe)
            .await?;
        Ok(out
            .vpc_endpoints()
            .iter()
            .map(|e| EndpointInfo {
                service_name: e.service_name().unwrap_or_default().to_string(),
                interface: e.vpc_endpoint_type().map(|t| t.as_str()) == Some("Interface"),
                route_table_ids: e.route_table_ids().to_vec(),
                private_dns: e.private_dns_enabled().unwrap_or(false),
                available: !matches!(
                    e.state()
                        .map(|s| s.as_str().to_ascii_lowercase())
                        .as_deref(),
                    Some("deleted" | "deleting" | "failed" | "rejected" | "expired")
                ),
            })
            .collect())
    }

    /// The route tables of a VPC: which subnets each serves, and where its
    /// default route goes.
    pub async fn route_tables(
        &self,
        region: &str,
        vpc_id: &str,
    ) -> Result<Vec<RouteTableInfo>, AwsError> {
        let describe = self
            .aws
            .ec2(region)
            .describe_route_tables()
            .filters(filter("vpc-id", &[vpc_id]))
            .send();
        let out = self
            .aws
            .call(AwsOperation::DescribeRouteTables, describe)
            .await?;
        Ok(out
            .route_tables()
            .iter()
            .map(|t| RouteTableInfo {
                route_table_id: t.route_table_id().unwrap_or_default().to_string(),
                subnet_ids: t
                    .associations()
                    .iter()
                    .filter_map(|a| a.subnet_id().map(String::from))
                    .collect(),
                main: t.associations().iter().any(|a| a.main() == Some(true)),
                default_target: t
                    .routes()
                    .iter()
                    .filter(|r| r.destination_cidr_block() == Some("0.0.0.0/0"))
                    // A blackhole route (its target deleted) leads nowhere.
                    .filter(|r| r.state().map(|s| s.as_str()) != Some("blackhole"))
                    .find_map(|r| {
                        r.nat_gateway_id()
                            .or(r.gateway_id())
                            .or(r.transit_gateway_id())
                            .or(r.network_interface_id())
                            .or(r.instance_id())
                            .or(r.vpc_peering_connection_id())
                            .map(String::from)
                    }),
            })
            .collect())
    }

    /// The VPC of each of the security groups `ids` that exists; a group
    /// missing from the answer does not exist (in this region and account).
    pub async fn security_group_vpcs(
        &self,
        region: &str,
        ids: &[String],
    ) -> Result<BTreeMap<String, String>, AwsError> {
        let values: Vec<&str> = ids.iter().map(String::as_str).collect();
        // A filter, not GroupIds: GroupIds fails the whole call on the first
        // unknown group and names only that one.
        let describe = self
            .aws
            .ec2(region)
            .describe_security_groups()
            .filters(filter("group-id", &values))
            .send();
        let out = self
            .aws
            .call(AwsOperation::DescribeSecurityGroups, describe)
            .await?;
        Ok(out
            .security_groups()
            .iter()
            .filter_map(|g| {
                Some((
                    g.group_id()?.to_string(),
                    g.vpc_id().unwrap_or_default().to_string(),
                ))
            })
            .collect())
    }

    /// Whether `region` exists and is enabled for the account, asked of
    /// EC2 in `asked_in` (a region known to answer). DescribeRegions with
    /// `AllRegions` lists disabled opt-in regions too, with their
    /// `OptInStatus`.
    /// <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeRegions.html>
    pub async fn region_state(
        &self,
        asked_in: &str,
        region: &str,
    ) -> Result<RegionState, AwsError> {
        let describe = self
            .aws
            .ec2(asked_in)
            .describe_regions()
            .all_regions(true)
            .send();
        let out = self
            .aws
            .call(AwsOperation::DescribeRegions, describe)
            .await?;
        Ok(
            match out
                .regions()
                .iter()
                .find(|r| r.region_name() == Some(region))
            {
                None => RegionState::Unknown,
                Some(r) if r.opt_in_status() == Some("not-opted-in") => RegionState::NotEnabled,
                Some(_) => RegionState::Enabled,
            },
        )
    }

    /// Which of `types` the availability zone `zone` offers.
    pub async fn offered_in_zone(
        &self,
        region: &str,
        zone: &str,
        types: &[String],
    ) -> Result<Vec<String>, AwsError> {
        let values: Vec<&str> = types.iter().map(String::as_str).collect();
        let describe = self
            .aws
            .ec2(region)
            .describe_instance_type_offerings()
            .location_type(LocationType::AvailabilityZone)
            .filters(filter("location", &[zone]))
            .filters(filter("instance-type", &values))
            .send();
        let out = self
            .aws
            .call(AwsOperation::DescribeInstanceTypeOfferings, describe)
            .await?;
        Ok(out
            .instance_type_offerings()
            .iter()
            .filter_map(|o| o.instance_type().map(|t| t.as_str().to_string()))
            .collect())
    }

    /// Which of `types` the region offers.
    pub async fn offered_instance_types(
        &self,
        region: &str,
        types: &[String],
    ) -> Result<Vec<String>, AwsError> {
        if types.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<&str> = types.iter().map(String::as_str).collect();
        let describe = self
            .aws
            .ec2(region)
            .describe_instance_type_offerings()
            .location_type(LocationType::Region)
            .filters(filter("instance-type", &values))
            .send();
        let out = self
            .aws
            .call(AwsOperation::DescribeInstanceTypeOfferings, describe)
            .await?;
        Ok(out
            .instance_type_offerings()
            .iter()
            .filter_map(|o| o.instance_type().map(|t| t.as_str().to_string()))
            .collect())
    }

    /// The architectures each of `types` supports (`x86_64`, `arm64`, ...),
    /// as DescribeInstanceTypes reports them (`ProcessorInfo`).
    pub async fn instance_type_architectures(
        &self,
        region: &str,
        types: &[String],
    ) -> Result<BTreeMap<String, Vec<String>>, AwsError> {
        let mut out = BTreeMap::new();
        // At most 100 types per call (DescribeInstanceTypes, EC2 API Reference).
        for batch in types.chunks(100) {
            let describe = self
                .aws
                .ec2(region)
                .describe_instance_types()
                .set_instance_types(Some(batch.iter().map(|t| t.as_str().into()).collect()))
                .send();
            let answer = self
                .aws
                .call(AwsOperation::DescribeInstanceTypes, describe)
                .await?;
            for t in answer.instance_types() {
                let Some(name) = t.instance_type() else {
                    continue;
                };
                let archs = t
                    .processor_info()
                    .map(|p| {
                        p.supported_architectures()
                            .iter()
                            .map(|a| a.as_str().to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                out.insert(name.as_str().to_string(), archs);
            }
        }
        Ok(out)
    }
}
