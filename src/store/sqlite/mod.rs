//! SQLite, the default: one file, opened by `sqlite://` URLs.
//!
//! One writer at a time is SQLite's own rule, so the writer thread holds the
//! only write connection (rusqlite, `conn.rs`) and takes the lock with
//! `BEGIN IMMEDIATE`; reads run on a pool of read-only connections, which
//! WAL mode lets run alongside it; a third connection checkpoints the log
//! on a thread of its own (`checkpoint.rs`).

mod checkpoint;
mod conn;

use super::{Opened, StoreError, sql::Pool};
use crate::config::{DatabaseSettings, Synchronous};
use sqlx::{
    ConnectOptions, Connection,
    migrate::Migrator,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use std::{path::Path, str::FromStr};

/// SQLite's migrations, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Opens (creating if needed) the database file, applies the migrations,
/// and opens the writer's connection and the read pools.
pub(super) async fn open(settings: &DatabaseSettings) -> Result<Opened, StoreError> {
    let options = connect_options(settings)?;
    let file = options.get_filename().to_path_buf();
    prepare_files(&file)?;
    migrate(&options).await?;
    let conn = open_writer(&file, settings)?;
    let checkpointer = checkpoint::open(&file, settings.busy_timeout)
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
    Ok(Opened {
        writer: Box::new(conn::SqliteWriter { conn, checkpointer }),
        reads: Pool::Sqlite(reads),
        gauges: Pool::Sqlite(gauges),
        file: Some(file),
        migrations: MIGRATOR.iter().count(),
    })
}

/// Applies the migrations and returns how many there are.
pub(super) async fn migrate_only(settings: &DatabaseSettings) -> Result<usize, StoreError> {
    let options = connect_options(settings)?;
    prepare_files(options.get_filename())?;
    migrate(&options).await?;
    Ok(MIGRATOR.iter().count())
}

/// The database file `settings` names, made absolute; `None` for an
/// in-memory database or a URL that cannot be read.
pub(super) fn absolute_file(settings: &DatabaseSettings) -> Option<std::path::PathBuf> {
    let options = SqliteConnectOptions::from_str(&settings.url).ok()?;
    let file = options.get_filename();
    if file.as_os_str().is_empty() || file.as_os_str() == ":memory:" {
        return None;
    }
    std::path::absolute(file).ok()
}

/// The file `settings` names, when it does not exist.
pub(super) fn missing_file(settings: &DatabaseSettings) -> Option<std::path::PathBuf> {
    if settings.kind() != crate::config::DatabaseKind::Sqlite {
        return None;
    }
    absolute_file(settings).filter(|file| !file.exists())
}

/// The database's size on disk: its pages, plus the write-ahead log.
pub(super) async fn database_bytes(pool: &Pool, file: &Path) -> Result<u64, StoreError> {
    let pages: i64 = super::sql::query(
        "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
    )
    .scalar(pool)
    .await?;
    let mut wal = file.as_os_str().to_owned();
    wal.push("-wal");
    let wal = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    Ok(pages.max(0) as u64 + wal)
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
