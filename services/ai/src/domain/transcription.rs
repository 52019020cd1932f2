//! Transcription over the same plan, fallbacks, usage records and quotas as completions. Models
//! that report tokens (GPT-4o transcription) are priced by them; the others by the minute.

use switchyard_kit::FieldViolation;

use super::cost::{audio_cost_micros, cost_micros};
use super::error::{AiError, Result};
use super::model::{Caller, TranscriptionRequest, TranscriptionResponse};
use super::service::{Ai, Job, Metered};

/// OpenAI's upload limit.
pub const MAX_AUDIO_BYTES: usize = 25 * 1024 * 1024;
/// The formats OpenAI's transcription endpoint takes, by file extension.
pub const AUDIO_FORMATS: &[&str] = &[
    "flac", "mp3", "mp4", "mpeg", "mpga", "m4a", "ogg", "wav", "webm",
];

fn validate(request: &TranscriptionRequest) -> Result<()> {
    let mut violations = Vec::new();
    if request.audio.is_empty() {
        violations.push(FieldViolation::new("audio", "is required"));
    }
    if request.audio.len() > MAX_AUDIO_BYTES {
        violations.push(FieldViolation::new(
            "audio",
            format!("at most {} MiB", MAX_AUDIO_BYTES / 1024 / 1024),
        ));
    }
    let extension = request
        .filename
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase());
    if !extension.is_some_and(|ext| AUDIO_FORMATS.contains(&ext.as_str())) {
        violations.push(FieldViolation::new(
            "filename",
            format!("must end in one of .{}", AUDIO_FORMATS.join(", .")),
        ));
    }
    if request
        .temperature
        .is_some_and(|t| !(0.0..=1.0).contains(&t))
    {
        violations.push(FieldViolation::new(
            "temperature",
            "must be between 0 and 1",
        ));
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(AiError::Invalid(violations))
    }
}

impl Ai {
    /// The transcript of a recording.
    pub async fn transcribe(
        &self,
        caller: &Caller,
        request: &TranscriptionRequest,
    ) -> Result<TranscriptionResponse> {
        validate(request)?;
        let (steps, notices) = self.begin_job(caller, &request.model)?;
        let job = Job {
            caller,
            model: &request.model,
            tags: &request.tags,
            end_user_id: request.end_user_id.as_deref(),
            id_prefix: "tr",
        };
        let wants_timestamps = request.segment_timestamps || request.word_timestamps;
        let served = self
            .serve(job, steps, notices, |step, _| {
                let entry = &step.entry;
                let unsupported = |feature: &str| AiError::Unsupported {
                    feature: feature.to_owned(),
                    target: format!("{} ({})", step.model, step.deployment.provider),
                };
                if !entry.can("transcription") {
                    return Err(unsupported("transcription"));
                }
                let timestamps = entry.can("timestamps");
                if wants_timestamps && !timestamps {
                    return Err(unsupported("timestamps"));
                }
                let transcriber = self.transcriber(step)?;
                let (deployment, entry) = (step.deployment.clone(), entry.clone());
                Ok(async move {
                    let mut done = transcriber
                        .transcribe(&deployment, request, timestamps)
                        .await?;
                    let prices = entry.prices();
                    let cost = match done.usage {
                        Some(usage) if prices.input > 0 || prices.output > 0 => {
                            cost_micros(&usage, &prices)
                        }
                        _ => done
                            .billed_seconds
                            .or(done.transcript.duration.map(|d| d.as_secs_f64()))
                            .map_or(0, |seconds| audio_cost_micros(&entry, seconds)),
                    };
                    // Detailed answers carry timing the request did not ask for.
                    if !request.segment_timestamps {
                        done.transcript.segments.clear();
                    }
                    if !request.word_timestamps {
                        done.transcript.words.clear();
                    }
                    Ok(Metered {
                        usage: done.usage.unwrap_or_default(),
                        value: done.transcript,
                        cost_micros: cost,
                    })
                })
            })
            .await?;
        Ok(TranscriptionResponse {
            id: served.id,
            model: served.model,
            provider: served.provider,
            deployment: served.deployment,
            transcript: served.value,
            usage: served.usage,
            cost_micros: served.cost_micros,
            attempts: served.attempts,
            notices: served.notices,
        })
    }
}
