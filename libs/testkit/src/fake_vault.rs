//! A fake HashiCorp Vault server for tests.
//!
//! It reproduces, over HTTP on `127.0.0.1`, the parts of Vault's HTTP API v1 (Vault 1.x,
//! <https://developer.hashicorp.com/vault/api-docs>) that Switchyard uses, with Vault's response
//! envelope (`request_id`, `lease_id`, `renewable`, `lease_duration`, `data`, `wrap_info`,
//! `warnings`, `auth`, `mount_type`) and its error body `{"errors": [...]}`:
//!
//! - KV version 2 (default mount `secret`):
//!   - `GET  /v1/{mount}/data/{path}[?version=n]`: read a version (404 `{"errors":[]}` if absent);
//!   - `POST|PUT /v1/{mount}/data/{path}`: write `{"data": {...}, "options": {"cas": n}}`, with
//!     the check-and-set error (400) when `cas` does not match the current version; ten versions
//!     are kept, as with Vault's default `max_versions`;
//!   - `GET /v1/{mount}/metadata/{path}`: read metadata and the versions map;
//!   - `DELETE /v1/{mount}/metadata/{path}`: delete the secret and all its versions (204);
//!   - `LIST /v1/{mount}/metadata/{path}` and `GET ...?list=true`: `{"keys": [...]}`, folders
//!     with a trailing `/`, 404 `{"errors":[]}` when nothing is below the path.
//! - Transit (default mount `transit`), with a real AEAD per key version so that rotation, rewrap
//!   and `min_decryption_version` behave as in Vault. The fake encrypts with ChaCha20-Poly1305
//!   whatever the key type, in Vault's ciphertext layout `vault:v{n}:base64(nonce ‖ ciphertext ‖
//!   tag)` with a 96-bit nonce:
//!   - `GET /v1/{mount}/keys/{name}` (404 if absent), `POST /v1/{mount}/keys/{name}` (create;
//!     returns the key like Vault 1.12+, with a warning if it already existed),
//!     `POST /v1/{mount}/keys/{name}/rotate`;
//!   - `POST /v1/{mount}/encrypt/{name}` (creates the key if missing, as Vault does),
//!     `POST /v1/{mount}/decrypt/{name}`, `POST /v1/{mount}/rewrap/{name}`.
//! - Auth: `POST /v1/auth/approle/login`, `POST /v1/auth/kubernetes/login`,
//!   `POST /v1/auth/token/renew-self`, `GET /v1/auth/token/lookup-self`.
//!
//! Every other request needs a valid, unexpired `X-Vault-Token` (403 `{"errors":["permission
//! denied"]}` otherwise). With a namespace configured, requests must carry it in
//! `X-Vault-Namespace`: without it the login mounts do not exist and tokens are not valid, as for
//! a namespace's mounts and tokens seen from the root namespace. Unknown paths answer 404 `no
//! handler for route`, unsupported methods 405.
//!
//! Not reproduced: policies (every valid token may do everything, except paths refused with
//! [`FakeVault::deny`]), namespaces given as a path prefix, batch operations, key derivation,
//! convergent encryption, soft deletes, response wrapping.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use rand::RngCore;
use rand::rngs::OsRng;
use serde_json::{Map, Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Versions of a KV v2 secret kept, as with Vault's default `max_versions`.
const KV_MAX_VERSIONS: usize = 10;

/// One request as the fake received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// The HTTP method, such as `GET` or `LIST`.
    pub method: String,
    /// The path after `/v1/`, such as `secret/data/switchyard/a/b`.
    pub path: String,
    /// The `X-Vault-Namespace` header, if any.
    pub namespace: Option<String>,
    /// The `X-Vault-Token` header, if any.
    pub token: Option<String>,
}

/// A KV v2 secret as stored: every kept version.
#[derive(Debug, Clone, PartialEq)]
pub struct KvSecret {
    /// The newest version.
    pub current_version: u64,
    /// The oldest version still kept.
    pub oldest_version: u64,
    /// When the secret was first written (RFC 3339).
    pub created_time: String,
    /// When it was last written.
    pub updated_time: String,
    /// The kept versions by number.
    pub versions: BTreeMap<u64, KvVersion>,
}

/// One version of a KV v2 secret.
#[derive(Debug, Clone, PartialEq)]
pub struct KvVersion {
    /// The `data` object written.
    pub data: Value,
    /// When it was written (RFC 3339).
    pub created_time: String,
}

struct Token {
    accessor: String,
    policies: Vec<String>,
    /// Zero for a token that never expires.
    ttl: Duration,
    expires_at: Option<Instant>,
    renewable: bool,
    path: String,
    display_name: String,
    meta: Option<Value>,
    issued: SystemTime,
}

struct TransitKey {
    /// Key material and creation time (Unix seconds) by version.
    versions: BTreeMap<u32, ([u8; 32], u64)>,
    min_decryption_version: u32,
}

impl TransitKey {
    fn new() -> Self {
        let mut key = TransitKey {
            versions: BTreeMap::new(),
            min_decryption_version: 1,
        };
        key.rotate();
        key
    }

    fn latest(&self) -> u32 {
        self.versions.keys().next_back().copied().unwrap_or(0)
    }

    fn rotate(&mut self) {
        let mut material = [0u8; 32];
        OsRng.fill_bytes(&mut material);
        let version = self.latest() + 1;
        self.versions.insert(version, (material, unix_now()));
    }

