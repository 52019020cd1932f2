//! The Gemini adapter against the fake Generative Language API: contents and system
//! instruction, function calling, safety settings, blocked prompts and safety ratings surfaced,
//! streaming, usage with thoughts, and Google's quota errors honoured with their RetryInfo.

// Shared test helpers unwrap too: a failure should stop the test where it happens.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use switchyard_ai::Ai;
use switchyard_ai::config::{AiConfig, DeploymentConfig};
use switchyard_ai::domain::error::AiError;
use switchyard_ai::domain::model::*;
use switchyard_ai::domain::tokens::Counting;
use switchyard_ai::providers::echo::Echo;
use switchyard_ai::providers::gemini::Gemini;
use switchyard_ai::providers::keys::StaticKeys;
use switchyard_ai::providers::{Adapters, ProviderError};
use switchyard_testkit::fake_gemini::{FakeGemini, Reply};
use tokio_util::sync::CancellationToken;

mod support;

use support::{Gateway, caller, deployment, keys, open_ai};

struct Fixture {
    ai: Ai,
    fake: FakeGemini,
    _shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

/// A `gemini` deployment of `model` on `fake`.
fn gemini_deployment(fake: &FakeGemini, model: &str, timeout: Duration) -> DeploymentConfig {
    deployment(
        "gemini",
        model,
        Some(&fake.base_url()),
        Some("credentials/gemini"),
        timeout,
    )
}

fn gemini_keys() -> Arc<StaticKeys> {
    keys(&[("credentials/gemini", "gemini-test")])
}

async fn fixture() -> Fixture {
    switchyard_kit::tls::install_crypto_provider();
    let fake = FakeGemini::start().await;
    let mut config = AiConfig::default();
    config.deployments.insert(
        "flash".into(),
        gemini_deployment(&fake, "gemini-2.5-flash-lite", Duration::from_millis(700)),
    );
    config.deployments.insert(
        "gemini-embed".into(),
        gemini_deployment(&fake, "gemini-embedding-001", Duration::from_millis(700)),
    );
    config
        .aliases
        .insert("cheap".into(), vec!["flash".into(), "echo".into()]);
    config.usage_flush_interval = Duration::from_millis(20);
    let gemini = Arc::new(Gemini::new(reqwest::Client::new(), gemini_keys()));
    let adapters = Adapters {
        chat: vec![Arc::new(Echo), gemini.clone()],
        embeddings: vec![gemini.clone()],
        token_counters: vec![gemini],
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
    support::ask(model, "Be brief.", text)
}

#[tokio::test]
async fn content_reaches_gemini_as_documented() {
    let f = fixture().await;
    let mut request = ask("gemini-2.5-flash-lite", "hello gemini");
    request.temperature = Some(0.5);
    request.max_output_tokens = Some(100);
    request.provider_options.gemini = Some(serde_json::Map::from_iter([(
        "safety_settings".to_owned(),
        serde_json::json!([{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}]),
    )]));
    let response = f.ai.complete(&caller(), &request).await.unwrap();
    assert_eq!(response.message.text(), "hello gemini");
    assert_eq!(
        (response.provider.as_str(), response.finish_reason),
        ("gemini", FinishReason::Stop)
    );
    assert!(response.usage.input_tokens > 0 && response.usage.output_tokens > 0);

    let sent = &f.fake.requests()[0];
    assert_eq!(
        sent.path,
        "/v1beta/models/gemini-2.5-flash-lite:generateContent"
    );
    assert_eq!(sent.headers["x-goog-api-key"], "gemini-test");
    assert!(
        sent.query_param("key").is_none(),
        "the key never goes in the URL"
    );
    assert_eq!(
        sent.body["systemInstruction"]["parts"][0]["text"],
        "Be brief."
    );
    assert_eq!(sent.body["contents"][0]["role"], "user");
    assert_eq!(sent.body["generationConfig"]["maxOutputTokens"], 100);
    assert_eq!(
        sent.body["safetySettings"][0]["threshold"],
        "BLOCK_ONLY_HIGH"
    );
}

#[tokio::test]
async fn function_calls_round_trip() {
    let f = fixture().await;
    f.fake
        .push(Reply::Response(FakeGemini::function_call_response(
            "lookup",
            serde_json::json!({"q": "rust"}),
        )));
    let mut request = ask("gemini-2.5-flash-lite", "look it up");
    request.tools = vec![Tool {
        name: "lookup".into(),
        description: "search".into(),
        parameters: serde_json::json!({"type": "object", "properties": {"q": {"type": "string"}}}),
        strict: false,
    }];
    request.tool_choice = Some(ToolChoice::Tool("lookup".into()));
    let response = f.ai.complete(&caller(), &request).await.unwrap();
    assert_eq!(response.finish_reason, FinishReason::ToolCalls);
    let call = response.message.tool_calls().next().unwrap().clone();
    assert_eq!(call.name, "lookup");

    request.messages.push(response.message.clone());
    request.messages.push(Message {
        role: Role::Tool,
        parts: vec![Part {
            kind: PartKind::ToolResult {
                tool_call_id: call.id.clone(),
                name: "lookup".into(),
                content: "{\"hits\": 3}".into(),
                is_error: false,
            },
            cache_breakpoint: false,
        }],
        name: None,
    });
    request.tool_choice = None;
    f.ai.complete(&caller(), &request).await.unwrap();
    let sent = f.fake.requests();
    assert_eq!(
        sent[0].body["toolConfig"]["functionCallingConfig"],
        serde_json::json!({"mode": "ANY", "allowedFunctionNames": ["lookup"]})
    );
    let turns = &sent[1].body["contents"];
    assert_eq!(turns[1]["role"], "model");
    assert_eq!(turns[1]["parts"][0]["functionCall"]["name"], "lookup");
    assert_eq!(
        turns[2]["parts"][0]["functionResponse"],
        serde_json::json!({"name": "lookup", "response": {"hits": 3}})
    );
}

#[tokio::test]
async fn blocked_prompts_and_streams() {
    let f = fixture().await;
    f.fake.push(Reply::Response(FakeGemini::blocked_prompt()));
    let response =
        f.ai.complete(&caller(), &ask("gemini-2.5-flash-lite", "something bad"))
            .await
            .unwrap();
    assert_eq!(response.finish_reason, FinishReason::ContentFilter);
    assert!(
        response
            .notices
            .iter()
            .any(|n| n.contains("blocked the prompt")),
        "{:?}",
        response.notices
    );

    let streaming =
        f.ai.stream(&caller(), &ask("gemini-2.5-flash-lite", "stream me please"))
            .await
            .unwrap();
    let events: Vec<StreamEvent> = streaming.events.map(Result::unwrap).collect().await;
    let StreamEvent::Done(done) = events.last().unwrap() else {
        panic!("no final event")
    };
    assert_eq!(
        done.message.text().split_whitespace().collect::<Vec<_>>(),
        ["stream", "me", "please"]
    );
    assert!(done.usage.output_tokens > 0);
    let sent = f.fake.requests();
    let streamed = sent.last().unwrap();
    assert_eq!(
        streamed.path,
        "/v1beta/models/gemini-2.5-flash-lite:streamGenerateContent"
    );
    assert_eq!(streamed.query_param("alt").as_deref(), Some("sse"));
}

#[tokio::test]
async fn quota_errors_honour_retry_info_and_fall_back() {
    let f = fixture().await;
    f.fake.push(FakeGemini::quota_exhausted(9));
    let err =
        f.ai.complete(&caller(), &ask("gemini-2.5-flash-lite", "x"))
            .await
            .unwrap_err();
    assert!(
        matches!(err, AiError::Provider(ProviderError::RateLimited { retry_after: Some(d) }) if d == Duration::from_secs(9)),
        "{err:?}"
    );

    f.fake.push(FakeGemini::overloaded());
    let response =
        f.ai.complete(&caller(), &ask("cheap", "hello"))
            .await
            .unwrap();
    let codes: Vec<&str> = response
        .attempts
        .iter()
        .map(|a| a.result_code.as_str())
        .collect();
    assert_eq!(codes, ["UNAVAILABLE", "OK"]);

    let bad_key = FakeGemini::start().await.with_api_key("another-key");
    let mut config = AiConfig::default();
    config.deployments.insert(
        "flash".into(),
        gemini_deployment(&bad_key, "gemini-2.5-flash-lite", Duration::from_secs(1)),
    );
    let adapters = Adapters {
        chat: vec![Arc::new(Gemini::new(reqwest::Client::new(), gemini_keys()))],
        ..Adapters::default()
    };
    let Gateway { ai, dir: _dir, .. } = open_ai(&config, adapters).await;
    let err = ai
        .complete(&caller(), &ask("gemini-2.5-flash-lite", "x"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AiError::Provider(ProviderError::CredentialRejected)),
        "{err:?}"
    );
}

#[tokio::test]
async fn legacy_palm_names_resolve_to_gemini_with_a_deprecation_notice() {
    let f = fixture().await;
    let response =
        f.ai.complete(&caller(), &ask("chat-bison-001", "hello from palm"))
            .await
            .unwrap();
    assert_eq!(response.model, "gemini-2.5-flash-lite");
    assert!(
        response
            .notices
            .iter()
            .any(|n| n.contains("chat-bison-001 is deprecated")),
        "{:?}",
        response.notices
    );
}

#[tokio::test]
async fn embeddings_go_in_batches_of_a_hundred_and_keep_their_order() {
    let f = fixture().await;
    let texts: Vec<String> = (0..150).map(|i| format!("text number {i}")).collect();
    let request = EmbedRequest {
        model: "gemini-embedding-001".into(),
        inputs: texts.clone(),
        dimensions: Some(16),
        ..EmbedRequest::default()
    };
    let response = f.ai.embed(&caller(), &request).await.unwrap();
    assert_eq!(response.vectors.len(), 150);
    assert!(response.vectors.iter().all(|v| v.len() == 16));
    let batches: Vec<_> = f
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with(":batchEmbedContents"))
        .collect();
    let sizes: Vec<usize> = batches
        .iter()
        .map(|r| r.body["requests"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes.iter().sum::<usize>(), 150);
    assert!(sizes.iter().all(|&n| n <= 100), "{sizes:?}");
    let first = &batches
        .iter()
        .find(|r| r.body["requests"].as_array().unwrap().len() == 100)
        .unwrap()
        .body["requests"][0];
    assert_eq!(first["model"], "models/gemini-embedding-001");
    assert_eq!(first["outputDimensionality"], 16);
    assert_eq!(first["content"]["parts"][0]["text"], "text number 0");

    // The same text embedded alone gives the vector it had in the batch: the order is kept.
    let alone = EmbedRequest {
        model: "gemini-embedding-001".into(),
        inputs: vec![texts[120].clone()],
        dimensions: Some(16),
        ..EmbedRequest::default()
    };
    let single = f.ai.embed(&caller(), &alone).await.unwrap();
    assert_eq!(single.vectors[0], response.vectors[120]);
    // Gemini reports no usage for embeddings: the input is estimated, and priced.
    assert!(response.usage.input_tokens > 0);
    assert!(response.cost_micros > 0);
}

#[tokio::test]
async fn the_palm_embedding_model_resolves_to_gemini_embeddings_with_a_notice() {
    let f = fixture().await;
    let request = EmbedRequest {
        model: "embedding-gecko-001".into(),
        inputs: vec!["legacy".into()],
        ..EmbedRequest::default()
    };
    let response = f.ai.embed(&caller(), &request).await.unwrap();
    assert_eq!(response.model, "gemini-embedding-001");
    assert_eq!(response.vectors[0].len(), 3072);
    assert!(
        response
            .notices
            .iter()
            .any(|n| n.contains("embedding-gecko-001 is deprecated")),
        "{:?}",
        response.notices
    );
}

#[tokio::test]
async fn count_tokens_asks_gemini_with_the_whole_request() {
    let f = fixture().await;
    let mut request = ask("gemini-2.5-flash-lite", "count these five words");
    request.messages.retain(|m| m.role != Role::System);
    request.messages.insert(
        0,
        Message {
            role: Role::System,
            parts: vec![Part::text("be brief")],
            name: None,
        },
    );
    let count = f.ai.count_tokens(&request).await.unwrap();
    assert_eq!(
        (count.counting, count.input_tokens),
        (Counting::Provider, 6)
    );
    let sent = f.fake.requests().pop().unwrap();
    assert!(
        sent.path
            .ends_with("/models/gemini-2.5-flash-lite:countTokens"),
        "{}",
        sent.path
    );
    let generate = &sent.body["generateContentRequest"];
    assert_eq!(generate["model"], "models/gemini-2.5-flash-lite");
    assert_eq!(
        generate["systemInstruction"]["parts"][0]["text"],
        "be brief"
    );
}

#[tokio::test]
async fn a_failed_tool_result_reaches_gemini_under_error() {
    let f = fixture().await;
    let mut request = ask("gemini-2.5-flash-lite", "What is the weather in Paris?");
    request.messages.push(Message {
        role: Role::Assistant,
        parts: vec![Part {
            kind: PartKind::ToolCall(ToolCall {
                id: "call_0".into(),
                name: "get_weather".into(),
                arguments_json: r#"{"city":"Paris"}"#.into(),
            }),
            cache_breakpoint: false,
        }],
        name: None,
    });
    request.messages.push(Message {
        role: Role::Tool,
        parts: vec![Part {
            kind: PartKind::ToolResult {
                tool_call_id: "call_0".into(),
                name: "get_weather".into(),
                content: "the weather service is down".into(),
                is_error: true,
            },
            cache_breakpoint: false,
        }],
        name: None,
    });
    f.ai.complete(&caller(), &request).await.unwrap();
    let sent = f.fake.requests().pop().unwrap().body;
    let last = sent["contents"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        last["parts"][0]["functionResponse"],
        serde_json::json!({"name": "get_weather", "response": {"error": "the weather service is down"}})
    );
}

#[tokio::test]
async fn thought_signatures_of_function_calls_travel_in_the_call_id_and_go_back() {
    let f = fixture().await;
    let mut answer =
        FakeGemini::function_call_response("get_weather", serde_json::json!({"city": "Paris"}));
    answer["candidates"][0]["content"]["parts"][0]["thoughtSignature"] =
        serde_json::json!("c2lnbmF0dXJl");
    f.fake.push(Reply::Response(answer));
    let mut request = ask("gemini-2.5-flash-lite", "What is the weather in Paris?");
    let response = f.ai.complete(&caller(), &request).await.unwrap();
    let PartKind::ToolCall(call) = &response.message.parts[0].kind else {
        panic!("{response:?}")
    };
    assert_eq!(call.id, "call_0__thought__c2lnbmF0dXJl");

    // The client sends the call back with its id, as the OpenAI SDKs do; Gemini gets the
    // signature on the call's part.
    request.messages.push(response.message.clone());
    request.messages.push(Message {
        role: Role::Tool,
        parts: vec![Part {
            kind: PartKind::ToolResult {
                tool_call_id: call.id.clone(),
                name: "get_weather".into(),
                content: r#"{"celsius":18}"#.into(),
                is_error: false,
            },
            cache_breakpoint: false,
        }],
        name: None,
    });
    f.ai.complete(&caller(), &request).await.unwrap();
    let sent = f.fake.requests().pop().unwrap().body;
    let model_turn = &sent["contents"][1];
    assert_eq!(model_turn["role"], "model");
    assert_eq!(model_turn["parts"][0]["thoughtSignature"], "c2lnbmF0dXJl");
    assert_eq!(
        model_turn["parts"][0]["functionCall"]["name"],
        "get_weather"
    );
}
