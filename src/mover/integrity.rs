//! Authenticated documents: every manifest and `latest` pointer is stored
//! as an envelope around its exact bytes, with an HMAC by the repository's
//! KMS key (`spec.integrity.macKeyId`):
//!
//! ```text
//! {"format": "tender.dev/authenticated/v1", "algorithm": "HMAC_SHA_256",
//!  "keyId": "arn:aws:kms:…", "payload": "<base64 of the document>", "mac": "<base64>"}
//! ```
//!
//! - In the object's body, not its metadata: the object carries its proof
//!   wherever it is copied (replication, `aws s3 cp`, a bucket restored
//!   from elsewhere), and one GET reads both.
//! - The payload is the document's bytes as written, in base64: what is
//!   verified is exactly what is then parsed, with no canonical JSON for
//!   writer and reader to agree on.
//! - The MAC covers `DOMAIN || SHA-256(payload)`: KMS takes messages of at
//!   most 4 096 bytes and a manifest is often larger; the domain tag keeps
//!   these MACs from standing for anything else the key might ever MAC.
//! - `keyId` is for people (which key wrote it). The MAC is always checked
//!   with the repository's key from the task, never with one a document
//!   names.
//!
//! The MAC says who wrote a document, not where: each document also names
//! its own place (restore point ID, namespace, lineage), which the reader
//! checks, so that a genuine document copied to another key is refused.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::MoverError;
use super::manifest::RepositoryLocation;
use crate::aws::AwsClients;
use crate::aws::kms::key_region;

/// The envelope format this build writes and reads.
pub const FORMAT: &str = "tender.dev/authenticated/v1";
/// KMS's name for the MAC algorithm (the key is `HMAC_256`).
pub const ALGORITHM: &str = "HMAC_SHA_256";
/// Prefixed to the payload's digest in the MACed message.
const DOMAIN: &[u8] = b"tender.dev/authenticated/v1\n";

/// A document as stored.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Envelope {
    format: String,
    algorithm: String,
    key_id: String,
    payload: String,
    mac: String,
}

/// A stored document taken apart; nothing in it is trusted yet.
#[derive(Debug, PartialEq, Eq)]
pub struct Sealed {
    pub payload: Vec<u8>,
    pub mac: Vec<u8>,
    /// The key the writer says it used.
    pub key_id: String,
}

/// The message KMS MACs for `payload`.
pub fn mac_message(payload: &[u8]) -> Vec<u8> {
    let mut message = DOMAIN.to_vec();
    message.extend_from_slice(&Sha256::digest(payload));
    message
}

/// The stored form of `payload`, with its `mac` by `key_id`.
pub fn seal(payload: &[u8], key_id: &str, mac: &[u8]) -> Vec<u8> {
    let envelope = Envelope {
        format: FORMAT.into(),
        algorithm: ALGORITHM.into(),
        key_id: key_id.into(),
        payload: STANDARD.encode(payload),
        mac: STANDARD.encode(mac),
    };
    serde_json::to_vec(&envelope).unwrap_or_default()
}

/// Takes a stored document apart, or says why it is not one this build
/// can check.
pub fn unseal(stored: &[u8]) -> Result<Sealed, String> {
    let envelope: Envelope = serde_json::from_slice(stored)
        .map_err(|e| format!("it is not an authenticated document ({e})"))?;
    if envelope.format != FORMAT || envelope.algorithm != ALGORITHM {
        return Err(format!(
            "it is in format {} with {} (this build reads {FORMAT} with {ALGORITHM})",
            envelope.format, envelope.algorithm
        ));
    }
    let decode = |field: &str, text: &str| {
        STANDARD
            .decode(text)
            .map_err(|e| format!("its {field} is not base64 ({e})"))
    };
    Ok(Sealed {
        payload: decode("payload", &envelope.payload)?,
        mac: decode("mac", &envelope.mac)?,
        key_id: envelope.key_id,
    })
}

/// The location's integrity key; none is a refusal, never a shortcut.
fn integrity_key(loc: &RepositoryLocation) -> Result<&str, MoverError> {
    loc.mac_key_id.as_deref().ok_or(MoverError::NoIntegrityKey)
}

