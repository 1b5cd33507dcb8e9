//! The outbox: delivery rows written with the transitions they carry, the
//! attempts made on them, and the reads the delivery workers and the API
//! need.
//!
//! Per job and sink, only the oldest pending delivery (the head) has a real
//! `next_attempt_at`; the ones behind it wait with [`WAITING`], a time no
//! clock reaches, and the head's end (delivered or dead) makes the next one
//! due. So the due deliveries are exactly the heads whose time has come,
//! found through an index without looking at the queue behind them, however
//! long a sink outage made it.

use super::{
    Store, StoreError,
    sql::{Arg, Conn, DbResult, Pool, ToArg, args, query, row},
};
use crate::domain::{Status, event::EventType};
use std::collections::{BTreeMap, BTreeSet};

/// A configured sink as the store sees it: its name and its filters.
#[derive(Debug, Clone)]
pub struct SinkRoute {
    pub name: String,
    /// `None` forwards every status.
    pub statuses: Option<Vec<Status>>,
    /// The event types forwarded.
    pub events: Vec<EventType>,
}

impl SinkRoute {
    /// Whether an event of this kind, about a job in `status`, goes to the sink.
    pub fn wants(&self, kind: EventType, status: &Status) -> bool {
        self.events.contains(&kind)
            && self
                .statuses
                .as_ref()
                .is_none_or(|list| list.contains(status))
    }
}

/// Writes the waiting time into SQL text.
macro_rules! waiting {
    () => {
        "9999-12-31T23:59:59.999999Z"
    };
}

/// `next_attempt_at` of a pending delivery waiting behind an older pending
/// delivery of the same job to the same sink.
pub(super) const WAITING: &str = waiting!();

/// A delivery to create, due at once unless it waits behind another.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub sink: String,
    pub event_id: String,
    pub finetune_id: String,
}

pub(super) fn insert_deliveries(
    conn: &dyn Conn,
    deliveries: &[NewDelivery],
    now: &str,
) -> DbResult<()> {
    // A delivery waits when an older one of its job to its sink is pending:
    // one already stored, or one earlier in this list (the rows of one
    // statement do not see each other, so those are marked here).
    let mut queued = std::collections::HashSet::new();
    let rows: Vec<_> = deliveries
        .iter()
        .map(|d| {
            let behind = !queued.insert((d.sink.as_str(), d.finetune_id.as_str()));
            row![d.sink, d.event_id, d.finetune_id, behind]
        })
        .collect();
    conn.execute_rows(
        "INSERT INTO deliveries (sink, event_id, finetune_id, status, next_attempt_at, created_at)
         SELECT v.column1, v.column2, v.column3, 'pending',
            CASE WHEN v.column4 OR EXISTS (SELECT 1 FROM deliveries d
                                           WHERE d.sink = v.column1 AND d.finetune_id = v.column3
                                             AND d.status = 'pending')
                 THEN ?2 ELSE ?1 END,
            ?1
         FROM {rows}",
        args![now, WAITING],
        &rows,
    )?;
    Ok(())
}

/// What became of a delivery after an attempt.
#[derive(Debug, Clone)]
pub enum NextStep {
    Delivered,
    RetryAt(String),
    Dead,
}

/// One attempt, as the worker saw it.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub delivery_id: i64,
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: i64,
    pub status_code: Option<i64>,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
    pub response: Option<String>,
    pub next: NextStep,
}

