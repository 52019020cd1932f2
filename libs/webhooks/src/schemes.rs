//! The schemes that need no network: GitHub, GitLab, Slack, Discord, SendGrid, Jenkins.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::normalize::{self, Parts};
use crate::{
    Answer, Inbound, Policy, Verified, VerifyError, digest_id, header, keys, optional_header,
    secrets_equal, signed_time,
};

type HmacSha256 = Hmac<Sha256>;

/// Whether the HMAC-SHA256 of `parts` under `key` is `signature`, compared in constant time.
pub(crate) fn hmac_matches(key: &[u8], parts: &[&[u8]], signature: &[u8]) -> bool {
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return false;
    };
    for part in parts {
        mac.update(part);
    }
    mac.verify_slice(signature).is_ok()
}

/// <https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries>
pub(crate) fn github(inbound: Inbound<'_>, policy: Policy<'_>) -> Result<Verified, VerifyError> {
    let signature = header(&inbound, "x-hub-signature-256")?;
    let signature = signature
        .strip_prefix("sha256=")
        .and_then(|hex_digits| hex::decode(hex_digits).ok())
        .ok_or_else(|| {
            VerifyError::Malformed("X-Hub-Signature-256 is not sha256=<hex digest>".into())
        })?;
    if !keys(&policy).any(|key| hmac_matches(key.as_bytes(), &[inbound.body], &signature)) {
        return Err(VerifyError::Signature);
    }
    let delivery_id = header(&inbound, "x-github-delivery")?.to_owned();
    let event = header(&inbound, "x-github-event")?;
    let data = normalize::json_body(inbound.body)?;
    let event_type = match data.get("action").and_then(Value::as_str) {
        Some(action) => format!("{event}.{action}"),
        None => event.to_owned(),
    };
    let subject = normalize::string_at(&data, &["repository", "full_name"])
        .or_else(|| normalize::string_at(&data, &["organization", "login"]));
    Ok(Parts {
        delivery_id,
        event_type,
        subject,
        signed_at: None,
        data,
    }
    .into_verified(
        &inbound,
        &[
            "x-github-event",
            "x-github-delivery",
            "x-github-hook-id",
            "x-github-hook-installation-target-type",
            "x-github-hook-installation-target-id",
        ],
    ))
}

/// <https://docs.gitlab.com/user/project/integrations/webhooks/>: the secret token, sent as
/// is; `Idempotency-Key` (GitLab 17.4 and later) is the same on every retry.
pub(crate) fn gitlab(inbound: Inbound<'_>, policy: Policy<'_>) -> Result<Verified, VerifyError> {
    let token = header(&inbound, "x-gitlab-token")?;
    if !keys(&policy).any(|key| secrets_equal(token.as_bytes(), key.as_bytes())) {
        return Err(VerifyError::Signature);
    }
    let data = normalize::json_body(inbound.body)?;
    let delivery_id = optional_header(&inbound, "idempotency-key")
        .or_else(|| optional_header(&inbound, "x-gitlab-event-uuid"))
        .map_or_else(|| digest_id(inbound.body), str::to_owned);
    let event_type = data
        .get("object_kind")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| optional_header(&inbound, "x-gitlab-event").map(str::to_owned))
        .unwrap_or_else(|| "gitlab".to_owned());
    let subject = normalize::string_at(&data, &["project", "path_with_namespace"]);
    Ok(Parts {
        delivery_id,
        event_type,
        subject,
        signed_at: None,
        data,
    }
    .into_verified(
        &inbound,
        &[
            "x-gitlab-event",
            "x-gitlab-event-uuid",
            "x-gitlab-webhook-uuid",
            "x-gitlab-instance",
            "idempotency-key",
        ],
    ))
}

