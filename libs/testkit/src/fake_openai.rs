//! A fake OpenAI API server for tests.
//!
//! It answers, over HTTP on `127.0.0.1`, the two endpoints Switchyard's OpenAI adapter calls, in
//! the wire format OpenAI documents (<https://platform.openai.com/docs/api-reference>), and every
//! body it makes up itself validates against OpenAI's published contract
//! ([`crate::openai_contract`]):
//!
//! - `POST /v1/chat/completions`: a `chat.completion` object, or with `"stream": true` a
//!   `text/event-stream` of `data: {chat.completion.chunk}` events ended by `data: [DONE]`. With
//!   `stream_options.include_usage` every chunk carries `"usage": null` and a last chunk before
//!   `[DONE]` has `"choices": []` and the usage. Chunks carry an `obfuscation` padding string
//!   unless `stream_options.include_obfuscation` is `false`, as OpenAI's do.
//! - `POST /v1/embeddings`: a `list` of `embedding` objects, one per input (a string, strings,
//!   a token array or token arrays), unit vectors derived from the input, of `dimensions`
//!   values (default 3072 for `text-embedding-3-large`, 1536 otherwise), as floats or, with
//!   `"encoding_format": "base64"`, as base64 of little-endian `f32`s (OpenAI's own format, which
//!   its contract does not describe: `embedding` is declared an array there).
//!
//! Every request needs `Authorization: Bearer <key>` with the configured key (default
//! [`DEFAULT_API_KEY`]): a wrong key gets 401 `invalid_api_key`, a missing one (or one not
//! given as `Bearer`) OpenAI's "You didn't provide an API key" 401. A body that is not JSON gets OpenAI's 400, a chat request
//! without `model` or `messages` (an embeddings request without `model` or `input`) OpenAI's 400
//! for it; unknown paths and methods answer 404 `Invalid URL (METHOD /path)`. Responses carry
//! `x-request-id`, `openai-organization`, `openai-processing-ms` and `openai-version`, and
//! successful ones the `x-ratelimit-*` headers (10 000 requests, counting down by one per request
//! received, and 30 000 000 tokens, less the request's prompt tokens).
//!
//! Unless scripted with [`FakeOpenAi::push`], a chat completion echoes the text of the last user
//! message, and the "tokens" of the usage are whitespace-separated words ([`count_tokens`]):
//! prompt tokens are the words of every message's text, completion tokens those of the answer.
//! Only one choice is returned, whatever `n`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State as AxumState};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::StreamExt as _;
use rand::Rng as _;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::openai_contract;

/// The API key the fake accepts unless [`FakeOpenAi::with_api_key`] sets another.
pub const DEFAULT_API_KEY: &str = "sk-test";

/// The model named in the bodies the helpers make (the server's own answers name the model of
/// the request instead).
pub const HELPER_MODEL: &str = "gpt-4o-mini-2024-07-18";

/// Prompt tokens reported by helper-made bodies, which do not see the prompt.
const HELPER_PROMPT_TOKENS: u64 = 20;

/// The rate limits reported on successful responses.
const LIMIT_REQUESTS: u64 = 10_000;
const LIMIT_TOKENS: u64 = 30_000_000;

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The path, such as `/v1/chat/completions`.
    pub path: String,
    /// The request's headers.
    pub headers: HeaderMap,
    /// The JSON body; `null` when empty, a string holding the text when not JSON.
    pub body: Value,
}

/// A scripted answer to one request, whatever its endpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// 200 with this JSON body, such as a `chat.completion` object.
    Completion(Value),
    /// 200 with a stream of these chunk bodies as `data:` events, then `data: [DONE]`.
    Chunks(Vec<Value>),
    /// This status and JSON body, with these headers added to the usual ones.
    Error {
        /// The HTTP status, such as 429.
        status: u16,
        /// The body, normally `{"error": {"message", "type", "param", "code"}}`.
        body: Value,
        /// Extra headers, such as `retry-after`.
        headers: Vec<(String, String)>,
    },
    /// Waits this long, then answers as if nothing were scripted.
    Hang(Duration),
    /// A stream that fails midway, as OpenAI's do: these chunks, then one `data:` event with the
    /// error and the end of the stream, without `[DONE]`; the connection is then closed.
    StreamThenError {
        /// The chunks sent before the error.
        chunks: Vec<Value>,
        /// The error object (`{"message", "type", "param", "code"}`), sent as
        /// `{"error": error}`; a value that already has an `error` key is sent as it is.
        error: Value,
    },
}

#[derive(Debug)]
struct State {
    api_key: String,
    organization: String,
    chunk_delay: Duration,
    replies: VecDeque<Reply>,
    requests: Vec<Recorded>,
}

type Shared = Arc<Mutex<State>>;

