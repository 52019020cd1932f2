//! The AI domain: validates a request, routes it to deployments (alias, catalogue, deprecated
//! names), checks each deployment's capabilities, tries deployments in turn on retryable
//! failures, prices every attempt, and records its usage.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::BoxStream;
use switchyard_kit::FieldViolation;
use switchyard_store::page::{self, PageError};
use switchyard_store::{Db, now_micros};

use super::breaker::{Admission, Breakers};
use super::catalogue::{Catalogue, ModelEntry};
use super::context;
use super::cost::cost_micros;
use super::error::{AiError, Result};
use super::model::*;
use super::quota::{Exceeded, Limits, QuotaConfig, Quotas};
use super::tokens;
use crate::config::{AiConfig, ConstitutionConfig};
use crate::providers::{
    Adapters, ChatProvider, Deployment, EmbeddingProvider, ImageProvider, ProviderError,
    ProviderEvent, ProviderResponse, TokenCounter, TranscriptionProvider,
};
use crate::usage::{self, UsageFilter, UsageRecord, UsageRecorder};

/// The most stop sequences a request may carry (OpenAI's limit).
const MAX_STOP: usize = 4;
/// The longest wait before trying the next deployment, whatever a Retry-After says.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// One step of a request's plan: a deployment and the catalogue model it serves.
#[derive(Debug, Clone)]
pub(super) struct Step {
    pub(super) deployment: Deployment,
    pub(super) model: String,
    pub(super) entry: ModelEntry,
}

/// Who a call is for, as its usage records say.
#[derive(Clone, Copy)]
pub(super) struct Job<'a> {
    pub(super) caller: &'a Caller,
    /// The model or alias asked for.
    pub(super) model: &'a str,
    pub(super) tags: &'a BTreeMap<String, String>,
    pub(super) end_user_id: Option<&'a str>,
    /// Of the call's id (`chatcmpl`, `embd`, ...).
    pub(super) id_prefix: &'static str,
}

/// What one provider call produced, with its usage and cost.
pub(super) struct Metered<T> {
    pub(super) value: T,
    pub(super) usage: Usage,
    pub(super) cost_micros: i64,
}

/// What a call over the plan produced, and how.
pub(super) struct Served<T> {
    pub(super) id: String,
    pub(super) value: T,
    /// Of the serving call.
    pub(super) usage: Usage,
    /// The catalogue model, provider and deployment that served it.
    pub(super) model: String,
    pub(super) provider: String,
    pub(super) deployment: String,
    /// Of every attempt.
    pub(super) cost_micros: i64,
    pub(super) attempts: Vec<Attempt>,
    pub(super) notices: Vec<String>,
    /// Unix seconds.
    pub(super) created: i64,
}

/// Which call a usage record is about.
#[derive(Clone, Copy)]
struct Call<'a> {
    caller: &'a Caller,
    tags: &'a BTreeMap<String, String>,
    end_user_id: Option<&'a str>,
    step: &'a Step,
    request_id: &'a str,
    time: i64,
    attempt: u32,
}

/// How a call ended.
struct Outcome<'a> {
    usage: Usage,
    cost: i64,
    latency: Duration,
    ttft: Option<Duration>,
    result_code: &'a str,
    error_reason: &'a str,
}

/// A stream of completion events.
pub type CompletionStream = BoxStream<'static, Result<StreamEvent>>;

/// A completion being streamed: its id and creation time are known before its first event.
pub struct Streaming {
    /// The completion's id (the final event's too).
    pub id: String,
    /// Unix time of creation, in seconds.
    pub created: i64,
    /// The events.
    pub events: CompletionStream,
}

impl std::fmt::Debug for Streaming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streaming")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The AI service's domain logic.
#[derive(Debug, Clone)]
pub struct Ai {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    catalogue: Catalogue,
    deployments: BTreeMap<String, Deployment>,
    aliases: BTreeMap<String, Vec<String>>,
    chat: HashMap<&'static str, Arc<dyn ChatProvider>>,
    embedders: HashMap<&'static str, Arc<dyn EmbeddingProvider>>,
    imagers: HashMap<&'static str, Arc<dyn ImageProvider>>,
    transcribers: HashMap<&'static str, Arc<dyn TranscriptionProvider>>,
    counters: HashMap<&'static str, Arc<dyn TokenCounter>>,
    constitutions: BTreeMap<String, ConstitutionConfig>,
    recorder: UsageRecorder,
    db: Db,
    breakers: Breakers,
    quotas: Quotas,
    /// Per-deployment requests and tokens per minute, keyed by deployment name.
    deployment_limits: Quotas,
}

fn page_error(field: &str) -> impl Fn(PageError) -> AiError + '_ {
    move |err| AiError::invalid(field, err.to_string())
}