/// Records attempts, each on a different delivery (a delivery has one
/// attempt in flight at a time), and what follows each: its delivery
/// delivered, dead or due again, and when a head is done with, the next
/// delivery of its job to its sink due.
pub(super) fn record_attempts(conn: &dyn Conn, records: &[&AttemptRecord]) -> DbResult<()> {
    let attempts: Vec<_> = records
        .iter()
        .map(|r| {
            row![
                r.delivery_id,
                r.started_at,
                r.duration_ms,
                r.status_code,
                r.exit_code,
                r.error,
                r.response,
            ]
        })
        .collect();
    conn.execute_rows(
        "INSERT INTO delivery_attempts (delivery_id, started_at, duration_ms, status_code,
            exit_code, error, response)
         SELECT * FROM {rows}",
        &[],
        &attempts,
    )?;
    let outcomes: Vec<_> = records
        .iter()
        .map(|r| {
            let (status, next_at, delivered_at) = match &r.next {
                NextStep::Delivered => ("delivered", None, Some(r.finished_at.as_str())),
                NextStep::RetryAt(at) => ("pending", Some(at.as_str()), None),
                NextStep::Dead => ("dead", None, None),
            };
            row![
                r.delivery_id,
                status,
                next_at,
                delivered_at,
                r.error,
                r.status_code.or(r.exit_code),
                r.started_at,
            ]
        })
        .collect();
    let updated: BTreeSet<i64> = conn
        .query_rows(
            "UPDATE deliveries SET status = v.column2, attempts = deliveries.attempts + 1,
                retry_step = deliveries.retry_step + 1,
                next_attempt_at = COALESCE(v.column3, deliveries.next_attempt_at),
                delivered_at = COALESCE(v.column4, deliveries.delivered_at),
                last_error = v.column5, last_status_code = v.column6, last_attempt_at = v.column7
             FROM {rows}
             WHERE deliveries.id = v.column1 AND deliveries.status = 'pending'
             RETURNING deliveries.id",
            &[],
            &outcomes,
        )?
        .iter()
        .map(|row| row.get(0))
        .collect::<DbResult<_>>()?;
    // The heads done with: the next delivery of each one's job is due.
    let ended: Vec<_> = records
        .iter()
        .filter(|r| updated.contains(&r.delivery_id) && !matches!(r.next, NextStep::RetryAt(_)))
        .map(|r| row![r.delivery_id, r.finished_at])
        .collect();
    conn.execute_rows(
        "UPDATE deliveries SET next_attempt_at = n.due
         FROM (SELECT (SELECT w.id FROM deliveries d
                       JOIN deliveries w ON w.sink = d.sink AND w.finetune_id = d.finetune_id
                       WHERE d.id = v.column1 AND w.status = 'pending'
                       ORDER BY w.id LIMIT 1) AS id,
                      v.column2 AS due
               FROM {rows}) AS n
         WHERE deliveries.id = n.id AND deliveries.next_attempt_at = ?1",
        args![WAITING],
        &ended,
    )?;
    Ok(())
}

/// Puts a dead or delivered delivery back to pending with a fresh retry
/// schedule, in its place in its job's queue: due now when no older
/// delivery of the job is pending (the later ones then wait behind it),
/// else waiting its turn. False when it is unknown or already pending.
pub(super) fn retry(conn: &dyn Conn, id: i64) -> DbResult<bool> {
    let updated = conn.execute(
        "UPDATE deliveries SET status = 'pending', retry_step = 0, next_attempt_at = ?1
         WHERE id = ?2 AND status IN ('dead', 'delivered')",
        args![crate::time::now_rfc3339(), id],
    )?;
    if updated == 1 {
        // Back in its place in the job's queue: every pending delivery but
        // the oldest waits, whichever of them this one is.
        conn.execute(
            "UPDATE deliveries SET next_attempt_at = ?2
             WHERE id IN (
                SELECT w.id FROM deliveries d
                JOIN deliveries w ON w.sink = d.sink AND w.finetune_id = d.finetune_id
                WHERE d.id = ?1 AND w.status = 'pending'
                  AND w.id > (SELECT MIN(x.id) FROM deliveries x
                              WHERE x.sink = d.sink AND x.finetune_id = d.finetune_id
                                AND x.status = 'pending'))",
            args![id, WAITING],
        )?;
    }
    Ok(updated == 1)
}

