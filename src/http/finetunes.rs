//! `POST /v1/finetunes` (submit a fine-tune to Segmind) and
//! `PUT /v1/jobs/{finetune_id}/access` (make its model public or private).
//!
//! A submission is checked first, with the same rules as
//! `tunehook segmind submit` (`domain::finetune_request`) and the public
//! URL checks of `dataset::remote`: nothing reaches Segmind, which charges
//! for a job, until every avoidable mistake is ruled out. The job is then
//! recorded as `REQUESTED` (source `api`) through the store's planner, so it
//! is tracked, and announced to sinks, from its first moment. An
//! `Idempotency-Key` header makes a retried request get the first answer
//! instead of paying for a second job.

use super::{
    AppState,
    error::{ApiError, ErrorBody, FieldError},
    jobs::{self, JobDetail},
    json::ApiJson,
    params::ApiPath,
};
use crate::{
    domain::finetune_request::{self, DatasetLocation, SubmitRequest},
    reconcile::PassError,
    segmind::{SegmindClient, SegmindError},
    store::{Claim, Submission},
};
use axum::{
    Json,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Longest `Idempotency-Key` kept.
const MAX_KEY_LEN: usize = 255;

/// Submits a fine-tune to Segmind, after checking it, and records the job.
#[utoipa::path(post, path = "/v1/finetunes", tag = "finetunes", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "A retried request with the same key gets the first answer (at most 255 visible ASCII characters)")),
    request_body(content = Object, description = "Segmind's submit body: `name`, `data_source_path` (a public ZIP URL or the `s3_url` of an upload) and `instance_prompt` required; `trigger_word`, `base_model`, `theme`, `segmind_public`, `advance_parameters` (`iterations`, `captioning`, `priority`, `finetune_type`, `lora_rank`, `learning_rate`) optional, with Segmind's defaults"),
    responses((status = 201, description = "Segmind accepted the job; it is recorded as REQUESTED", body = JobDetail),
        (status = 400, description = "A body that is not JSON, or a bad Idempotency-Key", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 409, description = "No Segmind API key is configured (`segmind_not_configured`), or a request with this Idempotency-Key is in flight", body = ErrorBody),
        (status = 422, description = "The request breaks Segmind's rules (`invalid_request`, with `fields`), or the Idempotency-Key was used with another body", body = ErrorBody),
        (status = 502, description = "Segmind refused or failed; its status and message", body = ErrorBody),
        (status = 503, description = "The database cannot take the write; retry", body = ErrorBody)))]
pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let request = finetune_request::validate(&body).map_err(|invalid| ApiError::Invalid {
        message: format!(
            "the request breaks {} rule(s); nothing was sent to Segmind",
            invalid.0.len()
        ),
        fields: invalid
            .0
            .into_iter()
            .map(|p| FieldError {
                field: p.field,
                message: p.message,
            })
            .collect(),
    })?;
    segmind_client(&state)?;
    let key = idempotency_key(&headers)?;
    if let Some(key) = &key {
        let hash = hex::encode(Sha256::digest(
            serde_json::to_vec(&request).map_err(|e| ApiError::Internal(e.into()))?,
        ));
        match state.store.claim_idempotency_key(key, &hash).await? {
            Claim::Fresh => {}
            Claim::Done {
                finetune_id,
                response,
            } => return replay(&state, &finetune_id, response).await,
            Claim::Mismatch => {
                return Err(ApiError::Unprocessable {
                    code: "idempotency_key_reused",
                    message: "this Idempotency-Key was used with another request body".into(),
                });
            }
            Claim::InProgress => {
                return Err(ApiError::Conflict(
                    "a request with this Idempotency-Key is being sent to Segmind; retry shortly"
                        .into(),
                ));
            }
        }
    }
    // Once claimed, the submission runs to its end on a task of its own:
    // a client that disconnects, or the request timeout, must not leave a
    // job paid for at Segmind but unrecorded here, or a key claimed forever.
    let task = tokio::spawn(complete(state.clone(), request, key));
    task.await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("the submission task failed: {e}")))?
}

/// Sends a checked request to Segmind, records the job and keeps the
/// answer for the request's `Idempotency-Key`.
async fn complete(
    state: AppState,
    request: SubmitRequest,
    key: Option<String>,
) -> Result<Response, ApiError> {
    let submitted = match segmind_client(&state) {
        Ok(client) => send(&state, client, &request).await,
        Err(e) => Err(e),
    };
    let finetune_id = match submitted {
        Ok(id) => id,
        Err(e) => {
            // Nothing was created: a retry with the same key asks again.
            if let Some(key) = &key {
                state.store.release_idempotency_key(key).await?;
            }
            return Err(e);
        }
    };
    let recorded = state
        .store
        .record_submission(Submission {
            finetune_id: finetune_id.clone(),
            request,
            idempotency_key: key.clone(),
        })
        .await?;
    if recorded.transition {
        crate::telemetry::metrics::transition("REQUESTED", "api");
    }
    let job = jobs::detail(&state, &finetune_id).await?;
    let text = serde_json::to_string(&job).map_err(|e| ApiError::Internal(e.into()))?;
    if let Some(key) = &key {
        state.store.store_idempotent_answer(key, &text).await?;
    }
    Ok(created(text, false))
}

