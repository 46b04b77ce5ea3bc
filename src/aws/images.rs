//! Images: what a backup records of an instance's machine
//! ([`machine_of`]), and the AMI a full restore registers from it
//! ([`plan_image`], [`Instances::register_restored_image`]).
//!
//! RegisterImage defaults matter: without `Architecture` an EBS-backed AMI
//! is `i386`, and without `BootMode` it takes the instance type's default
//! (legacy BIOS on most x86 types), so a Graviton or UEFI-only instance
//! would not boot again. See
//! <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_RegisterImage.html>
//! and <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ami-boot.html>.

use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, BootModeValues, EbsBlockDevice, Instance, ResourceType,
    VolumeType,
};

use super::instances::Instances;
use super::{AwsError, AwsOperation};
use crate::api::MachineImage;

/// What DescribeInstances says of an instance's machine, as a full restore
/// must register it: the AMI's boot mode when the AMI set one (so that a
/// `uefi-preferred` image stays so), else the mode the instance booted in.
pub fn machine_of(instance: &Instance) -> MachineImage {
    let boot_mode = instance
        .boot_mode()
        .map(|m| m.as_str().to_string())
        .or_else(|| {
            instance
                .current_instance_boot_mode()
                .map(|m| m.as_str().to_string())
        });
    MachineImage {
        architecture: instance
            .architecture()
            .map_or("x86_64", |a| a.as_str())
            .to_string(),
        boot_mode,
        ena_support: instance.ena_support().unwrap_or(false),
        sriov_net_support: instance
            .sriov_net_support()
            .filter(|s| !s.is_empty())
            .map(String::from),
        virtualization_type: instance
            .virtualization_type()
            .map_or("hvm", |v| v.as_str())
            .to_string(),
        root_device_name: instance.root_device_name().unwrap_or_default().to_string(),
    }
}

/// A RegisterImage request for a full restore, checked before it is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImagePlan {
    pub architecture: ArchitectureValues,
    pub boot_mode: Option<BootModeValues>,
    pub ena_support: bool,
    pub sriov_net_support: Option<String>,
    pub virtualization_type: String,
    pub root_device_name: String,
    /// `(device, snapshot)`, the root device's first.
    pub mappings: Vec<(String, String)>,
}

/// The image `machine` must be registered as from a restore's `snapshots`
/// (`(device, snapshot)`): the root volume is the one on the recorded root
/// device, whatever the order the snapshots came in. Else what is wrong,
/// for people.
pub fn plan_image(
    machine: &MachineImage,
    snapshots: &[(String, String)],
) -> Result<ImagePlan, String> {
    let architecture = ArchitectureValues::from(machine.architecture.as_str());
    if !ArchitectureValues::values().contains(&machine.architecture.as_str()) {
        return Err(format!(
            "the restore point records architecture {:?}, which EC2 does not know",
            machine.architecture
        ));
    }
    let boot_mode = match machine.boot_mode.as_deref() {
        None => None,
        Some(m) if BootModeValues::values().contains(&m) => Some(BootModeValues::from(m)),
        Some(m) => {
            return Err(format!(
                "the restore point records boot mode {m:?}, which EC2 does not know"
            ));
        }
    };
    if !["hvm", "paravirtual"].contains(&machine.virtualization_type.as_str()) {
        return Err(format!(
            "the restore point records virtualization type {:?}",
            machine.virtualization_type
        ));
    }
    let root = machine.root_device_name.as_str();
    let Some(root_mapping) = snapshots.iter().find(|(device, _)| device == root) else {
        let devices: Vec<&str> = snapshots.iter().map(|(d, _)| d.as_str()).collect();
        return Err(format!(
            "no restored volume is on the root device {root} (restored: {devices:?}); the instance could not boot"
        ));
    };
    let mut mappings = vec![root_mapping.clone()];
    for (device, snapshot) in snapshots.iter().filter(|(d, _)| d != root) {
        if mappings.iter().any(|(d, _)| d == device) {
            return Err(format!("two restored volumes name device {device}"));
        }
        mappings.push((device.clone(), snapshot.clone()));
    }
    Ok(ImagePlan {
        architecture,
        boot_mode,
        ena_support: machine.ena_support,
        sriov_net_support: machine.sriov_net_support.clone(),
        virtualization_type: machine.virtualization_type.clone(),
        root_device_name: root.to_string(),
        mappings,
    })
}

