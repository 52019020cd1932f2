//! `kill -9` of the switchyard process while signed webhooks pour in: every webhook that got a
//! 2xx is in the event log after the restart (the receiver commits before it answers), and is
//! delivered downstream, to a subscription's destination, at least once.
//!
//! Runs the real binary (`switchyard up`, on SQLite and on PostgreSQL), 16 senders, three kills.
//! With `--nocapture` it prints what it counted; docs/benchmarks.md has a run's figures.

// What it counted is the point of a run by hand.
#![allow(clippy::print_stdout)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use switchyard_proto::credentials::v1 as cred;
use switchyard_proto::credentials::v1::credential_service_client::CredentialServiceClient;
use switchyard_proto::events::v1 as pb;
use switchyard_proto::events::v1::event_service_client::EventServiceClient;
use tokio::process::{Child, Command};

const SECRET: &str = "a-crash-test-hs256-secret-0123456789abcdef";
const HOOK_SECRET: &str = "crash-hook-secret";
const SENDERS: usize = 16;
const ROUNDS: usize = 3;

struct Server {
    child: Child,
    grpc: SocketAddr,
    http: SocketAddr,
}

async fn start(config: &Path, log: &Path) -> Server {
    let out = std::fs::File::create(log).expect("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(config)
        .arg("up")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone().expect("log")))
        .stderr(Stdio::from(out))
        .kill_on_drop(true)
        .spawn()
        .expect("starting switchyard");
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let find = |prefix: &str| {
            text.lines()
                .find_map(|line| line.trim().strip_prefix(prefix))
                .map(|rest| rest.trim().trim_start_matches("http://").to_owned())
        };
        if let (Some(grpc), Some(http)) = (find("gRPC"), find("HTTP")) {
            return Server {
                child,
                grpc: grpc.parse().expect("gRPC address"),
                http: http.parse().expect("HTTP address"),
            };
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "switchyard exited:\n{text}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no start:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn token(scopes: &[&str]) -> String {
    switchyard_auth::mint(
        SECRET.as_bytes(),
        &switchyard_auth::TokenRequest {
            issuer: "switchyard".into(),
            audience: "switchyard".into(),
            subject: "crash-test".into(),
            tenant: "acme".into(),
            tenant_claim: "tenant".into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            ttl: Duration::from_secs(3600),
        },
    )
    .expect("token")
}

fn authorized<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    request
}

async fn channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

