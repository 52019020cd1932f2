//! The Gemini adapter: the Generative Language API (`models/{model}:generateContent` and
//! `:streamGenerateContent?alt=sse`), with `systemInstruction`, `contents`/`parts` (text,
//! `inlineData`, `fileData`, `functionCall`, `functionResponse`), function declarations, safety
//! settings, and safety ratings and blocked-prompt feedback surfaced as notices. Thought
//! signatures of function calls travel in the calls' ids and go back to Gemini with them.
//! Google's quota errors (429 RESOURCE_EXHAUSTED) are honoured with the delay of their
//! `RetryInfo`.

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
    ChatProvider, Deployment, EmbeddingProvider, Embeddings, EventStream, ProviderError,
    ProviderEvent, ProviderResponse, TokenCounter, decode, transport_error,
};
use crate::domain::model::*;
use crate::domain::tokens;

/// Google's public endpoint.
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";

/// The Gemini adapter.
#[derive(Debug)]
pub struct Gemini {
    http: reqwest::Client,
    keys: Arc<dyn KeySource>,
}

impl Gemini {
    /// An adapter sending with `http` and the keys of `keys`.
    pub fn new(http: reqwest::Client, keys: Arc<dyn KeySource>) -> Self {
        Gemini { http, keys }
    }

    async fn send(
        &self,
        deployment: &Deployment,
        method: &str,
        body: &Value,
    ) -> Result<reqwest::Response, ProviderError> {
        let key = deployment.api_key(self.keys.as_ref()).await?;
        let base = deployment.base_url_or(DEFAULT_BASE_URL);
        let response = self
            .http
            .post(format!(
                "{base}/v1beta/models/{}:{method}",
                deployment.provider_model
            ))
            // The header rather than `?key=`, so that the key never appears in a URL.
            .header("x-goog-api-key", key.expose_secret())
            .timeout(deployment.timeout)
            .json(body)
            .send()
            .await
            .map_err(transport_error)?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        Err(error_from(status, &body))
    }

    /// Sends a JSON body and decodes the JSON answer.
    async fn call(
        &self,
        deployment: &Deployment,
        method: &str,
        body: &Value,
    ) -> Result<Value, ProviderError> {
        decode(self.send(deployment, method, body).await?).await
    }
}

/// A Google API error (`{"error": {"code", "message", "status", "details"}}`).
fn error_from(status: u16, body: &Value) -> ProviderError {
    let error = &body["error"];
    let message = error["message"]
        .as_str()
        .unwrap_or("no error message")
        .to_owned();
    let details = error["details"].as_array().cloned().unwrap_or_default();
    let has_reason = |reason: &str| details.iter().any(|d| d["reason"] == reason);
    let retry_delay = details
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo")
        .and_then(|d| d["retryDelay"].as_str())
        .and_then(|d| d.strip_suffix('s'))
        .and_then(|secs| secs.parse::<f64>().ok())
        .filter(|secs| secs.is_finite() && *secs >= 0.0)
        .map(Duration::from_secs_f64);
    match (status, error["status"].as_str().unwrap_or_default()) {
        (429, _) | (_, "RESOURCE_EXHAUSTED") => ProviderError::RateLimited {
            retry_after: retry_delay,
        },
        (401 | 403, _) | (_, "PERMISSION_DENIED" | "UNAUTHENTICATED") => {
            ProviderError::CredentialRejected
        }
        (400, _) if has_reason("API_KEY_INVALID") => ProviderError::CredentialRejected,
        (400, _) if message.contains("exceeds the maximum number of tokens") => {
            ProviderError::ContextLength
        }
        (400 | 404, _) => ProviderError::InvalidRequest(message),
        (504, _) => ProviderError::Timeout,
        (500..=599, _) => ProviderError::Unavailable(format!("{status}: {message}")),
        _ => ProviderError::Other(format!("{status}: {message}")),
    }
}