    fn info(&self, name: &str) -> Value {
        let keys: Map<String, Value> = self
            .versions
            .iter()
            .map(|(version, (_, created))| (version.to_string(), json!(created)))
            .collect();
        json!({
            "allow_plaintext_backup": false,
            "auto_rotate_period": 0,
            "deletion_allowed": false,
            "derived": false,
            "exportable": false,
            "imported_key": false,
            "keys": keys,
            "latest_version": self.latest(),
            "min_available_version": 0,
            "min_decryption_version": self.min_decryption_version,
            "min_encryption_version": 0,
            "name": name,
            "supports_decryption": true,
            "supports_derivation": true,
            "supports_encryption": true,
            "supports_signing": false,
            "type": "aes256-gcm96",
        })
    }

    fn encrypt(&self, plaintext: &[u8]) -> Result<(String, u32), String> {
        let version = self.latest();
        let (material, _) = self
            .versions
            .get(&version)
            .ok_or_else(|| "encryption key not found".to_owned())?;
        let cipher =
            ChaCha20Poly1305::new_from_slice(material).map_err(|_| "invalid key".to_owned())?;
        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut nonce);
        let sealed = cipher
            .encrypt(Nonce::from_slice(&nonce), plaintext)
            .map_err(|_| "encryption failed".to_owned())?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        Ok((format!("vault:v{version}:{}", BASE64.encode(blob)), version))
    }

    fn decrypt(&self, ciphertext: &str) -> Result<Vec<u8>, String> {
        let rest = ciphertext
            .strip_prefix("vault:")
            .ok_or_else(|| "invalid ciphertext: no prefix".to_owned())?;
        let (version, encoded) = rest
            .split_once(':')
            .ok_or_else(|| "invalid ciphertext: wrong number of fields".to_owned())?;
        let version: u32 = version
            .strip_prefix('v')
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| "invalid ciphertext: version number could not be decoded".to_owned())?;
        if version < self.min_decryption_version {
            return Err(
                "ciphertext or signature version is disallowed by policy (too old)".to_owned(),
            );
        }
        let (material, _) = self
            .versions
            .get(&version)
            .ok_or_else(|| "invalid key version".to_owned())?;
        let blob = BASE64
            .decode(encoded)
            .map_err(|_| "invalid ciphertext: could not decode base64".to_owned())?;
        if blob.len() < 12 {
            return Err("invalid ciphertext: too short".to_owned());
        }
        let (nonce, sealed) = blob.split_at(12);
        let cipher =
            ChaCha20Poly1305::new_from_slice(material).map_err(|_| "invalid key".to_owned())?;
        cipher
            .decrypt(Nonce::from_slice(nonce), sealed)
            .map_err(|_| "cipher: message authentication failed".to_owned())
    }
}

struct AppRole {
    mount: String,
    role_id: String,
    secret_id: String,
}

struct KubernetesRole {
    mount: String,
    role: String,
    jwt: String,
}

struct State {
    namespace: Option<String>,
    root_token: String,
    tokens: HashMap<String, Token>,
    token_ttl: Duration,
    renewable: bool,
    approle: Option<AppRole>,
    kubernetes: Option<KubernetesRole>,
    refuse_renewals: bool,
    fail_next: usize,
    denied: Vec<String>,
    logins: u64,
    renewals: u64,
    requests: Vec<RecordedRequest>,
    kv: HashMap<String, BTreeMap<String, KvSecret>>,
    transit: HashMap<String, BTreeMap<String, TransitKey>>,
}

type Shared = Arc<Mutex<State>>;

