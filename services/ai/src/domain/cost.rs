//! The cost of a call, from normalized usage and catalogue prices, in integer micro-USD.

use super::catalogue::{ModelEntry, Prices};
use super::model::Usage;

/// Tokens per priced block.
const PER: i128 = 1_000_000;

/// The cost of `usage` at `prices`, rounded to the nearest micro-USD.
///
/// `usage.input_tokens` counts every prompt token; the ones read from or written to a cache are
/// priced at the cache prices and only the rest at the input price, so cached tokens are never
/// charged twice.
pub fn cost_micros(usage: &Usage, prices: &Prices) -> i64 {
    let (input_price, output_price) = match prices.long_context {
        Some((threshold, input, output)) if usage.input_tokens > threshold => (input, output),
        _ => (prices.input, prices.output),
    };
    let cached = usage.cache_read_tokens + usage.cache_write_tokens;
    let uncached = usage.input_tokens.saturating_sub(cached);
    let total = i128::from(uncached) * i128::from(input_price)
        + i128::from(usage.cache_read_tokens) * i128::from(prices.cache_read)
        + i128::from(usage.cache_write_tokens) * i128::from(prices.cache_write)
        + i128::from(usage.output_tokens) * i128::from(output_price);
    i64::try_from((total + PER / 2) / PER).unwrap_or(i64::MAX)
}

fn usd_to_micros(usd: f64) -> i64 {
    (usd * 1_000_000.0).round() as i64
}

/// The cost of `count` images of `size` at `quality` by the catalogue's per-image prices: the
/// price of that size and quality, else the model's one price per image, else nothing.
pub fn image_cost_micros(entry: &ModelEntry, size: &str, quality: &str, count: usize) -> i64 {
    let each = entry
        .image_prices
        .get(&format!("{size}/{quality}"))
        .copied()
        .or(entry.per_image)
        .map_or(0, usd_to_micros);
    each.saturating_mul(i64::try_from(count).unwrap_or(i64::MAX))
}

/// The cost of `seconds` of audio at the model's price per minute.
pub fn audio_cost_micros(entry: &ModelEntry, seconds: f64) -> i64 {
    entry
        .per_audio_minute
        .map_or(0, |per_minute| usd_to_micros(per_minute * seconds / 60.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prices() -> Prices {
        Prices {
            input: 3_000_000,
            output: 15_000_000,
            cache_read: 300_000,
            cache_write: 3_750_000,
            long_context: None,
        }
    }

    #[test]
    fn images_are_priced_by_size_and_quality_and_audio_by_the_minute() {
        let catalogue = super::super::catalogue::Catalogue::load(&Default::default()).unwrap();
        let dalle = &catalogue.models["dall-e-3"];
        assert_eq!(image_cost_micros(dalle, "1024x1792", "hd", 1), 120_000);
        assert_eq!(image_cost_micros(dalle, "1024x1024", "standard", 1), 40_000);
        // A size the table lacks falls back to the model's one price.
        assert_eq!(image_cost_micros(dalle, "512x512", "standard", 2), 80_000);
        let whisper = &catalogue.models["whisper-1"];
        // $0.006 a minute: 90 s = $0.009.
        assert_eq!(audio_cost_micros(whisper, 90.0), 9_000);
        assert_eq!(audio_cost_micros(&catalogue.models["gpt-4o"], 90.0), 0);
    }

    #[test]
    fn plain_usage() {
        let usage = Usage {
            input_tokens: 1000,
            output_tokens: 500,
            ..Usage::default()
        };
        // 1000 * $3/M + 500 * $15/M = $0.003 + $0.0075
        assert_eq!(cost_micros(&usage, &prices()), 10_500);
    }

    #[test]
    fn cached_tokens_are_priced_once_at_cache_prices() {
        // Anthropic-style call: 100 fresh, 2000 read from cache, 1000 written to it.
        let usage = Usage {
            input_tokens: 3100,
            output_tokens: 0,
            cache_read_tokens: 2000,
            cache_write_tokens: 1000,
            reasoning_tokens: 0,
        };
        // 100 * 3 + 2000 * 0.3 + 1000 * 3.75 (per million) = 300 + 600 + 3750 micro-USD
        assert_eq!(cost_micros(&usage, &prices()), 4_650);
    }

    #[test]
    fn long_context_prices_apply_above_the_threshold() {
        let long = Prices {
            long_context: Some((200_000, 2_500_000, 15_000_000)),
            input: 1_250_000,
            output: 10_000_000,
            ..prices()
        };
        let short = Usage {
            input_tokens: 200_000,
            output_tokens: 0,
            ..Usage::default()
        };
        let over = Usage {
            input_tokens: 200_001,
            output_tokens: 0,
            ..Usage::default()
        };
        assert_eq!(cost_micros(&short, &long), 250_000);
        assert_eq!(cost_micros(&over, &long), 500_003);
    }
}
