//! `GET /v1/jobs` and `GET /v1/jobs/{finetune_id}`.

use super::{
    AppState,
    error::ApiError,
    error::ErrorBody,
    params::{self, ApiPath, ApiQuery},
    views::{Drift, EventDelivery, Job, Transition, Update},
};
use crate::store::{JobFilter, TransitionDelivery};
use axum::{
    Json,
    extract::State,
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only jobs in this status (compared case-insensitively; `-` and `.` read as `_`).
    #[param(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    status: Option<String>,
    /// `true`: only jobs whose status differs from what Segmind's API last said of them.
    #[param(value_type = Option<bool>)]
    drift: Option<String>,
    /// 1 to 500; 50 when absent.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// `next_cursor` of the previous page (hex digits; any such string is a position in the order).
    #[param(pattern = "^([0-9a-fA-F]{2})*$")]
    cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobList<T> {
    jobs: Vec<T>,
    next_cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobDetail {
    #[serde(flatten)]
    job: Job,
    /// The last status Segmind's API reported (`NOT_FOUND` once its details
    /// have answered 404 for `reconcile.forget_after`), and when.
    segmind_status: Option<String>,
    segmind_seen_at: Option<String>,
    /// The last status a webhook reported that the job took or already had.
    webhook_status: Option<String>,
    transitions: Vec<TransitionDetail>,
    /// `finetune.updated` events: fields users act on that changed without
    /// a status change, oldest first.
    updates: Vec<UpdateDetail>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UpdateDetail {
    #[serde(flatten)]
    update: Update,
    /// This update's delivery to each sink.
    deliveries: Vec<EventDelivery>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TransitionDetail {
    #[serde(flatten)]
    transition: Transition,
    /// This transition's delivery to each sink.
    deliveries: Vec<EventDelivery>,
}

/// Jobs, most recently updated first.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(ListParams), security(("bearer" = [])),
    responses((status = 200, description = "A page of jobs (with `drift=true`, each also has `segmind_status`, `webhook_status` and `segmind_seen_at`)", body = JobList<Job>), (status = 400, description = "A bad parameter or body", body = ErrorBody), (status = 401, description = "Missing or wrong bearer token", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListParams>,
) -> Result<Response, ApiError> {
    // Every parameter is checked, whichever listing it serves: the server
    // takes exactly what the document declares.
    let status = params::status(query.status.as_deref())?.map(|s| s.as_str().to_owned());
    let limit = params::limit(query.limit.as_deref())?;
    let after = query
        .cursor
        .as_deref()
        .map(params::decode_job_cursor)
        .transpose()?;
    match query.drift.as_deref() {
        None | Some("false") => {}
        Some("true") => {
            let jobs = state.store.drifting_jobs(limit).await?;
            return Ok(Json(JobList {
                jobs: jobs.into_iter().map(Drift::from).collect(),
                next_cursor: None,
            })
            .into_response());
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                "`drift` must be true or false",
            ));
        }
    }
    let filter = JobFilter {
        status,
        limit,
        after,
    };
    let page = state.store.jobs(&filter).await?;
    Ok(Json(JobList {
        jobs: page.jobs.into_iter().map(Job::from).collect(),
        next_cursor: page
            .next
            .map(|(at, id)| params::encode_job_cursor(&at, &id)),
    })
    .into_response())
}

/// One job with its transitions, oldest first, and their deliveries.
#[utoipa::path(get, path = "/v1/jobs/{finetune_id}", tag = "jobs", params(("finetune_id" = String, Path, description = "The job's id")),
    security(("bearer" = [])), responses((status = 200, description = "The job", body = JobDetail), (status = 400, description = "A bad parameter", body = ErrorBody), (status = 401, description = "Missing or wrong bearer token", body = ErrorBody), (status = 404, description = "Not found", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(finetune_id): ApiPath<String>,
) -> Result<Json<JobDetail>, ApiError> {
    detail(&state, &finetune_id).await.map(Json)
}

/// The job as `GET /v1/jobs/{finetune_id}` shows it; 404 when unknown.
pub(super) async fn detail(state: &AppState, finetune_id: &str) -> Result<JobDetail, ApiError> {
    let finetune_id = finetune_id.to_owned();
    let job =
        state.store.job(&finetune_id).await?.ok_or_else(|| {
            ApiError::NotFound(format!("no job with finetune_id `{finetune_id}`"))
        })?;
    let (segmind_status, webhook_status, segmind_seen_at) =
        state.store.job_sources(&finetune_id).await?;
    let mut deliveries = state.store.job_deliveries(&finetune_id).await?;
    let mut take = |event_id: &str| -> Vec<EventDelivery> {
        let (mine, rest): (Vec<TransitionDelivery>, _) =
            deliveries.drain(..).partition(|d| d.event_id == event_id);
        deliveries = rest;
        mine.into_iter().map(EventDelivery::from).collect()
    };
    let transitions = state
        .store
        .transitions(&finetune_id)
        .await?
        .into_iter()
        .map(|transition| TransitionDetail {
            deliveries: take(&transition.id),
            transition: transition.into(),
        })
        .collect();
    let updates = state
        .store
        .updates(&finetune_id)
        .await?
        .into_iter()
        .map(|update| UpdateDetail {
            deliveries: take(&update.id),
            update: update.into(),
        })
        .collect();
    Ok(JobDetail {
        job: job.into(),
        segmind_status,
        segmind_seen_at,
        webhook_status,
        transitions,
        updates,
    })
}
