//! Translation across providers: the same neutral request goes to OpenAI, Anthropic and Gemini
//! (local fakes of their documented wire formats), and both directions are checked: what each
//! provider receives, in its own format, and what its native answer becomes in the neutral model.
//!
//! Covered, for every provider: tools round trip (definition and named choice, the call, its
//! result, the final answer; streamed argument pieces put back together), images by URL and by
//! bytes, system prompts, native stop reasons (unary and streamed), and usage with prompt
//! caching normalized to one `Usage` and priced once at cache prices.

// Shared test helpers unwrap too: a failure should stop the test where it happens.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Map, Value, json};
use switchyard_ai::Ai;
use switchyard_ai::config::{AiConfig, DeploymentConfig};
use switchyard_ai::domain::model::*;
use switchyard_ai::providers::Adapters;
use switchyard_ai::providers::anthropic::Anthropic as AnthropicAdapter;
use switchyard_ai::providers::gemini::Gemini as GeminiAdapter;
use switchyard_ai::providers::openai::OpenAi as OpenAiAdapter;
use switchyard_testkit::fake_anthropic::{self, FakeAnthropic};
use switchyard_testkit::fake_gemini::{self, FakeGemini};
use switchyard_testkit::fake_openai::{self, FakeOpenAi};
use tokio_util::sync::CancellationToken;

mod support;

use support::{Gateway, caller, deployment, keys, open_ai};

// ---- the conversation every test sends ----

const SYSTEM: &str = "You are a weather assistant.";
const QUESTION: &str = "What is the weather in Paris?";
const TOOL: &str = "get_weather";
const TOOL_DESCRIPTION: &str = "The current weather in a city.";
/// The call's arguments as JSON text, as OpenAI sends them (and as Gemini's `args` print).
const ARGS_JSON: &str = r#"{"city":"Paris","unit":"celsius"}"#;
/// The same arguments streamed in pieces that cut through a value and a key.
const ARG_PIECES: [&str; 3] = [r#"{"city": "Pa"#, r#"ris", "unit"#, r#"": "celsius"}"#];
/// What the tool returned.
const RESULT: &str = r#"{"temperature":18,"conditions":"sunny"}"#;
/// The final answer after the tool result.
const ANSWER: &str = "It is 18 °C and sunny in Paris.";
/// The text of answers whose content does not matter, only how they stop.
const PARTIAL: &str = "Partial answer";

const OPENAI_CALL_ID: &str = "call_abc123";
const ANTHROPIC_CALL_ID: &str = "toolu_01A09q90qw90lq917835lq9";
/// Gemini 2.5 sends calls without ids; the adapter names them by position.
const GEMINI_CALL_ID: &str = "call_0";

fn args() -> Value {
    json!({ "city": "Paris", "unit": "celsius" })
}

fn weather_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "city": { "type": "string", "description": "The city's name." },
            "unit": { "type": "string", "enum": ["celsius", "fahrenheit"] },
        },
        "required": ["city"],
    })
}

// ---- the three providers ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upstream {
    OpenAi,
    Anthropic,
    Gemini,
}

impl Upstream {
    const ALL: [Upstream; 3] = [Upstream::OpenAi, Upstream::Anthropic, Upstream::Gemini];

    /// The catalogue model asked for; each is served by one deployment, of this provider only.
    fn model(self) -> &'static str {
        match self {
            Upstream::OpenAi => "gpt-4o-mini",
            Upstream::Anthropic => "claude-haiku-4-5",
            Upstream::Gemini => "gemini-2.5-flash",
        }
    }

    /// The provider's name in responses, and its deployment's name.
    fn name(self) -> &'static str {
        match self {
            Upstream::OpenAi => "openai",
            Upstream::Anthropic => "anthropic",
            Upstream::Gemini => "gemini",
        }
    }
}

/// A scripted answer, in one provider's wire format.
#[derive(Debug)]
enum Script {
    OpenAi(fake_openai::Reply),
    Anthropic(fake_anthropic::Reply),
    Gemini(fake_gemini::Reply),
}

struct Fixture {
    ai: Ai,
    openai: FakeOpenAi,
    anthropic: FakeAnthropic,
    gemini: FakeGemini,
    _shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

/// One gateway over the three fakes: deployments `openai` (gpt-4o-mini), `anthropic`
/// (claude-haiku-4-5) and `gemini` (gemini-2.5-flash).
async fn fixture() -> Fixture {
    switchyard_kit::tls::install_crypto_provider();
    let openai = FakeOpenAi::start().await;
    let anthropic = FakeAnthropic::start().await;
    let gemini = FakeGemini::start().await;
    let mut config = AiConfig::default();
    let deployments = [
        (Upstream::OpenAi, None, openai.base_url()),
        (
            Upstream::Anthropic,
            Some("claude-haiku-4-5-20251001"),
            anthropic.base_url(),
        ),
        (Upstream::Gemini, None, gemini.base_url()),
    ];
    for (upstream, provider_model, base_url) in deployments {
        config.deployments.insert(
            upstream.name().into(),
            DeploymentConfig {
                provider_model: provider_model.map(Into::into),
                ..deployment(
                    upstream.name(),
                    upstream.model(),
                    Some(&base_url),
                    Some(&format!("credentials/{}", upstream.name())),
                    Duration::from_secs(2),
                )
            },
        );
    }
    config.usage_flush_interval = Duration::from_millis(20);
    let keys = keys(&[
        ("credentials/openai", fake_openai::DEFAULT_API_KEY),
        ("credentials/anthropic", fake_anthropic::DEFAULT_API_KEY),
        ("credentials/gemini", fake_gemini::DEFAULT_API_KEY),
    ]);
    let http = reqwest::Client::new();
    let adapters = Adapters {
        chat: vec![
            Arc::new(OpenAiAdapter::new(http.clone(), keys.clone())),
            Arc::new(AnthropicAdapter::new(http.clone(), keys.clone())),
            Arc::new(GeminiAdapter::new(http, keys)),
        ],
        ..Adapters::default()
    };
    let Gateway {
        ai, shutdown, dir, ..
    } = open_ai(&config, adapters).await;
    Fixture {
        ai,
        openai,
        anthropic,
        gemini,
        _shutdown: shutdown,
        _dir: dir,
    }
}

impl Fixture {
    fn push(&self, script: Script) {
        match script {
            Script::OpenAi(reply) => self.openai.push(reply),
            Script::Anthropic(reply) => self.anthropic.push(reply),
            Script::Gemini(reply) => self.gemini.push(reply),
        }
    }

