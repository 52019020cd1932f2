//! The AI domain end to end on the echo model and a scripted provider: routing, aliases,
//! deprecated names, capability checks, fallback with its attempt trace, streaming, usage records
//! and their group commit.

// Shared test helpers unwrap too: a failure should stop the test where it happens.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use switchyard_ai::Ai;
use switchyard_ai::config::{AiConfig, DeploymentConfig};
use switchyard_ai::domain::catalogue::ModelEntry;
use switchyard_ai::domain::error::AiError;
use switchyard_ai::domain::model::*;
use switchyard_ai::providers::echo::Echo;
use switchyard_ai::providers::{
    Adapters, ChatProvider, Deployment, EventStream, ProviderError, ProviderResponse,
};
use switchyard_ai::usage::UsageFilter;
use tokio_util::sync::CancellationToken;

mod support;

use support::{Gateway, caller, deployment, open_ai};

/// A provider that fails as scripted, then answers like echo.
#[derive(Debug)]
struct Scripted {
    failures: Mutex<Vec<ProviderError>>,
    calls: AtomicUsize,
}

#[async_trait]
impl ChatProvider for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }

    async fn complete(
        &self,
        deployment: &Deployment,
        request: &ChatRequest,
    ) -> Result<ProviderResponse, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let next = self.failures.lock().unwrap().pop();
        match next {
            Some(err) => Err(err),
            None => Echo.complete(deployment, request).await,
        }
    }

    async fn stream(
        &self,
        deployment: &Deployment,
        request: &ChatRequest,
    ) -> Result<EventStream, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let next = self.failures.lock().unwrap().pop();
        match next {
            Some(err) => Err(err),
            None => Echo.stream(deployment, request).await,
        }
    }
}

fn entry(provider: &str, price: f64, capabilities: &[&str]) -> ModelEntry {
    let text = format!(
        "provider = \"{provider}\"\ncontext_window = 1000\nmax_output_tokens = 100\ncapabilities = {caps:?}\ninput_per_million = {price}\noutput_per_million = {price}\n",
        caps = capabilities
    );
    toml::from_str(&text).unwrap()
}

struct Fixture {
    ai: Ai,
    db: switchyard_store::Db,
    scripted: Arc<Scripted>,
    shutdown: CancellationToken,
    writer: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn fixture(failures: Vec<ProviderError>) -> Fixture {
    fixture_with(failures, |_| {}).await
}

async fn fixture_with(failures: Vec<ProviderError>, tweak: impl FnOnce(&mut AiConfig)) -> Fixture {
    let mut config = AiConfig::default();
    config.models.insert(
        "pricey".into(),
        entry("scripted", 2.0, &["chat", "streaming"]),
    );
    let mut old = entry("echo", 0.0, &["chat"]);
    old.deprecated = true;
    old.successor = Some("echo".into());
    config.models.insert("old-echo".into(), old);
    config.deployments.insert(
        "primary".into(),
        DeploymentConfig {
            provider_model: Some("pricey-v1".into()),
            ..deployment("scripted", "pricey", None, None, Duration::from_millis(500))
        },
    );
    config
        .aliases
        .insert("chain".into(), vec!["primary".into(), "echo".into()]);
    config.usage_flush_interval = Duration::from_millis(20);
    tweak(&mut config);
    let scripted = Arc::new(Scripted {
        failures: Mutex::new(failures),
        calls: AtomicUsize::new(0),
    });
    let providers: Vec<Arc<dyn ChatProvider>> = vec![Arc::new(Echo), scripted.clone()];
    let Gateway {
        ai,
        db,
        writer,
        shutdown,
        dir,
    } = open_ai(
        &config,
        Adapters {
            chat: providers,
            ..Adapters::default()
        },
    )
    .await;
    Fixture {
        ai,
        db,
        scripted,
        shutdown,
        writer,
        _dir: dir,
    }
}

impl Fixture {
    /// Stops the writer, which flushes every buffered record.
    async fn flush(self) -> (Ai, switchyard_store::Db, tempfile::TempDir) {
        self.shutdown.cancel();
        self.writer.await.unwrap();
        (self.ai, self.db, self._dir)
    }
}

fn ask(model: &str, text: &str) -> ChatRequest {
    support::ask(model, "be brief", text)
}

#[tokio::test]
async fn echo_answers_with_usage_and_a_recorded_call() {
    let f = fixture(vec![]).await;
    let mut request = ask("echo", "hello there world");
    request.tags = BTreeMap::from([("team".into(), "search".into())]);
    let response = f.ai.complete(&caller(), &request).await.unwrap();
    assert_eq!(response.message.text(), "hello there world");
    assert_eq!(response.finish_reason, FinishReason::Stop);
    assert_eq!(
        (response.provider.as_str(), response.deployment.as_str()),
        ("echo", "echo")
    );
    assert!(response.usage.input_tokens > 0 && response.usage.output_tokens > 0);
    assert_eq!(response.attempts.len(), 1);

    let (ai, _db, _dir) = f.flush().await;
    let records = ai
        .list_usage(&caller(), &UsageFilter::default(), 0, "")
        .await
        .unwrap()
        .items;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].id, response.id);
    assert_eq!(records[0].tags["team"], "search");
    assert_eq!(records[0].usage, response.usage);
    let other = Caller {
        tenant: "globex".into(),
        subject: "bob".into(),
    };
    assert!(
        ai.list_usage(&other, &UsageFilter::default(), 0, "")
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn echo_behaves_like_a_model_for_tools_formats_and_limits() {
    let f = fixture(vec![]).await;
    let mut request = ask("echo", "one two three four five");
    request.max_output_tokens = Some(2);
    let response = f.ai.complete(&caller(), &request).await.unwrap();
    assert_eq!(
        (response.message.text().as_str(), response.finish_reason),
        ("one two ", FinishReason::Length)
    );

    let mut request = ask("echo", "call it");
    request.tools = vec![Tool {
        name: "lookup".into(),
        description: String::new(),
        parameters: serde_json::json!({"type": "object"}),
        strict: false,
    }];
    request.tool_choice = Some(ToolChoice::Required);
    let response = f.ai.complete(&caller(), &request).await.unwrap();
    assert_eq!(response.finish_reason, FinishReason::ToolCalls);
    assert_eq!(response.message.tool_calls().next().unwrap().name, "lookup");

    let mut request = ask("echo", "json please");
    request.response_format = ResponseFormat::JsonObject;
    let response = f.ai.complete(&caller(), &request).await.unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&response.message.text()).unwrap();
    assert_eq!(parsed["echo"], "json please");
}

