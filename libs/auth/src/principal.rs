use std::collections::BTreeSet;

use switchyard_kit::ApiError;

/// Who is calling: established from a verified token, never from the request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`: a user, or a service such as `service:ai`.
    pub subject: String,
    /// The tenant every record the call touches belongs to.
    pub tenant: String,
    /// Granted scopes, such as `credentials.read`.
    pub scopes: BTreeSet<String>,
}

impl Principal {
    /// Whether `scope` is granted, directly or by a wildcard (`credentials.*`, or `*`).
    pub fn has_scope(&self, scope: &str) -> bool {
        if self.scopes.contains(scope) || self.scopes.contains("*") {
            return true;
        }
        scope
            .rsplit_once('.')
            .is_some_and(|(prefix, _)| self.scopes.contains(&format!("{prefix}.*")))
    }
}

/// The principal of a request that passed the auth layer.
pub fn principal<T>(request: &tonic::Request<T>) -> Result<&Principal, ApiError> {
    request
        .extensions()
        .get::<Principal>()
        // Every RPC passes the auth layer, so a missing principal is a wiring bug, not the caller's.
        .ok_or_else(|| ApiError::internal("request reached a handler without a principal"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(scopes: &[&str]) -> Principal {
        Principal {
            subject: "s".into(),
            tenant: "t".into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn scopes_match_exactly_or_by_wildcard() {
        assert!(with(&["credentials.read"]).has_scope("credentials.read"));
        assert!(!with(&["credentials.read"]).has_scope("credentials.access"));
        assert!(with(&["credentials.*"]).has_scope("credentials.access"));
        assert!(!with(&["credentials.*"]).has_scope("billing.read"));
        assert!(with(&["*"]).has_scope("anything.at.all"));
        assert!(!with(&[]).has_scope("credentials.read"));
    }
}
