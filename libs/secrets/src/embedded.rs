//! The embedded secret store, for the all-in-one mode.
//!
//! Key hierarchy:
//! - a **master key** (32 bytes) from the configuration or from a key file readable only by its
//!   owner; it never touches the database, only its fingerprint does;
//! - versioned **data keys** (32 random bytes each), stored wrapped by the master key with
//!   XChaCha20-Poly1305 in `secret_store_data_keys`;
//! - **secrets**, each encrypted with XChaCha20-Poly1305 under the newest data key, with a random
//!   nonce and the reference as associated data, so a ciphertext copied to another row does not
//!   decrypt.
//!
//! Rotating the data key creates a new version; [`SecretStore::rewrap`] re-encrypts older rows.
//! Rotating the master key ([`EmbeddedSecretStore::rotate_master_key`]) re-wraps only the data
//! keys.

mod key_file;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use rand::rngs::OsRng;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use switchyard_store::{Db, Migration, Row, Tx, now_micros};
use zeroize::Zeroizing;

use crate::{
    ExposeSecret, KeyRotation, RewrapReport, SecretBytes, SecretError, SecretRef, SecretStore,
    SecretString, validate_path,
};

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "secret store tables",
    postgres: include_str!("../migrations/postgres/0001_secret_store.sql"),
    sqlite: include_str!("../migrations/sqlite/0001_secret_store.sql"),
}];

/// The advisory lock that serialises changes to the data key table across replicas.
const DATA_KEY_LOCK: &str = "switchyard-secrets:data-keys";

/// Rows re-encrypted per transaction by a rewrap, so that no transaction holds many row locks.
const REWRAP_BATCH: i64 = 100;

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;

/// Configuration of the embedded store (`[secrets]` with `backend = "embedded"`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// The master key, base64 of 32 bytes; usually `SWITCHYARD_SECRETS__MASTER_KEY`. When absent
    /// the key is read from (or generated into) `master_key_file`.
    pub master_key: Option<SecretString>,
    /// Where the master key is kept when not configured; `<data_dir>/master.key` by default.
    pub master_key_file: Option<PathBuf>,
}

/// What a master-key rotation did.
#[derive(Debug)]
pub struct MasterKeyRotation {
    /// Fingerprint of the key the data keys were wrapped with before.
    pub previous_fingerprint: String,
    /// Fingerprint of the new master key.
    pub fingerprint: String,
    /// Data keys re-wrapped under the new master key.
    pub data_keys_rewrapped: u64,
    /// The new master key (base64) when the old one came from the configuration: the operator must
    /// put it there (`SWITCHYARD_SECRETS__MASTER_KEY`) before the next start. `None` when the key
    /// lives in the key file, which has been replaced.
    pub new_key: Option<SecretString>,
}

/// Where the master key comes from.
#[derive(Debug, Clone)]
enum KeySource {
    Config,
    File(PathBuf),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Config => f.write_str("the configuration (secrets.master_key)"),
            KeySource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A master key, held only as a cipher (which zeroes its key when dropped) and a fingerprint.
struct MasterKey {
    cipher: XChaCha20Poly1305,
    fingerprint: String,
}

impl MasterKey {
    /// `what` names where the key came from; it is the only thing an error shows.
    fn from_bytes(bytes: &[u8], what: &dyn fmt::Display) -> Result<Self, SecretError> {
        if bytes.len() != KEY_LEN {
            return Err(SecretError::Config(format!(
                "the master key from {what} is {} bytes long; it must be {KEY_LEN} bytes, base64-encoded",
                bytes.len()
            )));
        }
        Ok(MasterKey {
            cipher: XChaCha20Poly1305::new_from_slice(bytes)
                .map_err(|_| SecretError::Config("invalid master key length".to_owned()))?,
            fingerprint: fingerprint(bytes),
        })
    }

    fn from_base64(encoded: &str, what: &dyn fmt::Display) -> Result<Self, SecretError> {
        let bytes = decode_key(encoded, what)?;
        Self::from_bytes(&bytes, what)
    }

    fn wrap(&self, version: u32, data_key: &[u8]) -> Result<(Vec<u8>, Vec<u8>), SecretError> {
        seal(&self.cipher, data_key, data_key_aad(version).as_bytes())
    }

