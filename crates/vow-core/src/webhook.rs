//! Completion-notice signing in the Standard Webhooks scheme
//! (<https://www.standardwebhooks.com>): headers `webhook-id`, `webhook-timestamp`
//! and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
//!
//! Secrets look like `whsec_<base64 key>`. During a rotation a delivery carries one
//! signature per valid secret, space-separated; a receiver accepts the delivery when any
//! one of them verifies with any secret it holds. [`verify`] is what receivers use
//! (re-exported by `vow-client`); `docs/webhooks.md` gives the recipe for other languages.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Prefix of every signing secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// How far a delivery's timestamp may be from the receiver's clock by default.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// Why a delivery did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A header is missing or malformed.
    #[error("missing or malformed header: {0}")]
    Header(&'static str),
    /// The timestamp is too old or too far in the future (replay protection).
    #[error("timestamp outside the tolerance window")]
    Timestamp,
    /// No signature matches any of the secrets.
    #[error("no signature matches")]
    Signature,
    /// A secret is not `whsec_<base64>` (or bare base64).
    #[error("invalid secret")]
    Secret,
}

/// A new random signing secret (`whsec_` + 32 random bytes, base64).
pub fn generate_secret() -> String {
    let key: [u8; 32] = rand::random();
    format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
}

fn key_of(secret: &str) -> Result<Vec<u8>, VerifyError> {
    let b64 = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    STANDARD.decode(b64).map_err(|_| VerifyError::Secret)
}

fn mac(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `webhook-signature` header value for a delivery: one `v1,<sig>` per secret,
/// space-separated (two during a rotation).
pub fn sign(
    secrets: &[&str],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, VerifyError> {
    let mut parts = Vec::with_capacity(secrets.len());
    for secret in secrets {
        let tag = mac(&key_of(secret)?, id, timestamp, body)
            .finalize()
            .into_bytes();
        parts.push(format!("v1,{}", STANDARD.encode(tag)));
    }
    Ok(parts.join(" "))
}

/// Verifies a delivery: `id`, `timestamp` and `signature_header` are the values of the
/// `webhook-id`, `webhook-timestamp` and `webhook-signature` headers, `body` the raw
/// body, `now` the receiver's clock (Unix seconds). Accepts when any `v1` signature
/// matches any of `secrets` (constant-time comparison) and the timestamp is within
/// `tolerance_secs` of `now`.
pub fn verify(
    secrets: &[&str],
    id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    if id.is_empty() {
        return Err(VerifyError::Header("webhook-id"));
    }
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::Header("webhook-timestamp"))?;
    if (now - ts).abs() > tolerance_secs {
        return Err(VerifyError::Timestamp);
    }
    let signatures: Vec<Vec<u8>> = signature_header
        .split_whitespace()
        .filter_map(|part| part.strip_prefix("v1,"))
        .filter_map(|b64| STANDARD.decode(b64).ok())
        .collect();
    if signatures.is_empty() {
        return Err(VerifyError::Header("webhook-signature"));
    }
    for secret in secrets {
        let key = key_of(secret)?;
        for sig in &signatures {
            // `verify_slice` compares in constant time.
            if mac(&key, id, ts, body).verify_slice(sig).is_ok() {
                return Ok(());
            }
        }
    }
    Err(VerifyError::Signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;

    #[test]
    fn matches_the_published_test_vector() {
        // The vector of the Standard Webhooks reference libraries: any receiver's
        // library must accept what vow sends.
        assert_eq!(
            sign(&[SECRET], ID, TS, BODY).unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn verify_accepts_good_and_rejects_tampering() {
        let header = sign(&[SECRET], ID, TS, BODY).unwrap();
        assert_eq!(
            verify(&[SECRET], ID, &TS.to_string(), &header, BODY, TS + 10, 300),
            Ok(())
        );
        assert_eq!(
            verify(&[SECRET], ID, &TS.to_string(), &header, b"{}", TS, 300),
            Err(VerifyError::Signature)
        );
        assert_eq!(
            verify(
                &[SECRET],
                "msg_other",
                &TS.to_string(),
                &header,
                BODY,
                TS,
                300
            ),
            Err(VerifyError::Signature)
        );
        assert_eq!(
            verify(&[SECRET], ID, &TS.to_string(), &header, BODY, TS + 301, 300),
            Err(VerifyError::Timestamp)
        );
        assert_eq!(
            verify(&[SECRET], ID, "yesterday", &header, BODY, TS, 300),
            Err(VerifyError::Header("webhook-timestamp"))
        );
        assert_eq!(
            verify(&[SECRET], ID, &TS.to_string(), "v2,abc", BODY, TS, 300),
            Err(VerifyError::Header("webhook-signature"))
        );
    }

    #[test]
    fn rotation_old_and_new_secrets_both_verify() {
        let new = generate_secret();
        assert!(new.starts_with(SECRET_PREFIX));
        let header = sign(&[&new, SECRET], ID, TS, BODY).unwrap();
        assert_eq!(header.split(' ').count(), 2);
        // A receiver still on the old secret, one already on the new, and one with both.
        for held in [
            &[SECRET][..],
            &[new.as_str()][..],
            &[SECRET, new.as_str()][..],
        ] {
            assert_eq!(
                verify(held, ID, &TS.to_string(), &header, BODY, TS, 300),
                Ok(())
            );
        }
        let stranger = generate_secret();
        assert_eq!(
            verify(
                &[stranger.as_str()],
                ID,
                &TS.to_string(),
                &header,
                BODY,
                TS,
                300
            ),
            Err(VerifyError::Signature)
        );
    }
}
