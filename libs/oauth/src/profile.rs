//! What differs between providers: endpoints, scope syntax, PKCE, revocation, and the shape of
//! their answers.

use url::Url;

/// The OAuth2 providers Switchyard connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    /// GitHub (OAuth apps and GitHub apps' user tokens).
    GitHub,
    /// GitLab.com or a self-managed GitLab.
    GitLab,
    /// Slack's v2 flow (`oauth.v2.access`).
    Slack,
    /// Discord.
    Discord,
    /// Google.
    Google,
}

impl Provider {
    /// Every provider.
    pub const ALL: [Provider; 5] = [
        Provider::GitHub,
        Provider::GitLab,
        Provider::Slack,
        Provider::Discord,
        Provider::Google,
    ];

    /// Its name in URLs (`/oauth/{provider}/callback`) and records.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::GitHub => "github",
            Provider::GitLab => "gitlab",
            Provider::Slack => "slack",
            Provider::Discord => "discord",
            Provider::Google => "google",
        }
    }

    /// The provider named `name`.
    pub fn parse(name: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

/// How a token is revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// RFC 7009: a form POST of `token` (and the client's credentials) to this URL.
    Rfc7009(Url),
    /// GitHub: `DELETE /applications/{client_id}/grant` with basic auth and the token in JSON,
    /// which revokes the whole grant.
    GitHubGrant(Url),
    /// Slack: `auth.revoke`, authorized by the token itself.
    SlackAuthRevoke(Url),
}

/// One provider's endpoints and conventions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// Which provider.
    pub provider: Provider,
    /// Where the user is sent to authorize.
    pub authorize_url: Url,
    /// Where codes and refresh tokens are exchanged.
    pub token_url: Url,
    /// How a token is revoked.
    pub revocation: Revocation,
    /// Who the token belongs to.
    pub user_url: Url,
    /// How scopes are joined in the authorize URL (Slack: `,`; the others: a space).
    pub scope_separator: &'static str,
    /// Whether the provider takes PKCE (Slack and Discord do not document it).
    pub pkce: bool,
    /// Extra authorize parameters (Google: offline access, so that a refresh token comes).
    pub authorize_params: Vec<(&'static str, &'static str)>,
}

fn join(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!("{}{}", base.path().trim_end_matches('/'), path);
    url.set_path(&joined);
    url
}

impl Profile {
    /// The profile of `provider`. `base_url` replaces the provider's public hosts: a
    /// self-managed GitLab, or a local fake in tests (every endpoint then lives under it, at the
    /// public API's paths).
    pub fn new(provider: Provider, base_url: Option<&Url>) -> Profile {
        let at = |public: &str, path: &str| -> Url {
            match base_url {
                Some(base) => join(base, path),
                None => Url::parse(public)
                    .unwrap_or_else(|_| unreachable!("the public endpoints are valid URLs")),
            }
        };
        match provider {
            Provider::GitHub => Profile {
                provider,
                authorize_url: at(
                    "https://github.com/login/oauth/authorize",
                    "/login/oauth/authorize",
                ),
                token_url: at(
                    "https://github.com/login/oauth/access_token",
                    "/login/oauth/access_token",
                ),
                revocation: Revocation::GitHubGrant(at(
                    "https://api.github.com/applications",
                    "/applications",
                )),
                user_url: at("https://api.github.com/user", "/user"),
                scope_separator: " ",
                pkce: true,
                authorize_params: Vec::new(),
            },
            Provider::GitLab => {
                let gitlab = |path: &str| match base_url {
                    Some(base) => join(base, path),
                    None => join(
                        &Url::parse("https://gitlab.com")
                            .unwrap_or_else(|_| unreachable!("a valid URL")),
                        path,
                    ),
                };
                Profile {
                    provider,
                    authorize_url: gitlab("/oauth/authorize"),
                    token_url: gitlab("/oauth/token"),
                    revocation: Revocation::Rfc7009(gitlab("/oauth/revoke")),
                    user_url: gitlab("/api/v4/user"),
                    scope_separator: " ",
                    pkce: true,
                    authorize_params: Vec::new(),
                }
            }
            Provider::Slack => Profile {
                provider,
                authorize_url: at(
                    "https://slack.com/oauth/v2/authorize",
                    "/oauth/v2/authorize",
                ),
                token_url: at(
                    "https://slack.com/api/oauth.v2.access",
                    "/api/oauth.v2.access",
                ),
                revocation: Revocation::SlackAuthRevoke(at(
                    "https://slack.com/api/auth.revoke",
                    "/api/auth.revoke",
                )),
                user_url: at("https://slack.com/api/auth.test", "/api/auth.test"),
                scope_separator: ",",
                pkce: false,
                authorize_params: Vec::new(),
            },
            Provider::Discord => Profile {
                provider,
                authorize_url: at("https://discord.com/oauth2/authorize", "/oauth2/authorize"),
                token_url: at("https://discord.com/api/oauth2/token", "/api/oauth2/token"),
                revocation: Revocation::Rfc7009(at(
                    "https://discord.com/api/oauth2/token/revoke",
                    "/api/oauth2/token/revoke",
                )),
                user_url: at("https://discord.com/api/users/@me", "/api/users/@me"),
                scope_separator: " ",
                pkce: false,
                authorize_params: Vec::new(),
            },
            Provider::Google => Profile {
                provider,
                authorize_url: at(
                    "https://accounts.google.com/o/oauth2/v2/auth",
                    "/o/oauth2/v2/auth",
                ),
                token_url: at("https://oauth2.googleapis.com/token", "/token"),
                revocation: Revocation::Rfc7009(at(
                    "https://oauth2.googleapis.com/revoke",
                    "/revoke",
                )),
                user_url: at(
                    "https://openidconnect.googleapis.com/v1/userinfo",
                    "/v1/userinfo",
                ),
                scope_separator: " ",
                pkce: true,
                authorize_params: vec![("access_type", "offline"), ("prompt", "consent")],
            },
        }
    }

    /// The scopes a token response grants, split by this provider's separator (Slack lists
    /// them with commas, the others with spaces; either is accepted).
    pub fn split_scopes(&self, granted: &str) -> Vec<String> {
        granted
            .split([',', ' '])
            .map(str::trim)
            .filter(|scope| !scope.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_and_self_managed_endpoints() {
        let github = Profile::new(Provider::GitHub, None);
        assert_eq!(
            github.token_url.as_str(),
            "https://github.com/login/oauth/access_token"
        );
        let gitlab = Profile::new(Provider::GitLab, None);
        assert_eq!(
            gitlab.authorize_url.as_str(),
            "https://gitlab.com/oauth/authorize"
        );
        let own = Url::parse("https://git.example.com/gitlab/").expect("url");
        let self_managed = Profile::new(Provider::GitLab, Some(&own));
        assert_eq!(
            self_managed.token_url.as_str(),
            "https://git.example.com/gitlab/oauth/token"
        );
        assert_eq!(
            self_managed.user_url.as_str(),
            "https://git.example.com/gitlab/api/v4/user"
        );
        assert_eq!(Profile::new(Provider::Slack, None).scope_separator, ",");
        for provider in Provider::ALL {
            assert_eq!(Provider::parse(provider.as_str()), Some(provider));
        }
    }

    #[test]
    fn granted_scopes_split_either_way() {
        let slack = Profile::new(Provider::Slack, None);
        assert_eq!(
            slack.split_scopes("commands,chat:write"),
            ["commands", "chat:write"]
        );
        let google = Profile::new(Provider::Google, None);
        assert_eq!(google.split_scopes("openid email"), ["openid", "email"]);
    }
}