/// A running fake Vault server. It stops when dropped.
#[derive(Debug)]
pub struct FakeVault {
    address: String,
    state: Shared,
    server: JoinHandle<()>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("namespace", &self.namespace)
            .field("logins", &self.logins)
            .field("renewals", &self.renewals)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeVault {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeVault {
    /// Starts a server on `127.0.0.1` with a KV v2 engine at `secret`, Transit at `transit`, a
    /// root token ([`FakeVault::root_token`]), and tokens issued for one hour, renewable.
    pub async fn start() -> FakeVault {
        let root_token = random_token();
        let mut tokens = HashMap::new();
        tokens.insert(
            root_token.clone(),
            Token {
                accessor: random_id(),
                policies: vec!["root".to_owned()],
                ttl: Duration::ZERO,
                expires_at: None,
                renewable: false,
                path: "auth/token/root".to_owned(),
                display_name: "root".to_owned(),
                meta: None,
                issued: SystemTime::now(),
            },
        );
        let state = Arc::new(Mutex::new(State {
            namespace: None,
            root_token,
            tokens,
            token_ttl: Duration::from_secs(3600),
            renewable: true,
            approle: None,
            kubernetes: None,
            refuse_renewals: false,
            fail_next: 0,
            denied: Vec::new(),
            logins: 0,
            renewals: 0,
            requests: Vec::new(),
            kv: HashMap::from([("secret".to_owned(), BTreeMap::new())]),
            transit: HashMap::from([("transit".to_owned(), BTreeMap::new())]),
        }));
        // Binding fails only on a host without a loopback interface, where no test can run.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fake Vault to 127.0.0.1");
        let address = format!(
            "http://{}",
            listener.local_addr().expect("the fake Vault's address")
        );
        let app = Router::new().fallback(handle).with_state(state.clone());
        let server = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                eprintln!("fake Vault stopped: {err}");
            }
        });
        FakeVault {
            address,
            state,
            server,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The address to give a client, such as `http://127.0.0.1:41234`.
    pub fn address(&self) -> String {
        self.address.clone()
    }

    /// A token that never expires and may do everything.
    pub fn root_token(&self) -> String {
        self.state().root_token.clone()
    }

    /// Puts the mounts and tokens in the namespace `namespace` (see the module documentation).
    pub fn with_namespace(self, namespace: &str) -> Self {
        self.state().namespace = Some(namespace.trim_matches('/').to_owned());
        self
    }

    /// Enables AppRole at `auth/approle` with one role.
    pub fn with_approle(self, role_id: &str, secret_id: &str) -> Self {
        self.state().approle = Some(AppRole {
            mount: "approle".to_owned(),
            role_id: role_id.to_owned(),
            secret_id: secret_id.to_owned(),
        });
        self
    }

    /// Enables Kubernetes auth at `auth/kubernetes` with one role that accepts one JWT.
    pub fn with_kubernetes_role(self, role: &str, jwt: &str) -> Self {
        self.state().kubernetes = Some(KubernetesRole {
            mount: "kubernetes".to_owned(),
            role: role.to_owned(),
            jwt: jwt.to_owned(),
        });
        self
    }

    /// The TTL of tokens issued from now on, by logins and [`FakeVault::issue_token`]; whole
    /// seconds, as Vault counts them.
    pub fn with_token_ttl(self, ttl: Duration) -> Self {
        self.state().token_ttl = Duration::from_secs(ttl.as_secs().max(1));
        self
    }

    /// Whether tokens issued from now on are renewable.
    pub fn with_renewable_tokens(self, renewable: bool) -> Self {
        self.state().renewable = renewable;
        self
    }

    /// Mounts another KV v2 engine.
    pub fn with_kv_mount(self, mount: &str) -> Self {
        self.state().kv.entry(mount.to_owned()).or_default();
        self
    }

    /// Mounts another Transit engine.
    pub fn with_transit_mount(self, mount: &str) -> Self {
        self.state().transit.entry(mount.to_owned()).or_default();
        self
    }

    /// Issues a token with the configured TTL and renewability, as `vault token create` would.
    pub fn issue_token(&self) -> String {
        issue(&mut self.state(), "auth/token/create", "token", None)
    }

    /// Revokes a token.
    pub fn revoke_token(&self, token: &str) {
        self.state().tokens.remove(token);
    }

    /// Makes `renew-self` answer 403, as when the policy does not allow it.
    pub fn refuse_renewals(&self, refuse: bool) {
        self.state().refuse_renewals = refuse;
    }

    /// Makes the next `count` requests fail with 503 `Vault is sealed`.
    pub fn fail_next_requests(&self, count: usize) {
        self.state().fail_next = count;
    }

    /// Answers 403 to every authenticated request whose path (after `/v1/`) starts with `prefix`.
    pub fn deny(&self, prefix: &str) {
        self.state().denied.push(prefix.to_owned());
    }

    /// Sets a Transit key's `min_decryption_version`, as `POST {mount}/keys/{name}/config` does.
    pub fn set_min_decryption_version(&self, mount: &str, key: &str, version: u32) {
        if let Some(key) = self
            .state()
            .transit
            .get_mut(mount)
            .and_then(|keys| keys.get_mut(key))
        {
            key.min_decryption_version = version;
        }
    }

    /// The latest version of a Transit key, if it exists.
    pub fn transit_latest_version(&self, mount: &str, key: &str) -> Option<u32> {
        self.state()
            .transit
            .get(mount)
            .and_then(|keys| keys.get(key))
            .map(TransitKey::latest)
    }

    /// Successful logins (AppRole and Kubernetes).
    pub fn logins(&self) -> u64 {
        self.state().logins
    }

    /// Successful token renewals.
    pub fn renewals(&self) -> u64 {
        self.state().renewals
    }

    /// Requests received for `path` (after `/v1/`, such as `auth/token/renew-self`).
    pub fn request_count(&self, path: &str) -> usize {
        self.state()
            .requests
            .iter()
            .filter(|request| request.path == path)
            .count()
    }

    /// Every request received, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state().requests.clone()
    }

    /// A KV v2 secret as stored, with all its kept versions.
    pub fn kv_secret(&self, mount: &str, path: &str) -> Option<KvSecret> {
        self.state()
            .kv
            .get(mount)
            .and_then(|secrets| secrets.get(path.trim_matches('/')))
            .cloned()
    }

    /// Writes a new version of a KV v2 secret directly, bypassing the API: for simulating data
    /// that was tampered with or written by someone else.
    pub fn kv_write(&self, mount: &str, path: &str, data: Value) {
        if let Some(secrets) = self.state().kv.get_mut(mount) {
            kv_write(secrets, path.trim_matches('/'), &json!({ "data": data }));
        }
    }

