//! Reads the dashboard needs beyond the API's: jobs with how long they have
//! been in their status and whether the two sources disagree, a search by
//! id or name, every attempt of a job's deliveries, and deliveries with the
//! dead ones first.

use super::{
    AttemptRow, DeliveryFilter, DeliveryRow, JobRow, Store, StoreError, outbox::DELIVERY_COLUMNS,
    queries::JOB_COLUMNS, sql::query,
};

/// A job as the dashboard lists it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobSummary {
    #[sqlx(flatten)]
    pub job: JobRow,
    /// When the job took its current status (its first sighting when no
    /// transition says).
    pub status_since: String,
    pub segmind_status: Option<String>,
    pub webhook_status: Option<String>,
}

impl JobSummary {
    /// Segmind's API, once asked, says another status than tunehook's.
    pub fn drifts(&self) -> bool {
        drifts(&self.job.status, self.segmind_status.as_deref())
    }
}

/// Whether a job whose status is `status` drifts from what Segmind's API
/// last said of it (`None`: never asked, so not known to drift).
pub fn drifts(status: &str, segmind_status: Option<&str>) -> bool {
    segmind_status.is_some_and(|segmind| segmind != status)
}

/// Which jobs the dashboard lists: most recently updated first.
#[derive(Debug, Clone, Default)]
pub struct JobSearch {
    pub status: Option<String>,
    /// Part of the id or the name, in any case.
    pub text: Option<String>,
    pub limit: u32,
    /// `(updated_at, finetune_id)` of the last job of the previous page.
    pub after: Option<(String, String)>,
}

/// One attempt at one of a job's deliveries.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobAttempt {
    pub delivery_id: i64,
    #[sqlx(flatten)]
    pub attempt: AttemptRow,
}

/// Where a page of deliveries, dead ones first, starts: after this id
/// among the dead ones, or among the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadFirstCursor {
    pub dead: bool,
    pub before_id: i64,
}

impl Store {
    /// Jobs per status, every status that has one.
    pub async fn status_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(query(super::queries::JOBS_BY_STATUS)
            .fetch_all(&self.reads)
            .await?)
    }

    /// A page of jobs and where the next one starts.
    pub async fn job_summaries(
        &self,
        search: &JobSearch,
    ) -> Result<(Vec<JobSummary>, Option<(String, String)>), StoreError> {
        let mut query = query(format!(
            "SELECT {JOB_COLUMNS}, segmind_status, webhook_status,
                COALESCE((SELECT MAX(observed_at) FROM transitions t
                          WHERE t.finetune_id = jobs.finetune_id AND t.to_status = jobs.status),
                         first_seen_at) AS status_since
             FROM jobs WHERE 1 = 1"
        ));
        if let Some(status) = &search.status {
            query.push(" AND status = ").push_bind(status.clone());
        }
        if let Some(text) = &search.text {
            // `%`, `_` and `\` in the text match themselves.
            let pattern = format!(
                "%{}%",
                text.to_lowercase()
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_")
            );
            query
                .push(" AND (lower(finetune_id) LIKE ")
                .push_bind(pattern.clone())
                .push(" ESCAPE '\\' OR lower(COALESCE(name, '')) LIKE ")
                .push_bind(pattern)
                .push(" ESCAPE '\\')");
        }
        if let Some((updated_at, finetune_id)) = &search.after {
            query
                .push(" AND (updated_at, finetune_id) < (")
                .push_bind(updated_at.clone())
                .push(", ")
                .push_bind(finetune_id.clone())
                .push(")");
        }
        query
            .push(" ORDER BY updated_at DESC, finetune_id DESC LIMIT ")
            .push_bind(i64::from(search.limit) + 1);
        let mut jobs: Vec<JobSummary> = query.fetch_all(&self.reads).await?;
        let next = if jobs.len() > search.limit as usize {
            jobs.truncate(search.limit as usize);
            jobs.last()
                .map(|j| (j.job.updated_at.clone(), j.job.finetune_id.clone()))
        } else {
            None
        };
        Ok((jobs, next))
    }

    /// Every attempt at every delivery of a job, oldest first.
    pub async fn job_attempts(&self, finetune_id: &str) -> Result<Vec<JobAttempt>, StoreError> {
        Ok(query(
            "SELECT a.delivery_id, a.started_at, a.duration_ms, a.status_code, a.exit_code,
                    a.error, a.response
             FROM deliveries d JOIN delivery_attempts a ON a.delivery_id = d.id
             WHERE d.finetune_id = ? ORDER BY a.id",
        )
        .bind(finetune_id)
        .fetch_all(&self.reads)
        .await?)
    }

    /// A page of deliveries (`filter`'s sink and job; its status and
    /// cursor are not used): the dead ones newest first, then the others
    /// newest first.
    pub async fn deliveries_dead_first(
        &self,
        filter: &DeliveryFilter,
        from: Option<DeadFirstCursor>,
    ) -> Result<(Vec<DeliveryRow>, Option<DeadFirstCursor>), StoreError> {
        let limit = filter.limit as usize;
        let mut rows = Vec::with_capacity(limit + 1);
        let mut dead_rows = 0;
        if from.is_none_or(|c| c.dead) {
            let before = from.map(|c| c.before_id);
            rows = self.delivery_page(filter, true, before, limit + 1).await?;
            dead_rows = rows.len();
        }
        if rows.len() <= limit {
            let before = from.filter(|c| !c.dead).map(|c| c.before_id);
            let more = self
                .delivery_page(filter, false, before, limit + 1 - rows.len())
                .await?;
            rows.extend(more);
        }
        if rows.len() <= limit {
            return Ok((rows, None));
        }
        rows.truncate(limit);
        let next = rows.last().map(|last| DeadFirstCursor {
            dead: dead_rows >= limit,
            before_id: last.id,
        });
        Ok((rows, next))
    }

    async fn delivery_page(
        &self,
        filter: &DeliveryFilter,
        dead: bool,
        before_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        let mut query = query(format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE "));
        query.push(if dead {
            "status = 'dead'"
        } else {
            "status IN ('pending', 'delivered')"
        });
        if let Some(sink) = &filter.sink {
            query.push(" AND sink = ").push_bind(sink.clone());
        }
        if let Some(id) = &filter.finetune_id {
            query.push(" AND finetune_id = ").push_bind(id.clone());
        }
        if let Some(before) = before_id {
            query.push(" AND id < ").push_bind(before);
        }
        query
            .push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
        Ok(query.fetch_all(&self.reads).await?)
    }
}