/// Past events to send again to one sink: those observed
/// at or after `since`, at most `limit` of them (the page may run on past
/// `limit` to end between two times: see [`Store::replay`]).
#[derive(Debug, Clone)]
pub struct ReplayRequest {
    pub sink: String,
    pub since: String,
    pub finetune_id: Option<String>,
    pub limit: u32,
}

/// What a replay did, and where the next page starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Deliveries created.
    pub enqueued: u64,
    /// Events skipped because a delivery of theirs to the sink was pending.
    pub skipped: u64,
    /// The `since` that continues where this page ended; `null` when no
    /// event is left.
    pub next_since: Option<String>,
}

/// Events one writer step of a replay looks at: small enough that the
/// webhooks queued behind it wait only a few milliseconds.
pub const REPLAY_CHUNK: u32 = 500;

/// One writer step of a replay: the events after `after` (in the order
/// of `(observed_at, id)`), no later than `until`, at most `limit`.
#[derive(Debug, Clone)]
pub(super) struct ReplayChunk {
    pub sink: String,
    pub finetune_id: Option<String>,
    pub after: (String, i64),
    pub until: String,
    pub limit: u32,
}

/// What one step did: the events it enqueued or skipped, the last one it
/// looked at, and the first one after that, if any.
#[derive(Debug, Clone, Default)]
pub(super) struct ReplayedChunk {
    pub enqueued: u64,
    pub skipped: u64,
    pub last: Option<(String, i64)>,
    pub next: Option<(String, i64)>,
}

/// Enqueues new deliveries to the sink of the events of one chunk (those
/// its filter takes); an event with a delivery to the sink still pending
/// is skipped, so a replay sent again queues nothing twice.
pub(super) fn replay_chunk(
    conn: &dyn Conn,
    chunk: &ReplayChunk,
    routes: &[SinkRoute],
) -> DbResult<ReplayedChunk> {
    let Some(route) = routes.iter().find(|r| r.name == chunk.sink) else {
        return Ok(ReplayedChunk::default());
    };
    // The sink's filters, written into the SQL as lists of placeholders
    // (`?5` onwards), the same statement on every database.
    let statuses: Vec<&str> = route
        .statuses
        .iter()
        .flatten()
        .map(Status::as_str)
        .collect();
    let kinds: Vec<&str> = route.events.iter().map(|k| k.as_str()).collect();
    let list = |from: usize, n: usize| {
        (from..from + n)
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let status_filter = match &route.statuses {
        None => String::new(),
        Some(_) if statuses.is_empty() => " AND false".to_owned(),
        Some(_) => format!(" AND status IN ({})", list(5, statuses.len())),
    };
    let kind_filter = if kinds.is_empty() {
        " AND false".to_owned()
    } else {
        format!(" AND type IN ({})", list(5 + statuses.len(), kinds.len()))
    };
    let limit_at = 5 + statuses.len() + kinds.len();
    let events_sql = format!(
        "FROM events
         WHERE (observed_at, id) > (?1, ?2) AND observed_at <= ?3
           AND (?4 IS NULL OR finetune_id = ?4){status_filter}{kind_filter}
         ORDER BY observed_at, id LIMIT ?{limit_at}"
    );
    let bind = |since: &(String, i64), until: &str, limit: u32| -> Vec<Arg<'static>> {
        let mut values = vec![
            since.0.to_arg().into_owned(),
            since.1.to_arg().into_owned(),
            until.to_arg().into_owned(),
            chunk.finetune_id.to_arg().into_owned(),
        ];
        values.extend(statuses.iter().map(|s| s.to_arg().into_owned()));
        values.extend(kinds.iter().map(|k| k.to_arg().into_owned()));
        values.push(limit.to_arg().into_owned());
        values
    };
    let events: Vec<(i64, String, String, String)> = conn
        .query(
            &format!("SELECT id, event_id, finetune_id, observed_at {events_sql}"),
            &bind(&chunk.after, &chunk.until, chunk.limit),
        )?
        .into_iter()
        .map(|row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)))
        .collect::<DbResult<_>>()?;
    let now = crate::time::now_rfc3339();
    let mut done = ReplayedChunk::default();
    for (id, event_id, finetune_id, observed_at) in events {
        let pending: bool = conn
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM deliveries
                    WHERE sink = ?1 AND finetune_id = ?2 AND status = 'pending' AND event_id = ?3)",
                args![route.name, finetune_id, event_id],
            )?
            .get(0)?;
        if pending {
            done.skipped += 1;
        } else {
            // Each job's events queue in order: the first is due unless the
            // job already has a pending delivery to the sink.
            let delivery = NewDelivery {
                sink: route.name.clone(),
                event_id,
                finetune_id,
            };
            insert_deliveries(conn, &[delivery], &now)?;
            done.enqueued += 1;
        }
        done.last = Some((observed_at, id));
    }
    let from = done.last.clone().unwrap_or_else(|| chunk.after.clone());
    done.next = conn
        .query_opt(
            &format!("SELECT observed_at, id {events_sql}"),
            &bind(&from, WAITING, 1),
        )?
        .map(|row| Ok::<_, super::sql::DbError>((row.get(0)?, row.get(1)?)))
        .transpose()?;
    Ok(done)
}

