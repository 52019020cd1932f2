use std::collections::{BTreeSet, HashMap};
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::jwks::JwksCache;
use crate::{AuthConfig, Principal};

/// Why a token was refused. Messages are safe to return to the caller: they never contain the
/// token or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No bearer token in the request.
    #[error("missing bearer token")]
    Missing,
    /// Not a JWT, or its header or claims do not decode.
    #[error("malformed token")]
    Malformed,
    /// The token's algorithm is not one this server accepts for its key.
    #[error("token algorithm {0} is not accepted")]
    Algorithm(String),
    /// The signature does not verify.
    #[error("invalid token signature")]
    Signature,
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("token issuer not accepted")]
    Issuer,
    /// `aud` does not include the configured audience.
    #[error("token audience not accepted")]
    Audience,
    /// A claim Switchyard needs is missing or malformed.
    #[error("token claim `{0}` is missing or invalid")]
    Claim(String),
    /// No JWKS key has the token's `kid`.
    #[error("no key with id {0:?}")]
    UnknownKey(String),
    /// The JWKS could not be fetched.
    #[error("signing keys unavailable: {0}")]
    KeysUnavailable(String),
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    /// Required, and checked, by jsonwebtoken's validation; optional here so that a null `exp`
    /// is reported as the claim it is rather than as a malformed token.
    exp: Option<f64>,
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

/// Verifies bearer tokens.
#[derive(Debug)]
pub struct Verifier {
    issuer: String,
    audience: String,
    leeway: Duration,
    tenant_claim: String,
    hs256: Option<HsKey>,
    jwks: Option<JwksCache>,
    verified: VerifiedTokens,
}

/// Tokens that passed full verification, so that a client reusing its token (every SDK does) is
/// not decoded and checked again on every call. An entry lives until the token expires, and never
/// longer than [`VERIFIED_TOKEN_TTL`], so a key withdrawn from the JWKS stops working within that
/// time. Only verified tokens enter it, so a caller cannot fill it with garbage.
#[derive(Debug, Default)]
struct VerifiedTokens {
    entries: RwLock<HashMap<Box<str>, Verified>>,
}

#[derive(Debug)]
struct Verified {
    principal: Principal,
    /// Unix seconds after which the token is verified again from scratch.
    until: u64,
}

/// The longest a verified token is trusted without verifying it again.
const VERIFIED_TOKEN_TTL: Duration = Duration::from_secs(60);
/// Bound on the cache: past it, expired entries are swept, and if that is not enough, all go.
const VERIFIED_TOKEN_CAPACITY: usize = 10_000;

impl VerifiedTokens {
    fn get(&self, token: &str, now: u64) -> Option<Principal> {
        let entries = self
            .entries
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        entries
            .get(token)
            .filter(|verified| now < verified.until)
            .map(|verified| verified.principal.clone())
    }

    fn insert(&self, token: &str, principal: Principal, until: u64, now: u64) {
        let mut entries = self
            .entries
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        if entries.len() >= VERIFIED_TOKEN_CAPACITY {
            entries.retain(|_, verified| now < verified.until);
            if entries.len() >= VERIFIED_TOKEN_CAPACITY {
                entries.clear();
            }
        }
        entries.insert(token.into(), Verified { principal, until });
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

struct HsKey(DecodingKey);

impl std::fmt::Debug for HsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HsKey(<redacted>)")
    }
}

/// Timeout of a JWKS fetch.
pub(crate) const JWKS_TIMEOUT: Duration = Duration::from_secs(5);

