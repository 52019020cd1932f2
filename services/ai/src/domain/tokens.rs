//! Token counts: OpenAI's own tokenizers (tiktoken) for OpenAI models, and an estimate of about
//! four characters a token for the others, whose tokenizers are not published. Their count
//! endpoints serve CountTokens, and confirm the estimate when it says a request overflows a
//! context window (the domain's `confirmed_counts`): a request that fits costs no round trip.

use super::model::{ChatRequest, PartKind};

/// How a count was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counting {
    /// The provider's tokenizer.
    Tokenizer,
    /// Four characters a token.
    Estimate,
    /// The provider's count endpoint.
    Provider,
}

impl Counting {
    /// As the API names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Counting::Tokenizer => "tokenizer",
            Counting::Estimate => "estimate",
            Counting::Provider => "provider",
        }
    }
}

/// Tokens a message costs beyond its content (role and separators), as OpenAI's chat format
/// counts them.
const PER_MESSAGE: u64 = 3;
/// Tokens that prime the assistant's reply.
const REPLY_PRIMING: u64 = 3;
/// An image at low detail, and a typical one at high detail (a 512 px tile and the base), as
/// OpenAI prices them.
const IMAGE_LOW: u64 = 85;
const IMAGE_TYPICAL: u64 = 765;
/// A document or audio clip, for lack of anything better before the provider counts it.
const MEDIA: u64 = 1000;

/// The estimated tokens of a text.
pub fn estimate_text(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

fn count_with(request: &ChatRequest, text_tokens: &dyn Fn(&str) -> u64) -> u64 {
    let mut total = REPLY_PRIMING;
    for message in &request.messages {
        total += PER_MESSAGE;
        if let Some(name) = &message.name {
            total += text_tokens(name) + 1;
        }
        for part in &message.parts {
            total += match &part.kind {
                PartKind::Text(text) => text_tokens(text),
                PartKind::ToolCall(call) => {
                    text_tokens(&call.name) + text_tokens(&call.arguments_json)
                }
                PartKind::ToolResult { content, .. } => text_tokens(content),
                PartKind::Thinking { text, .. } => text_tokens(text),
                PartKind::Image { detail, .. } if detail.as_deref() == Some("low") => IMAGE_LOW,
                PartKind::Image { .. } => IMAGE_TYPICAL,
                PartKind::Document { .. } | PartKind::Audio { .. } => MEDIA,
            };
        }
    }
    for tool in &request.tools {
        total += text_tokens(&tool.name)
            + text_tokens(&tool.description)
            + text_tokens(&tool.parameters.to_string());
    }
    total
}

/// The estimated input tokens of a request, whatever its provider.
pub fn estimate_request(request: &ChatRequest) -> u64 {
    count_with(request, &estimate_text)
}

/// The input tokens of a request to `provider`'s `model`: tiktoken for OpenAI, the estimate
/// otherwise.
pub fn count_request(request: &ChatRequest, provider: &str, model: &str) -> (u64, Counting) {
    if provider == "openai" {
        // Unknown names (fine-tunes, new models) get the encoding of current OpenAI models.
        let bpe = tiktoken_rs::bpe_for_model(model)
            .unwrap_or_else(|_| tiktoken_rs::o200k_base_singleton());
        let count = count_with(request, &|text| bpe.encode_ordinary(text).len() as u64);
        return (count, Counting::Tokenizer);
    }
    (estimate_request(request), Counting::Estimate)
}

/// The text of token ids of `model`'s tokenizer (cl100k_base, that of OpenAI's embedding
/// models, when the model is not OpenAI's), as clients that tokenize before embedding send them.
pub fn decode(model: &str, ids: &[u32]) -> Option<String> {
    let bpe =
        tiktoken_rs::bpe_for_model(model).unwrap_or_else(|_| tiktoken_rs::cl100k_base_singleton());
    bpe.decode(ids).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::{Message, Part, Role};

    fn hello() -> ChatRequest {
        ChatRequest {
            messages: vec![Message {
                role: Role::User,
                parts: vec![Part::text("hello world")],
                name: None,
            }],
            ..ChatRequest::default()
        }
    }

    #[test]
    fn token_ids_decode_with_the_models_tokenizer() {
        let ids: Vec<u32> = tiktoken_rs::cl100k_base_singleton()
            .encode_ordinary("hello world")
            .into_iter()
            .collect();
        assert_eq!(
            decode("text-embedding-3-small", &ids).as_deref(),
            Some("hello world")
        );
        assert_eq!(
            decode("echo-embedding", &ids).as_deref(),
            Some("hello world")
        );
        assert_eq!(decode("text-embedding-3-small", &[u32::MAX]), None);
        // The ids the end-to-end test sends for "the cat sat".
        assert_eq!(
            tiktoken_rs::cl100k_base_singleton().encode_ordinary("the cat sat"),
            [1820, 8415, 7731]
        );
    }

    #[test]
    fn estimates_grow_with_content() {
        assert_eq!(estimate_text(""), 0);
        assert_eq!(estimate_text("abcd"), 1);
        assert_eq!(estimate_text("abcde"), 2);
        assert_eq!(estimate_request(&hello()), 3 + 3 + 3);
    }

    #[test]
    fn openai_models_are_counted_with_their_tokenizer() {
        // "hello world" is two tokens in o200k_base and cl100k_base.
        assert_eq!(
            count_request(&hello(), "openai", "gpt-4o-mini"),
            (3 + 3 + 2, Counting::Tokenizer)
        );
        assert_eq!(count_request(&hello(), "openai", "gpt-3.5-turbo").0, 8);
        assert_eq!(count_request(&hello(), "openai", "my-fine-tune").0, 8);
        assert_eq!(
            count_request(&hello(), "anthropic", "claude-haiku-4-5").1,
            Counting::Estimate
        );
    }
}