/// A running fake OpenAI server. It stops when dropped.
#[derive(Debug)]
pub struct FakeOpenAi {
    base_url: String,
    state: Shared,
    server: JoinHandle<()>,
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeOpenAi {
    /// Starts a server on `127.0.0.1` that accepts the key [`DEFAULT_API_KEY`].
    pub async fn start() -> FakeOpenAi {
        let state = Arc::new(Mutex::new(State {
            api_key: DEFAULT_API_KEY.to_owned(),
            organization: "user-switchyard-test".to_owned(),
            chunk_delay: Duration::ZERO,
            replies: VecDeque::new(),
            requests: Vec::new(),
        }));
        // Binding fails only on a host without a loopback interface, where no test can run.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fake OpenAI to 127.0.0.1");
        let address = listener.local_addr().expect("the fake OpenAI's address");
        // Image and audio parts make large bodies; OpenAI takes them, so the fake does too.
        let app = Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::disable())
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                eprintln!("fake OpenAI stopped: {err}");
            }
        });
        FakeOpenAi {
            base_url: format!("http://{address}/v1"),
            state,
            server,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The base URL to give a client, such as `http://127.0.0.1:41234/v1`.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// Accepts `key` instead of [`DEFAULT_API_KEY`].
    pub fn with_api_key(self, key: &str) -> Self {
        self.state().api_key = key.to_owned();
        self
    }

    /// The `openai-organization` header of the responses.
    pub fn with_organization(self, organization: &str) -> Self {
        self.state().organization = organization.to_owned();
        self
    }

    /// Waits this long between the events of a stream, for tests that act mid-stream.
    pub fn with_chunk_delay(self, delay: Duration) -> Self {
        self.state().chunk_delay = delay;
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

    /// The contract violations of the requests received on the two endpoints, each as
    /// `{request index} {path}{instance path}: {message}`; empty when all are valid.
    pub fn contract_violations(&self) -> Vec<String> {
        self.requests()
            .iter()
            .enumerate()
            .flat_map(|(index, request)| {
                let schema = match request.path.as_str() {
                    "/v1/chat/completions" => "CreateChatCompletionRequest",
                    "/v1/embeddings" => "CreateEmbeddingRequest",
                    _ => return Vec::new(),
                };
                match openai_contract::validate(schema, &request.body) {
                    Ok(()) => Vec::new(),
                    Err(errors) => errors
                        .into_iter()
                        .map(|error| format!("{index} {}{error}", request.path))
                        .collect(),
                }
            })
            .collect()
    }

    /// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
    pub fn error_body(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Value {
        json!({ "error": { "message": message, "type": kind, "param": param, "code": code } })
    }

    /// A 429 as OpenAI sends it when the requests-per-minute limit is reached, with its
    /// `x-ratelimit-*` headers and `retry-after: {retry_after_secs}`.
    pub fn rate_limited(retry_after_secs: u64) -> Reply {
        let message = format!(
            "Rate limit reached for gpt-4o-mini in organization org-switchyardtest on requests \
             per min (RPM): Limit 3, Used 3, Requested 1. Please try again in \
             {retry_after_secs}s. Visit https://platform.openai.com/account/rate-limits to \
             learn more."
        );
        let headers = [
            ("x-ratelimit-limit-requests", "3".to_owned()),
            ("x-ratelimit-remaining-requests", "0".to_owned()),
            ("x-ratelimit-reset-requests", format!("{retry_after_secs}s")),
            ("x-ratelimit-limit-tokens", "200000".to_owned()),
            ("x-ratelimit-remaining-tokens", "199980".to_owned()),
            ("x-ratelimit-reset-tokens", "6ms".to_owned()),
            ("retry-after", retry_after_secs.to_string()),
        ];
        Reply::Error {
            status: 429,
            body: Self::error_body(&message, "requests", None, Some("rate_limit_exceeded")),
            headers: headers
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value))
                .collect(),
        }
    }

    /// A 500 `server_error`, as OpenAI sends during an outage.
    pub fn server_error() -> Reply {
        Reply::Error {
            status: 500,
            body: Self::error_body(
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
                None,
            ),
            headers: Vec::new(),
        }
    }

    /// The chunks of a streamed answer that calls one function, as OpenAI streams it: a first
    /// chunk with the role, the call's `index`, `id`, `type` and `function.name` and empty
    /// `arguments`; one chunk per piece with only `index` and `function.arguments`; a last chunk
    /// with an empty delta and `finish_reason: "tool_calls"`. Push them with [`Reply::Chunks`].
    pub fn tool_call_chunks(name: &str, id: &str, args_pieces: &[&str]) -> Vec<Value> {
        let stream = ChunkStream::new(HELPER_MODEL, false, true);
        let mut chunks = vec![stream.chunk(
            json!({
                "role": "assistant",
                "content": null,
                "tool_calls": [{
                    "index": 0,
                    "id": id,
                    "type": "function",
                    "function": { "name": name, "arguments": "" },
                }],
                "refusal": null,
            }),
            None,
        )];
        chunks.extend(args_pieces.iter().map(|piece| {
            stream.chunk(
                json!({ "tool_calls": [{ "index": 0, "function": { "arguments": piece } }] }),
                None,
            )
        }));
        chunks.push(stream.chunk(json!({}), Some("tool_calls")));
        chunks
    }

    /// A `chat.completion` whose message calls functions, given as `(name, id, arguments)`, with
    /// `finish_reason: "tool_calls"`, for [`HELPER_MODEL`]; its usage reports 20 prompt tokens
    /// and the words of the names and arguments as completion tokens. Push it with
    /// [`Reply::Completion`].
    pub fn completion_with_tool_calls(calls: &[(&str, &str, &str)]) -> Value {
        let tool_calls: Vec<Value> = calls
            .iter()
            .map(|(name, id, arguments)| {
                json!({
                    "id": id,
                    "type": "function",
                    "function": { "name": name, "arguments": arguments },
                })
            })
            .collect();
        let completion_tokens = calls
            .iter()
            .map(|(name, _, arguments)| count_tokens(name) + count_tokens(arguments))
            .sum();
        let message = json!({
            "role": "assistant",
            "content": null,
            "tool_calls": tool_calls,
            "refusal": null,
            "annotations": [],
        });
        completion_body(
            HELPER_MODEL,
            message,
            "tool_calls",
            HELPER_PROMPT_TOKENS,
            completion_tokens,
        )
    }
}

/// The fake's token count: whitespace-separated words.
pub fn count_tokens(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

fn lock(state: &Shared) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A random id in OpenAI's style, such as `chatcmpl-…` or `call_…`.
fn random_id(prefix: &str, length: usize) -> String {
    let mut id = uuid::Uuid::new_v4().simple().to_string();
    id.push_str(&uuid::Uuid::new_v4().simple().to_string());
    id.truncate(length);
    format!("{prefix}{id}")
}

/// A `system_fingerprint` that stays the same for the life of the process, like a backend's.
fn system_fingerprint() -> String {
    let mut hasher = DefaultHasher::new();
    std::process::id().hash(&mut hasher);
    format!("fp_{:010x}", hasher.finish() & 0xff_ffff_ffff)
}

fn usage(prompt_tokens: u64, completion_tokens: u64) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": { "cached_tokens": 0, "audio_tokens": 0 },
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    })
}

