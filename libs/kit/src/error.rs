//! The error model (DESIGN.md §5).
//!
//! Domain crates define typed errors with `thiserror` and convert them into [`ApiError`] in one
//! place (their `api` module). `ApiError` becomes a `tonic::Status` with `google.rpc.ErrorInfo`
//! (reason in UPPER_SNAKE_CASE, a domain naming the service, metadata), `BadRequest` field
//! violations and `RetryInfo`, or the same information as an HTTP JSON error body.
//! Internal errors are logged where they happen, with their location and the request id, and
//! reach the caller as an opaque message carrying only that request id.

use std::collections::HashMap;
use std::panic::Location;
use std::time::Duration;

use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

use crate::telemetry::current_request_id;

/// The ErrorInfo domain used when a service does not set its own.
pub const DEFAULT_DOMAIN: &str = "switchyard.dev";

/// One invalid field of a request, by its dotted path (`credential.labels`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Dotted path of the field in the request message.
    pub field: String,
    /// What is wrong with it and what is expected.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        FieldViolation {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// An error on its way to a caller.
#[derive(Debug, Clone)]
pub struct ApiError {
    code: Code,
    reason: &'static str,
    domain: &'static str,
    message: String,
    // Boxed so that `Result<T, ApiError>` stays small on the success path.
    details: Box<Details>,
}

#[derive(Debug, Clone, Default)]
struct Details {
    metadata: Vec<(String, String)>,
    violations: Vec<FieldViolation>,
    retry_after: Option<Duration>,
}

impl ApiError {
    /// An error with a code, an ErrorInfo reason (UPPER_SNAKE_CASE) and a message for people.
    pub fn new(code: Code, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            domain: DEFAULT_DOMAIN,
            message: message.into(),
            details: Box::default(),
        }
    }

    /// INVALID_ARGUMENT with field violations.
    pub fn invalid_argument(violations: Vec<FieldViolation>) -> Self {
        let message = violations
            .iter()
            .map(|v| format!("invalid {}: {}", v.field, v.description))
            .collect::<Vec<_>>()
            .join("; ");
        let mut err = ApiError::new(Code::InvalidArgument, "INVALID_ARGUMENT", message);
        err.details.violations = violations;
        err
    }

    /// NOT_FOUND for a resource name.
    pub fn not_found(resource: &str) -> Self {
        ApiError::new(Code::NotFound, "NOT_FOUND", format!("{resource} not found"))
            .with_metadata("resource", resource)
    }

    /// UNAUTHENTICATED.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        ApiError::new(Code::Unauthenticated, "UNAUTHENTICATED", message)
    }

    /// An unexpected failure. The cause is logged here, with the location of the code that
    /// turned it into an `ApiError` and the request id; the caller gets only the request id, so
    /// no internal detail (or secret) leaks.
    #[track_caller]
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        let location = Location::caller();
        let request_id = current_request_id();
        tracing::error!(
            error = %cause,
            location = %format_args!("{}:{}", location.file(), location.line()),
            request_id = request_id.as_deref().unwrap_or(""),
            "internal error"
        );
        let message = match request_id {
            Some(id) => format!("internal error (request id {id})"),
            None => "internal error".to_owned(),
        };
        ApiError::new(Code::Internal, "INTERNAL", message)
    }

    /// Sets the ErrorInfo domain, e.g. `credentials.switchyard.dev`.
    pub fn with_domain(mut self, domain: &'static str) -> Self {
        self.domain = domain;
        self
    }

    /// Adds an ErrorInfo metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.details.metadata.push((key.into(), value.into()));
        self
    }

    /// Adds a RetryInfo delay.
    pub fn with_retry_after(mut self, delay: Duration) -> Self {
        self.details.retry_after = Some(delay);
        self
    }

    /// The gRPC code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The ErrorInfo reason.
    pub fn reason(&self) -> &'static str {
        self.reason
    }

    /// The message for people.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The field violations.
    pub fn violations(&self) -> &[FieldViolation] {
        &self.details.violations
    }

    /// The retry delay, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        self.details.retry_after
    }

    /// The status a gRPC caller receives.
    pub fn into_status(self) -> tonic::Status {
        let Details {
            metadata,
            violations,
            retry_after,
        } = *self.details;
        let metadata: HashMap<String, String> = metadata.into_iter().collect();
        let mut details = ErrorDetails::with_error_info(self.reason, self.domain, metadata);
        if !violations.is_empty() {
            let violations = violations
                .into_iter()
                .map(|v| tonic_types::FieldViolation::new(v.field, v.description));
            details.set_bad_request(violations.collect::<Vec<_>>());
        }
        if let Some(delay) = retry_after {
            details.set_retry_info(Some(delay));
        }
        tonic::Status::with_error_details(self.code, self.message, details)
    }

    /// The HTTP status of the same error (the mapping of google.rpc.Code to HTTP).
    pub fn http_status(&self) -> http::StatusCode {
        http_status_of(self.code)
    }

    /// The JSON body of the HTTP edge, in the shape of Google's JSON error format:
    /// `{"error": {"code": 404, "status": "NOT_FOUND", "message": ..., "details": [...]}}`.
    pub fn to_json(&self) -> serde_json::Value {
        error_json(
            self.code,
            &self.message,
            Some((self.reason, self.domain, &self.details.metadata)),
            &self.details.violations,
            self.details.retry_after,
        )
    }
}

