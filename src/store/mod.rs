//! Storage: the only place SQL lives.
//!
//! SQLite allows one writer at a time, so every write goes through one thread
//! (`writer`) that commits whatever requests are waiting as one transaction
//! (group commit) and answers each request only after that commit is on disk.
//! The writer drives its connection directly (rusqlite) so a batch's
//! statements run back to back on its thread; migrations and reads use sqlx,
//! reads through a pool of read-only connections, which WAL mode lets run
//! alongside the writer.

mod checkpoint;
mod commands;
mod confirm;
mod dashboard;
mod events;
mod ingest;
mod jobs;
mod models;
mod outbox;
mod plan;
mod prune;
mod queries;
mod reconcile;
mod sessions;
mod submissions;
mod tokens;
mod writer;

pub use confirm::{ConfirmSummary, PendingClaim, Settlement, SettlementKind};
pub use dashboard::{DeadFirstCursor, JobAttempt, JobSearch, JobSummary};
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

use crate::config::{DatabaseSettings, Synchronous};
use sqlx::{
    ConnectOptions, Connection,
    migrate::Migrator,
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
    },
};
use std::{path::Path, str::FromStr, sync::Arc};
use tokio::sync::watch;
use writer::WriterHandle;
pub use writer::{PANIC_AFTER_VAR, WriterState, WriterTask};

/// The migrations, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not take the write or the read (disk full,
    /// read-only file, locked too long, shutting down). Callers answer 503.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// A handle to the database: cheap to clone, shared by every request.
#[derive(Clone)]
pub struct Store {
    writer: WriterHandle,
    reads: SqlitePool,
    /// One read connection for `/metrics` alone.
    gauges: SqlitePool,
    outbox: watch::Receiver<u64>,
    /// The database file, to measure it with its write-ahead log.
    file: Arc<std::path::PathBuf>,
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
        let options = connect_options(settings)?;
        prepare_files(options.get_filename())?;
        migrate(&options).await?;
        let conn = open_writer(options.get_filename(), settings)?;
        let checkpointer = checkpoint::open(options.get_filename(), settings.busy_timeout)
            .map_err(|e| StoreError::Unavailable(format!("cannot open the database: {e}")))
            .and_then(|conn| {
                checkpoint::spawn(conn).map_err(|e| {
                    StoreError::Unavailable(format!("cannot start the checkpoint thread: {e}"))
                })
            })?;
        let reads = SqlitePoolOptions::new()
            .max_connections(settings.read_connections)
            .min_connections(1)
            .connect_with(options.clone().read_only(true))
            .await?;
        let gauges = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .connect_lazy_with(options.clone().read_only(true));
        let (outbox_tx, outbox) = watch::channel(0);
        let (writer, task) = writer::spawn(
            conn,
            checkpointer,
            settings.max_batch,
            Arc::new(routes),
            outbox_tx,
        )
        .map_err(|e| StoreError::Unavailable(format!("cannot start the writer thread: {e}")))?;
        Ok((
            Store {
                writer,
                reads,
                gauges,
                outbox,
                file: Arc::new(options.get_filename().to_path_buf()),
                commits: Arc::new(watch::channel(0).0),
            },
            task,
        ))
    }

    /// Applies the migrations and returns; used by `tunehook migrate`.
    pub async fn migrate_only(settings: &DatabaseSettings) -> Result<usize, StoreError> {
        let options = connect_options(settings)?;
        prepare_files(options.get_filename())?;
        migrate(&options).await?;
        Ok(MIGRATOR.iter().count())
    }

    /// Stores one webhook request and applies it to its job, durably.
    pub async fn ingest(&self, request: IngestRequest) -> Result<IngestResult, StoreError> {
        let result = self.writer.ingest(request).await?;
        self.committed();
        Ok(result)
    }

    /// Records a delivery attempt and what follows it.
    pub async fn record_attempt(&self, record: AttemptRecord) -> Result<(), StoreError> {
        self.writer.run(commands::RecordAttempt(record)).await
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
        Ok(sqlx::query_as(tokens::READ_BOTH)
            .fetch_one(&self.reads)
            .await?)
    }

    /// True when the database answers and every migration is applied.
    pub async fn ready(&self) -> bool {
        if *self.writer.state().borrow() != WriterState::Running {
            return false;
        }
        let applied: Result<i64, _> =
            sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success = 1")
                .fetch_one(&self.reads)
                .await;
        matches!(applied, Ok(n) if n as usize >= MIGRATOR.iter().count())
    }
}

