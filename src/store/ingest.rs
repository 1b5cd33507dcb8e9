//! Storing webhook requests: each one's receipt, and what it does to its job.
//!
//! A batch of requests is planned in memory, in arrival order, against the
//! jobs it names (loaded once), then written with a few multi-row
//! statements. The writer runs this inside its batch transaction, so the
//! receipts, the jobs and the transitions commit together.

use super::{
    confirm,
    outbox::SinkRoute,
    plan::Planner,
    sql::{Conn, DbResult, row},
};
use crate::domain::{Decision, Job, Observation, Payload, Source};
use std::collections::BTreeSet;

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
    /// When set, the webhook's claim waits, stored, for Segmind's API to
    /// agree, until this time (RFC 3339); when unset it is applied at once.
    pub confirm_until: Option<String>,
    /// With `confirm_until`: how many claims may wait at once. A claim
    /// beyond it is not queued: the webhook is stored with outcome
    /// `dropped`, confirmation `unconfirmed` and [`NOT_QUEUED`] as its
    /// error, and never applied on its word; a real change still arrives
    /// with the reconciler's pass.
    pub max_pending_confirmations: usize,
}

/// What storing a webhook did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Applied,
        Outcome::Duplicate,
        Outcome::Stale,
        Outcome::Unrecognized,
        Outcome::Invalid,
        Outcome::Confirming,
        Outcome::Contradicted,
        Outcome::Dropped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Stale => "stale",
            Outcome::Unrecognized => "unrecognized",
            Outcome::Invalid => "invalid",
            Outcome::Confirming => "confirming",
            Outcome::Contradicted => "contradicted",
            Outcome::Dropped => "dropped",
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
    /// Deliveries enqueued for that transition, one per matching sink.
    pub deliveries: usize,
    /// The job is new, or finished without its URLs: worth asking Segmind
    /// for its details.
    pub needs_details: bool,
}

/// Stores `requests` in order; answers one result per request.
pub(super) fn execute_batch(
    conn: &dyn Conn,
    requests: &[&IngestRequest],
    routes: &[SinkRoute],
) -> DbResult<Vec<IngestResult>> {
    let named: BTreeSet<&str> = requests
        .iter()
        .filter_map(|r| observable(r).map(|(id, _)| id))
        .collect();
    let mut planner = Planner::load(conn, &named, routes)?;
    // The writer holds the database's write lock, so no other transaction
    // inserts receipts meanwhile: ids can be assigned here and used by the
    // transitions that refer to them.
    let next_id: i64 = conn
        .query_one("SELECT COALESCE(MAX(id), 0) + 1 FROM receipts", &[])?
        .get(0)?;

    // Claims already waiting, counted once a batch: only the writer adds
    // them, so counting on through the batch keeps the number true.
    let mut waiting = if requests.iter().any(|r| r.confirm_until.is_some()) {
        confirm::count_pending(conn)?
    } else {
        0
    };
    let mut results = Vec::with_capacity(requests.len());
    let mut pending = Vec::new();
    for (receipt_id, request) in (next_id..).zip(requests) {
        let mut result = IngestResult {
            receipt_id,
            outcome: Outcome::Unrecognized,
            finetune_id: None,
            status: None,
            previous_status: None,
            transition_id: None,
            deliveries: 0,
            needs_details: false,
        };
        match &request.payload {
            Err(_) => result.outcome = Outcome::Invalid,
            Ok(payload) => {
                result.finetune_id.clone_from(&payload.finetune_id);
                result.status = payload.status.as_ref().map(|s| s.as_str().to_owned());
            }
        }
        if let (Some(deadline), Some((finetune_id, status))) =
            (&request.confirm_until, observable(request))
        {
            if waiting >= request.max_pending_confirmations {
                result.outcome = Outcome::Dropped;
            } else {
                waiting += 1;
                result.outcome = Outcome::Confirming;
                pending.push(confirm::Pending {
                    receipt_id,
                    finetune_id,
                    status,
                    received_at: &request.received_at,
                    deadline,
                });
            }
        } else if let (Ok(payload), Some((finetune_id, status))) =
            (&request.payload, observable(request))
        {
            let observation = Observation {
                finetune_id,
                status,
                fields: &payload.fields,
                source: Source::Webhook,
                observed_at: &request.received_at,
            };
            let planned = planner.observe(&observation, Some(receipt_id));
            result.previous_status = planned
                .effect
                .previous
                .as_ref()
                .map(|s| s.as_str().to_owned());
            result.outcome = match planned.effect.decision {
                Decision::Apply => Outcome::Applied,
                Decision::Duplicate => Outcome::Duplicate,
                Decision::Stale => Outcome::Stale,
            };
            result.transition_id = planned.transition_id;
            result.deliveries = planned.deliveries;
            result.needs_details = planner.job(finetune_id).is_some_and(Job::lacks_details)
                || planned.effect.previous.is_none();
        }
        results.push(result);
    }

    insert_receipts(conn, requests, &results)?;
    confirm::insert_pending(conn, &pending)?;
    let now = requests
        .first()
        .map(|r| r.received_at.as_str())
        .unwrap_or_default();
    planner.write(conn, now)?;
    Ok(results)
}

/// Why a receipt is `dropped` as it is stored (the only way it can be then).
pub const NOT_QUEUED: &str =
    "not queued for confirmation: ingest.max_pending_confirmations claims were already waiting";

/// A receipt's `confirmation` as stored, and a note for its `error`: a
/// claim waiting, or one refused a place because too many wait.
fn confirmation_at_receipt(outcome: Outcome) -> (Option<&'static str>, Option<&'static str>) {
    match outcome {
        Outcome::Confirming => (Some("pending"), None),
        Outcome::Dropped => (Some("unconfirmed"), Some(NOT_QUEUED)),
        _ => (None, None),
    }
}

/// The job id and status of a request that names both.
fn observable(request: &IngestRequest) -> Option<(&str, &crate::domain::Status)> {
    let payload = request.payload.as_ref().ok()?;
    Some((payload.finetune_id.as_deref()?, payload.status.as_ref()?))
}

fn insert_receipts(
    conn: &dyn Conn,
    requests: &[&IngestRequest],
    results: &[IngestResult],
) -> DbResult<()> {
    let rows: Vec<_> = requests
        .iter()
        .zip(results)
        .map(|(request, result)| {
            let (confirmation, note) = confirmation_at_receipt(result.outcome);
            let (event_id, error) = match &request.payload {
                Ok(payload) => (payload.event_id.as_deref(), note),
                Err(reason) => (None, Some(reason.as_str())),
            };
            row![
                result.receipt_id,
                request.received_at,
                request.body,
                request.body_sha256,
                request.headers,
                result.outcome.as_str(),
                result.finetune_id,
                result.status,
                event_id,
                error,
                confirmation,
            ]
        })
        .collect();
    conn.execute_rows(
        "INSERT INTO receipts (id, received_at, body, body_sha256, headers, outcome,
            finetune_id, status, event_id, error, confirmation)
         SELECT * FROM {rows}",
        &[],
        &rows,
    )?;
    Ok(())
}
