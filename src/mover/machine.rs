//! The machine a full restore registers its image as, when the restore
//! point recorded none (a snapshot's, or one written before Tender recorded
//! it): see [`Manifest::machine_or_fallback`].

#[cfg(doc)]
use super::manifest::Manifest;
use super::manifest::SNAPSHOT_DEVICE;

/// The machine of a restore point that recorded none, from its volumes'
/// devices (`None`: a snapshot's, restored on [`SNAPSHOT_DEVICE`]): see
/// [`Manifest::machine_or_fallback`].
pub fn fallback_machine<'a>(
    devices: impl Iterator<Item = Option<&'a str>>,
) -> crate::api::MachineImage {
    let devices: Vec<&str> = devices.map(|d| d.unwrap_or(SNAPSHOT_DEVICE)).collect();
    let root = ["/dev/xvda", "/dev/sda1"]
        .into_iter()
        .find(|d| devices.contains(d))
        .or(devices.first().copied())
        .unwrap_or(SNAPSHOT_DEVICE);
    crate::api::MachineImage {
        architecture: "x86_64".into(),
        boot_mode: None,
        ena_support: true,
        sriov_net_support: None,
        virtualization_type: "hvm".into(),
        root_device_name: root.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use crate::mover::manifest::*;

    fn image() -> VolumeImage {
        VolumeImage {
            device: None,
            volume_id: None,
            snapshot_id: "snap-1".into(),
            size_gib: 8,
            block_size: 512 * 1024,
            blocks: Vec::new(),
            encryption: None,
        }
    }

    fn instance_manifest(devices: &[&str]) -> Manifest {
        Manifest {
            version: 1,
            id: "nightly/i-1".into(),
            resource: "i-1".into(),
            region: "us-east-1".into(),
            namespace: "team-a".into(),
            job_name: "nightly".into(),
            job_uid: "u".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            parent: None,
            parent_refused: None,
            volumes: devices
                .iter()
                .map(|d| VolumeImage {
                    device: Some(d.to_string()),
                    ..image()
                })
                .collect(),
            stats: BackupStats::default(),
            machine: None,
            policy: None,
            database: None,
        }
    }

    #[test]
    fn a_manifest_written_before_machines_were_recorded_still_reads() {
        let mut old =
            serde_json::to_value(instance_manifest(&["/dev/sdf", "/dev/sda1"])).unwrap_or_default();
        assert!(old.get("machine").is_none(), "{old}");
        old["version"] = 1.into();
        let text = serde_json::to_vec(&old).unwrap_or_default();
        let read = parse_manifest(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read.machine, None);
        // The documented fallback: x86_64 HVM with ENA, the root device the
        // restore point has (not the first volume).
        let m = read.machine_or_fallback();
        assert_eq!(m.architecture, "x86_64");
        assert_eq!(m.virtualization_type, "hvm");
        assert!(m.ena_support);
        assert_eq!(m.boot_mode, None);
        assert_eq!(m.root_device_name, "/dev/sda1");
        let other = instance_manifest(&["/dev/sdb", "/dev/sdc"]).machine_or_fallback();
        assert_eq!(other.root_device_name, "/dev/sdb");
        let snapshot = Manifest {
            volumes: vec![image()],
            ..instance_manifest(&[])
        };
        assert_eq!(snapshot.machine_or_fallback().root_device_name, "/dev/xvda");
    }

    #[test]
    fn a_recorded_machine_is_kept_and_wins_over_the_fallback() {
        let machine = crate::api::MachineImage {
            architecture: "arm64".into(),
            boot_mode: Some("uefi".into()),
            ena_support: true,
            sriov_net_support: None,
            virtualization_type: "hvm".into(),
            root_device_name: "/dev/sda1".into(),
        };
        let m = Manifest {
            machine: Some(machine.clone()),
            ..instance_manifest(&["/dev/xvda", "/dev/sda1"])
        };
        let text = serde_json::to_vec(&m).unwrap_or_default();
        assert_eq!(
            parse_manifest(&text).map(|m| m.machine),
            Ok(Some(machine.clone()))
        );
        assert_eq!(m.machine_or_fallback(), machine);
    }
}
