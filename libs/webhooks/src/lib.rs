//! Inbound webhooks, verified exactly as each sender documents it, and the Standard Webhooks
//! signature Switchyard puts on what it sends.
//!
//! [`Verifier::verify`] takes a request as it arrived (headers, query, raw body) and an endpoint's
//! [`Policy`] (its keys, timestamp tolerance, pinned SNS topic), checks the signature in constant
//! time and the signed timestamp against the tolerance, and returns a [`Verified`]: the id to
//! de-duplicate on, the normalized parts of the event (type, subject, time, data, the headers
//! kept for downstream), and the [`Answer`] the sender expects (Slack's `url_verification`
//! challenge, Discord's PONG). Nothing here stores anything or logs a key.

mod normalize;
mod schemes;
pub mod sns;
pub mod standard;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use sns::{CertificateFetcher, HttpsCertificates};

/// The senders Switchyard verifies: the `{source}` of `/hooks/{source}/{endpoint}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// GitHub: HMAC-SHA256 of the body in `X-Hub-Signature-256`.
    GitHub,
    /// GitLab: the shared secret token in `X-Gitlab-Token`.
    GitLab,
    /// Slack: the v0 signing secret over `v0:{timestamp}:{body}`.
    Slack,
    /// Discord interactions and event webhooks: Ed25519 over timestamp and body.
    Discord,
    /// SendGrid's signed Event Webhook: ECDSA P-256 over timestamp and body.
    SendGrid,
    /// Amazon SNS HTTP(S) subscriptions: RSA signatures (versions 1 and 2) with AWS's certificate.
    Sns,
    /// Jenkins: a shared token.
    Jenkins,
    /// Standard Webhooks: `v1` HMAC-SHA256 and `v1a` Ed25519.
    StandardWebhooks,
}

impl Source {
    /// Every source.
    pub const ALL: [Source; 8] = [
        Source::GitHub,
        Source::GitLab,
        Source::Slack,
        Source::Discord,
        Source::SendGrid,
        Source::Sns,
        Source::Jenkins,
        Source::StandardWebhooks,
    ];

    /// Its name in URLs and records.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::GitHub => "github",
            Source::GitLab => "gitlab",
            Source::Slack => "slack",
            Source::Discord => "discord",
            Source::SendGrid => "sendgrid",
            Source::Sns => "sns",
            Source::Jenkins => "jenkins",
            Source::StandardWebhooks => "standard-webhooks",
        }
    }

    /// The source named `name`.
    pub fn parse(name: &str) -> Option<Source> {
        Source::ALL
            .into_iter()
            .find(|source| source.as_str() == name)
    }

    /// Whether its endpoints need a key from the credentials service. SNS is verified with the
    /// certificate AWS names in each message; its endpoints pin a topic instead.
    pub fn needs_key(self) -> bool {
        self != Source::Sns
    }

    /// The timestamp tolerance used when an endpoint sets none: Slack's and Standard Webhooks'
    /// documented five minutes, applied to every sender that signs a timestamp. SNS keeps the
    /// original timestamp on retries, which go on for hours, so it is de-duplicated by message
    /// id only; GitHub, GitLab and Jenkins sign no timestamp.
    pub fn default_tolerance(self) -> Option<Duration> {
        match self {
            Source::Slack | Source::Discord | Source::SendGrid | Source::StandardWebhooks => {
                Some(Duration::from_secs(300))
            }
            Source::GitHub | Source::GitLab | Source::Sns | Source::Jenkins => None,
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request as it arrived, before anything parsed its body.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    /// Its headers.
    pub headers: &'a http::HeaderMap,
    /// Its query string, without `?`.
    pub query: Option<&'a str>,
    /// Its body, byte for byte.
    pub body: &'a [u8],
}

/// How one endpoint's requests are verified.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// The endpoint's key material, one key per line; several lines while a key is rotated, any
    /// of which verifies. What a key is depends on the source: the shared secret (GitHub, Slack),
    /// the token (GitLab, Jenkins), the hex Ed25519 public key (Discord), the base64 or PEM
    /// P-256 public key (SendGrid), `whsec_…` or `whpk_…` (Standard Webhooks).
    pub keys: &'a str,
    /// How far a signed timestamp may be from now, either way; `None` checks none.
    pub tolerance: Option<Duration>,
    /// SNS: the only topic ARN accepted.
    pub sns_topic_arn: Option<&'a str>,
    /// The time to check timestamps and certificates against.
    pub now: SystemTime,
}

/// What the sender should get back once the event is stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// `200` with an empty JSON object.
    Accepted,
    /// `204`, no body (Discord event webhooks).
    NoContent,
    /// `200` with this JSON body (Slack's challenge, Discord's PONG or deferral).
    Json(serde_json::Value),
}

