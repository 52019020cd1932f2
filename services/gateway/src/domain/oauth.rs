//! OAuth2 connections: the tenant's clients, authorizations with a signed single-use state and
//! PKCE, the callback that turns a code into a connection (its token set stored as a credential),
//! and access to a connection's token, refreshed when it is about to expire.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use switchyard_kit::FieldViolation;
use switchyard_oauth::{ClientCredentials, OAuthError, Profile, Provider, TokenSet, pkce, state};
use switchyard_store::page;
use tokio::sync::Mutex;
use url::Url;

use super::{Gateway, GatewayError, Micros, Page, micros, page_error};
use crate::store::oauth as db;

/// How long an authorization may take.
pub const STATE_TTL: Duration = Duration::from_secs(600);
/// A token that expires sooner than this is refreshed before it is handed out.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// How long a replica may hold a connection's refresh (longer than the token call's timeout).
const REFRESH_LEASE: Duration = Duration::from_secs(30);
/// How many times a caller looks, 200 ms apart, for another replica's refresh to finish.
const REFRESH_WAIT_ROUNDS: usize = 100;
/// How long the background refresher leaves a connection it could not refresh before trying again.
const REFRESH_RETRY: Duration = Duration::from_secs(300);

/// A tenant's client registered with a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthClient {
    /// The owner.
    pub tenant: String,
    /// The provider.
    pub provider: Provider,
    /// The client id.
    pub client_id: String,
    /// `credentials/{id}` with the client secret.
    pub secret_credential: String,
    /// A self-managed GitLab's URL.
    pub base_url: Option<String>,
}

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Usable.
    Active,
    /// The user must authorize again.
    NeedsReauth,
}

/// A tenant's authorized access to an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// Generated.
    pub id: String,
    /// The owner.
    pub tenant: String,
    /// The provider.
    pub provider: Provider,
    /// The provider's account id.
    pub account_id: String,
    /// For people.
    pub account_name: String,
    /// Asked for.
    pub requested_scopes: Vec<String>,
    /// Granted.
    pub granted_scopes: Vec<String>,
    /// Usable or not.
    pub state: ConnectionState,
    /// `credentials/{id}` with the token set.
    pub token_credential: String,
    /// When the access token expires.
    pub expire_time: Option<Micros>,
    /// When it was made.
    pub create_time: Micros,
    /// When it last changed.
    pub update_time: Micros,
}

/// Where connections' token sets are kept: the credentials service.
#[async_trait]
pub trait TokenVault: Send + Sync + std::fmt::Debug {
    /// Stores `material` as `credentials/{id}` of `tenant` (a new version if it exists).
    async fn store(&self, tenant: &str, id: &str, material: Vec<u8>) -> Result<String, String>;
    /// The current material of `credential`.
    async fn read(&self, tenant: &str, credential: &str) -> Result<SecretString, String>;
    /// Deletes `credential`.
    async fn delete(&self, tenant: &str, credential: &str) -> Result<(), String>;
}

#[async_trait]
impl TokenVault for switchyard_credentials_client::CredentialsClient {
    async fn store(&self, tenant: &str, id: &str, material: Vec<u8>) -> Result<String, String> {
        switchyard_credentials_client::CredentialsClient::store(
            self,
            tenant,
            id,
            switchyard_proto::credentials::v1::CredentialKind::OauthTokenSet,
            "oauth",
            material,
        )
        .await
        .map_err(|err| err.to_string())
    }

    async fn read(&self, tenant: &str, credential: &str) -> Result<SecretString, String> {
        let material =
            switchyard_credentials_client::CredentialsClient::read(self, tenant, credential)
                .await
                .map_err(|err| err.to_string())?;
        String::from_utf8(material)
            .map(SecretString::from)
            .map_err(|_| format!("{credential} is not text"))
    }

    async fn delete(&self, tenant: &str, credential: &str) -> Result<(), String> {
        switchyard_credentials_client::CredentialsClient::delete(self, tenant, credential)
            .await
            .map_err(|err| err.to_string())
    }
}

/// What OAuth needs from outside.
#[derive(Debug, Clone)]
pub struct OAuthOutside {
    /// The token client (its HTTP client passes the SSRF guard).
    pub client: switchyard_oauth::Client,
    /// Token sets and client secrets.
    pub vault: Arc<dyn TokenVault>,
    /// Signs states; every replica needs the same.
    pub state_key: SecretString,
    /// Switchyard's public URL: the redirect URI is `{public_url}/oauth/{provider}/callback`.
    pub public_url: Url,
}

