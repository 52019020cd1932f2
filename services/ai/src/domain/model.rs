//! Provider-neutral chat types: what every adapter translates from and to.

use std::collections::BTreeMap;
use std::time::Duration;

/// Who speaks in a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Instructions.
    System,
    /// The end user.
    User,
    /// The model.
    Assistant,
    /// Results of tool calls.
    Tool,
}

/// Where an image or document is.
#[derive(Clone, PartialEq, Eq)]
pub enum Source {
    /// A URL the provider fetches.
    Url(String),
    /// The bytes, with their media type.
    Data {
        /// `image/png`, `application/pdf`, ...
        mime_type: String,
        /// The content.
        bytes: Vec<u8>,
    },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Url(url) => write!(f, "Url({} bytes)", url.len()),
            Source::Data { mime_type, bytes } => {
                write!(f, "Data({mime_type}, {} bytes)", bytes.len())
            }
        }
    }
}

/// A model's request to call a tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// The provider's id of the call.
    pub id: String,
    /// The tool.
    pub name: String,
    /// The arguments, JSON text.
    pub arguments_json: String,
}

/// What a part of a message holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartKind {
    /// Text.
    Text(String),
    /// An image.
    Image {
        /// Where it is.
        source: Source,
        /// OpenAI's detail hint.
        detail: Option<String>,
    },
    /// A document (PDF).
    Document {
        /// Where it is.
        source: Source,
        /// A title.
        title: Option<String>,
    },
    /// Audio.
    Audio {
        /// The audio.
        bytes: Vec<u8>,
        /// `wav` or `mp3`.
        format: String,
    },
    /// A tool call.
    ToolCall(ToolCall),
    /// A tool result.
    ToolResult {
        /// The call it answers.
        tool_call_id: String,
        /// The tool's name.
        name: String,
        /// The result.
        content: String,
        /// Whether the tool failed.
        is_error: bool,
    },
    /// Visible reasoning.
    Thinking {
        /// The text.
        text: String,
        /// Anthropic's signature.
        signature: Option<String>,
    },
}

/// One part of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// What it holds.
    pub kind: PartKind,
    /// Cache the prompt up to here (Anthropic).
    pub cache_breakpoint: bool,
}

impl Part {
    /// A text part.
    pub fn text(text: impl Into<String>) -> Self {
        Part {
            kind: PartKind::Text(text.into()),
            cache_breakpoint: false,
        }
    }
}

/// One turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// What is said.
    pub parts: Vec<Part>,
    /// An optional participant name.
    pub name: Option<String>,
}

impl Message {
    /// The concatenated text parts.
    pub fn text(&self) -> String {
        self.parts
            .iter()
            .filter_map(|part| match &part.kind {
                PartKind::Text(text) => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    /// The tool calls, in order.
    pub fn tool_calls(&self) -> impl Iterator<Item = &ToolCall> {
        self.parts.iter().filter_map(|part| match &part.kind {
            PartKind::ToolCall(call) => Some(call),
            _ => None,
        })
    }
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    /// Its name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of its arguments.
    pub parameters: serde_json::Value,
    /// Exact schema adherence.
    pub strict: bool,
}

/// How the model may use tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides.
    Auto,
    /// No calls.
    None,
    /// At least one call.
    Required,
    /// This tool.
    Tool(String),
}

/// The shape of the answer.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ResponseFormat {
    /// Free text.
    #[default]
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON following a schema.
    JsonSchema {
        /// Its name.
        name: String,
        /// The schema.
        schema: serde_json::Value,
        /// Exact adherence.
        strict: bool,
    },
}

/// Options for one provider only.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProviderOptions {
    /// OpenAI: `reasoning_effort`, `service_tier`, `logit_bias`.
    pub openai: Option<serde_json::Map<String, serde_json::Value>>,
    /// Anthropic: thinking budget, `top_k`.
    pub anthropic: Option<serde_json::Map<String, serde_json::Value>>,
    /// Gemini: safety settings, `topK`, thinking budget.
    pub gemini: Option<serde_json::Map<String, serde_json::Value>>,
}

impl ProviderOptions {
    /// The providers whose options are set.
    pub fn providers(&self) -> Vec<&'static str> {
        let mut set = Vec::new();
        if self.openai.is_some() {
            set.push("openai");
        }
        if self.anthropic.is_some() {
            set.push("anthropic");
        }
        if self.gemini.is_some() {
            set.push("gemini");
        }
        set
    }
}

