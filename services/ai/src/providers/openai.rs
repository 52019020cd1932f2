//! The OpenAI adapter: Chat Completions (`POST /v1/chat/completions`), unary and streamed with
//! `stream_options.include_usage`, with tools, vision, documents, audio input and JSON-schema
//! output; the `OpenAI-Organization` and `OpenAI-Project` headers; rate-limit headers read into
//! metrics; errors mapped by status and OpenAI's error code.

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
    ChatProvider, Deployment, EmbeddingProvider, Embeddings, EventStream, GeneratedImages,
    ImageProvider, ProviderError, ProviderEvent, ProviderResponse, Transcribed,
    TranscriptionProvider, decode, transport_error,
};
use crate::domain::model::*;

/// OpenAI's public API.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// The OpenAI adapter.
#[derive(Debug)]
pub struct OpenAi {
    http: reqwest::Client,
    keys: Arc<dyn KeySource>,
}

impl OpenAi {
    /// An adapter sending with `http` and the keys of `keys`.
    pub fn new(http: reqwest::Client, keys: Arc<dyn KeySource>) -> Self {
        OpenAi { http, keys }
    }

    /// Sends `body` to `path` of the deployment's API with its key and headers; a JSON value is
    /// sent as JSON, a form as multipart.
    async fn send(
        &self,
        deployment: &Deployment,
        path: &str,
        body: Body<'_>,
    ) -> Result<reqwest::Response, ProviderError> {
        let key = deployment.api_key(self.keys.as_ref()).await?;
        let base = deployment.base_url_or(DEFAULT_BASE_URL);
        let mut request = self
            .http
            .post(format!("{base}/{path}"))
            .bearer_auth(key.expose_secret())
            .timeout(deployment.timeout);
        request = match body {
            Body::Json(value) => request.json(value),
            Body::Form(form) => request.multipart(form),
        };
        if let Some(organization) = &deployment.organization {
            request = request.header("OpenAI-Organization", organization);
        }
        if let Some(project) = &deployment.project {
            request = request.header("OpenAI-Project", project);
        }
        let response = request.send().await.map_err(transport_error)?;
        record_rate_limits(deployment, response.headers());
        if response.status().is_success() {
            return Ok(response);
        }
        Err(error_of(response).await)
    }

    /// Sends a JSON body and decodes the JSON answer.
    async fn call(
        &self,
        deployment: &Deployment,
        path: &str,
        body: &Value,
    ) -> Result<Value, ProviderError> {
        let response = self.send(deployment, path, Body::Json(body)).await?;
        decode(response).await
    }
}

/// A request body.
enum Body<'a> {
    Json(&'a Value),
    Form(reqwest::multipart::Form),
}

/// OpenAI's rate-limit headers, as gauges per deployment.
fn record_rate_limits(deployment: &Deployment, headers: &reqwest::header::HeaderMap) {
    for (header, kind) in [
        ("x-ratelimit-remaining-requests", "requests"),
        ("x-ratelimit-remaining-tokens", "tokens"),
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

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if let Some(ms) = value("retry-after-ms").and_then(|v| v.parse::<u64>().ok()) {
        return Some(Duration::from_millis(ms));
    }
    value("retry-after")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|secs| secs.is_finite() && *secs >= 0.0)
        .map(Duration::from_secs_f64)
}

async fn error_of(response: reqwest::Response) -> ProviderError {
    let status = response.status().as_u16();
    let wait = retry_after(response.headers());
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or("no error message")
        .to_owned();
    let code = body["error"]["code"].as_str().unwrap_or_default();
    match (status, code) {
        // Billing, not load: retrying elsewhere with the same key cannot help.
        (429, "insufficient_quota") => ProviderError::CredentialRejected,
        (429, _) => ProviderError::RateLimited { retry_after: wait },
        (401 | 403, _) => ProviderError::CredentialRejected,
        (400, "context_length_exceeded") => ProviderError::ContextLength,
        (400 | 404 | 422, _) => ProviderError::InvalidRequest(message),
        (408, _) => ProviderError::Timeout,
        (500..=599, _) => ProviderError::Unavailable(format!("{status}: {message}")),
        _ => ProviderError::Other(format!("{status}: {message}")),
    }
}

