//! Behaviour specific to the embedded backend: the key file, the master key, tampering, and what
//! reaches the disk.

// Helpers shared by the tests panic on unexpected errors just as the tests do; clippy's
// allow-unwrap-in-tests only covers the #[test] functions themselves.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::json;
use sha2::{Digest, Sha256};
use switchyard_secrets::{
    EmbeddedConfig, EmbeddedSecretStore, ExposeSecret, RewrapReport, SecretBytes, SecretError,
    SecretRef, SecretStore, SecretString, SecretsConfig,
};
use switchyard_store::{Db, Value, testing};

const KNOWN_SECRET: &str = "sk-live-4f9a1c7e2b8d6a3f0e5c9b1d7a2e4f60";

fn configured(key: &[u8]) -> EmbeddedConfig {
    serde_json::from_value(json!({ "master_key": BASE64.encode(key) })).unwrap()
}

fn fingerprint(key: &[u8]) -> String {
    hex::encode(Sha256::digest(key))[..16].to_owned()
}

fn read_key_file(path: &Path) -> Vec<u8> {
    BASE64
        .decode(std::fs::read_to_string(path).unwrap().trim())
        .unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn config_error(result: Result<EmbeddedSecretStore, SecretError>) -> String {
    match result {
        Err(SecretError::Config(message)) => message,
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

async fn data_key_version(db: &Db, secret: &SecretRef) -> i64 {
    db.query_opt(
        "SELECT data_key_version FROM secret_store_material WHERE secret_ref = $1",
        &[secret.as_str().into()],
    )
    .await
    .unwrap()
    .unwrap()
    .get(0)
    .unwrap()
}

#[tokio::test]
async fn the_key_file_is_generated_private_and_reused() {
    let (db, _db_dir) = testing::sqlite_db().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data/switchyard");
    let store = EmbeddedSecretStore::open(&EmbeddedConfig::default(), db.clone(), &data_dir)
        .await
        .unwrap();
    let key_file = data_dir.join("master.key");
    assert_eq!(mode(&key_file), 0o600);
    assert_eq!(mode(&data_dir), 0o700);
    let key = read_key_file(&key_file);
    assert_eq!(key.len(), 32);
    assert!(format!("{store:?}").contains(&fingerprint(&key)));

    let secret = store
        .put("acme/key-file", &SecretBytes::new(KNOWN_SECRET.into()))
        .await
        .unwrap();
    drop(store);
    let reopened = EmbeddedSecretStore::open(&EmbeddedConfig::default(), db, &data_dir)
        .await
        .unwrap();
    assert_eq!(read_key_file(&key_file), key, "the key is generated once");
    assert_eq!(
        reopened.get(&secret).await.unwrap().expose(),
        KNOWN_SECRET.as_bytes()
    );
}

#[tokio::test]
async fn a_configured_key_file_path_is_used() {
    let (db, _db_dir) = testing::sqlite_db().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("keys/custom.key");
    let config: EmbeddedConfig =
        serde_json::from_value(json!({ "master_key_file": key_file })).unwrap();
    EmbeddedSecretStore::open(&config, db, &dir.path().join("unused"))
        .await
        .unwrap();
    assert_eq!(mode(&key_file), 0o600);
    assert!(!dir.path().join("unused/master.key").exists());
}

#[tokio::test]
async fn a_key_file_others_can_read_is_refused() {
    let (db, _db_dir) = testing::sqlite_db().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    EmbeddedSecretStore::open(&EmbeddedConfig::default(), db.clone(), dir.path())
        .await
        .unwrap();
    let key_file = dir.path().join("master.key");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let message =
        config_error(EmbeddedSecretStore::open(&EmbeddedConfig::default(), db, dir.path()).await);
    assert!(
        message.contains(&key_file.display().to_string()),
        "{message}"
    );
    assert!(message.contains("chmod 600"), "{message}");
}

#[tokio::test]
async fn keys_of_the_wrong_length_or_encoding_are_refused() {
    let (db, dir) = testing::sqlite_db().await.unwrap();
    let short = BASE64.encode([7u8; 16]);
    let message = config_error(
        EmbeddedSecretStore::open(&configured(&[7u8; 16]), db.clone(), dir.path()).await,
    );
    assert!(message.contains("32 bytes"), "{message}");
    assert!(
        !message.contains(&short),
        "the key must not be shown: {message}"
    );

    let config: EmbeddedConfig =
        serde_json::from_value(json!({ "master_key": "not base64 at all!" })).unwrap();
    let message = config_error(EmbeddedSecretStore::open(&config, db.clone(), dir.path()).await);
    assert!(message.contains("base64"), "{message}");
    assert!(!message.contains("not base64 at all"), "{message}");

    let key_dir = tempfile::tempdir().unwrap();
    let key_file = key_dir.path().join("master.key");
    std::fs::write(&key_file, &short).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let message = config_error(
        EmbeddedSecretStore::open(&EmbeddedConfig::default(), db, key_dir.path()).await,
    );
    assert!(
        message.contains(&key_file.display().to_string()),
        "{message}"
    );
    assert!(message.contains("32 bytes"), "{message}");
}

#[tokio::test]
async fn the_wrong_master_key_is_refused_with_both_fingerprints() {
    let (db, dir) = testing::sqlite_db().await.unwrap();
    let right = [1u8; 32];
    let wrong = [2u8; 32];
    let store = EmbeddedSecretStore::open(&configured(&right), db.clone(), dir.path())
        .await
        .unwrap();
    store
        .put("acme/x", &SecretBytes::new(KNOWN_SECRET.into()))
        .await
        .unwrap();

    let message =
        config_error(EmbeddedSecretStore::open(&configured(&wrong), db.clone(), dir.path()).await);
    assert!(message.contains("does not match"), "{message}");
    assert!(message.contains(&fingerprint(&right)), "{message}");
    assert!(message.contains(&fingerprint(&wrong)), "{message}");
    assert!(!message.contains(&BASE64.encode(right)), "{message}");
    assert!(!message.contains(&BASE64.encode(wrong)), "{message}");

    // Without a configured key and without the key file, the store does not invent a new key.
    let empty_dir = tempfile::tempdir().unwrap();
    let message = config_error(
        EmbeddedSecretStore::open(&EmbeddedConfig::default(), db, empty_dir.path()).await,
    );
    assert!(message.contains("does not exist"), "{message}");
    assert!(!empty_dir.path().join("master.key").exists());
}

#[tokio::test]
async fn tampered_or_moved_ciphertext_is_an_integrity_error() {
    let (db, dir) = testing::sqlite_db().await.unwrap();
    let store = EmbeddedSecretStore::open(&configured(&[3u8; 32]), db.clone(), dir.path())
        .await
        .unwrap();
    let first = store
        .put("acme/tamper", &SecretBytes::new(b"first".to_vec()))
        .await
        .unwrap();
    let second = store
        .put("acme/tamper", &SecretBytes::new(b"second".to_vec()))
        .await
        .unwrap();

    let row = db
        .query_opt(
            "SELECT nonce, ciphertext FROM secret_store_material WHERE secret_ref = $1",
            &[second.as_str().into()],
        )
        .await
        .unwrap()
        .unwrap();
    let nonce: Vec<u8> = row.get(0).unwrap();
    let mut ciphertext: Vec<u8> = row.get(1).unwrap();

    // The second secret's ciphertext, moved to the first row, does not decrypt: the reference is
    // authenticated.
    db.execute(
        "UPDATE secret_store_material SET nonce = $1, ciphertext = $2 WHERE secret_ref = $3",
        &[
            nonce.clone().into(),
            ciphertext.clone().into(),
            first.as_str().into(),
        ],
    )
    .await
    .unwrap();
    assert!(
        matches!(store.get(&first).await, Err(SecretError::Integrity(r)) if r == first.as_str())
    );

    ciphertext[0] ^= 0x01;
    db.execute(
        "UPDATE secret_store_material SET ciphertext = $1 WHERE secret_ref = $2",
        &[ciphertext.into(), second.as_str().into()],
    )
    .await
    .unwrap();
    assert!(
        matches!(store.get(&second).await, Err(SecretError::Integrity(r)) if r == second.as_str())
    );

    // A rewrap stops at a secret it cannot decrypt rather than skipping it silently.
    store.rotate_key().await.unwrap();
    assert!(matches!(
        store.rewrap().await,
        Err(SecretError::Integrity(_))
    ));
}

#[tokio::test]
async fn a_damaged_data_key_fails_the_check() {
    let (db, dir) = testing::sqlite_db().await.unwrap();
    let store = EmbeddedSecretStore::open(&configured(&[4u8; 32]), db.clone(), dir.path())
        .await
        .unwrap();
    store.check().await.unwrap();
    db.execute(
        "UPDATE secret_store_data_keys SET wrapped_key = $1 WHERE version = 1",
        &[Value::Blob(vec![0; 48])],
    )
    .await
    .unwrap();
    assert!(matches!(
        store.check().await,
        Err(SecretError::Integrity(_))
    ));
}

#[tokio::test]
async fn master_key_rotation_with_a_key_file() {
    let (db, dir) = testing::sqlite_db().await.unwrap();
    let store = EmbeddedSecretStore::open(&EmbeddedConfig::default(), db.clone(), dir.path())
        .await
        .unwrap();
    let key_file = dir.path().join("master.key");
    let old_key = read_key_file(&key_file);
    let secret = store
        .put("acme/rotate-master", &SecretBytes::new(KNOWN_SECRET.into()))
        .await
        .unwrap();
    store.rotate_key().await.unwrap();

    let rotation = store.rotate_master_key(None).await.unwrap();
    let new_key = read_key_file(&key_file);
    assert_ne!(new_key, old_key);
    assert_eq!(rotation.previous_fingerprint, fingerprint(&old_key));
    assert_eq!(rotation.fingerprint, fingerprint(&new_key));
    assert_eq!(rotation.data_keys_rewrapped, 2);
    assert!(rotation.new_key.is_none(), "the key file holds the new key");
    assert_eq!(mode(&key_file), 0o600);
    assert!(!dir.path().join("master.key.next").exists());

    assert_eq!(
        store.get(&secret).await.unwrap().expose(),
        KNOWN_SECRET.as_bytes()
    );
    store.check().await.unwrap();
    store.rotate_key().await.unwrap();
    drop(store);

    let reopened = EmbeddedSecretStore::open(&EmbeddedConfig::default(), db.clone(), dir.path())
        .await
        .unwrap();
    assert_eq!(
        reopened.get(&secret).await.unwrap().expose(),
        KNOWN_SECRET.as_bytes()
    );
    let message =
        config_error(EmbeddedSecretStore::open(&configured(&old_key), db, dir.path()).await);
    assert!(message.contains("does not match"), "{message}");
}

#[tokio::test]
async fn master_key_rotation_with_a_configured_key_returns_the_new_key() {
    let (db, dir) = testing::sqlite_db().await.unwrap();
    let old_key = [5u8; 32];
    let store = EmbeddedSecretStore::open(&configured(&old_key), db.clone(), dir.path())
        .await
        .unwrap();
    let secret = store
        .put("acme/configured", &SecretBytes::new(KNOWN_SECRET.into()))
        .await
        .unwrap();

    let rotation = store.rotate_master_key(None).await.unwrap();
    let new_key = BASE64
        .decode(rotation.new_key.as_ref().unwrap().expose_secret())
        .unwrap();
    assert_eq!(rotation.fingerprint, fingerprint(&new_key));
    assert!(!format!("{rotation:?}").contains(rotation.new_key.as_ref().unwrap().expose_secret()));
    assert!(
        !dir.path().join("master.key").exists(),
        "no key file is written"
    );
    assert_eq!(
        store.get(&secret).await.unwrap().expose(),
        KNOWN_SECRET.as_bytes()
    );

    config_error(EmbeddedSecretStore::open(&configured(&old_key), db.clone(), dir.path()).await);
    let reopened = EmbeddedSecretStore::open(&configured(&new_key), db.clone(), dir.path())
        .await
        .unwrap();
    assert_eq!(
        reopened.get(&secret).await.unwrap().expose(),
        KNOWN_SECRET.as_bytes()
    );

    // A chosen key is used as given; the current key is refused as "new".
    let chosen = [6u8; 32];
    let rotation = reopened
        .rotate_master_key(Some(SecretString::from(BASE64.encode(chosen))))
        .await
        .unwrap();
    assert_eq!(rotation.fingerprint, fingerprint(&chosen));
    assert!(matches!(
        reopened
            .rotate_master_key(Some(SecretString::from(BASE64.encode(chosen))))
            .await,
        Err(SecretError::Config(_))
    ));
    let reopened = EmbeddedSecretStore::open(&configured(&chosen), db, dir.path())
        .await
        .unwrap();
    assert_eq!(
        reopened.get(&secret).await.unwrap().expose(),
        KNOWN_SECRET.as_bytes()
    );
}

fn write_private(path: &PathBuf, content: &[u8]) {
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[tokio::test]
async fn a_rotation_interrupted_after_its_commit_is_finished_on_open() {
    let (db, dir) = testing::sqlite_db().await.unwrap();
    let store = EmbeddedSecretStore::open(&EmbeddedConfig::default(), db.clone(), dir.path())
        .await
        .unwrap();
    let key_file = dir.path().join("master.key");
    let next_file = dir.path().join("master.key.next");
    let old_content = std::fs::read(&key_file).unwrap();
    let secret = store
        .put("acme/crash", &SecretBytes::new(KNOWN_SECRET.into()))
        .await
        .unwrap();
    store.rotate_master_key(None).await.unwrap();
    drop(store);
    let new_content = std::fs::read(&key_file).unwrap();

    // The state a crash between the commit and the rename leaves: the data keys are wrapped under
    // the key in master.key.next, and master.key still holds the old key.
    std::fs::rename(&key_file, &next_file).unwrap();
    write_private(&key_file, &old_content);

    let reopened = EmbeddedSecretStore::open(&EmbeddedConfig::default(), db, dir.path())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&key_file).unwrap(), new_content);
    assert!(!next_file.exists());
    assert_eq!(mode(&key_file), 0o600);
    assert_eq!(
        reopened.get(&secret).await.unwrap().expose(),
        KNOWN_SECRET.as_bytes()
    );
}

#[tokio::test]
async fn a_rotation_that_never_committed_is_discarded_on_open() {
    let (db, dir) = testing::sqlite_db().await.unwrap();
    let store = EmbeddedSecretStore::open(&EmbeddedConfig::default(), db.clone(), dir.path())
        .await
        .unwrap();
    let key_file = dir.path().join("master.key");
    let next_file = dir.path().join("master.key.next");
    let content = std::fs::read(&key_file).unwrap();
    let secret = store
        .put("acme/crash", &SecretBytes::new(KNOWN_SECRET.into()))
        .await
        .unwrap();
    drop(store);

    // The state a crash before the commit leaves: a new key written, the data keys untouched.
    write_private(
        &next_file,
        format!("{}\n", BASE64.encode([9u8; 32])).as_bytes(),
    );

    let reopened = EmbeddedSecretStore::open(&EmbeddedConfig::default(), db, dir.path())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&key_file).unwrap(), content);
    assert!(!next_file.exists());
    assert_eq!(
        reopened.get(&secret).await.unwrap().expose(),
        KNOWN_SECRET.as_bytes()
    );
}

fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_below(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test]
async fn nothing_secret_reaches_the_disk_in_plaintext() {
    let (db, dir) = testing::sqlite_db().await.unwrap();
    let store = EmbeddedSecretStore::open(&EmbeddedConfig::default(), db.clone(), dir.path())
        .await
        .unwrap();
    let mut refs = Vec::new();
    for _ in 0..20 {
        refs.push(
            store
                .put("acme/disk", &SecretBytes::new(KNOWN_SECRET.into()))
                .await
                .unwrap(),
        );
    }
    store.rotate_key().await.unwrap();
    store.rewrap().await.unwrap();
    store.rotate_master_key(None).await.unwrap();
    for secret in &refs {
        assert_eq!(
            store.get(secret).await.unwrap().expose(),
            KNOWN_SECRET.as_bytes()
        );
    }

    let files = files_below(dir.path());
    let names: Vec<String> = files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    assert!(names.iter().any(|n| n == "test.db"), "{names:?}");
    assert!(
        names.iter().any(|n| n == "test.db-wal"),
        "the WAL is checked too: {names:?}"
    );
    let needle = KNOWN_SECRET.as_bytes();
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(needle.len()).any(|window| window == needle),
            "{} holds the secret in plaintext",
            file.display()
        );
    }
}

#[tokio::test]
async fn a_rotation_by_another_replica_is_picked_up() {
    let (db, dir) = testing::sqlite_db().await.unwrap();
    let key = configured(&[8u8; 32]);
    let first = EmbeddedSecretStore::open(&key, db.clone(), dir.path())
        .await
        .unwrap();
    let second = EmbeddedSecretStore::open(&key, db.clone(), dir.path())
        .await
        .unwrap();
    let old = first
        .put("acme/replicas", &SecretBytes::new(b"old".to_vec()))
        .await
        .unwrap();

    assert_eq!(second.rotate_key().await.unwrap().new_version, 2);
    let by_second = second
        .put("acme/replicas", &SecretBytes::new(b"by-second".to_vec()))
        .await
        .unwrap();
    assert_eq!(data_key_version(&db, &by_second).await, 2);
    // The first replica has never seen data key 2.
    assert_eq!(first.get(&by_second).await.unwrap().expose(), b"by-second");
    let by_first = first
        .put("acme/replicas", &SecretBytes::new(b"by-first".to_vec()))
        .await
        .unwrap();
    assert_eq!(data_key_version(&db, &by_first).await, 2);

    assert_eq!(
        first.rewrap().await.unwrap(),
        RewrapReport {
            rewrapped: 1,
            already_current: 2
        }
    );
    assert_eq!(data_key_version(&db, &old).await, 2);
    assert_eq!(second.get(&old).await.unwrap().expose(), b"old");
}

