//! Behaviour specific to the Vault backend, against the fake Vault server: error mapping, token
//! renewal and re-login, the KV layout and rewrap history, namespaces, configuration.

// Helpers shared by the tests panic on unexpected errors just as the tests do; clippy's
// allow-unwrap-in-tests only covers the #[test] functions themselves.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use switchyard_secrets::{
    RewrapReport, SecretBytes, SecretError, SecretStore, SecretsConfig, VaultAuth, VaultConfig,
    VaultSecretStore,
};
use switchyard_testkit::fake_vault::FakeVault;

const KNOWN_SECRET: &str = "ghp_0123456789abcdefghijklmnopqrstuvwxyz";

fn config(address: &str, extra: Value) -> VaultConfig {
    let mut value = json!({ "address": address });
    for (key, field) in extra.as_object().unwrap() {
        value[key] = field.clone();
    }
    serde_json::from_value(value).unwrap()
}

fn token_config(vault: &FakeVault, token: &str) -> VaultConfig {
    config(
        &vault.address(),
        json!({ "auth": { "method": "token", "token": token } }),
    )
}

fn approle_config(vault: &FakeVault) -> VaultConfig {
    config(
        &vault.address(),
        json!({ "auth": { "method": "approle", "role_id": "role-1", "secret_id": "secret-1" } }),
    )
}

async fn connect_err(config: &VaultConfig) -> SecretError {
    match VaultSecretStore::connect(config).await {
        Ok(store) => panic!("connected: {store:?}"),
        Err(err) => err,
    }
}

/// Polls `condition` every 50 ms until it holds or `limit` passes; returns whether it held.
async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    condition()
}

fn secret(text: &str) -> SecretBytes {
    SecretBytes::new(text.as_bytes().to_vec())
}

#[tokio::test]
async fn an_invalid_or_revoked_token_is_unauthorized() {
    let vault = FakeVault::start().await;
    let err = connect_err(&token_config(&vault, "hvs.not-a-real-token")).await;
    let SecretError::Unauthorized(message) = &err else {
        panic!("expected Unauthorized, got {err:?}");
    };
    assert!(message.contains("permission denied"), "{message}");
    assert!(!message.contains("hvs.not-a-real-token"), "{message}");

    let token = vault.issue_token();
    let store = VaultSecretStore::connect(&token_config(&vault, &token))
        .await
        .unwrap();
    let stored = store.put("acme/x", &secret(KNOWN_SECRET)).await.unwrap();
    vault.revoke_token(&token);
    assert!(matches!(
        store.get(&stored).await,
        Err(SecretError::Unauthorized(_))
    ));
    assert!(matches!(
        store.put("acme/x", &secret(KNOWN_SECRET)).await,
        Err(SecretError::Unauthorized(_))
    ));
    assert!(matches!(
        store.check().await,
        Err(SecretError::Unauthorized(_))
    ));
}

