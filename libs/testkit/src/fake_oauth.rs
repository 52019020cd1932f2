//! A local OAuth2 authorization server for tests, speaking RFC 6749 with PKCE (RFC 7636) and
//! RFC 7009 revocation at GitLab's paths (`/oauth/authorize`, `/oauth/token`, `/oauth/revoke`,
//! `/api/v4/user`), so that a GitLab profile pointed at it runs the real flow.
//!
//! It is an OpenID Connect provider too: discovery at `/.well-known/openid-configuration`, keys
//! at `/oauth/discovery/keys`, and an EdDSA-signed ID token (RFC 8032's test key 1, `kid`
//! `fake-1`) with the authorize request's `nonce` when `openid` is asked for; its claims say
//! tenant `acme` and group `platform-admins`.
//!
//! The authorize endpoint approves at once, as user `octocat` (id 1), and redirects with a code.
//! Codes are single-use; refresh tokens rotate (the old one stops working, as GitLab's do);
//! `fail_token_requests` makes the next token requests answer 503.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use sha2::{Digest, Sha256};

#[derive(Debug)]
struct Code {
    client_id: String,
    redirect_uri: String,
    challenge: Option<String>,
    scope: String,
    nonce: Option<String>,
    used: bool,
}

#[derive(Debug, Default)]
struct Inner {
    clients: HashMap<String, (String, String)>,
    codes: HashMap<String, Code>,
    access: HashMap<String, Instant>,
    refresh: HashMap<String, String>,
    counter: u64,
    access_ttl: Duration,
    fail_token_requests: usize,
    token_requests: usize,
}

/// The running fake.
#[derive(Debug, Clone)]
pub struct FakeOAuth {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

type Shared = Arc<Mutex<Inner>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Inner> {
    shared.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl FakeOAuth {
    /// Starts it on a free port of 127.0.0.1, knowing one client.
    pub async fn start(client_id: &str, client_secret: &str, redirect_uri: &str) -> FakeOAuth {
        let inner = Arc::new(Mutex::new(Inner {
            access_ttl: Duration::from_secs(3600),
            ..Inner::default()
        }));
        lock(&inner).clients.insert(
            client_id.to_owned(),
            (client_secret.to_owned(), redirect_uri.to_owned()),
        );
        let app = Router::new()
            .route("/oauth/authorize", get(authorize))
            .route("/oauth/token", post(token))
            .route("/oauth/revoke", post(revoke))
            .route("/api/v4/user", get(user))
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/oauth/discovery/keys", get(keys))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|err| panic!("binding the fake OAuth server: {err}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|err| panic!("its address: {err}"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeOAuth { addr, inner }
    }

    /// `http://127.0.0.1:port`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Access tokens issued from now on expire after `ttl`.
    pub fn set_access_ttl(&self, ttl: Duration) {
        lock(&self.inner).access_ttl = ttl;
    }

    /// The next `count` token requests answer 503.
    pub fn fail_token_requests(&self, count: usize) {
        lock(&self.inner).fail_token_requests = count;
    }

    /// Token requests answered so far, failures included.
    pub fn token_requests(&self) -> usize {
        lock(&self.inner).token_requests
    }

    /// Revokes every refresh token, as a user removing the app's access would.
    pub fn revoke_all_refresh_tokens(&self) {
        lock(&self.inner).refresh.clear();
    }
}

fn error(status: StatusCode, code: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": code, "error_description": code })),
    )
        .into_response()
}

async fn authorize(
    State(shared): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let field = |name: &str| query.get(name).cloned().unwrap_or_default();
    let mut inner = lock(&shared);
    let Some((_, registered)) = inner.clients.get(&field("client_id")).cloned() else {
        return error(StatusCode::BAD_REQUEST, "invalid_client");
    };
    if registered != field("redirect_uri") || field("response_type") != "code" {
        return error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    let challenge = query.get("code_challenge").cloned();
    if challenge.is_some() && field("code_challenge_method") != "S256" {
        return error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    inner.counter += 1;
    let code = format!("code-{}", inner.counter);
    inner.codes.insert(
        code.clone(),
        Code {
            client_id: field("client_id"),
            redirect_uri: registered.clone(),
            challenge,
            scope: field("scope"),
            nonce: query.get("nonce").cloned(),
            used: false,
        },
    );
    let mut target = match url::Url::parse(&registered) {
        Ok(url) => url,
        Err(_) => return error(StatusCode::BAD_REQUEST, "invalid_request"),
    };
    target
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &field("state"));
    Redirect::to(target.as_str()).into_response()
}

/// RFC 8032 test 1's key as PKCS #8 DER: the fixed Ed25519 prefix, then the seed.
const SIGNING_KEY_DER: [u8; 48] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
    0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec, 0x2c, 0xc4,
    0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03, 0x1c, 0xae, 0x7f, 0x60,
];
/// Its public half, base64url.
const PUBLIC_KEY_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

fn issuer(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("http://{host}")
}

async fn discovery(headers: HeaderMap) -> Response {
    let issuer = issuer(&headers);
    axum::Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/oauth/authorize"),
        "token_endpoint": format!("{issuer}/oauth/token"),
        "jwks_uri": format!("{issuer}/oauth/discovery/keys"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "code_challenge_methods_supported": ["S256"],
    }))
    .into_response()
}

