//! The OpenAI adapter against the fake OpenAI upstream: requests as OpenAI documents them
//! (checked against the published contract), answers, streams with tool-call deltas and usage,
//! every error type with its mapping, and fallback on retryable failures.

// Shared test helpers unwrap too: a failure should stop the test where it happens.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use switchyard_ai::Ai;
use switchyard_ai::config::{AiConfig, DeploymentConfig};
use switchyard_ai::domain::error::AiError;
use switchyard_ai::domain::model::*;
use switchyard_ai::providers::echo::Echo;
use switchyard_ai::providers::openai::OpenAi;
use switchyard_ai::providers::{Adapters, ProviderError};
use switchyard_ai::usage::UsageFilter;
use switchyard_testkit::fake_openai::{FakeOpenAi, Reply};
use tokio_util::sync::CancellationToken;

mod support;

use support::{Gateway, caller, deployment, keys, open_ai};

struct Fixture {
    ai: Ai,
    fake: FakeOpenAi,
    shutdown: CancellationToken,
    writer: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    switchyard_kit::tls::install_crypto_provider();
    let fake = FakeOpenAi::start()
        .await
        .with_organization("org-switchyard");
    let base_url = fake.base_url();
    let openai_deployment = |model: &str, timeout| {
        deployment(
            "openai",
            model,
            Some(&base_url),
            Some("credentials/openai"),
            timeout,
        )
    };
    let mut config = AiConfig::default();
    config.deployments.insert(
        "openai-main".into(),
        DeploymentConfig {
            organization: Some("org-switchyard".into()),
            project: Some("proj-1".into()),
            ..openai_deployment("gpt-4o-mini", Duration::from_millis(700))
        },
    );
    config.deployments.insert(
        "openai-embed".into(),
        DeploymentConfig {
            organization: Some("org-switchyard".into()),
            ..openai_deployment("text-embedding-3-small", Duration::from_millis(700))
        },
    );
    for (name, model) in [
        ("openai-dalle", "dall-e-3"),
        ("openai-image", "gpt-image-1.5"),
        ("openai-whisper", "whisper-1"),
        ("openai-transcribe", "gpt-4o-transcribe"),
    ] {
        config.deployments.insert(
            name.into(),
            openai_deployment(model, Duration::from_secs(2)),
        );
    }
    config
        .aliases
        .insert("fast".into(), vec!["openai-main".into(), "echo".into()]);
    config.aliases.insert(
        "vectors".into(),
        vec!["openai-embed".into(), "echo-embedding".into()],
    );
    config.usage_flush_interval = Duration::from_millis(20);
    let keys = keys(&[("credentials/openai", "sk-test")]);
    let openai = Arc::new(OpenAi::new(reqwest::Client::new(), keys));
    let adapters = Adapters {
        chat: vec![Arc::new(Echo), openai.clone()],
        embeddings: vec![Arc::new(Echo), openai.clone()],
        images: vec![openai.clone()],
        transcription: vec![openai],
        ..Adapters::default()
    };
    let Gateway {
        ai,
        writer,
        shutdown,
        dir,
        ..
    } = open_ai(&config, adapters).await;
    Fixture {
        ai,
        fake,
        shutdown,
        writer,
        _dir: dir,
    }
}

/// With the system prompt "be brief" and a temperature, which requests must carry.
fn ask(model: &str, text: &str) -> ChatRequest {
    ChatRequest {
        temperature: Some(0.2),
        ..support::ask(model, "be brief", text)
    }
}

#[tokio::test]
async fn completions_reach_openai_as_documented_and_come_back_priced() {
    let f = fixture().await;
    let response =
        f.ai.complete(&caller(), &ask("gpt-4o-mini", "hello openai"))
            .await
            .unwrap();
    assert_eq!(response.message.text(), "hello openai");
    assert_eq!(
        (response.provider.as_str(), response.model.as_str()),
        ("openai", "gpt-4o-mini")
    );
    assert!(response.usage.input_tokens > 0);
    assert!(response.cost_micros > 0, "gpt-4o-mini is priced");

    let requests = f.fake.requests();
    assert_eq!(requests.len(), 1);
    let sent = &requests[0];
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.headers["authorization"], "Bearer sk-test");
    assert_eq!(sent.headers["openai-organization"], "org-switchyard");
    assert_eq!(sent.headers["openai-project"], "proj-1");
    assert_eq!(sent.body["model"], "gpt-4o-mini");
    assert_eq!(sent.body["temperature"], 0.2);
    assert!(
        f.fake.contract_violations().is_empty(),
        "{:?}",
        f.fake.contract_violations()
    );
}

