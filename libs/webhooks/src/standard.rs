//! Standard Webhooks (<https://www.standardwebhooks.com/>): `webhook-id`, `webhook-timestamp`
//! and `webhook-signature`, over `{id}.{timestamp}.{body}`. `v1` is HMAC-SHA256 with a
//! `whsec_` secret; `v1a` is Ed25519 with a `whsk_` signing key and its `whpk_` public key. The
//! signature header may hold several space-separated signatures (a sender rotating its secret
//! signs with both); one that verifies is enough, and versions not known here are skipped.

use base64::Engine;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::normalize::{self, Parts};
use crate::schemes::hmac_matches;
use crate::{Inbound, Policy, Verified, VerifyError, header, keys, signed_time};

/// A key that signs or verifies Standard Webhooks.
#[derive(Clone)]
pub enum Key {
    /// `whsec_…`: an HMAC-SHA256 secret (`v1`).
    Secret(Vec<u8>),
    /// `whsk_…`: an Ed25519 signing key (`v1a`); verifies too.
    Signing(Box<SigningKey>),
    /// `whpk_…`: an Ed25519 public key (`v1a`); verifies only.
    Public(VerifyingKey),
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Secret(_) => f.write_str("Key::Secret(<redacted>)"),
            Key::Signing(_) => f.write_str("Key::Signing(<redacted>)"),
            Key::Public(key) => write!(f, "Key::Public({key:?})"),
        }
    }
}

/// Base64 as leniently as the reference libraries read it (Python's `base64`): with or without
/// padding, and whatever the unused bits of the last character.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    LENIENT_BASE64.decode(text).ok()
}

impl Key {
    /// Parses `whsec_…`, `whsk_…` (the 32-byte seed) or `whpk_…`.
    pub fn parse(text: &str) -> Result<Key, VerifyError> {
        let invalid = |what: &str| VerifyError::Key(format!("{what} is not valid base64 key"));
        if let Some(secret) = text.strip_prefix("whsec_") {
            let bytes = decode_base64(secret).ok_or_else(|| invalid("whsec_"))?;
            if bytes.is_empty() {
                return Err(VerifyError::Key("whsec_ secret is empty".into()));
            }
            return Ok(Key::Secret(bytes));
        }
        if let Some(seed) = text.strip_prefix("whsk_") {
            let seed = decode_base64(seed)
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                .ok_or_else(|| invalid("whsk_"))?;
            return Ok(Key::Signing(Box::new(SigningKey::from_bytes(&seed))));
        }
        if let Some(public) = text.strip_prefix("whpk_") {
            let public = decode_base64(public)
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                .and_then(|bytes| VerifyingKey::from_bytes(&bytes).ok())
                .ok_or_else(|| invalid("whpk_"))?;
            return Ok(Key::Public(public));
        }
        Err(VerifyError::Key(
            "a Standard Webhooks key starts with whsec_, whsk_ or whpk_".into(),
        ))
    }

    /// The `webhook-signature` item for a message: `v1,<base64>` or `v1a,<base64>`.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> Option<String> {
        let content = signed_content(id, timestamp, body);
        match self {
            Key::Secret(secret) => {
                let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
                mac.update(&content);
                Some(format!(
                    "v1,{}",
                    STANDARD.encode(mac.finalize().into_bytes())
                ))
            }
            Key::Signing(key) => Some(format!(
                "v1a,{}",
                STANDARD.encode(key.sign(&content).to_bytes())
            )),
            Key::Public(_) => None,
        }
    }

    fn verifies(&self, version: &str, signature: &[u8], content: &[u8]) -> bool {
        let ed25519 = |public: &VerifyingKey| {
            <[u8; 64]>::try_from(signature).is_ok_and(|bytes| {
                public
                    .verify(content, &ed25519_dalek::Signature::from_bytes(&bytes))
                    .is_ok()
            })
        };
        match (self, version) {
            (Key::Secret(secret), "v1") => hmac_matches(secret, &[content], signature),
            (Key::Signing(key), "v1a") => ed25519(&key.verifying_key()),
            (Key::Public(public), "v1a") => ed25519(public),
            _ => false,
        }
    }
}

fn signed_content(id: &str, timestamp: u64, body: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(id.len() + body.len() + 24);
    content.extend_from_slice(id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(timestamp.to_string().as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    content
}

/// Verifies a Standard Webhooks request.
pub(crate) fn verify(inbound: Inbound<'_>, policy: Policy<'_>) -> Result<Verified, VerifyError> {
    let id = header(&inbound, "webhook-id")?;
    let timestamp = header(&inbound, "webhook-timestamp")?;
    let signatures = header(&inbound, "webhook-signature")?;
    let seconds: u64 = timestamp
        .parse()
        .map_err(|_| VerifyError::Malformed("webhook-timestamp is not Unix seconds".into()))?;
    let keys = keys(&policy)
        .map(Key::parse)
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Err(VerifyError::Key("no Standard Webhooks key".into()));
    }
    let content = signed_content(id, seconds, inbound.body);
    let verified = signatures.split_whitespace().any(|item| {
        let Some((version, encoded)) = item.split_once(',') else {
            return false;
        };
        let Some(signature) = decode_base64(encoded) else {
            return false;
        };
        keys.iter()
            .any(|key| key.verifies(version, &signature, &content))
    });
    if !verified {
        return Err(VerifyError::Signature);
    }
    let signed_at = signed_time(timestamp, "webhook-timestamp", &policy)?;
    let data = normalize::json_body(inbound.body)?;
    let event_type = normalize::string_at(&data, &["type"]).unwrap_or_else(|| "event".to_owned());
    Ok(Parts {
        delivery_id: id.to_owned(),
        event_type,
        subject: None,
        signed_at: Some(signed_at),
        data,
    }
    .into_verified(&inbound, &["webhook-id", "webhook-timestamp"]))
}
