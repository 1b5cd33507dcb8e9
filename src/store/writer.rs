//! The single writer, with group commit.
//!
//! Requests queue on a channel. The writer takes every request waiting (up
//! to `max_batch`), stores them all in one transaction, commits once, and
//! only then answers each request. One fsync covers the whole batch, so
//! throughput grows with load while every answer still means "on disk".
//! Webhooks in a batch are stored together with a few multi-row statements;
//! when a constraint refuses that, they are stored one by one, each in its
//! own savepoint, so only the one at fault is refused. Every other request
//! runs in a savepoint of its own.

use super::{
    StoreError,
    ingest::{self, IngestRequest, IngestResult},
    outbox::{self, AttemptRecord, ReplayRequest, SinkRoute},
    reconcile::{self, ReconcileSummary, RemoteObservation},
    tokens::{self, Tokens},
};
use sqlx::{Acquire, Connection, SqliteConnection, Transaction, sqlite::Sqlite};
use std::sync::Arc;
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

/// Requests waiting for the writer beyond this make callers wait to queue.
const QUEUE_DEPTH: usize = 8192;

/// What can be asked of the writer.
pub(super) enum Step {
    Ingest(Box<IngestRequest>),
    Tokens,
    RecordAttempt(Box<AttemptRecord>),
    RetryDelivery(i64),
    Replay(Box<ReplayRequest>),
    Reconcile(Vec<RemoteObservation>),
}

pub(super) enum Output {
    Ingest(IngestResult),
    Tokens(Tokens),
    Recorded,
    /// Whether the delivery went back to pending.
    Retried(bool),
    /// Deliveries enqueued.
    Replayed(u64),
    Reconciled(ReconcileSummary),
}

type ReplyTo = oneshot::Sender<Result<Output, StoreError>>;

#[derive(Clone)]
pub(super) struct WriterHandle {
    tx: mpsc::Sender<(Step, ReplyTo)>,
}

impl WriterHandle {
    pub async fn call(&self, step: Step) -> Result<Output, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((step, reply)).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable("the database writer has stopped".into())
}

/// The writer answered with another kind of output than the step asks for.
pub(super) fn mismatch() -> StoreError {
    StoreError::Unavailable("the database writer answered another request".into())
}

struct Writer {
    conn: SqliteConnection,
    routes: Arc<Vec<SinkRoute>>,
    /// Bumped after each commit that made deliveries due.
    outbox: watch::Sender<u64>,
}

pub(super) fn spawn(
    conn: SqliteConnection,
    max_batch: usize,
    routes: Arc<Vec<SinkRoute>>,
    outbox: watch::Sender<u64>,
) -> (WriterHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    let writer = Writer {
        conn,
        routes,
        outbox,
    };
    let task = tokio::spawn(writer.run(rx, max_batch));
    (WriterHandle { tx }, task)
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<(Step, ReplyTo)>, max_batch: usize) {
        let mut batch = Vec::with_capacity(max_batch);
        while rx.recv_many(&mut batch, max_batch).await > 0 {
            let started = std::time::Instant::now();
            let size = batch.len();
            self.commit_batch(&mut batch).await;
            tracing::debug!(
                size,
                elapsed_us = started.elapsed().as_micros() as u64,
                "batch committed"
            );
        }
        if let Err(e) = self.conn.close().await {
            tracing::warn!(error = %e, "closing the database failed");
        }
    }

    /// Runs every step of `batch` in one transaction and answers them all
    /// once it is committed (or all with 503 when it cannot be).
    async fn commit_batch(&mut self, batch: &mut Vec<(Step, ReplyTo)>) {
        let routes = Arc::clone(&self.routes);
        let mut tx = match Connection::begin(&mut self.conn).await {
            Ok(tx) => tx,
            Err(e) => {
                tracing::error!(error = %e, "cannot begin a write transaction; answering 503");
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(unavailable(e.to_string())));
                }
                return;
            }
        };
        let mut ingests = Vec::new();
        let mut replies: Vec<(ReplyTo, Result<Output, StoreError>)> =
            Vec::with_capacity(batch.len());
        for (step, reply) in batch.drain(..) {
            match step {
                Step::Ingest(request) => ingests.push((request, reply)),
                other => {
                    let result = in_savepoint(&mut tx, Work::Single(other), &routes).await;
                    replies.push((reply, result.map_err(StoreError::from).and_then(one)));
                }
            }
        }
        let requests: Vec<&IngestRequest> = ingests.iter().map(|(r, _)| r.as_ref()).collect();
        let results = store_webhooks(&mut tx, &requests, &routes).await;
        replies.extend(ingests.into_iter().map(|(_, reply)| reply).zip(results));

        let committed = tx.commit().await;
        if let Err(e) = &committed {
            tracing::error!(error = %e, requests = replies.len(), "commit failed; answering 503");
        }
        let mut outbox_changed = false;
        for (reply, result) in replies {
            let result = match &committed {
                Ok(()) => result,
                Err(e) => Err(unavailable(e.to_string())),
            };
            outbox_changed |= matches!(
                &result,
                Ok(Output::Ingest(IngestResult {
                    deliveries: 1..,
                    ..
                }) | Output::Retried(true)
                    | Output::Replayed(1..)
                    | Output::Reconciled(ReconcileSummary {
                        deliveries: 1..,
                        ..
                    }))
            );
            // A caller that went away (its client disconnected) no longer
            // needs the answer; what it asked for is committed regardless.
            let _ = reply.send(result);
        }
        if outbox_changed {
            self.outbox
                .send_modify(|generation| *generation = generation.wrapping_add(1));
        }
    }
}

