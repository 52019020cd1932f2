use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use switchyard_kit::config::ConfigError;

use crate::domain::catalogue::{Catalogue, ModelEntry};
use crate::domain::model::Principle;
use crate::domain::quota::QuotaConfig;

/// `[ai]`: deployments, aliases, catalogue overrides and usage recording.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AiConfig {
    /// Where requests go, by name. A built-in `echo` deployment always exists.
    pub deployments: BTreeMap<String, DeploymentConfig>,
    /// Names that stand for an ordered list of deployments, tried in turn.
    pub aliases: BTreeMap<String, Vec<String>>,
    /// Catalogue entries replacing or adding to the built-in ones.
    pub models: BTreeMap<String, ModelEntry>,
    /// Usage records are written in batches at least this often; a crash loses at most this
    /// much.
    #[serde(with = "humantime_serde")]
    pub usage_flush_interval: Duration,
    /// Records waiting to be written at most; beyond it records are dropped and counted.
    pub usage_buffer: usize,
    /// The credentials service holding the providers' keys; unset: this process.
    pub credentials_url: Option<String>,
    /// The tenant whose credentials hold the providers' keys.
    pub credentials_tenant: String,
    /// The token the AI service presents to the credentials service; unset: one minted with
    /// `auth.hs256_secret` for `service:ai` with the `credentials.access` scope.
    pub credentials_token: Option<secrecy::SecretString>,
    /// How long a fetched key is used before it is fetched again.
    #[serde(with = "humantime_serde")]
    pub key_cache_ttl: Duration,
    /// Per-tenant requests and tokens per minute.
    pub quotas: QuotaConfig,
    /// When a failing deployment is skipped.
    pub circuit_breaker: BreakerConfig,
    /// Named sets of principles for constitutional requests, beside the built-in
    /// `helpful-honest-harmless`.
    pub constitutions: BTreeMap<String, ConstitutionConfig>,
}

/// `[ai.constitutions.<name>]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConstitutionConfig {
    /// Applied in order.
    pub principles: Vec<Principle>,
}

/// `[ai.circuit_breaker]`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Retryable failures in a row that open a deployment's circuit.
    pub failure_threshold: u32,
    /// How long an open circuit skips its deployment before one request probes it.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
        }
    }
}

/// One deployment.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// `openai`, `anthropic`, `gemini` or `echo`.
    pub provider: String,
    /// The catalogue model it serves.
    pub model: String,
    /// The provider's name for the model, if it differs (an Azure deployment, a fine-tune).
    #[serde(default)]
    pub provider_model: Option<String>,
    /// The provider API's base URL; unset for its public endpoint.
    #[serde(default)]
    pub base_url: Option<String>,
    /// The credential holding the API key, `credentials/{id}` in the credentials service.
    #[serde(default)]
    pub credential: Option<String>,
    /// OpenAI: the `OpenAI-Organization` header.
    #[serde(default)]
    pub organization: Option<String>,
    /// OpenAI: the `OpenAI-Project` header.
    #[serde(default)]
    pub project: Option<String>,
    /// How long one call may take.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Its share of its model's traffic among the deployments serving that model (not of an
    /// alias, whose deployments are tried in the order written).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Requests per minute it takes; beyond, it is skipped for the next deployment. 0: no limit.
    #[serde(default)]
    pub rpm: u64,
    /// Tokens (input plus output) per minute it takes; 0: no limit.
    #[serde(default)]
    pub tpm: u64,
}

fn default_weight() -> u32 {
    1
}

fn default_timeout() -> Duration {
    Duration::from_secs(120)
}

impl Default for AiConfig {
    fn default() -> Self {
        AiConfig {
            deployments: BTreeMap::new(),
            aliases: BTreeMap::new(),
            models: BTreeMap::new(),
            usage_flush_interval: Duration::from_secs(1),
            usage_buffer: 10_000,
            credentials_url: None,
            credentials_tenant: "system".to_owned(),
            credentials_token: None,
            key_cache_ttl: Duration::from_secs(60),
            quotas: QuotaConfig::default(),
            circuit_breaker: BreakerConfig::default(),
            constitutions: BTreeMap::new(),
        }
    }
}

/// Providers this build has an adapter for.
pub const PROVIDERS: &[&str] = &["echo", "openai", "anthropic", "gemini"];

impl AiConfig {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, deployment) in &self.deployments {
            if !PROVIDERS.contains(&deployment.provider.as_str()) {
                return Err(ConfigError::invalid(
                    &format!("ai.deployments.{name}.provider"),
                    format!("must be one of {}", PROVIDERS.join(", ")),
                ));
            }
            if deployment.provider != "echo" && deployment.credential.is_none() {
                return Err(ConfigError::invalid(
                    &format!("ai.deployments.{name}.credential"),
                    "required: the credential holding the provider's API key, e.g. \"credentials/openai-prod\"",
                ));
            }
            if deployment.weight == 0 {
                return Err(ConfigError::invalid(
                    &format!("ai.deployments.{name}.weight"),
                    "must be at least 1",
                ));
            }
            if deployment.timeout.is_zero() {
                return Err(ConfigError::invalid(
                    &format!("ai.deployments.{name}.timeout"),
                    "must be a positive duration",
                ));
            }
        }
        let catalogue = Catalogue::load(&self.models)
            .map_err(|err| ConfigError::invalid("ai.models", err.to_string()))?;
        let builtin = |name: &str| {
            catalogue
                .models
                .get(name)
                .is_some_and(|entry| entry.provider == "echo" && !entry.deprecated)
        };
        for (alias, targets) in &self.aliases {
            if targets.is_empty() {
                return Err(ConfigError::invalid(
                    &format!("ai.aliases.{alias}"),
                    "must name at least one deployment",
                ));
            }
            for target in targets {
                if !self.deployments.contains_key(target) && !builtin(target) {
                    return Err(ConfigError::invalid(
                        &format!("ai.aliases.{alias}"),
                        format!("names {target:?}, which is not a deployment"),
                    ));
                }
            }
        }
        if self.usage_flush_interval.is_zero() {
            return Err(ConfigError::invalid(
                "ai.usage_flush_interval",
                "must be a positive duration such as \"1s\"",
            ));
        }
        if self.circuit_breaker.failure_threshold == 0 {
            return Err(ConfigError::invalid(
                "ai.circuit_breaker.failure_threshold",
                "must be at least 1",
            ));
        }
        for (name, constitution) in &self.constitutions {
            if constitution.principles.is_empty() {
                return Err(ConfigError::invalid(
                    &format!("ai.constitutions.{name}.principles"),
                    "must hold at least one principle",
                ));
            }
            if let Some(index) = constitution.principles.iter().position(|p| {
                p.name.trim().is_empty()
                    || p.critique.trim().is_empty()
                    || p.revision.trim().is_empty()
            }) {
                return Err(ConfigError::invalid(
                    &format!("ai.constitutions.{name}.principles[{index}]"),
                    "name, critique and revision must not be empty",
                ));
            }
        }
        if self.usage_buffer == 0 {
            return Err(ConfigError::invalid(
                "ai.usage_buffer",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}
