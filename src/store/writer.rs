//! The single writer, with group commit.
//!
//! Requests queue on a channel. The writer, a thread of its own holding the
//! one write connection, takes every request waiting (up to `max_batch`),
//! stores them all in one transaction, commits once, and only then answers
//! each request. One fsync covers the whole batch, so throughput grows with
//! load while every answer still means "on disk". The statements run on this
//! thread, prepared once and cached, with no hand-off per statement.
//! Webhooks in a batch are stored together, and so are the delivery
//! attempts: a few statements for all of them, each over every row (one
//! round trip each on PostgreSQL, see `Conn::execute_rows`). When a
//! constraint refuses that, they are stored one by one, each in its own
//! savepoint, so only the one at fault is refused. Every other request is
//! a typed command (`commands.rs`): the writer runs it without knowing its
//! type and answers its caller with the command's own answer type.
//!
//! The writer is the only way anything is stored, so its end is watched:
//! [`WriterState`] says whether it runs, closed on request, or stopped for
//! another reason (a panic, a database that can no longer be used). The
//! service answers 503 and exits once it has stopped (see `app.rs`), so an
//! orchestrator restarts it instead of it refusing every webhook forever.

use super::{
    StoreError,
    commands::Command,
    ingest::{self, IngestRequest, IngestResult},
    outbox::{self, AttemptRecord, SinkRoute},
    sql::{Conn, DbError, DbErrorKind, DbResult, WriteConn},
};
use std::{panic::AssertUnwindSafe, sync::Arc};
use tokio::sync::{mpsc, oneshot, watch};

/// Requests waiting for the writer beyond this make callers wait to queue.
const QUEUE_DEPTH: usize = 8192;

/// What waits on the writer's queue.
enum Request {
    /// A webhook: stored with the others of its batch in one plan.
    Webhook(
        Box<IngestRequest>,
        oneshot::Sender<Result<IngestResult, StoreError>>,
    ),
    /// A delivery attempt: recorded with the others of its batch.
    Attempt(Box<AttemptRecord>, oneshot::Sender<Result<(), StoreError>>),
    /// Any other write (`commands.rs`), with its caller.
    Command(Box<dyn Queued>),
    /// Commit what came before, refuse what comes after, checkpoint and
    /// close the database.
    Close,
}

impl Request {
    fn caller_gone(&self) -> bool {
        match self {
            Request::Webhook(_, reply) => reply.is_closed(),
            // Recorded whether or not its worker still waits: the attempt
            // was made.
            Request::Attempt(..) => false,
            Request::Command(call) => call.caller_gone(),
            Request::Close => false,
        }
    }
}

/// A command and its caller, with the command's type hidden so that one
/// queue holds every kind; the answer keeps its type from caller to
/// command and back.
trait Queued: Send {
    /// Runs the command, keeping what it answers until the commit.
    fn run(&mut self, conn: &dyn Conn, routes: &[SinkRoute]) -> DbResult<()>;
    /// Keeps `error` as the answer instead.
    fn fail(&mut self, error: StoreError);
    /// Answers the caller, once the batch is committed (or not: `commit`
    /// says why); true when that made deliveries due.
    fn answer(self: Box<Self>, commit: &Result<(), String>) -> bool;
    fn caller_gone(&self) -> bool;
}

struct Call<C: Command> {
    command: C,
    outcome: Result<C::Answer, StoreError>,
    reply: oneshot::Sender<Result<C::Answer, StoreError>>,
}

impl<C: Command> Queued for Call<C> {
    fn run(&mut self, conn: &dyn Conn, routes: &[SinkRoute]) -> DbResult<()> {
        self.outcome = Ok(self.command.run(conn, routes)?);
        Ok(())
    }

    fn fail(&mut self, error: StoreError) {
        self.outcome = Err(error);
    }

