//! `GET /v1/status` (what the service is doing, whether Segmind is
//! reachable, the last prune) and `POST /v1/reconcile` (run a pass now).

use super::{
    AppState,
    error::{ApiError, ErrorBody},
    views::{PassReport, RetentionState},
};
use crate::reconcile::{PassError, ReconcileState};
use axum::{Json, extract::State};
use serde::Serialize;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Status {
    version: &'static str,
    started_at: String,
    uptime_seconds: u64,
    /// Where Segmind's console should send webhooks (`tunehook tokens`
    /// prints the full URL).
    webhook_path: &'static str,
    reconciler: ReconcileState,
    retention: RetentionState,
    sinks: Vec<SinkCounts>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SinkCounts {
    name: String,
    pending: i64,
    dead: i64,
}

/// What the service is doing: version, uptime, the reconciler, the sinks.
#[utoipa::path(get, path = "/v1/status", tag = "status", security(("bearer" = [])),
    responses((status = 200, description = "The status", body = Status), (status = 401, description = "Missing or wrong bearer token", body = ErrorBody)))]
pub async fn status(State(state): State<AppState>) -> Result<Json<Status>, ApiError> {
    let counts = state.store.outbox_counts().await?;
    let sinks = state
        .sinks
        .iter()
        .map(|s| {
            let (pending, dead) = counts.get(&s.name).copied().unwrap_or_default();
            SinkCounts {
                name: s.name.clone(),
                pending,
                dead,
            }
        })
        .collect();
    Ok(Json(Status {
        version: env!("CARGO_PKG_VERSION"),
        started_at: state.started_at.clone(),
        uptime_seconds: state.started.elapsed().as_secs(),
        webhook_path: "/webhooks/segmind/{ingest token}",
        reconciler: state.reconciler.state(),
        retention: RetentionState::new(&state.retention, state.store.last_prune().await?),
        sinks,
    }))
}

/// Runs a reconcile pass now and answers its summary.
#[utoipa::path(post, path = "/v1/reconcile", tag = "status", security(("bearer" = [])),
    responses((status = 200, description = "The pass's summary", body = PassReport), (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 409, description = "The reconciler is off (no SEGMIND_API_KEY)", body = ErrorBody),
        (status = 502, description = "Segmind failed; `code` says how (auth_failed, rate_limited, server_error, timeout, unreachable, undecodable, redirected, too_large, rejected)", body = ErrorBody), (status = 503, description = "The database cannot take the write; retry", body = ErrorBody)))]
pub async fn reconcile(State(state): State<AppState>) -> Result<Json<PassReport>, ApiError> {
    state
        .reconciler
        .run_pass()
        .await
        .map(|report| Json(report.into()))
        .map_err(|e| match e {
            PassError::Disabled => ApiError::Conflict(e.to_string()),
            PassError::Store(e) => e.into(),
            PassError::Segmind(e) => ApiError::Upstream {
                code: PassError::Segmind(e.clone()).kind(),
                message: e.to_string(),
            },
        })
}
