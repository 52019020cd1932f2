//! The normalized parts of an event, taken from each sender's body and headers.

use serde_json::{Map, Value};

use crate::{Answer, Inbound, Verified, VerifyError};

/// What a scheme found, before the headers are picked.
pub(crate) struct Parts {
    pub delivery_id: String,
    pub event_type: String,
    pub subject: Option<String>,
    pub signed_at: Option<std::time::SystemTime>,
    pub data: Value,
}

impl Parts {
    /// A [`Verified`] answered with [`Answer::Accepted`], keeping `kept` headers.
    pub(crate) fn into_verified(self, inbound: &Inbound<'_>, kept: &[&str]) -> Verified {
        let headers = kept
            .iter()
            .filter_map(|name| {
                let value = inbound.headers.get(*name)?.to_str().ok()?;
                Some(((*name).to_owned(), value.to_owned()))
            })
            .collect();
        Verified {
            delivery_id: self.delivery_id,
            event_type: self.event_type,
            subject: self.subject,
            signed_at: self.signed_at,
            data: self.data,
            headers,
            answer: Answer::Accepted,
            confirm_subscription: None,
        }
    }
}

/// The body as JSON; a sender that documents a JSON body and sends something else is refused.
pub(crate) fn json_body(body: &[u8]) -> Result<Value, VerifyError> {
    serde_json::from_slice(body)
        .map_err(|err| VerifyError::Malformed(format!("the body is not JSON: {err}")))
}

/// Slack sends JSON (Events API) or a form (slash commands; interactions, whose `payload` field
/// is JSON): both become one JSON object.
pub(crate) fn slack_body(inbound: &Inbound<'_>) -> Result<Value, VerifyError> {
    let is_form = inbound
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return json_body(inbound.body);
    }
    let mut fields = Map::new();
    for (name, value) in url::form_urlencoded::parse(inbound.body) {
        if name == "payload" {
            let payload = json_body(value.as_bytes())?;
            if let Value::Object(payload) = payload {
                fields.extend(payload);
                continue;
            }
        }
        fields.insert(name.into_owned(), Value::String(value.into_owned()));
    }
    Ok(Value::Object(fields))
}

/// The string at `path` in `data`.
pub(crate) fn string_at(data: &Value, path: &[&str]) -> Option<String> {
    let mut at = data;
    for key in path {
        at = at.get(key)?;
    }
    match at {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}