impl Instances<'_> {
    /// Registers the AMI of `plan`, tagged at creation; adopts the one an
    /// earlier try registered under the same `name` (its answer lost).
    pub async fn register_restored_image(
        &self,
        region: &str,
        (name, description): (&str, &str),
        plan: &ImagePlan,
        tags: &[(String, String)],
    ) -> Result<String, AwsError> {
        let op = AwsOperation::RegisterImage;
        let mappings: Vec<BlockDeviceMapping> = plan
            .mappings
            .iter()
            .map(|(device, snapshot)| {
                BlockDeviceMapping::builder()
                    .device_name(device)
                    .ebs(
                        EbsBlockDevice::builder()
                            .snapshot_id(snapshot)
                            .volume_type(VolumeType::Gp3)
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build()
            })
            .collect();
        let spec = super::tag_specification(
            ResourceType::Image,
            super::ec2_tags(tags.iter().map(|(k, v)| (k, v))),
        );
        let register = self
            .aws
            .ec2(region)
            .register_image()
            .name(name)
            .description(description)
            .architecture(plan.architecture.clone())
            .set_boot_mode(plan.boot_mode.clone())
            .ena_support(plan.ena_support)
            .set_sriov_net_support(plan.sriov_net_support.clone())
            .virtualization_type(&plan.virtualization_type)
            .root_device_name(&plan.root_device_name)
            .set_block_device_mappings(Some(mappings))
            .tag_specifications(spec)
            .send();
        let out = match self.aws.call(op, register).await {
            Ok(out) => out,
            Err(e) => {
                if e.code() == Some("InvalidAMIName.Duplicate")
                    && let Some(id) = self.image_named(region, name).await?
                {
                    return Ok(id);
                }
                return Err(e);
            }
        };
        out.image_id().map(String::from).ok_or(AwsError::Service {
            operation: op.name(),
            code: "NoImage".into(),
            message: "RegisterImage returned no image ID".into(),
        })
    }

    /// The state of an image (`pending`, `available`, `failed`, …); `None`
    /// when DescribeImages does not know it.
    pub async fn image_state(
        &self,
        region: &str,
        image_id: &str,
    ) -> Result<Option<String>, AwsError> {
        let describe = self
            .aws
            .ec2(region)
            .describe_images()
            .image_ids(image_id)
            .send();
        match self.aws.call(AwsOperation::DescribeImages, describe).await {
            Ok(out) => Ok(out
                .images()
                .iter()
                .find(|i| i.image_id() == Some(image_id))
                .and_then(|i| i.state())
                .map(|s| s.as_str().to_string())),
            Err(e) if e.code().is_some_and(|c| c.starts_with("InvalidAMIID")) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every snapshot that backs one of this account's images (a full
    /// restore's AMI, or anyone's): never to be deleted from under it. (All
    /// images are listed: the `block-device-mapping.snapshot-id` filter is
    /// not served everywhere.)
    pub async fn snapshots_in_images(
        &self,
        region: &str,
    ) -> Result<std::collections::HashSet<String>, AwsError> {
        let mut pages = self
            .aws
            .ec2(region)
            .describe_images()
            .owners("self")
            .into_paginator()
            .send();
        let mut used = std::collections::HashSet::new();
        while let Some(page) = self
            .aws
            .page(AwsOperation::DescribeImages, pages.next())
            .await?
        {
            used.extend(
                page.images()
                    .iter()
                    .flat_map(|i| i.block_device_mappings())
                    .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()))
                    .map(String::from),
            );
        }
        Ok(used)
    }

    /// This account's image named `name`, if any.
    async fn image_named(&self, region: &str, name: &str) -> Result<Option<String>, AwsError> {
        let describe = self
            .aws
            .ec2(region)
            .describe_images()
            .owners("self")
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("name")
                    .values(name)
                    .build(),
            )
            .send();
        let out = self
            .aws
            .call(AwsOperation::DescribeImages, describe)
            .await?;
        Ok(out
            .images()
            .first()
            .and_then(|i| i.image_id())
            .map(String::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::{DeviceType, InstanceBootModeValues, VirtualizationType};

    fn graviton() -> MachineImage {
        MachineImage {
            architecture: "arm64".into(),
            boot_mode: Some("uefi".into()),
            ena_support: true,
            sriov_net_support: None,
            virtualization_type: "hvm".into(),
            root_device_name: "/dev/sda1".into(),
        }
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(d, s)| (d.to_string(), s.to_string()))
            .collect()
    }

    #[test]
    fn an_instance_is_recorded_as_it_boots() {
        let instance = Instance::builder()
            .architecture(ArchitectureValues::Arm64)
            .current_instance_boot_mode(InstanceBootModeValues::Uefi)
            .ena_support(true)
            .virtualization_type(VirtualizationType::Hvm)
            .root_device_name("/dev/sda1")
            .root_device_type(DeviceType::Ebs)
            .build();
        assert_eq!(machine_of(&instance), graviton());
        // The AMI's own boot mode wins over the mode it happened to boot in.
        let preferred = Instance::builder()
            .boot_mode(BootModeValues::UefiPreferred)
            .current_instance_boot_mode(InstanceBootModeValues::LegacyBios)
            .sriov_net_support("simple")
            .build();
        let m = machine_of(&preferred);
        assert_eq!(m.boot_mode.as_deref(), Some("uefi-preferred"));
        assert_eq!(m.sriov_net_support.as_deref(), Some("simple"));
        assert!(!m.ena_support);
    }

    #[test]
    fn the_root_volume_is_the_one_on_the_root_device_not_the_first() {
        let plan = plan_image(
            &graviton(),
            &pairs(&[("/dev/sdf", "snap-data"), ("/dev/sda1", "snap-root")]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.architecture, ArchitectureValues::Arm64);
        assert_eq!(plan.boot_mode, Some(BootModeValues::Uefi));
        assert!(plan.ena_support);
        assert_eq!(plan.virtualization_type, "hvm");
        assert_eq!(plan.root_device_name, "/dev/sda1");
        assert_eq!(
            plan.mappings,
            pairs(&[("/dev/sda1", "snap-root"), ("/dev/sdf", "snap-data")])
        );
    }

    #[test]
    fn an_image_that_could_not_boot_is_refused_before_registering() {
        let no_root = plan_image(&graviton(), &pairs(&[("/dev/sdf", "snap-data")]));
        assert!(no_root.is_err_and(|e| e.contains("/dev/sda1")));
        let odd = MachineImage {
            architecture: "sparc".into(),
            ..graviton()
        };
        assert!(
            plan_image(&odd, &pairs(&[("/dev/sda1", "s")])).is_err_and(|e| e.contains("sparc"))
        );
        let odd = MachineImage {
            boot_mode: Some("coreboot".into()),
            ..graviton()
        };
        assert!(plan_image(&odd, &pairs(&[("/dev/sda1", "s")])).is_err());
        let twice = pairs(&[("/dev/sda1", "a"), ("/dev/sdf", "b"), ("/dev/sdf", "c")]);
        assert!(plan_image(&graviton(), &twice).is_err_and(|e| e.contains("/dev/sdf")));
        let legacy = MachineImage {
            boot_mode: None,
            architecture: "x86_64".into(),
            ..graviton()
        };
        let plan = plan_image(&legacy, &pairs(&[("/dev/sda1", "s")]));
        assert_eq!(plan.map(|p| p.boot_mode), Ok(None));
    }
}
