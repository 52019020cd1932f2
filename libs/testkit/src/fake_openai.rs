//! A fake OpenAI API server for tests.
//!
//! It answers, over HTTP on `127.0.0.1`, the endpoints Switchyard's OpenAI adapter calls, in the
//! wire format OpenAI documents (<https://platform.openai.com/docs/api-reference>), and every
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
//! - `POST /v1/images/generations`: an `ImagesResponse`, `created` and `data` with `n` images
//!   (default 1), each a valid 2×2 PNG whose colours derive from the prompt and the image's
//!   position (the same request draws the same pictures). `dall-e-2` (the default model) and
//!   `dall-e-3` answer each as a `url`, `{base_url}/files/img-<24 hex digits>.png`, or with
//!   `"response_format": "b64_json"` as `b64_json`; `dall-e-3` adds a `revised_prompt`, the
//!   prompt after [`REVISED_PROMPT_PREFIX`]. Any other model is taken for a GPT image model
//!   (`gpt-image-1`, `gpt-image-1-mini`, `gpt-image-1.5`): always `b64_json`, and the answer
//!   echoes the `size`, `quality`, `output_format` and `background` used (`auto` being
//!   `1024x1024`, `medium` and `opaque`; the bytes are PNG whatever the format, RGBA with
//!   transparent pixels for a transparent background), with a `usage`: the prompt's words as
//!   input (text) tokens, and as output tokens OpenAI's table per image times `n` (1024x1024:
//!   low 272, medium 1056, high 4160; 1536x1024 and 1024x1536: low 408, medium 1584, high 6240).
//!   OpenAI's 400s name the parameter: no `prompt`; `n` not from 1 to 10 (only 1 for
//!   `dall-e-3`); a `size`, `quality`, `style`, `response_format`, `output_format` or
//!   `background` the model does not take (`dall-e-3`: 1024x1024, 1792x1024 or 1024x1792;
//!   standard or hd; vivid or natural; url or b64_json. GPT image models: 1024x1024, 1536x1024,
//!   1024x1536 or auto; low, medium, high or auto; png, jpeg or webp; transparent, opaque or
//!   auto; and no `response_format` at all: "Unknown parameter: 'response_format'.").
//! - `GET /v1/files/{name}`: the PNG of an image answered as a URL, as `image/png`, without a
//!   key, as OpenAI's signed image URLs; a 404 for any other name.
//! - `POST /v1/audio/transcriptions`: a `multipart/form-data` form with a `file` (with a
//!   filename) and a `model`, and optionally `language`, `prompt`, `response_format`,
//!   `temperature`, `timestamp_granularities[]` (repeated: `segment`, `word`) and `stream`. The
//!   audio "says" the uploaded file's text, trimmed, when it is UTF-8 text without control
//!   characters (tests upload text as audio), else [`FALLBACK_TRANSCRIPT`]. It lasts
//!   [`SECONDS_PER_WORD`] per word, at least a second, word `i` spanning `0.5 i` to `0.5 (i + 1)`
//!   seconds; a segment is a sentence, ended by a word ending in `.`, `?` or `!`. `whisper-1`
//!   answers every `response_format` and ignores `stream`: `json` (default), `{"text", "usage":
//!   {"type": "duration", "seconds"}}` (whole seconds, rounded up); `text`, the text and a
//!   newline as `text/plain`; `srt` and `vtt`, a cue per segment as `text/plain`; `verbose_json`,
//!   `task`, `language` (the English name of `language`, default `english`), `duration`, `text`,
//!   `segments` (with Whisper's `id`, `seek`, `start`, `end`, `text` after a space, `tokens`,
//!   `temperature`, `avg_logprob`, `compression_ratio`, `no_speech_prob`), with
//!   `timestamp_granularities[]=word` also `words` (without their punctuation), and `usage`. Any
//!   other model is taken for a GPT-4o one (`gpt-4o-transcribe`, `gpt-4o-mini-transcribe`):
//!   `json` and `text` only, with a token usage (input: [`AUDIO_TOKENS_PER_SECOND`] audio tokens
//!   per second and the prompt's words as text tokens; output: the transcript's words); with
//!   `stream=true`, a `text/event-stream` of `transcript.text.delta` events, a word each with
//!   the whitespace before it (put together they give the text), then `transcript.text.done`
//!   with the text and usage, and no `[DONE]`. OpenAI's 400s: no file or model (its validation
//!   message, naming them), a body that is not a form ("Invalid Content-Type header"), a format
//!   the model does not take (`unsupported_value`), `timestamp_granularities[]` without
//!   `verbose_json`. The recorded body describes the form: each text field as a string, a field
//!   sent as `name[]` or more than once as a list of them, and the file as `{"filename",
//!   "content_type", "bytes"}` (its length).
//!
//! Every request needs `Authorization: Bearer <key>` with the configured key (default
//! [`DEFAULT_API_KEY`]), image downloads excepted: a wrong key gets 401 `invalid_api_key`, a
//! missing one (or one not given as `Bearer`) OpenAI's "You didn't provide an API key" 401. A
//! JSON body that is not JSON gets OpenAI's 400, a chat request without `model` or `messages`
//! (an embeddings request without `model` or `input`) OpenAI's 400 for it; unknown paths and
//! methods answer 404 `Invalid URL (METHOD /path)`. Responses carry `x-request-id`,
//! `openai-organization`, `openai-processing-ms` and `openai-version`, and successful ones the
//! `x-ratelimit-*` headers (10 000 requests, counting down by one per request received, image
//! downloads included, and 30 000 000 tokens, less the request's prompt tokens: an image
//! prompt's words, none for a transcription).
//!
//! Unless scripted with [`FakeOpenAi::push`], a chat completion echoes the text of the last user
//! message, and the "tokens" of the usage are whitespace-separated words ([`count_tokens`]):
//! prompt tokens are the words of every message's text, completion tokens those of the answer.
//! Only one choice is returned, whatever `n`. A scripted reply answers the next request on any
//! of the four endpoints.

use std::collections::{HashMap, VecDeque};
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

/// What the fake "hears" in an uploaded file that is not text.
pub const FALLBACK_TRANSCRIPT: &str = "The quick brown fox jumps over the lazy dog.";

/// How long each word of a transcript lasts in the audio, in seconds.
pub const SECONDS_PER_WORD: f64 = 0.5;

/// Audio input tokens per second of audio, in the usage of GPT-4o transcriptions.
pub const AUDIO_TOKENS_PER_SECOND: u64 = 10;

/// What `dall-e-3` puts before the prompt in an image's `revised_prompt`.
pub const REVISED_PROMPT_PREFIX: &str = "A detailed, high-quality image of the following: ";

