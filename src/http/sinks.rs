//! `GET /v1/sinks` and `POST /v1/sinks/{name}/replay`.

use super::{
    AppState,
    error::{ApiError, ErrorBody},
    json::ApiJson,
    params::ApiPath,
    views::{Replayed, SinkHealth},
};
use crate::store::ReplayRequest;
use axum::{Json, extract::State};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SinkView {
    name: String,
    kind: String,
    /// The statuses forwarded; `null` forwards every status.
    statuses: Option<Vec<String>>,
    #[serde(flatten)]
    health: SinkHealth,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SinkList {
    sinks: Vec<SinkView>,
}

/// The configured sinks and their health.
#[utoipa::path(get, path = "/v1/sinks", tag = "sinks", security(("bearer" = [])),
    responses((status = 200, description = "The sinks", body = SinkList), (status = 401, description = "Missing or wrong bearer token", body = ErrorBody)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<SinkList>, ApiError> {
    let names: Vec<&str> = state.sinks.iter().map(|s| s.name.as_str()).collect();
    let mut health = state.store.sink_health(&names).await?;
    let sinks = state
        .sinks
        .iter()
        .map(|s| SinkView {
            name: s.name.clone(),
            kind: s.kind.clone(),
            statuses: s
                .status_filter()
                .map(|list| list.iter().map(|st| st.as_str().to_owned()).collect()),
            health: health
                .remove(&s.name)
                .map(SinkHealth::from)
                .unwrap_or_default(),
        })
        .collect();
    Ok(Json(SinkList { sinks }))
}

/// Events a replay takes when the request does not say.
const DEFAULT_REPLAY_LIMIT: i64 = 10_000;
/// The most events one replay request takes.
const MAX_REPLAY_LIMIT: i64 = 100_000;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    /// RFC 3339: events of transitions observed since then (inclusive).
    #[schema(format = DateTime)]
    since: String,
    /// Only this job's events.
    finetune_id: Option<String>,
    /// Events to take, 1 to 100,000; 10,000 when absent. A page runs on
    /// past it to the last event observed at the same time.
    #[schema(minimum = 1, maximum = 100_000)]
    #[serde(default, deserialize_with = "super::json::optional_integer")]
    limit: Option<i64>,
}

/// Enqueues past events to a sink again (its status filter applied),
/// oldest first, one page at a time; an event with a delivery to the sink
/// still pending is skipped, so sending the same request again is safe.
/// Pass `next_since` as `since` to continue; it is `null` at the end.
#[utoipa::path(post, path = "/v1/sinks/{name}/replay", tag = "sinks", params(("name" = String, Path, description = "The sink's name")),
    request_body = ReplayBody, security(("bearer" = [])),
    responses((status = 200, description = "Deliveries enqueued, events skipped (already pending), and where the next page starts", body = Replayed), (status = 400, description = "A bad parameter or body", body = ErrorBody), (status = 401, description = "Missing or wrong bearer token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody), (status = 503, description = "The database cannot take the write; retry", body = ErrorBody)))]
pub async fn replay(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<ReplayBody>,
) -> Result<Json<Replayed>, ApiError> {
    if !state.sinks.iter().any(|s| s.name == name) {
        return Err(ApiError::NotFound(format!("no sink named `{name}`")));
    }
    let since = chrono::DateTime::parse_from_rfc3339(&body.since).map_err(|_| {
        ApiError::bad_request(
            "invalid_body",
            "`since` must be an RFC 3339 time, such as 2026-01-01T00:00:00Z",
        )
    })?;
    let since = crate::time::rfc3339(since.with_timezone(&chrono::Utc));
    let limit = body.limit.unwrap_or(DEFAULT_REPLAY_LIMIT);
    if !(1..=MAX_REPLAY_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("`limit` must be from 1 to {MAX_REPLAY_LIMIT}"),
        ));
    }
    let replayed = state
        .store
        .replay(ReplayRequest {
            sink: name,
            since,
            finetune_id: body.finetune_id,
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
        })
        .await?;
    Ok(Json(replayed.into()))
}