/// The `google.rpc.ErrorInfo` of an error: reason, domain and metadata.
type Info<'a> = (&'a str, &'a str, &'a [(String, String)]);

/// The one JSON error shape of the HTTP edge, from the parts of a `google.rpc.Status`.
fn error_json(
    code: Code,
    message: &str,
    info: Option<Info<'_>>,
    violations: &[FieldViolation],
    retry_after: Option<Duration>,
) -> serde_json::Value {
    let mut details = Vec::new();
    if let Some((reason, domain, metadata)) = info {
        let metadata: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        details.push(serde_json::json!({
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": reason,
            "domain": domain,
            "metadata": metadata,
        }));
    }
    if !violations.is_empty() {
        let violations: Vec<_> = violations
            .iter()
            .map(|v| serde_json::json!({"field": v.field, "description": v.description}))
            .collect();
        details.push(serde_json::json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": violations,
        }));
    }
    if let Some(delay) = retry_after {
        details.push(serde_json::json!({
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": format!("{}s", delay.as_secs_f64()),
        }));
    }
    serde_json::json!({
        "error": {
            "code": http_status_of(code).as_u16(),
            "status": code_name(code),
            "message": message,
            "details": details,
        }
    })
}

/// A gRPC status (a service's answer, with its `google.rpc` details) as the HTTP edge answers
/// it: the mapped HTTP status, the one JSON error shape, and `Retry-After` from `RetryInfo`.
pub fn status_response(status: &tonic::Status) -> axum::response::Response {
    let (body, retry_after) = status_body(status);
    with_retry_after(
        axum::response::IntoResponse::into_response((
            http_status_of(status.code()),
            axum::Json(body),
        )),
        retry_after,
    )
}

/// The one JSON error shape of a gRPC status, for an error that cannot be a whole response (a
/// stream that fails after its first message).
pub fn status_json(status: &tonic::Status) -> serde_json::Value {
    status_body(status).0
}

fn status_body(status: &tonic::Status) -> (serde_json::Value, Option<Duration>) {
    let details = status.get_error_details();
    let metadata: Vec<(String, String)> = details
        .error_info()
        .map(|info| {
            let mut pairs: Vec<_> = info
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            pairs.sort();
            pairs
        })
        .unwrap_or_default();
    let info = details.error_info().map(|info| {
        (
            info.reason.as_str(),
            info.domain.as_str(),
            metadata.as_slice(),
        )
    });
    let violations: Vec<FieldViolation> = details
        .bad_request()
        .map(|bad| {
            bad.field_violations
                .iter()
                .map(|v| FieldViolation::new(v.field.clone(), v.description.clone()))
                .collect()
        })
        .unwrap_or_default();
    let retry_after = details.retry_info().and_then(|retry| retry.retry_delay);
    let body = error_json(
        status.code(),
        status.message(),
        info,
        &violations,
        retry_after,
    );
    (body, retry_after)
}