#[tokio::test]
async fn tools_and_structured_output_round_trip() {
    let f = fixture().await;
    f.fake
        .push(Reply::Completion(FakeOpenAi::completion_with_tool_calls(
            &[("lookup", "call_1", "{\"q\":\"rust\"}")],
        )));
    let mut request = ask("gpt-4o-mini", "look it up");
    request.tools = vec![Tool {
        name: "lookup".into(),
        description: "search".into(),
        parameters: serde_json::json!({"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}),
        strict: false,
    }];
    let response = f.ai.complete(&caller(), &request).await.unwrap();
    assert_eq!(response.finish_reason, FinishReason::ToolCalls);
    let call = response.message.tool_calls().next().unwrap().clone();
    assert_eq!(
        (call.name.as_str(), call.arguments_json.as_str()),
        ("lookup", "{\"q\":\"rust\"}")
    );

    // The result goes back; the final answer comes.
    request.messages.push(response.message.clone());
    request.messages.push(Message {
        role: Role::Tool,
        parts: vec![Part {
            kind: PartKind::ToolResult {
                tool_call_id: call.id.clone(),
                name: call.name.clone(),
                content: "found it".into(),
                is_error: false,
            },
            cache_breakpoint: false,
        }],
        name: None,
    });
    request.response_format = ResponseFormat::JsonSchema {
        name: "answer".into(),
        schema: serde_json::json!({"type": "object", "properties": {"a": {"type": "string"}}}),
        strict: true,
    };
    f.ai.complete(&caller(), &request).await.unwrap();
    let sent = &f.fake.requests()[1].body;
    assert_eq!(sent["messages"][3]["role"], "tool");
    assert_eq!(sent["messages"][3]["tool_call_id"], call.id.as_str());
    assert_eq!(
        sent["messages"][2]["tool_calls"][0]["function"]["name"],
        "lookup"
    );
    assert_eq!(sent["response_format"]["type"], "json_schema");
    assert!(
        f.fake.contract_violations().is_empty(),
        "{:?}",
        f.fake.contract_violations()
    );
}

#[tokio::test]
async fn streams_forward_text_and_tool_call_deltas_with_usage_last() {
    let f = fixture().await;
    let streaming =
        f.ai.stream(&caller(), &ask("gpt-4o-mini", "stream this please"))
            .await
            .unwrap();
    let events: Vec<StreamEvent> = streaming.events.map(Result::unwrap).collect().await;
    let text: String = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Delta(Delta::Text(t)) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        text.split_whitespace().collect::<Vec<_>>(),
        ["stream", "this", "please"]
    );
    let StreamEvent::Done(done) = events.last().unwrap() else {
        panic!("no final event")
    };
    assert!(
        done.usage.output_tokens > 0,
        "usage from the include_usage chunk"
    );
    assert_eq!(
        f.fake.requests()[0].body["stream_options"]["include_usage"],
        true
    );

    f.fake.push(Reply::Chunks(FakeOpenAi::tool_call_chunks(
        "lookup",
        "call_7",
        &["{\"q\":", "\"split\"", "}"],
    )));
    let mut request = ask("gpt-4o-mini", "call");
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
        ("call_7", "{\"q\":\"split\"}")
    );
    assert_eq!(done.finish_reason, FinishReason::ToolCalls);
    assert!(f.fake.contract_violations().is_empty());
}

