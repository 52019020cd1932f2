//! Conversions between the domain's plain values and the protobuf well-known types, the same in
//! every service's API layer.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Timestamp};

use crate::FieldViolation;

/// Microseconds since the Unix epoch as a protobuf timestamp.
pub fn timestamp(micros: i64) -> Timestamp {
    Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1000).unwrap_or(0),
    }
}

// RFC 3339 years 0001-9999, the range of google.protobuf.Timestamp.
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

/// A protobuf timestamp as microseconds since the Unix epoch, refused outside its valid range.
pub fn checked_micros(field: &str, ts: &Timestamp) -> Result<i64, FieldViolation> {
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&ts.seconds) || !(0..1_000_000_000).contains(&ts.nanos)
    {
        return Err(FieldViolation::new(
            field,
            "must be a valid timestamp between years 1 and 9999",
        ));
    }
    Ok(ts.seconds * 1_000_000 + i64::from(ts.nanos) / 1000)
}

/// A protobuf duration as a std one, refused if negative.
pub fn checked_duration(
    field: &str,
    duration: &prost_types::Duration,
) -> Result<std::time::Duration, FieldViolation> {
    match (
        u64::try_from(duration.seconds),
        u32::try_from(duration.nanos),
    ) {
        (Ok(seconds), Ok(nanos)) if nanos < 1_000_000_000 => {
            Ok(std::time::Duration::new(seconds, nanos))
        }
        _ => Err(FieldViolation::new(
            field,
            "must be a non-negative duration",
        )),
    }
}

/// A std duration as a protobuf one.
pub fn duration(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// JSON as a `google.protobuf.Value`.
pub fn json_to_value(json: &serde_json::Value) -> prost_types::Value {
    let kind = match json {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(fields) => Kind::StructValue(Struct {
            fields: fields
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_and_refuse_the_invalid() {
        let ts = timestamp(-1_500_000);
        assert_eq!((ts.seconds, ts.nanos), (-2, 500_000_000));
        assert_eq!(checked_micros("t", &ts), Ok(-1_500_000));
        let invalid = Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert!(checked_micros("t", &invalid).is_err());
    }

    #[test]
    fn json_becomes_a_protobuf_value() {
        let value = json_to_value(&serde_json::json!({"a": [1, "x", null, true]}));
        let Some(Kind::StructValue(fields)) = value.kind else {
            panic!("a struct");
        };
        let Some(Kind::ListValue(list)) = &fields.fields["a"].kind else {
            panic!("a list");
        };
        assert_eq!(list.values.len(), 4);
        assert_eq!(list.values[0].kind, Some(Kind::NumberValue(1.0)));
    }
}
