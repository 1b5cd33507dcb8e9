//! Reads for the API, on the read-only pool.

use super::{
    DriftRow, JobRow, JobsPage, ReceiptRow, Store, StoreError, TransitionRow, UpdateRow, sql::query,
};

pub(super) const JOB_COLUMNS: &str =
    "finetune_id, name, status, base_model, slug, trained_model_url,
    inference_api_url, cloud_storage_url, error_message, created_ts, updated_ts,
    theme, train_type, source_type, data_source_path, public_model,
    first_seen_at, updated_at";

/// Jobs per status, counted in the `jobs_by_status_update` index.
pub(super) const JOBS_BY_STATUS: &str =
    "SELECT status, COUNT(*) FROM jobs GROUP BY status ORDER BY status";

/// The stored state `/metrics` shows.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub jobs_by_status: Vec<(String, i64)>,
    /// Per sink: pending and dead deliveries.
    pub outbox: std::collections::BTreeMap<String, (i64, i64)>,
}

/// Which jobs to list: most recently updated first, after `after`.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub status: Option<String>,
    pub limit: u32,
    /// `(updated_at, finetune_id)` of the last job of the previous page.
    pub after: Option<(String, String)>,
}

/// How much of each body a list of receipts carries: a page of 500
/// receipts then holds at most 2 MiB of bodies, not 500 MiB.
pub const RECEIPT_LIST_BODY_BYTES: i64 = 4096;

const RECEIPT_COLUMNS: &str = "id, received_at, body_sha256, headers, outcome, finetune_id, status, event_id, error, confirmation,
    CAST(length(body) AS BIGINT) AS body_bytes";

/// Which receipts to list: newest first, older than `before_id`.
#[derive(Debug, Clone, Default)]
pub struct ReceiptFilter {
    pub outcome: Option<String>,
    pub limit: u32,
    pub before_id: Option<i64>,
}

