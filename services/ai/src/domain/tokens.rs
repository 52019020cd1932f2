//! Token counts without a provider's tokenizer: an estimate of about four characters a token,
//! which is what the `echo` model reports and what context-window checks fall back to.

use super::model::{ChatRequest, PartKind};

/// Tokens a message costs beyond its content (role and separators), as OpenAI's chat format
/// counts them.
const PER_MESSAGE: u64 = 4;

/// The estimated tokens of a text.
pub fn estimate_text(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// The estimated input tokens of a request: its messages and tool declarations.
pub fn estimate_request(request: &ChatRequest) -> u64 {
    let mut total = 0;
    for message in &request.messages {
        total += PER_MESSAGE;
        for part in &message.parts {
            total += match &part.kind {
                PartKind::Text(text) => estimate_text(text),
                PartKind::ToolCall(call) => {
                    estimate_text(&call.name) + estimate_text(&call.arguments_json)
                }
                PartKind::ToolResult { content, .. } => estimate_text(content),
                PartKind::Thinking { text, .. } => estimate_text(text),
                // A typical image at default detail, as OpenAI prices it.
                PartKind::Image { .. } => 765,
                PartKind::Document { .. } | PartKind::Audio { .. } => 1000,
            };
        }
    }
    for tool in &request.tools {
        total += estimate_text(&tool.name)
            + estimate_text(&tool.description)
            + estimate_text(&tool.parameters.to_string());
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::{Message, Part, Role};

    #[test]
    fn estimates_grow_with_content() {
        assert_eq!(estimate_text(""), 0);
        assert_eq!(estimate_text("abcd"), 1);
        assert_eq!(estimate_text("abcde"), 2);
        let request = ChatRequest {
            messages: vec![Message {
                role: Role::User,
                parts: vec![Part::text("hello world")],
                name: None,
            }],
            ..ChatRequest::default()
        };
        assert_eq!(estimate_request(&request), 4 + 3);
    }
}
