//! Jobs tunehook submits itself, and the model access it sets: recorded
//! through the same planner as webhooks and reconcile passes (source
//! `api`), so their transitions and events reach the sinks like any other.
//! Also the `Idempotency-Key`s of `POST /v1/finetunes`: a key is claimed
//! before Segmind is called and completed in the transaction that records
//! the job, so a retried request cannot pay for a second one.

use super::{outbox::SinkRoute, plan::Planner};
use crate::{
    domain::{Decision, JobFields, Observation, Source, Status, finetune_request::SubmitRequest},
    time::now_rfc3339,
};
use rusqlite::Connection;
use std::collections::BTreeSet;

/// A claim older than this without a recorded job is taken for abandoned
/// (the process stopped while Segmind was asked), and may be claimed again.
const ABANDONED_CLAIM_SECONDS: i64 = 600;

/// A job Segmind accepted, as tunehook sent it.
#[derive(Debug, Clone)]
pub struct Submission {
    pub finetune_id: String,
    pub request: SubmitRequest,
    /// The `Idempotency-Key` the request came with, completed here.
    pub idempotency_key: Option<String>,
}

/// What recording a submission did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubmissionResult {
    /// A `REQUESTED` transition was recorded (false when Segmind's webhooks
    /// or API had already reported the job further).
    pub transition: bool,
    pub deliveries: usize,
}

/// What claiming an `Idempotency-Key` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is new (or its earlier claim was abandoned): go ahead.
    Fresh,
    /// A request with this key made this job; `response` is the answer it
    /// got, when that was stored.
    Done {
        finetune_id: String,
        response: Option<String>,
    },
    /// Another body was sent with this key.
    Mismatch,
    /// A request with this key is being sent to Segmind right now.
    InProgress,
}

pub(super) fn record(
    conn: &Connection,
    submission: &Submission,
    routes: &[SinkRoute],
) -> rusqlite::Result<SubmissionResult> {
    let request = &submission.request;
    let fields = JobFields {
        name: Some(request.name.clone()),
        base_model: Some(request.base_model.clone()),
        theme: Some(request.theme.clone()),
        train_type: Some(request.advance_parameters.finetune_type.clone()),
        data_source_path: Some(request.data_source_path.clone()),
        public_model: Some(request.segmind_public),
        ..JobFields::default()
    };
    let status = Status::parse("REQUESTED").ok_or(rusqlite::Error::InvalidQuery)?;
    let now = now_rfc3339();
    let planned = observe(
        conn,
        &submission.finetune_id,
        Some(&status),
        &fields,
        &now,
        routes,
    )?;
    if let Some(key) = &submission.idempotency_key {
        conn.prepare_cached("UPDATE idempotency_keys SET finetune_id = ?2 WHERE key = ?1")?
            .execute((key, &submission.finetune_id))?;
    }
    Ok(planned.unwrap_or_default())
}

/// Records the model's access on a known job; `None` when the job is not
/// known. Returns the deliveries of the `finetune.updated` event it made.
pub(super) fn record_access(
    conn: &Connection,
    finetune_id: &str,
    public: bool,
    routes: &[SinkRoute],
) -> rusqlite::Result<Option<usize>> {
    let fields = JobFields {
        public_model: Some(public),
        ..JobFields::default()
    };
    let now = now_rfc3339();
    Ok(observe(conn, finetune_id, None, &fields, &now, routes)?.map(|r| r.deliveries))
}

/// Runs one observation with source `api` through the planner. Without a
/// status, the job keeps its own (and must exist: `None` otherwise).
fn observe(
    conn: &Connection,
    finetune_id: &str,
    status: Option<&Status>,
    fields: &JobFields,
    now: &str,
    routes: &[SinkRoute],
) -> rusqlite::Result<Option<SubmissionResult>> {
    let ids = BTreeSet::from([finetune_id]);
    let mut planner = Planner::load(conn, &ids, routes)?;
    let status = match (status, planner.job(finetune_id)) {
        (Some(status), _) => status.clone(),
        (None, Some(job)) => job.status.clone(),
        (None, None) => return Ok(None),
    };
    let planned = planner.observe(
        &Observation {
            finetune_id,
            status: &status,
            fields,
            source: Source::Api,
            observed_at: now,
        },
        None,
    );
    planner.write(conn, now)?;
    Ok(Some(SubmissionResult {
        transition: planned.effect.decision == Decision::Apply,
        deliveries: planned.deliveries,
    }))
}

pub(super) fn claim(conn: &Connection, key: &str, request_sha256: &str) -> rusqlite::Result<Claim> {
    let now = now_rfc3339();
    let cutoff = crate::time::rfc3339(
        chrono::Utc::now() - chrono::Duration::seconds(ABANDONED_CLAIM_SECONDS),
    );
    // The primary key decides between two requests racing with one key; an
    // abandoned claim (no job after the cutoff) is taken over.
    let taken = conn
        .prepare_cached(
            "INSERT INTO idempotency_keys (key, request_sha256, claimed_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (key) DO UPDATE SET request_sha256 = excluded.request_sha256,
                claimed_at = excluded.claimed_at
             WHERE idempotency_keys.finetune_id IS NULL AND idempotency_keys.claimed_at < ?4",
        )?
        .execute((key, request_sha256, &now, &cutoff))?;
    if taken == 1 {
        return Ok(Claim::Fresh);
    }
    let (sha, finetune_id, response): (String, Option<String>, Option<String>) = conn
        .prepare_cached(
            "SELECT request_sha256, finetune_id, response FROM idempotency_keys WHERE key = ?1",
        )?
        .query_row([key], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
    Ok(match (sha == request_sha256, finetune_id) {
        (false, _) => Claim::Mismatch,
        (true, Some(finetune_id)) => Claim::Done {
            finetune_id,
            response,
        },
        (true, None) => Claim::InProgress,
    })
}

/// Gives up a claim whose request Segmind refused, so a retry asks again.
pub(super) fn release(conn: &Connection, key: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM idempotency_keys WHERE key = ?1 AND finetune_id IS NULL")?
        .execute([key])?;
    Ok(())
}

/// Keeps the answer given, for retries to get the same one.
pub(super) fn store_answer(conn: &Connection, key: &str, response: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE idempotency_keys SET response = ?2 WHERE key = ?1 AND response IS NULL",
    )?
    .execute((key, response))?;
    Ok(())
}
