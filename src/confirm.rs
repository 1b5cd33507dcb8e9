//! The confirmer: settles webhook claims against Segmind's API.
//!
//! Segmind signs nothing, so with `ingest.confirm = "api"` a webhook is
//! stored and answered at once (outcome `confirming`) but applied only once
//! Segmind's details for its job agree, and then with what the API says.
//! Claims wait in the database (`store::confirm`), not in memory, so they
//! survive a restart. One details call serves every claim waiting on a
//! job; calls run a few at a time, at the pace the client allows (shared
//! with the reconciler, paused after a 429). A claim still open at its
//! deadline is `contradicted` when Segmind answered but never agreed, and
//! when it could not be reached it is applied on the webhook's word (its
//! status and fields, never its URLs: `unconfirmed`), dropped, or held
//! until Segmind can be asked (`ingest.unconfirmed`).
//!
//! What forged webhooks can cost the API key is bounded: the pace above,
//! the number of claims that may wait (`ingest.max_pending_confirmations`,
//! checked by the store), and one call for a job Segmind does not know
//! however many webhooks name it (a 404 is remembered, below).

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
use chrono::{DateTime, Utc};
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};
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
    max_pending: usize,
    wake: Notify,
}

/// What Segmind's API said about one job, once per round.
enum Answer {
    Job(Box<crate::store::RemoteObservation>),
    /// Segmind does not know the job; `remembered` when no call was made
    /// because a recent 404 already said so.
    NotFound {
        remembered: bool,
    },
    /// No answer; `wait` is what Segmind asked for (a 429), if anything.
    Unreachable {
        error: String,
        wait: Option<Duration>,
    },
}

/// The jobs Segmind's details answered 404 for, and when. A 404 answers,
/// without another call, for every claim about the job received within
/// `ingest.confirm_timeout` after it, so a job Segmind never heard of costs
/// one call however many webhooks name it. Those claims keep waiting, not
/// asked, and are contradicted at their deadline. Kept in memory only: a
/// restart forgets it and asks once more.
#[derive(Debug, Default)]
struct NotFound {
    since: HashMap<String, DateTime<Utc>>,
}

impl NotFound {
    /// Whether a 404 already answers for a claim about `finetune_id` due
    /// to be settled by `deadline` (received `timeout` before it).
    fn answers(&self, finetune_id: &str, deadline: &str, timeout: Duration) -> bool {
        let (Some(at), Ok(deadline)) = (
            self.since.get(finetune_id),
            DateTime::parse_from_rfc3339(deadline),
        ) else {
            return false;
        };
        let Ok(window) = chrono::Duration::from_std(timeout) else {
            return false;
        };
        let received = deadline.with_timezone(&Utc).checked_sub_signed(window);
        let window_end = at.checked_add_signed(window);
        matches!((received, window_end), (Some(received), Some(end)) if received < end)
    }

    fn record(&mut self, finetune_id: &str, at: DateTime<Utc>) {
        self.since.insert(finetune_id.to_owned(), at);
    }

    /// Forgets 404s no waiting claim can still need: every claim they
    /// answer for is past its deadline, with a minute to settle.
    fn forget_old(&mut self, now: DateTime<Utc>, timeout: Duration) {
        let kept = chrono::Duration::from_std(timeout.saturating_mul(2))
            .unwrap_or(chrono::Duration::MAX)
            .checked_add(&chrono::Duration::minutes(1))
            .unwrap_or(chrono::Duration::MAX);
        self.since
            .retain(|_, at| at.checked_add_signed(kept).is_none_or(|end| end > now));
    }
}

impl Confirmer {
    pub fn new(settings: &Settings, store: Store, client: Option<SegmindClient>) -> Confirmer {
        Confirmer {
            client: client.filter(|_| settings.confirm() == Confirm::Api),
            store,
            timeout: settings.ingest.confirm_timeout,
            unconfirmed: settings.ingest.unconfirmed,
            max_pending: settings.ingest.max_pending_confirmations,
            wake: Notify::new(),
        }
    }

    /// The deadline for a webhook's claim received now, or `None` when
    /// webhooks are applied at once.
    pub fn deadline(&self) -> Option<String> {
        self.client.as_ref().map(|_| rfc3339_after(self.timeout))
    }

