//! A fake Google Gemini API server (the Generative Language API, `v1beta`) for tests.
//!
//! It answers, over HTTP on `127.0.0.1`, the methods Switchyard's Gemini adapter calls, in the
//! wire format Google documents (<https://ai.google.dev/api>), which is the proto3 JSON mapping of
//! the `google.ai.generativelanguage.v1beta` protos: camelCase names in responses (requests may
//! also use the snake_case proto names, which Google's JSON parser accepts), and fields holding
//! their default value (0, `""`, `false`, an empty list) left out, as proto3 JSON leaves them out.
//!
//! - `POST /v1beta/models/{model}:generateContent`: a `GenerateContentResponse`
//!   (`candidates`, `usageMetadata`, `modelVersion`, `responseId`).
//! - `POST /v1beta/models/{model}:streamGenerateContent`: with `?alt=sse`, a `text/event-stream`
//!   of `data: {GenerateContentResponse}` events, each ended by `\r\n\r\n` as Google's are, and no
//!   `[DONE]`: the stream just ends. Without `alt=sse`, Google's other framing: one JSON array of
//!   the same objects. As Gemini 2.x models do, every chunk carries the `usageMetadata` so far
//!   (cumulative, not a delta) and the last one the final counts and the `finishReason`: a client
//!   must keep the last, never sum them.
//! - `POST /v1beta/models/{model}:countTokens`: `{"totalTokens", "promptTokensDetails"}`, for
//!   `contents` or a `generateContentRequest`.
//! - `POST /v1beta/models/{model}:embedContent`: `{"embedding": {"values": [...]}}`.
//! - `POST /v1beta/models/{model}:batchEmbedContents`: `{"embeddings": [{"values": [...]}]}`.
//!
//! [`FakeGemini::base_url`] has no API version: callers append `/v1beta/models/...`, as they do to
//! `https://generativelanguage.googleapis.com`. Other paths, and other HTTP methods, get Google's
//! HTML "404. That's an error." page, before any key is checked, as Google's front end answers.
//!
//! Every request needs the configured key (default [`DEFAULT_API_KEY`]) in an `x-goog-api-key`
//! header or a `key` query parameter (the header wins when both are given). A wrong key gets
//! Google's 400 `INVALID_ARGUMENT` "API key not valid" with an `ErrorInfo` detail (reason
//! `API_KEY_INVALID`, domain `googleapis.com`); no key, the 403 `PERMISSION_DENIED` "Method
//! doesn't allow unregistered callers". Errors have Google's shape, `{"error": {"code",
//! "message", "status", "details"?}}`; responses carry Google's front-end headers (`server:
//! scaffolding on HTTPServer2`, `server-timing`, `vary`, ...). Google sends no `retry-after`: the
//! delay of a 429 is in its `google.rpc.RetryInfo` detail ([`FakeGemini::quota_exhausted`]).
//!
//! Models: names starting `gemini-` or `gemma-` generate content, names containing `embedding`
//! (`text-embedding-004`, `gemini-embedding-001`, ...) embed, and both count tokens. Any other
//! name, a method the model does not support, or a name given to [`FakeGemini::without_model`]
//! gets Google's 404 `NOT_FOUND` "models/{model} is not found for API version v1beta, or is not
//! supported for {method}".
//!
//! What the fake rejects, with Google's messages: a body that is not a JSON object; fields
//! Google does not know at the top level of a `GenerateContentRequest`, in its
//! `generationConfig`, in a `Content` or in a `Part` ("Invalid JSON payload received. Unknown name
//! ..." with a `BadRequest` detail); `inlineData.data` or `thoughtSignature` that is not base64
//! (a data URL, say); no `contents`; a content without parts; a part without data; a role other
//! than `user` or `model` (`function` is tolerated, as older guides used it); a function call
//! turn that does not follow a user turn, a function response turn that does not follow a
//! function call turn, or one with a different number of parts. `embedContent` needs `content`,
//! and every request of a `batchEmbedContents` its own `model` (`models/...`); at most 100 of
//! them.
//!
//! Unless scripted with [`FakeGemini::push`], generation echoes the text parts of the last user
//! content (joined by newlines; for a function response turn, the responses as JSON), with
//! `finishReason: "STOP"` and `NEGLIGIBLE` safety ratings for the four standard harm categories.
//! The "tokens" are whitespace-separated words ([`count_tokens`]): the prompt is the words of every
//! text part of `contents` and `systemInstruction`, plus the name and compact JSON of function
//! calls and responses, plus [`MEDIA_PART_TOKENS`] per `inlineData` or `fileData` part (reported
//! under its modality in `promptTokensDetails`); tools are not counted. Then, in this order:
//! - `toolConfig.functionCallingConfig.mode: "ANY"` with function declarations: the answer is a
//!   call of the first allowed function (else the first declared one) with `{}` arguments.
//! - `responseMimeType: "application/json"`: the text is sent as it is if it is JSON, else as a
//!   JSON string, so a test can make the answer match its schema by prompting with the JSON.
//! - `stopSequences`: the text stops before the first one found.
//! - thinking (`thinkingConfig.includeThoughts: true` or a positive `thinkingBudget`, never with
//!   `thinkingBudget: 0`): the model "thinks" a fixed sentence (cut to the budget), reported as
//!   `thoughtsTokenCount`, and returned as a `{"text", "thought": true}` part first only with
//!   `includeThoughts`.
//! - `maxOutputTokens`: as on Gemini 2.5, thoughts count against it; the text is cut to the words
//!   left, with `finishReason: "MAX_TOKENS"`; a candidate left with no part has a `content` of
//!   only `{"role": "model"}`, as Google sends it.
//! - `candidateCount`: that many identical candidates (1 to 8).
//!
//! Embeddings are deterministic: a unit vector derived from the text alone, of the model's own
//! size (3072 values for `gemini-embedding-*`, 768 for `text-embedding-004` and others), cut to
//! `outputDimensionality` values from the end as Google does, so a shortened one is no longer of
//! unit length and is a prefix of the full one.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State as AxumState};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::GeneralPurpose;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use futures::StreamExt as _;
use rand::Rng as _;
use serde_json::{Map, Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The API key the fake accepts unless [`FakeGemini::with_api_key`] sets another.
pub const DEFAULT_API_KEY: &str = "gemini-test";

/// The model named in the bodies the helpers make (the server's own answers name the model of
/// the request's path instead).
pub const HELPER_MODEL: &str = "gemini-2.5-flash";

/// The tokens counted for each `inlineData` or `fileData` part of a prompt: what Gemini counts
/// for an image of up to 384 pixels a side.
pub const MEDIA_PART_TOKENS: u64 = 258;

/// Prompt tokens reported by helper-made bodies, which do not see the prompt.
const HELPER_PROMPT_TOKENS: u64 = 20;

/// What the model "thinks" when thinking is on.
const THOUGHT: &str = "The user wants their last message repeated back to them, word for word.";

/// The harm categories of a safety rating list, in the order Google lists them.
const HARM_CATEGORIES: [&str; 4] = [
    "HARM_CATEGORY_SEXUALLY_EXPLICIT",
    "HARM_CATEGORY_HATE_SPEECH",
    "HARM_CATEGORY_HARASSMENT",
    "HARM_CATEGORY_DANGEROUS_CONTENT",
];

/// The modalities of `promptTokensDetails`, in the order they are listed.
const MODALITIES: [&str; 5] = ["TEXT", "IMAGE", "AUDIO", "VIDEO", "DOCUMENT"];

/// The fields of a `GenerateContentRequest` (camelCase; the snake_case forms are accepted too).
const REQUEST_FIELDS: &[&str] = &[
    "model",
    "contents",
    "tools",
    "toolConfig",
    "safetySettings",
    "systemInstruction",
    "generationConfig",
    "cachedContent",
    "serviceTier",
];

/// The fields of a `GenerationConfig`.
const GENERATION_CONFIG_FIELDS: &[&str] = &[
    "candidateCount",
    "stopSequences",
    "maxOutputTokens",
    "temperature",
    "topP",
    "topK",
    "seed",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "_responseJsonSchema",
    "presencePenalty",
    "frequencyPenalty",
    "responseLogprobs",
    "logprobs",
    "enableEnhancedCivicAnswers",
    "responseModalities",
    "speechConfig",
    "thinkingConfig",
    "imageConfig",
    "mediaResolution",
];

/// The fields of a `Content`.
const CONTENT_FIELDS: &[&str] = &["parts", "role"];

/// The fields of a `Part`.
const PART_FIELDS: &[&str] = &[
    "text",
    "inlineData",
    "functionCall",
    "functionResponse",
    "fileData",
    "executableCode",
    "codeExecutionResult",
    "thought",
    "thoughtSignature",
    "videoMetadata",
    "partMetadata",
    "mediaResolution",
];

/// The members of a `Part`'s `data` oneof, one of which must be set.
const PART_DATA_FIELDS: &[&str] = &[
    "text",
    "inlineData",
    "functionCall",
    "functionResponse",
    "fileData",
    "executableCode",
    "codeExecutionResult",
];

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The path with the method suffix, such as `/v1beta/models/gemini-2.5-flash:generateContent`.
    pub path: String,
    /// The raw query string without `?`, such as `alt=sse`; empty when there is none.
    pub query: String,
    /// The request's headers.
    pub headers: HeaderMap,
    /// The JSON body; `null` when empty, a string holding the text when not JSON.
    pub body: Value,
}

impl Recorded {
    /// The percent-decoded value of a query parameter, such as `alt` or `key`.
    pub fn query_param(&self, name: &str) -> Option<String> {
        query_param(&self.query, name)
    }
}

