//! Every scheme against its publisher's documented test vector, and refused when the body is
//! tampered with, the key is wrong, the timestamp is stale, or a header is missing.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use switchyard_webhooks::standard::Key;
use switchyard_webhooks::{
    Answer, CertificateFetcher, Inbound, Policy, Source, Verified, Verifier, VerifyError,
};
use url::Url;

/// Serves the fixture certificates for their URLs.
#[derive(Debug)]
struct FixtureCertificates;

#[async_trait]
impl CertificateFetcher for FixtureCertificates {
    async fn certificate(&self, url: &Url) -> Result<Vec<u8>, String> {
        let file = if url.path().ends_with("-selfsigned.pem") {
            "selfsigned_sns_cert.pem"
        } else {
            "sns_cert.pem"
        };
        Ok(std::fs::read(fixture(file)).expect("fixture"))
    }
}

fn fixture(name: &str) -> String {
    format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
    }
    map
}

fn policy<'a>(source: Source, keys: &'a str, now: SystemTime) -> Policy<'a> {
    Policy {
        keys,
        tolerance: source.default_tolerance(),
        sns_topic_arn: None,
        now,
    }
}

async fn verify(
    source: Source,
    headers: &HeaderMap,
    body: &[u8],
    policy: Policy<'_>,
) -> Result<Verified, VerifyError> {
    Verifier::new(Arc::new(FixtureCertificates))
        .verify(
            source,
            Inbound {
                headers,
                query: None,
                body,
            },
            policy,
        )
        .await
}

/// docs.github.com, "Validating webhook deliveries", "Testing the webhook payload validation".
#[tokio::test]
async fn github_documented_vector() {
    let secret = "It's a Secret to Everybody";
    let signature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    let body = br#"Hello, World!"#;
    let now = SystemTime::now();
    let good = headers(&[
        ("x-hub-signature-256", signature),
        ("x-github-event", "ping"),
        ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
    ]);
    // The documented payload is not JSON; the signature check comes first, then the body's.
    assert!(matches!(
        verify(
            Source::GitHub,
            &good,
            body,
            policy(Source::GitHub, secret, now)
        )
        .await,
        Err(VerifyError::Malformed(_))
    ));
    // ...and with another secret the same request fails on its signature, before its body.
    assert!(matches!(
        verify(
            Source::GitHub,
            &good,
            body,
            policy(Source::GitHub, "another secret", now)
        )
        .await,
        Err(VerifyError::Signature)
    ));
    let payload = br#"{"zen":"Design for failure.","hook_id":1,"repository":{"full_name":"octo/hello"},"action":"created"}"#;
    let signed = format!("sha256={}", hex_hmac(secret.as_bytes(), payload));
    let ok = headers(&[
        ("x-hub-signature-256", &signed),
        ("x-github-event", "ping"),
        ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
    ]);
    let verified = verify(
        Source::GitHub,
        &ok,
        payload,
        policy(Source::GitHub, secret, now),
    )
    .await
    .expect("verifies");
    assert_eq!(verified.delivery_id, "72d3162e-cc78-11e3-81ab-4c9367dc0958");
    assert_eq!(verified.event_type, "ping.created");
    assert_eq!(verified.subject.as_deref(), Some("octo/hello"));
    assert_eq!(verified.answer, Answer::Accepted);

    // Rotation: the old secret on one line, the new on the next; either verifies.
    let rotating = format!("old-secret\n{secret}\n");
    assert!(
        verify(
            Source::GitHub,
            &ok,
            payload,
            policy(Source::GitHub, &rotating, now)
        )
        .await
        .is_ok()
    );
    assert_eq!(
        verify(
            Source::GitHub,
            &ok,
            b"{}",
            policy(Source::GitHub, secret, now)
        )
        .await,
        Err(VerifyError::Signature),
        "tampered body"
    );
    assert_eq!(
        verify(
            Source::GitHub,
            &ok,
            payload,
            policy(Source::GitHub, "wrong", now)
        )
        .await,
        Err(VerifyError::Signature),
        "wrong secret"
    );
    assert_eq!(
        verify(
            Source::GitHub,
            &headers(&[("x-github-event", "ping")]),
            payload,
            policy(Source::GitHub, secret, now)
        )
        .await,
        Err(VerifyError::MissingHeader("x-hub-signature-256"))
    );
}

