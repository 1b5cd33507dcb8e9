//! `GET /openapi.json`: the OpenAPI 3.1 document, generated from the handlers'
//! annotations. A test checks that every route the router serves is in it.

use axum::Json;
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tunehook",
        description = "Receives Segmind fine-tune webhooks, keeps every job's state, forwards every change to sinks, and reconciles with Segmind's API. Errors share one shape: {\"error\": {\"code\", \"message\"}}."
    ),
    paths(
        super::webhooks::receive,
        super::jobs::list,
        super::jobs::get,
        super::events::all,
        super::events::job,
        super::finetunes::submit,
        super::finetunes::access,
        super::receipts::list,
        super::receipts::get,
        super::sinks::list,
        super::sinks::replay,
        super::deliveries::list,
        super::deliveries::get,
        super::deliveries::retry,
        super::status::status,
        super::status::reconcile,
        super::tokens::rotate,
        super::health::healthz,
        super::health::readyz,
        super::metrics::metrics,
        document,
    ),
    components(schemas(super::views::Drift)),
    modifiers(&BearerToken)
)]
pub struct ApiDoc;

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// A text field the rules take: at least one character that is not white
/// space as `str::trim` counts it (Unicode's White_Space set), written out
/// so that every regex dialect reads it alike (`\s` is a different set in
/// ECMA-262, which JSON Schema names, and in Python).
const NOT_BLANK: &str =
    "[^\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028-\\u2029\\u202f\\u205f\\u3000]";

/// The body of `POST /v1/finetunes`, declared as exactly what
/// `domain::finetune_request` accepts (its rules live there, as code; this
/// says the same in JSON Schema, and a test checks the two agree on
/// examples). Enum values are accepted in any case; the document lists the
/// upper-case ones Segmind documents.
fn submit_schema() -> serde_json::Value {
    use crate::domain::finetune_request::{FINETUNE_TYPES, PRIORITIES, THEMES};
    let text = serde_json::json!({"type": "string", "pattern": NOT_BLANK});
    let optional_text = serde_json::json!({"type": ["string", "null"], "pattern": NOT_BLANK});
    let one_of = |allowed: &[&str]| {
        let mut values: Vec<serde_json::Value> = allowed.iter().map(|v| (*v).into()).collect();
        values.push(serde_json::Value::Null);
        serde_json::json!({"enum": values})
    };
    let flag = serde_json::json!({"type": ["boolean", "null"]});
    serde_json::json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["name", "data_source_path", "instance_prompt"],
        "properties": {
            "name": text,
            "data_source_path": text,
            "instance_prompt": text,
            "trigger_word": optional_text,
            "base_model": optional_text,
            "theme": one_of(&THEMES),
            "segmind_public": flag,
            "advance_parameters": {
                "type": ["object", "null"],
                "additionalProperties": false,
                "properties": {
                    "iterations": {"type": ["integer", "null"], "minimum": 100, "maximum": u32::MAX},
                    "captioning": flag,
                    "priority": one_of(&PRIORITIES),
                    "finetune_type": one_of(&FINETUNE_TYPES),
                    "lora_rank": {"enum": [16, 32, null]},
                    "learning_rate": {"type": ["number", "null"], "exclusiveMinimum": 0}
                }
            }
        }
    })
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health", responses((status = 200, description = "The OpenAPI document", body = Object)))]
pub async fn document() -> Json<serde_json::Value> {
    Json(document_json())
}

/// The document as served: generated from the annotations, with the
/// submit body's schema written out in full.
pub fn document_json() -> serde_json::Value {
    let mut document = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    if let Some(content) = document
        .pointer_mut("/paths/~1v1~1finetunes/post/requestBody/content/application~1json")
        .and_then(serde_json::Value::as_object_mut)
    {
        content.insert("schema".into(), submit_schema());
    }
    document
}

#[cfg(test)]
mod tests {
    //! The document declares what the server accepts.

