//! OAuth connections in the domain with the local OAuth2 server: refresh ahead of expiry, and
//! two replicas that never refresh one connection twice (a rotated refresh token used twice
//! would be an invalid grant).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;
use switchyard_gateway::domain::delivery::HttpsDelivery;
use switchyard_gateway::domain::oauth::{ConnectionState, OAuthClient, OAuthOutside, TokenVault};
use switchyard_gateway::domain::{EndpointKeys, Gateway};
use switchyard_gateway::{GatewayConfig, Outside};
use switchyard_oauth::Provider;
use switchyard_store::Db;
use switchyard_testkit::fake_oauth::FakeOAuth;
use switchyard_webhooks::CertificateFetcher;
use tokio_util::sync::CancellationToken;
use url::Url;

const PUBLIC_URL: &str = "https://switchyard.example";
const REDIRECT: &str = "https://switchyard.example/oauth/gitlab/callback";

/// Credentials as the credentials service would keep them, shared by the replicas.
#[derive(Debug, Default)]
struct Vault(Mutex<HashMap<(String, String), String>>);

#[async_trait]
impl TokenVault for Vault {
    async fn store(&self, tenant: &str, id: &str, material: Vec<u8>) -> Result<String, String> {
        let name = format!("credentials/{id}");
        let text = String::from_utf8(material).map_err(|e| e.to_string())?;
        self.0
            .lock()
            .expect("lock")
            .insert((tenant.into(), name.clone()), text);
        Ok(name)
    }

    async fn read(&self, tenant: &str, credential: &str) -> Result<SecretString, String> {
        self.0
            .lock()
            .expect("lock")
            .get(&(tenant.to_owned(), credential.to_owned()))
            .map(|text| SecretString::from(text.clone()))
            .ok_or_else(|| format!("{credential} not found"))
    }

    async fn delete(&self, tenant: &str, credential: &str) -> Result<(), String> {
        self.0
            .lock()
            .expect("lock")
            .remove(&(tenant.to_owned(), credential.to_owned()));
        Ok(())
    }
}

#[derive(Debug)]
struct NoKeys;

#[async_trait]
impl EndpointKeys for NoKeys {
    async fn key(&self, _tenant: &str, credential: &str) -> Result<SecretString, String> {
        Err(format!("{credential}: none in this test"))
    }
}

#[derive(Debug)]
struct NoCertificates;

#[async_trait]
impl CertificateFetcher for NoCertificates {
    async fn certificate(&self, url: &Url) -> Result<Vec<u8>, String> {
        Err(format!("{url}: none in this test"))
    }
}

async fn replica(db: Db, vault: Arc<Vault>) -> Gateway {
    switchyard_kit::tls::install_crypto_provider();
    let guard = switchyard_kit::outbound::Guard::new(&["127.0.0.0/8".to_owned()]).expect("guard");
    let http = guard.client("test").expect("client");
    switchyard_gateway::open(
        db,
        &GatewayConfig::default(),
        Outside {
            keys: Arc::new(NoKeys),
            certificates: Arc::new(NoCertificates),
            confirmer: Arc::new(switchyard_gateway::domain::HttpsConfirmer(http.clone())),
            delivery: Arc::new(HttpsDelivery::new(guard).expect("client")),
            oauth: Some(OAuthOutside {
                client: switchyard_oauth::Client::new(http),
                vault,
                state_key: SecretString::from("a shared state key"),
                public_url: Url::parse(PUBLIC_URL).expect("url"),
            }),
            sso: None,
        },
        CancellationToken::new(),
    )
    .await
    .expect("open")
}

/// Registers the client, runs the user's authorization, and returns the connection's name.
async fn connect(gateway: &Gateway, vault: &Vault, fake: &FakeOAuth) -> String {
    vault
        .store("acme", "gitlab-secret", b"secret-1".to_vec())
        .await
        .expect("secret");
    gateway
        .create_oauth_client(OAuthClient {
            tenant: "acme".into(),
            provider: Provider::GitLab,
            client_id: "client-1".into(),
            secret_credential: "credentials/gitlab-secret".into(),
            base_url: Some(fake.base_url()),
        })
        .await
        .expect("client");
    let (url, _) = gateway
        .start_authorization("acme", Provider::GitLab, vec!["api".into()])
        .await
        .expect("start");
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(url)
        .send()
        .await
        .expect("authorize");
    let location =
        Url::parse(response.headers()["location"].to_str().expect("location")).expect("url");
    let query: HashMap<String, String> = location.query_pairs().into_owned().collect();
    let connection = gateway
        .oauth_callback("gitlab", &query)
        .await
        .expect("connected");
    format!("connections/{}", connection.id)
}

