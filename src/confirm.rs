//! The confirmer: settles webhook claims against Segmind's API.
//!
//! Segmind signs nothing, so with `ingest.confirm = "api"` a webhook is
//! stored and answered at once (outcome `confirming`) but applied only once
//! Segmind's details for its job agree, and then with what the API says.
//! Claims wait in the database (`store::confirm`), not in memory, so they
//! survive a restart. One details call serves every claim waiting on a
//! job; calls run a few at a time. A claim still open at its deadline is
//! `contradicted` when Segmind answered but never agreed, and `unconfirmed`
//! (applied on the webhook's word, or dropped) when it could not be reached.

use crate::{
    config::{Confirm, Settings, Unconfirmed},
    domain::{
        Status,
        confirm::{Verdict, judge, recheck_after},
    },
    reconcile::observation,
    segmind::{SegmindClient, SegmindError},
    store::{PendingClaim, Settlement, SettlementKind, Store},
    telemetry::metrics,
    time::{now_rfc3339, rfc3339_after},
};
use std::{collections::BTreeMap, sync::Arc, time::Duration};
use tokio::{sync::Notify, task::JoinSet};
use tokio_util::sync::CancellationToken;

/// Details calls in flight at once.
const CONCURRENCY: usize = 4;
/// Claims read per round.
const ROUND: u32 = 256;
/// The longest sleep with nothing due: a safety net under the wake-ups.
const IDLE: Duration = Duration::from_secs(5);

pub struct Confirmer {
    client: Option<SegmindClient>,
    store: Store,
    timeout: Duration,
    unconfirmed: Unconfirmed,
    wake: Notify,
}

/// What Segmind's API said about one job, once per round.
enum Answer {
    Job(Box<crate::store::RemoteObservation>),
    NotFound,
    Unreachable(String),
}

impl Confirmer {
    pub fn new(settings: &Settings, store: Store, client: Option<SegmindClient>) -> Confirmer {
        Confirmer {
            client: client.filter(|_| settings.confirm() == Confirm::Api),
            store,
            timeout: settings.ingest.confirm_timeout,
            unconfirmed: settings.ingest.unconfirmed,
            wake: Notify::new(),
        }
    }

    /// The deadline for a webhook's claim received now, or `None` when
    /// webhooks are applied at once.
    pub fn deadline(&self) -> Option<String> {
        self.client.as_ref().map(|_| rfc3339_after(self.timeout))
    }