/// A delivery due for an attempt, with the event it carries.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DueDelivery {
    pub id: i64,
    pub event_id: String,
    pub finetune_id: String,
    pub retry_step: i64,
    pub event: String,
    /// `finetune.status_changed` or `finetune.updated`.
    pub event_type: String,
    /// The status the event reports (the job's current one for an update).
    pub to_status: String,
    pub from_status: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryRow {
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

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AttemptRow {
    pub started_at: String,
    pub duration_ms: i64,
    pub status_code: Option<i64>,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
    pub response: Option<String>,
}

/// Which deliveries to list: newest first, older than `before_id`.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub status: Option<String>,
    pub sink: Option<String>,
    pub finetune_id: Option<String>,
    pub limit: u32,
    pub before_id: Option<i64>,
}

/// A sink's health as the outbox shows it.
#[derive(Debug, Clone, Default)]
pub struct SinkHealth {
    pub pending: i64,
    pub dead: i64,
    pub last_success: Option<String>,
    pub last_failure: Option<String>,
}

/// One delivery of a transition, as shown on the job.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TransitionDelivery {
    pub event_id: String,
    pub id: i64,
    pub sink: String,
    pub status: String,
    pub attempts: i64,
}

pub(super) const DELIVERY_COLUMNS: &str = concat!(
    "id, sink, event_id, finetune_id, status, attempts,
    CASE WHEN status = 'pending' AND next_attempt_at <> '",
    waiting!(),
    "' THEN next_attempt_at END AS next_attempt_at,
    last_error, last_status_code, delivered_at"
);

impl Store {
    /// Enqueues past events to one sink again, [`REPLAY_CHUNK`] events per
    /// writer step so that webhooks wait behind one small step at most.
    /// A page holds `limit` events, then runs on to the last event of the
    /// same time: `next_since` is a time, and a page that ended among
    /// events of one time would send the rest again, or never reach them.
    pub async fn replay(&self, request: ReplayRequest) -> Result<Replayed, StoreError> {
        let mut after = (request.since.clone(), i64::MIN);
        let mut remaining = request.limit;
        let mut replayed = Replayed::default();
        loop {
            // Past the limit, only events of the last time are taken.
            let (limit, until) = if remaining > 0 {
                (remaining.min(REPLAY_CHUNK), WAITING.to_owned())
            } else {
                (REPLAY_CHUNK, after.0.clone())
            };
            let chunk = ReplayChunk {
                sink: request.sink.clone(),
                finetune_id: request.finetune_id.clone(),
                after: after.clone(),
                until,
                limit,
            };
            let done = self.writer.run(super::commands::Replay(chunk)).await?;
            replayed.enqueued += done.enqueued;
            replayed.skipped += done.skipped;
            let looked_at = u32::try_from(done.enqueued + done.skipped).unwrap_or(u32::MAX);
            remaining = remaining.saturating_sub(looked_at);
            if let Some(last) = done.last {
                after = last;
            }
            match done.next {
                None => return Ok(replayed),
                Some((at, _)) if remaining == 0 && at != after.0 => {
                    replayed.next_since = Some(at);
                    return Ok(replayed);
                }
                Some(_) => {}
            }
        }
    }