    /// How many claims may wait at once (`ingest.max_pending_confirmations`).
    pub fn max_pending(&self) -> usize {
        self.max_pending
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
            max_pending = self.max_pending,
            "webhooks are confirmed with Segmind's API before they are applied"
        );
        let mut not_found = NotFound::default();
        loop {
            // A round cut short by shutdown loses nothing: claims are
            // settled in one writer step each round, or stay for the next
            // start.
            let round = tokio::select! {
                () = shutdown.cancelled() => break,
                round = self.round(&client, &mut not_found) => round,
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
    async fn round(
        &self,
        client: &SegmindClient,
        not_found: &mut NotFound,
    ) -> Result<bool, crate::store::StoreError> {
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
        not_found.forget_old(Utc::now(), self.timeout);
        let mut answers = BTreeMap::new();
        let mut to_ask = Vec::new();
        for (id, claims) in &by_job {
            if claims
                .iter()
                .all(|c| not_found.answers(id, &c.deadline, self.timeout))
            {
                answers.insert(id.clone(), Answer::NotFound { remembered: true });
            } else {
                to_ask.push(id.clone());
            }
        }
        let mut jobs = to_ask.into_iter();
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
                    if matches!(answer, Answer::NotFound { .. }) {
                        not_found.record(&id, Utc::now());
                    }
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
        let (answered, error, asked_wait) = match answer {
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
                Verdict::Behind => (Some("behind"), None, None),
            },
            Answer::NotFound { .. } => (Some("not_found"), None, None),
            Answer::Unreachable { error, wait } => (None, Some(error.clone()), *wait),
        };
        let checks = u32::try_from(claim.checks)
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        // Never sooner than Segmind asked: calls before then are refused
        // unsent anyway.
        let wait = recheck_after(checks).max(asked_wait.unwrap_or_default());
        let next = now + chrono::Duration::from_std(wait).unwrap_or_default();
        if overdue {
            let api = match answer {
                Answer::Job(api) => Some(api.as_ref().clone()),
                _ => None,
            };
            let kind = if answered.is_some() || claim.answered.is_some() {
                SettlementKind::Contradicted { api }
            } else {
                match self.unconfirmed {
                    Unconfirmed::Apply => SettlementKind::Unconfirmed { apply: true },
                    Unconfirmed::Drop => SettlementKind::Unconfirmed { apply: false },
                    // Past its deadline, still unapplied: asked again
                    // until Segmind answers, then settled by what it says.
                    Unconfirmed::Hold => SettlementKind::Later {
                        next_check_at: crate::time::rfc3339(next),
                        answered: None,
                        error,
                    },
                }
            };
            return settlement(claim, claimed, kind);
        }
        let next = match answer {
            // Nothing can change a remembered 404 before the deadline.
            Answer::NotFound { remembered: true } => deadline,
            _ => next.min(deadline),
        };
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
            None => Answer::Unreachable {
                error: "Segmind's details have no usable status".into(),
                wait: None,
            },
        },
        Ok(None) | Err(SegmindError::Rejected { status: 404, .. }) => {
            Answer::NotFound { remembered: false }
        }
        Err(e) => Answer::Unreachable {
            wait: e.wait(),
            error: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("a time")
            .with_timezone(&Utc)
    }

    #[test]
    fn a_404_answers_for_claims_received_within_the_timeout_after_it() {
        let timeout = Duration::from_secs(120);
        let mut not_found = NotFound::default();
        not_found.record("ghost", at("2025-01-01T12:00:00Z"));
        // Deadlines are two minutes after receipt.
        for (deadline, answered) in [
            // Received before the 404, still waiting.
            ("2025-01-01T12:01:00Z", true),
            // Received a minute after it.
            ("2025-01-01T12:03:00Z", true),
            // Received as the window closes, and after.
            ("2025-01-01T12:04:00Z", false),
            ("2025-01-01T12:10:00Z", false),
        ] {
            assert_eq!(
                not_found.answers("ghost", deadline, timeout),
                answered,
                "{deadline}"
            );
        }
        assert!(!not_found.answers("other", "2025-01-01T12:01:00Z", timeout));
        assert!(!not_found.answers("ghost", "not a time", timeout));
    }

    #[test]
    fn a_404_is_forgotten_once_no_claim_it_answers_for_can_still_wait() {
        let timeout = Duration::from_secs(120);
        let mut not_found = NotFound::default();
        not_found.record("ghost", at("2025-01-01T12:00:00Z"));
        not_found.forget_old(at("2025-01-01T12:04:59Z"), timeout);
        assert!(not_found.since.contains_key("ghost"));
        not_found.forget_old(at("2025-01-01T12:05:01Z"), timeout);
        assert!(not_found.since.is_empty());
    }
}
