//! Checks JSON bodies against OpenAI's published API contract.
//!
//! The schemas come from OpenAI's OpenAPI 3.1 description of its REST API, extracted into
//! `specs/openai/schemas.json` (see the README there for the source, what was kept and how to
//! regenerate it): the chat completions, embeddings, image generation and transcription requests
//! and responses, the streamed chat chunk and transcript events, and the error body, with every
//! schema they reference.
//!
//! ```
//! use serde_json::json;
//! use switchyard_testkit::openai_contract::validate;
//!
//! let request = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]});
//! assert_eq!(validate("CreateChatCompletionRequest", &request), Ok(()));
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use jsonschema::{Draft, Validator};
use serde_json::{Map, Value, json};

/// The extracted schemas, `{"components": {"schemas": {...}}}`.
const SCHEMAS: &str = include_str!("../specs/openai/schemas.json");

/// The schema names extracted from the spec as roots (the others are reached from them).
pub const ROOT_SCHEMAS: [&str; 13] = [
    "CreateChatCompletionRequest",
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateEmbeddingRequest",
    "CreateEmbeddingResponse",
    "ErrorResponse",
    "CreateImageRequest",
    "ImagesResponse",
    "CreateTranscriptionRequest",
    "CreateTranscriptionResponseJson",
    "CreateTranscriptionResponseVerboseJson",
    "TranscriptTextDeltaEvent",
    "TranscriptTextDoneEvent",
];

