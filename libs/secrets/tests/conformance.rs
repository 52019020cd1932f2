//! One behavioural suite for every `SecretStore` backend: embedded on SQLite and PostgreSQL, and
//! Vault (the fake server) with each auth method.

// Helpers shared by the tests panic on unexpected errors just as the tests do; clippy's
// allow-unwrap-in-tests only covers the #[test] functions themselves.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::json;
use switchyard_secrets::{
    EmbeddedConfig, EmbeddedSecretStore, RewrapReport, SecretBytes, SecretError, SecretRef,
    SecretStore, VaultConfig, VaultSecretStore,
};
use switchyard_store::testing;
use switchyard_testkit::fake_vault::FakeVault;

fn material(text: &str) -> SecretBytes {
    SecretBytes::new(text.as_bytes().to_vec())
}

async fn conformance(store: Arc<dyn SecretStore>) {
    store.check().await.unwrap();

    // Round trip, including bytes that are not UTF-8 and a larger value.
    let api_key = material("sk-conformance-0123456789");
    let first = store
        .put("acme/credentials/openai-prod", &api_key)
        .await
        .unwrap();
    assert!(
        first.as_str().starts_with("acme/credentials/openai-prod/"),
        "{first}"
    );
    assert_eq!(store.get(&first).await.unwrap(), api_key);
    let binary = SecretBytes::new((0..=255u8).cycle().take(64 * 1024).collect());
    let large = store.put("acme/blobs", &binary).await.unwrap();
    assert_eq!(store.get(&large).await.unwrap(), binary);

    // A reference survives being stored by the caller as text.
    let reparsed = SecretRef::parse(first.as_str().to_owned()).unwrap();
    assert_eq!(store.get(&reparsed).await.unwrap(), api_key);

    // Every put creates a new secret, even with the same scope and material.
    let second = store
        .put("acme/credentials/openai-prod", &api_key)
        .await
        .unwrap();
    assert_ne!(first, second);
    let other = material("another-value");
    let third = store
        .put("acme/credentials/openai-prod", &other)
        .await
        .unwrap();
    assert_eq!(store.get(&third).await.unwrap(), other);
    assert_eq!(
        store.get(&first).await.unwrap(),
        api_key,
        "puts never overwrite"
    );

    let concurrent = futures_join(store.clone(), 8).await;
    assert_eq!(
        concurrent.len(),
        8,
        "concurrent puts yield distinct references"
    );

    // Destroy is final and idempotent; unknown references are NotFound.
    store.destroy(&second).await.unwrap();
    assert!(
        matches!(store.get(&second).await, Err(SecretError::NotFound(r)) if r == second.as_str())
    );
    store.destroy(&second).await.unwrap();
    let never = SecretRef::parse("acme/credentials/never-stored").unwrap();
    assert!(matches!(
        store.get(&never).await,
        Err(SecretError::NotFound(_))
    ));
    store.destroy(&never).await.unwrap();

    let too_long = "a".repeat(600);
    let invalid = [
        "",
        "/acme",
        "acme/",
        "acme//x",
        "acme/../x",
        "acme/./x",
        "ac me",
        "acme/ü",
        &too_long,
    ];
    for scope in invalid {
        assert!(
            matches!(
                store.put(scope, &api_key).await,
                Err(SecretError::InvalidPath(_))
            ),
            "scope {scope:?} must be refused"
        );
    }
    assert!(SecretRef::parse("acme/../etc").is_err());

    // Key rotation: old material stays readable, new material goes under the new version.
    let before_rotation = vec![first.clone(), third.clone(), large.clone()];
    let mut all: Vec<SecretRef> = before_rotation.clone();
    all.extend(concurrent);
    let rotation = store.rotate_key().await.unwrap();
    assert!(rotation.new_version >= 2, "{rotation:?}");
    for secret in &before_rotation {
        store.get(secret).await.unwrap();
    }
    let after = store
        .put("acme/after-rotation", &material("new-one"))
        .await
        .unwrap();
    all.push(after.clone());

    // Only what was stored before the rotation is rewrapped; the destroyed secret is not counted.
    let report = store.rewrap().await.unwrap();
    assert_eq!(
        report,
        RewrapReport {
            rewrapped: all.len() as u64 - 1,
            already_current: 1,
        }
    );
    let again = store.rewrap().await.unwrap();
    assert_eq!(
        again,
        RewrapReport {
            rewrapped: 0,
            already_current: all.len() as u64,
        }
    );
    assert_eq!(store.get(&first).await.unwrap(), api_key);
    assert_eq!(store.get(&third).await.unwrap(), other);
    assert_eq!(store.get(&large).await.unwrap(), binary);
    assert_eq!(store.get(&after).await.unwrap(), material("new-one"));

    let second_rotation = store.rotate_key().await.unwrap();
    assert_eq!(second_rotation.new_version, rotation.new_version + 1);

    // Nothing secret in Debug output.
    let shown = format!("{api_key:?} {store:?}");
    assert!(!shown.contains("sk-conformance"), "{shown}");
    assert!(shown.contains("redacted"), "{shown}");

    store.check().await.unwrap();
}

