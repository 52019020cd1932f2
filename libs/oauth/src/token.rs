//! The token client: authorize URLs, code exchange, refresh, revocation, and the account.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use url::Url;

use crate::profile::{Profile, Provider, Revocation};

/// A client registered with a provider: the tenant's own, kept in the credentials service.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    /// The client id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: SecretString,
}

/// What a token endpoint granted.
#[derive(Debug, Clone)]
pub struct TokenSet {
    /// The access token.
    pub access_token: SecretString,
    /// The refresh token, where the provider issues one.
    pub refresh_token: Option<SecretString>,
    /// Seconds until the access token expires, where the provider says.
    pub expires_in: Option<u64>,
    /// The scopes granted (which may be fewer than those requested).
    pub scopes: Vec<String>,
    /// The OIDC ID token, where one came.
    pub id_token: Option<String>,
}

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The provider's stable id (for Slack, `team/user`).
    pub id: String,
    /// A name for people (login, username, e-mail).
    pub name: String,
}

/// Why a call to a provider failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    /// The grant (code or refresh token) is invalid, expired or revoked: the user must
    /// authorize again.
    #[error("the grant is no longer valid ({0}); authorize again")]
    InvalidGrant(String),
    /// The provider refused for another reason (`invalid_client`, `invalid_scope`, …).
    #[error("the provider refused: {error}{}", description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Refused {
        /// The provider's error code.
        error: String,
        /// Its description.
        description: Option<String>,
    },
    /// The provider could not be reached, timed out, was rate limited or failed (5xx): worth
    /// retrying.
    #[error("the provider is unavailable: {0}")]
    Unavailable(String),
    /// The answer was not what the provider documents.
    #[error("unexpected answer from the provider: {0}")]
    Malformed(String),
}

impl OAuthError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, OAuthError::Unavailable(_))
    }
}

/// The error codes that mean "authorize again", per provider: RFC 6749's `invalid_grant`,
/// GitHub's `bad_verification_code` and `bad_refresh_token`, Slack's `invalid_code`,
/// `invalid_refresh_token` and `token_revoked`.
fn is_invalid_grant(error: &str) -> bool {
    matches!(
        error,
        "invalid_grant"
            | "bad_verification_code"
            | "bad_refresh_token"
            | "invalid_code"
            | "invalid_refresh_token"
            | "token_revoked"
            | "token_expired"
    )
}

/// Talks to providers' OAuth2 endpoints.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
}

/// How long a call to a provider may take.
const TIMEOUT: Duration = Duration::from_secs(15);

impl Client {
    /// A client sending with `http` (which should not follow redirects).
    pub fn new(http: reqwest::Client) -> Self {
        Client { http }
    }

