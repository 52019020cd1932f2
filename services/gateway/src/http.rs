//! `POST /hooks/{source}/{endpoint}`: the webhook receiver on the HTTP edge. It needs no
//! Switchyard token: the sender proves itself with its signature, checked by the domain.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, StatusCode};
use serde_json::json;
use std::time::Duration;

use switchyard_kit::ApiError;
use switchyard_webhooks::{Answer, Inbound};
use tonic::Code;

use crate::domain::{Gateway, ReceiveError};

/// The receiver's routes, accepting bodies up to `max_body_bytes` (413 beyond), and the OAuth
/// callback.
pub fn router(gateway: Gateway, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/hooks/{source}/{endpoint}", post(receive))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .route("/oauth/{provider}/callback", get(oauth_callback))
        .route("/sso/login", get(sso_login))
        .route("/sso/callback", get(sso_callback))
        .with_state(gateway)
}

/// Sends the browser to the organisation's identity provider.
async fn sso_login(State(gateway): State<Gateway>) -> Response {
    match gateway.sso_login().await {
        Ok(url) => axum::response::Redirect::to(url.as_str()).into_response(),
        Err(err) => sso_error(err),
    }
}

/// Back from the identity provider: a Switchyard token for the user's tenant and roles.
async fn sso_callback(
    State(gateway): State<Gateway>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    use secrecy::ExposeSecret;
    match gateway.sso_callback(&query).await {
        Ok(login) => (
            StatusCode::OK,
            axum::Json(json!({
                "token": login.token.expose_secret(),
                "token_type": "Bearer",
                "expires_in": login.expires_in.as_secs(),
                "tenant": login.tenant,
                "subject": login.subject,
                "scopes": login.scopes,
            })),
        )
            .into_response(),
        Err(err) => sso_error(err),
    }
}

fn sso_error(err: crate::domain::GatewayError) -> Response {
    let api = crate::api::api_error(err);
    if api.http_status().is_server_error() {
        tracing::warn!(error = api.message(), "single sign-on failed");
    }
    (api.http_status(), axum::Json(api.to_json())).into_response()
}

/// Where the provider sends the user back: the code becomes a connection. The answer is JSON
/// for the page or program that opened the flow.
async fn oauth_callback(
    State(gateway): State<Gateway>,
    Path(provider): Path<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    use crate::domain::oauth::CallbackError;
    match gateway.oauth_callback(&provider, &query).await {
        Ok(connection) => {
            let connection = crate::oauth_api::connection_to_proto(&connection);
            (
                StatusCode::OK,
                axum::Json(json!({
                    "connection": connection.name,
                    "account": connection.account_name,
                    "granted_scopes": connection.granted_scopes,
                })),
            )
                .into_response()
        }
        Err(err) => {
            let api = match &err {
                CallbackError::Denied(_) => ApiError::new(
                    Code::InvalidArgument,
                    "AUTHORIZATION_DENIED",
                    err.to_string(),
                ),
                CallbackError::State => {
                    ApiError::new(Code::InvalidArgument, "STATE_INVALID", err.to_string())
                }
                CallbackError::Exchange(cause) if cause.is_retryable() => {
                    ApiError::new(Code::Unavailable, "PROVIDER_UNAVAILABLE", err.to_string())
                }
                CallbackError::Exchange(_) => {
                    ApiError::new(Code::InvalidArgument, "CODE_REFUSED", err.to_string())
                }
                // What went wrong inside is in the log, not in the user's browser.
                CallbackError::Internal(cause) => {
                    tracing::error!(provider, error = %cause, "finishing an OAuth authorization failed");
                    ApiError::new(
                        Code::Unavailable,
                        "CONNECTION_NOT_STORED",
                        "the connection could not be stored; try again",
                    )
                }
            };
            api.with_domain(crate::api::ERROR_DOMAIN).into_response()
        }
    }
}

async fn receive(
    State(gateway): State<Gateway>,
    Path((source, endpoint)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        // Beyond gateway.max_body_bytes (413), or a body that could not be read: nothing stored.
        Err(rejection) => {
            return ApiError::new(
                Code::InvalidArgument,
                "BODY_TOO_LARGE",
                rejection.body_text(),
            )
            .into_response_with(rejection.status());
        }
    };
    let inbound = Inbound {
        headers: &headers,
        query: query.as_deref(),
        body: &body,
    };
    let outcome = gateway.receive(&source, &endpoint, inbound).await;
    let label = match &outcome {
        Ok(receipt) if receipt.duplicate => "duplicate",
        Ok(_) => "accepted",
        Err(ReceiveError::UnknownEndpoint) => "unknown_endpoint",
        Err(ReceiveError::Refused(_)) => "refused",
        Err(_) => "failed",
    };
    // The source label is bounded: an unknown source is counted as such, not by its name.
    let source_label =
        switchyard_webhooks::Source::parse(&source).map_or("unknown", |s| s.as_str());
    metrics::counter!("switchyard_webhooks_received_total", "source" => source_label, "outcome" => label)
        .increment(1);
    match outcome {
        Ok(receipt) => {
            let mut response = match receipt.answer {
                Answer::Accepted => (StatusCode::OK, axum::Json(json!({}))).into_response(),
                Answer::NoContent => StatusCode::NO_CONTENT.into_response(),
                Answer::Json(body) => (StatusCode::OK, axum::Json(body)).into_response(),
            };
            if let Ok(value) = receipt.event_id.parse() {
                response.headers_mut().insert("switchyard-event-id", value);
            }
            response
        }
        Err(err) => refusal(&source, &endpoint, err),
    }
}

/// A refused webhook in the one error shape of the HTTP edge (`google.rpc.Status` as JSON).
fn refusal(source: &str, endpoint: &str, err: ReceiveError) -> Response {
    let message = err.to_string();
    let api = match &err {
        ReceiveError::UnknownEndpoint => {
            ApiError::new(Code::NotFound, "WEBHOOK_ENDPOINT_NOT_FOUND", message)
        }
        ReceiveError::Refused(_) => {
            tracing::info!(source, endpoint, reason = %err, "webhook refused");
            ApiError::new(Code::Unauthenticated, "WEBHOOK_NOT_VERIFIED", message)
        }
        ReceiveError::VerificationUnavailable => ApiError::new(
            Code::Unavailable,
            "WEBHOOK_VERIFICATION_UNAVAILABLE",
            message,
        )
        .with_retry_after(Duration::from_secs(60)),
        ReceiveError::Store(cause) => {
            tracing::error!(source, endpoint, error = %cause, "storing a webhook failed");
            ApiError::new(Code::Unavailable, "WEBHOOK_NOT_STORED", message)
        }
        ReceiveError::Confirmation => {
            ApiError::new(Code::Unavailable, "SNS_CONFIRMATION_FAILED", message)
        }
    };
    api.with_domain(crate::api::ERROR_DOMAIN).into_response()
}
