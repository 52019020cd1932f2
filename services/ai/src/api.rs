//! The gRPC face of the AI domain: proto conversions, the scope table, and the one place where
//! domain errors become statuses.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use switchyard_auth::{ScopeTable, principal};
use switchyard_kit::convert::{duration, timestamp};
use switchyard_kit::error::code_from_name;
use switchyard_kit::{ApiError, FieldViolation};
use switchyard_proto::ai::v1 as pb;
use switchyard_proto::ai::v1::ai_service_server::{AiService, AiServiceServer};
use switchyard_proto::common::v1::Money;
use tonic::{Request, Response, Status};

use crate::domain::error::AiError;
use crate::domain::model::*;
use crate::domain::service::{Ai, ModelView};
use crate::domain::transcription::MAX_AUDIO_BYTES;
use crate::providers::ProviderError;
use crate::usage::{UsageFilter, UsageRecord};

/// Running completions.
pub const SCOPE_COMPLETE: &str = "ai.complete";
/// Reading the catalogue and estimating costs.
pub const SCOPE_READ: &str = "ai.read";
/// Reading usage records.
pub const SCOPE_USAGE: &str = "ai.usage";

/// The scope of every method of `AiService`.
pub const SCOPES: ScopeTable = ScopeTable {
    service: "switchyard.ai.v1.AiService",
    methods: &[
        ("Complete", SCOPE_COMPLETE),
        ("StreamComplete", SCOPE_COMPLETE),
        ("Embed", SCOPE_COMPLETE),
        ("GenerateImage", SCOPE_COMPLETE),
        ("Transcribe", SCOPE_COMPLETE),
        ("ListModels", SCOPE_READ),
        ("GetModel", SCOPE_READ),
        ("EstimateCost", SCOPE_READ),
        ("CountTokens", SCOPE_COMPLETE),
        ("ListUsage", SCOPE_USAGE),
    ],
    checked_by_handler: &[],
};

/// The ErrorInfo domain of this service's errors.
pub const ERROR_DOMAIN: &str = "ai.switchyard.dev";

/// Turns a domain error into what a caller sees. Provider failures are mapped deliberately: a
/// 429 is RESOURCE_EXHAUSTED with RetryInfo, a rejected credential FAILED_PRECONDITION, an
/// outage UNAVAILABLE.
pub fn api_error(err: AiError) -> ApiError {
    let code = code_from_name(err.result_code());
    let api = match &err {
        AiError::Invalid(violations) => ApiError::invalid_argument(violations.clone()),
        AiError::NotFound(name) => ApiError::not_found(name),
        AiError::NoDeployment(_) => ApiError::new(code, "NO_DEPLOYMENT", err.to_string()),
        AiError::ContextWindow {
            model,
            input,
            output,
            window,
        } => {
            ApiError::invalid_argument(vec![FieldViolation::new("chat.messages", err.to_string())])
                .with_metadata("reason", "CONTEXT_WINDOW_EXCEEDED")
                .with_metadata("model", model.clone())
                .with_metadata("input_tokens", input.to_string())
                .with_metadata("output_tokens", output.to_string())
                .with_metadata("context_window", window.to_string())
        }
        AiError::QuotaExceeded { limit, retry_after } => {
            ApiError::new(code, "QUOTA_EXCEEDED", err.to_string())
                .with_metadata("limit", *limit)
                .with_retry_after(*retry_after)
        }
        AiError::Unsupported { feature, target } => {
            ApiError::new(code, "UNSUPPORTED_FEATURE", err.to_string())
                .with_metadata("feature", feature.clone())
                .with_metadata("model", target.clone())
        }
        AiError::Provider(provider) => {
            let api = ApiError::new(code, provider.reason(), provider.to_string());
            match provider {
                ProviderError::RateLimited { retry_after } => {
                    api.with_retry_after(retry_after.unwrap_or(Duration::from_secs(1)))
                }
                ProviderError::Overloaded
                | ProviderError::Unavailable(_)
                | ProviderError::Timeout => api.with_retry_after(Duration::from_secs(1)),
                _ => api,
            }
        }
        AiError::Store(_) => ApiError::internal(&err),
    };
    api.with_domain(ERROR_DOMAIN)
}

