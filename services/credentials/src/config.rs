use std::time::Duration;

use serde::Deserialize;
use switchyard_kit::config::ConfigError;

/// `[credentials]`: the credentials service's settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct CredentialsConfig {
    /// How long a soft-deleted credential can be undeleted before it is purged for good.
    #[serde(with = "humantime_serde")]
    pub recovery_window: Duration,
    /// How often due rotations and purges are looked for.
    #[serde(with = "humantime_serde")]
    pub rotation_check_interval: Duration,
    /// Credentials expiring within this window are reported.
    #[serde(with = "humantime_serde")]
    pub expiry_warning: Duration,
    /// How often credentials that need attention (expiring, rotation overdue) are logged.
    #[serde(with = "humantime_serde")]
    pub attention_report_interval: Duration,
    /// Shortest rotation period a policy may ask for.
    #[serde(with = "humantime_serde")]
    pub min_rotation_period: Duration,
    /// Versions kept when a rotation policy does not say.
    pub default_retained_versions: i64,
    /// Largest secret accepted, in bytes.
    pub max_secret_bytes: usize,
}

impl Default for CredentialsConfig {
    fn default() -> Self {
        CredentialsConfig {
            recovery_window: Duration::from_secs(30 * 24 * 3600),
            rotation_check_interval: Duration::from_secs(60),
            expiry_warning: Duration::from_secs(14 * 24 * 3600),
            attention_report_interval: Duration::from_secs(3600),
            min_rotation_period: Duration::from_secs(60),
            default_retained_versions: 5,
            max_secret_bytes: 64 * 1024,
        }
    }
}

impl CredentialsConfig {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.rotation_check_interval.is_zero() {
            return Err(ConfigError::invalid(
                "credentials.rotation_check_interval",
                "must be a positive duration such as \"1m\"",
            ));
        }
        if self.attention_report_interval.is_zero() {
            return Err(ConfigError::invalid(
                "credentials.attention_report_interval",
                "must be a positive duration such as \"1h\"",
            ));
        }
        if !(1..=100).contains(&self.default_retained_versions) {
            return Err(ConfigError::invalid(
                "credentials.default_retained_versions",
                "must be between 1 and 100",
            ));
        }
        if !(1..=1024 * 1024).contains(&self.max_secret_bytes) {
            return Err(ConfigError::invalid(
                "credentials.max_secret_bytes",
                "must be between 1 and 1048576",
            ));
        }
        Ok(())
    }
}
