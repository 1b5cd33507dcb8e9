//! The HTTP layer: axum routes that translate between HTTP and the store.
//! Handlers hold no rules of their own; those live in `domain`.
//!
//! - `POST /webhooks/segmind/{token}`: `webhooks`
//! - `GET /v1/jobs`, `GET /v1/jobs/{finetune_id}`: `jobs`
//! - `GET /v1/events`, `GET /v1/jobs/{finetune_id}/events`: `events` (Server-Sent Events)
//! - `POST /v1/finetunes`, `PUT /v1/jobs/{finetune_id}/access`: `finetunes`
//! - `GET /v1/receipts`, `GET /v1/receipts/{id}`: `receipts`
//! - `GET /v1/sinks`, `POST /v1/sinks/{name}/replay`: `sinks`
//! - `GET /v1/deliveries`, `GET /v1/deliveries/{id}`, `POST /v1/deliveries/{id}/retry`: `deliveries`
//! - `GET /v1/status`, `POST /v1/reconcile`: `status`
//! - `POST /v1/tokens/rotate`: `tokens`
//! - `GET /healthz`, `GET /readyz`: `health`
//! - `GET /metrics`: `metrics`
//! - `GET /openapi.json`: `openapi`
//!
//! What the `/v1` answers carry are the types of `views`, not the store's rows.
//!
//! The dashboard's pages (`/`, `/signin`, …) are in `src/ui/`.

pub mod auth;
pub mod deliveries;
pub mod error;
pub mod events;
pub mod finetunes;
pub mod health;
pub mod jobs;
pub mod json;
pub mod metrics;
pub mod openapi;
pub mod params;
pub mod receipts;
pub mod serve;
pub mod sinks;
pub mod status;
pub mod tokens;
pub mod views;
pub mod webhooks;

use crate::{
    config::{RetentionSettings, SinkSettings},
    reconcile::Reconciler,
    store::Store,
};
use axum::{
    Router,
    extract::{MatchedPath, Request},
    http::{HeaderName, HeaderValue, Method, StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::{MethodRouter, get, post, put},
};
use error::ApiError;
use std::{sync::Arc, time::Duration};
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    set_header::SetResponseHeaderLayer,
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
    /// What `GET /v1/status` shows of retention.
    pub retention: RetentionSettings,
    pub reconciler: Arc<Reconciler>,
    pub confirmer: Arc<crate::confirm::Confirmer>,
    /// What the event streams send.
    pub feed: Arc<crate::feed::EventFeed>,
    /// Event streams open; when none is left, a new one gets 503.
    pub stream_permits: Arc<tokio::sync::Semaphore>,
    /// Cancelled at shutdown: event streams end.
    pub shutdown: tokio_util::sync::CancellationToken,
    pub started: std::time::Instant,
    pub started_at: String,
    pub metrics_require_token: bool,
    /// The database gauges of `/metrics`, read at most once per `metrics.cache`.
    pub gauges: metrics::GaugeCache,
    /// Webhooks in flight; when none is left, webhooks get a quick 503.
    pub webhook_permits: Arc<tokio::sync::Semaphore>,
    /// Bytes of webhook bodies waiting for the writer.
    pub webhook_bytes: WebhookBytes,
    /// The tokens accepted now; rotation replaces them in place.
    pub credentials: Arc<auth::Credentials>,
    /// `server.public_url`, for the full webhook URL after a rotation.
    pub public_url: String,
    pub max_body_bytes: usize,
    /// `ui.session_ttl`: how long a dashboard session lasts.
    pub session_ttl: Duration,
    /// Failed dashboard sign-ins per client address.
    pub sign_in_limit: crate::ui::SignInLimit,
    /// Checks the dataset URL of a submission before Segmind is called.
    pub url_checker: Arc<crate::dataset::remote::UrlChecker>,
}

/// The memory webhooks waiting for the writer may hold, in KiB permits: a
/// count of webhooks alone would let 1024 bodies of 1 MiB sit in memory.
/// A webhook takes permits for its body before it is queued and gives them
/// back when the writer has answered; when they run out it gets a quick 503.
#[derive(Clone)]
pub struct WebhookBytes {
    permits: Arc<tokio::sync::Semaphore>,
    total: u32,
}

impl WebhookBytes {
    pub fn new(max_bytes: usize) -> WebhookBytes {
        let total = u32::try_from(max_bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, tokio::sync::Semaphore::MAX_PERMITS as u32);
        WebhookBytes {
            permits: Arc::new(tokio::sync::Semaphore::new(total as usize)),
            total,
        }
    }

