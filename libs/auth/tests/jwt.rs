//! Token verification against HS256 and a local JWKS server (RS256, ES256, EdDSA).

// Shared test helpers unwrap too: a failure should stop the test where it happens.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::SecretString;
use serde_json::json;
use switchyard_auth::{
    AuthConfig, AuthError, Authorizer, ScopeTable, TokenRequest, Verifier, mint,
};
use switchyard_kit::{Authenticator, Target};
use tokio::sync::RwLock;
use tonic::Code;

const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!!";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs_config() -> AuthConfig {
    AuthConfig {
        hs256_secret: Some(SecretString::from(SECRET)),
        ..AuthConfig::default()
    }
}

fn claims(overrides: serde_json::Value) -> serde_json::Value {
    let mut base = json!({
        "iss": "switchyard", "aud": "switchyard", "sub": "alice", "tenant": "acme",
        "scope": "credentials.read credentials.write", "exp": now() + 600, "nbf": now() - 1,
    });
    for (k, v) in overrides.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

fn hs_token(claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn hs256_tokens_verify_and_become_principals() {
    let verifier = Verifier::new(&hs_config()).unwrap();
    let principal = verifier
        .verify(&hs_token(&claims(json!({}))))
        .await
        .unwrap();
    assert_eq!(principal.subject, "alice");
    assert_eq!(principal.tenant, "acme");
    assert!(principal.has_scope("credentials.write"));
    assert!(!principal.has_scope("credentials.access"));

    let scp = claims(json!({"scope": null, "scp": ["credentials.access"]}));
    let principal = verifier.verify(&hs_token(&scp)).await.unwrap();
    assert!(principal.has_scope("credentials.access"));
}

#[tokio::test]
async fn hs256_tokens_with_bad_claims_are_refused() {
    let verifier = Verifier::new(&hs_config()).unwrap();
    let cases = [
        (json!({"exp": now() - 120}), AuthError::Expired),
        (json!({"nbf": now() + 120}), AuthError::NotYetValid),
        (json!({"iss": "someone-else"}), AuthError::Issuer),
        (json!({"aud": "other"}), AuthError::Audience),
        (json!({"tenant": null}), AuthError::Claim("tenant".into())),
        (
            json!({"tenant": "../etc"}),
            AuthError::Claim("tenant".into()),
        ),
        (json!({"exp": null}), AuthError::Claim("exp".into())),
        (json!({"scope": 7}), AuthError::Claim("scope".into())),
    ];
    for (overrides, expected) in cases {
        let token = hs_token(&claims(overrides.clone()));
        assert_eq!(verifier.verify(&token).await, Err(expected), "{overrides}");
    }
    // Within the leeway an expired token still passes.
    let token = hs_token(&claims(json!({"exp": now() - 5})));
    assert!(verifier.verify(&token).await.is_ok());

    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(json!({})),
        &EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!!!"),
    )
    .unwrap();
    assert_eq!(verifier.verify(&forged).await, Err(AuthError::Signature));
    assert_eq!(
        verifier.verify("not.a.jwt").await,
        Err(AuthError::Malformed)
    );
    assert_eq!(verifier.verify("").await, Err(AuthError::Malformed));

    // alg=none is never accepted.
    let header = base64_url(br#"{"alg":"none","typ":"JWT"}"#);
    let body = base64_url(claims(json!({})).to_string().as_bytes());
    assert!(verifier.verify(&format!("{header}.{body}.")).await.is_err());
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn minted_development_tokens_verify() {
    let verifier = Verifier::new(&hs_config()).unwrap();
    let token = mint(
        SECRET.as_bytes(),
        &TokenRequest {
            issuer: "switchyard".into(),
            audience: "switchyard".into(),
            subject: "dev".into(),
            tenant: "default".into(),
            tenant_claim: "tenant".into(),
            scopes: vec!["credentials.*".into()],
            ttl: Duration::from_secs(60),
        },
    )
    .unwrap();
    let principal = verifier.verify(&token).await.unwrap();
    assert_eq!(principal.tenant, "default");
    assert!(principal.has_scope("credentials.access"));
}

// --- JWKS -------------------------------------------------------------------------------------

struct JwksServer {
    url: String,
    fetches: Arc<AtomicUsize>,
    keys: Arc<RwLock<serde_json::Value>>,
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn all_jwks() -> serde_json::Value {
    serde_json::from_slice(&fixture("jwks.json")).unwrap()
}

fn jwks_without(kid: &str) -> serde_json::Value {
    let mut set = all_jwks();
    set["keys"]
        .as_array_mut()
        .unwrap()
        .retain(|key| key["kid"] != kid);
    set
}

async fn start_jwks(initial: serde_json::Value) -> JwksServer {
    let fetches = Arc::new(AtomicUsize::new(0));
    let keys = Arc::new(RwLock::new(initial));
    let (f, k) = (fetches.clone(), keys.clone());
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let (f, k) = (f.clone(), k.clone());
            async move {
                f.fetch_add(1, Ordering::SeqCst);
                axum::Json(k.read().await.clone())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    JwksServer { url, fetches, keys }
}

fn signed(alg: Algorithm, kid: &str, claims: &serde_json::Value) -> String {
    let pem = fixture(&format!("{kid}.pem"));
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => unreachable!(),
    }
    .unwrap();
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn jwks_config(url: &str) -> AuthConfig {
    AuthConfig {
        jwks_url: Some(url.to_owned()),
        jwks_refresh_interval: Duration::from_millis(300),
        ..AuthConfig::default()
    }
}

#[tokio::test]
async fn rs256_es256_and_eddsa_verify_through_jwks() {
    let server = start_jwks(all_jwks()).await;
    let verifier = Verifier::new(&jwks_config(&server.url)).unwrap();
    for (alg, kid) in [
        (Algorithm::RS256, "rsa-1"),
        (Algorithm::ES256, "ec-1"),
        (Algorithm::EdDSA, "ed-1"),
    ] {
        let principal = verifier
            .verify(&signed(alg, kid, &claims(json!({}))))
            .await
            .unwrap_or_else(|err| panic!("{kid}: {err}"));
        assert_eq!(principal.subject, "alice");
    }
    assert_eq!(
        server.fetches.load(Ordering::SeqCst),
        1,
        "keys are cached by kid"
    );

    // A key used with another algorithm than its JWK declares is refused.
    let mut header = Header::new(Algorithm::RS384);
    header.kid = Some("rsa-1".into());
    let key = EncodingKey::from_rsa_pem(&fixture("rsa-1.pem")).unwrap();
    let token = jsonwebtoken::encode(&header, &claims(json!({})), &key).unwrap();
    assert!(matches!(
        verifier.verify(&token).await,
        Err(AuthError::Algorithm(_))
    ));

    // Without an HS256 secret configured, HS256 tokens are refused rather than checked against
    // some public key.
    assert!(matches!(
        verifier.verify(&hs_token(&claims(json!({})))).await,
        Err(AuthError::Algorithm(_))
    ));
}

#[tokio::test]
async fn unknown_kid_refetches_at_most_once_per_interval() {
    let server = start_jwks(jwks_without("rsa-2")).await;
    let verifier = Verifier::new(&jwks_config(&server.url)).unwrap();
    let old = signed(Algorithm::RS256, "rsa-1", &claims(json!({})));
    verifier.verify(&old).await.unwrap();
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1);

    // The identity provider rotates to rsa-2 after the verifier cached the old set.
    let rotated = signed(Algorithm::RS256, "rsa-2", &claims(json!({})));
    // Right after a fetch, an unknown kid does not fetch again (rate limit).
    assert_eq!(
        verifier.verify(&rotated).await,
        Err(AuthError::UnknownKey("rsa-2".into()))
    );
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1);
    *server.keys.write().await = all_jwks();
    tokio::time::sleep(Duration::from_millis(350)).await;
    // After the interval, the unknown kid triggers one refetch, and many concurrent requests share it.
    let verifier = Arc::new(verifier);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (v, t) = (verifier.clone(), rotated.clone());
        tasks.push(tokio::spawn(async move { v.verify(&t).await }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(server.fetches.load(Ordering::SeqCst), 2);

    // A token for a kid nobody publishes fails without hammering the JWKS endpoint.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("nope".into());
    let key = EncodingKey::from_rsa_pem(&fixture("rsa-1.pem")).unwrap();
    let unknown = jsonwebtoken::encode(&header, &claims(json!({})), &key).unwrap();
    for _ in 0..5 {
        assert!(verifier.verify(&unknown).await.is_err());
    }
    assert_eq!(server.fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn jwks_outage_is_unavailable_not_unauthenticated() {
    let verifier = Verifier::new(&jwks_config("http://127.0.0.1:9/jwks.json")).unwrap();
    let token = signed(Algorithm::RS256, "rsa-1", &claims(json!({})));
    assert!(matches!(
        verifier.verify(&token).await,
        Err(AuthError::KeysUnavailable(_))
    ));
    let authorizer = Authorizer::new(Arc::new(verifier), &[], true);
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    let err = authorizer
        .authorize(
            Target::Grpc("/x.Y/Z"),
            &headers,
            &mut http::Extensions::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
}

// --- Authorizer --------------------------------------------------------------------------------

const TABLE: ScopeTable = ScopeTable {
    service: "demo.v1.Demo",
    methods: &[
        ("Read", "demo.read"),
        ("Access", "demo.access"),
        ("Audited", "demo.audited"),
    ],
    checked_by_handler: &["Audited"],
};

#[tokio::test]
async fn authorizer_requires_token_and_scope_and_sets_principal() {
    let verifier = Arc::new(Verifier::new(&hs_config()).unwrap());
    let authorizer = Authorizer::new(verifier, &[TABLE], true);
    let call = |token: Option<String>, path: &'static str| {
        let authorizer = &authorizer;
        async move {
            let mut headers = http::HeaderMap::new();
            if let Some(token) = token {
                headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
            }
            let mut extensions = http::Extensions::new();
            let result = authorizer
                .authorize(Target::Grpc(path), &headers, &mut extensions)
                .await;
            (result, extensions)
        }
    };
    let token = hs_token(&claims(json!({"scope": "demo.read"})));

    let (result, _) = call(None, "/demo.v1.Demo/Read").await;
    let err = result.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(err.reason(), "UNAUTHENTICATED");

    let (result, extensions) = call(Some(token.clone()), "/demo.v1.Demo/Read").await;
    result.unwrap();
    let principal = extensions.get::<switchyard_auth::Principal>().unwrap();
    assert_eq!(principal.tenant, "acme");

    let (result, _) = call(Some(token.clone()), "/demo.v1.Demo/Access").await;
    let err = result.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(err.reason(), "MISSING_SCOPE");

    // A handler-checked method is authenticated but its scope is left to the handler.
    let (result, extensions) = call(Some(token.clone()), "/demo.v1.Demo/Audited").await;
    result.unwrap();
    assert!(
        !extensions
            .get::<switchyard_auth::Principal>()
            .unwrap()
            .has_scope("demo.audited")
    );
    let (result, _) = call(None, "/demo.v1.Demo/Audited").await;
    assert_eq!(result.unwrap_err().code(), Code::Unauthenticated);

    // A method no table declares is closed, whatever the token.
    let (result, _) = call(Some(token.clone()), "/demo.v1.Demo/Forgotten").await;
    assert_eq!(result.unwrap_err().code(), Code::Unimplemented);

    let (result, _) = call(None, "/grpc.health.v1.Health/Check").await;
    result.unwrap();
    let (result, _) = call(
        None,
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    )
    .await;
    result.unwrap();

    let private = Authorizer::new(
        Arc::new(Verifier::new(&hs_config()).unwrap()),
        &[TABLE],
        false,
    );
    let err = private
        .authorize(
            Target::Grpc("/grpc.health.v1.Health/Check"),
            &http::HeaderMap::new(),
            &mut http::Extensions::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "health needs a token when not public"
    );
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    private
        .authorize(
            Target::Grpc("/grpc.health.v1.Health/Check"),
            &headers,
            &mut http::Extensions::new(),
        )
        .await
        .expect("with a token, health needs no particular scope");

    // HTTP routes use the same tokens with their own scope.
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", format!("bearer {token}").parse().unwrap());
    authorizer
        .authorize(
            Target::Http { scope: "demo.read" },
            &headers,
            &mut http::Extensions::new(),
        )
        .await
        .unwrap();
    let err = authorizer
        .authorize(
            Target::Http {
                scope: "demo.access",
            },
            &headers,
            &mut http::Extensions::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn id_tokens_need_the_issuer_the_client_and_the_nonce() {
    use switchyard_auth::IdTokenVerifier;
    switchyard_kit::tls::install_crypto_provider();
    let server = start_jwks(all_jwks()).await;
    let verifier = IdTokenVerifier::new(
        "https://idp.example",
        "switchyard",
        &server.url,
        reqwest::Client::new(),
    );
    let id_token = |overrides: serde_json::Value| {
        let mut claims = json!({
            "iss": "https://idp.example", "aud": "switchyard", "sub": "u-1",
            "exp": now() + 300, "iat": now(), "nonce": "n-1",
        });
        for (key, value) in overrides.as_object().unwrap() {
            claims[key] = value.clone();
        }
        signed(Algorithm::ES256, "ec-1", &claims)
    };
    let claims = verifier.verify(&id_token(json!({})), "n-1").await.unwrap();
    assert_eq!(claims["sub"], "u-1");
    for (overrides, nonce, expected) in [
        (json!({}), "n-2", AuthError::Claim("nonce".into())),
        (
            json!({"nonce": null}),
            "n-1",
            AuthError::Claim("nonce".into()),
        ),
        (json!({"aud": "someone-else"}), "n-1", AuthError::Audience),
        (
            json!({"iss": "https://evil.example"}),
            "n-1",
            AuthError::Issuer,
        ),
        (json!({"exp": now() - 3600}), "n-1", AuthError::Expired),
    ] {
        assert_eq!(
            verifier.verify(&id_token(overrides.clone()), nonce).await,
            Err(expected),
            "{overrides}"
        );
    }
    // An HMAC-signed ID token is never accepted, whatever its key.
    assert!(matches!(
        verifier.verify(&hs_token(&claims_of_idp()), "n-1").await,
        Err(AuthError::Algorithm(_))
    ));
}

fn claims_of_idp() -> serde_json::Value {
    json!({"iss": "https://idp.example", "aud": "switchyard", "sub": "u-1", "exp": now() + 300, "nonce": "n-1"})
}