fn completion_body(
    model: &str,
    message: Value,
    finish_reason: &str,
    prompt_tokens: u64,
    completion_tokens: u64,
) -> Value {
    json!({
        "id": random_id("chatcmpl-", 29),
        "object": "chat.completion",
        "created": unix_now(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
        "usage": usage(prompt_tokens, completion_tokens),
        "service_tier": "default",
        "system_fingerprint": system_fingerprint(),
    })
}

/// The fields shared by the chunks of one stream.
struct ChunkStream {
    id: String,
    created: u64,
    model: String,
    fingerprint: String,
    include_usage: bool,
    obfuscation: bool,
}

impl ChunkStream {
    fn new(model: &str, include_usage: bool, obfuscation: bool) -> Self {
        ChunkStream {
            id: random_id("chatcmpl-", 29),
            created: unix_now(),
            model: model.to_owned(),
            fingerprint: system_fingerprint(),
            include_usage,
            obfuscation,
        }
    }

    fn envelope(&self, choices: Value, usage: Value) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "service_tier": "default",
            "system_fingerprint": self.fingerprint,
            "choices": choices,
        });
        if self.include_usage {
            chunk["usage"] = usage;
        }
        if self.obfuscation {
            // Pads chunks to hide their lengths; any short random string will do.
            chunk["obfuscation"] = json!(random_id("", rand::thread_rng().gen_range(1..16)));
        }
        chunk
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        self.envelope(
            json!([{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish_reason,
            }]),
            Value::Null,
        )
    }

    /// The last chunk with `stream_options.include_usage`.
    fn usage(&self, prompt_tokens: u64, completion_tokens: u64) -> Value {
        self.envelope(json!([]), usage(prompt_tokens, completion_tokens))
    }
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
    // Trailing whitespace stays with the last word rather than making a chunk of its own.
    match pieces.last_mut() {
        Some(last) if current.chars().all(char::is_whitespace) => last.push_str(&current),
        _ if !current.is_empty() => pieces.push(current),
        _ => {}
    }
    pieces
}

// ---- requests ----

/// The text of a message's `content`: a string, or the `text` of its text parts, one per line.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|part| part.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn messages(body: &Value) -> &[Value] {
    body.get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn prompt_tokens(body: &Value) -> u64 {
    messages(body)
        .iter()
        .filter_map(|message| message.get("content"))
        .map(|content| count_tokens(&content_text(content)))
        .sum()
}

fn last_user_text(body: &Value) -> String {
    messages(body)
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

// ---- responses ----

/// What to send, before the headers common to every response are added.
enum Answer {
    Json(StatusCode, Value, Vec<(String, String)>),
    /// Events, without the `data: ` prefix; whether the stream ends with an error.
    Stream(Vec<String>, bool),
}

fn error_answer(
    status: StatusCode,
    message: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Answer {
    Answer::Json(
        status,
        FakeOpenAi::error_body(message, "invalid_request_error", param, code),
        Vec::new(),
    )
}

/// Keys appear in OpenAI's messages masked, keeping their first three and last four characters.
fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 7 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 7))
}

fn authenticate(headers: &HeaderMap, api_key: &str) -> Result<(), Answer> {
    // A key not given as `Bearer <key>` counts as no key.
    let Some(key) = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|key| !key.is_empty())
    else {
        return Err(error_answer(
            StatusCode::UNAUTHORIZED,
            "You didn't provide an API key. You need to provide your API key in an Authorization \
             header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password \
             field (with blank username) if you're accessing the API from your browser and are \
             prompted for a username. You can obtain an API key from \
             https://platform.openai.com/account/api-keys.",
            None,
            None,
        ));
    };
    if key == api_key {
        return Ok(());
    }
    Err(error_answer(
        StatusCode::UNAUTHORIZED,
        &format!(
            "Incorrect API key provided: {}. You can find your API key at \
             https://platform.openai.com/account/api-keys.",
            mask_key(key)
        ),
        None,
        Some("invalid_api_key"),
    ))
}

/// OpenAI's answer to a missing required field.
fn missing(param: &str) -> Answer {
    error_answer(
        StatusCode::BAD_REQUEST,
        &format!("Missing required parameter: '{param}'."),
        Some(param),
        Some("missing_required_parameter"),
    )
}