    /// Deliveries to `sink` due at `now`, oldest first: heads of their job's
    /// queue. The `NOT EXISTS` keeps per-job order even if a row were due
    /// out of turn; on heads it costs one index probe each.
    pub async fn due_deliveries(
        &self,
        sink: &str,
        now: &str,
        limit: u32,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        Ok(query(
            "SELECT d.id, d.event_id, d.finetune_id, d.retry_step, e.body AS event,
                    e.type AS event_type, e.status AS to_status, e.previous_status AS from_status
             FROM deliveries d JOIN events e ON e.event_id = d.event_id
             WHERE d.sink = ?1 AND d.status = 'pending' AND d.next_attempt_at <= ?2
               AND NOT EXISTS (
                   SELECT 1 FROM deliveries e
                   WHERE e.sink = ?1 AND e.status = 'pending'
                     AND e.finetune_id = d.finetune_id AND e.id < d.id)
             ORDER BY d.next_attempt_at, d.id LIMIT ?3",
        )
        .bind(sink)
        .bind(now)
        .bind_owned(limit)
        .fetch_all(&self.reads)
        .await?)
    }

    /// When the next pending delivery to `sink` after `now` falls due.
    pub async fn next_due_after(
        &self,
        sink: &str,
        now: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(query(
            "SELECT MIN(next_attempt_at) FROM deliveries
             WHERE sink = ? AND status = 'pending' AND next_attempt_at > ? AND next_attempt_at < ?",
        )
        .bind(sink)
        .bind(now)
        .bind(WAITING)
        .scalar(&self.reads)
        .await?)
    }

