//! A fake Anthropic Messages API server for tests.
//!
//! It answers, over HTTP on `127.0.0.1`, the two endpoints Switchyard's Anthropic adapter calls,
//! in the wire format Anthropic documents (<https://docs.claude.com/en/api/messages>; Anthropic
//! publishes no OpenAPI file, so the shapes follow its API reference and the types of its
//! official SDKs, which are generated from its spec):
//!
//! - `POST /v1/messages`: a `message` object (`id`, `type`, `role`, `model`, `content`,
//!   `stop_reason`, `stop_sequence`, `usage`), or with `"stream": true` a `text/event-stream` of
//!   named events, each `event: {name}` then `data: {json}` whose `type` is the name:
//!   `message_start` (the message with empty `content`, `stop_reason: null` and
//!   `usage.output_tokens: 1`), then per content block `content_block_start`, the
//!   `content_block_delta`s (`text_delta`, `thinking_delta`, `signature_delta`,
//!   `input_json_delta`) and `content_block_stop`, a `ping` after the first block's start, then
//!   `message_delta` (`delta: {stop_reason, stop_sequence}`, `usage: {output_tokens}`) and
//!   `message_stop`.
//! - `POST /v1/messages/count_tokens`: `{"input_tokens": n}`.
//!
//! The base URL ([`FakeAnthropic::base_url`]) is `http://127.0.0.1:PORT`, without `/v1`, as
//! Anthropic's own (`https://api.anthropic.com`) is: clients append `/v1/messages`.
//!
//! Every request needs `x-api-key` with the configured key (default [`DEFAULT_API_KEY`]): a
//! missing one gets 401 `x-api-key header is required`, a wrong one 401 `invalid x-api-key`
//! (`authentication_error`). Then `anthropic-version` is required (400 `anthropic-version:
//! header is required`) and must be a version Anthropic knows (`2023-06-01`, or the original
//! `2023-01-01`). `anthropic-beta` is optional and only recorded, except that
//! `interleaved-thinking-…` lifts the rule that `max_tokens` exceed the thinking budget, as it
//! does at Anthropic. A body that is not JSON, a request without `model`, `messages` or (on
//! `/v1/messages`) `max_tokens`, an empty `messages`, a role other than `user` or `assistant`, a
//! message with empty content (other than a final assistant message), or an enabled `thinking`
//! with `budget_tokens` under 1024 or not under `max_tokens` gets Anthropic's 400
//! `invalid_request_error` for it. Roles need not alternate and the first message may be an
//! assistant's: Anthropic merges consecutive turns and stopped requiring a first user turn in
//! 2024. Unknown paths and methods answer 404 `not_found_error`.
//!
//! Error bodies are `{"type": "error", "error": {"type", "message"}, "request_id"}`, the
//! `request_id` being the response's `request-id` header (added to scripted error bodies that
//! lack one). Every response carries `request-id` and `anthropic-organization-id`; successful
//! ones the `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,
//! reset}` headers (4 000 requests counting down by one per request received; 2 000 000 input
//! tokens less the request's uncached input; 400 000 output tokens less its `max_tokens`; the
//! `tokens` ones the sum of both; resets as RFC 3339 times).
//!
//! Unless scripted with [`FakeAnthropic::push`], a message echoes the text of the last user
//! message (its text blocks and tool results' text, one per line), with `stop_reason:
//! "end_turn"`; it is cut after `max_tokens` tokens (`"max_tokens"`), or before the first of
//! the `stop_sequences` it contains (`"stop_sequence"`, and `stop_sequence` names it). With
//! `thinking: {"type": "enabled"}` a `thinking` block with a signature comes first. An empty
//! answer has empty `content`; `max_tokens: 0` (Anthropic's cache pre-warming) answers no
//! content and no output tokens.
//!
//! "Tokens" are whitespace-separated words ([`count_tokens`]). Input counts the words of the
//! tool definitions (keys and string values of their JSON, plus one per number, boolean or
//! null), the system prompt, text blocks, tool uses (name and input as for tools), tool results
//! and text documents; an image or a PDF counts [`MEDIA_TOKENS`]; thinking blocks sent back
//! count nothing (Anthropic drops earlier turns' thinking from the context). Output counts the
//! answer's and the thinking's words, at least one.
//!
//! Prompt caching works as Anthropic documents it. The prompt is read in cache order (tools,
//! system, messages), block by block; a block with `cache_control` (or the last block, given a
//! top-level `cache_control`) ends a cacheable prefix. The longest prefix cached before for the
//! same model, looked up at each breakpoint and up to 20 blocks before it, is read
//! (`cache_read_input_tokens`); the rest up to the last breakpoint is written
//! (`cache_creation_input_tokens`, split in `cache_creation` by the breakpoints' `ttl`, `5m`
//! unless `1h`); only what follows the last breakpoint counts as `input_tokens`, which thus
//! excludes cached tokens, as Anthropic's does. The cache is written by every `/v1/messages`
//! request that gets past validation and is not answered with a scripted [`Reply::Error`], and
//! never expires ([`FakeAnthropic::clear_cache`] empties it). Anthropic does not cache prefixes
//! under a model-dependent minimum (1 024 tokens and more); the fake caches any unless
//! [`FakeAnthropic::with_cache_minimum`] sets one.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State as AxumState};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::StreamExt as _;
use rand::Rng as _;
use rand::distributions::Alphanumeric;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// The API key the fake accepts unless [`FakeAnthropic::with_api_key`] sets another.
pub const DEFAULT_API_KEY: &str = "sk-ant-test";

/// The `anthropic-version` clients send (Anthropic also still accepts `2023-01-01`).
pub const API_VERSION: &str = "2023-06-01";

/// The versions accepted in `anthropic-version`.
const API_VERSIONS: [&str; 2] = [API_VERSION, "2023-01-01"];

/// The model named in the bodies the helpers make (the server's own answers name the model of
/// the request instead).
pub const HELPER_MODEL: &str = "claude-sonnet-4-5-20250929";

/// Input tokens reported by helper-made bodies, which do not see the prompt.
const HELPER_INPUT_TOKENS: u64 = 20;

/// The input tokens of an image or a PDF document, whatever its size.
pub const MEDIA_TOKENS: u64 = 100;

/// The thinking of default answers to requests with thinking enabled.
const THINKING_TEXT: &str = "The user wants their last message repeated back.";

/// The rate limits reported on successful responses.
const LIMIT_REQUESTS: u64 = 4_000;
const LIMIT_INPUT_TOKENS: u64 = 2_000_000;
const LIMIT_OUTPUT_TOKENS: u64 = 400_000;

/// How many blocks before a breakpoint Anthropic looks for a cached prefix.
const CACHE_LOOKBACK_BLOCKS: usize = 20;

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The path, such as `/v1/messages`.
    pub path: String,
    /// The request's headers.
    pub headers: HeaderMap,
    /// The JSON body; `null` when empty, a string holding the text when not JSON.
    pub body: Value,
}

/// A scripted answer to one request, whatever its endpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// 200 with this JSON body, such as a `message` object.
    Message(Value),
    /// 200 with a stream of these `(event name, data)` pairs, sent as `event: {name}` and
    /// `data: {data}`, such as those made by [`FakeAnthropic::tool_use_events`].
    Events(Vec<(String, Value)>),
    /// This status and JSON body, with these headers added to the usual ones.
    Error {
        /// The HTTP status, such as 429.
        status: u16,
        /// The body, normally made by [`FakeAnthropic::error_body`].
        body: Value,
        /// Extra headers, such as `retry-after`.
        headers: Vec<(String, String)>,
    },
    /// Waits this long, then answers as if nothing were scripted.
    Hang(Duration),
    /// A stream that fails midway, as Anthropic's can: these events, then `event: error` with
    /// the error, and the connection is closed.
    EventsThenError {
        /// The events sent before the error.
        events: Vec<(String, Value)>,
        /// The error object (`{"type": "overloaded_error", "message": "Overloaded"}`), sent as
        /// `{"type": "error", "error": error}`; a value that already has an `error` key is sent
        /// as it is.
        error: Value,
    },
}

#[derive(Debug)]
struct State {
    api_key: String,
    organization_id: String,
    event_delay: Duration,
    cache_minimum: u64,
    replies: VecDeque<Reply>,
    requests: Vec<Recorded>,
    /// Hashes of the cached prompt prefixes, model included.
    cache: HashSet<u64>,
}

type Shared = Arc<Mutex<State>>;

/// A running fake Anthropic server. It stops when dropped.
#[derive(Debug)]
pub struct FakeAnthropic {
    base_url: String,
    state: Shared,
    server: JoinHandle<()>,
}

