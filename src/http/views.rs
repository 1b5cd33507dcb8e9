//! What `/v1` shows: one type per shape an answer carries, built from what
//! the store, the reconciler and the pruner hand back.
//!
//! The store's rows are the store's to change (another backend may read
//! other columns into them); these types are the API's, and the OpenAPI
//! document is generated from them, doc comments included. Each keeps the
//! component name clients already know (`#[schema(as = …)]`), so the
//! document names `JobRow` even though no row is serialized. A type here
//! that has no doc comment has none on purpose: its component has no
//! description, and adding one would change the document.
//!
//! The dashboard (`src/ui/`) renders the rows themselves into HTML and does
//! not go through these.

use crate::{
    config::RetentionSettings,
    reconcile,
    store::{self, PruneReport},
};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = JobRow)]
pub struct Job {
    pub finetune_id: String,
    pub name: Option<String>,
    pub status: String,
    pub base_model: Option<String>,
    pub slug: Option<String>,
    pub trained_model_url: Option<String>,
    pub inference_api_url: Option<String>,
    pub cloud_storage_url: Option<String>,
    pub error_message: Option<String>,
    pub created_ts: Option<String>,
    pub updated_ts: Option<String>,
    pub theme: Option<String>,
    pub train_type: Option<String>,
    pub source_type: Option<String>,
    pub data_source_path: Option<String>,
    pub public_model: Option<bool>,
    pub first_seen_at: String,
    pub updated_at: String,
}

impl From<store::JobRow> for Job {
    fn from(row: store::JobRow) -> Job {
        Job {
            finetune_id: row.finetune_id,
            name: row.name,
            status: row.status,
            base_model: row.base_model,
            slug: row.slug,
            trained_model_url: row.trained_model_url,
            inference_api_url: row.inference_api_url,
            cloud_storage_url: row.cloud_storage_url,
            error_message: row.error_message,
            created_ts: row.created_ts,
            updated_ts: row.updated_ts,
            theme: row.theme,
            train_type: row.train_type,
            source_type: row.source_type,
            data_source_path: row.data_source_path,
            public_model: row.public_model,
            first_seen_at: row.first_seen_at,
            updated_at: row.updated_at,
        }
    }
}

/// A job whose last known Segmind status differs from what webhooks said.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = DriftRow)]
pub struct Drift {
    #[serde(flatten)]
    pub job: Job,
    pub segmind_status: Option<String>,
    pub webhook_status: Option<String>,
    pub segmind_seen_at: Option<String>,
}

impl From<store::DriftRow> for Drift {
    fn from(row: store::DriftRow) -> Drift {
        Drift {
            job: row.job.into(),
            segmind_status: row.segmind_status,
            webhook_status: row.webhook_status,
            segmind_seen_at: row.segmind_seen_at,
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = TransitionRow)]
pub struct Transition {
    pub id: String,
    pub from_status: Option<String>,
    pub to_status: String,
    pub source: String,
    pub observed_at: String,
    pub receipt_id: Option<i64>,
}

impl From<store::TransitionRow> for Transition {
    fn from(row: store::TransitionRow) -> Transition {
        Transition {
            id: row.id,
            from_status: row.from_status,
            to_status: row.to_status,
            source: row.source,
            observed_at: row.observed_at,
            receipt_id: row.receipt_id,
        }
    }
}

/// A `finetune.updated` event of a job: fields that changed without a
/// status change.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = UpdateRow)]
pub struct Update {
    pub id: String,
    /// The job's status when the fields changed.
    pub status: String,
    /// The names of the fields that changed.
    pub changed: Vec<String>,
    pub source: String,
    pub observed_at: String,
}

impl From<store::UpdateRow> for Update {
    fn from(row: store::UpdateRow) -> Update {
        Update {
            id: row.id,
            status: row.status,
            changed: row.changed,
            source: row.source,
            observed_at: row.observed_at,
        }
    }
}

/// One delivery of a transition, as shown on the job.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = TransitionDelivery)]
pub struct EventDelivery {
    pub id: i64,
    pub sink: String,
    pub status: String,
    pub attempts: i64,
}

impl From<store::TransitionDelivery> for EventDelivery {
    fn from(row: store::TransitionDelivery) -> EventDelivery {
        EventDelivery {
            id: row.id,
            sink: row.sink,
            status: row.status,
            attempts: row.attempts,
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = DeliveryRow)]
pub struct Delivery {
    pub id: i64,
    pub sink: String,
    pub event_id: String,
    pub finetune_id: String,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: Option<String>,
    pub last_error: Option<String>,
    pub last_status_code: Option<i64>,
    pub delivered_at: Option<String>,
}

impl From<store::DeliveryRow> for Delivery {
    fn from(row: store::DeliveryRow) -> Delivery {
        Delivery {
            id: row.id,
            sink: row.sink,
            event_id: row.event_id,
            finetune_id: row.finetune_id,
            status: row.status,
            attempts: row.attempts,
            next_attempt_at: row.next_attempt_at,
            last_error: row.last_error,
            last_status_code: row.last_status_code,
            delivered_at: row.delivered_at,
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = AttemptRow)]
pub struct Attempt {
    pub started_at: String,
    pub duration_ms: i64,
    pub status_code: Option<i64>,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
    pub response: Option<String>,
}

impl From<store::AttemptRow> for Attempt {
    fn from(row: store::AttemptRow) -> Attempt {
        Attempt {
            started_at: row.started_at,
            duration_ms: row.duration_ms,
            status_code: row.status_code,
            exit_code: row.exit_code,
            error: row.error,
            response: row.response,
        }
    }
}

/// A sink's health as the outbox shows it.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct SinkHealth {
    pub pending: i64,
    pub dead: i64,
    pub last_success: Option<String>,
    pub last_failure: Option<String>,
}

impl From<store::SinkHealth> for SinkHealth {
    fn from(health: store::SinkHealth) -> SinkHealth {
        SinkHealth {
            pending: health.pending,
            dead: health.dead,
            last_success: health.last_success,
            last_failure: health.last_failure,
        }
    }
}

/// What a replay did, and where the next page starts.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Replayed {
    /// Deliveries created.
    pub enqueued: u64,
    /// Events skipped because a delivery of theirs to the sink was pending.
    pub skipped: u64,
    /// The `since` that continues where this page ended; `null` when no
    /// event is left.
    pub next_since: Option<String>,
}

impl From<store::Replayed> for Replayed {
    fn from(replayed: store::Replayed) -> Replayed {
        Replayed {
            enqueued: replayed.enqueued,
            skipped: replayed.skipped,
            next_since: replayed.next_since,
        }
    }
}

/// What storing a webhook did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The job moved to a new status.
    Applied,
    /// The job already has this status.
    Duplicate,
    /// The job is already past this status.
    Stale,
    /// Valid JSON without a job id or a status.
    Unrecognized,
    /// Not JSON, or an unusable id or status.
    Invalid,
    /// Stored; waiting for Segmind's API to confirm it before it is applied.
    Confirming,
    /// Segmind's API disagreed: not applied.
    Contradicted,
    /// Not applied, its claim unconfirmed: Segmind's API could not be
    /// asked in time and `ingest.unconfirmed` is `drop`, or too many claims
    /// were waiting already (`ingest.max_pending_confirmations`).
    Dropped,
}