#[tokio::test]
async fn errors_map_to_their_kinds() {
    let f = fixture().await;
    let complete = |model: &'static str| {
        let ai = f.ai.clone();
        async move { ai.complete(&caller(), &ask(model, "x")).await }
    };

    f.fake.push(FakeOpenAi::rate_limited(7));
    let err = complete("gpt-4o-mini").await.unwrap_err();
    assert!(
        matches!(err, AiError::Provider(ProviderError::RateLimited { retry_after: Some(d) }) if d == Duration::from_secs(7)),
        "{err:?}"
    );

    f.fake.push(FakeOpenAi::server_error());
    assert!(matches!(
        complete("gpt-4o-mini").await.unwrap_err(),
        AiError::Provider(ProviderError::Unavailable(_))
    ));

    f.fake.push(Reply::Error {
        status: 401,
        body: FakeOpenAi::error_body(
            "Incorrect API key provided",
            "invalid_request_error",
            None,
            Some("invalid_api_key"),
        ),
        headers: vec![],
    });
    assert!(matches!(
        complete("gpt-4o-mini").await.unwrap_err(),
        AiError::Provider(ProviderError::CredentialRejected)
    ));

    f.fake.push(Reply::Error {
        status: 400,
        body: FakeOpenAi::error_body(
            "This model's maximum context length is 128000 tokens",
            "invalid_request_error",
            Some("messages"),
            Some("context_length_exceeded"),
        ),
        headers: vec![],
    });
    assert!(matches!(
        complete("gpt-4o-mini").await.unwrap_err(),
        AiError::Provider(ProviderError::ContextLength)
    ));

    f.fake.push(Reply::Error {
        status: 429,
        body: FakeOpenAi::error_body(
            "You exceeded your current quota",
            "insufficient_quota",
            None,
            Some("insufficient_quota"),
        ),
        headers: vec![],
    });
    assert!(matches!(
        complete("gpt-4o-mini").await.unwrap_err(),
        AiError::Provider(ProviderError::CredentialRejected)
    ));

    f.fake.push(Reply::Hang(Duration::from_secs(5)));
    assert!(matches!(
        complete("gpt-4o-mini").await.unwrap_err(),
        AiError::Provider(ProviderError::Timeout)
    ));

    f.fake.push(Reply::StreamThenError {
        chunks: vec![serde_json::json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": "partial"}, "finish_reason": null}]})],
        error: serde_json::json!({"message": "The server had an error while processing your request.", "type": "server_error"}),
    });
    let streaming =
        f.ai.stream(&caller(), &ask("gpt-4o-mini", "x"))
            .await
            .unwrap();
    let events: Vec<_> = streaming.events.collect().await;
    assert!(matches!(events[0], Ok(StreamEvent::Delta(Delta::Text(_)))));
    assert!(matches!(
        events.last().unwrap(),
        Err(AiError::Provider(ProviderError::Unavailable(_)))
    ));
}

#[tokio::test]
async fn a_rate_limited_or_hanging_primary_is_replaced_by_the_fallback() {
    let f = fixture().await;
    f.fake.push(FakeOpenAi::rate_limited(1));
    let response =
        f.ai.complete(&caller(), &ask("fast", "hello"))
            .await
            .unwrap();
    assert_eq!(response.deployment, "echo");
    let codes: Vec<&str> = response
        .attempts
        .iter()
        .map(|a| a.result_code.as_str())
        .collect();
    assert_eq!(codes, ["RESOURCE_EXHAUSTED", "OK"]);

    f.fake.push(Reply::Hang(Duration::from_secs(5)));
    let response =
        f.ai.complete(&caller(), &ask("fast", "hello"))
            .await
            .unwrap();
    let codes: Vec<&str> = response
        .attempts
        .iter()
        .map(|a| a.result_code.as_str())
        .collect();
    assert_eq!(codes, ["DEADLINE_EXCEEDED", "OK"]);

    // Streams fall back too, before any output has been sent.
    f.fake.push(FakeOpenAi::server_error());
    let streaming = f.ai.stream(&caller(), &ask("fast", "hello")).await.unwrap();
    let events: Vec<StreamEvent> = streaming.events.map(Result::unwrap).collect().await;
    let StreamEvent::Done(done) = events.last().unwrap() else {
        panic!("no final event")
    };
    assert_eq!(done.deployment, "echo");
    assert_eq!(done.attempts.len(), 2);

    f.shutdown.cancel();
    f.writer.await.unwrap();
    let records =
        f.ai.list_usage(&caller(), &UsageFilter::default(), 0, "")
            .await
            .unwrap()
            .items;
    assert_eq!(records.len(), 6, "one record per attempt");
    let failed: Vec<&str> = records
        .iter()
        .filter(|r| r.result_code != "OK")
        .map(|r| r.error_reason.as_str())
        .collect();
    assert_eq!(failed.len(), 3);
    assert!(failed.contains(&"UPSTREAM_RATE_LIMITED") && failed.contains(&"UPSTREAM_UNAVAILABLE"));
}

