//! The HashiCorp Vault backend.
//!
//! Storage design: each secret is its own KV v2 path, `{kv_mount}/data/{kv_prefix}/{ref}` with
//! `ref = {scope}/{uuid}`, holding `{"ciphertext": "vault:vN:..."}` produced by Transit encrypt
//! under `transit_key`. Switchyard never holds a key: Transit encrypts and decrypts, and KV only
//! ever sees ciphertext, so a KV snapshot, backup or over-broad KV policy reveals nothing.
//!
//! - `put` writes the first KV version with `cas: 0`, so a secret is never overwritten.
//! - `get` reads the latest KV version and has Transit decrypt it.
//! - `destroy` deletes the KV metadata, which removes every version.
//! - `rotate_key` rotates the Transit key; old ciphertext stays decryptable.
//! - `rewrap` lists every reference under the prefix and, for each whose ciphertext is under an
//!   older key version, has Transit rewrap it (the plaintext never leaves Vault) and writes it back
//!   as a new KV version with `cas` set to the version read. A path's KV history therefore records
//!   its rewraps, and a concurrent writer is detected rather than overwritten.
//!
//! The token comes from the configuration or from an AppRole or Kubernetes login, and a
//! background task renews it (or logs in again) for as long as the store lives.

mod auth;
mod error;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use tokio::sync::{RwLock, RwLockReadGuard};
use tokio::task::JoinHandle;
use vaultrs::api::kv2::requests::{ReadSecretRequest, SetSecretRequestOptions};
use vaultrs::api::transit::KeyType;
use vaultrs::api::transit::requests::CreateKeyRequest;
use vaultrs::api::transit::responses::ReadKeyData;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use zeroize::Zeroizing;

use crate::{
    ExposeSecret, KeyRotation, RewrapReport, SecretBytes, SecretError, SecretRef, SecretStore,
    SecretString, validate_path,
};

/// Configuration of the Vault backend (`[secrets]` with `backend = "vault"`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// The Vault address, such as `https://vault.example.com:8200`.
    pub address: String,
    /// The Vault Enterprise namespace, sent as `X-Vault-Namespace` on every request.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Mount path of the KV version 2 engine holding the ciphertexts.
    #[serde(default = "default_kv_mount")]
    pub kv_mount: String,
    /// Path under `kv_mount` below which every secret is kept.
    #[serde(default = "default_kv_prefix")]
    pub kv_prefix: String,
    /// Mount path of the Transit engine.
    #[serde(default = "default_transit_mount")]
    pub transit_mount: String,
    /// Name of the Transit key; created (aes256-gcm96) if missing.
    #[serde(default = "default_transit_key")]
    pub transit_key: String,
    /// Timeout of each request to Vault.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A PEM bundle of CA certificates to trust for an `https` address, in addition to the
    /// system's.
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// How Switchyard authenticates to Vault.
    pub auth: VaultAuth,
}

fn default_kv_mount() -> String {
    "secret".to_owned()
}

fn default_kv_prefix() -> String {
    "switchyard".to_owned()
}

fn default_transit_mount() -> String {
    "transit".to_owned()
}

fn default_transit_key() -> String {
    "switchyard".to_owned()
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_approle_mount() -> String {
    "approle".to_owned()
}

fn default_kubernetes_mount() -> String {
    "kubernetes".to_owned()
}

fn default_jwt_path() -> PathBuf {
    PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
}

/// How Switchyard logs in to Vault (`[secrets.auth]`, tagged by `method`).
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum VaultAuth {
    /// A token given in the configuration. It is renewed if renewable; when it expires the store
    /// stops working.
    Token {
        /// The Vault token.
        token: SecretString,
    },
    /// The AppRole auth method.
    #[serde(rename = "approle")]
    AppRole {
        /// The role ID.
        role_id: String,
        /// The secret ID.
        secret_id: SecretString,
        /// Mount path of the AppRole auth method.
        #[serde(default = "default_approle_mount")]
        mount: String,
    },
    /// The Kubernetes auth method, with the pod's service account token.
    Kubernetes {
        /// The Vault role to log in as.
        role: String,
        /// The service account token; read at every login, since Kubernetes rotates it.
        #[serde(default = "default_jwt_path")]
        jwt_path: PathBuf,
        /// Mount path of the Kubernetes auth method.
        #[serde(default = "default_kubernetes_mount")]
        mount: String,
    },
}

impl VaultAuth {
    fn method(&self) -> &'static str {
        match self {
            VaultAuth::Token { .. } => "token",
            VaultAuth::AppRole { .. } => "approle",
            VaultAuth::Kubernetes { .. } => "kubernetes",
        }
    }
}