impl Ai {
    /// The domain over a catalogue, configured deployments, the provider adapters, and the usage
    /// recorder and store. Every current model of the `echo` provider gets a deployment of its name
    /// unless configuration defines one.
    pub fn new(
        catalogue: Catalogue,
        config: &AiConfig,
        adapters: Adapters,
        recorder: UsageRecorder,
        db: Db,
    ) -> Self {
        let mut deployments: BTreeMap<String, Deployment> = config
            .deployments
            .iter()
            .map(|(name, d)| {
                let deployment = Deployment {
                    name: name.clone(),
                    provider: d.provider.clone(),
                    model: d.model.clone(),
                    provider_model: d.provider_model.clone().unwrap_or_else(|| d.model.clone()),
                    base_url: d.base_url.clone().unwrap_or_default(),
                    credential: d.credential.clone(),
                    organization: d.organization.clone(),
                    project: d.project.clone(),
                    timeout: d.timeout,
                    weight: d.weight,
                };
                (name.clone(), deployment)
            })
            .collect();
        for (id, entry) in &catalogue.models {
            if entry.provider == "echo" && !entry.deprecated {
                deployments.entry(id.clone()).or_insert_with(|| Deployment {
                    name: id.clone(),
                    provider: "echo".into(),
                    model: id.clone(),
                    provider_model: id.clone(),
                    base_url: String::new(),
                    credential: None,
                    organization: None,
                    project: None,
                    timeout: Duration::from_secs(10),
                    weight: 1,
                });
            }
        }
        Ai {
            inner: Arc::new(Inner {
                catalogue,
                deployments,
                aliases: config.aliases.clone(),
                constitutions: config.constitutions.clone(),
                chat: adapters.chat.into_iter().map(|p| (p.name(), p)).collect(),
                embedders: adapters
                    .embeddings
                    .into_iter()
                    .map(|p| (p.name(), p))
                    .collect(),
                imagers: adapters.images.into_iter().map(|p| (p.name(), p)).collect(),
                transcribers: adapters
                    .transcription
                    .into_iter()
                    .map(|p| (p.name(), p))
                    .collect(),
                counters: adapters
                    .token_counters
                    .into_iter()
                    .map(|p| (p.name(), p))
                    .collect(),
                recorder,
                db,
                breakers: Breakers::new(
                    config.circuit_breaker.failure_threshold,
                    config.circuit_breaker.open_for,
                ),
                quotas: Quotas::new(config.quotas.clone()),
                deployment_limits: Quotas::new(QuotaConfig {
                    default: Limits::default(),
                    tenants: config
                        .deployments
                        .iter()
                        .map(|(name, d)| {
                            (
                                name.clone(),
                                Limits {
                                    rpm: d.rpm,
                                    tpm: d.tpm,
                                },
                            )
                        })
                        .collect(),
                }),
            }),
        }
    }

    /// A configured constitution's principles.
    pub(super) fn constitution(&self, name: &str) -> Option<&[Principle]> {
        self.inner
            .constitutions
            .get(name)
            .map(|c| c.principles.as_slice())
    }

    /// The catalogue in force.
    pub fn catalogue(&self) -> &Catalogue {
        &self.inner.catalogue
    }

    /// Configured aliases and the deployments they name.
    pub fn aliases(&self) -> &BTreeMap<String, Vec<String>> {
        &self.inner.aliases
    }

    /// The deployments a request for `model` tries, in order, and notices for the caller.
    fn plan(&self, model: &str) -> Result<(Vec<Step>, Vec<String>)> {
        let inner = &self.inner;
        let step = |deployment: &Deployment| -> Result<Step> {
            let (id, entry, _) = inner
                .catalogue
                .resolve(&deployment.model)
                .ok_or_else(|| AiError::NoDeployment(deployment.model.clone()))?;
            Ok(Step {
                deployment: deployment.clone(),
                model: id.to_owned(),
                entry: entry.clone(),
            })
        };
        if let Some(targets) = inner.aliases.get(model) {
            let steps = targets
                .iter()
                .filter_map(|name| inner.deployments.get(name))
                .map(step)
                .collect::<Result<Vec<_>>>()?;
            return Ok((steps, Vec::new()));
        }
        let Some((id, _, notice)) = inner.catalogue.resolve(model) else {
            return Err(AiError::invalid(
                "model",
                format!(
                    "{model:?} is neither a catalogue model nor an alias; ListModels shows both"
                ),
            ));
        };
        let steps = inner
            .deployments
            .values()
            .filter(|d| {
                inner
                    .catalogue
                    .resolve(&d.model)
                    .is_some_and(|(served, _, _)| served == id)
            })
            .map(step)
            .collect::<Result<Vec<_>>>()?;
        if steps.is_empty() {
            return Err(AiError::NoDeployment(id.to_owned()));
        }
        Ok((weighted_order(steps), notice.into_iter().collect()))
    }

    /// The request as `step` can serve it: features its model lacks are refused, or dropped when
    /// the request allows it.
    fn adapt(&self, request: &ChatRequest, step: &Step) -> Result<ChatRequest> {
        let mut adapted = request.clone();
        let target = format!("{} ({})", step.model, step.deployment.provider);
        let mut lacks =
            |feature: &str, capability: &str, drop: &mut dyn FnMut(&mut ChatRequest)| {
                if step.entry.can(capability) {
                    return Ok(());
                }
                if request.allow_unsupported {
                    drop(&mut adapted);
                    return Ok(());
                }
                Err(AiError::Unsupported {
                    feature: feature.to_owned(),
                    target: target.clone(),
                })
            };
        if !request.tools.is_empty() {
            lacks("tools", "tools", &mut |r| {
                r.tools.clear();
                r.tool_choice = None;
                r.parallel_tool_calls = None;
            })?;
        }
        let has = |f: &dyn Fn(&PartKind) -> bool| {
            request
                .messages
                .iter()
                .flat_map(|m| &m.parts)
                .any(|p| f(&p.kind))
        };
        let strip = |r: &mut ChatRequest, f: &dyn Fn(&PartKind) -> bool| {
            for message in &mut r.messages {
                message.parts.retain(|p| !f(&p.kind));
            }
        };
        if has(&|k| matches!(k, PartKind::Image { .. })) {
            lacks("image parts", "vision", &mut |r| {
                strip(r, &|k| matches!(k, PartKind::Image { .. }))
            })?;
        }
        if has(&|k| matches!(k, PartKind::Document { .. })) {
            lacks("document parts", "documents", &mut |r| {
                strip(r, &|k| matches!(k, PartKind::Document { .. }))
            })?;
        }
        if has(&|k| matches!(k, PartKind::Audio { .. })) {
            lacks("audio parts", "audio_input", &mut |r| {
                strip(r, &|k| matches!(k, PartKind::Audio { .. }))
            })?;
        }
        if matches!(request.response_format, ResponseFormat::JsonSchema { .. }) {
            lacks("response_format.json_schema", "json_schema", &mut |r| {
                r.response_format = ResponseFormat::Text;
            })?;
        }
        Ok(adapted)
    }