/// `payload`, sealed with its MAC by the location's integrity key.
pub async fn authenticate(
    aws: &AwsClients,
    loc: &RepositoryLocation,
    payload: &[u8],
) -> Result<Vec<u8>, MoverError> {
    let key_id = integrity_key(loc)?;
    let mac = aws
        .macs()
        .generate(
            key_region(key_id, &loc.region),
            key_id,
            &mac_message(payload),
        )
        .await?;
    Ok(seal(payload, key_id, &mac))
}

/// The payload of `stored` (the object `key`), once its MAC verifies with
/// the location's integrity key.
pub async fn verified(
    aws: &AwsClients,
    loc: &RepositoryLocation,
    key: &str,
    stored: &[u8],
) -> Result<Vec<u8>, MoverError> {
    let key_id = integrity_key(loc)?;
    let unverified = |detail: String| MoverError::Unverified {
        key: key.to_string(),
        detail,
    };
    let sealed = unseal(stored).map_err(unverified)?;
    let valid = aws
        .macs()
        .verify(
            key_region(key_id, &loc.region),
            key_id,
            &mac_message(&sealed.payload),
            &sealed.mac,
        )
        .await?;
    match valid {
        true => Ok(sealed.payload),
        false if sealed.key_id != key_id => Err(unverified(format!(
            "it says it was written with key {}, and the repository's key is {key_id}",
            sealed.key_id
        ))),
        false => Err(unverified("its MAC does not match its contents".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/0987dcba-09fe-87dc-65ba-ab0987654321";

    #[test]
    fn a_sealed_document_unseals_to_its_exact_bytes() {
        let payload = b"{\n  \"restorePoint\": \"nightly/i-1\"\n}".to_vec();
        let stored = seal(&payload, KEY, &[7; 32]);
        assert_eq!(
            unseal(&stored),
            Ok(Sealed {
                payload,
                mac: vec![7; 32],
                key_id: KEY.into()
            })
        );
    }

    #[test]
    fn the_mac_covers_every_byte_of_the_payload_and_nothing_else_of_the_envelope() {
        let message = mac_message(b"{\"a\":1}");
        assert_eq!(message.len(), DOMAIN.len() + 32, "fits KMS's 4 096 bytes");
        assert!(message.starts_with(DOMAIN));
        assert_ne!(message, mac_message(b"{\"a\":2}"));
        assert_ne!(message, mac_message(b"{\"a\":1} "));
        let big = vec![b'x'; 10 << 20];
        assert_eq!(mac_message(&big).len(), message.len());
    }

    #[test]
    fn what_is_not_an_envelope_of_this_format_is_refused() {
        let plain = br#"{"version":1,"id":"nightly/i-1"}"#;
        assert!(
            unseal(plain)
                .unwrap_err()
                .contains("not an authenticated document")
        );
        let stored = String::from_utf8(seal(b"{}", KEY, &[1; 32])).unwrap_or_default();
        let other = stored.replace(FORMAT, "tender.dev/authenticated/v9");
        assert!(unseal(other.as_bytes()).unwrap_err().contains("format"));
        let md5 = stored.replace(ALGORITHM, "HMAC_SHA_224");
        assert!(unseal(md5.as_bytes()).unwrap_err().contains("HMAC_SHA_224"));
        let garbled = stored.replace("\"mac\":\"", "\"mac\":\"!");
        assert!(
            unseal(garbled.as_bytes())
                .unwrap_err()
                .contains("mac is not base64")
        );
        let extra = stored.replacen('{', "{\"note\":\"trust me\",", 1);
        assert!(
            unseal(extra.as_bytes()).is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn a_location_without_an_integrity_key_is_refused() {
        let loc = RepositoryLocation::new("bucket", "", "us-east-1");
        assert!(matches!(
            integrity_key(&loc),
            Err(MoverError::NoIntegrityKey)
        ));
        let keyed = loc.with_mac_key(KEY);
        assert_eq!(integrity_key(&keyed).ok(), Some(KEY));
    }
}