/// What is kept in each KV path.
#[derive(Serialize, Deserialize)]
struct StoredSecret {
    ciphertext: String,
}

/// Attempts at rewrapping one secret before giving up on concurrent writers.
const REWRAP_ATTEMPTS: usize = 3;

/// Secret storage in Vault's KV v2 and Transit engines. See the module documentation.
pub struct VaultSecretStore {
    inner: Arc<Inner>,
    renewal: Option<JoinHandle<()>>,
}

struct Inner {
    config: VaultConfig,
    /// The client with the current token; the renewal task swaps the token under the write lock.
    client: RwLock<VaultClient>,
    /// A client without a token for logins, so that a stale token is never sent with one.
    login_client: VaultClient,
}

impl fmt::Debug for VaultSecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = &self.inner.config;
        f.debug_struct("VaultSecretStore")
            .field("address", &config.address)
            .field("namespace", &config.namespace)
            .field("kv_mount", &config.kv_mount)
            .field("kv_prefix", &config.kv_prefix)
            .field("transit_mount", &config.transit_mount)
            .field("transit_key", &config.transit_key)
            .field("auth", &config.auth.method())
            .finish()
    }
}

impl Drop for VaultSecretStore {
    fn drop(&mut self) {
        if let Some(renewal) = &self.renewal {
            renewal.abort();
        }
    }
}

impl VaultSecretStore {
    /// Connects: logs in, makes sure the Transit key exists (creating it as aes256-gcm96 if not),
    /// and starts renewing the token in the background until the store is dropped.
    pub async fn connect(config: &VaultConfig) -> Result<Self, SecretError> {
        validate_config(config)?;
        let token = match &config.auth {
            VaultAuth::Token { token } => token.expose_secret(),
            VaultAuth::AppRole { .. } | VaultAuth::Kubernetes { .. } => "",
        };
        let inner = Arc::new(Inner {
            client: RwLock::new(build_client(config, token)?),
            login_client: build_client(config, "")?,
            config: config.clone(),
        });
        let lease = auth::log_in(&inner).await?;
        inner.ensure_transit_key().await?;
        let renewal = lease
            .expires()
            .then(|| tokio::spawn(auth::keep_token_alive(inner.clone(), lease)));
        Ok(VaultSecretStore { inner, renewal })
    }
}

fn validate_config(config: &VaultConfig) -> Result<(), SecretError> {
    let fields = [
        ("secrets.kv_mount", &config.kv_mount),
        ("secrets.transit_mount", &config.transit_mount),
        ("secrets.transit_key", &config.transit_key),
    ];
    for (name, value) in fields {
        validate_path(value).map_err(|_| {
            SecretError::Config(format!("{name} {value:?} is not a valid Vault path"))
        })?;
    }
    if config.transit_key.contains('/') {
        return Err(SecretError::Config(format!(
            "secrets.transit_key {:?} must not contain '/'",
            config.transit_key
        )));
    }
    if !config.kv_prefix.is_empty() {
        validate_path(&config.kv_prefix).map_err(|_| {
            SecretError::Config(format!(
                "secrets.kv_prefix {:?} is not a valid Vault path",
                config.kv_prefix
            ))
        })?;
    }
    Ok(())
}

fn build_client(config: &VaultConfig, token: &str) -> Result<VaultClient, SecretError> {
    // vaultrs' address setter panics on an invalid URL, so the address is checked here first.
    let address = url::Url::parse(&config.address).map_err(|err| {
        SecretError::Config(format!(
            "secrets.address {:?} is not a valid URL: {err}",
            config.address
        ))
    })?;
    if !matches!(address.scheme(), "http" | "https") {
        return Err(SecretError::Config(format!(
            "secrets.address {:?} must be an http or https URL",
            config.address
        )));
    }
    // Switchyard builds rustls without a default crypto provider (no aws-lc-sys); ring is
    // installed once per process, and a second install is a harmless no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Every setting is given explicitly: vaultrs would otherwise fill them in from VAULT_*
    // environment variables (token, CA certificates, client certificate, TLS verification).
    let settings = VaultClientSettingsBuilder::default()
        .address(address.as_str())
        .token(token)
        .timeout(Some(config.request_timeout))
        .verify(true)
        .identity(None)
        .ca_certs(
            config
                .ca_cert
                .iter()
                .map(|path| path.display().to_string())
                .collect(),
        )
        .namespace(config.namespace.clone())
        .build()
        .map_err(|err| SecretError::Config(format!("Vault client settings: {err}")))?;
    VaultClient::new(settings)
        .map_err(|err| SecretError::Config(format!("building the Vault client: {err}")))
}