fn status(err: AiError) -> Status {
    api_error(err).into_status()
}

fn caller_of<T>(request: &Request<T>) -> Result<Caller, Status> {
    let principal = principal(request)?;
    Ok(Caller {
        tenant: principal.tenant.clone(),
        subject: principal.subject.clone(),
    })
}

/// Micro-USD as Money.
pub fn usd(micros: i64) -> Money {
    Money {
        currency_code: "USD".into(),
        amount_micros: micros,
    }
}

// --- proto to domain -------------------------------------------------------------------------------

/// JSON of a protobuf Struct.
pub fn struct_to_json(value: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(
        value
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(value: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(list)) => {
            serde_json::Value::Array(list.values.iter().map(value_to_json).collect())
        }
    }
}

fn source(
    field: &str,
    url: Option<String>,
    data: Option<Vec<u8>>,
    mime_type: &str,
    violations: &mut Vec<FieldViolation>,
) -> Source {
    match (url, data) {
        (Some(url), _) => Source::Url(url),
        (None, Some(bytes)) => {
            if mime_type.is_empty() {
                violations.push(FieldViolation::new(
                    format!("{field}.mime_type"),
                    "required with data",
                ));
            }
            Source::Data {
                mime_type: mime_type.to_owned(),
                bytes,
            }
        }
        (None, None) => {
            violations.push(FieldViolation::new(field, "a url or data is required"));
            Source::Url(String::new())
        }
    }
}

fn part_of(field: &str, part: pb::Part, violations: &mut Vec<FieldViolation>) -> Option<Part> {
    use pb::part::Kind as K;
    let kind = match part.kind? {
        K::Text(text) => PartKind::Text(text),
        K::Image(image) => {
            let (url, data) = match image.source {
                Some(pb::image::Source::Url(url)) => (Some(url), None),
                Some(pb::image::Source::Data(data)) => (None, Some(data)),
                None => (None, None),
            };
            PartKind::Image {
                source: source(
                    &format!("{field}.image"),
                    url,
                    data,
                    &image.mime_type,
                    violations,
                ),
                detail: Some(image.detail).filter(|d| !d.is_empty()),
            }
        }
        K::Document(document) => {
            let (url, data) = match document.source {
                Some(pb::document::Source::Url(url)) => (Some(url), None),
                Some(pb::document::Source::Data(data)) => (None, Some(data)),
                None => (None, None),
            };
            PartKind::Document {
                source: source(
                    &format!("{field}.document"),
                    url,
                    data,
                    &document.mime_type,
                    violations,
                ),
                title: Some(document.title).filter(|t| !t.is_empty()),
            }
        }
        K::Audio(audio) => PartKind::Audio {
            bytes: audio.data,
            format: audio.format,
        },
        K::ToolCall(call) => PartKind::ToolCall(ToolCall {
            id: call.id,
            name: call.name,
            arguments_json: call.arguments_json,
        }),
        K::ToolResult(result) => PartKind::ToolResult {
            tool_call_id: result.tool_call_id,
            name: result.name,
            content: result.content,
            is_error: result.is_error,
        },
        K::Thinking(thinking) => PartKind::Thinking {
            text: thinking.text,
            signature: Some(thinking.signature).filter(|s| !s.is_empty()),
        },
    };
    Some(Part {
        kind,
        cache_breakpoint: part.cache_breakpoint,
    })
}

fn options(value: Option<serde_json::Value>) -> Option<serde_json::Map<String, serde_json::Value>> {
    match value {
        Some(serde_json::Value::Object(map)) => Some(map),
        _ => None,
    }
}

