//! Jobs and transitions, on the writer's connection: load the jobs a batch
//! names, then write back the ones that changed and the transitions
//! recorded. Statements are prepared once and cached on the connection.
//!
//! The schema keeps the last word on duplicates: transitions are inserted
//! without `ON CONFLICT`, so a second row for the same job and status
//! (`UNIQUE (finetune_id, to_status)`) fails the write instead of passing.

use super::sql::{Conn, DbResult, row};
use crate::domain::{Job, JobFields, Source, Status};
use std::collections::{BTreeSet, HashMap};

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
}

/// The jobs with these ids, with every status recorded for each; an id with
/// no job maps to `None`.
pub fn load(conn: &dyn Conn, ids: &BTreeSet<&str>) -> DbResult<HashMap<String, Option<Job>>> {
    let names: Vec<_> = ids.iter().map(|id| row![id]).collect();
    let mut jobs: HashMap<String, Option<Job>> =
        ids.iter().map(|&id| (id.to_owned(), None)).collect();
    for row in conn.query_rows(
        "SELECT j.finetune_id, j.status, j.name, j.base_model, j.slug, j.trained_model_url,
                j.inference_api_url, j.cloud_storage_url, j.error_message, j.created_ts,
                j.updated_ts, j.theme, j.train_type, j.source_type, j.data_source_path,
                j.public_model, j.webhook_status, j.segmind_status, j.first_seen_at,
                j.updated_at
         FROM {rows} JOIN jobs j ON j.finetune_id = v.column1",
        &[],
        &names,
    )? {
        let job = Job {
            finetune_id: row.get(0)?,
            status: Status::from_stored(&row.get::<String>(1)?),
            fields: JobFields {
                name: row.get(2)?,
                base_model: row.get(3)?,
                slug: row.get(4)?,
                trained_model_url: row.get(5)?,
                inference_api_url: row.get(6)?,
                cloud_storage_url: row.get(7)?,
                error_message: row.get(8)?,
                created_ts: row.get(9)?,
                updated_ts: row.get(10)?,
                theme: row.get(11)?,
                train_type: row.get(12)?,
                source_type: row.get(13)?,
                data_source_path: row.get(14)?,
                public_model: row.get(15)?,
            },
            webhook_status: stored_status(&row, 16)?,
            segmind_status: stored_status(&row, 17)?,
            first_seen_at: row.get(18)?,
            updated_at: row.get(19)?,
            recorded: BTreeSet::new(),
        };
        jobs.insert(job.finetune_id.clone(), Some(job));
    }
    for row in conn.query_rows(
        "SELECT t.finetune_id, t.to_status
         FROM {rows} JOIN transitions t ON t.finetune_id = v.column1",
        &[],
        &names,
    )? {
        let id: String = row.get(0)?;
        if let Some(Some(job)) = jobs.get_mut(&id) {
            job.recorded
                .insert(Status::from_stored(&row.get::<String>(1)?));
        }
    }
    Ok(jobs)
}

fn stored_status(row: &super::sql::Row, index: usize) -> DbResult<Option<Status>> {
    Ok(row
        .get::<Option<String>>(index)?
        .map(|s| Status::from_stored(&s)))
}

/// Writes these jobs as they are now: new ones inserted, known ones updated
/// (their `first_seen_at` kept).
pub fn upsert(conn: &dyn Conn, jobs: &[&Job]) -> DbResult<()> {
    // `WHERE true` keeps SQLite from reading `ON CONFLICT` as a join's.
    const UPSERT: &str =
        "INSERT INTO jobs (finetune_id, status, status_rank, name, base_model, slug,
            trained_model_url, inference_api_url, cloud_storage_url, error_message,
            created_ts, updated_ts, theme, train_type, source_type, data_source_path,
            public_model, webhook_status, segmind_status,
            first_seen_at, updated_at)
         SELECT * FROM {rows} WHERE true
         ON CONFLICT (finetune_id) DO UPDATE SET
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
            segmind_status = excluded.segmind_status,
            updated_at = excluded.updated_at";
    let rows: Vec<_> = jobs
        .iter()
        .map(|job| {
            let f = &job.fields;
            row![
                job.finetune_id,
                job.status.as_str(),
                job.status.rank(),
                f.name,
                f.base_model,
                f.slug,
                f.trained_model_url,
                f.inference_api_url,
                f.cloud_storage_url,
                f.error_message,
                f.created_ts,
                f.updated_ts,
                f.theme,
                f.train_type,
                f.source_type,
                f.data_source_path,
                f.public_model,
                job.webhook_status.as_ref().map(Status::as_str),
                job.segmind_status.as_ref().map(Status::as_str),
                job.first_seen_at,
                job.updated_at,
            ]
        })
        .collect();
    // One row per job: a statement may change a row only once.
    conn.execute_rows(UPSERT, &[], &rows)?;
    Ok(())
}

pub fn insert_transitions(conn: &dyn Conn, transitions: &[NewTransition]) -> DbResult<()> {
    let rows: Vec<_> = transitions
        .iter()
        .map(|t| {
            row![
                t.event_id,
                t.finetune_id,
                t.from_status,
                t.to_status,
                t.source.as_str(),
                t.observed_at,
                t.receipt_id,
            ]
        })
        .collect();
    conn.execute_rows(
        "INSERT INTO transitions (event_id, finetune_id, from_status, to_status, source,
            observed_at, receipt_id)
         SELECT * FROM {rows}",
        &[],
        &rows,
    )?;
    Ok(())
}
