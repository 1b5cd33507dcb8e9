//! `GET /v1/deliveries`, `GET /v1/deliveries/{id}` and
//! `POST /v1/deliveries/{id}/retry`.

use super::{
    AppState,
    error::ApiError,
    params::{self, ApiQuery},
};
use crate::store::{AttemptRow, DeliveryFilter, DeliveryRow};
use axum::{
    Json,
    extract::{Path, State},
};
use serde::{Deserialize, Serialize};

const STATUSES: [&str; 3] = ["pending", "delivered", "dead"];

#[derive(Debug, Deserialize)]
pub struct ListParams {
    status: Option<String>,
    sink: Option<String>,
    finetune_id: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct DeliveryList {
    deliveries: Vec<DeliveryRow>,
    next_cursor: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    delivery: DeliveryRow,
    attempt_log: Vec<AttemptRow>,
}

pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListParams>,
) -> Result<Json<DeliveryList>, ApiError> {
    let status = query.status.filter(|s| !s.is_empty());
    if let Some(status) = &status {
        if !STATUSES.contains(&status.as_str()) {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                format!("`status` must be one of {}", STATUSES.join(", ")),
            ));
        }
    }
    let filter = DeliveryFilter {
        status,
        sink: query.sink.filter(|s| !s.is_empty()),
        finetune_id: query.finetune_id.filter(|s| !s.is_empty()),
        limit: params::limit(query.limit.as_deref())?,
        before_id: params::id_cursor(query.cursor.as_deref())?,
    };
    let (deliveries, next) = state.store.deliveries(&filter).await?;
    Ok(Json(DeliveryList {
        deliveries,
        next_cursor: next.map(|id| id.to_string()),
    }))
}

pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeliveryDetail>, ApiError> {
    let id = delivery_id(&id)?;
    let delivery = state
        .store
        .delivery(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no delivery with id {id}")))?;
    let attempt_log = state.store.attempts(id).await?;
    Ok(Json(DeliveryDetail {
        delivery,
        attempt_log,
    }))
}

pub async fn retry(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeliveryRow>, ApiError> {
    let id = delivery_id(&id)?;
    let Some(current) = state.store.delivery(id).await? else {
        return Err(ApiError::NotFound(format!("no delivery with id {id}")));
    };
    if !state.store.retry_delivery(id).await? {
        return Err(ApiError::Conflict(format!(
            "delivery {id} is {}; only dead or delivered deliveries can be retried",
            current.status
        )));
    }
    let delivery = state
        .store
        .delivery(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no delivery with id {id}")))?;
    Ok(Json(delivery))
}

fn delivery_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::NotFound(format!("no delivery with id `{raw}`")))
}
