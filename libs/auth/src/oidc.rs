//! OpenID Connect ID tokens, checked as the core specification says (§3.1.3.7): signed by a key
//! of the issuer's JWKS (never HMAC), `iss` the issuer, `aud` the client, not expired, and the
//! `nonce` the one this login sent.

use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};

use crate::AuthError;
use crate::jwks::JwksCache;

/// Checks ID tokens of one issuer for one client.
#[derive(Debug)]
pub struct IdTokenVerifier {
    issuer: String,
    client_id: String,
    jwks: JwksCache,
}

impl IdTokenVerifier {
    /// ID tokens of `issuer` for `client_id`, with keys from `jwks_url`.
    pub fn new(issuer: &str, client_id: &str, jwks_url: &str, http: reqwest::Client) -> Self {
        IdTokenVerifier {
            issuer: issuer.to_owned(),
            client_id: client_id.to_owned(),
            jwks: JwksCache::new(
                jwks_url.to_owned(),
                http,
                Duration::from_secs(30),
                Duration::from_secs(3600),
            ),
        }
    }

    /// The claims of `id_token` if it verifies and carries `nonce`.
    pub async fn verify(
        &self,
        id_token: &str,
        nonce: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, AuthError> {
        let header = jsonwebtoken::decode_header(id_token).map_err(|_| AuthError::Malformed)?;
        if matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err(AuthError::Algorithm(format!("{:?}", header.alg)));
        }
        let kid = header
            .kid
            .as_deref()
            .ok_or(AuthError::Claim("kid".into()))?;
        let key = self.jwks.key(kid).await?;
        if key.algorithm.is_some_and(|declared| declared != header.alg) {
            return Err(AuthError::Algorithm(format!("{:?}", header.alg)));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.client_id]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            id_token,
            &key.key,
            &validation,
        )
        .map_err(|err| match err.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::InvalidIssuer => AuthError::Issuer,
            ErrorKind::InvalidAudience => AuthError::Audience,
            ErrorKind::InvalidSignature => AuthError::Signature,
            ErrorKind::MissingRequiredClaim(claim) => AuthError::Claim(claim.clone()),
            _ => AuthError::Malformed,
        })?;
        match data.claims.get("nonce").and_then(|n| n.as_str()) {
            Some(sent) if sent == nonce => Ok(data.claims),
            _ => Err(AuthError::Claim("nonce".into())),
        }
    }
}
