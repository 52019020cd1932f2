//! The Anthropic adapter against the fake Messages API: system prompt and content blocks, tools,
//! streaming events, extended thinking, prompt caching priced once at cache prices, and errors
//! (529 overloaded, 429, 401) with fallback.

// Shared test helpers unwrap too: a failure should stop the test where it happens.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use switchyard_ai::Ai;
use switchyard_ai::config::{AiConfig, DeploymentConfig};
use switchyard_ai::domain::catalogue::Catalogue;
use switchyard_ai::domain::error::AiError;
use switchyard_ai::domain::model::*;
use switchyard_ai::domain::tokens::Counting;
use switchyard_ai::providers::anthropic::Anthropic;
use switchyard_ai::providers::echo::Echo;
use switchyard_ai::providers::{Adapters, ProviderError};
use switchyard_testkit::fake_anthropic::{FakeAnthropic, Reply};
use tokio_util::sync::CancellationToken;

mod support;

use support::{Gateway, caller, deployment, keys, open_ai};

struct Fixture {
    ai: Ai,
    fake: FakeAnthropic,
    _shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    fixture_with(|_| {}).await
}

async fn fixture_with(tweak: impl FnOnce(&mut AiConfig)) -> Fixture {
    switchyard_kit::tls::install_crypto_provider();
    let fake = FakeAnthropic::start().await;
    let mut config = AiConfig::default();
    config.deployments.insert(
        "claude".into(),
        DeploymentConfig {
            provider_model: Some("claude-haiku-4-5-20251001".into()),
            ..deployment(
                "anthropic",
                "claude-haiku-4-5",
                Some(&fake.base_url()),
                Some("credentials/anthropic"),
                Duration::from_millis(700),
            )
        },
    );
    config
        .aliases
        .insert("smart".into(), vec!["claude".into(), "echo".into()]);
    config.usage_flush_interval = Duration::from_millis(20);
    tweak(&mut config);
    let keys = keys(&[("credentials/anthropic", "sk-ant-test")]);
    let anthropic = Arc::new(Anthropic::new(reqwest::Client::new(), keys));
    let adapters = Adapters {
        chat: vec![Arc::new(Echo), anthropic.clone()],
        token_counters: vec![anthropic],
        ..Adapters::default()
    };
    let Gateway {
        ai, shutdown, dir, ..
    } = open_ai(&config, adapters).await;
    Fixture {
        ai,
        fake,
        _shutdown: shutdown,
        _dir: dir,
    }
}

fn ask(model: &str, text: &str) -> ChatRequest {
    support::ask(model, "You answer in one line.", text)
}

#[tokio::test]
async fn messages_reach_anthropic_as_documented() {
    let f = fixture().await;
    let mut request = ask("claude-haiku-4-5", "hello claude");
    request.stop = vec!["END".into()];
    request.end_user_id = Some("user-9".into());
    let response = f.ai.complete(&caller(), &request).await.unwrap();
    assert_eq!(response.message.text(), "hello claude");
    assert_eq!(
        (response.provider.as_str(), response.finish_reason),
        ("anthropic", FinishReason::Stop)
    );

    let sent = &f.fake.requests()[0];
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.headers["x-api-key"], "sk-ant-test");
    assert_eq!(sent.headers["anthropic-version"], "2023-06-01");
    assert_eq!(sent.body["model"], "claude-haiku-4-5-20251001");
    assert_eq!(
        sent.body["system"], "You answer in one line.",
        "the system prompt is not a message"
    );
    assert_eq!(sent.body["messages"].as_array().unwrap().len(), 1);
    assert_eq!(
        sent.body["max_tokens"], 4096,
        "max_tokens is required by Anthropic"
    );
    assert_eq!(sent.body["stop_sequences"], serde_json::json!(["END"]));
    assert_eq!(sent.body["metadata"]["user_id"], "user-9");
}

