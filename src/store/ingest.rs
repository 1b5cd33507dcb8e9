//! Storing one webhook request: the receipt and whatever it does to its job,
//! in one savepoint of the writer's batch transaction.

use super::jobs::{self, ApplyError, Observation};
use crate::domain::{Decision, Payload, Source};
use serde::Serialize;
use sqlx::SqliteConnection;

/// A webhook request as received, ready to store.
#[derive(Debug, Clone)]
pub struct IngestRequest {
    pub received_at: String,
    pub body: Vec<u8>,
    pub body_sha256: String,
    /// A few request headers, as a JSON object.
    pub headers: String,
    /// What the body said, or why it could not be read.
    pub payload: Result<Payload, String>,
}

/// What storing a webhook did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Applied,
        Outcome::Duplicate,
        Outcome::Stale,
        Outcome::Unrecognized,
        Outcome::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Stale => "stale",
            Outcome::Unrecognized => "unrecognized",
            Outcome::Invalid => "invalid",
        }
    }

    pub fn parse(raw: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == raw)
    }
}

/// The stored receipt and its effect.
#[derive(Debug, Clone)]
pub struct IngestResult {
    pub receipt_id: i64,
    pub outcome: Outcome,
    pub finetune_id: Option<String>,
    pub status: Option<String>,
    pub previous_status: Option<String>,
    /// The transition recorded, when the outcome is `applied`.
    pub transition_id: Option<String>,
}

/// Stores the request. `ApplyError::Conflict` asks the caller to roll the
/// savepoint back and call again.
pub(super) async fn execute(
    conn: &mut SqliteConnection,
    request: &IngestRequest,
) -> Result<IngestResult, ApplyError> {
    let payload = match &request.payload {
        Err(reason) => {
            let receipt_id =
                insert_receipt(conn, request, Outcome::Invalid, None, None, Some(reason)).await?;
            return Ok(result(receipt_id, Outcome::Invalid, None, None));
        }
        Ok(payload) => payload,
    };
    let (Some(finetune_id), Some(status)) = (&payload.finetune_id, &payload.status) else {
        let status = payload.status.as_ref().map(|s| s.as_str().to_owned());
        let receipt_id = insert_receipt(
            conn,
            request,
            Outcome::Unrecognized,
            payload.finetune_id.as_deref(),
            status.as_deref(),
            None,
        )
        .await?;
        return Ok(result(
            receipt_id,
            Outcome::Unrecognized,
            payload.finetune_id.clone(),
            status,
        ));
    };

    let observation = Observation {
        finetune_id,
        status,
        fields: &payload.fields,
        source: Source::Webhook,
        observed_at: &request.received_at,
    };
    let plan = jobs::plan(conn, &observation).await?;
    let outcome = match plan.decision {
        Decision::Apply => Outcome::Applied,
        Decision::Duplicate => Outcome::Duplicate,
        Decision::Stale => Outcome::Stale,
    };
    let receipt_id = insert_receipt(
        conn,
        request,
        outcome,
        Some(finetune_id),
        Some(status.as_str()),
        None,
    )
    .await?;
    let transition_id = jobs::apply(conn, &observation, &plan, Some(receipt_id)).await?;
    let mut result = result(
        receipt_id,
        outcome,
        Some(finetune_id.clone()),
        Some(status.as_str().to_owned()),
    );
    result.previous_status = plan.previous;
    result.transition_id = transition_id;
    Ok(result)
}

fn result(
    receipt_id: i64,
    outcome: Outcome,
    finetune_id: Option<String>,
    status: Option<String>,
) -> IngestResult {
    IngestResult {
        receipt_id,
        outcome,
        finetune_id,
        status,
        previous_status: None,
        transition_id: None,
    }
}

async fn insert_receipt(
    conn: &mut SqliteConnection,
    request: &IngestRequest,
    outcome: Outcome,
    finetune_id: Option<&str>,
    status: Option<&str>,
    error: Option<&str>,
) -> Result<i64, sqlx::Error> {
    let event_id = request
        .payload
        .as_ref()
        .ok()
        .and_then(|p| p.event_id.as_deref());
    let id = sqlx::query_scalar(
        "INSERT INTO receipts (received_at, body, body_sha256, headers, outcome, finetune_id, status, event_id, error)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
         RETURNING id",
    )
    .bind(&request.received_at)
    .bind(&request.body)
    .bind(&request.body_sha256)
    .bind(&request.headers)
    .bind(outcome.as_str())
    .bind(finetune_id)
    .bind(status)
    .bind(event_id)
    .bind(error)
    .fetch_one(&mut *conn)
    .await?;
    Ok(id)
}