#[tokio::test]
async fn streaming_forwards_deltas_and_ends_with_the_whole_answer() {
    let f = fixture(vec![]).await;
    let streaming = f.ai.stream(&caller(), &ask("echo", "a b c")).await.unwrap();
    let events: Vec<StreamEvent> = streaming.events.map(Result::unwrap).collect().await;
    let deltas: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Delta(Delta::Text(t)) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(deltas, ["a ", "b ", "c"]);
    let StreamEvent::Done(done) = events.last().unwrap() else {
        panic!("no final event")
    };
    assert_eq!(done.id, streaming.id);
    assert_eq!(done.message.text(), "a b c");

    let (ai, _db, _dir) = f.flush().await;
    let records = ai
        .list_usage(&caller(), &UsageFilter::default(), 0, "")
        .await
        .unwrap()
        .items;
    assert_eq!(records.len(), 1);
    assert!(records[0].time_to_first_token.is_some());
}

#[tokio::test]
async fn retryable_failures_fall_back_with_a_trace_and_a_record_per_attempt() {
    let f = fixture(vec![ProviderError::RateLimited {
        retry_after: Some(Duration::from_millis(10)),
    }])
    .await;
    let response =
        f.ai.complete(&caller(), &ask("chain", "hello"))
            .await
            .unwrap();
    assert_eq!(response.deployment, "echo", "served by the fallback");
    let trace: Vec<(&str, &str)> = response
        .attempts
        .iter()
        .map(|a| (a.deployment.as_str(), a.result_code.as_str()))
        .collect();
    assert_eq!(trace, [("primary", "RESOURCE_EXHAUSTED"), ("echo", "OK")]);
    assert_eq!(
        response.attempts[0].model, "pricey-v1",
        "the provider's model name"
    );

    // A primary that succeeds is priced with its own prices.
    let priced =
        f.ai.complete(&caller(), &ask("chain", "hello again"))
            .await
            .unwrap();
    assert_eq!(priced.deployment, "primary");
    let expected = ((priced.usage.input_tokens + priced.usage.output_tokens) * 2) as i64;
    assert_eq!(
        priced.cost_micros, expected,
        "$2 per million tokens either way"
    );
    assert_eq!(f.scripted.calls.load(Ordering::SeqCst), 2);

    let (ai, _db, _dir) = f.flush().await;
    let records = ai
        .list_usage(&caller(), &UsageFilter::default(), 0, "")
        .await
        .unwrap()
        .items;
    let mut codes: Vec<(String, u32, String)> = records
        .iter()
        .map(|r| (r.deployment.clone(), r.attempt, r.result_code.clone()))
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        [
            ("echo".into(), 2, "OK".into()),
            ("primary".into(), 1, "OK".into()),
            ("primary".into(), 1, "RESOURCE_EXHAUSTED".into()),
        ]
    );
    let failed = records.iter().find(|r| r.result_code != "OK").unwrap();
    assert_eq!(
        (failed.error_reason.as_str(), failed.cost_micros),
        ("UPSTREAM_RATE_LIMITED", 0)
    );
    assert_eq!(
        failed.request_id, response.id,
        "attempts of one request share its id"
    );
}

