//! Lenient reading of Segmind's webhook bodies.
//!
//! Segmind publishes no payload schema, so nothing here insists on a shape.
//! Every name is looked for in a fixed order of places: the top level first,
//! then inside a nested `data`, `finetune` or `payload` object, in that
//! order. Within each place the candidate keys are tried in their listed
//! order. A value is present when it is a non-empty string (or, for the job
//! id and timestamps, a number).

use super::{job::JobFields, status::Status};
use serde_json::{Map, Value};

/// Where names are looked for, after the top level.
pub const NESTED_OBJECTS: [&str; 3] = ["data", "finetune", "payload"];
/// Keys that may carry the event or status name, in lookup order.
pub const STATUS_KEYS: [&str; 4] = ["event", "event_type", "type", "status"];
/// Keys that may carry the job id, in lookup order.
pub const ID_KEYS: [&str; 3] = ["finetune_id", "request_id", "id"];
/// The longest job id accepted.
pub const MAX_ID_LEN: usize = 200;

/// What was read from a body that parsed as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payload {
    pub status: Option<Status>,
    pub finetune_id: Option<String>,
    pub fields: JobFields,
    pub event_id: Option<String>,
    pub timestamp: Option<String>,
}

/// Why a body could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("the body is not valid JSON: {0}")]
    NotJson(String),
    #[error(
        "`{key}` is not a usable status name (at most 64 letters, digits, spaces, `_`, `-` or `.`)"
    )]
    BadStatus { key: &'static str },
    #[error(
        "`{key}` is not a usable job id (a string of at most 200 bytes without control characters, or an integer)"
    )]
    BadId { key: &'static str },
}

impl Payload {
    /// Reads a webhook body. Fails only when the body is not JSON, or when a
    /// status or id is present but unusable; a JSON body without a job id or
    /// a status is fine and yields `None` for it.
    pub fn parse(body: &[u8]) -> Result<Payload, PayloadError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| PayloadError::NotJson(e.to_string()))?;
        let Value::Object(top) = &value else {
            return Ok(Payload::default());
        };
        let places = places(top);

        let status = match first_string(&places, &STATUS_KEYS) {
            Some((key, raw)) => Some(Status::parse(&raw).ok_or(PayloadError::BadStatus { key })?),
            None => None,
        };
        let finetune_id = match first_id(&places) {
            Some((key, raw)) => Some(raw.and_then(valid_id).ok_or(PayloadError::BadId { key })?),
            None => None,
        };
        let text = |key: &'static str| first_string(&places, &[key]).map(|(_, v)| v);
        let scalar = |key: &'static str| first_scalar(&places, &[key]).map(|(_, v)| v);

        Ok(Payload {
            status,
            finetune_id,
            fields: JobFields {
                name: text("name"),
                base_model: text("base_model"),
                slug: text("slug"),
                trained_model_url: text("trained_model_url"),
                inference_api_url: text("inference_api_url"),
                cloud_storage_url: text("cloud_storage_url"),
                error_message: text("error_message"),
                created_ts: scalar("created_ts"),
                updated_ts: scalar("updated_ts"),
                ..JobFields::default()
            },
            event_id: scalar("event_id"),
            timestamp: scalar("timestamp"),
        })
    }
}

/// The objects to look in, in lookup order.
fn places(top: &Map<String, Value>) -> Vec<&Map<String, Value>> {
    let mut places = vec![top];
    for key in NESTED_OBJECTS {
        if let Some(Value::Object(inner)) = top.get(key) {
            places.push(inner);
        }
    }
    places
}

/// The first non-empty string under any of `keys`, place by place.
fn first_string(
    places: &[&Map<String, Value>],
    keys: &[&'static str],
) -> Option<(&'static str, String)> {
    places.iter().find_map(|place| {
        keys.iter().find_map(|&key| match place.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some((key, s.clone())),
            _ => None,
        })
    })
}