fn mime_of_url(url: &str) -> Option<&'static str> {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    [
        (".png", "image/png"),
        (".jpg", "image/jpeg"),
        (".jpeg", "image/jpeg"),
        (".webp", "image/webp"),
        (".gif", "image/gif"),
        (".pdf", "application/pdf"),
    ]
    .into_iter()
    .find(|(ext, _)| path.ends_with(ext))
    .map(|(_, mime)| mime)
}

fn source_part(source: &Source) -> Result<Value, ProviderError> {
    match source {
        Source::Data { mime_type, bytes } => {
            Ok(json!({"inlineData": {"mimeType": mime_type, "data": STANDARD.encode(bytes)}}))
        }
        Source::Url(url) => {
            let mime = mime_of_url(url).ok_or_else(|| ProviderError::Unsupported {
                feature: "URLs of files of an unknown type (send the bytes instead)".into(),
                provider: "gemini".into(),
            })?;
            Ok(json!({"fileData": {"mimeType": mime, "fileUri": url}}))
        }
    }
}

fn parts(parts: &[Part]) -> Result<Vec<Value>, ProviderError> {
    let mut out = Vec::new();
    for part in parts {
        out.push(match &part.kind {
            PartKind::Text(text) => json!({"text": text}),
            PartKind::Image { source, .. } | PartKind::Document { source, .. } => source_part(source)?,
            PartKind::Audio { bytes, format } => json!({"inlineData": {"mimeType": format!("audio/{format}"), "data": STANDARD.encode(bytes)}}),
            PartKind::ToolCall(call) => {
                let args: Value = serde_json::from_str(&call.arguments_json)
                    .map_err(|_| ProviderError::InvalidRequest(format!("tool call {} has arguments that are not JSON", call.id)))?;
                let mut part = json!({"functionCall": {"name": call.name, "args": args}});
                if let Some((_, signature)) = call.id.split_once(SIGNATURE_SEPARATOR) {
                    part["thoughtSignature"] = json!(signature);
                }
                part
            }
            PartKind::ToolResult { name, content, is_error, .. } => {
                // Gemini takes an object: a JSON object result as is, anything else wrapped; a
                // failure under `error`, as Google's FunctionResponse documents it.
                let response = match serde_json::from_str::<Value>(content) {
                    _ if *is_error => json!({"error": content}),
                    Ok(Value::Object(object)) => Value::Object(object),
                    _ => json!({"content": content}),
                };
                json!({"functionResponse": {"name": name, "response": response}})
            }
            // Gemini keeps its own reasoning; earlier thoughts are not sent back.
            PartKind::Thinking { .. } => continue,
        });
    }
    Ok(out)
}

