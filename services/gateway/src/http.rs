//! `POST /hooks/{source}/{endpoint}`: the webhook receiver on the HTTP edge. It needs no
//! Switchyard token: the sender proves itself with its signature, checked by the domain.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, StatusCode};
use serde_json::json;
use switchyard_webhooks::{Answer, Inbound};

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
            let status = match &err {
                CallbackError::Denied(_) | CallbackError::State | CallbackError::Exchange(_) => {
                    StatusCode::BAD_REQUEST
                }
                CallbackError::Internal(cause) => {
                    tracing::error!(provider, error = %cause, "finishing an OAuth authorization failed");
                    StatusCode::SERVICE_UNAVAILABLE
                }
            };
            // What went wrong inside is in the log, not in the user's browser.
            let message = match &err {
                CallbackError::Internal(_) => {
                    "the connection could not be stored; try again".to_owned()
                }
                other => other.to_string(),
            };
            (
                status,
                axum::Json(json!({ "error": { "message": message } })),
            )
                .into_response()
        }
    }
}

async fn receive(
    State(gateway): State<Gateway>,
    Path((source, endpoint)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
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

fn refusal(source: &str, endpoint: &str, err: ReceiveError) -> Response {
    let (status, message) = match &err {
        ReceiveError::UnknownEndpoint => (StatusCode::NOT_FOUND, err.to_string()),
        ReceiveError::Refused(_) => {
            tracing::info!(source, endpoint, reason = %err, "webhook refused");
            (StatusCode::UNAUTHORIZED, err.to_string())
        }
        ReceiveError::VerificationUnavailable => (StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
        ReceiveError::Store(cause) => {
            tracing::error!(source, endpoint, error = %cause, "storing a webhook failed");
            (StatusCode::SERVICE_UNAVAILABLE, err.to_string())
        }
        ReceiveError::Confirmation => (StatusCode::BAD_GATEWAY, err.to_string()),
    };
    (
        status,
        axum::Json(json!({ "error": { "message": message } })),
    )
        .into_response()
}
