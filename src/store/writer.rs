//! The single writer, with group commit.
//!
//! Requests queue on a channel. The writer takes every request waiting (up
//! to `max_batch`), stores them all in one transaction with a few multi-row
//! statements, commits once, and only then answers each request. One fsync
//! covers the whole batch, so throughput grows with load while every answer
//! still means "on disk". When a constraint refuses the batch, its requests
//! are stored one by one, each in its own savepoint, so only the one at
//! fault is refused.

use super::{
    StoreError,
    ingest::{self, IngestRequest, IngestResult},
    tokens::{self, Tokens},
};
use sqlx::{Acquire, Connection, SqliteConnection, Transaction, sqlite::Sqlite};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

/// Requests waiting for the writer beyond this make callers wait to queue.
const QUEUE_DEPTH: usize = 8192;

/// One unit of work; each runs in its own savepoint.
enum Step {
    Ingest(Box<IngestRequest>),
    Tokens,
}

enum Output {
    Ingest(IngestResult),
    Tokens(Tokens),
}

type ReplyTo = oneshot::Sender<Result<Output, StoreError>>;

#[derive(Clone)]
pub(super) struct WriterHandle {
    tx: mpsc::Sender<(Step, ReplyTo)>,
}

impl WriterHandle {
    pub async fn ingest(&self, request: IngestRequest) -> Result<IngestResult, StoreError> {
        match self.call(Step::Ingest(Box::new(request))).await? {
            Output::Ingest(result) => Ok(result),
            Output::Tokens(_) => Err(mismatch()),
        }
    }

    pub async fn tokens(&self) -> Result<Tokens, StoreError> {
        match self.call(Step::Tokens).await? {
            Output::Tokens(tokens) => Ok(tokens),
            Output::Ingest(_) => Err(mismatch()),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    async fn call(&self, step: Step) -> Result<Output, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((step, reply)).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable("the database writer has stopped".into())
}

fn mismatch() -> StoreError {
    StoreError::Unavailable("the database writer answered another request".into())
}

pub(super) fn spawn(conn: SqliteConnection, max_batch: usize) -> (WriterHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    let task = tokio::spawn(run(conn, rx, max_batch));
    (WriterHandle { tx }, task)
}

async fn run(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<(Step, ReplyTo)>,
    max_batch: usize,
) {
    let mut batch = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut batch, max_batch).await > 0 {
        let started = std::time::Instant::now();
        let size = batch.len();
        commit_batch(&mut conn, &mut batch).await;
        tracing::debug!(
            size,
            elapsed_us = started.elapsed().as_micros() as u64,
            "batch committed"
        );
    }
    if let Err(e) = conn.close().await {
        tracing::warn!(error = %e, "closing the database failed");
    }
}

/// Runs every step of `batch` in one transaction and answers them all once
/// it is committed (or all with 503 when it cannot be).
async fn commit_batch(conn: &mut SqliteConnection, batch: &mut Vec<(Step, ReplyTo)>) {
    let mut tx = match Connection::begin(conn).await {
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
    let mut replies: Vec<(ReplyTo, Result<Output, StoreError>)> = Vec::with_capacity(batch.len());
    for (step, reply) in batch.drain(..) {
        match step {
            Step::Ingest(request) => ingests.push((request, reply)),
            Step::Tokens => {
                let result = match in_savepoint(&mut tx, Work::Tokens).await {
                    Ok(Done::Tokens(tokens)) => Ok(Output::Tokens(tokens)),
                    Ok(Done::Ingest(_)) => Err(mismatch()),
                    Err(e) => Err(e.into()),
                };
                replies.push((reply, result));
            }
        }
    }
    let requests: Vec<&IngestRequest> = ingests.iter().map(|(r, _)| r.as_ref()).collect();
    let results = match in_savepoint(&mut tx, Work::Ingest(&requests)).await {
        Ok(Done::Ingest(results)) => results.into_iter().map(|r| Ok(Output::Ingest(r))).collect(),
        Ok(Done::Tokens(_)) => requests.iter().map(|_| Err(mismatch())).collect(),
        // The schema refused part of the batch: store each request on its
        // own, so only the one at fault is refused.
        Err(Failure::Refused(e)) => {
            tracing::warn!(error = %e, "the schema refused a batch; storing its requests one by one");
            let mut results = Vec::with_capacity(requests.len());
            for request in &requests {
                let one = [*request];
                let result = in_savepoint(&mut tx, Work::Ingest(&one)).await;
                results.push(match result {
                    Ok(Done::Ingest(mut stored)) if stored.len() == 1 => {
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
                .collect::<Vec<_>>()
        }
    };
    replies.extend(ingests.into_iter().map(|(_, reply)| reply).zip(results));

    let committed = tx.commit().await;
    if let Err(e) = &committed {
        tracing::error!(error = %e, requests = replies.len(), "commit failed; answering 503");
    }
    for (reply, result) in replies {
        let result = match &committed {
            Ok(()) => result,
            Err(e) => Err(unavailable(e.to_string())),
        };
        // A caller that went away (its client disconnected) no longer needs
        // the answer; what it asked for is committed regardless.
        let _ = reply.send(result);
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
    Ingest(&'a [&'a IngestRequest]),
    Tokens,
}

enum Done {
    Ingest(Vec<IngestResult>),
    Tokens(Tokens),
}

/// Runs `work` in a savepoint of `tx`, rolled back alone when it fails.
async fn in_savepoint(tx: &mut Transaction<'_, Sqlite>, work: Work<'_>) -> Result<Done, Failure> {
    let mut savepoint = Acquire::begin(&mut **tx)
        .await
        .map_err(Failure::Unavailable)?;
    let result = match work {
        Work::Ingest(requests) => ingest::execute_batch(&mut savepoint, requests)
            .await
            .map(Done::Ingest),
        Work::Tokens => tokens::load_or_generate(&mut savepoint)
            .await
            .map(Done::Tokens),
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

fn unavailable(message: String) -> StoreError {
    StoreError::Unavailable(message)
}
