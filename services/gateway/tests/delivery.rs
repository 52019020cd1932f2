//! Outbound delivery against a real local destination through the real (guarded) client:
//! retries on the schedule, the dead-letter queue and its replay, 410, the SSRF guard, and two
//! replicas sharing the work without delivering anything twice.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use secrecy::SecretString;
use switchyard_gateway::domain::delivery::{
    DeliveryState, HttpsDelivery, NewSubscription, SubscriptionState,
};
use switchyard_gateway::domain::{EndpointKeys, EventFilter, EventSource, Gateway, NewEndpoint};
use switchyard_gateway::{GatewayConfig, Outside};
use switchyard_store::Db;
use switchyard_webhooks::{CertificateFetcher, Inbound, Source};
use tokio_util::sync::CancellationToken;
use url::Url;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[derive(Debug)]
struct Keys;

#[async_trait]
impl EndpointKeys for Keys {
    async fn key(&self, _tenant: &str, credential: &str) -> Result<SecretString, String> {
        match credential {
            "credentials/jenkins" => Ok(SecretString::from("tok")),
            "credentials/signing" => Ok(SecretString::from(SECRET)),
            other => Err(format!("{other} not found")),
        }
    }
}

#[derive(Debug)]
struct NoCertificates;

#[async_trait]
impl CertificateFetcher for NoCertificates {
    async fn certificate(&self, url: &Url) -> Result<Vec<u8>, String> {
        Err(format!("{url}: not in this test"))
    }
}

/// What the destination saw, and what it answers next.
#[derive(Debug, Default)]
struct Destination {
    received: Vec<(HeaderMap, Vec<u8>)>,
    /// Statuses to answer, in order; then 200.
    script: Vec<u16>,
    in_flight: HashMap<String, usize>,
    overlaps: usize,
    delay: Duration,
}

type Shared = Arc<Mutex<Destination>>;

async fn receive(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let (status, delay) = {
        let mut destination = shared.lock().expect("lock");
        let in_flight = destination.in_flight.entry(id.clone()).or_default();
        *in_flight += 1;
        if *in_flight > 1 {
            destination.overlaps += 1;
        }
        destination.received.push((headers, body.to_vec()));
        let status = if destination.script.is_empty() {
            200
        } else {
            destination.script.remove(0)
        };
        (status, destination.delay)
    };
    tokio::time::sleep(delay).await;
    if let Some(count) = shared.lock().expect("lock").in_flight.get_mut(&id) {
        *count -= 1;
    }
    StatusCode::from_u16(status).expect("status")
}

