//! Retention: removing old receipts, delivery attempts and delivered
//! deliveries, a small batch per writer step.
//!
//! Jobs, transitions, the events sent to sinks, pending and dead
//! deliveries, and receipts whose claim still waits for Segmind's API (a
//! pending confirmation) are never removed: they are the state and the work
//! still to do. A receipt named by a transition is removed too, and the transition's
//! `receipt_id` becomes null: bodies reach 1 MiB and are most of the
//! database, and keeping every one a transition names would let it grow
//! with the number of jobs for ever. A delivered delivery goes with its
//! attempts. Each step removes at most [`PRUNE_ROWS`] rows of each kind (and
//! receipts holding at most [`PRUNE_BYTES`] of bodies), so a webhook queued
//! behind it waits a few milliseconds, not for a whole year of history.

use super::{
    Store, StoreError,
    sql::{Conn, DbError, DbResult, args, query},
};
use serde::{Deserialize, Serialize};

/// Rows of each kind one step removes at most.
pub const PRUNE_ROWS: i64 = 500;
/// Bytes of receipt bodies one step removes at most (at least one receipt
/// goes, whatever its size): freeing a body's pages means reading them.
pub const PRUNE_BYTES: i64 = 8 * 1024 * 1024;

/// The times before which each kind of history goes; `None` keeps it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PruneCutoffs {
    pub receipts: Option<String>,
    pub attempts: Option<String>,
    pub delivered: Option<String>,
}

/// How many rows of each kind were (or would be) removed.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PruneCounts {
    pub receipts: u64,
    pub attempts: u64,
    pub delivered: u64,
}

impl std::ops::AddAssign for PruneCounts {
    fn add_assign(&mut self, other: PruneCounts) {
        self.receipts += other.receipts;
        self.attempts += other.attempts;
        self.delivered += other.delivered;
    }
}

/// What one step removed, and whether more is left.
#[derive(Debug, Clone, Copy, Default)]
pub struct PruneStep {
    pub removed: PruneCounts,
    pub more: bool,
}

/// A whole prune. The last one's is kept as JSON in `settings` (this
/// type's serde is that stored format); `/v1/status` shows it through
/// `http::views::RetentionState`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PruneReport {
    pub started_at: String,
    pub finished_at: String,
    pub removed: PruneCounts,
}

/// Where the last prune's report is kept (in `settings`), so that a prune
/// run by `tunehook prune` shows in the service's status too.
const LAST_PRUNE_KEY: &str = "last_prune";

/// Delivered deliveries older than ?1, oldest first.
const OLD_DELIVERED: &str = "SELECT id FROM deliveries WHERE status = 'delivered' AND delivered_at < ?1 ORDER BY delivered_at LIMIT ?2";
/// Attempts older than ?1, oldest first.
const OLD_ATTEMPTS: &str =
    "SELECT id FROM delivery_attempts WHERE started_at < ?1 ORDER BY started_at LIMIT ?2";
/// Receipts older than ?1, oldest first, with their bodies' sizes (read
/// from the record header, not the body).
const OLD_RECEIPTS: &str = "SELECT id, CAST(length(body) AS BIGINT) FROM receipts
    WHERE received_at < ?1 AND NOT EXISTS (SELECT 1 FROM confirmations c WHERE c.receipt_id = receipts.id)
    ORDER BY received_at LIMIT ?2";

/// What a prune with these cutoffs would remove: the same rows a run of
/// steps removes, attempts of removed deliveries included, counted once.
const PREVIEW: &str = "SELECT
    (SELECT COUNT(*) FROM receipts WHERE ?1 IS NOT NULL AND received_at < ?1
        AND NOT EXISTS (SELECT 1 FROM confirmations c WHERE c.receipt_id = receipts.id)),
    (SELECT COUNT(*) FROM delivery_attempts a
        WHERE (?2 IS NOT NULL AND a.started_at < ?2)
           OR (?3 IS NOT NULL AND a.delivery_id IN (
                SELECT id FROM deliveries WHERE status = 'delivered' AND delivered_at < ?3))),
    (SELECT COUNT(*) FROM deliveries WHERE ?3 IS NOT NULL AND status = 'delivered' AND delivered_at < ?3)";

/// One step: removes the oldest batch of each kind the cutoffs name.
/// How long an `Idempotency-Key` is kept: a retry comes within minutes,
/// and a day covers a client that retries after an outage.
pub const IDEMPOTENCY_KEY_HOURS: i64 = 24;

