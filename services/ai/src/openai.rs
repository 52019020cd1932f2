//! The OpenAI-compatible HTTP surface on the HTTP edge: `POST /v1/chat/completions` (with
//! `stream: true` as server-sent events ending in `data: [DONE]`), `POST /v1/embeddings`,
//! `POST /v1/images/generations`, `POST /v1/audio/transcriptions` and `GET /v1/models`, so the
//! official OpenAI SDKs work against Switchyard with its token as their API key. Any catalogue
//! model of any provider, and every alias, is usable through it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard_auth::Principal;
use switchyard_kit::{ApiError, Authenticator};

use crate::api::{SCOPE_COMPLETE, SCOPE_READ, api_error};
use crate::domain::error::AiError;
use crate::domain::model::*;
use crate::domain::service::{Ai, ModelView};
use crate::domain::tokens;
use crate::domain::transcription::MAX_AUDIO_BYTES;

/// The routes, behind the same authentication as gRPC.
pub fn router(ai: Ai, authenticator: Arc<dyn Authenticator>) -> Router {
    let completions = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/images/generations", post(image_generations))
        .route(
            "/v1/audio/transcriptions",
            post(transcriptions).layer(DefaultBodyLimit::max(MAX_UPLOAD_BODY)),
        )
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .route_layer(axum::middleware::from_fn_with_state(
            (authenticator.clone(), SCOPE_COMPLETE),
            switchyard_kit::http::require_scope,
        ));
    let models = Router::new()
        .route("/v1/models", get(list_models))
        .route_layer(axum::middleware::from_fn_with_state(
            (authenticator, SCOPE_READ),
            switchyard_kit::http::require_scope,
        ));
    completions.merge(models).with_state(ai)
}

/// The largest JSON request body: room for base64 images and documents in a conversation.
const MAX_JSON_BODY: usize = 32 * 1024 * 1024;
/// The largest transcription upload: the audio limit and the form around it.
const MAX_UPLOAD_BODY: usize = MAX_AUDIO_BYTES + 1024 * 1024;

/// An error in OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`), which the SDKs
/// parse, with the status of the same error on gRPC.
fn openai_error(err: ApiError) -> Response {
    let kind = match err.http_status().as_u16() {
        400 | 404 | 409 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        _ => "api_error",
    };
    let param = err.violations().first().map(|v| v.field.clone());
    let body = json!({
        "error": { "message": err.message(), "type": kind, "param": param, "code": err.reason().to_ascii_lowercase() }
    });
    let mut response = (err.http_status(), Json(body)).into_response();
    if let Some(delay) = err.retry_after()
        && let Ok(value) = axum::http::HeaderValue::from_str(&delay.as_secs().max(1).to_string())
    {
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, value);
    }
    response
}

fn invalid(field: &str, description: &str) -> ApiError {
    api_error(AiError::invalid(field, description))
}

/// A chat completion request as OpenAI documents it (the fields Switchyard uses).
#[derive(Debug, Deserialize)]
struct CompletionRequest {
    model: String,
    messages: Vec<OpenAiMessage>,
    #[serde(default)]
    tools: Vec<Value>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    response_format: Option<Value>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    stop: Option<Value>,
    seed: Option<i64>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<Value>,
    user: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    /// Switchyard's extension (the SDKs' `extra_body`): `{"name": ...}` or `{"principles": [...]}`.
    constitution: Option<ConstitutionBody>,
}

/// The constitution of a chat completion request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConstitutionBody {
    name: Option<String>,
    #[serde(default)]
    principles: Vec<Principle>,
}

#[derive(Debug, Deserialize)]
struct OpenAiMessage {
    role: String,
    #[serde(default)]
    content: Value,
    name: Option<String>,
    #[serde(default)]
    tool_calls: Vec<Value>,
    tool_call_id: Option<String>,
}

