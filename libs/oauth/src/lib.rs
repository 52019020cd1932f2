//! OAuth2 for Switchyard's connections to outside platforms.
//!
//! - [`Profile`]: each provider's endpoints, scope syntax and quirks (GitHub, GitLab and
//!   self-managed GitLab, Slack v2, Discord, Google).
//! - [`pkce`]: RFC 7636 S256 verifiers and challenges.
//! - [`state`]: the `state` parameter, signed and expiring, carrying what the callback needs.
//! - [`Client`]: the authorize URL, code exchange, refresh, revocation and the account behind a
//!   token, over one `reqwest` client, with each provider's error shapes (GitHub and Slack answer
//!   errors with HTTP 200) mapped to one [`OAuthError`]; `invalid_grant` is told apart, because
//!   it means the user must authorize again.
//!
//! ADR 0009 says why this is a thin client of our own rather than the `oauth2` crate.

pub mod pkce;
mod profile;
pub mod state;
mod token;

pub use profile::{Profile, Provider, Revocation};
pub use token::{Account, Client, ClientCredentials, OAuthError, TokenSet};
