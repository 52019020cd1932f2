//! Amazon SNS HTTP(S) deliveries
//! (<https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html>): RSA
//! PKCS #1 v1.5 over a canonical string of the message's fields, with SHA-1 for
//! `SignatureVersion` 1 and SHA-256 for 2, checked with the certificate at `SigningCertURL`.
//! That URL, and a confirmation's `SubscribeURL`, are only followed to an
//! `https://sns.<region>.amazonaws.com` host (the pattern AWS's own validators use), so a forged
//! message cannot make Switchyard fetch from anywhere else; the certificate's authenticity is
//! then TLS's to prove, as in AWS's validators. Certificates are cached by URL until they expire.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rsa::RsaPublicKey;
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier as _;
use serde_json::{Map, Value};
use tokio::sync::Mutex;
use url::Url;
use x509_cert::der::{DecodePem, Encode};

use crate::normalize::{self, Parts};
use crate::{Inbound, Policy, Verified, VerifyError, check_tolerance};

/// Fetches what SNS messages point at. The URL it is given has been checked to be AWS's.
#[async_trait]
pub trait CertificateFetcher: Send + Sync + std::fmt::Debug {
    /// The PEM certificate at `url`.
    async fn certificate(&self, url: &Url) -> Result<Vec<u8>, String>;
}

/// Fetches certificates over HTTPS.
#[derive(Debug, Clone)]
pub struct HttpsCertificates {
    http: reqwest::Client,
}

impl HttpsCertificates {
    /// Fetches with `http`, which should not follow redirects.
    pub fn new(http: reqwest::Client) -> Self {
        HttpsCertificates { http }
    }
}

/// The largest certificate accepted.
const MAX_CERTIFICATE_BYTES: usize = 64 * 1024;

#[async_trait]
impl CertificateFetcher for HttpsCertificates {
    async fn certificate(&self, url: &Url) -> Result<Vec<u8>, String> {
        let response = self
            .http
            .get(url.clone())
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|err| format!("fetching {url}: {err}"))?;
        if !response.status().is_success() {
            return Err(format!("fetching {url}: HTTP {}", response.status()));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|err| format!("reading {url}: {err}"))?;
        if bytes.len() > MAX_CERTIFICATE_BYTES {
            return Err(format!("{url} is larger than a certificate"));
        }
        Ok(bytes.to_vec())
    }
}

/// The public key of a certificate and its validity.
#[derive(Debug, Clone)]
struct Certificate {
    key: RsaPublicKey,
    not_before: SystemTime,
    not_after: SystemTime,
}

/// Certificates by URL.
#[derive(Debug)]
pub(crate) struct Certificates {
    fetcher: Arc<dyn CertificateFetcher>,
    cache: Mutex<HashMap<String, Certificate>>,
}

/// Bound on the certificate cache: AWS uses one certificate per region at a time.
const MAX_CACHED_CERTIFICATES: usize = 64;

/// Whether `url` is an `https://sns.<region>.amazonaws.com[.cn]/…` URL.
pub fn is_aws_sns_url(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.to_ascii_lowercase();
    let region = host
        .strip_prefix("sns.")
        .and_then(|rest| {
            rest.strip_suffix(".amazonaws.com")
                .or_else(|| rest.strip_suffix(".amazonaws.com.cn"))
        })
        .unwrap_or("");
    url.scheme() == "https"
        && url.port().is_none()
        && url.username().is_empty()
        && region.len() >= 3
        && region
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// A field of the message, under either casing SNS uses (`SigningCertURL`, `SigningCertUrl`).
fn field<'a>(message: &'a Map<String, Value>, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|name| message.get(*name).and_then(Value::as_str))
}

fn required<'a>(message: &'a Map<String, Value>, name: &str) -> Result<&'a str, VerifyError> {
    field(message, &[name])
        .ok_or_else(|| VerifyError::Malformed(format!("SNS message without {name}")))
}

/// The string SNS signs: `Name\nvalue\n` for each signed field, in this order.
fn string_to_sign(message: &Map<String, Value>, kind: &str) -> Result<String, VerifyError> {
    let names: &[&str] = if kind == "Notification" {
        &[
            "Message",
            "MessageId",
            "Subject",
            "Timestamp",
            "TopicArn",
            "Type",
        ]
    } else {
        &[
            "Message",
            "MessageId",
            "SubscribeURL",
            "Timestamp",
            "Token",
            "TopicArn",
            "Type",
        ]
    };
    let mut signed = String::new();
    for name in names {
        let value = match *name {
            "Subject" => match field(message, &["Subject"]) {
                Some(subject) => subject,
                None => continue,
            },
            "SubscribeURL" => field(message, &["SubscribeURL", "SubscribeUrl"])
                .ok_or_else(|| VerifyError::Malformed("SNS message without SubscribeURL".into()))?,
            name => required(message, name)?,
        };
        signed.push_str(name);
        signed.push('\n');
        signed.push_str(value);
        signed.push('\n');
    }
    Ok(signed)
}

fn aws_url(text: &str, what: &str) -> Result<Url, VerifyError> {
    Url::parse(text).ok().filter(is_aws_sns_url).ok_or_else(|| {
        VerifyError::Malformed(format!(
            "{what} is not an https://sns.<region>.amazonaws.com URL"
        ))
    })
}

