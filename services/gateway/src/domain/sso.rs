//! Single sign-on: an organisation's OpenID Connect provider (Keycloak, Auth0, Google, Entra ID)
//! logs users in, and Switchyard issues them its own token for their tenant and roles.
//!
//! `GET /sso/login` sends the browser to the provider (authorization code with PKCE, a signed
//! single-use state, a nonce); `GET /sso/callback` exchanges the code, checks the ID token
//! against the provider's JWKS, `iss`, `aud`, expiry and the nonce, maps its claims to a tenant
//! and scopes, and answers with a Switchyard token.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use switchyard_auth::{IdTokenVerifier, TokenRequest};
use switchyard_oauth::{pkce, state};
use url::Url;

use super::oauth::STATE_TTL;
use super::{Gateway, GatewayError};
use crate::store::oauth as db;

/// `[gateway.sso]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SsoConfig {
    /// The provider's issuer URL; its discovery document is read from
    /// `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// Switchyard's client id at the provider.
    pub client_id: String,
    /// Its client secret.
    pub client_secret: SecretString,
    /// Scopes asked for.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The ID token claim naming the user's tenant.
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    /// The tenant of users whose token has no tenant claim; unset: they are refused.
    #[serde(default)]
    pub default_tenant: Option<String>,
    /// The ID token claim listing the user's groups or roles.
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Switchyard scopes granted by each group or role.
    #[serde(default)]
    pub role_scopes: BTreeMap<String, Vec<String>>,
    /// How long an issued Switchyard token is valid.
    #[serde(default = "default_token_ttl", with = "humantime_serde")]
    pub token_ttl: Duration,
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "email".into(), "profile".into()]
}
fn default_tenant_claim() -> String {
    "tenant".into()
}
fn default_roles_claim() -> String {
    "groups".into()
}
fn default_token_ttl() -> Duration {
    Duration::from_secs(8 * 3600)
}

/// What SSO needs from outside.
#[derive(Debug, Clone)]
pub struct SsoOutside {
    /// The provider and the mapping.
    pub config: SsoConfig,
    /// Reaches the provider (through the SSRF guard).
    pub http: reqwest::Client,
    /// Signs the issued tokens (the installation's HS256 key).
    pub signing_key: SecretString,
    /// `iss`, `aud` and the tenant claim of the issued tokens.
    pub token_template: TokenRequest,
}

/// What the provider's discovery document says.
#[derive(Debug)]
pub(crate) struct Discovered {
    authorization_endpoint: Url,
    token_endpoint: Url,
    verifier: IdTokenVerifier,
}

/// A finished login.
#[derive(Debug, Clone)]
pub struct SsoLogin {
    /// The Switchyard token.
    pub token: SecretString,
    /// Its tenant.
    pub tenant: String,
    /// Its subject.
    pub subject: String,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// Its lifetime.
    pub expires_in: Duration,
}

fn refused(message: impl Into<String>) -> GatewayError {
    GatewayError::Precondition {
        reason: "SSO_REFUSED",
        message: message.into(),
    }
}

impl Gateway {
    fn sso(&self) -> Result<&SsoOutside, GatewayError> {
        self.inner
            .sso
            .as_ref()
            .ok_or_else(|| GatewayError::NotFound("single sign-on".into()))
    }

    async fn discovered(&self) -> Result<&Discovered, GatewayError> {
        let sso = self.sso()?;
        self.inner
            .sso_discovered
            .get_or_try_init(|| async {
                let issuer = sso.config.issuer.trim_end_matches('/');
                let document: serde_json::Value = sso
                    .http
                    .get(format!("{issuer}/.well-known/openid-configuration"))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(|err| GatewayError::Unavailable(format!("the SSO provider: {err}")))?
                    .json()
                    .await
                    .map_err(|err| {
                        GatewayError::Unavailable(format!("the SSO discovery document: {err}"))
                    })?;
                let url = |key: &str| {
                    document[key]
                        .as_str()
                        .and_then(|text| Url::parse(text).ok())
                        .ok_or_else(|| {
                            GatewayError::Unavailable(format!(
                                "the SSO discovery document has no {key}"
                            ))
                        })
                };
                // OpenID Connect Discovery 1.0, 4.3: the document's issuer is the one configured,
                // or the document is not to be trusted.
                let declared = document["issuer"].as_str().unwrap_or_default();
                if declared.trim_end_matches('/') != issuer {
                    return Err(GatewayError::Unavailable(format!(
                        "the SSO discovery document names the issuer {declared:?}, not {issuer:?}"
                    )));
                }
                Ok(Discovered {
                    authorization_endpoint: url("authorization_endpoint")?,
                    token_endpoint: url("token_endpoint")?,
                    verifier: IdTokenVerifier::new(
                        declared,
                        &sso.config.client_id,
                        url("jwks_uri")?.as_str(),
                        sso.http.clone(),
                    ),
                })
            })
            .await
    }