/// Checks what OpenAI checks before anything else: the body is JSON with the required fields.
fn check_request(endpoint: Endpoint, body: &Value) -> Result<(), Answer> {
    if !body.is_object() {
        return Err(error_answer(
            StatusCode::BAD_REQUEST,
            "We could not parse the JSON body of your request. (HINT: This likely means you \
             aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, \
             but what was sent was not valid JSON. If you have trouble figuring out how to fix \
             this, please contact us through our help center at help.openai.com.)",
            None,
            None,
        ));
    }
    if body.get("model").is_none() {
        return Err(error_answer(
            StatusCode::BAD_REQUEST,
            "you must provide a model parameter",
            None,
            None,
        ));
    }
    let required = match endpoint {
        Endpoint::Chat => "messages",
        Endpoint::Embeddings => "input",
    };
    if body.get(required).is_none() {
        return Err(missing(required));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Embeddings,
}

fn default_answer(endpoint: Endpoint, body: &Value) -> Answer {
    match endpoint {
        Endpoint::Chat => default_chat(body),
        Endpoint::Embeddings => Answer::Json(StatusCode::OK, default_embeddings(body), Vec::new()),
    }
}

fn default_chat(body: &Value) -> Answer {
    let model = model_of(body);
    let text = last_user_text(body);
    let prompt_tokens = prompt_tokens(body);
    let completion_tokens = count_tokens(&text);
    if body.get("stream") != Some(&Value::Bool(true)) {
        let message = json!({
            "role": "assistant",
            "content": text,
            "refusal": null,
            "annotations": [],
        });
        let completion = completion_body(&model, message, "stop", prompt_tokens, completion_tokens);
        return Answer::Json(StatusCode::OK, completion, Vec::new());
    }
    let options = body.get("stream_options");
    let option = |name: &str| options.and_then(|o| o.get(name)).and_then(Value::as_bool);
    let include_usage = option("include_usage") == Some(true);
    let stream = ChunkStream::new(
        &model,
        include_usage,
        option("include_obfuscation") != Some(false),
    );
    let mut chunks = vec![stream.chunk(
        json!({ "role": "assistant", "content": "", "refusal": null }),
        None,
    )];
    chunks.extend(
        word_pieces(&text)
            .into_iter()
            .map(|piece| stream.chunk(json!({ "content": piece }), None)),
    );
    chunks.push(stream.chunk(json!({}), Some("stop")));
    if include_usage {
        chunks.push(stream.usage(prompt_tokens, completion_tokens));
    }
    stream_answer(chunks)
}

fn stream_answer(chunks: Vec<Value>) -> Answer {
    let mut events: Vec<String> = chunks.iter().map(Value::to_string).collect();
    events.push("[DONE]".to_owned());
    Answer::Stream(events, false)
}

/// The inputs of an embeddings request, as texts to embed and their token counts.
fn embedding_inputs(input: &Value) -> Vec<(String, u64)> {
    match input {
        Value::String(text) => vec![(text.clone(), count_tokens(text))],
        Value::Array(items) if items.iter().all(Value::is_number) => {
            vec![(input.to_string(), items.len() as u64)]
        }
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(text) => (text.clone(), count_tokens(text)),
                Value::Array(tokens) => (item.to_string(), tokens.len() as u64),
                other => (other.to_string(), 1),
            })
            .collect(),
        other => vec![(other.to_string(), 1)],
    }
}

fn input_tokens(body: &Value) -> u64 {
    embedding_inputs(body.get("input").unwrap_or(&Value::Null))
        .iter()
        .map(|(_, tokens)| tokens)
        .sum()
}

/// A unit vector that depends only on the text, so that equal inputs embed equally.
fn embed(text: &str, dimensions: usize) -> Vec<f32> {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    // xorshift64*, seeded from the text; never zero, as xorshift needs.
    let mut seed = hasher.finish() | 1;
    let mut values: Vec<f32> = (0..dimensions)
        .map(|_| {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            let bits = seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
            (bits as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        values.iter_mut().for_each(|v| *v /= norm);
    }
    values
}

fn default_embeddings(body: &Value) -> Value {
    let model = model_of(body);
    let dimensions = body
        .get("dimensions")
        .and_then(Value::as_u64)
        .and_then(|d| usize::try_from(d).ok())
        .filter(|d| (1..=16_384).contains(d))
        .unwrap_or(if model == "text-embedding-3-large" {
            3072
        } else {
            1536
        });
    let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let inputs = embedding_inputs(body.get("input").unwrap_or(&Value::Null));
    let tokens = input_tokens(body);
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, (text, _))| {
            let vector = embed(text, dimensions);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                json!(BASE64.encode(bytes))
            } else {
                json!(vector)
            };
            json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    })
}

/// The answer to a scripted reply; `None` for [`Reply::Hang`], which answers by default once
/// the wait is over.
fn scripted_answer(reply: Reply) -> Option<Answer> {
    Some(match reply {
        Reply::Completion(body) => Answer::Json(StatusCode::OK, body, Vec::new()),
        Reply::Chunks(chunks) => stream_answer(chunks),
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
        Reply::StreamThenError { chunks, error } => {
            let error = if error.get("error").is_some() {
                error
            } else {
                json!({ "error": error })
            };
            let mut events: Vec<String> = chunks.iter().map(Value::to_string).collect();
            events.push(error.to_string());
            Answer::Stream(events, true)
        }
    })
}

fn set_header(headers: &mut HeaderMap, name: &str, value: &str) {
    match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
        (Ok(name), Ok(value)) => {
            headers.insert(name, value);
        }
        _ => eprintln!("fake OpenAI: skipping the invalid header {name:?}: {value:?}"),
    }
}

struct Common {
    organization: String,
    started: Instant,
    /// Requests received so far, for `x-ratelimit-remaining-requests`.
    served: u64,
    prompt_tokens: u64,
    chunk_delay: Duration,
}