fn hex_hmac(key: &[u8], message: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("key");
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn the_github_vector_itself() {
    // The documented vector, checked on its own: the signature over "Hello, World!".
    assert_eq!(
        hex_hmac(b"It's a Secret to Everybody", b"Hello, World!"),
        "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    );
}

#[tokio::test]
async fn gitlab_token() {
    let body = br#"{"object_kind":"push","project":{"path_with_namespace":"group/app"}}"#;
    let now = SystemTime::now();
    let sent = headers(&[
        ("x-gitlab-token", "s3cret-token"),
        ("x-gitlab-event", "Push Hook"),
        ("idempotency-key", "f5e5f430-f57b-4e6e-9fac-d9128cd7232f"),
    ]);
    let verified = verify(
        Source::GitLab,
        &sent,
        body,
        policy(Source::GitLab, "s3cret-token", now),
    )
    .await
    .expect("verifies");
    assert_eq!(verified.delivery_id, "f5e5f430-f57b-4e6e-9fac-d9128cd7232f");
    assert_eq!(verified.event_type, "push");
    assert_eq!(verified.subject.as_deref(), Some("group/app"));
    assert_eq!(
        verify(
            Source::GitLab,
            &sent,
            body,
            policy(Source::GitLab, "s3cret-tokeN", now)
        )
        .await,
        Err(VerifyError::Signature)
    );
}

/// api.slack.com, "Verifying requests from Slack" (also Slack's python SDK test).
const SLACK_BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";

#[tokio::test]
async fn slack_documented_vector() {
    let secret = "8f742231b10e8888abcd99yyyzzz85a5";
    let sent = headers(&[
        ("x-slack-request-timestamp", "1531420618"),
        (
            "x-slack-signature",
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
        ),
        ("content-type", "application/x-www-form-urlencoded"),
    ]);
    let verified = verify(
        Source::Slack,
        &sent,
        SLACK_BODY.as_bytes(),
        policy(Source::Slack, secret, at(1_531_420_618 + 60)),
    )
    .await
    .expect("verifies");
    assert_eq!(verified.event_type, "slash_command");
    assert_eq!(verified.subject.as_deref(), Some("T1DC2JH3J"));
    assert_eq!(verified.data["command"], "/webhook-collect");
    assert_eq!(verified.signed_at, Some(at(1_531_420_618)));

    assert_eq!(
        verify(
            Source::Slack,
            &sent,
            SLACK_BODY.as_bytes(),
            policy(Source::Slack, secret, at(1_531_420_618 + 301))
        )
        .await,
        Err(VerifyError::Stale {
            tolerance_secs: 300
        }),
        "older than five minutes"
    );
    let mut tampered = SLACK_BODY.to_owned();
    tampered.push('x');
    assert_eq!(
        verify(
            Source::Slack,
            &sent,
            tampered.as_bytes(),
            policy(Source::Slack, secret, at(1_531_420_618))
        )
        .await,
        Err(VerifyError::Signature)
    );
}

#[tokio::test]
async fn slack_url_verification_is_answered_with_its_challenge() {
    let secret = "8f742231b10e8888abcd99yyyzzz85a5";
    let body = br#"{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    let now = 1_700_000_000u64;
    let mut signed = b"v0:1700000000:".to_vec();
    signed.extend_from_slice(body);
    let signature = format!("v0={}", hex_hmac(secret.as_bytes(), &signed));
    let sent = headers(&[
        ("x-slack-request-timestamp", "1700000000"),
        ("x-slack-signature", &signature),
        ("content-type", "application/json"),
    ]);
    let verified = verify(
        Source::Slack,
        &sent,
        body,
        policy(Source::Slack, secret, at(now)),
    )
    .await
    .expect("verifies");
    assert_eq!(
        verified.answer,
        Answer::Json(json!({"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}))
    );
}

/// RFC 8032 test 1's key: Discord publishes no vector.
const DISCORD_PUBLIC_KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
const DISCORD_PING: &str = r#"{"id":"787053080478613555","token":"ThisIsATokenFromDiscordThatIsVeryLong","type":1,"version":1}"#;
const DISCORD_SIGNATURE: &str = "f0bd878adcef1f6d475c9644421905bd02b5de38e0d3ecfc6f58a711962c69ccc8dd7c9db312f9bdf08b1e1b8182e27a844da728c5e0dbb5507bf9931c1ed80b";

#[tokio::test]
async fn discord_ping_is_answered_pong() {
    let sent = headers(&[
        ("x-signature-ed25519", DISCORD_SIGNATURE),
        ("x-signature-timestamp", "1700000000"),
    ]);
    let verified = verify(
        Source::Discord,
        &sent,
        DISCORD_PING.as_bytes(),
        policy(Source::Discord, DISCORD_PUBLIC_KEY, at(1_700_000_010)),
    )
    .await
    .expect("verifies");
    assert_eq!(verified.answer, Answer::Json(json!({"type": 1})));
    assert_eq!(verified.delivery_id, "787053080478613555");
    assert_eq!(
        verify(
            Source::Discord,
            &sent,
            DISCORD_PING.replace("613555", "613556").as_bytes(),
            policy(Source::Discord, DISCORD_PUBLIC_KEY, at(1_700_000_010))
        )
        .await,
        Err(VerifyError::Signature),
        "Discord sends bad signatures on purpose; they must be refused"
    );
    assert_eq!(
        verify(
            Source::Discord,
            &sent,
            DISCORD_PING.as_bytes(),
            policy(
                Source::Discord,
                DISCORD_PUBLIC_KEY,
                at(1_700_000_000 + 3600)
            )
        )
        .await,
        Err(VerifyError::Stale {
            tolerance_secs: 300
        })
    );
    assert!(matches!(
        verify(
            Source::Discord,
            &sent,
            DISCORD_PING.as_bytes(),
            policy(Source::Discord, "not-hex", at(1_700_000_000))
        )
        .await,
        Err(VerifyError::Key(_))
    ));
}

#[tokio::test]
async fn sendgrid_sdk_vectors() {
    let single_key = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw+2fNNRaINXvVpiglSI8eNEc6wEA3F+g==";
    let single = std::fs::read(fixture("sg_single.bin")).expect("fixture");
    let sent = headers(&[
        (
            "x-twilio-email-event-webhook-signature",
            "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM+uOe5W0JuG+luQAbPIqHh89M15TluLtEZtM=",
        ),
        ("x-twilio-email-event-webhook-timestamp", "1600112502"),
    ]);
    let now = at(1_600_112_502);
    let verified = verify(
        Source::SendGrid,
        &sent,
        &single,
        policy(Source::SendGrid, single_key, now),
    )
    .await
    .expect("verifies");
    assert_eq!(verified.data[0]["event"], "dropped");

    // The same key as PEM.
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n{}\n-----END PUBLIC KEY-----\n",
        &single_key[..64],
        &single_key[64..]
    );
    assert!(
        verify(
            Source::SendGrid,
            &sent,
            &single,
            policy(Source::SendGrid, &pem, now)
        )
        .await
        .is_ok()
    );
    // The trailing CRLF is signed.
    assert_eq!(
        verify(
            Source::SendGrid,
            &sent,
            &single[..single.len() - 2],
            policy(Source::SendGrid, single_key, now)
        )
        .await,
        Err(VerifyError::Signature)
    );
    let wrong_key = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqTxd43gyp8IOEto2LdIfjRQrIbsd4SXZkLW6jDutdhXSJCWHw8REntlo7aNDthvj+y7GjUuFDb/R1NGe1OPzpA==";
    assert_eq!(
        verify(
            Source::SendGrid,
            &sent,
            &single,
            policy(Source::SendGrid, wrong_key, now)
        )
        .await,
        Err(VerifyError::Signature)
    );

    let multi_key = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEQ4LIFtWztlsF7skFqOncjD1lun4H5w8XOhyOArHW9RcIx/FfEzx6cikC/yPfUvwaX/JScE7Fc9CJD2afQ9Ok3Q==";
    let multi = std::fs::read(fixture("sg_multi.bin")).expect("fixture");
    let sent = headers(&[
        (
            "x-twilio-email-event-webhook-signature",
            "MEYCIQC/I4o6vCgqRYrTljjoVWB/GRWNtxeePlLMHr3x9ETeRQIhAIpV+03nREPTTHWSW0wIOA0EoMPdcNgXa70yCaqDJlu5",
        ),
        ("x-twilio-email-event-webhook-timestamp", "1619651159"),
    ]);
    let verified = verify(
        Source::SendGrid,
        &sent,
        &multi,
        policy(Source::SendGrid, multi_key, at(1_619_651_159)),
    )
    .await
    .expect("verifies");
    assert_eq!(verified.data.as_array().map(Vec::len), Some(2));
    assert_eq!(
        verify(
            Source::SendGrid,
            &sent,
            &multi,
            policy(Source::SendGrid, multi_key, at(1_619_651_159 + 3600))
        )
        .await,
        Err(VerifyError::Stale {
            tolerance_secs: 300
        })
    );
}

fn sns_policy<'a>(topic: &'a str, now: SystemTime) -> Policy<'a> {
    Policy {
        keys: "",
        tolerance: None,
        sns_topic_arn: Some(topic),
        now,
    }
}

#[tokio::test]
async fn sns_messages_signed_by_aws_verify_with_versions_1_and_2() {
    let fixtures: Vec<Value> =
        serde_json::from_slice(&std::fs::read(fixture("sns_fixtures.json")).expect("fixture"))
            .expect("json");
    // The certificate was valid from 2021-09-07 to 2022-08-17; the messages are of 2022-07-28.
    let then = humantime::parse_rfc3339("2022-07-29T00:00:00Z").expect("time");
    for message in &fixtures {
        let body = serde_json::to_vec(message).expect("json");
        let topic = message["TopicArn"].as_str().expect("topic");
        let verified = verify(
            Source::Sns,
            &HeaderMap::new(),
            &body,
            sns_policy(topic, then),
        )
        .await
        .unwrap_or_else(|err| panic!("{}: {err}", message["MessageId"]));
        assert_eq!(
            verified.delivery_id,
            message["MessageId"].as_str().expect("id")
        );
        assert_eq!(verified.event_type, "notification");

        let mut tampered = message.clone();
        tampered["Message"] = json!("Hello world!");
        let body = serde_json::to_vec(&tampered).expect("json");
        assert_eq!(
            verify(
                Source::Sns,
                &HeaderMap::new(),
                &body,
                sns_policy(topic, then)
            )
            .await,
            Err(VerifyError::Signature)
        );
    }
    let message = &fixtures[0];
    let body = serde_json::to_vec(message).expect("json");
    let topic = message["TopicArn"].as_str().expect("topic");
    assert_eq!(
        verify(
            Source::Sns,
            &HeaderMap::new(),
            &body,
            sns_policy("arn:aws:sns:us-east-2:1:other", then)
        )
        .await,
        Err(VerifyError::Topic),
        "another topic"
    );
    assert_eq!(
        verify(
            Source::Sns,
            &HeaderMap::new(),
            &body,
            sns_policy(topic, SystemTime::now())
        )
        .await,
        Err(VerifyError::Signature),
        "the certificate has expired"
    );
    for url in [
        "https://sns.us-east-2.amazonaws.com.evil.example/cert.pem",
        "http://sns.us-east-2.amazonaws.com/cert.pem",
        "https://evil.example/cert.pem",
        "https://sns.us-east-2.amazonaws.com/cert.txt",
    ] {
        let mut forged = message.clone();
        forged["SigningCertURL"] = json!(url);
        let body = serde_json::to_vec(&forged).expect("json");
        assert!(
            matches!(
                verify(
                    Source::Sns,
                    &HeaderMap::new(),
                    &body,
                    sns_policy(topic, then)
                )
                .await,
                Err(VerifyError::Malformed(_))
            ),
            "{url} must not be fetched"
        );
    }
}

#[tokio::test]
async fn sns_subscription_confirmation_names_the_url_to_visit() {
    let body = std::fs::read(fixture("sns_subscription_confirmation.json")).expect("fixture");
    let now = humantime::parse_rfc3339("2026-12-01T00:00:00Z").expect("time");
    let verified = verify(
        Source::Sns,
        &HeaderMap::new(),
        &body,
        sns_policy("arn:aws:sns:us-west-2:123456789012:MyTopic", now),
    )
    .await
    .expect("verifies");
    assert_eq!(verified.event_type, "subscription_confirmation");
    let url = verified.confirm_subscription.expect("a URL to visit");
    assert_eq!(url.host_str(), Some("sns.us-west-2.amazonaws.com"));
}

#[tokio::test]
async fn jenkins_token_from_header_bearer_or_query() {
    let body = br#"{"name":"deploy","build":{"number":7,"phase":"COMPLETED"}}"#;
    let now = SystemTime::now();
    for sent in [
        headers(&[("authorization", "Bearer tok-123")]),
        headers(&[("x-jenkins-token", "tok-123")]),
    ] {
        let verified = verify(
            Source::Jenkins,
            &sent,
            body,
            policy(Source::Jenkins, "tok-123", now),
        )
        .await
        .expect("verifies");
        assert_eq!(verified.event_type, "build.completed");
        assert_eq!(verified.subject.as_deref(), Some("deploy"));
    }
    let none = HeaderMap::new();
    let verifier = Verifier::new(Arc::new(FixtureCertificates));
    let inbound = Inbound {
        headers: &none,
        query: Some("token=tok-123"),
        body,
    };
    assert!(
        verifier
            .verify(
                Source::Jenkins,
                inbound,
                policy(Source::Jenkins, "tok-123", now)
            )
            .await
            .is_ok()
    );
    assert_eq!(
        verify(
            Source::Jenkins,
            &headers(&[("authorization", "Bearer tok-124")]),
            body,
            policy(Source::Jenkins, "tok-123", now)
        )
        .await,
        Err(VerifyError::Signature)
    );
}

/// The vector every Standard Webhooks reference library tests.
const STANDARD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const STANDARD_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const STANDARD_TIMESTAMP: u64 = 1_614_265_330;
const STANDARD_PAYLOAD: &str = r#"{"test": 2432232314}"#;
const STANDARD_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

#[tokio::test]
async fn standard_webhooks_reference_vector() {
    let key = Key::parse(STANDARD_SECRET).expect("key");
    assert_eq!(
        key.sign(STANDARD_ID, STANDARD_TIMESTAMP, STANDARD_PAYLOAD.as_bytes())
            .as_deref(),
        Some(STANDARD_SIGNATURE)
    );
    let now = at(STANDARD_TIMESTAMP);
    let timestamp = STANDARD_TIMESTAMP.to_string();
    // Several signatures, as during a rotation: unknown versions and wrong ones are skipped.
    let rotating = format!(
        "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= {STANDARD_SIGNATURE}"
    );
    for signature in [STANDARD_SIGNATURE, rotating.as_str()] {
        let sent = headers(&[
            ("webhook-id", STANDARD_ID),
            ("webhook-timestamp", &timestamp),
            ("webhook-signature", signature),
        ]);
        let verified = verify(
            Source::StandardWebhooks,
            &sent,
            STANDARD_PAYLOAD.as_bytes(),
            policy(Source::StandardWebhooks, STANDARD_SECRET, now),
        )
        .await
        .expect("verifies");
        assert_eq!(verified.delivery_id, STANDARD_ID);
    }
    let sent = |signature: &str| {
        headers(&[
            ("webhook-id", STANDARD_ID),
            ("webhook-timestamp", &timestamp),
            ("webhook-signature", signature),
        ])
    };
    assert_eq!(
        verify(
            Source::StandardWebhooks,
            &sent("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="),
            STANDARD_PAYLOAD.as_bytes(),
            policy(Source::StandardWebhooks, STANDARD_SECRET, now)
        )
        .await,
        Err(VerifyError::Signature)
    );
    for skew in [301i64, -301] {
        let now = at(STANDARD_TIMESTAMP.checked_add_signed(skew).expect("time"));
        assert_eq!(
            verify(
                Source::StandardWebhooks,
                &sent(STANDARD_SIGNATURE),
                STANDARD_PAYLOAD.as_bytes(),
                policy(Source::StandardWebhooks, STANDARD_SECRET, now)
            )
            .await,
            Err(VerifyError::Stale {
                tolerance_secs: 300
            }),
            "{skew} s away"
        );
    }
    // Unpadded secrets, as the reference libraries accept them.
    for unpadded in [
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwBr",
    ] {
        assert!(Key::parse(unpadded).is_ok(), "{unpadded}");
    }
    assert!(Key::parse("whsec_").is_err());
}

#[tokio::test]
async fn standard_webhooks_v1a_ed25519() {
    // RFC 8032 test 1's seed and public key.
    let signing = Key::parse("whsk_nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=").expect("key");
    let signature = signing
        .sign(STANDARD_ID, STANDARD_TIMESTAMP, STANDARD_PAYLOAD.as_bytes())
        .expect("signs");
    assert_eq!(
        signature,
        "v1a,fldxM4gAKugP6nnt1hdz3sgGfZ6d99nzrMFnZOELIxbzEHoVmAb2ADpkJK7zgPePmPsle0zV9jSeGlHFG2NVAw=="
    );
    let timestamp = STANDARD_TIMESTAMP.to_string();
    let sent = headers(&[
        ("webhook-id", STANDARD_ID),
        ("webhook-timestamp", &timestamp),
        ("webhook-signature", &signature),
    ]);
    let public = "whpk_11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
    assert!(
        verify(
            Source::StandardWebhooks,
            &sent,
            STANDARD_PAYLOAD.as_bytes(),
            policy(Source::StandardWebhooks, public, at(STANDARD_TIMESTAMP))
        )
        .await
        .is_ok()
    );
    // A v1a signature is not checked against an HMAC secret.
    assert_eq!(
        verify(
            Source::StandardWebhooks,
            &sent,
            STANDARD_PAYLOAD.as_bytes(),
            policy(
                Source::StandardWebhooks,
                STANDARD_SECRET,
                at(STANDARD_TIMESTAMP)
            )
        )
        .await,
        Err(VerifyError::Signature)
    );
}
