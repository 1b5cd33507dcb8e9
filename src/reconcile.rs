//! The reconciler: polls Segmind's list (and details) endpoints so that every
//! job's picture is right even when webhooks are lost. What it sees goes
//! through the same state rules and the same single writer as webhooks
//! (source `reconcile`), so a status seen on both paths is recorded and
//! forwarded once.
//!
//! It runs shortly after start, then every `reconcile.interval`, and on
//! demand (`POST /v1/reconcile`, `tunehook reconcile`). Failures back off
//! exponentially with jitter up to the interval, honouring Segmind's wait;
//! a refused API key waits a whole interval. It also fetches the details of
//! jobs that webhooks name for the first time, or that finish without their
//! URLs, in the background. Its reads go at the client's pace
//! (`segmind.max_requests_per_second`), shared with the confirmer.

use crate::{
    config::Settings,
    domain::{JobFields, Status},
    segmind::{RateLimit, RemoteJob, SegmindClient, SegmindError},
    store::{ReconcileSummary, RemoteObservation, RemoteReport, Store, StoreError},
    telemetry::metrics,
    time::now_rfc3339,
};
use serde::Serialize;
use std::{
    collections::{BTreeSet, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The first wait after a transient failure; doubled after each one.
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
/// Jobs waiting for a details lookup beyond this are dropped (the next pass
/// covers them).
const ENRICH_QUEUE: usize = 1024;
/// Details calls in flight at once during a pass.
const DETAILS_CONCURRENCY: usize = 4;

/// What `/v1/status` shows of the reconciler.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct ReconcileState {
    pub enabled: bool,
    pub interval_seconds: u64,
    pub last_pass_started_at: Option<String>,
    pub last_pass_finished_at: Option<String>,
    pub last_success_at: Option<String>,
    /// `auth_failed`, `rate_limited`, `server_error`, `timeout`,
    /// `unreachable`, `undecodable`, `redirected`, `too_large`, `rejected`
    /// or `database`.
    pub last_error_kind: Option<&'static str>,
    pub last_error: Option<String>,
    pub passes: u64,
    pub failed_passes: u64,
    /// Jobs the last successful pass saw.
    pub jobs_seen: usize,
    /// Transitions recorded by the reconciler since start.
    pub transitions_recorded: usize,
}

/// What one pass did (`http::views::PassReport` is how the API and
/// `tunehook reconcile` show it).
#[derive(Debug, Clone)]
pub struct PassReport {
    pub started_at: String,
    pub finished_at: String,
    pub jobs_listed: usize,
    pub details_fetched: usize,
    pub details_failed: usize,
    /// Listed entries without a job id or a usable status.
    pub skipped: usize,
    pub applied: ReconcileSummary,
}

#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("the reconciler is off: set SEGMIND_API_KEY (segmind.api_key) to turn it on")]
    Disabled,
    #[error(transparent)]
    Segmind(#[from] SegmindError),
    #[error("cannot store what Segmind reported: {0}")]
    Store(#[from] StoreError),
}

impl PassError {
    pub fn kind(&self) -> &'static str {
        match self {
            PassError::Disabled => "disabled",
            PassError::Store(_) => "database",
            PassError::Segmind(e) => match e {
                SegmindError::Unauthorized { .. } => "auth_failed",
                SegmindError::InsufficientCredits { .. } | SegmindError::Rejected { .. } => {
                    "rejected"
                }
                SegmindError::RateLimited { .. } => "rate_limited",
                SegmindError::Server { .. } => "server_error",
                SegmindError::Timeout => "timeout",
                SegmindError::Unreachable(_) => "unreachable",
                SegmindError::Undecodable { .. } => "undecodable",
                SegmindError::Redirected { .. } => "redirected",
                SegmindError::TooLarge { .. } => "too_large",
            },
        }
    }
}

pub struct Reconciler {
    client: Option<SegmindClient>,
    store: Store,
    interval: Duration,
    initial_delay: Duration,
    forget_after: Duration,
    state: Mutex<ReconcileState>,
    /// One pass at a time: an on-demand pass waits for a running one.
    pass_lock: tokio::sync::Mutex<()>,
    enrich_tx: mpsc::Sender<String>,
    enrich_rx: Mutex<Option<mpsc::Receiver<String>>>,
}

impl Reconciler {
    /// Fails when the HTTP client for Segmind cannot be built: a startup
    /// error, never a client without its limits.
    pub fn new(settings: &Settings, store: Store) -> Result<Reconciler, reqwest::Error> {
        let client = settings
            .segmind
            .api_key
            .clone()
            .map(|key| {
                SegmindClient::new(&settings.segmind.base_url, key, settings.segmind.timeout).map(
                    |c| {
                        // The confirmer asks with a clone: one pace for both.
                        c.with_max_response_bytes(settings.segmind.max_response_bytes)
                            .with_rate_limit(RateLimit {
                                per_second: settings.segmind.max_requests_per_second,
                                burst: settings.segmind.burst,
                            })
                    },
                )
            })
            .transpose()?;
        let (enrich_tx, enrich_rx) = mpsc::channel(ENRICH_QUEUE);
        Ok(Reconciler {
            state: Mutex::new(ReconcileState {
                enabled: client.is_some(),
                interval_seconds: settings.reconcile.interval.as_secs(),
                ..ReconcileState::default()
            }),
            client,
            store,
            interval: settings.reconcile.interval,
            initial_delay: settings.reconcile.initial_delay,
            forget_after: settings.reconcile.forget_after,
            pass_lock: tokio::sync::Mutex::new(()),
            enrich_tx,
            enrich_rx: Mutex::new(Some(enrich_rx)),
        })
    }

    /// The client for Segmind's API, when a key is configured.
    pub fn client(&self) -> Option<&SegmindClient> {
        self.client.as_ref()
    }

    pub fn enabled(&self) -> bool {
        self.client.is_some()
    }

    pub fn state(&self) -> ReconcileState {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Asks for a job's details in the background; never waits.
    pub fn enrich(&self, finetune_id: &str) {
        if self.client.is_some() {
            // A full queue drops the request: the next pass covers the job.
            let _ = self.enrich_tx.try_send(finetune_id.to_owned());
        }
    }

    /// Runs one pass now: list every job, fetch the details of unfinished
    /// jobs the list lacks, and apply it all in one transaction. A pass that
    /// fails changes nothing.
    pub async fn run_pass(&self) -> Result<PassReport, PassError> {
        let Some(client) = &self.client else {
            return Err(PassError::Disabled);
        };
        let _running = self.pass_lock.lock().await;
        let started_at = now_rfc3339();
        self.update(|s| s.last_pass_started_at = Some(started_at.clone()));
        let result = self.pass(client, started_at).await;
        let finished = now_rfc3339();
        self.update(|s| {
            s.passes += 1;
            s.last_pass_finished_at = Some(finished.clone());
            match &result {
                Ok(report) => {
                    s.last_success_at = Some(finished.clone());
                    s.last_error = None;
                    s.last_error_kind = None;
                    s.jobs_seen = report.applied.jobs_seen;
                    s.transitions_recorded += report.applied.transitions;
                }
                Err(e) => {
                    s.failed_passes += 1;
                    s.last_error = Some(e.to_string());
                    s.last_error_kind = Some(e.kind());
                }
            }
        });
        metrics::reconcile_pass(if result.is_ok() { "success" } else { "failure" });
        if let Ok(report) = &result {
            for status in &report.applied.applied {
                metrics::transition(status, "reconcile");
            }
        }
        match &result {
            Ok(r) => tracing::info!(
                jobs = r.jobs_listed,
                transitions = r.applied.transitions,
                details = r.details_fetched,
                "reconcile pass done"
            ),
            Err(e) => tracing::warn!(kind = e.kind(), error = %e, "reconcile pass failed"),
        }
        result
    }

    async fn pass(
        &self,
        client: &SegmindClient,
        started_at: String,
    ) -> Result<PassReport, PassError> {
        let listed = client.list().await?;
        let mut skipped = 0;
        let mut observations = Vec::with_capacity(listed.len());
        for job in &listed {
            match observation(job) {
                Some(obs) => observations.push(obs),
                None => skipped += 1,
            }
        }
        let seen: HashSet<&str> = listed.iter().filter_map(RemoteJob::job_id).collect();
        let missing: Vec<String> = self
            .store
            .unfinished_job_ids(&now_rfc3339())
            .await?
            .into_iter()
            .filter(|id| !seen.contains(id.as_str()))
            .collect();
        let (mut details_fetched, mut details_failed) = (0, 0);
        let mut not_found = Vec::new();
        let mut queue = missing.iter();
        let mut calls = tokio::task::JoinSet::new();
        let mut struggling = false;
        loop {
            while !struggling && calls.len() < DETAILS_CONCURRENCY {
                let Some(id) = queue.next() else { break };
                let (client, id) = (client.clone(), id.clone());
                calls.spawn(async move {
                    let answer = client.details(&id).await;
                    (id, answer)
                });
            }
            let Some(joined) = calls.join_next().await else {
                break;
            };
            let Ok((id, answer)) = joined else {
                details_failed += 1;
                continue;
            };
            match answer {
                Ok(Some(job)) => match observation(&job) {
                    // Details may name the job by another of its ids.
                    Some(obs) => {
                        details_fetched += 1;
                        observations.push(RemoteObservation {
                            finetune_id: id,
                            ..obs
                        });
                    }
                    None => details_failed += 1,
                },
                Ok(None) | Err(SegmindError::Rejected { status: 404, .. }) => {
                    details_failed += 1;
                    not_found.push(id);
                }
                Err(e) => {
                    details_failed += 1;
                    tracing::warn!(finetune_id = %id, error = %e, "cannot fetch a job's details");
                    if e.is_transient() || matches!(e, SegmindError::Unauthorized { .. }) {
                        // Segmind is struggling: leave the rest for the next pass.
                        struggling = true;
                    }
                }
            }
        }
        details_failed += queue.count();
        let applied = self
            .store
            .reconcile(RemoteReport {
                observations,
                not_found,
                forget_after: self.forget_after,
            })
            .await?;
        Ok(PassReport {
            started_at,
            finished_at: now_rfc3339(),
            jobs_listed: listed.len(),
            details_fetched,
            details_failed,
            skipped,
            applied,
        })
    }

    fn update(&self, change: impl FnOnce(&mut ReconcileState)) {
        if let Ok(mut state) = self.state.lock() {
            change(&mut state);
        }
    }

    /// Runs passes until `shutdown`: shortly after start, then every
    /// interval, sooner after a transient failure; also serves details
    /// lookups for new jobs.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if self.client.is_none() {
            tracing::info!(
                "reconciler is off: set SEGMIND_API_KEY to poll Segmind for missed webhooks"
            );
            return;
        }
        let enrich = tokio::spawn(Arc::clone(&self).serve_details(shutdown.clone()));
        let mut wait = self.initial_delay;
        let mut failures: u32 = 0;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
            wait = match self.run_pass().await {
                Ok(_) => {
                    failures = 0;
                    self.interval
                }
                Err(PassError::Segmind(e)) if e.is_transient() => {
                    failures = failures.saturating_add(1);
                    backoff(failures, self.interval, e.wait())
                }
                Err(_) => self.interval,
            };
        }
        let _ = enrich.await;
    }

    async fn serve_details(self: Arc<Self>, shutdown: CancellationToken) {
        let (Some(client), Some(mut rx)) = (
            self.client.clone(),
            self.enrich_rx.lock().ok().and_then(|mut r| r.take()),
        ) else {
            return;
        };
        loop {
            let id = tokio::select! {
                () = shutdown.cancelled() => break,
                id = rx.recv() => match id { Some(id) => id, None => break },
            };
            let mut batch = BTreeSet::from([id]);
            while let Ok(more) = rx.try_recv() {
                batch.insert(more);
            }
            for id in batch {
                match client.details(&id).await {
                    Ok(Some(job)) => {
                        if let Some(obs) = observation(&job) {
                            let obs = RemoteObservation {
                                finetune_id: id.clone(),
                                ..obs
                            };
                            let report = RemoteReport {
                                observations: vec![obs],
                                ..RemoteReport::default()
                            };
                            match self.store.reconcile(report).await {
                                Ok(summary) => {
                                    for status in &summary.applied {
                                        metrics::transition(status, "reconcile");
                                    }
                                }
                                Err(e) => {
                                    tracing::warn!(finetune_id = %id, error = %e, "cannot store a job's details")
                                }
                            }
                        }
                    }
                    Ok(None) => {
                        tracing::debug!(finetune_id = %id, "Segmind has no details for this job")
                    }
                    Err(e) => {
                        tracing::debug!(finetune_id = %id, error = %e, "cannot fetch a job's details")
                    }
                }
            }
        }
    }
}

