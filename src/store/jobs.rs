//! Jobs and transitions, on the writer's connection: load the jobs a batch
//! names, then write back the ones that changed and the transitions
//! recorded. Statements are prepared once and cached on the connection.
//!
//! The schema keeps the last word on duplicates: transitions are inserted
//! without `ON CONFLICT`, so a second row for the same job and status
//! (`UNIQUE (finetune_id, to_status)`) fails the write instead of passing.

use super::sql::{Conn, DbResult, args};
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
    const SELECT_JOB: &str = "SELECT status, name, base_model, slug, trained_model_url,
                inference_api_url, cloud_storage_url, error_message, created_ts, updated_ts,
                theme, train_type, source_type, data_source_path, public_model,
                webhook_status, segmind_status, first_seen_at, updated_at
         FROM jobs WHERE finetune_id = ?1";
    let mut jobs = HashMap::with_capacity(ids.len());
    for &id in ids {
        let job = match conn.query_opt(SELECT_JOB, args![id])? {
            None => None,
            Some(row) => {
                let mut job = Job {
                    finetune_id: id.to_owned(),
                    status: Status::from_stored(&row.get::<String>(0)?),
                    fields: JobFields {
                        name: row.get(1)?,
                        base_model: row.get(2)?,
                        slug: row.get(3)?,
                        trained_model_url: row.get(4)?,
                        inference_api_url: row.get(5)?,
                        cloud_storage_url: row.get(6)?,
                        error_message: row.get(7)?,
                        created_ts: row.get(8)?,
                        updated_ts: row.get(9)?,
                        theme: row.get(10)?,
                        train_type: row.get(11)?,
                        source_type: row.get(12)?,
                        data_source_path: row.get(13)?,
                        public_model: row.get(14)?,
                    },
                    webhook_status: stored_status(&row, 15)?,
                    segmind_status: stored_status(&row, 16)?,
                    first_seen_at: row.get(17)?,
                    updated_at: row.get(18)?,
                    recorded: BTreeSet::new(),
                };
                for row in conn.query(
                    "SELECT to_status FROM transitions WHERE finetune_id = ?1",
                    args![id],
                )? {
                    job.recorded
                        .insert(Status::from_stored(&row.get::<String>(0)?));
                }
                Some(job)
            }
        };
        jobs.insert(id.to_owned(), job);
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
    const UPSERT: &str =
        "INSERT INTO jobs (finetune_id, status, status_rank, name, base_model, slug,
            trained_model_url, inference_api_url, cloud_storage_url, error_message,
            created_ts, updated_ts, theme, train_type, source_type, data_source_path,
            public_model, webhook_status, segmind_status,
            first_seen_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
            ?17, ?18, ?19, ?20, ?21)
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
    for job in jobs {
        let f = &job.fields;
        conn.execute(
            UPSERT,
            args![
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
            ],
        )?;
    }
    Ok(())
}

pub fn insert_transitions(conn: &dyn Conn, transitions: &[NewTransition]) -> DbResult<()> {
    for t in transitions {
        conn.execute(
            "INSERT INTO transitions (event_id, finetune_id, from_status, to_status, source,
                observed_at, receipt_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            args![
                t.event_id,
                t.finetune_id,
                t.from_status,
                t.to_status,
                t.source.as_str(),
                t.observed_at,
                t.receipt_id,
            ],
        )?;
    }
    Ok(())
}
