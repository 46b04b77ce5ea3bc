//! The KMS permissions EBS uses on a worker's behalf for encrypted
//! snapshots (reading their blocks, starting and writing a restored one):
//! granted only through EBS or EC2 (`kms:ViaService`), a grant only for an
//! AWS resource (`kms:GrantIsForAWSResource`), and to no worker that does
//! not touch snapshots. Each shipped statement is evaluated against the
//! requests KMS sees.

use tender::aws::AwsOperation;
use tender::messages::WorkerProfile;

use crate::policy::Request;
use crate::workers::policy;

const KEY: &str = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

/// The KMS actions EBS needs for `profile`'s calls (`also_needs`).
fn ebs_kms_actions(profile: WorkerProfile) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = AwsOperation::ALL
        .iter()
        .filter(|op| op.worker_profiles().contains(&profile))
        .filter(|op| op.service().iam_prefix() == "ebs")
        .flat_map(|op| op.also_needs())
        .filter(|a| a.starts_with("kms:"))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[test]
fn ebs_uses_the_snapshot_keys_only_through_ebs_or_ec2() {
    for profile in WorkerProfile::ALL {
        let policy = policy(profile);
        let actions = ebs_kms_actions(profile);
        match profile {
            WorkerProfile::Backup => assert_eq!(actions, ["kms:Decrypt"]),
            WorkerProfile::Restore => assert_eq!(
                actions,
                [
                    "kms:CreateGrant",
                    "kms:Decrypt",
                    "kms:DescribeKey",
                    "kms:GenerateDataKeyWithoutPlaintext"
                ]
            ),
            WorkerProfile::FileLevel | WorkerProfile::Retention | WorkerProfile::Verification => {
                assert!(actions.is_empty())
            }
        }
        for action in actions {
            let asks = |context: &[(&str, &str)]| {
                policy.allows(&Request {
                    action,
                    resource: KEY,
                    context,
                })
            };
            let grant = ("kms:GrantIsForAWSResource", "true");
            for via in ["ebs.eu-west-1.amazonaws.com", "ec2.eu-west-1.amazonaws.com"] {
                assert!(
                    asks(&[("kms:ViaService", via), grant]),
                    "{}: {action} through {via}",
                    policy.file
                );
            }
            // Called directly (no service in between), or through another.
            assert!(!asks(&[grant]), "{}: {action} directly", policy.file);
            assert!(
                !asks(&[("kms:ViaService", "s3.eu-west-1.amazonaws.com"), grant]),
                "{}: {action} through S3",
                policy.file
            );
            if action == "kms:CreateGrant" {
                assert!(
                    !asks(&[("kms:ViaService", "ebs.eu-west-1.amazonaws.com")]),
                    "{}: a grant that is not for an AWS resource",
                    policy.file
                );
            }
        }
    }
    // The file-level worker reads no snapshot: no key at all, except the
    // integrity key's VerifyMac.
    let file_level = policy(WorkerProfile::FileLevel);
    for action in [
        "kms:Decrypt",
        "kms:CreateGrant",
        "kms:GenerateDataKeyWithoutPlaintext",
    ] {
        assert!(file_level.granting(action).is_empty(), "{action}");
    }
}
