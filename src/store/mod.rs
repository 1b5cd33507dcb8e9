//! Storage: the only place SQL lives.
//!
//! One [`Store`], two databases behind it: SQLite (`sqlite/`, the default)
//! and PostgreSQL (`postgres/`), chosen by `database.url`. Every write goes
//! through one thread (`writer`) that commits whatever requests are waiting
//! as one transaction (group commit) and answers each request only after
//! that commit is durable; the writes themselves (`ingest.rs`, `outbox.rs`,
//! `confirm.rs`, …) and the reads are written once, in SQL both databases
//! speak, over the connection and pools of `sql.rs`. What differs — how a
//! database is opened, how the writer's transaction takes the write lock,
//! how a statement reaches the server — lives in each backend's folder.

mod commands;
mod confirm;
mod dashboard;
mod events;
mod ingest;
mod jobs;
mod models;
mod outbox;
mod plan;
pub mod postgres;
mod prune;
mod queries;
mod reconcile;
mod sessions;
pub mod sql;
pub mod sqlite;
mod submissions;
mod tokens;
mod writer;

pub use confirm::{ConfirmSummary, PendingClaim, Settlement, SettlementKind};
pub use dashboard::{DeadFirstCursor, JobAttempt, JobSearch, JobSummary, drifts};
pub use events::FeedEvent;
pub use ingest::{IngestRequest, IngestResult, Outcome};
pub use models::{DriftRow, JobRow, JobsPage, ReceiptRow, TransitionRow, UpdateRow};
pub use outbox::{
    AttemptRecord, AttemptRow, DeliveryFilter, DeliveryRow, DueDelivery, NextStep, REPLAY_CHUNK,
    ReplayRequest, Replayed, SinkHealth, SinkRoute, TransitionDelivery,
};
pub use prune::{PRUNE_BYTES, PRUNE_ROWS, PruneCounts, PruneCutoffs, PruneReport, PruneStep};
pub use queries::{Gauges, JobFilter, RECEIPT_LIST_BODY_BYTES, ReceiptFilter};
pub use reconcile::{NOT_FOUND, ReconcileSummary, RemoteObservation, RemoteReport};
pub use sessions::NewSession;
pub use submissions::{Claim, Submission, SubmissionResult};
pub use tokens::{TokenKind, Tokens};

use crate::config::{DatabaseKind, DatabaseSettings};
use sql::{Pool, WriteConn, query};
use std::{path::PathBuf, sync::Arc};
use tokio::sync::watch;
use writer::WriterHandle;
pub use writer::{PANIC_AFTER_VAR, WriterState, WriterTask};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not take the write or the read (disk full,
    /// read-only file, locked too long, unreachable, shutting down).
    /// Callers answer 503.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Database(sqlx::Error),
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The SQLite file a command was to read is not there.
    #[error(
        "there is no database at {}: run this where `tunehook serve` runs (relative paths start from the current folder), or name the service's database with TUNEHOOK_DATABASE_URL=sqlite:///absolute/path/tunehook.db",
        .0.display()
    )]
    Missing(PathBuf),
}

impl From<sqlx::Error> for StoreError {
    /// A database that cannot be reached is unavailable (503), whichever
    /// the operation; anything else is the query's own failure.
    fn from(e: sqlx::Error) -> StoreError {
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
            sqlx::Error::Database(ref db)
                if db
                    .code()
                    .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")) =>
            {
                StoreError::Unavailable(db.message().to_owned())
            }
            e => StoreError::Database(e),
        }
    }
}

/// What a backend hands the store once its database is open.
pub(crate) struct Opened {
    writer: Box<dyn WriteConn>,
    reads: Pool,
    gauges: Pool,
    /// The database file, when it is one.
    file: Option<PathBuf>,
    /// How many migrations the backend has.
    migrations: usize,
}

/// A handle to the database: cheap to clone, shared by every request.
#[derive(Clone)]
pub struct Store {
    writer: WriterHandle,
    reads: Pool,
    /// One read connection for `/metrics` alone.
    gauges: Pool,
    outbox: watch::Receiver<u64>,
    /// The database file, to measure it with its write-ahead log (none on
    /// a server).
    file: Option<Arc<PathBuf>>,
    migrations: usize,
    /// Bumped after each write that may have committed events.
    commits: Arc<watch::Sender<u64>>,
}

