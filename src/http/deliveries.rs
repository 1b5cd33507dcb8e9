//! `GET /v1/deliveries`, `GET /v1/deliveries/{id}` and
//! `POST /v1/deliveries/{id}/retry`.

use super::{
    AppState,
    error::{ApiError, ErrorBody},
    params::{self, ApiPath, ApiQuery},
    views::{Attempt, Delivery},
};
use crate::store::DeliveryFilter;
use axum::{Json, extract::State};
use serde::{Deserialize, Serialize};

const STATUSES: [&str; 3] = ["pending", "delivered", "dead"];

/// A delivery's status.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting for an attempt (or behind an earlier delivery of its job).
    Pending,
    Delivered,
    /// Out of attempts; kept, and retryable by hand.
    Dead,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only deliveries in this status.
    #[param(value_type = Option<DeliveryStatus>, inline)]
    status: Option<String>,
    /// Only this sink's deliveries.
    sink: Option<String>,
    /// Only this job's deliveries.
    finetune_id: Option<String>,
    /// 1 to 500; 50 when absent.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(value_type = Option<i64>)]
    cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryList {
    deliveries: Vec<Delivery>,
    next_cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    delivery: Delivery,
    attempt_log: Vec<Attempt>,
}

/// Deliveries, newest first.
#[utoipa::path(get, path = "/v1/deliveries", tag = "deliveries", params(ListParams), security(("bearer" = [])),
    responses((status = 200, description = "A page of deliveries", body = DeliveryList), (status = 400, description = "A bad parameter or body", body = ErrorBody), (status = 401, description = "Missing or wrong bearer token", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListParams>,
) -> Result<Json<DeliveryList>, ApiError> {
    let status = query.status;
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
        sink: query.sink,
        finetune_id: query.finetune_id,
        limit: params::limit(query.limit.as_deref())?,
        before_id: params::id_cursor(query.cursor.as_deref())?,
    };
    let (deliveries, next) = state.store.deliveries(&filter).await?;
    Ok(Json(DeliveryList {
        deliveries: deliveries.into_iter().map(Delivery::from).collect(),
        next_cursor: next.map(|id| id.to_string()),
    }))
}

/// One delivery with every attempt made.
#[utoipa::path(get, path = "/v1/deliveries/{id}", tag = "deliveries", params(("id" = i64, Path, description = "The delivery's id")),
    security(("bearer" = [])), responses((status = 200, description = "The delivery", body = DeliveryDetail), (status = 400, description = "A bad parameter", body = ErrorBody), (status = 401, description = "Missing or wrong bearer token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DeliveryDetail>, ApiError> {
    let id = delivery_id(&id)?;
    let delivery = state
        .store
        .delivery(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no delivery with id {id}")))?;
    let attempt_log = state.store.attempts(id).await?;
    Ok(Json(DeliveryDetail {
        delivery: delivery.into(),
        attempt_log: attempt_log.into_iter().map(Attempt::from).collect(),
    }))
}

/// Puts a dead or delivered delivery back to pending, due now.
#[utoipa::path(post, path = "/v1/deliveries/{id}/retry", tag = "deliveries", params(("id" = i64, Path, description = "The delivery's id")),
    security(("bearer" = [])), responses((status = 200, description = "The delivery, pending again", body = Delivery), (status = 400, description = "A bad parameter", body = ErrorBody), (status = 401, description = "Missing or wrong bearer token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "The delivery is already pending", body = ErrorBody), (status = 503, description = "The database cannot take the write; retry", body = ErrorBody)))]
pub async fn retry(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Delivery>, ApiError> {
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
    Ok(Json(delivery.into()))
}

fn delivery_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::NotFound(format!("no delivery with id `{raw}`")))
}