/// A chat completion request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatRequest {
    /// A model or an alias.
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Tools.
    pub tools: Vec<Tool>,
    /// Tool choice.
    pub tool_choice: Option<ToolChoice>,
    /// Parallel tool calls.
    pub parallel_tool_calls: Option<bool>,
    /// Answer shape.
    pub response_format: ResponseFormat,
    /// Temperature.
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    pub top_p: Option<f64>,
    /// Output token limit.
    pub max_output_tokens: Option<u32>,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// Seed.
    pub seed: Option<i64>,
    /// Tags for cost allocation.
    pub tags: BTreeMap<String, String>,
    /// The end user.
    pub end_user_id: Option<String>,
    /// Provider-specific options.
    pub provider_options: ProviderOptions,
    /// Drop unsupported features instead of refusing.
    pub allow_unsupported: bool,
    /// How to shorten a conversation too long for the context window.
    pub truncation: Option<Truncation>,
    /// Critique and revise the answer against these principles (Constitutional AI).
    pub constitution: Option<ConstitutionChoice>,
}

/// The principles of a constitutional request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConstitutionChoice {
    /// A constitution of the configuration, or a built-in one.
    Named(String),
    /// Principles given with the request.
    Inline(Vec<Principle>),
}

/// A principle of a constitution.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Principle {
    /// Its name, for the trace.
    pub name: String,
    /// What the critique looks for.
    pub critique: String,
    /// How to revise after the critique.
    pub revision: String,
}

/// One critique and revision of the constitutional loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConstitutionStep {
    /// The principle applied.
    pub principle: String,
    /// The critique of the answer so far.
    pub critique: String,
    /// The revised answer.
    pub revision: String,
}

/// An embeddings request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EmbedRequest {
    /// An embedding model or an alias.
    pub model: String,
    /// The texts.
    pub inputs: Vec<String>,
    /// Shorter vectors, where the model can make them.
    pub dimensions: Option<u32>,
    /// Tags for cost allocation.
    pub tags: BTreeMap<String, String>,
    /// The end user.
    pub end_user_id: Option<String>,
}

/// Embeddings of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedResponse {
    /// The call's id.
    pub id: String,
    /// The catalogue model.
    pub model: String,
    /// The provider.
    pub provider: String,
    /// The deployment.
    pub deployment: String,
    /// One vector per input, in order.
    pub vectors: Vec<Vec<f32>>,
    /// Input tokens of the serving call.
    pub usage: Usage,
    /// Cost of every attempt, in micro-USD.
    pub cost_micros: i64,
    /// Every try.
    pub attempts: Vec<Attempt>,
    /// Notices, such as deprecations.
    pub notices: Vec<String>,
}

/// How generated images come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageDelivery {
    /// What the model gives by default: a URL for DALL-E models, the bytes for the others
    /// (OpenAI's HTTP default).
    #[default]
    ModelDefault,
    /// The bytes.
    Bytes,
    /// A URL at the provider.
    Url,
}

/// An image generation request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageRequest {
    /// An image model or an alias.
    pub model: String,
    /// What to draw.
    pub prompt: String,
    /// How many images.
    pub count: u32,
    /// WIDTHxHEIGHT or `auto`.
    pub size: Option<String>,
    /// The model's quality names.
    pub quality: Option<String>,
    /// `vivid` or `natural` (DALL-E 3).
    pub style: Option<String>,
    /// Bytes or URL.
    pub delivery: ImageDelivery,
    /// `png`, `jpeg` or `webp`.
    pub output_format: Option<String>,
    /// `transparent`, `opaque` or `auto`.
    pub background: Option<String>,
    /// Tags for cost allocation.
    pub tags: BTreeMap<String, String>,
    /// The end user.
    pub end_user_id: Option<String>,
}

/// Where a generated image is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageData {
    /// Its bytes.
    Bytes(Vec<u8>),
    /// A URL at the provider.
    Url(String),
}

/// A generated image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The image.
    pub data: ImageData,
    /// `image/png`, `image/jpeg` or `image/webp`.
    pub mime_type: String,
    /// The prompt the model used, where it rewrites prompts.
    pub revised_prompt: Option<String>,
}

/// Generated images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageResponse {
    /// The call's id.
    pub id: String,
    /// The catalogue model.
    pub model: String,
    /// The provider.
    pub provider: String,
    /// The deployment.
    pub deployment: String,
    /// The images.
    pub images: Vec<Image>,
    /// Tokens, where the provider reports them.
    pub usage: Usage,
    /// Cost of every attempt, in micro-USD.
    pub cost_micros: i64,
    /// Every try.
    pub attempts: Vec<Attempt>,
    /// Notices, such as deprecations.
    pub notices: Vec<String>,
    /// Unix time of creation, in seconds.
    pub created: i64,
}

