//! The model catalogue: capabilities, limits and prices of every model Switchyard knows, shipped
//! as `catalogue/models.toml` (with the date its prices were checked and their sources) and
//! overridable entry by entry in configuration.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The catalogue file in the binary.
pub const BUILTIN: &str = include_str!("../../catalogue/models.toml");

/// Micro-units per unit of currency, and tokens per priced block.
const MICROS: f64 = 1_000_000.0;

/// One model's entry, as written in the file (USD per million tokens).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// `openai`, `anthropic`, `gemini` or `echo`.
    pub provider: String,
    /// For people.
    #[serde(default)]
    pub display_name: String,
    /// Input plus output tokens.
    #[serde(default)]
    pub context_window: u64,
    /// Most output tokens.
    #[serde(default)]
    pub max_output_tokens: u64,
    /// What it can do.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// USD per million uncached input tokens.
    pub input_per_million: Option<f64>,
    /// USD per million output tokens.
    pub output_per_million: Option<f64>,
    /// USD per million input tokens read from a cache.
    pub cache_read_per_million: Option<f64>,
    /// USD per million input tokens written to a cache.
    pub cache_write_per_million: Option<f64>,
    /// Above this many input tokens the long-context prices apply (Gemini).
    pub long_context_threshold: Option<u64>,
    /// USD per million input tokens above the threshold.
    pub long_input_per_million: Option<f64>,
    /// USD per million output tokens above the threshold.
    pub long_output_per_million: Option<f64>,
    /// USD per image (image models), by "size/quality".
    #[serde(default)]
    pub image_prices: BTreeMap<String, f64>,
    /// USD per image when one price fits all.
    pub per_image: Option<f64>,
    /// USD per minute of audio (transcription).
    pub per_audio_minute: Option<f64>,
    /// Embedding dimensions.
    pub dimensions: Option<u64>,
    /// Largest `dimensions` an embedding model accepts.
    pub max_dimensions: Option<u64>,
    /// Whether the name is deprecated.
    #[serde(default)]
    pub deprecated: bool,
    /// The model a deprecated name resolves to.
    pub successor: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogueFile {
    date: String,
    #[serde(default)]
    sources: Vec<String>,
    models: BTreeMap<String, ModelEntry>,
}

/// Prices in integer micro-USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Prices {
    /// Uncached input.
    pub input: i64,
    /// Output.
    pub output: i64,
    /// Input read from a cache; the input price when the model has none.
    pub cache_read: i64,
    /// Input written to a cache; the input price when the model has none.
    pub cache_write: i64,
    /// Long-context prices and their threshold, if the model has them.
    pub long_context: Option<(u64, i64, i64)>,
}

fn micros(usd: Option<f64>) -> i64 {
    // Prices are published with at most a few decimals: rounding to a micro-USD is exact.
    usd.map_or(0, |usd| (usd * MICROS).round() as i64)
}

impl ModelEntry {
    /// Its prices in micro-USD per million tokens.
    pub fn prices(&self) -> Prices {
        let input = micros(self.input_per_million);
        Prices {
            input,
            output: micros(self.output_per_million),
            cache_read: self
                .cache_read_per_million
                .map_or(input, |p| micros(Some(p))),
            cache_write: self
                .cache_write_per_million
                .map_or(input, |p| micros(Some(p))),
            long_context: self.long_context_threshold.map(|threshold| {
                (
                    threshold,
                    micros(self.long_input_per_million.or(self.input_per_million)),
                    micros(self.long_output_per_million.or(self.output_per_million)),
                )
            }),
        }
    }

    /// Whether it has a capability.
    pub fn can(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }
}

/// The catalogue in force.
#[derive(Debug, Clone)]
pub struct Catalogue {
    /// When its prices were checked (YYYY-MM-DD).
    pub date: String,
    /// Where they come from.
    pub sources: Vec<String>,
    /// Models by id.
    pub models: BTreeMap<String, ModelEntry>,
}

/// A catalogue that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("model catalogue: {0}")]
pub struct CatalogueError(pub String);

impl Catalogue {
    /// The built-in catalogue with `overrides` (from configuration) replacing or adding entries.
    pub fn load(overrides: &BTreeMap<String, ModelEntry>) -> Result<Catalogue, CatalogueError> {
        let file: CatalogueFile =
            toml::from_str(BUILTIN).map_err(|err| CatalogueError(err.to_string()))?;
        let mut models = file.models;
        models.extend(overrides.clone());
        for (id, entry) in &models {
            if let Some(successor) = &entry.successor
                && !models.contains_key(successor)
            {
                return Err(CatalogueError(format!(
                    "{id}: its successor {successor} is not in the catalogue"
                )));
            }
        }
        Ok(Catalogue {
            date: file.date,
            sources: file.sources,
            models,
        })
    }

    /// A model's entry, following a deprecated name to its successor; the notice says so.
    pub fn resolve(&self, id: &str) -> Option<(&str, &ModelEntry, Option<String>)> {
        let (id, entry) = self.models.get_key_value(id)?;
        match (&entry.successor, entry.deprecated) {
            (Some(successor), true) => {
                let (successor_id, successor_entry) =
                    self.models.get_key_value(successor.as_str())?;
                let notice =
                    format!("{id} is deprecated and was served by its successor {successor_id}");
                Some((successor_id.as_str(), successor_entry, Some(notice)))
            }
            _ => Some((id.as_str(), entry, None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_catalogue_loads_and_prices_convert_exactly() {
        let catalogue = Catalogue::load(&BTreeMap::new()).unwrap();
        assert!(catalogue.models.contains_key("echo"));
        assert!(!catalogue.date.is_empty());
        let entry = ModelEntry {
            provider: "openai".into(),
            display_name: String::new(),
            context_window: 0,
            max_output_tokens: 0,
            capabilities: vec![],
            input_per_million: Some(2.5),
            output_per_million: Some(10.0),
            cache_read_per_million: Some(1.25),
            cache_write_per_million: None,
            long_context_threshold: None,
            long_input_per_million: None,
            long_output_per_million: None,
            image_prices: BTreeMap::new(),
            per_image: None,
            per_audio_minute: None,
            dimensions: None,
            max_dimensions: None,
            deprecated: false,
            successor: None,
        };
        let prices = entry.prices();
        assert_eq!(
            (
                prices.input,
                prices.output,
                prices.cache_read,
                prices.cache_write
            ),
            (2_500_000, 10_000_000, 1_250_000, 2_500_000)
        );
    }

    #[test]
    fn every_deprecated_name_resolves_to_a_live_successor() {
        let catalogue = Catalogue::load(&BTreeMap::new()).unwrap();
        for (id, entry) in &catalogue.models {
            if entry.deprecated && entry.successor.is_some() {
                let (resolved, target, notice) = catalogue.resolve(id).unwrap();
                assert_ne!(resolved, id);
                assert!(!target.deprecated, "{id} resolves to a deprecated model");
                assert!(notice.unwrap().contains(id));
            }
        }
    }
}