fn data_url(mime_type: &str, bytes: &[u8]) -> String {
    format!("data:{mime_type};base64,{}", STANDARD.encode(bytes))
}

fn source_url(source: &Source) -> String {
    match source {
        Source::Url(url) => url.clone(),
        Source::Data { mime_type, bytes } => data_url(mime_type, bytes),
    }
}

/// The content parts of a user message in OpenAI's format.
fn content_parts(parts: &[Part]) -> Result<Vec<Value>, ProviderError> {
    let mut out = Vec::new();
    for part in parts {
        match &part.kind {
            PartKind::Text(text) => out.push(json!({"type": "text", "text": text})),
            PartKind::Image { source, detail } => {
                let mut image = json!({"url": source_url(source)});
                if let Some(detail) = detail {
                    image["detail"] = json!(detail);
                }
                out.push(json!({"type": "image_url", "image_url": image}));
            }
            PartKind::Document { source, title } => {
                let Source::Data { mime_type, bytes } = source else {
                    return Err(ProviderError::Unsupported {
                        feature: "document parts by URL".into(),
                        provider: "openai".into(),
                    });
                };
                let filename = title.clone().unwrap_or_else(|| "document.pdf".into());
                out.push(json!({"type": "file", "file": {"filename": filename, "file_data": data_url(mime_type, bytes)}}));
            }
            PartKind::Audio { bytes, format } => {
                out.push(json!({"type": "input_audio", "input_audio": {"data": STANDARD.encode(bytes), "format": format}}));
            }
            // Tool parts travel in their own messages; thinking is never sent back to OpenAI.
            PartKind::ToolCall(_) | PartKind::ToolResult { .. } | PartKind::Thinking { .. } => {}
        }
    }
    Ok(out)
}

