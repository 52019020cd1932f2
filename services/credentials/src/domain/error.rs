use switchyard_kit::FieldViolation;

use super::model::Micros;

/// Everything that can go wrong in the credentials domain.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The request is invalid; each violation names a field.
    #[error("invalid request: {0:?}")]
    Invalid(Vec<FieldViolation>),
    /// No such resource for this tenant.
    #[error("{0} not found")]
    NotFound(String),
    /// A credential with that id exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The etag given does not match.
    #[error("the etag of {0} does not match; read it again")]
    EtagMismatch(String),
    /// The credential expired.
    #[error("{name} expired")]
    Expired {
        /// The credential.
        name: String,
        /// When it expired.
        expired_at: Micros,
    },
    /// The credential or version cannot be used in its state.
    #[error("{name} is {state}")]
    Unavailable {
        /// The resource.
        name: String,
        /// Its state, e.g. "disabled" or "deleted".
        state: &'static str,
    },
    /// The caller's token lacks the scope the call needs.
    #[error("this call needs the {0} scope")]
    MissingScope(&'static str),
    /// The caller is not on the access policy.
    #[error("{0} may not be accessed by this caller")]
    AccessDenied(String),
    /// The operation is not allowed in the resource's current state.
    #[error("{0}")]
    Precondition(String),
    /// The backup bundle is corrupt, truncated, or the passphrase is wrong.
    #[error("backup bundle: {0}")]
    BackupInvalid(String),
    /// The secret store failed.
    #[error(transparent)]
    Secrets(#[from] switchyard_secrets::SecretError),
    /// The record store failed.
    #[error(transparent)]
    Store(#[from] switchyard_store::StoreError),
}

impl CredentialError {
    /// The gRPC code name of this error: the API layer maps errors through it and the audit log
    /// records it, so both always agree.
    pub fn result_code(&self) -> &'static str {
        use switchyard_secrets::SecretError;
        match self {
            CredentialError::Invalid(_) | CredentialError::BackupInvalid(_) => "INVALID_ARGUMENT",
            CredentialError::NotFound(_) => "NOT_FOUND",
            CredentialError::AlreadyExists(_) => "ALREADY_EXISTS",
            CredentialError::EtagMismatch(_) => "ABORTED",
            CredentialError::Expired { .. }
            | CredentialError::Unavailable { .. }
            | CredentialError::Precondition(_) => "FAILED_PRECONDITION",
            CredentialError::MissingScope(_) | CredentialError::AccessDenied(_) => {
                "PERMISSION_DENIED"
            }
            CredentialError::Secrets(
                SecretError::Unavailable(_) | SecretError::Unauthorized(_),
            ) => "UNAVAILABLE",
            CredentialError::Secrets(SecretError::Integrity(_)) => "DATA_LOSS",
            CredentialError::Secrets(_) | CredentialError::Store(_) => "INTERNAL",
        }
    }

    /// What the audit log records of this error, which the tenant can read: the message of
    /// errors about the request, and only a generic phrase for failures of the stores, whose
    /// messages can name hosts, paths or database details.
    pub fn audit_detail(&self) -> String {
        match self {
            CredentialError::Secrets(_) => "secret store error".to_owned(),
            CredentialError::Store(_) => "database error".to_owned(),
            other => other.to_string(),
        }
    }

    /// One invalid field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        CredentialError::Invalid(vec![FieldViolation::new(field, description)])
    }
}

/// A result of the credentials domain.
pub type Result<T, E = CredentialError> = std::result::Result<T, E>;