    fn unwrap(&self, row: &DataKeyRow) -> Result<XChaCha20Poly1305, SecretError> {
        let key = open_sealed(
            &self.cipher,
            &row.nonce,
            &row.wrapped_key,
            data_key_aad(row.version).as_bytes(),
        )
        .ok_or_else(|| SecretError::Integrity(format!("data key {}", row.version)))?;
        XChaCha20Poly1305::new_from_slice(&key)
            .map_err(|_| SecretError::Integrity(format!("data key {}", row.version)))
    }
}

/// Decodes a base64 key without ever echoing it: base64 errors name the offending byte.
fn decode_key(encoded: &str, what: &dyn fmt::Display) -> Result<Zeroizing<Vec<u8>>, SecretError> {
    BASE64
        .decode(encoded.trim())
        .map(Zeroizing::new)
        .map_err(|_| SecretError::Config(format!("the master key from {what} is not valid base64")))
}

/// The first 16 hex digits of the key's SHA-256: enough to tell keys apart, useless to recover one.
fn fingerprint(key: &[u8]) -> String {
    let mut digest = hex::encode(Sha256::digest(key));
    digest.truncate(16);
    digest
}

/// Binds a wrapped data key to its version, so rows cannot be swapped between versions.
fn data_key_aad(version: u32) -> String {
    format!("switchyard-secrets/data-key/{version}")
}

fn seal(
    cipher: &XChaCha20Poly1305,
    plaintext: &[u8],
    aad: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), SecretError> {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let ciphertext = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| SecretError::Config("encryption failed".to_owned()))?;
    Ok((nonce.to_vec(), ciphertext))
}

fn open_sealed(
    cipher: &XChaCha20Poly1305,
    nonce: &[u8],
    ciphertext: &[u8],
    aad: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    if nonce.len() != NONCE_LEN {
        return None;
    }
    cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .ok()
        .map(Zeroizing::new)
}

fn random_key() -> Zeroizing<Vec<u8>> {
    let mut key = Zeroizing::new(vec![0u8; KEY_LEN]);
    OsRng.fill_bytes(&mut key);
    key
}

fn mismatch(source: &KeySource, ours: &str, stored: &str) -> SecretError {
    SecretError::Config(format!(
        "the master key from {source} does not match: its fingerprint is {ours}, but the stored \
         data keys are wrapped by the master key with fingerprint {stored}"
    ))
}

fn to_version(value: i64) -> Result<u32, SecretError> {
    u32::try_from(value)
        .map_err(|_| SecretError::Config(format!("data key version {value} is out of range")))
}

struct DataKeyRow {
    version: u32,
    nonce: Vec<u8>,
    wrapped_key: Vec<u8>,
    fingerprint: String,
}

impl DataKeyRow {
    const COLUMNS: &str = "version, nonce, wrapped_key, master_key_fingerprint";

    fn from_row(row: &Row) -> Result<Self, SecretError> {
        Ok(DataKeyRow {
            version: to_version(row.get(0)?)?,
            nonce: row.get(1)?,
            wrapped_key: row.get(2)?,
            fingerprint: row.get(3)?,
        })
    }
}

async fn load_data_key_rows(db: &Db) -> Result<Vec<DataKeyRow>, SecretError> {
    let sql = format!(
        "SELECT {} FROM secret_store_data_keys ORDER BY version",
        DataKeyRow::COLUMNS
    );
    db.query(&sql, &[])
        .await?
        .iter()
        .map(DataKeyRow::from_row)
        .collect()
}

/// The fingerprint every stored data key is wrapped under, if there are any.
fn stored_fingerprint(rows: &[DataKeyRow]) -> Result<Option<String>, SecretError> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    if let Some(other) = rows.iter().find(|row| row.fingerprint != first.fingerprint) {
        // A master-key rotation rewraps every data key in one transaction, so this is damage.
        return Err(SecretError::Config(format!(
            "the stored data keys are wrapped by different master keys ({} and {})",
            first.fingerprint, other.fingerprint
        )));
    }
    Ok(Some(first.fingerprint.clone()))
}

/// Encrypted storage of secrets in the service's own database. See the module documentation.
pub struct EmbeddedSecretStore {
    db: Db,
    source: KeySource,
    master: RwLock<Arc<MasterKey>>,
    /// Unwrapped data keys by version; ciphers zero their keys when dropped.
    data_keys: RwLock<BTreeMap<u32, XChaCha20Poly1305>>,
    /// Serialises key management within this process; replicas serialise on [`DATA_KEY_LOCK`].
    admin: tokio::sync::Mutex<()>,
}