fn with_retry_after(
    mut response: axum::response::Response,
    delay: Option<Duration>,
) -> axum::response::Response {
    if let Some(delay) = delay {
        let seconds = delay.as_secs().max(1).to_string();
        if let Ok(value) = http::HeaderValue::from_str(&seconds) {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, value);
        }
    }
    response
}

impl From<ApiError> for tonic::Status {
    fn from(err: ApiError) -> Self {
        err.into_status()
    }
}

impl ApiError {
    /// The HTTP answer with a status more precise than its gRPC code's (405, 413), in the same
    /// JSON shape, its `code` that status.
    pub fn into_response_with(self, status: http::StatusCode) -> axum::response::Response {
        let mut body = self.to_json();
        body["error"]["code"] = status.as_u16().into();
        let response = axum::response::IntoResponse::into_response((status, axum::Json(body)));
        with_retry_after(response, self.details.retry_after)
    }
}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let response = (self.http_status(), axum::Json(self.to_json())).into_response();
        with_retry_after(response, self.details.retry_after)
    }
}

/// The canonical name of a gRPC code, as used in logs, metrics and audit entries.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The code of a canonical name; `UNKNOWN` for anything else.
pub fn code_from_name(name: &str) -> Code {
    const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];
    ALL.into_iter()
        .find(|code| code_name(*code) == name)
        .unwrap_or(Code::Unknown)
}

/// google.rpc.Code to HTTP status, as in google/rpc/code.proto.
pub fn http_status_of(code: Code) -> http::StatusCode {
    use http::StatusCode as S;
    match code {
        Code::Ok => S::OK,
        Code::Cancelled => S::from_u16(499).unwrap_or(S::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => S::BAD_REQUEST,
        Code::DeadlineExceeded => S::GATEWAY_TIMEOUT,
        Code::NotFound => S::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => S::CONFLICT,
        Code::PermissionDenied => S::FORBIDDEN,
        Code::Unauthenticated => S::UNAUTHORIZED,
        Code::ResourceExhausted => S::TOO_MANY_REQUESTS,
        Code::Unimplemented => S::NOT_IMPLEMENTED,
        Code::Unavailable => S::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => S::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_carries_error_info_and_violations() {
        let err =
            ApiError::invalid_argument(vec![FieldViolation::new("credential_id", "too long")])
                .with_domain("credentials.switchyard.dev");
        let status = err.into_status();
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let info = details.error_info().expect("error info");
        assert_eq!(info.reason, "INVALID_ARGUMENT");
        assert_eq!(info.domain, "credentials.switchyard.dev");
        let bad = details.bad_request().expect("bad request");
        assert_eq!(bad.field_violations[0].field, "credential_id");
    }

    #[test]
    fn internal_errors_are_opaque() {
        let status = ApiError::internal("db password=hunter2 rejected").into_status();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("hunter2"));
    }

    #[test]
    fn code_names_round_trip() {
        for code in [
            Code::Ok,
            Code::NotFound,
            Code::DataLoss,
            Code::Unauthenticated,
        ] {
            assert_eq!(code_from_name(code_name(code)), code);
        }
        assert_eq!(code_from_name("NOPE"), Code::Unknown);
    }

    #[test]
    fn json_body_has_google_shape() {
        let body = ApiError::not_found("credentials/x").to_json();
        assert_eq!(body["error"]["code"], 404);
        assert_eq!(body["error"]["status"], "NOT_FOUND");
        assert_eq!(body["error"]["details"][0]["reason"], "NOT_FOUND");
    }
}