/// <https://api.slack.com/authentication/verifying-requests-from-slack>: HMAC-SHA256 of
/// `v0:{timestamp}:{body}` with the signing secret, hex, prefixed `v0=`.
pub(crate) fn slack(inbound: Inbound<'_>, policy: Policy<'_>) -> Result<Verified, VerifyError> {
    let timestamp = header(&inbound, "x-slack-request-timestamp")?;
    let signature_header = header(&inbound, "x-slack-signature")?;
    let signature = signature_header
        .strip_prefix("v0=")
        .and_then(|hex_digits| hex::decode(hex_digits).ok())
        .ok_or_else(|| VerifyError::Malformed("X-Slack-Signature is not v0=<hex digest>".into()))?;
    let parts: [&[u8]; 4] = [b"v0:", timestamp.as_bytes(), b":", inbound.body];
    if !keys(&policy).any(|key| hmac_matches(key.as_bytes(), &parts, &signature)) {
        return Err(VerifyError::Signature);
    }
    let signed_at = signed_time(timestamp, "X-Slack-Request-Timestamp", &policy)?;

    let data = normalize::slack_body(&inbound)?;
    let outer = data.get("type").and_then(Value::as_str);
    let mut answer = Answer::Accepted;
    let event_type = match outer {
        Some("url_verification") => {
            let challenge = data
                .get("challenge")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    VerifyError::Malformed("url_verification without challenge".into())
                })?;
            answer = Answer::Json(json!({ "challenge": challenge }));
            "url_verification".to_owned()
        }
        Some("event_callback") => match normalize::string_at(&data, &["event", "type"]) {
            Some(inner) => format!("event_callback.{inner}"),
            None => "event_callback".to_owned(),
        },
        Some(other) => other.to_owned(),
        None if data.get("command").is_some() => "slash_command".to_owned(),
        None => "slack".to_owned(),
    };
    // Events carry an id that retries repeat; commands and interactions do not, and there the
    // signature (over timestamp and body) is what a replay repeats.
    let delivery_id = data
        .get("event_id")
        .and_then(Value::as_str)
        .map_or_else(|| format!("v0={}", hex::encode(&signature)), str::to_owned);
    let subject = normalize::string_at(&data, &["team_id"])
        .or_else(|| normalize::string_at(&data, &["team", "id"]));
    let mut verified = Parts {
        delivery_id,
        event_type,
        subject,
        signed_at: Some(signed_at),
        data,
    }
    .into_verified(
        &inbound,
        &[
            "x-slack-request-timestamp",
            "x-slack-retry-num",
            "x-slack-retry-reason",
        ],
    );
    verified.answer = answer;
    Ok(verified)
}

/// <https://discord.com/developers/docs/interactions/overview>: Ed25519 over the timestamp
/// header followed by the body, with the application's public key.
///
/// What Discord gets back: a PING is answered PONG; event webhooks get 204. Other interactions
/// must be answered within three seconds, before anything downstream has seen them, so they are
/// deferred and the consumer follows up with the interaction token: a command gets
/// `DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE` (5), a component or modal `DEFERRED_UPDATE_MESSAGE`
/// (6), an autocomplete no choices (8).
pub(crate) fn discord(inbound: Inbound<'_>, policy: Policy<'_>) -> Result<Verified, VerifyError> {
    use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};

    let timestamp = header(&inbound, "x-signature-timestamp")?;
    let signature = header(&inbound, "x-signature-ed25519")?;
    let signature = hex::decode(signature)
        .ok()
        .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
        .map(|bytes| Signature::from_bytes(&bytes))
        .ok_or_else(|| VerifyError::Malformed("X-Signature-Ed25519 is not 64 hex bytes".into()))?;
    let mut message = Vec::with_capacity(timestamp.len() + inbound.body.len());
    message.extend_from_slice(timestamp.as_bytes());
    message.extend_from_slice(inbound.body);
    let mut any_key = false;
    let mut verified = false;
    for key in keys(&policy) {
        let key = hex::decode(key)
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .and_then(|bytes| VerifyingKey::from_bytes(&bytes).ok())
            .ok_or_else(|| VerifyError::Key("a Discord public key is 32 hex bytes".into()))?;
        any_key = true;
        if key.verify(&message, &signature).is_ok() {
            verified = true;
            break;
        }
    }
    if !any_key {
        return Err(VerifyError::Key("no Discord public key".into()));
    }
    if !verified {
        return Err(VerifyError::Signature);
    }
    let signed_at = signed_time(timestamp, "X-Signature-Timestamp", &policy)?;

    let data = normalize::json_body(inbound.body)?;
    let kind = data.get("type").and_then(Value::as_u64);
    let is_event_webhook = data.get("token").is_none();
    let (event_type, answer) = if is_event_webhook {
        let event_type = match kind {
            Some(0) => "ping".to_owned(),
            _ => normalize::string_at(&data, &["event", "type"])
                .unwrap_or_else(|| "event".to_owned()),
        };
        (event_type, Answer::NoContent)
    } else {
        match kind {
            Some(1) => ("ping".to_owned(), Answer::Json(json!({ "type": 1 }))),
            Some(2) => (
                "application_command".to_owned(),
                Answer::Json(json!({ "type": 5 })),
            ),
            Some(3) => (
                "message_component".to_owned(),
                Answer::Json(json!({ "type": 6 })),
            ),
            Some(4) => (
                "application_command_autocomplete".to_owned(),
                Answer::Json(json!({ "type": 8, "data": { "choices": [] } })),
            ),
            Some(5) => (
                "modal_submit".to_owned(),
                Answer::Json(json!({ "type": 6 })),
            ),
            _ => {
                return Err(VerifyError::Malformed(
                    "unknown Discord interaction type".into(),
                ));
            }
        }
    };
    let delivery_id = data
        .get("id")
        .and_then(Value::as_str)
        .map_or_else(|| digest_id(&message), str::to_owned);
    let subject = normalize::string_at(&data, &["guild_id"])
        .or_else(|| normalize::string_at(&data, &["application_id"]));
    let mut verified = Parts {
        delivery_id,
        event_type,
        subject,
        signed_at: Some(signed_at),
        data,
    }
    .into_verified(&inbound, &[]);
    verified.answer = answer;
    Ok(verified)
}

