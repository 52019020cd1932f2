//! Input rules. Every check adds a violation naming the field, so a caller learns everything
//! wrong with a request at once.

use std::collections::BTreeMap;

use switchyard_kit::FieldViolation;

use super::error::{CredentialError, Result};
use super::model::{CredentialSpec, Kind, Micros};

/// Most labels on one credential.
pub const MAX_LABELS: usize = 64;
/// Most subjects on an access policy.
pub const MAX_ALLOWED_SUBJECTS: usize = 100;
/// Most versions a policy may retain.
pub const MAX_RETAINED_VERSIONS: i64 = 100;
/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME: usize = 256;
/// Longest request id.
pub const MAX_REQUEST_ID: usize = 128;
/// Highest version number: far beyond any rotation schedule, and safe from overflow.
pub const MAX_VERSION: i64 = 1_000_000_000;

/// Collects violations.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// Adds one.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// `Err` if any were added.
    pub fn finish(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(CredentialError::Invalid(self.0))
        }
    }
}

/// A DNS-label-like identifier: 1 to `max` characters, lowercase letters, digits and `-`,
/// starting with a letter, not ending with `-`.
pub fn is_identifier(id: &str, max: usize) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= max
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// Checks a credential id.
pub fn credential_id(violations: &mut Violations, field: &str, id: &str) {
    if !is_identifier(id, 63) {
        violations.add(
            field,
            "must be 1-63 lowercase letters, digits or hyphens, start with a letter and not end with a hyphen",
        );
    }
}

/// Parses `credentials/{id}`.
pub fn parse_credential_name(field: &str, name: &str) -> Result<String> {
    match name.strip_prefix("credentials/") {
        Some(id) if is_identifier(id, 63) => Ok(id.to_owned()),
        _ => Err(CredentialError::invalid(
            field,
            "must be credentials/{credential_id}",
        )),
    }
}

/// Parses `credentials/{id}` or `credentials/{id}/versions/{n}`; the version is `None` for the
/// first form.
pub fn parse_access_name(field: &str, name: &str) -> Result<(String, Option<i64>)> {
    if let Some((credential, version)) = name.split_once("/versions/") {
        let id = parse_credential_name(field, credential)?;
        let version = parse_version_number(field, version)?;
        return Ok((id, Some(version)));
    }
    Ok((parse_credential_name(field, name)?, None))
}

/// Parses `credentials/{id}/versions/{n}`.
pub fn parse_version_name(field: &str, name: &str) -> Result<(String, i64)> {
    match parse_access_name(field, name)? {
        (id, Some(version)) => Ok((id, version)),
        (_, None) => Err(CredentialError::invalid(
            field,
            "must be credentials/{credential_id}/versions/{version}",
        )),
    }
}

fn parse_version_number(field: &str, text: &str) -> Result<i64> {
    match text.parse::<i64>() {
        Ok(version) if version >= 1 && !text.starts_with('+') => Ok(version),
        _ => Err(CredentialError::invalid(
            field,
            "the version must be a positive integer",
        )),
    }
}

fn is_label_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn is_label_value(value: &str) -> bool {
    value.is_empty() || is_label_key(value)
}

/// Checks the caller-settable metadata; `prefix` is the message path (`credential`). The expiry
/// must lie in the future only when it is being set (`check_expiry`).
pub fn spec(
    violations: &mut Violations,
    prefix: &str,
    spec: &CredentialSpec,
    now: Micros,
    check_expiry: bool,
) {
    if spec.display_name.contains('\0') {
        violations.add(
            format!("{prefix}.display_name"),
            "must not contain NUL characters",
        );
    }
    if spec.display_name.chars().count() > MAX_DISPLAY_NAME {
        violations.add(
            format!("{prefix}.display_name"),
            format!("must be at most {MAX_DISPLAY_NAME} characters"),
        );
    }
    let provider_ok = spec.provider.len() <= 63
        && spec.provider.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        });
    if !provider_ok {
        violations.add(
            format!("{prefix}.provider"),
            "must be at most 63 lowercase letters, digits, '-', '_' or '.'",
        );
    }
    labels(violations, &format!("{prefix}.labels"), &spec.labels);
    if check_expiry
        && let Some(expiry) = spec.expire_time
        && expiry <= now
    {
        violations.add(format!("{prefix}.expire_time"), "must be in the future");
    }
    if spec.rotation.rotation_period_secs < 0 {
        violations.add(
            format!("{prefix}.rotation_policy.rotation_period"),
            "must not be negative",
        );
    }
    if !(0..=MAX_RETAINED_VERSIONS).contains(&spec.rotation.retained_versions) {
        violations.add(
            format!("{prefix}.rotation_policy.retained_versions"),
            format!("must be between 0 (server default) and {MAX_RETAINED_VERSIONS}"),
        );
    }
    if spec.allowed_subjects.len() > MAX_ALLOWED_SUBJECTS {
        violations.add(
            format!("{prefix}.access_policy.allowed_subjects"),
            format!("at most {MAX_ALLOWED_SUBJECTS} subjects"),
        );
    }
    if spec
        .allowed_subjects
        .iter()
        .any(|s| s.is_empty() || s.len() > 256 || s.contains('\0'))
    {
        violations.add(
            format!("{prefix}.access_policy.allowed_subjects"),
            "each subject must be 1-256 bytes, without NUL characters",
        );
    }
}