impl Verifier {
    /// A verifier for `config`, which should have been validated.
    pub fn new(config: &AuthConfig) -> Result<Self, reqwest::Error> {
        switchyard_kit::tls::install_crypto_provider();
        let jwks = match &config.jwks_url {
            Some(url) => Some(JwksCache::new(
                url.clone(),
                reqwest::Client::builder()
                    .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")))
                    .build()?,
                config.jwks_refresh_interval,
                config.jwks_max_age,
            )),
            None => None,
        };
        Ok(Verifier {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway,
            tenant_claim: config.tenant_claim.clone(),
            hs256: config
                .hs256_secret
                .as_ref()
                .map(|secret| HsKey(DecodingKey::from_secret(secret.expose_secret().as_bytes()))),
            jwks,
            verified: VerifiedTokens::default(),
        })
    }

    /// Verifies `token` and returns its principal.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let now = unix_now();
        if let Some(principal) = self.verified.get(token, now) {
            return Ok(principal);
        }
        let (principal, expires) = self.verify_afresh(token).await?;
        let until = (expires + self.leeway.as_secs()).min(now + VERIFIED_TOKEN_TTL.as_secs());
        self.verified.insert(token, principal.clone(), until, now);
        Ok(principal)
    }

    /// Full verification, and the token's `exp`.
    async fn verify_afresh(&self, token: &str) -> Result<(Principal, u64), AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let algorithm_name = format!("{:?}", header.alg);
        let key = match header.alg {
            Algorithm::HS256 => match &self.hs256 {
                Some(HsKey(key)) => key.clone(),
                None => return Err(AuthError::Algorithm(algorithm_name)),
            },
            // HS384/HS512 are never configured; an HMAC token must not reach the JWKS path.
            Algorithm::HS384 | Algorithm::HS512 => {
                return Err(AuthError::Algorithm(algorithm_name));
            }
            asymmetric => {
                let Some(jwks) = &self.jwks else {
                    return Err(AuthError::Algorithm(algorithm_name));
                };
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or(AuthError::Claim("kid".into()))?;
                let cached = jwks.key(kid).await?;
                if cached
                    .algorithm
                    .is_some_and(|declared| declared != asymmetric)
                {
                    return Err(AuthError::Algorithm(algorithm_name));
                }
                cached.key
            }
        };

        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway.as_secs();
        let data =
            jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|err| {
                match err.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                    ErrorKind::InvalidIssuer => AuthError::Issuer,
                    ErrorKind::InvalidAudience => AuthError::Audience,
                    ErrorKind::InvalidSignature => AuthError::Signature,
                    ErrorKind::MissingRequiredClaim(claim) => AuthError::Claim(claim.clone()),
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat => {
                        AuthError::Algorithm(algorithm_name.clone())
                    }
                    _ => AuthError::Malformed,
                }
            })?;
        let expires = data
            .claims
            .exp
            .ok_or_else(|| AuthError::Claim("exp".into()))? as u64;
        Ok((self.principal(data.claims)?, expires))
    }

    fn principal(&self, claims: Claims) -> Result<Principal, AuthError> {
        if claims.sub.is_empty() || claims.sub.len() > 256 {
            return Err(AuthError::Claim("sub".into()));
        }
        let tenant = claims
            .extra
            .get(&self.tenant_claim)
            .and_then(serde_json::Value::as_str)
            .filter(|tenant| is_valid_tenant(tenant))
            .ok_or_else(|| AuthError::Claim(self.tenant_claim.clone()))?
            .to_owned();
        Ok(Principal {
            subject: claims.sub,
            tenant,
            scopes: scopes_of(&claims.extra)?,
        })
    }
}