/// The Transit key version a ciphertext (`vault:v{n}:...`) was made with.
fn ciphertext_version(ciphertext: &str) -> Option<u64> {
    ciphertext
        .strip_prefix("vault:v")?
        .split_once(':')?
        .0
        .parse()
        .ok()
}

impl Inner {
    /// The client for one request. The guard is taken per request, never across several, so the
    /// renewal task can swap the token between any two.
    async fn client(&self) -> RwLockReadGuard<'_, VaultClient> {
        self.client.read().await
    }

    fn kv_path(&self, relative: &str) -> String {
        if self.config.kv_prefix.is_empty() {
            relative.to_owned()
        } else {
            format!("{}/{relative}", self.config.kv_prefix)
        }
    }

    fn policy_hint(&self) -> String {
        let VaultConfig {
            kv_mount,
            kv_prefix,
            transit_mount: transit,
            transit_key: key,
            ..
        } = &self.config;
        format!(
            "Switchyard's Vault policy needs \"read\", \"create\" and \"update\" on \
             \"{transit}/keys/{key}\"; \"update\" on \"{transit}/keys/{key}/rotate\", \
             \"{transit}/encrypt/{key}\", \"{transit}/decrypt/{key}\" and \
             \"{transit}/rewrap/{key}\"; \"create\", \"read\" and \"update\" on \
             \"{kv_mount}/data/{kv_prefix}/*\"; \"list\", \"read\" and \"delete\" on \
             \"{kv_mount}/metadata/{kv_prefix}/*\""
        )
    }

    async fn ensure_transit_key(&self) -> Result<(), SecretError> {
        let VaultConfig {
            transit_mount: mount,
            transit_key: key,
            ..
        } = &self.config;
        let refused = |err: SecretError| match err {
            SecretError::Unauthorized(detail) => SecretError::Config(format!(
                "Vault refused access to the Transit key {mount}/keys/{key} ({detail}); {}",
                self.policy_hint()
            )),
            other => other,
        };
        match vaultrs::transit::key::read(&*self.client().await, mount, key).await {
            Ok(info) => {
                if !(info.supports_encryption && info.supports_decryption) {
                    return Err(SecretError::Config(format!(
                        "the Transit key {mount}/keys/{key} does not support encryption"
                    )));
                }
                Ok(())
            }
            Err(err) if error::status(&err) == Some(404) => {
                let mut options = CreateKeyRequest::builder();
                options.key_type(KeyType::Aes256Gcm96);
                vaultrs::transit::key::create(
                    &*self.client().await,
                    mount,
                    key,
                    Some(&mut options),
                )
                .await
                .map_err(|err| refused(error::map(err, "creating the Transit key")))?;
                tracing::info!(mount = %mount, key = %key, "created the Transit key");
                Ok(())
            }
            Err(err) => Err(refused(error::map(err, "reading the Transit key"))),
        }
    }

    async fn latest_key_version(&self) -> Result<u64, SecretError> {
        let VaultConfig {
            transit_mount: mount,
            transit_key: key,
            ..
        } = &self.config;
        let info = vaultrs::transit::key::read(&*self.client().await, mount, key)
            .await
            .map_err(|err| error::map(err, "reading the Transit key"))?;
        let versions = match info.keys {
            ReadKeyData::Symmetric(versions) => versions,
            ReadKeyData::Asymmetric(_) => {
                return Err(SecretError::Config(format!(
                    "the Transit key {mount}/keys/{key} is not a symmetric encryption key"
                )));
            }
        };
        versions
            .keys()
            .filter_map(|version| version.parse::<u64>().ok())
            .max()
            .ok_or_else(|| {
                SecretError::Config(format!(
                    "the Transit key {mount}/keys/{key} has no versions"
                ))
            })
    }

    /// The stored ciphertext of `secret` and the KV version holding it, or `None` if it is absent.
    async fn read_stored(&self, secret: &str) -> Result<Option<(String, u64)>, SecretError> {
        let endpoint = ReadSecretRequest::builder()
            .mount(self.config.kv_mount.as_str())
            .path(self.kv_path(secret))
            .build()
            .map_err(|err| SecretError::Config(format!("building a KV read: {err}")))?;
        // vaultrs::kv2::read returns only the data; the version is needed for check-and-set.
        let response = match vaultrs::api::exec_with_result(&*self.client().await, endpoint).await {
            Ok(response) => response,
            Err(err) if error::status(&err) == Some(404) => return Ok(None),
            Err(err) => return Err(error::map(err, &format!("reading secret {secret}"))),
        };
        let stored: StoredSecret = serde_json::from_value(response.data)
            .map_err(|_| SecretError::Integrity(secret.to_owned()))?;
        Ok(Some((stored.ciphertext, response.metadata.version)))
    }

    /// Rewraps one secret if it is under an older key version than `latest`; returns whether it
    /// did, or `None` if the secret is gone or not one of ours.
    async fn rewrap_one(&self, secret: &str, latest: u64) -> Result<Option<bool>, SecretError> {
        let VaultConfig {
            kv_mount,
            transit_mount,
            transit_key,
            ..
        } = &self.config;
        for _ in 0..REWRAP_ATTEMPTS {
            let (ciphertext, kv_version) = match self.read_stored(secret).await {
                Ok(Some(stored)) => stored,
                Ok(None) => return Ok(None),
                Err(SecretError::Integrity(_)) => {
                    tracing::warn!(
                        secret,
                        "skipping a KV entry that does not hold a Switchyard ciphertext"
                    );
                    return Ok(None);
                }
                Err(err) => return Err(err),
            };
            let Some(version) = ciphertext_version(&ciphertext) else {
                tracing::warn!(
                    secret,
                    "skipping a KV entry whose ciphertext is not in Transit's format"
                );
                return Ok(None);
            };
            if version >= latest {
                return Ok(Some(false));
            }
            let rewrapped = vaultrs::transit::data::rewrap(
                &*self.client().await,
                transit_mount,
                transit_key,
                &ciphertext,
                None,
            )
            .await
            .map_err(|err| error::map_decrypt(err, secret, "rewrapping"))?;
            let cas = u32::try_from(kv_version).map_err(|_| {
                SecretError::Config(format!("secret {secret} has too many KV versions"))
            })?;
            let written = vaultrs::kv2::set_with_options(
                &*self.client().await,
                kv_mount,
                &self.kv_path(secret),
                &StoredSecret {
                    ciphertext: rewrapped.ciphertext,
                },
                SetSecretRequestOptions { cas },
            )
            .await;
            match written {
                Ok(_) => return Ok(Some(true)),
                // Someone wrote or deleted the path since it was read: look again.
                Err(err) if error::is_cas_mismatch(&err) => continue,
                Err(err) => return Err(error::map(err, &format!("writing secret {secret}"))),
            }
        }
        Err(SecretError::Unavailable(format!(
            "secret {secret} kept changing while it was being rewrapped"
        )))
    }

    /// Every secret reference below the prefix, found by listing KV metadata recursively.
    async fn list_refs(&self) -> Result<Vec<String>, SecretError> {
        let mut refs = Vec::new();
        let mut folders = vec![String::new()];
        while let Some(folder) = folders.pop() {
            let path = if self.config.kv_prefix.is_empty() {
                folder.clone()
            } else {
                format!("{}/{folder}", self.config.kv_prefix)
            };
            let keys = match vaultrs::kv2::list(&*self.client().await, &self.config.kv_mount, &path)
                .await
            {
                Ok(keys) => keys,
                Err(err) if error::status(&err) == Some(404) => Vec::new(),
                Err(err) => return Err(error::map(err, &format!("listing {path}"))),
            };
            for key in keys {
                let relative = format!("{folder}{key}");
                if key.ends_with('/') {
                    folders.push(relative);
                } else {
                    refs.push(relative);
                }
            }
        }
        refs.sort();
        Ok(refs)
    }
}