#[tokio::test]
async fn tools_round_trip_as_tool_use_and_tool_result_blocks() {
    let f = fixture().await;
    f.fake
        .push(Reply::Message(FakeAnthropic::message_with_tool_use(
            Some("Let me look."),
            &[("lookup", "toolu_01", serde_json::json!({"q": "rust"}))],
        )));
    let mut request = ask("claude-haiku-4-5", "look it up");
    request.tools = vec![Tool {
        name: "lookup".into(),
        description: "search".into(),
        parameters: serde_json::json!({"type": "object"}),
        strict: false,
    }];
    request.tool_choice = Some(ToolChoice::Required);
    let response = f.ai.complete(&caller(), &request).await.unwrap();
    assert_eq!(response.finish_reason, FinishReason::ToolCalls);
    let call = response.message.tool_calls().next().unwrap().clone();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&call.arguments_json).unwrap(),
        serde_json::json!({"q": "rust"})
    );

    request.messages.push(response.message.clone());
    request.messages.push(Message {
        role: Role::Tool,
        parts: vec![Part {
            kind: PartKind::ToolResult {
                tool_call_id: call.id.clone(),
                name: call.name.clone(),
                content: "found".into(),
                is_error: false,
            },
            cache_breakpoint: false,
        }],
        name: None,
    });
    request.tool_choice = None;
    f.ai.complete(&caller(), &request).await.unwrap();
    let sent = &f.fake.requests();
    assert_eq!(
        sent[0].body["tool_choice"],
        serde_json::json!({"type": "any"})
    );
    assert_eq!(
        sent[0].body["tools"][0]["input_schema"],
        serde_json::json!({"type": "object"})
    );
    let second = &sent[1].body["messages"];
    assert_eq!(second[1]["role"], "assistant");
    assert_eq!(second[1]["content"][1]["type"], "tool_use");
    assert_eq!(
        second[1]["content"][1]["input"],
        serde_json::json!({"q": "rust"})
    );
    assert_eq!(
        second[2]["role"], "user",
        "tool results travel in a user turn"
    );
    assert_eq!(
        second[2]["content"][0],
        serde_json::json!({"type": "tool_result", "tool_use_id": "toolu_01", "content": "found", "is_error": false})
    );
}

#[tokio::test]
async fn streams_carry_text_tool_input_pieces_and_thinking() {
    let f = fixture().await;
    let streaming =
        f.ai.stream(&caller(), &ask("claude-haiku-4-5", "a streamed reply"))
            .await
            .unwrap();
    let events: Vec<StreamEvent> = streaming.events.map(Result::unwrap).collect().await;
    let StreamEvent::Done(done) = events.last().unwrap() else {
        panic!("no final event")
    };
    assert_eq!(done.message.text(), "a streamed reply");
    assert!(done.usage.output_tokens > 0 && done.usage.input_tokens > 0);

    f.fake.push(Reply::Events(FakeAnthropic::tool_use_events(
        "lookup",
        "toolu_02",
        &["{\"q\": ", "\"split", "\"}"],
    )));
    let mut request = ask("claude-haiku-4-5", "call");
    request.tools = vec![Tool {
        name: "lookup".into(),
        description: String::new(),
        parameters: serde_json::json!({"type": "object"}),
        strict: false,
    }];
    let streaming = f.ai.stream(&caller(), &request).await.unwrap();
    let events: Vec<StreamEvent> = streaming.events.map(Result::unwrap).collect().await;
    let StreamEvent::Done(done) = events.last().unwrap() else {
        panic!("no final event")
    };
    let call = done.message.tool_calls().next().unwrap();
    assert_eq!(
        (call.id.as_str(), call.arguments_json.as_str()),
        ("toolu_02", "{\"q\": \"split\"}")
    );
    assert_eq!(done.finish_reason, FinishReason::ToolCalls);

    f.fake.push(Reply::Events(FakeAnthropic::thinking_events(
        "Let me think it through.",
        "sig-1",
        "42",
    )));
    let mut request = ask("claude-haiku-4-5", "meaning?");
    request.provider_options.anthropic = Some(serde_json::Map::from_iter([(
        "thinking_budget_tokens".to_owned(),
        serde_json::json!(2048),
    )]));
    let streaming = f.ai.stream(&caller(), &request).await.unwrap();
    let events: Vec<StreamEvent> = streaming.events.map(Result::unwrap).collect().await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, StreamEvent::Delta(Delta::Thinking(t)) if t.contains("think")))
    );
    let StreamEvent::Done(done) = events.last().unwrap() else {
        panic!("no final event")
    };
    assert_eq!(done.message.text(), "42");
    assert_eq!(
        f.fake.requests().last().unwrap().body["thinking"],
        serde_json::json!({"type": "enabled", "budget_tokens": 2048})
    );
}