impl Drop for FakeAnthropic {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeAnthropic {
    /// Starts a server on `127.0.0.1` that accepts the key [`DEFAULT_API_KEY`].
    pub async fn start() -> FakeAnthropic {
        let state = Arc::new(Mutex::new(State {
            api_key: DEFAULT_API_KEY.to_owned(),
            organization_id: uuid::Uuid::new_v4().to_string(),
            event_delay: Duration::ZERO,
            cache_minimum: 0,
            replies: VecDeque::new(),
            requests: Vec::new(),
            cache: HashSet::new(),
        }));
        // Binding fails only on a host without a loopback interface, where no test can run.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fake Anthropic to 127.0.0.1");
        let address = listener.local_addr().expect("the fake Anthropic's address");
        // Images and PDFs make large bodies; Anthropic takes up to 32 MB, the fake any size.
        let app = Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::disable())
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                eprintln!("fake Anthropic stopped: {err}");
            }
        });
        FakeAnthropic {
            base_url: format!("http://{address}"),
            state,
            server,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The base URL to give a client, such as `http://127.0.0.1:41234`: like Anthropic's
    /// `https://api.anthropic.com`, it has no `/v1`, which the client adds with the path.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// Accepts `key` instead of [`DEFAULT_API_KEY`].
    pub fn with_api_key(self, key: &str) -> Self {
        self.state().api_key = key.to_owned();
        self
    }

    /// Waits this long between the events of a stream, for tests that act mid-stream.
    pub fn with_event_delay(self, delay: Duration) -> Self {
        self.state().event_delay = delay;
        self
    }

    /// Caches only prefixes of at least this many tokens, as Anthropic does (its minimum is
    /// 1 024 tokens or more, depending on the model); the default, 0, caches any.
    pub fn with_cache_minimum(self, tokens: u64) -> Self {
        self.state().cache_minimum = tokens;
        self
    }

    /// Queues a reply: each authenticated, well-formed request consumes the oldest one.
    pub fn push(&self, reply: Reply) {
        self.state().replies.push_back(reply);
    }

    /// Scripted replies not consumed yet.
    pub fn pending_replies(&self) -> usize {
        self.state().replies.len()
    }

    /// Every request received, oldest first, including refused ones.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state().requests.clone()
    }

    /// Forgets every cached prefix, as if their time to live had passed.
    pub fn clear_cache(&self) {
        self.state().cache.clear();
    }

    /// Anthropic's error body: `{"type": "error", "error": {"type": kind, "message"}}`, such
    /// as `error_body("rate_limit_error", "…")`. The server adds the `request_id`.
    pub fn error_body(kind: &str, message: &str) -> Value {
        json!({ "type": "error", "error": { "type": kind, "message": message } })
    }

    /// A 429 `rate_limit_error` as Anthropic sends it when the input-tokens-per-minute limit is
    /// reached, with `retry-after: {retry_after_secs}` and the `anthropic-ratelimit-*` headers
    /// (input tokens remaining 0, reset in `retry_after_secs`).
    pub fn rate_limited(retry_after_secs: u64) -> Reply {
        let message = "This request would exceed your organization's rate limit of 30,000 input \
                       tokens per minute (org: 7b2f7e56-3f4c-4b7e-9a0c-5f1d2b3c4d5e, model: \
                       claude-sonnet-4-5-20250929). For details, refer to: \
                       https://docs.claude.com/en/api/rate-limits. You can see the response \
                       headers for current usage. Please reduce the prompt length or the maximum \
                       tokens requested, or try again later. You may also contact sales at \
                       https://claude.com/contact-sales to discuss your options for a rate limit \
                       increase.";
        let soon = rfc3339_in(1);
        let reset = rfc3339_in(retry_after_secs);
        let headers = [
            ("retry-after", retry_after_secs.to_string()),
            ("anthropic-ratelimit-requests-limit", "50".to_owned()),
            ("anthropic-ratelimit-requests-remaining", "49".to_owned()),
            ("anthropic-ratelimit-requests-reset", soon.clone()),
            ("anthropic-ratelimit-input-tokens-limit", "30000".to_owned()),
            ("anthropic-ratelimit-input-tokens-remaining", "0".to_owned()),
            ("anthropic-ratelimit-input-tokens-reset", reset.clone()),
            ("anthropic-ratelimit-output-tokens-limit", "8000".to_owned()),
            (
                "anthropic-ratelimit-output-tokens-remaining",
                "8000".to_owned(),
            ),
            ("anthropic-ratelimit-output-tokens-reset", soon),
            ("anthropic-ratelimit-tokens-limit", "38000".to_owned()),
            ("anthropic-ratelimit-tokens-remaining", "8000".to_owned()),
            ("anthropic-ratelimit-tokens-reset", reset),
        ];
        Reply::Error {
            status: 429,
            body: Self::error_body("rate_limit_error", message),
            headers: headers
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value))
                .collect(),
        }
    }

    /// A 529 `overloaded_error`, as Anthropic sends under high load.
    pub fn overloaded() -> Reply {
        Reply::Error {
            status: 529,
            body: Self::error_body("overloaded_error", "Overloaded"),
            headers: Vec::new(),
        }
    }

    /// A 500 `api_error`, as Anthropic sends on an internal failure.
    pub fn server_error() -> Reply {
        Reply::Error {
            status: 500,
            body: Self::error_body("api_error", "Internal server error"),
            headers: Vec::new(),
        }
    }

    /// The events of a streamed answer that calls one tool, as Anthropic streams it: a
    /// `tool_use` block started with `id`, `name` and an empty `input`, whose input arrives as
    /// `input_json_delta`s (an empty `partial_json` first, as Anthropic sends, then one per
    /// piece), and `stop_reason: "tool_use"`. Push them with [`Reply::Events`].
    pub fn tool_use_events(name: &str, id: &str, json_pieces: &[&str]) -> Vec<(String, Value)> {
        let mut stream = EventStream::new(HELPER_MODEL, helper_usage());
        let deltas = std::iter::once("")
            .chain(json_pieces.iter().copied())
            .map(|piece| json!({ "type": "input_json_delta", "partial_json": piece }))
            .collect();
        stream.block(
            json!({ "type": "tool_use", "id": id, "name": name, "input": {} }),
            deltas,
        );
        let output_tokens = count_tokens(name) + count_tokens(&json_pieces.concat());
        stream.finish("tool_use", None, output_tokens.max(1))
    }

    /// A `message` whose content is `text`, if any, then a `tool_use` block per call, given as
    /// `(name, id, input)`, with `stop_reason: "tool_use"`, for [`HELPER_MODEL`]; its usage
    /// reports 20 input tokens and the words of the text, names and inputs as output tokens.
    /// Push it with [`Reply::Message`].
    pub fn message_with_tool_use(text: Option<&str>, calls: &[(&str, &str, Value)]) -> Value {
        let mut content: Vec<Value> = text
            .map(|text| json!({ "type": "text", "text": text }))
            .into_iter()
            .collect();
        content.extend(calls.iter().map(|(name, id, input)| {
            json!({ "type": "tool_use", "id": id, "name": name, "input": input })
        }));
        let output_tokens = text.map(count_tokens).unwrap_or_default()
            + calls
                .iter()
                .map(|(name, _, input)| count_tokens(name) + json_tokens(input))
                .sum::<u64>();
        message_body(
            HELPER_MODEL,
            json!(content),
            json!("tool_use"),
            Value::Null,
            usage_json(&helper_usage(), output_tokens.max(1)),
        )
    }

    /// The events of a streamed answer with extended thinking, as Anthropic streams it: a
    /// `thinking` block (started with empty `thinking` and `signature`, then `thinking_delta`s
    /// word by word and one `signature_delta`), then a `text` block with `answer` in
    /// `text_delta`s, and `stop_reason: "end_turn"`. Push them with [`Reply::Events`].
    pub fn thinking_events(
        thinking_text: &str,
        signature: &str,
        answer: &str,
    ) -> Vec<(String, Value)> {
        let mut stream = EventStream::new(HELPER_MODEL, helper_usage());
        stream.thinking_block(thinking_text, signature);
        stream.text_block(answer);
        let output_tokens = count_tokens(thinking_text) + count_tokens(answer);
        stream.finish("end_turn", None, output_tokens.max(1))
    }
}

/// The fake's token count: whitespace-separated words.
pub fn count_tokens(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

fn lock(state: &Shared) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `length` random letters and digits, as in Anthropic's ids.
fn random_chars(length: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(length)
        .map(char::from)
        .collect()
}

/// A random id in Anthropic's style, such as `msg_01…` or `toolu_01…`.
fn random_id(prefix: &str) -> String {
    format!("{prefix}_01{}", random_chars(22))
}

/// An opaque signature for a thinking block.
fn random_signature() -> String {
    let bytes: Vec<u8> = (0..48).map(|_| rand::thread_rng().r#gen()).collect();
    BASE64.encode(bytes)
}

/// The RFC 3339 time `seconds` from now, as in the `anthropic-ratelimit-*-reset` headers.
fn rfc3339_in(seconds: u64) -> String {
    humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(seconds)).to_string()
}

/// Splits text into pieces that put together give it back: each word with the whitespace
/// before it (the last also with the whitespace after it), as a model streams tokens.
fn word_pieces(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    for c in text.chars() {
        if c.is_whitespace() && in_word {
            pieces.push(std::mem::take(&mut current));
        }
        in_word = !c.is_whitespace();
        current.push(c);
    }
    // Trailing whitespace stays with the last word rather than making a piece of its own.
    match pieces.last_mut() {
        Some(last) if current.chars().all(char::is_whitespace) => last.push_str(&current),
        _ if !current.is_empty() => pieces.push(current),
        _ => {}
    }
    pieces
}

// ---- usage and caching ----

/// How the input tokens of a request divide between the cache and the rest.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct CacheUsage {
    /// Tokens after the last cache breakpoint.
    input: u64,
    /// Tokens written to the cache with a 5-minute time to live.
    creation_5m: u64,
    /// Tokens written to the cache with a 1-hour time to live.
    creation_1h: u64,
    /// Tokens read from the cache.
    read: u64,
}

impl CacheUsage {
    fn creation(&self) -> u64 {
        self.creation_5m + self.creation_1h
    }
}

fn helper_usage() -> CacheUsage {
    CacheUsage {
        input: HELPER_INPUT_TOKENS,
        ..CacheUsage::default()
    }
}