/// The domain request of a proto request; every problem is a field violation.
pub fn chat_request(chat: pb::ChatRequest) -> Result<ChatRequest, Status> {
    let mut violations = Vec::new();
    let mut messages = Vec::with_capacity(chat.messages.len());
    for (m, message) in chat.messages.into_iter().enumerate() {
        let role = match pb::Role::try_from(message.role) {
            Ok(pb::Role::System) => Role::System,
            Ok(pb::Role::User) => Role::User,
            Ok(pb::Role::Assistant) => Role::Assistant,
            Ok(pb::Role::Tool) => Role::Tool,
            _ => {
                violations.push(FieldViolation::new(
                    format!("chat.messages[{m}].role"),
                    "required: system, user, assistant or tool",
                ));
                Role::User
            }
        };
        let parts = message
            .parts
            .into_iter()
            .enumerate()
            .filter_map(|(p, part)| {
                part_of(
                    &format!("chat.messages[{m}].parts[{p}]"),
                    part,
                    &mut violations,
                )
            })
            .collect();
        messages.push(Message {
            role,
            parts,
            name: Some(message.name).filter(|n| !n.is_empty()),
        });
    }
    let tools = chat
        .tools
        .into_iter()
        .map(|tool| Tool {
            name: tool.name,
            description: tool.description,
            parameters: tool
                .parameters
                .as_ref()
                .map_or_else(|| serde_json::json!({"type": "object"}), struct_to_json),
            strict: tool.strict,
        })
        .collect();
    let tool_choice = chat.tool_choice.and_then(|choice| match choice.choice {
        Some(pb::tool_choice::Choice::ToolName(name)) => Some(ToolChoice::Tool(name)),
        Some(pb::tool_choice::Choice::Mode(mode)) => match pb::tool_choice::Mode::try_from(mode) {
            Ok(pb::tool_choice::Mode::Auto) => Some(ToolChoice::Auto),
            Ok(pb::tool_choice::Mode::None) => Some(ToolChoice::None),
            Ok(pb::tool_choice::Mode::Required) => Some(ToolChoice::Required),
            _ => None,
        },
        None => None,
    });
    let response_format = match chat.response_format.and_then(|f| f.format) {
        None | Some(pb::response_format::Format::Text(_)) => ResponseFormat::Text,
        Some(pb::response_format::Format::JsonObject(_)) => ResponseFormat::JsonObject,
        Some(pb::response_format::Format::JsonSchema(schema)) => ResponseFormat::JsonSchema {
            name: schema.name,
            schema: schema
                .schema
                .as_ref()
                .map_or(serde_json::Value::Null, struct_to_json),
            strict: schema.strict,
        },
    };
    let max_output_tokens = match u32::try_from(chat.max_output_tokens) {
        Ok(0) => None,
        Ok(n) => Some(n),
        Err(_) => {
            violations.push(FieldViolation::new(
                "chat.max_output_tokens",
                "must not be negative",
            ));
            None
        }
    };
    let provider_options = chat.provider_options.map(|o| ProviderOptions {
        openai: o.openai.map(|o| {
            let mut map = serde_json::Map::new();
            if !o.reasoning_effort.is_empty() {
                map.insert("reasoning_effort".into(), o.reasoning_effort.into());
            }
            if !o.service_tier.is_empty() {
                map.insert("service_tier".into(), o.service_tier.into());
            }
            if !o.logit_bias.is_empty() {
                map.insert("logit_bias".into(), serde_json::json!(o.logit_bias));
            }
            map
        }),
        anthropic: options(o.anthropic.map(|a| {
            serde_json::json!({"thinking_budget_tokens": a.thinking_budget_tokens, "top_k": a.top_k})
        })),
        gemini: options(o.gemini.map(|g| {
            let settings: Vec<_> = g
                .safety_settings
                .iter()
                .map(|s| serde_json::json!({"category": s.category, "threshold": s.threshold}))
                .collect();
            serde_json::json!({"safety_settings": settings, "top_k": g.top_k, "thinking_budget_tokens": g.thinking_budget_tokens})
        })),
    }).unwrap_or_default();
    if !violations.is_empty() {
        return Err(status(AiError::Invalid(violations)));
    }
    Ok(ChatRequest {
        model: chat.model,
        messages,
        tools,
        tool_choice,
        parallel_tool_calls: chat.parallel_tool_calls,
        response_format,
        temperature: chat.temperature,
        top_p: chat.top_p,
        max_output_tokens,
        stop: chat.stop,
        seed: chat.seed,
        tags: chat.tags.into_iter().collect::<BTreeMap<_, _>>(),
        end_user_id: Some(chat.end_user_id).filter(|u| !u.is_empty()),
        provider_options,
        allow_unsupported: chat.allow_unsupported,
        truncation: match pb::Truncation::try_from(chat.truncation) {
            Ok(pb::Truncation::DropOldest) => Some(Truncation::DropOldest),
            Ok(pb::Truncation::MiddleOut) => Some(Truncation::MiddleOut),
            _ => None,
        },
        constitution: chat.constitution.map(|c| {
            if c.name.is_empty() {
                ConstitutionChoice::Inline(
                    c.principles
                        .into_iter()
                        .map(|p| Principle {
                            name: p.name,
                            critique: p.critique,
                            revision: p.revision,
                        })
                        .collect(),
                )
            } else {
                ConstitutionChoice::Named(c.name)
            }
        }),
    })
}