/// The body of a Chat Completions request.
pub fn request_body(
    deployment: &Deployment,
    request: &ChatRequest,
    stream: bool,
) -> Result<Value, ProviderError> {
    let mut messages = Vec::new();
    for message in &request.messages {
        match message.role {
            Role::System => messages.push(json!({"role": "system", "content": message.text()})),
            Role::User => {
                let only_text = message
                    .parts
                    .iter()
                    .all(|p| matches!(p.kind, PartKind::Text(_)));
                let content = if only_text {
                    json!(message.text())
                } else {
                    Value::Array(content_parts(&message.parts)?)
                };
                let mut user = json!({"role": "user", "content": content});
                if let Some(name) = &message.name {
                    user["name"] = json!(name);
                }
                messages.push(user);
            }
            Role::Assistant => {
                let text = message.text();
                let calls: Vec<Value> = message
                    .tool_calls()
                    .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments_json}}))
                    .collect();
                let mut assistant = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { json!(text) }});
                if !calls.is_empty() {
                    assistant["tool_calls"] = Value::Array(calls);
                }
                messages.push(assistant);
            }
            Role::Tool => {
                for part in &message.parts {
                    if let PartKind::ToolResult {
                        tool_call_id,
                        content,
                        ..
                    } = &part.kind
                    {
                        messages.push(json!({"role": "tool", "tool_call_id": tool_call_id, "content": content}));
                    }
                }
            }
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(deployment.provider_model));
    body.insert("messages".into(), Value::Array(messages));
    if !request.tools.is_empty() {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|t| {
                let mut function = json!({"name": t.name, "parameters": t.parameters});
                if !t.description.is_empty() {
                    function["description"] = json!(t.description);
                }
                if t.strict {
                    function["strict"] = json!(true);
                }
                json!({"type": "function", "function": function})
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = &request.tool_choice {
        body.insert(
            "tool_choice".into(),
            match choice {
                ToolChoice::Auto => json!("auto"),
                ToolChoice::None => json!("none"),
                ToolChoice::Required => json!("required"),
                ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
            },
        );
    }
    if let Some(parallel) = request.parallel_tool_calls {
        body.insert("parallel_tool_calls".into(), json!(parallel));
    }
    match &request.response_format {
        ResponseFormat::Text => {}
        ResponseFormat::JsonObject => {
            body.insert("response_format".into(), json!({"type": "json_object"}));
        }
        ResponseFormat::JsonSchema {
            name,
            schema,
            strict,
        } => {
            body.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": strict}}),
            );
        }
    }
    for (key, value) in [
        ("temperature", request.temperature.map(|v| json!(v))),
        ("top_p", request.top_p.map(|v| json!(v))),
        (
            "max_completion_tokens",
            request.max_output_tokens.map(|v| json!(v)),
        ),
        ("seed", request.seed.map(|v| json!(v))),
        ("user", request.end_user_id.as_ref().map(|v| json!(v))),
    ] {
        if let Some(value) = value {
            body.insert(key.into(), value);
        }
    }
    if !request.stop.is_empty() {
        body.insert("stop".into(), json!(request.stop));
    }
    if let Some(options) = &request.provider_options.openai {
        for (key, value) in options {
            body.insert(key.clone(), value.clone());
        }
    }
    if stream {
        body.insert("stream".into(), json!(true));
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(Value::Object(body))
}

fn finish_reason(value: &Value) -> FinishReason {
    match value.as_str() {
        Some("length") => FinishReason::Length,
        Some("tool_calls" | "function_call") => FinishReason::ToolCalls,
        Some("content_filter") => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

/// OpenAI's usage: `prompt_tokens` already counts cached tokens, so it is the input as is.
fn usage(value: &Value) -> Usage {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    Usage {
        input_tokens: n(&value["prompt_tokens"]),
        output_tokens: n(&value["completion_tokens"]),
        cache_read_tokens: n(&value["prompt_tokens_details"]["cached_tokens"]),
        cache_write_tokens: 0,
        reasoning_tokens: n(&value["completion_tokens_details"]["reasoning_tokens"]),
    }
}

/// The neutral response of a Chat Completions response body.
pub fn response_of(body: &Value) -> Result<ProviderResponse, ProviderError> {
    let choice = body["choices"]
        .get(0)
        .ok_or_else(|| ProviderError::Other("the response has no choices".into()))?;
    let message = &choice["message"];
    let mut parts = Vec::new();
    if let Some(text) = message["content"].as_str().filter(|t| !t.is_empty()) {
        parts.push(Part::text(text));
    }
    if let Some(refusal) = message["refusal"].as_str() {
        parts.push(Part::text(refusal));
    }
    for call in message["tool_calls"].as_array().into_iter().flatten() {
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
    Ok(ProviderResponse {
        message: Message {
            role: Role::Assistant,
            parts,
            name: None,
        },
        finish_reason: finish_reason(&choice["finish_reason"]),
        usage: usage(&body["usage"]),
        notices: Vec::new(),
    })
}

#[async_trait]
impl ChatProvider for OpenAi {
    fn name(&self) -> &'static str {
        "openai"
    }

    async fn complete(
        &self,
        deployment: &Deployment,
        request: &ChatRequest,
    ) -> Result<ProviderResponse, ProviderError> {
        let body = request_body(deployment, request, false)?;
        response_of(&self.call(deployment, "chat/completions", &body).await?)
    }

    async fn stream(
        &self,
        deployment: &Deployment,
        request: &ChatRequest,
    ) -> Result<EventStream, ProviderError> {
        let body = request_body(deployment, request, true)?;
        let response = self
            .send(deployment, "chat/completions", Body::Json(&body))
            .await?;
        Ok(stream_events(sse::events(response)))
    }
}

/// The body of `POST /v1/embeddings`. Vectors are asked for in base64 (little-endian f32), a
/// quarter of the bytes of decimal floats, as OpenAI's own SDKs do.
pub fn embeddings_body(deployment: &Deployment, request: &EmbedRequest) -> Value {
    let mut body = json!({
        "model": deployment.provider_model,
        "input": request.inputs,
        "encoding_format": "base64",
    });
    if let Some(dimensions) = request.dimensions {
        body["dimensions"] = json!(dimensions);
    }
    if let Some(user) = &request.end_user_id {
        body["user"] = json!(user);
    }
    body
}

/// Little-endian f32s, as the base64 encoding format carries them.
fn floats_of_le_bytes(bytes: &[u8]) -> Option<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

/// The vectors of an embeddings answer (base64 or decimal), put in input order by `index`.
pub fn embeddings_of(body: &Value, inputs: usize) -> Result<Embeddings, ProviderError> {
    let malformed =
        |what: &str| ProviderError::Other(format!("malformed embeddings answer: {what}"));
    let data = body["data"]
        .as_array()
        .ok_or_else(|| malformed("no data"))?;
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; inputs];
    for item in data {
        let index = item["index"]
            .as_u64()
            .and_then(|i| usize::try_from(i).ok())
            .filter(|i| *i < inputs)
            .ok_or_else(|| malformed("an index out of range"))?;
        let vector = match &item["embedding"] {
            Value::String(encoded) => STANDARD
                .decode(encoded)
                .ok()
                .and_then(|bytes| floats_of_le_bytes(&bytes)),
            Value::Array(values) => values
                .iter()
                .map(|v| v.as_f64().map(|f| f as f32))
                .collect(),
            _ => None,
        }
        .ok_or_else(|| malformed("an embedding is neither base64 nor numbers"))?;
        vectors[index] = Some(vector);
    }
    let vectors = vectors
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| malformed("an input has no embedding"))?;
    Ok(Embeddings {
        vectors,
        input_tokens: body["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
    })
}

#[async_trait]
impl EmbeddingProvider for OpenAi {
    fn name(&self) -> &'static str {
        "openai"
    }

    async fn embed(
        &self,
        deployment: &Deployment,
        request: &EmbedRequest,
    ) -> Result<Embeddings, ProviderError> {
        let body = embeddings_body(deployment, request);
        embeddings_of(
            &self.call(deployment, "embeddings", &body).await?,
            request.inputs.len(),
        )
    }
}

/// The body of `POST /v1/images/generations`. DALL-E models and GPT image models take different
/// parameters; one a model does not take is refused here rather than sent.
pub fn image_body(deployment: &Deployment, request: &ImageRequest) -> Result<Value, ProviderError> {
    let model = deployment.provider_model.as_str();
    let unsupported = |feature: &str| ProviderError::Unsupported {
        feature: feature.to_owned(),
        provider: format!("openai {model}"),
    };
    let mut body = json!({ "model": model, "prompt": request.prompt, "n": request.count });
    if model.starts_with("dall-e") {
        if model == "dall-e-3" && request.count > 1 {
            return Err(unsupported("count > 1"));
        }
        if request.output_format.is_some() {
            return Err(unsupported("output_format"));
        }
        if request.background.is_some() {
            return Err(unsupported("background"));
        }
        let format = match request.delivery {
            ImageDelivery::Bytes => "b64_json",
            ImageDelivery::Url | ImageDelivery::ModelDefault => "url",
        };
        body["response_format"] = json!(format);
        if let Some(style) = &request.style {
            body["style"] = json!(style);
        }
    } else {
        // GPT image models always answer with the bytes.
        if request.delivery == ImageDelivery::Url {
            return Err(unsupported("delivery = URL"));
        }
        if request.style.is_some() {
            return Err(unsupported("style"));
        }
        if let Some(format) = &request.output_format {
            body["output_format"] = json!(format);
        }
        if let Some(background) = &request.background {
            body["background"] = json!(background);
        }
    }
    if let Some(size) = &request.size {
        body["size"] = json!(size);
    }
    if let Some(quality) = &request.quality {
        body["quality"] = json!(quality);
    }
    if let Some(user) = &request.end_user_id {
        body["user"] = json!(user);
    }
    Ok(body)
}

/// The images of an `ImagesResponse`, and its token usage where the model reports it.
pub fn images_of(body: &Value, request: &ImageRequest) -> Result<GeneratedImages, ProviderError> {
    let format = body["output_format"]
        .as_str()
        .or(request.output_format.as_deref())
        .unwrap_or("png");
    let mime_type = format!("image/{format}");
    let images = body["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| {
            let data = if let Some(url) = item["url"].as_str() {
                ImageData::Url(url.to_owned())
            } else {
                let encoded = item["b64_json"].as_str().ok_or_else(|| {
                    ProviderError::Other("an image has neither url nor b64_json".into())
                })?;
                ImageData::Bytes(STANDARD.decode(encoded).map_err(|_| {
                    ProviderError::Other("an image's b64_json is not base64".into())
                })?)
            };
            Ok(Image {
                data,
                mime_type: mime_type.clone(),
                revised_prompt: item["revised_prompt"].as_str().map(str::to_owned),
            })
        })
        .collect::<Result<Vec<_>, ProviderError>>()?;
    if images.is_empty() {
        return Err(ProviderError::Other("the answer holds no image".into()));
    }
    let usage = body["usage"].is_object().then(|| Usage {
        input_tokens: body["usage"]["input_tokens"].as_u64().unwrap_or(0),
        output_tokens: body["usage"]["output_tokens"].as_u64().unwrap_or(0),
        ..Usage::default()
    });
    Ok(GeneratedImages { images, usage })
}