/// Eight puts at once; returns their distinct references.
async fn futures_join(store: Arc<dyn SecretStore>, count: usize) -> HashSet<SecretRef> {
    let mut tasks = Vec::new();
    for index in 0..count {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let value = material(&format!("concurrent-{index}"));
            let secret = store.put("acme/concurrent", &value).await.unwrap();
            assert_eq!(store.get(&secret).await.unwrap(), value);
            secret
        }));
    }
    let mut refs = HashSet::new();
    for task in tasks {
        refs.insert(task.await.unwrap());
    }
    refs
}

#[tokio::test]
async fn embedded_on_sqlite() {
    let (db, dir) = testing::sqlite_db().await.unwrap();
    let store = EmbeddedSecretStore::open(&EmbeddedConfig::default(), db, dir.path())
        .await
        .unwrap();
    assert_eq!(store.backend(), "embedded");
    conformance(Arc::new(store)).await;
}

#[tokio::test]
async fn embedded_on_postgres() {
    let db = testing::postgres_db().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedSecretStore::open(&EmbeddedConfig::default(), db, dir.path())
        .await
        .unwrap();
    conformance(Arc::new(store)).await;
}

fn vault_config(vault: &FakeVault, auth: serde_json::Value) -> VaultConfig {
    serde_json::from_value(json!({ "address": vault.address(), "auth": auth })).unwrap()
}

#[tokio::test]
async fn vault_with_token_auth() {
    let vault = FakeVault::start().await;
    let config = vault_config(
        &vault,
        json!({ "method": "token", "token": vault.issue_token() }),
    );
    let store = VaultSecretStore::connect(&config).await.unwrap();
    assert_eq!(store.backend(), "vault");
    conformance(Arc::new(store)).await;
}

#[tokio::test]
async fn vault_with_approle_auth() {
    let vault = FakeVault::start().await.with_approle("role-1", "secret-1");
    let config = vault_config(
        &vault,
        json!({ "method": "approle", "role_id": "role-1", "secret_id": "secret-1" }),
    );
    conformance(Arc::new(VaultSecretStore::connect(&config).await.unwrap())).await;
    assert_eq!(vault.logins(), 1);
}

#[tokio::test]
async fn vault_with_kubernetes_auth() {
    let vault = FakeVault::start()
        .await
        .with_kubernetes_role("switchyard", "header.payload.signature");
    let dir = tempfile::tempdir().unwrap();
    let jwt_path = dir.path().join("token");
    std::fs::write(&jwt_path, "header.payload.signature\n").unwrap();
    let config = vault_config(
        &vault,
        json!({ "method": "kubernetes", "role": "switchyard", "jwt_path": jwt_path }),
    );
    conformance(Arc::new(VaultSecretStore::connect(&config).await.unwrap())).await;
    assert_eq!(vault.logins(), 1);
}