// --- domain to proto -------------------------------------------------------------------------------

fn part_to_proto(part: &Part) -> pb::Part {
    use pb::part::Kind as K;
    let kind = match &part.kind {
        PartKind::Text(text) => K::Text(text.clone()),
        PartKind::ToolCall(call) => K::ToolCall(pb::ToolCall {
            id: call.id.clone(),
            name: call.name.clone(),
            arguments_json: call.arguments_json.clone(),
        }),
        PartKind::Thinking { text, signature } => K::Thinking(pb::Thinking {
            text: text.clone(),
            signature: signature.clone().unwrap_or_default(),
        }),
        PartKind::ToolResult {
            tool_call_id,
            name,
            content,
            is_error,
        } => K::ToolResult(pb::ToolResult {
            tool_call_id: tool_call_id.clone(),
            name: name.clone(),
            content: content.clone(),
            is_error: *is_error,
        }),
        // Models answer with text, tool calls and thinking; other parts only travel inward.
        PartKind::Image { .. } | PartKind::Document { .. } | PartKind::Audio { .. } => {
            K::Text(String::new())
        }
    };
    pb::Part {
        kind: Some(kind),
        cache_breakpoint: part.cache_breakpoint,
    }
}

fn finish_to_proto(reason: FinishReason) -> pb::FinishReason {
    match reason {
        FinishReason::Stop => pb::FinishReason::Stop,
        FinishReason::Length => pb::FinishReason::Length,
        FinishReason::ToolCalls => pb::FinishReason::ToolCalls,
        FinishReason::ContentFilter => pb::FinishReason::ContentFilter,
        FinishReason::Error => pb::FinishReason::Error,
    }
}

fn usage_to_proto(usage: &Usage) -> pb::Usage {
    let signed = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    pb::Usage {
        input_tokens: signed(usage.input_tokens),
        output_tokens: signed(usage.output_tokens),
        cache_read_tokens: signed(usage.cache_read_tokens),
        cache_write_tokens: signed(usage.cache_write_tokens),
        reasoning_tokens: signed(usage.reasoning_tokens),
    }
}

/// A domain response as the API shows it.
pub fn response_to_proto(response: &ChatResponse) -> pb::ChatResponse {
    pb::ChatResponse {
        id: response.id.clone(),
        model: response.model.clone(),
        provider: response.provider.clone(),
        deployment: response.deployment.clone(),
        message: Some(pb::Message {
            role: pb::Role::Assistant as i32,
            parts: response.message.parts.iter().map(part_to_proto).collect(),
            name: String::new(),
        }),
        finish_reason: finish_to_proto(response.finish_reason) as i32,
        usage: Some(usage_to_proto(&response.usage)),
        cost: Some(usd(response.cost_micros)),
        attempts: response.attempts.iter().map(attempt_to_proto).collect(),
        notices: response.notices.clone(),
        constitution_trace: response
            .constitution_trace
            .iter()
            .map(|step| pb::ConstitutionStep {
                principle: step.principle.clone(),
                critique: step.critique.clone(),
                revision: step.revision.clone(),
            })
            .collect(),
    }
}

