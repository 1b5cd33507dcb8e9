//! Applying what Segmind's list and details endpoints report: each job's
//! fields, and its status through the same rules as webhooks (source
//! `reconcile`), in one transaction. When Segmind last reported each job,
//! and which ids its details answer 404 for, live in `segmind_sightings`:
//! one narrow row per job, so a pass in which nothing changed writes no job
//! row.

use super::{
    outbox::SinkRoute,
    plan::Planner,
    sql::{Conn, DbResult, args},
};
use crate::{
    domain::{Decision, JobFields, Observation, Source, Status},
    time::now_rfc3339,
};
use std::collections::BTreeSet;

/// One job as Segmind's API described it.
#[derive(Debug, Clone)]
pub struct RemoteObservation {
    pub finetune_id: String,
    pub status: Status,
    pub fields: JobFields,
}

/// What one pass (or one details lookup) found.
#[derive(Debug, Clone, Default)]
pub struct RemoteReport {
    pub observations: Vec<RemoteObservation>,
    /// Ids Segmind's details answered 404 for.
    pub not_found: Vec<String>,
    /// After 404s for this long in a row, an id is no longer asked about.
    pub forget_after: std::time::Duration,
}

/// The first wait before asking again about an id Segmind answered 404
/// for; doubled after each further 404, up to `LONGEST_MISS_WAIT`.
const FIRST_MISS_WAIT: i64 = 60;
const LONGEST_MISS_WAIT: i64 = 6 * 3600;

/// `segmind_status` of a job Segmind's API no longer knows.
pub const NOT_FOUND: &str = "NOT_FOUND";

/// What applying a pass's observations did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileSummary {
    pub jobs_seen: usize,
    pub jobs_created: usize,
    pub transitions: usize,
    pub deliveries: usize,
    /// Ids forgotten by this pass after 404s for `reconcile.forget_after`.
    pub forgotten: usize,
    /// The status of each transition recorded.
    pub applied: Vec<String>,
}

pub(super) fn apply(
    conn: &dyn Conn,
    report: &RemoteReport,
    routes: &[SinkRoute],
) -> DbResult<ReconcileSummary> {
    let observations = &report.observations;
    let ids: BTreeSet<&str> = observations
        .iter()
        .map(|o| o.finetune_id.as_str())
        .collect();
    let mut planner = Planner::load(conn, &ids, routes)?;
    let now = now_rfc3339();
    let mut summary = ReconcileSummary {
        jobs_seen: ids.len(),
        ..ReconcileSummary::default()
    };
    for remote in observations {
        let observation = Observation {
            finetune_id: &remote.finetune_id,
            status: &remote.status,
            fields: &remote.fields,
            source: Source::Reconcile,
            observed_at: &now,
        };
        let planned = planner.observe(&observation, None);
        if planned.effect.decision == Decision::Apply {
            summary.transitions += 1;
            summary.applied.push(remote.status.as_str().to_owned());
            if planned.effect.previous.is_none() {
                summary.jobs_created += 1;
            }
        }
        summary.deliveries += planned.deliveries;
    }
    planner.write(conn, &now)?;
    let seen: Vec<&str> = ids.into_iter().collect();
    record_sightings(conn, &seen, &now)?;
    summary.forgotten = record_misses(conn, &report.not_found, report.forget_after, &now)?;
    Ok(summary)
}

/// Records that Segmind's API reported these jobs at `now`: narrow rows,
/// one each.
pub(super) fn record_sightings(conn: &dyn Conn, ids: &[&str], now: &str) -> DbResult<()> {
    for id in ids {
        conn.execute(
            "INSERT INTO segmind_sightings (finetune_id, seen_at) VALUES (?1, ?2)
             ON CONFLICT (finetune_id) DO UPDATE SET seen_at = excluded.seen_at,
                missing_since = NULL, misses = 0, next_details_at = NULL",
            args![id, now],
        )?;
    }
    Ok(())
}

/// Records 404s from Segmind's details: each id is asked again after a
/// growing wait (never past its forgetting time, so that it is asked once
/// more then), and forgotten once 404s have lasted `forget_after`: its job
/// shows `segmind_status: NOT_FOUND` and is not asked about again. Returns
/// how many ids were forgotten.
fn record_misses(
    conn: &dyn Conn,
    ids: &[String],
    forget_after: std::time::Duration,
    now: &str,
) -> DbResult<usize> {
    let now_at = chrono::DateTime::parse_from_rfc3339(now)
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(|_| chrono::Utc::now());
    let forget_after = chrono::Duration::from_std(forget_after).unwrap_or(chrono::Duration::MAX);
    let mut forgotten = 0;
    for id in ids {
        let (missing_since, misses): (Option<String>, i64) = match conn.query_opt(
            "SELECT missing_since, misses FROM segmind_sightings WHERE finetune_id = ?1",
            args![id],
        )? {
            Some(row) => (row.get(0)?, row.get(1)?),
            None => (None, 0),
        };
        let since = missing_since
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or(now_at);
        let forget_at = since
            .checked_add_signed(forget_after)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
        let next = if now_at >= forget_at {
            forgotten += 1;
            conn.execute(
                "UPDATE jobs SET segmind_status = ?1 WHERE finetune_id = ?2
                   AND segmind_status IS DISTINCT FROM ?1",
                args![NOT_FOUND, id],
            )?;
            super::outbox::WAITING.to_owned()
        } else {
            let wait = FIRST_MISS_WAIT
                .saturating_mul(1i64 << misses.clamp(0, 20))
                .min(LONGEST_MISS_WAIT);
            crate::time::rfc3339((now_at + chrono::Duration::seconds(wait)).min(forget_at))
        };
        conn.execute(
            "INSERT INTO segmind_sightings (finetune_id, missing_since, misses, next_details_at)
             VALUES (?1, ?2, 1, ?3)
             ON CONFLICT (finetune_id) DO UPDATE SET
                missing_since = COALESCE(segmind_sightings.missing_since, excluded.missing_since),
                misses = segmind_sightings.misses + 1, next_details_at = excluded.next_details_at",
            args![id, crate::time::rfc3339(since), next],
        )?;
    }
    Ok(forgotten)
}