fn parts_of(content: &Value, field: &str) -> Result<Vec<Part>, ApiError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(text) => Ok(vec![Part::text(text.clone())]),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let field = format!("{field}[{i}]");
                match item.get("type").and_then(Value::as_str) {
                    Some("text") => Ok(Part::text(item["text"].as_str().unwrap_or_default())),
                    Some("image_url") => {
                        let url = item["image_url"]["url"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned();
                        let detail = item["image_url"]["detail"].as_str().map(str::to_owned);
                        Ok(Part {
                            kind: PartKind::Image {
                                source: Source::Url(url),
                                detail,
                            },
                            cache_breakpoint: false,
                        })
                    }
                    Some("input_audio") => {
                        let data = item["input_audio"]["data"].as_str().unwrap_or_default();
                        let bytes = STANDARD
                            .decode(data)
                            .map_err(|_| invalid(&field, "input_audio.data must be base64"))?;
                        let format = item["input_audio"]["format"]
                            .as_str()
                            .unwrap_or("wav")
                            .to_owned();
                        Ok(Part {
                            kind: PartKind::Audio { bytes, format },
                            cache_breakpoint: false,
                        })
                    }
                    _ => Err(invalid(
                        &field,
                        "content parts are text, image_url or input_audio",
                    )),
                }
            })
            .collect(),
        _ => Err(invalid(
            field,
            "must be a string or an array of content parts",
        )),
    }
}

fn chat_request(body: CompletionRequest) -> Result<(ChatRequest, bool, bool), ApiError> {
    let mut messages = Vec::with_capacity(body.messages.len());
    for (m, message) in body.messages.iter().enumerate() {
        let field = format!("messages[{m}]");
        let role = match message.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            _ => {
                return Err(invalid(
                    &format!("{field}.role"),
                    "system, developer, user, assistant or tool",
                ));
            }
        };
        let mut parts = parts_of(&message.content, &format!("{field}.content"))?;
        if role == Role::Tool {
            let content = parts
                .iter()
                .map(|p| match &p.kind {
                    PartKind::Text(t) => t.as_str(),
                    _ => "",
                })
                .collect::<String>();
            parts = vec![Part {
                kind: PartKind::ToolResult {
                    tool_call_id: message.tool_call_id.clone().unwrap_or_default(),
                    name: message.name.clone().unwrap_or_default(),
                    content,
                    is_error: false,
                },
                cache_breakpoint: false,
            }];
        }
        for call in &message.tool_calls {
            parts.push(Part {
                kind: PartKind::ToolCall(ToolCall {
                    id: call["id"].as_str().unwrap_or_default().to_owned(),
                    name: call["function"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    arguments_json: call["function"]["arguments"]
                        .as_str()
                        .unwrap_or("{}")
                        .to_owned(),
                }),
                cache_breakpoint: false,
            });
        }
        messages.push(Message {
            role,
            parts,
            name: message.name.clone().filter(|_| role != Role::Tool),
        });
    }
    let tools = body
        .tools
        .iter()
        .map(|tool| Tool {
            name: tool["function"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            description: tool["function"]["description"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            parameters: tool["function"]
                .get("parameters")
                .cloned()
                .unwrap_or_else(|| json!({"type": "object"})),
            strict: tool["function"]["strict"].as_bool().unwrap_or(false),
        })
        .collect();
    let tool_choice = match &body.tool_choice {
        None => None,
        Some(Value::String(mode)) => match mode.as_str() {
            "auto" => Some(ToolChoice::Auto),
            "none" => Some(ToolChoice::None),
            "required" => Some(ToolChoice::Required),
            _ => {
                return Err(invalid(
                    "tool_choice",
                    "auto, none, required or a named function",
                ));
            }
        },
        Some(choice) => match choice["function"]["name"].as_str() {
            Some(name) => Some(ToolChoice::Tool(name.to_owned())),
            None => {
                return Err(invalid(
                    "tool_choice",
                    "auto, none, required or a named function",
                ));
            }
        },
    };
    let response_format = match body
        .response_format
        .as_ref()
        .and_then(|f| f["type"].as_str())
    {
        None | Some("text") => ResponseFormat::Text,
        Some("json_object") => ResponseFormat::JsonObject,
        Some("json_schema") => {
            let schema = &body
                .response_format
                .as_ref()
                .map(|f| f["json_schema"].clone())
                .unwrap_or_default();
            ResponseFormat::JsonSchema {
                name: schema["name"].as_str().unwrap_or_default().to_owned(),
                schema: schema["schema"].clone(),
                strict: schema["strict"].as_bool().unwrap_or(false),
            }
        }
        Some(_) => {
            return Err(invalid(
                "response_format.type",
                "text, json_object or json_schema",
            ));
        }
    };
    let stop = match &body.stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect(),
        Some(_) => return Err(invalid("stop", "a string or an array of strings")),
    };
    let include_usage = body
        .stream_options
        .as_ref()
        .and_then(|o| o["include_usage"].as_bool())
        .unwrap_or(false);
    let request = ChatRequest {
        model: body.model,
        messages,
        tools,
        tool_choice,
        parallel_tool_calls: body.parallel_tool_calls,
        response_format,
        temperature: body.temperature,
        top_p: body.top_p,
        max_output_tokens: body.max_completion_tokens.or(body.max_tokens),
        stop,
        seed: body.seed,
        tags: body.metadata,
        end_user_id: body.user,
        provider_options: ProviderOptions::default(),
        allow_unsupported: false,
        truncation: None,
        constitution: match body.constitution {
            None => None,
            Some(ConstitutionBody {
                name: Some(name),
                principles,
            }) if principles.is_empty() => Some(ConstitutionChoice::Named(name)),
            Some(ConstitutionBody {
                name: None,
                principles,
            }) => Some(ConstitutionChoice::Inline(principles)),
            Some(_) => {
                return Err(invalid("constitution", "a name or principles, not both"));
            }
        },
    };
    Ok((request, body.stream, include_usage))
}

fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop | FinishReason::Error => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
    }
}