#[tokio::test]
async fn rewrap_covers_more_than_one_batch() {
    let db = testing::postgres_db().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedSecretStore::open(&configured(&[10u8; 32]), db.clone(), dir.path())
        .await
        .unwrap();
    let mut refs = Vec::new();
    for index in 0..250 {
        let value = SecretBytes::new(format!("value-{index}").into_bytes());
        refs.push((store.put("acme/batch", &value).await.unwrap(), value));
    }
    store.rotate_key().await.unwrap();
    assert_eq!(
        store.rewrap().await.unwrap(),
        RewrapReport {
            rewrapped: 250,
            already_current: 0
        }
    );
    let rows = db
        .query(
            "SELECT COUNT(*) FROM secret_store_material WHERE data_key_version = 2",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<i64>(0).unwrap(), 250);
    for (secret, value) in refs {
        assert_eq!(store.get(&secret).await.unwrap(), value);
    }
}

#[test]
fn configuration_is_parsed_strictly_and_shown_redacted() {
    let key = BASE64.encode([11u8; 32]);
    let config: SecretsConfig =
        serde_json::from_value(json!({ "backend": "embedded", "master_key": key })).unwrap();
    let shown = format!("{config:?}");
    assert!(!shown.contains(&key), "{shown}");
    assert!(matches!(config, SecretsConfig::Embedded(_)));
    assert!(
        serde_json::from_value::<EmbeddedConfig>(json!({ "master_kee": key })).is_err(),
        "unknown fields are refused"
    );
    assert!(matches!(
        SecretsConfig::default(),
        SecretsConfig::Embedded(_)
    ));
}
