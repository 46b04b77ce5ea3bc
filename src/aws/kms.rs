//! [`Macs`]: HMACs made and checked by a KMS key (`GenerateMac`,
//! `VerifyMac`), which authenticate the repository's manifests and
//! `latest` pointers (see `crate::mover::integrity`). The key never leaves
//! KMS, so a worker can authenticate what it writes without holding
//! anything that outlives its instance.

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::MacAlgorithmSpec;

use super::{AwsClients, AwsError, AwsOperation};

/// KMS's answer to a MAC that does not match its message.
const INVALID_MAC: &str = "KMSInvalidMacException";

/// HMAC-SHA-256 by KMS keys ([`AwsClients::macs`]).
#[derive(Clone, Copy)]
pub struct Macs<'a> {
    pub(super) aws: &'a AwsClients,
}

impl Macs<'_> {
    /// The HMAC-SHA-256 of `message` (at most 4 096 bytes) by `key_id`.
    pub async fn generate(
        &self,
        region: &str,
        key_id: &str,
        message: &[u8],
    ) -> Result<Vec<u8>, AwsError> {
        let op = AwsOperation::GenerateMac;
        let request = self.aws.kms(region).generate_mac().key_id(key_id);
        let request = request.mac_algorithm(MacAlgorithmSpec::HmacSha256);
        let out = self
            .aws
            .call(op, request.message(Blob::new(message)).send())
            .await?;
        out.mac
            .map(Blob::into_inner)
            .ok_or_else(|| AwsError::Unreachable {
                operation: op.name(),
                detail: "KMS answered without a MAC".into(),
            })
    }

    /// Whether `mac` is `key_id`'s HMAC-SHA-256 of `message`. A MAC that
    /// does not match is `Ok(false)`; a key that cannot be used (missing,
    /// disabled, not an HMAC key, not allowed) is an error.
    pub async fn verify(
        &self,
        region: &str,
        key_id: &str,
        message: &[u8],
        mac: &[u8],
    ) -> Result<bool, AwsError> {
        let request = self.aws.kms(region).verify_mac().key_id(key_id);
        let request = request.mac_algorithm(MacAlgorithmSpec::HmacSha256);
        let request = request.message(Blob::new(message)).mac(Blob::new(mac));
        match self.aws.call(AwsOperation::VerifyMac, request.send()).await {
            Ok(out) => Ok(out.mac_valid),
            Err(e) if e.code() == Some(INVALID_MAC) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The region that serves `key_id`: the one its ARN names, else
/// `default` (a bare key ID or alias is the caller's region's).
pub fn key_region<'a>(key_id: &'a str, default: &'a str) -> &'a str {
    match key_id.strip_prefix("arn:") {
        Some(rest) => rest
            .split(':')
            .nth(2)
            .filter(|r| !r.is_empty())
            .unwrap_or(default),
        None => default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_arn_names_the_region_of_its_key() {
        let arn = "arn:aws:kms:eu-west-1:111122223333:key/0987dcba-09fe-87dc-65ba-ab0987654321";
        assert_eq!(key_region(arn, "us-east-1"), "eu-west-1");
        assert_eq!(
            key_region(
                "arn:aws-us-gov:kms:us-gov-west-1:111122223333:alias/x",
                "us-east-1"
            ),
            "us-gov-west-1"
        );
        assert_eq!(
            key_region("alias/tender-integrity", "us-east-1"),
            "us-east-1"
        );
        assert_eq!(
            key_region("0987dcba-09fe-87dc-65ba-ab0987654321", "ap-south-1"),
            "ap-south-1"
        );
    }
}