fn usage_json(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": { "cached_tokens": usage.cache_read_tokens },
        "completion_tokens_details": { "reasoning_tokens": usage.reasoning_tokens },
    })
}

fn tool_calls_json(message: &Message) -> Vec<Value> {
    message
        .tool_calls()
        .map(|call| json!({"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments_json}}))
        .collect()
}

fn completion_json(response: &ChatResponse) -> Value {
    let text = response.message.text();
    let calls = tool_calls_json(&response.message);
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) }, "refusal": null});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let mut completion = json!({
        "id": response.id,
        "object": "chat.completion",
        "created": response.created,
        "model": response.model,
        "choices": [{ "index": 0, "message": message, "finish_reason": finish_reason(response.finish_reason), "logprobs": null }],
        "usage": usage_json(&response.usage),
    });
    if !response.constitution_trace.is_empty() {
        completion["constitution_trace"] = response
            .constitution_trace
            .iter()
            .map(|step| json!({"principle": step.principle, "critique": step.critique, "revision": step.revision}))
            .collect();
    }
    completion
}

async fn chat_completions(
    State(ai): State<Ai>,
    Extension(principal): Extension<Principal>,
    body: axum::body::Bytes,
) -> Response {
    let body: CompletionRequest = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(err) => {
            return openai_error(invalid(
                "body",
                &format!("not a chat completion request: {err}"),
            ));
        }
    };
    let (request, stream, include_usage) = match chat_request(body) {
        Ok(parsed) => parsed,
        Err(err) => return openai_error(err),
    };
    let caller = caller_of(&principal);
    if !stream {
        return match ai.complete(&caller, &request).await {
            Ok(response) => Json(completion_json(&response)).into_response(),
            Err(err) => openai_error(api_error(err)),
        };
    }
    let streaming = match ai.stream(&caller, &request).await {
        Ok(streaming) => streaming,
        Err(err) => return openai_error(api_error(err)),
    };
    let model = request.model.clone();
    let (id, created, events) = (streaming.id, streaming.created, streaming.events);
    let chunk = move |delta: Value, finish: Option<&str>| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]})
    };
    let first = chunk(json!({"role": "assistant", "content": ""}), None);
    let chunks = events.flat_map(move |event| {
        let out: Vec<Value> = match event {
            Ok(StreamEvent::Delta(Delta::Text(text))) => vec![chunk(json!({"content": text}), None)],
            Ok(StreamEvent::Delta(Delta::Thinking(_))) => Vec::new(),
            Ok(StreamEvent::Delta(Delta::ToolCall(piece))) => {
                let mut call = json!({"index": piece.index, "function": {"arguments": piece.arguments_json}});
                if let Some(id) = piece.id {
                    call["id"] = json!(id);
                    call["type"] = json!("function");
                }
                if let Some(name) = piece.name {
                    call["function"]["name"] = json!(name);
                }
                vec![chunk(json!({"tool_calls": [call]}), None)]
            }
            Ok(StreamEvent::Done(response)) => {
                let mut last = vec![chunk(json!({}), Some(finish_reason(response.finish_reason)))];
                if include_usage {
                    let mut usage = chunk(json!({}), None);
                    usage["choices"] = json!([]);
                    usage["usage"] = usage_json(&response.usage);
                    last.push(usage);
                }
                last
            }
            // A failure after the response started: OpenAI sends an error object in the stream.
            Err(err) => {
                let api = api_error(err);
                vec![json!({"error": {"message": api.message(), "type": "api_error", "code": api.reason().to_ascii_lowercase()}})]
            }
        };
        futures::stream::iter(out)
    });
    let events = futures::stream::once(async move { first })
        .chain(chunks)
        .map(|value| Ok::<_, Infallible>(Event::default().data(value.to_string())))
        .chain(futures::stream::once(async {
            Ok(Event::default().data("[DONE]"))
        }));
    Sse::new(events).into_response()
}