#[async_trait]
impl ImageProvider for OpenAi {
    fn name(&self) -> &'static str {
        "openai"
    }

    async fn generate(
        &self,
        deployment: &Deployment,
        request: &ImageRequest,
    ) -> Result<GeneratedImages, ProviderError> {
        let body = image_body(deployment, request)?;
        images_of(
            &self.call(deployment, "images/generations", &body).await?,
            request,
        )
    }
}

/// The MIME type of an audio file by its extension, as the upload's part declares it.
fn audio_mime(filename: &str) -> &'static str {
    match filename
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .as_deref()
    {
        Some("flac") => "audio/flac",
        Some("wav") => "audio/wav",
        Some("ogg") => "audio/ogg",
        Some("webm") => "audio/webm",
        Some("m4a" | "mp4") => "audio/mp4",
        _ => "audio/mpeg",
    }
}

/// The multipart form of `POST /v1/audio/transcriptions`: `verbose_json` with the timestamp
/// granularities asked for when the model gives timing, else `json`.
pub fn transcription_form(
    deployment: &Deployment,
    request: &TranscriptionRequest,
    timestamps: bool,
) -> Result<reqwest::multipart::Form, ProviderError> {
    let file = reqwest::multipart::Part::stream(reqwest::Body::from(request.audio.clone()))
        .file_name(request.filename.clone())
        .mime_str(audio_mime(&request.filename))
        .map_err(|err| ProviderError::Other(err.to_string()))?;
    let mut form = reqwest::multipart::Form::new()
        .part("file", file)
        .text("model", deployment.provider_model.clone())
        .text(
            "response_format",
            if timestamps { "verbose_json" } else { "json" },
        );
    if timestamps {
        if request.segment_timestamps || !request.word_timestamps {
            form = form.text("timestamp_granularities[]", "segment");
        }
        if request.word_timestamps {
            form = form.text("timestamp_granularities[]", "word");
        }
    }
    if let Some(language) = &request.language {
        form = form.text("language", language.clone());
    }
    if let Some(prompt) = &request.prompt {
        form = form.text("prompt", prompt.clone());
    }
    if let Some(temperature) = request.temperature {
        form = form.text("temperature", temperature.to_string());
    }
    Ok(form)
}