impl Store {
    pub async fn job(&self, finetune_id: &str) -> Result<Option<JobRow>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE finetune_id = ?");
        Ok(query(sql)
            .bind(finetune_id)
            .fetch_optional(&self.reads)
            .await?)
    }

    /// A job's transitions, oldest first.
    pub async fn transitions(&self, finetune_id: &str) -> Result<Vec<TransitionRow>, StoreError> {
        Ok(query(
            "SELECT event_id AS id, from_status, to_status, source, observed_at, receipt_id
             FROM transitions WHERE finetune_id = ? ORDER BY transitions.id",
        )
        .bind(finetune_id)
        .fetch_all(&self.reads)
        .await?)
    }

    /// What each path last said of a job's status: Segmind's API (and
    /// when), and webhooks.
    pub async fn job_sources(
        &self,
        finetune_id: &str,
    ) -> Result<(Option<String>, Option<String>, Option<String>), StoreError> {
        Ok(query(
            "SELECT segmind_status, webhook_status,
                (SELECT seen_at FROM segmind_sightings s WHERE s.finetune_id = jobs.finetune_id)
             FROM jobs WHERE finetune_id = ?",
        )
        .bind(finetune_id)
        .fetch_optional(&self.reads)
        .await?
        .unwrap_or_default())
    }

    /// A job's `finetune.updated` events, oldest first.
    pub async fn updates(&self, finetune_id: &str) -> Result<Vec<UpdateRow>, StoreError> {
        let rows: Vec<(String, String, Option<String>, String, String)> = query(
            "SELECT event_id, status, changed, source, observed_at FROM events
             WHERE finetune_id = ? AND type = 'finetune.updated' ORDER BY id",
        )
        .bind(finetune_id)
        .fetch_all(&self.reads)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, status, changed, source, observed_at)| UpdateRow {
                id,
                status,
                changed: changed
                    .and_then(|text| serde_json::from_str(&text).ok())
                    .unwrap_or_default(),
                source,
                observed_at,
            })
            .collect())
    }

    pub async fn jobs(&self, filter: &JobFilter) -> Result<JobsPage, StoreError> {
        let mut query = query(format!("SELECT {JOB_COLUMNS} FROM jobs WHERE 1 = 1"));
        if let Some(status) = &filter.status {
            query.push(" AND status = ").push_bind(status);
        }
        if let Some((updated_at, finetune_id)) = &filter.after {
            query
                .push(" AND (updated_at, finetune_id) < (")
                .push_bind(updated_at)
                .push(", ")
                .push_bind(finetune_id)
                .push(")");
        }
        query
            .push(" ORDER BY updated_at DESC, finetune_id DESC LIMIT ")
            .push_bind(i64::from(filter.limit) + 1);
        let mut jobs: Vec<JobRow> = query.fetch_all(&self.reads).await?;
        let next = if jobs.len() > filter.limit as usize {
            jobs.truncate(filter.limit as usize);
            jobs.last()
                .map(|j| (j.updated_at.clone(), j.finetune_id.clone()))
        } else {
            None
        };
        Ok(JobsPage { jobs, next })
    }

    /// Jobs whose status differs from what Segmind's API last said of
    /// them (a job the API was never asked about is not among them), most
    /// recently updated first.
    pub async fn drifting_jobs(&self, limit: u32) -> Result<Vec<DriftRow>, StoreError> {
        let sql = format!(
            "SELECT {JOB_COLUMNS}, segmind_status, webhook_status,
                (SELECT seen_at FROM segmind_sightings s WHERE s.finetune_id = jobs.finetune_id)
                    AS segmind_seen_at
             FROM jobs
             WHERE segmind_status IS NOT NULL AND segmind_status IS DISTINCT FROM status
             ORDER BY updated_at DESC, finetune_id DESC LIMIT ?"
        );
        Ok(query(sql).bind_owned(limit).fetch_all(&self.reads).await?)
    }

    /// What `/metrics` shows of the stored state: jobs per status and
    /// deliveries pending and dead per sink. Both are read through indexes,
    /// on a connection of its own so scrapes never wait for (or hold up) the
    /// pool the delivery workers and the API share.
    pub async fn gauges(&self) -> Result<Gauges, StoreError> {
        let jobs_by_status = query(JOBS_BY_STATUS).fetch_all(&self.gauges).await?;
        let outbox = super::outbox::outbox_counts_on(&self.gauges).await?;
        Ok(Gauges {
            jobs_by_status,
            outbox,
        })
    }

    /// Ids of the jobs not in a terminal status whose details may be asked
    /// for at `now` (not waiting after a 404, not forgotten).
    pub async fn unfinished_job_ids(&self, now: &str) -> Result<Vec<String>, StoreError> {
        Ok(query(
            "SELECT finetune_id FROM jobs
             WHERE status_rank < 100
               AND NOT EXISTS (SELECT 1 FROM segmind_sightings s
                               WHERE s.finetune_id = jobs.finetune_id AND s.next_details_at > ?1)
             ORDER BY finetune_id",
        )
        .bind(now)
        .scalars(&self.reads)
        .await?)
    }

    pub async fn receipts(
        &self,
        filter: &ReceiptFilter,
    ) -> Result<(Vec<ReceiptRow>, Option<i64>), StoreError> {
        // Only the start of each body is read: SQLite reads a blob's length
        // from the record header, and `substr` stops at the prefix.
        let mut query = query(format!(
            "SELECT {RECEIPT_COLUMNS}, substr(body, 1, {RECEIPT_LIST_BODY_BYTES}) AS body
             FROM receipts WHERE 1 = 1"
        ));
        if let Some(outcome) = &filter.outcome {
            query.push(" AND outcome = ").push_bind(outcome);
        }
        if let Some(before) = filter.before_id {
            query.push(" AND id < ").push_bind(before);
        }
        query
            .push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(filter.limit) + 1);
        let mut receipts: Vec<ReceiptRow> = query.fetch_all(&self.reads).await?;
        let next = if receipts.len() > filter.limit as usize {
            receipts.truncate(filter.limit as usize);
            receipts.last().map(|r| r.id)
        } else {
            None
        };
        Ok((receipts, next))
    }

    /// One receipt with its whole body.
    pub async fn receipt(&self, id: i64) -> Result<Option<ReceiptRow>, StoreError> {
        let sql = format!("SELECT {RECEIPT_COLUMNS}, body FROM receipts WHERE id = ?");
        Ok(query(sql).bind(&id).fetch_optional(&self.reads).await?)
    }
}

#[cfg(test)]
mod tests {
    //! The gauges of `/metrics` must stay cheap however many deliveries
    //! have been made: their queries read indexes, never the tables.

    use super::{super::sqlite::MIGRATOR, JOBS_BY_STATUS};
    use crate::store::outbox::OUTBOX_COUNTS;
    use sqlx::{Connection, SqliteConnection};

    async fn plan(conn: &mut SqliteConnection, sql: &str) -> String {
        let rows: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(&format!("EXPLAIN QUERY PLAN {sql}"))
                .fetch_all(conn)
                .await
                .expect("a plan");
        rows.into_iter()
            .map(|(_, _, _, detail)| detail)
            .collect::<Vec<_>>()
            .join("; ")
    }

    #[tokio::test]
    async fn the_gauges_are_counted_in_indexes_without_reading_delivered_rows() {
        let mut conn = SqliteConnection::connect("sqlite::memory:")
            .await
            .expect("a database");
        MIGRATOR.run(&mut conn).await.expect("migrated");
        let outbox = plan(&mut conn, OUTBOX_COUNTS).await;
        assert!(
            outbox.contains("USING COVERING INDEX deliveries_unfinished_by_sink"),
            "{outbox}"
        );
        let jobs = plan(&mut conn, JOBS_BY_STATUS).await;
        assert!(
            jobs.contains("USING COVERING INDEX jobs_by_status_update"),
            "{jobs}"
        );
        for plan in [outbox, jobs] {
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
        }
    }
}
