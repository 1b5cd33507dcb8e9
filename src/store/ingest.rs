//! Storing webhook requests: each one's receipt, and what it does to its job.
//!
//! A batch of requests is planned in memory, in arrival order, against the
//! jobs it names (loaded once), then written with a few multi-row
//! statements. The writer runs this inside its batch transaction, so the
//! receipts, the jobs and the transitions commit together.

use super::{
    jobs::{self, NewTransition},
    outbox::{self, NewDelivery, SinkRoute},
};
use crate::domain::{Decision, Observation, Payload, Source, event, observe};
use serde::Serialize;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};
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
    /// Deliveries enqueued for that transition, one per matching sink.
    pub deliveries: usize,
}

/// Stores `requests` in order; answers one result per request.
pub(super) async fn execute_batch(
    conn: &mut SqliteConnection,
    requests: &[&IngestRequest],
    routes: &[SinkRoute],
) -> Result<Vec<IngestResult>, sqlx::Error> {
    let named: BTreeSet<&str> = requests
        .iter()
        .filter_map(|r| observable(r).map(|(id, _)| id))
        .collect();
    let mut known = jobs::load(conn, &named).await?;
    // The single writer is the only one inserting receipts, so ids can be
    // assigned here and used by the transitions that refer to them.
    let next_id: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) + 1 FROM receipts")
        .fetch_one(&mut *conn)
        .await?;

    let mut results = Vec::with_capacity(requests.len());
    let mut transitions = Vec::new();
    let mut deliveries = Vec::new();
    let mut changed = BTreeSet::new();
    for (receipt_id, request) in (next_id..).zip(requests) {
        let mut result = IngestResult {
            receipt_id,
            outcome: Outcome::Unrecognized,
            finetune_id: None,
            status: None,
            previous_status: None,
            transition_id: None,
            deliveries: 0,
        };
        match &request.payload {
            Err(_) => result.outcome = Outcome::Invalid,
            Ok(payload) => {
                result.finetune_id.clone_from(&payload.finetune_id);
                result.status = payload.status.as_ref().map(|s| s.as_str().to_owned());
            }
        }
        if let (Ok(payload), Some((finetune_id, status))) = (&request.payload, observable(request))
        {
            let observation = Observation {
                finetune_id,
                status,
                fields: &payload.fields,
                source: Source::Webhook,
                observed_at: &request.received_at,
            };
            let job = known.entry(finetune_id.to_owned()).or_default();
            let effect = observe(job, &observation);
            if effect.changed {
                changed.insert(finetune_id);
            }
            result.previous_status = effect.previous.map(|s| s.as_str().to_owned());
            result.outcome = match effect.decision {
                Decision::Apply => Outcome::Applied,
                Decision::Duplicate => Outcome::Duplicate,
                Decision::Stale => Outcome::Stale,
            };
            if let (Decision::Apply, Some(job)) = (effect.decision, job.as_ref()) {
                let event_id = jobs::new_transition_id();
                let event = event::status_changed(
                    &event_id,
                    &request.received_at,
                    result.previous_status.as_deref(),
                    Source::Webhook.as_str(),
                    job,
                );
                for route in routes.iter().filter(|r| r.wants(status)) {
                    deliveries.push(NewDelivery {
                        sink: route.name.clone(),
                        event_id: event_id.clone(),
                        finetune_id: finetune_id.to_owned(),
                    });
                    result.deliveries += 1;
                }
                let transition = NewTransition {
                    event_id,
                    finetune_id: finetune_id.to_owned(),
                    from_status: result.previous_status.clone(),
                    to_status: status.as_str().to_owned(),
                    source: Source::Webhook,
                    observed_at: request.received_at.clone(),
                    receipt_id: Some(receipt_id),
                    event,
                };
                result.transition_id = Some(transition.event_id.clone());
                transitions.push(transition);
            }
        }
        results.push(result);
    }

    insert_receipts(conn, requests, &results).await?;
    let changed: Vec<_> = changed
        .iter()
        .filter_map(|id| known.get(*id).and_then(Option::as_ref))
        .collect();
    jobs::upsert(conn, &changed).await?;
    jobs::insert_transitions(conn, &transitions).await?;
    if let Some(first) = requests.first() {
        outbox::insert_deliveries(conn, &deliveries, &first.received_at).await?;
    }
    Ok(results)
}

/// The job id and status of a request that names both.
fn observable(request: &IngestRequest) -> Option<(&str, &crate::domain::Status)> {
    let payload = request.payload.as_ref().ok()?;
    Some((payload.finetune_id.as_deref()?, payload.status.as_ref()?))
}

async fn insert_receipts(
    conn: &mut SqliteConnection,
    requests: &[&IngestRequest],
    results: &[IngestResult],
) -> Result<(), sqlx::Error> {
    let rows: Vec<_> = requests.iter().zip(results).collect();
    for chunk in rows.chunks(300) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO receipts (id, received_at, body, body_sha256, headers, outcome, finetune_id, status, event_id, error) ",
        );
        query.push_values(chunk, |mut row, (request, result)| {
            let (event_id, error) = match &request.payload {
                Ok(payload) => (payload.event_id.clone(), None),
                Err(reason) => (None, Some(reason.clone())),
            };
            row.push_bind(result.receipt_id)
                .push_bind(request.received_at.clone())
                .push_bind(request.body.clone())
                .push_bind(request.body_sha256.clone())
                .push_bind(request.headers.clone())
                .push_bind(result.outcome.as_str())
                .push_bind(result.finetune_id.clone())
                .push_bind(result.status.clone())
                .push_bind(event_id)
                .push_bind(error);
        });
        query.build().execute(&mut *conn).await?;
    }
    Ok(())
}
