//! The receiver's domain with the outside world faked: SNS subscription confirmation, Discord's
//! PONG, and keys that rotate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use http::HeaderMap;
use secrecy::SecretString;
use switchyard_gateway::domain::delivery::HttpsDelivery;
use switchyard_gateway::domain::{
    EndpointKeys, EventFilter, Gateway, NewEndpoint, ReceiveError, SubscriptionConfirmer,
};
use switchyard_gateway::{GatewayConfig, Outside};
use switchyard_webhooks::{Answer, CertificateFetcher, Inbound, Source, VerifyError};
use url::Url;

#[derive(Debug, Default)]
struct Keys(Mutex<HashMap<(String, String), String>>);

#[async_trait]
impl EndpointKeys for Keys {
    async fn key(&self, tenant: &str, credential: &str) -> Result<SecretString, String> {
        self.0
            .lock()
            .expect("lock")
            .get(&(tenant.to_owned(), credential.to_owned()))
            .map(|key| SecretString::from(key.clone()))
            .ok_or_else(|| format!("{credential} not found"))
    }
}

#[derive(Debug)]
struct FixtureCertificates;

#[async_trait]
impl CertificateFetcher for FixtureCertificates {
    async fn certificate(&self, _url: &Url) -> Result<Vec<u8>, String> {
        std::fs::read(vector("selfsigned_sns_cert.pem")).map_err(|err| err.to_string())
    }
}

/// Records the URLs visited; fails the first `failures` visits.
#[derive(Debug, Default)]
struct Confirmer {
    visited: Mutex<Vec<Url>>,
    failures: Mutex<usize>,
}

#[async_trait]
impl SubscriptionConfirmer for Confirmer {
    async fn confirm(&self, url: &Url) -> Result<(), String> {
        self.visited.lock().expect("lock").push(url.clone());
        let mut failures = self.failures.lock().expect("lock");
        if *failures > 0 {
            *failures -= 1;
            return Err("connection reset".into());
        }
        Ok(())
    }
}

