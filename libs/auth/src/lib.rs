//! Authentication and authorization shared by every Switchyard service.
//!
//! - [`Verifier`] checks bearer JWTs with `jsonwebtoken`: HS256 with a shared secret (the
//!   all-in-one default), and RS256/ES256/EdDSA (and their siblings) with keys from a JWKS URL,
//!   cached by `kid`, refetched on an unknown `kid` at most once per refresh interval. `iss`,
//!   `aud`, `exp` and `nbf` are checked with a small leeway.
//! - Verified claims become a [`Principal`] (subject, tenant, scopes), which handlers read from
//!   the request extensions with [`principal`].
//! - Each service declares the scope of each of its methods in one [`ScopeTable`];
//!   [`Authorizer`] puts them together and implements [`switchyard_kit::Authenticator`], which the
//!   gRPC host and the HTTP edge both call.
//! - [`mint`] signs development tokens (`switchyard token`), and the tokens of SSO logins.
//! - [`IdTokenVerifier`] checks OpenID Connect ID tokens against an issuer's JWKS and a nonce.

mod authorizer;
mod config;
mod jwks;
mod oidc;
mod principal;
mod verifier;

pub use authorizer::{Authorizer, PUBLIC_SERVICES, ScopeTable, bearer_token, rejection};
pub use config::AuthConfig;
pub use oidc::IdTokenVerifier;
pub use principal::{Principal, principal};
pub use verifier::{AuthError, TokenRequest, Verifier, is_valid_tenant, mint};