impl Store {
    /// Opens (creating if needed) the database, applies the migrations and
    /// starts the writer thread. The writer ends on [`Store::close`] or once
    /// every `Store` clone is dropped, after committing what it holds;
    /// [`WriterTask::finished`] tells when the database is closed.
    pub async fn open(
        settings: &DatabaseSettings,
        routes: Vec<SinkRoute>,
    ) -> Result<(Store, WriterTask), StoreError> {
        let opened = match settings.kind() {
            DatabaseKind::Sqlite => sqlite::open(settings).await?,
            DatabaseKind::Postgres => postgres::open(settings).await?,
        };
        let (outbox_tx, outbox) = watch::channel(0);
        let (writer, task) = writer::spawn(
            opened.writer,
            settings.max_batch,
            Arc::new(routes),
            outbox_tx,
        )
        .map_err(|e| StoreError::Unavailable(format!("cannot start the writer thread: {e}")))?;
        Ok((
            Store {
                writer,
                reads: opened.reads,
                gauges: opened.gauges,
                outbox,
                file: opened.file.map(Arc::new),
                migrations: opened.migrations,
                commits: Arc::new(watch::channel(0).0),
            },
            task,
        ))
    }

    /// Opens a database that must exist already: what every command but
    /// `serve` and `migrate` reads. A SQLite file that is not there is an
    /// error naming the path looked at, not a new, empty database beside
    /// the real one.
    pub async fn open_existing(
        settings: &DatabaseSettings,
        routes: Vec<SinkRoute>,
    ) -> Result<(Store, WriterTask), StoreError> {
        if let Some(path) = sqlite::missing_file(settings) {
            return Err(StoreError::Missing(path));
        }
        Store::open(settings, routes).await
    }

    /// Applies the migrations and returns how many the database has; used
    /// by `tunehook migrate`.
    pub async fn migrate_only(settings: &DatabaseSettings) -> Result<usize, StoreError> {
        match settings.kind() {
            DatabaseKind::Sqlite => sqlite::migrate_only(settings).await,
            DatabaseKind::Postgres => postgres::migrate_only(settings).await,
        }
    }