impl fmt::Debug for EmbeddedSecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let versions: Vec<u32> = self.read_data_keys().keys().copied().collect();
        f.debug_struct("EmbeddedSecretStore")
            .field("db", &self.db)
            .field("master_key_source", &self.source.to_string())
            .field("master_key_fingerprint", &self.master().fingerprint)
            .field("cached_data_key_versions", &versions)
            .finish()
    }
}

impl EmbeddedSecretStore {
    /// Opens the store: applies its migrations to `db`, loads the master key (from the
    /// configuration, or from the key file, generating it on first start), finishes a master-key
    /// rotation that was interrupted after its commit, and creates the first data key if there is
    /// none.
    pub async fn open(
        config: &EmbeddedConfig,
        db: Db,
        data_dir: &Path,
    ) -> Result<Self, SecretError> {
        db.migrate("secrets", MIGRATIONS).await?;
        let stored = stored_fingerprint(&load_data_key_rows(&db).await?)?;

        let (source, master) = match &config.master_key {
            Some(key) => {
                let source = KeySource::Config;
                let master = MasterKey::from_base64(key.expose_secret(), &source)?;
                (source, master)
            }
            None => {
                let path = config
                    .master_key_file
                    .clone()
                    .unwrap_or_else(|| data_dir.join("master.key"));
                let master = key_file::load(&path, stored.as_deref())?;
                (KeySource::File(path), master)
            }
        };
        if let Some(stored) = &stored
            && *stored != master.fingerprint
        {
            return Err(mismatch(&source, &master.fingerprint, stored));
        }

        let store = EmbeddedSecretStore {
            db,
            source,
            master: RwLock::new(Arc::new(master)),
            data_keys: RwLock::new(BTreeMap::new()),
            admin: tokio::sync::Mutex::new(()),
        };
        if stored.is_none() {
            store.create_first_data_key().await?;
        }
        store.reload_data_keys().await?;
        Ok(store)
    }

