//! Applying one observation of a job's status to the database, under the
//! state rules of `domain::rules`.
//!
//! The single writer makes these steps race-free; the schema still has the
//! last word: the job update is a compare-and-set on the status it read, and
//! a status can be recorded only once per job (`UNIQUE (finetune_id,
//! to_status)`). When either refuses, the caller rolls back and tries again.

use crate::domain::{Decision, JobFields, Source, Status, decide};
use sqlx::SqliteConnection;

/// One sighting of a job's status, from a webhook or from Segmind's API.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    pub finetune_id: &'a str,
    pub status: &'a Status,
    pub fields: &'a JobFields,
    pub source: Source,
    pub observed_at: &'a str,
}

/// What `plan` found and decided, to be carried out by `apply`.
#[derive(Debug)]
pub struct Plan {
    pub decision: Decision,
    pub previous: Option<String>,
    existing: Option<ExistingJob>,
}

#[derive(Debug, sqlx::FromRow)]
struct ExistingJob {
    status: String,
    name: Option<String>,
    base_model: Option<String>,
    slug: Option<String>,
    trained_model_url: Option<String>,
    inference_api_url: Option<String>,
    cloud_storage_url: Option<String>,
    error_message: Option<String>,
    created_ts: Option<String>,
    updated_ts: Option<String>,
}

/// Why `apply` did not complete. `Conflict` means the schema refused a step
/// the plan expected to succeed (another write got there first): roll back
/// and plan again.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("a concurrent write changed the job")]
    Conflict,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Reads the job and decides what the observation does to it.
pub async fn plan(conn: &mut SqliteConnection, obs: &Observation<'_>) -> Result<Plan, sqlx::Error> {
    let existing: Option<ExistingJob> = sqlx::query_as(
        "SELECT status, name, base_model, slug, trained_model_url, inference_api_url,
                cloud_storage_url, error_message, created_ts, updated_ts
         FROM jobs WHERE finetune_id = ?",
    )
    .bind(obs.finetune_id)
    .fetch_optional(&mut *conn)
    .await?;

    let current = existing
        .as_ref()
        .map(|job| Status::from_stored(&job.status));
    let mut decision = decide(current.as_ref(), obs.status, obs.source);
    if decision == Decision::Apply && existing.is_some() {
        // A status is recorded once per job: seeing it again later (after the
        // job moved on through a same-rank change) is stale, not a new step.
        let recorded: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM transitions WHERE finetune_id = ? AND to_status = ?")
                .bind(obs.finetune_id)
                .bind(obs.status.as_str())
                .fetch_optional(&mut *conn)
                .await?;
        if recorded.is_some() {
            decision = Decision::Stale;
        }
    }
    Ok(Plan {
        decision,
        previous: existing.as_ref().map(|job| job.status.clone()),
        existing,
    })
}