    /// The paths of every KV v2 secret in `mount`.
    pub fn kv_paths(&self, mount: &str) -> Vec<String> {
        self.state()
            .kv
            .get(mount)
            .map(|secrets| secrets.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Everything stored in a KV v2 mount, every version, as JSON text: for asserting what is
    /// (not) stored.
    pub fn kv_dump(&self, mount: &str) -> String {
        let state = self.state();
        let dump: Map<String, Value> = state
            .kv
            .get(mount)
            .map(|secrets| {
                secrets
                    .iter()
                    .map(|(path, secret)| {
                        let versions: Map<String, Value> = secret
                            .versions
                            .iter()
                            .map(|(version, kept)| (version.to_string(), kept.data.clone()))
                            .collect();
                        (path.clone(), Value::Object(versions))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Value::Object(dump).to_string()
    }
}

fn lock(state: &Shared) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn random_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Tokens look like Vault 1.10+ service tokens.
fn random_token() -> String {
    let mut bytes = [0u8; 18];
    OsRng.fill_bytes(&mut bytes);
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    format!("hvs.{encoded}")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_nanos(time).to_string()
}

fn issue(state: &mut State, path: &str, display_name: &str, meta: Option<Value>) -> String {
    let token = random_token();
    let ttl = state.token_ttl;
    state.tokens.insert(
        token.clone(),
        Token {
            accessor: random_id(),
            policies: vec!["default".to_owned(), "switchyard".to_owned()],
            ttl,
            expires_at: Some(Instant::now() + ttl),
            renewable: state.renewable,
            path: path.to_owned(),
            display_name: display_name.to_owned(),
            meta,
            issued: SystemTime::now(),
        },
    );
    token
}

// ---- responses ----

fn envelope(
    mount_type: &str,
    data: Option<Value>,
    auth: Option<Value>,
    warnings: Option<Vec<String>>,
) -> Value {
    json!({
        "request_id": random_id(),
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": data,
        "wrap_info": null,
        "warnings": warnings,
        "auth": auth,
        "mount_type": mount_type,
    })
}

fn ok(mount_type: &str, data: Value) -> Response {
    (
        StatusCode::OK,
        axum::Json(envelope(mount_type, Some(data), None, None)),
    )
        .into_response()
}

fn errors(status: StatusCode, messages: &[&str]) -> Response {
    (status, axum::Json(json!({ "errors": messages }))).into_response()
}

fn permission_denied() -> Response {
    errors(StatusCode::FORBIDDEN, &["permission denied"])
}

fn not_found() -> Response {
    errors(StatusCode::NOT_FOUND, &[])
}

fn bad_request(message: &str) -> Response {
    errors(StatusCode::BAD_REQUEST, &[message])
}

fn no_route(path: &str) -> Response {
    let message = format!("no handler for route \"{path}\". route entry not found.");
    errors(StatusCode::NOT_FOUND, &[&message])
}

fn unsupported() -> Response {
    errors(
        StatusCode::METHOD_NOT_ALLOWED,
        &["1 error occurred:\n\t* unsupported operation\n\n"],
    )
}

// ---- request handling ----

/// Vault's logical operations, from the HTTP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Read,
    List,
    Update,
    Delete,
}

fn operation(method: &Method, query: &HashMap<String, String>) -> Option<Operation> {
    match method.as_str() {
        "GET" if query.get("list").is_some_and(|v| v == "true") => Some(Operation::List),
        "GET" => Some(Operation::Read),
        "LIST" => Some(Operation::List),
        "POST" | "PUT" => Some(Operation::Update),
        "DELETE" => Some(Operation::Delete),
        _ => None,
    }
}

fn parse_query(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) => (key.to_owned(), value.to_owned()),
            None => (pair.to_owned(), String::new()),
        })
        .collect()
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

fn string_field<'a>(body: &'a Value, name: &str) -> Option<&'a str> {
    body.get(name).and_then(Value::as_str)
}

async fn handle(
    AxumState(state): AxumState<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(path) = uri.path().strip_prefix("/v1/") else {
        return not_found();
    };
    let path = path.to_owned();
    let namespace = header(&headers, "x-vault-namespace");
    let token = header(&headers, "x-vault-token");
    let mut state = lock(&state);
    state.requests.push(RecordedRequest {
        method: method.as_str().to_owned(),
        path: path.clone(),
        namespace: namespace.clone(),
        token: token.clone(),
    });
    if state.fail_next > 0 {
        state.fail_next -= 1;
        return errors(StatusCode::SERVICE_UNAVAILABLE, &["Vault is sealed"]);
    }

    let query = parse_query(&uri);
    let Some(op) = operation(&method, &query) else {
        return unsupported();
    };
    let body: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(body) => body,
            Err(err) => return bad_request(&format!("failed to parse JSON input: {err}")),
        }
    };
    let in_namespace = state.namespace.as_deref()
        == namespace
            .as_deref()
            .map(|ns| ns.trim_matches('/'))
            .filter(|ns| !ns.is_empty());

    if let Some(mount) = path
        .strip_prefix("auth/")
        .and_then(|rest| rest.strip_suffix("/login"))
    {
        if !in_namespace {
            return no_route(&path);
        }
        if op != Operation::Update {
            return unsupported();
        }
        return login(&mut state, mount, &body).unwrap_or_else(|| no_route(&path));
    }

    let Some(token) = token.filter(|token| in_namespace && token_valid(&state, token)) else {
        return permission_denied();
    };
    if state.denied.iter().any(|prefix| path.starts_with(prefix)) {
        return permission_denied();
    }

    match path.as_str() {
        "auth/token/lookup-self" => {
            return match op {
                Operation::Read | Operation::Update => lookup_self(&state, &token),
                _ => unsupported(),
            };
        }
        "auth/token/renew-self" => {
            return match op {
                Operation::Update => renew_self(&mut state, &token),
                _ => unsupported(),
            };
        }
        _ => {}
    }

    let (mount, rest) = path.split_once('/').unwrap_or((path.as_str(), ""));
    if let Some(secrets) = state.kv.get_mut(mount) {
        return kv(secrets, rest, op, &query, &body).unwrap_or_else(|| no_route(&path));
    }
    if let Some(keys) = state.transit.get_mut(mount) {
        return transit(keys, rest, op, &body).unwrap_or_else(|| no_route(&path));
    }
    no_route(&path)
}