/// The body of a generateContent request.
pub fn request_body(request: &ChatRequest) -> Result<Value, ProviderError> {
    let mut body = Map::new();
    let system: Vec<Value> = request
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| json!({"text": m.text()}))
        .collect();
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({"parts": system}));
    }
    let mut contents = Vec::new();
    for message in request.messages.iter().filter(|m| m.role != Role::System) {
        let role = if message.role == Role::Assistant {
            "model"
        } else {
            "user"
        };
        contents.push(json!({"role": role, "parts": parts(&message.parts)?}));
    }
    body.insert("contents".into(), Value::Array(contents));
    if !request.tools.is_empty() {
        let declarations: Vec<Value> = request
            .tools
            .iter()
            // `parametersJsonSchema` takes JSON Schema as callers write it; `parameters` only
            // Google's OpenAPI subset, which refuses keywords such as `additionalProperties`.
            .map(|t| json!({"name": t.name, "description": t.description, "parametersJsonSchema": t.parameters}))
            .collect();
        body.insert(
            "tools".into(),
            json!([{"functionDeclarations": declarations}]),
        );
    }
    if let Some(choice) = &request.tool_choice {
        let config = match choice {
            ToolChoice::Auto => json!({"mode": "AUTO"}),
            ToolChoice::None => json!({"mode": "NONE"}),
            ToolChoice::Required => json!({"mode": "ANY"}),
            ToolChoice::Tool(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
        };
        body.insert(
            "toolConfig".into(),
            json!({"functionCallingConfig": config}),
        );
    }
    let mut generation = Map::new();
    for (key, value) in [
        ("temperature", request.temperature.map(|v| json!(v))),
        ("topP", request.top_p.map(|v| json!(v))),
        (
            "maxOutputTokens",
            request.max_output_tokens.map(|v| json!(v)),
        ),
        ("seed", request.seed.map(|v| json!(v))),
    ] {
        if let Some(value) = value {
            generation.insert(key.into(), value);
        }
    }
    if !request.stop.is_empty() {
        generation.insert("stopSequences".into(), json!(request.stop));
    }
    match &request.response_format {
        ResponseFormat::Text => {}
        ResponseFormat::JsonObject => {
            generation.insert("responseMimeType".into(), json!("application/json"));
        }
        ResponseFormat::JsonSchema { schema, .. } => {
            generation.insert("responseMimeType".into(), json!("application/json"));
            generation.insert("responseJsonSchema".into(), schema.clone());
        }
    }
    if let Some(options) = &request.provider_options.gemini {
        if let Some(settings) = options
            .get("safety_settings")
            .and_then(Value::as_array)
            .filter(|s| !s.is_empty())
        {
            body.insert("safetySettings".into(), Value::Array(settings.clone()));
        }
        if let Some(top_k) = options
            .get("top_k")
            .and_then(Value::as_u64)
            .filter(|k| *k > 0)
        {
            generation.insert("topK".into(), json!(top_k));
        }
        if let Some(budget) = options
            .get("thinking_budget_tokens")
            .and_then(Value::as_u64)
            .filter(|b| *b > 0)
        {
            generation.insert("thinkingConfig".into(), json!({"thinkingBudget": budget}));
        }
    }
    if !generation.is_empty() {
        body.insert("generationConfig".into(), Value::Object(generation));
    }
    Ok(Value::Object(body))
}

