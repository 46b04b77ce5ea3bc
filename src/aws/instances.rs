//! [`Instances`]: worker and restored instances, and the images they run.
//!
//! Describes the protected instance, launches a worker (idempotently) and
//! terminates workers; registers a full restore's image and launches its
//! instance; reads the AMI ID an SSM parameter names.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_ec2::operation::run_instances::RunInstancesOutput;
use aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, IamInstanceProfileSpecification,
    Instance, InstanceMetadataOptionsRequest, InstanceNetworkInterfaceSpecification, InstanceType,
    ResourceType, Tag, VolumeType,
};
use base64::Engine;

use super::instance_state::InstanceState;
use super::{AwsClients, AwsError, AwsOperation};

/// What a backup needs to know of the protected instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceInstance {
    pub availability_zone: Option<String>,
    /// Sum of the sizes of its EBS volumes.
    pub total_ebs_gib: i64,
    /// Its EBS volumes: `(device name, volume ID)`.
    pub volumes: Vec<(String, String)>,
    /// Its tags, for a configuration's `allowedSources`.
    pub tags: std::collections::BTreeMap<String, String>,
    /// Its machine (architecture, boot mode, root device…), which a full
    /// restore registers its image as.
    pub machine: crate::api::MachineImage,
}

/// Everything RunInstances needs for the instance a full restore launches.
#[derive(Clone, Copy, Debug)]
pub struct RestoredInstanceLaunch<'a> {
    pub region: &'a str,
    pub image_id: &'a str,
    pub instance_type: &'a str,
    pub subnet_id: &'a str,
    pub security_group_ids: &'a [String],
    pub tags: &'a [(String, String)],
    pub client_token: &'a str,
}

/// Everything RunInstances needs for one worker.
#[derive(Clone, Debug)]
pub struct WorkerLaunch {
    pub region: String,
    pub image_id: String,
    pub instance_type: String,
    pub subnet_id: String,
    pub security_group_ids: Vec<String>,
    pub assign_public_ip: bool,
    pub iam_instance_profile: Option<String>,
    /// Root volume: device name, size in GiB, optional KMS key; always
    /// encrypted and deleted with the instance.
    pub root_device_name: String,
    pub root_size_gib: i32,
    pub root_kms_key_id: Option<String>,
    /// The ClientToken; also carried as the `tender.dev/launch-token` tag.
    pub launch_token: String,
    pub tags: BTreeMap<String, String>,
    /// Raw user data (the script that starts the agent); base64-encoded here.
    pub user_data: String,
}

/// One worker instance as EC2 reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerInstance {
    pub instance_id: String,
    pub state: InstanceState,
}

/// Values one EC2 filter takes at most.
const BATCH_FILTER_VALUES: usize = 200;

fn is_not_found(err: &AwsError) -> bool {
    err.code()
        .is_some_and(|c| c.starts_with("InvalidInstanceID"))
}

/// The instance a RunInstances call launched.
fn launched(out: &RunInstancesOutput) -> Result<&Instance, AwsError> {
    out.instances().first().ok_or_else(no_instance)
}

fn no_instance() -> AwsError {
    AwsError::Service {
        operation: AwsOperation::RunInstances.name(),
        code: "NoInstance".into(),
        message: "RunInstances returned no instance".into(),
    }
}

/// Worker instances, restored instances and the images they start from
/// ([`AwsClients::instances`]).
#[derive(Clone, Copy)]
pub struct Instances<'a> {
    pub(super) aws: &'a AwsClients,
}

