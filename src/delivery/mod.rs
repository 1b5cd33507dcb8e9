//! Delivery: forwards every applied transition to the configured sinks.
//!
//! The outbox rows are written with the transition (see `store::outbox`);
//! here one worker per sink drains them. A worker takes deliveries that are
//! due, skipping any whose job has an earlier delivery to the same sink still
//! pending (per-job order), runs at most its share of `delivery.concurrency`
//! attempts at once (no sink can starve another), and records each attempt
//! and what follows it (delivered, retry at, dead) through the store. State
//! lives only in the database, so a restart picks up where it stopped.

pub mod signature;
pub mod sinks;

use crate::{
    config::{DeliverySettings, SinkSettings},
    domain::retry,
    store::{AttemptRecord, DueDelivery, NextStep, SinkRoute, Store},
    time::{now_rfc3339, rfc3339_after},
};
use sinks::Target;
use std::{collections::HashSet, sync::Arc, time::Duration};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The longest a worker sleeps before looking for due work again.
const POLL: Duration = Duration::from_secs(1);

/// A sink as the workers use it.
pub struct Sink {
    pub name: String,
    target: Target,
    schedule: Vec<Duration>,
    timeout: Duration,
    concurrency: usize,
}

/// The routes the store needs to write the outbox rows.
pub fn routes(sinks: &[SinkSettings]) -> Vec<SinkRoute> {
    sinks
        .iter()
        .map(|s| SinkRoute {
            name: s.name.clone(),
            statuses: s.status_filter(),
        })
        .collect()
}