fn usage_json(cache: &CacheUsage, output_tokens: u64) -> Value {
    json!({
        "input_tokens": cache.input,
        "cache_creation_input_tokens": cache.creation(),
        "cache_read_input_tokens": cache.read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": cache.creation_5m,
            "ephemeral_1h_input_tokens": cache.creation_1h,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ttl {
    FiveMinutes,
    OneHour,
}

/// One block of the prompt, in cache order.
struct PromptBlock {
    tokens: u64,
    /// What identifies the block in a cached prefix: its JSON without `cache_control`.
    identity: String,
    /// Set when the block carries `cache_control`, ending a cacheable prefix.
    breakpoint: Option<Ttl>,
}

impl PromptBlock {
    fn new(tag: &str, block: &Value, tokens: u64) -> PromptBlock {
        let mut bare = block.clone();
        if let Some(object) = bare.as_object_mut() {
            object.remove("cache_control");
        }
        PromptBlock {
            tokens,
            identity: format!("{tag}:{bare}"),
            breakpoint: breakpoint_of(block.get("cache_control")),
        }
    }
}

fn breakpoint_of(cache_control: Option<&Value>) -> Option<Ttl> {
    let cache_control = cache_control?;
    if cache_control.get("type").and_then(Value::as_str) != Some("ephemeral") {
        return None;
    }
    match cache_control.get("ttl").and_then(Value::as_str) {
        Some("1h") => Some(Ttl::OneHour),
        _ => Some(Ttl::FiveMinutes),
    }
}

/// The words of a JSON value's keys and strings, plus one per number, boolean or null; a
/// `cache_control` key counts nothing.
fn json_tokens(value: &Value) -> u64 {
    match value {
        Value::String(text) => count_tokens(text),
        Value::Array(items) => items.iter().map(json_tokens).sum(),
        Value::Object(fields) => fields
            .iter()
            .filter(|(key, _)| *key != "cache_control")
            .map(|(key, value)| count_tokens(key) + json_tokens(value))
            .sum(),
        _ => 1,
    }
}

/// The tokens of a `content`: a string, or an array of blocks.
fn content_tokens(content: &Value) -> u64 {
    match content {
        Value::String(text) => count_tokens(text),
        Value::Array(blocks) => blocks.iter().map(block_tokens).sum(),
        Value::Null => 0,
        other => json_tokens(other),
    }
}

fn block_tokens(block: &Value) -> u64 {
    let field = |name: &str| block.get(name).unwrap_or(&Value::Null);
    match field("type").as_str() {
        Some("text") => field("text").as_str().map(count_tokens).unwrap_or_default(),
        Some("image") => MEDIA_TOKENS,
        Some("document") => {
            let source = field("source");
            match source.get("type").and_then(Value::as_str) {
                Some("text") => source
                    .get("data")
                    .and_then(Value::as_str)
                    .map(count_tokens)
                    .unwrap_or_default(),
                Some("content") => content_tokens(source.get("content").unwrap_or(&Value::Null)),
                _ => MEDIA_TOKENS,
            }
        }
        Some("tool_use") => {
            field("name").as_str().map(count_tokens).unwrap_or_default()
                + json_tokens(field("input"))
        }
        Some("tool_result") => content_tokens(field("content")),
        Some("thinking" | "redacted_thinking") => 0,
        _ => json_tokens(block),
    }
}

fn array<'a>(body: &'a Value, name: &str) -> &'a [Value] {
    body.get(name)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The prompt's blocks in the order Anthropic caches them: tools, system, messages.
fn prompt_blocks(body: &Value) -> Vec<PromptBlock> {
    let mut blocks: Vec<PromptBlock> = array(body, "tools")
        .iter()
        .map(|tool| PromptBlock::new("tool", tool, json_tokens(tool)))
        .collect();
    match body.get("system") {
        Some(Value::String(text)) => blocks.push(PromptBlock::new(
            "system",
            &json!({ "type": "text", "text": text }),
            count_tokens(text),
        )),
        Some(Value::Array(system)) => blocks.extend(
            system
                .iter()
                .map(|block| PromptBlock::new("system", block, block_tokens(block))),
        ),
        _ => {}
    }
    for message in array(body, "messages") {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        match message.get("content") {
            Some(Value::Array(content)) => blocks.extend(
                content
                    .iter()
                    .map(|block| PromptBlock::new(role, block, block_tokens(block))),
            ),
            Some(Value::String(text)) => blocks.push(PromptBlock::new(
                role,
                &json!({ "type": "text", "text": text }),
                count_tokens(text),
            )),
            other => blocks.push(PromptBlock::new(role, other.unwrap_or(&Value::Null), 0)),
        }
    }
    // A top-level `cache_control` marks the last block.
    if let Some(ttl) = breakpoint_of(body.get("cache_control"))
        && let Some(last) = blocks.last_mut()
    {
        last.breakpoint.get_or_insert(ttl);
    }
    blocks
}

fn input_tokens(body: &Value) -> u64 {
    prompt_blocks(body).iter().map(|block| block.tokens).sum()
}

/// Splits the prompt's tokens between cache reads, cache writes and the rest, and records the
/// prefixes written when `write` is set.
fn cache_usage(
    blocks: &[PromptBlock],
    model: &str,
    cache: &mut HashSet<u64>,
    minimum: u64,
    write: bool,
) -> CacheUsage {
    // prefix_tokens[i] and keys[i] describe the prefix that ends with block i.
    let mut hasher = DefaultHasher::new();
    model.hash(&mut hasher);
    let mut total = 0;
    let mut prefix_tokens = Vec::with_capacity(blocks.len());
    let mut keys = Vec::with_capacity(blocks.len());
    for block in blocks {
        total += block.tokens;
        block.identity.hash(&mut hasher);
        prefix_tokens.push(total);
        keys.push(hasher.clone().finish());
    }
    let breakpoints: Vec<(usize, Ttl)> = blocks
        .iter()
        .enumerate()
        .filter_map(|(index, block)| Some((index, block.breakpoint?)))
        .filter(|(index, _)| prefix_tokens[*index] >= minimum.max(1))
        .collect();
    let Some(&(last, _)) = breakpoints.last() else {
        return CacheUsage {
            input: total,
            ..CacheUsage::default()
        };
    };
    let read = breakpoints
        .iter()
        .flat_map(|(index, _)| index.saturating_sub(CACHE_LOOKBACK_BLOCKS)..=*index)
        .filter(|index| cache.contains(&keys[*index]))
        .map(|index| prefix_tokens[index])
        .max()
        .unwrap_or_default();
    let mut usage = CacheUsage {
        input: total - prefix_tokens[last],
        read,
        ..CacheUsage::default()
    };
    // Each stretch after the cached prefix is written with the time to live of the breakpoint
    // that ends it.
    let mut written = read;
    for &(index, ttl) in &breakpoints {
        if prefix_tokens[index] > written {
            let tokens = prefix_tokens[index] - written;
            match ttl {
                Ttl::FiveMinutes => usage.creation_5m += tokens,
                Ttl::OneHour => usage.creation_1h += tokens,
            }
            written = prefix_tokens[index];
        }
    }
    if write {
        cache.extend(breakpoints.iter().map(|(index, _)| keys[*index]));
    }
    usage
}

// ---- requests ----

/// The text of a message's `content`: a string, or its text blocks and tool results' text, one
/// per line.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|block| match block.get("type").and_then(Value::as_str) {
                Some("text") => block.get("text").and_then(Value::as_str).map(str::to_owned),
                Some("tool_result") => block.get("content").map(content_text),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn last_user_text(body: &Value) -> String {
    array(body, "messages")
        .iter()
        .rev()
        .find(|message| message.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|message| message.get("content"))
        .map(content_text)
        .unwrap_or_default()
}

fn model_of(body: &Value) -> String {
    match body.get("model") {
        Some(Value::String(model)) => model.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

fn max_tokens_of(body: &Value) -> u64 {
    body.get("max_tokens")
        .and_then(Value::as_u64)
        .unwrap_or_default()
}

fn thinking_budget(body: &Value) -> Option<&Value> {
    let thinking = body.get("thinking")?;
    if thinking.get("type").and_then(Value::as_str) != Some("enabled") {
        return None;
    }
    Some(thinking.get("budget_tokens").unwrap_or(&Value::Null))
}

// ---- responses ----

/// What to send, before the headers common to every response are added.
enum Answer {
    Json(StatusCode, Value, Vec<(String, String)>),
    /// `(event name, data)` pairs; whether the stream ends with an error.
    Stream(Vec<(String, Value)>, bool),
}

fn error_answer(status: StatusCode, kind: &str, message: &str) -> Answer {
    // Anthropic marks its 400s as not worth retrying.
    let headers = if status == StatusCode::BAD_REQUEST {
        vec![("x-should-retry".to_owned(), "false".to_owned())]
    } else {
        Vec::new()
    };
    Answer::Json(status, FakeAnthropic::error_body(kind, message), headers)
}

fn invalid(message: &str) -> Answer {
    error_answer(StatusCode::BAD_REQUEST, "invalid_request_error", message)
}

fn authenticate(headers: &HeaderMap, api_key: &str) -> Result<(), Answer> {
    let Some(key) = headers.get("x-api-key") else {
        return Err(error_answer(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "x-api-key header is required",
        ));
    };
    if key.as_bytes() == api_key.as_bytes() {
        return Ok(());
    }
    Err(error_answer(
        StatusCode::UNAUTHORIZED,
        "authentication_error",
        "invalid x-api-key",
    ))
}

fn check_version(headers: &HeaderMap) -> Result<(), Answer> {
    let values: Vec<String> = headers
        .get_all("anthropic-version")
        .iter()
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .collect();
    if values.is_empty() {
        return Err(invalid("anthropic-version: header is required"));
    }
    // Several headers read as one comma-separated value, which is no version.
    let version = values.join(", ");
    if API_VERSIONS.contains(&version.as_str()) {
        return Ok(());
    }
    Err(invalid(&format!(
        "anthropic-version: \"{version}\" is not a valid version"
    )))
}

/// Checks what Anthropic checks before anything else: the body is JSON with the required
/// fields, well-formed messages and a valid thinking budget.
fn check_request(
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: &Value,
    parse_error: Option<&str>,
) -> Result<(), Answer> {
    if let Some(error) = parse_error {
        return Err(invalid(&format!(
            "The request body is not valid JSON: {error}"
        )));
    }
    if !body.is_object() {
        return Err(invalid(
            "The request body is not valid JSON: expected an object",
        ));
    }
    let mut required = vec!["model"];
    if endpoint == Endpoint::Messages {
        required.push("max_tokens");
    }
    required.push("messages");
    if let Some(missing) = required.iter().find(|name| body.get(**name).is_none()) {
        return Err(invalid(&format!("{missing}: Field required")));
    }
    if endpoint == Endpoint::Messages && body.get("max_tokens").and_then(Value::as_u64).is_none() {
        return Err(invalid("max_tokens: Input should be a valid integer"));
    }
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return Err(invalid("messages: Input should be a valid list"));
    };
    if messages.is_empty() {
        return Err(invalid("messages: at least one message is required"));
    }
    for (index, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str);
        if !matches!(role, Some("user" | "assistant")) {
            return Err(invalid(&format!(
                "messages.{index}.role: Input should be 'user' or 'assistant'"
            )));
        }
        let empty = match message.get("content") {
            Some(Value::String(text)) => text.is_empty(),
            Some(Value::Array(blocks)) => blocks.is_empty(),
            _ => true,
        };
        let final_assistant = index + 1 == messages.len() && role == Some("assistant");
        if empty && !final_assistant {
            return Err(invalid(&format!(
                "messages.{index}: all messages must have non-empty content except for the \
                 optional final assistant message"
            )));
        }
    }
    if let Some(budget) = thinking_budget(body) {
        let budget = budget.as_u64().unwrap_or_default();
        if budget < 1024 {
            return Err(invalid(
                "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024",
            ));
        }
        let interleaved = headers.get_all("anthropic-beta").iter().any(|value| {
            String::from_utf8_lossy(value.as_bytes()).contains("interleaved-thinking")
        });
        if endpoint == Endpoint::Messages && !interleaved && max_tokens_of(body) <= budget {
            return Err(invalid(
                "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our \
                 documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking#max-tokens-and-context-window-size",
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Messages,
    CountTokens,
}

/// A `message` object.
fn message_body(
    model: &str,
    content: Value,
    stop_reason: Value,
    stop_sequence: Value,
    usage: Value,
) -> Value {
    json!({
        "id": random_id("msg"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage,
    })
}

/// The events of one streamed message, built block by block.
struct EventStream {
    events: Vec<(String, Value)>,
    blocks: usize,
}

impl EventStream {
    /// Starts with `message_start`: the message without content, and with one output token.
    fn new(model: &str, cache: CacheUsage) -> EventStream {
        let message = message_body(
            model,
            json!([]),
            Value::Null,
            Value::Null,
            usage_json(&cache, 1),
        );
        EventStream {
            events: vec![event(
                "message_start",
                json!({ "type": "message_start", "message": message }),
            )],
            blocks: 0,
        }
    }

    /// A content block: its start (then a `ping` after the first), its deltas and its stop.
    fn block(&mut self, content_block: Value, deltas: Vec<Value>) {
        let index = self.blocks;
        self.blocks += 1;
        self.events.push(event(
            "content_block_start",
            json!({ "type": "content_block_start", "index": index, "content_block": content_block }),
        ));
        if index == 0 {
            self.events.push(ping());
        }
        self.events.extend(deltas.into_iter().map(|delta| {
            event(
                "content_block_delta",
                json!({ "type": "content_block_delta", "index": index, "delta": delta }),
            )
        }));
        self.events.push(event(
            "content_block_stop",
            json!({ "type": "content_block_stop", "index": index }),
        ));
    }

    fn text_block(&mut self, text: &str) {
        let deltas = word_pieces(text)
            .into_iter()
            .map(|piece| json!({ "type": "text_delta", "text": piece }))
            .collect();
        self.block(json!({ "type": "text", "text": "" }), deltas);
    }

    fn thinking_block(&mut self, thinking: &str, signature: &str) {
        let mut deltas: Vec<Value> = word_pieces(thinking)
            .into_iter()
            .map(|piece| json!({ "type": "thinking_delta", "thinking": piece }))
            .collect();
        deltas.push(json!({ "type": "signature_delta", "signature": signature }));
        self.block(
            json!({ "type": "thinking", "thinking": "", "signature": "" }),
            deltas,
        );
    }

    /// Ends with `message_delta` (the stop reason and the output tokens) and `message_stop`.
    fn finish(
        mut self,
        stop_reason: &str,
        stop_sequence: Option<&str>,
        output_tokens: u64,
    ) -> Vec<(String, Value)> {
        if self.blocks == 0 {
            self.events.push(ping());
        }
        self.events.push(event(
            "message_delta",
            json!({
                "type": "message_delta",
                "delta": { "stop_reason": stop_reason, "stop_sequence": stop_sequence },
                "usage": { "output_tokens": output_tokens },
            }),
        ));
        self.events
            .push(event("message_stop", json!({ "type": "message_stop" })));
        self.events
    }
}

fn event(name: &str, data: Value) -> (String, Value) {
    (name.to_owned(), data)
}

fn ping() -> (String, Value) {
    event("ping", json!({ "type": "ping" }))
}

/// The default answer's parts.
struct Generated {
    /// The thinking and its signature, when thinking is enabled.
    thinking: Option<(String, String)>,
    text: String,
    stop_reason: &'static str,
    stop_sequence: Option<String>,
    output_tokens: u64,
}

fn generate(body: &Value) -> Generated {
    let max_tokens = max_tokens_of(body);
    if max_tokens == 0 {
        return Generated {
            thinking: None,
            text: String::new(),
            stop_reason: "max_tokens",
            stop_sequence: None,
            output_tokens: 0,
        };
    }
    let thinking = thinking_budget(body).map(|_| (THINKING_TEXT.to_owned(), random_signature()));
    let thinking_tokens = thinking
        .as_ref()
        .map(|(text, _)| count_tokens(text))
        .unwrap_or_default();
    let text = last_user_text(body);
    // Where the answer ends if cut after the tokens left once thought.
    let budget = usize::try_from(max_tokens.saturating_sub(thinking_tokens)).unwrap_or(usize::MAX);
    let pieces = word_pieces(&text);
    let truncated = pieces.len() > budget;
    let limit = if truncated {
        pieces[..budget].iter().map(String::len).sum()
    } else {
        text.len()
    };
    let stop = array(body, "stop_sequences")
        .iter()
        .filter_map(Value::as_str)
        .filter(|sequence| !sequence.is_empty())
        .filter_map(|sequence| text.find(sequence).map(|at| (at, sequence)))
        .min_by_key(|(at, _)| *at);
    let (answer, stop_reason, stop_sequence) = match stop {
        Some((at, sequence)) if at + sequence.len() <= limit => {
            (&text[..at], "stop_sequence", Some(sequence.to_owned()))
        }
        _ if truncated => (&text[..limit], "max_tokens", None),
        _ => (text.as_str(), "end_turn", None),
    };
    Generated {
        output_tokens: (thinking_tokens + count_tokens(answer)).max(1),
        thinking,
        text: answer.to_owned(),
        stop_reason,
        stop_sequence,
    }
}

fn default_message(body: &Value, cache: &CacheUsage) -> Answer {
    let model = model_of(body);
    let generated = generate(body);
    if body.get("stream") != Some(&Value::Bool(true)) {
        let mut content = Vec::new();
        if let Some((thinking, signature)) = &generated.thinking {
            content
                .push(json!({ "type": "thinking", "thinking": thinking, "signature": signature }));
        }
        if !generated.text.is_empty() {
            content.push(json!({ "type": "text", "text": generated.text }));
        }
        let message = message_body(
            &model,
            json!(content),
            json!(generated.stop_reason),
            json!(generated.stop_sequence),
            usage_json(cache, generated.output_tokens),
        );
        return Answer::Json(StatusCode::OK, message, Vec::new());
    }
    let mut stream = EventStream::new(&model, *cache);
    if let Some((thinking, signature)) = &generated.thinking {
        stream.thinking_block(thinking, signature);
    }
    if !generated.text.is_empty() {
        stream.text_block(&generated.text);
    }
    let events = stream.finish(
        generated.stop_reason,
        generated.stop_sequence.as_deref(),
        generated.output_tokens,
    );
    Answer::Stream(events, false)
}

/// The answer to a scripted reply; `None` for [`Reply::Hang`], which answers by default once
/// the wait is over.
fn scripted_answer(reply: Reply) -> Option<Answer> {
    Some(match reply {
        Reply::Message(body) => Answer::Json(StatusCode::OK, body, Vec::new()),
        Reply::Events(events) => Answer::Stream(events, false),
        Reply::Error {
            status,
            body,
            headers,
        } => Answer::Json(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body,
            headers,
        ),
        Reply::Hang(_) => return None,
        Reply::EventsThenError { mut events, error } => {
            let error = if error.get("error").is_some() {
                error
            } else {
                json!({ "type": "error", "error": error })
            };
            events.push(event("error", error));
            Answer::Stream(events, true)
        }
    })
}

fn set_header(headers: &mut HeaderMap, name: &str, value: &str) {
    match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
        (Ok(name), Ok(value)) => {
            headers.insert(name, value);
        }
        _ => eprintln!("fake Anthropic: skipping the invalid header {name:?}: {value:?}"),
    }
}

struct Common {
    request_id: String,
    organization_id: String,
    /// Requests received so far, for `anthropic-ratelimit-requests-remaining`.
    served: u64,
    /// Input tokens that count against the rate limit: those not read from the cache.
    input_tokens: u64,
    /// Output tokens that count against the rate limit: the request's `max_tokens`.
    max_tokens: u64,
    event_delay: Duration,
}

fn respond(answer: Answer, common: &Common) -> Response {
    let (status, content_type, body, extra, closes) = match answer {
        Answer::Json(status, mut body, extra) => {
            let is_error = body.get("type").and_then(Value::as_str) == Some("error");
            if !status.is_success()
                && is_error
                && let Some(object) = body.as_object_mut()
            {
                object
                    .entry("request_id")
                    .or_insert_with(|| json!(common.request_id));
            }
            (
                status,
                "application/json",
                Body::from(body.to_string()),
                extra,
                false,
            )
        }
        Answer::Stream(events, closes) => {
            let delay = common.event_delay;
            let stream = futures::stream::iter(events.into_iter().enumerate()).then(
                move |(index, (name, data))| async move {
                    if index > 0 && !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    Ok::<_, Infallible>(Bytes::from(format!("event: {name}\ndata: {data}\n\n")))
                },
            );
            (
                StatusCode::OK,
                "text/event-stream; charset=utf-8",
                Body::from_stream(stream),
                Vec::new(),
                closes,
            )
        }
    };
    let streaming = content_type.starts_with("text/event-stream");
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    set_header(headers, "content-type", content_type);
    if streaming {
        set_header(headers, "cache-control", "no-cache");
    }
    set_header(headers, "request-id", &common.request_id);
    set_header(
        headers,
        "anthropic-organization-id",
        &common.organization_id,
    );
    if status.is_success() {
        let reset = rfc3339_in(1);
        let requests = LIMIT_REQUESTS.saturating_sub(common.served);
        let input = LIMIT_INPUT_TOKENS.saturating_sub(common.input_tokens);
        let output = LIMIT_OUTPUT_TOKENS.saturating_sub(common.max_tokens);
        for (kind, limit, remaining) in [
            ("requests", LIMIT_REQUESTS, requests),
            ("input-tokens", LIMIT_INPUT_TOKENS, input),
            ("output-tokens", LIMIT_OUTPUT_TOKENS, output),
            (
                "tokens",
                LIMIT_INPUT_TOKENS + LIMIT_OUTPUT_TOKENS,
                input + output,
            ),
        ] {
            let name = format!("anthropic-ratelimit-{kind}");
            set_header(headers, &format!("{name}-limit"), &limit.to_string());
            set_header(
                headers,
                &format!("{name}-remaining"),
                &remaining.to_string(),
            );
            set_header(headers, &format!("{name}-reset"), &reset);
        }
    }
    for (name, value) in &extra {
        set_header(headers, name, value);
    }
    if closes {
        set_header(headers, "connection", "close");
    }
    response
}

/// The checks every request goes through, in order: the key, the path, the version, the body.
fn check(
    endpoint: Option<Endpoint>,
    headers: &HeaderMap,
    body: &Value,
    parse_error: Option<&str>,
    api_key: &str,
) -> Result<Endpoint, Answer> {
    authenticate(headers, api_key)?;
    let Some(endpoint) = endpoint else {
        return Err(error_answer(
            StatusCode::NOT_FOUND,
            "not_found_error",
            "Not Found",
        ));
    };
    check_version(headers)?;
    check_request(endpoint, headers, body, parse_error)?;
    Ok(endpoint)
}

async fn handle(
    AxumState(state): AxumState<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let (body, parse_error) = if body.is_empty() {
        (
            Value::Null,
            Some("EOF while parsing a value at line 1 column 0".to_owned()),
        )
    } else {
        match serde_json::from_slice(&body) {
            Ok(body) => (body, None),
            Err(err) => (
                Value::String(String::from_utf8_lossy(&body).into_owned()),
                Some(err.to_string()),
            ),
        }
    };
    let endpoint = match (method.as_str(), path.as_str()) {
        ("POST", "/v1/messages") => Some(Endpoint::Messages),
        ("POST", "/v1/messages/count_tokens") => Some(Endpoint::CountTokens),
        _ => None,
    };
    let mut common = Common {
        request_id: format!("req_011C{}", random_chars(20)),
        organization_id: String::new(),
        served: 0,
        input_tokens: 0,
        max_tokens: 0,
        event_delay: Duration::ZERO,
    };
    let outcome = {
        let mut state = lock(&state);
        state.requests.push(Recorded {
            path: path.clone(),
            headers: headers.clone(),
            body: body.clone(),
        });
        common.organization_id = state.organization_id.clone();
        common.served = state.requests.len() as u64;
        common.event_delay = state.event_delay;
        check(
            endpoint,
            &headers,
            &body,
            parse_error.as_deref(),
            &state.api_key,
        )
        .map(|endpoint| (endpoint, state.replies.pop_front()))
    };
    let answer = match outcome {
        Err(answer) => answer,
        Ok((endpoint, reply)) => {
            if let Some(Reply::Hang(wait)) = reply {
                tokio::time::sleep(wait).await;
            }
            match endpoint {
                Endpoint::CountTokens => {
                    let tokens = input_tokens(&body);
                    common.input_tokens = tokens;
                    reply.and_then(scripted_answer).unwrap_or_else(|| {
                        Answer::Json(
                            StatusCode::OK,
                            json!({ "input_tokens": tokens }),
                            Vec::new(),
                        )
                    })
                }
                Endpoint::Messages => {
                    let blocks = prompt_blocks(&body);
                    let write = !matches!(reply, Some(Reply::Error { .. }));
                    let cache = {
                        let mut state = lock(&state);
                        let minimum = state.cache_minimum;
                        cache_usage(&blocks, &model_of(&body), &mut state.cache, minimum, write)
                    };
                    common.input_tokens = cache.input + cache.creation();
                    common.max_tokens = max_tokens_of(&body);
                    reply
                        .and_then(scripted_answer)
                        .unwrap_or_else(|| default_message(&body, &cache))
                }
            }
        }
    };
    respond(answer, &common)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw_http::{Connection, HttpResponse};

    /// What Anthropic's responses carry beyond HTTP.
    trait AnthropicResponse {
        /// The `(event, data)` pairs of an event stream.
        fn events(&self) -> Vec<(String, Value)>;
        /// The error's `type` and `message`, checking the envelope.
        fn error(&self) -> (String, String);
    }

    impl AnthropicResponse for HttpResponse {
        fn events(&self) -> Vec<(String, Value)> {
            assert_eq!(
                self.header("content-type"),
                Some("text/event-stream; charset=utf-8")
            );
            self.body
                .split_terminator("\n\n")
                .map(|event| {
                    let (name, data) = event.split_once('\n').unwrap();
                    let name = name.strip_prefix("event: ").unwrap();
                    let data = data.strip_prefix("data: ").unwrap();
                    (name.to_owned(), serde_json::from_str(data).unwrap())
                })
                .collect()
        }

        fn error(&self) -> (String, String) {
            let body = self.json();
            assert_eq!(body["type"], "error", "{body}");
            assert_eq!(body["request_id"].as_str(), self.header("request-id"));
            let error = &body["error"];
            assert_eq!(error.as_object().unwrap().len(), 2, "{body}");
            (
                error["type"].as_str().unwrap().to_owned(),
                error["message"].as_str().unwrap().to_owned(),
            )
        }
    }

    const GOOD_HEADERS: [(&str, &str); 2] = [
        ("x-api-key", DEFAULT_API_KEY),
        ("anthropic-version", API_VERSION),
    ];

    async fn post(fake: &FakeAnthropic, path: &str, body: &Value) -> HttpResponse {
        Connection::open(&fake.base_url())
            .await
            .post(path, &GOOD_HEADERS, &body.to_string())
            .await
    }

    fn messages_request(stream: bool) -> Value {
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "system": "You repeat things.",
            "messages": [
                { "role": "user", "content": [{ "type": "text", "text": "First question" }] },
                { "role": "assistant", "content": "First answer" },
                { "role": "user", "content": [
                    { "type": "text", "text": "Say hello" },
                    { "type": "text", "text": "to  the world" },
                ]},
            ],
            "stream": stream,
        })
    }

    fn names(events: &[(String, Value)]) -> Vec<&str> {
        events.iter().map(|(name, _)| name.as_str()).collect()
    }

    /// Every event's data has the event's name as its `type`; the stream opens with
    /// `message_start` and closes with `message_delta` and `message_stop`; blocks are numbered
    /// from 0 and each one's deltas come between its start and its stop.
    fn assert_well_formed(events: &[(String, Value)]) {
        for (name, data) in events {
            assert_eq!(data["type"], name.as_str(), "{data}");
        }
        let names = names(events);
        assert_eq!(names.first(), Some(&"message_start"));
        assert_eq!(names[names.len() - 2..], ["message_delta", "message_stop"]);
        let mut open: Option<u64> = None;
        let mut next = 0;
        for (name, data) in events {
            let index = data["index"].as_u64();
            match name.as_str() {
                "content_block_start" => {
                    assert_eq!(open, None, "{data}");
                    assert_eq!(index, Some(next), "{data}");
                    open = index;
                    next += 1;
                }
                "content_block_delta" => assert_eq!(index, open, "{data}"),
                "content_block_stop" => {
                    assert_eq!(index, open, "{data}");
                    open = None;
                }
                _ => assert_eq!(index, None, "{data}"),
            }
        }
        assert_eq!(open, None);
    }

    #[tokio::test]
    async fn a_default_message_echoes_the_last_user_message() {
        let fake = FakeAnthropic::start().await;
        assert!(fake.base_url().starts_with("http://127.0.0.1:"));
        assert!(!fake.base_url().contains("/v1"));
        let mut connection = Connection::open(&fake.base_url()).await;
        let request = messages_request(false);
        let response = connection
            .post(
                "/v1/messages",
                &[
                    ("x-api-key", "sk-ant-test"),
                    ("anthropic-version", "2023-06-01"),
                    ("anthropic-beta", "prompt-caching-2024-07-31"),
                ],
                &request.to_string(),
            )
            .await;
        assert_eq!(response.status, 200);
        assert_eq!(response.header("content-type"), Some("application/json"));
        let body = response.json();
        let id = body["id"].as_str().unwrap();
        assert!(id.starts_with("msg_01") && id.len() == 28, "{id}");
        assert_eq!(body["type"], "message");
        assert_eq!(body["role"], "assistant");
        assert_eq!(body["model"], "claude-sonnet-4-5");
        assert_eq!(
            body["content"],
            json!([{ "type": "text", "text": "Say hello\nto  the world" }])
        );
        assert_eq!(body["stop_reason"], "end_turn");
        assert_eq!(body["stop_sequence"], Value::Null);
        // Words: 3 of system, 2 + 2 + 5 of messages; 5 in the answer.
        assert_eq!(
            body["usage"],
            json!({
                "input_tokens": 12,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "cache_creation": { "ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0 },
                "output_tokens": 5,
                "service_tier": "standard",
            })
        );

        let request_id = response.header("request-id").unwrap();
        assert!(request_id.starts_with("req_011C"), "{request_id}");
        assert!(response.header("anthropic-organization-id").is_some());
        assert_eq!(
            response.header("anthropic-ratelimit-requests-limit"),
            Some("4000")
        );
        assert_eq!(
            response.header("anthropic-ratelimit-requests-remaining"),
            Some("3999")
        );
        assert_eq!(
            response.header("anthropic-ratelimit-input-tokens-remaining"),
            Some("1999988")
        );
        assert_eq!(
            response.header("anthropic-ratelimit-output-tokens-remaining"),
            Some("398976")
        );
        assert_eq!(
            response.header("anthropic-ratelimit-tokens-remaining"),
            Some("2398964")
        );
        for kind in ["requests", "tokens", "input-tokens", "output-tokens"] {
            let reset = response
                .header(&format!("anthropic-ratelimit-{kind}-reset"))
                .unwrap();
            assert!(humantime::parse_rfc3339(reset).is_ok(), "{reset}");
        }

        // The connection is kept alive for the next request.
        let response = connection
            .post("/v1/messages", &GOOD_HEADERS, &request.to_string())
            .await;
        assert_eq!(response.status, 200);
        assert_eq!(
            response.header("anthropic-ratelimit-requests-remaining"),
            Some("3998")
        );

        let requests = fake.requests();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].path, "/v1/messages");
        assert_eq!(requests[0].body, request);
        assert_eq!(requests[0].headers["x-api-key"], "sk-ant-test");
        assert_eq!(
            requests[0].headers["anthropic-beta"],
            "prompt-caching-2024-07-31"
        );
    }

    #[tokio::test]
    async fn anthropic_version_is_required_and_checked() {
        let fake = FakeAnthropic::start().await;
        fake.push(FakeAnthropic::overloaded());
        let mut connection = Connection::open(&fake.base_url()).await;
        let request = messages_request(false).to_string();

        let response = connection
            .post("/v1/messages", &[("x-api-key", DEFAULT_API_KEY)], &request)
            .await;
        assert_eq!(response.status, 400);
        assert_eq!(response.header("x-should-retry"), Some("false"));
        assert!(
            response
                .header("anthropic-ratelimit-requests-limit")
                .is_none()
        );
        assert_eq!(
            response.error(),
            (
                "invalid_request_error".to_owned(),
                "anthropic-version: header is required".to_owned()
            )
        );

        let response = connection
            .post(
                "/v1/messages",
                &[
                    ("x-api-key", DEFAULT_API_KEY),
                    ("anthropic-version", "2024-01-01"),
                ],
                &request,
            )
            .await;
        assert_eq!(response.status, 400);
        assert_eq!(
            response.error().1,
            "anthropic-version: \"2024-01-01\" is not a valid version"
        );
        // Refused requests leave the script alone.
        assert_eq!(fake.pending_replies(), 1);
        assert_eq!(fake.requests().len(), 2);
    }

    #[tokio::test]
    async fn a_wrong_or_missing_key_gets_401() {
        let fake = FakeAnthropic::start()
            .await
            .with_api_key("sk-ant-api03-right");
        let mut connection = Connection::open(&fake.base_url()).await;
        let request = messages_request(false).to_string();
        let response = connection
            .post(
                "/v1/messages",
                &[
                    ("x-api-key", DEFAULT_API_KEY),
                    ("anthropic-version", API_VERSION),
                ],
                &request,
            )
            .await;
        assert_eq!(response.status, 401);
        assert_eq!(
            response.error(),
            (
                "authentication_error".to_owned(),
                "invalid x-api-key".to_owned()
            )
        );
        // A bearer token is not how Anthropic takes API keys.
        let response = connection
            .post(
                "/v1/messages",
                &[
                    ("authorization", "Bearer sk-ant-api03-right"),
                    ("anthropic-version", API_VERSION),
                ],
                &request,
            )
            .await;
        assert_eq!(response.status, 401);
        assert_eq!(response.error().1, "x-api-key header is required");
        let response = connection
            .post(
                "/v1/messages",
                &[
                    ("x-api-key", "sk-ant-api03-right"),
                    ("anthropic-version", API_VERSION),
                ],
                &request,
            )
            .await;
        assert_eq!(response.status, 200);
    }

    #[tokio::test]
    async fn malformed_requests_get_anthropics_errors() {
        let fake = FakeAnthropic::start().await;
        let mut connection = Connection::open(&fake.base_url()).await;
        let user = json!({ "role": "user", "content": "hi" });
        let cases = [
            ("{not json", "The request body is not valid JSON: "),
            (
                r#"{"max_tokens": 10, "messages": []}"#,
                "model: Field required",
            ),
            (
                r#"{"model": "m", "messages": []}"#,
                "max_tokens: Field required",
            ),
            (
                r#"{"model": "m", "max_tokens": "ten", "messages": []}"#,
                "max_tokens: Input should be a valid integer",
            ),
            (
                r#"{"model": "m", "max_tokens": 10}"#,
                "messages: Field required",
            ),
            (
                r#"{"model": "m", "max_tokens": 10, "messages": []}"#,
                "messages: at least one message is required",
            ),
            (
                r#"{"model": "m", "max_tokens": 10, "messages": [{"role": "system", "content": "x"}]}"#,
                "messages.0.role: Input should be 'user' or 'assistant'",
            ),
            (
                r#"{"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": []}]}"#,
                "messages.0: all messages must have non-empty content except for the optional \
                 final assistant message",
            ),
            (
                r#"{"model": "m", "max_tokens": 2000, "messages": [{"role": "user", "content": "x"}], "thinking": {"type": "enabled", "budget_tokens": 512}}"#,
                "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024",
            ),
            (
                r#"{"model": "m", "max_tokens": 2000, "messages": [{"role": "user", "content": "x"}], "thinking": {"type": "enabled", "budget_tokens": 2000}}"#,
                "`max_tokens` must be greater than `thinking.budget_tokens`.",
            ),
        ];
        for (body, message) in cases {
            let response = connection.post("/v1/messages", &GOOD_HEADERS, body).await;
            assert_eq!(response.status, 400, "{body}");
            let (kind, text) = response.error();
            assert_eq!(kind, "invalid_request_error", "{body}");
            assert!(text.starts_with(message), "{body}: {text}");
        }
        assert_eq!(fake.requests()[0].body, json!("{not json"));

        // Anthropic enforces neither alternation nor a first user turn, and lets a final
        // assistant turn be empty; interleaved thinking lifts the budget rule.
        let lenient = [
            json!({ "model": "m", "max_tokens": 10, "messages": [
                { "role": "assistant", "content": "Hello" }, user, user,
                { "role": "assistant", "content": "" },
            ]}),
            json!({ "model": "m", "max_tokens": 10, "messages": [user],
                    "thinking": { "type": "disabled" } }),
        ];
        for body in lenient {
            let response = post(&fake, "/v1/messages", &body).await;
            assert_eq!(response.status, 200, "{body}");
        }
        let thinking = json!({ "model": "m", "max_tokens": 2000, "messages": [user],
                               "thinking": { "type": "enabled", "budget_tokens": 4000 } });
        let response = connection
            .post(
                "/v1/messages",
                &[
                    ("x-api-key", DEFAULT_API_KEY),
                    ("anthropic-version", API_VERSION),
                    ("anthropic-beta", "interleaved-thinking-2025-05-14"),
                ],
                &thinking.to_string(),
            )
            .await;
        assert_eq!(response.status, 200);

        let response = connection
            .post("/v1/complete", &GOOD_HEADERS, &user.to_string())
            .await;
        assert_eq!(response.status, 404);
        assert_eq!(
            response.error(),
            ("not_found_error".to_owned(), "Not Found".to_owned())
        );
    }

    #[tokio::test]
    async fn streaming_sends_anthropics_events_in_order() {
        let fake = FakeAnthropic::start().await;
        let response = post(&fake, "/v1/messages", &messages_request(true)).await;
        assert_eq!(response.status, 200);
        assert_eq!(response.header("cache-control"), Some("no-cache"));
        assert!(
            response.body.starts_with("event: message_start\ndata: {"),
            "{}",
            response.body
        );
        let events = response.events();
        assert_well_formed(&events);
        assert_eq!(
            names(&events),
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        let message = &events[0].1["message"];
        assert!(message["id"].as_str().unwrap().starts_with("msg_01"));
        assert_eq!(message["type"], "message");
        assert_eq!(message["role"], "assistant");
        assert_eq!(message["model"], "claude-sonnet-4-5");
        assert_eq!(message["content"], json!([]));
        assert_eq!(message["stop_reason"], Value::Null);
        assert_eq!(message["stop_sequence"], Value::Null);
        assert_eq!(message["usage"]["input_tokens"], 12);
        assert_eq!(message["usage"]["output_tokens"], 1);
        assert_eq!(
            events[1].1,
            json!({ "type": "content_block_start", "index": 0,
                    "content_block": { "type": "text", "text": "" } })
        );
        assert_eq!(events[2].1, json!({ "type": "ping" }));
        let pieces: Vec<&str> = events[3..8]
            .iter()
            .map(|(_, data)| {
                assert_eq!(data["index"], 0);
                assert_eq!(data["delta"]["type"], "text_delta");
                data["delta"]["text"].as_str().unwrap()
            })
            .collect();
        assert_eq!(pieces, ["Say", " hello", "\nto", "  the", " world"]);
        assert_eq!(
            events[8].1,
            json!({ "type": "content_block_stop", "index": 0 })
        );
        assert_eq!(
            events[9].1,
            json!({
                "type": "message_delta",
                "delta": { "stop_reason": "end_turn", "stop_sequence": null },
                "usage": { "output_tokens": 5 },
            })
        );
        assert_eq!(events[10].1, json!({ "type": "message_stop" }));
    }

    #[tokio::test]
    async fn max_tokens_and_stop_sequences_cut_the_answer() {
        let fake = FakeAnthropic::start().await;
        let mut request = messages_request(false);
        request["max_tokens"] = json!(3);
        let body = post(&fake, "/v1/messages", &request).await.json();
        assert_eq!(body["content"][0]["text"], "Say hello\nto");
        assert_eq!(body["stop_reason"], "max_tokens");
        assert_eq!(body["usage"]["output_tokens"], 3);

        request["max_tokens"] = json!(100);
        request["stop_sequences"] = json!(["world", "lo\n"]);
        let body = post(&fake, "/v1/messages", &request).await.json();
        assert_eq!(body["content"][0]["text"], "Say hel");
        assert_eq!(body["stop_reason"], "stop_sequence");
        assert_eq!(body["stop_sequence"], "lo\n");
        assert_eq!(body["usage"]["output_tokens"], 2);

        // A stop sequence beyond max_tokens is never reached.
        request["max_tokens"] = json!(2);
        request["stop_sequences"] = json!(["world"]);
        let body = post(&fake, "/v1/messages", &request).await.json();
        assert_eq!(body["stop_reason"], "max_tokens");
        assert_eq!(body["stop_sequence"], Value::Null);

        // An empty answer has no content; max_tokens 0 only warms the cache.
        request["stop_sequences"] = json!(["Say"]);
        request["stream"] = json!(true);
        let events = post(&fake, "/v1/messages", &request).await.events();
        assert_well_formed(&events);
        assert_eq!(
            names(&events),
            ["message_start", "ping", "message_delta", "message_stop"]
        );
        assert_eq!(events[2].1["delta"]["stop_reason"], "stop_sequence");
        request["max_tokens"] = json!(0);
        request["stream"] = json!(false);
        let body = post(&fake, "/v1/messages", &request).await.json();
        assert_eq!(body["content"], json!([]));
        assert_eq!(body["stop_reason"], "max_tokens");
        assert_eq!(body["usage"]["output_tokens"], 0);
    }

    #[tokio::test]
    async fn tool_use_events_stream_the_input_in_pieces() {
        let pieces = ["{\"loc", "ation\": \"Pa", "ris\"}"];
        let events = FakeAnthropic::tool_use_events("get_weather", "toolu_01abc", &pieces);
        assert_well_formed(&events);
        let fake = FakeAnthropic::start().await;
        fake.push(Reply::Events(events.clone()));
        let mut request = messages_request(true);
        request["tools"] = json!([{
            "name": "get_weather",
            "description": "Get the weather",
            "input_schema": { "type": "object", "properties": { "location": { "type": "string" } } },
        }]);
        let response = post(&fake, "/v1/messages", &request).await;
        let received = response.events();
        assert_eq!(received, events);
        assert_eq!(
            names(&received),
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        assert_eq!(
            received[1].1["content_block"],
            json!({ "type": "tool_use", "id": "toolu_01abc", "name": "get_weather", "input": {} })
        );
        let mut input = String::new();
        for (_, data) in &received[3..7] {
            assert_eq!(data["delta"]["type"], "input_json_delta");
            assert_eq!(data["delta"].as_object().unwrap().len(), 2);
            input.push_str(data["delta"]["partial_json"].as_str().unwrap());
        }
        assert_eq!(received[3].1["delta"]["partial_json"], "");
        let input: Value = serde_json::from_str(&input).unwrap();
        assert_eq!(input, json!({ "location": "Paris" }));
        assert_eq!(received[8].1["delta"]["stop_reason"], "tool_use");

        let message = FakeAnthropic::message_with_tool_use(
            Some("Let me check."),
            &[
                ("get_weather", "toolu_01a", json!({ "location": "Paris" })),
                ("get_time", "toolu_01b", json!({})),
            ],
        );
        assert_eq!(message["stop_reason"], "tool_use");
        assert_eq!(message["content"][0]["type"], "text");
        assert_eq!(
            message["content"][2],
            json!({ "type": "tool_use", "id": "toolu_01b", "name": "get_time", "input": {} })
        );
        assert_eq!(message["usage"]["input_tokens"], 20);
        assert_eq!(message["usage"]["output_tokens"], 3 + 3 + 1);
        fake.push(Reply::Message(message.clone()));
        let response = post(&fake, "/v1/messages", &messages_request(false)).await;
        assert_eq!(response.json(), message);
    }

    #[tokio::test]
    async fn thinking_comes_first_with_a_signature() {
        let fake = FakeAnthropic::start().await;
        let mut request = messages_request(false);
        request["max_tokens"] = json!(2048);
        request["thinking"] = json!({ "type": "enabled", "budget_tokens": 1024 });
        let body = post(&fake, "/v1/messages", &request).await.json();
        let content = body["content"].as_array().unwrap();
        assert_eq!(content.len(), 2);
        assert_eq!(content[0]["type"], "thinking");
        assert_eq!(content[0]["thinking"], THINKING_TEXT);
        assert!(!content[0]["signature"].as_str().unwrap().is_empty());
        assert_eq!(content[1]["text"], "Say hello\nto  the world");
        assert_eq!(body["usage"]["output_tokens"], 8 + 5);

        request["stream"] = json!(true);
        let events = post(&fake, "/v1/messages", &request).await.events();
        assert_well_formed(&events);
        assert_eq!(
            events[1].1["content_block"],
            json!({ "type": "thinking", "thinking": "", "signature": "" })
        );
        assert_eq!(events[2].0, "ping");
        let signature_at = events
            .iter()
            .position(|(_, data)| data["delta"]["type"] == "signature_delta")
            .unwrap();
        assert_eq!(events[signature_at + 1].1["type"], "content_block_stop");
        assert_eq!(events[signature_at + 2].1["content_block"]["type"], "text");
        assert_eq!(events[signature_at + 2].1["index"], 1);

        let events = FakeAnthropic::thinking_events("Two plus two is four.", "c2ln", "4");
        assert_well_formed(&events);
        let deltas: Vec<&Value> = events
            .iter()
            .filter(|(name, _)| name == "content_block_delta")
            .map(|(_, data)| &data["delta"])
            .collect();
        let thinking: String = deltas
            .iter()
            .filter_map(|delta| delta["thinking"].as_str())
            .collect();
        assert_eq!(thinking, "Two plus two is four.");
        assert_eq!(
            *deltas[deltas.len() - 2],
            json!({ "type": "signature_delta", "signature": "c2ln" })
        );
        assert_eq!(
            *deltas[deltas.len() - 1],
            json!({ "type": "text_delta", "text": "4" })
        );
        assert_eq!(events[events.len() - 2].1["usage"]["output_tokens"], 6);
    }

    #[tokio::test]
    async fn cached_prefixes_are_written_then_read() {
        let fake = FakeAnthropic::start().await;
        let long_system = "You are a careful assistant who repeats things exactly";
        let mut request = json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 100,
            "system": [
                { "type": "text", "text": long_system, "cache_control": { "type": "ephemeral" } },
            ],
            "messages": [{ "role": "user", "content": "one two three" }],
        });
        let usage = |body: &Value| {
            let usage = &body["usage"];
            (
                usage["input_tokens"].as_u64().unwrap(),
                usage["cache_creation_input_tokens"].as_u64().unwrap(),
                usage["cache_read_input_tokens"].as_u64().unwrap(),
            )
        };
        // First: the 9-word system prompt is written; only the message counts as input.
        let body = post(&fake, "/v1/messages", &request).await.json();
        assert_eq!(usage(&body), (3, 9, 0));
        assert_eq!(
            body["usage"]["cache_creation"]["ephemeral_5m_input_tokens"],
            9
        );
        // Again: the prefix is read.
        let body = post(&fake, "/v1/messages", &request).await.json();
        assert_eq!(usage(&body), (3, 0, 9));
        // Another model has its own cache.
        request["model"] = json!("claude-opus-4-1");
        let body = post(&fake, "/v1/messages", &request).await.json();
        assert_eq!(usage(&body), (3, 9, 0));
        request["model"] = json!("claude-sonnet-4-5");

        // The conversation grows, with a 1-hour breakpoint on its last turn: the system prompt
        // is read and the turns up to the breakpoint written.
        request["messages"] = json!([
            { "role": "user", "content": "one two three" },
            { "role": "assistant", "content": "one two three" },
            { "role": "user", "content": [{ "type": "text", "text": "four five",
                                             "cache_control": { "type": "ephemeral", "ttl": "1h" } }] },
        ]);
        let body = post(&fake, "/v1/messages", &request).await.json();
        assert_eq!(usage(&body), (0, 8, 9));
        assert_eq!(
            body["usage"]["cache_creation"]["ephemeral_1h_input_tokens"],
            8
        );
        // One more turn, the breakpoint moved to it: the last cached prefix, found by looking
        // back from the new breakpoint, is read.
        let messages = request["messages"].as_array_mut().unwrap();
        messages.push(json!({ "role": "assistant", "content": "four five" }));
        messages.push(json!({ "role": "user", "content": [
            { "type": "text", "text": "six", "cache_control": { "type": "ephemeral" } },
        ]}));
        messages[2]["content"][0]
            .as_object_mut()
            .unwrap()
            .remove("cache_control");
        let body = post(&fake, "/v1/messages", &request).await.json();
        assert_eq!(usage(&body), (0, 3, 17));

        // A changed prefix misses; a refused request writes nothing; clearing forgets all.
        request["system"][0]["text"] = json!("You are terse");
        fake.push(FakeAnthropic::overloaded());
        assert_eq!(post(&fake, "/v1/messages", &request).await.status, 529);
        let body = post(&fake, "/v1/messages", &request).await.json();
        assert_eq!(usage(&body), (0, 3 + 11, 0));
        let body = post(&fake, "/v1/messages", &request).await.json();
        assert_eq!(usage(&body), (0, 0, 14));
        fake.clear_cache();
        let body = post(&fake, "/v1/messages", &request).await.json();
        assert_eq!(usage(&body), (0, 14, 0));

        // A top-level cache_control marks the last block; streams report the split too.
        let request = json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 100,
            "cache_control": { "type": "ephemeral" },
            "messages": [{ "role": "user", "content": "seven eight" }],
            "stream": true,
        });
        let events = post(&fake, "/v1/messages", &request).await.events();
        let start = &events[0].1["message"]["usage"];
        assert_eq!(start["cache_creation_input_tokens"], 2);
        assert_eq!(start["input_tokens"], 0);
        let events = post(&fake, "/v1/messages", &request).await.events();
        assert_eq!(
            events[0].1["message"]["usage"]["cache_read_input_tokens"],
            2
        );
    }

    #[tokio::test]
    async fn prefixes_under_the_cache_minimum_are_not_cached() {
        let fake = FakeAnthropic::start().await.with_cache_minimum(5);
        let request = |text: &str| {
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 100,
                "messages": [{ "role": "user", "content": [
                    { "type": "text", "text": text, "cache_control": { "type": "ephemeral" } },
                ]}],
            })
        };
        for _ in 0..2 {
            let body = post(&fake, "/v1/messages", &request("too short"))
                .await
                .json();
            assert_eq!(body["usage"]["input_tokens"], 2);
            assert_eq!(body["usage"]["cache_read_input_tokens"], 0);
            assert_eq!(body["usage"]["cache_creation_input_tokens"], 0);
        }
        let body = post(&fake, "/v1/messages", &request("long enough to be cached"))
            .await
            .json();
        assert_eq!(body["usage"]["cache_creation_input_tokens"], 5);
    }

    #[tokio::test]
    async fn an_overloaded_529_and_a_server_error() {
        let fake = FakeAnthropic::start().await;
        fake.push(FakeAnthropic::overloaded());
        fake.push(FakeAnthropic::server_error());
        let response = post(&fake, "/v1/messages", &messages_request(false)).await;
        assert_eq!(response.status, 529);
        assert_eq!(
            response.error(),
            ("overloaded_error".to_owned(), "Overloaded".to_owned())
        );
        assert!(response.header("request-id").is_some());
        let response = post(&fake, "/v1/messages", &messages_request(true)).await;
        assert_eq!(response.status, 500);
        assert_eq!(response.error().0, "api_error");
        assert_eq!(fake.pending_replies(), 0);
    }

    #[tokio::test]
    async fn a_scripted_429_carries_retry_after_then_defaults_resume() {
        let fake = FakeAnthropic::start().await;
        fake.push(FakeAnthropic::rate_limited(7));
        let response = post(&fake, "/v1/messages", &messages_request(false)).await;
        assert_eq!(response.status, 429);
        let (kind, message) = response.error();
        assert_eq!(kind, "rate_limit_error");
        assert!(
            message.starts_with("This request would exceed your organization's rate limit"),
            "{message}"
        );
        assert_eq!(response.header("retry-after"), Some("7"));
        assert_eq!(
            response.header("anthropic-ratelimit-input-tokens-remaining"),
            Some("0")
        );
        for name in [
            "anthropic-ratelimit-requests-limit",
            "anthropic-ratelimit-requests-remaining",
            "anthropic-ratelimit-requests-reset",
            "anthropic-ratelimit-tokens-limit",
            "anthropic-ratelimit-tokens-remaining",
            "anthropic-ratelimit-tokens-reset",
            "anthropic-ratelimit-input-tokens-limit",
            "anthropic-ratelimit-input-tokens-reset",
            "anthropic-ratelimit-output-tokens-limit",
            "anthropic-ratelimit-output-tokens-remaining",
            "anthropic-ratelimit-output-tokens-reset",
        ] {
            assert!(response.header(name).is_some(), "{name}");
        }
        let reset = response
            .header("anthropic-ratelimit-input-tokens-reset")
            .unwrap();
        let reset = humantime::parse_rfc3339(reset).unwrap();
        assert!(reset > SystemTime::now() + Duration::from_secs(5));
        let response = post(&fake, "/v1/messages", &messages_request(false)).await;
        assert_eq!(response.status, 200);
    }

    #[tokio::test]
    async fn a_stream_can_fail_midway_with_an_error_event() {
        let fake = FakeAnthropic::start().await;
        let events = FakeAnthropic::thinking_events("Hmm", "c2ln", "Hello there");
        fake.push(Reply::EventsThenError {
            events: events[..4].to_vec(),
            error: json!({ "type": "overloaded_error", "message": "Overloaded" }),
        });
        let mut connection = Connection::open(&fake.base_url()).await;
        let response = connection
            .post(
                "/v1/messages",
                &GOOD_HEADERS,
                &messages_request(true).to_string(),
            )
            .await;
        assert_eq!(response.status, 200);
        assert!(
            response.body.contains("\n\nevent: error\ndata: {"),
            "{}",
            response.body
        );
        let received = response.events();
        assert_eq!(received.len(), 5);
        assert_eq!(received[..4], events[..4]);
        assert_eq!(
            received[4],
            (
                "error".to_owned(),
                json!({ "type": "error", "error": { "type": "overloaded_error", "message": "Overloaded" } })
            )
        );
        assert!(connection.closed().await);
    }

    #[tokio::test]
    async fn count_tokens_counts_tools_system_and_messages() {
        let fake = FakeAnthropic::start().await;
        let request = json!({
            "model": "claude-sonnet-4-5",
            "system": "Be brief.",
            "tools": [{
                "name": "get_weather",
                "description": "Get the weather",
                "input_schema": { "type": "object" },
            }],
            "messages": [
                { "role": "user", "content": [
                    { "type": "text", "text": "What is in this picture?" },
                    { "type": "image", "source": { "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo=" } },
                ]},
                { "role": "assistant", "content": [
                    { "type": "thinking", "thinking": "Let me look.", "signature": "c2ln" },
                    { "type": "tool_use", "id": "toolu_01a", "name": "get_weather", "input": { "city": "Paris" } },
                ]},
                { "role": "user", "content": [
                    { "type": "tool_result", "tool_use_id": "toolu_01a", "content": "Sunny and warm", "is_error": false },
                    { "type": "document", "source": { "type": "text", "media_type": "text/plain", "data": "a b c" } },
                ]},
            ],
        });
        let response = post(&fake, "/v1/messages/count_tokens", &request).await;
        assert_eq!(response.status, 200);
        // Tool: name, get_weather, description, 3 words, input_schema, type, object = 9;
        // system 2; text 5, image 100; thinking 0, tool use 1 + 2; tool result 3, document 3.
        assert_eq!(
            response.json(),
            json!({ "input_tokens": 9 + 2 + 5 + 100 + 3 + 3 + 3 })
        );
        assert_eq!(
            response.header("anthropic-ratelimit-input-tokens-remaining"),
            Some("1999875")
        );
        // Counting needs no max_tokens, and never touches the cache.
        let response = post(&fake, "/v1/messages/count_tokens", &json!({ "model": "m" })).await;
        assert_eq!(response.status, 400);
        assert_eq!(response.error().1, "messages: Field required");
        let mut request = json!({
            "model": "claude-sonnet-4-5",
            "cache_control": { "type": "ephemeral" },
            "messages": [{ "role": "user", "content": "nine ten" }],
        });
        let response = post(&fake, "/v1/messages/count_tokens", &request).await;
        assert_eq!(response.json(), json!({ "input_tokens": 2 }));
        request["max_tokens"] = json!(10);
        let body = post(&fake, "/v1/messages", &request).await.json();
        assert_eq!(body["usage"]["cache_creation_input_tokens"], 2);
    }

    #[tokio::test]
    async fn a_hang_delays_the_default_answer() {
        let fake = FakeAnthropic::start().await;
        fake.push(Reply::Hang(Duration::from_secs(30)));
        fake.push(Reply::Hang(Duration::from_millis(10)));
        let request = messages_request(false);
        let hung = tokio::time::timeout(
            Duration::from_millis(200),
            post(&fake, "/v1/messages", &request),
        )
        .await;
        assert!(hung.is_err(), "the first request should still be waiting");
        let response = post(&fake, "/v1/messages", &request).await;
        assert_eq!(response.status, 200);
        assert_eq!(
            response.json()["content"][0]["text"],
            "Say hello\nto  the world"
        );
        assert_eq!(fake.pending_replies(), 0);
    }

    #[tokio::test]
    async fn an_event_delay_paces_the_stream() {
        let fake = FakeAnthropic::start()
            .await
            .with_event_delay(Duration::from_secs(30));
        let mut connection = Connection::open(&fake.base_url()).await;
        let body = messages_request(true).to_string();
        let request = format!(
            "POST /v1/messages HTTP/1.1\r\nHost: {}\r\nx-api-key: {DEFAULT_API_KEY}\r\nanthropic-version: {API_VERSION}\r\nContent-Length: {}\r\n\r\n{body}",
            connection.host(),
            body.len()
        );
        // The headers and the first event arrive at once; the second waits for the delay.
        let received = connection
            .send_until(&request, "event: message_start")
            .await;
        assert!(received.starts_with("HTTP/1.1 200 OK\r\n"), "{received}");
        assert_eq!(received.matches("event: ").count(), 1, "{received}");
        assert!(
            connection.quiet_for(Duration::from_millis(200)).await,
            "the second event should wait"
        );
    }

    #[test]
    fn word_pieces_put_back_together_give_the_text() {
        for text in ["", "one", " lead and  trail ", "a\nb\tc"] {
            assert_eq!(word_pieces(text).concat(), text);
        }
        assert_eq!(word_pieces(" lead and "), [" lead", " and "]);
        assert_eq!(
            json_tokens(&json!({ "a b": [1, true, null, "c d e"] })),
            2 + 3 + 3
        );
    }
}
