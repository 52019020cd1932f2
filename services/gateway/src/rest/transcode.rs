//! The proto3 JSON mapping between HTTP requests and gRPC messages, through prost-reflect's
//! dynamic messages: path variables, query parameters and the body make one JSON object that is
//! decoded as the request message; responses are encoded back, then trimmed by `?fields=`.

use std::collections::BTreeMap;

use bytes::Buf;
use prost::Message;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, Kind, MessageDescriptor, SerializeOptions,
};
use serde_json::{Map, Value};
use switchyard_kit::{ApiError, FieldViolation};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use super::routes::{BodyField, Route, field_named, field_path};

/// The query parameter that selects response fields; it is not a request field.
pub const FIELDS_PARAMETER: &str = "fields";

fn bad(field: &str, description: impl Into<String>) -> ApiError {
    ApiError::invalid_argument(vec![FieldViolation::new(field, description)])
}

/// The request message of `route` from its path variables, query string and body.
pub fn request_message(
    route: &Route,
    bound: Vec<(&str, String)>,
    query: &[(String, String)],
    body: &[u8],
) -> Result<DynamicMessage, ApiError> {
    let mut object = Map::new();
    match &route.body {
        BodyField::Whole if !body.is_empty() => match serde_json::from_slice(body) {
            Ok(Value::Object(map)) => object = map,
            Ok(_) => return Err(bad("body", "must be a JSON object")),
            Err(err) => return Err(bad("body", format!("not JSON: {err}"))),
        },
        BodyField::Field(field) if !body.is_empty() => {
            let value = serde_json::from_slice(body)
                .map_err(|err| bad("body", format!("not JSON: {err}")))?;
            object.insert(field.json_name().to_owned(), value);
        }
        BodyField::None if !body.is_empty() => {
            return Err(bad("body", "this method takes no body"));
        }
        _ => {}
    }
    for (key, value) in query {
        if key == FIELDS_PARAMETER {
            continue;
        }
        if matches!(route.body, BodyField::Whole) {
            return Err(bad(
                key,
                "this method takes its fields in the body, not the query",
            ));
        }
        set_query_parameter(&route.input, &mut object, key, value)?;
    }
    for (field_path, value) in bound {
        let names = json_path(&route.input, field_path)
            .ok_or_else(|| ApiError::internal(format!("path field {field_path} vanished")))?;
        insert_at(&mut object, &names, Value::String(value))
            .map_err(|description| bad(field_path, description))?;
    }
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    DynamicMessage::deserialize_with_options(route.input.clone(), Value::Object(object), &options)
        .map_err(|err| bad("body", err.to_string()))
}

/// The messages of a client stream: one JSON object per line of the body, each with the path's
/// variables; the query names no field.
pub fn request_stream(
    route: &Route,
    bound: Vec<(&str, String)>,
    query: &[(String, String)],
    body: &[u8],
) -> Result<Vec<DynamicMessage>, ApiError> {
    if let Some((key, _)) = query.iter().find(|(key, _)| key != FIELDS_PARAMETER) {
        return Err(bad(
            key,
            "a streamed request takes its fields in the body, not the query",
        ));
    }
    let mut messages = Vec::new();
    for (index, line) in body.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let message = request_message(route, bound.clone(), &[], line).map_err(|err| {
            bad(
                &format!("body line {}", index + 1),
                err.message().to_owned(),
            )
        })?;
        messages.push(message);
    }
    if messages.is_empty() {
        return Err(bad("body", "one JSON message per line; none was sent"));
    }
    Ok(messages)
}

/// The JSON names along a dotted path of proto (or JSON) field names.
fn json_path(message: &MessageDescriptor, path: &str) -> Option<Vec<String>> {
    let fields = field_path(message, path)?;
    Some(fields.iter().map(|f| f.json_name().to_owned()).collect())
}