    fn master(&self) -> Arc<MasterKey> {
        self.master
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn read_data_keys(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u32, XChaCha20Poly1305>> {
        self.data_keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn create_first_data_key(&self) -> Result<(), SecretError> {
        let master = self.master();
        let data_key = random_key();
        let (nonce, wrapped) = master.wrap(1, &data_key)?;
        let mut tx = self.db.begin().await?;
        tx.lock(DATA_KEY_LOCK).await?;
        // Another replica may have created it while this one waited for the lock.
        let existing = tx
            .query_opt("SELECT version FROM secret_store_data_keys LIMIT 1", &[])
            .await?;
        if existing.is_some() {
            tx.rollback().await?;
            return Ok(());
        }
        let now = now_micros();
        tx.execute(
            "INSERT INTO secret_store_data_keys
                 (version, nonce, wrapped_key, master_key_fingerprint, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                1i64.into(),
                nonce.into(),
                wrapped.into(),
                master.fingerprint.clone().into(),
                now.into(),
                now.into(),
            ],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(master_key_fingerprint = %master.fingerprint, "created the first secret data key");
        Ok(())
    }

    /// Unwraps the data keys this process has not cached yet, such as one another replica created.
    async fn reload_data_keys(&self) -> Result<(), SecretError> {
        let rows = load_data_key_rows(&self.db).await?;
        let master = self.master();
        let missing: Vec<&DataKeyRow> = {
            let cached = self.read_data_keys();
            rows.iter()
                .filter(|row| !cached.contains_key(&row.version))
                .collect()
        };
        let mut unwrapped = Vec::with_capacity(missing.len());
        for row in missing {
            if row.fingerprint != master.fingerprint {
                return Err(mismatch(
                    &self.source,
                    &master.fingerprint,
                    &row.fingerprint,
                ));
            }
            unwrapped.push((row.version, master.unwrap(row)?));
        }
        let mut cache = self
            .data_keys
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for (version, cipher) in unwrapped {
            cache.entry(version).or_insert(cipher);
        }
        Ok(())
    }

    /// Makes sure `version` is cached, reloading once if it is not.
    async fn ensure_data_key(&self, version: u32) -> Result<(), SecretError> {
        if self.read_data_keys().contains_key(&version) {
            return Ok(());
        }
        self.reload_data_keys().await?;
        if self.read_data_keys().contains_key(&version) {
            Ok(())
        } else {
            Err(SecretError::Integrity(format!("data key {version}")))
        }
    }

    /// The newest data key version in the table (not just in the cache: another replica may
    /// have rotated), now cached.
    async fn newest_version(&self) -> Result<u32, SecretError> {
        let row = self
            .db
            .query_opt("SELECT MAX(version) FROM secret_store_data_keys", &[])
            .await?;
        let newest: Option<i64> = match row {
            Some(row) => row.get(0)?,
            None => None,
        };
        let newest =
            to_version(newest.ok_or_else(|| {
                SecretError::Config("the secret store has no data key".to_owned())
            })?)?;
        self.ensure_data_key(newest).await?;
        Ok(newest)
    }

    fn encrypt(
        &self,
        version: u32,
        secret: &str,
        plaintext: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), SecretError> {
        let cache = self.read_data_keys();
        let cipher = cache
            .get(&version)
            .ok_or_else(|| SecretError::Integrity(format!("data key {version}")))?;
        seal(cipher, plaintext, secret.as_bytes())
    }

    fn decrypt(
        &self,
        version: u32,
        secret: &str,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        let cache = self.read_data_keys();
        let cipher = cache
            .get(&version)
            .ok_or_else(|| SecretError::Integrity(secret.to_owned()))?;
        open_sealed(cipher, nonce, ciphertext, secret.as_bytes())
            .ok_or_else(|| SecretError::Integrity(secret.to_owned()))
    }

    /// Wraps every data key under a new master key (`new_key`, base64 of 32 bytes, or a generated
    /// one), in one transaction.
    ///
    /// With a key file this is crash-safe: the new key is written to `master.key.next` and synced
    /// before the commit, and renamed over `master.key` after it; [`open`](Self::open) finishes a
    /// rename that a crash interrupted, and discards a `master.key.next` whose rotation never
    /// committed.
    ///
    /// When the master key came from the configuration, the new key is returned in
    /// [`MasterKeyRotation::new_key`] and the operator must replace `SWITCHYARD_SECRETS__MASTER_KEY`
    /// with it before the next start: the old key no longer opens the store. Other replicas
    /// sharing the database must be restarted with the new key too.
    pub async fn rotate_master_key(
        &self,
        new_key: Option<SecretString>,
    ) -> Result<MasterKeyRotation, SecretError> {
        let _admin = self.admin.lock().await;
        let new_bytes = match &new_key {
            Some(key) => decode_key(key.expose_secret(), &"the new master key")?,
            None => random_key(),
        };
        let new_master = MasterKey::from_bytes(&new_bytes, &"the new master key")?;
        let old_master = self.master();
        if new_master.fingerprint == old_master.fingerprint {
            return Err(SecretError::Config(
                "the new master key is the current one".to_owned(),
            ));
        }

        let next_file = match &self.source {
            KeySource::File(path) => Some(key_file::write_next(path, &new_bytes)?),
            KeySource::Config => None,
        };
        let (tx, rewrapped) = match self.rewrap_data_keys(&old_master, &new_master).await {
            Ok(prepared) => prepared,
            Err(err) => {
                if let Some(next) = &next_file {
                    key_file::discard(next);
                }
                return Err(err);
            }
        };
        if let Err(err) = tx.commit().await {
            // The server may have committed before the connection failed: the stored fingerprint
            // tells. While that is unknown, master.key.next stays for `open` to settle.
            let stored = self
                .db
                .query_opt(
                    "SELECT master_key_fingerprint FROM secret_store_data_keys LIMIT 1",
                    &[],
                )
                .await
                .and_then(|row| row.map(|row| row.get::<String>(0)).transpose());
            match stored {
                Ok(Some(stored)) if stored == new_master.fingerprint => {}
                Ok(_) => {
                    if let Some(next) = &next_file {
                        key_file::discard(next);
                    }
                    return Err(err.into());
                }
                Err(_) => {
                    return Err(SecretError::Config(format!(
                        "the master key rotation may not have committed ({err}); restart to \
                         settle it"
                    )));
                }
            }
        }

        let fingerprint = new_master.fingerprint.clone();
        *self.master.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(new_master);
        tracing::info!(
            previous_fingerprint = %old_master.fingerprint,
            fingerprint = %fingerprint,
            data_keys = rewrapped,
            "rotated the secret store master key"
        );
        if let (KeySource::File(path), Some(next)) = (&self.source, &next_file) {
            key_file::promote(next, path)?;
        }
        Ok(MasterKeyRotation {
            previous_fingerprint: old_master.fingerprint.clone(),
            fingerprint,
            data_keys_rewrapped: rewrapped,
            new_key: match self.source {
                KeySource::Config => Some(SecretString::from(BASE64.encode(&*new_bytes))),
                KeySource::File(_) => None,
            },
        })
    }

    /// Rewraps every data key under `new_master` in a transaction that the caller commits.
    async fn rewrap_data_keys(
        &self,
        old_master: &MasterKey,
        new_master: &MasterKey,
    ) -> Result<(Tx, u64), SecretError> {
        let mut tx = self.db.begin().await?;
        tx.lock(DATA_KEY_LOCK).await?;
        let sql = format!(
            "SELECT {} FROM secret_store_data_keys ORDER BY version{}",
            DataKeyRow::COLUMNS,
            tx.for_update()
        );
        let rows = tx
            .query(&sql, &[])
            .await?
            .iter()
            .map(DataKeyRow::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let mut updates = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.fingerprint != old_master.fingerprint {
                return Err(mismatch(
                    &self.source,
                    &old_master.fingerprint,
                    &row.fingerprint,
                ));
            }
            let data_key = open_sealed(
                &old_master.cipher,
                &row.nonce,
                &row.wrapped_key,
                data_key_aad(row.version).as_bytes(),
            )
            .ok_or_else(|| SecretError::Integrity(format!("data key {}", row.version)))?;
            let (nonce, wrapped) = new_master.wrap(row.version, &data_key)?;
            updates.push((row.version, nonce, wrapped));
        }
        let now = now_micros();
        for (version, nonce, wrapped) in updates {
            tx.execute(
                "UPDATE secret_store_data_keys
                 SET nonce = $1, wrapped_key = $2, master_key_fingerprint = $3, updated_at = $4
                 WHERE version = $5",
                &[
                    nonce.into(),
                    wrapped.into(),
                    new_master.fingerprint.clone().into(),
                    now.into(),
                    version.into(),
                ],
            )
            .await?;
        }
        Ok((tx, rows.len() as u64))
    }
}

#[async_trait]
impl SecretStore for EmbeddedSecretStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn put(&self, scope: &str, material: &SecretBytes) -> Result<SecretRef, SecretError> {
        validate_path(scope)?;
        let secret = SecretRef::parse(format!("{scope}/{}", uuid::Uuid::now_v7().simple()))?;
        let version = self.newest_version().await?;
        let (nonce, ciphertext) = self.encrypt(version, secret.as_str(), material.expose())?;
        let now = now_micros();
        self.db
            .execute(
                "INSERT INTO secret_store_material
                     (secret_ref, data_key_version, nonce, ciphertext, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    secret.as_str().into(),
                    version.into(),
                    nonce.into(),
                    ciphertext.into(),
                    now.into(),
                    now.into(),
                ],
            )
            .await?;
        Ok(secret)
    }

    async fn get(&self, secret: &SecretRef) -> Result<SecretBytes, SecretError> {
        let row = self
            .db
            .query_opt(
                "SELECT data_key_version, nonce, ciphertext FROM secret_store_material
                 WHERE secret_ref = $1",
                &[secret.as_str().into()],
            )
            .await?
            .ok_or_else(|| SecretError::NotFound(secret.to_string()))?;
        let version = to_version(row.get(0)?)?;
        let nonce: Vec<u8> = row.get(1)?;
        let ciphertext: Vec<u8> = row.get(2)?;
        self.ensure_data_key(version).await?;
        let plaintext = self.decrypt(version, secret.as_str(), &nonce, &ciphertext)?;
        Ok(SecretBytes::new(plaintext.to_vec()))
    }

    async fn destroy(&self, secret: &SecretRef) -> Result<(), SecretError> {
        self.db
            .execute(
                "DELETE FROM secret_store_material WHERE secret_ref = $1",
                &[secret.as_str().into()],
            )
            .await?;
        Ok(())
    }

    async fn rotate_key(&self) -> Result<KeyRotation, SecretError> {
        let _admin = self.admin.lock().await;
        let master = self.master();
        let data_key = random_key();
        let mut tx = self.db.begin().await?;
        tx.lock(DATA_KEY_LOCK).await?;
        let row = tx
            .query_one(
                "SELECT MAX(version), MIN(master_key_fingerprint), MAX(master_key_fingerprint)
                 FROM secret_store_data_keys",
                &[],
            )
            .await?;
        let newest: Option<i64> = row.get(0)?;
        let fingerprints: (Option<String>, Option<String>) = (row.get(1)?, row.get(2)?);
        // A replica that rotated the master key meanwhile has rewrapped every data key; a new one
        // wrapped under the old master key would not open with the new one.
        for stored in [fingerprints.0, fingerprints.1].into_iter().flatten() {
            if stored != master.fingerprint {
                return Err(mismatch(&self.source, &master.fingerprint, &stored));
            }
        }
        let version = to_version(newest.unwrap_or(0) + 1)?;
        let (nonce, wrapped) = master.wrap(version, &data_key)?;
        let now = now_micros();
        tx.execute(
            "INSERT INTO secret_store_data_keys
                 (version, nonce, wrapped_key, master_key_fingerprint, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                version.into(),
                nonce.into(),
                wrapped.into(),
                master.fingerprint.clone().into(),
                now.into(),
                now.into(),
            ],
        )
        .await?;
        tx.commit().await?;
        let cipher = XChaCha20Poly1305::new_from_slice(&data_key)
            .map_err(|_| SecretError::Config("invalid data key length".to_owned()))?;
        self.data_keys
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(version, cipher);
        tracing::info!(version, "rotated the secret data key");
        Ok(KeyRotation {
            new_version: version,
        })
    }

    async fn rewrap(&self) -> Result<RewrapReport, SecretError> {
        self.reload_data_keys().await?;
        let newest = self.newest_version().await?;
        let current = self
            .db
            .query_opt(
                "SELECT COUNT(*) FROM secret_store_material WHERE data_key_version >= $1",
                &[newest.into()],
            )
            .await?;
        let already_current = match current {
            Some(row) => row.get::<i64>(0)?,
            None => 0,
        };
        let mut report = RewrapReport {
            rewrapped: 0,
            already_current: u64::try_from(already_current).unwrap_or_default(),
        };

        // Keyset pagination by reference: every row is visited once even if another replica holds
        // some of them locked (and rewraps those itself).
        let mut after = String::new();
        loop {
            let mut tx = self.db.begin().await?;
            let sql = format!(
                "SELECT secret_ref, data_key_version, nonce, ciphertext FROM secret_store_material
                 WHERE data_key_version < $1 AND secret_ref > $2
                 ORDER BY secret_ref LIMIT $3{}",
                tx.skip_locked()
            );
            let rows = tx
                .query(
                    &sql,
                    &[newest.into(), after.as_str().into(), REWRAP_BATCH.into()],
                )
                .await?;
            let Some(last) = rows.last() else {
                tx.rollback().await?;
                break;
            };
            after = last.get(0)?;
            let now = now_micros();
            for row in &rows {
                let secret: String = row.get(0)?;
                let version = to_version(row.get(1)?)?;
                let nonce: Vec<u8> = row.get(2)?;
                let ciphertext: Vec<u8> = row.get(3)?;
                let plaintext = self.decrypt(version, &secret, &nonce, &ciphertext)?;
                let (nonce, ciphertext) = self.encrypt(newest, &secret, &plaintext)?;
                report.rewrapped += tx
                    .execute(
                        "UPDATE secret_store_material
                         SET data_key_version = $1, nonce = $2, ciphertext = $3, updated_at = $4
                         WHERE secret_ref = $5 AND data_key_version = $6",
                        &[
                            newest.into(),
                            nonce.into(),
                            ciphertext.into(),
                            now.into(),
                            secret.as_str().into(),
                            version.into(),
                        ],
                    )
                    .await?;
            }
            tx.commit().await?;
        }
        tracing::info!(
            version = newest,
            rewrapped = report.rewrapped,
            already_current = report.already_current,
            "rewrapped secrets"
        );
        Ok(report)
    }

    async fn check(&self) -> Result<(), SecretError> {
        self.db.ping().await?;
        let sql = format!(
            "SELECT {} FROM secret_store_data_keys ORDER BY version DESC LIMIT 1",
            DataKeyRow::COLUMNS
        );
        let row =
            self.db.query_opt(&sql, &[]).await?.ok_or_else(|| {
                SecretError::Config("the secret store has no data key".to_owned())
            })?;
        let row = DataKeyRow::from_row(&row)?;
        let master = self.master();
        if row.fingerprint != master.fingerprint {
            return Err(mismatch(
                &self.source,
                &master.fingerprint,
                &row.fingerprint,
            ));
        }
        master.unwrap(&row).map(|_| ())
    }
}
