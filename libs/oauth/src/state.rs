//! The `state` parameter: what the callback needs to finish a flow, signed so that it cannot be
//! forged, and expiring. It is also single-use, which only a store can enforce: the service
//! records each state's `id` when it is consumed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// What a state carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Random; the key of single use.
    pub id: String,
    /// Unix seconds after which it is refused.
    pub expires: u64,
    /// Whatever the flow needs back (tenant, provider, connection), as the caller encodes it.
    pub payload: String,
}

/// Why a state is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Not a state this server signed.
    #[error("the state parameter is not valid")]
    Invalid,
    /// Signed, but too old.
    #[error("the authorization took too long; start again")]
    Expired,
}

fn mac(key: &[u8], body: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body.as_bytes());
    mac
}

/// A new state for `payload`, valid for `ttl`, signed with `key`; returns it and its text.
pub fn sign(key: &[u8], payload: &str, ttl: Duration) -> (State, String) {
    let mut id = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut id);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let state = State {
        id: URL_SAFE_NO_PAD.encode(id),
        expires: (now + ttl).as_secs(),
        payload: payload.to_owned(),
    };
    // Serializing plain strings and numbers cannot fail.
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&state).unwrap_or_default());
    let signature = URL_SAFE_NO_PAD.encode(mac(key, &body).finalize().into_bytes());
    (state, format!("{body}.{signature}"))
}

/// The state in `text` if `key` signed it and it has not expired at `now`.
pub fn verify(key: &[u8], text: &str, now: SystemTime) -> Result<State, StateError> {
    let (body, signature) = text.split_once('.').ok_or(StateError::Invalid)?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| StateError::Invalid)?;
    mac(key, body)
        .verify_slice(&signature)
        .map_err(|_| StateError::Invalid)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| StateError::Invalid)?;
    let state: State = serde_json::from_slice(&bytes).map_err(|_| StateError::Invalid)?;
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    if now > state.expires {
        return Err(StateError::Expired);
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_states_verify_until_they_expire() {
        let key = b"a state key of the installation";
        let (state, text) = sign(key, "acme/github", Duration::from_secs(600));
        assert_eq!(verify(key, &text, SystemTime::now()), Ok(state.clone()));
        let later = SystemTime::now() + Duration::from_secs(601);
        assert_eq!(verify(key, &text, later), Err(StateError::Expired));
        assert_eq!(
            verify(b"another key", &text, SystemTime::now()),
            Err(StateError::Invalid)
        );
        let (body, _) = text.split_once('.').expect("two parts");
        let forged = format!("{body}.AAAA");
        assert_eq!(
            verify(key, &forged, SystemTime::now()),
            Err(StateError::Invalid)
        );
        assert_eq!(
            verify(key, "garbage", SystemTime::now()),
            Err(StateError::Invalid)
        );
        let (other, _) = sign(key, "acme/github", Duration::from_secs(600));
        assert_ne!(other.id, state.id);
    }
}
