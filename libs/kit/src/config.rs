//! Configuration: built-in defaults, then a TOML file, then `SWITCHYARD_*` environment variables.
//!
//! Nested keys use a double underscore in the environment: `[server] max_concurrency` is
//! `SWITCHYARD_SERVER__MAX_CONCURRENCY`. Every struct denies unknown keys, so a typo in a file, or
//! in a variable naming a known section, fails at start-up with the key's name. Variables whose
//! first segment names no section (`SWITCHYARD_TOKEN` exported by a script, say) are not
//! configuration: they are left alone and reported, so the caller can warn about them.

use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// A configuration that cannot be used. The message names the key and says what is expected.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    /// An invalid value of `key`.
    pub fn invalid(key: &str, expected: impl std::fmt::Display) -> Self {
        ConfigError(format!("key `{key}`: {expected}"))
    }
}

impl From<figment::Error> for ConfigError {
    fn from(err: figment::Error) -> Self {
        let messages: Vec<String> = err
            .into_iter()
            .map(|error| {
                let key = error.path.join(".").to_lowercase();
                let origin = match &error.metadata {
                    Some(metadata) if metadata.name.contains("environment") => format!(
                        " (set by SWITCHYARD_{})",
                        error.path.join("__").to_uppercase()
                    ),
                    Some(metadata) => metadata
                        .source
                        .as_ref()
                        .map(|source| format!(" (in {source})"))
                        .unwrap_or_default(),
                    None => String::new(),
                };
                if key.is_empty() {
                    format!("{}{origin}", error.kind)
                } else {
                    format!("key `{key}`{origin}: {}", error.kind)
                }
            })
            .collect();
        ConfigError(messages.join("; "))
    }
}

/// A loaded configuration and the `SWITCHYARD_*` variables that were not part of it.
#[derive(Debug)]
pub struct Loaded<C> {
    /// The configuration.
    pub config: C,
    /// Variables whose first segment names none of the top-level keys.
    pub ignored_variables: Vec<String>,
}

/// Loads `C` from its defaults, the TOML file at `file` (which must exist when given), and the
/// `SWITCHYARD_*` variables whose first segment is one of `top_level_keys`.
pub fn load<C: DeserializeOwned>(
    file: Option<&Path>,
    top_level_keys: &[&str],
) -> Result<Loaded<C>, ConfigError> {
    const PREFIX: &str = "SWITCHYARD_";
    let keys: Vec<String> = top_level_keys.iter().map(|k| (*k).to_owned()).collect();
    // `name` is the variable without the prefix: `SERVER__MAX_CONCURRENCY`.
    let is_ours = move |name: &str| {
        let section = name
            .split("__")
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        keys.contains(&section)
    };
    let ignored_variables = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| name.strip_prefix(PREFIX).is_some_and(|rest| !is_ours(rest)))
        .collect();
    let mut figment = Figment::new();
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError(format!(
                "configuration file {} does not exist",
                path.display()
            )));
        }
        figment = figment.merge(Toml::file(path));
    }
    let env = Env::prefixed(PREFIX)
        .filter(move |key| is_ours(key.as_str()))
        .split("__");
    figment = figment.merge(env);
    Ok(Loaded {
        config: figment.extract()?,
        ignored_variables,
    })
}

/// `[server]`: limits and timing of the gRPC host and the HTTP edge.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// RPCs served at once; more are refused at once with RESOURCE_EXHAUSTED (load shedding).
    pub max_concurrency: usize,
    /// Largest gRPC message accepted or sent, in bytes.
    pub max_message_bytes: usize,
    /// Deadline of a unary RPC whose caller set none.
    #[serde(with = "humantime_serde")]
    pub default_deadline: Duration,
    /// Longest deadline: a caller's longer `grpc-timeout` is cut to it, and streaming RPCs
    /// (backup export and restore) without a deadline get it.
    #[serde(with = "humantime_serde")]
    pub max_deadline: Duration,
    /// On shutdown, how long health reports NOT_SERVING before listeners close, so load
    /// balancers stop sending new requests first. 0 by default (a local `switchyard up` stops at
    /// once); a few seconds in Kubernetes, where the chart sets it.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// How long in-flight requests get to finish once listeners close.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_concurrency: 1024,
            max_message_bytes: 4 * 1024 * 1024,
            default_deadline: Duration::from_secs(30),
            max_deadline: Duration::from_secs(600),
            drain_delay: Duration::ZERO,
            shutdown_timeout: Duration::from_secs(20),
        }
    }
}