impl Certificates {
    pub(crate) fn new(fetcher: Arc<dyn CertificateFetcher>) -> Self {
        Certificates {
            fetcher,
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn get(&self, url: &Url, now: SystemTime) -> Result<Certificate, VerifyError> {
        if let Some(cached) = self.cache.lock().await.get(url.as_str()) {
            return check_validity(cached.clone(), now);
        }
        let pem = self
            .fetcher
            .certificate(url)
            .await
            .map_err(VerifyError::CertificateUnavailable)?;
        let certificate = parse_certificate(&pem)?;
        let mut cache = self.cache.lock().await;
        if cache.len() >= MAX_CACHED_CERTIFICATES {
            cache.clear();
        }
        cache.insert(url.to_string(), certificate.clone());
        check_validity(certificate, now)
    }

    pub(crate) async fn verify(
        &self,
        inbound: Inbound<'_>,
        policy: Policy<'_>,
    ) -> Result<Verified, VerifyError> {
        let data = normalize::json_body(inbound.body)?;
        let Value::Object(message) = &data else {
            return Err(VerifyError::Malformed(
                "an SNS message is a JSON object".into(),
            ));
        };
        let kind = required(message, "Type")?;
        if !matches!(
            kind,
            "Notification" | "SubscriptionConfirmation" | "UnsubscribeConfirmation"
        ) {
            return Err(VerifyError::Malformed(format!(
                "unknown SNS message type {kind:?}"
            )));
        }
        let pinned = policy
            .sns_topic_arn
            .ok_or_else(|| VerifyError::Key("an SNS endpoint pins a topic ARN".into()))?;
        let signature = BASE64
            .decode(required(message, "Signature")?)
            .map_err(|_| VerifyError::Malformed("SNS Signature is not base64".into()))?;
        let signature = rsa::pkcs1v15::Signature::try_from(signature.as_slice())
            .map_err(|_| VerifyError::Malformed("SNS Signature is not an RSA signature".into()))?;
        let certificate_url = aws_url(
            field(message, &["SigningCertURL", "SigningCertUrl"]).ok_or_else(|| {
                VerifyError::Malformed("SNS message without SigningCertURL".into())
            })?,
            "SigningCertURL",
        )?;
        if !certificate_url.path().ends_with(".pem")
            || certificate_url.query().is_some()
            || certificate_url.fragment().is_some()
        {
            return Err(VerifyError::Malformed(
                "SigningCertURL is not a plain .pem URL".into(),
            ));
        }
        // The topic is part of what AWS signs, so comparing it first is as safe as after, and a
        // message for another topic makes no certificate fetch.
        let topic = required(message, "TopicArn")?;
        if !crate::secrets_equal(topic.as_bytes(), pinned.as_bytes()) {
            return Err(VerifyError::Topic);
        }
        let signed = string_to_sign(message, kind)?;
        let certificate = self.get(&certificate_url, policy.now).await?;
        let verifies = match required(message, "SignatureVersion")? {
            "1" => rsa::pkcs1v15::VerifyingKey::<sha1::Sha1>::new(certificate.key)
                .verify(signed.as_bytes(), &signature)
                .is_ok(),
            "2" => rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(certificate.key)
                .verify(signed.as_bytes(), &signature)
                .is_ok(),
            other => {
                return Err(VerifyError::Malformed(format!(
                    "SNS SignatureVersion {other:?} is not supported"
                )));
            }
        };
        if !verifies {
            return Err(VerifyError::Signature);
        }
        let signed_at =
            humantime::parse_rfc3339_weak(required(message, "Timestamp")?.trim_end_matches('Z'))
                .map_err(|_| {
                    VerifyError::Malformed("SNS Timestamp is not an ISO 8601 time".into())
                })?;
        check_tolerance(signed_at, &policy)?;
        let confirm_subscription = if kind == "SubscriptionConfirmation" {
            Some(aws_url(
                field(message, &["SubscribeURL", "SubscribeUrl"]).unwrap_or_default(),
                "SubscribeURL",
            )?)
        } else {
            None
        };
        let event_type = match kind {
            "Notification" => "notification",
            "SubscriptionConfirmation" => "subscription_confirmation",
            _ => "unsubscribe_confirmation",
        }
        .to_owned();
        let delivery_id = required(message, "MessageId")?.to_owned();
        let subject = Some(topic.to_owned());
        let mut verified = Parts {
            delivery_id,
            event_type,
            subject,
            signed_at: Some(signed_at),
            data: data.clone(),
        }
        .into_verified(
            &inbound,
            &["x-amz-sns-message-type", "x-amz-sns-subscription-arn"],
        );
        verified.confirm_subscription = confirm_subscription;
        Ok(verified)
    }
}

fn parse_certificate(pem: &[u8]) -> Result<Certificate, VerifyError> {
    let unusable = |why: String| VerifyError::CertificateUnavailable(why);
    let certificate = x509_cert::Certificate::from_pem(pem)
        .map_err(|err| unusable(format!("the signing certificate does not parse: {err}")))?;
    let tbs = &certificate.tbs_certificate;
    let spki = tbs
        .subject_public_key_info
        .to_der()
        .map_err(|err| unusable(format!("the certificate's key does not encode: {err}")))?;
    let key = RsaPublicKey::from_public_key_der(&spki)
        .map_err(|err| unusable(format!("the certificate's key is not RSA: {err}")))?;
    Ok(Certificate {
        key,
        not_before: UNIX_EPOCH + tbs.validity.not_before.to_unix_duration(),
        not_after: UNIX_EPOCH + tbs.validity.not_after.to_unix_duration(),
    })
}

fn check_validity(certificate: Certificate, now: SystemTime) -> Result<Certificate, VerifyError> {
    if now < certificate.not_before || now > certificate.not_after {
        return Err(VerifyError::Signature);
    }
    Ok(certificate)
}