fn respond(answer: Answer, common: &Common) -> Response {
    let (status, content_type, body, extra, closes) = match answer {
        Answer::Json(status, body, extra) => (
            status,
            "application/json",
            Body::from(body.to_string()),
            extra,
            false,
        ),
        Answer::Stream(events, closes) => {
            let delay = common.chunk_delay;
            let stream = futures::stream::iter(events.into_iter().enumerate()).then(
                move |(index, event)| async move {
                    if index > 0 && !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    Ok::<_, Infallible>(Bytes::from(format!("data: {event}\n\n")))
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
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    set_header(headers, "content-type", content_type);
    set_header(headers, "x-request-id", &random_id("req_", 32));
    set_header(headers, "openai-organization", &common.organization);
    set_header(
        headers,
        "openai-processing-ms",
        &common.started.elapsed().as_millis().to_string(),
    );
    set_header(headers, "openai-version", "2020-10-01");
    set_header(headers, "access-control-expose-headers", "X-Request-ID");
    if status.is_success() {
        let remaining_requests = LIMIT_REQUESTS.saturating_sub(common.served);
        let remaining_tokens = LIMIT_TOKENS.saturating_sub(common.prompt_tokens);
        for (name, value) in [
            ("x-ratelimit-limit-requests", LIMIT_REQUESTS.to_string()),
            (
                "x-ratelimit-remaining-requests",
                remaining_requests.to_string(),
            ),
            ("x-ratelimit-reset-requests", "6ms".to_owned()),
            ("x-ratelimit-limit-tokens", LIMIT_TOKENS.to_string()),
            ("x-ratelimit-remaining-tokens", remaining_tokens.to_string()),
            ("x-ratelimit-reset-tokens", "0s".to_owned()),
        ] {
            set_header(headers, name, &value);
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

async fn handle(
    AxumState(state): AxumState<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let path = uri.path().to_owned();
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
    };
    let endpoint = match (method.as_str(), path.as_str()) {
        ("POST", "/v1/chat/completions") => Some(Endpoint::Chat),
        ("POST", "/v1/embeddings") => Some(Endpoint::Embeddings),
        _ => None,
    };
    let mut common = Common {
        organization: String::new(),
        started,
        served: 0,
        prompt_tokens: match endpoint {
            Some(Endpoint::Embeddings) => input_tokens(&body),
            _ => prompt_tokens(&body),
        },
        chunk_delay: Duration::ZERO,
    };
    let outcome = {
        let mut state = lock(&state);
        state.requests.push(Recorded {
            path: path.clone(),
            headers: headers.clone(),
            body: body.clone(),
        });
        common.organization = state.organization.clone();
        common.served = state.requests.len() as u64;
        common.chunk_delay = state.chunk_delay;
        authenticate(&headers, &state.api_key).and_then(|()| {
            let Some(endpoint) = endpoint else {
                return Err(error_answer(
                    StatusCode::NOT_FOUND,
                    &format!("Invalid URL ({method} {path})"),
                    None,
                    None,
                ));
            };
            check_request(endpoint, &body)?;
            Ok((endpoint, state.replies.pop_front()))
        })
    };
    let answer = match outcome {
        Err(answer) => answer,
        Ok((endpoint, reply)) => {
            if let Some(Reply::Hang(wait)) = reply {
                tokio::time::sleep(wait).await;
            }
            reply
                .and_then(scripted_answer)
                .unwrap_or_else(|| default_answer(endpoint, &body))
        }
    };
    respond(answer, &common)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpStream;

    use super::*;

    struct HttpResponse {
        status: u16,
        /// Lower-case names.
        headers: Vec<(String, String)>,
        body: String,
    }

    impl HttpResponse {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }

        fn json(&self) -> Value {
            serde_json::from_str(&self.body).unwrap()
        }

        /// The `data:` payloads of an event stream.
        fn events(&self) -> Vec<String> {
            assert_eq!(
                self.header("content-type"),
                Some("text/event-stream; charset=utf-8")
            );
            self.body
                .split_terminator("\n\n")
                .map(|event| event.strip_prefix("data: ").unwrap().to_owned())
                .collect()
        }

        /// The JSON events of a stream, without `[DONE]`.
        fn chunks(&self) -> Vec<Value> {
            self.events()
                .iter()
                .filter(|event| *event != "[DONE]")
                .map(|event| serde_json::from_str(event).unwrap())
                .collect()
        }
    }

    /// A keep-alive HTTP/1.1 connection to the fake.
    struct Connection {
        stream: BufReader<TcpStream>,
        host: String,
    }

    impl Connection {
        async fn open(fake: &FakeOpenAi) -> Connection {
            let host = fake
                .base_url()
                .trim_start_matches("http://")
                .trim_end_matches("/v1")
                .to_owned();
            let stream = TcpStream::connect(&host).await.unwrap();
            Connection {
                stream: BufReader::new(stream),
                host,
            }
        }

        async fn post(&mut self, path: &str, key: Option<&str>, body: &str) -> HttpResponse {
            let auth = key
                .map(|k| format!("Authorization: Bearer {k}\r\n"))
                .unwrap_or_default();
            let request = format!(
                "POST {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                self.host,
                body.len()
            );
            self.send(&request).await
        }

        /// Sends a raw request and reads its response.
        async fn send(&mut self, request: &str) -> HttpResponse {
            self.stream.write_all(request.as_bytes()).await.unwrap();
            let mut line = String::new();
            self.stream.read_line(&mut line).await.unwrap();
            let status = line[9..12].parse().unwrap();
            let mut headers = Vec::new();
            loop {
                line.clear();
                self.stream.read_line(&mut line).await.unwrap();
                let Some((name, value)) = line.trim_end().split_once(": ") else {
                    break;
                };
                headers.push((name.to_ascii_lowercase(), value.to_owned()));
            }
            let mut response = HttpResponse {
                status,
                headers,
                body: String::new(),
            };
            let mut body = Vec::new();
            if let Some(length) = response.header("content-length") {
                body.resize(length.parse().unwrap(), 0);
                self.stream.read_exact(&mut body).await.unwrap();
            } else if response.header("transfer-encoding") == Some("chunked") {
                loop {
                    line.clear();
                    self.stream.read_line(&mut line).await.unwrap();
                    let size = usize::from_str_radix(line.trim_end(), 16).unwrap();
                    let mut chunk = vec![0; size + 2];
                    self.stream.read_exact(&mut chunk).await.unwrap();
                    if size == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..size]);
                }
            } else {
                self.stream.read_to_end(&mut body).await.unwrap();
            }
            response.body = String::from_utf8(body).unwrap();
            response
        }

        /// Whether the server closed the connection.
        async fn closed(&mut self) -> bool {
            let mut byte = [0u8; 1];
            matches!(self.stream.read(&mut byte).await, Ok(0) | Err(_))
        }
    }

    async fn post(fake: &FakeOpenAi, path: &str, body: &Value) -> HttpResponse {
        Connection::open(fake)
            .await
            .post(path, Some(DEFAULT_API_KEY), &body.to_string())
            .await
    }

    fn chat_request(stream: bool) -> Value {
        json!({
            "model": "gpt-4o-mini",
            "messages": [
                { "role": "system", "content": "You repeat things." },
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

    fn assert_valid(schema: &str, body: &Value) {
        if let Err(errors) = openai_contract::validate(schema, body) {
            panic!("{schema}: {errors:#?}\n{body:#}");
        }
    }

    #[tokio::test]
    async fn a_default_completion_echoes_the_last_user_message() {
        let fake = FakeOpenAi::start().await.with_organization("org-acme");
        assert!(fake.base_url().starts_with("http://127.0.0.1:"));
        assert!(fake.base_url().ends_with("/v1"));
        let mut connection = Connection::open(&fake).await;
        let request = chat_request(false);
        let response = connection
            .post(
                "/v1/chat/completions",
                Some("sk-test"),
                &request.to_string(),
            )
            .await;
        assert_eq!(response.status, 200);
        assert_eq!(response.header("content-type"), Some("application/json"));
        let body = response.json();
        assert_valid("CreateChatCompletionResponse", &body);
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], "gpt-4o-mini");
        assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
        let choice = &body["choices"][0];
        assert_eq!(choice["message"]["role"], "assistant");
        assert_eq!(choice["message"]["content"], "Say hello\nto  the world");
        assert_eq!(choice["finish_reason"], "stop");
        // Words: 3 + 2 + 2 + 5 in the prompt, 5 in the answer.
        assert_eq!(body["usage"]["prompt_tokens"], 12);
        assert_eq!(body["usage"]["completion_tokens"], 5);
        assert_eq!(body["usage"]["total_tokens"], 17);

        assert!(response.header("x-request-id").unwrap().starts_with("req_"));
        assert_eq!(response.header("openai-organization"), Some("org-acme"));
        assert!(response.header("openai-processing-ms").is_some());
        assert_eq!(response.header("x-ratelimit-limit-requests"), Some("10000"));
        assert_eq!(
            response.header("x-ratelimit-remaining-requests"),
            Some("9999")
        );
        for name in [
            "x-ratelimit-reset-requests",
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ] {
            assert!(response.header(name).is_some(), "{name}");
        }

        // The connection is kept alive for the next request.
        let embeddings = json!({ "model": "text-embedding-3-small", "input": "hi" });
        let response = connection
            .post("/v1/embeddings", Some("sk-test"), &embeddings.to_string())
            .await;
        assert_eq!(response.status, 200);
        assert_eq!(
            response.header("x-ratelimit-remaining-requests"),
            Some("9998")
        );

        let requests = fake.requests();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].path, "/v1/chat/completions");
        assert_eq!(requests[0].body, request);
        assert_eq!(requests[0].headers["authorization"], "Bearer sk-test");
        assert_eq!(requests[1].path, "/v1/embeddings");
        assert_eq!(fake.contract_violations(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn streaming_splits_the_answer_into_words_and_reports_usage_last() {
        let fake = FakeOpenAi::start().await;
        let mut request = chat_request(true);
        request["stream_options"] = json!({ "include_usage": true });
        let response = post(&fake, "/v1/chat/completions", &request).await;
        assert_eq!(response.status, 200);
        assert_eq!(response.events().last().unwrap(), "[DONE]");
        let chunks = response.chunks();
        for chunk in &chunks {
            assert_valid("CreateChatCompletionStreamResponse", chunk);
            assert_eq!(chunk["id"], chunks[0]["id"]);
            assert_eq!(chunk["model"], "gpt-4o-mini");
            assert!(chunk["obfuscation"].is_string());
        }
        let (last, answer) = chunks.split_last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["prompt_tokens"], 12);
        assert_eq!(last["usage"]["completion_tokens"], 5);
        assert!(answer.iter().all(|chunk| chunk["usage"].is_null()));
        assert!(answer.iter().all(|chunk| chunk.get("usage").is_some()));
        assert_eq!(
            answer[0]["choices"][0]["delta"],
            json!({ "role": "assistant", "content": "", "refusal": null })
        );
        let (finish, words) = answer.split_last().unwrap();
        assert_eq!(finish["choices"][0]["delta"], json!({}));
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        let pieces: Vec<&str> = words[1..]
            .iter()
            .map(|chunk| chunk["choices"][0]["delta"]["content"].as_str().unwrap())
            .collect();
        assert_eq!(pieces, ["Say", " hello", "\nto", "  the", " world"]);
        assert!(
            words[1..]
                .iter()
                .all(|c| c["choices"][0]["finish_reason"].is_null())
        );

        // Without include_usage there is no usage at all; obfuscation can be turned off.
        let mut request = chat_request(true);
        request["stream_options"] = json!({ "include_obfuscation": false });
        let chunks = post(&fake, "/v1/chat/completions", &request).await.chunks();
        assert_eq!(chunks.len(), 7);
        for chunk in &chunks {
            assert_valid("CreateChatCompletionStreamResponse", chunk);
            assert!(chunk.get("usage").is_none());
            assert!(chunk.get("obfuscation").is_none());
        }
        assert_eq!(fake.contract_violations(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_wrong_or_missing_key_gets_401_and_leaves_the_script_alone() {
        let fake = FakeOpenAi::start().await.with_api_key("sk-proj-right-key");
        fake.push(FakeOpenAi::server_error());
        let request = chat_request(false).to_string();
        let mut connection = Connection::open(&fake).await;

        let response = connection
            .post("/v1/chat/completions", Some("sk-test-wrong-1234"), &request)
            .await;
        assert_eq!(response.status, 401);
        let body = response.json();
        assert_valid("ErrorResponse", &body);
        assert_eq!(body["error"]["code"], "invalid_api_key");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("Incorrect API key provided: sk-***********1234."),
            "{message}"
        );
        assert!(response.header("x-request-id").is_some());
        assert!(response.header("x-ratelimit-limit-requests").is_none());

        let response = connection.post("/v1/embeddings", None, &request).await;
        assert_eq!(response.status, 401);
        assert_eq!(response.json()["error"]["code"], Value::Null);
        let raw = format!(
            "POST /v1/embeddings HTTP/1.1\r\nHost: {}\r\nAuthorization: sk-proj-right-key\r\nContent-Length: {}\r\n\r\n{request}",
            connection.host,
            request.len()
        );
        let response = connection.send(&raw).await;
        assert_eq!(response.status, 401);
        let body = response.json();
        assert_valid("ErrorResponse", &body);
        assert_eq!(body["error"]["code"], Value::Null);
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("You didn't provide an API key.")
        );

        assert_eq!(fake.pending_replies(), 1);
        let response = connection
            .post("/v1/chat/completions", Some("sk-proj-right-key"), &request)
            .await;
        assert_eq!(response.status, 500);
        assert_valid("ErrorResponse", &response.json());
        assert_eq!(fake.pending_replies(), 0);
        assert_eq!(fake.requests().len(), 4);
    }

    #[tokio::test]
    async fn a_scripted_429_carries_openais_headers_then_defaults_resume() {
        let fake = FakeOpenAi::start().await;
        fake.push(FakeOpenAi::rate_limited(7));
        let response = post(&fake, "/v1/chat/completions", &chat_request(false)).await;
        assert_eq!(response.status, 429);
        let body = response.json();
        assert_valid("ErrorResponse", &body);
        assert_eq!(body["error"]["type"], "requests");
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        assert_eq!(body["error"]["param"], Value::Null);
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("Rate limit reached for ")
        );
        assert_eq!(response.header("retry-after"), Some("7"));
        assert_eq!(response.header("x-ratelimit-remaining-requests"), Some("0"));
        assert_eq!(response.header("x-ratelimit-reset-requests"), Some("7s"));
        for name in [
            "x-ratelimit-limit-requests",
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
            "x-request-id",
            "openai-organization",
            "openai-processing-ms",
        ] {
            assert!(response.header(name).is_some(), "{name}");
        }
        let response = post(&fake, "/v1/chat/completions", &chat_request(false)).await;
        assert_eq!(response.status, 200);
    }

    #[tokio::test]
    async fn tool_call_chunks_stream_the_arguments_in_pieces() {
        let pieces = ["{\"loc", "ation\": \"Pa", "ris\"}"];
        let chunks = FakeOpenAi::tool_call_chunks("get_weather", "call_abc123", &pieces);
        for chunk in &chunks {
            assert_valid("CreateChatCompletionStreamResponse", chunk);
        }
        let fake = FakeOpenAi::start().await;
        fake.push(Reply::Chunks(chunks.clone()));
        let response = post(&fake, "/v1/chat/completions", &chat_request(true)).await;
        assert_eq!(response.events().last().unwrap(), "[DONE]");
        let received = response.chunks();
        assert_eq!(received, chunks);

        let first = &received[0]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(
            *first,
            json!({
                "index": 0,
                "id": "call_abc123",
                "type": "function",
                "function": { "name": "get_weather", "arguments": "" },
            })
        );
        let mut arguments = String::new();
        for chunk in &received[1..=pieces.len()] {
            let call = &chunk["choices"][0]["delta"]["tool_calls"][0];
            assert_eq!(call.as_object().unwrap().len(), 2, "{call}");
            assert_eq!(call["index"], 0);
            assert_eq!(call["function"].as_object().unwrap().len(), 1);
            arguments.push_str(call["function"]["arguments"].as_str().unwrap());
            assert!(chunk["choices"][0]["finish_reason"].is_null());
        }
        assert_eq!(arguments, "{\"location\": \"Paris\"}");
        let last = received.last().unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(last["choices"][0]["delta"], json!({}));

        let completion = FakeOpenAi::completion_with_tool_calls(&[
            ("get_weather", "call_1", "{\"location\": \"Paris\"}"),
            ("get_time", "call_2", "{}"),
        ]);
        assert_valid("CreateChatCompletionResponse", &completion);
        let choice = &completion["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], Value::Null);
        assert_eq!(choice["message"]["tool_calls"][1]["id"], "call_2");
        fake.push(Reply::Completion(completion.clone()));
        let response = post(&fake, "/v1/chat/completions", &chat_request(false)).await;
        assert_eq!(response.json(), completion);
    }

    #[tokio::test]
    async fn a_stream_can_fail_midway_without_done() {
        let fake = FakeOpenAi::start().await;
        let chunks = FakeOpenAi::tool_call_chunks("f", "call_1", &["{}"]);
        let error = json!({
            "message": "The server had an error while processing your request. Sorry about that!",
            "type": "server_error",
            "param": null,
            "code": null,
        });
        fake.push(Reply::StreamThenError {
            chunks: chunks[..2].to_vec(),
            error: error.clone(),
        });
        let mut connection = Connection::open(&fake).await;
        let response = connection
            .post(
                "/v1/chat/completions",
                Some(DEFAULT_API_KEY),
                &chat_request(true).to_string(),
            )
            .await;
        assert_eq!(response.status, 200);
        let events = response.events();
        assert_eq!(events.len(), 3);
        assert!(events.iter().all(|event| event != "[DONE]"));
        let last: Value = serde_json::from_str(&events[2]).unwrap();
        assert_eq!(last, json!({ "error": error }));
        assert_valid("ErrorResponse", &last);
        assert!(connection.closed().await);
    }

    #[tokio::test]
    async fn a_chunk_delay_paces_the_stream() {
        let fake = FakeOpenAi::start()
            .await
            .with_chunk_delay(Duration::from_secs(30));
        let mut connection = Connection::open(&fake).await;
        let body = chat_request(true).to_string();
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {DEFAULT_API_KEY}\r\nContent-Length: {}\r\n\r\n{body}",
            connection.host,
            body.len()
        );
        connection
            .stream
            .write_all(request.as_bytes())
            .await
            .unwrap();
        // The headers and the first event arrive at once; the second waits for the delay.
        let mut received = String::new();
        while !received.contains("data: ") || !received.ends_with("\n\n\r\n") {
            let mut line = String::new();
            connection.stream.read_line(&mut line).await.unwrap();
            received.push_str(&line);
        }
        assert!(received.starts_with("HTTP/1.1 200 OK\r\n"), "{received}");
        assert_eq!(received.matches("data: ").count(), 1, "{received}");
        let mut more = [0u8; 1];
        let next = tokio::time::timeout(
            Duration::from_millis(200),
            connection.stream.read(&mut more),
        )
        .await;
        assert!(next.is_err(), "the second event should wait");
    }

    #[tokio::test]
    async fn a_hang_delays_the_default_answer() {
        let fake = FakeOpenAi::start().await;
        fake.push(Reply::Hang(Duration::from_secs(30)));
        fake.push(Reply::Hang(Duration::from_millis(10)));
        let request = chat_request(false);
        let hung = tokio::time::timeout(
            Duration::from_millis(200),
            post(&fake, "/v1/chat/completions", &request),
        )
        .await;
        assert!(hung.is_err(), "the first request should still be waiting");
        let response = post(&fake, "/v1/chat/completions", &request).await;
        assert_eq!(response.status, 200);
        assert_eq!(
            response.json()["choices"][0]["message"]["content"],
            "Say hello\nto  the world"
        );
        assert_eq!(fake.pending_replies(), 0);
    }

    #[tokio::test]
    async fn embeddings_are_deterministic_unit_vectors() {
        let fake = FakeOpenAi::start().await;
        let request = json!({
            "model": "text-embedding-3-small",
            "input": ["same", "other", "same"],
            "dimensions": 8,
        });
        let response = post(&fake, "/v1/embeddings", &request).await;
        assert_eq!(response.status, 200);
        let body = response.json();
        assert_valid("CreateEmbeddingResponse", &body);
        assert_eq!(body["model"], "text-embedding-3-small");
        assert_eq!(
            body["usage"],
            json!({ "prompt_tokens": 3, "total_tokens": 3 })
        );
        let vectors: Vec<Vec<f64>> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(index, item)| {
                assert_eq!(item["index"], index);
                serde_json::from_value(item["embedding"].clone()).unwrap()
            })
            .collect();
        assert_eq!(vectors[0], vectors[2]);
        assert_ne!(vectors[0], vectors[1]);
        let norm: f64 = vectors[0].iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "{norm}");

        let request = json!({ "model": "text-embedding-3-large", "input": [[1, 2, 3]] });
        let body = post(&fake, "/v1/embeddings", &request).await.json();
        assert_valid("CreateEmbeddingResponse", &body);
        assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 3072);
        assert_eq!(body["usage"]["prompt_tokens"], 3);

        let request = json!({
            "model": "text-embedding-3-small",
            "input": "same",
            "dimensions": 8,
            "encoding_format": "base64",
        });
        let body = post(&fake, "/v1/embeddings", &request).await.json();
        let bytes = BASE64
            .decode(body["data"][0]["embedding"].as_str().unwrap())
            .unwrap();
        let decoded: Vec<f64> = bytes
            .chunks(4)
            .map(|b| f64::from(f32::from_le_bytes(b.try_into().unwrap())))
            .collect();
        assert_eq!(decoded, vectors[0]);
        assert_eq!(fake.contract_violations(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn malformed_requests_get_openais_errors() {
        let fake = FakeOpenAi::start().await;
        let mut connection = Connection::open(&fake).await;
        let key = Some(DEFAULT_API_KEY);
        let cases = [
            ("/v1/chat/completions", "{not json", 400, None),
            ("/v1/chat/completions", r#"{"messages": []}"#, 400, None),
            (
                "/v1/chat/completions",
                r#"{"model": "m"}"#,
                400,
                Some("missing_required_parameter"),
            ),
            (
                "/v1/embeddings",
                r#"{"model": "m"}"#,
                400,
                Some("missing_required_parameter"),
            ),
            ("/v1/completions", r#"{"model": "m"}"#, 404, None),
        ];
        for (path, body, status, code) in cases {
            let response = connection.post(path, key, body).await;
            assert_eq!(response.status, status, "{path} {body}");
            let error = response.json();
            assert_valid("ErrorResponse", &error);
            assert_eq!(error["error"]["code"].as_str(), code, "{path} {body}");
        }
        let requests = fake.requests();
        assert_eq!(requests[0].body, json!("{not json"));
        let response = connection.post("/v1/completions", key, "{}").await;
        assert_eq!(
            response.json()["error"]["message"],
            "Invalid URL (POST /v1/completions)"
        );
    }

    #[tokio::test]
    async fn contract_violations_name_the_request_and_the_field() {
        let fake = FakeOpenAi::start().await;
        let request = json!({
            "model": "gpt-4o-mini",
            "messages": [{ "role": "robot", "content": "beep" }],
        });
        let response = post(&fake, "/v1/chat/completions", &request).await;
        assert_eq!(response.status, 200, "the fake itself is lenient");
        let violations = fake.contract_violations();
        assert!(!violations.is_empty());
        assert!(
            violations
                .iter()
                .all(|v| v.starts_with("0 /v1/chat/completions/messages/0: ")),
            "{violations:?}"
        );
    }

    #[test]
    fn word_pieces_put_back_together_give_the_text() {
        for text in ["", "one", " lead and  trail ", "a\nb\tc"] {
            assert_eq!(word_pieces(text).concat(), text);
        }
        assert_eq!(word_pieces(" lead and "), [" lead", " and "]);
        assert_eq!(mask_key("sk-abcdefgh1234"), "sk-********1234");
        assert_eq!(mask_key("short"), "*****");
    }
}