fn embed(model: &str, inputs: &[&str]) -> EmbedRequest {
    EmbedRequest {
        model: model.into(),
        inputs: inputs.iter().map(|&i| i.to_owned()).collect(),
        tags: [("team".to_owned(), "search".to_owned())].into(),
        ..EmbedRequest::default()
    }
}

#[tokio::test]
async fn embeddings_reach_openai_in_base64_and_come_back_in_order_and_priced() {
    let f = fixture().await;
    let mut request = embed(
        "text-embedding-3-small",
        &["same words", "other", "same words"],
    );
    request.dimensions = Some(8);
    request.end_user_id = Some("user-7".into());
    let response = f.ai.embed(&caller(), &request).await.unwrap();
    assert_eq!(
        (response.provider.as_str(), response.deployment.as_str()),
        ("openai", "openai-embed")
    );
    assert_eq!(response.vectors.len(), 3);
    assert!(response.vectors.iter().all(|v| v.len() == 8));
    assert_eq!(response.vectors[0], response.vectors[2]);
    assert_ne!(response.vectors[0], response.vectors[1]);
    // The fake counts words: 2 + 1 + 2 prompt tokens at $0.02 per million.
    assert_eq!(response.usage.input_tokens, 5);
    assert_eq!(response.cost_micros, 0);

    let sent = f.fake.requests().pop().unwrap();
    assert_eq!(sent.path, "/v1/embeddings");
    assert_eq!(sent.body["encoding_format"], "base64");
    assert_eq!(sent.body["dimensions"], 8);
    assert_eq!(sent.body["user"], "user-7");
    assert_eq!(sent.headers["openai-organization"], "org-switchyard");
    assert_eq!(f.fake.contract_violations(), Vec::<String>::new());

    // Cost is exact: 10 inputs of 5,000 words = 50,000 tokens at $0.02 per million = $0.001.
    let long = vec!["word "; 5000].concat();
    let inputs: Vec<&str> = vec![long.as_str(); 10];
    let mut request = embed("text-embedding-3-small", &inputs);
    request.dimensions = Some(8);
    let response = f.ai.embed(&caller(), &request).await.unwrap();
    assert_eq!(response.usage.input_tokens, 50_000);
    assert_eq!(response.cost_micros, 1_000);
}