/// Refreshes of one connection are single-flight in this process.
#[derive(Debug, Default)]
pub(crate) struct RefreshLocks(Mutex<HashMap<String, Arc<Mutex<()>>>>);

/// Why a callback failed, as the user's browser is told.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// The provider reported an error (the user declined, say).
    #[error("the provider refused the authorization: {0}")]
    Denied(String),
    /// The state is forged, expired or used.
    #[error("this authorization link is not valid any more; start again")]
    State,
    /// The code did not exchange, or the account could not be read.
    #[error("the provider refused the code: {0}")]
    Exchange(OAuthError),
    /// Something of ours failed.
    #[error("the connection could not be stored: {0}")]
    Internal(String),
}

fn token_material(tokens: &TokenSet, now: SystemTime) -> Vec<u8> {
    let expires_at = tokens.expires_in.map(|seconds| {
        (now + Duration::from_secs(seconds))
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
    });
    serde_json::json!({
        "access_token": tokens.access_token.expose_secret(),
        "refresh_token": tokens.refresh_token.as_ref().map(|t| t.expose_secret().to_owned()),
        "expires_at": expires_at,
        "scope": tokens.scopes.join(" "),
        "token_type": "Bearer",
    })
    .to_string()
    .into_bytes()
}

fn provider_of(name: &str, field: &str) -> Result<Provider, GatewayError> {
    Provider::parse(name).ok_or_else(|| {
        GatewayError::invalid(field, "one of github, gitlab, slack, discord, google")
    })
}

impl Gateway {
    fn oauth(&self) -> Result<&OAuthOutside, GatewayError> {
        self.inner
            .oauth
            .as_ref()
            .ok_or_else(|| GatewayError::Unavailable("OAuth is not configured".into()))
    }

    fn redirect_uri(&self, provider: Provider) -> Result<String, GatewayError> {
        let base = &self.oauth()?.public_url;
        Ok(format!(
            "{}/oauth/{}/callback",
            base.as_str().trim_end_matches('/'),
            provider.as_str()
        ))
    }

    fn profile(&self, client: &OAuthClient) -> Result<Profile, GatewayError> {
        let base = client
            .base_url
            .as_deref()
            .map(Url::parse)
            .transpose()
            .map_err(|_| GatewayError::invalid("client.base_url", "not a URL"))?;
        Ok(Profile::new(client.provider, base.as_ref()))
    }

    async fn credentials_of(
        &self,
        client: &OAuthClient,
    ) -> Result<ClientCredentials, GatewayError> {
        let secret = self
            .oauth()?
            .vault
            .read(&client.tenant, &client.secret_credential)
            .await
            .map_err(|err| GatewayError::Unavailable(format!("the client secret: {err}")))?;
        Ok(ClientCredentials {
            client_id: client.client_id.clone(),
            client_secret: SecretString::from(secret.expose_secret().trim().to_owned()),
        })
    }

    /// Registers or replaces the tenant's client with a provider.
    pub async fn create_oauth_client(
        &self,
        client: OAuthClient,
    ) -> Result<(OAuthClient, String), GatewayError> {
        let mut violations = Vec::new();
        if client.client_id.is_empty()
            || client.client_id.len() > 256
            || client.client_id.contains('\0')
        {
            violations.push(FieldViolation::new("client.client_id", "1 to 256 bytes"));
        }
        if !super::is_credential_name(&client.secret_credential) {
            violations.push(FieldViolation::new(
                "client.client_secret_credential",
                "must be credentials/{id}",
            ));
        }
        if let Some(base) = &client.base_url {
            if client.provider != Provider::GitLab {
                violations.push(FieldViolation::new(
                    "client.base_url",
                    "only for a self-managed GitLab",
                ));
            } else if let Err(err) = self.inner.delivery.check_url(base) {
                violations.push(FieldViolation::new("client.base_url", err));
            }
        }
        if !violations.is_empty() {
            return Err(GatewayError::Invalid(violations));
        }
        db::upsert_client(&self.inner.db, &client).await?;
        let redirect = self.redirect_uri(client.provider)?;
        Ok((client, redirect))
    }