    pub async fn deliveries(
        &self,
        filter: &DeliveryFilter,
    ) -> Result<(Vec<DeliveryRow>, Option<i64>), StoreError> {
        let mut query = query(format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE 1 = 1"
        ));
        if let Some(status) = &filter.status {
            query.push(" AND status = ").push_bind(status.clone());
        }
        if let Some(sink) = &filter.sink {
            query.push(" AND sink = ").push_bind(sink.clone());
        }
        if let Some(id) = &filter.finetune_id {
            query.push(" AND finetune_id = ").push_bind(id.clone());
        }
        if let Some(before) = filter.before_id {
            query.push(" AND id < ").push_bind(before);
        }
        query
            .push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(filter.limit) + 1);
        let mut rows: Vec<DeliveryRow> = query.fetch_all(&self.reads).await?;
        let next = if rows.len() > filter.limit as usize {
            rows.truncate(filter.limit as usize);
            rows.last().map(|r| r.id)
        } else {
            None
        };
        Ok((rows, next))
    }

    pub async fn delivery(&self, id: i64) -> Result<Option<DeliveryRow>, StoreError> {
        let sql = format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ?");
        Ok(query(sql).bind(&id).fetch_optional(&self.reads).await?)
    }

    pub async fn attempts(&self, delivery_id: i64) -> Result<Vec<AttemptRow>, StoreError> {
        Ok(query(
            "SELECT started_at, duration_ms, status_code, exit_code, error, response
             FROM delivery_attempts WHERE delivery_id = ? ORDER BY id",
        )
        .bind(&delivery_id)
        .fetch_all(&self.reads)
        .await?)
    }

    /// Pending and dead deliveries per sink, read from the index of
    /// deliveries not yet delivered (never from the delivered rows).
    pub async fn outbox_counts(&self) -> Result<BTreeMap<String, (i64, i64)>, StoreError> {
        outbox_counts_on(&self.reads).await
    }

    /// Pending and dead counts and the last success and failure of each of
    /// `sinks`, through indexes (migration 0013): the counts from the index
    /// of what is not delivered, the last success from the newest delivered
    /// row of the sink, the last failure from the newest failed attempts.
    pub async fn sink_health(
        &self,
        sinks: &[&str],
    ) -> Result<BTreeMap<String, SinkHealth>, StoreError> {
        let counts = self.outbox_counts().await?;
        let mut health = BTreeMap::new();
        for &sink in sinks {
            let (pending, dead) = counts.get(sink).copied().unwrap_or_default();
            let last_success: Option<String> = query(
                "SELECT MAX(delivered_at) FROM deliveries WHERE sink = ? AND status = 'delivered'",
            )
            .bind(sink)
            .scalar(&self.reads)
            .await?;
            let last_failure: Option<String> = query(
                "SELECT a.started_at FROM delivery_attempts a
                 JOIN deliveries d ON d.id = a.delivery_id
                 WHERE a.error IS NOT NULL AND d.sink = ?
                 ORDER BY a.started_at DESC LIMIT 1",
            )
            .bind(sink)
            .scalar_optional(&self.reads)
            .await?;
            health.insert(
                sink.to_owned(),
                SinkHealth {
                    pending,
                    dead,
                    last_success,
                    last_failure,
                },
            );
        }
        Ok(health)
    }

    /// Every delivery of a job's transitions.
    pub async fn job_deliveries(
        &self,
        finetune_id: &str,
    ) -> Result<Vec<TransitionDelivery>, StoreError> {
        Ok(query(
            "SELECT event_id, id, sink, status, attempts FROM deliveries WHERE finetune_id = ? ORDER BY id",
        )
        .bind(finetune_id)
        .fetch_all(&self.reads)
        .await?)
    }
}

/// The per-sink counts of pending and dead deliveries. The `status <>
/// 'delivered'` term is the index's own condition, word for word, which is
/// what lets SQLite use that partial index.
pub(super) const OUTBOX_COUNTS: &str = "SELECT sink,
        COUNT(*) FILTER (WHERE status = 'pending'), COUNT(*) FILTER (WHERE status = 'dead')
     FROM deliveries WHERE status <> 'delivered' GROUP BY sink";

pub(super) async fn outbox_counts_on(
    pool: &Pool,
) -> Result<BTreeMap<String, (i64, i64)>, StoreError> {
    let rows: Vec<(String, i64, i64)> = query(OUTBOX_COUNTS).fetch_all(pool).await?;
    Ok(rows
        .into_iter()
        .map(|(sink, pending, dead)| (sink, (pending, dead)))
        .collect())
}

#[cfg(test)]
mod tests {
    //! The queue rule, over any sequence of what can happen to deliveries:
    //! per job and sink, the oldest pending delivery is the only one with a
    //! time of its own, and every other pending one waits.

    use super::*;
    use proptest::prelude::*;
    use rusqlite::Connection;

    const JOBS: [&str; 3] = ["a", "b", "c"];
    const NOW: &str = "2026-01-01T00:00:00.000000Z";

    #[derive(Debug, Clone)]
    enum Op {
        /// New transitions of jobs, forwarded to the sink, written together.
        Transitions(Vec<usize>),
        /// Attempts on jobs' due deliveries, with their outcomes, recorded
        /// together.
        Attempts(Vec<(usize, Outcome)>),
        /// Sending a finished delivery again, by its rank among them.
        Retry(usize),
        /// Replaying every event to the sink, or one job's.
        Replay(Option<usize>),
    }