impl From<store::Outcome> for Outcome {
    fn from(outcome: store::Outcome) -> Outcome {
        match outcome {
            store::Outcome::Applied => Outcome::Applied,
            store::Outcome::Duplicate => Outcome::Duplicate,
            store::Outcome::Stale => Outcome::Stale,
            store::Outcome::Unrecognized => Outcome::Unrecognized,
            store::Outcome::Invalid => Outcome::Invalid,
            store::Outcome::Confirming => Outcome::Confirming,
            store::Outcome::Contradicted => Outcome::Contradicted,
            store::Outcome::Dropped => Outcome::Dropped,
        }
    }
}

/// What applying a pass's observations did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReconcileSummary {
    pub jobs_seen: usize,
    pub jobs_created: usize,
    pub transitions: usize,
    pub deliveries: usize,
    /// Ids forgotten by this pass after 404s for `reconcile.forget_after`.
    pub forgotten: usize,
}

impl From<store::ReconcileSummary> for ReconcileSummary {
    fn from(summary: store::ReconcileSummary) -> ReconcileSummary {
        ReconcileSummary {
            jobs_seen: summary.jobs_seen,
            jobs_created: summary.jobs_created,
            transitions: summary.transitions,
            deliveries: summary.deliveries,
            forgotten: summary.forgotten,
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PassReport {
    pub started_at: String,
    pub finished_at: String,
    pub jobs_listed: usize,
    pub details_fetched: usize,
    pub details_failed: usize,
    /// Listed entries without a job id or a usable status.
    pub skipped: usize,
    #[serde(flatten)]
    pub applied: ReconcileSummary,
}

impl From<reconcile::PassReport> for PassReport {
    fn from(report: reconcile::PassReport) -> PassReport {
        PassReport {
            started_at: report.started_at,
            finished_at: report.finished_at,
            jobs_listed: report.jobs_listed,
            details_fetched: report.details_fetched,
            details_failed: report.details_failed,
            skipped: report.skipped,
            applied: report.applied.into(),
        }
    }
}

/// How many rows of each kind were (or would be) removed.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct PruneCounts {
    pub receipts: u64,
    pub attempts: u64,
    pub delivered: u64,
}

impl From<store::PruneCounts> for PruneCounts {
    fn from(counts: store::PruneCounts) -> PruneCounts {
        PruneCounts {
            receipts: counts.receipts,
            attempts: counts.attempts,
            delivered: counts.delivered,
        }
    }
}

/// What `/v1/status` shows of retention.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RetentionState {
    /// How long each kind is kept: a duration such as `90d`, or `forever`.
    pub receipts: String,
    pub attempts: String,
    pub delivered: String,
    pub interval_seconds: u64,
    /// When the last prune (by the service or `tunehook prune`) finished.
    pub last_prune_at: Option<String>,
    /// What it removed.
    pub last_prune_removed: Option<PruneCounts>,
}

impl RetentionState {
    /// Retention as configured, and the last prune's report if any.
    pub fn new(settings: &RetentionSettings, last: Option<PruneReport>) -> RetentionState {
        RetentionState {
            receipts: settings.receipts.to_string(),
            attempts: settings.attempts.to_string(),
            delivered: settings.delivered.to_string(),
            interval_seconds: settings.interval.as_secs(),
            last_prune_at: last.as_ref().map(|r| r.finished_at.clone()),
            last_prune_removed: last.map(|r| r.removed.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Views say what the store's values say.

    use super::Outcome;
    use crate::store;

    #[test]
    fn every_outcome_shows_as_the_word_receipts_are_stored_and_filtered_by() {
        for outcome in store::Outcome::ALL {
            let shown = serde_json::to_value(Outcome::from(outcome)).expect("serializes");
            assert_eq!(shown, outcome.as_str(), "{outcome:?}");
        }
    }
}
