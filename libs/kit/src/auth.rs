//! The seam between the server plumbing and authentication: kit calls an [`Authenticator`] for
//! every request; `switchyard-auth` implements it (JWT verification, principals, scope tables).

use async_trait::async_trait;

use crate::ApiError;

/// What a request is trying to reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// A gRPC method by its path, `/package.Service/Method`.
    Grpc(&'a str),
    /// An HTTP route that needs `scope`.
    Http {
        /// The scope the route requires.
        scope: &'a str,
    },
}

/// Decides whether a request may proceed.
#[async_trait]
pub trait Authenticator: Send + Sync + std::fmt::Debug + 'static {
    /// Checks the request's credentials for `target`. On success it may add what handlers need
    /// (the principal) to `extensions`; on failure the error is returned to the caller as is.
    async fn authorize(
        &self,
        target: Target<'_>,
        headers: &http::HeaderMap,
        extensions: &mut http::Extensions,
    ) -> Result<(), ApiError>;
}