fn attempt_to_proto(attempt: &Attempt) -> pb::Attempt {
    pb::Attempt {
        deployment: attempt.deployment.clone(),
        provider: attempt.provider.clone(),
        model: attempt.model.clone(),
        result_code: attempt.result_code.clone(),
        error: attempt.error.clone(),
        latency: Some(duration(attempt.latency)),
    }
}

fn capability(name: &str) -> Option<pb::Capability> {
    Some(match name {
        "chat" => pb::Capability::Chat,
        "tools" => pb::Capability::Tools,
        "vision" => pb::Capability::Vision,
        "documents" => pb::Capability::Documents,
        "audio_input" => pb::Capability::AudioInput,
        "json_schema" => pb::Capability::JsonSchema,
        "streaming" => pb::Capability::Streaming,
        "embeddings" => pb::Capability::Embeddings,
        "images" => pb::Capability::Images,
        "transcription" => pb::Capability::Transcription,
        "thinking" => pb::Capability::Thinking,
        "prompt_caching" => pb::Capability::PromptCaching,
        "timestamps" => pb::Capability::Timestamps,
        _ => return None,
    })
}

/// A model or alias as the API shows it.
pub fn model_to_proto(view: ModelView<'_>) -> pb::Model {
    match view {
        ModelView::Model { id, entry } => {
            let prices = entry.prices();
            pb::Model {
                name: format!("models/{id}"),
                id: id.to_owned(),
                provider: entry.provider.clone(),
                display_name: entry.display_name.clone(),
                context_window: i64::try_from(entry.context_window).unwrap_or(i64::MAX),
                max_output_tokens: i64::try_from(entry.max_output_tokens).unwrap_or(i64::MAX),
                capabilities: entry
                    .capabilities
                    .iter()
                    .filter_map(|c| capability(c))
                    .map(|c| c as i32)
                    .collect(),
                prices: Some(pb::ModelPrices {
                    input_per_million: Some(usd(prices.input)),
                    output_per_million: Some(usd(prices.output)),
                    cache_read_per_million: Some(usd(prices.cache_read)),
                    cache_write_per_million: Some(usd(prices.cache_write)),
                }),
                deprecated: entry.deprecated,
                successor: entry.successor.clone().unwrap_or_default(),
                deployments: Vec::new(),
            }
        }
        ModelView::Alias { id, deployments } => pb::Model {
            name: format!("models/{id}"),
            id: id.to_owned(),
            display_name: format!("alias of {}", deployments.join(", ")),
            deployments: deployments.to_vec(),
            ..pb::Model::default()
        },
    }
}

fn usage_record_to_proto(record: UsageRecord) -> pb::UsageRecord {
    pb::UsageRecord {
        id: record.id,
        time: Some(timestamp(record.time)),
        principal: record.principal,
        tags: record.tags.into_iter().collect(),
        provider: record.provider,
        model: record.model,
        deployment: record.deployment,
        usage: Some(usage_to_proto(&record.usage)),
        cost: Some(usd(record.cost_micros)),
        latency: Some(duration(record.latency)),
        time_to_first_token: record.time_to_first_token.map(duration),
        result_code: record.result_code,
        error_reason: record.error_reason,
        end_user_id: record.end_user_id,
        attempt: i32::try_from(record.attempt).unwrap_or(i32::MAX),
        request_id: record.request_id,
    }
}

fn micros_of(field: &str, ts: &prost_types::Timestamp) -> Result<i64, Status> {
    switchyard_kit::convert::checked_micros(field, ts)
        .map_err(|violation| status(AiError::Invalid(vec![violation])))
}

// --- the service ---------------------------------------------------------------------------------

/// `switchyard.ai.v1.AiService` over the domain.
#[derive(Debug, Clone)]
pub struct AiApi {
    domain: Ai,
}

impl AiApi {
    /// The API of `domain`.
    pub fn new(domain: Ai) -> Self {
        AiApi { domain }
    }