    /// Where to send the user: the provider's authorize URL with the client, scopes, state and,
    /// where the provider takes it, the PKCE challenge.
    pub fn authorize_url(
        &self,
        profile: &Profile,
        client_id: &str,
        redirect_uri: &str,
        scopes: &[String],
        state: &str,
        pkce_challenge: Option<&str>,
    ) -> Url {
        let mut url = profile.authorize_url.clone();
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("client_id", client_id)
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("response_type", "code")
                .append_pair("scope", &scopes.join(profile.scope_separator))
                .append_pair("state", state);
            if let (true, Some(challenge)) = (profile.pkce, pkce_challenge) {
                query
                    .append_pair("code_challenge", challenge)
                    .append_pair("code_challenge_method", "S256");
            }
            for (name, value) in &profile.authorize_params {
                query.append_pair(name, value);
            }
        }
        url
    }

    /// Exchanges an authorization code.
    pub async fn exchange_code(
        &self,
        profile: &Profile,
        client: &ClientCredentials,
        code: &str,
        redirect_uri: &str,
        pkce_verifier: Option<&str>,
    ) -> Result<TokenSet, OAuthError> {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
        ];
        if let (true, Some(verifier)) = (profile.pkce, pkce_verifier) {
            form.push(("code_verifier", verifier));
        }
        self.token_request(profile, client, &form).await
    }

    /// Exchanges a refresh token for a new token set (which may carry a new refresh token).
    pub async fn refresh(
        &self,
        profile: &Profile,
        client: &ClientCredentials,
        refresh_token: &SecretString,
    ) -> Result<TokenSet, OAuthError> {
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose_secret()),
        ];
        self.token_request(profile, client, &form).await
    }

    async fn token_request(
        &self,
        profile: &Profile,
        client: &ClientCredentials,
        form: &[(&str, &str)],
    ) -> Result<TokenSet, OAuthError> {
        let mut form = form.to_vec();
        form.push(("client_id", &client.client_id));
        form.push(("client_secret", client.client_secret.expose_secret()));
        let response = self
            .http
            .post(profile.token_url.clone())
            // GitHub answers in a form unless JSON is asked for.
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .timeout(TIMEOUT)
            .send()
            .await
            .map_err(|err| OAuthError::Unavailable(err.to_string()))?;
        let body = json_answer(response).await?;
        token_set(profile, &body)
    }

    /// Revokes `token` upstream.
    pub async fn revoke(
        &self,
        profile: &Profile,
        client: &ClientCredentials,
        token: &SecretString,
    ) -> Result<(), OAuthError> {
        let request = match &profile.revocation {
            Revocation::Rfc7009(url) => self.http.post(url.clone()).form(&[
                ("token", token.expose_secret()),
                ("client_id", &client.client_id),
                ("client_secret", client.client_secret.expose_secret()),
            ]),
            Revocation::GitHubGrant(base) => {
                let mut url = base.clone();
                url.path_segments_mut()
                    .map_err(|()| OAuthError::Malformed("the revocation URL has no path".into()))?
                    .push(&client.client_id)
                    .push("grant");
                self.http
                    .delete(url)
                    .basic_auth(
                        &client.client_id,
                        Some(client.client_secret.expose_secret()),
                    )
                    .header(reqwest::header::ACCEPT, "application/vnd.github+json")
                    .json(&serde_json::json!({ "access_token": token.expose_secret() }))
            }
            Revocation::SlackAuthRevoke(url) => self
                .http
                .post(url.clone())
                .bearer_auth(token.expose_secret()),
        };
        let response = request
            .timeout(TIMEOUT)
            .send()
            .await
            .map_err(|err| OAuthError::Unavailable(err.to_string()))?;
        let status = response.status();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(OAuthError::Unavailable(format!("HTTP {status}")));
        }
        // A token that is already invalid is as revoked as it gets (GitHub: 404; RFC 7009: 200).
        if status.is_success() || status.as_u16() == 404 {
            if profile.provider == Provider::Slack {
                let body: Value = response
                    .json()
                    .await
                    .map_err(|err| OAuthError::Malformed(err.to_string()))?;
                if body["ok"] != Value::Bool(true) && body["error"].as_str() != Some("invalid_auth")
                {
                    return Err(refusal(&body));
                }
            }
            return Ok(());
        }
        Err(OAuthError::Refused {
            error: format!("HTTP {status}"),
            description: None,
        })
    }

    /// Who `access_token` belongs to.
    pub async fn account(
        &self,
        profile: &Profile,
        access_token: &SecretString,
    ) -> Result<Account, OAuthError> {
        let mut request = self
            .http
            .get(profile.user_url.clone())
            .bearer_auth(access_token.expose_secret())
            .timeout(TIMEOUT);
        if profile.provider == Provider::GitHub {
            request = request.header(reqwest::header::ACCEPT, "application/vnd.github+json");
        }
        let response = request
            .send()
            .await
            .map_err(|err| OAuthError::Unavailable(err.to_string()))?;
        let body = json_answer(response).await?;
        let text = |value: &Value| match value {
            Value::String(text) => Some(text.clone()),
            Value::Number(number) => Some(number.to_string()),
            _ => None,
        };
        let (id, name) = match profile.provider {
            Provider::GitHub => (text(&body["id"]), text(&body["login"])),
            Provider::GitLab => (text(&body["id"]), text(&body["username"])),
            Provider::Slack => (
                text(&body["team_id"])
                    .zip(text(&body["user_id"]))
                    .map(|(team, user)| format!("{team}/{user}")),
                text(&body["team"]),
            ),
            Provider::Discord => (text(&body["id"]), text(&body["username"])),
            Provider::Google => (text(&body["sub"]), text(&body["email"])),
        };
        let id = id.ok_or_else(|| OAuthError::Malformed("no account id in the answer".into()))?;
        Ok(Account {
            name: name.unwrap_or_else(|| id.clone()),
            id,
        })
    }
}