/// Like `first_string`, but a number counts too (ids and timestamps are
/// sometimes numeric).
fn first_scalar(
    places: &[&Map<String, Value>],
    keys: &[&'static str],
) -> Option<(&'static str, String)> {
    places.iter().find_map(|place| {
        keys.iter().find_map(|&key| match place.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some((key, s.clone())),
            Some(Value::Number(n)) => Some((key, n.to_string())),
            _ => None,
        })
    })
}

/// The first job id, place by place: a non-empty string, or a number. A
/// number is an id only as an integer of at most 64 bits (`None` otherwise):
/// JSON parsing rounds a fraction or a longer integer to a double, and a
/// rounded id could name another job.
fn first_id(places: &[&Map<String, Value>]) -> Option<(&'static str, Option<String>)> {
    places.iter().find_map(|place| {
        ID_KEYS.iter().find_map(|&key| match place.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some((key, Some(s.clone()))),
            Some(Value::Number(n)) => {
                Some((key, (n.is_i64() || n.is_u64()).then(|| n.to_string())))
            }
            _ => None,
        })
    })
}

fn valid_id(raw: String) -> Option<String> {
    let id = raw.trim();
    let ok = id.len() <= MAX_ID_LEN && !id.chars().any(char::is_control);
    ok.then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Payload {
        Payload::parse(v.to_string().as_bytes()).expect("parses")
    }

    #[test]
    fn reads_a_flat_body_with_each_id_spelling() {
        for key in ID_KEYS {
            let p = parse(json!({"event": "AVAILABLE", key: "ft_1"}));
            assert_eq!(p.finetune_id.as_deref(), Some("ft_1"), "{key}");
            assert_eq!(p.status.as_ref().map(Status::as_str), Some("AVAILABLE"));
        }
    }

    #[test]
    fn reads_each_status_key() {
        for key in STATUS_KEYS {
            let p = parse(json!({key: "training_completed", "finetune_id": "x"}));
            assert_eq!(
                p.status.as_ref().map(Status::as_str),
                Some("TRAINING_COMPLETED"),
                "{key}"
            );
        }
    }

    #[test]
    fn reads_names_nested_in_data_finetune_or_payload() {
        for place in NESTED_OBJECTS {
            let p = parse(json!({place: {"status": "DEPLOYING", "request_id": "r9", "name": "n"}}));
            assert_eq!(p.status.as_ref().map(Status::as_str), Some("DEPLOYING"));
            assert_eq!(p.finetune_id.as_deref(), Some("r9"));
            assert_eq!(p.fields.name.as_deref(), Some("n"));
        }
    }

    #[test]
    fn the_top_level_wins_over_nested_objects_and_data_over_finetune() {
        let p = parse(json!({
            "type": "AVAILABLE",
            "data": {"event": "FAILED", "finetune_id": "from-data"},
            "finetune": {"finetune_id": "from-finetune"}
        }));
        assert_eq!(p.status.as_ref().map(Status::as_str), Some("AVAILABLE"));
        assert_eq!(p.finetune_id.as_deref(), Some("from-data"));
    }

    #[test]
    fn keys_are_tried_in_their_documented_order_within_a_place() {
        let p =
            parse(json!({"status": "QUEUED", "event": "AVAILABLE", "id": "b", "finetune_id": "a"}));
        assert_eq!(p.status.as_ref().map(Status::as_str), Some("AVAILABLE"));
        assert_eq!(p.finetune_id.as_deref(), Some("a"));
    }

    #[test]
    fn numeric_ids_and_timestamps_are_kept_as_text() {
        let p = parse(json!({"event": "AVAILABLE", "id": 42, "created_ts": 1700000000}));
        assert_eq!(p.finetune_id.as_deref(), Some("42"));
        assert_eq!(p.fields.created_ts.as_deref(), Some("1700000000"));
    }

    #[test]
    fn numeric_ids_json_would_round_are_refused() {
        for raw in [
            "123456789012345678901234567890",
            "18446744073709551616",
            "1.5",
            "1e2",
        ] {
            let body = format!(r#"{{"event": "AVAILABLE", "id": {raw}}}"#);
            assert_eq!(
                Payload::parse(body.as_bytes()),
                Err(PayloadError::BadId { key: "id" }),
                "{raw}"
            );
        }
        for raw in ["18446744073709551615", "-9223372036854775808"] {
            let body = format!(r#"{{"event": "AVAILABLE", "id": {raw}}}"#);
            let p = Payload::parse(body.as_bytes()).expect("parses");
            assert_eq!(p.finetune_id.as_deref(), Some(raw));
        }
    }

    #[test]
    fn captures_the_documented_fields() {
        let p = parse(json!({
            "event": "AVAILABLE", "finetune_id": "f",
            "name": "n", "trained_model_url": "t", "inference_api_url": "i",
            "cloud_storage_url": "c", "error_message": "e", "base_model": "b",
            "slug": "s", "event_id": "ev", "created_ts": "c1", "updated_ts": "u1",
            "timestamp": "ts"
        }));
        let f = &p.fields;
        assert_eq!(
            (
                f.name.as_deref(),
                f.trained_model_url.as_deref(),
                f.inference_api_url.as_deref()
            ),
            (Some("n"), Some("t"), Some("i"))
        );
        assert_eq!(
            (
                f.cloud_storage_url.as_deref(),
                f.error_message.as_deref(),
                f.base_model.as_deref()
            ),
            (Some("c"), Some("e"), Some("b"))
        );
        assert_eq!(
            (
                f.slug.as_deref(),
                f.created_ts.as_deref(),
                f.updated_ts.as_deref()
            ),
            (Some("s"), Some("c1"), Some("u1"))
        );
        assert_eq!(p.event_id.as_deref(), Some("ev"));
        assert_eq!(p.timestamp.as_deref(), Some("ts"));
    }

    #[test]
    fn json_without_an_id_or_a_status_is_read_as_such() {
        assert_eq!(parse(json!({"hello": "console test"})), Payload::default());
        assert_eq!(parse(json!([1, 2, 3])), Payload::default());
        assert_eq!(parse(json!("AVAILABLE")), Payload::default());
        let p = parse(json!({"event": "AVAILABLE"}));
        assert!(p.finetune_id.is_none() && p.status.is_some());
    }

    #[test]
    fn null_empty_and_non_string_values_are_not_present() {
        let p = parse(
            json!({"event": null, "event_type": "", "type": {"x": 1}, "status": "QUEUED", "finetune_id": true, "id": "z"}),
        );
        assert_eq!(p.status.as_ref().map(Status::as_str), Some("QUEUED"));
        assert_eq!(p.finetune_id.as_deref(), Some("z"));
    }

    #[test]
    fn bodies_that_are_not_json_are_errors() {
        assert!(matches!(
            Payload::parse(b"not json"),
            Err(PayloadError::NotJson(_))
        ));
        assert!(matches!(Payload::parse(b""), Err(PayloadError::NotJson(_))));
        assert!(matches!(
            Payload::parse(&[0xff, 0xfe]),
            Err(PayloadError::NotJson(_))
        ));
    }

    #[test]
    fn unusable_statuses_and_ids_are_errors_naming_the_key() {
        let long = "X".repeat(65);
        assert_eq!(
            Payload::parse(json!({"status": long, "id": "a"}).to_string().as_bytes()),
            Err(PayloadError::BadStatus { key: "status" })
        );
        let long_id = "i".repeat(MAX_ID_LEN + 1);
        assert_eq!(
            Payload::parse(
                json!({"status": "QUEUED", "request_id": long_id})
                    .to_string()
                    .as_bytes()
            ),
            Err(PayloadError::BadId { key: "request_id" })
        );
    }
}
