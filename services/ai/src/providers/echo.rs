//! The built-in `echo` model: answers with the text of the last user message, without network.
//! It serves the quickstart and demos, and lets tests exercise the whole path (auth, routing,
//! streaming, usage, cost) without an upstream.
//!
//! It behaves like a model where that is cheap to do: a named or required tool choice gets a tool
//! call whose arguments are `{}`; a JSON response format gets the text as a JSON string in an
//! object; `max_output_tokens` truncates the answer with `length` as the finish reason.

use async_trait::async_trait;
use futures::StreamExt;

use super::{
    ChatProvider, Deployment, EmbeddingProvider, Embeddings, EventStream, ProviderError,
    ProviderEvent, ProviderResponse,
};
use crate::domain::model::{
    ChatRequest, Delta, EmbedRequest, FinishReason, Message, Part, PartKind, ResponseFormat, Role,
    ToolCall, ToolCallDelta, ToolChoice, Usage,
};
use crate::domain::tokens;

/// The echo provider.
#[derive(Debug, Default)]
pub struct Echo;

fn answer(request: &ChatRequest) -> ProviderResponse {
    let last_user = request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map(Message::text)
        .unwrap_or_default();
    let forced_tool = match &request.tool_choice {
        Some(ToolChoice::Tool(name)) => Some(name.clone()),
        Some(ToolChoice::Required) => request.tools.first().map(|t| t.name.clone()),
        _ => None,
    };
    let input_tokens = tokens::estimate_request(request);
    if let Some(name) = forced_tool {
        let call = ToolCall {
            id: format!("call_{}", uuid::Uuid::new_v4().simple()),
            name,
            arguments_json: "{}".to_owned(),
        };
        let usage = Usage {
            input_tokens,
            output_tokens: tokens::estimate_text(&call.arguments_json) + 1,
            ..Usage::default()
        };
        return ProviderResponse {
            message: Message {
                role: Role::Assistant,
                parts: vec![Part {
                    kind: PartKind::ToolCall(call),
                    cache_breakpoint: false,
                }],
                name: None,
            },
            finish_reason: FinishReason::ToolCalls,
            usage,
            notices: Vec::new(),
        };
    }
    let mut text = match request.response_format {
        ResponseFormat::Text => last_user,
        ResponseFormat::JsonObject | ResponseFormat::JsonSchema { .. } => {
            serde_json::json!({ "echo": last_user }).to_string()
        }
    };
    let mut finish_reason = FinishReason::Stop;
    if let Some(limit) = request.max_output_tokens {
        // The echo model's "tokens" are words, so that truncation is visible and predictable.
        let words: Vec<&str> = text.split_inclusive(' ').collect();
        if words.len() > limit as usize {
            text = words[..limit as usize].concat();
            finish_reason = FinishReason::Length;
        }
    }
    let usage = Usage {
        input_tokens,
        output_tokens: tokens::estimate_text(&text),
        ..Usage::default()
    };
    ProviderResponse {
        message: Message {
            role: Role::Assistant,
            parts: vec![Part::text(text)],
            name: None,
        },
        finish_reason,
        usage,
        notices: Vec::new(),
    }
}

#[async_trait]
impl ChatProvider for Echo {
    fn name(&self) -> &'static str {
        "echo"
    }

    async fn complete(
        &self,
        _deployment: &Deployment,
        request: &ChatRequest,
    ) -> Result<ProviderResponse, ProviderError> {
        Ok(answer(request))
    }

    async fn stream(
        &self,
        _deployment: &Deployment,
        request: &ChatRequest,
    ) -> Result<EventStream, ProviderError> {
        let response = answer(request);
        let mut events = Vec::new();
        for (index, part) in response.message.parts.iter().enumerate() {
            match &part.kind {
                // Word by word, as a model would stream.
                PartKind::Text(text) => events.extend(
                    text.split_inclusive(' ')
                        .map(|word| ProviderEvent::Delta(Delta::Text(word.to_owned()))),
                ),
                PartKind::ToolCall(call) => {
                    events.push(ProviderEvent::Delta(Delta::ToolCall(ToolCallDelta {
                        index: u32::try_from(index).unwrap_or(u32::MAX),
                        id: Some(call.id.clone()),
                        name: Some(call.name.clone()),
                        arguments_json: String::new(),
                    })));
                    events.push(ProviderEvent::Delta(Delta::ToolCall(ToolCallDelta {
                        index: u32::try_from(index).unwrap_or(u32::MAX),
                        id: None,
                        name: None,
                        arguments_json: call.arguments_json.clone(),
                    })));
                }
                _ => {}
            }
        }
        events.push(ProviderEvent::Finished {
            finish_reason: response.finish_reason,
            usage: response.usage,
        });
        Ok(futures::stream::iter(events.into_iter().map(Ok)).boxed())
    }
}

/// Vector size of the echo embeddings when the request names none.
pub const ECHO_DIMENSIONS: usize = 256;

/// A bag-of-words vector: each lower-cased word adds 1 to a coordinate picked by its hash (FNV-1a,
/// stable across builds), then the vector is scaled to unit length. Texts sharing words have a
/// positive cosine similarity, which is enough for demos of search and clustering.
pub fn echo_vector(text: &str, dimensions: usize) -> Vec<f32> {
    let mut vector = vec![0.0_f32; dimensions.max(1)];
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let hash = word
            .to_lowercase()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        let len = vector.len() as u64;
        vector[(hash % len) as usize] += 1.0;
    }
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|v| *v /= norm);
    }
    vector
}

#[async_trait]
impl EmbeddingProvider for Echo {
    fn name(&self) -> &'static str {
        "echo"
    }

    async fn embed(
        &self,
        _deployment: &Deployment,
        request: &EmbedRequest,
    ) -> Result<Embeddings, ProviderError> {
        let dimensions = request.dimensions.map_or(ECHO_DIMENSIONS, |d| d as usize);
        Ok(Embeddings {
            vectors: request
                .inputs
                .iter()
                .map(|text| echo_vector(text, dimensions))
                .collect(),
            input_tokens: request
                .inputs
                .iter()
                .map(|t| tokens::estimate_text(t))
                .sum(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_vectors_are_unit_length_and_similar_for_shared_words() {
        let cat = echo_vector("the cat sat on the mat", 64);
        let cat_again = echo_vector("The cat sat on the mat!", 64);
        let other = echo_vector("quarterly revenue forecast", 64);
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        assert!((dot(&cat, &cat) - 1.0).abs() < 1e-5);
        assert!((dot(&cat, &cat_again) - 1.0).abs() < 1e-5);
        assert!(dot(&cat, &other) < 0.5);
        assert_eq!(echo_vector("", 8), vec![0.0; 8]);
    }
}