    /// The body of the last request the provider received.
    fn last_body(&self, upstream: Upstream) -> Value {
        let last = match upstream {
            Upstream::OpenAi => self.openai.requests().pop().map(|r| r.body),
            Upstream::Anthropic => self.anthropic.requests().pop().map(|r| r.body),
            Upstream::Gemini => self.gemini.requests().pop().map(|r| r.body),
        };
        last.unwrap_or_else(|| panic!("{upstream:?} received no request"))
    }

    /// Every scripted reply was used, and every OpenAI request keeps to OpenAI's published
    /// contract (the only provider that publishes one the fake can check).
    fn assert_clean(&self) {
        assert_eq!(self.openai.pending_replies(), 0, "OpenAI replies left");
        assert_eq!(
            self.anthropic.pending_replies(),
            0,
            "Anthropic replies left"
        );
        assert_eq!(self.gemini.pending_replies(), 0, "Gemini replies left");
        assert_eq!(self.openai.contract_violations(), Vec::<String>::new());
    }

    async fn complete(&self, request: &ChatRequest) -> ChatResponse {
        self.ai.complete(&caller(), request).await.unwrap()
    }

    /// The deltas of a streamed completion, and its final response.
    async fn stream(&self, request: &ChatRequest) -> (Vec<Delta>, ChatResponse) {
        let streaming = self.ai.stream(&caller(), request).await.unwrap();
        let mut events: Vec<StreamEvent> = streaming.events.map(Result::unwrap).collect().await;
        let Some(StreamEvent::Done(done)) = events.pop() else {
            panic!("the stream did not end with its response")
        };
        let deltas = events
            .into_iter()
            .map(|event| match event {
                StreamEvent::Delta(delta) => delta,
                StreamEvent::Done(_) => panic!("a response before the end of the stream"),
            })
            .collect();
        (deltas, *done)
    }
}

// ---- neutral requests ----

fn message(role: Role, parts: Vec<Part>) -> Message {
    Message {
        role,
        parts,
        name: None,
    }
}

fn part(kind: PartKind) -> Part {
    Part {
        kind,
        cache_breakpoint: false,
    }
}

fn weather_tool() -> Tool {
    Tool {
        name: TOOL.into(),
        description: TOOL_DESCRIPTION.into(),
        parameters: weather_schema(),
        strict: false,
    }
}

/// The system prompt and the question, with the weather tool.
fn weather_request(upstream: Upstream, choice: ToolChoice) -> ChatRequest {
    ChatRequest {
        model: upstream.model().into(),
        messages: vec![
            message(Role::System, vec![Part::text(SYSTEM)]),
            message(Role::User, vec![Part::text(QUESTION)]),
        ],
        tools: vec![weather_tool()],
        tool_choice: Some(choice),
        ..ChatRequest::default()
    }
}

fn tool_result(call: &ToolCall, content: &str) -> Message {
    message(
        Role::Tool,
        vec![part(PartKind::ToolResult {
            tool_call_id: call.id.clone(),
            name: call.name.clone(),
            content: content.into(),
            is_error: false,
        })],
    )
}

fn assistant_text(text: &str) -> Message {
    message(Role::Assistant, vec![Part::text(text)])
}

/// Checks each `(JSON pointer, value)` of `expected` in a request body.
fn assert_sent(upstream: Upstream, body: &Value, expected: &[(&str, Value)]) {
    for (pointer, value) in expected {
        assert_eq!(
            body.pointer(pointer),
            Some(value),
            "{upstream:?}: {pointer} of {body:#}"
        );
    }
}

/// A table has a row for every provider (rows of one provider together, in [`Upstream::ALL`]
/// order), so that no provider is left out of a translation.
fn assert_every_provider(upstreams: impl IntoIterator<Item = Upstream>) {
    let mut covered: Vec<Upstream> = upstreams.into_iter().collect();
    covered.dedup();
    assert_eq!(covered, Upstream::ALL);
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|err| panic!("{text:?} is not JSON: {err}"))
}

// ---- OpenAI's wire format (Chat Completions) ----

/// A `chat.completion` object with one choice.
fn openai_completion(message: Value, finish_reason: &str, usage: Value) -> Value {
    json!({
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion",
        "created": 1_767_225_600,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": "fp_0ba0d124f1",
    })
}

fn openai_text(text: &str) -> Value {
    json!({ "role": "assistant", "content": text, "refusal": null, "annotations": [] })
}

/// OpenAI's usage: `prompt_tokens` counts the cached ones too, `completion_tokens` the
/// reasoning ones too.
fn openai_usage(prompt: u64, cached: u64, completion: u64, reasoning: u64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": { "cached_tokens": cached, "audio_tokens": 0 },
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    })
}

/// A `chat.completion.chunk`; with `stream_options.include_usage` every chunk has a `usage`,
/// `null` but in the last.
fn openai_chunk(choices: Value, usage: Value) -> Value {
    json!({
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion.chunk",
        "created": 1_767_225_600,
        "model": "gpt-4o-mini-2024-07-18",
        "service_tier": "default",
        "system_fingerprint": "fp_0ba0d124f1",
        "choices": choices,
        "usage": usage,
    })
}

