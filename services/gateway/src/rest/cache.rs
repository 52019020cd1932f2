//! The read cache: answers of safe (GET) calls kept for a time to live set per method, keyed by
//! tenant, principal and request, and dropped when the same tenant writes to the same collection
//! through the gateway.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;

use super::routes::Route;

/// A kept answer.
#[derive(Debug, Clone)]
pub struct Cached {
    /// The JSON body.
    pub body: Bytes,
    /// The `Link` header, if the answer had one.
    pub link: Option<http::HeaderValue>,
    /// How old it is.
    pub age: Duration,
    /// How long it is kept in all.
    pub ttl: Duration,
}

#[derive(Debug)]
struct Entry {
    body: Bytes,
    link: Option<http::HeaderValue>,
    stored: Instant,
    ttl: Duration,
    generation: u64,
}

/// What the caller's `Cache-Control` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Directives {
    /// `no-cache` or `max-age=0`: do not answer from the cache.
    pub no_cache: bool,
    /// `no-store`: neither answer from nor fill the cache.
    pub no_store: bool,
    /// `max-age=N`: only answers at most this old.
    pub max_age: Option<Duration>,
}

impl Directives {
    /// The request's `Cache-Control` directives.
    pub fn of(headers: &HeaderMap) -> Directives {
        let mut directives = Directives::default();
        for value in headers.get_all(http::header::CACHE_CONTROL) {
            let Ok(text) = value.to_str() else { continue };
            for directive in text.split(',').map(str::trim) {
                let (name, argument) = directive.split_once('=').unwrap_or((directive, ""));
                match name.to_ascii_lowercase().as_str() {
                    "no-cache" => directives.no_cache = true,
                    "no-store" => directives.no_store = true,
                    "max-age" => match argument.trim_matches('"').parse::<u64>() {
                        Ok(0) => directives.no_cache = true,
                        Ok(seconds) => directives.max_age = Some(Duration::from_secs(seconds)),
                        Err(_) => {}
                    },
                    _ => {}
                }
            }
        }
        directives
    }
}

/// The cache of one gateway.
#[derive(Debug)]
pub struct ResponseCache {
    ttl: HashMap<String, Duration>,
    max_entries: usize,
    entries: Mutex<HashMap<String, Entry>>,
    /// Bumped by every write of a tenant to a collection: answers filled before it are stale.
    generations: Mutex<HashMap<(String, String), u64>>,
}

/// Where an answer would be kept, and the generation it must be filled with.
#[derive(Debug, Clone)]
pub struct Slot {
    key: String,
    ttl: Duration,
    generation: u64,
}

impl Slot {
    /// How long an answer in this slot is kept.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

impl ResponseCache {
    /// A cache keeping the methods of `ttl` (`package.Service.Method`), at most `max_entries`.
    pub fn new(ttl: HashMap<String, Duration>, max_entries: usize) -> Self {
        ResponseCache {
            ttl,
            max_entries,
            entries: Mutex::new(HashMap::new()),
            generations: Mutex::new(HashMap::new()),
        }
    }

    fn generation(&self, tenant: &str, collection: &str) -> u64 {
        let generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        generations
            .get(&(tenant.to_owned(), collection.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// The slot of a GET of a cached method, or `None` if it is not cached.
    pub fn slot(
        &self,
        route: &Route,
        tenant: &str,
        subject: &str,
        path_and_query: &str,
    ) -> Option<Slot> {
        if route.method != http::Method::GET {
            return None;
        }
        let ttl = *self.ttl.get(&route.full_name)?;
        Some(Slot {
            key: format!("{tenant}\u{1f}{subject}\u{1f}{path_and_query}"),
            ttl,
            generation: self.generation(tenant, route.template.collection()),
        })
    }

    /// The kept answer of `slot`, if fresh and not older than the caller accepts.
    pub fn get(&self, slot: &Slot, directives: Directives) -> Option<Cached> {
        if directives.no_cache || directives.no_store {
            return None;
        }
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get(&slot.key)?;
        let age = entry.stored.elapsed();
        let fresh = age < entry.ttl
            && entry.generation == slot.generation
            && directives.max_age.is_none_or(|max| age <= max);
        fresh.then(|| Cached {
            body: entry.body.clone(),
            link: entry.link.clone(),
            age,
            ttl: entry.ttl,
        })
    }

    /// Keeps an answer in `slot`, unless the caller said `no-store` or the cache is full.
    pub fn put(
        &self,
        slot: Slot,
        directives: Directives,
        body: Bytes,
        link: Option<http::HeaderValue>,
    ) {
        if directives.no_store {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.max_entries {
            entries.retain(|_, entry| entry.stored.elapsed() < entry.ttl);
            if entries.len() >= self.max_entries {
                return;
            }
        }
        entries.insert(
            slot.key,
            Entry {
                body,
                link,
                stored: Instant::now(),
                ttl: slot.ttl,
                generation: slot.generation,
            },
        );
    }

    /// Marks every answer about `route`'s collection for `tenant` stale; called after a write
    /// has been answered, so that a read that raced it cannot be kept as fresh.
    pub fn invalidate(&self, route: &Route, tenant: &str) {
        if self.ttl.is_empty() || route.method == http::Method::GET {
            return;
        }
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        *generations
            .entry((tenant.to_owned(), route.template.collection().to_owned()))
            .or_insert(0) += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_directives_are_read() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CACHE_CONTROL,
            "max-age=5, no-store".parse().unwrap(),
        );
        assert_eq!(
            Directives::of(&headers),
            Directives {
                no_cache: false,
                no_store: true,
                max_age: Some(Duration::from_secs(5)),
            }
        );
        headers.insert(http::header::CACHE_CONTROL, "max-age=0".parse().unwrap());
        assert!(Directives::of(&headers).no_cache);
    }
}
