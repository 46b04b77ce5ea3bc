//! The security group pair of a PostgreSQL dump: a *worker* group, given to
//! the dump's worker instance, and a *database* group, added to the DB
//! instance, that together let that worker, and nothing else, reach the
//! database on its port.
//!
//! What AWS documents and Tender relies on (EC2 API Reference, "Security
//! group rules" in the VPC User Guide):
//! - A new group has one rule, egress to everything; both groups of a pair
//!   lose it, so the worker's other egress comes from the configuration's
//!   groups alone, and the pair adds only the path to the database.
//! - A rule may name another group of the same VPC as its source or
//!   destination; it then matches the network interfaces in that group.
//! - DeleteSecurityGroup refuses with `DependencyViolation` while a network
//!   interface is in the group (the worker until it is terminated, the DB
//!   instance until ModifyDBInstance removed it) or while another group's
//!   rule names it: the pair's rules are revoked first, and a refusal means
//!   "later".
//! - EC2 is eventually consistent: a group just created may be unknown for
//!   a moment (`InvalidGroup.NotFound`), retried in place.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{Filter, IpPermission, ResourceType, Tag, UserIdGroupPair};

use super::network::{Network, filter, is_group_unknown};
use super::{AwsError, AwsOperation};

/// Tag telling a pair's two groups apart (`worker` or `database`).
pub const GROUP_ROLE_TAG: &str = "tender.dev/group-role";

/// The two groups of a pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupPair {
    /// The worker's: egress to the database group on the port.
    pub worker: String,
    /// The DB instance's: ingress from the worker group on the port.
    pub database: String,
}

/// A Tender security group of a pair, as the sweep lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairGroup {
    pub group_id: String,
    pub vpc_id: String,
    pub tags: BTreeMap<String, String>,
}

/// TCP on `port` to or from `group`.
fn group_rule(port: i32, group: &str) -> IpPermission {
    IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(port)
        .to_port(port)
        .user_id_group_pairs(UserIdGroupPair::builder().group_id(group).build())
        .build()
}