/// A streamed text answer as OpenAI sends it: the role, the text, the finish reason in a chunk
/// of its own, then the usage in a chunk without choices.
fn openai_text_chunks(text: &str, finish_reason: &str, usage: Value) -> Vec<Value> {
    let choice = |delta: Value, finish: Option<&str>| json!([{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }]);
    vec![
        openai_chunk(
            choice(
                json!({ "role": "assistant", "content": "", "refusal": null }),
                None,
            ),
            Value::Null,
        ),
        openai_chunk(choice(json!({ "content": text }), None), Value::Null),
        openai_chunk(choice(json!({}), Some(finish_reason)), Value::Null),
        openai_chunk(json!([]), usage),
    ]
}

// ---- Anthropic's wire format (Messages) ----

fn anthropic_message(
    content: Value,
    stop_reason: Option<&str>,
    stop_sequence: Option<&str>,
    usage: Value,
) -> Value {
    json!({
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5-20251001",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage,
    })
}

/// Anthropic's usage: `input_tokens` counts only the tokens after the last cache breakpoint;
/// the ones written to and read from the cache are counted apart.
fn anthropic_usage(input: u64, cache_write: u64, cache_read: u64, output: u64) -> Value {
    json!({
        "input_tokens": input,
        "cache_creation_input_tokens": cache_write,
        "cache_read_input_tokens": cache_read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": cache_write,
            "ephemeral_1h_input_tokens": 0,
        },
        "output_tokens": output,
        "service_tier": "standard",
    })
}

/// A streamed text answer as Anthropic sends it: `message_start` with the input usage (and one
/// output token), a text block, then `message_delta` with the stop reason and the cumulative
/// output tokens, and `message_stop`.
fn anthropic_text_events(
    text: &str,
    stop_reason: &str,
    stop_sequence: Option<&str>,
    start_usage: Value,
    output_tokens: u64,
) -> Vec<(String, Value)> {
    let event = |name: &str, data: Value| (name.to_owned(), data);
    let start = anthropic_message(json!([]), None, None, start_usage);
    vec![
        event(
            "message_start",
            json!({ "type": "message_start", "message": start }),
        ),
        event(
            "content_block_start",
            json!({
                "type": "content_block_start",
                "index": 0,
                "content_block": { "type": "text", "text": "" },
            }),
        ),
        event("ping", json!({ "type": "ping" })),
        event(
            "content_block_delta",
            json!({
                "type": "content_block_delta",
                "index": 0,
                "delta": { "type": "text_delta", "text": text },
            }),
        ),
        event(
            "content_block_stop",
            json!({ "type": "content_block_stop", "index": 0 }),
        ),
        event(
            "message_delta",
            json!({
                "type": "message_delta",
                "delta": { "stop_reason": stop_reason, "stop_sequence": stop_sequence },
                "usage": { "output_tokens": output_tokens },
            }),
        ),
        event("message_stop", json!({ "type": "message_stop" })),
    ]
}

// ---- Gemini's wire format (generateContent) ----

/// A `GenerateContentResponse` with one candidate; a candidate without parts has a `content` of
/// only its role, as Google sends it.
fn gemini_response(parts: Vec<Value>, finish_reason: Option<&str>, usage: Value) -> Value {
    let mut content = json!({ "role": "model" });
    if !parts.is_empty() {
        content["parts"] = Value::Array(parts);
    }
    let mut candidate = json!({ "content": content, "index": 0 });
    if let Some(reason) = finish_reason {
        candidate["finishReason"] = json!(reason);
    }
    json!({
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": "gemini-2.5-flash",
        "responseId": "mWNnaOqpAqbdz7IP5YTXsQ0",
    })
}

/// Gemini's `usageMetadata`: `promptTokenCount` counts the cached tokens too, thoughts are
/// apart from `candidatesTokenCount`; proto3 JSON leaves zero counts out.
fn gemini_usage(prompt: u64, cached: u64, candidates: u64, thoughts: u64) -> Value {
    let mut usage = Map::new();
    for (name, count) in [
        ("promptTokenCount", prompt),
        ("cachedContentTokenCount", cached),
        ("candidatesTokenCount", candidates),
        ("thoughtsTokenCount", thoughts),
        ("totalTokenCount", prompt + candidates + thoughts),
    ] {
        if count > 0 {
            usage.insert(name.to_owned(), json!(count));
        }
    }
    usage.insert(
        "promptTokensDetails".to_owned(),
        json!([{ "modality": "TEXT", "tokenCount": prompt }]),
    );
    if cached > 0 {
        usage.insert(
            "cacheTokensDetails".to_owned(),
            json!([{ "modality": "TEXT", "tokenCount": cached }]),
        );
    }
    Value::Object(usage)
}

fn gemini_call_part() -> Value {
    json!({ "functionCall": { "name": TOOL, "args": args() } })
}

// ---- 1. tools round trip ----

