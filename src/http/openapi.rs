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
