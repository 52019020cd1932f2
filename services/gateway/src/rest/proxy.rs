//! gRPC and gRPC-Web on the HTTP edge: the call is authenticated and counted like a REST call,
//! then passed to the service as it came (tonic-web turns gRPC-Web into gRPC and back), with the
//! caller's credential replaced by what the service accepts.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Limited, StreamBody};
use secrecy::ExposeSecret;
use tonic::body::Body;
use tower::{Service, ServiceExt};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use super::caller::API_KEY_HEADER;
use super::{Api, admit, rate_headers};

/// Forwards gRPC calls of one method to the service of its package.
#[derive(Debug, Clone)]
pub struct GrpcProxy {
    api: Arc<Api>,
    /// A unary call is read whole and answered whole, so that each side is written at once
    /// rather than frame by frame as it streams through.
    unary: bool,
}

impl GrpcProxy {
    pub(super) fn new(api: Arc<Api>, unary: bool) -> Self {
        GrpcProxy { api, unary }
    }
}

/// A whole body: its data, then its trailers if any.
fn whole(data: bytes::Bytes, trailers: Option<http::HeaderMap>) -> Body {
    let mut frames = vec![Ok::<_, Infallible>(Frame::data(data))];
    frames.extend(trailers.map(|trailers| Ok(Frame::trailers(trailers))));
    Body::new(StreamBody::new(futures::stream::iter(frames)))
}

fn refusal(status: tonic::Status) -> Response<Body> {
    status.into_http()
}

impl<B> Service<Request<B>> for GrpcProxy
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let api = self.api.clone();
        let unary = self.unary;
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            // "/package.Service/Method": the package picks the upstream, the method the limits.
            let path = parts.uri.path().trim_start_matches('/').to_owned();
            let (service, method) = path.split_once('/').unwrap_or((path.as_str(), ""));
            let package = service.rsplit_once('.').map_or("", |(package, _)| package);
            let caller = match api.callers.authenticate(&parts.headers).await {
                Ok(caller) => caller,
                Err(err) => return Ok(refusal(err.into_status())),
            };
            let standing = match admit(&api, &caller, &format!("{service}.{method}")).await {
                Ok(standing) => standing,
                Err(limited) => return Ok(refusal(limited.error.into_status())),
            };
            parts.headers.remove(API_KEY_HEADER);
            if let Some(id) = switchyard_kit::telemetry::current_request_id()
                && let Ok(value) = HeaderValue::from_str(&id)
            {
                parts.headers.insert("x-request-id", value);
            }
            match HeaderValue::from_str(caller.authorization().expose_secret()) {
                Ok(value) => {
                    parts.headers.insert(http::header::AUTHORIZATION, value);
                }
                Err(_) => return Ok(refusal(tonic::Status::internal("unusable credential"))),
            }
            let body = if unary {
                match Limited::new(body, api.max_body_bytes).collect().await {
                    Ok(collected) => whole(collected.to_bytes(), None),
                    Err(_) => {
                        return Ok(refusal(tonic::Status::resource_exhausted(format!(
                            "the request is unreadable or larger than {} bytes",
                            api.max_body_bytes
                        ))));
                    }
                }
            } else {
                Body::new(body)
            };
            let upstream = api.upstream(package);
            let unreachable = |err: &dyn std::fmt::Display| {
                refusal(tonic::Status::unavailable(format!(
                    "the {package} service is unreachable: {err}"
                )))
            };
            let mut response = match upstream.oneshot(Request::from_parts(parts, body)).await {
                Ok(response) if unary => {
                    let (parts, body) = response.into_parts();
                    match body.collect().await {
                        Ok(collected) => {
                            let trailers = collected.trailers().cloned();
                            Response::from_parts(parts, whole(collected.to_bytes(), trailers))
                        }
                        Err(err) => return Ok(unreachable(&err)),
                    }
                }
                Ok(response) => response,
                Err(err) => return Ok(unreachable(&err)),
            };
            if let Some(standing) = &standing {
                rate_headers(standing, response.headers_mut());
            }
            Ok(response)
        })
    }
}

/// CORS for browser callers (gRPC-Web and REST) from `origins`, `*` meaning any.
pub(super) fn cors(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods(Any)
        .allow_headers(Any)
        .expose_headers(Any)
}