impl Network<'_> {
    /// The groups of this VPC carrying every tag of `owner_tags`.
    async fn tagged_groups(
        &self,
        region: &str,
        vpc_id: Option<&str>,
        owner_tags: &BTreeMap<String, String>,
    ) -> Result<Vec<aws_sdk_ec2::types::SecurityGroup>, AwsError> {
        let mut filters: Vec<Filter> = owner_tags
            .iter()
            .map(|(k, v)| filter(&format!("tag:{k}"), &[v.as_str()]))
            .collect();
        if let Some(vpc) = vpc_id {
            filters.push(filter("vpc-id", &[vpc]));
        }
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let describe = self
                .aws
                .ec2(region)
                .describe_security_groups()
                .set_filters(Some(filters.clone()))
                .set_next_token(token.take())
                .send();
            let page = self
                .aws
                .call(AwsOperation::DescribeSecurityGroups, describe)
                .await?;
            out.extend(page.security_groups().iter().cloned());
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }

    /// The group of the pair `owner_tags` names with `role`, made if
    /// missing; returns its ID and whether it was made now.
    async fn pair_group(
        &self,
        region: &str,
        vpc_id: &str,
        name: &str,
        owner_tags: &BTreeMap<String, String>,
        role: &str,
    ) -> Result<(String, Option<std::time::Instant>), AwsError> {
        let mut tags = owner_tags.clone();
        tags.insert(GROUP_ROLE_TAG.into(), role.into());
        let found = self.tagged_groups(region, Some(vpc_id), &tags).await?;
        if let Some(id) = found.first().and_then(|g| g.group_id()) {
            return Ok((id.to_string(), None));
        }
        // When it was made: the sweep leaves a pair younger than its grace
        // period alone, whatever its job looks like.
        tags.insert(
            crate::names::tags::REQUESTED_AT.into(),
            k8s_openapi::jiff::Timestamp::now().to_string(),
        );
        let mut ec2_tags = super::ec2_tags(&tags);
        ec2_tags.push(Tag::builder().key("Name").value(name).build());
        let create = self
            .aws
            .ec2(region)
            .create_security_group()
            .group_name(name)
            .description(format!(
                "Tender: a PostgreSQL dump's {role} group, removed with its worker"
            ))
            .vpc_id(vpc_id)
            .tag_specifications(super::tag_specification(
                ResourceType::SecurityGroup,
                ec2_tags,
            ))
            .send();
        match self
            .aws
            .call(AwsOperation::CreateSecurityGroup, create)
            .await
        {
            Ok(out) => Ok((
                out.group_id().unwrap_or_default().to_string(),
                Some(std::time::Instant::now()),
            )),
            // Made by an earlier attempt that EC2 does not list by tag yet:
            // found by its name.
            Err(e) if e.code() == Some("InvalidGroup.Duplicate") => {
                let describe = self
                    .aws
                    .ec2(region)
                    .describe_security_groups()
                    .filters(filter("vpc-id", &[vpc_id]))
                    .filters(filter("group-name", &[name]))
                    .send();
                let out = self
                    .aws
                    .call(AwsOperation::DescribeSecurityGroups, describe)
                    .await?;
                let id = out
                    .security_groups()
                    .first()
                    .and_then(|g| g.group_id())
                    .ok_or(e)?;
                Ok((id.to_string(), None))
            }
            Err(e) => Err(e),
        }
    }

    /// Finds or makes the pair `owner_tags` names in `vpc_id`, then makes
    /// each group's rules exactly the path from the worker group to the
    /// database group on `port`.
    pub async fn ensure_group_pair(
        &self,
        region: &str,
        vpc_id: &str,
        name: &str,
        owner_tags: &BTreeMap<String, String>,
        port: i32,
    ) -> Result<GroupPair, AwsError> {
        let (worker, worker_made) = self
            .pair_group(
                region,
                vpc_id,
                &format!("{name}-worker"),
                owner_tags,
                "worker",
            )
            .await?;
        let (database, database_made) = self
            .pair_group(
                region,
                vpc_id,
                &format!("{name}-database"),
                owner_tags,
                "database",
            )
            .await?;
        let made = worker_made
            .into_iter()
            .chain(database_made)
            .max()
            .unwrap_or_else(|| {
                std::time::Instant::now()
                    .checked_sub(super::consistency::IN_PLACE_WAIT)
                    .unwrap_or_else(std::time::Instant::now)
            });
        let pair = GroupPair { worker, database };
        // (group, ingress?, the one rule it should have)
        let wanted = [
            (&pair.worker, false, group_rule(port, &pair.database)),
            (&pair.database, true, group_rule(port, &pair.worker)),
        ];
        for (group, ingress, rule) in wanted {
            super::consistency::retry_while_unknown(made, is_group_unknown, || {
                self.sync_pair_rules(region, group, ingress, &rule)
            })
            .await?;
        }
        Ok(pair)
    }

    /// Makes one direction of `group`'s rules exactly `rule` (the other
    /// direction is left empty).
    async fn sync_pair_rules(
        &self,
        region: &str,
        group: &str,
        ingress: bool,
        rule: &IpPermission,
    ) -> Result<(), AwsError> {
        let ec2 = self.aws.ec2(region);
        let describe = ec2.describe_security_groups().group_ids(group).send();
        let out = self
            .aws
            .call(AwsOperation::DescribeSecurityGroups, describe)
            .await?;
        let Some(g) = out.security_groups().first() else {
            return Err(AwsError::Service {
                operation: AwsOperation::DescribeSecurityGroups.name(),
                code: "InvalidGroup.NotFound".into(),
                message: format!("security group {group} is not listed"),
            });
        };
        let (wanted, other) = if ingress {
            (g.ip_permissions(), g.ip_permissions_egress())
        } else {
            (g.ip_permissions_egress(), g.ip_permissions())
        };
        let matches = |p: &IpPermission| {
            p.ip_protocol() == rule.ip_protocol()
                && p.from_port() == rule.from_port()
                && p.to_port() == rule.to_port()
                && p.ip_ranges().is_empty()
                && p.ipv6_ranges().is_empty()
                && p.prefix_list_ids().is_empty()
                && p.user_id_group_pairs().len() == 1
                && p.user_id_group_pairs()[0].group_id() == rule.user_id_group_pairs()[0].group_id()
        };
        let have = wanted.len() == 1 && matches(&wanted[0]);
        let stale_wanted: Vec<IpPermission> = if have { Vec::new() } else { wanted.to_vec() };
        let stale_other: Vec<IpPermission> = other.to_vec();
        // Ingress and egress of one group; revoking first never opens more
        // than the pair allows.
        for (perms, is_ingress) in [(stale_wanted, ingress), (stale_other, !ingress)] {
            if perms.is_empty() {
                continue;
            }
            if is_ingress {
                let revoke = ec2
                    .revoke_security_group_ingress()
                    .group_id(group)
                    .set_ip_permissions(Some(perms))
                    .send();
                self.aws
                    .call(AwsOperation::RevokeSecurityGroupIngress, revoke)
                    .await?;
            } else {
                let revoke = ec2
                    .revoke_security_group_egress()
                    .group_id(group)
                    .set_ip_permissions(Some(perms))
                    .send();
                self.aws
                    .call(AwsOperation::RevokeSecurityGroupEgress, revoke)
                    .await?;
            }
        }
        if !have {
            if ingress {
                let authorize = ec2
                    .authorize_security_group_ingress()
                    .group_id(group)
                    .ip_permissions(rule.clone())
                    .send();
                self.aws
                    .call(AwsOperation::AuthorizeSecurityGroupIngress, authorize)
                    .await?;
            } else {
                let authorize = ec2
                    .authorize_security_group_egress()
                    .group_id(group)
                    .ip_permissions(rule.clone())
                    .send();
                self.aws
                    .call(AwsOperation::AuthorizeSecurityGroupEgress, authorize)
                    .await?;
            }
        }
        Ok(())
    }

    /// Every pair group carrying `owner_tags` (in any VPC), for the sweep.
    pub async fn pair_groups(
        &self,
        region: &str,
        owner_tags: &BTreeMap<String, String>,
    ) -> Result<Vec<PairGroup>, AwsError> {
        let groups = self.tagged_groups(region, None, owner_tags).await?;
        Ok(groups
            .iter()
            .filter_map(|g| {
                let tags: BTreeMap<String, String> = g
                    .tags()
                    .iter()
                    .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
                    .collect();
                tags.contains_key(GROUP_ROLE_TAG).then(|| PairGroup {
                    group_id: g.group_id().unwrap_or_default().to_string(),
                    vpc_id: g.vpc_id().unwrap_or_default().to_string(),
                    tags,
                })
            })
            .collect())
    }

    /// Revokes every rule of `groups` (which may name each other), then
    /// deletes them. `Ok(false)` when EC2 refuses a deletion because a
    /// network interface is still in a group (a worker shutting down, a DB
    /// instance not modified yet): try again later.
    pub async fn delete_pair_groups(
        &self,
        region: &str,
        groups: &[String],
    ) -> Result<bool, AwsError> {
        let ec2 = self.aws.ec2(region);
        for group in groups {
            let describe = ec2.describe_security_groups().group_ids(group).send();
            let out = match self
                .aws
                .call(AwsOperation::DescribeSecurityGroups, describe)
                .await
            {
                Ok(out) => out,
                Err(e) if is_group_unknown(&e) => continue,
                Err(e) => return Err(e),
            };
            let Some(g) = out.security_groups().first() else {
                continue;
            };
            if !g.ip_permissions().is_empty() {
                let revoke = ec2
                    .revoke_security_group_ingress()
                    .group_id(group)
                    .set_ip_permissions(Some(g.ip_permissions().to_vec()))
                    .send();
                self.aws
                    .call(AwsOperation::RevokeSecurityGroupIngress, revoke)
                    .await?;
            }
            if !g.ip_permissions_egress().is_empty() {
                let revoke = ec2
                    .revoke_security_group_egress()
                    .group_id(group)
                    .set_ip_permissions(Some(g.ip_permissions_egress().to_vec()))
                    .send();
                self.aws
                    .call(AwsOperation::RevokeSecurityGroupEgress, revoke)
                    .await?;
            }
        }
        let mut all_gone = true;
        for group in groups {
            match self.delete_security_group(region, group).await {
                Ok(()) => {}
                Err(e) if e.code() == Some("DependencyViolation") => all_gone = false,
                Err(e) => return Err(e),
            }
        }
        Ok(all_gone)
    }
}