    fn sso_redirect_uri(&self) -> Result<String, GatewayError> {
        let oauth = self
            .inner
            .oauth
            .as_ref()
            .ok_or_else(|| GatewayError::Unavailable("OAuth is not configured".into()))?;
        Ok(format!(
            "{}/sso/callback",
            oauth.public_url.as_str().trim_end_matches('/')
        ))
    }

    /// Where to send the browser to log in.
    pub async fn sso_login(&self) -> Result<Url, GatewayError> {
        let sso = self.sso()?;
        let discovered = self.discovered().await?;
        let state_key = self.state_key()?;
        let (issued, state_text) =
            state::sign(state_key.expose_secret().as_bytes(), "sso", STATE_TTL);
        let verifier = pkce::verifier();
        let nonce = pkce::verifier();
        let expire_time =
            super::micros(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(issued.expires));
        db::insert_sso_state(&self.inner.db, &issued.id, &verifier, &nonce, expire_time).await?;
        let mut url = discovered.authorization_endpoint.clone();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &sso.config.client_id)
            .append_pair("redirect_uri", &self.sso_redirect_uri()?)
            .append_pair("scope", &sso.config.scopes.join(" "))
            .append_pair("state", &state_text)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &pkce::challenge(&verifier))
            .append_pair("code_challenge_method", "S256");
        Ok(url)
    }

    fn state_key(&self) -> Result<&SecretString, GatewayError> {
        self.inner
            .oauth
            .as_ref()
            .map(|oauth| &oauth.state_key)
            .ok_or_else(|| GatewayError::Unavailable("OAuth is not configured".into()))
    }

    /// Finishes a login: the code becomes a Switchyard token.
    pub async fn sso_callback(
        &self,
        query: &HashMap<String, String>,
    ) -> Result<SsoLogin, GatewayError> {
        if let Some(error) = query.get("error") {
            return Err(refused(format!("the provider refused the login: {error}")));
        }
        let sso = self.sso()?;
        let state_text = query.get("state").ok_or_else(|| refused("no state"))?;
        let code = query.get("code").ok_or_else(|| refused("no code"))?;
        let signed = state::verify(
            self.state_key()?.expose_secret().as_bytes(),
            state_text,
            std::time::SystemTime::now(),
        )
        .map_err(|err| refused(err.to_string()))?;
        let (verifier, nonce) =
            db::consume_sso_state(&self.inner.db, &signed.id, switchyard_store::now_micros())
                .await?
                .ok_or_else(|| refused("this login link was already used; start again"))?;
        let discovered = self.discovered().await?;
        let redirect = self.sso_redirect_uri()?;
        let answer: serde_json::Value = sso
            .http
            .post(discovered.token_endpoint.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", redirect.as_str()),
                ("code_verifier", verifier.as_str()),
                ("client_id", sso.config.client_id.as_str()),
                ("client_secret", sso.config.client_secret.expose_secret()),
            ])
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .map_err(|err| GatewayError::Unavailable(format!("the SSO provider: {err}")))?
            .json()
            .await
            .map_err(|err| GatewayError::Unavailable(format!("the SSO token answer: {err}")))?;
        let id_token = answer["id_token"]
            .as_str()
            .ok_or_else(|| refused("the provider sent no ID token"))?;
        let claims = discovered
            .verifier
            .verify(id_token, &nonce)
            .await
            .map_err(|err| refused(format!("the ID token: {err}")))?;
        let text = |key: &str| claims.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        let tenant = text(&sso.config.tenant_claim)
            .or_else(|| sso.config.default_tenant.clone())
            .ok_or_else(|| {
                refused(format!(
                    "the ID token has no {} claim",
                    sso.config.tenant_claim
                ))
            })?;
        if !switchyard_auth::is_valid_tenant(&tenant) {
            return Err(refused(format!("{tenant:?} is not a valid tenant id")));
        }
        // An address the provider has not verified could be anyone's.
        let email_verified = claims.get("email_verified") == Some(&serde_json::Value::Bool(true));
        let subject = text("email")
            .filter(|_| email_verified)
            .or_else(|| text("sub"))
            .ok_or_else(|| refused("the ID token has no subject"))?;
        let roles: Vec<String> = match claims.get(&sso.config.roles_claim) {
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect(),
            Some(serde_json::Value::String(one)) => vec![one.clone()],
            _ => Vec::new(),
        };
        let scopes: Vec<String> = roles
            .iter()
            .filter_map(|role| sso.config.role_scopes.get(role))
            .flatten()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let request = TokenRequest {
            subject: format!("sso:{subject}"),
            tenant: tenant.clone(),
            scopes: scopes.clone(),
            ttl: sso.config.token_ttl,
            ..sso.token_template.clone()
        };
        let token = switchyard_auth::mint(sso.signing_key.expose_secret().as_bytes(), &request)
            .map_err(|err| GatewayError::Unavailable(format!("minting the token: {err}")))?;
        Ok(SsoLogin {
            token: SecretString::from(token),
            tenant,
            subject: request.subject,
            scopes,
            expires_in: sso.config.token_ttl,
        })
    }
}