    /// Takes the permits for a body of `len` bytes, or `None` when too
    /// many bytes are waiting already. A body larger than the whole budget
    /// takes all of it, so it can still be stored alone.
    pub fn try_take(&self, len: usize) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let kib = u32::try_from(len.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total);
        Arc::clone(&self.permits).try_acquire_many_owned(kib).ok()
    }
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

/// A route: its method, its path (as axum and the OpenAPI document both
/// write it), and its handler.
type Route = (Method, &'static str, MethodRouter<AppState>);

/// The routes behind the API bearer token.
fn api_routes() -> Vec<Route> {
    vec![
        (Method::GET, "/v1/jobs", get(jobs::list)),
        (Method::GET, "/v1/jobs/{finetune_id}", get(jobs::get)),
        (Method::GET, "/v1/events", get(events::all)),
        (
            Method::GET,
            "/v1/jobs/{finetune_id}/events",
            get(events::job),
        ),
        (
            Method::PUT,
            "/v1/jobs/{finetune_id}/access",
            put(finetunes::access),
        ),
        (Method::POST, "/v1/finetunes", post(finetunes::submit)),
        (Method::GET, "/v1/receipts", get(receipts::list)),
        (Method::GET, "/v1/receipts/{id}", get(receipts::get)),
        (Method::GET, "/v1/sinks", get(sinks::list)),
        (Method::POST, "/v1/sinks/{name}/replay", post(sinks::replay)),
        (Method::GET, "/v1/deliveries", get(deliveries::list)),
        (Method::GET, "/v1/deliveries/{id}", get(deliveries::get)),
        (
            Method::POST,
            "/v1/deliveries/{id}/retry",
            post(deliveries::retry),
        ),
        (Method::GET, "/v1/status", get(status::status)),
        (Method::POST, "/v1/reconcile", post(status::reconcile)),
        (Method::POST, "/v1/tokens/rotate", post(tokens::rotate)),
    ]
}

/// The routes without it (the webhook route checks its own token).
fn open_routes() -> Vec<Route> {
    vec![
        (
            Method::POST,
            "/webhooks/segmind/{token}",
            post(webhooks::receive),
        ),
        (Method::GET, "/healthz", get(health::healthz)),
        (Method::GET, "/readyz", get(health::readyz)),
        (Method::GET, "/metrics", get(metrics::metrics)),
        (Method::GET, "/openapi.json", get(openapi::document)),
    ]
}

/// Every route the router serves, for checking the OpenAPI document.
pub fn route_table() -> Vec<(Method, &'static str)> {
    api_routes()
        .into_iter()
        .chain(open_routes())
        .map(|(method, path, _)| (method, path))
        .collect()
}

/// Every route: the API's, the open ones and, when `ui` is on, the
/// dashboard's (`src/ui/`).
pub fn router(state: AppState, request_timeout: Duration, ui: bool) -> Router {
    let api = api_routes()
        .into_iter()
        .fold(Router::new(), |router, (_, path, handler)| {
            router.route(path, handler)
        })
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_token,
        ))
        // Answers hold job data and tokens: never kept by a cache, never
        // read as another type than they say.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ));
    let open = open_routes()
        .into_iter()
        .fold(Router::new(), |router, (_, path, handler)| {
            router.route(path, handler)
        });

    let dashboard = if ui {
        crate::ui::router(state.clone())
    } else {
        Router::new()
    };
    open.merge(api)
        .merge(dashboard)
        .fallback(move |request: Request| not_found(ui, request))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            health::refuse_once_writer_stopped,
        ))
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

/// An unknown path: JSON in the API's error shape, or, when the dashboard
/// is on and a browser asks for a page outside the API's paths, a page.
async fn not_found(ui: bool, request: Request) -> Response {
    let api_path = [
        "/v1",
        "/webhooks",
        "/metrics",
        "/healthz",
        "/readyz",
        "/openapi.json",
    ]
    .iter()
    .any(|prefix| request.uri().path().starts_with(prefix));
    let wants_page = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if ui && wants_page && !api_path {
        return crate::ui::not_found_page();
    }
    ApiError::NotFound("no such route".into()).into_response()
}

async fn method_not_allowed() -> impl IntoResponse {
    let body = axum::Json(serde_json::json!({
        "error": {"code": "method_not_allowed", "message": "this route does not take that method"}
    }));
    (StatusCode::METHOD_NOT_ALLOWED, body)
}
