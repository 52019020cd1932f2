use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use switchyard_kit::{ApiError, Authenticator, Target};
use tonic::Code;

use crate::{AuthError, Verifier};

/// The scope each method of one gRPC service needs: `(method name, scope)` pairs, declared once
/// per service next to its implementation.
#[derive(Debug, Clone, Copy)]
pub struct ScopeTable {
    /// The full service name, e.g. `switchyard.credentials.v1.CredentialService`.
    pub service: &'static str,
    /// `(method, scope)` for every method of the service.
    pub methods: &'static [(&'static str, &'static str)],
    /// Methods whose scope the handler checks itself, so that it can record refusals (an audited
    /// method): the layer only authenticates them.
    pub checked_by_handler: &'static [&'static str],
}

/// Services reachable without a token when `auth.public_health` is on.
pub const PUBLIC_SERVICES: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The [`Authenticator`] of a process: verifies the bearer token, requires the method's scope,
/// and hands the principal to the handler.
#[derive(Debug)]
pub struct Authorizer {
    verifier: Arc<Verifier>,
    scopes: HashMap<String, &'static str>,
    checked_by_handler: HashSet<String>,
    public_health: bool,
}

impl Authorizer {
    /// Combines the scope tables of the services a process hosts.
    pub fn new(verifier: Arc<Verifier>, tables: &[ScopeTable], public_health: bool) -> Self {
        let scopes = tables
            .iter()
            .flat_map(|table| {
                table
                    .methods
                    .iter()
                    .map(move |(method, scope)| (format!("/{}/{method}", table.service), *scope))
            })
            .collect();
        let checked_by_handler = tables
            .iter()
            .flat_map(|table| {
                table
                    .checked_by_handler
                    .iter()
                    .map(move |method| format!("/{}/{method}", table.service))
            })
            .collect();
        Authorizer {
            verifier,
            scopes,
            checked_by_handler,
            public_health,
        }
    }

    /// The scope a method path needs, if it is declared.
    pub fn required_scope(&self, path: &str) -> Option<&'static str> {
        self.scopes.get(path).copied()
    }

    fn is_public(&self, path: &str) -> bool {
        self.public_health && is_health_or_reflection(path)
    }
}

fn is_health_or_reflection(path: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(service, _)| PUBLIC_SERVICES.contains(&service))
}

/// What a request needs besides a valid token.
enum Requirement<'a> {
    Scope(&'a str),
    TokenOnly,
    /// No table declares the method: it is refused, so a method left out of a table is closed
    /// rather than open to every token.
    Undeclared,
}

#[async_trait]
impl Authenticator for Authorizer {
    async fn authorize(
        &self,
        target: Target<'_>,
        headers: &http::HeaderMap,
        extensions: &mut http::Extensions,
    ) -> Result<(), ApiError> {
        let required = match target {
            Target::Grpc(path) if self.is_public(path) => return Ok(()),
            Target::Grpc(path)
                if is_health_or_reflection(path) || self.checked_by_handler.contains(path) =>
            {
                Requirement::TokenOnly
            }
            Target::Grpc(path) => self
                .required_scope(path)
                .map_or(Requirement::Undeclared, Requirement::Scope),
            Target::Http { scope } => Requirement::Scope(scope),
        };
        let token = bearer_token(headers)
            .ok_or(AuthError::Missing)
            .map_err(rejection)?;
        let principal = self.verifier.verify(token).await.map_err(rejection)?;

        let span = tracing::Span::current();
        span.record("tenant", principal.tenant.as_str());
        span.record("principal", principal.subject.as_str());

        match required {
            Requirement::Scope(scope) if !principal.has_scope(scope) => {
                return Err(ApiError::new(
                    Code::PermissionDenied,
                    "MISSING_SCOPE",
                    format!("this call needs the {scope} scope"),
                )
                .with_metadata("required_scope", scope));
            }
            Requirement::Undeclared => {
                return Err(ApiError::new(
                    Code::Unimplemented,
                    "UNKNOWN_METHOD",
                    "no such method",
                ));
            }
            Requirement::Scope(_) | Requirement::TokenOnly => {}
        }
        extensions.insert(principal);
        Ok(())
    }
}

/// The error a caller gets for a token that was refused, or could not be checked.
pub fn rejection(err: AuthError) -> ApiError {
    match err {
        // The caller's token may be fine; the identity provider is what failed.
        // The cause (URL, HTTP error) is logged where the fetch failed, not told to callers.
        AuthError::KeysUnavailable(_) => ApiError::new(
            Code::Unavailable,
            "AUTH_KEYS_UNAVAILABLE",
            "the token signing keys are unavailable; retry later",
        )
        .with_retry_after(std::time::Duration::from_secs(1)),
        other => ApiError::unauthenticated(other.to_string()),
    }
}

/// The token of an `Authorization: Bearer` header, if there is one.
pub fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}