/// A scripted answer to one request, whatever its method.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// 200 with this JSON body, such as a `GenerateContentResponse`.
    Response(Value),
    /// 200 with these `GenerateContentResponse` chunks, framed as the request asked: `data:`
    /// events with `?alt=sse`, else one JSON array.
    Stream(Vec<Value>),
    /// This status and JSON body, with these headers added to the usual ones.
    Error {
        /// The HTTP status, such as 429.
        status: u16,
        /// The body, normally `{"error": {"code", "message", "status", "details"?}}`
        /// ([`FakeGemini::error_body`]).
        body: Value,
        /// Extra headers.
        headers: Vec<(String, String)>,
    },
    /// Waits this long, then answers as if nothing were scripted.
    Hang(Duration),
    /// A stream that fails midway, as Google's do: these chunks, then the error as one more
    /// event, then the end of the stream; the connection is then closed.
    StreamThenError {
        /// The chunks sent before the error.
        events: Vec<Value>,
        /// The error object (`{"code", "message", "status"}`), sent as `{"error": error}`; a
        /// value that already has an `error` key is sent as it is.
        error: Value,
    },
}

#[derive(Debug)]
struct State {
    api_key: String,
    chunk_delay: Duration,
    missing_models: Vec<String>,
    replies: VecDeque<Reply>,
    requests: Vec<Recorded>,
}

type Shared = Arc<Mutex<State>>;

/// A running fake Gemini API server. It stops when dropped.
#[derive(Debug)]
pub struct FakeGemini {
    base_url: String,
    state: Shared,
    server: JoinHandle<()>,
}

impl Drop for FakeGemini {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeGemini {
    /// Starts a server on `127.0.0.1` that accepts the key [`DEFAULT_API_KEY`].
    pub async fn start() -> FakeGemini {
        let state = Arc::new(Mutex::new(State {
            api_key: DEFAULT_API_KEY.to_owned(),
            chunk_delay: Duration::ZERO,
            missing_models: Vec::new(),
            replies: VecDeque::new(),
            requests: Vec::new(),
        }));
        // Binding fails only on a host without a loopback interface, where no test can run.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fake Gemini to 127.0.0.1");
        let address = listener.local_addr().expect("the fake Gemini's address");
        // Inline images, audio and PDFs make large bodies; Google takes them, so the fake does too.
        let app = Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::disable())
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                eprintln!("fake Gemini stopped: {err}");
            }
        });
        FakeGemini {
            base_url: format!("http://{address}"),
            state,
            server,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The base URL to give a client, such as `http://127.0.0.1:41234`, without `/v1beta`:
    /// requests go to `{base_url}/v1beta/models/{model}:{method}`.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// Accepts `key` instead of [`DEFAULT_API_KEY`].
    pub fn with_api_key(self, key: &str) -> Self {
        self.state().api_key = key.to_owned();
        self
    }

    /// Waits this long between the events of a stream, for tests that act mid-stream.
    pub fn with_chunk_delay(self, delay: Duration) -> Self {
        self.state().chunk_delay = delay;
        self
    }

    /// Answers 404 `NOT_FOUND` for this model (such as `gemini-1.5-pro`), as Google does for a
    /// retired one, although its name looks like a Gemini model's.
    pub fn without_model(self, model: &str) -> Self {
        self.state().missing_models.push(model.to_owned());
        self
    }

    /// Queues a reply: each authenticated, well-formed request for a known model consumes the
    /// oldest one.
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

    /// Google's error body: `{"error": {"code", "message", "status"}}`, such as
    /// `error_body(400, "INVALID_ARGUMENT", "Request contains an invalid argument.")`. Add a
    /// `details` list to `body["error"]` for `google.rpc` details.
    pub fn error_body(code: u16, status: &str, message: &str) -> Value {
        json!({ "error": { "code": code, "message": message, "status": status } })
    }

    /// A 429 `RESOURCE_EXHAUSTED` as the Gemini API sends it when a per-minute request quota is
    /// used up: Google's message, then a `Help` detail, a `QuotaFailure` naming the quota, and a
    /// `RetryInfo` with `retryDelay: "{retry_delay_secs}s"`. There is no `retry-after` header.
    pub fn quota_exhausted(retry_delay_secs: u64) -> Reply {
        let metric = "generativelanguage.googleapis.com/generate_content_free_tier_requests";
        let message = format!(
            "You exceeded your current quota, please check your plan and billing details. For \
             more information on this error, head to: \
             https://ai.google.dev/gemini-api/docs/rate-limits. To monitor your current usage, \
             head to: https://ai.dev/rate-limit. \n* Quota exceeded for metric: {metric}, limit: \
             10, model: {HELPER_MODEL}\nPlease retry in {retry_delay_secs}s."
        );
        let mut body = Self::error_body(429, "RESOURCE_EXHAUSTED", &message);
        body["error"]["details"] = json!([
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [{
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                }],
            },
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{
                    "quotaMetric": metric,
                    "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                    "quotaDimensions": { "location": "global", "model": HELPER_MODEL },
                    "quotaValue": "10",
                }],
            },
            {
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": format!("{retry_delay_secs}s"),
            },
        ]);
        Reply::Error {
            status: 429,
            body,
            headers: Vec::new(),
        }
    }

    /// A 503 `UNAVAILABLE` "The model is overloaded. Please try again later.", which Gemini
    /// sends at busy times.
    pub fn overloaded() -> Reply {
        Self::error_reply(
            503,
            "UNAVAILABLE",
            "The model is overloaded. Please try again later.",
        )
    }

    /// A 500 `INTERNAL`, as Gemini sends it.
    pub fn internal_error() -> Reply {
        Self::error_reply(
            500,
            "INTERNAL",
            "An internal error has occurred. Please retry or report in \
             https://developers.generativeai.google/guide/troubleshooting",
        )
    }

    /// A 504 `DEADLINE_EXCEEDED`, as Gemini sends it when generation takes too long.
    pub fn deadline_exceeded() -> Reply {
        Self::error_reply(
            504,
            "DEADLINE_EXCEEDED",
            "Deadline expired before operation could complete.",
        )
    }

    fn error_reply(code: u16, status: &str, message: &str) -> Reply {
        Reply::Error {
            status: code,
            body: Self::error_body(code, status, message),
            headers: Vec::new(),
        }
    }

    /// A response to a blocked prompt: no `candidates`, a `promptFeedback` with `blockReason:
    /// "SAFETY"` and the ratings (harassment `HIGH` and `blocked`), and the usage of a 20-token
    /// prompt. Push it with [`Reply::Response`], or as the only chunk of a [`Reply::Stream`].
    pub fn blocked_prompt() -> Value {
        let ratings: Vec<Value> = HARM_CATEGORIES
            .iter()
            .map(|category| {
                if *category == "HARM_CATEGORY_HARASSMENT" {
                    json!({ "category": category, "probability": "HIGH", "blocked": true })
                } else {
                    json!({ "category": category, "probability": "NEGLIGIBLE" })
                }
            })
            .collect();
        json!({
            "promptFeedback": { "blockReason": "SAFETY", "safetyRatings": ratings },
            "usageMetadata": usage_metadata(&PromptTokens::text(HELPER_PROMPT_TOKENS), 0, 0),
            "modelVersion": HELPER_MODEL,
            "responseId": response_id(),
        })
    }

    /// A response whose candidate calls one function, `{"functionCall": {"name", "args"}}`, with
    /// `finishReason: "STOP"` (Gemini has no separate reason for calls), for [`HELPER_MODEL`];
    /// its usage reports 20 prompt tokens and the words of the name and compact arguments.
    pub fn function_call_response(name: &str, args: Value) -> Value {
        let tokens = count_tokens(name) + count_tokens(&args.to_string());
        let part = json!({ "functionCall": { "name": name, "args": args } });
        response_body(
            HELPER_MODEL,
            &response_id(),
            vec![candidate(0, vec![part], Some("STOP"))],
            usage_metadata(&PromptTokens::text(HELPER_PROMPT_TOKENS), tokens, 0),
        )
    }

    /// A response with one text answer and `finishReason: "STOP"`, for [`HELPER_MODEL`], with the
    /// usage of a 20-token prompt.
    pub fn text_response(text: &str) -> Value {
        response_body(
            HELPER_MODEL,
            &response_id(),
            vec![candidate(0, vec![json!({ "text": text })], Some("STOP"))],
            usage_metadata(
                &PromptTokens::text(HELPER_PROMPT_TOKENS),
                count_tokens(text),
                0,
            ),
        )
    }

    /// The chunks of a streamed text answer for [`HELPER_MODEL`], one per piece, sharing one
    /// `responseId`: each has the piece as its only part and the usage so far (20 prompt
    /// tokens), the last also `finishReason: "STOP"`. Push them with [`Reply::Stream`].
    pub fn stream_chunks(text_pieces: &[&str]) -> Vec<Value> {
        let id = response_id();
        let prompt = PromptTokens::text(HELPER_PROMPT_TOKENS);
        if text_pieces.is_empty() {
            let usage = usage_metadata(&prompt, 0, 0);
            return vec![response_body(
                HELPER_MODEL,
                &id,
                vec![candidate(0, Vec::new(), Some("STOP"))],
                usage,
            )];
        }
        let mut so_far = 0;
        text_pieces
            .iter()
            .enumerate()
            .map(|(index, piece)| {
                so_far += count_tokens(piece);
                let finish = (index + 1 == text_pieces.len()).then_some("STOP");
                response_body(
                    HELPER_MODEL,
                    &id,
                    vec![candidate(0, vec![json!({ "text": piece })], finish)],
                    usage_metadata(&prompt, so_far, 0),
                )
            })
            .collect()
    }
}

/// The fake's token count: whitespace-separated words.
pub fn count_tokens(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

fn lock(state: &Shared) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A random response id in Google's style: 23 characters of URL-safe base64.
fn response_id() -> String {
    let mut bytes = [0u8; 17];
    rand::thread_rng().fill(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The value of a query parameter, percent-decoded (with `+` as a space).
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = bytes
            .get(index + 1..index + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[index], hex) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                index += 3;
            }
            (b'+', _) => {
                decoded.push(b' ');
                index += 1;
            }
            (byte, _) => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
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

/// `abcDef` as `abc_def`: the proto name of a JSON name.
fn snake_case(name: &str) -> String {
    let mut snake = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            snake.push('_');
            snake.push(c.to_ascii_lowercase());
        } else {
            snake.push(c);
        }
    }
    snake
}

