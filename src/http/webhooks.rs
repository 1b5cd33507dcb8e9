//! `POST /webhooks/segmind/{token}`: where Segmind's webhooks arrive.
//!
//! The token in the path is the credential (Segmind's console takes only a
//! URL). With the right token, every request is stored as a receipt, in the
//! same transaction as the job change it causes, before it is answered: a
//! 2xx means it is on disk; when the database cannot take it, 503.

use super::{AppState, error::ApiError, views};
use crate::{
    domain::Payload,
    store::{IngestRequest, IngestResult, Outcome},
    telemetry::metrics,
    time::now_rfc3339,
};
use axum::{
    Json,
    body::Body,
    extract::{Path, State, rejection::PathRejection},
    http::{HeaderMap, header},
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Request headers kept with each receipt; everything else is dropped.
const KEPT_HEADERS: [&str; 6] = [
    "content-type",
    "content-length",
    "user-agent",
    "x-request-id",
    "x-forwarded-for",
    "x-real-ip",
];

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReceiptResponse {
    pub receipt_id: i64,
    pub outcome: views::Outcome,
    pub finetune_id: Option<String>,
    pub status: Option<String>,
}

/// Where Segmind's console sends webhooks. The body is any JSON (read leniently);
/// it is stored before the answer.
#[utoipa::path(post, path = "/webhooks/segmind/{token}", tag = "webhooks",
    params(("token" = String, Path, description = "The ingest token (`tunehook tokens`)")),
    request_body(content = serde_json::Value, description = "Segmind's webhook payload: any JSON (read leniently, stored as received)", content_type = "application/json"),
    responses((status = 200, description = "Stored", body = ReceiptResponse),
        (status = 400, description = "Not JSON, or an unusable id or status (still stored)", body = super::error::ErrorBody),
        (status = 401, description = "Wrong token; nothing stored", body = super::error::ErrorBody),
        (status = 413, description = "Body larger than server.max_body_bytes", body = super::error::ErrorBody),
        (status = 503, description = "Not stored; retry (database unavailable or too many webhooks in flight)", body = super::error::ErrorBody)))]
pub async fn receive(
    State(state): State<AppState>,
    token: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ReceiptResponse>, ApiError> {
    // A token that cannot be read (not UTF-8) is not the token: 401.
    let token = token.map(|Path(token)| token).unwrap_or_default();
    let started = std::time::Instant::now();
    let answer = match Arc::clone(&state.webhook_permits).try_acquire_owned() {
        Ok(_permit) => store(&state, &token, &headers, body).await,
        Err(_) => Err(ApiError::Unavailable("too many webhooks in flight".into())),
    };
    let outcome = match &answer {
        Ok(receipt) => receipt.outcome.as_str(),
        Err(ApiError::BadRequest { .. }) => "invalid",
        Err(ApiError::Unauthorized | ApiError::UnknownWebhookToken) => "unauthorized",
        Err(ApiError::PayloadTooLarge { .. }) => "too_large",
        Err(_) => "unavailable",
    };
    metrics::webhook(outcome, started.elapsed());
    answer.map(|result| Json(ReceiptResponse::from(result)))
}

async fn store(
    state: &AppState,
    token: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<IngestResult, ApiError> {
    if !state.credentials.ingest.matches(token) {
        state.credentials.ingest_failures.failed();
        return Err(ApiError::UnknownWebhookToken);
    }
    let body = read_body(headers, body, state.max_body_bytes).await?;
    // Held until the writer has answered (dropped at the end of this call).
    let Some(_bytes) = state.webhook_bytes.try_take(body.len()) else {
        return Err(ApiError::Unavailable(
            "too many webhook bytes waiting to be stored".into(),
        ));
    };
    let payload = Payload::parse(&body).map_err(|e| e.to_string());
    let invalid = payload.as_ref().err().cloned();
    let request = IngestRequest {
        received_at: now_rfc3339(),
        body_sha256: hex::encode(Sha256::digest(&body)),
        headers: kept_headers(headers),
        payload,
        body: body.to_vec(),
        confirm_until: state.confirmer.deadline(),
        max_pending_confirmations: state.confirmer.max_pending(),
    };
    let result = state.store.ingest(request).await?;
    match result.outcome {
        Outcome::Confirming => state.confirmer.wake(),
        // Only a claim refused a place in the queue is dropped at once.
        Outcome::Dropped => metrics::confirmations("over_capacity", 1),
        _ => {}
    }
    if let (true, Some(id)) = (result.needs_details, &result.finetune_id) {
        state.reconciler.enrich(id);
    }
    if let (Outcome::Applied, Some(status)) = (result.outcome, &result.status) {
        metrics::transition(status, "webhook");
    }
    tracing::info!(
        receipt_id = result.receipt_id,
        finetune_id = result.finetune_id.as_deref().unwrap_or("-"),
        status = result.status.as_deref().unwrap_or("-"),
        previous_status = result.previous_status.as_deref().unwrap_or("-"),
        outcome = result.outcome.as_str(),
        "webhook stored"
    );
    if let Some(reason) = invalid {
        return Err(ApiError::bad_request(
            "invalid_payload",
            format!("{reason} (stored as receipt {})", result.receipt_id),
        ));
    }
    Ok(result)
}

impl From<IngestResult> for ReceiptResponse {
    fn from(result: IngestResult) -> ReceiptResponse {
        ReceiptResponse {
            receipt_id: result.receipt_id,
            outcome: result.outcome.into(),
            finetune_id: result.finetune_id,
            status: result.status,
        }
    }
}

/// Reads the whole body, refusing more than `limit` bytes (early when the
/// client announces its length).
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<axum::body::Bytes, ApiError> {
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if is_length_limit(&e) {
            ApiError::PayloadTooLarge { limit }
        } else {
            ApiError::bad_request("unreadable_body", "the request body could not be read")
        }
    })
}

fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

fn kept_headers(headers: &HeaderMap) -> String {
    let kept: serde_json::Map<String, serde_json::Value> = KEPT_HEADERS
        .iter()
        .filter_map(|name| {
            let value = headers.get(*name)?.to_str().ok()?;
            Some(((*name).to_owned(), value.into()))
        })
        .collect();
    serde_json::Value::Object(kept).to_string()
}