/// One provider's side of the tools round trip.
struct ToolRoundTrip {
    upstream: Upstream,
    /// The provider's answer calling the tool.
    call: Script,
    /// Its answer once it has the result.
    answer: Script,
    /// The id the neutral call comes back with.
    call_id: &'static str,
    /// The tool and the named choice, as the first request must carry them.
    tools_sent: Vec<(&'static str, Value)>,
    /// The call, its result and the `auto` choice, as the second request must carry them.
    continuation_sent: Vec<(&'static str, Value)>,
}

fn tool_round_trips() -> Vec<ToolRoundTrip> {
    vec![
        ToolRoundTrip {
            upstream: Upstream::OpenAi,
            call: Script::OpenAi(fake_openai::Reply::Completion(
                FakeOpenAi::completion_with_tool_calls(&[(TOOL, OPENAI_CALL_ID, ARGS_JSON)]),
            )),
            answer: Script::OpenAi(fake_openai::Reply::Completion(openai_completion(
                openai_text(ANSWER),
                "stop",
                openai_usage(60, 0, 9, 0),
            ))),
            call_id: OPENAI_CALL_ID,
            tools_sent: vec![
                (
                    "/tools",
                    json!([{
                        "type": "function",
                        "function": {
                            "name": TOOL,
                            "description": TOOL_DESCRIPTION,
                            "parameters": weather_schema(),
                        },
                    }]),
                ),
                (
                    "/tool_choice",
                    json!({ "type": "function", "function": { "name": TOOL } }),
                ),
            ],
            continuation_sent: vec![
                (
                    "/messages",
                    json!([
                        { "role": "system", "content": SYSTEM },
                        { "role": "user", "content": QUESTION },
                        {
                            "role": "assistant",
                            "content": null,
                            "tool_calls": [{
                                "id": OPENAI_CALL_ID,
                                "type": "function",
                                "function": { "name": TOOL, "arguments": ARGS_JSON },
                            }],
                        },
                        { "role": "tool", "tool_call_id": OPENAI_CALL_ID, "content": RESULT },
                    ]),
                ),
                ("/tool_choice", json!("auto")),
            ],
        },
        ToolRoundTrip {
            upstream: Upstream::Anthropic,
            call: Script::Anthropic(fake_anthropic::Reply::Message(
                FakeAnthropic::message_with_tool_use(None, &[(TOOL, ANTHROPIC_CALL_ID, args())]),
            )),
            answer: Script::Anthropic(fake_anthropic::Reply::Message(anthropic_message(
                json!([{ "type": "text", "text": ANSWER }]),
                Some("end_turn"),
                None,
                anthropic_usage(60, 0, 0, 9),
            ))),
            call_id: ANTHROPIC_CALL_ID,
            tools_sent: vec![
                ("/system", json!(SYSTEM)),
                (
                    "/tools",
                    json!([{
                        "name": TOOL,
                        "description": TOOL_DESCRIPTION,
                        "input_schema": weather_schema(),
                    }]),
                ),
                ("/tool_choice", json!({ "type": "tool", "name": TOOL })),
            ],
            continuation_sent: vec![
                ("/system", json!(SYSTEM)),
                (
                    "/messages",
                    json!([
                        { "role": "user", "content": [{ "type": "text", "text": QUESTION }] },
                        {
                            "role": "assistant",
                            "content": [{
                                "type": "tool_use",
                                "id": ANTHROPIC_CALL_ID,
                                "name": TOOL,
                                "input": args(),
                            }],
                        },
                        // Tool results travel in a user turn.
                        {
                            "role": "user",
                            "content": [{
                                "type": "tool_result",
                                "tool_use_id": ANTHROPIC_CALL_ID,
                                "content": RESULT,
                                "is_error": false,
                            }],
                        },
                    ]),
                ),
                ("/tool_choice", json!({ "type": "auto" })),
            ],
        },
        ToolRoundTrip {
            upstream: Upstream::Gemini,
            call: Script::Gemini(fake_gemini::Reply::Response(
                FakeGemini::function_call_response(TOOL, args()),
            )),
            answer: Script::Gemini(fake_gemini::Reply::Response(FakeGemini::text_response(
                ANSWER,
            ))),
            call_id: GEMINI_CALL_ID,
            tools_sent: vec![
                (
                    "/systemInstruction",
                    json!({ "parts": [{ "text": SYSTEM }] }),
                ),
                (
                    "/tools",
                    json!([{
                        "functionDeclarations": [{
                            "name": TOOL,
                            "description": TOOL_DESCRIPTION,
                            "parametersJsonSchema": weather_schema(),
                        }],
                    }]),
                ),
                (
                    "/toolConfig",
                    json!({
                        "functionCallingConfig": { "mode": "ANY", "allowedFunctionNames": [TOOL] },
                    }),
                ),
            ],
            continuation_sent: vec![
                (
                    "/contents",
                    json!([
                        { "role": "user", "parts": [{ "text": QUESTION }] },
                        { "role": "model", "parts": [gemini_call_part()] },
                        // The response names the function (Gemini calls have no id here) and
                        // carries the JSON object result as an object.
                        {
                            "role": "user",
                            "parts": [{
                                "functionResponse": { "name": TOOL, "response": json_of(RESULT) },
                            }],
                        },
                    ]),
                ),
                (
                    "/toolConfig",
                    json!({ "functionCallingConfig": { "mode": "AUTO" } }),
                ),
            ],
        },
    ]
}

#[tokio::test]
async fn tools_round_trip_call_result_and_final_answer_on_every_provider() {
    let f = fixture().await;
    let cases = tool_round_trips();
    assert_every_provider(cases.iter().map(|case| case.upstream));
    for case in cases {
        let upstream = case.upstream;
        f.push(case.call);
        f.push(case.answer);

        let mut request = weather_request(upstream, ToolChoice::Tool(TOOL.into()));
        let first = f.complete(&request).await;
        assert_sent(upstream, &f.last_body(upstream), &case.tools_sent);
        assert_eq!(first.provider, upstream.name());
        assert_eq!(first.finish_reason, FinishReason::ToolCalls, "{upstream:?}");
        // The answer is the call alone, with the provider's id, the name and the arguments.
        let calls: Vec<&ToolCall> = first.message.tool_calls().collect();
        let [call] = calls[..] else {
            panic!("{upstream:?}: not one call in {:?}", first.message)
        };
        assert_eq!(first.message.parts.len(), 1, "{upstream:?}");
        assert_eq!(
            (call.id.as_str(), call.name.as_str()),
            (case.call_id, TOOL),
            "{upstream:?}"
        );
        assert_eq!(json_of(&call.arguments_json), args(), "{upstream:?}");

        // The conversation goes on with the call as the model made it and the tool's result.
        request.messages.push(first.message.clone());
        request.messages.push(tool_result(call, RESULT));
        request.tool_choice = Some(ToolChoice::Auto);
        let second = f.complete(&request).await;
        assert_sent(upstream, &f.last_body(upstream), &case.continuation_sent);
        assert_eq!(second.message, assistant_text(ANSWER), "{upstream:?}");
        assert_eq!(second.finish_reason, FinishReason::Stop, "{upstream:?}");
    }
    f.assert_clean();
}

/// One provider's streamed call of the weather tool.
struct StreamedCall {
    upstream: Upstream,
    stream: Script,
    call_id: &'static str,
    /// The argument text of the tool-call deltas, in order, empty ones left out.
    pieces: Vec<&'static str>,
}

fn streamed_calls() -> Vec<StreamedCall> {
    vec![
        StreamedCall {
            upstream: Upstream::OpenAi,
            stream: Script::OpenAi(fake_openai::Reply::Chunks(FakeOpenAi::tool_call_chunks(
                TOOL,
                OPENAI_CALL_ID,
                &ARG_PIECES,
            ))),
            call_id: OPENAI_CALL_ID,
            pieces: ARG_PIECES.to_vec(),
        },
        StreamedCall {
            upstream: Upstream::Anthropic,
            stream: Script::Anthropic(fake_anthropic::Reply::Events(
                FakeAnthropic::tool_use_events(TOOL, ANTHROPIC_CALL_ID, &ARG_PIECES),
            )),
            call_id: ANTHROPIC_CALL_ID,
            pieces: ARG_PIECES.to_vec(),
        },
        // Gemini streams each call whole, never its arguments in pieces: the call comes in one
        // chunk and the finish reason in the next.
        StreamedCall {
            upstream: Upstream::Gemini,
            stream: Script::Gemini(fake_gemini::Reply::Stream(vec![
                gemini_response(vec![gemini_call_part()], None, gemini_usage(20, 0, 8, 0)),
                gemini_response(Vec::new(), Some("STOP"), gemini_usage(20, 0, 8, 0)),
            ])),
            call_id: GEMINI_CALL_ID,
            pieces: vec![ARGS_JSON],
        },
    ]
}

#[tokio::test]
async fn streamed_tool_calls_are_put_back_together_identically_on_every_provider() {
    let f = fixture().await;
    let cases = streamed_calls();
    assert_every_provider(cases.iter().map(|case| case.upstream));
    for case in cases {
        let upstream = case.upstream;
        f.push(case.stream);
        let (deltas, done) = f
            .stream(&weather_request(upstream, ToolChoice::Tool(TOOL.into())))
            .await;

        let call_deltas: Vec<&ToolCallDelta> = deltas
            .iter()
            .map(|delta| match delta {
                Delta::ToolCall(piece) => piece,
                other => panic!("{upstream:?}: {other:?} in a tool call stream"),
            })
            .collect();
        // The first piece names the call; the others only add argument text.
        assert_eq!(
            (call_deltas[0].id.as_deref(), call_deltas[0].name.as_deref()),
            (Some(case.call_id), Some(TOOL)),
            "{upstream:?}"
        );
        assert!(
            call_deltas[1..]
                .iter()
                .all(|piece| piece.id.is_none() && piece.name.is_none()),
            "{upstream:?}: {call_deltas:?}"
        );
        assert!(
            call_deltas.iter().all(|piece| piece.index == 0),
            "{upstream:?}"
        );
        let pieces: Vec<&str> = call_deltas
            .iter()
            .map(|piece| piece.arguments_json.as_str())
            .filter(|text| !text.is_empty())
            .collect();
        assert_eq!(pieces, case.pieces, "{upstream:?}");

        // Put back together: one call, the same name and arguments whatever the provider.
        let calls: Vec<&ToolCall> = done.message.tool_calls().collect();
        let [call] = calls[..] else {
            panic!("{upstream:?}: not one call in {:?}", done.message)
        };
        assert_eq!(done.message.parts.len(), 1, "{upstream:?}");
        assert_eq!(
            *call,
            ToolCall {
                id: case.call_id.into(),
                name: TOOL.into(),
                arguments_json: case.pieces.concat(),
            },
            "{upstream:?}"
        );
        assert_eq!(json_of(&call.arguments_json), args(), "{upstream:?}");
        assert_eq!(done.finish_reason, FinishReason::ToolCalls, "{upstream:?}");
    }
    f.assert_clean();
}

// ---- 2. images ----

/// The eight bytes every PNG starts with: enough for an image part.
const PNG_BYTES: [u8; 8] = fake_openai::PNG_SIGNATURE;
/// Their base64, as providers take bytes in JSON.
const PNG_BASE64: &str = "iVBORw0KGgo=";
const IMAGE_URL: &str = "https://upload.example.com/photos/cat.jpg";
const IMAGE_QUESTION: &str = "What is in these pictures?";

#[tokio::test]
async fn images_by_url_and_by_bytes_reach_every_provider_in_its_format() {
    let f = fixture().await;
    let cases = [
        (
            Upstream::OpenAi,
            "/messages/0",
            json!({
                "role": "user",
                "content": [
                    { "type": "text", "text": IMAGE_QUESTION },
                    { "type": "image_url", "image_url": { "url": IMAGE_URL, "detail": "high" } },
                    // Bytes travel as a data URL.
                    {
                        "type": "image_url",
                        "image_url": { "url": format!("data:image/png;base64,{PNG_BASE64}") },
                    },
                ],
            }),
            // The fake counts the words of text parts only.
            5,
        ),
        (
            Upstream::Anthropic,
            "/messages/0",
            json!({
                "role": "user",
                "content": [
                    { "type": "text", "text": IMAGE_QUESTION },
                    { "type": "image", "source": { "type": "url", "url": IMAGE_URL } },
                    {
                        "type": "image",
                        "source": { "type": "base64", "media_type": "image/png", "data": PNG_BASE64 },
                    },
                ],
            }),
            // Five words, and each block the fake takes for an image.
            5 + 2 * fake_anthropic::MEDIA_TOKENS,
        ),
        (
            Upstream::Gemini,
            "/contents/0",
            json!({
                "role": "user",
                "parts": [
                    { "text": IMAGE_QUESTION },
                    // Gemini needs the type of a file by URL: it is read from the extension.
                    { "fileData": { "mimeType": "image/jpeg", "fileUri": IMAGE_URL } },
                    { "inlineData": { "mimeType": "image/png", "data": PNG_BASE64 } },
                ],
            }),
            // Five words, and each part the fake takes for an image.
            5 + 2 * fake_gemini::MEDIA_PART_TOKENS,
        ),
    ];
    assert_every_provider(cases.iter().map(|case| case.0));
    for (upstream, pointer, sent, input_tokens) in cases {
        let request = ChatRequest {
            model: upstream.model().into(),
            messages: vec![message(
                Role::User,
                vec![
                    Part::text(IMAGE_QUESTION),
                    part(PartKind::Image {
                        source: Source::Url(IMAGE_URL.into()),
                        detail: Some("high".into()),
                    }),
                    part(PartKind::Image {
                        source: Source::Data {
                            mime_type: "image/png".into(),
                            bytes: PNG_BYTES.to_vec(),
                        },
                        detail: None,
                    }),
                ],
            )],
            ..ChatRequest::default()
        };
        // Unscripted, each fake echoes the text of the question.
        let response = f.complete(&request).await;
        assert_sent(upstream, &f.last_body(upstream), &[(pointer, sent)]);
        assert_eq!(
            response.message,
            assistant_text(IMAGE_QUESTION),
            "{upstream:?}"
        );
        assert_eq!(response.usage.input_tokens, input_tokens, "{upstream:?}");
    }
    f.assert_clean();
}

// ---- 3. system prompts ----

#[tokio::test]
async fn system_prompts_reach_every_provider_where_it_reads_them() {
    let f = fixture().await;
    let cases = [
        (
            Upstream::OpenAi,
            vec![(
                "/messages",
                json!([
                    { "role": "system", "content": SYSTEM },
                    { "role": "user", "content": QUESTION },
                ]),
            )],
        ),
        (
            Upstream::Anthropic,
            vec![
                ("/system", json!(SYSTEM)),
                (
                    "/messages",
                    json!([{ "role": "user", "content": [{ "type": "text", "text": QUESTION }] }]),
                ),
            ],
        ),
        (
            Upstream::Gemini,
            vec![
                (
                    "/systemInstruction",
                    json!({ "parts": [{ "text": SYSTEM }] }),
                ),
                (
                    "/contents",
                    json!([{ "role": "user", "parts": [{ "text": QUESTION }] }]),
                ),
            ],
        ),
    ];
    assert_every_provider(cases.iter().map(|case| case.0));
    for (upstream, sent) in cases {
        let request = ChatRequest {
            model: upstream.model().into(),
            messages: vec![
                message(Role::System, vec![Part::text(SYSTEM)]),
                message(Role::User, vec![Part::text(QUESTION)]),
            ],
            ..ChatRequest::default()
        };
        let response = f.complete(&request).await;
        assert_sent(upstream, &f.last_body(upstream), &sent);
        assert_eq!(response.message, assistant_text(QUESTION), "{upstream:?}");
        // Each fake counts the system prompt where its provider reads it: 5 words of it and
        // 6 of the question, once.
        assert_eq!(response.usage.input_tokens, 11, "{upstream:?}");
    }
    f.assert_clean();
}

// ---- 4. stop reasons ----

/// Each provider's native stop reasons; `true` where the answer calls a tool.
const STOP_REASONS: [(Upstream, &str, bool, FinishReason); 14] = [
    (Upstream::OpenAi, "stop", false, FinishReason::Stop),
    (Upstream::OpenAi, "length", false, FinishReason::Length),
    (
        Upstream::OpenAi,
        "tool_calls",
        true,
        FinishReason::ToolCalls,
    ),
    (
        Upstream::OpenAi,
        "content_filter",
        false,
        FinishReason::ContentFilter,
    ),
    (Upstream::Anthropic, "end_turn", false, FinishReason::Stop),
    (
        Upstream::Anthropic,
        "stop_sequence",
        false,
        FinishReason::Stop,
    ),
    (
        Upstream::Anthropic,
        "max_tokens",
        false,
        FinishReason::Length,
    ),
    (
        Upstream::Anthropic,
        "tool_use",
        true,
        FinishReason::ToolCalls,
    ),
    (
        Upstream::Anthropic,
        "refusal",
        false,
        FinishReason::ContentFilter,
    ),
    (Upstream::Gemini, "STOP", false, FinishReason::Stop),
    (Upstream::Gemini, "MAX_TOKENS", false, FinishReason::Length),
    (
        Upstream::Gemini,
        "SAFETY",
        false,
        FinishReason::ContentFilter,
    ),
    (
        Upstream::Gemini,
        "RECITATION",
        false,
        FinishReason::ContentFilter,
    ),
    // Gemini has no reason of its own for calls: a call stops with STOP.
    (Upstream::Gemini, "STOP", true, FinishReason::ToolCalls),
];

fn openai_stop(native: &str, call: bool, streamed: bool) -> fake_openai::Reply {
    use fake_openai::Reply;
    // The helpers for calls stop with `tool_calls`, the only reason OpenAI gives a call.
    match (call, streamed) {
        (true, false) => Reply::Completion(FakeOpenAi::completion_with_tool_calls(&[(
            TOOL,
            OPENAI_CALL_ID,
            ARGS_JSON,
        )])),
        (true, true) => Reply::Chunks(FakeOpenAi::tool_call_chunks(
            TOOL,
            OPENAI_CALL_ID,
            &ARG_PIECES,
        )),
        (false, false) => Reply::Completion(openai_completion(
            openai_text(PARTIAL),
            native,
            openai_usage(12, 0, 2, 0),
        )),
        (false, true) => Reply::Chunks(openai_text_chunks(
            PARTIAL,
            native,
            openai_usage(12, 0, 2, 0),
        )),
    }
}

fn anthropic_stop(native: &str, call: bool, streamed: bool) -> fake_anthropic::Reply {
    use fake_anthropic::Reply;
    // `stop_sequence` names the sequence met; the helpers for calls stop with `tool_use`.
    let sequence = (native == "stop_sequence").then_some("END");
    match (call, streamed) {
        (true, false) => Reply::Message(FakeAnthropic::message_with_tool_use(
            None,
            &[(TOOL, ANTHROPIC_CALL_ID, args())],
        )),
        (true, true) => Reply::Events(FakeAnthropic::tool_use_events(
            TOOL,
            ANTHROPIC_CALL_ID,
            &ARG_PIECES,
        )),
        (false, false) => Reply::Message(anthropic_message(
            json!([{ "type": "text", "text": PARTIAL }]),
            Some(native),
            sequence,
            anthropic_usage(12, 0, 0, 2),
        )),
        (false, true) => Reply::Events(anthropic_text_events(
            PARTIAL,
            native,
            sequence,
            anthropic_usage(12, 0, 0, 1),
            2,
        )),
    }
}

fn gemini_stop(native: &str, call: bool, streamed: bool) -> fake_gemini::Reply {
    use fake_gemini::Reply;
    // A candidate stopped by a filter carries no content.
    let filtered = !matches!(native, "STOP" | "MAX_TOKENS");
    let last_parts = match (call, filtered) {
        (true, _) => vec![gemini_call_part()],
        (false, true) => Vec::new(),
        (false, false) => vec![json!({ "text": PARTIAL })],
    };
    let usage = gemini_usage(12, 0, 2, 0);
    if !streamed {
        return Reply::Response(gemini_response(last_parts, Some(native), usage));
    }
    // Streamed text comes first; the finish reason comes with the last chunk.
    let mut chunks = Vec::new();
    if !call {
        chunks.push(gemini_response(
            vec![json!({ "text": "Partial " })],
            None,
            gemini_usage(12, 0, 1, 0),
        ));
    }
    chunks.push(gemini_response(last_parts, Some(native), usage));
    Reply::Stream(chunks)
}

fn stop_reply(upstream: Upstream, native: &str, call: bool, streamed: bool) -> Script {
    match upstream {
        Upstream::OpenAi => Script::OpenAi(openai_stop(native, call, streamed)),
        Upstream::Anthropic => Script::Anthropic(anthropic_stop(native, call, streamed)),
        Upstream::Gemini => Script::Gemini(gemini_stop(native, call, streamed)),
    }
}

fn stop_request(upstream: Upstream) -> ChatRequest {
    let mut request = weather_request(upstream, ToolChoice::Auto);
    request.stop = vec!["END".into()];
    request
}

#[tokio::test]
async fn native_stop_reasons_map_to_one_neutral_finish_reason() {
    let f = fixture().await;
    assert_every_provider(STOP_REASONS.map(|case| case.0));
    for (upstream, native, call, expected) in STOP_REASONS {
        f.push(stop_reply(upstream, native, call, false));
        let response = f.complete(&stop_request(upstream)).await;
        assert_eq!(
            (
                response.finish_reason,
                response.message.tool_calls().count()
            ),
            (expected, usize::from(call)),
            "{upstream:?} {native}"
        );
    }
    f.assert_clean();
}

#[tokio::test]
async fn streamed_native_stop_reasons_map_to_the_same_finish_reason() {
    let f = fixture().await;
    assert_every_provider(STOP_REASONS.map(|case| case.0));
    for (upstream, native, call, expected) in STOP_REASONS {
        f.push(stop_reply(upstream, native, call, true));
        let (_, done) = f.stream(&stop_request(upstream)).await;
        assert_eq!(
            (done.finish_reason, done.message.tool_calls().count()),
            (expected, usize::from(call)),
            "{upstream:?} {native}"
        );
    }
    f.assert_clean();
}

/// Anthropic documents `model_context_window_exceeded` ("The response filled the model's context
/// window. Treat the response as truncated."): a cut answer, as `max_tokens` is.
#[tokio::test]
async fn anthropic_context_window_exhaustion_is_a_cut_answer() {
    let f = fixture().await;
    let native = "model_context_window_exceeded";
    f.push(stop_reply(Upstream::Anthropic, native, false, false));
    let response = f.complete(&stop_request(Upstream::Anthropic)).await;
    assert_eq!(response.finish_reason, FinishReason::Length, "unary");
    f.push(stop_reply(Upstream::Anthropic, native, false, true));
    let (_, done) = f.stream(&stop_request(Upstream::Anthropic)).await;
    assert_eq!(done.finish_reason, FinishReason::Length, "streamed");
}

// ---- 5. usage with caching ----

const CACHED_ANSWER: &str = "Cached answer.";

/// The same call as every provider reports it, where it can: 3 000 prompt tokens of which
/// 2 000 were read from the prompt cache, and 500 output tokens of which 200 were reasoning.
const CACHE_READ: Usage = Usage {
    input_tokens: 3000,
    output_tokens: 500,
    cache_read_tokens: 2000,
    cache_write_tokens: 0,
    reasoning_tokens: 200,
};

/// One provider's report of a cached call, unary and streamed, and what it must become.
struct CachedCall {
    upstream: Upstream,
    what: &'static str,
    unary: Script,
    streamed: Script,
    usage: Usage,
    cost_micros: i64,
}

fn openai_cached(usage: Value) -> CachedCall {
    CachedCall {
        upstream: Upstream::OpenAi,
        what: "2000 of 3000 prompt tokens cached, 200 of 500 output tokens reasoning",
        unary: Script::OpenAi(fake_openai::Reply::Completion(openai_completion(
            openai_text(CACHED_ANSWER),
            "stop",
            usage.clone(),
        ))),
        streamed: Script::OpenAi(fake_openai::Reply::Chunks(openai_text_chunks(
            CACHED_ANSWER,
            "stop",
            usage,
        ))),
        usage: CACHE_READ,
        // gpt-4o-mini, per million tokens: $0.15 input, $0.075 cache read, $0.60 output.
        // (3000 - 2000) × 0.15 + 2000 × 0.075 + 500 × 0.60 = 150 + 150 + 300 micro-USD; the
        // reasoning tokens are output tokens already, priced once.
        cost_micros: 600,
    }
}

/// Anthropic's report of `input` fresh, `write` written and `read` read prompt tokens, and 500
/// output tokens.
fn anthropic_cached(
    what: &'static str,
    (input, write, read): (u64, u64, u64),
    usage: Usage,
    cost_micros: i64,
) -> CachedCall {
    CachedCall {
        upstream: Upstream::Anthropic,
        what,
        unary: Script::Anthropic(fake_anthropic::Reply::Message(anthropic_message(
            json!([{ "type": "text", "text": CACHED_ANSWER }]),
            Some("end_turn"),
            None,
            anthropic_usage(input, write, read, 500),
        ))),
        // The input counts come with `message_start`, the output count with `message_delta`.
        streamed: Script::Anthropic(fake_anthropic::Reply::Events(anthropic_text_events(
            CACHED_ANSWER,
            "end_turn",
            None,
            anthropic_usage(input, write, read, 1),
            500,
        ))),
        usage,
        cost_micros,
    }
}

fn gemini_cached() -> CachedCall {
    let usage = gemini_usage(3000, 2000, 300, 200);
    CachedCall {
        upstream: Upstream::Gemini,
        what: "2000 of 3000 prompt tokens cached, 300 answer tokens and 200 of thoughts",
        unary: Script::Gemini(fake_gemini::Reply::Response(gemini_response(
            vec![json!({ "text": CACHED_ANSWER })],
            Some("STOP"),
            usage.clone(),
        ))),
        // Every chunk carries the usage so far: the last one is the total, not a part of it.
        streamed: Script::Gemini(fake_gemini::Reply::Stream(vec![
            gemini_response(
                vec![json!({ "text": "Cached " })],
                None,
                gemini_usage(3000, 2000, 100, 200),
            ),
            gemini_response(vec![json!({ "text": "answer." })], Some("STOP"), usage),
        ])),
        usage: CACHE_READ,
        // gemini-2.5-flash, per million tokens: $0.30 input, $0.03 cache read, $2.50 output
        // (thinking included): 1000 × 0.30 + 2000 × 0.03 + 500 × 2.50 = 300 + 60 + 1250.
        cost_micros: 1610,
    }
}

fn cached_calls() -> Vec<CachedCall> {
    // claude-haiku-4-5, per million tokens: $1 input, $0.10 cache read, $1.25 cache write, $5
    // output. Anthropic reports no reasoning tokens apart (thinking is in `output_tokens`).
    vec![
        openai_cached(openai_usage(3000, 2000, 500, 200)),
        anthropic_cached(
            "1000 fresh and 2000 read prompt tokens",
            (1000, 0, 2000),
            Usage {
                reasoning_tokens: 0,
                ..CACHE_READ
            },
            // 1000 × 1 + 2000 × 0.10 + 500 × 5 = 1000 + 200 + 2500
            3700,
        ),
        anthropic_cached(
            "1000 fresh and 2000 written prompt tokens",
            (1000, 2000, 0),
            Usage {
                input_tokens: 3000,
                output_tokens: 500,
                cache_read_tokens: 0,
                cache_write_tokens: 2000,
                reasoning_tokens: 0,
            },
            // 1000 × 1 + 2000 × 1.25 + 500 × 5 = 1000 + 2500 + 2500
            6000,
        ),
        anthropic_cached(
            "500 fresh, 1500 written and 1000 read prompt tokens",
            (500, 1500, 1000),
            Usage {
                input_tokens: 3000,
                output_tokens: 500,
                cache_read_tokens: 1000,
                cache_write_tokens: 1500,
                reasoning_tokens: 0,
            },
            // 500 × 1 + 1000 × 0.10 + 1500 × 1.25 + 500 × 5 = 500 + 100 + 1875 + 2500
            4975,
        ),
        gemini_cached(),
    ]
}

/// A long system prompt marked as a cache breakpoint, then a question.
fn cached_request(upstream: Upstream) -> ChatRequest {
    ChatRequest {
        model: upstream.model().into(),
        messages: vec![
            message(
                Role::System,
                vec![Part {
                    kind: PartKind::Text(SYSTEM.repeat(100)),
                    cache_breakpoint: true,
                }],
            ),
            message(Role::User, vec![Part::text(QUESTION)]),
        ],
        ..ChatRequest::default()
    }
}

#[tokio::test]
async fn cached_usage_normalizes_to_one_usage_priced_once_at_cache_prices() {
    let f = fixture().await;
    let cases = cached_calls();
    assert_every_provider(cases.iter().map(|case| case.upstream));
    for case in cases {
        let upstream = case.upstream;
        f.push(case.unary);
        let response = f.complete(&cached_request(upstream)).await;
        assert_eq!(response.provider, upstream.name());
        assert_eq!(response.message, assistant_text(CACHED_ANSWER));
        assert_eq!(response.usage, case.usage, "{upstream:?}: {}", case.what);
        assert_eq!(
            response.cost_micros, case.cost_micros,
            "{upstream:?}: {}",
            case.what
        );
    }
    // Only Anthropic is told where to cache; the others cache prompt prefixes by themselves.
    assert_eq!(
        f.last_body(Upstream::Anthropic)["system"][0]["cache_control"],
        json!({ "type": "ephemeral" })
    );
    f.assert_clean();
}

#[tokio::test]
async fn streamed_cached_usage_normalizes_and_is_priced_the_same() {
    let f = fixture().await;
    let cases = cached_calls();
    assert_every_provider(cases.iter().map(|case| case.upstream));
    for case in cases {
        let upstream = case.upstream;
        f.push(case.streamed);
        let (_, done) = f.stream(&cached_request(upstream)).await;
        assert_eq!(done.provider, upstream.name());
        assert_eq!(done.message, assistant_text(CACHED_ANSWER));
        assert_eq!(done.usage, case.usage, "{upstream:?}: {}", case.what);
        assert_eq!(
            done.cost_micros, case.cost_micros,
            "{upstream:?}: {}",
            case.what
        );
    }
    f.assert_clean();
}
