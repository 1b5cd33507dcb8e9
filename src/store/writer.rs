//! The single writer, with group commit.
//!
//! Requests queue on a channel. The writer, a thread of its own holding the
//! one write connection, takes every request waiting (up to `max_batch`),
//! stores them all in one transaction, commits once, and only then answers
//! each request. One fsync covers the whole batch, so throughput grows with
//! load while every answer still means "on disk". The statements run on this
//! thread, prepared once and cached, with no hand-off per statement.
//! Webhooks in a batch are stored together; when a constraint refuses that,
//! they are stored one by one, each in its own savepoint, so only the one at
//! fault is refused. Every other request runs in a savepoint of its own.

use super::{
    StoreError,
    checkpoint::Checkpointer,
    confirm::{self, ConfirmSummary, Settlement},
    ingest::{self, IngestRequest, IngestResult},
    outbox::{self, AttemptRecord, ReplayRequest, SinkRoute},
    reconcile::{self, ReconcileSummary, RemoteReport},
    tokens::{self, Tokens},
};
use rusqlite::{Connection, ErrorCode, Transaction};
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
    Reconcile(Box<RemoteReport>),
    Settle(Vec<Settlement>),
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
    Settled(ConfirmSummary),
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
    conn: Connection,
    checkpointer: Checkpointer,
    routes: Arc<Vec<SinkRoute>>,
    /// Bumped after each commit that made deliveries due.
    outbox: watch::Sender<u64>,
}

