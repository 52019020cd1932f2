//! Embeddings: a batch of texts to vectors, over the same plan, fallbacks, usage records and
//! quotas as completions.

use switchyard_kit::FieldViolation;

use super::cost::cost_micros;
use super::error::{AiError, Result};
use super::model::{Caller, EmbedRequest, EmbedResponse, Usage};
use super::service::{Ai, Job, Metered};
use crate::providers::ProviderError;

/// The most inputs one request may carry (OpenAI's limit; Gemini's batch limit is 100 and its
/// adapter splits larger batches).
pub const MAX_INPUTS: usize = 2048;

fn validate(request: &EmbedRequest) -> Result<()> {
    let mut violations = Vec::new();
    if request.inputs.is_empty() {
        violations.push(FieldViolation::new(
            "inputs",
            "at least one input is required",
        ));
    }
    if request.inputs.len() > MAX_INPUTS {
        violations.push(FieldViolation::new(
            "inputs",
            format!("at most {MAX_INPUTS} inputs"),
        ));
    }
    if let Some(index) = request.inputs.iter().position(String::is_empty) {
        violations.push(FieldViolation::new(
            format!("inputs[{index}]"),
            "must not be empty",
        ));
    }
    if request.dimensions == Some(0) {
        violations.push(FieldViolation::new("dimensions", "must be positive"));
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(AiError::Invalid(violations))
    }
}

impl Ai {
    /// The vectors of a batch of texts, one per input in order.
    pub async fn embed(&self, caller: &Caller, request: &EmbedRequest) -> Result<EmbedResponse> {
        validate(request)?;
        let (steps, notices) = self.begin_job(caller, &request.model)?;
        let job = Job {
            caller,
            model: &request.model,
            tags: &request.tags,
            end_user_id: request.end_user_id.as_deref(),
            id_prefix: "embd",
        };
        let served = self
            .serve(job, steps, notices, |step, _| {
                let target = || format!("{} ({})", step.model, step.deployment.provider);
                if !step.entry.can("embeddings") {
                    return Err(AiError::Unsupported {
                        feature: "embeddings".into(),
                        target: target(),
                    });
                }
                if let Some(dimensions) = request.dimensions
                    && step
                        .entry
                        .max_dimensions
                        .is_none_or(|max| u64::from(dimensions) > max)
                {
                    return Err(AiError::Unsupported {
                        feature: format!("dimensions = {dimensions}"),
                        target: target(),
                    });
                }
                let embedder = self.embedder(step)?;
                let (deployment, prices) = (step.deployment.clone(), step.entry.prices());
                Ok(async move {
                    let embeddings = embedder.embed(&deployment, request).await?;
                    if embeddings.vectors.len() != request.inputs.len() {
                        return Err(ProviderError::Other(format!(
                            "{} vectors for {} inputs",
                            embeddings.vectors.len(),
                            request.inputs.len()
                        )));
                    }
                    let usage = Usage {
                        input_tokens: embeddings.input_tokens,
                        ..Usage::default()
                    };
                    Ok(Metered {
                        value: embeddings.vectors,
                        usage,
                        cost_micros: cost_micros(&usage, &prices),
                    })
                })
            })
            .await?;
        Ok(EmbedResponse {
            id: served.id,
            model: served.model,
            provider: served.provider,
            deployment: served.deployment,
            vectors: served.value,
            usage: served.usage,
            cost_micros: served.cost_micros,
            attempts: served.attempts,
            notices: served.notices,
        })
    }
}