    /// The tonic server, with its message size limits.
    pub fn into_server(self, max_message_bytes: usize) -> AiServiceServer<Self> {
        AiServiceServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }
}

type CompletionEvents =
    Pin<Box<dyn Stream<Item = Result<pb::StreamCompleteResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AiService for AiApi {
    async fn complete(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        let caller = caller_of(&request)?;
        let chat = chat_request(request.into_inner().chat.unwrap_or_default())?;
        let response = self.domain.complete(&caller, &chat).await.map_err(status)?;
        Ok(Response::new(pb::CompleteResponse {
            response: Some(response_to_proto(&response)),
        }))
    }

    type StreamCompleteStream = CompletionEvents;

    async fn stream_complete(
        &self,
        request: Request<pb::StreamCompleteRequest>,
    ) -> Result<Response<Self::StreamCompleteStream>, Status> {
        let caller = caller_of(&request)?;
        let chat = chat_request(request.into_inner().chat.unwrap_or_default())?;
        let streaming = self.domain.stream(&caller, &chat).await.map_err(status)?;
        let messages = streaming.events.map(|event| {
            event
                .map_err(status)
                .map(|event| pb::StreamCompleteResponse {
                    event: Some(match event {
                        StreamEvent::Delta(Delta::Text(text)) => {
                            pb::stream_complete_response::Event::Delta(pb::Delta {
                                text,
                                ..Default::default()
                            })
                        }
                        StreamEvent::Delta(Delta::Thinking(thinking)) => {
                            pb::stream_complete_response::Event::Delta(pb::Delta {
                                thinking,
                                ..Default::default()
                            })
                        }
                        StreamEvent::Delta(Delta::ToolCall(piece)) => {
                            pb::stream_complete_response::Event::Delta(pb::Delta {
                                tool_call: Some(pb::ToolCallDelta {
                                    index: i32::try_from(piece.index).unwrap_or(i32::MAX),
                                    id: piece.id.unwrap_or_default(),
                                    name: piece.name.unwrap_or_default(),
                                    arguments_json: piece.arguments_json,
                                }),
                                ..Default::default()
                            })
                        }
                        StreamEvent::Done(response) => {
                            pb::stream_complete_response::Event::Done(response_to_proto(&response))
                        }
                    }),
                })
        });
        Ok(Response::new(Box::pin(messages)))
    }

    async fn embed(
        &self,
        request: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let dimensions = match request.dimensions {
            0 => None,
            d => Some(
                u32::try_from(d)
                    .map_err(|_| status(AiError::invalid("dimensions", "must not be negative")))?,
            ),
        };
        let embed = EmbedRequest {
            model: request.model,
            inputs: request.inputs,
            dimensions,
            tags: request.tags.into_iter().collect(),
            end_user_id: Some(request.end_user_id).filter(|u| !u.is_empty()),
        };
        let response = self.domain.embed(&caller, &embed).await.map_err(status)?;
        Ok(Response::new(pb::EmbedResponse {
            id: response.id,
            model: response.model,
            provider: response.provider,
            deployment: response.deployment,
            embeddings: response
                .vectors
                .into_iter()
                .enumerate()
                .map(|(index, values)| pb::Embedding {
                    index: i32::try_from(index).unwrap_or(i32::MAX),
                    values,
                })
                .collect(),
            usage: Some(usage_to_proto(&response.usage)),
            cost: Some(usd(response.cost_micros)),
            attempts: response.attempts.iter().map(attempt_to_proto).collect(),
            notices: response.notices,
        }))
    }

    async fn generate_image(
        &self,
        request: Request<pb::GenerateImageRequest>,
    ) -> Result<Response<pb::GenerateImageResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let nonempty = |value: String| Some(value).filter(|v| !v.is_empty());
        let count = match request.count {
            0 => 1,
            n => u32::try_from(n)
                .map_err(|_| status(AiError::invalid("count", "between 1 and 10")))?,
        };
        let delivery = match request.delivery() {
            pb::ImageDelivery::Unspecified | pb::ImageDelivery::Bytes => ImageDelivery::Bytes,
            pb::ImageDelivery::Url => ImageDelivery::Url,
        };
        let generate = ImageRequest {
            model: request.model,
            prompt: request.prompt,
            count,
            size: nonempty(request.size),
            quality: nonempty(request.quality),
            style: nonempty(request.style),
            delivery,
            output_format: nonempty(request.output_format),
            background: nonempty(request.background),
            tags: request.tags.into_iter().collect(),
            end_user_id: nonempty(request.end_user_id),
        };
        let response = self
            .domain
            .generate_image(&caller, &generate)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::GenerateImageResponse {
            id: response.id,
            model: response.model,
            provider: response.provider,
            deployment: response.deployment,
            images: response
                .images
                .into_iter()
                .map(|image| pb::GeneratedImage {
                    image: Some(match image.data {
                        ImageData::Bytes(data) => pb::generated_image::Image::Data(data),
                        ImageData::Url(url) => pb::generated_image::Image::Url(url),
                    }),
                    mime_type: image.mime_type,
                    revised_prompt: image.revised_prompt.unwrap_or_default(),
                })
                .collect(),
            usage: Some(usage_to_proto(&response.usage)),
            cost: Some(usd(response.cost_micros)),
            attempts: response.attempts.iter().map(attempt_to_proto).collect(),
            notices: response.notices,
        }))
    }

    async fn transcribe(
        &self,
        request: Request<tonic::Streaming<pb::TranscribeRequest>>,
    ) -> Result<Response<pb::TranscribeResponse>, Status> {
        let caller = caller_of(&request)?;
        let mut messages = request.into_inner();
        let invalid = |field: &str, description: &str| status(AiError::invalid(field, description));
        let Some(pb::transcribe_request::Part::Config(config)) =
            messages.message().await?.and_then(|m| m.part)
        else {
            return Err(invalid("config", "the first message must hold the config"));
        };
        let mut audio = bytes::BytesMut::new();
        while let Some(message) = messages.message().await? {
            match message.part {
                Some(pb::transcribe_request::Part::Audio(piece)) => {
                    if audio.len() + piece.len() > MAX_AUDIO_BYTES {
                        return Err(invalid(
                            "audio",
                            &format!("at most {} MiB", MAX_AUDIO_BYTES / 1024 / 1024),
                        ));
                    }
                    audio.extend_from_slice(&piece);
                }
                Some(pb::transcribe_request::Part::Config(_)) => {
                    return Err(invalid("config", "only the first message holds the config"));
                }
                None => {}
            }
        }
        let nonempty = |value: String| Some(value).filter(|v| !v.is_empty());
        let transcribe = TranscriptionRequest {
            model: config.model,
            filename: config.filename,
            audio: audio.freeze(),
            language: nonempty(config.language),
            prompt: nonempty(config.prompt),
            temperature: Some(config.temperature).filter(|t| *t != 0.0),
            segment_timestamps: config.segment_timestamps,
            word_timestamps: config.word_timestamps,
            tags: config.tags.into_iter().collect(),
            end_user_id: nonempty(config.end_user_id),
        };
        let response = self
            .domain
            .transcribe(&caller, &transcribe)
            .await
            .map_err(status)?;
        let transcript = response.transcript;
        Ok(Response::new(pb::TranscribeResponse {
            id: response.id,
            model: response.model,
            provider: response.provider,
            deployment: response.deployment,
            text: transcript.text,
            language: transcript.language.unwrap_or_default(),
            duration: transcript.duration.map(duration),
            segments: transcript
                .segments
                .into_iter()
                .map(|segment| pb::TranscriptSegment {
                    id: i32::try_from(segment.id).unwrap_or(i32::MAX),
                    start: Some(duration(segment.start)),
                    end: Some(duration(segment.end)),
                    text: segment.text,
                })
                .collect(),
            words: transcript
                .words
                .into_iter()
                .map(|word| pb::TranscriptWord {
                    word: word.word,
                    start: Some(duration(word.start)),
                    end: Some(duration(word.end)),
                })
                .collect(),
            usage: Some(usage_to_proto(&response.usage)),
            cost: Some(usd(response.cost_micros)),
            attempts: response.attempts.iter().map(attempt_to_proto).collect(),
            notices: response.notices,
        }))
    }

    async fn list_models(
        &self,
        request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let provider = Some(request.get_ref().provider.as_str()).filter(|p| !p.is_empty());
        let models = self
            .domain
            .models(provider)
            .into_iter()
            .map(model_to_proto)
            .collect();
        let date = &self.domain.catalogue().date;
        Ok(Response::new(pb::ListModelsResponse {
            models,
            catalogue_date: catalogue_date(date),
        }))
    }

    async fn get_model(
        &self,
        request: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::GetModelResponse>, Status> {
        let name = &request.get_ref().name;
        let Some(id) = name.strip_prefix("models/").filter(|id| !id.is_empty()) else {
            return Err(status(AiError::invalid("name", "must be models/{model}")));
        };
        let model = self
            .domain
            .model(id)
            .ok_or_else(|| status(AiError::NotFound(name.clone())))?;
        Ok(Response::new(pb::GetModelResponse {
            model: Some(model_to_proto(model)),
        }))
    }

    async fn estimate_cost(
        &self,
        request: Request<pb::EstimateCostRequest>,
    ) -> Result<Response<pb::EstimateCostResponse>, Status> {
        let chat = chat_request(request.into_inner().chat.unwrap_or_default())?;
        let estimate = self.domain.estimate(&chat).map_err(status)?;
        Ok(Response::new(pb::EstimateCostResponse {
            input_tokens: i64::try_from(estimate.input_tokens).unwrap_or(i64::MAX),
            output_tokens: i64::try_from(estimate.output_tokens).unwrap_or(i64::MAX),
            input_cost: Some(usd(estimate.input_cost_micros)),
            max_output_cost: Some(usd(estimate.max_output_cost_micros)),
            model: estimate.model,
            counting: estimate.counting.as_str().into(),
        }))
    }

    async fn count_tokens(
        &self,
        request: Request<pb::CountTokensRequest>,
    ) -> Result<Response<pb::CountTokensResponse>, Status> {
        let chat = chat_request(request.into_inner().chat.unwrap_or_default())?;
        let count = self.domain.count_tokens(&chat).await.map_err(status)?;
        Ok(Response::new(pb::CountTokensResponse {
            input_tokens: i64::try_from(count.input_tokens).unwrap_or(i64::MAX),
            model: count.model,
            counting: count.counting.as_str().into(),
            notices: count.notices,
        }))
    }

    async fn list_usage(
        &self,
        request: Request<pb::ListUsageRequest>,
    ) -> Result<Response<pb::ListUsageResponse>, Status> {
        let caller = caller_of(&request)?;
        let request = request.into_inner();
        let filter = UsageFilter {
            model: Some(request.model).filter(|m| !m.is_empty()),
            provider: Some(request.provider).filter(|p| !p.is_empty()),
            start_time: request
                .start_time
                .as_ref()
                .map(|t| micros_of("start_time", t))
                .transpose()?,
            end_time: request
                .end_time
                .as_ref()
                .map(|t| micros_of("end_time", t))
                .transpose()?,
        };
        let page = self
            .domain
            .list_usage(&caller, &filter, request.page_size, &request.page_token)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListUsageResponse {
            records: page.items.into_iter().map(usage_record_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }
}

/// The catalogue's YYYY-MM-DD date as a timestamp at midnight UTC.
fn catalogue_date(date: &str) -> Option<prost_types::Timestamp> {
    let mut parts = date.split('-').map(str::parse::<i64>);
    let (Some(Ok(y)), Some(Ok(m)), Some(Ok(d))) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(prost_types::Timestamp {
        seconds: days * 86_400,
        nanos: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_dates_become_midnight_timestamps() {
        assert_eq!(catalogue_date("1970-01-01").unwrap().seconds, 0);
        assert_eq!(catalogue_date("2026-11-26").unwrap().seconds, 1_795_651_200);
        assert!(catalogue_date("soon").is_none());
    }
}
