//! `GET /healthz` (the process runs) and `GET /readyz` (the database answers
//! and is migrated). Neither needs a token.

use super::AppState;
use axum::{Json, extract::State, http::StatusCode};
use serde_json::{Value, json};

/// 200 while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "Alive")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
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
