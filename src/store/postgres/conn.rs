//! The PostgreSQL writer's connection. The writer is a thread of its own
//! (as with SQLite) running the same batches; here each statement is sent
//! on a connection driven by a small runtime that lives on that thread, so
//! the writes above stay the same code on both databases.
//!
//! A connection that breaks (the server restarted, the network dropped,
//! `pg_terminate_backend`) fails the batch it was in, whose requests get
//! 503, and is opened again at the next batch: the service recovers by
//! itself once the server is back.

use crate::store::sql::{
    Arg, Conn, DbError, DbErrorKind, DbResult, ROWS, Row, Value, WriteConn, numbered, pg_args,
    pg_array_args, unnest_table,
};
use sqlx::{
    Column, ConnectOptions, Connection, Row as _, TypeInfo,
    postgres::{PgConnectOptions, PgConnection, PgRow},
};
use std::{cell::RefCell, time::Duration};

/// The key of the transaction-level advisory lock every write transaction
/// takes first ("tunehook" in ASCII): one writer at a time per database, as
/// with SQLite, so that a command run beside the service (`tunehook
/// prune`, `tokens --rotate`) takes turns with it.
pub const WRITE_LOCK: i64 = 0x7475_6e65_686f_6f6b;

/// Begins a write transaction and takes [`WRITE_LOCK`].
const BEGIN: &str = "BEGIN; SELECT pg_advisory_xact_lock(8391734862497673067)";

/// How long opening the writer's connection again may take before the
/// batch waiting for it is answered 503.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct PgWriter {
    options: PgConnectOptions,
    /// Built on the writer's thread at its first batch.
    runtime: Option<tokio::runtime::Runtime>,
    conn: RefCell<Option<PgConnection>>,
    open: bool,
}

impl PgWriter {
    pub fn new(options: PgConnectOptions) -> PgWriter {
        PgWriter {
            options,
            runtime: None,
            conn: RefCell::new(None),
            open: false,
        }
    }

    fn connect(&mut self) -> DbResult<()> {
        if self.runtime.is_none() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| DbError::unavailable(format!("cannot start a runtime: {e}")))?;
            self.runtime = Some(runtime);
        }
        if self.conn.borrow().is_some() {
            return Ok(());
        }
        let runtime = self.runtime.as_ref().expect("built above");
        let options = self.options.clone();
        let conn = runtime
            .block_on(async {
                tokio::time::timeout(RECONNECT_TIMEOUT, options.connect())
                    .await
                    .unwrap_or(Err(sqlx::Error::PoolTimedOut))
            })
            .map_err(|e| {
                DbError::unavailable(format!(
                    "cannot connect to PostgreSQL: {}",
                    super::reason(&e)
                ))
            })?;
        tracing::info!("the database writer is connected to PostgreSQL");
        *self.conn.borrow_mut() = Some(conn);
        Ok(())
    }

    /// Runs `work` on the connection, dropping it when it broke.
    fn on_conn<T>(
        &self,
        work: impl for<'c> FnOnce(
            &'c mut PgConnection,
        )
            -> futures_util::future::BoxFuture<'c, Result<T, sqlx::Error>>,
    ) -> DbResult<T> {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| DbError::unavailable("not connected to PostgreSQL"))?;
        let mut slot = self.conn.borrow_mut();
        let conn = slot
            .as_mut()
            .ok_or_else(|| DbError::unavailable("not connected to PostgreSQL"))?;
        match runtime.block_on(work(conn)) {
            Ok(done) => Ok(done),
            Err(e) => {
                if broken(&e) {
                    tracing::warn!(error = %super::reason(&e), "the connection to PostgreSQL broke; it is opened again at the next write");
                    *slot = None;
                }
                Err(error(e))
            }
        }
    }

    /// Runs a query; answers every row.
    fn fetch(&self, sql: String, args: sqlx::postgres::PgArguments) -> DbResult<Vec<Row>> {
        self.on_conn(|conn| {
            Box::pin(async move {
                let rows = sqlx::query_with(&sql, args).fetch_all(conn).await?;
                rows.iter()
                    .map(|row| {
                        (0..row.columns().len())
                            .map(|i| value(row, i))
                            .collect::<Result<Vec<_>, _>>()
                            .map(Row)
                    })
                    .collect()
            })
        })
    }
}

/// Whether the connection can no longer be used.
fn broken(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // Connection exceptions, and the server shutting down or
            // terminating this backend.
            code.starts_with("08") || code.starts_with("57P")
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

pub(super) fn error(e: sqlx::Error) -> DbError {
    let kind = match &e {
        sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("23")) => {
            DbErrorKind::Refused
        }
        _ => DbErrorKind::Unavailable,
    };
    DbError {
        kind,
        message: super::reason(&e),
    }
}