/// A request that verified, taken apart.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The sender's id for this delivery, the same on a redelivery; where the sender gives none,
    /// the signature's or the body's digest, which a replay repeats too.
    pub delivery_id: String,
    /// The event's type (`push`, `pull_request.opened`, `event_callback.message`, …).
    pub event_type: String,
    /// What it is about (a repository, a channel, a topic), where the sender says.
    pub subject: Option<String>,
    /// When the sender signed or sent it, where it says.
    pub signed_at: Option<SystemTime>,
    /// The body as JSON (form bodies become objects; a body that is not JSON, a string).
    pub data: serde_json::Value,
    /// The sender's headers worth keeping for consumers (event names, delivery ids), lower-case.
    pub headers: Vec<(String, String)>,
    /// What to answer.
    pub answer: Answer,
    /// SNS: the URL to visit to confirm a subscription, checked to be AWS's.
    pub confirm_subscription: Option<url::Url>,
}

/// Why a request does not verify. The messages name headers and fields, never keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A header the scheme requires is absent.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// A header or the body is not in the scheme's format.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// No key verifies the signature, or the token does not match.
    #[error("signature does not verify")]
    Signature,
    /// The signed timestamp is outside the tolerance.
    #[error("timestamp outside the tolerance of {tolerance_secs} s")]
    Stale {
        /// The tolerance in seconds.
        tolerance_secs: u64,
    },
    /// SNS: the message is for another topic than the one pinned.
    #[error("topic not accepted by this endpoint")]
    Topic,
    /// The endpoint's key material is unusable: the operator's to fix, not the sender's.
    #[error("endpoint key unusable: {0}")]
    Key(String),
    /// SNS: the signing certificate could not be fetched; the sender should retry.
    #[error("signing certificate unavailable: {0}")]
    CertificateUnavailable(String),
}

impl VerifyError {
    /// Whether the sender is at fault (a 401 or 400), rather than the endpoint's configuration
    /// or an outage (a 5xx the sender retries).
    pub fn is_sender_fault(&self) -> bool {
        !matches!(
            self,
            VerifyError::Key(_) | VerifyError::CertificateUnavailable(_)
        )
    }
}

/// Verifies inbound webhooks; holds the SNS certificate cache.
#[derive(Debug)]
pub struct Verifier {
    sns: sns::Certificates,
}

impl Verifier {
    /// A verifier fetching SNS certificates with `certificates`.
    pub fn new(certificates: std::sync::Arc<dyn CertificateFetcher>) -> Self {
        Verifier {
            sns: sns::Certificates::new(certificates),
        }
    }

    /// Verifies `inbound` as `source` under `policy`.
    pub async fn verify(
        &self,
        source: Source,
        inbound: Inbound<'_>,
        policy: Policy<'_>,
    ) -> Result<Verified, VerifyError> {
        match source {
            Source::GitHub => schemes::github(inbound, policy),
            Source::GitLab => schemes::gitlab(inbound, policy),
            Source::Slack => schemes::slack(inbound, policy),
            Source::Discord => schemes::discord(inbound, policy),
            Source::SendGrid => schemes::sendgrid(inbound, policy),
            Source::Sns => self.sns.verify(inbound, policy).await,
            Source::Jenkins => schemes::jenkins(inbound, policy),
            Source::StandardWebhooks => standard::verify(inbound, policy),
        }
    }
}

/// The keys of a policy: its non-empty lines, trimmed.
pub(crate) fn keys<'a>(policy: &Policy<'a>) -> impl Iterator<Item = &'a str> + use<'a> {
    policy
        .keys
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
}

/// A header's value as text.
pub(crate) fn header<'a>(
    inbound: &Inbound<'a>,
    name: &'static str,
) -> Result<&'a str, VerifyError> {
    let value = inbound
        .headers
        .get(name)
        .ok_or(VerifyError::MissingHeader(name))?;
    value
        .to_str()
        .map(str::trim)
        .map_err(|_| VerifyError::Malformed(format!("{name} is not text")))
}

/// An optional header's value as text.
pub(crate) fn optional_header<'a>(inbound: &Inbound<'a>, name: &str) -> Option<&'a str> {
    inbound
        .headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
}

/// Unix seconds in a timestamp header, checked against the policy's tolerance.
pub(crate) fn signed_time(
    text: &str,
    name: &'static str,
    policy: &Policy<'_>,
) -> Result<SystemTime, VerifyError> {
    let seconds: u64 = text
        .parse()
        .map_err(|_| VerifyError::Malformed(format!("{name} is not a Unix time in seconds")))?;
    let at = UNIX_EPOCH + Duration::from_secs(seconds);
    check_tolerance(at, policy)?;
    Ok(at)
}

pub(crate) fn check_tolerance(at: SystemTime, policy: &Policy<'_>) -> Result<(), VerifyError> {
    let Some(tolerance) = policy.tolerance else {
        return Ok(());
    };
    let skew = match policy.now.duration_since(at) {
        Ok(age) => age,
        Err(ahead) => ahead.duration(),
    };
    if skew > tolerance {
        return Err(VerifyError::Stale {
            tolerance_secs: tolerance.as_secs(),
        });
    }
    Ok(())
}

/// Constant-time equality of two secrets of any length: their digests are compared, so neither
/// the content nor the length leaks through timing.
pub(crate) fn secrets_equal(given: &[u8], expected: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    Sha256::digest(given)
        .ct_eq(&Sha256::digest(expected))
        .into()
}

/// `sha256:` and the hex digest of `bytes`: the delivery id of a sender that gives none.
pub(crate) fn digest_id(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}
