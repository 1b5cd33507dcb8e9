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
//!
//! The writer is the only way anything is stored, so its end is watched:
//! [`WriterState`] says whether it runs, closed on request, or stopped for
//! another reason (a panic, a database that can no longer be used). The
//! service answers 503 and exits once it has stopped (see `app.rs`), so an
//! orchestrator restarts it instead of it refusing every webhook forever.

use super::{
    StoreError,
    checkpoint::Checkpointer,
    confirm::{self, ConfirmSummary, Settlement},
    ingest::{self, IngestRequest, IngestResult},
    outbox::{self, AttemptRecord, ReplayChunk, ReplayedChunk, SinkRoute},
    prune::{self, PruneCutoffs, PruneReport, PruneStep},
    reconcile::{self, ReconcileSummary, RemoteReport},
    sessions,
    submissions::{self, Claim, Submission, SubmissionResult},
    tokens::{self, TokenKind, Tokens},
};
use rusqlite::{Connection, ErrorCode, Transaction};
use std::{panic::AssertUnwindSafe, sync::Arc};
use tokio::sync::{mpsc, oneshot, watch};

/// Requests waiting for the writer beyond this make callers wait to queue.
const QUEUE_DEPTH: usize = 8192;

/// What can be asked of the writer.
pub(super) enum Step {
    Ingest(Box<IngestRequest>),
    Tokens,
    RotateToken(TokenKind),
    RecordAttempt(Box<AttemptRecord>),
    RetryDelivery(i64),
    Replay(Box<ReplayChunk>),
    Reconcile(Box<RemoteReport>),
    Settle(Vec<Settlement>),
    Prune(Box<PruneCutoffs>),
    Submit(Box<Submission>),
    Access {
        finetune_id: String,
        public: bool,
    },
    ClaimKey {
        key: String,
        request_sha256: String,
    },
    ReleaseKey(String),
    StoreAnswer {
        key: String,
        response: String,
    },
    RecordPrune(Box<PruneReport>),
    OpenSession(Box<super::sessions::NewSession>),
    EndSession(String),
    /// Commit what came before, refuse what comes after, checkpoint and
    /// close the database.
    Close,
}

pub(super) enum Output {
    Ingest(IngestResult),
    Tokens(Tokens),
    /// The new token.
    Rotated(String),
    Recorded,
    /// Whether the delivery went back to pending.
    Retried(bool),
    Replayed(ReplayedChunk),
    Reconciled(ReconcileSummary),
    Settled(ConfirmSummary),
    Pruned(PruneStep),
    Submitted(SubmissionResult),
    /// Deliveries made; `None`: no such job.
    AccessRecorded(Option<usize>),
    Claimed(Claim),
}

type ReplyTo = oneshot::Sender<Result<Output, StoreError>>;

/// Whether the writer runs, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriterState {
    Running,
    /// Closed on request (shutdown) or because every handle was dropped,
    /// after committing what it held.
    Closed,
    /// Stopped for any other reason; nothing can be stored any more.
    Failed(String),
}

#[derive(Clone)]
pub(super) struct WriterHandle {
    tx: mpsc::Sender<(Step, ReplyTo)>,
    state: watch::Receiver<WriterState>,
}

impl WriterHandle {
    pub async fn call(&self, step: Step) -> Result<Output, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((step, reply)).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Asks the writer to commit what is queued before this and close.
    pub async fn close(&self) {
        let (reply, _) = oneshot::channel();
        let _ = self.tx.send((Step::Close, reply)).await;
    }

    pub fn state(&self) -> watch::Receiver<WriterState> {
        self.state.clone()
    }
}

/// The writer's thread, to wait for its end.
pub struct WriterTask {
    state: watch::Receiver<WriterState>,
}