#[tokio::test]
async fn prompt_caching_is_priced_once_at_cache_prices() {
    let f = fixture().await;
    let long_system = "You are a careful assistant. ".repeat(50);
    let cached_request = |text: &str| {
        let mut request = ask("claude-haiku-4-5", text);
        request.messages[0] = Message {
            role: Role::System,
            parts: vec![Part {
                kind: PartKind::Text(long_system.clone()),
                cache_breakpoint: true,
            }],
            name: None,
        };
        request
    };
    let first =
        f.ai.complete(&caller(), &cached_request("first question"))
            .await
            .unwrap();
    assert!(
        first.usage.cache_write_tokens > 0 && first.usage.cache_read_tokens == 0,
        "{:?}",
        first.usage
    );
    let second =
        f.ai.complete(&caller(), &cached_request("second question"))
            .await
            .unwrap();
    assert!(second.usage.cache_read_tokens > 0, "{:?}", second.usage);
    assert_eq!(
        f.fake.requests()[0].body["system"][0]["cache_control"],
        serde_json::json!({"type": "ephemeral"})
    );

    // claude-haiku-4-5: $1 input, $5 output, $0.10 cache read, $1.25 cache write per million.
    for response in [&first, &second] {
        let u = response.usage;
        assert!(
            u.input_tokens >= u.cache_read_tokens + u.cache_write_tokens,
            "input counts every prompt token"
        );
        let fresh = u.input_tokens - u.cache_read_tokens - u.cache_write_tokens;
        let expected = (fresh * 1_000_000
            + u.cache_read_tokens * 100_000
            + u.cache_write_tokens * 1_250_000
            + u.output_tokens * 5_000_000) as i64;
        assert_eq!(response.cost_micros, (expected + 500_000) / 1_000_000);
    }
    assert!(
        second.cost_micros < first.cost_micros,
        "reading the cache is cheaper than writing it"
    );
}

#[tokio::test]
async fn errors_map_and_overload_falls_back() {
    let f = fixture().await;
    f.fake.push(FakeAnthropic::overloaded());
    let response =
        f.ai.complete(&caller(), &ask("smart", "hello"))
            .await
            .unwrap();
    let codes: Vec<&str> = response
        .attempts
        .iter()
        .map(|a| a.result_code.as_str())
        .collect();
    assert_eq!(codes, ["UNAVAILABLE", "OK"], "529 is retryable");
    assert_eq!(response.deployment, "echo");

    f.fake.push(FakeAnthropic::rate_limited(4));
    let err =
        f.ai.complete(&caller(), &ask("claude-haiku-4-5", "x"))
            .await
            .unwrap_err();
    assert!(
        matches!(err, AiError::Provider(ProviderError::RateLimited { retry_after: Some(d) }) if d == Duration::from_secs(4)),
        "{err:?}"
    );

    f.fake.push(Reply::Error {
        status: 401,
        body: FakeAnthropic::error_body("authentication_error", "invalid x-api-key"),
        headers: vec![],
    });
    assert!(matches!(
        f.ai.complete(&caller(), &ask("claude-haiku-4-5", "x"))
            .await
            .unwrap_err(),
        AiError::Provider(ProviderError::CredentialRejected)
    ));

    f.fake.push(Reply::EventsThenError {
        events: vec![("message_start".into(), serde_json::json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 3, "output_tokens": 1}}}))],
        error: serde_json::json!({"type": "overloaded_error", "message": "Overloaded"}),
    });
    let streaming =
        f.ai.stream(&caller(), &ask("claude-haiku-4-5", "x"))
            .await
            .unwrap();
    let events: Vec<_> = streaming.events.collect().await;
    assert!(matches!(
        events.last().unwrap(),
        Err(AiError::Provider(ProviderError::Overloaded))
    ));

    // Anthropic has no JSON response format here: refused unless the caller allows dropping it.
    let mut request = ask("claude-haiku-4-5", "json");
    request.response_format = ResponseFormat::JsonObject;
    assert!(f.ai.complete(&caller(), &request).await.is_err());
}

