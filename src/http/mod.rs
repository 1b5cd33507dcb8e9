//! The HTTP layer: axum routes that translate between HTTP and the store.
//! Handlers hold no rules of their own; those live in `domain`.
//!
//! - `POST /webhooks/segmind/{token}`: `webhooks`
//! - `GET /v1/jobs`, `GET /v1/jobs/{finetune_id}`: `jobs`
//! - `GET /v1/receipts`: `receipts`
//! - `GET /v1/sinks`, `POST /v1/sinks/{name}/replay`: `sinks`
//! - `GET /v1/deliveries`, `GET /v1/deliveries/{id}`, `POST /v1/deliveries/{id}/retry`: `deliveries`
//! - `GET /v1/status`, `POST /v1/reconcile`: `status`
//! - `GET /healthz`, `GET /readyz`: `health`
//! - `GET /metrics`: `metrics`

pub mod auth;
pub mod deliveries;
pub mod error;
pub mod health;
pub mod jobs;
pub mod json;
pub mod metrics;
pub mod params;
pub mod receipts;
pub mod sinks;
pub mod status;
pub mod webhooks;

use crate::{
    config::{Secret, SinkSettings},
    reconcile::Reconciler,
    store::Store,
};
use axum::{
    Router,
    extract::{MatchedPath, Request},
    http::{HeaderName, StatusCode},
    middleware,
    response::IntoResponse,
    routing::{get, post},
};
use error::ApiError;
use std::{sync::Arc, time::Duration};
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    timeout::TimeoutLayer,
    trace::TraceLayer,
};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub store: Store,
    /// The configured sinks, as `GET /v1/sinks` shows them.
    pub sinks: Vec<SinkSettings>,
    pub reconciler: Arc<Reconciler>,
    pub started: std::time::Instant,
    pub started_at: String,
    pub metrics_require_token: bool,
    /// Webhooks in flight; when none is left, webhooks get a quick 503.
    pub webhook_permits: Arc<tokio::sync::Semaphore>,
    pub ingest_token: Secret,
    pub api_token: Secret,
    pub max_body_bytes: usize,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(inner: Inner) -> AppState {
        AppState(Arc::new(inner))
    }
}

pub fn router(state: AppState, request_timeout: Duration) -> Router {
    let api = Router::new()
        .route("/jobs", get(jobs::list))
        .route("/jobs/{finetune_id}", get(jobs::get))
        .route("/receipts", get(receipts::list))
        .route("/sinks", get(sinks::list))
        .route("/sinks/{name}/replay", post(sinks::replay))
        .route("/deliveries", get(deliveries::list))
        .route("/deliveries/{id}", get(deliveries::get))
        .route("/deliveries/{id}/retry", post(deliveries::retry))
        .route("/status", get(status::status))
        .route("/reconcile", post(status::reconcile))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_token,
        ));

    Router::new()
        .route("/webhooks/segmind/{token}", post(webhooks::receive))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .nest("/v1", api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal(anyhow::anyhow!("a handler panicked")).into_response()
        }))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

/// The span around each request. It names the route pattern, never the raw
/// path: the webhook path carries the ingest token.
fn request_span(request: &Request) -> tracing::Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!("request", method = %request.method(), route = %route, request_id = %request_id)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> impl IntoResponse {
    let body = axum::Json(serde_json::json!({
        "error": {"code": "method_not_allowed", "message": "this route does not take that method"}
    }));
    (StatusCode::METHOD_NOT_ALLOWED, body)
}
