//! Logging in to Vault and keeping the token alive.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use vaultrs::api::AuthInfo;
use vaultrs::client::Client as _;
use zeroize::Zeroizing;

use super::{Inner, VaultAuth, error};
use crate::{ExposeSecret, SecretError};

/// Longest wait between two attempts when renewal and login both fail.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
/// Shortest wait between two attempts, so a failing Vault is not hammered.
const MIN_RETRY_DELAY: Duration = Duration::from_secs(1);

/// The lease of the current token.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lease {
    /// Zero for a token that never expires (such as a root token).
    ttl: Duration,
    renewable: bool,
    obtained: Instant,
}

impl Lease {
    fn new(ttl_secs: u64, renewable: bool) -> Self {
        Lease {
            ttl: Duration::from_secs(ttl_secs),
            renewable,
            obtained: Instant::now(),
        }
    }

    pub(super) fn expires(&self) -> bool {
        !self.ttl.is_zero()
    }

    fn expires_at(&self) -> Instant {
        self.obtained + self.ttl
    }

    /// Two thirds into the lease: late enough not to renew needlessly, early enough to retry.
    fn refresh_at(&self) -> Instant {
        self.obtained + self.ttl * 2 / 3
    }
}

impl Inner {
    fn can_log_in(&self) -> bool {
        !matches!(self.config.auth, VaultAuth::Token { .. })
    }
}

/// Logs in with the configured method and installs the new token; for a configured token, looks
/// it up to learn its lease.
pub(super) async fn log_in(inner: &Inner) -> Result<Lease, SecretError> {
    let auth = match &inner.config.auth {
        VaultAuth::Token { .. } => {
            let token = vaultrs::token::lookup_self(&*inner.client().await)
                .await
                .map_err(|err| error::map(err, "looking up the Vault token"))?;
            return Ok(Lease::new(token.ttl, token.renewable.unwrap_or(false)));
        }
        VaultAuth::AppRole {
            role_id,
            secret_id,
            mount,
        } => vaultrs::auth::approle::login(
            &inner.login_client,
            mount,
            role_id,
            secret_id.expose_secret(),
        )
        .await
        .map_err(|err| error::map_login(err, "logging in to Vault with AppRole"))?,
        VaultAuth::Kubernetes {
            role,
            jwt_path,
            mount,
        } => {
            let jwt = Zeroizing::new(tokio::fs::read_to_string(jwt_path).await.map_err(|err| {
                SecretError::Config(format!(
                    "reading the Kubernetes service account token {}: {err}",
                    jwt_path.display()
                ))
            })?);
            vaultrs::auth::kubernetes::login(&inner.login_client, mount, role, jwt.trim())
                .await
                .map_err(|err| error::map_login(err, "logging in to Vault with Kubernetes"))?
        }
    };
    Ok(install(inner, auth).await)
}

async fn install(inner: &Inner, auth: AuthInfo) -> Lease {
    let token = Zeroizing::new(auth.client_token);
    inner.client.write().await.set_token(&token);
    tracing::info!(
        method = inner.config.auth.method(),
        ttl_secs = auth.lease_duration,
        renewable = auth.renewable,
        "logged in to Vault"
    );
    Lease::new(auth.lease_duration, auth.renewable)
}

async fn renew(inner: &Inner) -> Result<Lease, SecretError> {
    let auth = inner
        .client()
        .await
        .renew(None)
        .await
        .map_err(|err| error::map(err, "renewing the Vault token"))?;
    tracing::debug!(ttl_secs = auth.lease_duration, "renewed the Vault token");
    Ok(Lease::new(auth.lease_duration, auth.renewable))
}

/// Renews the token, or logs in again when it cannot be renewed. Returns the new lease.
async fn refresh(inner: &Inner, lease: &Lease) -> Result<Lease, SecretError> {
    if lease.renewable {
        match renew(inner).await {
            Ok(mut renewed) => {
                // A shorter lease than before means the token nears its maximum TTL: a fresh
                // login next time avoids renewing right up to the expiry.
                if renewed.ttl < lease.ttl && inner.can_log_in() {
                    renewed.renewable = false;
                }
                return Ok(renewed);
            }
            Err(err) if inner.can_log_in() => {
                tracing::warn!(error = %err, "could not renew the Vault token; logging in again");
            }
            Err(err) => return Err(err),
        }
    } else if !inner.can_log_in() {
        return Err(SecretError::Config(
            "the configured Vault token is not renewable; replace it before it expires".to_owned(),
        ));
    }
    log_in(inner).await
}

/// Keeps the token valid for as long as the store lives (the store aborts this task on drop).
pub(super) async fn keep_token_alive(inner: Arc<Inner>, mut lease: Lease) {
    let mut next_attempt = lease.refresh_at();
    while lease.expires() {
        tokio::time::sleep_until(next_attempt).await;
        match refresh(&inner, &lease).await {
            Ok(next) => {
                lease = next;
                next_attempt = lease.refresh_at();
            }
            Err(err) => {
                let remaining = lease.expires_at().saturating_duration_since(Instant::now());
                if remaining.is_zero() && !inner.can_log_in() {
                    tracing::error!(
                        error = %err,
                        "the Vault token has expired; the secret store needs a new token"
                    );
                    return;
                }
                let delay = (remaining / 2).clamp(MIN_RETRY_DELAY, MAX_RETRY_DELAY);
                tracing::warn!(
                    error = %err,
                    expires_in_secs = remaining.as_secs(),
                    retry_in_secs = delay.as_secs(),
                    "could not renew the Vault token"
                );
                next_attempt = Instant::now() + delay;
            }
        }
    }
}