/// Validates `instance` against `#/components/schemas/{schema}` of the extracted contract.
///
/// Every schema of `schemas.json` may be named, not only the [`ROOT_SCHEMAS`]. The errors read
/// `{instance path}: {message}` (the path is a JSON pointer, `/` for the whole body); an unknown
/// schema name is an error too.
pub fn validate(schema: &str, instance: &Value) -> Result<(), Vec<String>> {
    let validator = validator(schema).map_err(|error| vec![error])?;
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|error| {
            let path = error.instance_path().as_str();
            let path = if path.is_empty() { "/" } else { path };
            format!("{path}: {error}")
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The contract document, parsed and with OpenAPI's `nullable` rewritten, once.
fn document() -> Result<&'static Value, String> {
    static DOCUMENT: OnceLock<Result<Value, String>> = OnceLock::new();
    DOCUMENT
        .get_or_init(|| {
            let mut document: Value = serde_json::from_str(SCHEMAS)
                .map_err(|err| format!("specs/openai/schemas.json is not JSON: {err}"))?;
            if let Some(schemas) = document
                .pointer_mut("/components/schemas")
                .and_then(Value::as_object_mut)
            {
                for schema in schemas.values_mut() {
                    rewrite_nullable(schema);
                }
            }
            Ok(document)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The compiled validator for one schema; each is compiled once, on first use.
fn validator(schema: &str) -> Result<Arc<Validator>, String> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Validator>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(validator) = cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(schema)
    {
        return Ok(validator.clone());
    }
    let document = document()?;
    if document
        .pointer(&format!("/components/schemas/{schema}"))
        .is_none()
    {
        return Err(format!("no schema {schema:?} in the OpenAI contract"));
    }
    // The whole document is the root, so that `#/components/schemas/...` resolves within it;
    // `components` is an unknown keyword to JSON Schema and only serves as a target of `$ref`.
    let mut root = document.clone();
    if let Some(root) = root.as_object_mut() {
        root.insert(
            "$schema".to_owned(),
            json!("https://json-schema.org/draft/2020-12/schema"),
        );
        root.insert(
            "$ref".to_owned(),
            json!(format!("#/components/schemas/{schema}")),
        );
    }
    // OpenAPI 3.1's dialect is JSON Schema 2020-12. Formats (`unixtime`, `float`, ...) are
    // annotations there, as OpenAPI intends.
    let compiled = jsonschema::options()
        .with_draft(Draft::Draft202012)
        .build(&root)
        .map_err(|err| format!("compiling the OpenAI schema {schema}: {err}"))?;
    let compiled = Arc::new(compiled);
    // Two threads may compile the same schema at once; either result will do.
    cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(schema.to_owned(), compiled.clone());
    Ok(compiled)
}

/// Rewrites OpenAPI 3.0's `nullable: true`, which some of OpenAI's 3.1 schemas still carry and
/// JSON Schema ignores, into `anyOf: [schema, {"type": "null"}]`; drops `nullable: false`.
///
/// Only schema positions are visited, so that a property named `nullable` or an `example` value
/// is left alone.
fn rewrite_nullable(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    for (keyword, value) in object.iter_mut() {
        match keyword.as_str() {
            "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas" => {
                if let Some(map) = value.as_object_mut() {
                    map.values_mut().for_each(rewrite_nullable);
                }
            }
            "allOf" | "anyOf" | "oneOf" | "prefixItems" => {
                if let Some(list) = value.as_array_mut() {
                    list.iter_mut().for_each(rewrite_nullable);
                }
            }
            "items"
            | "additionalProperties"
            | "not"
            | "if"
            | "then"
            | "else"
            | "contains"
            | "propertyNames"
            | "unevaluatedItems"
            | "unevaluatedProperties" => {
                rewrite_nullable(value);
            }
            _ => {}
        }
    }
    match object.remove("nullable") {
        Some(Value::Bool(true)) => {
            let inner = Value::Object(std::mem::take(object));
            let mut wrapped = Map::new();
            wrapped.insert("anyOf".to_owned(), json!([inner, { "type": "null" }]));
            *schema = Value::Object(wrapped);
        }
        Some(Value::Bool(false)) | None => {}
        // Not OpenAPI's keyword: put it back as it was.
        Some(other) => {
            object.insert("nullable".to_owned(), other);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(schema: &str, instance: &Value) -> Vec<String> {
        validate(schema, instance).expect_err("the instance should be invalid")
    }

    #[test]
    fn a_minimal_chat_request_and_response_validate() {
        let request = json!({
            "model": "gpt-4o-mini",
            "messages": [
                { "role": "system", "content": "Be brief." },
                { "role": "user", "content": [{ "type": "text", "text": "Hello" }] },
            ],
            "stream": null,
            "max_completion_tokens": null,
        });
        assert_eq!(validate("CreateChatCompletionRequest", &request), Ok(()));
        let response = json!({
            "id": "chatcmpl-123",
            "object": "chat.completion",
            "created": 1_741_570_283,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": "Hi.", "refusal": null },
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": { "prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11 },
            "service_tier": "default",
        });
        assert_eq!(validate("CreateChatCompletionResponse", &response), Ok(()));
    }

    #[test]
    fn a_request_without_messages_or_with_an_unknown_role_fails() {
        let missing = json!({ "model": "gpt-4o-mini" });
        let found = errors("CreateChatCompletionRequest", &missing);
        assert!(
            found
                .iter()
                .any(|e| e.contains("\"messages\" is a required")),
            "{found:?}"
        );

        let robot = json!({
            "model": "gpt-4o-mini",
            "messages": [{ "role": "robot", "content": "beep" }],
        });
        let found = errors("CreateChatCompletionRequest", &robot);
        assert!(
            found.iter().any(|e| e.starts_with("/messages/0: ")),
            "{found:?}"
        );
    }

    #[test]
    fn a_streamed_chunk_validates_with_a_null_finish_reason_and_usage() {
        // `finish_reason` and `usage` are `nullable` in the spec: this checks the rewrite.
        let chunk = json!({
            "id": "chatcmpl-123",
            "object": "chat.completion.chunk",
            "created": 1_741_570_283,
            "model": "gpt-4o-mini-2024-07-18",
            "system_fingerprint": "fp_44709d6fcb",
            "choices": [{
                "index": 0,
                "delta": { "role": "assistant", "content": "", "refusal": null },
                "logprobs": null,
                "finish_reason": null,
            }],
            "usage": null,
        });
        assert_eq!(
            validate("CreateChatCompletionStreamResponse", &chunk),
            Ok(())
        );
        let last = json!({
            "id": "chatcmpl-123",
            "object": "chat.completion.chunk",
            "created": 1_741_570_283,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [],
            "usage": { "prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11 },
        });
        assert_eq!(
            validate("CreateChatCompletionStreamResponse", &last),
            Ok(())
        );

        let wrong = json!({
            "id": "chatcmpl-123",
            "object": "chat.completion.chunk",
            "created": 1_741_570_283,
            "model": "m",
            "choices": [{ "index": 0, "delta": {}, "finish_reason": "finished" }],
        });
        let found = errors("CreateChatCompletionStreamResponse", &wrong);
        assert!(
            found
                .iter()
                .any(|e| e.starts_with("/choices/0/finish_reason: ")),
            "{found:?}"
        );
    }

    #[test]
    fn embeddings_and_errors_validate() {
        let request = json!({ "model": "text-embedding-3-small", "input": ["a", "b"] });
        assert_eq!(validate("CreateEmbeddingRequest", &request), Ok(()));
        let response = json!({
            "object": "list",
            "data": [{ "object": "embedding", "index": 0, "embedding": [0.1, -0.2] }],
            "model": "text-embedding-3-small",
            "usage": { "prompt_tokens": 1, "total_tokens": 1 },
        });
        assert_eq!(validate("CreateEmbeddingResponse", &response), Ok(()));
        let error = json!({ "error": {
            "message": "m", "type": "invalid_request_error", "param": null, "code": null,
        }});
        assert_eq!(validate("ErrorResponse", &error), Ok(()));
        let found = errors("ErrorResponse", &json!({ "error": { "message": "m" } }));
        assert!(found.iter().all(|e| e.starts_with("/error: ")), "{found:?}");
    }

    #[test]
    fn every_root_schema_compiles_and_unknown_names_are_errors() {
        for schema in ROOT_SCHEMAS {
            assert!(validator(schema).is_ok(), "{schema}");
        }
        let found = errors("NoSuchSchema", &json!({}));
        assert_eq!(
            found,
            vec!["no schema \"NoSuchSchema\" in the OpenAI contract"]
        );
    }

    #[test]
    fn nullable_is_rewritten_only_where_it_is_a_keyword() {
        let mut schema = json!({
            "type": "object",
            "properties": {
                "nullable": { "type": "string" },
                "n": { "type": "integer", "nullable": true },
            },
            "example": { "nullable": true },
        });
        rewrite_nullable(&mut schema);
        assert_eq!(
            schema,
            json!({
                "type": "object",
                "properties": {
                    "nullable": { "type": "string" },
                    "n": { "anyOf": [{ "type": "integer" }, { "type": "null" }] },
                },
                "example": { "nullable": true },
            })
        );
    }
}