    fn validate(&self, request: &ChatRequest, steps: &[Step]) -> Result<()> {
        let mut violations = Vec::new();
        if request.messages.is_empty() {
            violations.push(FieldViolation::new(
                "messages",
                "at least one message is required",
            ));
        }
        if request.stop.len() > MAX_STOP {
            violations.push(FieldViolation::new(
                "stop",
                format!("at most {MAX_STOP} stop sequences"),
            ));
        }
        if request
            .temperature
            .is_some_and(|t| !(0.0..=2.0).contains(&t))
        {
            violations.push(FieldViolation::new(
                "temperature",
                "must be between 0 and 2",
            ));
        }
        if request.top_p.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
            violations.push(FieldViolation::new("top_p", "must be between 0 and 1"));
        }
        for (index, tool) in request.tools.iter().enumerate() {
            let valid_name = !tool.name.is_empty()
                && tool.name.len() <= 64
                && tool
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid_name {
                violations.push(FieldViolation::new(
                    format!("tools[{index}].name"),
                    "1 to 64 letters, digits, '_' or '-'",
                ));
            }
        }
        if let Some(ToolChoice::Tool(name)) = &request.tool_choice
            && !request.tools.iter().any(|t| &t.name == name)
        {
            violations.push(FieldViolation::new(
                "tool_choice.tool_name",
                "names no tool of the request",
            ));
        }
        for provider in request.provider_options.providers() {
            if !request.allow_unsupported
                && !steps.iter().any(|s| s.deployment.provider == provider)
            {
                violations.push(FieldViolation::new(
                    format!("provider_options.{provider}"),
                    format!("no deployment of {} is {provider}", request.model),
                ));
            }
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(AiError::Invalid(violations))
        }
    }

    /// The embeddings adapter of a step's provider.
    pub(super) fn embedder(&self, step: &Step) -> Result<Arc<dyn EmbeddingProvider>> {
        adapter(&self.inner.embedders, step, "embeddings")
    }

    /// The image adapter of a step's provider.
    pub(super) fn imager(&self, step: &Step) -> Result<Arc<dyn ImageProvider>> {
        adapter(&self.inner.imagers, step, "image generation")
    }

    /// The transcription adapter of a step's provider.
    pub(super) fn transcriber(&self, step: &Step) -> Result<Arc<dyn TranscriptionProvider>> {
        adapter(&self.inner.transcribers, step, "transcription")
    }

    fn provider(&self, step: &Step) -> Result<&Arc<dyn ChatProvider>> {
        self.inner
            .chat
            .get(step.deployment.provider.as_str())
            .ok_or_else(|| {
                AiError::NoDeployment(format!(
                    "{} (provider {} is not built in)",
                    step.model, step.deployment.provider
                ))
            })
    }

    /// What every completion does first: the tenant's quota, the plan, the request's checks.
    fn begin(&self, caller: &Caller, request: &ChatRequest) -> Result<(Vec<Step>, Vec<String>)> {
        self.admit(caller)?;
        let (steps, notices) = self.plan(&request.model)?;
        self.validate(request, &steps)?;
        Ok((steps, notices))
    }

    /// The tenant's request quota, then the plan for `model`.
    pub(super) fn begin_job(
        &self,
        caller: &Caller,
        model: &str,
    ) -> Result<(Vec<Step>, Vec<String>)> {
        self.admit(caller)?;
        self.plan(model)
    }

    /// The tenant's request quota.
    fn admit(&self, caller: &Caller) -> Result<()> {
        self.inner
            .quotas
            .admit(&caller.tenant)
            .map_err(|exceeded| match exceeded {
                Exceeded::Requests { retry_after } => AiError::QuotaExceeded {
                    limit: "requests_per_minute",
                    retry_after,
                },
                Exceeded::Tokens { retry_after } => AiError::QuotaExceeded {
                    limit: "tokens_per_minute",
                    retry_after,
                },
            })
    }

    /// The local count of a request's input and its requested output when they might exceed
    /// `step`'s context window; `None` when the request surely fits.
    fn overflow(&self, step: &Step, request: &ChatRequest) -> Option<(u64, u64)> {
        let window = step.entry.context_window;
        if window == 0 {
            return None;
        }
        let output = u64::from(request.max_output_tokens.unwrap_or(0));
        // A token is at least one byte: a request with fewer bytes than the window fits without
        // running the tokenizer.
        let bytes: u64 = request
            .messages
            .iter()
            .flat_map(|m| &m.parts)
            .map(|p| match &p.kind {
                PartKind::Text(t) => t.len() as u64,
                _ => 1000,
            })
            .sum::<u64>()
            + 8 * request.messages.len() as u64
            + request
                .tools
                .iter()
                .map(|t| t.parameters.to_string().len() as u64 + 64)
                .sum::<u64>();
        if bytes + output <= window {
            return None;
        }
        let input = self.local_count(step, request);
        (input + output > window).then_some((input, output))
    }

    fn local_count(&self, step: &Step, request: &ChatRequest) -> u64 {
        tokens::count_request(
            request,
            &step.deployment.provider,
            &step.deployment.provider_model,
        )
        .0
    }

    /// Exact input counts, from the providers' count endpoints, for the steps whose window the
    /// local count says a request overflows. The local count of Anthropic and Gemini inputs is an
    /// estimate (four characters a token), so a request is refused or truncated for them only on
    /// a count the provider confirms; when the endpoint fails, the estimate stands. Requests that
    /// fit cost no round trip.
    async fn confirmed_counts(
        &self,
        request: &ChatRequest,
        steps: &[Step],
    ) -> HashMap<String, u64> {
        let mut counts = HashMap::new();
        for step in steps {
            let deployment = &step.deployment;
            let Some(counter) = self.inner.counters.get(deployment.provider.as_str()) else {
                continue;
            };
            if self.overflow(step, request).is_none() {
                continue;
            }
            let counted = tokio::time::timeout(
                deployment.timeout,
                counter.count_tokens(deployment, request),
            )
            .await;
            match counted {
                Ok(Ok(input)) => {
                    counts.insert(deployment.name.clone(), input);
                }
                Ok(Err(err)) => {
                    tracing::warn!(deployment = %deployment.name, error = %err, "the count endpoint failed; the local estimate stands");
                }
                Err(_) => {
                    tracing::warn!(deployment = %deployment.name, "the count endpoint timed out; the local estimate stands");
                }
            }
        }
        counts
    }

    /// The request as it fits `step`'s context window: as is, or truncated if it asks for that.
    /// `confirmed` is the provider's own count of the input, when it was asked. A step the
    /// request does not fit leaves a trace in `attempts`.
    fn fit(
        &self,
        step: &Step,
        request: ChatRequest,
        attempts: &mut Vec<Attempt>,
        confirmed: Option<u64>,
    ) -> Result<ChatRequest> {
        let Some((mut input, output)) = self.overflow(step, &request) else {
            return Ok(request);
        };
        let window = step.entry.context_window;
        if let Some(exact) = confirmed {
            if exact + output <= window {
                return Ok(request);
            }
            input = exact;
        }
        if let Some(strategy) = request.truncation
            && let Some(cut) = context::truncate(
                &request,
                strategy,
                window.saturating_sub(output),
                |r: &ChatRequest| self.local_count(step, r),
            )
        {
            return Ok(cut);
        }
        attempts.push(attempt(
            step,
            "INVALID_ARGUMENT",
            format!("skipped: {input} input and {output} output tokens exceed its {window}-token context window"),
            Duration::ZERO,
        ));
        Err(AiError::ContextWindow {
            model: step.model.clone(),
            input,
            output,
            window,
        })
    }

    /// Whether a step may be tried: its circuit is closed (or probing) and its deployment is
    /// within its requests per minute. A skipped step leaves a trace in `attempts`, and the
    /// error is what the caller sees if no step is left.
    fn admitted(&self, step: &Step, attempts: &mut Vec<Attempt>) -> Result<()> {
        let name = &step.deployment.name;
        if self.inner.breakers.admit(name) == Admission::Rejected {
            attempts.push(attempt(
                step,
                "UNAVAILABLE",
                "circuit open: skipped".to_owned(),
                Duration::ZERO,
            ));
            return Err(AiError::Provider(ProviderError::Unavailable(format!(
                "the circuit of {name} is open"
            ))));
        }
        if let Err(exceeded) = self.inner.deployment_limits.admit(name) {
            let (limit, retry_after) = match exceeded {
                Exceeded::Requests { retry_after } => {
                    ("deployment_requests_per_minute", retry_after)
                }
                Exceeded::Tokens { retry_after } => ("deployment_tokens_per_minute", retry_after),
            };
            attempts.push(attempt(
                step,
                "RESOURCE_EXHAUSTED",
                format!("{limit} of {name} reached: skipped"),
                Duration::ZERO,
            ));
            return Err(AiError::QuotaExceeded { limit, retry_after });
        }
        Ok(())
    }

    /// Counts the tokens of a served call against the tenant's quota and the deployment's limit.
    fn spend(&self, tenant: &str, deployment: &str, usage: &Usage) {
        let tokens = usage.input_tokens + usage.output_tokens;
        self.inner.quotas.spend(tenant, tokens);
        self.inner.deployment_limits.spend(deployment, tokens);
    }

    /// One completion, trying each deployment of the plan in turn on retryable failures; with a
    /// constitution, the critique-and-revise loop of such completions.
    pub async fn complete(&self, caller: &Caller, request: &ChatRequest) -> Result<ChatResponse> {
        if let Some(choice) = &request.constitution {
            return Box::pin(self.complete_constitutionally(caller, request, choice)).await;
        }
        let (steps, notices) = self.begin(caller, request)?;
        let confirmed = self.confirmed_counts(request, &steps).await;
        let job = Job {
            caller,
            model: &request.model,
            tags: &request.tags,
            end_user_id: request.end_user_id.as_deref(),
            id_prefix: "chatcmpl",
        };
        let served = self
            .serve(job, steps, notices, |step, attempts| {
                // A fallback that cannot serve the request is skipped; if none can, the first
                // reason is what the caller sees. A larger window further down the plan may take
                // a request too long for this one (context-window fallback).
                let confirmed = confirmed.get(&step.deployment.name).copied();
                let adapted = self.fit(step, self.adapt(request, step)?, attempts, confirmed)?;
                let provider = self.provider(step)?.clone();
                let (deployment, prices) = (step.deployment.clone(), step.entry.prices());
                Ok(async move {
                    let response = provider.complete(&deployment, &adapted).await?;
                    Ok(Metered {
                        usage: response.usage,
                        cost_micros: cost_micros(&response.usage, &prices),
                        value: response,
                    })
                })
            })
            .await?;
        let ProviderResponse {
            message,
            finish_reason,
            notices: provider_notices,
            ..
        } = served.value;
        Ok(ChatResponse {
            id: served.id,
            model: served.model,
            provider: served.provider,
            deployment: served.deployment,
            message,
            finish_reason,
            usage: served.usage,
            cost_micros: served.cost_micros,
            attempts: served.attempts,
            notices: served.notices.into_iter().chain(provider_notices).collect(),
            created: served.created,
            constitution_trace: Vec::new(),
        })
    }

    /// Runs a call over `steps`: each step `prepare` accepts is tried in turn (its circuit
    /// permitting, within its deployment's timeout) until one succeeds or fails for good. Every
    /// attempt is recorded in the usage log; the tokens served count against the tenant's quota.
    ///
    /// `prepare` turns a step into the provider call, or refuses the step (the first refusal is
    /// the error when no step is left).
    pub(super) async fn serve<T, F, Fut>(
        &self,
        job: Job<'_>,
        steps: Vec<Step>,
        notices: Vec<String>,
        mut prepare: F,
    ) -> Result<Served<T>>
    where
        F: FnMut(&Step, &mut Vec<Attempt>) -> Result<Fut>,
        Fut: Future<Output = std::result::Result<Metered<T>, ProviderError>>,
    {
        let id = format!("{}-{}", job.id_prefix, uuid::Uuid::now_v7().simple());
        let mut attempts = Vec::new();
        let mut cost = 0;
        let mut last_error = None;
        for (index, step) in steps.iter().enumerate() {
            let call = match prepare(step, &mut attempts) {
                Ok(call) => call,
                Err(err) => {
                    last_error.get_or_insert(err);
                    continue;
                }
            };
            if let Err(err) = self.admitted(step, &mut attempts) {
                last_error.get_or_insert(err);
                continue;
            }
            let started = Instant::now();
            let time = now_micros();
            let result = tokio::time::timeout(step.deployment.timeout, call)
                .await
                .unwrap_or(Err(ProviderError::Timeout));
            let latency = started.elapsed();
            let recorded = Call {
                caller: job.caller,
                tags: job.tags,
                end_user_id: job.end_user_id,
                step,
                request_id: &id,
                time,
                attempt: u32::try_from(attempts.len() + 1).unwrap_or(u32::MAX),
            };
            let healthy = result
                .as_ref()
                .map_or_else(|err| !err.is_retryable(), |_| true);
            self.inner.breakers.report(&step.deployment.name, healthy);
            match result {
                Ok(Metered {
                    value,
                    usage,
                    cost_micros,
                }) => {
                    cost += cost_micros;
                    self.inner
                        .quotas
                        .spend(&job.caller.tenant, usage.input_tokens + usage.output_tokens);
                    attempts.push(attempt(step, "OK", String::new(), latency));
                    self.record(
                        &recorded,
                        Outcome {
                            usage,
                            cost: cost_micros,
                            latency,
                            ttft: None,
                            result_code: "OK",
                            error_reason: "",
                        },
                    );
                    return Ok(Served {
                        id,
                        value,
                        usage,
                        model: step.model.clone(),
                        provider: step.deployment.provider.clone(),
                        deployment: step.deployment.name.clone(),
                        cost_micros: cost,
                        attempts,
                        notices,
                        created: time / 1_000_000,
                    });
                }
                Err(err) => {
                    attempts.push(attempt(step, err.result_code(), err.to_string(), latency));
                    self.record(
                        &recorded,
                        Outcome {
                            usage: Usage::default(),
                            cost: 0,
                            latency,
                            ttft: None,
                            result_code: err.result_code(),
                            error_reason: err.reason(),
                        },
                    );
                    if !(err.is_retryable() && index + 1 < steps.len()) {
                        return Err(err.into());
                    }
                    tracing::warn!(deployment = %step.deployment.name, error = %err, "trying the next deployment");
                    tokio::time::sleep(backoff(&err, attempts.len())).await;
                    last_error = Some(err.into());
                }
            }
        }
        Err(last_error.unwrap_or_else(|| AiError::NoDeployment(job.model.to_owned())))
    }

    /// One completion, streamed. Deployments are tried in turn until one starts streaming; once
    /// output has reached the caller there is no fallback, and a failure ends the stream. A
    /// constitutional request streams its final revision as one delta once the loop is done:
    /// nothing before it is the answer.
    pub async fn stream(&self, caller: &Caller, request: &ChatRequest) -> Result<Streaming> {
        if request.constitution.is_some() {
            let response = self.complete(caller, request).await?;
            let (id, created) = (response.id.clone(), response.created);
            let text = response.message.text();
            let events = futures::stream::iter([
                Ok(StreamEvent::Delta(Delta::Text(text))),
                Ok(StreamEvent::Done(Box::new(response))),
            ])
            .boxed();
            return Ok(Streaming {
                id,
                created,
                events,
            });
        }
        let (steps, notices) = self.begin(caller, request)?;
        let confirmed = self.confirmed_counts(request, &steps).await;
        let id = format!("chatcmpl-{}", uuid::Uuid::now_v7().simple());
        let mut attempts = Vec::new();
        let mut last_error = None;
        for (index, step) in steps.iter().enumerate() {
            let adapted = match self.adapt(request, step) {
                Ok(adapted) => adapted,
                Err(err) => {
                    last_error.get_or_insert(err);
                    continue;
                }
            };
            let confirmed = confirmed.get(&step.deployment.name).copied();
            let adapted = match self.fit(step, adapted, &mut attempts, confirmed) {
                Ok(fitted) => fitted,
                // A larger window further down the plan may take it (context-window fallback).
                Err(err) => {
                    last_error.get_or_insert(err);
                    continue;
                }
            };
            if let Err(err) = self.admitted(step, &mut attempts) {
                last_error.get_or_insert(err);
                continue;
            }
            let provider = self.provider(step)?;
            let started = Instant::now();
            let time = now_micros();
            let opened = tokio::time::timeout(
                step.deployment.timeout,
                provider.stream(&step.deployment, &adapted),
            )
            .await
            .unwrap_or(Err(ProviderError::Timeout));
            let attempt_number = u32::try_from(attempts.len() + 1).unwrap_or(u32::MAX);
            let healthy = opened
                .as_ref()
                .map_or_else(|err| !err.is_retryable(), |_| true);
            self.inner.breakers.report(&step.deployment.name, healthy);
            match opened {
                Ok(events) => {
                    let (stream_id, created) = (id.clone(), time / 1_000_000);
                    let run = StreamRun {
                        ai: self.clone(),
                        caller: caller.clone(),
                        request: request.clone(),
                        step: step.clone(),
                        id,
                        time,
                        started,
                        attempt_number,
                        attempts,
                        notices,
                    };
                    return Ok(Streaming {
                        id: stream_id,
                        created,
                        events: run.forward(events),
                    });
                }
                Err(err) => {
                    let latency = started.elapsed();
                    attempts.push(attempt(step, err.result_code(), err.to_string(), latency));
                    self.record(
                        &Call {
                            caller,
                            tags: &request.tags,
                            end_user_id: request.end_user_id.as_deref(),
                            step,
                            request_id: &id,
                            time,
                            attempt: attempt_number,
                        },
                        Outcome {
                            usage: Usage::default(),
                            cost: 0,
                            latency,
                            ttft: None,
                            result_code: err.result_code(),
                            error_reason: err.reason(),
                        },
                    );
                    if !(err.is_retryable() && index + 1 < steps.len()) {
                        return Err(err.into());
                    }
                    tokio::time::sleep(backoff(&err, attempts.len())).await;
                    last_error = Some(err.into());
                }
            }
        }
        Err(last_error.unwrap_or_else(|| AiError::NoDeployment(request.model.clone())))
    }

    fn record(&self, call: &Call<'_>, outcome: Outcome<'_>) {
        let Call {
            caller,
            tags,
            end_user_id,
            step,
            request_id,
            time,
            attempt,
        } = *call;
        let Outcome {
            usage,
            cost,
            latency,
            ttft,
            result_code,
            error_reason,
        } = outcome;
        let id = if result_code == "OK" {
            request_id.to_owned()
        } else {
            format!("{request_id}-{attempt}")
        };
        metrics::counter!(
            "switchyard_ai_requests_total",
            "provider" => step.deployment.provider.clone(),
            "model" => step.model.clone(),
            "code" => result_code.to_owned(),
        )
        .increment(1);
        metrics::counter!("switchyard_ai_cost_micro_usd_total", "model" => step.model.clone())
            .increment(u64::try_from(cost).unwrap_or(0));
        self.inner.recorder.record(UsageRecord {
            id,
            tenant: caller.tenant.clone(),
            time,
            principal: caller.subject.clone(),
            tags: tags.clone(),
            provider: step.deployment.provider.clone(),
            model: step.model.clone(),
            deployment: step.deployment.name.clone(),
            usage,
            cost_micros: cost,
            latency,
            time_to_first_token: ttft,
            result_code: result_code.to_owned(),
            error_reason: error_reason.to_owned(),
            end_user_id: end_user_id.unwrap_or_default().to_owned(),
            attempt,
            request_id: request_id.to_owned(),
        });
    }

    /// A model or alias by id.
    pub fn model(&self, id: &str) -> Option<ModelView<'_>> {
        if let Some(entry) = self.inner.catalogue.models.get(id) {
            return Some(ModelView::Model {
                id: self.inner.catalogue.models.get_key_value(id)?.0,
                entry,
            });
        }
        self.inner
            .aliases
            .get_key_value(id)
            .map(|(alias, targets)| ModelView::Alias {
                id: alias,
                deployments: targets,
            })
    }

    /// Every model and alias, by id, optionally of one provider.
    pub fn models(&self, provider: Option<&str>) -> Vec<ModelView<'_>> {
        let mut out: Vec<ModelView<'_>> = self
            .inner
            .catalogue
            .models
            .iter()
            .filter(|(_, entry)| provider.is_none_or(|p| entry.provider == p))
            .map(|(id, entry)| ModelView::Model { id, entry })
            .collect();
        if provider.is_none() {
            out.extend(
                self.inner
                    .aliases
                    .iter()
                    .map(|(id, deployments)| ModelView::Alias { id, deployments }),
            );
        }
        out
    }

    /// The estimated cost of a request before it is sent.
    pub fn estimate(&self, request: &ChatRequest) -> Result<Estimate> {
        let (steps, _) = self.plan(&request.model)?;
        let step = steps
            .first()
            .ok_or_else(|| AiError::NoDeployment(request.model.clone()))?;
        let (input_tokens, counting) = tokens::count_request(
            request,
            &step.deployment.provider,
            &step.deployment.provider_model,
        );
        let output_tokens = request
            .max_output_tokens
            .map(u64::from)
            .unwrap_or(step.entry.max_output_tokens);
        let prices = step.entry.prices();
        Ok(Estimate {
            model: step.model.clone(),
            input_tokens,
            output_tokens,
            counting,
            input_cost_micros: cost_micros(
                &Usage {
                    input_tokens,
                    ..Usage::default()
                },
                &prices,
            ),
            max_output_cost_micros: cost_micros(
                &Usage {
                    output_tokens,
                    ..Usage::default()
                },
                &prices,
            ),
        })
    }

    /// The input tokens of a request for the first deployment of its plan: the provider's count
    /// endpoint where it has one (falling back to the local count, with a notice, if that
    /// fails), else the local count (tiktoken for OpenAI, the estimate for the others).
    pub async fn count_tokens(&self, request: &ChatRequest) -> Result<TokenCount> {
        let (steps, mut notices) = self.plan(&request.model)?;
        let step = steps
            .first()
            .ok_or_else(|| AiError::NoDeployment(request.model.clone()))?;
        let (deployment, provider) = (&step.deployment, step.deployment.provider.as_str());
        if let Some(counter) = self.inner.counters.get(provider) {
            let counted = tokio::time::timeout(
                deployment.timeout,
                counter.count_tokens(deployment, request),
            )
            .await
            .unwrap_or(Err(ProviderError::Timeout));
            match counted {
                Ok(input_tokens) => {
                    return Ok(TokenCount {
                        model: step.model.clone(),
                        input_tokens,
                        counting: tokens::Counting::Provider,
                        notices,
                    });
                }
                Err(err) => notices.push(format!(
                    "{provider}'s count endpoint failed ({err}); the count is local"
                )),
            }
        }
        let (input_tokens, counting) =
            tokens::count_request(request, provider, &deployment.provider_model);
        Ok(TokenCount {
            model: step.model.clone(),
            input_tokens,
            counting,
            notices,
        })
    }

    /// The tenant's usage records, newest first.
    pub async fn list_usage(
        &self,
        caller: &Caller,
        filter: &UsageFilter,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<UsageRecord>> {
        let size = page::page_size(page_size).map_err(page_error("page_size"))?;
        let fingerprint = page::filter_fingerprint(&format!("{filter:?}"));
        let before: Option<(i64, String)> =
            page::decode_token(page_token, &fingerprint).map_err(page_error("page_token"))?;
        let mut tx = self.inner.db.begin().await?;
        let mut items = usage::list(&mut tx, &caller.tenant, filter, before, size + 1).await?;
        tx.commit().await?;
        let next_page_token =
            page::next_token(&mut items, size, &fingerprint, |r| (r.time, r.id.clone()));
        Ok(Page {
            items,
            next_page_token,
        })
    }
}