/// Applies the migrations on a connection of their own. A migration that
/// changes a table's constraints rebuilds the table, which SQLite allows
/// only with foreign key enforcement off (it cannot be turned off inside
/// the transaction each migration runs in); every key is checked once they
/// are applied, and a broken one fails the start.
async fn migrate(options: &SqliteConnectOptions) -> Result<(), StoreError> {
    let mut conn = options.clone().foreign_keys(false).connect().await?;
    MIGRATOR.run(&mut conn).await?;
    let broken: Vec<(String,)> = sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_check")
        .fetch_all(&mut conn)
        .await?;
    conn.close().await?;
    match broken.first() {
        None => Ok(()),
        Some((table,)) => Err(StoreError::Unavailable(format!(
            "the database has rows in `{table}` whose references are broken"
        ))),
    }
}

fn connect_options(settings: &DatabaseSettings) -> Result<SqliteConnectOptions, StoreError> {
    let synchronous = match settings.synchronous {
        Synchronous::Full => SqliteSynchronous::Full,
        Synchronous::Normal => SqliteSynchronous::Normal,
    };
    Ok(SqliteConnectOptions::from_str(&settings.url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(synchronous)
        .foreign_keys(true)
        .busy_timeout(settings.busy_timeout)
        .disable_statement_logging())
}

/// The writer's connection, with the same settings as sqlx's.
fn open_writer(
    file: &Path,
    settings: &DatabaseSettings,
) -> Result<rusqlite::Connection, StoreError> {
    let open = || -> rusqlite::Result<rusqlite::Connection> {
        let conn = rusqlite::Connection::open(file)?;
        conn.busy_timeout(settings.busy_timeout)?;
        conn.pragma_update(None, "journal_mode", "wal")?;
        conn.pragma_update(
            None,
            "synchronous",
            match settings.synchronous {
                Synchronous::Full => "full",
                Synchronous::Normal => "normal",
            },
        )?;
        conn.pragma_update(None, "foreign_keys", true)?;
        // Savepoints' statement journals stay in memory, not in temp files.
        conn.pragma_update(None, "temp_store", "memory")?;
        conn.pragma_update(
            None,
            "wal_autocheckpoint",
            checkpoint::WRITER_CHECKPOINT_PAGES,
        )?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(conn)
    };
    open().map_err(|e| {
        StoreError::Unavailable(format!("cannot open {} for writing: {e}", file.display()))
    })
}

/// Creates the database's folder, when missing, readable by tunehook's user
/// alone (0700): it holds the tokens and every payload.
fn create_parent_dir(file: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.exists() => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))),
        _ => Ok(()),
    }
}

/// Creates the database file, when missing, as 0600 before SQLite opens it.
/// SQLite gives its write-ahead log and shared-memory files the database
/// file's mode, so they are 0600 too. A file that already exists keeps its
/// mode, with a warning when other users can read it.
fn create_private_file(file: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file);
    match created {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if let Ok(meta) = std::fs::metadata(file) {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    tracing::warn!(
                        file = %file.display(),
                        mode = %format!("{mode:04o}"),
                        "the database file (tokens and every payload) is open to other users; fix: chmod 600 {}",
                        file.display()
                    );
                }
            }
            Ok(())
        }
        Err(e) => Err(StoreError::Unavailable(format!(
            "cannot create {}: {e}",
            file.display()
        ))),
    }
}

/// The folder and file the database lives in, created private when missing.
fn prepare_files(file: &Path) -> Result<(), StoreError> {
    create_parent_dir(file)?;
    // `sqlite::memory:` and the like name no file to create.
    if file.as_os_str().is_empty() || file.as_os_str() == ":memory:" {
        return Ok(());
    }
    create_private_file(file)
}