fn finish_reason(value: &Value, called_tools: bool) -> FinishReason {
    match value.as_str() {
        Some("MAX_TOKENS") => FinishReason::Length,
        Some(
            "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY",
        ) => FinishReason::ContentFilter,
        _ if called_tools => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

/// Gemini's usage: `promptTokenCount` includes cached tokens; thoughts are billed as output.
fn usage(value: &Value) -> Usage {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let thoughts = n(&value["thoughtsTokenCount"]);
    Usage {
        input_tokens: n(&value["promptTokenCount"]),
        output_tokens: n(&value["candidatesTokenCount"]) + thoughts,
        cache_read_tokens: n(&value["cachedContentTokenCount"]),
        cache_write_tokens: 0,
        reasoning_tokens: thoughts,
    }
}

/// Safety ratings above NEGLIGIBLE, and a blocked prompt's reason, as notices.
fn safety_notices(body: &Value) -> Vec<String> {
    let mut notices = Vec::new();
    if let Some(reason) = body["promptFeedback"]["blockReason"].as_str() {
        notices.push(format!("gemini blocked the prompt: {reason}"));
    }
    let ratings = body["candidates"][0]["safetyRatings"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            body["promptFeedback"]["safetyRatings"]
                .as_array()
                .into_iter()
                .flatten(),
        );
    for rating in ratings {
        let probability = rating["probability"].as_str().unwrap_or("NEGLIGIBLE");
        if probability != "NEGLIGIBLE" || rating["blocked"] == true {
            notices.push(format!(
                "gemini safety rating: {} {probability}{}",
                rating["category"]
                    .as_str()
                    .unwrap_or("HARM_CATEGORY_UNSPECIFIED"),
                if rating["blocked"] == true {
                    " (blocked)"
                } else {
                    ""
                }
            ));
        }
    }
    notices
}

/// Between a tool call's id and the thought signature Gemini attached to the call. The id is
/// the one field of a call every client (the OpenAI SDKs included) sends back unchanged in the
/// next turn, so the signature travels in it and goes back to Gemini as `thoughtSignature`, which
/// its thinking models need to continue from their reasoning.
const SIGNATURE_SEPARATOR: &str = "__thought__";

/// A `functionCall` part as a neutral tool call.
fn tool_call_of(part: &Value, index: usize) -> ToolCall {
    let call = &part["functionCall"];
    // Gemini calls carry an id only in newer models; one is made up where it is missing.
    let id = call["id"]
        .as_str()
        .map_or_else(|| format!("call_{index}"), str::to_owned);
    ToolCall {
        id: match part["thoughtSignature"].as_str() {
            Some(signature) => format!("{id}{SIGNATURE_SEPARATOR}{signature}"),
            None => id,
        },
        name: call["name"].as_str().unwrap_or_default().to_owned(),
        arguments_json: if call["args"].is_null() {
            "{}".to_owned()
        } else {
            call["args"].to_string()
        },
    }
}

/// The neutral response of a generateContent response body.
pub fn response_of(body: &Value) -> Result<ProviderResponse, ProviderError> {
    let notices = safety_notices(body);
    let Some(candidate) = body["candidates"].get(0) else {
        // A blocked prompt has no candidate: an empty answer stopped by the filter.
        if body["promptFeedback"]["blockReason"].is_string() {
            return Ok(ProviderResponse {
                message: Message {
                    role: Role::Assistant,
                    parts: Vec::new(),
                    name: None,
                },
                finish_reason: FinishReason::ContentFilter,
                usage: usage(&body["usageMetadata"]),
                notices,
            });
        }
        return Err(ProviderError::Other(
            "the response has no candidates".into(),
        ));
    };
    let mut parts = Vec::new();
    let mut calls = 0;
    for part in candidate["content"]["parts"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(text) = part["text"].as_str() {
            let kind = if part["thought"] == true {
                PartKind::Thinking {
                    text: text.to_owned(),
                    signature: None,
                }
            } else {
                PartKind::Text(text.to_owned())
            };
            parts.push(Part {
                kind,
                cache_breakpoint: false,
            });
        } else if part["functionCall"].is_object() {
            parts.push(Part {
                kind: PartKind::ToolCall(tool_call_of(part, calls)),
                cache_breakpoint: false,
            });
            calls += 1;
        }
    }
    Ok(ProviderResponse {
        message: Message {
            role: Role::Assistant,
            parts,
            name: None,
        },
        finish_reason: finish_reason(&candidate["finishReason"], calls > 0),
        usage: usage(&body["usageMetadata"]),
        notices,
    })
}

#[async_trait]
impl ChatProvider for Gemini {
    fn name(&self) -> &'static str {
        "gemini"
    }

    async fn complete(
        &self,
        deployment: &Deployment,
        request: &ChatRequest,
    ) -> Result<ProviderResponse, ProviderError> {
        let body = request_body(request)?;
        response_of(&self.call(deployment, "generateContent", &body).await?)
    }

    async fn stream(
        &self,
        deployment: &Deployment,
        request: &ChatRequest,
    ) -> Result<EventStream, ProviderError> {
        let body = request_body(request)?;
        let response = self
            .send(deployment, "streamGenerateContent?alt=sse", &body)
            .await?;
        Ok(stream_events(sse::events(response)))
    }
}

#[async_trait]
impl TokenCounter for Gemini {
    fn name(&self) -> &'static str {
        "gemini"
    }

    /// `models/{model}:countTokens` over the whole `generateContentRequest`, so that the system
    /// instruction and tools are counted too.
    async fn count_tokens(
        &self,
        deployment: &Deployment,
        request: &ChatRequest,
    ) -> Result<u64, ProviderError> {
        let mut generate = request_body(request)?;
        generate["model"] = json!(format!("models/{}", deployment.provider_model));
        let body = json!({ "generateContentRequest": generate });
        let answer = self.call(deployment, "countTokens", &body).await?;
        answer["totalTokens"]
            .as_u64()
            .ok_or_else(|| ProviderError::Other("the count has no totalTokens".into()))
    }
}

