//! Checkpoints in the background.
//!
//! In WAL mode every commit appends pages to the log, and a checkpoint
//! copies them back into the database file and syncs it. Left to SQLite,
//! that happens inside whichever commit crosses the threshold, so one batch
//! of webhooks in a few dozen waits for it. Here a thread with a connection
//! of its own runs passive checkpoints (which never block the writer) a few
//! times a second; the writer only checkpoints itself if this one falls far
//! behind (see `WRITER_CHECKPOINT_PAGES`).

use rusqlite::Connection;
use std::{
    path::Path,
    sync::mpsc::{self, RecvTimeoutError, Sender},
    thread::JoinHandle,
    time::Duration,
};

/// How often the log is checkpointed.
const EVERY: Duration = Duration::from_millis(200);

/// The writer's own threshold, in pages: a safety net well above what the
/// background thread lets the log reach.
pub(super) const WRITER_CHECKPOINT_PAGES: u32 = 16_384;

/// The running checkpoint thread.
pub(super) struct Checkpointer {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

impl Checkpointer {
    /// Stops the thread and waits until its connection is closed.
    pub fn stop(self) {
        drop(self.stop);
        if self.thread.join().is_err() {
            tracing::warn!("the checkpoint thread panicked");
        }
    }
}

/// Starts the thread.
pub(super) fn spawn(conn: Connection) -> std::io::Result<Checkpointer> {
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("tunehook-checkpoint".into())
        .spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(EVERY) {
                let result: rusqlite::Result<(i64, i64, i64)> =
                    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                    });
                if let Err(e) = result {
                    tracing::debug!(error = %e, "background checkpoint failed; the next one retries");
                }
            }
            if let Err((_, e)) = conn.close() {
                tracing::debug!(error = %e, "closing the checkpoint connection failed");
            }
        })?;
    Ok(Checkpointer { stop, thread })
}

/// The checkpointer's connection to `file`.
pub(super) fn open(file: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    let conn = Connection::open(file)?;
    conn.busy_timeout(busy_timeout)?;
    Ok(conn)
}