#[tokio::test]
async fn wrong_login_credentials_are_unauthorized() {
    let vault = FakeVault::start()
        .await
        .with_approle("role-1", "secret-1")
        .with_kubernetes_role("switchyard", "the-jwt");
    let wrong_secret = config(
        &vault.address(),
        json!({ "auth": { "method": "approle", "role_id": "role-1", "secret_id": "wrong-secret-id" } }),
    );
    let err = connect_err(&wrong_secret).await;
    assert!(
        matches!(&err, SecretError::Unauthorized(m) if !m.contains("wrong-secret-id")),
        "{err:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let jwt = dir.path().join("token");
    std::fs::write(&jwt, "another-jwt").unwrap();
    let wrong_jwt = config(
        &vault.address(),
        json!({ "auth": { "method": "kubernetes", "role": "switchyard", "jwt_path": jwt } }),
    );
    let err = connect_err(&wrong_jwt).await;
    assert!(
        matches!(&err, SecretError::Unauthorized(m) if !m.contains("another-jwt")),
        "{err:?}"
    );

    let missing_jwt = config(
        &vault.address(),
        json!({ "auth": { "method": "kubernetes", "role": "switchyard", "jwt_path": dir.path().join("absent") } }),
    );
    assert!(
        matches!(connect_err(&missing_jwt).await, SecretError::Config(m) if m.contains("absent"))
    );
    assert_eq!(vault.logins(), 0);
}

#[tokio::test]
async fn a_sealed_vault_is_unavailable_until_it_recovers() {
    let vault = FakeVault::start().await;
    let store = VaultSecretStore::connect(&token_config(&vault, &vault.root_token()))
        .await
        .unwrap();
    let stored = store
        .put("acme/sealed", &secret(KNOWN_SECRET))
        .await
        .unwrap();

    vault.fail_next_requests(1);
    let err = store.get(&stored).await.unwrap_err();
    assert!(
        matches!(&err, SecretError::Unavailable(m) if m.contains("Vault is sealed")),
        "{err:?}"
    );
    assert_eq!(
        store.get(&stored).await.unwrap().expose(),
        KNOWN_SECRET.as_bytes()
    );

    vault.fail_next_requests(1);
    assert!(matches!(
        store.put("acme/sealed", &secret(KNOWN_SECRET)).await,
        Err(SecretError::Unavailable(_))
    ));
    vault.fail_next_requests(1);
    assert!(matches!(
        store.rewrap().await,
        Err(SecretError::Unavailable(_))
    ));
    vault.fail_next_requests(1);
    assert!(matches!(
        store.check().await,
        Err(SecretError::Unavailable(_))
    ));
    store.check().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_or_silent_vault_is_unavailable() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let unreachable = config(
        &format!("http://{closed}"),
        json!({ "auth": { "method": "token", "token": "t" } }),
    );
    assert!(matches!(
        connect_err(&unreachable).await,
        SecretError::Unavailable(_)
    ));

    // A server that accepts connections and never answers: the request timeout applies.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_config = config(
        &format!("http://{}", silent.local_addr().unwrap()),
        json!({ "request_timeout": "300ms", "auth": { "method": "token", "token": "t" } }),
    );
    let err = connect_err(&silent_config).await;
    assert!(matches!(err, SecretError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn the_transit_key_is_created_once_as_aes256_gcm96() {
    let vault = FakeVault::start().await;
    assert_eq!(vault.transit_latest_version("transit", "switchyard"), None);
    let config = token_config(&vault, &vault.root_token());
    VaultSecretStore::connect(&config).await.unwrap();
    assert_eq!(
        vault.transit_latest_version("transit", "switchyard"),
        Some(1)
    );
    VaultSecretStore::connect(&config).await.unwrap();
    let creates = vault
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "transit/keys/switchyard")
        .count();
    assert_eq!(creates, 1, "an existing key is only read");
}

#[tokio::test]
async fn a_refused_transit_key_is_a_configuration_error_naming_the_policy() {
    let vault = FakeVault::start().await;
    vault.deny("transit/keys/");
    let err = connect_err(&token_config(&vault, &vault.root_token())).await;
    let SecretError::Config(message) = &err else {
        panic!("expected Config, got {err:?}");
    };
    assert!(message.contains("transit/keys/switchyard"), "{message}");
    assert!(message.contains("policy"), "{message}");
}

#[tokio::test]
async fn the_token_is_renewed_before_it_expires() {
    let vault = FakeVault::start()
        .await
        .with_token_ttl(Duration::from_secs(2));
    let token = vault.issue_token();
    let store = VaultSecretStore::connect(&token_config(&vault, &token))
        .await
        .unwrap();
    let stored = store
        .put("acme/renew", &secret(KNOWN_SECRET))
        .await
        .unwrap();

    // Two renewals take more than the token's two seconds: without them it would have expired.
    assert!(eventually(Duration::from_secs(10), || vault.renewals() >= 2).await);
    assert_eq!(
        store.get(&stored).await.unwrap().expose(),
        KNOWN_SECRET.as_bytes()
    );
    assert_eq!(vault.logins(), 0);

    // Dropping the store stops the renewals.
    drop(store);
    let renewals = vault.request_count("auth/token/renew-self");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(vault.request_count("auth/token/renew-self"), renewals);
}

#[tokio::test]
async fn approle_logs_in_again_when_renewal_is_refused() {
    let vault = FakeVault::start()
        .await
        .with_approle("role-1", "secret-1")
        .with_token_ttl(Duration::from_secs(2));
    vault.refuse_renewals(true);
    let store = VaultSecretStore::connect(&approle_config(&vault))
        .await
        .unwrap();
    assert_eq!(vault.logins(), 1);
    let stored = store
        .put("acme/relogin", &secret(KNOWN_SECRET))
        .await
        .unwrap();

    // The first token expires after two seconds; three logins take longer than that.
    assert!(eventually(Duration::from_secs(10), || vault.logins() >= 3).await);
    assert!(vault.request_count("auth/token/renew-self") >= 2);
    assert_eq!(vault.renewals(), 0);
    assert_eq!(
        store.get(&stored).await.unwrap().expose(),
        KNOWN_SECRET.as_bytes()
    );

    let tokens: HashSet<String> = vault
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("secret/") || r.path.starts_with("transit/"))
        .filter_map(|r| r.token)
        .collect();
    assert!(
        tokens.len() >= 2,
        "requests use the new token: {}",
        tokens.len()
    );
}

#[tokio::test]
async fn a_token_that_is_not_renewable_is_replaced_by_a_new_login() {
    let vault = FakeVault::start()
        .await
        .with_kubernetes_role("switchyard", "the-jwt")
        .with_renewable_tokens(false)
        .with_token_ttl(Duration::from_secs(2));
    let dir = tempfile::tempdir().unwrap();
    let jwt = dir.path().join("token");
    std::fs::write(&jwt, "the-jwt").unwrap();
    let store = VaultSecretStore::connect(&config(
        &vault.address(),
        json!({ "auth": { "method": "kubernetes", "role": "switchyard", "jwt_path": jwt } }),
    ))
    .await
    .unwrap();
    assert!(eventually(Duration::from_secs(10), || vault.logins() >= 3).await);
    assert_eq!(vault.request_count("auth/token/renew-self"), 0);
    store.check().await.unwrap();
}

#[tokio::test]
async fn rewrap_writes_a_new_kv_version_under_the_new_key() {
    let vault = FakeVault::start().await;
    let store = VaultSecretStore::connect(&token_config(&vault, &vault.root_token()))
        .await
        .unwrap();
    let stored = store
        .put("acme/rewrap", &secret(KNOWN_SECRET))
        .await
        .unwrap();
    let path = format!("switchyard/{stored}");
    let ciphertext = |version: u64| {
        vault.kv_secret("secret", &path).unwrap().versions[&version].data["ciphertext"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(vault.kv_secret("secret", &path).unwrap().current_version, 1);
    assert!(ciphertext(1).starts_with("vault:v1:"));

    assert_eq!(store.rotate_key().await.unwrap().new_version, 2);
    assert_eq!(
        store.rewrap().await.unwrap(),
        RewrapReport {
            rewrapped: 1,
            already_current: 0
        }
    );
    let kept = vault.kv_secret("secret", &path).unwrap();
    assert_eq!(kept.current_version, 2, "the rewrap is a new KV version");
    assert!(
        ciphertext(1).starts_with("vault:v1:"),
        "the history is kept"
    );
    assert!(ciphertext(2).starts_with("vault:v2:"));

    // Version 1 of the key is no longer needed once everything is rewrapped.
    vault.set_min_decryption_version("transit", "switchyard", 2);
    assert_eq!(
        store.get(&stored).await.unwrap().expose(),
        KNOWN_SECRET.as_bytes()
    );
    assert_eq!(
        store.rewrap().await.unwrap(),
        RewrapReport {
            rewrapped: 0,
            already_current: 1
        }
    );
    assert_eq!(vault.kv_secret("secret", &path).unwrap().current_version, 2);

    // Destroy removes every version.
    store.destroy(&stored).await.unwrap();
    assert!(vault.kv_secret("secret", &path).is_none());
}

#[tokio::test]
async fn tampered_or_foreign_kv_data_is_an_integrity_error() {
    let vault = FakeVault::start().await;
    let store = VaultSecretStore::connect(&token_config(&vault, &vault.root_token()))
        .await
        .unwrap();
    let stored = store
        .put("acme/tamper", &secret(KNOWN_SECRET))
        .await
        .unwrap();
    let path = format!("switchyard/{stored}");
    let original = vault.kv_secret("secret", &path).unwrap().versions[&1].data["ciphertext"]
        .as_str()
        .unwrap()
        .to_owned();
    let (prefix, body) = original.rsplit_once(':').unwrap();
    let mut bytes = BASE64.decode(body).unwrap();
    bytes[20] ^= 0x01;
    let tampered = format!("{prefix}:{}", BASE64.encode(bytes));
    vault.kv_write("secret", &path, json!({ "ciphertext": tampered }));
    assert!(
        matches!(store.get(&stored).await, Err(SecretError::Integrity(r)) if r == stored.as_str())
    );

    vault.kv_write("secret", &path, json!({ "something": "else" }));
    assert!(matches!(
        store.get(&stored).await,
        Err(SecretError::Integrity(_))
    ));
    // A rewrap skips an entry that is not one of ours rather than failing on it.
    assert_eq!(store.rewrap().await.unwrap(), RewrapReport::default());
}

#[tokio::test]
async fn the_namespace_is_sent_with_every_request() {
    let vault = FakeVault::start()
        .await
        .with_namespace("team-a")
        .with_approle("role-1", "secret-1");
    let mut in_namespace = approle_config(&vault);
    in_namespace.namespace = Some("team-a".to_owned());
    let store = VaultSecretStore::connect(&in_namespace).await.unwrap();
    let stored = store.put("acme/ns", &secret(KNOWN_SECRET)).await.unwrap();
    store.rotate_key().await.unwrap();
    store.rewrap().await.unwrap();
    assert_eq!(
        store.get(&stored).await.unwrap().expose(),
        KNOWN_SECRET.as_bytes()
    );
    let requests = vault.requests();
    assert!(requests.len() >= 8);
    for request in &requests {
        assert_eq!(request.namespace.as_deref(), Some("team-a"), "{request:?}");
    }

    // Without the namespace, the login mount does not exist.
    assert!(matches!(
        connect_err(&approle_config(&vault)).await,
        SecretError::Config(m) if m.contains("no handler")
    ));
}

#[tokio::test]
async fn kv_holds_only_ciphertext() {
    let vault = FakeVault::start().await;
    let store = VaultSecretStore::connect(&token_config(&vault, &vault.root_token()))
        .await
        .unwrap();
    for _ in 0..5 {
        store
            .put("acme/plain", &secret(KNOWN_SECRET))
            .await
            .unwrap();
    }
    store.rotate_key().await.unwrap();
    store.rewrap().await.unwrap();

    let dump = vault.kv_dump("secret");
    assert!(dump.contains("vault:v2:"), "{dump}");
    assert!(!dump.contains(KNOWN_SECRET), "{dump}");
    assert!(!dump.contains(&BASE64.encode(KNOWN_SECRET)), "{dump}");
    let paths = vault.kv_paths("secret");
    assert_eq!(paths.len(), 5);
    assert!(
        paths
            .iter()
            .all(|p| p.starts_with("switchyard/acme/plain/")),
        "{paths:?}"
    );
}

#[tokio::test]
async fn custom_mounts_key_and_prefix_are_used() {
    let vault = FakeVault::start()
        .await
        .with_kv_mount("kv-team")
        .with_transit_mount("transit-team");
    let config = config(
        &vault.address(),
        json!({
            "kv_mount": "kv-team",
            "kv_prefix": "apps/switchyard",
            "transit_mount": "transit-team",
            "transit_key": "team-key",
            "auth": { "method": "token", "token": vault.root_token() },
        }),
    );
    let store = VaultSecretStore::connect(&config).await.unwrap();
    let first = store.put("a", &secret("one")).await.unwrap();
    let second = store.put("a/b/c", &secret("two")).await.unwrap();
    store.rotate_key().await.unwrap();
    assert_eq!(
        store.rewrap().await.unwrap(),
        RewrapReport {
            rewrapped: 2,
            already_current: 0
        }
    );
    assert_eq!(store.get(&first).await.unwrap(), secret("one"));
    assert_eq!(store.get(&second).await.unwrap(), secret("two"));
    assert!(vault.kv_paths("secret").is_empty());
    let mut paths = vault.kv_paths("kv-team");
    paths.sort();
    assert_eq!(
        paths,
        vec![
            format!("apps/switchyard/{first}"),
            format!("apps/switchyard/{second}")
        ]
    );
    assert_eq!(
        vault.transit_latest_version("transit-team", "team-key"),
        Some(2)
    );
    assert_eq!(vault.transit_latest_version("transit", "switchyard"), None);
}

#[test]
fn configuration_defaults_and_strictness() {
    let config = config(
        "https://vault.example:8200",
        json!({ "auth": { "method": "approle", "role_id": "r", "secret_id": "s3cr3t-id" } }),
    );
    assert_eq!(config.kv_mount, "secret");
    assert_eq!(config.kv_prefix, "switchyard");
    assert_eq!(config.transit_mount, "transit");
    assert_eq!(config.transit_key, "switchyard");
    assert_eq!(config.request_timeout, Duration::from_secs(10));
    assert!(config.namespace.is_none() && config.ca_cert.is_none());
    assert!(matches!(&config.auth, VaultAuth::AppRole { mount, .. } if mount == "approle"));
    assert!(!format!("{config:?}").contains("s3cr3t-id"));

    let kubernetes: VaultAuth =
        serde_json::from_value(json!({ "method": "kubernetes", "role": "r" })).unwrap();
    assert!(matches!(
        kubernetes,
        VaultAuth::Kubernetes { jwt_path, mount, .. }
            if jwt_path.to_str() == Some("/var/run/secrets/kubernetes.io/serviceaccount/token")
                && mount == "kubernetes"
    ));
    let token: SecretsConfig = serde_json::from_value(json!({
        "backend": "vault",
        "address": "http://127.0.0.1:8200",
        "request_timeout": "1m 30s",
        "auth": { "method": "token", "token": "hvs.secret-token" },
    }))
    .unwrap();
    assert!(!format!("{token:?}").contains("hvs.secret-token"));
    let SecretsConfig::Vault(token) = token else {
        panic!("expected the Vault backend");
    };
    assert_eq!(token.request_timeout, Duration::from_secs(90));

    let unknown_field = json!({ "address": "http://x", "kv_mnt": "a", "auth": { "method": "token", "token": "t" } });
    assert!(serde_json::from_value::<VaultConfig>(unknown_field).is_err());
    let unknown_method = json!({ "address": "http://x", "auth": { "method": "userpass" } });
    assert!(serde_json::from_value::<VaultConfig>(unknown_method).is_err());
    let missing_address = json!({ "auth": { "method": "token", "token": "t" } });
    assert!(serde_json::from_value::<VaultConfig>(missing_address).is_err());
}

#[tokio::test]
async fn bad_addresses_and_paths_are_configuration_errors() {
    for address in ["not a url", "ftp://vault.example", "http://"] {
        let config = config(
            address,
            json!({ "auth": { "method": "token", "token": "t" } }),
        );
        assert!(
            matches!(connect_err(&config).await, SecretError::Config(_)),
            "{address}"
        );
    }
    let config = config(
        "http://127.0.0.1:1",
        json!({ "kv_prefix": "../etc", "auth": { "method": "token", "token": "t" } }),
    );
    assert!(
        matches!(connect_err(&config).await, SecretError::Config(m) if m.contains("kv_prefix"))
    );
}