/// A transcription request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TranscriptionRequest {
    /// A transcription model or an alias.
    pub model: String,
    /// The file's name; its extension names the format.
    pub filename: String,
    /// The recording.
    pub audio: bytes::Bytes,
    /// ISO-639-1 language.
    pub language: Option<String>,
    /// Guiding text.
    pub prompt: Option<String>,
    /// Sampling temperature, 0 to 1.
    pub temperature: Option<f32>,
    /// Segment timestamps.
    pub segment_timestamps: bool,
    /// Word timestamps.
    pub word_timestamps: bool,
    /// Tags for cost allocation.
    pub tags: BTreeMap<String, String>,
    /// The end user.
    pub end_user_id: Option<String>,
}

/// A timestamped stretch of a transcript.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Its position, from 0.
    pub id: u32,
    /// Start in the audio.
    pub start: Duration,
    /// End in the audio.
    pub end: Duration,
    /// Its text.
    pub text: String,
}

/// A timestamped word.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    /// The word.
    pub word: String,
    /// Start in the audio.
    pub start: Duration,
    /// End in the audio.
    pub end: Duration,
}

/// What a recording says.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Transcript {
    /// The text.
    pub text: String,
    /// The language, where reported.
    pub language: Option<String>,
    /// The audio's length, where reported.
    pub duration: Option<Duration>,
    /// Segments, if asked for.
    pub segments: Vec<Segment>,
    /// Words, if asked for.
    pub words: Vec<Word>,
}

/// A transcription.
#[derive(Debug, Clone, PartialEq)]
pub struct TranscriptionResponse {
    /// The call's id.
    pub id: String,
    /// The catalogue model.
    pub model: String,
    /// The provider.
    pub provider: String,
    /// The deployment.
    pub deployment: String,
    /// The transcript.
    pub transcript: Transcript,
    /// Tokens, where the provider reports them.
    pub usage: Usage,
    /// Cost of every attempt, in micro-USD.
    pub cost_micros: i64,
    /// Every try.
    pub attempts: Vec<Attempt>,
    /// Notices, such as deprecations.
    pub notices: Vec<String>,
}

/// How a conversation too long for the context window is shortened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truncation {
    /// Oldest turns first.
    DropOldest,
    /// Turns from the middle first.
    MiddleOut,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// Done, or a stop sequence.
    Stop,
    /// Output limit.
    Length,
    /// Tool calls.
    ToolCalls,
    /// Safety filter.
    ContentFilter,
    /// Failure mid-answer.
    Error,
}

/// Normalized token counts (see the proto's `Usage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Prompt tokens, cached ones included.
    pub input_tokens: u64,
    /// Generated tokens, reasoning included.
    pub output_tokens: u64,
    /// Prompt tokens read from a cache.
    pub cache_read_tokens: u64,
    /// Prompt tokens written to a cache.
    pub cache_write_tokens: u64,
    /// Generated tokens of reasoning.
    pub reasoning_tokens: u64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cache_read_tokens += other.cache_read_tokens;
        self.cache_write_tokens += other.cache_write_tokens;
        self.reasoning_tokens += other.reasoning_tokens;
    }
}

/// One try at serving a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The deployment.
    pub deployment: String,
    /// Its provider.
    pub provider: String,
    /// The provider's model.
    pub model: String,
    /// "OK" or a gRPC code name.
    pub result_code: String,
    /// What went wrong.
    pub error: String,
    /// How long it took.
    pub latency: Duration,
}

/// A completion.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// Its id.
    pub id: String,
    /// The catalogue model.
    pub model: String,
    /// The provider.
    pub provider: String,
    /// The deployment.
    pub deployment: String,
    /// The answer.
    pub message: Message,
    /// Why it stopped.
    pub finish_reason: FinishReason,
    /// Tokens of the serving call.
    pub usage: Usage,
    /// Cost of every attempt, in micro-USD.
    pub cost_micros: i64,
    /// Every try.
    pub attempts: Vec<Attempt>,
    /// Notices, such as deprecations.
    pub notices: Vec<String>,
    /// Unix time of creation, in seconds (OpenAI's `created`).
    pub created: i64,
    /// The critiques and revisions of a constitutional request.
    pub constitution_trace: Vec<ConstitutionStep>,
}

/// A piece of a streamed tool call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ToolCallDelta {
    /// Which call, from 0.
    pub index: u32,
    /// Its id, in the first piece.
    pub id: Option<String>,
    /// The tool, in the first piece.
    pub name: Option<String>,
    /// More argument text.
    pub arguments_json: String,
}

/// New streamed output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    /// Answer text.
    Text(String),
    /// A tool call piece.
    ToolCall(ToolCallDelta),
    /// Reasoning text.
    Thinking(String),
}

/// An event of a streamed completion.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// New output.
    Delta(Delta),
    /// The end: the whole answer, usage and cost.
    Done(Box<ChatResponse>),
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The tenant.
    pub tenant: String,
    /// The subject.
    pub subject: String,
}
