//! The Anthropic adapter: the Messages API (`POST /v1/messages`, `anthropic-version:
//! 2023-06-01`), unary and streamed (`message_start`, `content_block_*`, `message_delta`,
//! `message_stop`, `ping`, `error`), with the system prompt mapped to `system`, content blocks
//! (text, images, documents, tool use and results, thinking), prompt caching (`cache_control` at
//! each cache breakpoint) and extended thinking.
//!
//! Anthropic's `input_tokens` excludes the tokens read from or written to the prompt cache; they
//! are added back here so that `Usage::input_tokens` counts every prompt token, as it does for
//! every provider, and the cost formula prices each kind once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures::StreamExt;
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};

use super::keys::KeySource;
use super::sse;
use super::{
    ChatProvider, Deployment, EventStream, ProviderError, ProviderEvent, ProviderResponse,
    TokenCounter, decode, transport_error,
};
use crate::domain::model::*;

/// Anthropic's public API.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// The API version Switchyard speaks.
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` is required by Anthropic; this is used when a request sets none.
const DEFAULT_MAX_TOKENS: u32 = 4096;
/// The fields of a Messages body that `count_tokens` takes.
const COUNTED_FIELDS: &[&str] = &[
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
];

/// The Anthropic adapter.
#[derive(Debug)]
pub struct Anthropic {
    http: reqwest::Client,
    keys: Arc<dyn KeySource>,
}

impl Anthropic {
    /// An adapter sending with `http` and the keys of `keys`.
    pub fn new(http: reqwest::Client, keys: Arc<dyn KeySource>) -> Self {
        Anthropic { http, keys }
    }

    async fn send(
        &self,
        deployment: &Deployment,
        body: &Value,
    ) -> Result<reqwest::Response, ProviderError> {
        self.send_to(deployment, "messages", body).await
    }

    /// Sends `body` to `/v1/{path}` with the key and version headers.
    async fn send_to(
        &self,
        deployment: &Deployment,
        path: &str,
        body: &Value,
    ) -> Result<reqwest::Response, ProviderError> {
        let key = deployment.api_key(self.keys.as_ref()).await?;
        let base = deployment.base_url_or(DEFAULT_BASE_URL);
        let response = self
            .http
            .post(format!("{base}/v1/{path}"))
            .header("x-api-key", key.expose_secret())
            .header("anthropic-version", API_VERSION)
            .timeout(deployment.timeout)
            .json(body)
            .send()
            .await
            .map_err(transport_error)?;
        record_rate_limits(deployment, response.headers());
        if response.status().is_success() {
            return Ok(response);
        }
        Err(error_of(response).await)
    }
}

fn record_rate_limits(deployment: &Deployment, headers: &reqwest::header::HeaderMap) {
    for (header, kind) in [
        ("anthropic-ratelimit-requests-remaining", "requests"),
        ("anthropic-ratelimit-tokens-remaining", "tokens"),
    ] {
        if let Some(remaining) = headers
            .get(header)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<f64>().ok())
        {
            metrics::gauge!("switchyard_ai_upstream_ratelimit_remaining", "deployment" => deployment.name.clone(), "kind" => kind)
                .set(remaining);
        }
    }
}

/// An error of Anthropic's shape (`{"type": "error", "error": {"type", "message"}}`), by its
/// type first and its status second.
fn error_from(status: u16, body: &Value, retry_after: Option<Duration>) -> ProviderError {
    let kind = body["error"]["type"].as_str().unwrap_or_default();
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or("no error message")
        .to_owned();
    match (kind, status) {
        ("overloaded_error", _) | (_, 529) => ProviderError::Overloaded,
        ("rate_limit_error", _) | (_, 429) => ProviderError::RateLimited { retry_after },
        ("authentication_error" | "permission_error", _) | (_, 401 | 403) => {
            ProviderError::CredentialRejected
        }
        (_, 400) if message.contains("prompt is too long") => ProviderError::ContextLength,
        ("invalid_request_error" | "not_found_error" | "request_too_large", _)
        | (_, 400 | 404 | 413) => ProviderError::InvalidRequest(message),
        ("api_error", _) | (_, 500..=599) => {
            ProviderError::Unavailable(format!("{status}: {message}"))
        }
        _ => ProviderError::Other(format!("{status}: {message}")),
    }
}

async fn error_of(response: reqwest::Response) -> ProviderError {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|secs| secs.is_finite() && *secs >= 0.0)
        .map(Duration::from_secs_f64);
    let body: Value = response.json().await.unwrap_or(Value::Null);
    error_from(status, &body, retry_after)
}

fn cached(mut block: Value, part: &Part) -> Value {
    if part.cache_breakpoint {
        block["cache_control"] = json!({"type": "ephemeral"});
    }
    block
}

fn source_block(kind: &str, source: &Source) -> Value {
    match source {
        Source::Url(url) => json!({"type": kind, "source": {"type": "url", "url": url}}),
        Source::Data { mime_type, bytes } => {
            json!({"type": kind, "source": {"type": "base64", "media_type": mime_type, "data": STANDARD.encode(bytes)}})
        }
    }
}

fn blocks(parts: &[Part]) -> Result<Vec<Value>, ProviderError> {
    let mut out = Vec::new();
    for part in parts {
        let block = match &part.kind {
            PartKind::Text(text) => json!({"type": "text", "text": text}),
            PartKind::Image { source, .. } => source_block("image", source),
            PartKind::Document { source, title } => {
                let mut block = source_block("document", source);
                if let Some(title) = title {
                    block["title"] = json!(title);
                }
                block
            }
            PartKind::Audio { .. } => {
                return Err(ProviderError::Unsupported {
                    feature: "audio parts".into(),
                    provider: "anthropic".into(),
                });
            }
            PartKind::ToolCall(call) => {
                let input: Value = serde_json::from_str(&call.arguments_json).map_err(|_| {
                    ProviderError::InvalidRequest(format!(
                        "tool call {} has arguments that are not JSON",
                        call.id
                    ))
                })?;
                json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input})
            }
            PartKind::ToolResult {
                tool_call_id,
                content,
                is_error,
                ..
            } => {
                json!({"type": "tool_result", "tool_use_id": tool_call_id, "content": content, "is_error": is_error})
            }
            PartKind::Thinking { text, signature } => {
                json!({"type": "thinking", "thinking": text, "signature": signature.clone().unwrap_or_default()})
            }
        };
        out.push(cached(block, part));
    }
    Ok(out)
}

/// The body of a Messages request.
pub fn request_body(
    deployment: &Deployment,
    request: &ChatRequest,
    stream: bool,
) -> Result<Value, ProviderError> {
    let mut body = Map::new();
    body.insert("model".into(), json!(deployment.provider_model));
    body.insert(
        "max_tokens".into(),
        json!(request.max_output_tokens.unwrap_or(DEFAULT_MAX_TOKENS)),
    );

    let system: Vec<&Part> = request
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .flat_map(|m| &m.parts)
        .collect();
    if !system.is_empty() {
        let owned: Vec<Part> = system.into_iter().cloned().collect();
        if owned.iter().any(|p| p.cache_breakpoint) {
            body.insert("system".into(), Value::Array(blocks(&owned)?));
        } else {
            let text: String = owned
                .iter()
                .filter_map(|p| match &p.kind {
                    PartKind::Text(t) => Some(t.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("\n");
            body.insert("system".into(), json!(text));
        }
    }
    let mut messages = Vec::new();
    for message in request.messages.iter().filter(|m| m.role != Role::System) {
        // Tool results travel in a user turn.
        let role = if message.role == Role::Assistant {
            "assistant"
        } else {
            "user"
        };
        messages.push(json!({"role": role, "content": blocks(&message.parts)?}));
    }
    body.insert("messages".into(), Value::Array(messages));

    if !request.tools.is_empty() {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|t| {
                let mut tool = json!({"name": t.name, "input_schema": t.parameters});
                if !t.description.is_empty() {
                    tool["description"] = json!(t.description);
                }
                tool
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    let mut choice = match &request.tool_choice {
        None => None,
        Some(ToolChoice::Auto) => Some(json!({"type": "auto"})),
        Some(ToolChoice::None) => Some(json!({"type": "none"})),
        Some(ToolChoice::Required) => Some(json!({"type": "any"})),
        Some(ToolChoice::Tool(name)) => Some(json!({"type": "tool", "name": name})),
    };
    if request.parallel_tool_calls == Some(false) {
        let choice = choice.get_or_insert_with(|| json!({"type": "auto"}));
        choice["disable_parallel_tool_use"] = json!(true);
    }
    if let Some(choice) = choice {
        body.insert("tool_choice".into(), choice);
    }
    if !matches!(request.response_format, ResponseFormat::Text) {
        return Err(ProviderError::Unsupported {
            feature: "response_format".into(),
            provider: "anthropic".into(),
        });
    }
    for (key, value) in [
        ("temperature", request.temperature.map(|v| json!(v))),
        ("top_p", request.top_p.map(|v| json!(v))),
    ] {
        if let Some(value) = value {
            body.insert(key.into(), value);
        }
    }
    if !request.stop.is_empty() {
        body.insert("stop_sequences".into(), json!(request.stop));
    }
    if let Some(user) = &request.end_user_id {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    if let Some(options) = &request.provider_options.anthropic {
        if let Some(budget) = options
            .get("thinking_budget_tokens")
            .and_then(Value::as_u64)
            .filter(|b| *b > 0)
        {
            body.insert(
                "thinking".into(),
                json!({"type": "enabled", "budget_tokens": budget}),
            );
        }
        if let Some(top_k) = options
            .get("top_k")
            .and_then(Value::as_u64)
            .filter(|k| *k > 0)
        {
            body.insert("top_k".into(), json!(top_k));
        }
    }
    if stream {
        body.insert("stream".into(), json!(true));
    }
    Ok(Value::Object(body))
}

fn finish_reason(value: &Value) -> FinishReason {
    match value.as_str() {
        // The answer was cut by the window rather than by max_tokens: truncated all the same.
        Some("max_tokens" | "model_context_window_exceeded") => FinishReason::Length,
        Some("tool_use") => FinishReason::ToolCalls,
        Some("refusal") => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

/// Anthropic's usage, normalized: cached tokens added back into the input.
fn usage(value: &Value) -> Usage {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let (fresh, write, read) = (
        n(&value["input_tokens"]),
        n(&value["cache_creation_input_tokens"]),
        n(&value["cache_read_input_tokens"]),
    );
    Usage {
        input_tokens: fresh + write + read,
        output_tokens: n(&value["output_tokens"]),
        cache_read_tokens: read,
        cache_write_tokens: write,
        reasoning_tokens: 0,
    }
}

/// The neutral response of a Messages response body.
pub fn response_of(body: &Value) -> Result<ProviderResponse, ProviderError> {
    let content = body["content"]
        .as_array()
        .ok_or_else(|| ProviderError::Other("the response has no content".into()))?;
    let mut parts = Vec::new();
    for block in content {
        let kind = match block["type"].as_str() {
            Some("text") => PartKind::Text(block["text"].as_str().unwrap_or_default().to_owned()),
            Some("tool_use") => PartKind::ToolCall(ToolCall {
                id: block["id"].as_str().unwrap_or_default().to_owned(),
                name: block["name"].as_str().unwrap_or_default().to_owned(),
                arguments_json: block["input"].to_string(),
            }),
            Some("thinking") => PartKind::Thinking {
                text: block["thinking"].as_str().unwrap_or_default().to_owned(),
                signature: block["signature"].as_str().map(str::to_owned),
            },
            _ => continue,
        };
        parts.push(Part {
            kind,
            cache_breakpoint: false,
        });
    }
    Ok(ProviderResponse {
        message: Message {
            role: Role::Assistant,
            parts,
            name: None,
        },
        finish_reason: finish_reason(&body["stop_reason"]),
        usage: usage(&body["usage"]),
        notices: Vec::new(),
    })
}

#[async_trait]
impl TokenCounter for Anthropic {
    fn name(&self) -> &'static str {
        "anthropic"
    }

    /// `POST /v1/messages/count_tokens`, with the fields of the Messages body it takes.
    async fn count_tokens(
        &self,
        deployment: &Deployment,
        request: &ChatRequest,
    ) -> Result<u64, ProviderError> {
        let mut body = request_body(deployment, request, false)?;
        if let Some(fields) = body.as_object_mut() {
            fields.retain(|key, _| COUNTED_FIELDS.contains(&key.as_str()));
        }
        let response = self
            .send_to(deployment, "messages/count_tokens", &body)
            .await?;
        let answer = decode(response).await?;
        answer["input_tokens"]
            .as_u64()
            .ok_or_else(|| ProviderError::Other("the count has no input_tokens".into()))
    }
}

#[async_trait]
impl ChatProvider for Anthropic {
    fn name(&self) -> &'static str {
        "anthropic"
    }

    async fn complete(
        &self,
        deployment: &Deployment,
        request: &ChatRequest,
    ) -> Result<ProviderResponse, ProviderError> {
        let body = request_body(deployment, request, false)?;
        response_of(&decode(self.send(deployment, &body).await?).await?)
    }

    async fn stream(
        &self,
        deployment: &Deployment,
        request: &ChatRequest,
    ) -> Result<EventStream, ProviderError> {
        let body = request_body(deployment, request, true)?;
        let response = self.send(deployment, &body).await?;
        Ok(stream_events(sse::events(response)))
    }
}

/// Messages stream events to provider events.
fn stream_events(
    events: futures::stream::BoxStream<'static, Result<sse::SseEvent, ProviderError>>,
) -> EventStream {
    struct State {
        events: futures::stream::BoxStream<'static, Result<sse::SseEvent, ProviderError>>,
        usage: Usage,
        finish: FinishReason,
        /// Content block index to tool call index.
        tools: HashMap<u64, u32>,
        done: bool,
    }
    let state = State {
        events,
        usage: Usage::default(),
        finish: FinishReason::Stop,
        tools: HashMap::new(),
        done: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if state.done {
                return None;
            }
            let event = match state.events.next().await {
                None => {
                    state.done = true;
                    return Some((
                        Err(ProviderError::Unavailable(
                            "the stream ended before message_stop".into(),
                        )),
                        state,
                    ));
                }
                Some(Err(err)) => {
                    state.done = true;
                    return Some((Err(err), state));
                }
                Some(Ok(event)) => event,
            };
            let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
                state.done = true;
                return Some((
                    Err(ProviderError::Other(
                        "a stream event does not decode".into(),
                    )),
                    state,
                ));
            };
            let kind = if event.event.is_empty() {
                data["type"].as_str().unwrap_or_default().to_owned()
            } else {
                event.event.clone()
            };
            match kind.as_str() {
                "message_start" => state.usage = usage(&data["message"]["usage"]),
                "content_block_start" => {
                    let block = &data["content_block"];
                    if block["type"] == "tool_use" {
                        let index = data["index"].as_u64().unwrap_or(0);
                        let tool_index = u32::try_from(state.tools.len()).unwrap_or(u32::MAX);
                        state.tools.insert(index, tool_index);
                        let piece = ToolCallDelta {
                            index: tool_index,
                            id: block["id"].as_str().map(str::to_owned),
                            name: block["name"].as_str().map(str::to_owned),
                            arguments_json: String::new(),
                        };
                        return Some((Ok(ProviderEvent::Delta(Delta::ToolCall(piece))), state));
                    }
                }
                "content_block_delta" => {
                    let delta = &data["delta"];
                    let out = match delta["type"].as_str() {
                        Some("text_delta") => Some(Delta::Text(
                            delta["text"].as_str().unwrap_or_default().to_owned(),
                        )),
                        Some("thinking_delta") => Some(Delta::Thinking(
                            delta["thinking"].as_str().unwrap_or_default().to_owned(),
                        )),
                        Some("input_json_delta") => {
                            let index = data["index"].as_u64().unwrap_or(0);
                            state.tools.get(&index).map(|tool_index| {
                                Delta::ToolCall(ToolCallDelta {
                                    index: *tool_index,
                                    id: None,
                                    name: None,
                                    arguments_json: delta["partial_json"]
                                        .as_str()
                                        .unwrap_or_default()
                                        .to_owned(),
                                })
                            })
                        }
                        _ => None,
                    };
                    if let Some(delta) = out.filter(
                        |d| !matches!(d, Delta::Text(t) | Delta::Thinking(t) if t.is_empty()),
                    ) {
                        return Some((Ok(ProviderEvent::Delta(delta)), state));
                    }
                }
                "message_delta" => {
                    state.finish = finish_reason(&data["delta"]["stop_reason"]);
                    if let Some(output) = data["usage"]["output_tokens"].as_u64() {
                        state.usage.output_tokens = output;
                    }
                }
                "message_stop" => {
                    state.done = true;
                    return Some((
                        Ok(ProviderEvent::Finished {
                            finish_reason: state.finish,
                            usage: state.usage,
                        }),
                        state,
                    ));
                }
                "error" => {
                    state.done = true;
                    return Some((Err(error_from(200, &data, None)), state));
                }
                // ping, content_block_stop, and event types added later.
                _ => {}
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_cached_tokens_as_input_once() {
        let u = usage(
            &json!({"input_tokens": 100, "cache_creation_input_tokens": 1000, "cache_read_input_tokens": 2000, "output_tokens": 50}),
        );
        assert_eq!(
            u,
            Usage {
                input_tokens: 3100,
                output_tokens: 50,
                cache_read_tokens: 2000,
                cache_write_tokens: 1000,
                reasoning_tokens: 0
            }
        );
    }

    #[test]
    fn errors_map_by_type_then_status() {
        let body = |kind: &str| json!({"type": "error", "error": {"type": kind, "message": "m"}});
        assert_eq!(
            error_from(529, &body("overloaded_error"), None),
            ProviderError::Overloaded
        );
        assert!(error_from(529, &body("overloaded_error"), None).is_retryable());
        assert_eq!(
            error_from(429, &body("rate_limit_error"), Some(Duration::from_secs(3))),
            ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert_eq!(
            error_from(401, &body("authentication_error"), None),
            ProviderError::CredentialRejected
        );
        assert!(matches!(
            error_from(500, &body("api_error"), None),
            ProviderError::Unavailable(_)
        ));
        let too_long = json!({"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long: 300000 tokens > 200000 maximum"}});
        assert_eq!(
            error_from(400, &too_long, None),
            ProviderError::ContextLength
        );
    }
}
