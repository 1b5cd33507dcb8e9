//! Jobs and transitions in bulk: load the jobs a batch names, then write back
//! the ones that changed and the transitions recorded, a few statements per
//! batch rather than several per request.
//!
//! The schema keeps the last word on duplicates: transitions are inserted
//! without `ON CONFLICT`, so a second row for the same job and status
//! (`UNIQUE (finetune_id, to_status)`) fails the write instead of passing.

use crate::domain::{Job, JobFields, Source, Status};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use std::collections::{BTreeSet, HashMap};

/// Rows per multi-row statement, well under SQLite's limit on bound values.
const CHUNK: usize = 400;

/// A transition to record.
#[derive(Debug, Clone)]
pub struct NewTransition {
    pub event_id: String,
    pub finetune_id: String,
    pub from_status: Option<String>,
    pub to_status: String,
    pub source: Source,
    pub observed_at: String,
    pub receipt_id: Option<i64>,
    /// The event sent to sinks for this transition, as JSON text.
    pub event: String,
}

/// The jobs with these ids, with every status recorded for each; an id with
/// no job maps to `None`.
pub async fn load(
    conn: &mut SqliteConnection,
    ids: &BTreeSet<&str>,
) -> Result<HashMap<String, Option<Job>>, sqlx::Error> {
    let mut jobs: HashMap<String, Option<Job>> =
        ids.iter().map(|id| ((*id).to_owned(), None)).collect();
    let ids: Vec<&str> = ids.iter().copied().collect();
    for chunk in ids.chunks(CHUNK) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "SELECT finetune_id, status, name, base_model, slug, trained_model_url,
                    inference_api_url, cloud_storage_url, error_message, created_ts, updated_ts,
                    theme, train_type, source_type, data_source_path, public_model,
                    webhook_status, segmind_status, segmind_seen_at, first_seen_at, updated_at
             FROM jobs WHERE finetune_id IN (",
        );
        push_list(&mut query, chunk);
        for row in query.build().fetch_all(&mut *conn).await? {
            let id: String = row.try_get("finetune_id")?;
            let job = Job {
                status: Status::from_stored(row.try_get::<&str, _>("status")?),
                fields: JobFields {
                    name: row.try_get("name")?,
                    base_model: row.try_get("base_model")?,
                    slug: row.try_get("slug")?,
                    trained_model_url: row.try_get("trained_model_url")?,
                    inference_api_url: row.try_get("inference_api_url")?,
                    cloud_storage_url: row.try_get("cloud_storage_url")?,
                    error_message: row.try_get("error_message")?,
                    created_ts: row.try_get("created_ts")?,
                    updated_ts: row.try_get("updated_ts")?,
                    theme: row.try_get("theme")?,
                    train_type: row.try_get("train_type")?,
                    source_type: row.try_get("source_type")?,
                    data_source_path: row.try_get("data_source_path")?,
                    public_model: row.try_get("public_model")?,
                },
                first_seen_at: row.try_get("first_seen_at")?,
                updated_at: row.try_get("updated_at")?,
                recorded: BTreeSet::new(),
                webhook_status: row
                    .try_get::<Option<&str>, _>("webhook_status")?
                    .map(Status::from_stored),
                segmind_status: row
                    .try_get::<Option<&str>, _>("segmind_status")?
                    .map(Status::from_stored),
                segmind_seen_at: row.try_get("segmind_seen_at")?,
                finetune_id: id.clone(),
            };
            jobs.insert(id, Some(job));
        }

        let mut query = QueryBuilder::<Sqlite>::new(
            "SELECT finetune_id, to_status FROM transitions WHERE finetune_id IN (",
        );
        push_list(&mut query, chunk);
        for row in query.build().fetch_all(&mut *conn).await? {
            let id: &str = row.try_get("finetune_id")?;
            let status = Status::from_stored(row.try_get::<&str, _>("to_status")?);
            if let Some(Some(job)) = jobs.get_mut(id) {
                job.recorded.insert(status);
            }
        }
    }
    Ok(jobs)
}