    /// The tenant's client with a provider, and the redirect URI to register.
    pub async fn get_oauth_client(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<(OAuthClient, String), GatewayError> {
        let provider = name
            .strip_prefix("clients/")
            .ok_or_else(|| GatewayError::invalid("name", "must be clients/{provider}"))
            .and_then(|p| provider_of(p, "name"))?;
        let client = db::client(&self.inner.db, tenant, provider)
            .await?
            .ok_or_else(|| GatewayError::NotFound(name.to_owned()))?;
        let redirect = self.redirect_uri(provider)?;
        Ok((client, redirect))
    }

    /// The URL to send the user to, and when its state expires.
    pub async fn start_authorization(
        &self,
        tenant: &str,
        provider: Provider,
        scopes: Vec<String>,
    ) -> Result<(Url, Micros), GatewayError> {
        if scopes.len() > 100
            || scopes
                .iter()
                .any(|s| s.is_empty() || s.len() > 256 || s.contains([' ', ',', '\0']))
        {
            return Err(GatewayError::invalid(
                "scopes",
                "at most 100 scopes, each 1 to 256 bytes without spaces or commas",
            ));
        }
        let oauth = self.oauth()?;
        let client = db::client(&self.inner.db, tenant, provider)
            .await?
            .ok_or_else(|| {
                GatewayError::invalid(
                    "provider",
                    "no client registered for it: CreateClient first",
                )
            })?;
        let profile = self.profile(&client)?;
        let (issued, state_text) = state::sign(
            oauth.state_key.expose_secret().as_bytes(),
            tenant,
            STATE_TTL,
        );
        let verifier = pkce::verifier();
        let expire_time = micros(SystemTime::UNIX_EPOCH + Duration::from_secs(issued.expires));
        db::insert_state(
            &self.inner.db,
            &issued.id,
            &db::Pending {
                tenant: tenant.to_owned(),
                provider,
                verifier: verifier.clone(),
                scopes: scopes.clone(),
            },
            expire_time,
        )
        .await?;
        let url = oauth.client.authorize_url(
            &profile,
            &client.client_id,
            &self.redirect_uri(provider)?,
            &scopes,
            &state_text,
            Some(&pkce::challenge(&verifier)),
        );
        Ok((url, expire_time))
    }

    /// `GET /oauth/{provider}/callback`: exchanges the code and stores the connection.
    pub async fn oauth_callback(
        &self,
        provider: &str,
        query: &HashMap<String, String>,
    ) -> Result<Connection, CallbackError> {
        if let Some(error) = query.get("error") {
            return Err(CallbackError::Denied(error.clone()));
        }
        let oauth = self
            .oauth()
            .map_err(|err| CallbackError::Internal(err.to_string()))?;
        let provider = Provider::parse(provider).ok_or(CallbackError::State)?;
        let state_text = query.get("state").ok_or(CallbackError::State)?;
        let code = query.get("code").ok_or(CallbackError::State)?;
        let signed = state::verify(
            oauth.state_key.expose_secret().as_bytes(),
            state_text,
            SystemTime::now(),
        )
        .map_err(|_| CallbackError::State)?;
        let internal = |err: GatewayError| CallbackError::Internal(err.to_string());
        let pending = db::consume_state(&self.inner.db, &signed.id, switchyard_store::now_micros())
            .await
            .map_err(|err| CallbackError::Internal(err.to_string()))?
            .filter(|p| p.provider == provider && p.tenant == signed.payload)
            .ok_or(CallbackError::State)?;
        let client = db::client(&self.inner.db, &pending.tenant, provider)
            .await
            .map_err(|err| CallbackError::Internal(err.to_string()))?
            .ok_or(CallbackError::State)?;
        let profile = self.profile(&client).map_err(internal)?;
        let credentials = self.credentials_of(&client).await.map_err(internal)?;
        let redirect = self.redirect_uri(provider).map_err(internal)?;
        let now = SystemTime::now();
        let tokens = oauth
            .client
            .exchange_code(
                &profile,
                &credentials,
                code,
                &redirect,
                Some(&pending.verifier),
            )
            .await
            .map_err(CallbackError::Exchange)?;
        let account = oauth
            .client
            .account(&profile, &tokens.access_token)
            .await
            .map_err(CallbackError::Exchange)?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let credential_id = format!("oauth-{}-{}", provider.as_str(), id);
        let token_credential = oauth
            .vault
            .store(
                &pending.tenant,
                &credential_id,
                token_material(&tokens, now),
            )
            .await
            .map_err(CallbackError::Internal)?;
        let granted = if tokens.scopes.is_empty() {
            pending.scopes.clone()
        } else {
            tokens.scopes.clone()
        };
        let stamp = micros(now);
        let connection = Connection {
            id,
            tenant: pending.tenant.clone(),
            provider,
            account_id: account.id,
            account_name: account.name,
            requested_scopes: pending.scopes,
            granted_scopes: granted,
            state: ConnectionState::Active,
            token_credential,
            expire_time: tokens
                .expires_in
                .map(|s| micros(now + Duration::from_secs(s))),
            create_time: stamp,
            update_time: stamp,
        };
        let internal = |err: switchyard_store::StoreError| CallbackError::Internal(err.to_string());
        let previous = db::account_token_credential(
            &self.inner.db,
            &connection.tenant,
            provider,
            &connection.account_id,
        )
        .await
        .map_err(internal)?;
        let stored = db::upsert_connection(&self.inner.db, &connection)
            .await
            .map_err(internal)?;
        // Connecting an account again replaces its token set: the old one, which may still hold
        // a live refresh token, is not left behind in the vault.
        if let Some(previous) = previous.filter(|old| *old != stored.token_credential)
            && let Err(err) = oauth.vault.delete(&stored.tenant, &previous).await
        {
            tracing::warn!(tenant = %stored.tenant, connection = %stored.id, error = %err, "deleting a replaced token set failed");
        }
        Ok(stored)
    }

    /// One of the tenant's connections.
    pub async fn get_connection(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Connection, GatewayError> {
        let id = name
            .strip_prefix("connections/")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| GatewayError::invalid("name", "must be connections/{id}"))?;
        db::connection(&self.inner.db, tenant, id)
            .await?
            .ok_or_else(|| GatewayError::NotFound(name.to_owned()))
    }

    /// A page of the tenant's connections, oldest first.
    pub async fn list_connections(
        &self,
        tenant: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<Connection>, GatewayError> {
        let size = page::page_size(page_size).map_err(page_error("page_size"))?;
        let fingerprint = page::filter_fingerprint("connections");
        let after: Option<String> =
            page::decode_token(page_token, &fingerprint).map_err(page_error("page_token"))?;
        let mut items =
            db::list_connections(&self.inner.db, tenant, after.as_deref(), size + 1).await?;
        let next_page_token = page::next_token(&mut items, size, &fingerprint, |c| c.id.clone());
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// Revokes upstream where possible, then deletes the connection and its token set.
    pub async fn delete_connection(&self, tenant: &str, name: &str) -> Result<bool, GatewayError> {
        let connection = self.get_connection(tenant, name).await?;
        let oauth = self.oauth()?;
        // Revocation is best effort: a connection can be deleted whatever its provider says.
        let revoked = match (
            self.tokens_of(&connection).await,
            db::client(&self.inner.db, tenant, connection.provider).await?,
        ) {
            (Ok(tokens), Some(client)) => {
                match (self.profile(&client), self.credentials_of(&client).await) {
                    (Ok(profile), Ok(credentials)) => {
                        // RFC 7009 revokes the whole grant through the refresh token; GitHub's grant
                        // API and Slack's auth.revoke take only the access token.
                        let token = match (&profile.revocation, tokens.refresh_token) {
                            (switchyard_oauth::Revocation::Rfc7009(_), Some(refresh)) => refresh,
                            _ => tokens.access_token,
                        };
                        oauth
                            .client
                            .revoke(&profile, &credentials, &token)
                            .await
                            .is_ok()
                    }
                    _ => false,
                }
            }
            _ => false,
        };
        db::delete_connection(&self.inner.db, tenant, &connection.id).await?;
        if let Err(err) = oauth
            .vault
            .delete(tenant, &connection.token_credential)
            .await
        {
            tracing::warn!(tenant, connection = %connection.id, error = %err, "deleting a connection's token set failed");
        }
        Ok(revoked)
    }

    async fn tokens_of(&self, connection: &Connection) -> Result<TokenSet, GatewayError> {
        let material = self
            .oauth()?
            .vault
            .read(&connection.tenant, &connection.token_credential)
            .await
            .map_err(|err| GatewayError::Unavailable(format!("the token set: {err}")))?;
        let value: serde_json::Value = serde_json::from_str(material.expose_secret())
            .map_err(|_| GatewayError::Unavailable("the stored token set is not JSON".into()))?;
        let text = |key: &str| {
            value[key]
                .as_str()
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
        };
        Ok(TokenSet {
            access_token: SecretString::from(text("access_token").unwrap_or_default()),
            refresh_token: text("refresh_token").map(SecretString::from),
            expires_in: None,
            scopes: Vec::new(),
            id_token: None,
        })
    }

    /// The connection's access token, refreshed first if it expires within a minute (or if
    /// `force`); `required_scopes` must all have been granted.
    pub async fn access_connection(
        &self,
        tenant: &str,
        name: &str,
        required_scopes: &[String],
        force_refresh: bool,
    ) -> Result<(SecretString, Connection), GatewayError> {
        let connection = self.get_connection(tenant, name).await?;
        let missing: Vec<&String> = required_scopes
            .iter()
            .filter(|scope| !connection.granted_scopes.contains(scope))
            .collect();
        if !missing.is_empty() {
            return Err(GatewayError::Precondition {
                reason: "MISSING_SCOPES",
                message: format!(
                    "{name} was not granted {}; authorize again asking for them",
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        // Single flight: one refresh per connection at a time in this process; the others
        // wait and then see the refreshed token.
        let lock = {
            let mut locks = self.inner.refresh_locks.0.lock().await;
            locks.entry(connection.id.clone()).or_default().clone()
        };
        let _guard = lock.lock().await;
        let connection = self.get_connection(tenant, name).await?;
        if connection.state == ConnectionState::NeedsReauth {
            return Err(GatewayError::Precondition {
                reason: "NEEDS_REAUTH",
                message: format!("{name} must be authorized again: the provider refused its grant"),
            });
        }
        let tokens = self.tokens_of(&connection).await?;
        let margin = i64::try_from(REFRESH_MARGIN.as_micros()).unwrap_or(i64::MAX);
        let expiring = connection
            .expire_time
            .is_some_and(|at| at - switchyard_store::now_micros() < margin);
        if !(force_refresh || expiring) {
            return Ok((tokens.access_token, connection));
        }
        let Some(refresh_token) = tokens.refresh_token.clone() else {
            if force_refresh {
                return Err(GatewayError::Precondition {
                    reason: "NO_REFRESH_TOKEN",
                    message: format!("{name} has no refresh token; authorize again"),
                });
            }
            return Ok((tokens.access_token, connection));
        };
        self.refresh_leased(connection, &refresh_token).await
    }

    /// Refreshes under the connection's refresh lease, so that one replica refreshes at a time
    /// (a rotated refresh token used twice would be an invalid grant). A caller that finds the
    /// lease taken waits for the other replica's refresh and takes its result.
    async fn refresh_leased(
        &self,
        connection: Connection,
        refresh_token: &SecretString,
    ) -> Result<(SecretString, Connection), GatewayError> {
        let now = switchyard_store::now_micros();
        let until = now + i64::try_from(REFRESH_LEASE.as_micros()).unwrap_or(i64::MAX);
        if db::claim_refresh(&self.inner.db, &connection.id, now, until).await? {
            let id = connection.id.clone();
            let refreshed = async {
                // Another replica may have refreshed, and rotated the refresh token, between
                // this caller's read and its claim: then its token is the one to use.
                let current = self
                    .get_connection(&connection.tenant, &format!("connections/{id}"))
                    .await?;
                if current.update_time != connection.update_time {
                    let tokens = self.tokens_of(&current).await?;
                    return Ok((tokens.access_token, current));
                }
                self.refresh(connection, refresh_token).await
            }
            .await;
            db::release_refresh(&self.inner.db, &id).await?;
            return refreshed;
        }
        let name = format!("connections/{}", connection.id);
        for _ in 0..REFRESH_WAIT_ROUNDS {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let current = self.get_connection(&connection.tenant, &name).await?;
            if current.state == ConnectionState::NeedsReauth {
                return Err(GatewayError::Precondition {
                    reason: "NEEDS_REAUTH",
                    message: format!(
                        "{name} must be authorized again: the provider refused its grant"
                    ),
                });
            }
            if current.update_time != connection.update_time {
                let tokens = self.tokens_of(&current).await?;
                return Ok((tokens.access_token, current));
            }
        }
        Err(GatewayError::Unavailable(format!(
            "{name} is being refreshed elsewhere; retry"
        )))
    }

    /// Refreshes the active connections whose tokens expire within `ahead`, of every tenant;
    /// returns how many were refreshed. Replicas share the work through the refresh leases.
    pub async fn refresh_due(&self, ahead: Duration) -> Result<usize, GatewayError> {
        if self.inner.oauth.is_none() {
            return Ok(0);
        }
        let start = switchyard_store::now_micros();
        let before = start + i64::try_from(ahead.as_micros()).unwrap_or(i64::MAX);
        let due = db::expiring_connections(&self.inner.db, start, before, 100).await?;
        let mut refreshed = 0;
        for connection in due {
            let now = switchyard_store::now_micros();
            let until = now + i64::try_from(REFRESH_LEASE.as_micros()).unwrap_or(i64::MAX);
            if !db::claim_refresh(&self.inner.db, &connection.id, now, until).await? {
                continue;
            }
            let id = connection.id.clone();
            let outcome = match self.tokens_of(&connection).await {
                Ok(TokenSet {
                    refresh_token: Some(refresh_token),
                    ..
                }) => self.refresh(connection, &refresh_token).await.map(|_| 1),
                Ok(_) => Ok(0),
                Err(err) => Err(err),
            };
            db::release_refresh(&self.inner.db, &id).await?;
            let retry_at = now + i64::try_from(REFRESH_RETRY.as_micros()).unwrap_or(i64::MAX);
            match outcome {
                Ok(1) => refreshed += 1,
                // No refresh token: nothing to do ahead of expiry until it is authorized again.
                Ok(_) => db::defer_refresh(&self.inner.db, &id, retry_at).await?,
                Err(err) => {
                    tracing::warn!(connection = %id, error = %err, "refreshing a connection ahead of expiry failed");
                    db::defer_refresh(&self.inner.db, &id, retry_at).await?;
                }
            }
        }
        Ok(refreshed)
    }

    async fn refresh(
        &self,
        mut connection: Connection,
        refresh_token: &SecretString,
    ) -> Result<(SecretString, Connection), GatewayError> {
        let oauth = self.oauth()?;
        let client = db::client(&self.inner.db, &connection.tenant, connection.provider)
            .await?
            .ok_or_else(|| GatewayError::Precondition {
                reason: "NO_CLIENT",
                message: "the provider's client is no longer registered".into(),
            })?;
        let profile = self.profile(&client)?;
        let credentials = self.credentials_of(&client).await?;
        let now = SystemTime::now();
        match oauth
            .client
            .refresh(&profile, &credentials, refresh_token)
            .await
        {
            Ok(mut tokens) => {
                // Providers that do not rotate refresh tokens leave the old one valid.
                if tokens.refresh_token.is_none() {
                    tokens.refresh_token = Some(refresh_token.clone());
                }
                let credential_id = connection
                    .token_credential
                    .trim_start_matches("credentials/")
                    .to_owned();
                oauth
                    .vault
                    .store(
                        &connection.tenant,
                        &credential_id,
                        token_material(&tokens, now),
                    )
                    .await
                    .map_err(GatewayError::Unavailable)?;
                if !tokens.scopes.is_empty() {
                    connection.granted_scopes = tokens.scopes.clone();
                }
                connection.expire_time = tokens
                    .expires_in
                    .map(|s| micros(now + Duration::from_secs(s)));
                connection.update_time = micros(now);
                db::update_connection(&self.inner.db, &connection).await?;
                Ok((tokens.access_token, connection))
            }
            Err(OAuthError::InvalidGrant(code)) => {
                connection.state = ConnectionState::NeedsReauth;
                connection.update_time = micros(now);
                db::update_connection(&self.inner.db, &connection).await?;
                let event = self.switchyard_event(
                    &connection.tenant,
                    "connection.needs_reauth",
                    &format!("connections/{}", connection.id),
                    serde_json::json!({
                        "connection": format!("connections/{}", connection.id),
                        "provider": connection.provider.as_str(),
                        "account": connection.account_name,
                        "error": code,
                    }),
                );
                self.record_event(&event).await?;
                Err(GatewayError::Precondition {
                    reason: "NEEDS_REAUTH",
                    message: format!(
                        "connections/{} must be authorized again: the provider refused its grant ({code})",
                        connection.id
                    ),
                })
            }
            Err(err) if err.is_retryable() => Err(GatewayError::Unavailable(err.to_string())),
            Err(err) => Err(GatewayError::Precondition {
                reason: "REFRESH_REFUSED",
                message: err.to_string(),
            }),
        }
    }
}

/// Refreshes connections ahead of expiry every `interval` until `shutdown`.
pub async fn run_refresher(
    gateway: Gateway,
    interval: Duration,
    ahead: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        if let Err(err) = gateway.refresh_due(ahead).await {
            tracing::error!(error = %err, "looking for connections to refresh failed");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