/// The wait after the `failures`-th transient failure in a row: doubling
/// from `FIRST_BACKOFF`, ±20% jitter, at most `interval`, and never shorter
/// than what Segmind asked for.
pub fn backoff(failures: u32, interval: Duration, asked: Option<Duration>) -> Duration {
    let doubled =
        FIRST_BACKOFF.saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16)));
    let jitter = 1.0 + 0.2 * (rand::random::<f64>() * 2.0 - 1.0);
    let planned = doubled.mul_f64(jitter).min(interval);
    match asked {
        Some(asked) => planned.max(asked.min(interval)),
        None => planned,
    }
}

/// What a listed or detailed job says, as an observation; `None` without
/// a job id or a usable status.
pub(crate) fn observation(job: &RemoteJob) -> Option<RemoteObservation> {
    let id = job.job_id()?.trim();
    if id.is_empty()
        || id.len() > crate::domain::payload::MAX_ID_LEN
        || id.chars().any(char::is_control)
    {
        return None;
    }
    let status = Status::parse(job.status.as_deref()?)?;
    Some(RemoteObservation {
        finetune_id: id.to_owned(),
        status,
        fields: JobFields {
            name: job.name.clone(),
            base_model: job.base_model.clone(),
            slug: job.slug.clone(),
            trained_model_url: job.trained_model_url.clone(),
            inference_api_url: job.inference_api_url.clone(),
            cloud_storage_url: job.cloud_storage_url.clone(),
            error_message: job.error_message.clone(),
            created_ts: job.created_ts.clone(),
            updated_ts: job.updated_ts.clone(),
            theme: job.theme.clone(),
            train_type: job.train_type.clone(),
            source_type: job.source_type.clone(),
            data_source_path: job.data_source_path.clone(),
            public_model: job.public(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_interval_and_honours_the_asked_wait() {
        let interval = Duration::from_secs(120);
        let first = backoff(1, interval, None);
        assert!(first >= Duration::from_secs(4) && first <= Duration::from_secs(6));
        let third = backoff(3, interval, None);
        assert!(third >= Duration::from_secs(16) && third <= Duration::from_secs(24));
        assert_eq!(backoff(30, interval, None), interval);
        assert!(backoff(1, interval, Some(Duration::from_secs(60))) >= Duration::from_secs(60));
        assert_eq!(
            backoff(1, interval, Some(Duration::from_secs(3600))),
            interval
        );
    }
}
