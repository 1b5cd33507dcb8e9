//! `GET /healthz` (the process runs and can store) and `GET /readyz` (the
//! database answers and is migrated). Neither needs a token.
//!
//! Once the database writer has stopped on its own, nothing can be stored,
//! so no route may answer as if things were fine: [`refuse_once_writer_stopped`]
//! answers 503 to every request, these two included, until the process
//! exits (see `app.rs`).

use super::{AppState, error::ApiError};
use axum::{
    Json,
    extract::{Request, State},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

/// 200 while the process runs and its database writer works; 503 once the
/// writer has stopped (the process is about to exit).
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "Alive"), (status = 503, description = "The database writer stopped; the process exits", body = super::error::ErrorBody)))]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Middleware on every route: 503 once the writer has stopped.
pub async fn refuse_once_writer_stopped(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if state.store.writer_failure().is_some() {
        return ApiError::Unavailable("the database writer has stopped".into()).into_response();
    }
    next.run(request).await
}

/// 200 when the database answers and the migrations are applied.
#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, description = "Ready"), (status = 503, description = "Not ready", body = super::error::ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    if state.store.ready().await {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": {"code": "not_ready", "message": "the database is not ready"}})),
        )
    }
}