/// SendGrid's signed Event Webhook: ECDSA P-256 with SHA-256 over the timestamp header followed
/// by the body; the signature is base64 DER, the key base64 SubjectPublicKeyInfo DER (or PEM).
pub(crate) fn sendgrid(inbound: Inbound<'_>, policy: Policy<'_>) -> Result<Verified, VerifyError> {
    use p256::ecdsa::signature::Verifier as _;
    use p256::ecdsa::{DerSignature, VerifyingKey};
    use p256::pkcs8::DecodePublicKey;

    let timestamp = header(&inbound, "x-twilio-email-event-webhook-timestamp")?;
    let signature_text = header(&inbound, "x-twilio-email-event-webhook-signature")?;
    let signature = BASE64
        .decode(signature_text)
        .ok()
        .and_then(|der| DerSignature::from_bytes(&der).ok())
        .ok_or_else(|| {
            VerifyError::Malformed(
                "X-Twilio-Email-Event-Webhook-Signature is not a base64 DER ECDSA signature".into(),
            )
        })?;
    let key_texts = pem_or_base64_keys(&policy);
    if key_texts.is_empty() {
        return Err(VerifyError::Key("no SendGrid public key".into()));
    }
    let mut message = Vec::with_capacity(timestamp.len() + inbound.body.len());
    message.extend_from_slice(timestamp.as_bytes());
    message.extend_from_slice(inbound.body);
    let mut verified = false;
    for text in &key_texts {
        let key = BASE64
            .decode(text)
            .ok()
            .and_then(|der| VerifyingKey::from_public_key_der(&der).ok())
            .ok_or_else(|| {
                VerifyError::Key("a SendGrid key is a base64 or PEM P-256 public key".into())
            })?;
        if key.verify(&message, &signature).is_ok() {
            verified = true;
            break;
        }
    }
    if !verified {
        return Err(VerifyError::Signature);
    }
    let signed_at = signed_time(timestamp, "X-Twilio-Email-Event-Webhook-Timestamp", &policy)?;
    let data = normalize::json_body(inbound.body)?;
    Ok(Parts {
        // One POST is a batch; its signature covers timestamp and body, so a replay repeats it.
        delivery_id: digest_id(&message),
        event_type: "events".to_owned(),
        subject: None,
        signed_at: Some(signed_at),
        data,
    }
    .into_verified(&inbound, &[]))
}

/// Jenkins and the tools around it send a shared token: as a bearer token, in `X-Jenkins-Token`,
/// or as the `token` query parameter (Generic Webhook Trigger's conventions).
pub(crate) fn jenkins(inbound: Inbound<'_>, policy: Policy<'_>) -> Result<Verified, VerifyError> {
    let from_query = inbound.query.and_then(|query| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "token")
            .map(|(_, value)| value.into_owned())
    });
    let token = optional_header(&inbound, "authorization")
        .and_then(|value| {
            value
                .split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim().to_owned())
        })
        .or_else(|| optional_header(&inbound, "x-jenkins-token").map(str::to_owned))
        .or(from_query)
        .ok_or(VerifyError::MissingHeader("authorization"))?;
    if !keys(&policy).any(|key| secrets_equal(token.as_bytes(), key.as_bytes())) {
        return Err(VerifyError::Signature);
    }
    let data = normalize::json_body(inbound.body)?;
    let delivery_id = optional_header(&inbound, "idempotency-key")
        .or_else(|| optional_header(&inbound, "x-request-id"))
        .map_or_else(|| digest_id(inbound.body), str::to_owned);
    let event_type = normalize::string_at(&data, &["build", "phase"])
        .map(|phase| format!("build.{}", phase.to_ascii_lowercase()))
        .unwrap_or_else(|| "jenkins".to_owned());
    let subject = normalize::string_at(&data, &["name"]);
    Ok(Parts {
        delivery_id,
        event_type,
        subject,
        signed_at: None,
        data,
    }
    .into_verified(&inbound, &["idempotency-key", "x-request-id"]))
}

/// Keys given one per line in base64, or as PEM blocks (whose base64 spans several lines).
fn pem_or_base64_keys(policy: &Policy<'_>) -> Vec<String> {
    let mut found = Vec::new();
    let mut block: Option<String> = None;
    for line in keys(policy) {
        if line.starts_with("-----BEGIN") {
            block = Some(String::new());
        } else if line.starts_with("-----END") {
            found.extend(block.take());
        } else if let Some(block) = block.as_mut() {
            block.push_str(line);
        } else {
            found.push(line.to_owned());
        }
    }
    found
}