impl ServerConfig {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_concurrency == 0 {
            return Err(ConfigError::invalid(
                "server.max_concurrency",
                "must be at least 1",
            ));
        }
        if self.max_message_bytes < 1024 {
            return Err(ConfigError::invalid(
                "server.max_message_bytes",
                "must be at least 1024 bytes",
            ));
        }
        if self.default_deadline.is_zero() {
            return Err(ConfigError::invalid(
                "server.default_deadline",
                "must be a positive duration such as \"30s\"",
            ));
        }
        if self.max_deadline < self.default_deadline {
            return Err(ConfigError::invalid(
                "server.max_deadline",
                "must be at least server.default_deadline",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
// figment::Jail's closures must return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Default)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        name: String,
        server: ServerConfig,
    }

    const KEYS: &[&str] = &["name", "server"];

    fn load_sample(file: Option<&Path>) -> Result<Sample, String> {
        load::<Sample>(file, KEYS)
            .map(|l| l.config)
            .map_err(|e| e.0)
    }

    #[test]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "name = \"file\"\n[server]\nmax_concurrency = 7\ndefault_deadline = \"2s\"\n",
            )?;
            jail.set_env("SWITCHYARD_SERVER__MAX_CONCURRENCY", "9");
            let loaded = load_sample(Some(Path::new("c.toml")))?;
            assert_eq!(loaded.name, "file");
            assert_eq!(loaded.server.max_concurrency, 9, "env wins over file");
            assert_eq!(loaded.server.default_deadline, Duration::from_secs(2));
            assert_eq!(
                loaded.server.shutdown_timeout,
                Duration::from_secs(20),
                "default kept"
            );
            Ok(())
        });
    }

    #[test]
    fn errors_name_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SWITCHYARD_SERVER__MAX_CONCURRENCY", "lots");
            let err = load_sample(None).unwrap_err();
            assert!(err.contains("max_concurrency"), "{err}");
            assert!(err.contains("SWITCHYARD_SERVER__MAX_CONCURRENCY"), "{err}");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[server]\nmax_concurency = 3\n")?;
            let err = load_sample(Some(Path::new("c.toml"))).unwrap_err();
            assert!(err.contains("max_concurency"), "{err}");
            Ok(())
        });
        let missing = load_sample(Some(Path::new("/nonexistent/x.toml"))).unwrap_err();
        assert!(missing.contains("does not exist"), "{missing}");
    }

    #[test]
    fn unrelated_variables_are_reported_not_fatal() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SWITCHYARD_TOKEN", "eyJ...");
            jail.set_env("SWITCHYARD_SERVER__MAX_CONCURRENCY", "3");
            let loaded = load::<Sample>(None, KEYS).map_err(|e| e.0)?;
            assert_eq!(loaded.config.server.max_concurrency, 3);
            assert!(
                loaded
                    .ignored_variables
                    .contains(&"SWITCHYARD_TOKEN".to_owned())
            );
            // A misspelt key inside a known section is still an error.
            jail.set_env("SWITCHYARD_SERVER__MAX_CONCURENCY", "3");
            let err = load_sample(None).unwrap_err();
            assert!(err.contains("max_concurency"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn validation_names_the_key() {
        let config = ServerConfig {
            max_concurrency: 0,
            ..ServerConfig::default()
        };
        let err = config.validate().unwrap_err().0;
        assert!(err.contains("server.max_concurrency"), "{err}");
    }
}
