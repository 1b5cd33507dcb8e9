//! Rows as the store reads them. Timestamps are stored as RFC 3339 UTC
//! text. What the API shows of them is `http::views`; the dashboard
//! renders them as they are.

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
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

/// A job whose last known Segmind status differs from what webhooks said.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DriftRow {
    #[sqlx(flatten)]
    pub job: JobRow,
    pub segmind_status: Option<String>,
    pub webhook_status: Option<String>,
    pub segmind_seen_at: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TransitionRow {
    pub id: String,
    pub from_status: Option<String>,
    pub to_status: String,
    pub source: String,
    pub observed_at: String,
    pub receipt_id: Option<i64>,
}

/// A `finetune.updated` event of a job: fields that changed without a
/// status change.
#[derive(Debug, Clone)]
pub struct UpdateRow {
    pub id: String,
    /// The job's status when the fields changed.
    pub status: String,
    /// The names of the fields that changed.
    pub changed: Vec<String>,
    pub source: String,
    pub observed_at: String,
}

/// A receipt. In lists `body` holds only the first
/// [`RECEIPT_LIST_BODY_BYTES`](crate::store::RECEIPT_LIST_BODY_BYTES) bytes;
/// `body_bytes` is always the whole body's length.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReceiptRow {
    pub id: i64,
    pub received_at: String,
    pub body: Vec<u8>,
    pub body_bytes: i64,
    pub body_sha256: String,
    pub headers: String,
    pub outcome: String,
    pub finetune_id: Option<String>,
    pub status: Option<String>,
    pub event_id: Option<String>,
    pub error: Option<String>,
    pub confirmation: Option<String>,
}

/// One page of jobs and where the next one starts.
#[derive(Debug, Clone)]
pub struct JobsPage {
    pub jobs: Vec<JobRow>,
    /// `(updated_at, finetune_id)` of the last job, when more follow.
    pub next: Option<(String, String)>,
}
