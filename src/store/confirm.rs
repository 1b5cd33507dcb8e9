//! Claims waiting for Segmind's API: a webhook stored while confirmation is
//! on leaves one row here (in the same transaction as its receipt), and the
//! confirmer (`crate::confirm`) settles it later through the writer. What a
//! settled claim does to its job goes through the same planner as every
//! other observation, so the state rules, events and deliveries are the
//! same whichever way a status arrives.

use super::{
    Store, StoreError,
    ingest::Outcome,
    outbox::SinkRoute,
    plan::Planner,
    reconcile::RemoteObservation,
    sql::{Conn, DbResult, args, query, row},
};
use crate::{
    domain::{Decision, Observation, Payload, Source, Status},
    time::now_rfc3339,
};
use std::collections::BTreeSet;

/// A claim to store with its receipt.
pub(super) struct Pending<'a> {
    pub receipt_id: i64,
    pub finetune_id: &'a str,
    pub status: &'a Status,
    pub received_at: &'a str,
    pub deadline: &'a str,
}

pub(super) fn insert_pending(conn: &dyn Conn, pending: &[Pending<'_>]) -> DbResult<()> {
    let rows: Vec<_> = pending
        .iter()
        .map(|p| {
            row![
                p.receipt_id,
                p.finetune_id,
                p.status.as_str(),
                p.deadline,
                p.received_at
            ]
        })
        .collect();
    conn.execute_rows(
        "INSERT INTO confirmations (receipt_id, finetune_id, status, deadline, next_check_at)
         SELECT * FROM {rows}",
        &[],
        &rows,
    )?;
    Ok(())
}

/// How many claims wait for Segmind's API.
pub(super) fn count_pending(conn: &dyn Conn) -> DbResult<usize> {
    let count: i64 = conn
        .query_one("SELECT COUNT(*) FROM confirmations", &[])?
        .get(0)?;
    Ok(usize::try_from(count).unwrap_or(usize::MAX))
}

/// A claim waiting for Segmind's API, as the confirmer reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingClaim {
    pub receipt_id: i64,
    pub finetune_id: String,
    /// The status the webhook claimed.
    pub status: String,
    pub deadline: String,
    pub checks: i64,
    /// `behind` or `not_found` once Segmind answered; `None` while it could
    /// not be reached.
    pub answered: Option<String>,
}

/// What the confirmer decided about one claim.
#[derive(Debug, Clone)]
pub struct Settlement {
    pub receipt_id: i64,
    pub finetune_id: String,
    pub claimed: Status,
    pub kind: SettlementKind,
}

#[derive(Debug, Clone)]
pub enum SettlementKind {
    /// Segmind agrees: apply the claimed status with what the API says
    /// of the job (its fields, and its status when it is further on).
    Confirmed { api: RemoteObservation },
    /// Segmind disagreed until the deadline: leave the claim unapplied;
    /// the job takes what the API says, when it knows the job.
    Contradicted { api: Option<RemoteObservation> },
    /// Segmind could not be reached until the deadline: apply the claim on
    /// the webhook's word (its status and fields, never its URLs), or not
    /// (`ingest.unconfirmed = "drop"`).
    Unconfirmed { apply: bool },
    /// Still open: ask again at `next_check_at`.
    Later {
        next_check_at: String,
        answered: Option<&'static str>,
        error: Option<String>,
    },
}