#[tokio::test]
async fn count_tokens_asks_anthropic_and_falls_back_to_the_estimate_with_a_notice() {
    let f = fixture().await;
    let mut request = ask("claude-haiku-4-5", "count these five words");
    request.messages.retain(|m| m.role != Role::System);
    request.messages.insert(
        0,
        Message {
            role: Role::System,
            parts: vec![Part::text("be brief")],
            name: None,
        },
    );
    request.max_output_tokens = Some(100);
    request.temperature = Some(0.5);
    let count = f.ai.count_tokens(&request).await.unwrap();
    assert_eq!(count.counting, Counting::Provider);
    assert_eq!(count.model, "claude-haiku-4-5");
    // The fake counts words: four of the user's, two of the system prompt.
    assert_eq!(count.input_tokens, 6);
    assert!(count.notices.is_empty());
    let sent = f.fake.requests().pop().unwrap();
    assert_eq!(sent.path, "/v1/messages/count_tokens");
    assert_eq!(sent.body["system"], "be brief");
    assert!(sent.body.get("max_tokens").is_none() && sent.body.get("temperature").is_none());

    f.fake.push(FakeAnthropic::overloaded());
    let count = f.ai.count_tokens(&request).await.unwrap();
    assert_eq!(count.counting, Counting::Estimate);
    assert!(count.input_tokens > 0);
    assert!(
        count.notices[0].contains("count endpoint failed"),
        "{:?}",
        count.notices
    );
}

#[tokio::test]
async fn the_context_window_is_checked_on_anthropics_own_count_when_the_estimate_overflows() {
    // A window of 60 tokens: the estimate (four characters a token) of 30 ten-letter words and
    // the system prompt is about 90, but Anthropic (here the fake, which counts words) counts 35.
    let f = fixture_with(|config| {
        let mut entry = Catalogue::load(&config.models).unwrap().models["claude-haiku-4-5"].clone();
        entry.context_window = 60;
        config.models.insert("claude-haiku-4-5".into(), entry);
    })
    .await;
    let words = |n: usize| vec!["abcdefghij"; n].join(" ");
    let response =
        f.ai.complete(&caller(), &ask("claude-haiku-4-5", &words(30)))
            .await
            .unwrap();
    assert_eq!(response.deployment, "claude");
    let paths: Vec<String> = f.fake.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/v1/messages/count_tokens", "/v1/messages"]);

    // Beyond the window by Anthropic's own count, the numbers in the error are its count.
    let err =
        f.ai.complete(&caller(), &ask("claude-haiku-4-5", &words(70)))
            .await
            .unwrap_err();
    assert!(
        matches!(
            err,
            AiError::ContextWindow {
                input: 75,
                window: 60,
                ..
            }
        ),
        "{err:?}"
    );

    // A request that fits by the estimate costs no count.
    let before = f.fake.requests().len();
    f.ai.complete(&caller(), &ask("claude-haiku-4-5", "short"))
        .await
        .unwrap();
    assert_eq!(f.fake.requests().len(), before + 1);
}