fn vector(name: &str) -> String {
    format!(
        "{}/../../libs/webhooks/tests/vectors/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

struct Setup {
    gateway: Gateway,
    keys: Arc<Keys>,
    confirmer: Arc<Confirmer>,
    _dir: tempfile::TempDir,
}

async fn setup(key_cache_ttl: Duration) -> Setup {
    let (db, dir) = switchyard_store::testing::sqlite_db().await.expect("db");
    let keys = Arc::new(Keys::default());
    let confirmer = Arc::new(Confirmer::default());
    let config = GatewayConfig {
        key_cache_ttl,
        ..GatewayConfig::default()
    };
    let gateway = switchyard_gateway::open(
        db,
        &config,
        Outside {
            keys: keys.clone(),
            certificates: Arc::new(FixtureCertificates),
            confirmer: confirmer.clone(),
            delivery: Arc::new(
                HttpsDelivery::new(switchyard_kit::outbound::Guard::default()).expect("client"),
            ),
            oauth: None,
            sso: None,
        },
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect("open");
    Setup {
        gateway,
        keys,
        confirmer,
        _dir: dir,
    }
}

/// A Jenkins endpoint of acme whose token is `tok`.
async fn jenkins_endpoint(setup: &Setup) -> switchyard_gateway::domain::Endpoint {
    setup
        .keys
        .0
        .lock()
        .expect("lock")
        .insert(("acme".into(), "credentials/jenkins".into()), "tok".into());
    setup
        .gateway
        .create_endpoint(
            "acme",
            NewEndpoint {
                source: Some(Source::Jenkins),
                credential: "credentials/jenkins".into(),
                display_name: String::new(),
                tolerance: None,
                sns_topic_arn: String::new(),
                request_id: None,
            },
        )
        .await
        .expect("endpoint")
}

fn inbound<'a>(headers: &'a HeaderMap, body: &'a [u8]) -> Inbound<'a> {
    Inbound {
        headers,
        query: None,
        body,
    }
}

#[tokio::test]
async fn sns_subscription_confirmation_is_visited_and_retried_until_it_succeeds() {
    let setup = setup(Duration::from_secs(30)).await;
    let endpoint = setup
        .gateway
        .create_endpoint(
            "acme",
            NewEndpoint {
                source: Some(Source::Sns),
                credential: String::new(),
                display_name: String::new(),
                tolerance: None,
                sns_topic_arn: "arn:aws:sns:us-west-2:123456789012:MyTopic".into(),
                request_id: None,
            },
        )
        .await
        .expect("endpoint");
    let body = std::fs::read(vector("sns_subscription_confirmation.json")).expect("fixture");
    let headers = HeaderMap::new();
    *setup.confirmer.failures.lock().expect("lock") = 1;

    let first = setup
        .gateway
        .receive("sns", &endpoint.id, inbound(&headers, &body))
        .await;
    assert!(
        matches!(first, Err(ReceiveError::Confirmation)),
        "{first:?}"
    );
    // SNS sends the confirmation again: it is a duplicate, and confirmed this time.
    let second = setup
        .gateway
        .receive("sns", &endpoint.id, inbound(&headers, &body))
        .await
        .expect("confirmed");
    assert!(second.duplicate);
    let visited = setup.confirmer.visited.lock().expect("lock").clone();
    assert_eq!(visited.len(), 2);
    assert_eq!(visited[0].host_str(), Some("sns.us-west-2.amazonaws.com"));
    let events = setup
        .gateway
        .list_events("acme", &EventFilter::default(), 0, "")
        .await
        .expect("list");
    assert_eq!(events.items.len(), 1);
    assert_eq!(events.items[0].event_type, "subscription_confirmation");
    assert_eq!(
        events.items[0].subject.as_deref(),
        Some("arn:aws:sns:us-west-2:123456789012:MyTopic")
    );
}

#[tokio::test]
async fn discord_ping_is_answered_pong_and_a_rotated_key_is_picked_up() {
    let setup = setup(Duration::ZERO).await;
    let endpoint = setup
        .gateway
        .create_endpoint(
            "acme",
            NewEndpoint {
                source: Some(Source::Discord),
                credential: "credentials/discord".into(),
                display_name: "bot".into(),
                tolerance: None,
                sns_topic_arn: String::new(),
                request_id: None,
            },
        )
        .await
        .expect("endpoint");
    let other_key = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";
    setup.keys.0.lock().expect("lock").insert(
        ("acme".into(), "credentials/discord".into()),
        other_key.into(),
    );
    let body = br#"{"id":"787053080478613555","token":"ThisIsATokenFromDiscordThatIsVeryLong","type":1,"version":1}"#;
    // Signed now with RFC 8032 test 1's key, whose public half is configured below.
    let seed = hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
        .expect("hex");
    let signer = ed25519_dalek::SigningKey::from_bytes(&seed.try_into().expect("32 bytes"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs()
        .to_string();
    let mut message = now.as_bytes().to_vec();
    message.extend_from_slice(body);
    let signature = ed25519_dalek::Signer::sign(&signer, &message);
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-signature-ed25519",
        hex::encode(signature.to_bytes()).parse().expect("header"),
    );
    headers.insert("x-signature-timestamp", now.parse().expect("header"));
    let refused = setup
        .gateway
        .receive("discord", &endpoint.id, inbound(&headers, body))
        .await;
    assert!(
        matches!(refused, Err(ReceiveError::Refused(VerifyError::Signature))),
        "{refused:?}"
    );
    // The operator rotates: the old and the new key, one per line.
    setup.keys.0.lock().expect("lock").insert(
        ("acme".into(), "credentials/discord".into()),
        format!("{other_key}\nd75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"),
    );
    let receipt = setup
        .gateway
        .receive("discord", &endpoint.id, inbound(&headers, body))
        .await
        .expect("verified");
    assert_eq!(receipt.answer, Answer::Json(serde_json::json!({"type": 1})));
    assert!(!receipt.duplicate);
    let refused = setup
        .gateway
        .list_events("globex", &EventFilter::default(), 0, "")
        .await
        .expect("list");
    assert!(refused.items.is_empty());
}

#[tokio::test]
async fn a_page_of_events_stays_within_the_byte_budget() {
    let setup = setup(Duration::from_secs(30)).await;
    let endpoint = jenkins_endpoint(&setup).await;
    let mut headers = HeaderMap::new();
    headers.insert("authorization", "Bearer tok".parse().expect("header"));
    for n in 0..5 {
        let body = format!(r#"{{"name":"job-{n}","log":"{}"}}"#, "x".repeat(400 * 1024));
        headers.insert(
            "x-request-id",
            format!("build-{n}").parse().expect("header"),
        );
        setup
            .gateway
            .receive("jenkins", &endpoint.id, inbound(&headers, body.as_bytes()))
            .await
            .expect("received");
    }
    let mut seen = 0;
    let mut pages = 0;
    let mut token = String::new();
    loop {
        let page = setup
            .gateway
            .list_events("acme", &EventFilter::default(), 0, &token)
            .await
            .expect("list");
        assert!(!page.items.is_empty());
        assert!(page.items.len() <= 2, "at most 1 MiB of data a page");
        seen += page.items.len();
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!((seen, pages), (5, 3));
}

#[tokio::test]
async fn an_event_stream_resumes_from_its_cursor_and_filters() {
    use futures::StreamExt;
    use switchyard_gateway::domain::stream::StreamSpec;

    let setup = setup(Duration::from_secs(30)).await;
    let endpoint = jenkins_endpoint(&setup).await;
    let from_the_start = StreamSpec {
        start_time: Some(0),
        ..StreamSpec::default()
    };
    let mut live = Box::pin(
        setup
            .gateway
            .event_stream("acme", from_the_start.clone())
            .expect("stream"),
    );
    let mut headers = HeaderMap::new();
    headers.insert("authorization", "Bearer tok".parse().expect("header"));
    for n in 1..=3 {
        let body = format!(r#"{{"name":"job","build":{{"number":{n},"phase":"STARTED"}}}}"#);
        headers.insert(
            "x-request-id",
            format!("build-{n}").parse().expect("header"),
        );
        setup
            .gateway
            .receive("jenkins", &endpoint.id, inbound(&headers, body.as_bytes()))
            .await
            .expect("received");
    }
    let mut cursors = Vec::new();
    for n in 1..=3 {
        let (event, cursor) = tokio::time::timeout(Duration::from_secs(10), live.next())
            .await
            .expect("in time")
            .expect("an event")
            .expect("ok");
        assert_eq!(event.data["build"]["number"], n);
        cursors.push(cursor);
    }
    // Reconnecting after the second: the third, and nothing else.
    let mut resumed = Box::pin(
        setup
            .gateway
            .event_stream(
                "acme",
                StreamSpec {
                    cursor: Some(cursors[1].clone()),
                    ..StreamSpec::default()
                },
            )
            .expect("stream"),
    );
    let (third, _) = tokio::time::timeout(Duration::from_secs(10), resumed.next())
        .await
        .expect("in time")
        .expect("an event")
        .expect("ok");
    assert_eq!(third.data["build"]["number"], 3);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), resumed.next())
            .await
            .is_err(),
        "nothing after the third"
    );
    // A filter, and another tenant.
    let mut filtered = Box::pin(
        setup
            .gateway
            .event_stream(
                "acme",
                StreamSpec {
                    filter: "data.build.number == 2".into(),
                    ..from_the_start.clone()
                },
            )
            .expect("stream"),
    );
    let (second, _) = tokio::time::timeout(Duration::from_secs(10), filtered.next())
        .await
        .expect("in time")
        .expect("an event")
        .expect("ok");
    assert_eq!(second.data["build"]["number"], 2);
    let mut other = Box::pin(
        setup
            .gateway
            .event_stream("globex", from_the_start.clone())
            .expect("stream"),
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(1), other.next())
            .await
            .is_err(),
        "another tenant's stream is empty"
    );
    assert!(
        setup
            .gateway
            .event_stream(
                "acme",
                StreamSpec {
                    filter: "data.x ==".into(),
                    ..StreamSpec::default()
                }
            )
            .is_err()
    );
}

#[tokio::test]
async fn the_event_log_is_searched_with_cel() {
    let setup = setup(Duration::from_secs(30)).await;
    let endpoint = jenkins_endpoint(&setup).await;
    let mut headers = HeaderMap::new();
    headers.insert("authorization", "Bearer tok".parse().expect("header"));
    for n in 1..=6 {
        let body = format!(
            r#"{{"name":"job-{}","build":{{"number":{n},"phase":"COMPLETED"}}}}"#,
            n % 3
        );
        headers.insert(
            "x-request-id",
            format!("build-{n}").parse().expect("header"),
        );
        setup
            .gateway
            .receive("jenkins", &endpoint.id, inbound(&headers, body.as_bytes()))
            .await
            .expect("received");
    }
    let search = EventFilter {
        expression: r#"data.name == "job-0" || data.build.number == 1"#.into(),
        ..EventFilter::default()
    };
    let mut found = Vec::new();
    let mut token = String::new();
    loop {
        let page = setup
            .gateway
            .list_events("acme", &search, 1, &token)
            .await
            .expect("search");
        found.extend(
            page.items
                .iter()
                .map(|e| e.data["build"]["number"].as_i64().expect("n")),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(found, [6, 3, 1], "newest first, matches only");
    let bad = EventFilter {
        expression: "data.build ==".into(),
        ..EventFilter::default()
    };
    assert!(
        setup
            .gateway
            .list_events("acme", &bad, 0, "")
            .await
            .is_err()
    );
}