pub(super) fn step(conn: &dyn Conn, cutoffs: &PruneCutoffs) -> DbResult<PruneStep> {
    let mut done = PruneStep::default();
    // Housekeeping with every step: expired dashboard sessions, and
    // Idempotency-Keys past their day (nothing a user counts on).
    let now = chrono::Utc::now();
    conn.execute(
        "DELETE FROM ui_sessions WHERE expires_at <= ?1",
        args![crate::time::rfc3339(now)],
    )?;
    let keys = conn.execute(
        "DELETE FROM idempotency_keys WHERE key IN (
            SELECT key FROM idempotency_keys WHERE claimed_at < ?1 ORDER BY claimed_at LIMIT ?2)",
        args![
            crate::time::rfc3339(now - chrono::Duration::hours(IDEMPOTENCY_KEY_HOURS)),
            PRUNE_ROWS
        ],
    )?;
    done.more |= keys as i64 >= PRUNE_ROWS;
    if let Some(before) = &cutoffs.delivered {
        let ids = ids(conn, OLD_DELIVERED, before)?;
        done.more |= ids.len() as i64 >= PRUNE_ROWS;
        for id in ids {
            done.removed.attempts += conn.execute(
                "DELETE FROM delivery_attempts WHERE delivery_id = ?1",
                args![id],
            )?;
            done.removed.delivered +=
                conn.execute("DELETE FROM deliveries WHERE id = ?1", args![id])?;
        }
    }
    if let Some(before) = &cutoffs.attempts {
        let ids = ids(conn, OLD_ATTEMPTS, before)?;
        done.more |= ids.len() as i64 >= PRUNE_ROWS;
        for id in ids {
            done.removed.attempts +=
                conn.execute("DELETE FROM delivery_attempts WHERE id = ?1", args![id])?;
        }
    }
    if let Some(before) = &cutoffs.receipts {
        let found: Vec<(i64, i64)> = conn
            .query(OLD_RECEIPTS, args![before, PRUNE_ROWS])?
            .into_iter()
            .map(|row| Ok((row.get(0)?, row.get(1)?)))
            .collect::<DbResult<_>>()?;
        done.more |= found.len() as i64 >= PRUNE_ROWS;
        let mut bytes = 0;
        for (id, size) in found {
            if bytes > 0 && bytes + size > PRUNE_BYTES {
                done.more = true;
                break;
            }
            bytes += size;
            conn.execute(
                "UPDATE transitions SET receipt_id = NULL WHERE receipt_id = ?1",
                args![id],
            )?;
            done.removed.receipts +=
                conn.execute("DELETE FROM receipts WHERE id = ?1", args![id])?;
        }
    }
    Ok(done)
}

fn ids(conn: &dyn Conn, sql: &str, before: &str) -> DbResult<Vec<i64>> {
    conn.query(sql, args![before, PRUNE_ROWS])?
        .into_iter()
        .map(|row| row.get(0))
        .collect()
}

/// Keeps the report of the last prune.
pub(super) fn record(conn: &dyn Conn, report: &PruneReport) -> DbResult<()> {
    let value = serde_json::to_string(report).map_err(|e| DbError::unavailable(e.to_string()))?;
    conn.execute(
        "INSERT INTO settings (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        args![LAST_PRUNE_KEY, value],
    )?;
    Ok(())
}

impl Store {
    /// Removes one small batch of each kind of old history; `more` says
    /// whether another step has work.
    pub async fn prune_step(&self, cutoffs: &PruneCutoffs) -> Result<PruneStep, StoreError> {
        self.writer
            .run(super::commands::Prune(cutoffs.clone()))
            .await
    }

    /// Keeps `report` as the last prune.
    pub async fn record_prune(&self, report: PruneReport) -> Result<(), StoreError> {
        self.writer.run(super::commands::RecordPrune(report)).await
    }

    /// What a prune with these cutoffs would remove now; reads only.
    pub async fn prune_preview(&self, cutoffs: &PruneCutoffs) -> Result<PruneCounts, StoreError> {
        let (receipts, attempts, delivered): (i64, i64, i64) = query(PREVIEW)
            .bind(&cutoffs.receipts)
            .bind(&cutoffs.attempts)
            .bind(&cutoffs.delivered)
            .fetch_one(&self.reads)
            .await?;
        Ok(PruneCounts {
            receipts: receipts as u64,
            attempts: attempts as u64,
            delivered: delivered as u64,
        })
    }

