//! The SQLite writer's connection: rusqlite, on the writer's thread, every
//! statement prepared once and cached.

use super::checkpoint::Checkpointer;
use crate::store::sql::{Arg, Conn, DbError, DbErrorKind, DbResult, Row, Value, WriteConn};
use rusqlite::{
    Connection, ErrorCode, params_from_iter,
    types::{ToSqlOutput, ValueRef},
};

impl rusqlite::ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Arg::Int(Some(v)) => ToSqlOutput::from(*v),
            Arg::Bool(Some(v)) => ToSqlOutput::from(*v),
            Arg::Text(Some(v)) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            Arg::Bytes(Some(v)) => ToSqlOutput::Borrowed(ValueRef::Blob(v)),
            Arg::Int(None) | Arg::Bool(None) | Arg::Text(None) | Arg::Bytes(None) => {
                ToSqlOutput::Borrowed(ValueRef::Null)
            }
        })
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> DbError {
        let kind = match &e {
            rusqlite::Error::SqliteFailure(failure, _) => {
                if failure.code == ErrorCode::ConstraintViolation {
                    DbErrorKind::Refused
                } else if matches!(
                    failure.code,
                    ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase
                ) || failure.extended_code == rusqlite::ffi::SQLITE_READONLY_DBMOVED
                {
                    // A file that is not (or no longer) a database, or that
                    // was moved or deleted under the connection: no write
                    // can succeed on it. A fresh start reopens the file.
                    DbErrorKind::Fatal
                } else {
                    DbErrorKind::Unavailable
                }
            }
            _ => DbErrorKind::Unavailable,
        };
        DbError {
            kind,
            message: e.to_string(),
        }
    }
}

impl Conn for Connection {
    fn execute(&self, sql: &str, args: &[Arg<'_>]) -> DbResult<u64> {
        let changed = self
            .prepare_cached(sql)?
            .execute(params_from_iter(args.iter()))?;
        Ok(changed as u64)
    }

    fn query(&self, sql: &str, args: &[Arg<'_>]) -> DbResult<Vec<Row>> {
        let mut statement = self.prepare_cached(sql)?;
        let columns = statement.column_count();
        let mut rows = statement.query(params_from_iter(args.iter()))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(match row.get_ref(i)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(v) => Value::Int(v),
                    ValueRef::Real(v) => Value::Text(v.to_string()),
                    ValueRef::Text(v) => Value::Text(String::from_utf8_lossy(v).into_owned()),
                    ValueRef::Blob(v) => Value::Bytes(v.to_vec()),
                });
            }
            out.push(Row(values));
        }
        Ok(out)
    }
}

/// The writer's connection and the thread that checkpoints its log.
pub(super) struct SqliteWriter {
    pub conn: Connection,
    pub checkpointer: Checkpointer,
}

impl Conn for SqliteWriter {
    fn execute(&self, sql: &str, args: &[Arg<'_>]) -> DbResult<u64> {
        Conn::execute(&self.conn, sql, args)
    }
    fn query(&self, sql: &str, args: &[Arg<'_>]) -> DbResult<Vec<Row>> {
        Conn::query(&self.conn, sql, args)
    }
}

impl WriteConn for SqliteWriter {
    fn as_conn(&self) -> &dyn Conn {
        &self.conn
    }

    /// Takes the write lock at once. A deferred transaction would read
    /// first and then fail at its first write, without waiting, whenever
    /// another process (`tunehook prune`, `tunehook tokens`) holds the
    /// lock; taking it up front waits up to `database.busy_timeout`.
    fn begin(&mut self) -> DbResult<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(())
    }

    fn commit(&mut self) -> DbResult<()> {
        self.conn.execute_batch("COMMIT")?;
        Ok(())
    }

    fn rollback(&mut self) {
        if !self.conn.is_autocommit() {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::warn!(error = %e, "rolling back failed");
            }
        }
    }

    fn in_transaction(&self) -> bool {
        !self.conn.is_autocommit()
    }

    /// Folds the log into the database file, so that the file alone holds
    /// it all once tunehook has stopped, and closes.
    fn close(self: Box<Self>) {
        let SqliteWriter { conn, checkpointer } = *self;
        checkpointer.stop();
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "the final checkpoint failed; the log is kept");
        }
        if let Err((_, e)) = conn.close() {
            tracing::warn!(error = %e, "closing the database failed");
        }
    }
}