/// The eight bytes every PNG file starts with.
pub const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

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
    /// 200 with this JSON body, such as a `chat.completion` object, an `ImagesResponse` or a
    /// transcription.
    Completion(Value),
    /// 200 with a stream of these chunk bodies as `data:` events, then `data: [DONE]`; on
    /// `/v1/audio/transcriptions`, whose streams end with their last event, without it.
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
    /// Such as `http://127.0.0.1:41234/v1`, for the URLs of images.
    base_url: String,
    /// The images answered as URLs, by file name, served at `{base_url}/files/{name}`.
    files: HashMap<String, Bytes>,
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
        // Binding fails only on a host without a loopback interface, where no test can run.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fake OpenAI to 127.0.0.1");
        let address = listener.local_addr().expect("the fake OpenAI's address");
        let base_url = format!("http://{address}/v1");
        let state = Arc::new(Mutex::new(State {
            api_key: DEFAULT_API_KEY.to_owned(),
            organization: "user-switchyard-test".to_owned(),
            chunk_delay: Duration::ZERO,
            replies: VecDeque::new(),
            requests: Vec::new(),
            base_url: base_url.clone(),
            files: HashMap::new(),
        }));
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
            base_url,
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

    /// Queues a reply: each authenticated, well-formed request consumes the oldest one, whatever
    /// its endpoint (image downloads consume none).
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

    /// The contract violations of the requests received on the four endpoints, each as
    /// `{request index} {path}{instance path}: {message}`; empty when all are valid.
    ///
    /// A transcription form is checked as the object `CreateTranscriptionRequest` describes:
    /// field names without `[]`, the file as a string, and `temperature`, `stream`, list fields
    /// and `chunking_strategy` as a number, a boolean, lists and an object where their text reads
    /// as one, so that unknown fields and values outside the contract show.
    pub fn contract_violations(&self) -> Vec<String> {
        self.requests()
            .iter()
            .enumerate()
            .flat_map(|(index, request)| {
                let body = &request.body;
                let result = match request.path.as_str() {
                    "/v1/chat/completions" => {
                        openai_contract::validate("CreateChatCompletionRequest", body)
                    }
                    "/v1/embeddings" => openai_contract::validate("CreateEmbeddingRequest", body),
                    "/v1/images/generations" => {
                        openai_contract::validate("CreateImageRequest", body)
                    }
                    "/v1/audio/transcriptions" => openai_contract::validate(
                        "CreateTranscriptionRequest",
                        &form_instance(body),
                    ),
                    _ => return Vec::new(),
                };
                match result {
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
    /// 200 with this `text/plain` body.
    Text(String),
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
    // The images endpoint has a default model.
    if body.get("model").is_none() && endpoint != Endpoint::Images {
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
        Endpoint::Images => {
            image_job(body)?;
            return Ok(());
        }
        // Forms are checked by `transcription_job`.
        Endpoint::Transcriptions => return Ok(()),
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
    Images,
    Transcriptions,
}

/// The answer when nothing is scripted; `form` is the form of a transcription request.
fn default_answer(endpoint: Endpoint, body: &Value, form: Option<&Form>, state: &Shared) -> Answer {
    match endpoint {
        Endpoint::Chat => default_chat(body),
        Endpoint::Embeddings => Answer::Json(StatusCode::OK, default_embeddings(body), Vec::new()),
        Endpoint::Images => default_images(body, state),
        Endpoint::Transcriptions => match form {
            Some(form) => default_transcription(form),
            None => error_answer(
                StatusCode::BAD_REQUEST,
                "Could not parse multipart form",
                None,
                None,
            ),
        },
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

// ---- images ----

/// The image models, each with OpenAI's rules for its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ImageModel {
    DallE2,
    DallE3,
    /// `gpt-image-1`, `gpt-image-1-mini`, `gpt-image-1.5`, and any model the fake does not know.
    Gpt,
}

/// What an image request asks for, checked as OpenAI checks it, with the defaults filled in.
#[derive(Debug)]
struct ImageJob {
    model: ImageModel,
    prompt: String,
    n: u64,
    /// The size used: `auto` is 1024x1024.
    size: String,
    /// The quality used: `auto` is `medium` for GPT image models, `standard` for DALL·E.
    quality: String,
    /// DALL·E only: answer URLs rather than base64.
    urls: bool,
    /// GPT image models only.
    output_format: String,
    /// GPT image models only; `auto` is `opaque`.
    background: String,
}

/// JSON's name for a value's type, as OpenAI's messages give it.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a decimal",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn invalid_type(param: &str, expected: &str, value: &Value) -> Answer {
    error_answer(
        StatusCode::BAD_REQUEST,
        &format!(
            "Invalid type for '{param}': expected {expected}, but got {} instead.",
            type_name(value)
        ),
        Some(param),
        Some("invalid_type"),
    )
}

/// OpenAI's answer to a value outside a parameter's allowed set.
fn invalid_value(param: &str, value: &str, supported: &[&str]) -> Answer {
    let quoted: Vec<String> = supported.iter().map(|v| format!("'{v}'")).collect();
    let list = match quoted.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [first, last] => format!("{first} and {last}"),
        [init @ .., last] => format!("{}, and {last}", init.join(", ")),
    };
    error_answer(
        StatusCode::BAD_REQUEST,
        &format!("Invalid value: '{value}'. Supported values are: {list}."),
        Some(param),
        Some("invalid_value"),
    )
}

/// A string parameter of a JSON body; `None` when absent or null.
fn string_param(body: &Value, param: &str) -> Result<Option<String>, Answer> {
    match body.get(param) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => Ok(Some(value.clone())),
        Some(other) => Err(invalid_type(param, "a string", other)),
    }
}

/// A string parameter that must be one of `supported`; `default` when absent or null.
fn choice(body: &Value, param: &str, supported: &[&str], default: &str) -> Result<String, Answer> {
    let value = string_param(body, param)?.unwrap_or_else(|| default.to_owned());
    if supported.contains(&value.as_str()) {
        Ok(value)
    } else {
        Err(invalid_value(param, &value, supported))
    }
}

/// `n`, from 1 to `max`; 1 when absent or null.
fn image_count(body: &Value, max: u64) -> Result<u64, Answer> {
    let n = match body.get("n") {
        None | Some(Value::Null) => return Ok(1),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.as_i64().unwrap_or(i64::MAX),
        Some(other) => return Err(invalid_type("n", "an integer", other)),
    };
    if n < 1 {
        return Err(error_answer(
            StatusCode::BAD_REQUEST,
            &format!(
                "Invalid 'n': integer below minimum value. Expected a value >= 1, but got {n} \
                 instead."
            ),
            Some("n"),
            Some("integer_below_min_value"),
        ));
    }
    let n = n.unsigned_abs();
    if n > max {
        return Err(error_answer(
            StatusCode::BAD_REQUEST,
            &format!(
                "Invalid 'n': integer above maximum value. Expected a value <= {max}, but got \
                 {n} instead."
            ),
            Some("n"),
            Some("integer_above_max_value"),
        ));
    }
    Ok(n)
}

/// Checks an image request as OpenAI does, parameter by parameter, for its model.
fn image_job(body: &Value) -> Result<ImageJob, Answer> {
    let Some(prompt) = string_param(body, "prompt")? else {
        return Err(missing("prompt"));
    };
    // OpenAI's default model for this endpoint is still `dall-e-2`.
    let model = match string_param(body, "model")?.as_deref() {
        None | Some("dall-e-2") => ImageModel::DallE2,
        Some("dall-e-3") => ImageModel::DallE3,
        Some(_) => ImageModel::Gpt,
    };
    if model == ImageModel::Gpt {
        // GPT image models always answer base64, and refuse the parameter outright.
        if body.get("response_format").is_some() {
            return Err(error_answer(
                StatusCode::BAD_REQUEST,
                "Unknown parameter: 'response_format'.",
                Some("response_format"),
                Some("unknown_parameter"),
            ));
        }
        let n = image_count(body, 10)?;
        let size = choice(
            body,
            "size",
            &["1024x1024", "1024x1536", "1536x1024", "auto"],
            "auto",
        )?;
        let quality = choice(body, "quality", &["low", "medium", "high", "auto"], "auto")?;
        let output_format = choice(body, "output_format", &["png", "jpeg", "webp"], "png")?;
        let background = choice(
            body,
            "background",
            &["transparent", "opaque", "auto"],
            "auto",
        )?;
        return Ok(ImageJob {
            model,
            prompt,
            n,
            size: if size == "auto" {
                "1024x1024".to_owned()
            } else {
                size
            },
            quality: if quality == "auto" {
                "medium".to_owned()
            } else {
                quality
            },
            urls: false,
            output_format,
            background: if background == "auto" {
                "opaque".to_owned()
            } else {
                background
            },
        });
    }
    let (max_n, sizes): (u64, &[&str]) = if model == ImageModel::DallE3 {
        (1, &["1024x1024", "1792x1024", "1024x1792"])
    } else {
        (10, &["256x256", "512x512", "1024x1024"])
    };
    let n = image_count(body, max_n)?;
    let size = choice(body, "size", sizes, "1024x1024")?;
    let quality = if model == ImageModel::DallE3 {
        choice(body, "quality", &["standard", "hd", "auto"], "standard")?
    } else {
        choice(body, "quality", &["standard", "auto"], "standard")?
    };
    if model == ImageModel::DallE3 {
        choice(body, "style", &["vivid", "natural"], "vivid")?;
    }
    let format = choice(body, "response_format", &["url", "b64_json"], "url")?;
    Ok(ImageJob {
        model,
        prompt,
        n,
        size,
        quality: if quality == "auto" {
            "standard".to_owned()
        } else {
            quality
        },
        urls: format == "url",
        output_format: "png".to_owned(),
        background: "opaque".to_owned(),
    })
}

/// Output tokens per image of the GPT image models, by quality and size: OpenAI's published
/// table (<https://platform.openai.com/docs/guides/image-generation#cost-and-latency>).
fn gpt_image_tokens(quality: &str, size: &str) -> u64 {
    match (quality, size == "1024x1024") {
        ("low", true) => 272,
        ("low", false) => 408,
        ("high", true) => 4160,
        ("high", false) => 6240,
        (_, true) => 1056,
        (_, false) => 1584,
    }
}

fn default_images(body: &Value, state: &Shared) -> Answer {
    let job = match image_job(body) {
        Ok(job) => job,
        Err(answer) => return answer,
    };
    let base_url = lock(state).base_url.clone();
    let mut files = Vec::new();
    let data: Vec<Value> = (0..job.n)
        .map(|index| {
            // The same prompt gives the same pictures, each of the `n` its own.
            let png = png_image(
                &format!("{index} {}", job.prompt),
                job.background == "transparent",
            );
            let mut image = json!({});
            if job.urls {
                let name = format!("{}.png", random_id("img-", 24));
                image["url"] = json!(format!("{base_url}/files/{name}"));
                files.push((name, Bytes::from(png)));
            } else {
                image["b64_json"] = json!(BASE64.encode(png));
            }
            if job.model == ImageModel::DallE3 {
                image["revised_prompt"] = json!(format!("{REVISED_PROMPT_PREFIX}{}", job.prompt));
            }
            image
        })
        .collect();
    lock(state).files.extend(files);
    let mut response = json!({ "created": unix_now(), "data": data });
    if job.model == ImageModel::Gpt {
        let input_tokens = count_tokens(&job.prompt);
        let output_tokens = gpt_image_tokens(&job.quality, &job.size) * job.n;
        response["size"] = json!(job.size);
        response["quality"] = json!(job.quality);
        response["output_format"] = json!(job.output_format);
        response["background"] = json!(job.background);
        response["usage"] = json!({
            "total_tokens": input_tokens + output_tokens,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "input_tokens_details": { "text_tokens": input_tokens, "image_tokens": 0 },
        });
    }
    Answer::Json(StatusCode::OK, response, Vec::new())
}

// ---- PNG ----

/// CRC-32 (ISO-HDLC, as PNG uses), bit by bit: the fake only checksums a few dozen bytes.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

fn adler32(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in bytes {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    (b << 16) | a
}

/// A zlib stream of stored (uncompressed) deflate blocks, which every inflater reads.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    // CMF 0x78 (deflate, 32K window) and FLG 0x01 make a header that is a multiple of 31.
    let mut out = vec![0x78, 0x01];
    let mut blocks = data.chunks(0xffff).peekable();
    if data.is_empty() {
        out.extend([1, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        // BFINAL on the last block; BTYPE 00, stored.
        out.push(u8::from(blocks.peek().is_none()));
        let len = u16::try_from(block.len()).unwrap_or(u16::MAX);
        out.extend(len.to_le_bytes());
        out.extend((!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.extend(adler32(data).to_be_bytes());
    out
}

fn png_chunk(png: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    png.extend(u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
    let start = png.len();
    png.extend_from_slice(kind);
    png.extend_from_slice(data);
    let crc = crc32(&png[start..]);
    png.extend(crc.to_be_bytes());
}

/// A valid 2×2 PNG whose colours derive from `seed`: 8-bit RGB, or RGBA with two of the four
/// pixels fully transparent for a transparent background.
fn png_image(seed: &str, transparent: bool) -> Vec<u8> {
    let mut hasher = DefaultHasher::new();
    seed.hash(&mut hasher);
    let colours = hasher.finish().to_be_bytes();
    let mut pixels = Vec::new();
    for y in 0..2 {
        // Each scanline starts with its filter type: 0, none.
        pixels.push(0);
        for x in 0..2 {
            let k = y * 2 + x;
            pixels.extend([colours[k], colours[k + 2], colours[k + 4]]);
            if transparent {
                pixels.push(if x == y { 0xff } else { 0 });
            }
        }
    }
    let mut header = Vec::new();
    header.extend(2u32.to_be_bytes());
    header.extend(2u32.to_be_bytes());
    // Bit depth 8; colour type 6 (RGBA) or 2 (RGB); deflate; adaptive filtering; no interlace.
    header.extend([8, if transparent { 6 } else { 2 }, 0, 0, 0]);
    let mut png = PNG_SIGNATURE.to_vec();
    png_chunk(&mut png, b"IHDR", &header);
    png_chunk(&mut png, b"IDAT", &zlib_stored(&pixels));
    png_chunk(&mut png, b"IEND", &[]);
    png
}

// ---- transcriptions ----

/// The values of `response_format` OpenAI's contract lists for transcriptions.
const AUDIO_FORMATS: [&str; 6] = [
    "json",
    "text",
    "srt",
    "verbose_json",
    "vtt",
    "diarized_json",
];

/// The form fields OpenAI's contract declares as lists, sent as `name[]` once per item.
const LIST_FIELDS: [&str; 6] = [
    "languages",
    "keywords",
    "include",
    "timestamp_granularities",
    "known_speaker_names",
    "known_speaker_references",
];

/// A `multipart/form-data` body: its parts, in order.
#[derive(Debug, Default)]
struct Form {
    parts: Vec<Part>,
}

#[derive(Debug)]
struct Part {
    name: String,
    /// Set for a file.
    filename: Option<String>,
    content_type: Option<String>,
    data: Bytes,
}

impl Form {
    /// The first text field of this name.
    fn text(&self, name: &str) -> Option<String> {
        self.parts
            .iter()
            .find(|part| part.name == name && part.filename.is_none())
            .map(|part| String::from_utf8_lossy(&part.data).into_owned())
    }

    /// Every text field with one of these names, in order.
    fn texts(&self, names: &[&str]) -> Vec<String> {
        self.parts
            .iter()
            .filter(|part| names.contains(&part.name.as_str()) && part.filename.is_none())
            .map(|part| String::from_utf8_lossy(&part.data).into_owned())
            .collect()
    }

    /// The uploaded audio: the `file` field, if it is a file.
    fn file(&self) -> Option<&Part> {
        self.parts
            .iter()
            .find(|part| part.name == "file" && part.filename.is_some())
    }
}

/// The first position of `needle` in `haystack` at or after `from`.
fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|window| window == needle)
        .map(|index| index + from)
}

/// The `key=value` parameters of a header value such as `form-data; name="file"; filename="a.wav"`.
fn header_params(value: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut rest = value;
    while let Some(equals) = rest.find('=') {
        let key = rest[..equals].rsplit(';').next().unwrap_or_default();
        let key = key.trim().to_ascii_lowercase();
        rest = rest[equals + 1..].trim_start();
        let value = if let Some(quoted) = rest.strip_prefix('"') {
            let mut value = String::new();
            let mut end = quoted.len();
            let mut escaped = false;
            for (index, c) in quoted.char_indices() {
                match c {
                    _ if escaped => {
                        value.push(c);
                        escaped = false;
                    }
                    '\\' => escaped = true,
                    '"' => {
                        end = index + 1;
                        break;
                    }
                    _ => value.push(c),
                }
            }
            rest = &quoted[end..];
            value
        } else {
            let end = rest.find(';').unwrap_or(rest.len());
            let value = rest[..end].trim().to_owned();
            rest = &rest[end..];
            value
        };
        params.push((key, value));
    }
    params
}

/// Reads a `multipart/form-data` body (RFC 7578); the error is the message of OpenAI's 400.
fn parse_form(content_type: Option<&str>, body: &Bytes) -> Result<Form, String> {
    let not_a_form = || {
        format!(
            "Invalid Content-Type header ({}), expected multipart/form-data. (HINT: If you're \
             using curl, you can pass -H 'Content-Type: multipart/form-data')",
            content_type.unwrap_or("None")
        )
    };
    let malformed = || "Could not parse multipart form".to_owned();
    let Some(header) = content_type else {
        return Err(not_a_form());
    };
    let (mime, params) = header.split_once(';').unwrap_or((header, ""));
    if !mime.trim().eq_ignore_ascii_case("multipart/form-data") {
        return Err(not_a_form());
    }
    let Some((_, boundary)) = header_params(params)
        .into_iter()
        .find(|(key, value)| key == "boundary" && !value.is_empty())
    else {
        return Err(malformed());
    };
    let delimiter = format!("--{boundary}").into_bytes();
    let next_delimiter = [b"\r\n".as_slice(), &delimiter].concat();
    let mut position = find(body, &delimiter, 0).ok_or_else(malformed)? + delimiter.len();
    let mut form = Form::default();
    // Each delimiter is followed by `--` on the last one, else by its line's end and a part.
    while !body[position..].starts_with(b"--") {
        position = find(body, b"\r\n", position).ok_or_else(malformed)? + 2;
        let (headers, start) = if body[position..].starts_with(b"\r\n") {
            (String::new(), position + 2)
        } else {
            let end = find(body, b"\r\n\r\n", position).ok_or_else(malformed)?;
            (
                String::from_utf8_lossy(&body[position..end]).into_owned(),
                end + 4,
            )
        };
        let end = find(body, &next_delimiter, start).ok_or_else(malformed)?;
        let mut part = Part {
            name: String::new(),
            filename: None,
            content_type: None,
            data: body.slice(start..end),
        };
        for line in headers.split("\r\n") {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if name.trim().eq_ignore_ascii_case("content-disposition") {
                for (key, value) in header_params(value) {
                    match key.as_str() {
                        "name" => part.name = value,
                        "filename" => part.filename = Some(value),
                        _ => {}
                    }
                }
            } else if name.trim().eq_ignore_ascii_case("content-type") {
                part.content_type = Some(value.trim().to_owned());
            }
        }
        form.parts.push(part);
        position = end + next_delimiter.len();
    }
    Ok(form)
}

/// A form as the fake records it: each text field as a string, a file as `{"filename",
/// "content_type", "bytes"}`, and a field sent as `name[]` or more than once as a list.
fn describe_form(form: &Form) -> Value {
    let mut fields = serde_json::Map::new();
    for part in &form.parts {
        let value = match &part.filename {
            Some(filename) => json!({
                "filename": filename,
                "content_type": part.content_type,
                "bytes": part.data.len(),
            }),
            None => Value::String(String::from_utf8_lossy(&part.data).into_owned()),
        };
        let repeated = part.name.ends_with("[]")
            || form.parts.iter().filter(|p| p.name == part.name).count() > 1;
        if !repeated {
            fields.insert(part.name.clone(), value);
        } else if let Value::Array(items) =
            fields.entry(part.name.clone()).or_insert_with(|| json!([]))
        {
            items.push(value);
        }
    }
    Value::Object(fields)
}

/// A recorded form as the JSON object `CreateTranscriptionRequest` describes: names without
/// `[]`, a file as a string (the contract's `format: binary`), and numbers, booleans, lists and
/// objects as such where the text reads as one.
fn form_instance(body: &Value) -> Value {
    let Some(fields) = body.as_object() else {
        return body.clone();
    };
    let mut instance = serde_json::Map::new();
    for (name, value) in fields {
        let key = name.strip_suffix("[]").unwrap_or(name);
        let value = match (key, value) {
            (_, Value::Object(file)) if file.contains_key("filename") => json!("(binary)"),
            ("temperature", Value::String(text)) => text
                .parse::<f64>()
                .map_or_else(|_| value.clone(), |number| json!(number)),
            ("stream", Value::String(text)) if text == "true" || text == "false" => {
                json!(text == "true")
            }
            ("chunking_strategy", Value::String(text)) => serde_json::from_str::<Value>(text)
                .ok()
                .filter(Value::is_object)
                .unwrap_or_else(|| value.clone()),
            (key, Value::String(_)) if LIST_FIELDS.contains(&key) => json!([value]),
            _ => value.clone(),
        };
        match (instance.get_mut(key), value) {
            (Some(Value::Array(items)), Value::Array(more)) => items.extend(more),
            (_, value) => {
                instance.insert(key.to_owned(), value);
            }
        }
    }
    Value::Object(instance)
}

/// What a transcription request asks for, checked as OpenAI checks it.
#[derive(Debug)]
struct TranscriptionJob {
    /// `whisper-1`: billed by duration, every format, no streaming.
    whisper: bool,
    format: String,
    /// `timestamp_granularities[]` includes `word`.
    words: bool,
    stream: bool,
    /// The language's English name, in lower case.
    language: String,
    temperature: f64,
    prompt: String,
    /// What the audio "says".
    text: String,
}

/// The transcript of an upload: its text when it is UTF-8 text, else [`FALLBACK_TRANSCRIPT`].
fn transcript_of(audio: &[u8]) -> String {
    match std::str::from_utf8(audio) {
        Ok(text)
            if !text.trim().is_empty()
                && text.chars().all(|c| c.is_whitespace() || !c.is_control()) =>
        {
            text.trim().to_owned()
        }
        _ => FALLBACK_TRANSCRIPT.to_owned(),
    }
}

/// The English name of an ISO-639-1 code, as `verbose_json` gives the language; other codes
/// are returned as they are.
fn language_name(code: &str) -> String {
    let code = code.trim().to_ascii_lowercase();
    let name = match code.as_str() {
        "ar" => "arabic",
        "de" => "german",
        "en" => "english",
        "es" => "spanish",
        "fr" => "french",
        "hi" => "hindi",
        "it" => "italian",
        "ja" => "japanese",
        "ko" => "korean",
        "nl" => "dutch",
        "pl" => "polish",
        "pt" => "portuguese",
        "ru" => "russian",
        "sv" => "swedish",
        "tr" => "turkish",
        "uk" => "ukrainian",
        "zh" => "chinese",
        _ => return code,
    };
    name.to_owned()
}

/// Checks a transcription form as OpenAI does.
fn transcription_job(form: &Form) -> Result<TranscriptionJob, Answer> {
    let file = form.file();
    let model = form.text("model").filter(|model| !model.is_empty());
    let missing: Vec<&str> = [("file", file.is_none()), ("model", model.is_none())]
        .into_iter()
        .filter_map(|(field, missing)| missing.then_some(field))
        .collect();
    let (Some(file), Some(model)) = (file, model) else {
        // The audio endpoints answer missing fields with their framework's validation message.
        let details: String = missing
            .iter()
            .map(|field| format!("\nbody -> {field}\n  field required (type=value_error.missing)"))
            .collect();
        let plural = if missing.len() == 1 { "" } else { "s" };
        return Err(error_answer(
            StatusCode::BAD_REQUEST,
            &format!(
                "{} validation error{plural} for Request{details}",
                missing.len()
            ),
            None,
            None,
        ));
    };
    let whisper = model == "whisper-1";
    let format = form
        .text("response_format")
        .unwrap_or_else(|| "json".to_owned());
    if !AUDIO_FORMATS.contains(&format.as_str()) {
        return Err(invalid_value("response_format", &format, &AUDIO_FORMATS));
    }
    let supported: &[&str] = if whisper {
        &AUDIO_FORMATS[..5]
    } else {
        &AUDIO_FORMATS[..2]
    };
    if !supported.contains(&format.as_str()) {
        let quoted: Vec<String> = supported.iter().map(|f| format!("'{f}'")).collect();
        let (init, last) = quoted.split_at(quoted.len() - 1);
        return Err(error_answer(
            StatusCode::BAD_REQUEST,
            &format!(
                "response_format '{format}' is not compatible with model '{model}'. Use {} or {} \
                 instead.",
                init.join(", "),
                last[0]
            ),
            Some("response_format"),
            Some("unsupported_value"),
        ));
    }
    let granularities = form.texts(&["timestamp_granularities[]", "timestamp_granularities"]);
    for granularity in &granularities {
        if granularity != "word" && granularity != "segment" {
            return Err(invalid_value(
                "timestamp_granularities",
                granularity,
                &["word", "segment"],
            ));
        }
    }
    if !granularities.is_empty() && format != "verbose_json" {
        return Err(error_answer(
            StatusCode::BAD_REQUEST,
            "Unsupported parameter: 'timestamp_granularities' is only supported with \
             response_format 'verbose_json'.",
            Some("timestamp_granularities"),
            Some("unsupported_parameter"),
        ));
    }
    let temperature = match form.text("temperature") {
        None => 0.0,
        Some(text) => text
            .trim()
            .parse::<f64>()
            .map_err(|_| invalid_type("temperature", "a number", &Value::String(text)))?,
    };
    Ok(TranscriptionJob {
        whisper,
        // `whisper-1` ignores `stream`, as OpenAI documents.
        stream: !whisper && form.text("stream").as_deref() == Some("true"),
        words: granularities.iter().any(|g| g == "word"),
        language: form
            .text("language")
            .map_or_else(|| "english".to_owned(), |code| language_name(&code)),
        temperature,
        prompt: form.text("prompt").unwrap_or_default(),
        text: transcript_of(&file.data),
        format,
    })
}

/// When word `index` of a transcript starts, in seconds.
fn word_start(index: usize) -> f64 {
    index as f64 * SECONDS_PER_WORD
}

/// The audio's length: [`SECONDS_PER_WORD`] per word, at least a second.
fn audio_duration(words: usize) -> f64 {
    word_start(words).max(1.0)
}

/// The words of each sentence, ended by a word ending in `.`, `?` or `!`.
fn sentences(words: &[&str]) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    for (index, word) in words.iter().enumerate() {
        if word.ends_with(['.', '?', '!']) {
            ranges.push(start..index + 1);
            start = index + 1;
        }
    }
    if start < words.len() {
        ranges.push(start..words.len());
    }
    ranges
}

/// A subtitle timestamp: `00:00:01,500` in SRT, `00:00:01.500` in WebVTT.
fn timestamp(seconds: f64, vtt: bool) -> String {
    let millis = (seconds * 1000.0).round() as u64;
    let separator = if vtt { '.' } else { ',' };
    format!(
        "{:02}:{:02}:{:02}{separator}{:03}",
        millis / 3_600_000,
        millis / 60_000 % 60,
        millis / 1000 % 60,
        millis % 1000
    )
}

/// The sentences as SRT or WebVTT cues.
fn subtitles(words: &[&str], vtt: bool) -> String {
    let mut out = if vtt {
        "WEBVTT\n\n".to_owned()
    } else {
        String::new()
    };
    for (index, range) in sentences(words).into_iter().enumerate() {
        if !vtt {
            out.push_str(&format!("{}\n", index + 1));
        }
        out.push_str(&format!(
            "{} --> {}\n{}\n\n",
            timestamp(word_start(range.start), vtt),
            timestamp(word_start(range.end), vtt),
            words[range].join(" ")
        ));
    }
    out
}

/// The usage of a transcription: by duration for `whisper-1`, else in tokens.
fn transcription_usage(job: &TranscriptionJob, words: usize) -> Value {
    let duration = audio_duration(words);
    if job.whisper {
        return json!({ "type": "duration", "seconds": duration.ceil() as u64 });
    }
    let audio_tokens = (duration * AUDIO_TOKENS_PER_SECOND as f64).round() as u64;
    let text_tokens = count_tokens(&job.prompt);
    let output_tokens = words as u64;
    json!({
        "type": "tokens",
        "input_tokens": audio_tokens + text_tokens,
        "input_token_details": { "text_tokens": text_tokens, "audio_tokens": audio_tokens },
        "output_tokens": output_tokens,
        "total_tokens": audio_tokens + text_tokens + output_tokens,
    })
}

/// A `verbose_json` transcription: a segment per sentence, and the words if asked for.
fn verbose_transcription(job: &TranscriptionJob, words: &[&str]) -> Value {
    let segments: Vec<Value> = sentences(words)
        .into_iter()
        .enumerate()
        .map(|(id, range)| {
            let start = word_start(range.start);
            let tokens: Vec<u64> = words[range.clone()]
                .iter()
                .map(|word| {
                    let mut hasher = DefaultHasher::new();
                    word.hash(&mut hasher);
                    // Whisper's text tokens are those below 50257.
                    hasher.finish() % 50_257
                })
                .collect();
            json!({
                "id": id,
                // Whisper decodes 30 s windows; `seek` is the window's offset in 10 ms frames.
                "seek": (start / 30.0).floor() as u64 * 3000,
                "start": start,
                "end": word_start(range.end),
                "text": format!(" {}", words[range].join(" ")),
                "tokens": tokens,
                "temperature": job.temperature,
                "avg_logprob": -0.25,
                "compression_ratio": 1.2,
                "no_speech_prob": 0.01,
            })
        })
        .collect();
    let mut body = json!({
        "task": "transcribe",
        "language": job.language,
        "duration": audio_duration(words.len()),
        "text": job.text,
        "segments": segments,
        "usage": transcription_usage(job, words.len()),
    });
    if job.words {
        let words: Vec<Value> = words
            .iter()
            .enumerate()
            .map(|(index, word)| {
                // Word timestamps come without the punctuation around the word.
                let bare = word.trim_matches(|c: char| c.is_ascii_punctuation());
                json!({
                    "word": if bare.is_empty() { *word } else { bare },
                    "start": word_start(index),
                    "end": word_start(index + 1),
                })
            })
            .collect();
        body["words"] = json!(words);
    }
    body
}

fn default_transcription(form: &Form) -> Answer {
    let job = match transcription_job(form) {
        Ok(job) => job,
        Err(answer) => return answer,
    };
    let words: Vec<&str> = job.text.split_whitespace().collect();
    let usage = transcription_usage(&job, words.len());
    if job.stream {
        // Unlike chat streams, transcription streams end with their `done` event, no `[DONE]`.
        let mut events: Vec<String> = word_pieces(&job.text)
            .into_iter()
            .map(|piece| json!({ "type": "transcript.text.delta", "delta": piece }).to_string())
            .collect();
        events.push(
            json!({ "type": "transcript.text.done", "text": job.text, "usage": usage }).to_string(),
        );
        return Answer::Stream(events, false);
    }
    let body = match job.format.as_str() {
        "text" => return Answer::Text(format!("{}\n", job.text)),
        "srt" => return Answer::Text(subtitles(&words, false)),
        "vtt" => return Answer::Text(subtitles(&words, true)),
        "verbose_json" => verbose_transcription(&job, &words),
        _ => json!({ "text": job.text, "usage": usage }),
    };
    Answer::Json(StatusCode::OK, body, Vec::new())
}

/// The answer to a scripted reply; `None` for [`Reply::Hang`], which answers by default once
/// the wait is over.
fn scripted_answer(endpoint: Endpoint, reply: Reply) -> Option<Answer> {
    Some(match reply {
        Reply::Completion(body) => Answer::Json(StatusCode::OK, body, Vec::new()),
        // Transcription streams end with their last event, without `[DONE]`.
        Reply::Chunks(chunks) if endpoint == Endpoint::Transcriptions => {
            Answer::Stream(chunks.iter().map(Value::to_string).collect(), false)
        }
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
        Answer::Text(text) => (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            Body::from(text),
            Vec::new(),
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

/// `GET /v1/files/{name}`: an image answered as a URL. No key is needed, as OpenAI's image URLs
/// are signed blob URLs; downloads are recorded, but consume no scripted reply.
fn download(state: &Shared, path: &str, name: &str, headers: HeaderMap) -> Response {
    let file = {
        let mut state = lock(state);
        state.requests.push(Recorded {
            path: path.to_owned(),
            headers,
            body: Value::Null,
        });
        state.files.get(name).cloned()
    };
    let (status, content_type, body) = match file {
        Some(png) => (StatusCode::OK, "image/png", Body::from(png)),
        None => {
            let message = format!("No such file: '{name}'.");
            let error = FakeOpenAi::error_body(&message, "invalid_request_error", None, None);
            (
                StatusCode::NOT_FOUND,
                "application/json",
                Body::from(error.to_string()),
            )
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    set_header(response.headers_mut(), "content-type", content_type);
    response
}

async fn handle(
    AxumState(state): AxumState<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let started = Instant::now();
    let path = uri.path().to_owned();
    if method == Method::GET
        && let Some(name) = path.strip_prefix("/v1/files/")
    {
        return download(&state, &path, name, headers);
    }
    let endpoint = match (method.as_str(), path.as_str()) {
        ("POST", "/v1/chat/completions") => Some(Endpoint::Chat),
        ("POST", "/v1/embeddings") => Some(Endpoint::Embeddings),
        ("POST", "/v1/images/generations") => Some(Endpoint::Images),
        ("POST", "/v1/audio/transcriptions") => Some(Endpoint::Transcriptions),
        _ => None,
    };
    // Transcriptions come as forms; the error is OpenAI's message for a body that is not one.
    let form = (endpoint == Some(Endpoint::Transcriptions)).then(|| {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok());
        parse_form(content_type, &raw)
    });
    let body = match &form {
        Some(Ok(form)) => describe_form(form),
        _ if raw.is_empty() => Value::Null,
        _ => serde_json::from_slice(&raw)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&raw).into_owned())),
    };
    let mut common = Common {
        organization: String::new(),
        started,
        served: 0,
        prompt_tokens: match endpoint {
            Some(Endpoint::Embeddings) => input_tokens(&body),
            Some(Endpoint::Images) => body
                .get("prompt")
                .and_then(Value::as_str)
                .map_or(0, count_tokens),
            Some(Endpoint::Transcriptions) => 0,
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
            match &form {
                Some(Ok(form)) => {
                    transcription_job(form)?;
                }
                Some(Err(message)) => {
                    return Err(error_answer(StatusCode::BAD_REQUEST, message, None, None));
                }
                None => check_request(endpoint, &body)?,
            }
            Ok((endpoint, state.replies.pop_front()))
        })
    };
    let answer = match outcome {
        Err(answer) => answer,
        Ok((endpoint, reply)) => {
            if let Some(Reply::Hang(wait)) = reply {
                tokio::time::sleep(wait).await;
            }
            let form = form.as_ref().and_then(|form| form.as_ref().ok());
            reply
                .and_then(|reply| scripted_answer(endpoint, reply))
                .unwrap_or_else(|| default_answer(endpoint, &body, form, &state))
        }
    };
    respond(answer, &common)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw_http::{Connection, HttpResponse};

    /// What OpenAI's responses carry beyond HTTP.
    trait OpenAiResponse {
        /// The `data:` payloads of an event stream.
        fn events(&self) -> Vec<String>;
        /// The JSON events of a stream, without `[DONE]`.
        fn chunks(&self) -> Vec<Value>;
    }

    impl OpenAiResponse for HttpResponse {
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

        fn chunks(&self) -> Vec<Value> {
            self.events()
                .iter()
                .filter(|event| *event != "[DONE]")
                .map(|event| serde_json::from_str(event).unwrap())
                .collect()
        }
    }

    /// Requests with a key as OpenAI's clients send it: `Authorization: Bearer {key}`.
    trait WithKey {
        /// Posts a JSON `body`.
        async fn post_as(&mut self, path: &str, key: Option<&str>, body: &str) -> HttpResponse;
        /// Posts a body with its content type, such as a form.
        async fn post_bytes_as(
            &mut self,
            path: &str,
            key: Option<&str>,
            content_type: &str,
            body: &[u8],
        ) -> HttpResponse;
    }

    impl WithKey for Connection {
        async fn post_as(&mut self, path: &str, key: Option<&str>, body: &str) -> HttpResponse {
            self.post_bytes_as(path, key, "application/json", body.as_bytes())
                .await
        }

        async fn post_bytes_as(
            &mut self,
            path: &str,
            key: Option<&str>,
            content_type: &str,
            body: &[u8],
        ) -> HttpResponse {
            let auth = key.map(|k| format!("Bearer {k}"));
            let headers: Vec<_> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
            self.post_bytes(path, &headers, content_type, body).await
        }
    }

    async fn post(fake: &FakeOpenAi, path: &str, body: &Value) -> HttpResponse {
        Connection::open(&fake.base_url())
            .await
            .post_as(path, Some(DEFAULT_API_KEY), &body.to_string())
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

    /// A `multipart/form-data` body of a `file` (name and bytes, sent as `audio/mpeg`) and these
    /// text fields, and its content type.
    fn form(file: Option<(&str, &[u8])>, fields: &[(&str, &str)]) -> (String, Vec<u8>) {
        let boundary = "----switchyard-test-7d2f";
        let mut body = Vec::new();
        if let Some((filename, data)) = file {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
                     filename=\"{filename}\"\r\nContent-Type: audio/mpeg\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        for (name, value) in fields {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                )
                .as_bytes(),
            );
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        (format!("multipart/form-data; boundary={boundary}"), body)
    }

    /// Uploads `audio` as `speech.mp3` with these fields.
    async fn transcribe(fake: &FakeOpenAi, audio: &[u8], fields: &[(&str, &str)]) -> HttpResponse {
        let (content_type, body) = form(Some(("speech.mp3", audio)), fields);
        Connection::open(&fake.base_url())
            .await
            .post_bytes_as(
                "/v1/audio/transcriptions",
                Some(DEFAULT_API_KEY),
                &content_type,
                &body,
            )
            .await
    }

    /// Walks a PNG's chunks, checking each one's CRC, and inflates its zlib stream of stored
    /// blocks: the scanlines. Returns the IHDR data and the scanlines.
    fn read_png(png: &[u8]) -> (Vec<u8>, Vec<u8>) {
        assert_eq!(png[..8], PNG_SIGNATURE);
        let mut position = 8;
        let (mut header, mut idat, mut kinds) = (Vec::new(), Vec::new(), Vec::new());
        while position < png.len() {
            let length = u32::from_be_bytes(png[position..position + 4].try_into().unwrap());
            let length = length as usize;
            let chunk = &png[position + 4..position + 8 + length];
            let crc = &png[position + 8 + length..position + 12 + length];
            assert_eq!(crc, crc32(chunk).to_be_bytes());
            let (kind, data) = chunk.split_at(4);
            match kind {
                b"IHDR" => header = data.to_vec(),
                b"IDAT" => idat.extend_from_slice(data),
                _ => {}
            }
            kinds.push(String::from_utf8(kind.to_vec()).unwrap());
            position += 12 + length;
        }
        assert_eq!(kinds, ["IHDR", "IDAT", "IEND"]);
        assert_eq!(
            u16::from_be_bytes([idat[0], idat[1]]) % 31,
            0,
            "zlib header"
        );
        assert_eq!(idat[0] & 0x0f, 8, "deflate");
        assert_eq!(idat[2], 1, "a final stored block");
        let length = u16::from_le_bytes([idat[3], idat[4]]);
        assert_eq!(!length, u16::from_le_bytes([idat[5], idat[6]]));
        let scanlines = idat[7..7 + usize::from(length)].to_vec();
        assert_eq!(
            idat[7 + usize::from(length)..],
            adler32(&scanlines).to_be_bytes()
        );
        (header, scanlines)
    }

    /// The text the transcription tests upload as audio: 6 words, 2 sentences, 3 seconds.
    const SPEECH: &str = "Hello there.  How are you today?\n";

    #[tokio::test]
    async fn a_default_completion_echoes_the_last_user_message() {
        let fake = FakeOpenAi::start().await.with_organization("org-acme");
        assert!(fake.base_url().starts_with("http://127.0.0.1:"));
        assert!(fake.base_url().ends_with("/v1"));
        let mut connection = Connection::open(&fake.base_url()).await;
        let request = chat_request(false);
        let response = connection
            .post_as(
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
            .post_as("/v1/embeddings", Some("sk-test"), &embeddings.to_string())
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
        let mut connection = Connection::open(&fake.base_url()).await;

        let response = connection
            .post_as("/v1/chat/completions", Some("sk-test-wrong-1234"), &request)
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

        let response = connection.post_as("/v1/embeddings", None, &request).await;
        assert_eq!(response.status, 401);
        assert_eq!(response.json()["error"]["code"], Value::Null);
        let raw = format!(
            "POST /v1/embeddings HTTP/1.1\r\nHost: {}\r\nAuthorization: sk-proj-right-key\r\nContent-Length: {}\r\n\r\n{request}",
            connection.host(),
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
            .post_as("/v1/chat/completions", Some("sk-proj-right-key"), &request)
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
        let mut connection = Connection::open(&fake.base_url()).await;
        let response = connection
            .post_as(
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
        let mut connection = Connection::open(&fake.base_url()).await;
        let body = chat_request(true).to_string();
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {DEFAULT_API_KEY}\r\nContent-Length: {}\r\n\r\n{body}",
            connection.host(),
            body.len()
        );
        // The headers and the first event arrive at once; the second waits for the delay.
        let received = connection.send_until(&request, "data: ").await;
        assert!(received.starts_with("HTTP/1.1 200 OK\r\n"), "{received}");
        assert_eq!(received.matches("data: ").count(), 1, "{received}");
        assert!(
            connection.quiet_for(Duration::from_millis(200)).await,
            "the second event should wait"
        );
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
        let mut connection = Connection::open(&fake.base_url()).await;
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
            let response = connection.post_as(path, key, body).await;
            assert_eq!(response.status, status, "{path} {body}");
            let error = response.json();
            assert_valid("ErrorResponse", &error);
            assert_eq!(error["error"]["code"].as_str(), code, "{path} {body}");
        }
        let requests = fake.requests();
        assert_eq!(requests[0].body, json!("{not json"));
        let response = connection.post_as("/v1/completions", key, "{}").await;
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

    #[test]
    fn checksums_and_pngs_are_built_to_the_standards() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b"IEND"), 0xae42_6082);
        assert_eq!(adler32(b"Wikipedia"), 0x11e6_0398);
        let empty = zlib_stored(b"");
        assert_eq!(empty, [0x78, 0x01, 1, 0, 0, 0xff, 0xff, 0, 0, 0, 1]);

        let png = png_image("a seed", false);
        let (header, scanlines) = read_png(&png);
        // 2×2, 8-bit RGB, deflate, adaptive filtering, no interlace.
        assert_eq!(header, [0, 0, 0, 2, 0, 0, 0, 2, 8, 2, 0, 0, 0]);
        assert_eq!(scanlines.len(), 2 * (1 + 2 * 3));
        assert_eq!((scanlines[0], scanlines[7]), (0, 0), "filter bytes");
        assert_eq!(png_image("a seed", false), png);
        assert_ne!(png_image("another seed", false), png);

        let (header, scanlines) = read_png(&png_image("a seed", true));
        assert_eq!(header[9], 6, "RGBA");
        assert_eq!(scanlines.len(), 2 * (1 + 2 * 4));
        let alphas = [scanlines[4], scanlines[8], scanlines[13], scanlines[17]];
        assert_eq!(alphas, [0xff, 0, 0, 0xff]);
    }

    #[tokio::test]
    async fn a_dall_e_3_image_is_a_png_served_at_its_url() {
        let fake = FakeOpenAi::start().await;
        let mut request = json!({
            "model": "dall-e-3",
            "prompt": "A lighthouse at dusk",
            "size": "1792x1024",
            "quality": "hd",
            "style": "natural",
        });
        let response = post(&fake, "/v1/images/generations", &request).await;
        assert_eq!(response.status, 200);
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert!(response.header("x-request-id").is_some());
        assert_eq!(
            response.header("x-ratelimit-remaining-tokens"),
            Some("29999996")
        );
        let body = response.json();
        assert_valid("ImagesResponse", &body);
        assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
        assert!(body.get("usage").is_none() && body.get("size").is_none());
        let data = body["data"].as_array().unwrap();
        assert_eq!(data.len(), 1);
        assert_eq!(
            data[0]["revised_prompt"],
            format!("{REVISED_PROMPT_PREFIX}A lighthouse at dusk")
        );
        assert!(data[0].get("b64_json").is_none());
        let url = data[0]["url"].as_str().unwrap();
        let name = url
            .strip_prefix(&format!("{}/files/", fake.base_url()))
            .unwrap();
        let id = name.strip_prefix("img-").unwrap().strip_suffix(".png");
        assert!(
            id.is_some_and(|id| id.len() == 24 && id.chars().all(|c| c.is_ascii_hexdigit())),
            "{url}"
        );

        // No key is needed, as for OpenAI's signed URLs.
        let path = &url[url.find("/v1/").unwrap()..];
        let mut connection = Connection::open(&fake.base_url()).await;
        let download = connection.get(path).await;
        assert_eq!(download.status, 200);
        assert_eq!(download.header("content-type"), Some("image/png"));
        let png = download.bytes;
        assert_eq!(png[..8], PNG_SIGNATURE);
        assert_eq!(png[12..16], *b"IHDR");
        assert_eq!(
            png[png.len() - 8..],
            [b'I', b'E', b'N', b'D', 0xae, 0x42, 0x60, 0x82]
        );
        let (header, _) = read_png(&png);
        assert_eq!(header[9], 2, "RGB");
        let missing = connection.get("/v1/files/img-0123.png").await;
        assert_eq!(missing.status, 404);
        assert_valid("ErrorResponse", &missing.json());

        // As base64, the same request draws the same picture.
        request["response_format"] = json!("b64_json");
        let body = post(&fake, "/v1/images/generations", &request).await.json();
        assert_valid("ImagesResponse", &body);
        assert!(body["data"][0].get("url").is_none());
        let b64 = body["data"][0]["b64_json"].as_str().unwrap();
        assert_eq!(BASE64.decode(b64).unwrap(), png);

        let requests = fake.requests();
        assert_eq!(requests.len(), 4);
        assert_eq!(requests[1].path, path);
        assert_eq!(requests[1].body, Value::Null);
        assert_eq!(fake.contract_violations(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn gpt_image_models_answer_base64_with_usage_and_the_settings_used() {
        let fake = FakeOpenAi::start().await;
        let request = json!({
            "model": "gpt-image-1",
            "prompt": "a red fox in the snow",
            "n": 2,
            "size": "1536x1024",
            "quality": "high",
            "background": "transparent",
        });
        let response = post(&fake, "/v1/images/generations", &request).await;
        assert_eq!(response.status, 200);
        let body = response.json();
        assert_valid("ImagesResponse", &body);
        assert_eq!(body["size"], "1536x1024");
        assert_eq!(body["quality"], "high");
        assert_eq!(body["output_format"], "png");
        assert_eq!(body["background"], "transparent");
        // 6 words in; 6240 tokens per high-quality 1536x1024 image out.
        assert_eq!(
            body["usage"],
            json!({
                "total_tokens": 12_486,
                "input_tokens": 6,
                "output_tokens": 12_480,
                "input_tokens_details": { "text_tokens": 6, "image_tokens": 0 },
            })
        );
        let images: Vec<Vec<u8>> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|image| {
                assert_eq!(image.as_object().unwrap().len(), 1, "{image}");
                BASE64.decode(image["b64_json"].as_str().unwrap()).unwrap()
            })
            .collect();
        assert_eq!(images.len(), 2);
        assert_ne!(images[0], images[1]);
        for png in &images {
            assert_eq!(read_png(png).0[9], 6, "RGBA for a transparent background");
        }
        let again = post(&fake, "/v1/images/generations", &request).await.json();
        assert_eq!(again["data"], body["data"]);

        // `auto` is 1024x1024, medium and opaque.
        let request = json!({ "model": "gpt-image-1-mini", "prompt": "a cat" });
        let body = post(&fake, "/v1/images/generations", &request).await.json();
        assert_valid("ImagesResponse", &body);
        assert_eq!(
            (&body["size"], &body["quality"], &body["background"]),
            (&json!("1024x1024"), &json!("medium"), &json!("opaque"))
        );
        assert_eq!(body["usage"]["output_tokens"], 1056);
        assert_eq!(body["usage"]["total_tokens"], 1058);

        let request = json!({
            "model": "gpt-image-1.5",
            "prompt": "a cat",
            "n": 3,
            "size": "1024x1536",
            "quality": "low",
            "output_format": "webp",
        });
        let body = post(&fake, "/v1/images/generations", &request).await.json();
        assert_valid("ImagesResponse", &body);
        assert_eq!(body["output_format"], "webp");
        assert_eq!(body["usage"]["output_tokens"], 3 * 408);
        assert_eq!(fake.contract_violations(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn image_requests_outside_a_models_rules_get_openais_400s() {
        let fake = FakeOpenAi::start().await;
        fake.push(FakeOpenAi::server_error());
        let cases = [
            (
                json!({ "model": "dall-e-3", "prompt": "p", "n": 2 }),
                "n",
                "integer_above_max_value",
                "Invalid 'n': integer above maximum value. Expected a value <= 1, but got 2 \
                 instead.",
            ),
            (
                json!({ "model": "dall-e-3", "prompt": "p", "size": "1536x1024" }),
                "size",
                "invalid_value",
                "Invalid value: '1536x1024'. Supported values are: '1024x1024', '1792x1024', \
                 and '1024x1792'.",
            ),
            (
                json!({ "model": "dall-e-3", "prompt": "p", "quality": "high" }),
                "quality",
                "invalid_value",
                "Invalid value: 'high'. Supported values are: 'standard', 'hd', and 'auto'.",
            ),
            (
                json!({ "model": "dall-e-3", "prompt": "p", "style": "anime" }),
                "style",
                "invalid_value",
                "Invalid value: 'anime'. Supported values are: 'vivid' and 'natural'.",
            ),
            (
                json!({ "model": "dall-e-3", "prompt": "p", "response_format": "png" }),
                "response_format",
                "invalid_value",
                "Invalid value: 'png'. Supported values are: 'url' and 'b64_json'.",
            ),
            (
                json!({ "prompt": "p", "size": "1024x1792" }),
                "size",
                "invalid_value",
                "Invalid value: '1024x1792'. Supported values are: '256x256', '512x512', and \
                 '1024x1024'.",
            ),
            (
                json!({ "model": "gpt-image-1", "prompt": "p", "response_format": "b64_json" }),
                "response_format",
                "unknown_parameter",
                "Unknown parameter: 'response_format'.",
            ),
            (
                json!({ "model": "gpt-image-1-mini", "prompt": "p", "response_format": "url" }),
                "response_format",
                "unknown_parameter",
                "Unknown parameter: 'response_format'.",
            ),
            (
                json!({ "model": "gpt-image-1", "prompt": "p", "size": "1792x1024" }),
                "size",
                "invalid_value",
                "Invalid value: '1792x1024'. Supported values are: '1024x1024', '1024x1536', \
                 '1536x1024', and 'auto'.",
            ),
            (
                json!({ "model": "gpt-image-1", "prompt": "p", "n": 11 }),
                "n",
                "integer_above_max_value",
                "Invalid 'n': integer above maximum value. Expected a value <= 10, but got 11 \
                 instead.",
            ),
            (
                json!({ "model": "gpt-image-1", "prompt": "p", "n": 0 }),
                "n",
                "integer_below_min_value",
                "Invalid 'n': integer below minimum value. Expected a value >= 1, but got 0 \
                 instead.",
            ),
            (
                json!({ "model": "gpt-image-1", "prompt": "p", "n": "2" }),
                "n",
                "invalid_type",
                "Invalid type for 'n': expected an integer, but got a string instead.",
            ),
            (
                json!({ "model": "gpt-image-1.5", "prompt": "p", "quality": "hd" }),
                "quality",
                "invalid_value",
                "Invalid value: 'hd'. Supported values are: 'low', 'medium', 'high', and \
                 'auto'.",
            ),
            (
                json!({ "model": "gpt-image-1", "prompt": "p", "output_format": "gif" }),
                "output_format",
                "invalid_value",
                "Invalid value: 'gif'. Supported values are: 'png', 'jpeg', and 'webp'.",
            ),
            (
                json!({ "model": "gpt-image-1" }),
                "prompt",
                "missing_required_parameter",
                "Missing required parameter: 'prompt'.",
            ),
        ];
        let mut connection = Connection::open(&fake.base_url()).await;
        for (request, param, code, message) in &cases {
            let response = connection
                .post_as(
                    "/v1/images/generations",
                    Some(DEFAULT_API_KEY),
                    &request.to_string(),
                )
                .await;
            assert_eq!(response.status, 400, "{request}");
            let body = response.json();
            assert_valid("ErrorResponse", &body);
            assert_eq!(
                body["error"],
                json!({
                    "message": message,
                    "type": "invalid_request_error",
                    "param": param,
                    "code": code,
                }),
                "{request}"
            );
        }
        // Refused requests leave the script alone; the contract sees some of them too.
        assert_eq!(fake.pending_replies(), 1);
        let violations = fake.contract_violations();
        for prefix in [
            "9 /v1/images/generations/n: ",
            "14 /v1/images/generations/: ",
        ] {
            assert!(
                violations.iter().any(|v| v.starts_with(prefix)),
                "{prefix} {violations:?}"
            );
        }
        let response = connection
            .post_as(
                "/v1/images/generations",
                None,
                &json!({ "prompt": "p" }).to_string(),
            )
            .await;
        assert_eq!(response.status, 401);
        let response = post(&fake, "/v1/images/generations", &json!({ "prompt": "p" })).await;
        assert_eq!(response.status, 500);
        assert_eq!(fake.pending_replies(), 0);
    }

    #[tokio::test]
    async fn whisper_answers_every_response_format() {
        let fake = FakeOpenAi::start().await;
        let text = "Hello there.  How are you today?";
        let response = transcribe(&fake, SPEECH.as_bytes(), &[("model", "whisper-1")]).await;
        assert_eq!(response.status, 200);
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert!(response.header("x-ratelimit-remaining-requests").is_some());
        let body = response.json();
        assert_valid("CreateTranscriptionResponseJson", &body);
        assert_eq!(
            body,
            json!({ "text": text, "usage": { "type": "duration", "seconds": 3 } })
        );

        let response = transcribe(
            &fake,
            SPEECH.as_bytes(),
            &[("model", "whisper-1"), ("response_format", "text")],
        )
        .await;
        assert_eq!(response.status, 200);
        assert_eq!(
            response.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(response.body, format!("{text}\n"));

        let response = transcribe(
            &fake,
            SPEECH.as_bytes(),
            &[("model", "whisper-1"), ("response_format", "srt")],
        )
        .await;
        assert_eq!(
            response.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(
            response.body,
            "1\n00:00:00,000 --> 00:00:01,000\nHello there.\n\n\
             2\n00:00:01,000 --> 00:00:03,000\nHow are you today?\n\n"
        );

        let response = transcribe(
            &fake,
            SPEECH.as_bytes(),
            &[("model", "whisper-1"), ("response_format", "vtt")],
        )
        .await;
        assert_eq!(
            response.body,
            "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nHello there.\n\n\
             00:00:01.000 --> 00:00:03.000\nHow are you today?\n\n"
        );

        let fields = [
            ("model", "whisper-1"),
            ("response_format", "verbose_json"),
            ("timestamp_granularities[]", "word"),
            ("timestamp_granularities[]", "segment"),
            ("language", "fr"),
            ("temperature", "0.2"),
        ];
        let response = transcribe(&fake, SPEECH.as_bytes(), &fields).await;
        assert_eq!(response.status, 200);
        let body = response.json();
        assert_valid("CreateTranscriptionResponseVerboseJson", &body);
        assert_eq!(body["task"], "transcribe");
        assert_eq!(body["language"], "french");
        assert_eq!(body["duration"], 3.0);
        assert_eq!(body["text"], text);
        assert_eq!(body["usage"], json!({ "type": "duration", "seconds": 3 }));
        let segments = body["segments"].as_array().unwrap();
        assert_eq!(segments.len(), 2);
        for (segment, (id, start, end, text, tokens)) in segments.iter().zip([
            (0, 0.0, 1.0, " Hello there.", 2),
            (1, 1.0, 3.0, " How are you today?", 4),
        ]) {
            assert_eq!(segment["id"], id);
            assert_eq!(segment["seek"], 0);
            assert_eq!(segment["start"], start);
            assert_eq!(segment["end"], end);
            assert_eq!(segment["text"], text);
            assert_eq!(segment["tokens"].as_array().unwrap().len(), tokens);
            assert_eq!(segment["temperature"], 0.2);
            for field in ["avg_logprob", "compression_ratio", "no_speech_prob"] {
                assert!(segment[field].is_f64(), "{field}");
            }
        }
        let words: Vec<(&str, f64, f64)> = body["words"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                let time = |key: &str| w[key].as_f64().unwrap();
                (w["word"].as_str().unwrap(), time("start"), time("end"))
            })
            .collect();
        assert_eq!(
            words,
            [
                ("Hello", 0.0, 0.5),
                ("there", 0.5, 1.0),
                ("How", 1.0, 1.5),
                ("are", 1.5, 2.0),
                ("you", 2.0, 2.5),
                ("today", 2.5, 3.0),
            ]
        );

        // Segments only, by default; a second at least; the fixed sentence for real audio.
        let response = transcribe(
            &fake,
            b"Hi",
            &[("model", "whisper-1"), ("response_format", "verbose_json")],
        )
        .await;
        let body = response.json();
        assert_valid("CreateTranscriptionResponseVerboseJson", &body);
        assert!(body.get("words").is_none());
        assert_eq!(body["language"], "english");
        assert_eq!(body["duration"], 1.0);
        assert_eq!(body["segments"][0]["end"], 0.5);
        let audio = [0x49, 0x44, 0x33, 0x04, 0x00, 0xff, 0xfb, 0x90, 0x64, 0x00];
        let body = transcribe(&fake, &audio, &[("model", "whisper-1")])
            .await
            .json();
        assert_eq!(body["text"], FALLBACK_TRANSCRIPT);
        // 9 words: 4.5 seconds, billed as 5.
        assert_eq!(body["usage"]["seconds"], 5);

        let requests = fake.requests();
        assert_eq!(requests[4].path, "/v1/audio/transcriptions");
        assert_eq!(
            requests[4].body,
            json!({
                "file": {
                    "filename": "speech.mp3",
                    "content_type": "audio/mpeg",
                    "bytes": SPEECH.len(),
                },
                "model": "whisper-1",
                "response_format": "verbose_json",
                "timestamp_granularities[]": ["word", "segment"],
                "language": "fr",
                "temperature": "0.2",
            })
        );
        assert_eq!(fake.contract_violations(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn gpt_4o_transcriptions_use_tokens_and_refuse_whisper_formats() {
        let fake = FakeOpenAi::start().await;
        let fields = [
            ("model", "gpt-4o-transcribe"),
            ("prompt", "Names: Ada Lovelace"),
        ];
        let body = transcribe(&fake, SPEECH.as_bytes(), &fields).await.json();
        assert_valid("CreateTranscriptionResponseJson", &body);
        // 3 seconds make 30 audio tokens, and the prompt 3 text tokens; 6 words out.
        assert_eq!(
            body["usage"],
            json!({
                "type": "tokens",
                "input_tokens": 33,
                "input_token_details": { "text_tokens": 3, "audio_tokens": 30 },
                "output_tokens": 6,
                "total_tokens": 39,
            })
        );
        let fields = [
            ("model", "gpt-4o-mini-transcribe"),
            ("response_format", "text"),
        ];
        let response = transcribe(&fake, SPEECH.as_bytes(), &fields).await;
        assert_eq!(response.body, "Hello there.  How are you today?\n");

        let cases = [
            (
                &[
                    ("model", "gpt-4o-mini-transcribe"),
                    ("response_format", "verbose_json"),
                ],
                "response_format",
                "unsupported_value",
                "response_format 'verbose_json' is not compatible with model \
                 'gpt-4o-mini-transcribe'. Use 'json' or 'text' instead.",
            ),
            (
                &[("model", "gpt-4o-transcribe"), ("response_format", "srt")],
                "response_format",
                "unsupported_value",
                "response_format 'srt' is not compatible with model 'gpt-4o-transcribe'. Use \
                 'json' or 'text' instead.",
            ),
            (
                &[("model", "whisper-1"), ("response_format", "mp3")],
                "response_format",
                "invalid_value",
                "Invalid value: 'mp3'. Supported values are: 'json', 'text', 'srt', \
                 'verbose_json', 'vtt', and 'diarized_json'.",
            ),
            (
                &[
                    ("model", "whisper-1"),
                    ("timestamp_granularities[]", "word"),
                ],
                "timestamp_granularities",
                "unsupported_parameter",
                "Unsupported parameter: 'timestamp_granularities' is only supported with \
                 response_format 'verbose_json'.",
            ),
            (
                &[("model", "whisper-1"), ("temperature", "warm")],
                "temperature",
                "invalid_type",
                "Invalid type for 'temperature': expected a number, but got a string instead.",
            ),
        ];
        for (fields, param, code, message) in cases {
            let response = transcribe(&fake, SPEECH.as_bytes(), fields).await;
            assert_eq!(response.status, 400, "{fields:?}");
            let body = response.json();
            assert_valid("ErrorResponse", &body);
            assert_eq!(body["error"]["message"], message);
            assert_eq!(body["error"]["param"], param);
            assert_eq!(body["error"]["code"], code);
        }

        let mut connection = Connection::open(&fake.base_url()).await;
        let (content_type, body) = form(None, &[("model", "whisper-1")]);
        let key = Some(DEFAULT_API_KEY);
        let path = "/v1/audio/transcriptions";
        let response = connection
            .post_bytes_as(path, key, &content_type, &body)
            .await;
        assert_eq!(response.status, 400);
        assert_eq!(
            response.json()["error"],
            json!({
                "message": "1 validation error for Request\nbody -> file\n  field required \
                            (type=value_error.missing)",
                "type": "invalid_request_error",
                "param": null,
                "code": null,
            })
        );
        // A file field without a filename is no file.
        let (content_type, body) = form(None, &[("file", "text")]);
        let response = connection
            .post_bytes_as(path, key, &content_type, &body)
            .await;
        assert_eq!(
            response.json()["error"]["message"],
            "2 validation errors for Request\nbody -> file\n  field required \
             (type=value_error.missing)\nbody -> model\n  field required \
             (type=value_error.missing)"
        );
        let response = connection
            .post_as(path, key, &json!({ "model": "whisper-1" }).to_string())
            .await;
        assert_eq!(response.status, 400);
        let message = response.json()["error"]["message"].clone();
        assert!(
            message.as_str().unwrap().starts_with(
                "Invalid Content-Type header (application/json), expected multipart/form-data."
            ),
            "{message}"
        );
        let (content_type, body) = form(Some(("a.mp3", b"hi")), &[("model", "whisper-1")]);
        let response = connection
            .post_bytes_as(path, None, &content_type, &body)
            .await;
        assert_eq!(response.status, 401);
    }

    #[tokio::test]
    async fn gpt_4o_transcriptions_stream_word_deltas_then_done() {
        let fake = FakeOpenAi::start().await;
        let fields = [("model", "gpt-4o-mini-transcribe"), ("stream", "true")];
        let response = transcribe(&fake, SPEECH.as_bytes(), &fields).await;
        assert_eq!(response.status, 200);
        let events = response.events();
        assert!(events.iter().all(|event| event != "[DONE]"));
        let events: Vec<Value> = events
            .iter()
            .map(|event| serde_json::from_str(event).unwrap())
            .collect();
        let (done, deltas) = events.split_last().unwrap();
        let pieces: Vec<&str> = deltas
            .iter()
            .map(|delta| {
                assert_valid("TranscriptTextDeltaEvent", delta);
                assert_eq!(delta["type"], "transcript.text.delta");
                delta["delta"].as_str().unwrap()
            })
            .collect();
        assert_eq!(
            pieces,
            ["Hello", " there.", "  How", " are", " you", " today?"]
        );
        assert_valid("TranscriptTextDoneEvent", done);
        assert_eq!(done["type"], "transcript.text.done");
        assert_eq!(done["text"], pieces.concat());
        assert_eq!(done["usage"]["type"], "tokens");
        assert_eq!(done["usage"]["output_tokens"], 6);
        assert_eq!(done["usage"]["input_token_details"]["audio_tokens"], 30);

        // `whisper-1` ignores `stream`.
        let fields = [("model", "whisper-1"), ("stream", "true")];
        let response = transcribe(&fake, SPEECH.as_bytes(), &fields).await;
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert_eq!(response.json()["usage"]["type"], "duration");
        assert_eq!(fake.contract_violations(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn scripted_replies_answer_the_image_and_audio_endpoints_too() {
        let fake = FakeOpenAi::start().await;
        fake.push(FakeOpenAi::rate_limited(3));
        fake.push(FakeOpenAi::server_error());
        let scripted = vec![
            json!({ "type": "transcript.text.delta", "delta": "Hi" }),
            json!({ "type": "transcript.text.done", "text": "Hi" }),
        ];
        fake.push(Reply::Chunks(scripted.clone()));
        fake.push(Reply::Completion(json!({ "text": "scripted" })));

        let request = json!({ "model": "gpt-image-1", "prompt": "p" });
        let response = post(&fake, "/v1/images/generations", &request).await;
        assert_eq!(response.status, 429);
        assert_eq!(response.header("retry-after"), Some("3"));
        let response = transcribe(&fake, b"hi", &[("model", "whisper-1")]).await;
        assert_eq!(response.status, 500);
        assert_valid("ErrorResponse", &response.json());
        let fields = [("model", "gpt-4o-transcribe"), ("stream", "true")];
        let response = transcribe(&fake, b"hi", &fields).await;
        assert_eq!(response.chunks(), scripted);
        assert_eq!(response.events().len(), 2, "no [DONE]");
        let response = transcribe(&fake, b"hi", &[("model", "whisper-1")]).await;
        assert_eq!(response.json(), json!({ "text": "scripted" }));
        assert_eq!(fake.pending_replies(), 0);
        let response = post(&fake, "/v1/images/generations", &request).await;
        assert_eq!(response.status, 200);
    }

    #[tokio::test]
    async fn transcription_forms_are_checked_against_the_contract() {
        let fake = FakeOpenAi::start().await;
        let fields = [
            ("model", "whisper-1"),
            ("speed", "1.5"),
            ("stream", "yes"),
            ("include[]", "logprobs"),
        ];
        let response = transcribe(&fake, b"hi", &fields).await;
        assert_eq!(response.status, 200, "the fake itself is lenient");
        let violations = fake.contract_violations();
        assert_eq!(violations.len(), 2, "{violations:?}");
        assert!(
            violations
                .iter()
                .any(|v| v.starts_with("0 /v1/audio/transcriptions/: ") && v.contains("speed")),
            "{violations:?}"
        );
        assert!(
            violations
                .iter()
                .any(|v| v.starts_with("0 /v1/audio/transcriptions/stream: ")),
            "{violations:?}"
        );

        let wrong = json!({ "created": 1, "data": [{ "url": 7 }], "quality": "hd" });
        let errors = openai_contract::validate("ImagesResponse", &wrong).unwrap_err();
        assert!(
            errors.iter().any(|e| e.starts_with("/data/0/url: ")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.starts_with("/quality: ")),
            "{errors:?}"
        );
    }

    #[test]
    fn forms_are_read_as_rfc_7578_writes_them() {
        let params = header_params(r#"form-data; name="file"; filename="a \"b\"; c.wav""#);
        assert_eq!(
            params,
            [
                ("name".to_owned(), "file".to_owned()),
                ("filename".to_owned(), "a \"b\"; c.wav".to_owned()),
            ]
        );
        let body = Bytes::from_static(
            b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"a[]\"\r\n\r\none\r\n\
              --XyZ\r\ncontent-disposition: form-data; name=\"a[]\"\r\n\r\ntwo\r\n\
              --XyZ\r\nContent-Disposition: form-data; name=\"b\"\r\n\r\nx\r\n\
              --XyZ\r\nContent-Disposition: form-data; name=\"b\"\r\n\r\ny\r\n\
              --XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"f.bin\"\r\n\r\n\
              \r\n-- not the end\r\n--XyZ--\r\nepilogue",
        );
        let form = parse_form(Some("Multipart/Form-Data; boundary=\"XyZ\""), &body).unwrap();
        assert_eq!(form.parts.len(), 5);
        assert_eq!(&form.parts[4].data[..], b"\r\n-- not the end");
        assert_eq!(
            describe_form(&form),
            json!({
                "a[]": ["one", "two"],
                "b": ["x", "y"],
                "f": { "filename": "f.bin", "content_type": null, "bytes": 16 },
            })
        );
        assert!(parse_form(Some("multipart/form-data; boundary=XyZ"), &Bytes::new()).is_err());
        assert!(parse_form(None, &body).unwrap_err().contains("(None)"));
    }
}