    use super::ApiDoc;
    use crate::http::params;
    use utoipa::OpenApi;

    fn parameter(doc: &serde_json::Value, path: &str, name: &str) -> serde_json::Value {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("{path} has no parameter {name}"))
    }

    /// The white space `NOT_BLANK` leaves out, as ranges.
    const WHITE_SPACE: [(char, char); 10] = [
        ('\t', '\r'),
        (' ', ' '),
        ('\u{85}', '\u{85}'),
        ('\u{a0}', '\u{a0}'),
        ('\u{1680}', '\u{1680}'),
        ('\u{2000}', '\u{200a}'),
        ('\u{2028}', '\u{2029}'),
        ('\u{202f}', '\u{202f}'),
        ('\u{205f}', '\u{205f}'),
        ('\u{3000}', '\u{3000}'),
    ];

    #[test]
    fn a_text_fields_pattern_leaves_out_exactly_what_trim_removes() {
        let listed = |c: char| WHITE_SPACE.iter().any(|(a, b)| (*a..=*b).contains(&c));
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            assert_eq!(listed(c), c.is_whitespace(), "U+{:04X}", c as u32);
        }
        let written: String = WHITE_SPACE
            .iter()
            .map(|&(a, b)| {
                let at = |c: char| match c {
                    '\t' => "\\t".to_owned(),
                    '\r' => "\\r".to_owned(),
                    ' ' => " ".to_owned(),
                    c => format!("\\u{:04x}", c as u32),
                };
                if a == b {
                    at(a)
                } else {
                    format!("{}-{}", at(a), at(b))
                }
            })
            .collect();
        assert_eq!(super::NOT_BLANK, format!("[^{written}]"));
    }

    #[test]
    fn the_patterns_in_the_document_are_the_ones_the_server_checks() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("the document as JSON");
        assert_eq!(
            parameter(&doc, "/v1/jobs", "cursor")["schema"]["pattern"],
            params::JOB_CURSOR_PATTERN
        );
        assert_eq!(
            parameter(&doc, "/v1/jobs", "status")["schema"]["pattern"],
            params::STATUS_PATTERN
        );
        for path in ["/v1/jobs", "/v1/receipts", "/v1/deliveries"] {
            let limit = &parameter(&doc, path, "limit")["schema"];
            assert_eq!(limit["minimum"], 1, "{path}");
            assert_eq!(limit["maximum"], params::MAX_LIMIT, "{path}");
        }
    }
}

#[cfg(test)]
mod submit_body {
    use super::*;
    use serde_json::json;

    fn declared() -> serde_json::Value {
        let document = document_json();
        document["paths"]["/v1/finetunes"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"]
            .clone()
    }

    #[test]
    fn the_submit_body_is_declared_as_the_rules_take_it() {
        let schema = declared();
        assert_eq!(schema["additionalProperties"], false, "{schema}");
        assert_eq!(
            schema["required"],
            json!(["name", "data_source_path", "instance_prompt"])
        );
        assert_eq!(
            schema["properties"]["advance_parameters"]["properties"]["iterations"]["minimum"],
            100
        );
        // Examples the schema takes are taken by the rules, and the other way round.
        let minimal =
            json!({"name": "n", "data_source_path": "https://d/x.zip", "instance_prompt": "p"});
        assert!(crate::domain::finetune_request::validate(&minimal).is_ok());
        let mut full = minimal.clone();
        full["theme"] = json!("STYLE");
        full["advance_parameters"] = json!({"iterations": 100, "lora_rank": 16, "learning_rate": 0.5,
            "priority": "SPEED", "finetune_type": "LORA", "captioning": null});
        assert!(crate::domain::finetune_request::validate(&full).is_ok());
        for broken in [
            json!({}),
            json!({"name": " ", "data_source_path": "x", "instance_prompt": "p"}),
        ] {
            assert!(crate::domain::finetune_request::validate(&broken).is_err());
        }
    }
}