#[tokio::test]
async fn tokens_are_refreshed_ahead_of_expiry_once_across_replicas() {
    let fake = FakeOAuth::start("client-1", "secret-1", REDIRECT).await;
    fake.set_access_ttl(Duration::from_secs(120));
    let url = switchyard_store::testing::postgres_url();
    let schema = format!(
        "swtest_{}_oauth_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_secs(),
        uuid::Uuid::new_v4().simple()
    );
    let vault = Arc::new(Vault::default());
    let first = replica(
        Db::connect(&url, &schema, 4).await.expect("db"),
        vault.clone(),
    )
    .await;
    let second = replica(
        Db::connect(&url, &schema, 4).await.expect("db"),
        vault.clone(),
    )
    .await;
    let name = connect(&first, &vault, &fake).await;
    let before = fake.token_requests();

    // Expiring in two minutes: not yet within a one-minute horizon, within a five-minute one;
    // both replicas look at once, and one of them refreshes.
    assert_eq!(
        first
            .refresh_due(Duration::from_secs(60))
            .await
            .expect("due"),
        0
    );
    let (a, b) = tokio::join!(
        first.refresh_due(Duration::from_secs(300)),
        second.refresh_due(Duration::from_secs(300))
    );
    assert_eq!(a.expect("first") + b.expect("second"), 1);
    assert_eq!(fake.token_requests(), before + 1, "one refresh, not two");
    let connection = first
        .get_connection("acme", &name)
        .await
        .expect("connection");
    assert_eq!(connection.state, ConnectionState::Active);

    // Two replicas asked for the token at once, with a forced refresh: one refreshes, the
    // other waits for it and takes its token; the rotated refresh token is never used twice.
    let (a, b) = tokio::join!(
        first.access_connection("acme", &name, &[], true),
        second.access_connection("acme", &name, &[], true)
    );
    let (a, b) = (a.expect("first"), b.expect("second"));
    use secrecy::ExposeSecret;
    assert_eq!(a.0.expose_secret(), b.0.expose_secret());
    assert_eq!(fake.token_requests(), before + 2);
    let connection = second
        .get_connection("acme", &name)
        .await
        .expect("connection");
    assert_eq!(
        connection.state,
        ConnectionState::Active,
        "no invalid grant"
    );
}

#[tokio::test]
async fn a_connection_that_cannot_be_refreshed_waits_out_its_back_off() {
    let fake = FakeOAuth::start("client-1", "secret-1", REDIRECT).await;
    fake.set_access_ttl(Duration::from_secs(120));
    let (db, _dir) = switchyard_store::testing::sqlite_db().await.expect("db");
    let vault = Arc::new(Vault::default());
    let gateway = replica(db, vault.clone()).await;
    let name = connect(&gateway, &vault, &fake).await;

    // The provider is down: the refresh fails, and the connection is left alone for a while
    // instead of being tried again on every pass (and keeping others from their turn).
    fake.fail_token_requests(1);
    let before = fake.token_requests();
    assert_eq!(
        gateway
            .refresh_due(Duration::from_secs(300))
            .await
            .expect("due"),
        0
    );
    assert_eq!(fake.token_requests(), before + 1);
    assert_eq!(
        gateway
            .refresh_due(Duration::from_secs(300))
            .await
            .expect("due"),
        0
    );
    assert_eq!(
        fake.token_requests(),
        before + 1,
        "not tried again within the back-off"
    );

    // A use of the connection still refreshes it: the back-off is the background pass's alone.
    gateway
        .access_connection("acme", &name, &[], true)
        .await
        .expect("refreshed on use");
    assert_eq!(fake.token_requests(), before + 2);
}

#[tokio::test]
async fn connecting_an_account_again_replaces_its_token_set() {
    let fake = FakeOAuth::start("client-1", "secret-1", REDIRECT).await;
    let (db, _dir) = switchyard_store::testing::sqlite_db().await.expect("db");
    let vault = Arc::new(Vault::default());
    let gateway = replica(db, vault.clone()).await;
    let first = connect(&gateway, &vault, &fake).await;
    let second = connect(&gateway, &vault, &fake).await;
    assert_eq!(first, second, "the same account is the same connection");
    let token_sets: Vec<String> = vault
        .0
        .lock()
        .expect("lock")
        .keys()
        .filter(|(_, name)| name.starts_with("credentials/oauth-"))
        .map(|(_, name)| name.clone())
        .collect();
    let connection = gateway
        .get_connection("acme", &second)
        .await
        .expect("connection");
    assert_eq!(
        token_sets,
        vec![connection.token_credential],
        "the old token set is deleted"
    );
}
