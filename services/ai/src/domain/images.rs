//! Image generation over the same plan, fallbacks, usage records and quotas as completions.
//! Models that report tokens (GPT image models) are priced by them; the others by the
//! catalogue's price per image of the size and quality asked for.

use switchyard_kit::FieldViolation;

use super::cost::{cost_micros, image_cost_micros};
use super::error::{AiError, Result};
use super::model::{Caller, ImageRequest, ImageResponse};
use super::service::{Ai, Job, Metered};

/// OpenAI's limits: prompts of the GPT image models, and images per request.
const MAX_PROMPT_CHARS: usize = 32_000;
const MAX_IMAGES: u32 = 10;
/// What the price table is read at when the request leaves size or quality to the model.
const DEFAULT_SIZE: &str = "1024x1024";

fn validate(request: &ImageRequest) -> Result<()> {
    let mut violations = Vec::new();
    if request.prompt.trim().is_empty() {
        violations.push(FieldViolation::new("prompt", "is required"));
    }
    if request.prompt.chars().count() > MAX_PROMPT_CHARS {
        violations.push(FieldViolation::new(
            "prompt",
            format!("at most {MAX_PROMPT_CHARS} characters"),
        ));
    }
    if !(1..=MAX_IMAGES).contains(&request.count) {
        violations.push(FieldViolation::new(
            "count",
            format!("between 1 and {MAX_IMAGES}"),
        ));
    }
    if let Some(size) = &request.size
        && size != "auto"
        && !size
            .split_once('x')
            .is_some_and(|(w, h)| w.parse::<u32>().is_ok() && h.parse::<u32>().is_ok())
    {
        violations.push(FieldViolation::new("size", "WIDTHxHEIGHT or auto"));
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(AiError::Invalid(violations))
    }
}

impl Ai {
    /// Images from a prompt.
    pub async fn generate_image(
        &self,
        caller: &Caller,
        request: &ImageRequest,
    ) -> Result<ImageResponse> {
        validate(request)?;
        let (steps, notices) = self.begin_job(caller, &request.model)?;
        let job = Job {
            caller,
            model: &request.model,
            tags: &request.tags,
            end_user_id: request.end_user_id.as_deref(),
            id_prefix: "img",
        };
        let served = self
            .serve(job, steps, notices, |step, _| {
                let entry = &step.entry;
                let unsupported = |feature: String| AiError::Unsupported {
                    feature,
                    target: format!("{} ({})", step.model, step.deployment.provider),
                };
                if !entry.can("images") {
                    return Err(unsupported("image generation".into()));
                }
                // The catalogue's price table lists the sizes and qualities a model offers.
                let offered = |pick: fn(&str) -> Option<&str>, value: &str| {
                    entry.image_prices.is_empty()
                        || entry.image_prices.keys().any(|k| pick(k) == Some(value))
                };
                if let Some(size) = request.size.as_deref().filter(|s| *s != "auto")
                    && !offered(|k| k.split('/').next(), size)
                {
                    return Err(unsupported(format!("size = {size}")));
                }
                if let Some(quality) = request.quality.as_deref().filter(|q| *q != "auto")
                    && !offered(|k| k.split('/').nth(1), quality)
                {
                    return Err(unsupported(format!("quality = {quality}")));
                }
                let imager = self.imager(step)?;
                let (deployment, entry) = (step.deployment.clone(), entry.clone());
                Ok(async move {
                    let generated = imager.generate(&deployment, request).await?;
                    let prices = entry.prices();
                    let cost = match generated.usage {
                        Some(usage) if prices.input > 0 || prices.output > 0 => {
                            cost_micros(&usage, &prices)
                        }
                        _ => {
                            let size = request
                                .size
                                .as_deref()
                                .filter(|s| *s != "auto")
                                .unwrap_or(DEFAULT_SIZE);
                            let quality = request
                                .quality
                                .as_deref()
                                .filter(|q| *q != "auto")
                                .unwrap_or(default_quality(&entry));
                            image_cost_micros(&entry, size, quality, generated.images.len())
                        }
                    };
                    Ok(Metered {
                        usage: generated.usage.unwrap_or_default(),
                        value: generated.images,
                        cost_micros: cost,
                    })
                })
            })
            .await?;
        Ok(ImageResponse {
            id: served.id,
            model: served.model,
            provider: served.provider,
            deployment: served.deployment,
            images: served.value,
            usage: served.usage,
            cost_micros: served.cost_micros,
            attempts: served.attempts,
            notices: served.notices,
            created: served.created,
        })
    }
}

/// The quality a model uses when none is asked for: DALL-E's `standard`, else `medium` (what
/// `auto` mostly picks for GPT image models).
fn default_quality(entry: &super::catalogue::ModelEntry) -> &'static str {
    if entry.image_prices.keys().any(|k| k.ends_with("/standard")) {
        "standard"
    } else {
        "medium"
    }
}