/// The JSON body of an answer, with errors told apart: HTTP errors, and the 200 answers that
/// GitHub (`error`) and Slack (`ok: false`) use for errors.
async fn json_answer(response: reqwest::Response) -> Result<Value, OAuthError> {
    let status = response.status();
    if status.is_server_error() || status.as_u16() == 429 {
        return Err(OAuthError::Unavailable(format!("HTTP {status}")));
    }
    let body: Value = response
        .json()
        .await
        .map_err(|err| OAuthError::Malformed(format!("HTTP {status}, not JSON: {err}")))?;
    if body.get("error").is_some_and(|e| !e.is_null()) || body["ok"] == Value::Bool(false) {
        return Err(refusal(&body));
    }
    if !status.is_success() {
        return Err(OAuthError::Refused {
            error: format!("HTTP {status}"),
            description: None,
        });
    }
    Ok(body)
}

fn refusal(body: &Value) -> OAuthError {
    let error = body["error"].as_str().unwrap_or("unknown_error").to_owned();
    if is_invalid_grant(&error) {
        return OAuthError::InvalidGrant(error);
    }
    // Slack's rate limit, as an error code on a 200.
    if error == "ratelimited" {
        return OAuthError::Unavailable(error);
    }
    OAuthError::Refused {
        error,
        description: body["error_description"].as_str().map(str::to_owned),
    }
}

/// The token set of a token endpoint's answer. Slack's v2 answer carries the bot token at the
/// top and a user token under `authed_user`; the bot token is the connection's when present.
fn token_set(profile: &Profile, body: &Value) -> Result<TokenSet, OAuthError> {
    let source = match (profile.provider, body.get("access_token")) {
        (Provider::Slack, None) => &body["authed_user"],
        _ => body,
    };
    let access_token = source["access_token"]
        .as_str()
        .filter(|token| !token.is_empty())
        .ok_or_else(|| OAuthError::Malformed("no access_token in the answer".into()))?;
    let scopes = source["scope"]
        .as_str()
        .map(|granted| profile.split_scopes(granted))
        .unwrap_or_default();
    Ok(TokenSet {
        access_token: SecretString::from(access_token.to_owned()),
        refresh_token: source["refresh_token"]
            .as_str()
            .filter(|token| !token.is_empty())
            .map(|token| SecretString::from(token.to_owned())),
        expires_in: source["expires_in"].as_u64(),
        scopes,
        id_token: body["id_token"].as_str().map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_v2_answers_and_errors() {
        let slack = Profile::new(Provider::Slack, None);
        let answer = serde_json::json!({
            "ok": true, "access_token": "xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy",
            "token_type": "bot", "scope": "commands,incoming-webhook",
            "bot_user_id": "U0KRQLJ9H", "app_id": "A0KRD7HC3",
            "team": { "name": "Slack Softball Team", "id": "T9TK3CUKW" },
            "authed_user": { "id": "U1234", "scope": "chat:write", "access_token": "xoxp-1234", "token_type": "user" }
        });
        let tokens = token_set(&slack, &answer).expect("tokens");
        assert_eq!(
            tokens.access_token.expose_secret(),
            "xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy"
        );
        assert_eq!(tokens.scopes, ["commands", "incoming-webhook"]);
        assert_eq!(
            refusal(&serde_json::json!({"ok": false, "error": "invalid_code"})),
            OAuthError::InvalidGrant("invalid_code".into())
        );
    }

    #[test]
    fn github_errors_come_with_200() {
        assert_eq!(
            refusal(&serde_json::json!({
                "error": "bad_verification_code",
                "error_description": "The code passed is incorrect or expired.",
                "error_uri": "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/#bad-verification-code"
            })),
            OAuthError::InvalidGrant("bad_verification_code".into())
        );
        assert!(matches!(
            refusal(&serde_json::json!({"error": "incorrect_client_credentials"})),
            OAuthError::Refused { .. }
        ));
    }
}