/// Stores a batch of webhooks together, or one by one when a constraint
/// refuses the batch.
async fn store_webhooks(
    tx: &mut Transaction<'_, Sqlite>,
    requests: &[&IngestRequest],
    routes: &[SinkRoute],
) -> Vec<Result<Output, StoreError>> {
    if requests.is_empty() {
        return Vec::new();
    }
    match in_savepoint(tx, Work::Webhooks(requests), routes).await {
        Ok(Done::Webhooks(results)) => results.into_iter().map(|r| Ok(Output::Ingest(r))).collect(),
        Ok(Done::Single(_)) => requests.iter().map(|_| Err(mismatch())).collect(),
        Err(Failure::Refused(e)) => {
            tracing::warn!(error = %e, "the schema refused a batch; storing its requests one by one");
            let mut results = Vec::with_capacity(requests.len());
            for request in requests {
                let one = [*request];
                results.push(match in_savepoint(tx, Work::Webhooks(&one), routes).await {
                    Ok(Done::Webhooks(mut stored)) if stored.len() == 1 => {
                        Ok(Output::Ingest(stored.remove(0)))
                    }
                    Ok(_) => Err(mismatch()),
                    Err(e) => Err(e.into()),
                });
            }
            results
        }
        Err(e) => {
            let e: StoreError = e.into();
            requests
                .iter()
                .map(|_| Err(unavailable(e.to_string())))
                .collect()
        }
    }
}

fn one(done: Done) -> Result<Output, StoreError> {
    match done {
        Done::Single(output) => Ok(output),
        Done::Webhooks(_) => Err(mismatch()),
    }
}

/// Why a step did not complete.
enum Failure {
    /// A constraint refused the write: the request itself is at fault.
    Refused(sqlx::Error),
    /// The database could not take the write (locked, full, read-only...).
    Unavailable(sqlx::Error),
}

impl From<Failure> for StoreError {
    fn from(failure: Failure) -> StoreError {
        match failure {
            Failure::Refused(e) | Failure::Unavailable(e) => {
                tracing::error!(error = %e, "a write failed; its request gets 503");
                unavailable(e.to_string())
            }
        }
    }
}

/// What runs in one savepoint.
enum Work<'a> {
    Webhooks(&'a [&'a IngestRequest]),
    Single(Step),
}

enum Done {
    Webhooks(Vec<IngestResult>),
    Single(Output),
}

/// Runs `work` in a savepoint of `tx`, rolled back alone when it fails.
async fn in_savepoint(
    tx: &mut Transaction<'_, Sqlite>,
    work: Work<'_>,
    routes: &[SinkRoute],
) -> Result<Done, Failure> {
    let mut savepoint = Acquire::begin(&mut **tx)
        .await
        .map_err(Failure::Unavailable)?;
    let conn: &mut SqliteConnection = &mut savepoint;
    let result = match work {
        Work::Webhooks(requests) => ingest::execute_batch(conn, requests, routes)
            .await
            .map(Done::Webhooks),
        Work::Single(step) => run_step(conn, step, routes).await.map(Done::Single),
    };
    match result {
        Ok(done) => {
            savepoint.commit().await.map_err(Failure::Unavailable)?;
            Ok(done)
        }
        Err(e) => {
            let _ = savepoint.rollback().await;
            let refused = matches!(&e, sqlx::Error::Database(db) if db.is_unique_violation()
                || db.is_check_violation() || db.is_foreign_key_violation());
            Err(if refused {
                Failure::Refused(e)
            } else {
                Failure::Unavailable(e)
            })
        }
    }
}

async fn run_step(
    conn: &mut SqliteConnection,
    step: Step,
    routes: &[SinkRoute],
) -> Result<Output, sqlx::Error> {
    Ok(match step {
        Step::Ingest(request) => {
            let mut results = ingest::execute_batch(conn, &[request.as_ref()], routes).await?;
            match results.pop() {
                Some(result) => Output::Ingest(result),
                None => return Err(sqlx::Error::RowNotFound),
            }
        }
        Step::Tokens => Output::Tokens(tokens::load_or_generate(conn).await?),
        Step::RecordAttempt(record) => {
            outbox::record_attempt(conn, &record).await?;
            Output::Recorded
        }
        Step::RetryDelivery(id) => Output::Retried(outbox::retry(conn, id).await?),
        Step::Replay(request) => Output::Replayed(outbox::replay(conn, &request, routes).await?),
        Step::Reconcile(observations) => {
            Output::Reconciled(reconcile::apply(conn, &observations, routes).await?)
        }
    })
}

fn unavailable(message: String) -> StoreError {
    StoreError::Unavailable(message)
}