#[tokio::test]
async fn non_retryable_failures_and_hangs_are_reported() {
    let f = fixture(vec![ProviderError::CredentialRejected]).await;
    let err =
        f.ai.complete(&caller(), &ask("chain", "x"))
            .await
            .unwrap_err();
    assert!(
        matches!(err, AiError::Provider(ProviderError::CredentialRejected)),
        "{err:?}"
    );
    assert_eq!(err.result_code(), "FAILED_PRECONDITION");

    let f = fixture(vec![ProviderError::Overloaded]).await;
    let err =
        f.ai.complete(&caller(), &ask("pricey", "x"))
            .await
            .unwrap_err();
    assert_eq!(err.result_code(), "UNAVAILABLE", "no fallback to go to");
}

#[tokio::test]
async fn models_aliases_and_deprecated_names_resolve() {
    let f = fixture(vec![]).await;
    let response =
        f.ai.complete(&caller(), &ask("old-echo", "hi"))
            .await
            .unwrap();
    assert_eq!(response.model, "echo");
    assert!(
        response.notices[0].contains("old-echo is deprecated"),
        "{:?}",
        response.notices
    );

    let err =
        f.ai.complete(&caller(), &ask("gpt-nonexistent", "hi"))
            .await
            .unwrap_err();
    assert!(
        matches!(&err, AiError::Invalid(v) if v[0].field == "model"),
        "{err:?}"
    );

    assert!(f.ai.model("chain").is_some());
    assert!(f.ai.models(None).len() >= 3);
    assert!(f.ai.models(Some("scripted")).len() == 1);
}

#[tokio::test]
async fn unsupported_features_are_refused_unless_allowed() {
    let f = fixture(vec![]).await;
    let mut request = ask("pricey", "look");
    request.messages[1].parts.push(Part {
        kind: PartKind::Image {
            source: Source::Url("https://example.com/cat.png".into()),
            detail: None,
        },
        cache_breakpoint: false,
    });
    let err = f.ai.complete(&caller(), &request).await.unwrap_err();
    assert!(
        matches!(&err, AiError::Unsupported { feature, .. } if feature == "image parts"),
        "{err:?}"
    );
    request.allow_unsupported = true;
    f.ai.complete(&caller(), &request).await.unwrap();

    let mut request = ask("echo", "opts");
    request.provider_options.anthropic = Some(serde_json::Map::new());
    let err = f.ai.complete(&caller(), &request).await.unwrap_err();
    assert!(
        matches!(&err, AiError::Invalid(v) if v[0].field == "provider_options.anthropic"),
        "{err:?}"
    );

    let mut request = ask("echo", "bad");
    request.temperature = Some(3.0);
    request.stop = vec!["a".into(); 5];
    let err = f.ai.complete(&caller(), &request).await.unwrap_err();
    assert!(
        matches!(&err, AiError::Invalid(v) if v.len() == 2),
        "{err:?}"
    );
}

#[tokio::test]
async fn estimates_price_input_and_the_most_output() {
    let f = fixture(vec![]).await;
    let mut request = ask("pricey", "estimate me");
    request.max_output_tokens = Some(50);
    let estimate = f.ai.estimate(&request).unwrap();
    assert_eq!(estimate.model, "pricey");
    assert_eq!(estimate.output_tokens, 50);
    assert_eq!(estimate.max_output_cost_micros, 100);
    assert_eq!(
        estimate.input_cost_micros,
        (estimate.input_tokens * 2) as i64
    );
}

