//! Opaque page tokens and page sizes for List methods (AIP-158).
//!
//! A token carries the keyset cursor of the last item returned and a fingerprint of the request's
//! filters, so that a token cannot be replayed with other filters and silently skip items.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};

/// Page size used when a request asks for 0.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Larger requests are coerced down to this.
pub const MAX_PAGE_SIZE: usize = 1000;

/// Why a page request is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// `page_size` was negative.
    #[error("page_size must not be negative")]
    NegativeSize,
    /// `page_token` was not produced by this server for this request.
    #[error("page_token is not valid for this request")]
    InvalidToken,
}

/// The page size to use for a requested one.
pub fn page_size(requested: i32) -> Result<usize, PageError> {
    match usize::try_from(requested) {
        Err(_) => Err(PageError::NegativeSize),
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(size) => Ok(size.min(MAX_PAGE_SIZE)),
    }
}

#[derive(Serialize, Deserialize)]
struct Token<C> {
    c: C,
    f: String,
}

/// A fingerprint of the filters a listing was made with; any stable text form of them will do.
pub fn filter_fingerprint(filters: &str) -> String {
    hex::encode(&Sha256::digest(filters.as_bytes())[..8])
}

/// Encodes the cursor after which the next page starts.
pub fn encode_token<C: Serialize>(cursor: &C, fingerprint: &str) -> String {
    let token = Token {
        c: cursor,
        f: fingerprint.to_owned(),
    };
    // Serializing plain data into a Vec cannot fail.
    let json = serde_json::to_vec(&token).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

/// Ends a page read with one row more than `size`: keeps `size` items and returns the token of
/// the next page (the cursor of the last item kept), or an empty token if this is the last page.
pub fn next_token<T, C: Serialize>(
    items: &mut Vec<T>,
    size: usize,
    fingerprint: &str,
    cursor: impl Fn(&T) -> C,
) -> String {
    if items.len() <= size {
        return String::new();
    }
    items.truncate(size);
    items
        .last()
        .map(|last| encode_token(&cursor(last), fingerprint))
        .unwrap_or_default()
}

/// Decodes a page token; an empty token is the first page (`None`).
pub fn decode_token<C: DeserializeOwned>(
    token: &str,
    fingerprint: &str,
) -> Result<Option<C>, PageError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| PageError::InvalidToken)?;
    let token: Token<C> = serde_json::from_slice(&bytes).map_err(|_| PageError::InvalidToken)?;
    if token.f != fingerprint {
        return Err(PageError::InvalidToken);
    }
    Ok(Some(token.c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_are_bound_to_filters() {
        let fp = filter_fingerprint("provider=openai");
        let token = encode_token(&("abc".to_owned(), 7i64), &fp);
        let cursor: Option<(String, i64)> = decode_token(&token, &fp).unwrap();
        assert_eq!(cursor, Some(("abc".to_owned(), 7)));
        let other = filter_fingerprint("provider=github");
        assert_eq!(
            decode_token::<(String, i64)>(&token, &other),
            Err(PageError::InvalidToken)
        );
        assert_eq!(
            decode_token::<(String, i64)>("%%%", &fp),
            Err(PageError::InvalidToken)
        );
        assert_eq!(decode_token::<(String, i64)>("", &fp), Ok(None));
    }

    #[test]
    fn sizes_default_and_cap() {
        assert_eq!(page_size(0), Ok(DEFAULT_PAGE_SIZE));
        assert_eq!(page_size(5), Ok(5));
        assert_eq!(page_size(100_000), Ok(MAX_PAGE_SIZE));
        assert_eq!(page_size(-1), Err(PageError::NegativeSize));
    }
}
