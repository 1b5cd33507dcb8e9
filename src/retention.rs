//! The pruner: keeps the history within `[retention]` so that a year of
//! webhooks fits in a bounded database.
//!
//! It runs shortly after start (`retention.initial_delay`), then every
//! `retention.interval`, and on demand (`tunehook prune`, from another
//! process if need be). Each prune is a run of small writer steps
//! (`store::prune`): webhooks queue between them and wait for one step at
//! most. Its report is kept in the database, so `/v1/status` shows the last
//! prune whichever process ran it.

use crate::{
    config::{Keep, RetentionSettings},
    store::{PruneCounts, PruneCutoffs, PruneReport, Store, StoreError},
    time::{now_rfc3339, rfc3339},
};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The cutoffs for a prune now: each kind's retention, or `older_than`
/// for every kind when given.
pub fn cutoffs(settings: &RetentionSettings, older_than: Option<Duration>) -> PruneCutoffs {
    let now = chrono::Utc::now();
    let before = |keep: Keep| {
        let keep = older_than.map(Keep::For).unwrap_or(keep);
        match keep {
            Keep::Forever => None,
            Keep::For(age) => {
                let age = chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
                // A retention longer than history itself removes nothing.
                Some(rfc3339(
                    now.checked_sub_signed(age)
                        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC),
                ))
            }
        }
    };
    PruneCutoffs {
        receipts: before(settings.receipts),
        attempts: before(settings.attempts),
        delivered: before(settings.delivered),
    }
}

/// Prunes until nothing older than the cutoffs is left (or `stop` is
/// cancelled, between two steps), then keeps the report as the last prune.
pub async fn prune(
    store: &Store,
    cutoffs: &PruneCutoffs,
    stop: &CancellationToken,
) -> Result<PruneReport, StoreError> {
    let started_at = now_rfc3339();
    let mut removed = PruneCounts::default();
    loop {
        let step = store.prune_step(cutoffs).await?;
        removed += step.removed;
        if !step.more || stop.is_cancelled() {
            break;
        }
    }
    let report = PruneReport {
        started_at,
        finished_at: now_rfc3339(),
        removed,
    };
    store.record_prune(report.clone()).await?;
    Ok(report)
}

/// Prunes after `retention.initial_delay`, then every `retention.interval`,
/// until `shutdown`. Nothing to do when every kind is kept forever.
pub async fn run(store: Store, settings: RetentionSettings, shutdown: CancellationToken) {
    if [settings.receipts, settings.attempts, settings.delivered]
        .iter()
        .all(|keep| *keep == Keep::Forever)
    {
        tracing::info!("retention is off: every kind of history is kept forever");
        return;
    }
    let mut wait = settings.initial_delay;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
        wait = settings.interval;
        match prune(&store, &cutoffs(&settings, None), &shutdown).await {
            Ok(report) => tracing::info!(
                receipts = report.removed.receipts,
                attempts = report.removed.attempts,
                delivered = report.removed.delivered,
                "pruned old history"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot prune old history; the next prune retries")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoffs_follow_each_kinds_retention_or_one_age_for_all() {
        let settings = RetentionSettings {
            receipts: Keep::For(Duration::from_secs(86_400)),
            attempts: Keep::Forever,
            ..RetentionSettings::default()
        };
        let now = now_rfc3339();
        let c = cutoffs(&settings, None);
        assert!(c.receipts.as_deref().is_some_and(|at| at < now.as_str()));
        assert_eq!(c.attempts, None, "kept forever");
        assert!(c.delivered < c.receipts, "90 days is earlier than one day");

        let all = cutoffs(&settings, Some(Duration::ZERO));
        assert!(all.attempts.as_deref().is_some_and(|at| at >= now.as_str()));
        assert_eq!(all.receipts, all.delivered);
        assert_eq!(all.receipts, all.attempts);
    }

    #[test]
    fn a_retention_longer_than_the_calendar_removes_nothing() {
        let settings = RetentionSettings {
            receipts: Keep::For(Duration::from_secs(u64::MAX / 4)),
            ..RetentionSettings::default()
        };
        let c = cutoffs(&settings, None);
        assert!(c.receipts.as_deref().is_some_and(|at| at < "0000"), "{c:?}");
    }
}