/// Records the `after` field (the delivery id the sender gave) of every payload delivered.
async fn downstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let record = record.clone();
            async move {
                let payload: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                if let Some(after) = payload["data"]["after"].as_str() {
                    record.lock().expect("lock").push(after.to_owned());
                }
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

/// Subscribes the destination at `addr` to every push, signed with a secret of its own.
async fn subscribe(server: &Server, addr: SocketAddr) {
    let admin = token(&["credentials.*", "events.*"]);
    CredentialServiceClient::new(channel(server.grpc).await)
        .create_credential(authorized(
            cred::CreateCredentialRequest {
                credential_id: "signing".into(),
                credential: Some(cred::Credential {
                    kind: cred::CredentialKind::WebhookSigningSecret as i32,
                    ..Default::default()
                }),
                payload: Some(cred::SecretPayload {
                    data: b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_vec(),
                }),
                request_id: String::new(),
            },
            &admin,
        ))
        .await
        .expect("signing secret");
    let millis = |ms: u64| prost_types::Duration {
        seconds: 0,
        nanos: i32::try_from(ms * 1_000_000).expect("nanos"),
    };
    EventServiceClient::new(channel(server.grpc).await)
        .create_subscription(authorized(
            pb::CreateSubscriptionRequest {
                subscription: Some(pb::Subscription {
                    event_types: vec!["push".into()],
                    url: format!("http://{addr}/hook"),
                    signing_credential: "credentials/signing".into(),
                    retry_schedule: vec![millis(200), millis(500), millis(900)],
                    timeout: Some(millis(900)),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            &admin,
        ))
        .await
        .expect("subscription");
}

/// The GitHub endpoint the senders post to, with its secret in the credentials service.
async fn make_endpoint(server: &Server) -> String {
    let admin = token(&["credentials.*", "events.*"]);
    CredentialServiceClient::new(channel(server.grpc).await)
        .create_credential(authorized(
            cred::CreateCredentialRequest {
                credential_id: "hook".into(),
                credential: Some(cred::Credential {
                    kind: cred::CredentialKind::Generic as i32,
                    ..Default::default()
                }),
                payload: Some(cred::SecretPayload {
                    data: HOOK_SECRET.as_bytes().to_vec(),
                }),
                request_id: String::new(),
            },
            &admin,
        ))
        .await
        .expect("credential");
    EventServiceClient::new(channel(server.grpc).await)
        .create_inbound_endpoint(authorized(
            pb::CreateInboundEndpointRequest {
                endpoint: Some(pb::InboundEndpoint {
                    source: pb::Source::Github as i32,
                    credential: "credentials/hook".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            &admin,
        ))
        .await
        .expect("endpoint")
        .into_inner()
        .endpoint
        .expect("endpoint")
        .url_path
}

/// Sends signed webhooks until `stop`, recording the delivery ids that got a 2xx.
async fn sender(
    url: String,
    prefix: String,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<HashSet<String>>>,
    sent: Arc<AtomicU64>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let delivery = format!("{prefix}-{n}");
        let body = format!(
            r#"{{"ref":"refs/heads/main","after":"{delivery}","repository":{{"full_name":"acme/app"}}}}"#
        );
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).expect("key");
        mac.update(body.as_bytes());
        let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        sent.fetch_add(1, Ordering::Relaxed);
        let response = client
            .post(&url)
            .header("x-github-event", "push")
            .header("x-github-delivery", &delivery)
            .header("x-hub-signature-256", signature)
            .body(body)
            .send()
            .await;
        match response {
            Ok(response) if response.status().is_success() => {
                acked.lock().expect("lock").insert(delivery);
            }
            // The server was killed: what got no 2xx may or may not be stored.
            Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn stored_deliveries(server: &Server) -> HashSet<String> {
    let reader = token(&["events.read"]);
    let mut client = EventServiceClient::new(channel(server.grpc).await);
    let mut stored = HashSet::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_events(authorized(
                pb::ListEventsRequest {
                    page_size: 1000,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
                &reader,
            ))
            .await
            .expect("list")
            .into_inner();
        for event in page.events {
            assert!(stored.insert(event.delivery_id), "a delivery stored twice");
        }
        if page.next_page_token.is_empty() {
            return stored;
        }
        page_token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_webhooks_survive_kill_9_sqlite() {
    survives_kill_9("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_webhooks_survive_kill_9_postgres() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    // The swtest_<seconds>_ prefix lets later runs drop what this one leaves behind.
    survives_kill_9(&format!(
        "\n[database]\nurl = \"{}\"\nschema_prefix = \"swtest_{now}_crash_{}_\"\n",
        switchyard_store::testing::postgres_url(),
        std::process::id()
    ))
    .await;
}

/// Runs the kill rounds on a configuration with `database` appended.
async fn survives_kill_9(database: &str) {
    switchyard_kit::tls::install_crypto_provider();
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            "grpc_addr = \"127.0.0.1:0\"\nhttp_addr = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n\n[log]\nlevel = \"warn\"\n\n[auth]\nhs256_secret = \"{SECRET}\"\n\n[gateway]\noutbound_allow = [\"127.0.0.0/8\"]\n\n[gateway.delivery]\nlease = \"2s\"\npoll_interval = \"100ms\"\n{database}",
            dir.path().join("data").display()
        ),
    )
    .expect("config");
    let log = dir.path().join("switchyard.log");
    let mut server = start(&config, &log).await;
    let path = make_endpoint(&server).await;
    let (destination, delivered) = downstream().await;
    subscribe(&server, destination).await;
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let sent = Arc::new(AtomicU64::new(0));

    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let senders: Vec<_> = (0..SENDERS)
            .map(|worker| {
                tokio::spawn(sender(
                    format!("http://{}{path}", server.http),
                    format!("r{round}-w{worker}"),
                    stop.clone(),
                    acked.clone(),
                    sent.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // SIGKILL: no drain, no flush, no destructor.
        server.child.start_kill().expect("kill -9");
        server.child.wait().await.expect("reaped");
        stop.store(true, Ordering::Relaxed);
        for sender in senders {
            sender.await.expect("sender");
        }
        server = start(&config, &log).await;
    }

    let stored = stored_deliveries(&server).await;
    let acked = acked.lock().expect("lock").clone();
    let missing: Vec<_> = acked.difference(&stored).collect();
    // Downstream, at least once: deliveries a kill interrupted are taken up again once their
    // claim (2 s) runs out.
    let started = Instant::now();
    let downstream: HashSet<String> = loop {
        let seen: HashSet<String> = delivered.lock().expect("lock").iter().cloned().collect();
        if acked.is_subset(&seen) || started.elapsed() > Duration::from_secs(60) {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let undelivered = acked.difference(&downstream).count();
    let repeats = delivered.lock().expect("lock").len() - downstream.len();
    println!(
        "{} {ROUNDS} kills, {SENDERS} senders: {} sent, {} acknowledged, {} stored, {} acknowledged but missing, {} stored without an acknowledgement; downstream: {} delivered, {} acknowledged but not delivered, {} delivered more than once",
        if database.is_empty() {
            "sqlite:"
        } else {
            "postgres:"
        },
        sent.load(Ordering::Relaxed),
        acked.len(),
        stored.len(),
        missing.len(),
        stored.difference(&acked).count(),
        downstream.len(),
        undelivered,
        repeats
    );
    assert!(acked.len() > 100, "too little load to prove anything");
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    assert_eq!(
        undelivered, 0,
        "acknowledged but never delivered downstream"
    );
    server.child.start_kill().expect("kill");
}