/// Checks labels.
pub fn labels(violations: &mut Violations, field: &str, labels: &BTreeMap<String, String>) {
    if labels.len() > MAX_LABELS {
        violations.add(field, format!("at most {MAX_LABELS} labels"));
    }
    for (key, value) in labels {
        // The key is echoed in the field path: cut, so a huge key cannot make a huge error.
        let shown: String = key.chars().take(64).collect();
        if !is_label_key(key) {
            violations.add(
                format!("{field}[{shown:?}]"),
                "keys are 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
            );
        }
        if !is_label_value(value) {
            violations.add(
                format!("{field}[{shown:?}]"),
                "values are empty or 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
            );
        }
    }
}

/// Checks secret material against the size bound and its kind's shape.
pub fn payload(
    violations: &mut Violations,
    field: &str,
    kind: Kind,
    data: &[u8],
    max_bytes: usize,
) {
    if data.is_empty() {
        violations.add(field, "must not be empty");
        return;
    }
    if data.len() > max_bytes {
        violations.add(field, format!("must be at most {max_bytes} bytes"));
        return;
    }
    let required: &[&str] = match kind {
        Kind::OauthTokenSet => &["access_token"],
        Kind::UsernamePassword => &["username", "password"],
        Kind::ServiceAccountJson => &[],
        Kind::ApiKey | Kind::WebhookSigningSecret | Kind::Generic => return,
    };
    // The parsed document holds the secret: it is dropped here and never logged.
    let Ok(serde_json::Value::Object(object)) = serde_json::from_slice::<serde_json::Value>(data)
    else {
        violations.add(field, format!("a {} must be a JSON object", kind.as_str()));
        return;
    };
    for key in required {
        if !object.get(*key).is_some_and(serde_json::Value::is_string) {
            violations.add(
                field,
                format!("a {} must have a string \"{key}\"", kind.as_str()),
            );
        }
    }
}

/// Checks a request id.
pub fn request_id(violations: &mut Violations, field: &str, request_id: &str) {
    text(violations, field, request_id, MAX_REQUEST_ID);
}

/// Checks free text bound for storage: at most `max` bytes and no NUL, which PostgreSQL refuses.
pub fn text(violations: &mut Violations, field: &str, value: &str, max: usize) {
    if value.len() > max {
        violations.add(field, format!("must be at most {max} bytes"));
    }
    if value.contains('\0') {
        violations.add(field, "must not contain NUL characters");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(is_identifier("openai-prod", 63));
        assert!(is_identifier("a", 63));
        assert!(!is_identifier("", 63));
        assert!(!is_identifier("1abc", 63));
        assert!(!is_identifier("abc-", 63));
        assert!(!is_identifier("ABC", 63));
        assert!(!is_identifier("a_b", 63));
        assert!(!is_identifier(&"a".repeat(64), 63));
    }

    #[test]
    fn names() {
        assert_eq!(
            parse_access_name("n", "credentials/x").unwrap(),
            ("x".into(), None)
        );
        assert_eq!(
            parse_access_name("n", "credentials/x/versions/3").unwrap(),
            ("x".into(), Some(3))
        );
        for bad in [
            "credentials/",
            "x",
            "credentials/x/versions/0",
            "credentials/x/versions/-1",
            "credentials/x/versions/+1",
            "credentials/x/versions/a",
            "credentials/X",
            "credentials/x/y",
        ] {
            assert!(parse_access_name("n", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn payload_shapes() {
        let ok = |kind, data: &[u8], max| {
            let mut v = Violations::default();
            payload(&mut v, "payload.data", kind, data, max);
            v.finish().is_ok()
        };
        assert!(ok(Kind::ApiKey, b"sk-123", 16));
        assert!(!ok(Kind::ApiKey, b"", 16));
        assert!(!ok(Kind::ApiKey, &[b'x'; 17], 16));
        assert!(ok(
            Kind::UsernamePassword,
            br#"{"username":"a","password":"b"}"#,
            1024
        ));
        assert!(!ok(Kind::UsernamePassword, br#"{"username":"a"}"#, 1024));
        assert!(!ok(Kind::OauthTokenSet, br#"{"refresh_token":"r"}"#, 1024));
        assert!(ok(
            Kind::ServiceAccountJson,
            br#"{"type":"service_account"}"#,
            1024
        ));
        assert!(!ok(Kind::ServiceAccountJson, b"[1]", 1024));
    }
}