fn value(row: &PgRow, index: usize) -> Result<Value, sqlx::Error> {
    let column = &row.columns()[index];
    Ok(match column.type_info().name() {
        "INT8" => row.try_get::<Option<i64>, _>(index)?.map(Value::Int),
        "INT4" => row
            .try_get::<Option<i32>, _>(index)?
            .map(|v| Value::Int(v.into())),
        "INT2" => row
            .try_get::<Option<i16>, _>(index)?
            .map(|v| Value::Int(v.into())),
        "BOOL" => row.try_get::<Option<bool>, _>(index)?.map(Value::Bool),
        "BYTEA" => row.try_get::<Option<Vec<u8>>, _>(index)?.map(Value::Bytes),
        "VOID" => None,
        _ => row.try_get::<Option<String>, _>(index)?.map(Value::Text),
    }
    .unwrap_or(Value::Null))
}

impl Conn for PgWriter {
    fn execute(&self, sql: &str, args: &[Arg<'_>]) -> DbResult<u64> {
        let sql = numbered(sql);
        let args = pg_args(args).map_err(error)?;
        self.on_conn(|conn| {
            Box::pin(async move {
                Ok(sqlx::query_with(&sql, args)
                    .execute(conn)
                    .await?
                    .rows_affected())
            })
        })
    }

    fn query(&self, sql: &str, args: &[Arg<'_>]) -> DbResult<Vec<Row>> {
        let sql = numbered(sql);
        let args = pg_args(args).map_err(error)?;
        self.fetch(sql, args)
    }

    /// One statement for every row: the rows go as one array per column.
    fn execute_rows(&self, sql: &str, args: &[Arg<'_>], rows: &[Vec<Arg<'_>>]) -> DbResult<u64> {
        let Some(width) = rows.first().map(Vec::len) else {
            return Ok(0);
        };
        let sql = numbered(&sql.replace(ROWS, &unnest_table(args.len(), width)));
        let args = pg_array_args(args, rows).map_err(error)?;
        self.on_conn(|conn| {
            Box::pin(async move {
                Ok(sqlx::query_with(&sql, args)
                    .execute(conn)
                    .await?
                    .rows_affected())
            })
        })
    }

    fn query_rows(&self, sql: &str, args: &[Arg<'_>], rows: &[Vec<Arg<'_>>]) -> DbResult<Vec<Row>> {
        let Some(width) = rows.first().map(Vec::len) else {
            return Ok(Vec::new());
        };
        let sql = numbered(&sql.replace(ROWS, &unnest_table(args.len(), width)));
        let args = pg_array_args(args, rows).map_err(error)?;
        self.fetch(sql, args)
    }
}

impl WriteConn for PgWriter {
    fn as_conn(&self) -> &dyn Conn {
        self
    }

    fn begin(&mut self) -> DbResult<()> {
        self.connect()?;
        // Both in one round trip; a lock that fails leaves the transaction
        // open (and aborted) for the rollback below.
        let begun = self.on_conn(|conn| {
            Box::pin(async move {
                // Text without arguments goes as a simple query, which
                // may hold two statements.
                sqlx::Executor::execute(conn, BEGIN).await.map(drop)
            })
        });
        self.open = true;
        if let Err(e) = begun {
            self.rollback();
            return Err(e);
        }
        Ok(())
    }

    fn commit(&mut self) -> DbResult<()> {
        let committed = self.execute("COMMIT", &[]);
        self.open = false;
        match committed {
            Ok(_) => Ok(()),
            // Asked, and no answer: the server may have committed.
            Err(e) if self.conn.borrow().is_none() => Err(DbError {
                kind: DbErrorKind::Unknown,
                message: e.message,
            }),
            Err(e) => Err(e),
        }
    }

    fn rollback(&mut self) {
        if self.open {
            if let Err(e) = self.execute("ROLLBACK", &[]) {
                tracing::debug!(error = %e, "rolling back failed");
            }
        }
        self.open = false;
    }

    fn in_transaction(&self) -> bool {
        self.open
    }

    fn close(mut self: Box<Self>) {
        let conn = self.conn.get_mut().take();
        if let (Some(runtime), Some(conn)) = (self.runtime.take(), conn) {
            if let Err(e) = runtime.block_on(conn.close()) {
                tracing::debug!(error = %e, "closing the writer's connection failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_transaction_takes_the_write_lock() {
        assert!(super::BEGIN.ends_with(&format!("({})", super::WRITE_LOCK)));
    }
}
