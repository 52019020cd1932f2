//! Mapping of vaultrs errors to [`SecretError`].
//!
//! Vault's `errors` messages are passed on: they describe the request (a path, a policy, a
//! sealed server) and never echo what was sent. Response bodies and parse errors are not, since a
//! response that failed to parse may hold a decrypted secret.

use rustify::errors::ClientError as HttpError;
use vaultrs::error::ClientError;

use crate::SecretError;

/// The HTTP status Vault answered with, if it answered.
pub(super) fn status(err: &ClientError) -> Option<u16> {
    match err {
        ClientError::APIError { code, .. } => Some(*code),
        ClientError::RestClientError {
            source: HttpError::ServerResponseError { code, .. },
        } => Some(*code),
        _ => None,
    }
}

/// Whether a KV v2 write was refused because `cas` did not match the current version.
pub(super) fn is_cas_mismatch(err: &ClientError) -> bool {
    match err {
        ClientError::APIError { code: 400, errors } => errors
            .iter()
            .any(|message| message.contains("check-and-set")),
        _ => false,
    }
}

/// Maps an error of `action` (such as "writing secret acme/x/0192...").
pub(super) fn map(err: ClientError, action: &str) -> SecretError {
    match err {
        ClientError::APIError { code, errors } => from_status(code, &errors, action),
        ClientError::RestClientError { source } => match source {
            HttpError::ServerResponseError { code, .. } => from_status(code, &[], action),
            HttpError::RequestError { source, .. } => {
                SecretError::Unavailable(format!("{action}: Vault cannot be reached: {source:#}"))
            }
            HttpError::ResponseError { .. } => {
                SecretError::Unavailable(format!("{action}: reading Vault's response failed"))
            }
            HttpError::ResponseParseError { .. } | HttpError::ResponseConversionError { .. } => {
                unparsable(action)
            }
            other => SecretError::Config(format!("{action}: {other}")),
        },
        ClientError::JsonParseError { .. } => unparsable(action),
        ClientError::ResponseEmptyError | ClientError::ResponseDataEmptyError => {
            SecretError::Unavailable(format!("{action}: Vault sent an empty response"))
        }
        other => SecretError::Config(format!("{action}: {other}")),
    }
}

/// Maps an error of Transit decrypt or rewrap on `secret`: Vault answers 400 to a ciphertext
/// that does not decrypt (tampered, or under a version below `min_decryption_version`).
pub(super) fn map_decrypt(err: ClientError, secret: &str, action: &str) -> SecretError {
    if status(&err) == Some(400) {
        return SecretError::Integrity(secret.to_owned());
    }
    map(err, &format!("{action} secret {secret}"))
}

/// Maps an error of a login: Vault answers 400 to wrong AppRole credentials, which is a refusal
/// like 401 and 403.
pub(super) fn map_login(err: ClientError, action: &str) -> SecretError {
    match status(&err) {
        Some(400) => match map(err, action) {
            SecretError::Config(detail) => SecretError::Unauthorized(detail),
            other => other,
        },
        _ => map(err, action),
    }
}

fn unparsable(action: &str) -> SecretError {
    SecretError::Unavailable(format!("{action}: Vault's response could not be parsed"))
}

fn from_status(code: u16, errors: &[String], action: &str) -> SecretError {
    // Vault's messages are often multi-line ("1 error occurred:\n\t* ..."): one line reads better.
    let messages = errors
        .iter()
        .map(|message| message.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("; ");
    let detail = if messages.is_empty() {
        format!("{action}: Vault answered {code}")
    } else {
        format!("{action}: Vault answered {code}: {messages}")
    };
    match code {
        401 | 403 => SecretError::Unauthorized(detail),
        // 412: a performance standby has not caught up yet; 429: a rate limit quota.
        412 | 429 | 500..=599 => SecretError::Unavailable(detail),
        _ => SecretError::Config(detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, errors: &[&str]) -> ClientError {
        ClientError::APIError {
            code,
            errors: errors.iter().map(|e| (*e).to_owned()).collect(),
        }
    }

    #[test]
    fn statuses_map_to_kinds() {
        assert!(matches!(
            map(api(403, &["permission denied"]), "reading"),
            SecretError::Unauthorized(m) if m.contains("permission denied")
        ));
        assert!(matches!(
            map(api(503, &["Vault is sealed"]), "reading"),
            SecretError::Unavailable(m) if m.contains("Vault is sealed")
        ));
        assert!(matches!(
            map(api(500, &["1 error occurred:\n\t* internal error\n\n"]), "reading"),
            SecretError::Unavailable(m) if m.ends_with("1 error occurred: * internal error")
        ));
        assert!(matches!(map(api(405, &[]), "x"), SecretError::Config(_)));
        assert!(matches!(
            map_decrypt(api(400, &["cipher: message authentication failed"]), "a/b", "decrypting"),
            SecretError::Integrity(secret) if secret == "a/b"
        ));
        assert!(matches!(
            map_login(api(400, &["invalid role or secret ID"]), "logging in"),
            SecretError::Unauthorized(_)
        ));
        assert!(is_cas_mismatch(&api(
            400,
            &["check-and-set parameter did not match the current version"]
        )));
        assert!(!is_cas_mismatch(&api(400, &["no data provided"])));
    }
}
