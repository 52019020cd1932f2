//! The API gateway on the HTTP edge: the credentials service over REST/JSON with the same auth,
//! errors and pagination as over gRPC; API keys; rate limits; the read cache; deprecation
//! headers; gRPC and gRPC-Web through the edge.

use prost::Message;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use switchyard_e2e::{ALL_SCOPES, Backend, TestServer, config, token};
use switchyard_proto::credentials::v1 as pb;
use tonic::Code;

/// A REST client of one server, as one bearer (a token or an API key).
struct Rest {
    http: reqwest::Client,
    base: String,
    bearer: Option<String>,
}

impl Rest {
    fn new(server: &TestServer, bearer: Option<&str>) -> Rest {
        Rest {
            http: reqwest::Client::new(),
            base: format!("http://{}", server.http),
            bearer: bearer.map(str::to_owned),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> reqwest::Response {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(bearer) = &self.bearer {
            request = request.bearer_auth(bearer);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("request")
    }

    /// The status and JSON body of a call.
    async fn json(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let response = self.call(method, path, body).await;
        let status = response.status();
        (status, response.json().await.expect("a JSON body"))
    }
}

fn reason(body: &Value) -> &str {
    body["error"]["details"]
        .as_array()
        .and_then(|details| details.iter().find_map(|d| d["reason"].as_str()))
        .unwrap_or("")
}

fn grpc_reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

fn create_body(id: &str, env: &str) -> Value {
    json!({
        "credentialId": id,
        "credential": {"kind": "CREDENTIAL_KIND_API_KEY", "provider": "openai", "labels": {"env": env}},
        "payload": {"data": "c2stdGVzdA=="}
    })
}

#[tokio::test]
async fn credentials_over_rest_have_the_auth_errors_and_pagination_of_grpc() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(config(Backend::Sqlite, dir.path())).await;
    let alice = token("acme", "alice", ALL_SCOPES);
    let rest = Rest::new(&server, Some(&alice));
    let mut grpc = server.credentials(Some(alice.clone())).await;

    for (id, env) in [("a-key", "prod"), ("b-key", "dev"), ("c-key", "prod")] {
        let (status, created) = rest
            .json(Method::POST, "/v1/credentials", Some(create_body(id, env)))
            .await;
        assert_eq!(status, 200, "{created}");
        assert_eq!(created["credential"]["name"], format!("credentials/{id}"));
    }

    // What REST reads is what gRPC reads.
    let (_, got) = rest.json(Method::GET, "/v1/credentials/a-key", None).await;
    let over_grpc = grpc
        .get_credential(pb::GetCredentialRequest {
            name: "credentials/a-key".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .credential
        .expect("credential");
    assert_eq!(got["credential"]["etag"], over_grpc.etag);
    assert_eq!(got["credential"]["currentVersion"], "1");

    // Pagination: pageSize, nextPageToken and a Link to the next page, filters kept.
    let first = rest
        .call(Method::GET, "/v1/credentials?pageSize=2", None)
        .await;
    let link = first.headers()["link"].to_str().expect("link").to_owned();
    let first: Value = first.json().await.expect("json");
    let names = |page: &Value| -> Vec<String> {
        page["credentials"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|c| c["name"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(names(&first), ["credentials/a-key", "credentials/b-key"]);
    let next = link
        .strip_prefix('<')
        .and_then(|rest| rest.split_once(">; rel=\"next\""))
        .expect("a next link")
        .0
        .to_owned();
    assert!(next.contains("pageSize=2"), "{next}");
    let (_, second) = rest.json(Method::GET, &next, None).await;
    assert_eq!(names(&second), ["credentials/c-key"]);
    assert!(second.get("nextPageToken").is_none());
    // The same token pages the same way over gRPC.
    let page_token = first["nextPageToken"].as_str().expect("token").to_owned();
    let grpc_page = grpc
        .list_credentials(pb::ListCredentialsRequest {
            page_size: 2,
            page_token,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(grpc_page.credentials.len(), 1);
    assert_eq!(grpc_page.credentials[0].name, "credentials/c-key");
    let (_, prod) = rest
        .json(
            Method::GET,
            "/v1/credentials?labels[env]=prod&fields=credentials.name",
            None,
        )
        .await;
    assert_eq!(
        prod,
        json!({"credentials": [{"name": "credentials/a-key"}, {"name": "credentials/c-key"}]})
    );

    // Every other method of the service.
    let (status, updated) = rest
        .json(
            Method::PATCH,
            "/v1/credentials/a-key?updateMask=displayName",
            Some(json!({"displayName": "Prod"})),
        )
        .await;
    assert_eq!(
        (status, updated["credential"]["displayName"].clone()),
        (StatusCode::OK, json!("Prod"))
    );
    let (status, rotated) = rest
        .json(
            Method::POST,
            "/v1/credentials/a-key:rotate",
            Some(json!({"payload": {"data": "bmV3"}})),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(rotated["version"]["name"], "credentials/a-key/versions/2");
    let (_, versions) = rest
        .json(Method::GET, "/v1/credentials/a-key/versions", None)
        .await;
    assert_eq!(versions["versions"].as_array().map(Vec::len), Some(2));
    let (status, _) = rest
        .json(
            Method::POST,
            "/v1/credentials/a-key/versions/1:disable",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = rest
        .json(Method::GET, "/v1/credentials/a-key/versions/1:access", None)
        .await;
    assert_eq!(
        (status, body["error"]["status"].clone()),
        (StatusCode::BAD_REQUEST, json!("FAILED_PRECONDITION"))
    );
    let (status, _) = rest
        .json(
            Method::POST,
            "/v1/credentials/a-key/versions/1:enable",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    let (_, accessed) = rest
        .json(Method::GET, "/v1/credentials/a-key:access", None)
        .await;
    assert_eq!(accessed["payload"]["data"], "bmV3");
    let (_, deleted) = rest
        .json(Method::DELETE, "/v1/credentials/b-key", None)
        .await;
    assert_eq!(deleted["credential"]["state"], "CREDENTIAL_STATE_DELETED");
    let (_, restored) = rest
        .json(
            Method::POST,
            "/v1/credentials/b-key:undelete",
            Some(json!({})),
        )
        .await;
    assert_eq!(restored["credential"]["state"], "CREDENTIAL_STATE_ACTIVE");
    let (status, _) = rest
        .json(Method::GET, "/v1/credentials:expiring?within=3600s", None)
        .await;
    assert_eq!(status, 200);
    let (_, audit) = rest
        .json(
            Method::GET,
            "/v1/auditEvents?action=AccessCredential&newestFirst=true",
            None,
        )
        .await;
    assert_eq!(audit["events"][0]["principal"], "alice");
    let (_, chain) = rest
        .json(Method::POST, "/v1/auditEvents:verify", Some(json!({})))
        .await;
    assert_eq!(chain["intact"], true);
    // A server stream: one JSON message per line.
    let export = rest
        .call(
            Method::POST,
            "/v1/backups:export",
            Some(json!({"passphrase": "a passphrase of some length"})),
        )
        .await;
    assert_eq!(export.headers()["content-type"], "application/x-ndjson");
    let text = export.text().await.expect("body");
    let chunks: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert!(
        !chunks.is_empty() && chunks.iter().all(|c| c["chunk"].is_string()),
        "{text}"
    );
    // A client stream: one JSON message per line, the passphrase in the first.
    let mut lines = Vec::new();
    for (index, chunk) in chunks.iter().enumerate() {
        let mut message = json!({"chunk": chunk["chunk"]});
        if index == 0 {
            message["passphrase"] = json!("a passphrase of some length");
        }
        lines.push(message.to_string());
    }
    let restored = rest
        .http
        .post(format!("{}/v1/backups:restore", rest.base))
        .bearer_auth(&alice)
        .body(lines.join("\n"))
        .send()
        .await
        .expect("restore");
    assert_eq!(restored.status(), 200);
    let restored: Value = restored.json().await.expect("json");
    assert_eq!(restored["credentialsExisting"], 3, "{restored}");
    assert_eq!(restored.get("credentialsCreated"), None, "{restored}");
    let (status, _) = rest
        .json(
            Method::POST,
            "/v1/backups:restore?passphrase=x",
            Some(json!({"chunk": ""})),
        )
        .await;
    assert_eq!(status, 400, "a client stream takes no query");

    // Errors: the same code and reason as gRPC, in the edge's one JSON shape.
    let (status, missing) = rest.json(Method::GET, "/v1/credentials/nope", None).await;
    let grpc_missing = grpc
        .get_credential(pb::GetCredentialRequest {
            name: "credentials/nope".into(),
        })
        .await
        .expect_err("not found");
    assert_eq!(status, 404);
    assert_eq!(missing["error"]["status"], "NOT_FOUND");
    assert_eq!(grpc_missing.code(), Code::NotFound);
    assert_eq!(reason(&missing), grpc_reason(&grpc_missing));
    let (status, invalid) = rest
        .json(
            Method::POST,
            "/v1/credentials",
            Some(create_body("Bad_Id", "x")),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        invalid["error"]["details"][1]["fieldViolations"][0]["field"],
        "credential_id"
    );
    let (status, bad_query) = rest
        .json(Method::GET, "/v1/credentials?pageSize=many", None)
        .await;
    assert_eq!(
        (
            status,
            bad_query["error"]["details"][1]["fieldViolations"][0]["field"].clone()
        ),
        (StatusCode::BAD_REQUEST, json!("pageSize"))
    );
    let (status, _) = rest.json(Method::PUT, "/v1/credentials/a-key", None).await;
    assert_eq!(status, 405);
    let (status, _) = rest.json(Method::GET, "/v1/nothing-here", None).await;
    assert_eq!(status, 404);

    // Auth: the same tokens and scopes as gRPC.
    let (status, body) = Rest::new(&server, None)
        .json(Method::GET, "/v1/credentials", None)
        .await;
    assert_eq!(
        (status, body["error"]["status"].clone()),
        (StatusCode::UNAUTHORIZED, json!("UNAUTHENTICATED"))
    );
    let (status, _) = Rest::new(&server, Some("not-a-token"))
        .json(Method::GET, "/v1/credentials", None)
        .await;
    assert_eq!(status, 401);
    let reader = token("acme", "reader", &["credentials.read"]);
    let (status, body) = Rest::new(&server, Some(&reader))
        .json(Method::GET, "/v1/credentials/a-key:access", None)
        .await;
    assert_eq!(
        (status, reason(&body)),
        (StatusCode::FORBIDDEN, "MISSING_SCOPE")
    );
    // Tenants stay apart.
    let other = token("globex", "bob", ALL_SCOPES);
    let (status, _) = Rest::new(&server, Some(&other))
        .json(Method::GET, "/v1/credentials/a-key", None)
        .await;
    assert_eq!(status, 404);
    server.stop().await;
}

/// A gRPC-Web frame: flag, big-endian length, message.
fn grpc_web_frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![flag];
    frame.extend_from_slice(&u32::try_from(payload.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

#[tokio::test]
async fn api_keys_act_as_their_principal_over_rest_grpc_and_grpc_web_until_revoked_sqlite() {
    api_keys_act_as_their_principal(Backend::Sqlite).await;
}

#[tokio::test]
async fn api_keys_act_as_their_principal_over_rest_grpc_and_grpc_web_until_revoked_postgres() {
    api_keys_act_as_their_principal(Backend::Postgres).await;
}

async fn api_keys_act_as_their_principal(backend: Backend) {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(config(backend, dir.path())).await;
    let admin = token("acme", "admin", &["credentials.*", "apikeys.*"]);
    let rest = Rest::new(&server, Some(&admin));
    let (status, _) = rest
        .json(
            Method::POST,
            "/v1/credentials",
            Some(create_body("a-key", "prod")),
        )
        .await;
    assert_eq!(status, 200);

    // A key can have no scope its creator lacks.
    let (status, body) = rest
        .json(
            Method::POST,
            "/v1/apiKeys",
            Some(json!({"apiKey": {"scopes": ["ai.*"]}})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, created) = rest
        .json(
            Method::POST,
            "/v1/apiKeys",
            Some(json!({"apiKey": {"displayName": "ci", "scopes": ["credentials.read", "credentials.access"]}})),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let key = created["key"].as_str().expect("key").to_owned();
    let name = created["apiKey"]["name"].as_str().expect("name").to_owned();
    let id = name.trim_start_matches("apiKeys/").to_owned();
    assert!(key.starts_with(&format!("sy_{id}_")));
    // Listed without its secret.
    let (_, listed) = rest.json(Method::GET, "/v1/apiKeys", None).await;
    assert_eq!(listed["apiKeys"][0]["prefix"], format!("sy_{id}"));
    assert!(!listed.to_string().contains(&key));

    // REST, with either header.
    let as_key = Rest::new(&server, Some(&key));
    let (status, _) = as_key
        .json(Method::GET, "/v1/credentials/a-key:access", None)
        .await;
    assert_eq!(status, 200);
    let via_header = reqwest::Client::new()
        .get(format!("http://{}/v1/credentials/a-key", server.http))
        .header("x-api-key", &key)
        .send()
        .await
        .expect("request");
    assert_eq!(via_header.status(), 200);
    let (status, body) = as_key
        .json(Method::DELETE, "/v1/credentials/a-key", None)
        .await;
    assert_eq!(
        (status, reason(&body)),
        (StatusCode::FORBIDDEN, "MISSING_SCOPE")
    );
    // The audit log names the key's principal.
    let (_, audit) = rest
        .json(Method::GET, "/v1/auditEvents?action=AccessCredential", None)
        .await;
    assert_eq!(audit["events"][0]["principal"], format!("apikey:{id}"));

    // gRPC through the edge, with the key as the bearer.
    let edge = tonic::transport::Channel::from_shared(format!("http://{}", server.http))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut grpc = pb::credential_service_client::CredentialServiceClient::new(edge);
    let mut request = tonic::Request::new(pb::GetCredentialRequest {
        name: "credentials/a-key".into(),
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("header"),
    );
    let got = grpc
        .get_credential(request)
        .await
        .expect("gRPC through the edge");
    assert_eq!(
        got.into_inner().credential.expect("credential").name,
        "credentials/a-key"
    );

    // gRPC-Web, as a browser sends it.
    let message = pb::GetCredentialRequest {
        name: "credentials/a-key".into(),
    }
    .encode_to_vec();
    let web = reqwest::Client::new()
        .post(format!(
            "http://{}/switchyard.credentials.v1.CredentialService/GetCredential",
            server.http
        ))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("x-api-key", &key)
        .body(grpc_web_frame(0, &message))
        .send()
        .await
        .expect("gRPC-Web");
    assert_eq!(web.status(), 200);
    assert!(
        web.headers()["content-type"]
            .to_str()
            .expect("type")
            .starts_with("application/grpc-web")
    );
    let body = web.bytes().await.expect("body");
    let length = u32::from_be_bytes(body[1..5].try_into().expect("length")) as usize;
    assert_eq!(body[0], 0, "a data frame first");
    let answer = pb::GetCredentialResponse::decode(&body[5..5 + length]).expect("decodes");
    assert_eq!(
        answer.credential.expect("credential").name,
        "credentials/a-key"
    );
    let trailers = String::from_utf8_lossy(&body[5 + length + 5..]).to_lowercase();
    assert_eq!(body[5 + length], 0x80, "then the trailers frame");
    assert!(trailers.contains("grpc-status:0"), "{trailers}");

    // Revoked: refused at once.
    let (status, revoked) = rest
        .json(Method::POST, &format!("/v1/{name}:revoke"), Some(json!({})))
        .await;
    assert_eq!(
        (status, revoked["apiKey"]["state"].clone()),
        (StatusCode::OK, json!("API_KEY_STATE_REVOKED"))
    );
    let (status, body) = as_key
        .json(Method::GET, "/v1/credentials/a-key", None)
        .await;
    assert_eq!(
        (status, body["error"]["status"].clone()),
        (StatusCode::UNAUTHORIZED, json!("UNAUTHENTICATED"))
    );
    let (status, _) = Rest::new(&server, Some(&format!("sy_{id}_wrong-secret")))
        .json(Method::GET, "/v1/credentials/a-key", None)
        .await;
    assert_eq!(status, 401);
    server.stop().await;
}

#[tokio::test]
async fn rate_limits_answer_429_with_ratelimit_headers_per_principal_and_route() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = config(Backend::Sqlite, dir.path());
    config.gateway.api.rate_limits = toml::from_str::<toml::Table>(
        r#"rules = [{ route = "switchyard.credentials.v1.CredentialService.*", per = ["principal", "route"], requests = 2, period = "1m" }]"#,
    )
    .expect("toml")["rules"]
        .clone()
        .try_into()
        .expect("rules");
    let server = TestServer::start(config).await;
    let alice = Rest::new(&server, Some(&token("acme", "alice", ALL_SCOPES)));
    let first = alice.call(Method::GET, "/v1/credentials", None).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["ratelimit-limit"], "2");
    assert_eq!(first.headers()["ratelimit-remaining"], "1");
    assert_eq!(first.headers()["ratelimit-policy"], "2;w=60");
    assert_eq!(
        alice
            .call(Method::GET, "/v1/credentials", None)
            .await
            .status(),
        200
    );
    let limited = alice.call(Method::GET, "/v1/credentials", None).await;
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["ratelimit-remaining"], "0");
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .expect("text")
        .parse()
        .expect("seconds");
    assert!((1..=30).contains(&retry), "{retry}");
    let body: Value = limited.json().await.expect("json");
    assert_eq!(
        (body["error"]["status"].clone(), reason(&body)),
        (json!("RESOURCE_EXHAUSTED"), "RATE_LIMITED")
    );
    // Another route, another principal: their own buckets.
    assert_eq!(
        alice
            .call(Method::GET, "/v1/credentials:expiring", None)
            .await
            .status(),
        200
    );
    let bob = Rest::new(&server, Some(&token("acme", "bob", ALL_SCOPES)));
    assert_eq!(
        bob.call(Method::GET, "/v1/credentials", None)
            .await
            .status(),
        200
    );
    server.stop().await;
}

#[tokio::test]
async fn reads_are_cached_per_principal_until_a_write_to_the_collection() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = config(Backend::Sqlite, dir.path());
    config.gateway.api.cache.routes =
        toml::from_str(r#""switchyard.credentials.v1.CredentialService.ListCredentials" = "60s""#)
            .expect("cache routes");
    let server = TestServer::start(config.clone()).await;
    let alice = Rest::new(&server, Some(&token("acme", "alice", ALL_SCOPES)));
    let count = |body: &Value| body["credentials"].as_array().map_or(0, Vec::len);

    let miss = alice.call(Method::GET, "/v1/credentials", None).await;
    assert_eq!(miss.headers()["x-cache"], "miss");
    assert_eq!(miss.headers()["cache-control"], "private, max-age=60");
    let hit = alice.call(Method::GET, "/v1/credentials", None).await;
    assert_eq!(hit.headers()["x-cache"], "hit");
    assert!(hit.headers().contains_key("age"));
    // Another principal of the tenant has its own entry.
    let bob = Rest::new(&server, Some(&token("acme", "bob", ALL_SCOPES)));
    assert_eq!(
        bob.call(Method::GET, "/v1/credentials", None)
            .await
            .headers()["x-cache"],
        "miss"
    );
    // A write through the gateway makes the collection's answers stale.
    alice
        .json(
            Method::POST,
            "/v1/credentials",
            Some(create_body("a-key", "prod")),
        )
        .await;
    let fresh = alice.call(Method::GET, "/v1/credentials", None).await;
    assert_eq!(fresh.headers()["x-cache"], "miss");
    assert_eq!(count(&fresh.json().await.expect("json")), 1);
    // Cache-Control: no-cache asks past the cache.
    let bypass = alice
        .http
        .get(format!("{}/v1/credentials", alice.base))
        .bearer_auth(alice.bearer.as_deref().unwrap_or(""))
        .header("cache-control", "no-cache")
        .send()
        .await
        .expect("request");
    assert_eq!(bypass.headers()["x-cache"], "miss");
    server.stop().await;

    // An audited method is never cached: the gateway refuses to start.
    config.gateway.api.cache.routes =
        toml::from_str(r#""switchyard.credentials.v1.CredentialService.AccessCredential" = "60s""#)
            .expect("cache routes");
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let http = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let refused = switchyard::run(
        config,
        switchyard::ServiceName::ALL.iter().copied().collect(),
        grpc,
        http,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect_err("refused");
    assert!(format!("{refused:#}").contains("audited"), "{refused:#}");
}

#[tokio::test]
async fn deprecated_versions_answer_with_deprecation_and_sunset() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = config(Backend::Sqlite, dir.path());
    config.gateway.api.deprecated_versions = toml::from_str(
        r#"v1 = { deprecation = "2026-11-01T00:00:00Z", sunset = "2027-05-01T00:00:00Z", link = "https://switchyard.example/v2" }"#,
    )
    .expect("deprecations");
    let server = TestServer::start(config).await;
    let alice = Rest::new(&server, Some(&token("acme", "alice", ALL_SCOPES)));
    let answer = alice.call(Method::GET, "/v1/credentials", None).await;
    assert_eq!(answer.headers()["deprecation"], "@1793491200");
    assert_eq!(answer.headers()["sunset"], "Sat, 01 May 2027 00:00:00 GMT");
    assert_eq!(
        answer.headers()["link"],
        "<https://switchyard.example/v2>; rel=\"deprecation\""
    );
    // Errors carry them too.
    let missing = alice.call(Method::GET, "/v1/credentials/nope", None).await;
    assert_eq!(missing.status(), 404);
    assert!(missing.headers().contains_key("deprecation"));
    server.stop().await;
}

#[tokio::test]
async fn request_ids_are_propagated_and_bodies_are_bounded() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = config(Backend::Sqlite, dir.path());
    config.gateway.api.max_body_bytes = 2048;
    let server = TestServer::start(config).await;
    let alice = Rest::new(&server, Some(&token("acme", "alice", ALL_SCOPES)));
    let (status, _) = alice
        .json(
            Method::POST,
            "/v1/credentials",
            Some(create_body("a-key", "prod")),
        )
        .await;
    assert_eq!(status, 200);
    let accessed = alice
        .http
        .get(format!("{}/v1/credentials/a-key:access", alice.base))
        .bearer_auth(alice.bearer.as_deref().unwrap_or(""))
        .header("x-request-id", "req-from-the-caller-1")
        .send()
        .await
        .expect("request");
    assert_eq!(accessed.status(), 200);
    assert_eq!(accessed.headers()["x-request-id"], "req-from-the-caller-1");
    let (_, audit) = alice
        .json(Method::GET, "/v1/auditEvents?action=AccessCredential", None)
        .await;
    assert_eq!(audit["events"][0]["requestId"], "req-from-the-caller-1");
    let mut large = create_body("b-key", "prod");
    large["credential"]["displayName"] = json!("x".repeat(4096));
    let (status, body) = alice
        .json(Method::POST, "/v1/credentials", Some(large))
        .await;
    assert_eq!(
        (status, reason(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "BODY_TOO_LARGE")
    );
    server.stop().await;
}

#[tokio::test]
async fn a_gateway_of_its_own_serves_the_credentials_service_of_another_process() {
    let credentials_dir = tempfile::tempdir().expect("dir");
    let credentials = TestServer::start_services(
        config(Backend::Sqlite, credentials_dir.path()),
        &[switchyard::ServiceName::Credentials],
    )
    .await;
    let gateway_dir = tempfile::tempdir().expect("dir");
    let mut gateway_config = config(Backend::Sqlite, gateway_dir.path());
    let upstream = format!("http://{}", credentials.grpc);
    gateway_config.gateway.credentials_url = Some(upstream.clone());
    gateway_config.gateway.api.upstreams =
        [("switchyard.credentials.v1".to_owned(), upstream)].into();
    gateway_config.gateway.api.cors_allowed_origins = vec!["https://console.example".into()];
    let gateway =
        TestServer::start_services(gateway_config, &[switchyard::ServiceName::Gateway]).await;

    let alice = Rest::new(
        &gateway,
        Some(&token("acme", "alice", &["credentials.*", "events.*"])),
    );
    let (status, created) = alice
        .json(
            Method::POST,
            "/v1/credentials",
            Some(create_body("a-key", "prod")),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    // It is in the other process.
    let stored = credentials
        .credentials(Some(token("acme", "alice", ALL_SCOPES)))
        .await
        .get_credential(pb::GetCredentialRequest {
            name: "credentials/a-key".into(),
        })
        .await
        .expect("stored by the credentials process");
    assert_eq!(
        stored.into_inner().credential.expect("credential").name,
        "credentials/a-key"
    );
    // The gateway's own APIs are served by itself.
    let (status, _) = alice.json(Method::GET, "/v1/subscriptions", None).await;
    assert_eq!(status, 200);
    // A browser page of an allowed origin may call.
    let preflight = reqwest::Client::new()
        .request(
            Method::OPTIONS,
            format!("http://{}/v1/credentials", gateway.http),
        )
        .header("origin", "https://console.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .expect("preflight");
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://console.example"
    );
    gateway.stop().await;
    credentials.stop().await;
}

#[tokio::test]
async fn replicas_count_rate_limits_together_in_redis() {
    let redis = std::env::var("SWITCHYARD_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let rules: toml::Table = toml::from_str(
        r#"rules = [{ route = "switchyard.credentials.v1.CredentialService.*", per = ["tenant"], requests = 3, period = "1m" }]"#,
    )
    .expect("toml");
    let mut replicas = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().expect("dir");
        let mut config = config(Backend::Sqlite, dir.path());
        config.gateway.api.rate_limits = rules["rules"].clone().try_into().expect("rules");
        config.gateway.api.rate_limit_redis = Some(redis.clone().into());
        replicas.push(TestServer::start(config).await);
        dirs.push(dir);
    }
    // A tenant of its own, so that a run within a minute of the last starts with full buckets.
    let tenant = format!("t{}", uuid::Uuid::new_v4().simple());
    let bearer = token(&tenant, "alice", ALL_SCOPES);
    let statuses: Vec<u16> = {
        let mut statuses = Vec::new();
        for replica in [0, 1, 0, 1] {
            let rest = Rest::new(&replicas[replica], Some(&bearer));
            let answer = rest.call(Method::GET, "/v1/credentials", None).await;
            statuses.push(answer.status().as_u16());
        }
        statuses
    };
    assert_eq!(
        statuses,
        [200, 200, 200, 429],
        "three a minute for the tenant, across replicas"
    );
    for replica in replicas {
        replica.stop().await;
    }
}