    /// The last prune, by this process or another.
    pub async fn last_prune(&self) -> Result<Option<PruneReport>, StoreError> {
        let value: Option<String> = query("SELECT value FROM settings WHERE key = ?")
            .bind(LAST_PRUNE_KEY)
            .scalar_optional(&self.reads)
            .await?;
        Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::{Connection, params};

    const OLD: &str = "2025-01-01T00:00:00.000000Z";
    const NEW: &str = "2026-06-01T00:00:00.000000Z";
    const CUTOFF: &str = "2026-01-01T00:00:00.000000Z";

    fn database() -> Connection {
        let conn = Connection::open_in_memory().expect("a database");
        conn.pragma_update(None, "foreign_keys", true).expect("fk");
        for migration in super::super::sqlite::MIGRATOR.iter() {
            conn.execute_batch(&migration.sql)
                .expect("the migrations apply");
        }
        conn.execute(
            "INSERT INTO jobs (finetune_id, status, status_rank, first_seen_at, updated_at)
             VALUES ('j', 'AVAILABLE', 100, ?1, ?1)",
            [OLD],
        )
        .expect("a job");
        conn
    }

    fn receipt(conn: &Connection, at: &str) -> i64 {
        conn.execute(
            "INSERT INTO receipts (received_at, body, body_sha256, headers, outcome)
             VALUES (?1, x'7b7d', '', '{}', 'applied')",
            [at],
        )
        .expect("a receipt");
        conn.last_insert_rowid()
    }

    fn transition(conn: &Connection, status: &str, receipt_id: i64) {
        conn.execute(
            "INSERT INTO transitions (event_id, finetune_id, to_status, source, observed_at, receipt_id)
             VALUES (?1, 'j', ?2, 'webhook', ?3, ?4)",
            (format!("tr_{status}"), status, OLD, receipt_id),
        )
        .expect("a transition");
        conn.execute(
            "INSERT INTO events (event_id, type, finetune_id, status, source, observed_at, body)
             VALUES (?1, 'finetune.status_changed', 'j', ?2, 'webhook', ?3, '{}')",
            (format!("tr_{status}"), status, OLD),
        )
        .expect("its event");
    }

    fn delivery(conn: &Connection, status: &str, event: &str, delivered_at: Option<&str>) -> i64 {
        conn.execute(
            "INSERT INTO deliveries (sink, event_id, finetune_id, status, next_attempt_at, delivered_at, created_at)
             VALUES ('s', ?1, 'j', ?2, ?3, ?4, ?3)",
            (event, status, OLD, delivered_at),
        )
        .expect("a delivery");
        let id = conn.last_insert_rowid();
        conn.execute(
            "INSERT INTO delivery_attempts (delivery_id, started_at, duration_ms) VALUES (?1, ?2, 1)",
            (id, OLD),
        )
        .expect("an attempt");
        id
    }

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |row| row.get(0)).expect("a count")
    }

    fn preview(conn: &Connection, cutoffs: &PruneCutoffs) -> PruneCounts {
        conn.query_row(
            PREVIEW,
            params![cutoffs.receipts, cutoffs.attempts, cutoffs.delivered],
            |row| {
                Ok(PruneCounts {
                    receipts: row.get::<_, i64>(0)? as u64,
                    attempts: row.get::<_, i64>(1)? as u64,
                    delivered: row.get::<_, i64>(2)? as u64,
                })
            },
        )
        .expect("a preview")
    }

    fn prune_all(conn: &Connection, cutoffs: &PruneCutoffs) -> PruneCounts {
        let mut removed = PruneCounts::default();
        loop {
            let done = step(conn, cutoffs).expect("a step");
            removed += done.removed;
            if !done.more {
                return removed;
            }
        }
    }

    #[test]
    fn old_history_goes_and_jobs_transitions_pending_and_dead_deliveries_stay() {
        let conn = database();
        let old = receipt(&conn, OLD);
        let new = receipt(&conn, NEW);
        transition(&conn, "TRAINING", old);
        transition(&conn, "AVAILABLE", new);
        let delivered_old = delivery(&conn, "delivered", "tr_TRAINING", Some(OLD));
        let delivered_new = delivery(&conn, "delivered", "tr_AVAILABLE", Some(NEW));
        let dead = delivery(&conn, "dead", "tr_TRAINING", None);
        let pending = delivery(&conn, "pending", "tr_AVAILABLE", None);
        let cutoffs = PruneCutoffs {
            receipts: Some(CUTOFF.into()),
            attempts: None,
            delivered: Some(CUTOFF.into()),
        };
        let expected = preview(&conn, &cutoffs);
        let removed = prune_all(&conn, &cutoffs);
        assert_eq!(removed, expected, "the preview counts what a run removes");
        assert_eq!(
            removed,
            PruneCounts {
                receipts: 1,
                attempts: 1,
                delivered: 1
            }
        );
        let receipts: Vec<i64> = conn
            .prepare("SELECT id FROM receipts")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .expect("read");
        assert_eq!(receipts, vec![new]);
        // The transition stays; it no longer names the removed receipt.
        assert_eq!(
            count(
                &conn,
                "SELECT COUNT(*) FROM transitions WHERE receipt_id IS NULL"
            ),
            1
        );
        assert_eq!(count(&conn, "SELECT COUNT(*) FROM transitions"), 2);
        assert_eq!(count(&conn, "SELECT COUNT(*) FROM jobs"), 1);
        let deliveries: Vec<i64> = conn
            .prepare("SELECT id FROM deliveries ORDER BY id")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .expect("read");
        assert_eq!(deliveries, vec![delivered_new, dead, pending]);
        assert!(!deliveries.contains(&delivered_old));
        // With attempts kept, only the removed delivery's attempt went.
        assert_eq!(count(&conn, "SELECT COUNT(*) FROM delivery_attempts"), 3);

        let attempts = PruneCutoffs {
            attempts: Some(CUTOFF.into()),
            ..PruneCutoffs::default()
        };
        assert_eq!(preview(&conn, &attempts).attempts, 3);
        assert_eq!(prune_all(&conn, &attempts).attempts, 3);
        assert_eq!(count(&conn, "SELECT COUNT(*) FROM deliveries"), 3);
        assert_eq!(prune_all(&conn, &cutoffs), PruneCounts::default());
    }

    #[test]
    fn a_receipt_whose_claim_waits_for_confirmation_is_kept() {
        let conn = database();
        let waiting = receipt(&conn, OLD);
        let settled = receipt(&conn, OLD);
        conn.execute(
            "INSERT INTO confirmations (receipt_id, finetune_id, status, deadline, next_check_at)
             VALUES (?1, 'j', 'AVAILABLE', ?2, ?2)",
            (waiting, NEW),
        )
        .expect("a pending confirmation");
        let cutoffs = PruneCutoffs {
            receipts: Some(CUTOFF.into()),
            ..PruneCutoffs::default()
        };
        assert_eq!(preview(&conn, &cutoffs).receipts, 1);
        assert_eq!(prune_all(&conn, &cutoffs).receipts, 1);
        let left: Vec<i64> = conn
            .prepare("SELECT id FROM receipts")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .expect("read");
        assert_eq!(left, vec![waiting]);
        assert_ne!(waiting, settled);
    }

    #[test]
    fn a_step_removes_expired_sessions_and_idempotency_keys_past_their_day() {
        let conn = database();
        let day_ago = crate::time::rfc3339(chrono::Utc::now() - chrono::Duration::hours(25));
        let now = crate::time::now_rfc3339();
        let later = crate::time::rfc3339(chrono::Utc::now() + chrono::Duration::hours(1));
        conn.execute_batch(&format!(
            "INSERT INTO ui_sessions (id_sha256, token_sha256, created_at, expires_at)
                VALUES ('expired', 't', '{day_ago}', '{day_ago}'), ('open', 't', '{now}', '{later}');
             INSERT INTO idempotency_keys (key, request_sha256, claimed_at, finetune_id)
                VALUES ('old', 'h', '{day_ago}', 'ft'), ('fresh', 'h', '{now}', 'ft');"
        ))
        .expect("rows");
        step(&conn, &PruneCutoffs::default()).expect("a step");
        let left = |sql: &str| -> Vec<String> {
            conn.prepare(sql)
                .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                .expect("read")
        };
        assert_eq!(left("SELECT id_sha256 FROM ui_sessions"), ["open"]);
        assert_eq!(left("SELECT key FROM idempotency_keys"), ["fresh"]);
    }

    #[test]
    fn a_step_removes_a_small_batch_and_says_more_is_left() {
        let conn = database();
        let total = PRUNE_ROWS + 20;
        for _ in 0..total {
            receipt(&conn, OLD);
        }
        let cutoffs = PruneCutoffs {
            receipts: Some(CUTOFF.into()),
            ..PruneCutoffs::default()
        };
        let first = step(&conn, &cutoffs).expect("a step");
        assert_eq!(first.removed.receipts, PRUNE_ROWS as u64);
        assert!(first.more);
        let second = step(&conn, &cutoffs).expect("a step");
        assert_eq!(second.removed.receipts, 20);
        assert!(!second.more);
        assert_eq!(count(&conn, "SELECT COUNT(*) FROM receipts"), 0);
    }

    #[test]
    fn a_step_stops_at_its_byte_budget_but_always_removes_one_receipt() {
        let conn = database();
        for _ in 0..3 {
            conn.execute(
                "INSERT INTO receipts (received_at, body, body_sha256, headers, outcome)
                 VALUES (?1, zeroblob(?2), '', '{}', 'applied')",
                params![OLD, PRUNE_BYTES / 2 + 1],
            )
            .expect("a big receipt");
        }
        let cutoffs = PruneCutoffs {
            receipts: Some(CUTOFF.into()),
            ..PruneCutoffs::default()
        };
        let first = step(&conn, &cutoffs).expect("a step");
        assert_eq!(first.removed.receipts, 1);
        assert!(first.more);
        assert_eq!(prune_all(&conn, &cutoffs).receipts, 2);
    }
}