fn insert_at(
    object: &mut Map<String, Value>,
    names: &[String],
    value: Value,
) -> Result<(), String> {
    let (last, parents) = names.split_last().ok_or("empty field path")?;
    let mut current = object;
    for name in parents {
        let next = current
            .entry(name.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        current = next.as_object_mut().ok_or("is not a message")?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

/// Whether a message type is written as a JSON string or number in the proto3 mapping, so that
/// a query parameter can carry it.
fn is_scalar_message(message: &MessageDescriptor) -> bool {
    matches!(
        message.full_name(),
        "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
            | "google.protobuf.BoolValue"
            | "google.protobuf.Int32Value"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.FloatValue"
            | "google.protobuf.DoubleValue"
    )
}

/// A query value as the JSON the proto3 mapping expects for a field of `kind`. Numbers stay
/// strings, which the mapping accepts for every numeric type.
fn scalar(kind: &Kind, key: &str, text: &str) -> Result<Value, ApiError> {
    match kind {
        Kind::Bool => match text {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(bad(key, "must be true or false")),
        },
        Kind::Message(message) if message.full_name() == "google.protobuf.BoolValue" => {
            scalar(&Kind::Bool, key, text)
        }
        Kind::Message(message) if !is_scalar_message(message) => Err(bad(
            key,
            "a message cannot be a query parameter; name one of its fields",
        )),
        Kind::Int32
        | Kind::Sint32
        | Kind::Sfixed32
        | Kind::Int64
        | Kind::Sint64
        | Kind::Sfixed64
            if text.parse::<i64>().is_err() =>
        {
            Err(bad(key, "must be an integer"))
        }
        Kind::Uint32 | Kind::Fixed32 | Kind::Uint64 | Kind::Fixed64
            if text.parse::<u64>().is_err() =>
        {
            Err(bad(key, "must be a non-negative integer"))
        }
        Kind::Float | Kind::Double if text.parse::<f64>().is_err() => {
            Err(bad(key, "must be a number"))
        }
        _ => Ok(Value::String(text.to_owned())),
    }
}

/// Sets `key` (`a.b`, a repeated field given several times, or `map[key]`) from the query.
fn set_query_parameter(
    input: &MessageDescriptor,
    object: &mut Map<String, Value>,
    key: &str,
    text: &str,
) -> Result<(), ApiError> {
    let (path, map_key) = match key.split_once('[') {
        Some((path, rest)) => (
            path,
            Some(
                rest.strip_suffix(']')
                    .ok_or_else(|| bad(key, "unclosed ["))?,
            ),
        ),
        None => (key, None),
    };
    let unknown = || bad(key, "no such field");
    let fields = field_path(input, path).ok_or_else(unknown)?;
    let names: Vec<String> = fields.iter().map(|f| f.json_name().to_owned()).collect();
    let field = fields.last().ok_or_else(unknown)?;
    let (parents, last) = names.split_at(names.len() - 1);
    let mut current = &mut *object;
    for name in parents {
        current = current
            .entry(name.clone())
            .or_insert_with(|| Value::Object(Map::new()))
            .as_object_mut()
            .ok_or_else(unknown)?;
    }
    let slot = &last[0];
    match (field.is_map(), map_key) {
        (true, Some(map_key)) => {
            let Kind::Message(entry) = field.kind() else {
                return Err(unknown());
            };
            let value_kind = entry.map_entry_value_field().kind();
            let value = scalar(&value_kind, key, text)?;
            current
                .entry(slot.clone())
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .ok_or_else(unknown)?
                .insert(map_key.to_owned(), value);
        }
        (true, None) => return Err(bad(key, "a map is given as key[name]=value")),
        (false, Some(_)) => return Err(bad(key, "not a map")),
        (false, None) if field.is_list() => {
            let value = scalar(&field.kind(), key, text)?;
            match current
                .entry(slot.clone())
                .or_insert_with(|| Value::Array(Vec::new()))
            {
                Value::Array(items) => items.push(value),
                _ => return Err(unknown()),
            }
        }
        (false, None) => {
            if current.contains_key(slot) {
                return Err(bad(key, "given more than once"));
            }
            current.insert(slot.clone(), scalar(&field.kind(), key, text)?);
        }
    }
    Ok(())
}

/// A `?fields=` mask: the response fields to keep, as a tree of JSON names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldMask {
    children: BTreeMap<String, FieldMask>,
}

impl FieldMask {
    /// Parses comma-separated dotted paths of proto or JSON field names, checked against the
    /// response message; a path through a repeated field applies to each element.
    pub fn parse(output: &MessageDescriptor, text: &str) -> Result<FieldMask, ApiError> {
        let mut mask = FieldMask::default();
        for path in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut node = &mut mask;
            let mut message = Some(output.clone());
            for part in path.split('.') {
                let field = message
                    .as_ref()
                    .and_then(|m| field_named(m, part))
                    .ok_or_else(|| {
                        bad(FIELDS_PARAMETER, format!("no field {path} in the response"))
                    })?;
                message = match field.kind() {
                    Kind::Message(inner) if !field.is_map() && !is_scalar_message(&inner) => {
                        Some(inner)
                    }
                    _ => None,
                };
                node = node
                    .children
                    .entry(field.json_name().to_owned())
                    .or_default();
            }
        }
        Ok(mask)
    }

    /// Keeps only the masked fields of `value`.
    pub fn apply(&self, value: &mut Value) {
        if self.children.is_empty() {
            return;
        }
        match value {
            Value::Object(object) => {
                object.retain(|key, _| self.children.contains_key(key));
                for (key, child) in object.iter_mut() {
                    if let Some(mask) = self.children.get(key) {
                        mask.apply(child);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| self.apply(item)),
            _ => {}
        }
    }
}

/// The JSON of a response message (or of the route's response field), in the proto3 mapping.
pub fn response_json(route: &Route, message: &DynamicMessage) -> Result<Value, ApiError> {
    let options = SerializeOptions::new();
    let value = message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(ApiError::internal)?;
    Ok(match &route.response_body {
        Some(field) => match value {
            Value::Object(mut object) => object.remove(field.json_name()).unwrap_or(Value::Null),
            other => other,
        },
        None => value,
    })
}

/// A tonic codec for messages known only by their descriptor.
#[derive(Debug, Clone)]
pub struct DynamicCodec {
    response: MessageDescriptor,
}

impl DynamicCodec {
    /// Decodes responses as `response`.
    pub fn new(response: MessageDescriptor) -> Self {
        DynamicCodec { response }
    }
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicDecoder(self.response.clone())
    }
}

/// Encodes a dynamic message.
#[derive(Debug)]
pub struct DynamicEncoder;

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|err| Status::internal(err.to_string()))
    }
}