fn seconds(value: &Value) -> Duration {
    value
        .as_f64()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map_or(Duration::ZERO, Duration::from_secs_f64)
}

/// A transcription answer (`json` or `verbose_json`) and what it is billed by: tokens
/// (`usage.type = tokens`) or seconds (`usage.type = duration`, or the verbose duration).
pub fn transcribed_of(body: &Value) -> Result<Transcribed, ProviderError> {
    let text = body["text"]
        .as_str()
        .ok_or_else(|| ProviderError::Other("the transcription answer has no text".into()))?;
    let segments = body["segments"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(index, segment)| Segment {
            id: segment["id"]
                .as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .unwrap_or(u32::try_from(index).unwrap_or(u32::MAX)),
            start: seconds(&segment["start"]),
            end: seconds(&segment["end"]),
            text: segment["text"].as_str().unwrap_or_default().to_owned(),
        })
        .collect();
    let words = body["words"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|word| Word {
            word: word["word"].as_str().unwrap_or_default().to_owned(),
            start: seconds(&word["start"]),
            end: seconds(&word["end"]),
        })
        .collect();
    let usage = &body["usage"];
    let tokens = (usage["type"] == "tokens").then(|| Usage {
        input_tokens: usage["input_tokens"].as_u64().unwrap_or(0),
        output_tokens: usage["output_tokens"].as_u64().unwrap_or(0),
        ..Usage::default()
    });
    let billed_seconds = if usage["type"] == "duration" {
        usage["seconds"].as_f64()
    } else {
        None
    };
    Ok(Transcribed {
        transcript: Transcript {
            text: text.to_owned(),
            language: body["language"].as_str().map(str::to_owned),
            duration: body["duration"]
                .is_number()
                .then(|| seconds(&body["duration"])),
            segments,
            words,
        },
        usage: tokens,
        billed_seconds,
    })
}