fn push_list(query: &mut QueryBuilder<'_, Sqlite>, ids: &[&str]) {
    let mut list = query.separated(", ");
    for id in ids {
        list.push_bind(id.to_string());
    }
    list.push_unseparated(")");
}

/// Writes these jobs as they are now: new ones inserted, known ones updated
/// (their `first_seen_at` kept).
pub async fn upsert(conn: &mut SqliteConnection, jobs: &[&Job]) -> Result<(), sqlx::Error> {
    for chunk in jobs.chunks(CHUNK) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO jobs (finetune_id, status, status_rank, name, base_model, slug,
                trained_model_url, inference_api_url, cloud_storage_url, error_message,
                created_ts, updated_ts, theme, train_type, source_type, data_source_path,
                public_model, webhook_status, segmind_status, segmind_seen_at,
                first_seen_at, updated_at) ",
        );
        query.push_values(chunk, |mut row, job| {
            let f = &job.fields;
            row.push_bind(job.finetune_id.clone())
                .push_bind(job.status.as_str().to_owned())
                .push_bind(i64::from(job.status.rank()))
                .push_bind(f.name.clone())
                .push_bind(f.base_model.clone())
                .push_bind(f.slug.clone())
                .push_bind(f.trained_model_url.clone())
                .push_bind(f.inference_api_url.clone())
                .push_bind(f.cloud_storage_url.clone())
                .push_bind(f.error_message.clone())
                .push_bind(f.created_ts.clone())
                .push_bind(f.updated_ts.clone())
                .push_bind(f.theme.clone())
                .push_bind(f.train_type.clone())
                .push_bind(f.source_type.clone())
                .push_bind(f.data_source_path.clone())
                .push_bind(f.public_model)
                .push_bind(job.webhook_status.as_ref().map(|s| s.as_str().to_owned()))
                .push_bind(job.segmind_status.as_ref().map(|s| s.as_str().to_owned()))
                .push_bind(job.segmind_seen_at.clone())
                .push_bind(job.first_seen_at.clone())
                .push_bind(job.updated_at.clone());
        });
        query.push(
            " ON CONFLICT (finetune_id) DO UPDATE SET
                status = excluded.status, status_rank = excluded.status_rank,
                name = excluded.name, base_model = excluded.base_model, slug = excluded.slug,
                trained_model_url = excluded.trained_model_url,
                inference_api_url = excluded.inference_api_url,
                cloud_storage_url = excluded.cloud_storage_url,
                error_message = excluded.error_message,
                created_ts = excluded.created_ts, updated_ts = excluded.updated_ts,
                theme = excluded.theme, train_type = excluded.train_type,
                source_type = excluded.source_type, data_source_path = excluded.data_source_path,
                public_model = excluded.public_model, webhook_status = excluded.webhook_status,
                segmind_status = excluded.segmind_status, segmind_seen_at = excluded.segmind_seen_at,
                updated_at = excluded.updated_at",
        );
        query.build().execute(&mut *conn).await?;
    }
    Ok(())
}

pub async fn insert_transitions(
    conn: &mut SqliteConnection,
    transitions: &[NewTransition],
) -> Result<(), sqlx::Error> {
    for chunk in transitions.chunks(CHUNK) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO transitions (event_id, finetune_id, from_status, to_status, source, observed_at, receipt_id, event) ",
        );
        query.push_values(chunk, |mut row, t| {
            row.push_bind(t.event_id.clone())
                .push_bind(t.finetune_id.clone())
                .push_bind(t.from_status.clone())
                .push_bind(t.to_status.clone())
                .push_bind(t.source.as_str())
                .push_bind(t.observed_at.clone())
                .push_bind(t.receipt_id)
                .push_bind(t.event.clone());
        });
        query.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// A transition's id: stable, unique, and safe in a URL.
pub fn new_transition_id() -> String {
    format!("tr_{}", hex::encode(rand::random::<[u8; 16]>()))
}