async fn destination(script: Vec<u16>) -> (String, Shared) {
    let shared: Shared = Arc::new(Mutex::new(Destination {
        script,
        ..Destination::default()
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(shared.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), shared)
}

async fn gateway(db: Db) -> Gateway {
    switchyard_kit::tls::install_crypto_provider();
    let config = GatewayConfig::default();
    let guard = switchyard_kit::outbound::Guard::new(&["127.0.0.0/8".to_owned()]).expect("guard");
    switchyard_gateway::open(
        db,
        &config,
        Outside {
            keys: Arc::new(Keys),
            certificates: Arc::new(NoCertificates),
            confirmer: Arc::new(switchyard_gateway::domain::HttpsConfirmer(
                reqwest::Client::new(),
            )),
            delivery: Arc::new(HttpsDelivery::new(guard).expect("client")),
            oauth: None,
            sso: None,
        },
        CancellationToken::new(),
    )
    .await
    .expect("open")
}

async fn jenkins_endpoint(gateway: &Gateway) -> String {
    gateway
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
        .id
}

async fn build_event(gateway: &Gateway, endpoint: &str, build: u32) {
    let mut headers = HeaderMap::new();
    headers.insert("authorization", "Bearer tok".parse().expect("header"));
    headers.insert(
        "x-request-id",
        format!("build-{build}").parse().expect("header"),
    );
    let body = format!(r#"{{"name":"deploy","build":{{"number":{build},"phase":"COMPLETED"}}}}"#);
    gateway
        .receive(
            "jenkins",
            endpoint,
            Inbound {
                headers: &headers,
                query: None,
                body: body.as_bytes(),
            },
        )
        .await
        .expect("received");
}

fn subscription(url: &str, schedule_ms: &[u64]) -> NewSubscription {
    NewSubscription {
        event_types: vec!["build.*".into()],
        url: url.to_owned(),
        signing_credential: "credentials/signing".into(),
        retry_schedule: schedule_ms
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect(),
        ..NewSubscription::default()
    }
}

/// Runs the worker until `done` holds or ten seconds pass.
async fn deliver_until(gateway: &Gateway, done: impl Fn() -> bool) {
    for _ in 0..1000 {
        gateway.deliver_due().await.expect("deliver");
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not delivered in time");
}

#[tokio::test]
async fn a_failing_destination_gets_the_event_on_the_attempt_after_it_recovers() {
    let (db, _dir) = switchyard_store::testing::sqlite_db().await.expect("db");
    let gateway = gateway(db).await;
    let endpoint = jenkins_endpoint(&gateway).await;
    let (url, destination) = destination(vec![500, 503, 500]).await;
    let created = gateway
        .create_subscription("acme", subscription(&url, &[50, 100, 150, 200]))
        .await
        .expect("subscription");
    build_event(&gateway, &endpoint, 1).await;
    let seen = destination.clone();
    deliver_until(&gateway, || seen.lock().expect("lock").received.len() == 4).await;

    let page = gateway
        .list_deliveries(
            "acme",
            &format!("subscriptions/{}", created.id),
            None,
            0,
            "",
        )
        .await
        .expect("deliveries");
    let delivery = &page.items[0];
    assert_eq!(delivery.state, DeliveryState::Succeeded);
    assert_eq!(
        delivery.attempt_count, 4,
        "three failures, then the fourth attempt"
    );
    let attempts = gateway
        .list_attempts("acme", &format!("deliveries/{}", delivery.id))
        .await
        .expect("attempts");
    let statuses: Vec<i32> = attempts.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [500, 503, 500, 200]);
    // On the schedule: each retry waited its step (less up to 10% jitter).
    for (pair, wait_ms) in attempts.windows(2).zip([50, 100, 150]) {
        let gap = pair[1].start_time - pair[0].start_time;
        assert!(
            gap >= wait_ms * 900,
            "retry after {gap} µs, not {wait_ms} ms"
        );
    }

    // Every attempt is signed per Standard Webhooks, with the same id.
    let received = destination.lock().expect("lock").received.clone();
    let key = switchyard_webhooks::standard::Key::parse(SECRET).expect("key");
    for (headers, body) in &received {
        assert_eq!(headers["webhook-id"], delivery.id.as_str());
        let timestamp: u64 = headers["webhook-timestamp"]
            .to_str()
            .expect("ts")
            .parse()
            .expect("ts");
        let expected = key.sign(&delivery.id, timestamp, body).expect("sign");
        assert_eq!(headers["webhook-signature"], expected.as_str());
        let payload: serde_json::Value = serde_json::from_slice(body).expect("json");
        assert_eq!(payload["type"], "build.completed");
        assert_eq!(payload["data"]["build"]["number"], 1);
    }
}

#[tokio::test]
async fn an_always_failing_destination_ends_in_the_dead_letter_queue_and_a_replay_delivers() {
    let (db, _dir) = switchyard_store::testing::sqlite_db().await.expect("db");
    let gateway = gateway(db).await;
    let endpoint = jenkins_endpoint(&gateway).await;
    let (url, destination) = destination(vec![500; 3]).await;
    let created = gateway
        .create_subscription("acme", subscription(&url, &[10, 10]))
        .await
        .expect("subscription");
    let name = format!("subscriptions/{}", created.id);
    build_event(&gateway, &endpoint, 7).await;
    let dead = || async {
        gateway
            .list_deliveries("acme", &name, Some(DeliveryState::Dead), 0, "")
            .await
            .expect("deliveries")
            .items
    };
    for _ in 0..500 {
        gateway.deliver_due().await.expect("deliver");
        if !dead().await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let letters = dead().await;
    assert_eq!(letters.len(), 1, "in the dead-letter queue");
    assert_eq!(
        letters[0].attempt_count, 3,
        "the first attempt and two retries"
    );
    assert_eq!(letters[0].last_status, 500);

    // The destination recovered: a replay delivers.
    let replayed = gateway
        .replay_deliveries("acme", &name, None, None)
        .await
        .expect("replay");
    assert_eq!(replayed, 1);
    let seen = destination.clone();
    deliver_until(&gateway, || seen.lock().expect("lock").received.len() == 4).await;
    assert!(dead().await.is_empty());
    let purged = gateway
        .purge_dead_letters("acme", &name, None)
        .await
        .expect("purge");
    assert_eq!(purged, 0, "nothing dead is left");
    assert!(
        gateway
            .replay_deliveries("globex", &name, None, None)
            .await
            .is_err(),
        "another tenant's subscription"
    );
}

#[tokio::test]
async fn gone_disables_the_subscription_and_says_so() {
    let (db, _dir) = switchyard_store::testing::sqlite_db().await.expect("db");
    let gateway = gateway(db).await;
    let endpoint = jenkins_endpoint(&gateway).await;
    let (url, destination) = destination(vec![410]).await;
    let created = gateway
        .create_subscription("acme", subscription(&url, &[10]))
        .await
        .expect("subscription");
    let name = format!("subscriptions/{}", created.id);
    build_event(&gateway, &endpoint, 1).await;
    let seen = destination.clone();
    deliver_until(&gateway, || seen.lock().expect("lock").received.len() == 1).await;
    let disabled = gateway.get_subscription("acme", &name).await.expect("get");
    assert_eq!(disabled.state, SubscriptionState::Disabled);
    assert!(disabled.disabled_reason.expect("reason").contains("410"));
    let operational = gateway
        .list_events(
            "acme",
            &EventFilter {
                source: Some(EventSource::Switchyard),
                ..EventFilter::default()
            },
            0,
            "",
        )
        .await
        .expect("events");
    assert_eq!(operational.items[0].event_type, "subscription.disabled");
    // Disabled: new events are not delivered until it is enabled again.
    build_event(&gateway, &endpoint, 2).await;
    gateway.deliver_due().await.expect("deliver");
    assert_eq!(destination.lock().expect("lock").received.len(), 1);
    gateway
        .enable_subscription("acme", &name)
        .await
        .expect("enable");
    let test = gateway
        .send_test_event("acme", &name)
        .await
        .expect("test event");
    let seen = destination.clone();
    deliver_until(&gateway, || seen.lock().expect("lock").received.len() == 2).await;
    let (_, body) = destination.lock().expect("lock").received[1].clone();
    let payload: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(payload["type"], "switchyard.test");
    assert_eq!(test.subscription, created.id);
}

#[tokio::test]
async fn destinations_pass_the_ssrf_guard_and_filters_are_cel() {
    switchyard_kit::tls::install_crypto_provider();
    let (db, _dir) = switchyard_store::testing::sqlite_db().await.expect("db");
    let strict = switchyard_gateway::open(
        db,
        &GatewayConfig::default(),
        Outside {
            keys: Arc::new(Keys),
            certificates: Arc::new(NoCertificates),
            confirmer: Arc::new(switchyard_gateway::domain::HttpsConfirmer(
                reqwest::Client::new(),
            )),
            delivery: Arc::new(
                HttpsDelivery::new(switchyard_kit::outbound::Guard::default()).expect("client"),
            ),
            oauth: None,
            sso: None,
        },
        CancellationToken::new(),
    )
    .await
    .expect("open");
    for url in [
        "http://127.0.0.1:9/hook",
        "https://10.0.0.8/hook",
        "https://169.254.169.254/latest/meta-data",
        "http://example.com/hook",
    ] {
        let refused = strict
            .create_subscription("acme", subscription(url, &[]))
            .await
            .expect_err(url);
        assert!(
            format!("{refused:?}").contains("subscription.url"),
            "{url}: {refused:?}"
        );
    }
    let mut bad_filter = subscription("https://example.com/hook", &[]);
    bad_filter.filter = "data.ref ==".into();
    assert!(
        strict
            .create_subscription("acme", bad_filter)
            .await
            .is_err()
    );

    // Filters: only the events a subscription's CEL filter matches are delivered (the test's
    // destination on localhost is allow-listed; the guard's refusals are libs/kit's tests).
    let (db, _dir) = switchyard_store::testing::sqlite_db().await.expect("db");
    let gateway = switchyard_gateway::open(
        db,
        &GatewayConfig::default(),
        Outside {
            keys: Arc::new(Keys),
            certificates: Arc::new(NoCertificates),
            confirmer: Arc::new(switchyard_gateway::domain::HttpsConfirmer(
                reqwest::Client::new(),
            )),
            delivery: Arc::new(
                HttpsDelivery::new(
                    switchyard_kit::outbound::Guard::new(&["localhost".to_owned()]).expect("guard"),
                )
                .expect("client"),
            ),
            oauth: None,
            sso: None,
        },
        CancellationToken::new(),
    )
    .await
    .expect("open");
    let endpoint = jenkins_endpoint(&gateway).await;
    let (url, destination) = destination(vec![]).await;
    let port = Url::parse(&url).expect("url").port().expect("port");
    let mut filtered = subscription(&format!("http://localhost:{port}/hook"), &[]);
    filtered.filter = "data.build.number > 1".into();
    gateway
        .create_subscription("acme", filtered)
        .await
        .expect("subscription");
    build_event(&gateway, &endpoint, 1).await;
    build_event(&gateway, &endpoint, 2).await;
    let seen = destination.clone();
    deliver_until(&gateway, || seen.lock().expect("lock").received.len() == 1).await;
    let (_, body) = destination.lock().expect("lock").received[0].clone();
    let payload: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        payload["data"]["build"]["number"], 2,
        "the filter left build 1 out"
    );
}

#[tokio::test]
async fn two_replicas_never_deliver_the_same_attempt_concurrently() {
    let url = switchyard_store::testing::postgres_url();
    let schema = format!(
        "swtest_{}_replicas_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_secs(),
        uuid::Uuid::new_v4().simple()
    );
    let first = gateway(Db::connect(&url, &schema, 8).await.expect("db")).await;
    let second = gateway(Db::connect(&url, &schema, 8).await.expect("db")).await;
    let endpoint = jenkins_endpoint(&first).await;
    let (destination_url, destination) = destination(vec![]).await;
    destination.lock().expect("lock").delay = Duration::from_millis(20);
    first
        .create_subscription("acme", subscription(&destination_url, &[10]))
        .await
        .expect("subscription");
    const EVENTS: u32 = 200;
    for build in 0..EVENTS {
        build_event(&first, &endpoint, build).await;
    }
    let shutdown = CancellationToken::new();
    let workers = [
        tokio::spawn(switchyard_gateway::domain::delivery::run(
            first.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(switchyard_gateway::domain::delivery::run(
            second.clone(),
            shutdown.clone(),
        )),
    ];
    for _ in 0..1000 {
        if destination.lock().expect("lock").received.len() >= EVENTS as usize {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Long enough for a duplicate to show up, if any were coming.
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.cancel();
    for worker in workers {
        worker.await.expect("worker");
    }
    let destination = destination.lock().expect("lock");
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for (headers, _) in &destination.received {
        *per_id
            .entry(headers["webhook-id"].to_str().expect("id").to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_id.len(), EVENTS as usize, "every delivery arrived");
    assert!(per_id.values().all(|n| *n == 1), "none twice");
    assert_eq!(
        destination.overlaps, 0,
        "never two attempts of one delivery at once"
    );
}