impl WriterTask {
    /// Waits until the writer has ended: `Ok` once it closed the database,
    /// the cause when it stopped for another reason.
    pub async fn finished(mut self) -> Result<(), String> {
        let ended = self
            .state
            .wait_for(|state| *state != WriterState::Running)
            .await
            .map(|state| state.clone());
        match ended {
            Ok(WriterState::Failed(cause)) => Err(cause),
            Ok(_) => Ok(()),
            Err(_) => Err("the database writer vanished".into()),
        }
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
    /// Test hook: see [`panic_after`].
    panic_after: Option<u64>,
    webhooks_stored: u64,
}

/// The environment variable of the test hook that makes the writer panic.
pub const PANIC_AFTER_VAR: &str = "TUNEHOOK_TEST_WRITER_PANIC_AFTER";

/// Test hook: with `TUNEHOOK_TEST_WRITER_PANIC_AFTER=N`, the writer panics
/// on the first batch holding a webhook once it has stored N webhooks, so
/// tests can watch the service notice its writer is gone and exit. Read
/// only in debug builds: a release binary ignores the variable, so it
/// cannot be used to stop a production service.
fn panic_after() -> Option<u64> {
    #[cfg(debug_assertions)]
    {
        std::env::var(PANIC_AFTER_VAR)
            .ok()
            .and_then(|v| v.trim().parse().ok())
    }
    #[cfg(not(debug_assertions))]
    {
        None
    }
}

pub(super) fn spawn(
    conn: Connection,
    checkpointer: Checkpointer,
    max_batch: usize,
    routes: Arc<Vec<SinkRoute>>,
    outbox: watch::Sender<u64>,
) -> std::io::Result<(WriterHandle, WriterTask)> {
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    let (state_tx, state) = watch::channel(WriterState::Running);
    let writer = Writer {
        conn,
        checkpointer,
        routes,
        outbox,
        panic_after: panic_after(),
        webhooks_stored: 0,
    };
    // A thread of its own rather than tokio's blocking pool: the runtime
    // waits for its blocking tasks when it shuts down, and a writer stuck on
    // a dead disk must not keep the process from exiting.
    std::thread::Builder::new()
        .name("tunehook-writer".into())
        .spawn(move || {
            let ended =
                std::panic::catch_unwind(AssertUnwindSafe(|| writer.run(rx, max_batch.max(1))));
            let state = match ended {
                Ok(Ok(())) => WriterState::Closed,
                Ok(Err(cause)) => WriterState::Failed(cause),
                Err(panic) => WriterState::Failed(format!(
                    "the database writer panicked: {}",
                    panic_message(panic.as_ref())
                )),
            };
            if let WriterState::Failed(cause) = &state {
                tracing::error!(cause = %cause, "the database writer stopped; nothing can be stored until tunehook restarts");
            }
            state_tx.send_replace(state);
        })?;
    Ok((
        WriterHandle {
            tx,
            state: state.clone(),
        },
        WriterTask { state },
    ))
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

impl Writer {
    /// Commits batches until closed (`Ok`) or the database can no longer
    /// be used (the cause).
    fn run(
        mut self,
        mut rx: mpsc::Receiver<(Step, ReplyTo)>,
        max_batch: usize,
    ) -> Result<(), String> {
        let mut batch = Vec::with_capacity(max_batch);
        let mut closing = false;
        while let Some(first) = rx.blocking_recv() {
            let mut next = Some(first);
            while let Some((step, reply)) = next.take() {
                if matches!(step, Step::Close) {
                    closing = true;
                    break;
                }
                // A caller that went away before its step began (its
                // client gave up, or its handler timed out) was answered
                // nothing, so there is nothing to keep: skip it rather than
                // hold its body and store it.
                if reply.is_closed() {
                    tracing::debug!("skipped a request whose caller went away");
                } else {
                    batch.push((step, reply));
                }
                if batch.len() < max_batch {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.test_hook(&batch);
                let started = std::time::Instant::now();
                let size = batch.len();
                self.commit_batch(&mut batch)?;
                tracing::debug!(
                    size,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "batch committed"
                );
            }
            if closing {
                break;
            }
        }
        // Requests queued after the close are refused: dropping them
        // answers their callers 503.
        rx.close();
        while rx.try_recv().is_ok() {}
        drop(rx);
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
        Ok(())
    }

    /// The test hook (see [`panic_after`]).
    fn test_hook(&mut self, batch: &[(Step, ReplyTo)]) {
        let webhooks = batch
            .iter()
            .filter(|(step, _)| matches!(step, Step::Ingest(_)))
            .count() as u64;
        if let Some(limit) = self.panic_after {
            if webhooks > 0 && self.webhooks_stored >= limit {
                panic!("{PANIC_AFTER_VAR}={limit}: stopping the writer as asked");
            }
        }
        self.webhooks_stored += webhooks;
    }

    /// Runs every step of `batch` in one transaction and answers them all
    /// once it is committed (or all with 503 when it cannot be). Answers
    /// the cause when the database can no longer be used at all.
    fn commit_batch(&mut self, batch: &mut Vec<(Step, ReplyTo)>) -> Result<(), String> {
        let (steps, replies): (Vec<Step>, Vec<ReplyTo>) = batch.drain(..).unzip();
        let routes = Arc::clone(&self.routes);
        let results = match store_together(&mut self.conn, &steps, &routes) {
            Ok(outputs) => outputs.into_iter().map(Ok).collect(),
            Err(e) if is_fatal(&e) => {
                // Dropping the replies answers every caller 503.
                return Err(format!("the database can no longer be used: {e}"));
            }
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
                    | Output::Replayed(ReplayedChunk { enqueued: 1.., .. })
                    | Output::Reconciled(ReconcileSummary {
                        deliveries: 1..,
                        ..
                    })
                    | Output::Submitted(SubmissionResult {
                        deliveries: 1..,
                        ..
                    })
                    | Output::AccessRecorded(Some(1..))
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
        Ok(())
    }
}

/// Errors after which no write can succeed on this connection: a file that
/// is not (or no longer) a database, or that was moved or deleted under
/// it. A full disk or a lock held elsewhere is not among them: those pass,
/// and their webhooks get 503 meanwhile. A fresh start reopens the file.
fn is_fatal(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(failure, _) => {
            matches!(
                failure.code,
                ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase
            ) || failure.extended_code == rusqlite::ffi::SQLITE_READONLY_DBMOVED
        }
        _ => false,
    }
}

/// Begins a write transaction, taking the write lock at once. A deferred
/// one would read first and then fail at its first write, without waiting,
/// whenever another process (`tunehook prune`, `tunehook tokens`) holds the
/// lock; taking it up front waits up to `database.busy_timeout` instead.
fn begin(conn: &mut Connection) -> rusqlite::Result<Transaction<'_>> {
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
}

/// The fast path: every step in one transaction without savepoints (the
/// webhooks together, the others in turn), committed. Any error rolls the
/// whole batch back, for `store_apart` to redo.
fn store_together(
    conn: &mut Connection,
    steps: &[Step],
    routes: &[SinkRoute],
) -> rusqlite::Result<Vec<Output>> {
    let tx = begin(conn)?;
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
    let mut tx = match begin(conn) {
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
        Step::RotateToken(kind) => Output::Rotated(tokens::rotate(conn, *kind)?),
        Step::RecordAttempt(record) => {
            outbox::record_attempt(conn, record)?;
            Output::Recorded
        }
        Step::RetryDelivery(id) => Output::Retried(outbox::retry(conn, *id)?),
        Step::Replay(chunk) => Output::Replayed(outbox::replay_chunk(conn, chunk, routes)?),
        Step::Reconcile(report) => Output::Reconciled(reconcile::apply(conn, report, routes)?),
        Step::Settle(settlements) => Output::Settled(confirm::settle(conn, settlements, routes)?),
        Step::Prune(cutoffs) => Output::Pruned(prune::step(conn, cutoffs)?),
        Step::Submit(submission) => {
            Output::Submitted(submissions::record(conn, submission, routes)?)
        }
        Step::Access {
            finetune_id,
            public,
        } => Output::AccessRecorded(submissions::record_access(
            conn,
            finetune_id,
            *public,
            routes,
        )?),
        Step::ClaimKey {
            key,
            request_sha256,
        } => Output::Claimed(submissions::claim(conn, key, request_sha256)?),
        Step::ReleaseKey(key) => {
            submissions::release(conn, key)?;
            Output::Recorded
        }
        Step::StoreAnswer { key, response } => {
            submissions::store_answer(conn, key, response)?;
            Output::Recorded
        }
        Step::RecordPrune(report) => {
            prune::record(conn, report)?;
            Output::Recorded
        }
        Step::OpenSession(session) => {
            sessions::open(conn, session)?;
            Output::Recorded
        }
        Step::EndSession(id) => {
            sessions::end(conn, id)?;
            Output::Recorded
        }
        // The run loop takes it before any batch is formed.
        Step::Close => return Err(rusqlite::Error::InvalidQuery),
    })
}

fn unavailable(message: String) -> StoreError {
    StoreError::Unavailable(message)
}