    /// A claim was stored: check it now rather than at the next round.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Settles claims until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(client) = self.client.clone() else {
            return;
        };
        tracing::info!(
            timeout_seconds = self.timeout.as_secs(),
            "webhooks are confirmed with Segmind's API before they are applied"
        );
        loop {
            // A round cut short by shutdown loses nothing: claims are
            // settled in one writer step each round, or stay for the next
            // start.
            let round = tokio::select! {
                () = shutdown.cancelled() => break,
                round = self.round(&client) => round,
            };
            let wait = match round {
                Ok(true) => Duration::ZERO,
                Ok(false) => self.until_next().await,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot settle webhook claims; trying again");
                    Duration::from_secs(1)
                }
            };
            if wait.is_zero() {
                if shutdown.is_cancelled() {
                    break;
                }
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// How long until the next claim falls due.
    async fn until_next(&self) -> Duration {
        let Ok(Some(at)) = self.store.next_claim_at().await else {
            return IDLE;
        };
        chrono::DateTime::parse_from_rfc3339(&at)
            .ok()
            .and_then(|at| {
                (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
                    .to_std()
                    .ok()
            })
            .unwrap_or(Duration::ZERO)
            .min(IDLE)
            .max(Duration::from_millis(10))
    }

    /// Checks every claim due now; true when a full round was read (more
    /// may be due).
    async fn round(&self, client: &SegmindClient) -> Result<bool, crate::store::StoreError> {
        let due = self.store.due_claims(&now_rfc3339(), ROUND).await?;
        if due.is_empty() {
            return Ok(false);
        }
        let full = due.len() == ROUND as usize;
        let mut by_job: BTreeMap<String, Vec<PendingClaim>> = BTreeMap::new();
        for claim in due {
            by_job
                .entry(claim.finetune_id.clone())
                .or_default()
                .push(claim);
        }
        let mut answers = BTreeMap::new();
        let mut jobs = by_job.keys().cloned();
        let mut calls = JoinSet::new();
        loop {
            while calls.len() < CONCURRENCY {
                let Some(id) = jobs.next() else { break };
                let client = client.clone();
                calls.spawn(async move {
                    let answer = ask(&client, &id).await;
                    (id, answer)
                });
            }
            match calls.join_next().await {
                Some(Ok((id, answer))) => {
                    answers.insert(id, answer);
                }
                Some(Err(e)) => tracing::error!(error = %e, "a details call panicked"),
                None => break,
            }
        }
        let now = chrono::Utc::now();
        let mut settlements = Vec::new();
        for (id, claims) in by_job {
            let Some(answer) = answers.get(&id) else {
                continue;
            };
            for claim in claims {
                settlements.push(self.settle(claim, answer, now));
            }
        }
        let summary = self.store.settle_claims(settlements).await?;
        metrics::confirmations("confirmed", summary.confirmed);
        metrics::confirmations("contradicted", summary.contradicted);
        metrics::confirmations("unconfirmed", summary.unconfirmed);
        metrics::confirmations("dropped", summary.dropped);
        for (status, source) in &summary.applied {
            metrics::transition(status, source);
        }
        if summary.confirmed + summary.contradicted + summary.unconfirmed + summary.dropped > 0 {
            tracing::info!(
                confirmed = summary.confirmed,
                contradicted = summary.contradicted,
                unconfirmed = summary.unconfirmed,
                dropped = summary.dropped,
                "webhook claims settled with Segmind's API"
            );
        }
        Ok(full)
    }

    /// What to do with one claim, given what the API said of its job.
    fn settle(
        &self,
        claim: PendingClaim,
        answer: &Answer,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Settlement {
        let claimed = Status::from_stored(&claim.status);
        let deadline = chrono::DateTime::parse_from_rfc3339(&claim.deadline)
            .map(|d| d.with_timezone(&chrono::Utc))
            .unwrap_or(now);
        let overdue = now >= deadline;
        let (answered, error) = match answer {
            Answer::Job(api) => match judge(&claimed, &api.status) {
                Verdict::Confirmed => {
                    return settlement(
                        claim,
                        claimed,
                        SettlementKind::Confirmed {
                            api: api.as_ref().clone(),
                        },
                    );
                }
                Verdict::Contradicted => {
                    return settlement(
                        claim,
                        claimed,
                        SettlementKind::Contradicted {
                            api: Some(api.as_ref().clone()),
                        },
                    );
                }
                Verdict::Behind => (Some("behind"), None),
            },
            Answer::NotFound => (Some("not_found"), None),
            Answer::Unreachable(error) => (None, Some(error.clone())),
        };
        if overdue {
            let api = match answer {
                Answer::Job(api) => Some(api.as_ref().clone()),
                _ => None,
            };
            let kind = if answered.is_some() || claim.answered.is_some() {
                SettlementKind::Contradicted { api }
            } else {
                SettlementKind::Unconfirmed {
                    apply: self.unconfirmed == Unconfirmed::Apply,
                }
            };
            return settlement(claim, claimed, kind);
        }
        let checks = u32::try_from(claim.checks)
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        let wait = recheck_after(checks);
        let next = (now + chrono::Duration::from_std(wait).unwrap_or_default()).min(deadline);
        settlement(
            claim,
            claimed,
            SettlementKind::Later {
                next_check_at: crate::time::rfc3339(next),
                answered,
                error,
            },
        )
    }
}

fn settlement(claim: PendingClaim, claimed: Status, kind: SettlementKind) -> Settlement {
    Settlement {
        receipt_id: claim.receipt_id,
        finetune_id: claim.finetune_id,
        claimed,
        kind,
    }
}

async fn ask(client: &SegmindClient, finetune_id: &str) -> Answer {
    match client.details(finetune_id).await {
        Ok(Some(job)) => match observation(&job) {
            Some(obs) => Answer::Job(Box::new(crate::store::RemoteObservation {
                finetune_id: finetune_id.to_owned(),
                ..obs
            })),
            // Details without a usable status say nothing either way.
            None => Answer::Unreachable("Segmind's details have no usable status".into()),
        },
        Ok(None) | Err(SegmindError::Rejected { status: 404, .. }) => Answer::NotFound,
        Err(e) => Answer::Unreachable(e.to_string()),
    }
}