/// Carries out a plan: moves the job and records the transition, or only
/// fills the job's empty fields. Returns the new transition's id when one
/// was recorded.
pub async fn apply(
    conn: &mut SqliteConnection,
    obs: &Observation<'_>,
    plan: &Plan,
    receipt_id: Option<i64>,
) -> Result<Option<String>, ApplyError> {
    let f = obs.fields;
    match (&plan.decision, &plan.existing) {
        (Decision::Apply, None) => {
            let inserted = sqlx::query(
                "INSERT INTO jobs (finetune_id, status, status_rank, name, base_model, slug,
                    trained_model_url, inference_api_url, cloud_storage_url, error_message,
                    created_ts, updated_ts, first_seen_at, updated_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (finetune_id) DO NOTHING",
            )
            .bind(obs.finetune_id)
            .bind(obs.status.as_str())
            .bind(obs.status.rank())
            .bind(&f.name)
            .bind(&f.base_model)
            .bind(&f.slug)
            .bind(&f.trained_model_url)
            .bind(&f.inference_api_url)
            .bind(&f.cloud_storage_url)
            .bind(&f.error_message)
            .bind(&f.created_ts)
            .bind(&f.updated_ts)
            .bind(obs.observed_at)
            .bind(obs.observed_at)
            .execute(&mut *conn)
            .await?;
            if inserted.rows_affected() == 0 {
                return Err(ApplyError::Conflict);
            }
        }
        (Decision::Apply, Some(existing)) => {
            // Newer information wins: fields the observation carries replace
            // the stored ones.
            let updated = sqlx::query(
                "UPDATE jobs SET status = ?, status_rank = ?, updated_at = ?,
                    name = COALESCE(?, name), base_model = COALESCE(?, base_model),
                    slug = COALESCE(?, slug), trained_model_url = COALESCE(?, trained_model_url),
                    inference_api_url = COALESCE(?, inference_api_url),
                    cloud_storage_url = COALESCE(?, cloud_storage_url),
                    error_message = COALESCE(?, error_message),
                    created_ts = COALESCE(?, created_ts), updated_ts = COALESCE(?, updated_ts)
                 WHERE finetune_id = ? AND status = ?",
            )
            .bind(obs.status.as_str())
            .bind(obs.status.rank())
            .bind(obs.observed_at)
            .bind(&f.name)
            .bind(&f.base_model)
            .bind(&f.slug)
            .bind(&f.trained_model_url)
            .bind(&f.inference_api_url)
            .bind(&f.cloud_storage_url)
            .bind(&f.error_message)
            .bind(&f.created_ts)
            .bind(&f.updated_ts)
            .bind(obs.finetune_id)
            .bind(&existing.status)
            .execute(&mut *conn)
            .await?;
            if updated.rows_affected() == 0 {
                return Err(ApplyError::Conflict);
            }
        }
        (_, Some(existing)) => {
            fill_empty_fields(conn, obs, existing).await?;
            return Ok(None);
        }
        (_, None) => return Ok(None),
    }

    let transition_id = new_transition_id();
    let recorded = sqlx::query(
        "INSERT INTO transitions (event_id, finetune_id, from_status, to_status, source, observed_at, receipt_id)
         VALUES (?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (finetune_id, to_status) DO NOTHING",
    )
    .bind(&transition_id)
    .bind(obs.finetune_id)
    .bind(&plan.previous)
    .bind(obs.status.as_str())
    .bind(obs.source.as_str())
    .bind(obs.observed_at)
    .bind(receipt_id)
    .execute(&mut *conn)
    .await?;
    if recorded.rows_affected() == 0 {
        return Err(ApplyError::Conflict);
    }
    Ok(Some(transition_id))
}

/// A duplicate or stale observation may still bring what the job lacks, such
/// as a late TRAINING_COMPLETED carrying `trained_model_url`. Only empty
/// fields are filled; the status never changes here.
async fn fill_empty_fields(
    conn: &mut SqliteConnection,
    obs: &Observation<'_>,
    job: &ExistingJob,
) -> Result<(), sqlx::Error> {
    let f = obs.fields;
    let pairs = [
        (&job.name, &f.name),
        (&job.base_model, &f.base_model),
        (&job.slug, &f.slug),
        (&job.trained_model_url, &f.trained_model_url),
        (&job.inference_api_url, &f.inference_api_url),
        (&job.cloud_storage_url, &f.cloud_storage_url),
        (&job.error_message, &f.error_message),
        (&job.created_ts, &f.created_ts),
        (&job.updated_ts, &f.updated_ts),
    ];
    if !pairs
        .iter()
        .any(|(stored, seen)| stored.is_none() && seen.is_some())
    {
        return Ok(());
    }
    sqlx::query(
        "UPDATE jobs SET updated_at = ?,
            name = COALESCE(name, ?), base_model = COALESCE(base_model, ?),
            slug = COALESCE(slug, ?), trained_model_url = COALESCE(trained_model_url, ?),
            inference_api_url = COALESCE(inference_api_url, ?),
            cloud_storage_url = COALESCE(cloud_storage_url, ?),
            error_message = COALESCE(error_message, ?),
            created_ts = COALESCE(created_ts, ?), updated_ts = COALESCE(updated_ts, ?)
         WHERE finetune_id = ?",
    )
    .bind(obs.observed_at)
    .bind(&f.name)
    .bind(&f.base_model)
    .bind(&f.slug)
    .bind(&f.trained_model_url)
    .bind(&f.inference_api_url)
    .bind(&f.cloud_storage_url)
    .bind(&f.error_message)
    .bind(&f.created_ts)
    .bind(&f.updated_ts)
    .bind(obs.finetune_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A transition's id: stable, unique, and safe in a URL.
fn new_transition_id() -> String {
    format!("tr_{}", hex::encode(rand::random::<[u8; 16]>()))
}
