//! `GET /metrics`: Prometheus text format. Open by default; with
//! `metrics.require_token = true` it needs the API bearer token.
//!
//! The gauges that describe stored state (jobs per status, outbox depth,
//! the database's size)
//! cost a read of the database, so they are read at most once per
//! `metrics.cache` and the text is reused in between; scrapers arriving
//! while a read runs wait for it rather than start their own. The read runs
//! on a connection of its own, through indexes only (see
//! `Store::gauges`), so scrapers cannot slow the delivery workers.

use super::{AppState, error::ApiError};
use crate::telemetry::metrics;
use axum::{
    extract::State,
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::Mutex;

/// The gauges' text and when it was read.
pub struct GaugeCache {
    ttl: Duration,
    last: Mutex<Option<(Instant, Arc<String>)>>,
}

impl GaugeCache {
    pub fn new(ttl: Duration) -> GaugeCache {
        GaugeCache {
            ttl,
            last: Mutex::new(None),
        }
    }

    /// The gauges' text: the cached one while fresh, else read anew.
    async fn text(&self, state: &AppState) -> Result<Arc<String>, ApiError> {
        // Held across the read on purpose: one read serves every scraper
        // waiting on it.
        let mut last = self.last.lock().await;
        if let Some((at, text)) = last.as_ref() {
            if at.elapsed() < self.ttl {
                return Ok(Arc::clone(text));
            }
        }
        let gauges = state.store.gauges().await?;
        let outbox: Vec<(String, i64, i64)> = state
            .sinks
            .iter()
            .map(|s| {
                let (pending, dead) = gauges.outbox.get(&s.name).copied().unwrap_or_default();
                (s.name.clone(), pending, dead)
            })
            .collect();
        let database_bytes = state.store.database_bytes().await?;
        let mut text = metrics::render_gauges(&gauges.jobs_by_status, &outbox);
        text.push_str(&metrics::render_database_bytes(database_bytes));
        let text = Arc::new(text);
        *last = Some((Instant::now(), Arc::clone(&text)));
        Ok(text)
    }
}

/// Prometheus metrics, in text format.
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Metrics", content_type = "text/plain", body = String), (status = 401, description = "A token is required (metrics.require_token)", body = super::error::ErrorBody), (status = 503, description = "The database cannot be read; retry", body = super::error::ErrorBody)))]
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if state.metrics_require_token && !state.credentials.api.bearer_matches(&headers) {
        state.credentials.api_failures.failed();
        return Err(ApiError::Unauthorized);
    }
    let gauges = state.gauges.text(&state).await?;
    let mut text = metrics::render();
    text.push_str(&gauges);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}