fn token_valid(state: &State, token: &str) -> bool {
    state.tokens.get(token).is_some_and(|token| {
        token
            .expires_at
            .is_none_or(|expires_at| Instant::now() < expires_at)
    })
}

fn auth_block(state: &State, token: &str) -> Value {
    let Some(info) = state.tokens.get(token) else {
        return Value::Null;
    };
    json!({
        "client_token": token,
        "accessor": info.accessor,
        "policies": info.policies,
        "token_policies": info.policies,
        "identity_policies": null,
        "metadata": info.meta,
        "lease_duration": info.ttl.as_secs(),
        "renewable": info.renewable,
        "entity_id": "",
        "token_type": "service",
        "orphan": true,
        "mfa_requirement": null,
        "num_uses": 0,
    })
}

fn auth_response(state: &State, mount_type: &str, token: &str) -> Response {
    let body = envelope(mount_type, None, Some(auth_block(state, token)), None);
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// `None` when no auth method is mounted at `mount`.
fn login(state: &mut State, mount: &str, body: &Value) -> Option<Response> {
    let approle = state
        .approle
        .as_ref()
        .filter(|approle| approle.mount == mount)
        .map(|approle| (approle.role_id.clone(), approle.secret_id.clone()));
    if let Some((expected_role_id, expected_secret_id)) = approle {
        let Some(role_id) = string_field(body, "role_id").filter(|r| !r.is_empty()) else {
            return Some(bad_request("missing role_id"));
        };
        let secret_id = string_field(body, "secret_id").unwrap_or_default();
        if role_id != expected_role_id || secret_id != expected_secret_id {
            return Some(bad_request("invalid role or secret ID"));
        }
        let meta = json!({ "role_name": "switchyard" });
        let token = issue(state, &format!("auth/{mount}/login"), "approle", Some(meta));
        state.logins += 1;
        return Some(auth_response(state, "approle", &token));
    }
    let kubernetes = state
        .kubernetes
        .as_ref()
        .filter(|kubernetes| kubernetes.mount == mount)
        .map(|kubernetes| (kubernetes.role.clone(), kubernetes.jwt.clone()));
    if let Some((expected_role, expected_jwt)) = kubernetes {
        let role = string_field(body, "role").unwrap_or_default();
        if role.is_empty() {
            return Some(bad_request("missing role"));
        }
        if role != expected_role {
            return Some(bad_request(&format!("invalid role name \"{role}\"")));
        }
        if string_field(body, "jwt") != Some(expected_jwt.as_str()) {
            return Some(permission_denied());
        }
        let meta = json!({
            "role": role,
            "service_account_name": "switchyard",
            "service_account_namespace": "switchyard",
            "service_account_secret_name": "",
            "service_account_uid": random_id(),
        });
        let token = issue(
            state,
            &format!("auth/{mount}/login"),
            "kubernetes-switchyard",
            Some(meta),
        );
        state.logins += 1;
        return Some(auth_response(state, "kubernetes", &token));
    }
    None
}

fn lookup_self(state: &State, token: &str) -> Response {
    let Some(info) = state.tokens.get(token) else {
        return permission_denied();
    };
    let remaining = info
        .expires_at
        .map(|at| at.saturating_duration_since(Instant::now()).as_secs())
        .unwrap_or(0);
    let expire_time = info
        .expires_at
        .map(|at| rfc3339(SystemTime::now() + at.saturating_duration_since(Instant::now())));
    let issued = info
        .issued
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    ok(
        "token",
        json!({
            "accessor": info.accessor,
            "creation_time": issued,
            "creation_ttl": info.ttl.as_secs(),
            "display_name": info.display_name,
            "entity_id": "",
            "expire_time": expire_time,
            "explicit_max_ttl": 0,
            "id": token,
            "issue_time": rfc3339(info.issued),
            "meta": info.meta,
            "num_uses": 0,
            "orphan": true,
            "path": info.path,
            "policies": info.policies,
            "renewable": info.renewable,
            "ttl": remaining,
            "type": "service",
        }),
    )
}

fn renew_self(state: &mut State, token: &str) -> Response {
    if state.refuse_renewals {
        return permission_denied();
    }
    let Some(info) = state.tokens.get_mut(token) else {
        return permission_denied();
    };
    if !info.renewable || info.ttl.is_zero() {
        return bad_request("lease is not renewable");
    }
    info.expires_at = Some(Instant::now() + info.ttl);
    state.renewals += 1;
    auth_response(state, "token", token)
}

// ---- KV version 2 ----

fn kv(
    secrets: &mut BTreeMap<String, KvSecret>,
    rest: &str,
    op: Operation,
    query: &HashMap<String, String>,
    body: &Value,
) -> Option<Response> {
    if let Some(path) = rest.strip_prefix("data/") {
        let path = path.trim_matches('/');
        return Some(match op {
            Operation::Read => kv_read(secrets, path, query),
            Operation::Update => kv_write(secrets, path, body),
            _ => unsupported(),
        });
    }
    if rest == "metadata" || rest.starts_with("metadata/") {
        let path = rest.trim_start_matches("metadata").trim_matches('/');
        return Some(match op {
            Operation::Read => kv_metadata(secrets, path),
            Operation::List => kv_list(secrets, path),
            Operation::Delete => {
                secrets.remove(path);
                StatusCode::NO_CONTENT.into_response()
            }
            Operation::Update => unsupported(),
        });
    }
    None
}

fn version_metadata(kept: &KvVersion, version: u64) -> Value {
    json!({
        "created_time": kept.created_time,
        "custom_metadata": null,
        "deletion_time": "",
        "destroyed": false,
        "version": version,
    })
}

fn kv_read(
    secrets: &BTreeMap<String, KvSecret>,
    path: &str,
    query: &HashMap<String, String>,
) -> Response {
    let Some(secret) = secrets.get(path) else {
        return not_found();
    };
    let version = match query.get("version").map(|v| v.parse::<u64>()) {
        None | Some(Ok(0)) => secret.current_version,
        Some(Ok(version)) => version,
        Some(Err(_)) => return bad_request("invalid version"),
    };
    let Some(kept) = secret.versions.get(&version) else {
        return not_found();
    };
    ok(
        "kv",
        json!({ "data": kept.data, "metadata": version_metadata(kept, version) }),
    )
}

fn kv_write(secrets: &mut BTreeMap<String, KvSecret>, path: &str, body: &Value) -> Response {
    if path.is_empty() {
        return bad_request("missing path");
    }
    let Some(data) = body.get("data").filter(|data| data.is_object()) else {
        return bad_request("no data provided");
    };
    let current = secrets.get(path).map_or(0, |secret| secret.current_version);
    if let Some(cas) = body.pointer("/options/cas")
        && cas.as_u64() != Some(current)
    {
        return bad_request("check-and-set parameter did not match the current version");
    }
    let now = rfc3339(SystemTime::now());
    let secret = secrets.entry(path.to_owned()).or_insert_with(|| KvSecret {
        current_version: 0,
        oldest_version: 0,
        created_time: now.clone(),
        updated_time: now.clone(),
        versions: BTreeMap::new(),
    });
    let version = secret.current_version + 1;
    let kept = KvVersion {
        data: data.clone(),
        created_time: now.clone(),
    };
    let metadata = version_metadata(&kept, version);
    secret.versions.insert(version, kept);
    secret.current_version = version;
    secret.updated_time = now;
    while secret.versions.len() > KV_MAX_VERSIONS {
        secret.versions.pop_first();
    }
    secret.oldest_version = secret.versions.keys().next().copied().unwrap_or(version);
    ok("kv", metadata)
}

fn kv_metadata(secrets: &BTreeMap<String, KvSecret>, path: &str) -> Response {
    let Some(secret) = secrets.get(path) else {
        return not_found();
    };
    let versions: Map<String, Value> = secret
        .versions
        .iter()
        .map(|(version, kept)| {
            (
                version.to_string(),
                json!({ "created_time": kept.created_time, "deletion_time": "", "destroyed": false }),
            )
        })
        .collect();
    ok(
        "kv",
        json!({
            "cas_required": false,
            "created_time": secret.created_time,
            "current_version": secret.current_version,
            "custom_metadata": null,
            "delete_version_after": "0s",
            "max_versions": 0,
            "oldest_version": secret.oldest_version,
            "updated_time": secret.updated_time,
            "versions": versions,
        }),
    )
}

fn kv_list(secrets: &BTreeMap<String, KvSecret>, folder: &str) -> Response {
    let prefix = if folder.is_empty() {
        String::new()
    } else {
        format!("{folder}/")
    };
    let keys: BTreeSet<String> = secrets
        .keys()
        .filter_map(|path| path.strip_prefix(&prefix))
        .map(|rest| match rest.split_once('/') {
            Some((child, _)) => format!("{child}/"),
            None => rest.to_owned(),
        })
        .collect();
    if keys.is_empty() {
        return not_found();
    }
    ok("kv", json!({ "keys": keys }))
}

// ---- Transit ----

fn transit(
    keys: &mut BTreeMap<String, TransitKey>,
    rest: &str,
    op: Operation,
    body: &Value,
) -> Option<Response> {
    let (action, name) = rest.split_once('/')?;
    if action == "keys" {
        if let Some(name) = name.strip_suffix("/rotate") {
            if op != Operation::Update {
                return Some(unsupported());
            }
            let Some(key) = keys.get_mut(name) else {
                return Some(bad_request("key not found"));
            };
            key.rotate();
            return Some(ok("transit", key.info(name)));
        }
        if name.contains('/') {
            return None;
        }
        return Some(match op {
            Operation::Read => match keys.get(name) {
                Some(key) => ok("transit", key.info(name)),
                None => not_found(),
            },
            Operation::Update => {
                let key_type = string_field(body, "type").unwrap_or("aes256-gcm96");
                if !matches!(
                    key_type,
                    "aes128-gcm96" | "aes256-gcm96" | "chacha20-poly1305"
                ) {
                    return Some(bad_request(&format!("unknown key type: {key_type}")));
                }
                let existed = keys.contains_key(name);
                let key = keys.entry(name.to_owned()).or_insert_with(TransitKey::new);
                let warnings = existed.then(|| vec![format!("key {name} already existed")]);
                let body = envelope("transit", Some(key.info(name)), None, warnings);
                (StatusCode::OK, axum::Json(body)).into_response()
            }
            _ => unsupported(),
        });
    }
    if name.contains('/') || !matches!(action, "encrypt" | "decrypt" | "rewrap") {
        return None;
    }
    if op != Operation::Update {
        return Some(unsupported());
    }
    Some(match action {
        "encrypt" => {
            let Some(plaintext) = string_field(body, "plaintext") else {
                return Some(bad_request("missing plaintext to encrypt"));
            };
            let Ok(plaintext) = BASE64.decode(plaintext) else {
                return Some(bad_request("failed to base64-decode plaintext"));
            };
            let key = keys.entry(name.to_owned()).or_insert_with(TransitKey::new);
            match key.encrypt(&plaintext) {
                Ok((ciphertext, version)) => ok(
                    "transit",
                    json!({ "ciphertext": ciphertext, "key_version": version }),
                ),
                Err(message) => bad_request(&message),
            }
        }
        _ => {
            let Some(key) = keys.get(name) else {
                return Some(bad_request("encryption key not found"));
            };
            let Some(ciphertext) = string_field(body, "ciphertext") else {
                return Some(bad_request("missing ciphertext to decrypt"));
            };
            let plaintext = match key.decrypt(ciphertext) {
                Ok(plaintext) => plaintext,
                Err(message) => return Some(bad_request(&message)),
            };
            if action == "decrypt" {
                ok("transit", json!({ "plaintext": BASE64.encode(plaintext) }))
            } else {
                match key.encrypt(&plaintext) {
                    Ok((ciphertext, version)) => ok(
                        "transit",
                        json!({ "ciphertext": ciphertext, "key_version": version }),
                    ),
                    Err(message) => bad_request(&message),
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// One HTTP/1.1 request on its own connection; returns the status and the JSON body (null
    /// when empty).
    async fn call(
        vault: &FakeVault,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let host = vault.address().trim_start_matches("http://").to_owned();
        let mut stream = tokio::net::TcpStream::connect(&host).await.unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let token = token
            .map(|t| format!("X-Vault-Token: {t}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{token}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response[9..12].parse().unwrap();
        let (_, body) = response.split_once("\r\n\r\n").unwrap();
        let body = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(body).unwrap()
        };
        (status, body)
    }

    #[tokio::test]
    async fn requests_without_a_valid_token_are_denied() {
        let vault = FakeVault::start().await;
        for token in [None, Some("hvs.unknown")] {
            let (status, body) = call(&vault, "GET", "/v1/secret/data/a", token, None).await;
            assert_eq!(status, 403);
            assert_eq!(body, json!({ "errors": ["permission denied"] }));
        }
    }

    #[tokio::test]
    async fn kv_v2_behaves_like_vault() {
        let vault = FakeVault::start().await;
        let root = vault.root_token();
        let token = Some(root.as_str());

        let (status, body) = call(&vault, "GET", "/v1/secret/data/app/db", token, None).await;
        assert_eq!((status, body), (404, json!({ "errors": [] })));

        let write = json!({ "options": { "cas": 0 }, "data": { "password": "x" } });
        let (status, body) = call(
            &vault,
            "POST",
            "/v1/secret/data/app/db",
            token,
            Some(write.clone()),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(body["data"]["version"], 1);
        assert_eq!(body["data"]["destroyed"], false);
        assert_eq!(body["data"]["deletion_time"], "");
        for field in [
            "request_id",
            "lease_id",
            "renewable",
            "lease_duration",
            "wrap_info",
            "warnings",
            "auth",
        ] {
            assert!(body.get(field).is_some(), "envelope field {field}");
        }

        let (status, body) =
            call(&vault, "PUT", "/v1/secret/data/app/db", token, Some(write)).await;
        assert_eq!(status, 400);
        assert_eq!(
            body,
            json!({ "errors": ["check-and-set parameter did not match the current version"] })
        );

        let update = json!({ "options": { "cas": 1 }, "data": { "password": "y" } });
        let (status, _) = call(
            &vault,
            "POST",
            "/v1/secret/data/app/db",
            token,
            Some(update),
        )
        .await;
        assert_eq!(status, 200);
        let (_, body) = call(
            &vault,
            "GET",
            "/v1/secret/data/app/db?version=1",
            token,
            None,
        )
        .await;
        assert_eq!(body["data"]["data"], json!({ "password": "x" }));
        let (_, body) = call(&vault, "GET", "/v1/secret/data/app/db", token, None).await;
        assert_eq!(body["data"]["data"], json!({ "password": "y" }));
        assert_eq!(body["data"]["metadata"]["version"], 2);

        let (_, metadata) = call(&vault, "GET", "/v1/secret/metadata/app/db", token, None).await;
        assert_eq!(metadata["data"]["current_version"], 2);
        assert!(metadata["data"]["versions"]["1"].is_object());

        let other = json!({ "data": { "k": "v" } });
        call(
            &vault,
            "POST",
            "/v1/secret/data/app/cache",
            token,
            Some(other.clone()),
        )
        .await;
        call(&vault, "POST", "/v1/secret/data/top", token, Some(other)).await;
        let (status, list) = call(&vault, "LIST", "/v1/secret/metadata/app", token, None).await;
        assert_eq!(status, 200);
        assert_eq!(list["data"]["keys"], json!(["cache", "db"]));
        let (_, root_list) =
            call(&vault, "GET", "/v1/secret/metadata/?list=true", token, None).await;
        assert_eq!(root_list["data"]["keys"], json!(["app/", "top"]));
        let (status, body) = call(&vault, "LIST", "/v1/secret/metadata/none", token, None).await;
        assert_eq!((status, body), (404, json!({ "errors": [] })));

        let (status, body) =
            call(&vault, "DELETE", "/v1/secret/metadata/app/db", token, None).await;
        assert_eq!((status, body), (204, Value::Null));
        assert!(vault.kv_secret("secret", "app/db").is_none());

        let (status, _) = call(&vault, "PATCH", "/v1/secret/data/top", token, None).await;
        assert_eq!(status, 405);
        let (status, body) = call(&vault, "GET", "/v1/nothing/here", token, None).await;
        assert_eq!(status, 404);
        assert!(
            body["errors"][0]
                .as_str()
                .unwrap()
                .contains("no handler for route")
        );
    }

    #[tokio::test]
    async fn transit_rotates_and_rewraps_like_vault() {
        let vault = FakeVault::start().await;
        let root = vault.root_token();
        let token = Some(root.as_str());
        let (status, _) = call(&vault, "GET", "/v1/transit/keys/k", token, None).await;
        assert_eq!(status, 404);
        let create = json!({ "type": "aes256-gcm96" });
        let (_, created) = call(
            &vault,
            "POST",
            "/v1/transit/keys/k",
            token,
            Some(create.clone()),
        )
        .await;
        assert_eq!(created["data"]["latest_version"], 1);
        assert_eq!(created["data"]["type"], "aes256-gcm96");
        let (_, again) = call(&vault, "POST", "/v1/transit/keys/k", token, Some(create)).await;
        assert_eq!(again["warnings"], json!(["key k already existed"]));

        let plaintext = json!({ "plaintext": BASE64.encode("hello") });
        let (_, encrypted) = call(
            &vault,
            "POST",
            "/v1/transit/encrypt/k",
            token,
            Some(plaintext),
        )
        .await;
        let v1 = encrypted["data"]["ciphertext"].as_str().unwrap().to_owned();
        assert!(v1.starts_with("vault:v1:"), "{v1}");

        let (_, rotated) = call(&vault, "POST", "/v1/transit/keys/k/rotate", token, None).await;
        assert_eq!(rotated["data"]["latest_version"], 2);
        assert_eq!(rotated["data"]["keys"].as_object().unwrap().len(), 2);

        let (_, rewrapped) = call(
            &vault,
            "POST",
            "/v1/transit/rewrap/k",
            token,
            Some(json!({ "ciphertext": v1 })),
        )
        .await;
        let v2 = rewrapped["data"]["ciphertext"].as_str().unwrap().to_owned();
        assert!(v2.starts_with("vault:v2:"), "{v2}");
        assert_eq!(rewrapped["data"]["key_version"], 2);

        vault.set_min_decryption_version("transit", "k", 2);
        let (status, body) = call(
            &vault,
            "POST",
            "/v1/transit/decrypt/k",
            token,
            Some(json!({ "ciphertext": v1 })),
        )
        .await;
        assert_eq!(status, 400);
        assert!(body["errors"][0].as_str().unwrap().contains("too old"));
        let (_, decrypted) = call(
            &vault,
            "POST",
            "/v1/transit/decrypt/k",
            token,
            Some(json!({ "ciphertext": v2 })),
        )
        .await;
        assert_eq!(decrypted["data"]["plaintext"], BASE64.encode("hello"));

        let forged = format!("{}A", &v2[..v2.len() - 4]);
        let (status, _) = call(
            &vault,
            "POST",
            "/v1/transit/decrypt/k",
            token,
            Some(json!({ "ciphertext": forged })),
        )
        .await;
        assert_eq!(status, 400);
    }

    #[tokio::test]
    async fn logins_issue_tokens_that_renew() {
        let vault = FakeVault::start()
            .await
            .with_approle("r", "s")
            .with_token_ttl(Duration::from_secs(60));
        let (status, _) = call(
            &vault,
            "POST",
            "/v1/auth/approle/login",
            None,
            Some(json!({ "role_id": "r", "secret_id": "x" })),
        )
        .await;
        assert_eq!(status, 400);
        let (status, login) = call(
            &vault,
            "POST",
            "/v1/auth/approle/login",
            None,
            Some(json!({ "role_id": "r", "secret_id": "s" })),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(login["auth"]["lease_duration"], 60);
        assert_eq!(login["auth"]["renewable"], true);
        let token = login["auth"]["client_token"].as_str().unwrap().to_owned();
        assert!(token.starts_with("hvs."));

        let (_, lookup) = call(
            &vault,
            "GET",
            "/v1/auth/token/lookup-self",
            Some(&token),
            None,
        )
        .await;
        assert_eq!(lookup["data"]["id"], token.as_str());
        assert!(lookup["data"]["ttl"].as_u64().unwrap() <= 60);
        let (status, renewed) = call(
            &vault,
            "POST",
            "/v1/auth/token/renew-self",
            Some(&token),
            None,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(renewed["auth"]["client_token"], token.as_str());
        assert_eq!((vault.logins(), vault.renewals()), (1, 1));

        let (status, _) = call(
            &vault,
            "POST",
            "/v1/auth/kubernetes/login",
            None,
            Some(json!({ "role": "r", "jwt": "j" })),
        )
        .await;
        assert_eq!(status, 404, "no Kubernetes auth is mounted");
    }

    #[tokio::test]
    async fn tokens_expire_after_their_ttl() {
        let vault = FakeVault::start()
            .await
            .with_token_ttl(Duration::from_secs(1));
        let token = vault.issue_token();
        let (status, _) = call(
            &vault,
            "GET",
            "/v1/auth/token/lookup-self",
            Some(&token),
            None,
        )
        .await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let (status, _) = call(
            &vault,
            "GET",
            "/v1/auth/token/lookup-self",
            Some(&token),
            None,
        )
        .await;
        assert_eq!(status, 403);
        let root = vault.root_token();
        let (status, _) = call(
            &vault,
            "GET",
            "/v1/auth/token/lookup-self",
            Some(&root),
            None,
        )
        .await;
        assert_eq!(status, 200, "the root token never expires");
    }
}