/// Tenant ids appear in storage paths and resource names, so they are kept to a safe alphabet:
/// 1 to 64 ASCII letters, digits, `-`, `_` or `.`, starting with a letter or digit.
pub fn is_valid_tenant(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= 64
        && tenant.starts_with(|c: char| c.is_ascii_alphanumeric())
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Scopes from `scope` (RFC 8693: space-separated) or `scp` (a list or a string).
fn scopes_of(
    extra: &serde_json::Map<String, serde_json::Value>,
) -> Result<BTreeSet<String>, AuthError> {
    let mut scopes = BTreeSet::new();
    for claim in ["scope", "scp"] {
        match extra.get(claim) {
            None => {}
            Some(serde_json::Value::String(text)) => {
                scopes.extend(text.split_whitespace().map(str::to_owned));
            }
            Some(serde_json::Value::Array(items)) => {
                for item in items {
                    let scope = item
                        .as_str()
                        .ok_or_else(|| AuthError::Claim(claim.into()))?;
                    scopes.insert(scope.to_owned());
                }
            }
            Some(_) => return Err(AuthError::Claim(claim.into())),
        }
    }
    Ok(scopes)
}

/// What a development token says.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// `iss`.
    pub issuer: String,
    /// `aud`.
    pub audience: String,
    /// `sub`.
    pub subject: String,
    /// The tenant claim's value.
    pub tenant: String,
    /// The claim that carries the tenant (the configured `auth.tenant_claim`).
    pub tenant_claim: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// How long it is valid.
    pub ttl: Duration,
}

#[derive(Serialize)]
struct MintedClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
    scope: String,
    #[serde(flatten)]
    tenant: serde_json::Map<String, serde_json::Value>,
}

/// Signs an HS256 token with `secret`.
pub fn mint(secret: &[u8], request: &TokenRequest) -> Result<String, jsonwebtoken::errors::Error> {
    let now = unix_now();
    let mut tenant = serde_json::Map::new();
    tenant.insert(
        request.tenant_claim.clone(),
        serde_json::Value::String(request.tenant.clone()),
    );
    let claims = MintedClaims {
        iss: &request.issuer,
        aud: &request.audience,
        sub: &request.subject,
        iat: now,
        nbf: now,
        exp: now + request.ttl.as_secs(),
        scope: request.scopes.join(" "),
        tenant,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_are_restricted_to_a_safe_alphabet() {
        assert!(is_valid_tenant("acme"));
        assert!(is_valid_tenant("acme-prod_1.eu"));
        assert!(!is_valid_tenant(""));
        assert!(!is_valid_tenant("-acme"));
        assert!(!is_valid_tenant("acme/other"));
        assert!(!is_valid_tenant("a b"));
        assert!(!is_valid_tenant(&"a".repeat(65)));
    }

    fn principal(subject: &str) -> Principal {
        Principal {
            subject: subject.into(),
            tenant: "acme".into(),
            scopes: BTreeSet::from(["ai.chat".to_owned()]),
        }
    }

    #[test]
    fn a_verified_token_is_trusted_only_until_its_deadline() {
        let cache = VerifiedTokens::default();
        cache.insert("token", principal("alice"), 1_000, 900);
        assert_eq!(cache.get("token", 999), Some(principal("alice")));
        assert_eq!(cache.get("token", 1_000), None);
        assert_eq!(cache.get("other", 900), None);
    }

    #[test]
    fn a_full_cache_sweeps_expired_entries_then_everything() {
        let cache = VerifiedTokens::default();
        for n in 0..VERIFIED_TOKEN_CAPACITY {
            let until = if n % 2 == 0 { 100 } else { 1_000 };
            cache.insert(&format!("t{n}"), principal("p"), until, 50);
        }
        cache.insert("fresh", principal("p"), 1_000, 500);
        let len = cache.entries.read().unwrap().len();
        assert_eq!(
            len,
            VERIFIED_TOKEN_CAPACITY / 2 + 1,
            "expired entries swept"
        );
        assert!(cache.get("t1", 500).is_some());

        for n in 0..VERIFIED_TOKEN_CAPACITY {
            cache.insert(&format!("u{n}"), principal("p"), 1_000, 500);
        }
        assert!(cache.entries.read().unwrap().len() <= VERIFIED_TOKEN_CAPACITY);
        assert!(
            cache
                .get(&format!("u{}", VERIFIED_TOKEN_CAPACITY - 1), 500)
                .is_some()
        );
    }
}