    /// Where the database is, as a user looks for it: the absolute path of
    /// the file, or the server's URL with its password redacted.
    pub fn describe(settings: &DatabaseSettings) -> String {
        match settings.kind() {
            DatabaseKind::Sqlite => sqlite::absolute_file(settings)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| settings.redacted_url()),
            DatabaseKind::Postgres => settings.redacted_url(),
        }
    }

    /// The database's size: its file and write-ahead log, or what the
    /// server counts.
    pub async fn database_bytes(&self) -> Result<u64, StoreError> {
        match &self.file {
            Some(file) => sqlite::database_bytes(&self.reads, file).await,
            None => postgres::database_bytes(&self.reads).await,
        }
    }

    /// Stores one webhook request and applies it to its job, durably.
    pub async fn ingest(&self, request: IngestRequest) -> Result<IngestResult, StoreError> {
        let result = self.writer.ingest(request).await?;
        self.committed();
        Ok(result)
    }

    /// Records a delivery attempt and what follows it.
    pub async fn record_attempt(&self, record: AttemptRecord) -> Result<(), StoreError> {
        self.writer.record_attempt(record).await
    }

    /// Puts a dead or delivered delivery back to pending, due now. False
    /// when there is no such delivery or it is already pending.
    pub async fn retry_delivery(&self, id: i64) -> Result<bool, StoreError> {
        self.writer.run(commands::RetryDelivery(id)).await
    }

    /// Applies what Segmind's API reported about these jobs, under the same
    /// rules as webhooks (source `reconcile`), and remembers the ids its
    /// details did not know.
    pub async fn reconcile(&self, report: RemoteReport) -> Result<ReconcileSummary, StoreError> {
        let summary = self.writer.run(commands::Reconcile(report)).await?;
        self.committed();
        Ok(summary)
    }

    /// Settles claims waiting for Segmind's API, or schedules their next
    /// check.
    pub async fn settle_claims(
        &self,
        settlements: Vec<Settlement>,
    ) -> Result<ConfirmSummary, StoreError> {
        let summary = self.writer.run(commands::Settle(settlements)).await?;
        self.committed();
        Ok(summary)
    }

    /// Changes after each write of this process that may have committed
    /// events (writes by other processes are found by polling).
    pub fn event_commits(&self) -> watch::Receiver<u64> {
        self.commits.subscribe()
    }

    fn committed(&self) {
        self.commits
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    /// Records a job tunehook submitted to Segmind as `REQUESTED` (source
    /// `api`), and completes its `Idempotency-Key` in the same transaction.
    pub async fn record_submission(
        &self,
        submission: Submission,
    ) -> Result<SubmissionResult, StoreError> {
        let result = self.writer.run(commands::Submit(submission)).await?;
        self.committed();
        Ok(result)
    }

    /// Records the model's access (`public_model`) on a known job; `None`
    /// when there is no such job.
    pub async fn record_access(
        &self,
        finetune_id: &str,
        public: bool,
    ) -> Result<Option<usize>, StoreError> {
        let command = commands::RecordAccess {
            finetune_id: finetune_id.to_owned(),
            public,
        };
        let result = self.writer.run(command).await?;
        self.committed();
        Ok(result)
    }

    /// Claims an `Idempotency-Key` for a request whose checked body hashes
    /// to `request_sha256`.
    pub async fn claim_idempotency_key(
        &self,
        key: &str,
        request_sha256: &str,
    ) -> Result<Claim, StoreError> {
        let command = commands::ClaimKey {
            key: key.to_owned(),
            request_sha256: request_sha256.to_owned(),
        };
        self.writer.run(command).await
    }

    /// Gives up a claim whose request did not make a job.
    pub async fn release_idempotency_key(&self, key: &str) -> Result<(), StoreError> {
        self.writer.run(commands::ReleaseKey(key.to_owned())).await
    }

    /// Keeps the answer given to the request with this key.
    pub async fn store_idempotent_answer(
        &self,
        key: &str,
        response: &str,
    ) -> Result<(), StoreError> {
        let command = commands::StoreAnswer {
            key: key.to_owned(),
            response: response.to_owned(),
        };
        self.writer.run(command).await
    }

    /// Changes whenever a commit made deliveries due.
    pub fn outbox_changes(&self) -> watch::Receiver<u64> {
        self.outbox.clone()
    }

    /// The ingest and API tokens kept in the database, generating each one
    /// that is missing. Configured tokens are not stored: they win over these.
    pub async fn generated_tokens(&self) -> Result<Tokens, StoreError> {
        self.writer.run(commands::LoadTokens).await
    }

    /// Asks the writer to commit what is queued and close the database;
    /// later writes get 503. Wait on the [`WriterTask`] for the end.
    pub async fn close(&self) {
        self.writer.close().await;
    }

    /// Why the writer stopped, when it stopped for another reason than a
    /// close: then nothing can be stored any more.
    pub fn writer_failure(&self) -> Option<String> {
        match &*self.writer.state().borrow() {
            WriterState::Failed(cause) => Some(cause.clone()),
            _ => None,
        }
    }

    /// Resolves with the cause once the writer has stopped for another
    /// reason than a close; never resolves otherwise.
    pub fn writer_failed(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut state = self.writer.state();
        async move {
            let failed = state
                .wait_for(|s| matches!(s, WriterState::Failed(_)))
                .await
                .map(|s| s.clone());
            match failed {
                Ok(WriterState::Failed(cause)) => cause,
                _ => std::future::pending().await,
            }
        }
    }

    /// Replaces a generated token with a new random one, durably; answers
    /// the new token.
    pub async fn rotate_token(&self, kind: TokenKind) -> Result<String, StoreError> {
        self.writer.run(commands::RotateToken(kind)).await
    }

    /// The generated tokens as stored now (another process may have rotated
    /// one); `None` for a token not generated yet.
    pub async fn stored_tokens(&self) -> Result<(Option<String>, Option<String>), StoreError> {
        Ok(query(tokens::READ_BOTH).fetch_one(&self.reads).await?)
    }

    /// True when the database answers and every migration is applied.
    pub async fn ready(&self) -> bool {
        if *self.writer.state().borrow() != WriterState::Running {
            return false;
        }
        let applied: Result<i64, _> = query("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
            .scalar(&self.reads)
            .await;
        matches!(applied, Ok(n) if n as usize >= self.migrations)
    }
}