/// Decodes a dynamic message of one type.
#[derive(Debug)]
pub struct DynamicDecoder(MessageDescriptor);

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        DynamicMessage::decode(self.0.clone(), bytes)
            .map(Some)
            .map_err(|err| Status::internal(format!("the service's answer does not decode: {err}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rest::routes::Routes;
    use prost_reflect::DescriptorPool;

    fn route(name: &str) -> std::sync::Arc<Route> {
        let pool = DescriptorPool::decode(switchyard_proto::FILE_DESCRIPTOR_SET).unwrap();
        Routes::from_pool(&pool)
            .unwrap()
            .iter()
            .find(|r| r.full_name == name)
            .unwrap()
            .clone()
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn json(message: &DynamicMessage) -> Value {
        message
            .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
            .unwrap()
    }

    #[test]
    fn query_parameters_fill_scalars_repeated_fields_and_maps() {
        let list = route("switchyard.credentials.v1.CredentialService.ListCredentials");
        let query = pairs(&[
            ("pageSize", "2"),
            ("provider", "openai"),
            ("labels[env]", "prod"),
            ("show_deleted", "true"),
            ("state", "CREDENTIAL_STATE_ACTIVE"),
            ("fields", "credentials.name"),
        ]);
        let message = request_message(&list, Vec::new(), &query, b"").unwrap();
        assert_eq!(
            json(&message),
            serde_json::json!({"pageSize": 2, "provider": "openai", "labels": {"env": "prod"},
                "state": "CREDENTIAL_STATE_ACTIVE", "showDeleted": true})
        );
        for (key, value) in [
            ("pageSize", "x"),
            ("nope", "1"),
            ("showDeleted", "yes"),
            ("labels", "x"),
        ] {
            let err = request_message(&list, Vec::new(), &pairs(&[(key, value)]), b"").unwrap_err();
            assert_eq!(err.violations()[0].field, key, "{key}={value}");
        }
        assert!(
            request_message(&list, Vec::new(), &[], b"{}").is_err(),
            "a GET takes no body"
        );
    }

    #[test]
    fn path_variables_and_the_body_fill_their_fields() {
        let update = route("switchyard.credentials.v1.CredentialService.UpdateCredential");
        let message = request_message(
            &update,
            vec![("credential.name", "credentials/a".to_owned())],
            &pairs(&[("updateMask", "displayName,labels")]),
            br#"{"displayName": "A", "name": "credentials/ignored"}"#,
        )
        .unwrap();
        assert_eq!(
            json(&message),
            serde_json::json!({"credential": {"name": "credentials/a", "displayName": "A"},
                "updateMask": "displayName,labels"})
        );
        let create = route("switchyard.credentials.v1.CredentialService.CreateCredential");
        let err =
            request_message(&create, Vec::new(), &pairs(&[("requestId", "r")]), b"{}").unwrap_err();
        assert_eq!(err.violations()[0].field, "requestId");
        assert!(request_message(&create, Vec::new(), &[], b"[1]").is_err());
        assert!(request_message(&create, Vec::new(), &[], br#"{"unknownField": 1}"#).is_err());
    }

    #[test]
    fn field_masks_keep_what_they_name_through_lists() {
        let list = route("switchyard.credentials.v1.CredentialService.ListCredentials");
        let mask = FieldMask::parse(
            &list.output,
            "credentials.name,credentials.labels,next_page_token",
        )
        .unwrap();
        let mut value = serde_json::json!({
            "credentials": [{"name": "credentials/a", "labels": {"x": "y"}, "kind": "K"}],
            "nextPageToken": "t"
        });
        mask.apply(&mut value);
        assert_eq!(
            value,
            serde_json::json!({"credentials": [{"name": "credentials/a", "labels": {"x": "y"}}],
                "nextPageToken": "t"})
        );
        assert!(FieldMask::parse(&list.output, "credentials.nope").is_err());
    }
}