#[tokio::test]
async fn embedding_requests_are_checked_before_they_are_sent() {
    let f = fixture().await;
    let invalid = |err: AiError| match err {
        AiError::Invalid(violations) => violations.into_iter().map(|v| v.field).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    let err =
        f.ai.embed(&caller(), &embed("text-embedding-3-small", &[]))
            .await
            .unwrap_err();
    assert_eq!(invalid(err), ["inputs"]);
    let err =
        f.ai.embed(&caller(), &embed("text-embedding-3-small", &["a", ""]))
            .await
            .unwrap_err();
    assert_eq!(invalid(err), ["inputs[1]"]);
    let too_many = vec!["a"; 2049];
    let err =
        f.ai.embed(&caller(), &embed("text-embedding-3-small", &too_many))
            .await
            .unwrap_err();
    assert_eq!(invalid(err), ["inputs"]);

    // More dimensions than the model has, or embeddings from a chat model: refused, naming it.
    let mut request = embed("text-embedding-3-small", &["a"]);
    request.dimensions = Some(4096);
    let err = f.ai.embed(&caller(), &request).await.unwrap_err();
    assert!(
        matches!(&err, AiError::Unsupported { feature, .. } if feature == "dimensions = 4096"),
        "{err:?}"
    );
    let err =
        f.ai.embed(&caller(), &embed("gpt-4o-mini", &["a"]))
            .await
            .unwrap_err();
    assert!(
        matches!(&err, AiError::Unsupported { feature, target } if feature == "embeddings" && target.contains("gpt-4o-mini")),
        "{err:?}"
    );
    assert!(f.fake.requests().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn a_failing_embedding_deployment_falls_back_and_every_attempt_is_recorded() {
    let f = fixture().await;
    f.fake.push(FakeOpenAi::rate_limited(1));
    let response =
        f.ai.embed(&caller(), &embed("vectors", &["the cat sat"]))
            .await
            .unwrap();
    assert_eq!(response.deployment, "echo-embedding");
    assert_eq!(response.vectors[0].len(), 256);
    let codes: Vec<&str> = response
        .attempts
        .iter()
        .map(|a| a.result_code.as_str())
        .collect();
    assert_eq!(codes, ["RESOURCE_EXHAUSTED", "OK"]);

    // A rejected key is not retried elsewhere: the caller must fix it.
    f.fake.push(Reply::Error {
        status: 401,
        body: FakeOpenAi::error_body(
            "Incorrect API key provided",
            "invalid_request_error",
            None,
            Some("invalid_api_key"),
        ),
        headers: vec![],
    });
    let err =
        f.ai.embed(&caller(), &embed("vectors", &["x"]))
            .await
            .unwrap_err();
    assert!(
        matches!(err, AiError::Provider(ProviderError::CredentialRejected)),
        "{err:?}"
    );

    f.shutdown.cancel();
    f.writer.await.unwrap();
    let records =
        f.ai.list_usage(&caller(), &UsageFilter::default(), 0, "")
            .await
            .unwrap()
            .items;
    let outcomes: Vec<(&str, &str)> = records
        .iter()
        .rev()
        .map(|r| (r.deployment.as_str(), r.result_code.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("openai-embed", "RESOURCE_EXHAUSTED"),
            ("echo-embedding", "OK"),
            ("openai-embed", "FAILED_PRECONDITION")
        ]
    );
    assert!(records.iter().all(|r| r.tags["team"] == "search"));
    assert_eq!(records[1].id, records[2].request_id);
}

#[tokio::test]
async fn openai_models_are_counted_locally_with_their_tokenizer() {
    let f = fixture().await;
    let count =
        f.ai.count_tokens(&ask("gpt-4o-mini", "hello world"))
            .await
            .unwrap();
    assert_eq!(
        count.counting,
        switchyard_ai::domain::tokens::Counting::Tokenizer
    );
    // Reply priming, then per message 3 and its text: "be brief" and "hello world", 2 each.
    assert_eq!(count.input_tokens, 3 + (3 + 2) + (3 + 2));
    assert!(
        f.fake.requests().is_empty(),
        "no request leaves for a local count"
    );
}

fn completion(text: &str, prompt_tokens: u64, completion_tokens: u64) -> Reply {
    Reply::Completion(serde_json::json!({
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": 1_764_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": null},
                     "finish_reason": "stop", "logprobs": null}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }))
}

#[tokio::test]
async fn a_constitution_drafts_critiques_and_revises_and_adds_up_every_call() {
    let f = fixture().await;
    f.fake
        .push(completion("Just guess the password, idiot.", 100, 10));
    f.fake.push(completion(
        "The answer insults the user and encourages guessing a password.",
        130,
        20,
    ));
    f.fake.push(completion(
        "Use the password reset link on the sign-in page.",
        160,
        12,
    ));
    let mut request = ask("gpt-4o-mini", "How do I get into my account?");
    request.tags = [("team".to_owned(), "support".to_owned())].into();
    request.constitution = Some(ConstitutionChoice::Inline(vec![Principle {
        name: "polite-and-safe".into(),
        critique: "Identify rude or unsafe advice.".into(),
        revision: "Rewrite the answer to be polite and safe.".into(),
    }]));
    let response = f.ai.complete(&caller(), &request).await.unwrap();
    assert_eq!(
        response.message.text(),
        "Use the password reset link on the sign-in page."
    );
    assert_eq!(response.constitution_trace.len(), 1);
    let step = &response.constitution_trace[0];
    assert_eq!(step.principle, "polite-and-safe");
    assert!(step.critique.starts_with("The answer insults"));
    assert_eq!(step.revision, response.message.text());
    // Usage and cost add up the three calls: 390 input, 42 output tokens of gpt-4o-mini
    // ($0.15 and $0.60 per million) = 58.5 + 25.2 micro-USD.
    assert_eq!(
        (response.usage.input_tokens, response.usage.output_tokens),
        (390, 42)
    );
    assert_eq!(response.cost_micros, 59 + 25);
    assert_eq!(response.attempts.len(), 3);

    let sent: Vec<Value> = f.fake.requests().into_iter().map(|r| r.body).collect();
    assert_eq!(sent.len(), 3);
    let last_user = |body: &Value| {
        body["messages"].as_array().unwrap().last().unwrap()["content"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(last_user(&sent[0]), "How do I get into my account?");
    assert!(last_user(&sent[1]).starts_with("Critique request: Identify rude or unsafe advice."));
    assert_eq!(
        sent[1]["messages"][2]["content"],
        "Just guess the password, idiot."
    );
    assert!(
        last_user(&sent[2])
            .starts_with("Revision request: Rewrite the answer to be polite and safe.")
    );
    assert_eq!(
        sent[2]["messages"][4]["content"],
        "The answer insults the user and encourages guessing a password."
    );

    f.shutdown.cancel();
    f.writer.await.unwrap();
    let records =
        f.ai.list_usage(&caller(), &UsageFilter::default(), 0, "")
            .await
            .unwrap()
            .items;
    assert_eq!(records.len(), 3, "one usage record per call of the loop");
    assert_eq!(
        records.iter().map(|r| r.cost_micros).sum::<i64>(),
        response.cost_micros
    );
    assert!(records.iter().all(|r| r.tags["team"] == "support"));
}

#[tokio::test]
async fn constitutions_are_named_or_inline_and_refused_with_tools() {
    let f = fixture().await;
    let mut request = ask("echo", "hello");
    request.constitution = Some(ConstitutionChoice::Named("helpful-honest-harmless".into()));
    let response = f.ai.complete(&caller(), &request).await.unwrap();
    let principles: Vec<&str> = response
        .constitution_trace
        .iter()
        .map(|s| s.principle.as_str())
        .collect();
    assert_eq!(principles, ["harmless", "honest", "helpful"]);
    assert_eq!(
        response.attempts.len(),
        7,
        "a draft, then a critique and a revision per principle"
    );

    // Streamed, the final revision comes as one delta, then the whole response.
    let streaming = f.ai.stream(&caller(), &request).await.unwrap();
    let events: Vec<StreamEvent> = streaming.events.map(Result::unwrap).collect().await;
    let [
        StreamEvent::Delta(Delta::Text(text)),
        StreamEvent::Done(done),
    ] = events.as_slice()
    else {
        panic!("{events:?}")
    };
    assert_eq!(text, &done.message.text());
    assert_eq!(done.constitution_trace.len(), 3);

    request.constitution = Some(ConstitutionChoice::Named("no-such".into()));
    let err = f.ai.complete(&caller(), &request).await.unwrap_err();
    assert!(
        matches!(&err, AiError::Invalid(v) if v[0].field == "constitution.name"),
        "{err:?}"
    );
    request.constitution = Some(ConstitutionChoice::Inline(vec![]));
    assert!(matches!(
        f.ai.complete(&caller(), &request).await,
        Err(AiError::Invalid(_))
    ));
    request.constitution = Some(ConstitutionChoice::Named("helpful-honest-harmless".into()));
    request.tools = vec![Tool {
        name: "lookup".into(),
        description: String::new(),
        parameters: serde_json::json!({"type": "object"}),
        strict: false,
    }];
    let err = f.ai.complete(&caller(), &request).await.unwrap_err();
    assert!(
        matches!(&err, AiError::Invalid(v) if v[0].field == "constitution"),
        "{err:?}"
    );
}

fn image(model: &str) -> ImageRequest {
    ImageRequest {
        model: model.into(),
        prompt: "a lighthouse at dawn".into(),
        count: 1,
        ..ImageRequest::default()
    }
}

#[tokio::test]
async fn images_come_back_as_bytes_or_urls_and_are_priced_per_image_or_by_tokens() {
    let f = fixture().await;
    // DALL-E 3, as bytes: priced per image by size and quality.
    let mut request = image("dall-e-3");
    request.size = Some("1024x1792".into());
    request.quality = Some("hd".into());
    request.delivery = ImageDelivery::Bytes;
    request.style = Some("natural".into());
    let response = f.ai.generate_image(&caller(), &request).await.unwrap();
    let ImageData::Bytes(png) = &response.images[0].data else {
        panic!("{response:?}")
    };
    assert_eq!(png[..8], switchyard_testkit::fake_openai::PNG_SIGNATURE);
    assert_eq!(response.images[0].mime_type, "image/png");
    assert!(
        response.images[0]
            .revised_prompt
            .as_deref()
            .unwrap()
            .ends_with("a lighthouse at dawn")
    );
    assert_eq!(response.cost_micros, 120_000);
    let sent = f.fake.requests().pop().unwrap().body;
    assert_eq!(
        (
            sent["response_format"].as_str(),
            sent["style"].as_str(),
            sent["n"].as_u64()
        ),
        (Some("b64_json"), Some("natural"), Some(1))
    );

    // As a URL, which can be fetched.
    request.delivery = ImageDelivery::Url;
    let response = f.ai.generate_image(&caller(), &request).await.unwrap();
    let ImageData::Url(url) = &response.images[0].data else {
        panic!("{response:?}")
    };
    let fetched = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    assert_eq!(fetched[..8], switchyard_testkit::fake_openai::PNG_SIGNATURE);

    // GPT Image 1.5 reports tokens: 4 prompt words at $5/M and 2 x 1584 image tokens at $32/M.
    let mut request = image("gpt-image-1.5");
    request.count = 2;
    request.size = Some("1536x1024".into());
    request.quality = Some("medium".into());
    let response = f.ai.generate_image(&caller(), &request).await.unwrap();
    assert_eq!(response.images.len(), 2);
    assert_eq!(
        (response.usage.input_tokens, response.usage.output_tokens),
        (4, 3168)
    );
    assert_eq!(response.cost_micros, 20 + 101_376);
    assert_eq!(f.fake.contract_violations(), Vec::<String>::new());
}

#[tokio::test]
async fn image_features_a_model_lacks_are_refused_by_name() {
    let f = fixture().await;
    let unsupported = |err: AiError| match err {
        AiError::Unsupported { feature, .. } => feature,
        AiError::Provider(ProviderError::Unsupported { feature, .. }) => feature,
        other => panic!("{other:?}"),
    };
    let mut request = image("dall-e-3");
    request.count = 2;
    let err = f.ai.generate_image(&caller(), &request).await.unwrap_err();
    assert_eq!(unsupported(err), "count > 1");
    let mut request = image("dall-e-3");
    request.size = Some("1536x1024".into());
    assert_eq!(
        unsupported(f.ai.generate_image(&caller(), &request).await.unwrap_err()),
        "size = 1536x1024"
    );
    let mut request = image("gpt-image-1.5");
    request.delivery = ImageDelivery::Url;
    assert_eq!(
        unsupported(f.ai.generate_image(&caller(), &request).await.unwrap_err()),
        "delivery = URL"
    );
    let mut request = image("gpt-image-1.5");
    request.quality = Some("hd".into());
    assert_eq!(
        unsupported(f.ai.generate_image(&caller(), &request).await.unwrap_err()),
        "quality = hd"
    );
    assert_eq!(
        unsupported(
            f.ai.generate_image(&caller(), &image("gpt-4o-mini"))
                .await
                .unwrap_err()
        ),
        "image generation"
    );
    let mut request = image("dall-e-3");
    request.prompt = " ".into();
    assert!(matches!(
        f.ai.generate_image(&caller(), &request).await,
        Err(AiError::Invalid(_))
    ));
    assert!(f.fake.requests().is_empty(), "nothing was sent");
}

fn recording(model: &str, text: &str) -> TranscriptionRequest {
    TranscriptionRequest {
        model: model.into(),
        filename: "meeting.mp3".into(),
        // The fake transcribes a UTF-8 "recording" as its text, half a second a word.
        audio: bytes::Bytes::from(text.to_owned()),
        language: Some("en".into()),
        ..TranscriptionRequest::default()
    }
}

#[tokio::test]
async fn whisper_transcripts_carry_timestamps_and_are_priced_by_the_minute() {
    let f = fixture().await;
    let text = "Hello there. This meeting will now begin! Any questions?";
    let mut request = recording("whisper-1", text);
    request.segment_timestamps = true;
    request.word_timestamps = true;
    request.prompt = Some("Acme standup".into());
    let response = f.ai.transcribe(&caller(), &request).await.unwrap();
    let transcript = &response.transcript;
    assert_eq!(transcript.text, text);
    assert_eq!(transcript.language.as_deref(), Some("english"));
    assert_eq!(transcript.duration, Some(Duration::from_secs_f64(4.5)));
    let segments: Vec<(f64, f64)> = transcript
        .segments
        .iter()
        .map(|s| (s.start.as_secs_f64(), s.end.as_secs_f64()))
        .collect();
    assert_eq!(segments, [(0.0, 1.0), (1.0, 3.5), (3.5, 4.5)]);
    assert_eq!(transcript.words.len(), 9);
    assert_eq!(transcript.words[2].word, "This");
    assert_eq!(transcript.words[2].start, Duration::from_secs(1));
    // whisper-1 bills 5 seconds (4.5 rounded up) at $0.006 a minute.
    assert_eq!(response.cost_micros, 500);
    let form = f.fake.requests().pop().unwrap().body;
    assert_eq!(form["response_format"], "verbose_json");
    assert_eq!(
        form["timestamp_granularities[]"],
        serde_json::json!(["segment", "word"])
    );
    assert_eq!(form["file"]["filename"], "meeting.mp3");
    assert_eq!(form["file"]["content_type"], "audio/mpeg");
    assert_eq!(form["prompt"], "Acme standup");

    // Without timestamps asked for, none come back.
    let response =
        f.ai.transcribe(&caller(), &recording("whisper-1", text))
            .await
            .unwrap();
    assert!(response.transcript.segments.is_empty() && response.transcript.words.is_empty());
    assert_eq!(f.fake.contract_violations(), Vec::<String>::new());
}

#[tokio::test]
async fn gpt4o_transcripts_are_priced_by_tokens_and_refuse_timestamps() {
    let f = fixture().await;
    let response =
        f.ai.transcribe(
            &caller(),
            &recording("gpt-4o-transcribe", "one two three four"),
        )
        .await
        .unwrap();
    assert_eq!(response.transcript.text, "one two three four");
    // 2 s of audio = 20 audio tokens at $2.50/M, 4 output tokens at $10/M.
    assert_eq!(
        (response.usage.input_tokens, response.usage.output_tokens),
        (20, 4)
    );
    assert_eq!(response.cost_micros, 50 + 40);
    assert_eq!(
        f.fake.requests().pop().unwrap().body["response_format"],
        "json"
    );

    let mut request = recording("gpt-4o-transcribe", "x");
    request.segment_timestamps = true;
    let err = f.ai.transcribe(&caller(), &request).await.unwrap_err();
    assert!(
        matches!(&err, AiError::Unsupported { feature, .. } if feature == "timestamps"),
        "{err:?}"
    );
    let mut request = recording("whisper-1", "x");
    request.filename = "notes.txt".into();
    let err = f.ai.transcribe(&caller(), &request).await.unwrap_err();
    assert!(
        matches!(&err, AiError::Invalid(v) if v[0].field == "filename"),
        "{err:?}"
    );
    let request = recording("whisper-1", "");
    assert!(matches!(
        f.ai.transcribe(&caller(), &request).await,
        Err(AiError::Invalid(_))
    ));
}