#[async_trait]
impl TranscriptionProvider for OpenAi {
    fn name(&self) -> &'static str {
        "openai"
    }

    async fn transcribe(
        &self,
        deployment: &Deployment,
        request: &TranscriptionRequest,
        timestamps: bool,
    ) -> Result<Transcribed, ProviderError> {
        let form = transcription_form(deployment, request, timestamps)?;
        let response = self
            .send(deployment, "audio/transcriptions", Body::Form(form))
            .await?;
        transcribed_of(&decode(response).await?)
    }
}

/// Chat Completions chunks to provider events: text and tool-call deltas as they come, then, at
/// `[DONE]`, the finish reason and the usage of the last chunk.
fn stream_events(
    events: futures::stream::BoxStream<'static, Result<sse::SseEvent, ProviderError>>,
) -> EventStream {
    struct State {
        events: futures::stream::BoxStream<'static, Result<sse::SseEvent, ProviderError>>,
        finish: FinishReason,
        usage: Usage,
        pending: std::collections::VecDeque<ProviderEvent>,
        done: bool,
    }
    let state = State {
        events,
        finish: FinishReason::Stop,
        usage: Usage::default(),
        pending: std::collections::VecDeque::new(),
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
            let event = match state.events.next().await {
                None => {
                    state.done = true;
                    let err = ProviderError::Unavailable("the stream ended before [DONE]".into());
                    return Some((Err(err), state));
                }
                Some(Err(err)) => {
                    state.done = true;
                    return Some((Err(err), state));
                }
                Some(Ok(event)) => event,
            };
            if event.data == "[DONE]" {
                state.done = true;
                return Some((
                    Ok(ProviderEvent::Finished {
                        finish_reason: state.finish,
                        usage: state.usage,
                    }),
                    state,
                ));
            }
            let Ok(chunk) = serde_json::from_str::<Value>(&event.data) else {
                state.done = true;
                return Some((
                    Err(ProviderError::Other(
                        "a stream chunk does not decode".into(),
                    )),
                    state,
                ));
            };
            if let Some(error) = chunk.get("error") {
                state.done = true;
                let message = error["message"]
                    .as_str()
                    .unwrap_or("error in the stream")
                    .to_owned();
                return Some((Err(ProviderError::Unavailable(message)), state));
            }
            if chunk["usage"].is_object() {
                state.usage = usage(&chunk["usage"]);
            }
            for choice in chunk["choices"].as_array().into_iter().flatten() {
                let delta = &choice["delta"];
                if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
                    state
                        .pending
                        .push_back(ProviderEvent::Delta(Delta::Text(text.to_owned())));
                }
                for call in delta["tool_calls"].as_array().into_iter().flatten() {
                    state
                        .pending
                        .push_back(ProviderEvent::Delta(Delta::ToolCall(ToolCallDelta {
                            index: u32::try_from(call["index"].as_u64().unwrap_or(0)).unwrap_or(0),
                            id: call["id"].as_str().map(str::to_owned),
                            name: call["function"]["name"].as_str().map(str::to_owned),
                            arguments_json: call["function"]["arguments"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                        })));
                }
                if !choice["finish_reason"].is_null() {
                    state.finish = finish_reason(&choice["finish_reason"]);
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment() -> Deployment {
        Deployment {
            name: "openai-main".into(),
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            provider_model: "gpt-4o-mini-2024-07-18".into(),
            base_url: String::new(),
            credential: Some("credentials/openai".into()),
            organization: None,
            project: None,
            weight: 1,
            timeout: Duration::from_secs(5),
        }
    }

    fn part(kind: PartKind) -> Part {
        Part {
            kind,
            cache_breakpoint: false,
        }
    }

    #[test]
    fn requests_map_every_part_and_option() {
        let request = ChatRequest {
            model: "gpt-4o-mini".into(),
            messages: vec![
                Message {
                    role: Role::System,
                    parts: vec![Part::text("be brief")],
                    name: None,
                },
                Message {
                    role: Role::User,
                    parts: vec![
                        Part::text("what is this?"),
                        part(PartKind::Image {
                            source: Source::Data {
                                mime_type: "image/png".into(),
                                bytes: vec![1, 2, 3],
                            },
                            detail: Some("low".into()),
                        }),
                    ],
                    name: None,
                },
                Message {
                    role: Role::Assistant,
                    parts: vec![part(PartKind::ToolCall(ToolCall {
                        id: "call_1".into(),
                        name: "lookup".into(),
                        arguments_json: "{\"q\":1}".into(),
                    }))],
                    name: None,
                },
                Message {
                    role: Role::Tool,
                    parts: vec![part(PartKind::ToolResult {
                        tool_call_id: "call_1".into(),
                        name: "lookup".into(),
                        content: "42".into(),
                        is_error: false,
                    })],
                    name: None,
                },
            ],
            tools: vec![Tool {
                name: "lookup".into(),
                description: "find".into(),
                parameters: json!({"type": "object"}),
                strict: true,
            }],
            tool_choice: Some(ToolChoice::Tool("lookup".into())),
            response_format: ResponseFormat::JsonSchema {
                name: "answer".into(),
                schema: json!({"type": "object"}),
                strict: true,
            },
            max_output_tokens: Some(100),
            stop: vec!["END".into()],
            end_user_id: Some("user-7".into()),
            ..ChatRequest::default()
        };
        let body = request_body(&deployment(), &request, true).unwrap();
        assert_eq!(body["model"], "gpt-4o-mini-2024-07-18");
        assert_eq!(
            body["messages"][0],
            json!({"role": "system", "content": "be brief"})
        );
        assert_eq!(
            body["messages"][1]["content"][1]["image_url"],
            json!({"url": "data:image/png;base64,AQID", "detail": "low"})
        );
        assert_eq!(
            body["messages"][2]["tool_calls"][0]["function"]["arguments"],
            "{\"q\":1}"
        );
        assert_eq!(body["messages"][2]["content"], Value::Null);
        assert_eq!(
            body["messages"][3],
            json!({"role": "tool", "tool_call_id": "call_1", "content": "42"})
        );
        assert_eq!(body["tools"][0]["function"]["strict"], true);
        assert_eq!(
            body["tool_choice"],
            json!({"type": "function", "function": {"name": "lookup"}})
        );
        assert_eq!(body["response_format"]["json_schema"]["name"], "answer");
        assert_eq!(
            (body["max_completion_tokens"].clone(), body["user"].clone()),
            (json!(100), json!("user-7"))
        );
        assert_eq!(body["stream_options"], json!({"include_usage": true}));
    }

    #[test]
    fn responses_map_text_tool_calls_and_cached_usage() {
        let body = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": null, "message": {
                "role": "assistant", "content": null, "refusal": null,
                "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]}}],
            "usage": {"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
                      "prompt_tokens_details": {"cached_tokens": 1920},
                      "completion_tokens_details": {"reasoning_tokens": 128}}
        });
        let response = response_of(&body).unwrap();
        assert_eq!(response.finish_reason, FinishReason::ToolCalls);
        assert_eq!(response.message.tool_calls().next().unwrap().id, "call_9");
        assert_eq!(
            response.usage,
            Usage {
                input_tokens: 2006,
                output_tokens: 300,
                cache_read_tokens: 1920,
                cache_write_tokens: 0,
                reasoning_tokens: 128
            }
        );
        assert!(response_of(&json!({"choices": []})).is_err());
    }

    #[tokio::test]
    async fn streams_assemble_deltas_tool_calls_and_final_usage() {
        let chunks = [
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]}),
            json!({"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": null}]}),
            json!({"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": null}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": ""}}]}, "finish_reason": null}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"q\":"}}]}, "finish_reason": null}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}, "finish_reason": null}]}),
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
            json!({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}),
        ];
        let mut events: Vec<Result<sse::SseEvent, ProviderError>> = chunks
            .iter()
            .map(|c| {
                Ok(sse::SseEvent {
                    event: String::new(),
                    data: c.to_string(),
                })
            })
            .collect();
        events.push(Ok(sse::SseEvent {
            event: String::new(),
            data: "[DONE]".into(),
        }));
        let out: Vec<ProviderEvent> = stream_events(futures::stream::iter(events).boxed())
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(out[0], ProviderEvent::Delta(Delta::Text("Hel".into())));
        assert_eq!(out[1], ProviderEvent::Delta(Delta::Text("lo".into())));
        let arguments: String = out
            .iter()
            .filter_map(|e| match e {
                ProviderEvent::Delta(Delta::ToolCall(piece)) => Some(piece.arguments_json.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(arguments, "{\"q\":1}");
        assert_eq!(
            out.last().unwrap(),
            &ProviderEvent::Finished {
                finish_reason: FinishReason::ToolCalls,
                usage: Usage {
                    input_tokens: 10,
                    output_tokens: 5,
                    ..Usage::default()
                }
            }
        );
    }

    #[tokio::test]
    async fn streams_that_break_or_carry_errors_fail() {
        let cut: Vec<Result<sse::SseEvent, ProviderError>> = vec![Ok(sse::SseEvent {
            event: String::new(),
            data:
                json!({"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": null}]})
                    .to_string(),
        })];
        let out: Vec<_> = stream_events(futures::stream::iter(cut).boxed())
            .collect()
            .await;
        assert!(matches!(
            out.last().unwrap(),
            Err(ProviderError::Unavailable(_))
        ));

        let error: Vec<Result<sse::SseEvent, ProviderError>> = vec![Ok(sse::SseEvent {
            event: String::new(),
            data: json!({"error": {"message": "server had an error", "type": "server_error"}})
                .to_string(),
        })];
        let out: Vec<_> = stream_events(futures::stream::iter(error).boxed())
            .collect()
            .await;
        assert!(
            matches!(&out[0], Err(ProviderError::Unavailable(m)) if m == "server had an error")
        );
    }
}