/// The most requests one `batchEmbedContents` call takes.
pub const EMBED_BATCH: usize = 100;

/// The body of `models/{model}:batchEmbedContents` for a batch of at most [`EMBED_BATCH`] texts.
pub fn batch_embed_body(
    deployment: &Deployment,
    inputs: &[String],
    dimensions: Option<u32>,
) -> Value {
    let requests: Vec<Value> = inputs
        .iter()
        .map(|text| {
            let mut request = json!({
                "model": format!("models/{}", deployment.provider_model),
                "content": { "parts": [{ "text": text }] },
            });
            if let Some(dimensions) = dimensions {
                request["outputDimensionality"] = json!(dimensions);
            }
            request
        })
        .collect();
    json!({ "requests": requests })
}

/// The vectors of a `batchEmbedContents` answer.
pub fn batch_embed_vectors(body: &Value, inputs: usize) -> Result<Vec<Vec<f32>>, ProviderError> {
    let vectors: Vec<Vec<f32>> = body["embeddings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|embedding| {
            embedding["values"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| v.as_f64().map(|f| f as f32))
                .collect::<Option<Vec<f32>>>()
                .unwrap_or_default()
        })
        .collect();
    if vectors.len() != inputs || vectors.iter().any(Vec::is_empty) {
        return Err(ProviderError::Other(format!(
            "malformed batchEmbedContents answer: {} vectors for {inputs} inputs",
            vectors.len()
        )));
    }
    Ok(vectors)
}

#[async_trait]
impl EmbeddingProvider for Gemini {
    fn name(&self) -> &'static str {
        "gemini"
    }

    /// Batches of [`EMBED_BATCH`], sent concurrently. Gemini reports no token usage for
    /// embeddings, so input tokens are estimated locally.
    async fn embed(
        &self,
        deployment: &Deployment,
        request: &EmbedRequest,
    ) -> Result<Embeddings, ProviderError> {
        let batches = request.inputs.chunks(EMBED_BATCH).map(|batch| async move {
            let body = batch_embed_body(deployment, batch, request.dimensions);
            let answer = self.call(deployment, "batchEmbedContents", &body).await?;
            batch_embed_vectors(&answer, batch.len())
        });
        let vectors = futures::future::try_join_all(batches)
            .await?
            .into_iter()
            .flatten()
            .collect();
        Ok(Embeddings {
            vectors,
            input_tokens: request
                .inputs
                .iter()
                .map(|t| tokens::estimate_text(t))
                .sum(),
        })
    }
}