#[tokio::test]
async fn a_failing_deployment_is_skipped_until_a_probe_finds_it_recovered() {
    let failures = vec![ProviderError::Overloaded; 3];
    let f = fixture_with(failures, |config| {
        config.circuit_breaker.failure_threshold = 2;
        config.circuit_breaker.open_for = Duration::from_millis(300);
    })
    .await;
    for _ in 0..2 {
        let response = f.ai.complete(&caller(), &ask("chain", "x")).await.unwrap();
        assert_eq!(response.deployment, "echo");
    }
    assert_eq!(f.scripted.calls.load(Ordering::SeqCst), 2);
    // Open: the primary is not called at all, and the trace says why.
    let response = f.ai.complete(&caller(), &ask("chain", "x")).await.unwrap();
    assert_eq!(f.scripted.calls.load(Ordering::SeqCst), 2);
    assert_eq!(response.attempts[0].error, "circuit open: skipped");
    assert_eq!(response.attempts[0].latency, Duration::ZERO);

    // After the open period one probe goes through; it fails (the third scripted failure) and
    // the circuit opens again; the next probe succeeds and closes it.
    tokio::time::sleep(Duration::from_millis(350)).await;
    f.ai.complete(&caller(), &ask("chain", "x")).await.unwrap();
    assert_eq!(f.scripted.calls.load(Ordering::SeqCst), 3);
    f.ai.complete(&caller(), &ask("chain", "x")).await.unwrap();
    assert_eq!(
        f.scripted.calls.load(Ordering::SeqCst),
        3,
        "open again after the failed probe"
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    let response = f.ai.complete(&caller(), &ask("chain", "x")).await.unwrap();
    assert_eq!(response.deployment, "primary", "recovered");
    let response = f.ai.complete(&caller(), &ask("chain", "x")).await.unwrap();
    assert_eq!(response.deployment, "primary");

    // With every circuit open there is nothing to try.
    let f = fixture_with(vec![ProviderError::Overloaded; 2], |config| {
        config.circuit_breaker.failure_threshold = 1;
    })
    .await;
    assert!(f.ai.complete(&caller(), &ask("pricey", "x")).await.is_err());
    let err =
        f.ai.complete(&caller(), &ask("pricey", "x"))
            .await
            .unwrap_err();
    assert_eq!(err.result_code(), "UNAVAILABLE");
    assert_eq!(f.scripted.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn tenants_over_their_quota_are_told_when_to_retry() {
    let f = fixture_with(vec![], |config| {
        config.quotas.tenants.insert(
            "acme".into(),
            switchyard_ai::domain::quota::Limits { rpm: 2, tpm: 0 },
        );
    })
    .await;
    f.ai.complete(&caller(), &ask("echo", "1")).await.unwrap();
    f.ai.complete(&caller(), &ask("echo", "2")).await.unwrap();
    let err =
        f.ai.complete(&caller(), &ask("echo", "3"))
            .await
            .unwrap_err();
    match err {
        AiError::QuotaExceeded { limit, retry_after } => {
            assert_eq!(limit, "requests_per_minute");
            assert!(retry_after <= Duration::from_secs(60));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        AiError::QuotaExceeded {
            limit: "x",
            retry_after: Duration::ZERO
        }
        .result_code(),
        "RESOURCE_EXHAUSTED"
    );
    let other = Caller {
        tenant: "globex".into(),
        subject: "bob".into(),
    };
    f.ai.complete(&other, &ask("echo", "fine")).await.unwrap();
}

fn with_tiny_model(config: &mut AiConfig) {
    let mut tiny = entry("scripted", 1.0, &["chat"]);
    tiny.context_window = 40;
    config.models.insert("tiny".into(), tiny);
    config.deployments.insert(
        "small".into(),
        deployment("scripted", "tiny", None, None, Duration::from_secs(1)),
    );
    config
        .aliases
        .insert("grow".into(), vec!["small".into(), "echo".into()]);
}

fn long_conversation(model: &str) -> ChatRequest {
    let mut messages = vec![Message {
        role: Role::System,
        parts: vec![Part::text("sys")],
        name: None,
    }];
    for turn in 0..6 {
        messages.push(Message {
            role: Role::User,
            parts: vec![Part::text(format!(
                "question {turn} {}",
                "word ".repeat(20)
            ))],
            name: None,
        });
        messages.push(Message {
            role: Role::Assistant,
            parts: vec![Part::text(format!("answer {turn}"))],
            name: None,
        });
    }
    messages.push(Message {
        role: Role::User,
        parts: vec![Part::text("last")],
        name: None,
    });
    ChatRequest {
        model: model.into(),
        messages,
        ..ChatRequest::default()
    }
}

#[tokio::test]
async fn too_long_inputs_fail_with_the_numbers_move_to_larger_windows_or_get_truncated() {
    let f = fixture_with(vec![], with_tiny_model).await;
    let err =
        f.ai.complete(&caller(), &long_conversation("tiny"))
            .await
            .unwrap_err();
    match &err {
        AiError::ContextWindow {
            model,
            input,
            output,
            window,
        } => {
            assert_eq!((model.as_str(), *output, *window), ("tiny", 0, 40));
            assert!(*input > 40, "{input}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.result_code(), "INVALID_ARGUMENT");

    // An alias moves it to a deployment with a larger window.
    let response =
        f.ai.complete(&caller(), &long_conversation("grow"))
            .await
            .unwrap();
    assert_eq!(response.deployment, "echo");
    assert!(
        response.attempts[0].error.contains("context window"),
        "{:?}",
        response.attempts
    );

    // Or the caller asks for truncation, and the small model serves a shortened conversation.
    let mut request = long_conversation("tiny");
    request.truncation = Some(Truncation::DropOldest);
    let response = f.ai.complete(&caller(), &request).await.unwrap();
    assert_eq!(response.deployment, "small");
    assert_eq!(response.message.text(), "last", "the last turn is kept");
    assert!(response.usage.input_tokens <= 40);

    let mut request = long_conversation("tiny");
    request.truncation = Some(Truncation::MiddleOut);
    request.max_output_tokens = Some(39);
    let err = f.ai.complete(&caller(), &request).await.unwrap_err();
    assert!(
        matches!(err, AiError::ContextWindow { output: 39, .. }),
        "no room left even for the last turn: {err:?}"
    );
}

fn echo_deployment(weight: u32, rpm: u64) -> DeploymentConfig {
    DeploymentConfig {
        weight,
        rpm,
        ..deployment("echo", "echo", None, None, Duration::from_secs(1))
    }
}

#[tokio::test]
async fn a_models_deployments_share_its_traffic_by_weight() {
    let f = fixture_with(Vec::new(), |config| {
        // The built-in "echo" deployment is replaced by two weighted ones.
        config
            .deployments
            .insert("echo".into(), echo_deployment(3, 0));
        config
            .deployments
            .insert("echo-small".into(), echo_deployment(1, 0));
    })
    .await;
    let mut served = BTreeMap::<String, u32>::new();
    for _ in 0..800 {
        let response = f.ai.complete(&caller(), &ask("echo", "hi")).await.unwrap();
        *served.entry(response.deployment).or_default() += 1;
    }
    // 3:1 is 600 and 200; six standard deviations (73) either side never fail by chance.
    let heavy = served["echo"];
    assert!((527..=673).contains(&heavy), "{served:?}");
    assert_eq!(heavy + served["echo-small"], 800);
}

#[tokio::test]
async fn a_deployment_over_its_rate_limit_is_skipped_for_the_next() {
    let f = fixture_with(Vec::new(), |config| {
        config
            .deployments
            .insert("echo-limited".into(), echo_deployment(1, 2));
        config
            .aliases
            .insert("limited".into(), vec!["echo-limited".into(), "echo".into()]);
        config
            .aliases
            .insert("only-limited".into(), vec!["echo-limited".into()]);
    })
    .await;
    for _ in 0..2 {
        let response =
            f.ai.complete(&caller(), &ask("limited", "hi"))
                .await
                .unwrap();
        assert_eq!(response.deployment, "echo-limited");
    }
    let response =
        f.ai.complete(&caller(), &ask("limited", "hi"))
            .await
            .unwrap();
    assert_eq!(response.deployment, "echo");
    assert_eq!(response.attempts[0].result_code, "RESOURCE_EXHAUSTED");
    assert!(
        response.attempts[0]
            .error
            .contains("deployment_requests_per_minute")
    );
    let err =
        f.ai.complete(&caller(), &ask("only-limited", "hi"))
            .await
            .unwrap_err();
    assert!(
        matches!(err, AiError::QuotaExceeded { limit: "deployment_requests_per_minute", retry_after } if retry_after > Duration::ZERO),
        "{err:?}"
    );
}
