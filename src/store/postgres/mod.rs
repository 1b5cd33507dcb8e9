//! PostgreSQL, for teams that keep their state in the database they already
//! run and back up: opened by `postgres://` and `postgresql://` URLs (TLS
//! through the URL's `sslmode`, as libpq reads it).
//!
//! The same writer as SQLite's commits every write in batches, each batch
//! one transaction that first takes a transaction-level advisory lock
//! (`conn.rs`), so write transactions follow one another as they do on
//! SQLite; reads run on a pool of `database.max_connections`.

mod conn;

pub use conn::WRITE_LOCK;

use super::{Opened, StoreError, sql::Pool};
use crate::config::DatabaseSettings;
use sqlx::{
    ConnectOptions, Connection,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgConnection, PgPoolOptions},
};
use std::{str::FromStr, time::Duration};

/// PostgreSQL's migrations, embedded in the binary: a baseline equal to
/// SQLite's schema at its migration 13, then a pair for every change.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a read waits for a connection of the pool before it fails
/// (and the request answers 503).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects (waiting for a server that is not up yet, up to
/// `database.connect_timeout`), applies the migrations, and opens the
/// read pools; the writer connects on its own thread.
pub(super) async fn open(settings: &DatabaseSettings) -> Result<Opened, StoreError> {
    let options = connect_options(settings)?;
    let mut conn = connect(&options, settings.connect_timeout).await?;
    MIGRATOR.run(&mut conn).await?;
    conn.close().await?;
    let reads = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(0)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy_with(options.clone());
    let gauges = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy_with(options.clone());
    Ok(Opened {
        writer: Box::new(conn::PgWriter::new(
            options.options([("lock_timeout", lock_timeout(settings.busy_timeout))]),
        )),
        reads: Pool::Postgres(reads),
        gauges: Pool::Postgres(gauges),
        file: None,
        migrations: MIGRATOR.iter().count(),
    })
}

/// Applies the migrations and returns how many there are.
pub(super) async fn migrate_only(settings: &DatabaseSettings) -> Result<usize, StoreError> {
    let options = connect_options(settings)?;
    let mut conn = connect(&options, settings.connect_timeout).await?;
    MIGRATOR.run(&mut conn).await?;
    conn.close().await?;
    Ok(MIGRATOR.iter().count())
}

/// The database's size as PostgreSQL counts it.
pub(super) async fn database_bytes(pool: &Pool) -> Result<u64, StoreError> {
    let bytes: i64 = super::sql::query("SELECT pg_database_size(current_database())")
        .scalar(pool)
        .await?;
    Ok(bytes.max(0) as u64)
}

fn connect_options(settings: &DatabaseSettings) -> Result<PgConnectOptions, StoreError> {
    let options = PgConnectOptions::from_str(&settings.url).map_err(|e| {
        StoreError::Unavailable(format!(
            "database.url is not a PostgreSQL URL: {}",
            reason(&e)
        ))
    })?;
    Ok(options
        .application_name("tunehook")
        .disable_statement_logging())
}

/// `lock_timeout` in PostgreSQL's units (milliseconds).
fn lock_timeout(timeout: Duration) -> String {
    timeout.as_millis().max(1).to_string()
}

/// The first connection. A server that refuses connections or does not
/// answer may still be starting (containers start together): asked again
/// with a growing wait until `within` has passed, each failure logged. A
/// wrong password or a missing database will not mend by waiting: said at
/// once.
async fn connect(options: &PgConnectOptions, within: Duration) -> Result<PgConnection, StoreError> {
    let target = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or(options.get_username())
    );
    let deadline = tokio::time::Instant::now() + within;
    let mut wait = Duration::from_millis(250);
    let mut attempt = 1u32;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let tried = tokio::time::timeout(left.max(Duration::from_millis(100)), options.connect())
            .await
            .unwrap_or(Err(sqlx::Error::PoolTimedOut));
        let e = match tried {
            Ok(conn) => return Ok(conn),
            Err(e) => e,
        };
        if let Some(message) = refusal(&e, &target) {
            return Err(StoreError::Unavailable(message));
        }
        let reason = reason(&e);
        if tokio::time::Instant::now() + wait >= deadline {
            return Err(StoreError::Unavailable(format!(
                "cannot reach PostgreSQL at {target} within {}: {reason}",
                humantime::format_duration(within)
            )));
        }
        tracing::warn!(
            host = %target,
            attempt,
            reason = %reason,
            retry_in_ms = wait.as_millis() as u64,
            "cannot reach PostgreSQL yet; trying again"
        );
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
        attempt += 1;
    }
}

/// What the server said when it will not take us, as one line naming what
/// to fix; `None` when trying again may help.
fn refusal(e: &sqlx::Error, target: &str) -> Option<String> {
    let sqlx::Error::Database(db) = e else {
        return None;
    };
    let code = db.code()?;
    let fix = match code.as_ref() {
        "28P01" | "28000" => "check the user and password in database.url (TUNEHOOK_DATABASE_URL)",
        "3D000" => "create it (createdb, or CREATE DATABASE) or fix the name in database.url",
        "42501" => "grant the user CONNECT and CREATE on the database",
        _ => return None,
    };
    Some(format!(
        "PostgreSQL at {target} refused the connection: {}; {fix}",
        db.message()
    ))
}

/// A driver error as one line, without anything from the URL.
pub(super) fn reason(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_owned(),
        sqlx::Error::PoolTimedOut => "timed out".to_owned(),
        sqlx::Error::Configuration(cause) => cause.to_string(),
        other => other.to_string(),
    }
}
