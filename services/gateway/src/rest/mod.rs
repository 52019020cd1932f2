//! The API gateway on the HTTP edge: every Switchyard gRPC method with a `google.api.http`
//! annotation served as REST/JSON (proto3 JSON mapping), and every method as gRPC and gRPC-Web,
//! with the same principals as gRPC (bearer tokens, or Switchyard API keys), rate limits, a read
//! cache, `?fields=` masks, `Link` pagination and deprecation headers. Calls are forwarded to the
//! service over gRPC, so that its auth, validation and errors are the ones callers get.

pub mod cache;
mod caller;
mod proxy;
pub mod ratelimit;
pub mod routes;
pub mod template;
pub mod transcode;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use futures::StreamExt;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use prost_reflect::{DescriptorPool, DynamicMessage};
use switchyard_kit::ApiError;
use switchyard_kit::error::status_response;
use tonic::Code;
use tonic::transport::Channel;

use crate::config::ApiConfig;
use cache::{Directives, ResponseCache};
pub use caller::{Caller, Callers, KeyTokens};
use ratelimit::{RateLimits, Standing, Verdict};
use routes::{Route, Routes};
use transcode::{DynamicCodec, FIELDS_PARAMETER, FieldMask};

/// What the gateway needs from its process.
#[derive(Debug)]
pub struct ApiOutside {
    /// Every service's descriptors, with their `google.api.http` annotations.
    pub descriptors: DescriptorPool,
    /// This process's gRPC listener: the upstream of every package not configured elsewhere.
    pub own_grpc: Channel,
    /// Verifies bearer tokens and resolves API keys.
    pub callers: Callers,
    /// Methods whose handler audits each call (`package.Service.Method`): never cached, since a
    /// cached answer would skip the audit entry.
    pub audited: HashSet<String>,
    /// Where rate-limit buckets are shared by every replica; `None`: this replica's memory.
    pub rate_limit_redis: Option<redis::aio::ConnectionManager>,
}

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ApiBuildError {
    /// An annotation is not servable.
    #[error(transparent)]
    Routes(#[from] routes::RouteError),
    /// The configuration names something that does not exist.
    #[error("{0}")]
    Config(String),
}

struct DeprecationHeaders {
    deprecation: HeaderValue,
    sunset: Option<HeaderValue>,
    link: Option<HeaderValue>,
}

/// The API gateway.
pub struct Api {
    routes: Routes,
    own_grpc: Channel,
    upstreams: HashMap<String, Channel>,
    callers: Callers,
    limits: RateLimits,
    cache: ResponseCache,
    deprecated: HashMap<String, DeprecationHeaders>,
    /// Each method's gRPC path, and whether it is unary (no stream either way).
    grpc_methods: Vec<(String, bool)>,
    max_body_bytes: usize,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("routes", &self.routes.iter().count())
            .field("upstreams", &self.upstreams.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn config_error(message: impl Into<String>) -> ApiBuildError {
    ApiBuildError::Config(message.into())
}

impl Api {
    /// The gateway for `config`; fails on an annotation it cannot serve or a configured method
    /// that does not exist.
    pub fn new(config: &ApiConfig, outside: ApiOutside) -> Result<Api, ApiBuildError> {
        let routes = Routes::from_pool(&outside.descriptors)?;
        let mut methods = HashSet::new();
        let mut grpc_methods = Vec::new();
        for service in outside.descriptors.services() {
            if !service.package_name().starts_with("switchyard.") {
                continue;
            }
            for method in service.methods() {
                methods.insert(method.full_name().to_owned());
                grpc_methods.push((
                    format!("/{}/{}", service.full_name(), method.name()),
                    !method.is_client_streaming() && !method.is_server_streaming(),
                ));
            }
        }
        let limits = RateLimits::new(&config.rate_limits, &methods, outside.rate_limit_redis)
            .map_err(config_error)?;
        let mut ttl = HashMap::new();
        for (method, time) in &config.cache.routes {
            let key = format!("gateway.api.cache.routes.{method}");
            let Some(route) = routes.iter().find(|route| route.full_name == *method) else {
                return Err(config_error(format!("{key}: no method with a REST route")));
            };
            if route.method != http::Method::GET || route.server_streaming {
                return Err(config_error(format!("{key}: only GET methods are cached")));
            }
            if outside.audited.contains(method) {
                return Err(config_error(format!(
                    "{key}: every call of this method is audited, so it is never cached"
                )));
            }
            ttl.insert(method.clone(), time.0);
        }
        let mut upstreams = HashMap::new();
        for (package, url) in &config.upstreams {
            if !methods
                .iter()
                .any(|m| m.starts_with(&format!("{package}.")))
            {
                return Err(config_error(format!(
                    "gateway.api.upstreams: no package {package}"
                )));
            }
            let channel = Channel::from_shared(url.clone())
                .map_err(|_| config_error(format!("gateway.api.upstreams.{package}: not a URL")))?
                .connect_lazy();
            upstreams.insert(package.clone(), channel);
        }
        let mut deprecated = HashMap::new();
        for (version, deprecation) in &config.deprecated_versions {
            let key = format!("gateway.api.deprecated_versions.{version}");
            let since = humantime::parse_rfc3339(&deprecation.deprecation)
                .map_err(|_| config_error(format!("{key}.deprecation: not an RFC 3339 time")))?;
            let seconds = since
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let sunset = deprecation
                .sunset
                .as_deref()
                .map(|text| {
                    humantime::parse_rfc3339(text)
                        .map_err(|_| config_error(format!("{key}.sunset: not an RFC 3339 time")))
                })
                .transpose()?;
            let header = |text: String| {
                HeaderValue::from_str(&text).map_err(|_| config_error(format!("{key}: {text:?}")))
            };
            deprecated.insert(
                version.clone(),
                DeprecationHeaders {
                    // RFC 9745: a structured-field date.
                    deprecation: header(format!("@{seconds}"))?,
                    // RFC 8594: an HTTP date.
                    sunset: sunset
                        .map(|time| header(httpdate::fmt_http_date(time)))
                        .transpose()?,
                    link: deprecation
                        .link
                        .as_ref()
                        .map(|url| header(format!("<{url}>; rel=\"deprecation\"")))
                        .transpose()?,
                },
            );
        }
        Ok(Api {
            routes,
            own_grpc: outside.own_grpc,
            upstreams,
            callers: outside.callers,
            limits,
            cache: ResponseCache::new(ttl, config.cache.max_entries),
            deprecated,
            grpc_methods,
            max_body_bytes: config.max_body_bytes,
        })
    }

    fn upstream(&self, package: &str) -> Channel {
        self.upstreams
            .get(package)
            .unwrap_or(&self.own_grpc)
            .clone()
    }

    fn deprecation_headers(&self, version: Option<&str>, headers: &mut HeaderMap) {
        let Some(deprecated) = version.and_then(|v| self.deprecated.get(v)) else {
            return;
        };
        headers.insert(
            HeaderName::from_static("deprecation"),
            deprecated.deprecation.clone(),
        );
        if let Some(sunset) = &deprecated.sunset {
            headers.insert(HeaderName::from_static("sunset"), sunset.clone());
        }
        if let Some(link) = &deprecated.link {
            headers.append(http::header::LINK, link.clone());
        }
    }
}

/// The gateway's routes: REST under each version prefix, gRPC and gRPC-Web at each method's
/// path, and CORS if configured.
pub fn router(api: Arc<Api>, config: &ApiConfig) -> Router {
    let mut rest_routes = Router::new();
    for version in api.routes.versions() {
        rest_routes = rest_routes.route(&format!("/{version}/{{*rest}}"), any(rest));
    }
    let mut router = rest_routes.with_state(api.clone());
    for (path, unary) in &api.grpc_methods {
        let grpc = tower::Layer::layer(
            &tonic_web::GrpcWebLayer::new(),
            proxy::GrpcProxy::new(api.clone(), *unary),
        );
        router = router.route_service(path, grpc);
    }
    if !config.cors_allowed_origins.is_empty() {
        router = router.layer(proxy::cors(&config.cors_allowed_origins));
    }
    router
}

fn problem(code: Code, reason: &'static str, message: impl Into<String>) -> Response {
    ApiError::new(code, reason, message).into_response()
}

fn rate_headers(standing: &Standing, headers: &mut HeaderMap) {
    let pairs = [
        ("ratelimit-limit", standing.limit.to_string()),
        ("ratelimit-remaining", standing.remaining.to_string()),
        ("ratelimit-reset", standing.reset.as_secs().to_string()),
        ("ratelimit-policy", standing.policy.clone()),
    ];
    for (name, value) in pairs {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
}

/// A call refused by a rate limit: the error, and the standing to report with it.
struct Limited {
    error: ApiError,
    standing: Standing,
}

impl IntoResponse for Limited {
    fn into_response(self) -> Response {
        let mut response = self.error.into_response();
        rate_headers(&self.standing, response.headers_mut());
        response
    }
}

/// Counts the call against the rate limits: the standing to report, or the refusal.
async fn admit(api: &Api, caller: &Caller, method: &str) -> Result<Option<Standing>, Limited> {
    match api
        .limits
        .check(&caller.principal.tenant, &caller.principal.subject, method)
        .await
    {
        Verdict::Unlimited => Ok(None),
        Verdict::Allowed(standing) => Ok(Some(standing)),
        Verdict::Limited {
            standing,
            retry_after,
        } => {
            metrics::counter!("switchyard_gateway_rate_limited_total").increment(1);
            // Whole seconds, rounded up: a caller that waits Retry-After is let through.
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            Err(Limited {
                error: ApiError::new(
                    Code::ResourceExhausted,
                    "RATE_LIMITED",
                    format!("rate limit exceeded; retry in {seconds} s"),
                )
                .with_retry_after(Duration::from_secs(seconds)),
                standing,
            })
        }
    }
}

/// One REST call: route, authenticate, limit, answer from the cache or transcode and forward.
async fn rest(State(api): State<Arc<Api>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let (route, bound) = match api.routes.find(&parts.method, parts.uri.path()) {
        Ok(found) => found,
        Err(routes::Miss::MethodNotAllowed) => {
            return ApiError::new(
                Code::Unimplemented,
                "METHOD_NOT_ALLOWED",
                format!("{} is not allowed on {}", parts.method, parts.uri.path()),
            )
            .into_response_with(StatusCode::METHOD_NOT_ALLOWED);
        }
        Err(routes::Miss::NotFound) => {
            return problem(
                Code::NotFound,
                "NO_ROUTE",
                format!("no API at {}", parts.uri.path()),
            );
        }
    };
    let version = route.template.version().map(str::to_owned);
    let mut response = match serve(&api, &route, bound, &parts, body).await {
        Ok(response) | Err(response) => response,
    };
    api.deprecation_headers(version.as_deref(), response.headers_mut());
    response
}

/// What is sent to the service: one message, or a client stream's messages.
enum Outgoing {
    One(DynamicMessage),
    Stream(Vec<DynamicMessage>),
}

async fn serve(
    api: &Api,
    route: &Arc<Route>,
    bound: Vec<(&str, String)>,
    parts: &http::request::Parts,
    body: Body,
) -> Result<Response, Response> {
    let caller = api
        .callers
        .authenticate(&parts.headers)
        .await
        .map_err(IntoResponse::into_response)?;
    let standing = admit(api, &caller, &route.full_name)
        .await
        .map_err(IntoResponse::into_response)?;
    let with_standing = |mut response: Response| {
        if let Some(standing) = &standing {
            rate_headers(standing, response.headers_mut());
        }
        response
    };

    let query: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let mask = match query.iter().find(|(key, _)| key == FIELDS_PARAMETER) {
        Some((_, text)) => Some(
            FieldMask::parse(&route.output, text)
                .map_err(|err| with_standing(err.into_response()))?,
        ),
        None => None,
    };
    let path_and_query = parts.uri.path_and_query().map_or("", |pq| pq.as_str());
    let directives = Directives::of(&parts.headers);
    let slot = api.cache.slot(
        route,
        &caller.principal.tenant,
        &caller.principal.subject,
        path_and_query,
    );
    if let Some(slot) = &slot
        && let Some(hit) = api.cache.get(slot, directives)
    {
        metrics::counter!("switchyard_gateway_cache_total", "result" => "hit").increment(1);
        let mut response = json_response(hit.body);
        let headers = response.headers_mut();
        if let Some(link) = hit.link {
            headers.insert(http::header::LINK, link);
        }
        cache_headers(
            headers,
            hit.ttl.saturating_sub(hit.age),
            Some(hit.age),
            "hit",
        );
        return Ok(with_standing(response));
    }

    let body = axum::body::to_bytes(body, api.max_body_bytes)
        .await
        .map_err(|_| {
            with_standing(
                ApiError::new(
                    Code::InvalidArgument,
                    "BODY_TOO_LARGE",
                    format!(
                        "the body is unreadable or larger than {} bytes",
                        api.max_body_bytes
                    ),
                )
                .into_response_with(StatusCode::PAYLOAD_TOO_LARGE),
            )
        })?;
    let outgoing = if route.client_streaming {
        transcode::request_stream(route, bound, &query, &body).map(Outgoing::Stream)
    } else {
        transcode::request_message(route, bound, &query, &body).map(Outgoing::One)
    }
    .map_err(|err| with_standing(err.into_response()))?;
    let mut grpc = tonic::client::Grpc::new(api.upstream(&route.package));
    grpc.ready().await.map_err(|err| {
        with_standing(problem(
            Code::Unavailable,
            "UPSTREAM_UNAVAILABLE",
            format!("the {} service is unreachable: {err}", route.package),
        ))
    })?;
    let codec = DynamicCodec::new(route.output.clone());
    let answer = match outgoing {
        Outgoing::Stream(messages) => {
            let stream = futures::stream::iter(messages);
            grpc.client_streaming(caller.grpc_request(stream), route.grpc_path.clone(), codec)
                .await
        }
        Outgoing::One(message) => {
            let request = caller.grpc_request(message);
            if route.server_streaming {
                let answer = grpc
                    .server_streaming(request, route.grpc_path.clone(), codec)
                    .await;
                api.cache.invalidate(route, &caller.principal.tenant);
                let stream = answer.map_err(|status| with_standing(status_response(&status)))?;
                return Ok(with_standing(ndjson(
                    route.clone(),
                    mask,
                    stream.into_inner(),
                )));
            }
            grpc.unary(request, route.grpc_path.clone(), codec).await
        }
    };
    api.cache.invalidate(route, &caller.principal.tenant);
    let message = answer
        .map_err(|status| with_standing(status_response(&status)))?
        .into_inner();
    let mut json = transcode::response_json(route, &message)
        .map_err(|err| with_standing(err.into_response()))?;
    let link = next_page_link(&json, parts);
    if let Some(mask) = &mask {
        mask.apply(&mut json);
    }
    let bytes = Bytes::from(serde_json::to_vec(&json).unwrap_or_default());
    let mut response = json_response(bytes.clone());
    let headers = response.headers_mut();
    if let Some(link) = &link {
        headers.insert(http::header::LINK, link.clone());
    }
    if let Some(slot) = slot {
        metrics::counter!("switchyard_gateway_cache_total", "result" => "miss").increment(1);
        cache_headers(headers, slot.ttl(), None, "miss");
        api.cache.put(slot, directives, bytes, link);
    } else if parts.method == http::Method::GET {
        headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("private, no-store"),
        );
    }
    Ok(with_standing(response))
}

fn json_response(body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn cache_headers(
    headers: &mut HeaderMap,
    fresh_for: Duration,
    age: Option<Duration>,
    result: &'static str,
) {
    if let Ok(value) = HeaderValue::from_str(&format!("private, max-age={}", fresh_for.as_secs())) {
        headers.insert(http::header::CACHE_CONTROL, value);
    }
    if let Some(age) = age {
        headers.insert(http::header::AGE, HeaderValue::from(age.as_secs()));
    }
    headers.insert(
        HeaderName::from_static("x-cache"),
        HeaderValue::from_static(result),
    );
}

/// `Link: <...?pageToken=...>; rel="next"` when a List answer has a next page, so that every
/// collection pages the same way whatever its fields.
fn next_page_link(json: &serde_json::Value, parts: &http::request::Parts) -> Option<HeaderValue> {
    let token = json
        .get("nextPageToken")?
        .as_str()
        .filter(|t| !t.is_empty())?;
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    if let Some(existing) = parts.uri.query() {
        for (key, value) in url::form_urlencoded::parse(existing.as_bytes()) {
            if key != "pageToken" && key != "page_token" {
                query.append_pair(&key, &value);
            }
        }
    }
    query.append_pair("pageToken", token);
    HeaderValue::from_str(&format!(
        "<{}?{}>; rel=\"next\"",
        parts.uri.path(),
        query.finish()
    ))
    .ok()
}

/// A server stream as newline-delimited JSON: one message per line; an error after the first
/// message ends the stream with a line holding the error body.
fn ndjson(
    route: Arc<Route>,
    mask: Option<FieldMask>,
    stream: tonic::Streaming<DynamicMessage>,
) -> Response {
    let lines = stream.map(move |item| {
        let mut json = match item {
            Ok(message) => {
                transcode::response_json(&route, &message).unwrap_or_else(|err| err.to_json())
            }
            Err(status) => switchyard_kit::error::status_json(&status),
        };
        if let Some(mask) = &mask
            && json.get("error").is_none()
        {
            mask.apply(&mut json);
        }
        let mut line = serde_json::to_vec(&json).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(line))
    });
    let mut response = Response::new(Body::from_stream(lines));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
}