/// What settling a set of claims did.
#[derive(Debug, Clone, Default)]
pub struct ConfirmSummary {
    pub confirmed: usize,
    pub contradicted: usize,
    pub unconfirmed: usize,
    pub dropped: usize,
    pub deliveries: usize,
    /// `(status, source)` of each transition recorded.
    pub applied: Vec<(String, &'static str)>,
}

pub(super) fn settle(
    conn: &dyn Conn,
    settlements: &[Settlement],
    routes: &[SinkRoute],
) -> DbResult<ConfirmSummary> {
    let ids: BTreeSet<&str> = settlements.iter().map(|s| s.finetune_id.as_str()).collect();
    let mut planner = Planner::load(conn, &ids, routes)?;
    let now = now_rfc3339();
    let mut summary = ConfirmSummary::default();
    // What the API said of each job, applied after the claims about it.
    let mut api_views: Vec<&RemoteObservation> = Vec::new();
    for settlement in settlements {
        if let SettlementKind::Later {
            next_check_at,
            answered,
            error,
        } = &settlement.kind
        {
            conn.execute(
                "UPDATE confirmations SET next_check_at = ?1, checks = checks + 1,
                    answered = COALESCE(?2, answered), last_error = ?3
                 WHERE receipt_id = ?4",
                args![next_check_at, answered, error, settlement.receipt_id],
            )?;
            continue;
        }
        let open = conn.execute(
            "DELETE FROM confirmations WHERE receipt_id = ?1",
            args![settlement.receipt_id],
        )?;
        if open == 0 {
            continue;
        }
        let observe = |fields, planner: &mut Planner<'_>, summary: &mut ConfirmSummary| {
            let planned = planner.observe(
                &Observation {
                    finetune_id: &settlement.finetune_id,
                    status: &settlement.claimed,
                    fields,
                    source: Source::Webhook,
                    observed_at: &now,
                },
                Some(settlement.receipt_id),
            );
            summary.deliveries += planned.deliveries;
            match planned.effect.decision {
                Decision::Apply => {
                    summary
                        .applied
                        .push((settlement.claimed.as_str().to_owned(), "webhook"));
                    Outcome::Applied
                }
                Decision::Duplicate => Outcome::Duplicate,
                Decision::Stale => Outcome::Stale,
            }
        };
        let (outcome, confirmation) = match &settlement.kind {
            SettlementKind::Confirmed { api } => {
                summary.confirmed += 1;
                api_views.push(api);
                (
                    observe(&api.fields, &mut planner, &mut summary),
                    "confirmed",
                )
            }
            SettlementKind::Contradicted { api } => {
                summary.contradicted += 1;
                api_views.extend(api);
                (Outcome::Contradicted, "contradicted")
            }
            SettlementKind::Unconfirmed { apply: true } => {
                summary.unconfirmed += 1;
                // On the webhook's word: its status, never its URLs (a
                // forged `trained_model_url` would send users to the
                // forger's model).
                let payload = stored_payload(conn, settlement.receipt_id)?;
                let fields = payload.map(|p| p.fields.without_urls()).unwrap_or_default();
                (observe(&fields, &mut planner, &mut summary), "unconfirmed")
            }
            SettlementKind::Unconfirmed { apply: false } => {
                summary.dropped += 1;
                (Outcome::Dropped, "unconfirmed")
            }
            SettlementKind::Later { .. } => continue,
        };
        conn.execute(
            "UPDATE receipts SET outcome = ?1, confirmation = ?2 WHERE id = ?3",
            args![outcome.as_str(), confirmation, settlement.receipt_id],
        )?;
    }
    let seen: Vec<&str> = api_views.iter().map(|a| a.finetune_id.as_str()).collect();
    super::reconcile::record_sightings(conn, &seen, &now)?;
    for api in api_views {
        let planned = planner.observe(
            &Observation {
                finetune_id: &api.finetune_id,
                status: &api.status,
                fields: &api.fields,
                source: Source::Reconcile,
                observed_at: &now,
            },
            None,
        );
        summary.deliveries += planned.deliveries;
        if planned.effect.decision == Decision::Apply {
            summary
                .applied
                .push((api.status.as_str().to_owned(), "reconcile"));
        }
    }
    planner.write(conn, &now)?;
    Ok(summary)
}

/// The payload of a stored receipt, read again from its body.
fn stored_payload(conn: &dyn Conn, receipt_id: i64) -> DbResult<Option<Payload>> {
    let body: Option<Vec<u8>> = conn
        .query_opt("SELECT body FROM receipts WHERE id = ?1", args![receipt_id])?
        .map(|row| row.get(0))
        .transpose()?;
    Ok(body.and_then(|b| Payload::parse(&b).ok()))
}

impl Store {
    /// Claims whose next check is due at `now`, the soonest first.
    pub async fn due_claims(&self, now: &str, limit: u32) -> Result<Vec<PendingClaim>, StoreError> {
        Ok(query(
            "SELECT receipt_id, finetune_id, status, deadline, checks, answered
             FROM confirmations WHERE next_check_at <= ?1
             ORDER BY next_check_at, receipt_id LIMIT ?2",
        )
        .bind(now)
        .bind_owned(limit)
        .fetch_all(&self.reads)
        .await?)
    }

    /// When the next claim falls due, if any is waiting.
    pub async fn next_claim_at(&self) -> Result<Option<String>, StoreError> {
        Ok(query("SELECT MIN(next_check_at) FROM confirmations")
            .scalar(&self.reads)
            .await?)
    }
}