pub(super) fn spawn(
    conn: Connection,
    checkpointer: Checkpointer,
    max_batch: usize,
    routes: Arc<Vec<SinkRoute>>,
    outbox: watch::Sender<u64>,
) -> (WriterHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    let writer = Writer {
        conn,
        checkpointer,
        routes,
        outbox,
    };
    let task = tokio::task::spawn_blocking(move || writer.run(rx, max_batch.max(1)));
    (WriterHandle { tx }, task)
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<(Step, ReplyTo)>, max_batch: usize) {
        let mut batch = Vec::with_capacity(max_batch);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            let started = std::time::Instant::now();
            let size = batch.len();
            self.commit_batch(&mut batch);
            tracing::debug!(
                size,
                elapsed_us = started.elapsed().as_micros() as u64,
                "batch committed"
            );
        }
        // Everything is committed: fold the log into the database file, so
        // that the file alone holds it all once tunehook has stopped.
        self.checkpointer.stop();
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            tracing::warn!(error = %e, "the final checkpoint failed; the log is kept");
        }
        if let Err((_, e)) = self.conn.close() {
            tracing::warn!(error = %e, "closing the database failed");
        }
    }

    /// Runs every step of `batch` in one transaction and answers them all
    /// once it is committed (or all with 503 when it cannot be).
    fn commit_batch(&mut self, batch: &mut Vec<(Step, ReplyTo)>) {
        let (steps, replies): (Vec<Step>, Vec<ReplyTo>) = batch.drain(..).unzip();
        let routes = Arc::clone(&self.routes);
        let results = match store_together(&mut self.conn, &steps, &routes) {
            Ok(outputs) => outputs.into_iter().map(Ok).collect(),
            Err(e) => {
                tracing::warn!(error = %e, steps = steps.len(), "a batch failed as a whole; storing its steps apart");
                store_apart(&mut self.conn, &steps, &routes)
            }
        };
        let mut outbox_changed = false;
        for (reply, result) in replies.into_iter().zip(results) {
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
                    })
                    | Output::Settled(ConfirmSummary {
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

/// The fast path: every step in one transaction without savepoints (the
/// webhooks together, the others in turn), committed. Any error rolls the
/// whole batch back, for `store_apart` to redo.
fn store_together(
    conn: &mut Connection,
    steps: &[Step],
    routes: &[SinkRoute],
) -> rusqlite::Result<Vec<Output>> {
    let tx = conn.transaction()?;
    let mut outputs: Vec<Option<Output>> = Vec::with_capacity(steps.len());
    let mut webhooks = Vec::new();
    for step in steps {
        match step {
            Step::Ingest(request) => {
                webhooks.push((outputs.len(), request.as_ref()));
                outputs.push(None);
            }
            other => outputs.push(Some(run_step(&tx, other, routes)?)),
        }
    }
    if !webhooks.is_empty() {
        let requests: Vec<&IngestRequest> = webhooks.iter().map(|(_, r)| *r).collect();
        let results = ingest::execute_batch(&tx, &requests, routes)?;
        for ((at, _), result) in webhooks.iter().zip(results) {
            outputs[*at] = Some(Output::Ingest(result));
        }
    }
    let outputs = outputs
        .into_iter()
        .collect::<Option<Vec<Output>>>()
        .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
    tx.commit()?;
    Ok(outputs)
}

/// The careful path: each step in a savepoint of its own (the webhooks
/// together first, then one by one if that fails), so only the steps at
/// fault fail; then one commit, or 503 for all when that fails.
fn store_apart(
    conn: &mut Connection,
    steps: &[Step],
    routes: &[SinkRoute],
) -> Vec<Result<Output, StoreError>> {
    let mut tx = match conn.transaction() {
        Ok(tx) => tx,
        Err(e) => {
            tracing::error!(error = %e, "cannot begin a write transaction; answering 503");
            return steps
                .iter()
                .map(|_| Err(unavailable(e.to_string())))
                .collect();
        }
    };
    let mut results: Vec<Option<Result<Output, StoreError>>> = Vec::with_capacity(steps.len());
    let mut webhooks = Vec::new();
    for step in steps {
        match step {
            Step::Ingest(request) => {
                webhooks.push((results.len(), request.as_ref()));
                results.push(None);
            }
            other => {
                let result = in_savepoint(&mut tx, Work::Single(other), routes);
                results.push(Some(result.map_err(StoreError::from).and_then(one)));
            }
        }
    }
    let requests: Vec<&IngestRequest> = webhooks.iter().map(|(_, r)| *r).collect();
    for ((at, _), result) in webhooks
        .iter()
        .zip(store_webhooks(&mut tx, &requests, routes))
    {
        results[*at] = Some(result);
    }
    let committed = tx.commit();
    if let Err(e) = &committed {
        tracing::error!(error = %e, requests = steps.len(), "commit failed; answering 503");
    }
    results
        .into_iter()
        .map(|result| match (&committed, result) {
            (Ok(()), Some(result)) => result,
            (Ok(()), None) => Err(mismatch()),
            (Err(e), _) => Err(unavailable(e.to_string())),
        })
        .collect()
}

/// Stores a batch of webhooks together, or one by one when a constraint
/// refuses the batch.
fn store_webhooks(
    tx: &mut Transaction<'_>,
    requests: &[&IngestRequest],
    routes: &[SinkRoute],
) -> Vec<Result<Output, StoreError>> {
    if requests.is_empty() {
        return Vec::new();
    }
    match in_savepoint(tx, Work::Webhooks(requests), routes) {
        Ok(Done::Webhooks(results)) => results.into_iter().map(|r| Ok(Output::Ingest(r))).collect(),
        Ok(Done::Single(_)) => requests.iter().map(|_| Err(mismatch())).collect(),
        Err(Failure::Refused(e)) => {
            tracing::warn!(error = %e, "the schema refused a batch; storing its requests one by one");
            let mut results = Vec::with_capacity(requests.len());
            for request in requests {
                let one = [*request];
                results.push(match in_savepoint(tx, Work::Webhooks(&one), routes) {
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
    Refused(rusqlite::Error),
    /// The database could not take the write (locked, full, read-only...).
    Unavailable(rusqlite::Error),
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
    Single(&'a Step),
}

enum Done {
    Webhooks(Vec<IngestResult>),
    Single(Output),
}

/// Runs `work` in a savepoint of `tx`, rolled back alone when it fails.
fn in_savepoint(
    tx: &mut Transaction<'_>,
    work: Work<'_>,
    routes: &[SinkRoute],
) -> Result<Done, Failure> {
    // Some failures (an I/O error, a full disk) make SQLite roll the whole
    // transaction back. A savepoint begun then would be a transaction of its
    // own, committed on release: refuse instead, so nothing is stored that
    // the batch's answer (503) says was not.
    if tx.is_autocommit() {
        return Err(Failure::Unavailable(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
            Some("the batch's transaction was rolled back".into()),
        )));
    }
    let savepoint = tx.savepoint().map_err(Failure::Unavailable)?;
    let result = match work {
        Work::Webhooks(requests) => {
            ingest::execute_batch(&savepoint, requests, routes).map(Done::Webhooks)
        }
        Work::Single(step) => run_step(&savepoint, step, routes).map(Done::Single),
    };
    match result {
        Ok(done) => {
            savepoint.commit().map_err(Failure::Unavailable)?;
            Ok(done)
        }
        // Dropping the savepoint rolls it back.
        Err(e) => Err(match e.sqlite_error_code() {
            Some(ErrorCode::ConstraintViolation) => Failure::Refused(e),
            _ => Failure::Unavailable(e),
        }),
    }
}

fn run_step(conn: &Connection, step: &Step, routes: &[SinkRoute]) -> rusqlite::Result<Output> {
    Ok(match step {
        Step::Ingest(request) => {
            let mut results = ingest::execute_batch(conn, &[request.as_ref()], routes)?;
            match results.pop() {
                Some(result) => Output::Ingest(result),
                None => return Err(rusqlite::Error::QueryReturnedNoRows),
            }
        }
        Step::Tokens => Output::Tokens(tokens::load_or_generate(conn)?),
        Step::RecordAttempt(record) => {
            outbox::record_attempt(conn, record)?;
            Output::Recorded
        }
        Step::RetryDelivery(id) => Output::Retried(outbox::retry(conn, *id)?),
        Step::Replay(request) => Output::Replayed(outbox::replay(conn, request, routes)?),
        Step::Reconcile(report) => Output::Reconciled(reconcile::apply(conn, report, routes)?),
        Step::Settle(settlements) => Output::Settled(confirm::settle(conn, settlements, routes)?),
    })
}

fn unavailable(message: String) -> StoreError {
    StoreError::Unavailable(message)
}
