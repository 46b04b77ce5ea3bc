//! A key Tender reads and may find missing (the manifest it is about to
//! write, the `latest` pointer of a first backup, a chunk not stored yet)
//! must be a 404, not a 403. S3 decides between the two by asking whether
//! the caller may `s3:ListBucket` the bucket, with `s3:prefix` set to the
//! requested key (GetObject and HeadObject, "Permissions",
//! <https://docs.aws.amazon.com/AmazonS3/latest/API/API_HeadObject.html>;
//! that the prefix is the key is what the S3 compatibility suite checks,
//! `test_head_object_404_with_policy_prefix` in ceph/s3-tests, see
//! iam/README.md). These checks evaluate each shipped statement, conditions
//! included, against exactly those requests.

use tender::messages::WorkerProfile;

use crate::policy::Request;
use crate::repository::{Keys, Sample, keys};
use crate::workers::file;

/// The keys each profile reads where "absent" is an answer it acts on.
fn read_maybe_missing(profile: WorkerProfile, k: &Keys) -> Vec<&String> {
    match profile {
        // Its own manifest (a retried attempt's?), the parent's pointer,
        // each chunk before uploading it.
        WorkerProfile::Backup => vec![&k.manifest, &k.latest, &k.chunk],
        // The restore point, and each chunk (a missing one is ChunkMissing;
        // a verification counts it).
        WorkerProfile::Restore | WorkerProfile::FileLevel | WorkerProfile::Verification => {
            vec![&k.manifest, &k.chunk]
        }
        // A restore point deleted since the listing, a condemned list's
        // marker just written (its LastModified).
        WorkerProfile::Retention => vec![&k.manifest, &k.marker],
    }
}

#[test]
fn every_key_a_worker_may_find_missing_is_a_404_and_only_those() {
    for sample in [Sample::new("prod/"), Sample::new("")] {
        let k = keys(&sample);
        let owner = sample.spec.expected_bucket_owner.as_str();
        let bucket = format!("arn:aws:s3:::{}", sample.spec.bucket);
        for profile in WorkerProfile::ALL {
            let policy = sample.load(file(profile));
            let list = |prefix: Option<&str>, account: &str| {
                let mut context = vec![("s3:ResourceAccount", account)];
                context.extend(prefix.map(|p| ("s3:prefix", p)));
                policy.allows(&Request {
                    action: "s3:ListBucket",
                    resource: &bucket,
                    context: &context,
                })
            };
            for key in read_maybe_missing(profile, &k) {
                let read = Request {
                    action: "s3:GetObject",
                    resource: &sample.object(key),
                    context: &[("s3:ResourceAccount", owner)],
                };
                assert!(policy.allows(&read), "{}: GetObject {key}", policy.file);
                assert!(
                    list(Some(key), owner),
                    "{}: a missing {key} would be a 403: grant s3:ListBucket on {bucket} \
                     with an s3:prefix condition covering it",
                    policy.file
                );
                // The same bucket name in another account: no 404 either.
                assert!(!list(Some(key), "444455556666"), "{}", policy.file);
            }
            // A listing of the whole bucket (no prefix) is not granted, nor
            // one outside the repository's prefix.
            assert!(
                !list(None, owner),
                "{}: ListBucket without a prefix",
                policy.file
            );
            if !sample.prefix.is_empty() {
                assert!(
                    !list(Some("staging/team-a/chunks/ab/abab"), owner),
                    "{}: ListBucket outside the repository's prefix",
                    policy.file
                );
            }
        }
    }
}

/// The evaluator itself, on the cases that decide the verdicts above.
#[test]
fn conditions_are_evaluated_by_iam_rules() {
    let sample = Sample::new("prod/");
    let policy = sample.load(file(WorkerProfile::Restore));
    let bucket = format!("arn:aws:s3:::{}", sample.spec.bucket);
    let allows = |context: &[(&str, &str)]| {
        policy.allows(&Request {
            action: "s3:ListBucket",
            resource: &bucket,
            context,
        })
    };
    let owner = sample.spec.expected_bucket_owner.as_str();
    assert!(allows(&[
        ("s3:prefix", "prod/x"),
        ("s3:ResourceAccount", owner)
    ]));
    // Each condition key must be present and match: AND across keys.
    assert!(!allows(&[("s3:prefix", "prod/x")]));
    assert!(!allows(&[("s3:ResourceAccount", owner)]));
    assert!(!allows(&[
        ("s3:prefix", "produce/x"),
        ("s3:ResourceAccount", owner)
    ]));
}