/// A page of results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Empty on the last page.
    pub next_page_token: String,
}

/// A model or an alias, as ListModels shows it.
#[derive(Debug, Clone, Copy)]
pub enum ModelView<'a> {
    /// A catalogue model.
    Model {
        /// Its id.
        id: &'a str,
        /// Its entry.
        entry: &'a ModelEntry,
    },
    /// An alias.
    Alias {
        /// Its id.
        id: &'a str,
        /// Its deployments, in order.
        deployments: &'a [String],
    },
}

/// What CountTokens answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenCount {
    /// The model counted for.
    pub model: String,
    /// Input tokens.
    pub input_tokens: u64,
    /// How they were counted.
    pub counting: tokens::Counting,
    /// Why a provider count fell back to the local one.
    pub notices: Vec<String>,
}

/// What EstimateCost answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Estimate {
    /// The model priced.
    pub model: String,
    /// Estimated input tokens.
    pub input_tokens: u64,
    /// Output tokens priced.
    pub output_tokens: u64,
    /// How the input was counted.
    pub counting: tokens::Counting,
    /// Cost of the input.
    pub input_cost_micros: i64,
    /// Most the output could cost.
    pub max_output_cost_micros: i64,
}

/// The deployments of one model in a random order where each comes first in proportion to its
/// weight, the others following as fallbacks (Efraimidis and Spirakis: each is keyed by
/// `u^(1/weight)` for a uniform `u`, highest first). Aliases keep the order they are written in.
fn weighted_order(mut steps: Vec<Step>) -> Vec<Step> {
    if steps.len() < 2 {
        return steps;
    }
    let mut rng = rand::thread_rng();
    let mut keyed: Vec<(f64, Step)> = steps
        .drain(..)
        .map(|step| {
            let weight = f64::from(step.deployment.weight.max(1));
            (rand::Rng::r#gen::<f64>(&mut rng).powf(1.0 / weight), step)
        })
        .collect();
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
    keyed.into_iter().map(|(_, step)| step).collect()
}

/// A step's provider's adapter of one capability; a provider without one cannot serve the step.
fn adapter<T: ?Sized>(
    adapters: &HashMap<&'static str, Arc<T>>,
    step: &Step,
    feature: &str,
) -> Result<Arc<T>> {
    adapters
        .get(step.deployment.provider.as_str())
        .cloned()
        .ok_or_else(|| AiError::Unsupported {
            feature: feature.to_owned(),
            target: format!("provider {}", step.deployment.provider),
        })
}

fn attempt(step: &Step, result_code: &str, error: String, latency: Duration) -> Attempt {
    Attempt {
        deployment: step.deployment.name.clone(),
        provider: step.deployment.provider.clone(),
        model: step.deployment.provider_model.clone(),
        result_code: result_code.to_owned(),
        error,
        latency,
    }
}

/// The pause before the next deployment: the provider's Retry-After when it gave one, else
/// exponential from 50 ms, with jitter; never more than [`MAX_BACKOFF`].
fn backoff(err: &ProviderError, attempt: usize) -> Duration {
    if let ProviderError::RateLimited {
        retry_after: Some(after),
    } = err
    {
        return (*after).min(MAX_BACKOFF);
    }
    let base = Duration::from_millis(50).saturating_mul(1 << attempt.min(5));
    // Full jitter from the subsecond clock: no need for a random generator here.
    let jitter = u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos(),
    ) % (base.as_millis() as u64 + 1);
    Duration::from_millis(jitter).min(MAX_BACKOFF)
}

