//! `GET /metrics`: Prometheus text format. Open by default; with
//! `metrics.require_token = true` it needs the API bearer token.

use super::{AppState, auth, error::ApiError};
use crate::telemetry::metrics;
use axum::{
    extract::State,
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
};

/// Prometheus metrics, in text format.
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Metrics", content_type = "text/plain", body = String), (status = 401, description = "A token is required (metrics.require_token)", body = super::error::ErrorBody)))]
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if state.metrics_require_token && !auth::bearer_matches(&headers, state.api_token.expose()) {
        return Err(ApiError::Unauthorized);
    }
    let jobs = state.store.jobs_by_status().await?;
    let mut health = state.store.sink_health().await?;
    let outbox: Vec<(String, i64, i64)> = state
        .sinks
        .iter()
        .map(|s| {
            let h = health.remove(&s.name).unwrap_or_default();
            (s.name.clone(), h.pending, h.dead)
        })
        .collect();
    let database_bytes = state.store.database_bytes().await?;
    let mut text = metrics::render();
    text.push_str(&metrics::render_gauges(&jobs, &outbox));
    text.push_str(&metrics::render_database_bytes(database_bytes));
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}
