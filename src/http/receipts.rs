//! `GET /v1/receipts` and `GET /v1/receipts/{id}`: the webhook requests as
//! they were received. Lists carry the first 4 KiB of each body (bodies
//! reach 1 MiB, a page 500 receipts); one receipt carries its whole body.

use super::{
    AppState,
    error::ApiError,
    error::ErrorBody,
    params::{self, ApiPath, ApiQuery},
};
use crate::store::{Outcome, ReceiptFilter, ReceiptRow};
use axum::{Json, extract::State};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only receipts with this outcome: applied, duplicate, stale, unrecognized, invalid,
    /// confirming, contradicted or dropped.
    #[param(value_type = Option<super::views::Outcome>)]
    outcome: Option<String>,
    /// 1 to 500; 50 when absent.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<i64>)]
    cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Receipt {
    id: i64,
    received_at: String,
    outcome: String,
    finetune_id: Option<String>,
    status: Option<String>,
    event_id: Option<String>,
    error: Option<String>,
    /// With `ingest.confirm = "api"`: `pending`, `confirmed`, `contradicted`
    /// or `unconfirmed` (with outcome `dropped` and an `error` saying so when
    /// the claim was not queued because too many were waiting); `null` when
    /// confirmation was off.
    confirmation: Option<String>,
    body_sha256: String,
    #[schema(value_type = Object)]
    headers: Value,
    /// The body as JSON when it parses (any JSON value), else as (lossy
    /// UTF-8) text. In a list, a body longer than 4 KiB is cut there and
    /// shown as text.
    #[schema(value_type = Value)]
    body: Value,
    /// The whole body's length in bytes.
    body_bytes: i64,
    /// Whether `body` is only the start of it (`GET /v1/receipts/{id}`
    /// gives the whole).
    body_truncated: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReceiptList {
    receipts: Vec<Receipt>,
    next_cursor: Option<String>,
}

/// Webhook requests as received, newest first; bodies cut at 4 KiB.
#[utoipa::path(get, path = "/v1/receipts", tag = "receipts", params(ListParams), security(("bearer" = [])),
    responses((status = 200, description = "A page of receipts", body = ReceiptList), (status = 400, description = "A bad parameter or body", body = ErrorBody), (status = 401, description = "Missing or wrong bearer token", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListParams>,
) -> Result<Json<ReceiptList>, ApiError> {
    let outcome = match query.outcome.as_deref() {
        None => None,
        Some(raw) => Some(
            Outcome::parse(raw)
                .ok_or_else(|| {
                    let known: Vec<_> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
                    ApiError::bad_request(
                        "invalid_parameter",
                        format!("`outcome` must be one of {}", known.join(", ")),
                    )
                })?
                .as_str()
                .to_owned(),
        ),
    };
    let before_id = params::id_cursor(query.cursor.as_deref())?;
    let filter = ReceiptFilter {
        outcome,
        limit: params::limit(query.limit.as_deref())?,
        before_id,
    };
    let (rows, next) = state.store.receipts(&filter).await?;
    Ok(Json(ReceiptList {
        receipts: rows.into_iter().map(Receipt::from).collect(),
        next_cursor: next.map(|id| id.to_string()),
    }))
}

/// One webhook request as received, with its whole body.
#[utoipa::path(get, path = "/v1/receipts/{id}", tag = "receipts", params(("id" = i64, Path, description = "The receipt's id")), security(("bearer" = [])),
    responses((status = 200, description = "The receipt", body = Receipt), (status = 401, description = "Missing or wrong bearer token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<Receipt>, ApiError> {
    // Ids are integers: any other text names no receipt.
    let id: i64 = raw
        .parse()
        .map_err(|_| ApiError::NotFound(format!("no receipt with id `{raw}`")))?;
    match state.store.receipt(id).await? {
        Some(row) => Ok(Json(Receipt::from(row))),
        None => Err(ApiError::NotFound(format!("no receipt with id {id}"))),
    }
}

impl From<ReceiptRow> for Receipt {
    fn from(row: ReceiptRow) -> Receipt {
        let body_truncated = (row.body.len() as i64) < row.body_bytes;
        // A cut body is not JSON any more: show the start as text.
        let parsed = if body_truncated {
            None
        } else {
            serde_json::from_slice(&row.body).ok()
        };
        let body = parsed
            .unwrap_or_else(|| Value::String(String::from_utf8_lossy(&row.body).into_owned()));
        Receipt {
            id: row.id,
            received_at: row.received_at,
            outcome: row.outcome,
            finetune_id: row.finetune_id,
            status: row.status,
            event_id: row.event_id,
            error: row.error,
            confirmation: row.confirmation,
            body_sha256: row.body_sha256,
            headers: serde_json::from_str(&row.headers).unwrap_or(Value::Null),
            body,
            body_bytes: row.body_bytes,
            body_truncated,
        }
    }
}