/// Checks the dataset URL, then submits; the new job's id.
async fn send(
    state: &AppState,
    client: &SegmindClient,
    request: &SubmitRequest,
) -> Result<String, ApiError> {
    let url = match finetune_request::dataset_location(&request.data_source_path) {
        DatasetLocation::Url(url) => url,
        DatasetLocation::Local(_) => {
            return Err(invalid_dataset(vec![
                "must be an http(s) URL: a public ZIP, or the s3_url of `tunehook segmind upload`"
                    .into(),
            ]));
        }
    };
    let report = state.url_checker.check(url).await;
    for note in &report.notes {
        // Redirects and skipped checks: worth a line, not a refusal.
        tracing::info!(note = %note, "dataset check");
    }
    if !report.is_ok() {
        return Err(invalid_dataset(
            report.problems.iter().map(ToString::to_string).collect(),
        ));
    }
    let answer = client.submit(request).await.map_err(upstream)?;
    answer
        .job_id()
        .map(str::to_owned)
        .ok_or_else(|| ApiError::Upstream {
            code: "undecodable",
            message: "Segmind accepted the request but its answer names no finetune id".into(),
        })
}

fn invalid_dataset(problems: Vec<String>) -> ApiError {
    ApiError::Invalid {
        message: "the dataset would fail at Segmind; nothing was sent".into(),
        fields: problems
            .into_iter()
            .map(|message| FieldError {
                field: "data_source_path".into(),
                message,
            })
            .collect(),
    }
}

/// The answer to a retried request: the first one when it was kept, else
/// the job that request made, as it is now.
async fn replay(
    state: &AppState,
    finetune_id: &str,
    response: Option<String>,
) -> Result<Response, ApiError> {
    let text = match response {
        Some(text) => text,
        None => serde_json::to_string(&jobs::detail(state, finetune_id).await?)
            .map_err(|e| ApiError::Internal(e.into()))?,
    };
    Ok(created(text, true))
}

fn created(text: String, replayed: bool) -> Response {
    let mut response = (
        StatusCode::CREATED,
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        text,
    )
        .into_response();
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "send one Idempotency-Key header, not several",
        ));
    }
    match value.to_str() {
        Ok(key)
            if !key.is_empty()
                && key.len() <= MAX_KEY_LEN
                && key.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(key.to_owned()))
        }
        _ => Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )),
    }
}

fn segmind_client(state: &AppState) -> Result<&SegmindClient, ApiError> {
    state
        .reconciler
        .client()
        .ok_or_else(|| ApiError::NotConfigured {
            code: "segmind_not_configured",
            message: "no Segmind API key is configured: set SEGMIND_API_KEY (segmind.api_key) to submit fine-tunes and change access".into(),
        })
}

/// Segmind's refusal, with its status and message (never the key).
fn upstream(e: SegmindError) -> ApiError {
    ApiError::Upstream {
        code: PassError::Segmind(e.clone()).kind(),
        message: e.to_string(),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessBody {
    /// Whether the model is public on Segmind.
    public: bool,
}

/// Makes a job's model public or private on Segmind, and records it.
#[utoipa::path(put, path = "/v1/jobs/{finetune_id}/access", tag = "finetunes", security(("bearer" = [])),
    params(("finetune_id" = String, Path, description = "The job's id")),
    request_body = AccessBody,
    responses((status = 200, description = "Segmind took the change; the job with its `public_model`", body = JobDetail),
        (status = 400, description = "A bad body", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "No Segmind API key is configured", body = ErrorBody),
        (status = 502, description = "Segmind refused or failed; its status and message", body = ErrorBody),
        (status = 503, description = "The database cannot take the write; retry", body = ErrorBody)))]
pub async fn access(
    State(state): State<AppState>,
    ApiPath(finetune_id): ApiPath<String>,
    ApiJson(body): ApiJson<AccessBody>,
) -> Result<Json<JobDetail>, ApiError> {
    if state.store.job(&finetune_id).await?.is_none() {
        return Err(ApiError::NotFound(format!(
            "no job with finetune_id `{finetune_id}`"
        )));
    }
    let client = segmind_client(&state)?;
    client
        .access_update(&finetune_id, body.public)
        .await
        .map_err(upstream)?;
    if state
        .store
        .record_access(&finetune_id, body.public)
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound(format!(
            "no job with finetune_id `{finetune_id}`"
        )));
    }
    jobs::detail(&state, &finetune_id).await.map(Json)
}