impl Instances<'_> {
    /// The value of an SSM parameter (an AMI ID for `imageSsmParameter`).
    pub async fn ssm_parameter(&self, region: &str, name: &str) -> Result<String, AwsError> {
        let op = AwsOperation::GetParameter;
        let out = self
            .aws
            .call(op, self.aws.ssm(region).get_parameter().name(name).send())
            .await?;
        out.parameter()
            .and_then(|p| p.value())
            .map(String::from)
            .ok_or(AwsError::Service {
                operation: op.name(),
                code: "NoValue".into(),
                message: format!("parameter {name} has no value"),
            })
    }

    /// Launches the instance a full restore brings back: from `image_id`,
    /// in `subnet_id`, tagged at launch (never with this cluster's ID: it is
    /// the user's instance, not a worker, and no sweep may take it).
    pub async fn launch_restored_instance(
        &self,
        launch: &RestoredInstanceLaunch<'_>,
    ) -> Result<String, AwsError> {
        let RestoredInstanceLaunch {
            region,
            image_id,
            instance_type,
            subnet_id,
            security_group_ids,
            tags,
            client_token,
        } = *launch;
        let mut interface = InstanceNetworkInterfaceSpecification::builder()
            .device_index(0)
            .subnet_id(subnet_id)
            .delete_on_termination(true);
        if !security_group_ids.is_empty() {
            interface = interface.set_groups(Some(security_group_ids.to_vec()));
        }
        let tags = super::ec2_tags(tags.iter().map(|(k, v)| (k, v)));
        let run = self
            .run_one(region, image_id, instance_type, tags)
            .network_interfaces(interface.build())
            .client_token(client_token)
            .send();
        let out = self.aws.call(AwsOperation::RunInstances, run).await?;
        launched(&out)?
            .instance_id()
            .map(String::from)
            .ok_or_else(no_instance)
    }

    /// Describes the instance a backup protects; `None` when it does not
    /// exist. Concurrent lookups in one region share a call.
    pub async fn describe_source_instance(
        &self,
        region: &str,
        instance_id: &str,
    ) -> Result<Option<SourceInstance>, AwsError> {
        let (clients, target) = (self.aws.clone(), region.to_string());
        self.aws
            .batches
            .sources
            .call(region, instance_id.to_string(), move |ids| {
                let (clients, region) = (clients.clone(), target.clone());
                async move {
                    clients
                        .instances()
                        .describe_source_instances_now(&region, ids)
                        .await
                }
            })
            .await
    }

    /// The instances a policy protects in `region`: those of `ids` and
    /// those carrying every tag of any of `selectors` (EC2 filter values:
    /// `*` and `?` are wildcards), not terminated nor shutting down. By
    /// filter, so an ID that does not exist is just not found (no
    /// `InvalidInstanceID.NotFound` for the whole call). Returns the IDs
    /// found, sorted.
    pub async fn find_protected_instances(
        &self,
        region: &str,
        ids: &[String],
        selectors: &[std::collections::BTreeMap<String, String>],
    ) -> Result<Vec<String>, AwsError> {
        let alive = Filter::builder()
            .name("instance-state-name")
            .set_values(Some(
                ["pending", "running", "stopping", "stopped"]
                    .map(String::from)
                    .to_vec(),
            ))
            .build();
        let mut queries: Vec<Vec<Filter>> = ids
            .chunks(BATCH_FILTER_VALUES)
            .map(|chunk| {
                vec![
                    alive.clone(),
                    Filter::builder()
                        .name("instance-id")
                        .set_values(Some(chunk.to_vec()))
                        .build(),
                ]
            })
            .collect();
        // An empty selector (the schema refuses one) would be every
        // instance of the account: it matches nothing.
        for tags in selectors.iter().filter(|t| !t.is_empty()) {
            let mut filters = vec![alive.clone()];
            filters.extend(
                tags.iter()
                    .map(|(k, v)| Filter::builder().name(format!("tag:{k}")).values(v).build()),
            );
            queries.push(filters);
        }
        let mut found = std::collections::BTreeSet::new();
        for filters in queries {
            let mut pages = self
                .aws
                .ec2(region)
                .describe_instances()
                .set_filters(Some(filters))
                .into_paginator()
                .send();
            while let Some(page) = self
                .aws
                .page(AwsOperation::DescribeInstances, pages.next())
                .await?
            {
                found.extend(
                    page.reservations()
                        .iter()
                        .flat_map(|r| r.instances())
                        .filter_map(|i| i.instance_id().map(String::from)),
                );
            }
        }
        Ok(found.into_iter().collect())
    }

    /// Instances by ID with the total size of their EBS volumes: one
    /// DescribeInstances for all of them (one unknown ID fails it as a
    /// whole; then each is asked for alone) and one DescribeVolumes.
    async fn describe_source_instances_now(
        &self,
        region: &str,
        instance_ids: Vec<String>,
    ) -> Result<HashMap<String, SourceInstance>, AwsError> {
        let mut found = super::batch::all_or_each(&instance_ids, is_not_found, |ids| async move {
            self.describe_instances_by_id(region, &ids).await
        })
        .await?;
        let volume_ids: Vec<String> = found
            .values()
            .flat_map(|s| s.volumes.iter().map(|(_, v)| v.clone()))
            .collect();
        // By filter: a volume detached since is just not counted.
        let mut sizes: HashMap<String, i64> = HashMap::new();
        for chunk in volume_ids.chunks(BATCH_FILTER_VALUES) {
            let mut pages = self
                .aws
                .ec2(region)
                .describe_volumes()
                .filters(
                    Filter::builder()
                        .name("volume-id")
                        .set_values(Some(chunk.to_vec()))
                        .build(),
                )
                .into_paginator()
                .send();
            while let Some(page) = self
                .aws
                .page(AwsOperation::DescribeVolumes, pages.next())
                .await?
            {
                for v in page.volumes() {
                    if let Some(id) = v.volume_id() {
                        sizes.insert(id.to_string(), i64::from(v.size().unwrap_or(0)));
                    }
                }
            }
        }
        for source in found.values_mut() {
            source.total_ebs_gib = source
                .volumes
                .iter()
                .filter_map(|(_, v)| sizes.get(v))
                .sum();
        }
        Ok(found)
    }

    /// The instances of `instance_ids`, their volumes not yet sized.
    async fn describe_instances_by_id(
        &self,
        region: &str,
        instance_ids: &[String],
    ) -> Result<HashMap<String, SourceInstance>, AwsError> {
        let mut found = HashMap::new();
        let mut pages = self
            .aws
            .ec2(region)
            .describe_instances()
            .set_instance_ids(Some(instance_ids.to_vec()))
            .into_paginator()
            .send();
        while let Some(page) = self
            .aws
            .page(AwsOperation::DescribeInstances, pages.next())
            .await?
        {
            for instance in page.reservations().iter().flat_map(|r| r.instances()) {
                let Some(id) = instance.instance_id() else {
                    continue;
                };
                let volumes: Vec<(String, String)> = instance
                    .block_device_mappings()
                    .iter()
                    .filter_map(|m| {
                        let volume = m.ebs().and_then(|e| e.volume_id())?;
                        Some((
                            m.device_name().unwrap_or_default().to_string(),
                            volume.to_string(),
                        ))
                    })
                    .collect();
                found.insert(
                    id.to_string(),
                    SourceInstance {
                        availability_zone: instance
                            .placement()
                            .and_then(|p| p.availability_zone())
                            .map(String::from),
                        total_ebs_gib: 0,
                        volumes,
                        tags: instance
                            .tags()
                            .iter()
                            .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
                            .collect(),
                        machine: super::images::machine_of(instance),
                    },
                );
            }
        }
        Ok(found)
    }

    /// Launches one worker. The caller has already looked for an instance
    /// with the same launch token in the instance cache: EC2 honours the
    /// ClientToken, but emulators may not.
    pub async fn launch_worker(&self, launch: &WorkerLaunch) -> Result<WorkerInstance, AwsError> {
        let tags = super::ec2_tags(&launch.tags);
        let mut req = self
            .run_one(
                &launch.region,
                &launch.image_id,
                &launch.instance_type,
                tags,
            )
            // Only the worker's own processes reach its metadata (its
            // credentials): one hop, no container or forwarded packet.
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_tokens(HttpTokensState::Required)
                    .http_put_response_hop_limit(1)
                    .build(),
            )
            .network_interfaces(
                InstanceNetworkInterfaceSpecification::builder()
                    .device_index(0)
                    .subnet_id(&launch.subnet_id)
                    .set_groups(Some(launch.security_group_ids.clone()))
                    .associate_public_ip_address(launch.assign_public_ip)
                    .delete_on_termination(true)
                    .build(),
            )
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name(&launch.root_device_name)
                    .ebs(
                        EbsBlockDevice::builder()
                            .encrypted(true)
                            .set_kms_key_id(launch.root_kms_key_id.clone())
                            .volume_size(launch.root_size_gib)
                            .volume_type(VolumeType::Gp3)
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            )
            .client_token(&launch.launch_token)
            .user_data(base64::engine::general_purpose::STANDARD.encode(&launch.user_data));
        if let Some(profile) = &launch.iam_instance_profile {
            let spec = if profile.starts_with("arn:") {
                IamInstanceProfileSpecification::builder().arn(profile)
            } else {
                IamInstanceProfileSpecification::builder().name(profile)
            };
            req = req.iam_instance_profile(spec.build());
        }
        let out = self
            .aws
            .call(AwsOperation::RunInstances, req.send())
            .await?;
        let instance = launched(&out)?;
        Ok(WorkerInstance {
            instance_id: instance.instance_id().unwrap_or_default().to_string(),
            state: instance
                .state()
                .and_then(|s| s.name())
                .map_or(InstanceState::Pending, InstanceState::from),
        })
    }

    /// A RunInstances request for one instance of `image_id`, with IMDSv2
    /// required and `tags` on the instance and its volumes from launch: what
    /// a worker and a restored instance have in common.
    fn run_one(
        &self,
        region: &str,
        image_id: &str,
        instance_type: &str,
        tags: Vec<Tag>,
    ) -> RunInstancesFluentBuilder {
        let tag_spec = |rt: ResourceType| super::tag_specification(rt, tags.clone());
        self.aws
            .ec2(region)
            .run_instances()
            .image_id(image_id)
            .instance_type(InstanceType::from(instance_type))
            .min_count(1)
            .max_count(1)
            .tag_specifications(tag_spec(ResourceType::Instance))
            .tag_specifications(tag_spec(ResourceType::Volume))
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_tokens(HttpTokensState::Required)
                    .build(),
            )
    }

    /// Terminates workers. An instance that no longer exists counts as
    /// terminated. Returns each instance's state after the call.
    /// Terminations asked for at the same time in one region (jobs that end
    /// together) share a call.
    pub async fn terminate_workers(
        &self,
        region: &str,
        instance_ids: &[String],
    ) -> Result<Vec<WorkerInstance>, AwsError> {
        let calls = instance_ids.iter().map(|id| {
            let (clients, target) = (self.aws.clone(), region.to_string());
            self.aws
                .batches
                .terminations
                .call(region, id.clone(), move |ids| {
                    let (clients, region) = (clients.clone(), target.clone());
                    async move {
                        let states = clients.instances().terminate_now(&region, &ids).await?;
                        Ok(states
                            .into_iter()
                            .map(|s| (s.instance_id.clone(), s))
                            .collect())
                    }
                })
        });
        let answers = futures::future::try_join_all(calls).await?;
        Ok(instance_ids
            .iter()
            .zip(answers)
            .map(|(id, state)| {
                // Not in TerminateInstances' answer: not an instance (any more).
                state.unwrap_or_else(|| WorkerInstance {
                    instance_id: id.clone(),
                    state: InstanceState::Terminated,
                })
            })
            .collect())
    }

    async fn terminate_now(
        &self,
        region: &str,
        instance_ids: &[String],
    ) -> Result<Vec<WorkerInstance>, AwsError> {
        if instance_ids.is_empty() {
            return Ok(Vec::new());
        }
        let ec2 = self.aws.ec2(region);
        let op = AwsOperation::TerminateInstances;
        let terminate = ec2
            .terminate_instances()
            .set_instance_ids(Some(instance_ids.to_vec()))
            .send();
        match self.aws.call(op, terminate).await {
            Ok(out) => Ok(out
                .terminating_instances()
                .iter()
                .map(|c| WorkerInstance {
                    instance_id: c.instance_id().unwrap_or_default().to_string(),
                    state: c
                        .current_state()
                        .and_then(|s| s.name())
                        .map_or(InstanceState::ShuttingDown, InstanceState::from),
                })
                .collect()),
            Err(e) if !is_not_found(&e) => Err(e),
            Err(_) => {
                // One unknown ID fails the whole batch: go one by one so the
                // others are still terminated.
                let mut out = Vec::new();
                for id in instance_ids {
                    let terminate = ec2.terminate_instances().instance_ids(id).send();
                    match self.aws.call(op, terminate).await {
                        Ok(_) => out.push(WorkerInstance {
                            instance_id: id.clone(),
                            state: InstanceState::ShuttingDown,
                        }),
                        Err(e) if !is_not_found(&e) => return Err(e),
                        Err(_) => out.push(WorkerInstance {
                            instance_id: id.clone(),
                            state: InstanceState::Terminated,
                        }),
                    }
                }
                Ok(out)
            }
        }
    }
}
