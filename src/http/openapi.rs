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
    components(schemas(crate::store::DriftRow)),
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

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health", responses((status = 200, description = "The OpenAPI document", body = Object)))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
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
