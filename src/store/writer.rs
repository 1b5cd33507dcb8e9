//! The single writer, with group commit.
//!
//! Requests queue on a channel. The writer takes every request waiting (up
//! to `max_batch`), runs each in its own savepoint inside one transaction,
//! commits once, and only then answers each request. One fsync covers the
//! whole batch, so throughput grows with load while every answer still
//! means "on disk". A request that fails rolls back only its savepoint.

use super::{
    StoreError,
    ingest::{self, IngestRequest, IngestResult},
    jobs::ApplyError,
    tokens::{self, Tokens},
};
use sqlx::{Acquire, Connection, SqliteConnection, Transaction, sqlite::Sqlite};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

/// How many times a request is re-planned after the schema refused a step.
const CONFLICT_RETRIES: usize = 3;

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
        commit_batch(&mut conn, &mut batch).await;
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
                let _ = reply.send(Err(StoreError::Unavailable(e.to_string())));
            }
            return;
        }
    };
    let mut replies = Vec::with_capacity(batch.len());
    for (step, reply) in batch.drain(..) {
        let result = in_savepoint(&mut tx, &step).await;
        replies.push((reply, result));
    }
    let committed = tx.commit().await;
    if let Err(e) = &committed {
        tracing::error!(error = %e, requests = replies.len(), "commit failed; answering 503");
    }
    for (reply, result) in replies {
        let result = match &committed {
            Ok(()) => result,
            Err(e) => Err(StoreError::Unavailable(e.to_string())),
        };
        // A caller that went away (its client disconnected) no longer needs
        // the answer; what it asked for is committed regardless.
        let _ = reply.send(result);
    }
}

/// Runs one step in a savepoint: re-planned when the schema reports a
/// conflict, rolled back alone when it fails.
async fn in_savepoint(tx: &mut Transaction<'_, Sqlite>, step: &Step) -> Result<Output, StoreError> {
    for _ in 0..CONFLICT_RETRIES {
        let mut savepoint = Acquire::begin(&mut **tx).await.map_err(unavailable)?;
        let result = match step {
            Step::Ingest(request) => ingest::execute(&mut savepoint, request)
                .await
                .map(Output::Ingest),
            Step::Tokens => tokens::load_or_generate(&mut savepoint)
                .await
                .map(Output::Tokens)
                .map_err(ApplyError::from),
        };
        match result {
            Ok(output) => {
                savepoint.commit().await.map_err(unavailable)?;
                return Ok(output);
            }
            Err(ApplyError::Conflict) => savepoint.rollback().await.map_err(unavailable)?,
            Err(ApplyError::Database(e)) => {
                tracing::error!(error = %e, "a write failed; its request gets 503");
                let _ = savepoint.rollback().await;
                return Err(unavailable(e));
            }
        }
    }
    Err(StoreError::Unavailable("the write kept conflicting".into()))
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}
