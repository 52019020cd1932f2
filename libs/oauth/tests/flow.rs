//! The whole authorization-code flow with PKCE, refresh and revocation, against the local
//! OAuth2 server of `switchyard-testkit`, through the GitLab profile pointed at it.

use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use switchyard_oauth::{Client, ClientCredentials, OAuthError, Profile, Provider, pkce, state};
use switchyard_testkit::fake_oauth::FakeOAuth;
use url::Url;

const REDIRECT: &str = "https://switchyard.example/oauth/gitlab/callback";

struct Setup {
    fake: FakeOAuth,
    profile: Profile,
    client: Client,
    credentials: ClientCredentials,
}

async fn setup() -> Setup {
    switchyard_kit::tls::install_crypto_provider();
    let fake = FakeOAuth::start("client-1", "secret-1", REDIRECT).await;
    let base = Url::parse(&fake.base_url()).expect("url");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    Setup {
        profile: Profile::new(Provider::GitLab, Some(&base)),
        client: Client::new(http),
        credentials: ClientCredentials {
            client_id: "client-1".into(),
            client_secret: SecretString::from("secret-1"),
        },
        fake,
    }
}

/// Follows the authorize URL as the user's browser would, and returns the callback's code and
/// state.
async fn authorize(url: &Url) -> (String, String) {
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(url.clone())
        .send()
        .await
        .expect("authorize");
    assert_eq!(response.status(), 303, "{:?}", response.text().await);
    let location = response.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let callback = Url::parse(&location).expect("callback URL");
    assert!(location.starts_with(REDIRECT));
    let param = |name: &str| {
        callback
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .expect(name)
    };
    (param("code"), param("state"))
}

#[tokio::test]
async fn code_flow_with_pkce_then_refresh_and_revoke() {
    let s = setup().await;
    let key = b"the installation's state key";
    let (issued, state_text) = state::sign(key, "acme", Duration::from_secs(600));
    let verifier = pkce::verifier();
    let scopes = vec!["read_user".to_owned(), "api".to_owned()];
    let url = s.client.authorize_url(
        &s.profile,
        "client-1",
        REDIRECT,
        &scopes,
        &state_text,
        Some(&pkce::challenge(&verifier)),
    );
    assert!(
        url.query()
            .expect("query")
            .contains("code_challenge_method=S256")
    );

    let (code, returned_state) = authorize(&url).await;
    let state = state::verify(key, &returned_state, SystemTime::now()).expect("our state");
    assert_eq!(state, issued);

    let tokens = s
        .client
        .exchange_code(&s.profile, &s.credentials, &code, REDIRECT, Some(&verifier))
        .await
        .expect("tokens");
    assert_eq!(tokens.scopes, scopes, "granted scopes recorded");
    assert_eq!(tokens.expires_in, Some(3600));
    let account = s
        .client
        .account(&s.profile, &tokens.access_token)
        .await
        .expect("account");
    assert_eq!(account.id, "1");
    assert_eq!(account.name, "octocat");

    // A code is single-use.
    let reused = s
        .client
        .exchange_code(&s.profile, &s.credentials, &code, REDIRECT, Some(&verifier))
        .await
        .expect_err("reused code");
    assert!(matches!(reused, OAuthError::InvalidGrant(_)), "{reused:?}");

    // Refresh rotates the refresh token; the old one is then an invalid grant.
    let refresh = tokens.refresh_token.clone().expect("a refresh token");
    let refreshed = s
        .client
        .refresh(&s.profile, &s.credentials, &refresh)
        .await
        .expect("refreshed");
    assert_ne!(
        refreshed.access_token.expose_secret(),
        tokens.access_token.expose_secret()
    );
    let stale = s
        .client
        .refresh(&s.profile, &s.credentials, &refresh)
        .await
        .expect_err("rotated away");
    assert!(matches!(stale, OAuthError::InvalidGrant(_)));

    // Revoked upstream: the token stops working.
    s.client
        .revoke(&s.profile, &s.credentials, &refreshed.access_token)
        .await
        .expect("revoked");
    let gone = s
        .client
        .account(&s.profile, &refreshed.access_token)
        .await
        .expect_err("revoked token");
    assert!(matches!(gone, OAuthError::Refused { .. }), "{gone:?}");
}

#[tokio::test]
async fn a_wrong_verifier_a_wrong_secret_and_an_outage_are_told_apart() {
    let s = setup().await;
    let verifier = pkce::verifier();
    let url = s.client.authorize_url(
        &s.profile,
        "client-1",
        REDIRECT,
        &["api".to_owned()],
        "state",
        Some(&pkce::challenge(&verifier)),
    );
    let (code, _) = authorize(&url).await;
    let wrong_verifier = s
        .client
        .exchange_code(
            &s.profile,
            &s.credentials,
            &code,
            REDIRECT,
            Some(&pkce::verifier()),
        )
        .await
        .expect_err("PKCE");
    assert!(matches!(wrong_verifier, OAuthError::InvalidGrant(_)));

    let (code, _) = authorize(&url).await;
    let wrong_secret = ClientCredentials {
        client_id: "client-1".into(),
        client_secret: SecretString::from("not-it"),
    };
    let refused = s
        .client
        .exchange_code(&s.profile, &wrong_secret, &code, REDIRECT, Some(&verifier))
        .await
        .expect_err("secret");
    assert_eq!(
        refused,
        OAuthError::Refused {
            error: "invalid_client".into(),
            description: Some("invalid_client".into())
        }
    );
    assert!(!refused.is_retryable());

    s.fake.fail_token_requests(1);
    let outage = s
        .client
        .exchange_code(&s.profile, &s.credentials, &code, REDIRECT, Some(&verifier))
        .await
        .expect_err("503");
    assert!(outage.is_retryable(), "{outage:?}");
    let tokens = s
        .client
        .exchange_code(&s.profile, &s.credentials, &code, REDIRECT, Some(&verifier))
        .await
        .expect("the code survives an outage");
    assert!(tokens.refresh_token.is_some());
}