/// Forwards a provider's stream, assembling the whole answer for the last event.
struct StreamRun {
    ai: Ai,
    caller: Caller,
    request: ChatRequest,
    step: Step,
    id: String,
    time: i64,
    started: Instant,
    attempt_number: u32,
    attempts: Vec<Attempt>,
    notices: Vec<String>,
}

impl StreamRun {
    fn forward(self, events: crate::providers::EventStream) -> CompletionStream {
        let state = (self, events, Assembly::default(), None::<Duration>, false);
        futures::stream::unfold(
            state,
            |(mut run, mut events, mut assembly, mut ttft, done)| async move {
                if done {
                    return None;
                }
                match events.next().await {
                    Some(Ok(ProviderEvent::Delta(delta))) => {
                        ttft.get_or_insert_with(|| run.started.elapsed());
                        assembly.add(&delta);
                        Some((
                            Ok(StreamEvent::Delta(delta)),
                            (run, events, assembly, ttft, false),
                        ))
                    }
                    Some(Ok(ProviderEvent::Finished {
                        finish_reason,
                        usage,
                    })) => {
                        let latency = run.started.elapsed();
                        run.ai
                            .spend(&run.caller.tenant, &run.step.deployment.name, &usage);
                        let cost = cost_micros(&usage, &run.step.entry.prices());
                        run.attempts
                            .push(attempt(&run.step, "OK", String::new(), latency));
                        run.ai.record(
                            &Call {
                                caller: &run.caller,
                                tags: &run.request.tags,
                                end_user_id: run.request.end_user_id.as_deref(),
                                step: &run.step,
                                request_id: &run.id,
                                time: run.time,
                                attempt: run.attempt_number,
                            },
                            Outcome {
                                usage,
                                cost,
                                latency,
                                ttft,
                                result_code: "OK",
                                error_reason: "",
                            },
                        );
                        let response = ChatResponse {
                            id: run.id.clone(),
                            model: run.step.model.clone(),
                            provider: run.step.deployment.provider.clone(),
                            deployment: run.step.deployment.name.clone(),
                            message: assembly.message(),
                            finish_reason,
                            usage,
                            cost_micros: cost,
                            attempts: std::mem::take(&mut run.attempts),
                            notices: std::mem::take(&mut run.notices),
                            created: run.time / 1_000_000,
                            constitution_trace: Vec::new(),
                        };
                        Some((
                            Ok(StreamEvent::Done(Box::new(response))),
                            (run, events, assembly, ttft, true),
                        ))
                    }
                    // A failure, or an end without the finish, ends the stream with an error.
                    failed @ (Some(Err(_)) | None) => {
                        let err = match failed {
                            Some(Err(err)) => err,
                            _ => ProviderError::Other(
                                "the provider's stream ended without finishing".into(),
                            ),
                        };
                        let latency = run.started.elapsed();
                        run.ai.record(
                            &Call {
                                caller: &run.caller,
                                tags: &run.request.tags,
                                end_user_id: run.request.end_user_id.as_deref(),
                                step: &run.step,
                                request_id: &run.id,
                                time: run.time,
                                attempt: run.attempt_number,
                            },
                            Outcome {
                                usage: Usage::default(),
                                cost: 0,
                                latency,
                                ttft,
                                result_code: err.result_code(),
                                error_reason: err.reason(),
                            },
                        );
                        Some((Err(err.into()), (run, events, assembly, ttft, true)))
                    }
                }
            },
        )
        .boxed()
    }
}

