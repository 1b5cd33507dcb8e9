//! Jobs tunehook submits itself, and the model access it sets: recorded
//! through the same planner as webhooks and reconcile passes (source
//! `api`), so their transitions and events reach the sinks like any other.
//! Also the `Idempotency-Key`s of `POST /v1/finetunes`: a key is claimed
//! before Segmind is called and completed in the transaction that records
//! the job, so a retried request cannot pay for a second one.

use super::{
    outbox::SinkRoute,
    plan::Planner,
    sql::{Conn, DbError, DbResult, args},
};
use crate::{
    domain::{Decision, JobFields, Observation, Source, Status, finetune_request::SubmitRequest},
    time::now_rfc3339,
};
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
    conn: &dyn Conn,
    submission: &Submission,
    routes: &[SinkRoute],
) -> DbResult<SubmissionResult> {
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
    let status = Status::parse("REQUESTED")
        .ok_or_else(|| DbError::unavailable("REQUESTED is not a status"))?;
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
        conn.execute(
            "UPDATE idempotency_keys SET finetune_id = ?2 WHERE key = ?1",
            args![key, submission.finetune_id],
        )?;
    }
    Ok(planned.unwrap_or_default())
}

/// Records the model's access on a known job; `None` when the job is not
/// known. Returns the deliveries of the `finetune.updated` event it made.
pub(super) fn record_access(
    conn: &dyn Conn,
    finetune_id: &str,
    public: bool,
    routes: &[SinkRoute],
) -> DbResult<Option<usize>> {
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
    conn: &dyn Conn,
    finetune_id: &str,
    status: Option<&Status>,
    fields: &JobFields,
    now: &str,
    routes: &[SinkRoute],
) -> DbResult<Option<SubmissionResult>> {
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

pub(super) fn claim(conn: &dyn Conn, key: &str, request_sha256: &str) -> DbResult<Claim> {
    let now = now_rfc3339();
    let cutoff = crate::time::rfc3339(
        chrono::Utc::now() - chrono::Duration::seconds(ABANDONED_CLAIM_SECONDS),
    );
    // The primary key decides between two requests racing with one key; an
    // abandoned claim (no job after the cutoff) is taken over.
    let taken = conn.execute(
        "INSERT INTO idempotency_keys (key, request_sha256, claimed_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (key) DO UPDATE SET request_sha256 = excluded.request_sha256,
            claimed_at = excluded.claimed_at
         WHERE idempotency_keys.finetune_id IS NULL AND idempotency_keys.claimed_at < ?4",
        args![key, request_sha256, now, cutoff],
    )?;
    if taken == 1 {
        return Ok(Claim::Fresh);
    }
    let row = conn.query_one(
        "SELECT request_sha256, finetune_id, response FROM idempotency_keys WHERE key = ?1",
        args![key],
    )?;
    let (sha, finetune_id, response): (String, Option<String>, Option<String>) =
        (row.get(0)?, row.get(1)?, row.get(2)?);
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
pub(super) fn release(conn: &dyn Conn, key: &str) -> DbResult<()> {
    conn.execute(
        "DELETE FROM idempotency_keys WHERE key = ?1 AND finetune_id IS NULL",
        args![key],
    )?;
    Ok(())
}

/// Keeps the answer given, for retries to get the same one.
pub(super) fn store_answer(conn: &dyn Conn, key: &str, response: &str) -> DbResult<()> {
    conn.execute(
        "UPDATE idempotency_keys SET response = ?2 WHERE key = ?1 AND response IS NULL",
        args![key, response],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;
    use std::path::PathBuf;

    /// The migrations in order, split at the one that allows source `api`.
    fn migrations() -> (Vec<PathBuf>, PathBuf) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join("sqlite");
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("the migrations folder")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .collect();
        files.sort();
        let at = files
            .iter()
            .position(|p| p.to_string_lossy().ends_with("_submissions.sql"))
            .expect("the submissions migration");
        let this = files.remove(at);
        files.truncate(at);
        (files, this)
    }

    #[test]
    fn the_transitions_rebuild_keeps_every_row_and_then_takes_source_api() {
        let conn = Connection::open_in_memory().expect("a database");
        let (before, this) = migrations();
        for file in &before {
            conn.execute_batch(&std::fs::read_to_string(file).expect("read"))
                .expect("an earlier migration");
        }
        conn.execute_batch(
            "INSERT INTO receipts (id, received_at, body, body_sha256, headers, outcome)
                VALUES (7, 't0', x'7b7d', 'h', '{}', 'applied');
             INSERT INTO jobs (finetune_id, status, status_rank, first_seen_at, updated_at)
                VALUES ('ft', 'TRAINING', 2, 't0', 't1');
             INSERT INTO transitions (event_id, finetune_id, from_status, to_status, source,
                observed_at, receipt_id)
                VALUES ('tr_1', 'ft', NULL, 'QUEUED', 'webhook', 't0', 7),
                       ('tr_2', 'ft', 'QUEUED', 'TRAINING', 'reconcile', 't1', NULL);",
        )
        .expect("rows of the earlier schema");
        let refused = conn.execute(
            "INSERT INTO transitions (event_id, finetune_id, to_status, source, observed_at)
             VALUES ('tr_x', 'ft', 'REQUESTED', 'api', 't2')",
            [],
        );
        assert!(refused.is_err(), "the earlier schema takes no source api");

        conn.pragma_update(None, "foreign_keys", false)
            .expect("keys off, as migrations run");
        conn.execute_batch(&std::fs::read_to_string(&this).expect("read"))
            .expect("this migration");
        let rows: Vec<(String, String, Option<i64>)> = conn
            .prepare("SELECT event_id, source, receipt_id FROM transitions ORDER BY id")
            .expect("a query")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(
            rows,
            [
                ("tr_1".to_owned(), "webhook".to_owned(), Some(7)),
                ("tr_2".to_owned(), "reconcile".to_owned(), None),
            ]
        );
        conn.execute(
            "INSERT INTO transitions (event_id, finetune_id, to_status, source, observed_at)
             VALUES ('tr_3', 'ft', 'REQUESTED', 'api', 't2')",
            [],
        )
        .expect("source api is taken");
        let broken: i64 = conn
            .query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
                r.get(0)
            })
            .expect("a check");
        assert_eq!(broken, 0);
        let indexed: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'transitions'
                 AND name NOT LIKE 'sqlite_autoindex%'",
                [],
                |r| r.get(0),
            )
            .expect("a count");
        assert!(indexed >= 1, "the index by receipt is made again");
    }

    fn migrated() -> Connection {
        let conn = Connection::open_in_memory().expect("a database");
        let (before, this) = migrations();
        for file in before.iter().chain([&this]) {
            conn.execute_batch(&std::fs::read_to_string(file).expect("read"))
                .expect("a migration");
        }
        conn
    }

    #[test]
    fn a_key_is_claimed_once_then_answers_by_its_state() {
        use super::{Claim, claim, release};
        let conn = migrated();
        assert_eq!(claim(&conn, "k", "h1").expect("claim"), Claim::Fresh);
        assert_eq!(claim(&conn, "k", "h1").expect("claim"), Claim::InProgress);
        assert_eq!(claim(&conn, "k", "h2").expect("claim"), Claim::Mismatch);

        release(&conn, "k").expect("release");
        assert_eq!(claim(&conn, "k", "h2").expect("claim"), Claim::Fresh);
        conn.execute(
            "UPDATE idempotency_keys SET finetune_id = 'ft' WHERE key = 'k'",
            [],
        )
        .expect("a job");
        release(&conn, "k").expect("a key with a job stays");
        assert_eq!(
            claim(&conn, "k", "h2").expect("claim"),
            Claim::Done {
                finetune_id: "ft".into(),
                response: None
            }
        );
    }

    #[test]
    fn an_abandoned_claim_is_taken_over_and_a_completed_one_never_is() {
        use super::{Claim, claim};
        let conn = migrated();
        conn.execute_batch(
            "INSERT INTO idempotency_keys (key, request_sha256, claimed_at)
                VALUES ('old', 'h', '2000-01-01T00:00:00.000000Z');
             INSERT INTO idempotency_keys (key, request_sha256, claimed_at, finetune_id)
                VALUES ('done', 'h', '2000-01-01T00:00:00.000000Z', 'ft');",
        )
        .expect("old claims");
        assert_eq!(claim(&conn, "old", "h").expect("claim"), Claim::Fresh);
        assert!(matches!(
            claim(&conn, "done", "h").expect("claim"),
            Claim::Done { .. }
        ));
    }
}