/// streamGenerateContent events (each a whole GenerateContentResponse) to provider events. The
/// stream has no end marker: it is finished when it ends after a finish reason.
fn stream_events(
    events: futures::stream::BoxStream<'static, Result<sse::SseEvent, ProviderError>>,
) -> EventStream {
    struct State {
        events: futures::stream::BoxStream<'static, Result<sse::SseEvent, ProviderError>>,
        usage: Usage,
        finish: Option<Value>,
        calls: usize,
        pending: std::collections::VecDeque<ProviderEvent>,
        done: bool,
    }
    let state = State {
        events,
        usage: Usage::default(),
        finish: None,
        calls: 0,
        pending: Default::default(),
        done: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.pending.pop_front() {
                return Some((Ok(event), state));
            }
            if state.done {
                return None;
            }
            match state.events.next().await {
                None => {
                    state.done = true;
                    let Some(finish) = &state.finish else {
                        return Some((
                            Err(ProviderError::Unavailable(
                                "the stream ended without a finish reason".into(),
                            )),
                            state,
                        ));
                    };
                    let event = ProviderEvent::Finished {
                        finish_reason: finish_reason(finish, state.calls > 0),
                        usage: state.usage,
                    };
                    return Some((Ok(event), state));
                }
                Some(Err(err)) => {
                    state.done = true;
                    return Some((Err(err), state));
                }
                Some(Ok(event)) => {
                    let Ok(chunk) = serde_json::from_str::<Value>(&event.data) else {
                        state.done = true;
                        return Some((
                            Err(ProviderError::Other(
                                "a stream event does not decode".into(),
                            )),
                            state,
                        ));
                    };
                    if chunk["error"].is_object() {
                        state.done = true;
                        let status = chunk["error"]["code"]
                            .as_u64()
                            .and_then(|c| u16::try_from(c).ok())
                            .unwrap_or(500);
                        return Some((Err(error_from(status, &chunk)), state));
                    }
                    if chunk["usageMetadata"].is_object() {
                        state.usage = usage(&chunk["usageMetadata"]);
                    }
                    if chunk["promptFeedback"]["blockReason"].is_string() {
                        state.finish = Some(json!("SAFETY"));
                    }
                    let candidate = &chunk["candidates"][0];
                    for part in candidate["content"]["parts"]
                        .as_array()
                        .into_iter()
                        .flatten()
                    {
                        if let Some(text) = part["text"].as_str().filter(|t| !t.is_empty()) {
                            let delta = if part["thought"] == true {
                                Delta::Thinking(text.to_owned())
                            } else {
                                Delta::Text(text.to_owned())
                            };
                            state.pending.push_back(ProviderEvent::Delta(delta));
                        } else if part["functionCall"].is_object() {
                            let call = tool_call_of(part, state.calls);
                            state
                                .pending
                                .push_back(ProviderEvent::Delta(Delta::ToolCall(ToolCallDelta {
                                    index: u32::try_from(state.calls).unwrap_or(u32::MAX),
                                    id: Some(call.id),
                                    name: Some(call.name),
                                    arguments_json: call.arguments_json,
                                })));
                            state.calls += 1;
                        }
                    }
                    if !candidate["finishReason"].is_null() {
                        state.finish = Some(candidate["finishReason"].clone());
                    }
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_errors_carry_their_retry_delay() {
        let body = json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "quota", "details": [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "31s"}]}});
        assert_eq!(
            error_from(429, &body),
            ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(31))
            }
        );
        let bad_key = json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "API key not valid.", "details": [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}});
        assert_eq!(error_from(400, &bad_key), ProviderError::CredentialRejected);
        let overloaded = json!({"error": {"code": 503, "status": "UNAVAILABLE", "message": "The model is overloaded."}});
        assert!(error_from(503, &overloaded).is_retryable());
    }

    #[test]
    fn blocked_prompts_become_filtered_empty_answers_with_notices() {
        let body = json!({"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": [
            {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": true}]},
            "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12}});
        let response = response_of(&body).unwrap();
        assert_eq!(response.finish_reason, FinishReason::ContentFilter);
        assert!(response.message.parts.is_empty());
        assert!(
            response
                .notices
                .iter()
                .any(|n| n.contains("blocked the prompt: SAFETY"))
        );
        assert!(
            response
                .notices
                .iter()
                .any(|n| n.contains("HARM_CATEGORY_DANGEROUS_CONTENT HIGH (blocked)"))
        );
    }

    #[test]
    fn usage_counts_thoughts_as_output() {
        let u = usage(
            &json!({"promptTokenCount": 100, "candidatesTokenCount": 20, "thoughtsTokenCount": 30, "cachedContentTokenCount": 60}),
        );
        assert_eq!(
            u,
            Usage {
                input_tokens: 100,
                output_tokens: 50,
                cache_read_tokens: 60,
                cache_write_tokens: 0,
                reasoning_tokens: 30
            }
        );
    }
}