/// The client for `http`, `slack` and `discord` sinks: explicit timeouts, a
/// bounded pool, no redirects.
pub fn http_client(settings: &DeliverySettings) -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(concat!("tunehook/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
        .pool_max_idle_per_host(settings.concurrency)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

pub fn build_sinks(delivery: &DeliverySettings, settings: &[SinkSettings]) -> Vec<Arc<Sink>> {
    let client = http_client(delivery);
    let share = (delivery.concurrency / settings.len().max(1)).max(1);
    settings
        .iter()
        .map(|s| {
            Arc::new(Sink {
                name: s.name.clone(),
                target: Target::new(s, client.clone()),
                schedule: s.retry_schedule(delivery).to_vec(),
                timeout: s.timeout(delivery),
                concurrency: share,
            })
        })
        .collect()
}

/// Runs one worker per sink until `shutdown`; then lets attempts in flight
/// finish for at most `grace` (the rest stay pending for the next start).
pub async fn run(
    sinks: Vec<Arc<Sink>>,
    store: Store,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let mut workers = JoinSet::new();
    for sink in sinks {
        workers.spawn(work(sink, store.clone(), shutdown.clone(), grace));
    }
    while workers.join_next().await.is_some() {}
}

async fn work(sink: Arc<Sink>, store: Store, shutdown: CancellationToken, grace: Duration) {
    let mut changes = store.outbox_changes();
    // Attempts talking to the sink (bounded by the sink's concurrency), and
    // the records of finished attempts on their way to the database. A
    // delivery stays in `in_flight` until its record is committed, so it is
    // never taken twice, and a job's next delivery waits for that record.
    let mut attempts: JoinSet<AttemptRecord> = JoinSet::new();
    let mut records: JoinSet<i64> = JoinSet::new();
    let mut in_flight: HashSet<i64> = HashSet::new();
    tracing::info!(sink = %sink.name, "delivery worker started");
    loop {
        while let Some(done) = attempts.try_join_next() {
            if let Ok(record) = done {
                records.spawn(record_attempt(Arc::clone(&sink), store.clone(), record));
            }
        }
        while let Some(done) = records.try_join_next() {
            if let Ok(id) = done {
                in_flight.remove(&id);
            }
        }
        let free = sink.concurrency.saturating_sub(attempts.len());
        let now = now_rfc3339();
        let mut more_due = false;
        if free > 0 {
            let limit = free + in_flight.len();
            match store.due_deliveries(&sink.name, &now, limit as u32).await {
                Ok(due) => {
                    more_due = due.len() >= limit;
                    let fresh: Vec<_> = due
                        .into_iter()
                        .filter(|d| !in_flight.contains(&d.id))
                        .take(free)
                        .collect();
                    for delivery in fresh {
                        in_flight.insert(delivery.id);
                        attempts.spawn(attempt(Arc::clone(&sink), delivery));
                    }
                }
                Err(e) => {
                    tracing::warn!(sink = %sink.name, error = %e, "cannot read due deliveries")
                }
            }
        }
        // With work in flight or more waiting, the next wake-up comes from
        // a finished attempt or record; otherwise sleep until the next retry.
        let wait = if more_due || !in_flight.is_empty() {
            POLL
        } else {
            match store.next_due_after(&sink.name, &now).await {
                Ok(Some(at)) => until(&at).min(POLL),
                _ => POLL,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(done) = attempts.join_next(), if !attempts.is_empty() => {
                if let Ok(record) = done {
                    records.spawn(record_attempt(Arc::clone(&sink), store.clone(), record));
                }
            }
            Some(done) = records.join_next(), if !records.is_empty() => {
                if let Ok(id) = done {
                    in_flight.remove(&id);
                }
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            () = tokio::time::sleep(wait) => {}
        }
    }
    let drained = tokio::time::timeout(grace, async {
        while let Some(done) = attempts.join_next().await {
            if let Ok(record) = done {
                records.spawn(record_attempt(Arc::clone(&sink), store.clone(), record));
            }
        }
        while records.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(sink = %sink.name, "attempts still running at shutdown stay pending");
        attempts.abort_all();
        records.abort_all();
    }
}

/// How long until `at` (an RFC 3339 time); zero when it has passed.
fn until(at: &str) -> Duration {
    chrono::DateTime::parse_from_rfc3339(at)
        .ok()
        .and_then(|at| {
            (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
                .to_std()
                .ok()
        })
        .unwrap_or(Duration::ZERO)
}

/// One attempt; answers its record, with what follows it.
async fn attempt(sink: Arc<Sink>, delivery: DueDelivery) -> AttemptRecord {
    let started_at = now_rfc3339();
    let clock = std::time::Instant::now();
    let result = sink.target.deliver(&delivery, sink.timeout).await;
    let failures = usize::try_from(delivery.retry_step).unwrap_or(0) + 1;
    let next = if result.ok {
        NextStep::Delivered
    } else {
        let jitter = rand::random::<f64>() * 2.0 - 1.0;
        match retry::next_wait(&sink.schedule, failures, result.retry_after, jitter) {
            Some(wait) => NextStep::RetryAt(rfc3339_after(wait)),
            None => NextStep::Dead,
        }
    };
    let label = match &next {
        NextStep::Delivered => "delivered",
        NextStep::RetryAt(_) => "failed",
        NextStep::Dead => "dead",
    };
    crate::telemetry::metrics::delivery_attempt(&sink.name, label, clock.elapsed());
    match &next {
        NextStep::Delivered => {
            tracing::debug!(sink = %sink.name, delivery = delivery.id, finetune_id = %delivery.finetune_id, "delivered")
        }
        NextStep::RetryAt(at) => {
            tracing::warn!(sink = %sink.name, delivery = delivery.id, error = result.error.as_deref().unwrap_or("-"), retry_at = %at, "delivery attempt failed")
        }
        NextStep::Dead => {
            tracing::error!(sink = %sink.name, delivery = delivery.id, error = result.error.as_deref().unwrap_or("-"), "delivery is dead after its last attempt")
        }
    }
    AttemptRecord {
        delivery_id: delivery.id,
        started_at,
        finished_at: now_rfc3339(),
        duration_ms: i64::try_from(clock.elapsed().as_millis()).unwrap_or(i64::MAX),
        status_code: result.status_code.map(i64::from),
        exit_code: result.exit_code.map(i64::from),
        error: result.error,
        response: result.response,
        next,
    }
}

/// Records an attempt and what follows it. Returns the delivery's id.
async fn record_attempt(sink: Arc<Sink>, store: Store, record: AttemptRecord) -> i64 {
    let id = record.delivery_id;
    if let Err(e) = store.record_attempt(record).await {
        // The delivery stays pending and is attempted again: at least once.
        tracing::error!(sink = %sink.name, delivery = id, error = %e, "cannot record an attempt");
    }
    id
}
