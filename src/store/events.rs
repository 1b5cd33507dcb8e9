//! Events, on the writer's connection: one row per event sent to sinks,
//! whichever kind, in the order they were made. Deliveries refer to these
//! rows, so a status change and a later field update of one job reach each
//! sink in that order, through the same per-job queue.

use super::{
    Store, StoreError,
    sql::{Conn, DbResult, query, row},
};
use crate::domain::event::EventType;

/// An event to record.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: String,
    pub kind: EventType,
    pub finetune_id: String,
    /// The new status (a status change) or the current one (an update).
    pub status: String,
    pub previous_status: Option<String>,
    /// The fields an update changed.
    pub changed: Vec<&'static str>,
    pub source: &'static str,
    pub observed_at: String,
    /// The event as sent, JSON text.
    pub body: String,
}

pub fn insert(conn: &dyn Conn, events: &[NewEvent]) -> DbResult<()> {
    let rows: Vec<_> = events
        .iter()
        .map(|e| {
            let changed = (e.kind == EventType::Updated)
                .then(|| serde_json::Value::from(e.changed.clone()).to_string());
            row![
                e.event_id,
                e.kind.as_str(),
                e.finetune_id,
                e.status,
                e.previous_status,
                changed,
                e.source,
                e.observed_at,
                e.body,
            ]
        })
        .collect();
    // Ids in the order of `events`: the order sinks and streams follow.
    conn.execute_rows(
        "INSERT INTO events (event_id, type, finetune_id, status, previous_status, changed,
            source, observed_at, body)
         SELECT * FROM {rows}",
        &[],
        &rows,
    )?;
    Ok(())
}

/// An event's id: stable, unique, and safe in a URL. It starts with the
/// time in milliseconds, so ids made close together sort together and the
/// indexes on them grow at one end instead of at random pages (fewer pages
/// written per commit); 80 random bits follow. Transitions' events start
/// with `tr_`, updates with `up_`.
pub fn new_id(kind: EventType) -> String {
    let millis = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let prefix = match kind {
        EventType::StatusChanged => "tr",
        EventType::Updated => "up",
    };
    format!(
        "{prefix}_{:012x}{}",
        millis & 0xffff_ffff_ffff,
        hex::encode(rand::random::<[u8; 10]>())
    )
}

/// A committed event, as the live streams send it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FeedEvent {
    /// Its place in commit order (the row id).
    pub seq: i64,
    pub event_id: String,
    /// `finetune.status_changed` or `finetune.updated`.
    pub kind: String,
    pub finetune_id: String,
    /// The event as sinks receive it, JSON text.
    pub body: String,
}

impl Store {
    /// Committed events after `after` in commit order, at most `limit`,
    /// of one job or of all.
    pub async fn events_after(
        &self,
        after: i64,
        finetune_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<FeedEvent>, StoreError> {
        Ok(query(
            "SELECT id AS seq, event_id, type AS kind, finetune_id, body FROM events
             WHERE id > ?1 AND (?2 IS NULL OR finetune_id = ?2) ORDER BY id LIMIT ?3",
        )
        .bind(&after)
        .bind(&finetune_id)
        .bind(&limit)
        .fetch_all(&self.reads)
        .await?)
    }

    /// The place in commit order of the event with this id.
    pub async fn event_seq(&self, event_id: &str) -> Result<Option<i64>, StoreError> {
        Ok(query("SELECT id FROM events WHERE event_id = ?")
            .bind(event_id)
            .scalar_optional(&self.reads)
            .await?)
    }

    /// The place of the last committed event (0 when there is none).
    pub async fn last_event_seq(&self) -> Result<i64, StoreError> {
        Ok(query("SELECT COALESCE(MAX(id), 0) FROM events")
            .scalar(&self.reads)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    #[test]
    fn upgrading_moves_each_transitions_event_into_events_and_keeps_its_deliveries() {
        let conn = Connection::open_in_memory().expect("a database");
        // As `store::migrate` runs them.
        conn.pragma_update(None, "foreign_keys", false)
            .expect("keys off");
        let mut migrations = super::super::sqlite::MIGRATOR.iter();
        for migration in migrations.by_ref().take_while(|m| m.version < 6) {
            conn.execute_batch(&migration.sql)
                .expect("an older migration");
        }
        conn.execute_batch(
            "INSERT INTO jobs (finetune_id, status, status_rank, first_seen_at, updated_at)
                 VALUES ('ft', 'AVAILABLE', 100, 't0', 't1');
             INSERT INTO transitions (event_id, finetune_id, to_status, source, observed_at, event)
                 VALUES ('tr_1', 'ft', 'AVAILABLE', 'webhook', 't1', '{\"id\":\"tr_1\"}');
             INSERT INTO deliveries (sink, event_id, finetune_id, status, next_attempt_at, created_at)
                 VALUES ('s', 'tr_1', 'ft', 'delivered', 't1', 't1');
             INSERT INTO delivery_attempts (delivery_id, started_at, duration_ms)
                 VALUES (1, 't1', 3);",
        )
        .expect("rows of an older version");
        // `take_while` consumed version 6 itself; apply it and the rest.
        let rest: Vec<_> = super::super::sqlite::MIGRATOR
            .iter()
            .filter(|m| m.version >= 6)
            .collect();
        for migration in rest {
            conn.execute_batch(&migration.sql)
                .expect("the migration applies");
        }
        let (kind, body): (String, String) = conn
            .query_row(
                "SELECT e.type, e.body FROM deliveries d JOIN events e USING (event_id)",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .expect("the delivery still finds its event");
        assert_eq!(kind, "finetune.status_changed");
        assert_eq!(body, "{\"id\":\"tr_1\"}");
        let attempts: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id",
                [],
                |row| row.get(0),
            )
            .expect("attempts");
        assert_eq!(attempts, 1);
        let broken: i64 = conn
            .query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |row| {
                row.get(0)
            })
            .expect("checked");
        assert_eq!(broken, 0);
    }
}
