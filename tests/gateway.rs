//! The webhook receiver end to end: endpoints made over gRPC with their key in the credentials
//! service, webhooks posted to the HTTP edge, events listed back; durable across a restart.

use hmac::{Hmac, Mac};
use switchyard_e2e::{Backend, TestServer, config, token};
use switchyard_proto::credentials::v1 as cred;
use switchyard_proto::credentials::v1::credential_service_client::CredentialServiceClient;
use switchyard_proto::events::v1 as pb;
use switchyard_proto::events::v1::event_service_client::EventServiceClient;

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    request
}

fn github_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Stores `secret` as `credentials/{id}` of `tenant` and makes a `source` endpoint using it.
async fn endpoint(
    server: &TestServer,
    tenant: &str,
    id: &str,
    secret: &str,
    source: pb::Source,
) -> pb::InboundEndpoint {
    let admin = token(tenant, "admin", &["credentials.*", "events.*"]);
    CredentialServiceClient::new(server.channel().await)
        .create_credential(with_token(
            cred::CreateCredentialRequest {
                credential_id: id.into(),
                credential: Some(cred::Credential {
                    kind: cred::CredentialKind::Generic as i32,
                    ..Default::default()
                }),
                payload: Some(cred::SecretPayload {
                    data: secret.as_bytes().to_vec(),
                }),
                request_id: String::new(),
            },
            &admin,
        ))
        .await
        .expect("credential");
    EventServiceClient::new(server.channel().await)
        .create_inbound_endpoint(with_token(
            pb::CreateInboundEndpointRequest {
                endpoint: Some(pb::InboundEndpoint {
                    source: source as i32,
                    credential: format!("credentials/{id}"),
                    display_name: "repo hooks".into(),
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
}

async fn events(server: &TestServer, tenant: &str) -> Vec<pb::Event> {
    let reader = token(tenant, "reader", &["events.read"]);
    EventServiceClient::new(server.channel().await)
        .list_events(with_token(pb::ListEventsRequest::default(), &reader))
        .await
        .expect("list")
        .into_inner()
        .events
}

async fn post_github(
    server: &TestServer,
    path: &str,
    signature: &str,
    delivery: &str,
    body: &'static [u8],
) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://{}{path}", server.http))
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", signature)
        .body(body)
        .send()
        .await
        .expect("post")
}

const PUSH: &[u8] = br#"{"ref":"refs/heads/main","repository":{"full_name":"acme/app"}}"#;

async fn github_round_trip(backend: Backend) {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(config(backend, dir.path())).await;
    let endpoint = endpoint(&server, "acme", "gh-secret", "s3cret", pb::Source::Github).await;
    assert!(endpoint.url_path.starts_with("/hooks/github/"));

    let signature = github_signature("s3cret", PUSH);
    let first = post_github(&server, &endpoint.url_path, &signature, "d-1", PUSH).await;
    assert_eq!(first.status(), 200);
    let event_id = first.headers()["switchyard-event-id"]
        .to_str()
        .expect("id")
        .to_owned();
    // A redelivery is acknowledged and stored once.
    let again = post_github(&server, &endpoint.url_path, &signature, "d-1", PUSH).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["switchyard-event-id"], event_id.as_str());

    // Refused: a tampered body, a wrong secret, an unknown endpoint; nothing stored.
    let tampered = post_github(
        &server,
        &endpoint.url_path,
        &signature,
        "d-2",
        br#"{"ref":"refs/heads/evil"}"#,
    )
    .await;
    assert_eq!(tampered.status(), 401);
    // The edge's one error shape: google.rpc.Status as JSON.
    let body: serde_json::Value = tampered.json().await.expect("json");
    assert_eq!(body["error"]["status"], "UNAUTHENTICATED");
    assert_eq!(
        body["error"]["details"][0]["reason"],
        "WEBHOOK_NOT_VERIFIED"
    );
    let wrong = github_signature("other", PUSH);
    assert_eq!(
        post_github(&server, &endpoint.url_path, &wrong, "d-3", PUSH)
            .await
            .status(),
        401
    );
    assert_eq!(
        post_github(&server, "/hooks/github/nope", &signature, "d-4", PUSH)
            .await
            .status(),
        404
    );
    let slack_path = endpoint.url_path.replace("/github/", "/slack/");
    assert_eq!(
        post_github(&server, &slack_path, &signature, "d-5", PUSH)
            .await
            .status(),
        404,
        "an endpoint answers only for its own source"
    );

    let listed = events(&server, "acme").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let event = &listed[0];
    assert_eq!(event.name, format!("events/{event_id}"));
    assert_eq!(event.r#type, "push");
    assert_eq!(event.subject, "acme/app");
    assert_eq!(event.delivery_id, "d-1");
    assert_eq!(event.tenant, "acme");
    assert_eq!(event.headers["x-github-event"], "push");
    assert!(event.raw_body.is_empty(), "lists carry no raw body");
    assert!(
        events(&server, "globex").await.is_empty(),
        "tenants see their own events only"
    );

    // Committed before the 2xx: still there after a restart, raw body byte for byte.
    let config = server.config.clone();
    server.stop().await;
    let server = TestServer::start(config).await;
    let reader = token("acme", "reader", &["events.read"]);
    let stored = EventServiceClient::new(server.channel().await)
        .get_event(with_token(
            pb::GetEventRequest {
                name: format!("events/{event_id}"),
            },
            &reader,
        ))
        .await
        .expect("get")
        .into_inner()
        .event
        .expect("event");
    assert_eq!(stored.raw_body, PUSH);
    let other = token("globex", "reader", &["events.read"]);
    let hidden = EventServiceClient::new(server.channel().await)
        .get_event(with_token(
            pb::GetEventRequest {
                name: format!("events/{event_id}"),
            },
            &other,
        ))
        .await
        .expect_err("another tenant's event");
    assert_eq!(hidden.code(), tonic::Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn github_webhooks_are_verified_stored_once_and_survive_a_restart_sqlite() {
    github_round_trip(Backend::Sqlite).await;
}

#[tokio::test]
async fn github_webhooks_are_verified_stored_once_and_survive_a_restart_postgres() {
    github_round_trip(Backend::Postgres).await;
}

#[tokio::test]
async fn slack_url_verification_is_answered_and_a_missing_key_is_an_outage_not_a_refusal() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(config(Backend::Sqlite, dir.path())).await;
    let endpoint = endpoint(
        &server,
        "acme",
        "slack-secret",
        "8f742231b10e",
        pb::Source::Slack,
    )
    .await;
    let body = r#"{"token":"x","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs()
        .to_string();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"8f742231b10e").expect("key");
    mac.update(format!("v0:{now}:{body}").as_bytes());
    let signature = format!("v0={}", hex::encode(mac.finalize().into_bytes()));
    let response = reqwest::Client::new()
        .post(format!("http://{}{}", server.http, endpoint.url_path))
        .header("content-type", "application/json")
        .header("x-slack-request-timestamp", &now)
        .header("x-slack-signature", &signature)
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.expect("json");
    assert_eq!(
        answer["challenge"],
        "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    );

    // An endpoint naming a credential its tenant does not have cannot verify: 503, so that the
    // sender retries once the operator has fixed it, rather than a 401 that loses the event.
    let admin = token("acme", "admin", &["events.*"]);
    let broken = EventServiceClient::new(server.channel().await)
        .create_inbound_endpoint(with_token(
            pb::CreateInboundEndpointRequest {
                endpoint: Some(pb::InboundEndpoint {
                    source: pb::Source::Github as i32,
                    credential: "credentials/missing".into(),
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
        .expect("endpoint");
    let signature = github_signature("s3cret", PUSH);
    assert_eq!(
        post_github(&server, &broken.url_path, &signature, "d-1", PUSH)
            .await
            .status(),
        503
    );
    server.stop().await;
}

#[tokio::test]
async fn endpoints_are_validated_listed_and_deleted_per_tenant() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(config(Backend::Sqlite, dir.path())).await;
    let admin = token("acme", "admin", &["events.*"]);
    let mut client = EventServiceClient::new(server.channel().await);
    let refused = client
        .create_inbound_endpoint(with_token(
            pb::CreateInboundEndpointRequest {
                endpoint: Some(pb::InboundEndpoint {
                    source: pb::Source::Sns as i32,
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            &admin,
        ))
        .await
        .expect_err("an SNS endpoint without a topic");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("sns_topic_arn"),
        "{}",
        refused.message()
    );
    let refused = client
        .create_inbound_endpoint(with_token(
            pb::CreateInboundEndpointRequest {
                endpoint: Some(pb::InboundEndpoint {
                    source: pb::Source::Github as i32,
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            &admin,
        ))
        .await
        .expect_err("a GitHub endpoint without a key");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    let refused = client
        .create_inbound_endpoint(with_token(
            pb::CreateInboundEndpointRequest {
                endpoint: Some(pb::InboundEndpoint {
                    source: pb::Source::Gitlab as i32,
                    credential: "credentials/x".into(),
                    display_name: "nul\0byte".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            },
            &admin,
        ))
        .await
        .expect_err("a NUL in the display name");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    let create_sns = pb::CreateInboundEndpointRequest {
        endpoint: Some(pb::InboundEndpoint {
            source: pb::Source::Sns as i32,
            sns_topic_arn: "arn:aws:sns:us-west-2:123456789012:MyTopic".into(),
            ..Default::default()
        }),
        request_id: "create-sns-1".into(),
    };
    let sns = client
        .create_inbound_endpoint(with_token(create_sns.clone(), &admin))
        .await
        .expect("sns endpoint")
        .into_inner()
        .endpoint
        .expect("endpoint");
    let retried = client
        .create_inbound_endpoint(with_token(create_sns, &admin))
        .await
        .expect("a retry")
        .into_inner()
        .endpoint
        .expect("endpoint");
    assert_eq!(retried, sns, "a retried create returns the first endpoint");
    let listed = client
        .list_inbound_endpoints(with_token(
            pb::ListInboundEndpointsRequest::default(),
            &admin,
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.endpoints, vec![sns.clone()]);
    let other = token("globex", "admin", &["events.*"]);
    let missing = client
        .delete_inbound_endpoint(with_token(
            pb::DeleteInboundEndpointRequest {
                name: sns.name.clone(),
            },
            &other,
        ))
        .await
        .expect_err("another tenant's endpoint");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    client
        .delete_inbound_endpoint(with_token(
            pb::DeleteInboundEndpointRequest {
                name: sns.name.clone(),
            },
            &admin,
        ))
        .await
        .expect("delete");
    let response = reqwest::Client::new()
        .post(format!("http://{}{}", server.http, sns.url_path))
        .body("{}")
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 404, "a deleted endpoint's URL is gone");
    let reader_only = token("acme", "reader", &["events.read"]);
    let denied = client
        .create_inbound_endpoint(with_token(
            pb::CreateInboundEndpointRequest::default(),
            &reader_only,
        ))
        .await
        .expect_err("events.write needed");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    server.stop().await;
}

#[tokio::test]
async fn bodies_beyond_the_limit_are_refused_with_413() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = config(Backend::Sqlite, dir.path());
    config.gateway.max_body_bytes = 1024;
    let server = TestServer::start(config).await;
    let endpoint = endpoint(&server, "acme", "gh-secret", "s3cret", pb::Source::Github).await;
    let body: &'static [u8] = Box::leak(vec![b' '; 2048].into_boxed_slice());
    let signature = github_signature("s3cret", body);
    let response = post_github(&server, &endpoint.url_path, &signature, "big-1", body).await;
    assert_eq!(response.status(), 413);
    // The edge's one error shape, like every other refusal.
    let refusal: serde_json::Value = response.json().await.expect("a JSON error");
    assert_eq!(refusal["error"]["code"], 413);
    assert_eq!(refusal["error"]["details"][0]["reason"], "BODY_TOO_LARGE");
    assert!(events(&server, "acme").await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn the_gateway_will_not_start_with_messages_too_small_for_its_bodies() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = config(Backend::Sqlite, dir.path());
    config.server.max_message_bytes = 1024 * 1024;
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let http = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let refused = switchyard::run(
        config,
        [switchyard::ServiceName::Gateway].into_iter().collect(),
        grpc,
        http,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect_err("1 MiB bodies need 2 MiB messages");
    assert!(
        format!("{refused:#}").contains("gateway.max_body_bytes"),
        "{refused:#}"
    );
}

#[tokio::test]
async fn subscribe_events_streams_what_arrives_over_grpc() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(config(Backend::Sqlite, dir.path())).await;
    let endpoint = endpoint(&server, "acme", "gh-secret", "s3cret", pb::Source::Github).await;
    let reader = token("acme", "reader", &["events.read"]);
    let mut stream = EventServiceClient::new(server.channel().await)
        .subscribe_events(with_token(
            pb::SubscribeEventsRequest {
                event_types: vec!["push".into()],
                ..Default::default()
            },
            &reader,
        ))
        .await
        .expect("subscribe")
        .into_inner();
    let signature = github_signature("s3cret", PUSH);
    assert_eq!(
        post_github(&server, &endpoint.url_path, &signature, "d-9", PUSH)
            .await
            .status(),
        200
    );
    let message = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
        .await
        .expect("in time")
        .expect("a message")
        .expect("not the end");
    let event = message.event.expect("event");
    assert_eq!(
        (event.r#type.as_str(), event.delivery_id.as_str()),
        ("push", "d-9")
    );
    assert_eq!(message.cursor, event.name.trim_start_matches("events/"));
    // An open stream does not hold the drain: it ends, with UNAVAILABLE or with the closed
    // connection, whichever reaches the client first, to be resumed elsewhere.
    server.stop().await;
    let ended = stream.message().await;
    assert!(
        matches!(&ended, Err(status) if status.code() == tonic::Code::Unavailable)
            || matches!(ended, Ok(None)),
        "{ended:?}"
    );
}

mod oauth {
    use super::*;
    use switchyard_proto::oauth::v1 as oa;
    use switchyard_proto::oauth::v1::o_auth_service_client::OAuthServiceClient;
    use switchyard_testkit::fake_oauth::FakeOAuth;

    const PUBLIC_URL: &str = "https://switchyard.example";
    const REDIRECT: &str = "https://switchyard.example/oauth/gitlab/callback";

    /// Follows an authorize URL as a browser would, up to the redirect back to Switchyard, and
    /// returns the callback's path and query.
    async fn authorize(url: &str) -> String {
        let response = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client")
            .get(url)
            .send()
            .await
            .expect("authorize");
        let location = response.headers()["location"].to_str().expect("location");
        location
            .strip_prefix(PUBLIC_URL)
            .expect("back to Switchyard")
            .to_owned()
    }

    #[tokio::test]
    async fn connect_access_refresh_reauth_and_delete_against_a_local_provider() {
        let fake = FakeOAuth::start("client-1", "secret-1", REDIRECT).await;
        fake.set_access_ttl(std::time::Duration::from_secs(30));
        let dir = tempfile::tempdir().expect("dir");
        let mut config = config(Backend::Sqlite, dir.path());
        config.gateway.outbound_allow = vec!["127.0.0.0/8".into()];
        config.gateway.public_url = PUBLIC_URL.into();
        let server = TestServer::start(config).await;
        let admin = token("acme", "admin", &["credentials.*", "events.*", "oauth.*"]);
        CredentialServiceClient::new(server.channel().await)
            .create_credential(with_token(
                cred::CreateCredentialRequest {
                    credential_id: "gitlab-secret".into(),
                    credential: Some(cred::Credential {
                        kind: cred::CredentialKind::Generic as i32,
                        ..Default::default()
                    }),
                    payload: Some(cred::SecretPayload {
                        data: b"secret-1".to_vec(),
                    }),
                    request_id: String::new(),
                },
                &admin,
            ))
            .await
            .expect("client secret");
        let mut oauth = OAuthServiceClient::new(server.channel().await);
        let client = oauth
            .create_client(with_token(
                oa::CreateClientRequest {
                    client: Some(oa::Client {
                        provider: oa::Provider::Gitlab as i32,
                        client_id: "client-1".into(),
                        client_secret_credential: "credentials/gitlab-secret".into(),
                        base_url: fake.base_url(),
                        ..Default::default()
                    }),
                },
                &admin,
            ))
            .await
            .expect("client")
            .into_inner()
            .client
            .expect("client");
        assert_eq!(client.redirect_uri, REDIRECT);

        let started = oauth
            .start_authorization(with_token(
                oa::StartAuthorizationRequest {
                    provider: oa::Provider::Gitlab as i32,
                    scopes: vec!["api".into(), "read_user".into()],
                },
                &admin,
            ))
            .await
            .expect("start")
            .into_inner();
        assert!(started.authorize_url.contains("code_challenge_method=S256"));
        let callback = authorize(&started.authorize_url).await;
        let http = reqwest::Client::new();
        let done = http
            .get(format!("http://{}{callback}", server.http))
            .send()
            .await
            .expect("callback");
        assert_eq!(done.status(), 200);
        let done: serde_json::Value = done.json().await.expect("json");
        let name = done["connection"].as_str().expect("connection").to_owned();
        let replayed = http
            .get(format!("http://{}{callback}", server.http))
            .send()
            .await
            .expect("callback again");
        assert_eq!(replayed.status(), 400, "a state is single-use");

        let connection = oauth
            .get_connection(with_token(
                oa::GetConnectionRequest { name: name.clone() },
                &admin,
            ))
            .await
            .expect("connection")
            .into_inner()
            .connection
            .expect("connection");
        assert_eq!(connection.account_name, "octocat");
        assert_eq!(connection.granted_scopes, ["api", "read_user"]);
        assert_eq!(connection.state, oa::ConnectionState::Active as i32);

        // The token expires within the refresh margin: access refreshes it first.
        let before = fake.token_requests();
        let access = oauth
            .access_connection(with_token(
                oa::AccessConnectionRequest {
                    name: name.clone(),
                    required_scopes: vec!["api".into()],
                },
                &admin,
            ))
            .await
            .expect("access")
            .into_inner();
        assert!(access.access_token.starts_with("access-"));
        assert_eq!(
            fake.token_requests(),
            before + 1,
            "refreshed ahead of expiry"
        );
        let missing = oauth
            .access_connection(with_token(
                oa::AccessConnectionRequest {
                    name: name.clone(),
                    required_scopes: vec!["admin_mode".into()],
                },
                &admin,
            ))
            .await
            .expect_err("an ungranted scope");
        assert_eq!(missing.code(), tonic::Code::FailedPrecondition);
        assert!(missing.message().contains("admin_mode"));

        // The user revoked the app: the refresh is an invalid grant.
        fake.revoke_all_refresh_tokens();
        let refused = oauth
            .refresh_connection(with_token(
                oa::RefreshConnectionRequest { name: name.clone() },
                &admin,
            ))
            .await
            .expect_err("invalid_grant");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        let connection = oauth
            .get_connection(with_token(
                oa::GetConnectionRequest { name: name.clone() },
                &admin,
            ))
            .await
            .expect("connection")
            .into_inner()
            .connection
            .expect("connection");
        assert_eq!(connection.state, oa::ConnectionState::NeedsReauth as i32);
        let operational = EventServiceClient::new(server.channel().await)
            .list_events(with_token(
                pb::ListEventsRequest {
                    source: pb::Source::Switchyard as i32,
                    ..Default::default()
                },
                &admin,
            ))
            .await
            .expect("events")
            .into_inner()
            .events;
        assert_eq!(operational[0].r#type, "connection.needs_reauth");

        let other = token("globex", "admin", &["oauth.*"]);
        let hidden = oauth
            .get_connection(with_token(
                oa::GetConnectionRequest { name: name.clone() },
                &other,
            ))
            .await
            .expect_err("another tenant's connection");
        assert_eq!(hidden.code(), tonic::Code::NotFound);
        let deleted = oauth
            .delete_connection(with_token(
                oa::DeleteConnectionRequest { name: name.clone() },
                &admin,
            ))
            .await
            .expect("delete")
            .into_inner();
        assert!(deleted.revoked_upstream);
        server.stop().await;
    }
}

mod sso {
    use super::*;
    use switchyard_testkit::fake_oauth::FakeOAuth;

    const PUBLIC_URL: &str = "https://switchyard.example";

    #[tokio::test]
    async fn an_oidc_login_issues_a_switchyard_token_for_the_users_tenant_and_roles() {
        let fake = FakeOAuth::start(
            "switchyard",
            "sso-secret",
            "https://switchyard.example/sso/callback",
        )
        .await;
        let dir = tempfile::tempdir().expect("dir");
        let mut config = config(Backend::Sqlite, dir.path());
        config.gateway.outbound_allow = vec!["127.0.0.0/8".into()];
        config.gateway.public_url = PUBLIC_URL.into();
        config.gateway.sso = Some(
            toml::from_str(&format!(
                r#"
                issuer = "{}"
                client_id = "switchyard"
                client_secret = "sso-secret"
                [role_scopes]
                platform-admins = ["events.read", "credentials.read"]
                "#,
                fake.base_url()
            ))
            .expect("sso config"),
        );
        let server = TestServer::start(config).await;
        let browser = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let login = browser
            .get(format!("http://{}/sso/login", server.http))
            .send()
            .await
            .expect("login");
        assert_eq!(login.status(), 303);
        let to_provider = login.headers()["location"]
            .to_str()
            .expect("location")
            .to_owned();
        assert!(to_provider.contains("nonce="));
        let back = browser.get(&to_provider).send().await.expect("provider");
        let callback = back.headers()["location"].to_str().expect("location");
        let path = callback
            .strip_prefix(PUBLIC_URL)
            .expect("back to Switchyard");
        let answer = browser
            .get(format!("http://{}{path}", server.http))
            .send()
            .await
            .expect("callback");
        assert_eq!(answer.status(), 200);
        let answer: serde_json::Value = answer.json().await.expect("json");
        assert_eq!(answer["tenant"], "acme");
        assert_eq!(answer["subject"], "sso:octocat@example.com");
        let token = answer["token"].as_str().expect("token").to_owned();

        // The token works, with the scopes the user's group maps to, and no others.
        let listed = EventServiceClient::new(server.channel().await)
            .list_events(with_token(pb::ListEventsRequest::default(), &token))
            .await;
        assert!(listed.is_ok(), "{listed:?}");
        let denied = EventServiceClient::new(server.channel().await)
            .create_inbound_endpoint(with_token(
                pb::CreateInboundEndpointRequest::default(),
                &token,
            ))
            .await
            .expect_err("events.write is not granted");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);

        // The same callback again: the state was used.
        let again = browser
            .get(format!("http://{}{path}", server.http))
            .send()
            .await
            .expect("callback again");
        assert_eq!(again.status(), 400);
        server.stop().await;
    }
}