    fn answer(self: Box<Self>, commit: &Result<(), String>) -> bool {
        let Call { outcome, reply, .. } = *self;
        let outcome = match commit {
            Ok(()) => outcome,
            Err(cause) => Err(unavailable(cause.clone())),
        };
        let wakes = outcome.as_ref().is_ok_and(C::wakes_deliveries);
        // A caller that went away (its client disconnected) no longer
        // needs the answer; what it asked for is committed regardless.
        let _ = reply.send(outcome);
        wakes
    }

    fn caller_gone(&self) -> bool {
        self.reply.is_closed()
    }
}

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
    tx: mpsc::Sender<Request>,
    state: watch::Receiver<WriterState>,
}

impl WriterHandle {
    /// Runs `command` in the writer's next batch; answers once committed.
    pub async fn run<C: Command>(&self, command: C) -> Result<C::Answer, StoreError> {
        let (reply, answer) = oneshot::channel();
        let call = Call {
            command,
            outcome: Err(unavailable("the writer did not reach this request".into())),
            reply,
        };
        self.tx
            .send(Request::Command(Box::new(call)))
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Stores a webhook in the writer's next batch; answers once committed.
    pub async fn ingest(&self, request: IngestRequest) -> Result<IngestResult, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request::Webhook(Box::new(request), reply))
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Records a delivery attempt in the writer's next batch; answers once
    /// committed.
    pub async fn record_attempt(&self, record: AttemptRecord) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request::Attempt(Box::new(record), reply))
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Asks the writer to commit what is queued before this and close.
    pub async fn close(&self) {
        let _ = self.tx.send(Request::Close).await;
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

struct Writer {
    conn: Box<dyn WriteConn>,
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
    conn: Box<dyn WriteConn>,
    max_batch: usize,
    routes: Arc<Vec<SinkRoute>>,
    outbox: watch::Sender<u64>,
) -> std::io::Result<(WriterHandle, WriterTask)> {
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    let (state_tx, state) = watch::channel(WriterState::Running);
    let writer = Writer {
        conn,
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
    fn run(mut self, mut rx: mpsc::Receiver<Request>, max_batch: usize) -> Result<(), String> {
        let mut batch = Vec::with_capacity(max_batch);
        let mut closing = false;
        while let Some(first) = rx.blocking_recv() {
            let mut next = Some(first);
            while let Some(request) = next.take() {
                if matches!(request, Request::Close) {
                    closing = true;
                    break;
                }
                // A caller that went away before its step began (its
                // client gave up, or its handler timed out) was answered
                // nothing, so there is nothing to keep: skip it rather than
                // hold its body and store it.
                if request.caller_gone() {
                    tracing::debug!("skipped a request whose caller went away");
                } else {
                    batch.push(request);
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
        // Everything is committed.
        self.conn.close();
        Ok(())
    }

    /// The test hook (see [`panic_after`]).
    fn test_hook(&mut self, batch: &[Request]) {
        let webhooks = batch
            .iter()
            .filter(|request| matches!(request, Request::Webhook(..)))
            .count() as u64;
        if let Some(limit) = self.panic_after {
            if webhooks > 0 && self.webhooks_stored >= limit {
                panic!("{PANIC_AFTER_VAR}={limit}: stopping the writer as asked");
            }
        }
        self.webhooks_stored += webhooks;
    }

    /// Runs every request of `batch` in one transaction and answers them
    /// all once it is committed (or all with 503 when it cannot be).
    /// Answers the cause when the database can no longer be used at all.
    fn commit_batch(&mut self, batch: &mut Vec<Request>) -> Result<(), String> {
        let mut commands = Vec::new();
        let mut webhooks = Vec::new();
        let mut replies = Vec::new();
        let mut attempts = Vec::new();
        let mut attempt_replies = Vec::new();
        for request in batch.drain(..) {
            match request {
                Request::Webhook(request, reply) => {
                    webhooks.push(request);
                    replies.push(reply);
                }
                Request::Attempt(record, reply) => {
                    attempts.push(record);
                    attempt_replies.push(reply);
                }
                Request::Command(call) => commands.push(call),
                Request::Close => {}
            }
        }
        let requests: Vec<&IngestRequest> = webhooks.iter().map(|r| r.as_ref()).collect();
        let records: Vec<&AttemptRecord> = attempts.iter().map(|r| r.as_ref()).collect();
        let routes = Arc::clone(&self.routes);
        let (commit, recorded, results) = match store_together(
            self.conn.as_mut(),
            &mut commands,
            &records,
            &requests,
            &routes,
        ) {
            Ok(results) => (
                Ok(()),
                records.iter().map(|_| Ok(())).collect(),
                results.into_iter().map(Ok).collect(),
            ),
            Err(e) if e.kind == DbErrorKind::Fatal => {
                // Dropping the callers answers every one 503.
                return Err(format!("the database can no longer be used: {e}"));
            }
            Err(e) if e.kind == DbErrorKind::Unknown => {
                // The commit may have happened: storing the batch again
                // could store it twice. Every request is answered 503,
                // which never claims what was not stored.
                tracing::error!(error = %e, requests = commands.len() + requests.len(), "the outcome of a commit is unknown; answering 503");
                let cause = e.to_string();
                (
                    Err(cause.clone()),
                    failed(&records, &cause),
                    failed(&requests, &cause),
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, requests = commands.len() + records.len() + requests.len(), "a batch failed as a whole; storing its requests apart");
                store_apart(
                    self.conn.as_mut(),
                    &mut commands,
                    &records,
                    &requests,
                    &routes,
                )
            }
        };
        let mut deliveries_due = false;
        for call in commands {
            deliveries_due |= call.answer(&commit);
        }
        for (reply, result) in attempt_replies.into_iter().zip(recorded) {
            // A head done with may have made the next delivery due.
            deliveries_due |= result.is_ok();
            let _ = reply.send(result);
        }
        for (reply, result) in replies.into_iter().zip(results) {
            deliveries_due |= result.as_ref().is_ok_and(|r| r.deliveries > 0);
            let _ = reply.send(result);
        }
        if deliveries_due {
            self.outbox
                .send_modify(|generation| *generation = generation.wrapping_add(1));
        }
        Ok(())
    }
}

/// Every request answered with the same failure.
fn failed<T, R>(requests: &[T], cause: &str) -> Vec<Result<R, StoreError>> {
    requests
        .iter()
        .map(|_| Err(unavailable(cause.to_owned())))
        .collect()
}

/// The fast path: every request in one transaction without savepoints
/// (the commands in turn, then the attempts together, then the webhooks
/// together), committed. Any error rolls the whole batch back, for
/// `store_apart` to redo.
fn store_together(
    conn: &mut dyn WriteConn,
    commands: &mut [Box<dyn Queued>],
    attempts: &[&AttemptRecord],
    webhooks: &[&IngestRequest],
    routes: &[SinkRoute],
) -> DbResult<Vec<IngestResult>> {
    conn.begin()?;
    let stored = (|| {
        for command in commands.iter_mut() {
            command.run(conn.as_conn(), routes)?;
        }
        if !attempts.is_empty() {
            outbox::record_attempts(conn.as_conn(), attempts)?;
        }
        if webhooks.is_empty() {
            Ok(Vec::new())
        } else {
            ingest::execute_batch(conn.as_conn(), webhooks, routes)
        }
    })();
    match stored.and_then(|results| conn.commit().map(|()| results)) {
        Ok(results) => Ok(results),
        Err(e) => {
            conn.rollback();
            Err(e)
        }
    }
}

/// The careful path: each command in a savepoint of its own, then the
/// attempts together and the webhooks together (one by one if a constraint
/// refuses them), so only the requests at fault fail; then one commit,
/// whose outcome every answer follows.
fn store_apart(
    conn: &mut dyn WriteConn,
    commands: &mut [Box<dyn Queued>],
    attempts: &[&AttemptRecord],
    webhooks: &[&IngestRequest],
    routes: &[SinkRoute],
) -> Apart {
    if let Err(e) = conn.begin() {
        tracing::error!(error = %e, "cannot begin a write transaction; answering 503");
        let cause = e.to_string();
        return (
            Err(cause.clone()),
            failed(attempts, &cause),
            failed(webhooks, &cause),
        );
    }
    for command in commands.iter_mut() {
        if let Err(failure) = in_savepoint(conn, |conn| command.run(conn, routes)) {
            command.fail(failure.into());
        }
    }
    let recorded = together_or_one_by_one(conn, attempts, |conn, records| {
        outbox::record_attempts(conn, records).map(|()| vec![(); records.len()])
    });
    let results = together_or_one_by_one(conn, webhooks, |conn, requests| {
        ingest::execute_batch(conn, requests, routes)
    });
    match conn.commit() {
        Ok(()) => (Ok(()), recorded, results),
        Err(e) => {
            conn.rollback();
            tracing::error!(error = %e, requests = commands.len() + attempts.len() + webhooks.len(), "commit failed; answering 503");
            let cause = e.to_string();
            (
                Err(cause.clone()),
                failed(attempts, &cause),
                failed(webhooks, &cause),
            )
        }
    }
}

/// What a batch's commit did, and the answers of its attempts and webhooks.
type Apart = (
    Result<(), String>,
    Vec<Result<(), StoreError>>,
    Vec<Result<IngestResult, StoreError>>,
);

/// Stores `items` together with `store` (one answer per item), or one by
/// one when a constraint refuses them together, so only those at fault
/// fail.
fn together_or_one_by_one<T, R>(
    conn: &mut dyn WriteConn,
    items: &[T],
    store: impl Fn(&dyn Conn, &[T]) -> DbResult<Vec<R>>,
) -> Vec<Result<R, StoreError>>
where
    T: Copy,
{
    if items.is_empty() {
        return Vec::new();
    }
    match in_savepoint(conn, |conn| store(conn, items)) {
        Ok(results) => results.into_iter().map(Ok).collect(),
        Err(Failure::Refused(e)) => {
            tracing::warn!(error = %e, "the schema refused a batch; storing its requests one by one");
            items
                .iter()
                .map(|item| {
                    in_savepoint(conn, |conn| {
                        store(conn, std::slice::from_ref(item))?
                            .pop()
                            .ok_or_else(|| DbError::unavailable("a batch of one answered nothing"))
                    })
                    .map_err(StoreError::from)
                })
                .collect()
        }
        Err(e) => {
            let e: StoreError = e.into();
            failed(items, &e.to_string())
        }
    }
}

/// Why a write did not complete.
enum Failure {
    /// A constraint refused the write: the request itself is at fault.
    Refused(DbError),
    /// The database could not take the write (locked, full, read-only...).
    Unavailable(DbError),
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

/// Runs `work` in a savepoint of the open transaction, rolled back alone
/// when it fails.
fn in_savepoint<T>(
    conn: &mut dyn WriteConn,
    work: impl FnOnce(&dyn Conn) -> DbResult<T>,
) -> Result<T, Failure> {
    // Some failures (an I/O error, a full disk) make SQLite roll the whole
    // transaction back. A savepoint begun then would be a transaction of its
    // own, committed on release: refuse instead, so nothing is stored that
    // the batch's answer (503) says was not.
    if !conn.in_transaction() {
        return Err(Failure::Unavailable(DbError::unavailable(
            "the batch's transaction was rolled back",
        )));
    }
    let conn = conn.as_conn();
    conn.execute("SAVEPOINT part", &[])
        .map_err(Failure::Unavailable)?;
    match work(conn) {
        Ok(done) => {
            conn.execute("RELEASE part", &[])
                .map_err(Failure::Unavailable)?;
            Ok(done)
        }
        Err(e) => {
            // Undone alone; the transaction goes on.
            let _ = conn.execute("ROLLBACK TO part", &[]);
            let _ = conn.execute("RELEASE part", &[]);
            Err(match e.kind {
                DbErrorKind::Refused => Failure::Refused(e),
                _ => Failure::Unavailable(e),
            })
        }
    }
}

fn unavailable(message: String) -> StoreError {
    StoreError::Unavailable(message)
}