    #[derive(Debug, Clone, Copy)]
    enum Outcome {
        Delivered,
        RetryLater,
        Dead,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => prop::collection::vec(0..JOBS.len(), 1..4).prop_map(Op::Transitions),
            4 => prop::collection::vec((0..JOBS.len(), prop_oneof![
                Just(Outcome::Delivered),
                Just(Outcome::RetryLater),
                Just(Outcome::Dead)
            ]), 1..4)
                .prop_map(Op::Attempts),
            1 => (0..50usize).prop_map(Op::Retry),
            1 => proptest::option::of(0..JOBS.len()).prop_map(Op::Replay),
        ]
    }

    /// SQLite running a statement over all its rows in one go, as
    /// PostgreSQL does: no row sees what another one wrote.
    struct AllAtOnce<'c>(&'c Connection);

    impl AllAtOnce<'_> {
        fn all_rows<'a>(
            sql: &str,
            args: &[Arg<'a>],
            rows: &[Vec<Arg<'a>>],
        ) -> (String, Vec<Arg<'a>>) {
            let mut all = args.to_vec();
            let mut values = Vec::new();
            for row in rows {
                let first = all.len();
                all.extend(row.iter().cloned());
                let places: Vec<String> =
                    (first + 1..=all.len()).map(|n| format!("?{n}")).collect();
                values.push(format!("({})", places.join(", ")));
            }
            (
                sql.replace(
                    super::super::sql::ROWS,
                    &format!("(VALUES {}) AS v", values.join(", ")),
                ),
                all,
            )
        }
    }

    impl Conn for AllAtOnce<'_> {
        fn execute(&self, sql: &str, args: &[Arg<'_>]) -> DbResult<u64> {
            Conn::execute(self.0, sql, args)
        }
        fn query(&self, sql: &str, args: &[Arg<'_>]) -> DbResult<Vec<super::super::sql::Row>> {
            Conn::query(self.0, sql, args)
        }
        fn execute_rows(
            &self,
            sql: &str,
            args: &[Arg<'_>],
            rows: &[Vec<Arg<'_>>],
        ) -> DbResult<u64> {
            if rows.is_empty() {
                return Ok(0);
            }
            let (sql, all) = Self::all_rows(sql, args, rows);
            Conn::execute(self.0, &sql, &all)
        }
        fn query_rows(
            &self,
            sql: &str,
            args: &[Arg<'_>],
            rows: &[Vec<Arg<'_>>],
        ) -> DbResult<Vec<super::super::sql::Row>> {
            if rows.is_empty() {
                return Ok(Vec::new());
            }
            let (sql, all) = Self::all_rows(sql, args, rows);
            Conn::query(self.0, &sql, &all)
        }
    }

    fn database() -> Connection {
        let conn = Connection::open_in_memory().expect("a database");
        for migration in super::super::sqlite::MIGRATOR.iter() {
            conn.execute_batch(&migration.sql)
                .expect("the migrations apply");
        }
        for job in JOBS {
            conn.execute(
                "INSERT INTO jobs (finetune_id, status, status_rank, first_seen_at, updated_at)
                 VALUES (?1, 'TRAINING', 20, ?2, ?2)",
                (job, NOW),
            )
            .expect("a job");
        }
        conn
    }

    /// The delivery of `job` that is due, if any.
    fn due(conn: &Connection, job: &str) -> Option<i64> {
        conn.query_row(
            "SELECT id FROM deliveries WHERE finetune_id = ?1 AND status = 'pending'
               AND next_attempt_at <> ?2 ORDER BY id LIMIT 1",
            (job, WAITING),
            |row| row.get(0),
        )
        .ok()
    }

    /// Applies `op`; `writes` runs the store's writes (row by row, or all
    /// at once).
    fn apply(conn: &Connection, writes: &dyn Conn, routes: &[SinkRoute], step: usize, op: &Op) {
        match op {
            Op::Transitions(jobs) => {
                let mut deliveries = Vec::new();
                for (n, job) in jobs.iter().enumerate() {
                    let event_id = format!("tr_{step}_{n}");
                    conn.execute(
                        "INSERT INTO events (event_id, type, finetune_id, status, source, observed_at, body)
                         VALUES (?1, 'finetune.status_changed', ?2, ?3, 'webhook', ?4, '{}')",
                        (&event_id, JOBS[*job], format!("S{step}_{n}"), NOW),
                    )
                    .expect("an event");
                    deliveries.push(NewDelivery {
                        sink: "s".into(),
                        event_id,
                        finetune_id: JOBS[*job].into(),
                    });
                }
                insert_deliveries(writes, &deliveries, NOW).expect("inserted");
            }
            Op::Attempts(attempts) => {
                let mut records = Vec::new();
                for (job, outcome) in attempts {
                    // One attempt in flight per delivery.
                    let Some(id) = due(conn, JOBS[*job]) else {
                        continue;
                    };
                    if records.iter().any(|r: &AttemptRecord| r.delivery_id == id) {
                        continue;
                    }
                    let next = match outcome {
                        Outcome::Delivered => NextStep::Delivered,
                        Outcome::RetryLater => {
                            NextStep::RetryAt("2026-01-01T00:00:05.000000Z".into())
                        }
                        Outcome::Dead => NextStep::Dead,
                    };
                    let record = AttemptRecord {
                        delivery_id: id,
                        started_at: NOW.into(),
                        finished_at: NOW.into(),
                        duration_ms: 1,
                        status_code: Some(500),
                        exit_code: None,
                        error: None,
                        response: None,
                        next,
                    };
                    records.push(record);
                }
                let records: Vec<&AttemptRecord> = records.iter().collect();
                record_attempts(writes, &records).expect("recorded");
            }
            Op::Retry(rank) => {
                let finished: Vec<i64> = conn
                    .prepare("SELECT id FROM deliveries WHERE status <> 'pending' ORDER BY id")
                    .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
                    .expect("read");
                if let Some(id) = finished.get(rank % finished.len().max(1)) {
                    assert!(retry(writes, *id).expect("retried"));
                }
            }
            Op::Replay(job) => {
                let chunk = ReplayChunk {
                    sink: "s".into(),
                    finetune_id: job.map(|j| JOBS[j].to_owned()),
                    after: ("2000-01-01T00:00:00Z".into(), i64::MIN),
                    until: WAITING.into(),
                    limit: 1000,
                };
                replay_chunk(writes, &chunk, routes).expect("replayed");
            }
        }
    }

    proptest! {
        #[test]
        fn only_the_oldest_pending_delivery_of_a_job_is_ever_due(
            ops in prop::collection::vec(op(), 1..60),
            at_once in any::<bool>(),
        ) {
            let conn = database();
            let all_at_once = AllAtOnce(&conn);
            let writes: &dyn Conn = if at_once { &all_at_once } else { &conn };
            let routes = [SinkRoute { name: "s".into(), statuses: None, events: EventType::ALL.to_vec() }];
            for (step, op) in ops.iter().enumerate() {
                apply(&conn, writes, &routes, step, op);
                for job in JOBS {
                    let pending: Vec<(i64, String)> = conn
                        .prepare("SELECT id, next_attempt_at FROM deliveries
                                  WHERE finetune_id = ?1 AND status = 'pending' ORDER BY id")
                        .and_then(|mut s| s.query_map([job], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
                        .expect("read");
                    for (i, (id, at)) in pending.iter().enumerate() {
                        prop_assert_eq!(
                            i == 0,
                            at != WAITING,
                            "after {:?}: delivery {} of job {} ({}), pending: {:?}",
                            op, id, job, at, pending
                        );
                    }
                }
            }
        }
    }
}