#[async_trait]
impl SecretStore for VaultSecretStore {
    fn backend(&self) -> &'static str {
        "vault"
    }

    async fn put(&self, scope: &str, material: &SecretBytes) -> Result<SecretRef, SecretError> {
        validate_path(scope)?;
        let secret = SecretRef::parse(format!("{scope}/{}", uuid::Uuid::now_v7().simple()))?;
        let inner = &self.inner;
        let config = &inner.config;
        let plaintext = Zeroizing::new(BASE64.encode(material.expose()));
        let encrypted = vaultrs::transit::data::encrypt(
            &*inner.client().await,
            &config.transit_mount,
            &config.transit_key,
            &plaintext,
            None,
        )
        .await
        .map_err(|err| error::map(err, &format!("encrypting secret {secret}")))?;
        vaultrs::kv2::set_with_options(
            &*inner.client().await,
            &config.kv_mount,
            &inner.kv_path(secret.as_str()),
            &StoredSecret {
                ciphertext: encrypted.ciphertext,
            },
            SetSecretRequestOptions { cas: 0 },
        )
        .await
        .map_err(|err| error::map(err, &format!("writing secret {secret}")))?;
        Ok(secret)
    }

    async fn get(&self, secret: &SecretRef) -> Result<SecretBytes, SecretError> {
        let inner = &self.inner;
        let (ciphertext, _) = inner
            .read_stored(secret.as_str())
            .await?
            .ok_or_else(|| SecretError::NotFound(secret.to_string()))?;
        let decrypted = vaultrs::transit::data::decrypt(
            &*inner.client().await,
            &inner.config.transit_mount,
            &inner.config.transit_key,
            &ciphertext,
            None,
        )
        .await
        .map_err(|err| error::map_decrypt(err, secret.as_str(), "decrypting"))?;
        let plaintext = Zeroizing::new(decrypted.plaintext);
        BASE64
            .decode(plaintext.as_bytes())
            .map(SecretBytes::new)
            .map_err(|_| SecretError::Integrity(secret.to_string()))
    }

    async fn destroy(&self, secret: &SecretRef) -> Result<(), SecretError> {
        let inner = &self.inner;
        let deleted = vaultrs::kv2::delete_metadata(
            &*inner.client().await,
            &inner.config.kv_mount,
            &inner.kv_path(secret.as_str()),
        )
        .await;
        match deleted {
            Ok(()) => Ok(()),
            Err(err) if error::status(&err) == Some(404) => Ok(()),
            Err(err) => Err(error::map(err, &format!("destroying secret {secret}"))),
        }
    }

    async fn rotate_key(&self) -> Result<KeyRotation, SecretError> {
        let inner = &self.inner;
        vaultrs::transit::key::rotate(
            &*inner.client().await,
            &inner.config.transit_mount,
            &inner.config.transit_key,
        )
        .await
        .map_err(|err| error::map(err, "rotating the Transit key"))?;
        let latest = inner.latest_key_version().await?;
        let new_version = u32::try_from(latest).map_err(|_| {
            SecretError::Config(format!("Transit key version {latest} is out of range"))
        })?;
        tracing::info!(version = new_version, "rotated the Transit key");
        Ok(KeyRotation { new_version })
    }

    async fn rewrap(&self) -> Result<RewrapReport, SecretError> {
        let inner = &self.inner;
        let latest = inner.latest_key_version().await?;
        let mut report = RewrapReport::default();
        for secret in inner.list_refs().await? {
            match inner.rewrap_one(&secret, latest).await? {
                Some(true) => report.rewrapped += 1,
                Some(false) => report.already_current += 1,
                None => {}
            }
        }
        tracing::info!(
            version = latest,
            rewrapped = report.rewrapped,
            already_current = report.already_current,
            "rewrapped secrets"
        );
        Ok(report)
    }

    async fn check(&self) -> Result<(), SecretError> {
        vaultrs::token::lookup_self(&*self.inner.client().await)
            .await
            .map_err(|err| error::map(err, "looking up the Vault token"))?;
        self.inner.latest_key_version().await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ciphertext_versions_are_parsed() {
        assert_eq!(ciphertext_version("vault:v1:abc"), Some(1));
        assert_eq!(ciphertext_version("vault:v12:abc:def"), Some(12));
        assert_eq!(ciphertext_version("vault:x1:abc"), None);
        assert_eq!(ciphertext_version("plain"), None);
    }
}