/// The answer put together from its deltas.
#[derive(Debug, Default)]
struct Assembly {
    text: String,
    thinking: String,
    calls: BTreeMap<u32, ToolCall>,
}

impl Assembly {
    fn add(&mut self, delta: &Delta) {
        match delta {
            Delta::Text(text) => self.text.push_str(text),
            Delta::Thinking(text) => self.thinking.push_str(text),
            Delta::ToolCall(piece) => {
                let call = self.calls.entry(piece.index).or_insert_with(|| ToolCall {
                    id: String::new(),
                    name: String::new(),
                    arguments_json: String::new(),
                });
                if let Some(id) = &piece.id {
                    call.id.clone_from(id);
                }
                if let Some(name) = &piece.name {
                    call.name.clone_from(name);
                }
                call.arguments_json.push_str(&piece.arguments_json);
            }
        }
    }

    fn message(&self) -> Message {
        let mut parts = Vec::new();
        if !self.thinking.is_empty() {
            parts.push(Part {
                kind: PartKind::Thinking {
                    text: self.thinking.clone(),
                    signature: None,
                },
                cache_breakpoint: false,
            });
        }
        if !self.text.is_empty() {
            parts.push(Part::text(self.text.clone()));
        }
        parts.extend(self.calls.values().map(|call| Part {
            kind: PartKind::ToolCall(call.clone()),
            cache_breakpoint: false,
        }));
        Message {
            role: Role::Assistant,
            parts,
            name: None,
        }
    }
}
