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
use std::{collections::HashMap, sync::Arc, time::Duration};
use tokio::task::{self, JoinSet};
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
            events: s.event_filter(),
        })
        .collect()
}

/// The client for `http`, `slack` and `discord` sinks: explicit timeouts, a
/// bounded pool, no redirects. Failing to build it is a startup error: a
/// default client would follow redirects and have no timeouts.
pub fn http_client(settings: &DeliverySettings) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(concat!("tunehook/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
        .pool_max_idle_per_host(settings.concurrency)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(reqwest::Error::without_url)
}

pub fn build_sinks(
    delivery: &DeliverySettings,
    settings: &[SinkSettings],
) -> Result<Vec<Arc<Sink>>, reqwest::Error> {
    let client = http_client(delivery)?;
    let share = (delivery.concurrency / settings.len().max(1)).max(1);
    Ok(settings
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
        .collect())
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

/// What a worker has taken and not yet recorded: attempts talking to the
/// sink (bounded by the sink's concurrency) and the records of finished
/// attempts on their way to the database. A delivery stays here until its
/// record is committed, so it is never taken twice, and while a job has a
/// delivery here no other delivery of that job is started. A delivery whose
/// record could not be written (the database still says it is due) is held
/// back until the time its schedule sets, then attempted again.
#[derive(Default)]
struct InFlight {
    /// Delivery id → its job.
    deliveries: HashMap<i64, String>,
    /// Task → the delivery it works on, to let go of it if the task panics.
    tasks: HashMap<task::Id, i64>,
    attempts: JoinSet<(AttemptRecord, Duration)>,
    records: JoinSet<(i64, Option<Duration>)>,
    /// Deliveries whose record failed → until when they are held back.
    held: HashMap<i64, std::time::Instant>,
}

impl InFlight {
    fn is_empty(&self) -> bool {
        self.deliveries.len() == self.held.len()
    }

    fn holds(&self, delivery: &DueDelivery) -> bool {
        self.deliveries.contains_key(&delivery.id)
            || self
                .deliveries
                .values()
                .any(|job| *job == delivery.finetune_id)
    }

    /// Lets go of the held deliveries whose time has come.
    fn release_held(&mut self) {
        let now = std::time::Instant::now();
        let deliveries = &mut self.deliveries;
        self.held.retain(|id, until| {
            let keep = *until > now;
            if !keep {
                deliveries.remove(id);
            }
            keep
        });
    }

    fn start(&mut self, sink: &Arc<Sink>, delivery: DueDelivery) {
        self.deliveries
            .insert(delivery.id, delivery.finetune_id.clone());
        let id = delivery.id;
        let task = self.attempts.spawn(attempt(Arc::clone(sink), delivery));
        self.tasks.insert(task.id(), id);
    }

    /// An attempt ended: record it (or let go of its delivery if it panicked).
    fn attempted(
        &mut self,
        sink: &Arc<Sink>,
        store: &Store,
        done: Result<(task::Id, (AttemptRecord, Duration)), task::JoinError>,
    ) {
        match done {
            Ok((task, (record, hold))) => {
                self.tasks.remove(&task);
                let id = record.delivery_id;
                let recording = self.records.spawn(record_attempt(
                    Arc::clone(sink),
                    store.clone(),
                    record,
                    hold,
                ));
                self.tasks.insert(recording.id(), id);
            }
            Err(e) => self.lost(e.id()),
        }
    }

    /// A record was written (the delivery is free), failed (the delivery is
    /// held back for a while), or panicked (free).
    fn recorded(&mut self, done: Result<(task::Id, (i64, Option<Duration>)), task::JoinError>) {
        match done {
            Ok((task, (id, hold))) => {
                self.tasks.remove(&task);
                match hold {
                    Some(hold) => {
                        self.held.insert(id, std::time::Instant::now() + hold);
                    }
                    None => {
                        self.deliveries.remove(&id);
                    }
                }
            }
            Err(e) => self.lost(e.id()),
        }
    }

    fn lost(&mut self, task: task::Id) {
        if let Some(id) = self.tasks.remove(&task) {
            tracing::error!(
                delivery = id,
                "a delivery task failed; the delivery stays pending"
            );
            self.deliveries.remove(&id);
        }
    }
}

async fn work(sink: Arc<Sink>, store: Store, shutdown: CancellationToken, grace: Duration) {
    let mut changes = store.outbox_changes();
    let mut flight = InFlight::default();
    tracing::info!(sink = %sink.name, "delivery worker started");
    loop {
        flight.release_held();
        while let Some(done) = flight.attempts.try_join_next_with_id() {
            flight.attempted(&sink, &store, done);
        }
        while let Some(done) = flight.records.try_join_next_with_id() {
            flight.recorded(done);
        }
        let free = sink.concurrency.saturating_sub(flight.attempts.len());
        let now = now_rfc3339();
        let mut more_due = false;
        if free > 0 {
            let limit = free + flight.deliveries.len();
            match store.due_deliveries(&sink.name, &now, limit as u32).await {
                Ok(due) => {
                    more_due = due.len() >= limit;
                    for delivery in due {
                        if flight.attempts.len() >= sink.concurrency {
                            break;
                        }
                        if !flight.holds(&delivery) {
                            flight.start(&sink, delivery);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(sink = %sink.name, error = %e, "cannot read due deliveries")
                }
            }
        }
        // With work in flight or more waiting, the next wake-up comes from
        // a finished attempt or record; otherwise sleep until the next retry.
        let wait = if more_due || !flight.is_empty() {
            POLL
        } else {
            match store.next_due_after(&sink.name, &now).await {
                Ok(Some(at)) => crate::time::until(&at).min(POLL),
                _ => POLL,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(done) = flight.attempts.join_next_with_id(), if !flight.attempts.is_empty() => {
                flight.attempted(&sink, &store, done);
            }
            Some(done) = flight.records.join_next_with_id(), if !flight.records.is_empty() => {
                flight.recorded(done);
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
        while let Some(done) = flight.attempts.join_next_with_id().await {
            flight.attempted(&sink, &store, done);
        }
        while flight.records.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(sink = %sink.name, "attempts still running at shutdown stay pending");
        flight.attempts.abort_all();
        flight.records.abort_all();
    }
}

/// One attempt; answers its record, with what follows it, and how long to
/// hold the delivery back should the record fail to be written.
async fn attempt(sink: Arc<Sink>, delivery: DueDelivery) -> (AttemptRecord, Duration) {
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
    let jitter = rand::random::<f64>() * 2.0 - 1.0;
    let hold = hold_if_unrecorded(&next, &sink.schedule, failures, jitter);
    let record = AttemptRecord {
        delivery_id: delivery.id,
        started_at,
        finished_at: now_rfc3339(),
        duration_ms: i64::try_from(clock.elapsed().as_millis()).unwrap_or(i64::MAX),
        status_code: result.status_code.map(i64::from),
        exit_code: result.exit_code.map(i64::from),
        error: result.error,
        response: result.response,
        next,
    };
    (record, hold)
}

/// How long a delivery is held back when the record of its attempt (the
/// `failures`-th in a row) cannot be written: the database still says it
/// is due, so without a hold it would be sent again at once. A failed
/// attempt waits the time its record would have set; a delivered or dead
/// one, whose record is lost too, waits as a failure would, so that it is
/// sent again on the schedule (at least once), not in a loop.
fn hold_if_unrecorded(
    next: &NextStep,
    schedule: &[Duration],
    failures: usize,
    jitter: f64,
) -> Duration {
    match next {
        NextStep::RetryAt(at) => crate::time::until(at),
        NextStep::Delivered | NextStep::Dead => retry::next_wait(schedule, failures, None, jitter)
            .or_else(|| schedule.last().copied())
            .unwrap_or(POLL),
    }
}

/// Records an attempt and what follows it. Returns the delivery's id, and
/// how long to hold it back when the record could not be written.
async fn record_attempt(
    sink: Arc<Sink>,
    store: Store,
    record: AttemptRecord,
    hold: Duration,
) -> (i64, Option<Duration>) {
    let id = record.delivery_id;
    match store.record_attempt(record).await {
        Ok(()) => (id, None),
        Err(e) => {
            // The delivery stays pending and is attempted again: at least
            // once, on its schedule, so a database that cannot take writes
            // (a full disk) does not turn into a stream of resends.
            tracing::error!(sink = %sink.name, delivery = id, error = %e, retry_in_ms = hold.as_millis() as u64, "cannot record an attempt; the delivery is attempted again on its schedule");
            (id, Some(hold))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEDULE: [Duration; 3] = [
        Duration::from_secs(60),
        Duration::from_secs(600),
        Duration::from_secs(3600),
    ];

    #[test]
    fn a_failed_attempt_whose_record_is_lost_waits_the_time_its_record_would_have_set() {
        let at = crate::time::rfc3339_after(Duration::from_secs(600));
        let hold = hold_if_unrecorded(&NextStep::RetryAt(at), &SCHEDULE, 2, 0.0);
        assert!(
            hold > Duration::from_secs(590) && hold <= Duration::from_secs(600),
            "{hold:?}"
        );
    }

    #[test]
    fn a_delivered_attempt_whose_record_is_lost_is_sent_again_on_the_schedule() {
        let hold = hold_if_unrecorded(&NextStep::Delivered, &SCHEDULE, 1, 0.0);
        assert_eq!(hold, Duration::from_secs(60));
        let hold = hold_if_unrecorded(&NextStep::Delivered, &SCHEDULE, 3, 0.0);
        assert_eq!(hold, Duration::from_secs(3600));
    }

    #[test]
    fn a_dead_attempt_whose_record_is_lost_waits_the_longest_wait_of_the_schedule() {
        let hold = hold_if_unrecorded(&NextStep::Dead, &SCHEDULE, 4, 0.0);
        assert_eq!(hold, Duration::from_secs(3600));
    }
}
