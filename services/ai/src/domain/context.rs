//! Fitting a conversation into a context window: the check, and the two ways of shortening one
//! (drop the oldest turns, or turns from the middle). Turns are dropped whole, so that a tool
//! call is never separated from its result; the system prompt and the last turn are kept.

use super::model::{ChatRequest, Message, Role, Truncation};

/// A conversation's turns: each starts at a user message and runs to the next one.
fn turns(messages: &[Message]) -> Vec<std::ops::Range<usize>> {
    let mut starts: Vec<usize> = messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.role == Role::User)
        .map(|(i, _)| i)
        .collect();
    if starts.first() != Some(&0) {
        starts.insert(0, 0);
    }
    let mut out = Vec::new();
    for (i, start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(messages.len());
        if start < &end {
            out.push(*start..end);
        }
    }
    out
}

/// `request` shortened by `strategy` until `count` of it is at most `budget`, or `None` if even
/// the system prompt and the last turn alone are too long.
pub fn truncate(
    request: &ChatRequest,
    strategy: Truncation,
    budget: u64,
    count: impl Fn(&ChatRequest) -> u64,
) -> Option<ChatRequest> {
    let system: Vec<Message> = request
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .cloned()
        .collect();
    let conversation: Vec<Message> = request
        .messages
        .iter()
        .filter(|m| m.role != Role::System)
        .cloned()
        .collect();
    let mut kept: Vec<Vec<Message>> = turns(&conversation)
        .into_iter()
        .map(|range| conversation[range].to_vec())
        .collect();
    loop {
        let candidate = ChatRequest {
            messages: system
                .iter()
                .cloned()
                .chain(kept.iter().flatten().cloned())
                .collect(),
            ..request.clone()
        };
        if count(&candidate) <= budget {
            return Some(candidate);
        }
        if kept.len() <= 1 {
            return None;
        }
        let drop = match strategy {
            Truncation::DropOldest => 0,
            // The middle of the turns that may go (all but the last).
            Truncation::MiddleOut => (kept.len() - 1) / 2,
        };
        kept.remove(drop);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::{Part, PartKind, ToolCall};

    fn message(role: Role, text: &str) -> Message {
        Message {
            role,
            parts: vec![Part::text(text)],
            name: None,
        }
    }

    fn conversation() -> ChatRequest {
        let call = Message {
            role: Role::Assistant,
            parts: vec![Part {
                kind: PartKind::ToolCall(ToolCall {
                    id: "c".into(),
                    name: "t".into(),
                    arguments_json: "{}".into(),
                }),
                cache_breakpoint: false,
            }],
            name: None,
        };
        let result = Message {
            role: Role::Tool,
            parts: vec![Part {
                kind: PartKind::ToolResult {
                    tool_call_id: "c".into(),
                    name: "t".into(),
                    content: "r".into(),
                    is_error: false,
                },
                cache_breakpoint: false,
            }],
            name: None,
        };
        ChatRequest {
            messages: vec![
                message(Role::System, "sys"),
                message(Role::User, "u1"),
                message(Role::Assistant, "a1"),
                message(Role::User, "u2"),
                call,
                result,
                message(Role::Assistant, "a2"),
                message(Role::User, "u3"),
                message(Role::Assistant, "a3"),
                message(Role::User, "u4"),
            ],
            ..ChatRequest::default()
        }
    }

    fn texts(request: &ChatRequest) -> Vec<String> {
        request
            .messages
            .iter()
            .map(|m| match &m.parts[0].kind {
                PartKind::Text(t) => t.clone(),
                PartKind::ToolCall(_) => "call".into(),
                PartKind::ToolResult { .. } => "result".into(),
                _ => "?".into(),
            })
            .collect()
    }

    #[test]
    fn dropping_the_oldest_turns_keeps_system_and_tool_pairs() {
        let count = |r: &ChatRequest| r.messages.len() as u64;
        // Dropping u1's turn leaves 8 messages; dropping u2's (with its tool call and result)
        // leaves 4.
        let cut = truncate(&conversation(), Truncation::DropOldest, 7, count).unwrap();
        assert_eq!(texts(&cut), ["sys", "u3", "a3", "u4"]);
        let cut = truncate(&conversation(), Truncation::DropOldest, 8, count).unwrap();
        assert_eq!(
            texts(&cut),
            ["sys", "u2", "call", "result", "a2", "u3", "a3", "u4"]
        );
    }

    #[test]
    fn middle_out_keeps_the_beginning_and_the_end() {
        let count = |r: &ChatRequest| r.messages.len() as u64;
        let cut = truncate(&conversation(), Truncation::MiddleOut, 6, count).unwrap();
        assert_eq!(texts(&cut), ["sys", "u1", "a1", "u3", "a3", "u4"]);
    }

    #[test]
    fn too_long_even_alone_is_none() {
        assert!(
            truncate(
                &conversation(),
                Truncation::DropOldest,
                1,
                |r| r.messages.len() as u64
            )
            .is_none()
        );
    }
}