/// A field of a message, by its JSON (camelCase) name or its proto (snake_case) name.
fn field<'a>(message: &'a Value, name: &str) -> Option<&'a Value> {
    message
        .get(name)
        .or_else(|| message.get(snake_case(name).as_str()))
}

/// The elements of a repeated field; Google's parser takes a single value for a list of one.
fn items(value: Option<&Value>) -> Vec<&Value> {
    match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(values)) => values.iter().collect(),
        Some(other) => vec![other],
    }
}

fn role(content: &Value) -> &str {
    field(content, "role")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn parts(content: &Value) -> Vec<&Value> {
    items(field(content, "parts"))
}

fn is_thought(part: &Value) -> bool {
    field(part, "thought").and_then(Value::as_bool) == Some(true)
}

fn count_parts(content: &Value, kind: &str) -> usize {
    parts(content)
        .iter()
        .filter(|part| field(part, kind).is_some())
        .count()
}

/// Whether Google would decode this as `bytes`: standard or URL-safe base64, padded or not.
fn is_base64(text: &str) -> bool {
    const ENGINES: [&GeneralPurpose; 4] =
        [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD];
    ENGINES.iter().any(|engine| engine.decode(text).is_ok())
}

// ---- token counts ----

/// Prompt tokens by modality, in the order of [`MODALITIES`].
#[derive(Debug, Clone, Copy, Default)]
struct PromptTokens([u64; MODALITIES.len()]);

impl PromptTokens {
    fn text(tokens: u64) -> Self {
        let mut counts = PromptTokens::default();
        counts.0[0] = tokens;
        counts
    }

    fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    fn add_part(&mut self, part: &Value) {
        let text_tokens = if let Some(text) = field(part, "text").and_then(Value::as_str) {
            count_tokens(text)
        } else if let Some(call) = field(part, "functionCall") {
            named_json_tokens(call, "args")
        } else if let Some(response) = field(part, "functionResponse") {
            named_json_tokens(response, "response")
        } else {
            0
        };
        self.0[0] += text_tokens;
        let media = field(part, "inlineData").or_else(|| field(part, "fileData"));
        if let Some(media) = media {
            let mime_type = field(media, "mimeType")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let modality = match mime_type.split('/').next().unwrap_or_default() {
                "image" => 1,
                "audio" => 2,
                "video" => 3,
                _ => 4,
            };
            self.0[modality] += MEDIA_PART_TOKENS;
        }
    }

    fn add_content(&mut self, content: &Value) {
        for part in parts(content) {
            self.add_part(part);
        }
    }

    /// The tokens of a `GenerateContentRequest`'s `contents` and `systemInstruction`.
    fn of_request(request: &Value) -> Self {
        let mut counts = PromptTokens::default();
        for content in items(field(request, "contents")) {
            counts.add_content(content);
        }
        if let Some(system) = field(request, "systemInstruction") {
            counts.add_content(system);
        }
        counts
    }

    /// `promptTokensDetails`: a `ModalityTokenCount` for each modality present.
    fn details(&self) -> Vec<Value> {
        MODALITIES
            .iter()
            .zip(self.0)
            .filter(|(_, count)| *count > 0)
            .map(|(modality, count)| json!({ "modality": modality, "tokenCount": count }))
            .collect()
    }
}

/// The words of a function call's or response's name and compact JSON value.
fn named_json_tokens(message: &Value, value_field: &str) -> u64 {
    let name = message
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let value = message.get(value_field).map(Value::to_string);
    count_tokens(name) + value.as_deref().map(count_tokens).unwrap_or_default()
}

/// Inserts a count unless it is 0, which proto3 JSON leaves out.
fn put_count(object: &mut Map<String, Value>, name: &str, count: u64) {
    if count > 0 {
        object.insert(name.to_owned(), json!(count));
    }
}

fn usage_metadata(prompt: &PromptTokens, candidates: u64, thoughts: u64) -> Value {
    let mut usage = Map::new();
    put_count(&mut usage, "promptTokenCount", prompt.total());
    put_count(&mut usage, "candidatesTokenCount", candidates);
    put_count(
        &mut usage,
        "totalTokenCount",
        prompt.total() + candidates + thoughts,
    );
    let details = prompt.details();
    if !details.is_empty() {
        usage.insert("promptTokensDetails".to_owned(), Value::Array(details));
    }
    put_count(&mut usage, "thoughtsTokenCount", thoughts);
    Value::Object(usage)
}

// ---- response bodies ----

fn safety_ratings() -> Value {
    HARM_CATEGORIES
        .iter()
        .map(|category| json!({ "category": category, "probability": "NEGLIGIBLE" }))
        .collect()
}

/// A `Candidate`; a `content` without parts is only `{"role": "model"}`, as Google sends it.
fn candidate(index: u64, parts: Vec<Value>, finish_reason: Option<&str>) -> Value {
    let mut content = Map::new();
    if !parts.is_empty() {
        content.insert("parts".to_owned(), Value::Array(parts));
    }
    content.insert("role".to_owned(), json!("model"));
    let mut candidate = Map::new();
    candidate.insert("content".to_owned(), Value::Object(content));
    if let Some(reason) = finish_reason {
        candidate.insert("finishReason".to_owned(), json!(reason));
    }
    candidate.insert("index".to_owned(), json!(index));
    candidate.insert("safetyRatings".to_owned(), safety_ratings());
    Value::Object(candidate)
}

fn response_body(model: &str, id: &str, candidates: Vec<Value>, usage: Value) -> Value {
    json!({
        "candidates": candidates,
        "usageMetadata": usage,
        "modelVersion": model,
        "responseId": id,
    })
}

/// What the model answers, besides its thoughts.
enum Output {
    Text(String),
    Call { name: String, args: Value },
}

/// The default answer to a generation request, worked out once for both framings.
struct Generation {
    model: String,
    prompt: PromptTokens,
    candidates: u64,
    thought: Option<String>,
    include_thoughts: bool,
    output: Output,
    finish_reason: &'static str,
}

impl Generation {
    fn plan(model: &str, request: &Value) -> Generation {
        let config = field(request, "generationConfig");
        let setting = |name: &str| config.and_then(|config| field(config, name));
        let thinking = setting("thinkingConfig");
        let budget = thinking
            .and_then(|thinking| field(thinking, "thinkingBudget"))
            .and_then(Value::as_i64);
        let include_thoughts = thinking
            .and_then(|thinking| field(thinking, "includeThoughts"))
            .and_then(Value::as_bool)
            == Some(true);
        let thinks = budget != Some(0) && (include_thoughts || budget.is_some_and(|b| b > 0));
        let thought = thinks.then(|| {
            let pieces = word_pieces(THOUGHT);
            let limit = budget
                .filter(|budget| *budget > 0)
                .and_then(|budget| usize::try_from(budget).ok())
                .unwrap_or(pieces.len());
            pieces[..limit.min(pieces.len())].concat()
        });
        let thoughts_tokens = thought.as_deref().map(count_tokens).unwrap_or_default();
        let candidates = setting("candidateCount")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .clamp(1, 8);
        let mut plan = Generation {
            model: model.to_owned(),
            prompt: PromptTokens::of_request(request),
            candidates,
            thought,
            include_thoughts,
            output: Output::Text(String::new()),
            finish_reason: "STOP",
        };
        if let Some(name) = forced_call(request) {
            plan.output = Output::Call {
                name,
                args: json!({}),
            };
            return plan;
        }

        let mut text = last_user_text(request);
        let json_mode =
            setting("responseMimeType").and_then(Value::as_str) == Some("application/json");
        if json_mode && serde_json::from_str::<Value>(&text).is_err() {
            text = Value::String(text).to_string();
        }
        for stop in items(setting("stopSequences")) {
            if let Some(at) = stop
                .as_str()
                .filter(|s| !s.is_empty())
                .and_then(|s| text.find(s))
            {
                text.truncate(at);
            }
        }
        if let Some(max) = setting("maxOutputTokens")
            .and_then(Value::as_u64)
            .filter(|max| *max > 0)
        {
            let room = usize::try_from(max.saturating_sub(thoughts_tokens)).unwrap_or(usize::MAX);
            let pieces = word_pieces(&text);
            if count_tokens(&text) > room as u64 {
                text = pieces[..room.min(pieces.len())].concat();
                plan.finish_reason = "MAX_TOKENS";
            }
        }
        plan.output = Output::Text(text);
        plan
    }

    fn thoughts_tokens(&self) -> u64 {
        self.thought
            .as_deref()
            .map(count_tokens)
            .unwrap_or_default()
    }

    fn thought_part(&self) -> Option<Value> {
        self.thought
            .as_ref()
            .filter(|_| self.include_thoughts)
            .map(|thought| json!({ "text": thought, "thought": true }))
    }

    /// The answer's part, and its tokens for one candidate.
    fn output_part(&self) -> (Option<Value>, u64) {
        match &self.output {
            Output::Text(text) if text.is_empty() => (None, 0),
            Output::Text(text) => (Some(json!({ "text": text })), count_tokens(text)),
            Output::Call { name, args } => (
                Some(json!({ "functionCall": { "name": name, "args": args } })),
                count_tokens(name) + count_tokens(&args.to_string()),
            ),
        }
    }

    fn chunk(&self, id: &str, parts: &[Value], finish: Option<&str>, output_tokens: u64) -> Value {
        let candidates = (0..self.candidates)
            .map(|index| candidate(index, parts.to_vec(), finish))
            .collect();
        let usage = usage_metadata(
            &self.prompt,
            output_tokens * self.candidates,
            self.thoughts_tokens(),
        );
        response_body(&self.model, id, candidates, usage)
    }

    fn response(&self) -> Value {
        let (output, tokens) = self.output_part();
        let parts: Vec<Value> = self.thought_part().into_iter().chain(output).collect();
        self.chunk(&response_id(), &parts, Some(self.finish_reason), tokens)
    }

    /// The stream: the thoughts (when included), then a chunk per word of the text (or one for
    /// a call), the last with the finish reason; each with the usage so far.
    fn chunks(&self) -> Vec<Value> {
        let id = response_id();
        let mut chunks: Vec<Value> = self
            .thought_part()
            .map(|part| self.chunk(&id, &[part], None, 0))
            .into_iter()
            .collect();
        let finish = Some(self.finish_reason);
        match &self.output {
            Output::Text(text) if !text.is_empty() => {
                let pieces = word_pieces(text);
                let mut so_far = 0;
                for (index, piece) in pieces.iter().enumerate() {
                    so_far += count_tokens(piece);
                    let last = index + 1 == pieces.len();
                    let part = json!({ "text": piece });
                    chunks.push(self.chunk(&id, &[part], finish.filter(|_| last), so_far));
                }
            }
            _ => {
                let (output, tokens) = self.output_part();
                let parts: Vec<Value> = output.into_iter().collect();
                chunks.push(self.chunk(&id, &parts, finish, tokens));
            }
        }
        chunks
    }
}

/// The function the model must call: with mode `ANY`, the first allowed or declared one.
fn forced_call(request: &Value) -> Option<String> {
    let calling = field(request, "toolConfig").and_then(|tc| field(tc, "functionCallingConfig"));
    let mode = calling.and_then(|calling| field(calling, "mode"));
    if mode.and_then(Value::as_str) != Some("ANY") {
        return None;
    }
    let declared: Vec<&str> = items(field(request, "tools"))
        .into_iter()
        .flat_map(|tool| items(field(tool, "functionDeclarations")))
        .filter_map(|declaration| declaration.get("name").and_then(Value::as_str))
        .collect();
    let allowed = calling
        .and_then(|calling| {
            items(field(calling, "allowedFunctionNames"))
                .first()
                .copied()
        })
        .and_then(Value::as_str);
    allowed
        .or_else(|| declared.first().copied())
        .filter(|_| !declared.is_empty())
        .map(str::to_owned)
}

/// The text of the last user content: its text parts, one per line, or else its function
/// responses as compact JSON.
fn last_user_text(request: &Value) -> String {
    let contents = items(field(request, "contents"));
    let Some(last) = contents
        .iter()
        .rev()
        .find(|content| matches!(role(content), "" | "user"))
    else {
        return String::new();
    };
    let parts = parts(last);
    let texts: Vec<&str> = parts
        .iter()
        .filter(|part| !is_thought(part))
        .filter_map(|part| field(part, "text").and_then(Value::as_str))
        .collect();
    if !texts.is_empty() {
        return texts.join("\n");
    }
    parts
        .iter()
        .filter_map(|part| field(part, "functionResponse"))
        .filter_map(|response| response.get("response"))
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

fn count_tokens_body(request: &Value) -> Value {
    let source = field(request, "generateContentRequest").unwrap_or(request);
    let tokens = PromptTokens::of_request(source);
    let mut body = json!({ "totalTokens": tokens.total() });
    let details = tokens.details();
    if !details.is_empty() {
        body["promptTokensDetails"] = Value::Array(details);
    }
    body
}

/// The number of values a model's embeddings have.
fn native_dimensions(model: &str) -> usize {
    if model.starts_with("gemini-embedding") {
        3072
    } else {
        768
    }
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

/// The `ContentEmbedding` of one `EmbedContentRequest`.
fn content_embedding(model: &str, request: &Value) -> Value {
    let text = field(request, "content")
        .map(|content| {
            parts(content)
                .iter()
                .filter_map(|part| field(part, "text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    let native = native_dimensions(model);
    let mut values = embed(&text, native);
    let wanted = field(request, "outputDimensionality")
        .and_then(Value::as_u64)
        .and_then(|d| usize::try_from(d).ok())
        .filter(|d| (1..native).contains(d));
    if let Some(wanted) = wanted {
        values.truncate(wanted);
    }
    json!({ "values": values })
}

// ---- routing and checks ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Generate,
    Stream,
    CountTokens,
    Embed,
    BatchEmbed,
}

impl Endpoint {
    fn from_method(method: &str) -> Option<Endpoint> {
        Some(match method {
            "generateContent" => Endpoint::Generate,
            "streamGenerateContent" => Endpoint::Stream,
            "countTokens" => Endpoint::CountTokens,
            "embedContent" => Endpoint::Embed,
            "batchEmbedContents" => Endpoint::BatchEmbed,
            _ => return None,
        })
    }

    /// The method as Google's "not supported for ..." message names it.
    fn message_name(self) -> &'static str {
        match self {
            Endpoint::Generate => "generateContent",
            Endpoint::Stream => "StreamGenerateContent",
            Endpoint::CountTokens => "countTokens",
            Endpoint::Embed => "embedContent",
            Endpoint::BatchEmbed => "batchEmbedContents",
        }
    }
}

/// The model and method of `POST /v1beta/models/{model}:{method}`.
fn route(method: &Method, path: &str) -> Option<(String, Endpoint)> {
    if method != Method::POST {
        return None;
    }
    let (model, method) = path.strip_prefix("/v1beta/models/")?.split_once(':')?;
    if model.is_empty() || model.contains('/') {
        return None;
    }
    Some((percent_decode(model), Endpoint::from_method(method)?))
}

/// What to send, before the headers common to every response are added.
enum Answer {
    Json(StatusCode, Value, Vec<(String, String)>),
    Html(StatusCode, String),
    /// Events as JSON text; SSE or JSON-array framing; whether the connection closes after.
    Stream {
        events: Vec<String>,
        sse: bool,
        closes: bool,
    },
}

fn error_answer(code: u16, status: &str, message: &str) -> Answer {
    Answer::Json(
        StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
        FakeGemini::error_body(code, status, message),
        Vec::new(),
    )
}

fn invalid(message: &str) -> Answer {
    error_answer(400, "INVALID_ARGUMENT", message)
}

/// A 400 with a `google.rpc.BadRequest` detail listing `(field, description)` violations.
fn bad_request(violations: Vec<(Option<String>, String)>) -> Answer {
    let message = violations
        .iter()
        .map(|(_, description)| description.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let field_violations: Vec<Value> = violations
        .into_iter()
        .map(|(field, description)| match field {
            Some(field) => json!({ "field": field, "description": description }),
            None => json!({ "description": description }),
        })
        .collect();
    let mut body = FakeGemini::error_body(400, "INVALID_ARGUMENT", &message);
    body["error"]["details"] = json!([{
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": field_violations,
    }]);
    Answer::Json(StatusCode::BAD_REQUEST, body, Vec::new())
}

/// Google's front end's page for a URL it does not serve.
fn not_found_page(path: &str) -> Answer {
    let path = path
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let page = format!(
        "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n  <meta name=viewport \
         content=\"initial-scale=1, minimum-scale=1, width=device-width\">\n  <title>Error 404 \
         (Not Found)!!1</title>\n  <a href=//www.google.com/><span id=logo \
         aria-label=Google></span></a>\n  <p><b>404.</b> <ins>That\u{2019}s an error.</ins>\n  \
         <p>The requested URL <code>{path}</code> was not found on this server.  \
         <ins>That\u{2019}s all we know.</ins>\n"
    );
    Answer::Html(StatusCode::NOT_FOUND, page)
}

fn authenticate(headers: &HeaderMap, query: &str, api_key: &str) -> Result<(), Answer> {
    let key = headers
        .get("x-goog-api-key")
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|key| !key.is_empty())
        .map(str::to_owned)
        .or_else(|| query_param(query, "key").filter(|key| !key.is_empty()));
    match key {
        None => Err(error_answer(
            403,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers (callers without established identity). \
             Please use API Key or other form of API consumer identity to call this API.",
        )),
        Some(key) if key == api_key => Ok(()),
        Some(_) => {
            let message = "API key not valid. Please pass a valid API key.";
            let mut body = FakeGemini::error_body(400, "INVALID_ARGUMENT", message);
            body["error"]["details"] = json!([
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": { "service": "generativelanguage.googleapis.com" },
                },
                {
                    "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                    "locale": "en-US",
                    "message": message,
                },
            ]);
            Err(Answer::Json(StatusCode::BAD_REQUEST, body, Vec::new()))
        }
    }
}

/// Google's answer to a body it cannot parse as a JSON object.
fn invalid_json(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw);
    let line: String = text
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(80)
        .collect();
    let message = format!("Invalid JSON payload received. Unexpected token.\n{line}\n^");
    bad_request(vec![(None, message)])
}

fn check_model(model: &str, endpoint: Endpoint, missing: &[String]) -> Result<(), Answer> {
    let embeds = model.contains("embedding");
    let generates = !embeds && (model.starts_with("gemini-") || model.starts_with("gemma-"));
    let supported = match endpoint {
        Endpoint::Generate | Endpoint::Stream => generates,
        Endpoint::Embed | Endpoint::BatchEmbed => embeds,
        Endpoint::CountTokens => generates || embeds,
    };
    if supported && !missing.iter().any(|m| m == model) {
        return Ok(());
    }
    Err(error_answer(
        404,
        "NOT_FOUND",
        &format!(
            "models/{model} is not found for API version v1beta, or is not supported for {}. \
             Call ListModels to see the list of available models and their supported methods.",
            endpoint.message_name()
        ),
    ))
}

/// Adds a violation for each field of `message` not in `known` (nor its snake_case form).
fn unknown_fields(
    message: &Value,
    known: &[&str],
    at: Option<&str>,
    violations: &mut Vec<(Option<String>, String)>,
) {
    let Some(fields) = message.as_object() else {
        return;
    };
    for name in fields.keys() {
        if known
            .iter()
            .any(|k| name.as_str() == *k || *name == snake_case(k))
        {
            continue;
        }
        let description = match at {
            Some(at) => format!(
                "Invalid JSON payload received. Unknown name \"{name}\" at '{at}': Cannot find \
                 field."
            ),
            None => format!(
                "Invalid JSON payload received. Unknown name \"{name}\": Cannot find field."
            ),
        };
        violations.push((at.map(str::to_owned), description));
    }
}

/// Google's text for a value of the wrong type: strings quoted, anything else as JSON.
fn shown(value: &Value) -> String {
    match value {
        Value::String(text) => format!("\"{text}\""),
        other => other.to_string(),
    }
}

/// The `(path, value)` of a `bytes` field that is not base64.
fn bad_bytes(part: &Value, at: &str) -> Vec<(String, String)> {
    let mut bad = Vec::new();
    let data = field(part, "inlineData").and_then(|blob| field(blob, "data"));
    if let Some(data) = data.and_then(Value::as_str).filter(|data| !is_base64(data)) {
        bad.push((format!("{at}.inline_data.data"), data.to_owned()));
    }
    let signature = field(part, "thoughtSignature").and_then(Value::as_str);
    if let Some(signature) = signature.filter(|signature| !is_base64(signature)) {
        bad.push((format!("{at}.thought_signature"), signature.to_owned()));
    }
    bad
}

/// The `* {prefix}[j].data: required oneof ...` lines of parts without data.
fn parts_without_data(parts: &[&Value], prefix: &str) -> String {
    parts
        .iter()
        .enumerate()
        .filter(|(_, part)| !PART_DATA_FIELDS.iter().any(|f| field(part, f).is_some()))
        .map(|(j, _)| {
            format!(
                "* {prefix}[{j}].data: required oneof field 'data' must have one initialized \
                 field\n"
            )
        })
        .collect()
}

fn check_generate(request: &Value) -> Result<(), Answer> {
    let contents = items(field(request, "contents"));
    let mut violations = Vec::new();
    unknown_fields(request, REQUEST_FIELDS, None, &mut violations);
    if let Some(config) = field(request, "generationConfig") {
        let at = Some("generation_config");
        unknown_fields(config, GENERATION_CONFIG_FIELDS, at, &mut violations);
    }
    for (i, content) in contents.iter().enumerate() {
        let at = format!("contents[{i}]");
        if !content.is_object() {
            let type_url = "type.googleapis.com/google.ai.generativelanguage.v1beta.Content";
            let description = format!("Invalid value at '{at}' ({type_url}), {}", shown(content));
            violations.push((Some(at), description));
            continue;
        }
        unknown_fields(content, CONTENT_FIELDS, Some(&at), &mut violations);
        for (j, part) in parts(content).iter().enumerate() {
            let at = format!("{at}.parts[{j}]");
            unknown_fields(part, PART_FIELDS, Some(&at), &mut violations);
            for (path, value) in bad_bytes(part, &at) {
                let description = format!(
                    "Invalid value at '{path}' (TYPE_BYTES), Base64 decoding failed for \"{value}\""
                );
                violations.push((Some(path), description));
            }
        }
    }
    if !violations.is_empty() {
        return Err(bad_request(violations));
    }
    if contents.is_empty() {
        return Err(invalid(
            "* GenerateContentRequest.contents: contents is not specified\n",
        ));
    }

    let mut missing = String::new();
    for (i, content) in contents.iter().enumerate() {
        let parts = parts(content);
        if parts.is_empty() {
            missing.push_str(&format!(
                "* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.\n"
            ));
        }
        let prefix = format!("GenerateContentRequest.contents[{i}].parts");
        missing.push_str(&parts_without_data(&parts, &prefix));
    }
    if !missing.is_empty() {
        return Err(invalid(&missing));
    }
    if contents
        .iter()
        .any(|content| !matches!(role(content), "" | "user" | "model" | "function"))
    {
        return Err(invalid("Please use a valid role: user, model."));
    }

    for (i, content) in contents.iter().enumerate() {
        let previous = i.checked_sub(1).and_then(|p| contents.get(p));
        if count_parts(content, "functionCall") > 0
            && !previous.is_some_and(|p| matches!(role(p), "" | "user" | "function"))
        {
            return Err(invalid(
                "Please ensure that function call turn comes immediately after a user turn or \
                 after a function response turn.",
            ));
        }
        let responses = count_parts(content, "functionResponse");
        if responses == 0 {
            continue;
        }
        let calls = previous.map_or(0, |p| count_parts(p, "functionCall"));
        if calls == 0 {
            return Err(invalid(
                "Please ensure that function response turn comes immediately after a function \
                 call turn.",
            ));
        }
        if calls != responses {
            return Err(invalid(
                "Please ensure that the number of function response parts is equal to the number \
                 of function call parts of the function call turn.",
            ));
        }
    }
    Ok(())
}

fn check_embed(request: &Value) -> Result<(), Answer> {
    let Some(content) = field(request, "content") else {
        return Err(invalid(
            "* EmbedContentRequest.content: content is not specified\n",
        ));
    };
    let missing = parts_without_data(&parts(content), "EmbedContentRequest.content.parts");
    if missing.is_empty() {
        Ok(())
    } else {
        Err(invalid(&missing))
    }
}

fn check_batch_embed(request: &Value) -> Result<(), Answer> {
    let requests = items(field(request, "requests"));
    if requests.len() > 100 {
        return Err(invalid(
            "* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch\n",
        ));
    }
    let mut violations = String::new();
    for (i, item) in requests.iter().enumerate() {
        let prefix = format!("BatchEmbedContentsRequest.requests[{i}]");
        match field(item, "model").and_then(Value::as_str) {
            None | Some("") => {
                violations.push_str(&format!("* {prefix}.model: model is not specified\n"));
            }
            Some(model) if !model.starts_with("models/") => {
                violations.push_str(&format!("* {prefix}.model: unexpected model name format\n"));
            }
            Some(_) => {}
        }
        let parts = field(item, "content").map(parts).unwrap_or_default();
        violations.push_str(&parts_without_data(
            &parts,
            &format!("{prefix}.content.parts"),
        ));
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(invalid(&violations))
    }
}

fn check_request(endpoint: Endpoint, request: &Value) -> Result<(), Answer> {
    match endpoint {
        Endpoint::Generate | Endpoint::Stream => check_generate(request),
        Endpoint::CountTokens => Ok(()),
        Endpoint::Embed => check_embed(request),
        Endpoint::BatchEmbed => check_batch_embed(request),
    }
}

// ---- answers ----

fn stream_answer(chunks: &[Value], sse: bool) -> Answer {
    Answer::Stream {
        events: chunks.iter().map(Value::to_string).collect(),
        sse,
        closes: false,
    }
}

fn default_answer(endpoint: Endpoint, model: &str, request: &Value, sse: bool) -> Answer {
    let body = match endpoint {
        Endpoint::Generate => Generation::plan(model, request).response(),
        Endpoint::Stream => return stream_answer(&Generation::plan(model, request).chunks(), sse),
        Endpoint::CountTokens => count_tokens_body(request),
        Endpoint::Embed => json!({ "embedding": content_embedding(model, request) }),
        Endpoint::BatchEmbed => {
            let embeddings: Vec<Value> = items(field(request, "requests"))
                .into_iter()
                .map(|item| content_embedding(model, item))
                .collect();
            json!({ "embeddings": embeddings })
        }
    };
    Answer::Json(StatusCode::OK, body, Vec::new())
}

/// The answer to a scripted reply; `None` for [`Reply::Hang`], which answers by default once
/// the wait is over.
fn scripted_answer(reply: Reply, sse: bool) -> Option<Answer> {
    Some(match reply {
        Reply::Response(body) => Answer::Json(StatusCode::OK, body, Vec::new()),
        Reply::Stream(chunks) => stream_answer(&chunks, sse),
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
        Reply::StreamThenError { events, error } => {
            let error = if error.get("error").is_some() {
                error
            } else {
                json!({ "error": error })
            };
            let mut events: Vec<String> = events.iter().map(Value::to_string).collect();
            events.push(error.to_string());
            Answer::Stream {
                events,
                sse,
                closes: true,
            }
        }
    })
}

fn set_header(headers: &mut HeaderMap, name: &str, value: &str) {
    match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
        (Ok(name), Ok(value)) => {
            headers.insert(name, value);
        }
        _ => eprintln!("fake Gemini: skipping the invalid header {name:?}: {value:?}"),
    }
}

fn respond(answer: Answer, started: Instant, delay: Duration) -> Response {
    let json_type = "application/json; charset=UTF-8";
    let (status, content_type, body, extra, closes) = match answer {
        Answer::Json(status, body, extra) => (
            status,
            json_type,
            Body::from(body.to_string()),
            extra,
            false,
        ),
        Answer::Html(status, page) => (
            status,
            "text/html; charset=UTF-8",
            Body::from(page),
            Vec::new(),
            false,
        ),
        Answer::Stream {
            events,
            sse,
            closes,
        } => {
            let count = events.len();
            let framed = events.into_iter().enumerate().map(move |(index, event)| {
                let text = match (sse, index) {
                    (true, _) => format!("data: {event}\r\n\r\n"),
                    (false, 0) => format!("[{event}"),
                    (false, _) => format!(",\r\n{event}"),
                };
                (index, text)
            });
            let close = match (sse, count) {
                (true, _) => None,
                (false, 0) => Some("[]".to_owned()),
                (false, _) => Some("]".to_owned()),
            };
            let stream = futures::stream::iter(framed.chain(close.map(|text| (0, text)))).then(
                move |(index, text)| async move {
                    if index > 0 && !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    Ok::<_, Infallible>(Bytes::from(text))
                },
            );
            let content_type = if sse { "text/event-stream" } else { json_type };
            (
                StatusCode::OK,
                content_type,
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
    set_header(headers, "vary", "Origin, X-Origin, Referer");
    set_header(headers, "server", "scaffolding on HTTPServer2");
    set_header(headers, "x-xss-protection", "0");
    set_header(headers, "x-frame-options", "SAMEORIGIN");
    set_header(headers, "x-content-type-options", "nosniff");
    set_header(
        headers,
        "server-timing",
        &format!("gfet4t7; dur={}", started.elapsed().as_millis()),
    );
    for (name, value) in &extra {
        set_header(headers, name, value);
    }
    if closes {
        set_header(headers, "connection", "close");
    }
    response
}

/// A request that passed every check, with the reply it consumed.
struct Admitted {
    endpoint: Endpoint,
    model: String,
    request: Value,
    reply: Option<Reply>,
}

/// Checks a request in Google's order (route, key, JSON, model, content) and takes its reply.
fn admit(
    state: &mut State,
    route: Option<(String, Endpoint)>,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    parsed: Option<Value>,
    raw: &[u8],
) -> Result<Admitted, Answer> {
    let Some((model, endpoint)) = route else {
        return Err(not_found_page(path));
    };
    authenticate(headers, query, &state.api_key)?;
    let Some(request) = parsed else {
        return Err(invalid_json(raw));
    };
    check_model(&model, endpoint, &state.missing_models)?;
    check_request(endpoint, &request)?;
    Ok(Admitted {
        endpoint,
        model,
        request,
        reply: state.replies.pop_front(),
    })
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
    let query = uri.query().unwrap_or_default().to_owned();
    let sse = query_param(&query, "alt").as_deref() == Some("sse");
    // Google takes an empty body for an empty message.
    let parsed = if body.is_empty() {
        Some(json!({}))
    } else {
        serde_json::from_slice::<Value>(&body)
            .ok()
            .filter(Value::is_object)
    };
    let recorded_body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
    };
    let (outcome, delay) = {
        let mut state = lock(&state);
        state.requests.push(Recorded {
            path: path.clone(),
            query: query.clone(),
            headers: headers.clone(),
            body: recorded_body,
        });
        let route = route(&method, &path);
        let outcome = admit(&mut state, route, &path, &query, &headers, parsed, &body);
        (outcome, state.chunk_delay)
    };
    let answer = match outcome {
        Err(answer) => answer,
        Ok(admitted) => {
            if let Some(Reply::Hang(wait)) = admitted.reply {
                tokio::time::sleep(wait).await;
            }
            admitted
                .reply
                .and_then(|reply| scripted_answer(reply, sse))
                .unwrap_or_else(|| {
                    default_answer(admitted.endpoint, &admitted.model, &admitted.request, sse)
                })
        }
    };
    respond(answer, started, delay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw_http::{Connection, HttpResponse};

    const FLASH: &str = "/v1beta/models/gemini-2.5-flash";

    /// What Google's responses carry beyond HTTP.
    trait GeminiResponse {
        /// The `data:` payloads of an event stream, which Google ends with `\r\n\r\n`.
        fn events(&self) -> Vec<Value>;
        /// The `error` object of a Google error body, after checking its `code`.
        fn error(&self) -> Value;
    }

    impl GeminiResponse for HttpResponse {
        fn events(&self) -> Vec<Value> {
            assert_eq!(self.header("content-type"), Some("text/event-stream"));
            assert!(self.body.ends_with("\r\n\r\n"), "{:?}", self.body);
            self.body
                .split_terminator("\r\n\r\n")
                .map(|event| serde_json::from_str(event.strip_prefix("data: ").unwrap()).unwrap())
                .collect()
        }

        fn error(&self) -> Value {
            let body = self.json();
            assert_eq!(body["error"]["code"], self.status, "{body}");
            body["error"].clone()
        }
    }

    /// Requests with a key as Google's clients send it: `x-goog-api-key: {key}`.
    trait WithKey {
        /// Posts a JSON `body` to `target`, a path and perhaps a query.
        async fn post_as(&mut self, target: &str, key: Option<&str>, body: &str) -> HttpResponse;
    }

    impl WithKey for Connection {
        async fn post_as(&mut self, target: &str, key: Option<&str>, body: &str) -> HttpResponse {
            let headers: Vec<_> = key.iter().map(|k| ("x-goog-api-key", *k)).collect();
            self.post(target, &headers, body).await
        }
    }

    async fn post(fake: &FakeGemini, target: &str, body: &Value) -> HttpResponse {
        Connection::open(&fake.base_url())
            .await
            .post_as(target, Some(DEFAULT_API_KEY), &body.to_string())
            .await
    }

    fn chat_request() -> Value {
        json!({
            "systemInstruction": { "parts": [{ "text": "You repeat things." }] },
            "contents": [
                { "role": "user", "parts": [{ "text": "First question" }] },
                { "role": "model", "parts": [{ "text": "First answer" }] },
                { "role": "user", "parts": [
                    { "text": "Say hello" },
                    { "text": "to  the world" },
                ]},
            ],
            "generationConfig": { "temperature": 0.2, "topP": 0.9, "topK": 40 },
            "safetySettings": [{
                "category": "HARM_CATEGORY_HARASSMENT",
                "threshold": "BLOCK_ONLY_HIGH",
            }],
        })
    }

    fn text_of(candidate: &Value) -> String {
        candidate["content"]["parts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|part| part.get("thought").is_none())
            .map(|part| part["text"].as_str().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_default_answer_echoes_the_last_user_text() {
        let fake = FakeGemini::start().await;
        assert!(fake.base_url().starts_with("http://127.0.0.1:"));
        assert!(!fake.base_url().contains("/v1beta"));
        let request = chat_request();
        let response = post(&fake, &format!("{FLASH}:generateContent"), &request).await;
        assert_eq!(response.status, 200, "{}", response.body);
        assert_eq!(
            response.header("content-type"),
            Some("application/json; charset=UTF-8")
        );
        assert_eq!(
            response.header("server"),
            Some("scaffolding on HTTPServer2")
        );
        assert!(
            response
                .header("server-timing")
                .unwrap()
                .starts_with("gfet4t7; dur=")
        );
        let body = response.json();
        assert_eq!(body["modelVersion"], "gemini-2.5-flash");
        assert_eq!(body["responseId"].as_str().unwrap().len(), 23);
        let candidates = body["candidates"].as_array().unwrap();
        assert_eq!(candidates.len(), 1);
        let candidate = &candidates[0];
        assert_eq!(
            candidate["content"],
            json!({ "parts": [{ "text": "Say hello\nto  the world" }], "role": "model" })
        );
        assert_eq!(candidate["finishReason"], "STOP");
        assert_eq!(candidate["index"], 0);
        let ratings = candidate["safetyRatings"].as_array().unwrap();
        assert_eq!(ratings.len(), 4);
        assert!(ratings.iter().all(|r| r["probability"] == "NEGLIGIBLE"));
        assert_eq!(ratings[0]["category"], "HARM_CATEGORY_SEXUALLY_EXPLICIT");
        // Words: 3 of the system instruction, then 2 + 2 + 5 of the contents; 5 in the answer.
        assert_eq!(
            body["usageMetadata"],
            json!({
                "promptTokenCount": 12,
                "candidatesTokenCount": 5,
                "totalTokenCount": 17,
                "promptTokensDetails": [{ "modality": "TEXT", "tokenCount": 12 }],
            })
        );

        let requests = fake.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].path, format!("{FLASH}:generateContent"));
        assert_eq!(requests[0].query, "");
        assert_eq!(requests[0].headers["x-goog-api-key"], DEFAULT_API_KEY);
        assert_eq!(requests[0].body, request);
    }

    #[tokio::test]
    async fn the_key_can_be_a_query_parameter_and_snake_case_names_are_read() {
        let fake = FakeGemini::start().await.with_api_key("AIzaSy-right");
        let mut connection = Connection::open(&fake.base_url()).await;
        let request = json!({
            "contents": [{ "parts": [{ "text": "one two three four" }] }],
            "generation_config": { "max_output_tokens": 2 },
        });
        let target = format!("{FLASH}:generateContent?key=AIzaSy%2Dright");
        let response = connection
            .post_as(&target, None, &request.to_string())
            .await;
        assert_eq!(response.status, 200, "{}", response.body);
        let candidate = &response.json()["candidates"][0];
        assert_eq!(text_of(candidate), "one two");
        assert_eq!(candidate["finishReason"], "MAX_TOKENS");
        let recorded = &fake.requests()[0];
        assert_eq!(recorded.query, "key=AIzaSy%2Dright");
        assert_eq!(recorded.query_param("key").as_deref(), Some("AIzaSy-right"));
        assert!(recorded.headers.get("x-goog-api-key").is_none());
    }

    #[tokio::test]
    async fn a_wrong_key_gets_400_api_key_invalid_and_none_gets_403() {
        let fake = FakeGemini::start().await;
        fake.push(FakeGemini::overloaded());
        let mut connection = Connection::open(&fake.base_url()).await;
        let body = chat_request().to_string();
        let target = format!("{FLASH}:generateContent");

        let response = connection.post_as(&target, Some("AIza-wrong"), &body).await;
        assert_eq!(response.status, 400);
        let error = response.error();
        assert_eq!(error["status"], "INVALID_ARGUMENT");
        assert_eq!(
            error["message"],
            "API key not valid. Please pass a valid API key."
        );
        assert_eq!(
            error["details"][0],
            json!({
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": { "service": "generativelanguage.googleapis.com" },
            })
        );
        let wrong_query = format!("{target}?key=AIza-wrong");
        let response = connection.post_as(&wrong_query, None, &body).await;
        assert_eq!(response.status, 400);

        let response = connection.post_as(&target, None, &body).await;
        assert_eq!(response.status, 403);
        let error = response.error();
        assert_eq!(error["status"], "PERMISSION_DENIED");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .starts_with("Method doesn't allow unregistered callers")
        );
        let response = connection.post_as(&target, Some(""), &body).await;
        assert_eq!(response.status, 403);

        assert_eq!(
            fake.pending_replies(),
            1,
            "refused requests leave the script"
        );
        let response = connection
            .post_as(&target, Some(DEFAULT_API_KEY), &body)
            .await;
        assert_eq!(response.status, 503);
        assert_eq!(response.error()["status"], "UNAVAILABLE");
        assert_eq!(fake.requests().len(), 5);
    }

    #[tokio::test]
    async fn streaming_sends_word_chunks_with_the_usage_so_far() {
        let fake = FakeGemini::start().await;
        let target = format!("{FLASH}:streamGenerateContent?alt=sse");
        let response = post(&fake, &target, &chat_request()).await;
        assert_eq!(response.status, 200);
        assert!(!response.body.contains("[DONE]"));
        let events = response.events();
        assert_eq!(events.len(), 5);
        let pieces: Vec<String> = events
            .iter()
            .map(|e| text_of(&e["candidates"][0]))
            .collect();
        assert_eq!(pieces, ["Say", " hello", "\nto", "  the", " world"]);
        let (last, others) = events.split_last().unwrap();
        for (index, event) in events.iter().enumerate() {
            assert_eq!(event["responseId"], events[0]["responseId"]);
            assert_eq!(event["modelVersion"], "gemini-2.5-flash");
            assert_eq!(event["usageMetadata"]["promptTokenCount"], 12);
            assert_eq!(event["usageMetadata"]["candidatesTokenCount"], index + 1);
        }
        assert!(
            others
                .iter()
                .all(|e| e["candidates"][0].get("finishReason").is_none())
        );
        assert_eq!(last["candidates"][0]["finishReason"], "STOP");
        assert_eq!(last["usageMetadata"]["totalTokenCount"], 17);
        assert_eq!(
            fake.requests()[0].query_param("alt").as_deref(),
            Some("sse")
        );

        // Without alt=sse, Google sends the same chunks as one JSON array.
        let target = format!("{FLASH}:streamGenerateContent");
        let response = post(&fake, &target, &chat_request()).await;
        assert_eq!(
            response.header("content-type"),
            Some("application/json; charset=UTF-8")
        );
        let chunks = response.json();
        assert_eq!(chunks.as_array().unwrap().len(), 5);
        assert_eq!(chunks[4]["candidates"][0]["finishReason"], "STOP");

        // Scripted chunks go out as they are.
        let scripted = FakeGemini::stream_chunks(&["Hel", "lo"]);
        fake.push(Reply::Stream(scripted.clone()));
        let target = format!("{FLASH}:streamGenerateContent?alt=sse");
        let events = post(&fake, &target, &chat_request()).await.events();
        assert_eq!(events, scripted);
        assert_eq!(events[1]["usageMetadata"]["candidatesTokenCount"], 2);
        assert_eq!(events[1]["candidates"][0]["finishReason"], "STOP");
    }

    #[tokio::test]
    async fn thoughts_count_against_max_output_tokens() {
        let fake = FakeGemini::start().await;
        let mut request = chat_request();
        request["generationConfig"] = json!({
            "thinkingConfig": { "includeThoughts": true, "thinkingBudget": 4 },
            "maxOutputTokens": 6,
            "candidateCount": 2,
        });
        let body = post(&fake, &format!("{FLASH}:generateContent"), &request)
            .await
            .json();
        let candidates = body["candidates"].as_array().unwrap();
        assert_eq!(candidates.len(), 2);
        assert_eq!(candidates[1]["index"], 1);
        let parts = &candidates[0]["content"]["parts"];
        assert_eq!(
            parts[0],
            json!({ "text": "The user wants their", "thought": true })
        );
        assert_eq!(parts[1], json!({ "text": "Say hello" }));
        assert_eq!(candidates[0]["finishReason"], "MAX_TOKENS");
        let usage = &body["usageMetadata"];
        assert_eq!(usage["thoughtsTokenCount"], 4);
        assert_eq!(usage["candidatesTokenCount"], 4);
        assert_eq!(usage["totalTokenCount"], 12 + 4 + 4);

        // Thinking that uses up the budget leaves a candidate without parts.
        request["generationConfig"] = json!({
            "thinkingConfig": { "thinkingBudget": 100 },
            "maxOutputTokens": 3,
        });
        let body = post(&fake, &format!("{FLASH}:generateContent"), &request)
            .await
            .json();
        assert_eq!(body["candidates"][0]["content"], json!({ "role": "model" }));
        assert_eq!(body["candidates"][0]["finishReason"], "MAX_TOKENS");
        assert!(body["usageMetadata"].get("candidatesTokenCount").is_none());
    }

    #[tokio::test]
    async fn a_blocked_prompt_has_feedback_and_no_candidates() {
        let fake = FakeGemini::start().await;
        fake.push(Reply::Response(FakeGemini::blocked_prompt()));
        let body = post(&fake, &format!("{FLASH}:generateContent"), &chat_request())
            .await
            .json();
        assert!(body.get("candidates").is_none());
        assert_eq!(body["promptFeedback"]["blockReason"], "SAFETY");
        let ratings = body["promptFeedback"]["safetyRatings"].as_array().unwrap();
        assert_eq!(ratings.len(), 4);
        assert!(
            ratings
                .iter()
                .any(|r| r["blocked"] == true && r["probability"] == "HIGH")
        );
        assert_eq!(
            body["usageMetadata"],
            json!({
                "promptTokenCount": 20,
                "totalTokenCount": 20,
                "promptTokensDetails": [{ "modality": "TEXT", "tokenCount": 20 }],
            })
        );
    }

    #[tokio::test]
    async fn a_scripted_429_carries_retry_info_then_defaults_resume() {
        let fake = FakeGemini::start().await;
        fake.push(FakeGemini::quota_exhausted(30));
        let target = format!("{FLASH}:generateContent");
        let response = post(&fake, &target, &chat_request()).await;
        assert_eq!(response.status, 429);
        assert!(response.header("retry-after").is_none());
        let error = response.error();
        assert_eq!(error["status"], "RESOURCE_EXHAUSTED");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .starts_with("You exceeded your current quota")
        );
        let details = error["details"].as_array().unwrap();
        let detail = |kind: &str| {
            details
                .iter()
                .find(|d| d["@type"] == format!("type.googleapis.com/google.rpc.{kind}"))
                .unwrap()
        };
        assert_eq!(detail("RetryInfo")["retryDelay"], "30s");
        let violation = &detail("QuotaFailure")["violations"][0];
        assert_eq!(
            violation["quotaId"],
            "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
        );
        assert!(detail("Help")["links"][0]["url"].is_string());

        for (reply, code, status) in [
            (FakeGemini::internal_error(), 500, "INTERNAL"),
            (FakeGemini::deadline_exceeded(), 504, "DEADLINE_EXCEEDED"),
        ] {
            fake.push(reply);
            let response = post(&fake, &target, &chat_request()).await;
            assert_eq!(response.status, code);
            assert_eq!(response.error()["status"], status);
        }
        let response = post(&fake, &target, &chat_request()).await;
        assert_eq!(response.status, 200);
    }

    #[tokio::test]
    async fn function_calls_scripted_or_forced_by_mode_any() {
        let fake = FakeGemini::start().await;
        let scripted =
            FakeGemini::function_call_response("get_weather", json!({ "city": "Paris" }));
        fake.push(Reply::Response(scripted.clone()));
        let mut request = chat_request();
        request["tools"] = json!([{ "functionDeclarations": [
            { "name": "get_time", "description": "The time." },
            {
                "name": "get_weather",
                "description": "The weather.",
                "parameters": {
                    "type": "OBJECT",
                    "properties": { "city": { "type": "STRING" } },
                    "required": ["city"],
                },
            },
        ]}]);
        let target = format!("{FLASH}:generateContent");
        let body = post(&fake, &target, &request).await.json();
        assert_eq!(body, scripted);
        assert_eq!(
            body["candidates"][0]["content"]["parts"][0]["functionCall"],
            json!({ "name": "get_weather", "args": { "city": "Paris" } })
        );
        assert_eq!(body["candidates"][0]["finishReason"], "STOP");

        request["toolConfig"] = json!({ "functionCallingConfig": {
            "mode": "ANY",
            "allowedFunctionNames": ["get_weather"],
        }});
        let body = post(&fake, &target, &request).await.json();
        assert_eq!(
            body["candidates"][0]["content"]["parts"],
            json!([{ "functionCall": { "name": "get_weather", "args": {} } }])
        );

        // The call and its response sent back: the answer echoes the response.
        request["contents"] = json!([
            { "role": "user", "parts": [{ "text": "Weather in Paris?" }] },
            { "role": "model", "parts": [
                { "functionCall": { "name": "get_weather", "args": { "city": "Paris" } } },
            ]},
            { "role": "user", "parts": [
                { "functionResponse": { "name": "get_weather", "response": { "temp": 21 } } },
            ]},
        ]);
        request["toolConfig"] = json!({ "functionCallingConfig": { "mode": "AUTO" } });
        let body = post(&fake, &target, &request).await.json();
        assert_eq!(text_of(&body["candidates"][0]), "{\"temp\":21}");
    }

    #[tokio::test]
    async fn count_tokens_counts_words_and_media() {
        let fake = FakeGemini::start().await;
        let target = format!("{FLASH}:countTokens");
        let request = json!({ "contents": [{ "parts": [
            { "text": "How many tokens" },
            { "inlineData": { "mimeType": "image/png", "data": "iVBORw0KGgo=" } },
        ]}]});
        let body = post(&fake, &target, &request).await.json();
        assert_eq!(
            body,
            json!({
                "totalTokens": 3 + MEDIA_PART_TOKENS,
                "promptTokensDetails": [
                    { "modality": "TEXT", "tokenCount": 3 },
                    { "modality": "IMAGE", "tokenCount": MEDIA_PART_TOKENS },
                ],
            })
        );
        let request = json!({ "generateContentRequest": {
            "model": "models/gemini-2.5-flash",
            "contents": [{ "parts": [{ "text": "a b" }] }],
            "systemInstruction": { "parts": [{ "text": "c" }] },
        }});
        assert_eq!(
            post(&fake, &target, &request).await.json()["totalTokens"],
            3
        );
    }

    #[tokio::test]
    async fn embeddings_are_deterministic_and_cut_from_the_end() {
        let fake = FakeGemini::start().await;
        let model = "/v1beta/models/text-embedding-004";
        let request = json!({ "content": { "parts": [{ "text": "same" }] } });
        let response = post(&fake, &format!("{model}:embedContent"), &request).await;
        assert_eq!(response.status, 200, "{}", response.body);
        let values: Vec<f64> =
            serde_json::from_value(response.json()["embedding"]["values"].clone()).unwrap();
        assert_eq!(values.len(), 768);
        let norm: f64 = values.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "{norm}");

        let item = |text: &str, dimensions: u64| {
            json!({
                "model": "models/text-embedding-004",
                "content": { "parts": [{ "text": text }] },
                "taskType": "RETRIEVAL_DOCUMENT",
                "outputDimensionality": dimensions,
            })
        };
        let request = json!({ "requests": [item("same", 8), item("other", 8)] });
        let body = post(&fake, &format!("{model}:batchEmbedContents"), &request)
            .await
            .json();
        let embeddings = body["embeddings"].as_array().unwrap();
        assert_eq!(embeddings.len(), 2);
        let first: Vec<f64> = serde_json::from_value(embeddings[0]["values"].clone()).unwrap();
        assert_eq!(first, values[..8]);
        assert_ne!(embeddings[0], embeddings[1]);

        let request = json!({ "content": { "parts": [{ "text": "same" }] } });
        let gemini = "/v1beta/models/gemini-embedding-001:embedContent";
        let body = post(&fake, gemini, &request).await.json();
        assert_eq!(body["embedding"]["values"].as_array().unwrap().len(), 3072);

        // Every request of a batch needs its own `models/...` model.
        let request = json!({ "requests": [
            { "content": { "parts": [{ "text": "a" }] } },
            { "model": "text-embedding-004", "content": { "parts": [{ "text": "b" }] } },
        ]});
        let response = post(&fake, &format!("{model}:batchEmbedContents"), &request).await;
        assert_eq!(response.status, 400);
        assert_eq!(
            response.error()["message"],
            "* BatchEmbedContentsRequest.requests[0].model: model is not specified\n\
             * BatchEmbedContentsRequest.requests[1].model: unexpected model name format\n"
        );
    }

    #[tokio::test]
    async fn unknown_models_methods_and_paths_get_404() {
        let fake = FakeGemini::start().await.without_model("gemini-1.5-pro");
        let cases = [
            ("/v1beta/models/gpt-4o:generateContent", "generateContent"),
            (
                "/v1beta/models/gemini-1.5-pro:generateContent",
                "generateContent",
            ),
            (
                "/v1beta/models/text-embedding-004:streamGenerateContent?alt=sse",
                "StreamGenerateContent",
            ),
            (
                "/v1beta/models/gemini-2.5-flash:embedContent",
                "embedContent",
            ),
        ];
        for (target, method) in cases {
            let response = post(&fake, target, &chat_request()).await;
            assert_eq!(response.status, 404, "{target}");
            let error = response.error();
            assert_eq!(error["status"], "NOT_FOUND");
            let model = target.split(['/', ':']).nth(3).unwrap();
            assert_eq!(
                error["message"],
                format!(
                    "models/{model} is not found for API version v1beta, or is not supported \
                     for {method}. Call ListModels to see the list of available models and \
                     their supported methods."
                )
            );
        }
        // Paths Google does not serve get its HTML page, whatever the key.
        let mut connection = Connection::open(&fake.base_url()).await;
        for target in [
            "/v1/chat/completions",
            "/v1beta/models/gemini-2.5-flash:generateText",
        ] {
            let response = connection.post_as(target, None, "{}").await;
            assert_eq!(response.status, 404);
            assert_eq!(
                response.header("content-type"),
                Some("text/html; charset=UTF-8")
            );
            assert!(response.body.contains("<b>404.</b>"), "{}", response.body);
        }
        assert_eq!(fake.requests().len(), 6);
    }

    #[tokio::test]
    async fn malformed_requests_get_googles_400s() {
        let fake = FakeGemini::start().await;
        fake.push(FakeGemini::overloaded());
        let target = format!("{FLASH}:generateContent");
        let call = json!({ "functionCall": { "name": "f", "args": {} } });
        let answer = json!({ "functionResponse": { "name": "f", "response": {} } });
        let cases = [
            (
                json!({}),
                "* GenerateContentRequest.contents: contents is not specified\n",
            ),
            (
                json!({ "contents": [{ "role": "user", "parts": [] }] }),
                "* GenerateContentRequest.contents[0].parts: contents.parts must not be empty.\n",
            ),
            (
                json!({ "contents": [{ "parts": [{ "thought": true }] }] }),
                "* GenerateContentRequest.contents[0].parts[0].data: required oneof field \
                 'data' must have one initialized field\n",
            ),
            (
                json!({ "contents": [{ "role": "assistant", "parts": [{ "text": "hi" }] }] }),
                "Please use a valid role: user, model.",
            ),
            (
                json!({ "contents": [{ "role": "model", "parts": [call] }] }),
                "Please ensure that function call turn comes immediately after a user turn or \
                 after a function response turn.",
            ),
            (
                json!({ "contents": [
                    { "parts": [{ "text": "hi" }] },
                    { "role": "user", "parts": [answer] },
                ]}),
                "Please ensure that function response turn comes immediately after a function \
                 call turn.",
            ),
            (
                json!({ "contents": [
                    { "parts": [{ "text": "hi" }] },
                    { "role": "model", "parts": [call, call] },
                    { "role": "user", "parts": [answer] },
                ]}),
                "Please ensure that the number of function response parts is equal to the \
                 number of function call parts of the function call turn.",
            ),
        ];
        for (request, message) in cases {
            let response = post(&fake, &target, &request).await;
            assert_eq!(response.status, 400, "{request}");
            let error = response.error();
            assert_eq!(error["status"], "INVALID_ARGUMENT");
            assert_eq!(error["message"], message, "{request}");
        }

        let request = json!({
            "contents": [{ "parts": [
                { "text": "look" },
                { "inlineData": { "mimeType": "image/png", "data": "data:image/png;base64,AAAA" } },
            ]}],
            "max_tokens": 10,
            "generationConfig": { "maxTokens": 10 },
        });
        let response = post(&fake, &target, &request).await;
        assert_eq!(response.status, 400);
        let error = response.error();
        let violations = &error["details"][0]["fieldViolations"];
        assert_eq!(
            error["details"][0]["@type"],
            "type.googleapis.com/google.rpc.BadRequest"
        );
        assert_eq!(
            violations[0],
            json!({ "description":
                "Invalid JSON payload received. Unknown name \"max_tokens\": Cannot find field." })
        );
        assert_eq!(violations[1]["field"], "generation_config");
        assert_eq!(
            violations[2]["description"],
            "Invalid value at 'contents[0].parts[1].inline_data.data' (TYPE_BYTES), Base64 \
             decoding failed for \"data:image/png;base64,AAAA\""
        );

        let mut connection = Connection::open(&fake.base_url()).await;
        let response = connection
            .post_as(&target, Some(DEFAULT_API_KEY), "{not json")
            .await;
        assert_eq!(response.status, 400);
        assert!(
            response.error()["message"]
                .as_str()
                .unwrap()
                .starts_with("Invalid JSON payload received.")
        );
        assert_eq!(fake.requests()[8].body, json!("{not json"));
        assert_eq!(
            fake.pending_replies(),
            1,
            "invalid requests leave the script"
        );
    }

    #[tokio::test]
    async fn a_stream_can_fail_midway() {
        let fake = FakeGemini::start().await;
        let chunks = FakeGemini::stream_chunks(&["Once", " upon", " a time"]);
        let error = json!({
            "code": 503,
            "message": "The model is overloaded. Please try again later.",
            "status": "UNAVAILABLE",
        });
        fake.push(Reply::StreamThenError {
            events: chunks[..2].to_vec(),
            error: error.clone(),
        });
        let mut connection = Connection::open(&fake.base_url()).await;
        let target = format!("{FLASH}:streamGenerateContent?alt=sse");
        let response = connection
            .post_as(&target, Some(DEFAULT_API_KEY), &chat_request().to_string())
            .await;
        assert_eq!(response.status, 200);
        let events = response.events();
        assert_eq!(events.len(), 3);
        assert_eq!(events[..2], chunks[..2]);
        assert_eq!(events[2], json!({ "error": error }));
        assert!(connection.closed().await);
    }

    #[tokio::test]
    async fn a_hang_delays_the_default_answer() {
        let fake = FakeGemini::start().await;
        fake.push(Reply::Hang(Duration::from_secs(30)));
        fake.push(Reply::Hang(Duration::from_millis(10)));
        let target = format!("{FLASH}:generateContent");
        let request = chat_request();
        let hung =
            tokio::time::timeout(Duration::from_millis(200), post(&fake, &target, &request)).await;
        assert!(hung.is_err(), "the first request should still be waiting");
        let response = post(&fake, &target, &request).await;
        assert_eq!(response.status, 200);
        assert_eq!(
            text_of(&response.json()["candidates"][0]),
            "Say hello\nto  the world"
        );
        assert_eq!(fake.pending_replies(), 0);
    }

    #[test]
    fn helpers_make_well_formed_bodies() {
        let text = FakeGemini::text_response("Hi there");
        assert_eq!(
            text["candidates"][0]["content"]["parts"][0]["text"],
            "Hi there"
        );
        assert_eq!(text["usageMetadata"]["totalTokenCount"], 22);
        let empty = FakeGemini::stream_chunks(&[]);
        assert_eq!(empty.len(), 1);
        assert_eq!(
            empty[0]["candidates"][0]["content"],
            json!({ "role": "model" })
        );
        let body = FakeGemini::error_body(400, "INVALID_ARGUMENT", "bad");
        assert_eq!(
            body,
            json!({ "error": { "code": 400, "message": "bad", "status": "INVALID_ARGUMENT" } })
        );
    }

    #[test]
    fn word_pieces_put_back_together_give_the_text() {
        for text in ["", "one", " lead and  trail ", "a\nb\tc"] {
            assert_eq!(word_pieces(text).concat(), text);
        }
        assert_eq!(word_pieces(" lead and "), [" lead", " and "]);
        assert_eq!(snake_case("generationConfig"), "generation_config");
        assert_eq!(percent_decode("a%2Db+c%zz"), "a-b c%zz");
        assert!(is_base64("iVBORw0KGgo="));
        assert!(is_base64("iVBORw0KGgo"));
        assert!(!is_base64("data:image/png;base64,AAAA"));
    }
}