async fn keys() -> Response {
    axum::Json(json!({ "keys": [{
        "kty": "OKP", "crv": "Ed25519", "x": PUBLIC_KEY_X, "kid": "fake-1", "alg": "EdDSA", "use": "sig"
    }]}))
    .into_response()
}

fn id_token(issuer: &str, client_id: &str, nonce: Option<&str>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = json!({
        "iss": issuer, "sub": "1", "aud": client_id, "iat": now, "exp": now + 300,
        "nonce": nonce, "email": "octocat@example.com", "email_verified": true, "tenant": "acme",
        "groups": ["platform-admins"],
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("fake-1".to_owned());
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ed_der(&SIGNING_KEY_DER),
    )
    .unwrap_or_else(|err| panic!("signing the fake ID token: {err}"))
}

fn issue(inner: &mut Inner, scope: &str) -> serde_json::Value {
    inner.counter += 1;
    let access = format!("access-{}", inner.counter);
    let refresh = format!("refresh-{}", inner.counter);
    let ttl = inner.access_ttl;
    inner.access.insert(access.clone(), Instant::now() + ttl);
    inner.refresh.insert(refresh.clone(), scope.to_owned());
    json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": ttl.as_secs(),
        "refresh_token": refresh,
        "scope": scope,
        "created_at": 1_700_000_000,
    })
}

/// A token request's answer and, for a code granted with `openid`, the client and nonce its ID
/// token is for.
struct Granted {
    answer: serde_json::Value,
    id_token_for: Option<(String, Option<String>)>,
}

/// A refusal: its status and RFC 6749 error code.
type Refusal = (StatusCode, &'static str);

fn exchange(shared: &Shared, form: &HashMap<String, String>) -> Result<Granted, Refusal> {
    let field = |name: &str| form.get(name).cloned().unwrap_or_default();
    let mut inner = lock(shared);
    inner.token_requests += 1;
    if inner.fail_token_requests > 0 {
        inner.fail_token_requests -= 1;
        return Err((StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"));
    }
    match inner.clients.get(&field("client_id")) {
        Some((secret, _)) if *secret == field("client_secret") => {}
        _ => return Err((StatusCode::UNAUTHORIZED, "invalid_client")),
    }
    match field("grant_type").as_str() {
        "authorization_code" => {
            let Some(code) = inner.codes.get_mut(&field("code")) else {
                return Err((StatusCode::BAD_REQUEST, "invalid_grant"));
            };
            if code.used
                || code.client_id != field("client_id")
                || code.redirect_uri != field("redirect_uri")
            {
                return Err((StatusCode::BAD_REQUEST, "invalid_grant"));
            }
            if let Some(challenge) = &code.challenge {
                let verifier = field("code_verifier");
                if URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != *challenge {
                    return Err((StatusCode::BAD_REQUEST, "invalid_grant"));
                }
            }
            code.used = true;
            let scope = code.scope.clone();
            let openid = scope
                .split(' ')
                .any(|s| s == "openid")
                .then(|| (code.client_id.clone(), code.nonce.clone()));
            Ok(Granted {
                answer: issue(&mut inner, &scope),
                id_token_for: openid,
            })
        }
        "refresh_token" => match inner.refresh.remove(&field("refresh_token")) {
            Some(scope) => Ok(Granted {
                answer: issue(&mut inner, &scope),
                id_token_for: None,
            }),
            None => Err((StatusCode::BAD_REQUEST, "invalid_grant")),
        },
        _ => Err((StatusCode::BAD_REQUEST, "unsupported_grant_type")),
    }
}

async fn token(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    match exchange(&shared, &form) {
        Err((status, code)) => error(status, code),
        Ok(Granted {
            mut answer,
            id_token_for,
        }) => {
            if let Some((client_id, nonce)) = id_token_for {
                answer["id_token"] =
                    json!(id_token(&issuer(&headers), &client_id, nonce.as_deref()));
            }
            axum::Json(answer).into_response()
        }
    }
}

async fn revoke(
    State(shared): State<Shared>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let token = form.get("token").cloned().unwrap_or_default();
    let mut inner = lock(&shared);
    inner.access.remove(&token);
    inner.refresh.remove(&token);
    // RFC 7009: 200 whether or not the token was valid.
    StatusCode::OK.into_response()
}

async fn user(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    let valid = lock(&shared)
        .access
        .get(token)
        .is_some_and(|expires| Instant::now() < *expires);
    if !valid {
        return error(StatusCode::UNAUTHORIZED, "invalid_token");
    }
    axum::Json(json!({ "id": 1, "username": "octocat", "name": "The Octocat" })).into_response()
}