/// An embeddings request as OpenAI documents it.
#[derive(Debug, Deserialize)]
struct EmbeddingsRequest {
    model: String,
    input: Value,
    dimensions: Option<u32>,
    encoding_format: Option<String>,
    user: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// The texts of `input`: a string, strings, token ids or lists of token ids (which LangChain
/// and others send), decoded with the model's tokenizer.
fn embedding_inputs(model: &str, input: &Value) -> Result<Vec<String>, ApiError> {
    let ids = |value: &Value| -> Option<Vec<u32>> {
        value
            .as_array()?
            .iter()
            .map(|id| id.as_u64().and_then(|id| u32::try_from(id).ok()))
            .collect()
    };
    let text = |ids: Vec<u32>| {
        tokens::decode(model, &ids).ok_or_else(|| {
            invalid(
                "input",
                "holds token ids the model's tokenizer does not know",
            )
        })
    };
    match input {
        Value::String(text) => Ok(vec![text.clone()]),
        Value::Array(items) if items.iter().all(Value::is_string) => Ok(items
            .iter()
            .filter_map(|item| item.as_str().map(str::to_owned))
            .collect()),
        Value::Array(items) if items.iter().all(Value::is_u64) => {
            Ok(vec![text(ids(input).unwrap_or_default())?])
        }
        Value::Array(items) => items
            .iter()
            .map(|item| {
                ids(item)
                    .ok_or_else(|| {
                        invalid(
                            "input",
                            "a string, strings, token ids or lists of token ids",
                        )
                    })
                    .and_then(text)
            })
            .collect(),
        _ => Err(invalid(
            "input",
            "a string, strings, token ids or lists of token ids",
        )),
    }
}

async fn embeddings(
    State(ai): State<Ai>,
    Extension(principal): Extension<Principal>,
    body: axum::body::Bytes,
) -> Response {
    let body: EmbeddingsRequest = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(err) => {
            return openai_error(invalid(
                "body",
                &format!("not an embeddings request: {err}"),
            ));
        }
    };
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => return openai_error(invalid("encoding_format", "float or base64")),
    };
    let inputs = match embedding_inputs(&body.model, &body.input) {
        Ok(inputs) => inputs,
        Err(err) => return openai_error(err),
    };
    let request = EmbedRequest {
        model: body.model,
        inputs,
        dimensions: body.dimensions,
        tags: body.metadata,
        end_user_id: body.user,
    };
    let caller = caller_of(&principal);
    let response = match ai.embed(&caller, &request).await {
        Ok(response) => response,
        Err(err) => return openai_error(api_error(err)),
    };
    let data: Vec<Value> = response
        .vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                json!(STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let tokens = response.usage.input_tokens;
    Json(json!({
        "object": "list",
        "data": data,
        "model": response.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response()
}

/// An image generation request as OpenAI documents it.
#[derive(Debug, Deserialize)]
struct ImagesRequest {
    model: Option<String>,
    prompt: String,
    n: Option<u32>,
    size: Option<String>,
    quality: Option<String>,
    style: Option<String>,
    response_format: Option<String>,
    output_format: Option<String>,
    background: Option<String>,
    user: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

async fn image_generations(
    State(ai): State<Ai>,
    Extension(principal): Extension<Principal>,
    body: axum::body::Bytes,
) -> Response {
    let body: ImagesRequest = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(err) => {
            return openai_error(invalid(
                "body",
                &format!("not an image generation request: {err}"),
            ));
        }
    };
    let delivery = match body.response_format.as_deref() {
        None => ImageDelivery::ModelDefault,
        Some("url") => ImageDelivery::Url,
        Some("b64_json") => ImageDelivery::Bytes,
        Some(_) => return openai_error(invalid("response_format", "url or b64_json")),
    };
    // OpenAI's default model, which Switchyard does not serve, is never picked silently.
    let Some(model) = body.model else {
        return openai_error(invalid("model", "is required"));
    };
    let request = ImageRequest {
        model,
        prompt: body.prompt,
        count: body.n.unwrap_or(1),
        size: body.size,
        quality: body.quality,
        style: body.style,
        delivery,
        output_format: body.output_format,
        background: body.background,
        tags: body.metadata,
        end_user_id: body.user,
    };
    let response = match ai.generate_image(&caller_of(&principal), &request).await {
        Ok(response) => response,
        Err(err) => return openai_error(api_error(err)),
    };
    let data: Vec<Value> = response
        .images
        .iter()
        .map(|image| {
            let mut item = match &image.data {
                ImageData::Url(url) => json!({ "url": url }),
                ImageData::Bytes(bytes) => json!({ "b64_json": STANDARD.encode(bytes) }),
            };
            if let Some(revised) = &image.revised_prompt {
                item["revised_prompt"] = json!(revised);
            }
            item
        })
        .collect();
    let mut answer = json!({ "created": response.created, "data": data });
    if response.usage != Usage::default() {
        answer["usage"] = json!({
            "input_tokens": response.usage.input_tokens,
            "output_tokens": response.usage.output_tokens,
            "total_tokens": response.usage.input_tokens + response.usage.output_tokens,
            "input_tokens_details": { "text_tokens": response.usage.input_tokens, "image_tokens": 0 },
        });
    }
    Json(answer).into_response()
}

fn caller_of(principal: &Principal) -> Caller {
    Caller {
        tenant: principal.tenant.clone(),
        subject: principal.subject.clone(),
    }
}

/// How a transcript is returned over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TranscriptFormat {
    Json,
    Text,
    VerboseJson,
    Srt,
    Vtt,
}

/// The fields of a transcription form, as OpenAI documents them.
async fn transcription_request(
    mut form: Multipart,
) -> Result<(TranscriptionRequest, TranscriptFormat), ApiError> {
    let mut request = TranscriptionRequest::default();
    let mut format = TranscriptFormat::Json;
    let mut granularities = Vec::new();
    let bad_form = |err: axum::extract::multipart::MultipartError| {
        invalid(
            "body",
            &format!("not a multipart form: {}", err.body_text()),
        )
    };
    while let Some(field) = form.next_field().await.map_err(bad_form)? {
        let name = field.name().unwrap_or_default().to_owned();
        if name == "file" {
            request.filename = field.file_name().unwrap_or_default().to_owned();
            request.audio = field.bytes().await.map_err(bad_form)?;
            continue;
        }
        let value = field.text().await.map_err(bad_form)?;
        match name.as_str() {
            "model" => request.model = value,
            "language" => request.language = Some(value),
            "prompt" => request.prompt = Some(value),
            "temperature" => {
                request.temperature = Some(
                    value
                        .parse()
                        .map_err(|_| invalid("temperature", "a number between 0 and 1"))?,
                );
            }
            "response_format" => {
                format = match value.as_str() {
                    "json" => TranscriptFormat::Json,
                    "text" => TranscriptFormat::Text,
                    "verbose_json" => TranscriptFormat::VerboseJson,
                    "srt" => TranscriptFormat::Srt,
                    "vtt" => TranscriptFormat::Vtt,
                    _ => {
                        return Err(invalid(
                            "response_format",
                            "json, text, verbose_json, srt or vtt",
                        ));
                    }
                };
            }
            "timestamp_granularities[]" | "timestamp_granularities" => granularities.push(value),
            "stream" if value == "false" => {}
            "stream" => {
                return Err(invalid(
                    "stream",
                    "streamed transcripts are not supported; leave stream unset",
                ));
            }
            "user" => request.end_user_id = Some(value),
            other => {
                return Err(invalid(
                    other,
                    "is not a transcription parameter Switchyard supports",
                ));
            }
        }
    }
    if request.model.is_empty() {
        return Err(invalid("model", "is required"));
    }
    if request.audio.is_empty() {
        return Err(invalid("file", "is required"));
    }
    if !granularities.is_empty() && format != TranscriptFormat::VerboseJson {
        return Err(invalid(
            "timestamp_granularities",
            "needs response_format verbose_json",
        ));
    }
    for granularity in &granularities {
        match granularity.as_str() {
            "segment" => request.segment_timestamps = true,
            "word" => request.word_timestamps = true,
            _ => return Err(invalid("timestamp_granularities", "segment or word")),
        }
    }
    // Subtitles and the verbose answer are made of segments, OpenAI's default granularity.
    if matches!(format, TranscriptFormat::Srt | TranscriptFormat::Vtt)
        || (format == TranscriptFormat::VerboseJson && granularities.is_empty())
    {
        request.segment_timestamps = true;
    }
    Ok((request, format))
}

/// `HH:MM:SS` and milliseconds after `separator`, as SubRip (`,`) and WebVTT (`.`) write times.
fn subtitle_time(at: std::time::Duration, separator: char) -> String {
    let millis = at.as_millis();
    format!(
        "{:02}:{:02}:{:02}{separator}{:03}",
        millis / 3_600_000,
        millis / 60_000 % 60,
        millis / 1000 % 60,
        millis % 1000
    )
}

fn transcript_answer(response: &TranscriptionResponse, format: TranscriptFormat) -> Response {
    let transcript = &response.transcript;
    let text_response = |body: String| {
        (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            )],
            body,
        )
            .into_response()
    };
    match format {
        TranscriptFormat::Text => text_response(format!("{}\n", transcript.text)),
        TranscriptFormat::Srt => text_response(
            transcript
                .segments
                .iter()
                .enumerate()
                .map(|(index, s)| {
                    format!(
                        "{}\n{} --> {}\n{}\n\n",
                        index + 1,
                        subtitle_time(s.start, ','),
                        subtitle_time(s.end, ','),
                        s.text.trim()
                    )
                })
                .collect(),
        ),
        TranscriptFormat::Vtt => text_response(
            std::iter::once("WEBVTT\n\n".to_owned())
                .chain(transcript.segments.iter().map(|s| {
                    format!(
                        "{} --> {}\n{}\n\n",
                        subtitle_time(s.start, '.'),
                        subtitle_time(s.end, '.'),
                        s.text.trim()
                    )
                }))
                .collect(),
        ),
        TranscriptFormat::Json => {
            let mut answer = json!({ "text": transcript.text });
            if response.usage != Usage::default() {
                answer["usage"] = json!({
                    "type": "tokens",
                    "input_tokens": response.usage.input_tokens,
                    "output_tokens": response.usage.output_tokens,
                    "total_tokens": response.usage.input_tokens + response.usage.output_tokens,
                });
            } else if let Some(duration) = transcript.duration {
                answer["usage"] =
                    json!({ "type": "duration", "seconds": duration.as_secs_f64().ceil() });
            }
            Json(answer).into_response()
        }
        TranscriptFormat::VerboseJson => {
            let segments: Vec<Value> = transcript
                .segments
                .iter()
                .map(|s| json!({ "id": s.id, "start": s.start.as_secs_f64(), "end": s.end.as_secs_f64(), "text": s.text }))
                .collect();
            let mut answer = json!({
                "task": "transcribe",
                "language": transcript.language,
                "duration": transcript.duration.map(|d| d.as_secs_f64()),
                "text": transcript.text,
                "segments": segments,
            });
            if !transcript.words.is_empty() {
                answer["words"] = transcript
                    .words
                    .iter()
                    .map(|w| json!({ "word": w.word, "start": w.start.as_secs_f64(), "end": w.end.as_secs_f64() }))
                    .collect();
            }
            Json(answer).into_response()
        }
    }
}

async fn transcriptions(
    State(ai): State<Ai>,
    Extension(principal): Extension<Principal>,
    form: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    let form = match form {
        Ok(form) => form,
        Err(err) => {
            return openai_error(invalid(
                "body",
                &format!("not a multipart form: {}", err.body_text()),
            ));
        }
    };
    let (request, format) = match transcription_request(form).await {
        Ok(parsed) => parsed,
        Err(err) => return openai_error(err),
    };
    match ai.transcribe(&caller_of(&principal), &request).await {
        Ok(response) => transcript_answer(&response, format),
        Err(err) => openai_error(api_error(err)),
    }
}

async fn list_models(State(ai): State<Ai>) -> Response {
    let data: Vec<Value> = ai
        .models(None)
        .into_iter()
        .map(|view| {
            let (id, owner) = match view {
                ModelView::Model { id, entry } => (id, entry.provider.as_str()),
                ModelView::Alias { id, .. } => (id, "switchyard"),
            };
            json!({"id": id, "object": "model", "created": 0, "owned_by": owner})
        })
        .collect();
    (
        StatusCode::OK,
        Json(json!({"object": "list", "data": data})),
    )
        .into_response()
}
