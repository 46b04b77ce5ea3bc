//! The session's self-signed certificate: made when the session starts,
//! valid only for the session's longest possible life.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use sha2::{Digest, Sha256};

/// A session lives at most this long, whatever the job allows.
pub const MAX_SESSION_LIFE: Duration = Duration::from_secs(24 * 3600);
/// How far a client's clock may run behind the worker's.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// How long a session may live: a day, or the job's
/// `activeDeadlineSeconds` when that is shorter.
pub fn session_life(deadline_seconds: Option<u64>) -> Duration {
    deadline_seconds
        .map(|s| Duration::from_secs(s.max(1)))
        .map_or(MAX_SESSION_LIFE, |d| d.min(MAX_SESSION_LIFE))
}

/// The session's self-signed certificate and its key.
pub(super) struct SessionCertificate {
    pub cert_der: Vec<u8>,
    key_der: Vec<u8>,
    /// SHA-256 of the certificate, `AB:CD:…`.
    pub sha256: String,
    /// SHA-256 of its SubjectPublicKeyInfo, base64.
    pub public_key_sha256: String,
}

impl SessionCertificate {
    /// A certificate for `advertise_host` (and `localhost`), valid from a
    /// few minutes ago (clients' clocks drift) until `life` from now.
    pub(super) fn generate(advertise_host: &str, life: Duration) -> Result<Self, String> {
        let fail = |e: rcgen::Error| format!("could not make the session certificate: {e}");
        let names = vec![advertise_host.to_string(), "localhost".to_string()];
        let mut params = rcgen::CertificateParams::new(names).map_err(fail)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| format!("the clock is before 1970: {e}"))?;
        params.not_before = at(now.saturating_sub(CLOCK_SKEW))?;
        params.not_after = at(now + life)?;
        let key = rcgen::KeyPair::generate().map_err(fail)?;
        let cert = params.self_signed(&key).map_err(fail)?;
        let cert_der = cert.der().to_vec();
        let public_key = rcgen::PublicKeyData::subject_public_key_info(&key);
        Ok(Self {
            sha256: colon_hex(&Sha256::digest(&cert_der)),
            public_key_sha256: base64::engine::general_purpose::STANDARD
                .encode(Sha256::digest(&public_key)),
            key_der: key.serialize_der(),
            cert_der,
        })
    }

    pub(super) fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(
                vec![self.cert_der.clone().into()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into()),
            )
            .map_err(|e| format!("could not use the session certificate: {e}"))?;
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
    }
}

/// `since_epoch` as the certificate's time type.
fn at(since_epoch: Duration) -> Result<time::OffsetDateTime, String> {
    let seconds = i64::try_from(since_epoch.as_secs()).map_err(|e| e.to_string())?;
    time::OffsetDateTime::from_unix_timestamp(seconds).map_err(|e| e.to_string())
}

/// `AB:CD:…`, as certificate fingerprints are written.
pub(super) fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| hex::encode_upper([*b]))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
pub(super) mod testing {
    //! The validity a certificate states, read back from its DER.

    /// (notBefore, notAfter) in seconds since 1970: the first two times
    /// in the certificate (UTCTime, or GeneralizedTime from 2050), which
    /// are its validity (names are other string types).
    pub fn validity(der: &[u8]) -> (i64, i64) {
        let mut times = Vec::new();
        for at in 0..der.len() {
            let digits = match der[at..] {
                [0x17, 13, ..] if der.len() > at + 14 && der[at + 14] == b'Z' => {
                    let yy = &der[at + 2..at + 4];
                    let century: &[u8] = if yy < b"50".as_slice() { b"20" } else { b"19" };
                    [century, &der[at + 2..at + 14]].concat()
                }
                [0x18, 15, ..] if der.len() > at + 16 && der[at + 16] == b'Z' => {
                    der[at + 2..at + 16].to_vec()
                }
                _ => continue,
            };
            times.push(seconds(&digits));
            if times.len() == 2 {
                break;
            }
        }
        (times[0], times[1])
    }

    /// `YYYYMMDDHHMMSS` as seconds since 1970.
    fn seconds(digits: &[u8]) -> i64 {
        let n = |from: usize, to: usize| -> i64 {
            std::str::from_utf8(&digits[from..to])
                .unwrap()
                .parse()
                .unwrap()
        };
        let (y, m, d) = (n(0, 4), n(4, 6), n(6, 8));
        // Days from civil (Howard Hinnant's algorithm).
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * 86_400 + n(8, 10) * 3600 + n(10, 12) * 60 + n(12, 14)
    }

    #[test]
    fn times_count_from_1970() {
        assert_eq!(seconds(b"19700101000000"), 0);
        assert_eq!(seconds(b"19691231235959"), -1);
        assert_eq!(seconds(b"20000101000000"), 946_684_800);
        assert_eq!(seconds(b"20240229123456"), 1_709_210_096);
        assert_eq!(seconds(b"40960101000000"), 67_090_118_400);
        // rcgen's default validity, which the session's certificate had.
        let default = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        assert_eq!(validity(default.cert.der()), (157_766_400, 67_090_118_400));
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn a_session_lives_a_day_at_most() {
        assert_eq!(session_life(None), MAX_SESSION_LIFE);
        assert_eq!(session_life(Some(600)), Duration::from_secs(600));
        assert_eq!(session_life(Some(7 * 24 * 3600)), MAX_SESSION_LIFE);
        assert_eq!(session_life(Some(0)), Duration::from_secs(1));
    }

    #[test]
    fn the_certificate_is_valid_only_for_the_session() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let certificate = SessionCertificate::generate("10.0.0.5", MAX_SESSION_LIFE).unwrap();
        assert_eq!(certificate.sha256.len(), 32 * 3 - 1);
        assert!(certificate.acceptor().is_ok());
        let (not_before, not_after) = testing::validity(&certificate.cert_der);
        assert!(
            (now - 300 - 2..=now - 300 + 2).contains(&not_before),
            "{not_before} vs {now}"
        );
        assert!(
            (now + 86_400 - 2..=now + 86_400 + 2).contains(&not_after),
            "{not_after}"
        );
        let short = SessionCertificate::generate("10.0.0.5", Duration::from_secs(900)).unwrap();
        let (_, not_after) = testing::validity(&short.cert_der);
        assert!(
            (now + 900 - 2..=now + 900 + 2).contains(&not_after),
            "{not_after}"
        );
    }

    #[test]
    fn fingerprints_are_written_as_people_expect() {
        assert_eq!(colon_hex(&[0xab, 0x01, 0xff]), "AB:01:FF");
    }
}
