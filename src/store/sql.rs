//! What the store's SQL runs on, whichever the database: values bound to
//! statements ([`Arg`]), rows read back ([`Row`]), the writer's connection
//! ([`Conn`]), the read pools ([`Pool`]) with a query builder ([`Query`]),
//! and one error type ([`DbError`]).
//!
//! SQL is written once, in the dialect both databases speak, with SQLite's
//! `?` / `?N` placeholders; [`numbered`] turns them into PostgreSQL's `$N`.
//! Each backend (`sqlite/`, `postgres/`) implements [`Conn`] for its writer
//! and opens its [`Pool`]; the writes (`ingest.rs`, `outbox.rs`, …) and the
//! reads (`queries.rs`, `dashboard.rs`, …) above them never name either.

use sqlx::{
    Arguments, FromRow,
    postgres::{PgArguments, PgPool, PgRow},
    sqlite::{SqliteArguments, SqlitePool, SqliteRow},
};
use std::borrow::Cow;

/// A value bound to a statement. `None` is a NULL of the variant's type:
/// PostgreSQL needs the type of every parameter, NULL included.
#[derive(Debug, Clone)]
pub enum Arg<'a> {
    Int(Option<i64>),
    Text(Option<Cow<'a, str>>),
    Bool(Option<bool>),
    Bytes(Option<Cow<'a, [u8]>>),
}

/// A Rust value that can be bound: `args![a, b]` borrows each.
pub trait ToArg {
    fn to_arg(&self) -> Arg<'_>;
    /// A NULL of this type.
    fn null() -> Arg<'static>;
}

macro_rules! int_arg {
    ($($t:ty),*) => {$(
        impl ToArg for $t {
            fn to_arg(&self) -> Arg<'_> {
                Arg::Int(Some(i64::try_from(*self).unwrap_or(i64::MAX)))
            }
            fn null() -> Arg<'static> {
                Arg::Int(None)
            }
        }
    )*};
}
int_arg!(i64, i32, u8, u32, u64, usize);

impl ToArg for bool {
    fn to_arg(&self) -> Arg<'_> {
        Arg::Bool(Some(*self))
    }
    fn null() -> Arg<'static> {
        Arg::Bool(None)
    }
}

impl ToArg for str {
    fn to_arg(&self) -> Arg<'_> {
        Arg::Text(Some(Cow::Borrowed(self)))
    }
    fn null() -> Arg<'static> {
        Arg::Text(None)
    }
}

impl ToArg for String {
    fn to_arg(&self) -> Arg<'_> {
        Arg::Text(Some(Cow::Borrowed(self)))
    }
    fn null() -> Arg<'static> {
        Arg::Text(None)
    }
}

impl ToArg for [u8] {
    fn to_arg(&self) -> Arg<'_> {
        Arg::Bytes(Some(Cow::Borrowed(self)))
    }
    fn null() -> Arg<'static> {
        Arg::Bytes(None)
    }
}

impl ToArg for Vec<u8> {
    fn to_arg(&self) -> Arg<'_> {
        Arg::Bytes(Some(Cow::Borrowed(self)))
    }
    fn null() -> Arg<'static> {
        Arg::Bytes(None)
    }
}

impl<T: ToArg> ToArg for Option<T> {
    fn to_arg(&self) -> Arg<'_> {
        match self {
            Some(value) => value.to_arg(),
            None => T::null(),
        }
    }
    fn null() -> Arg<'static> {
        T::null()
    }
}

impl<T: ToArg + ?Sized> ToArg for &T {
    fn to_arg(&self) -> Arg<'_> {
        (**self).to_arg()
    }
    fn null() -> Arg<'static> {
        T::null()
    }
}

impl<'a> Arg<'a> {
    /// The same value, owning what it borrowed.
    pub fn into_owned(self) -> Arg<'static> {
        match self {
            Arg::Int(v) => Arg::Int(v),
            Arg::Bool(v) => Arg::Bool(v),
            Arg::Text(v) => Arg::Text(v.map(|t| Cow::Owned(t.into_owned()))),
            Arg::Bytes(v) => Arg::Bytes(v.map(|b| Cow::Owned(b.into_owned()))),
        }
    }
}

/// The values bound to one statement, each borrowed: `args![a, b.c]`.
macro_rules! args {
    ($($arg:expr),* $(,)?) => {
        &[$($crate::store::sql::ToArg::to_arg(&$arg)),*]
    };
}
pub(crate) use args;

/// A value read from a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Bool(bool),
    Bytes(Vec<u8>),
}

/// A row the writer read, its values in column order.
#[derive(Debug, Clone)]
pub struct Row(pub Vec<Value>);

impl Row {
    /// The value of column `index` as `T`.
    pub fn get<T: FromValue>(&self, index: usize) -> DbResult<T> {
        let value = self.0.get(index).unwrap_or(&Value::Null);
        T::from_value(value).ok_or_else(|| {
            DbError::unavailable(format!(
                "column {index} holds {value:?}, not a {}",
                std::any::type_name::<T>()
            ))
        })
    }
}

/// A Rust type a [`Value`] can be read as.
pub trait FromValue: Sized {
    fn from_value(value: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    fn from_value(value: &Value) -> Option<i64> {
        match value {
            Value::Int(v) => Some(*v),
            Value::Bool(v) => Some(i64::from(*v)),
            _ => None,
        }
    }
}

impl FromValue for bool {
    fn from_value(value: &Value) -> Option<bool> {
        match value {
            Value::Bool(v) => Some(*v),
            Value::Int(v) => Some(*v != 0),
            _ => None,
        }
    }
}

impl FromValue for String {
    fn from_value(value: &Value) -> Option<String> {
        match value {
            Value::Text(v) => Some(v.clone()),
            _ => None,
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(value: &Value) -> Option<Vec<u8>> {
        match value {
            Value::Bytes(v) => Some(v.clone()),
            Value::Text(v) => Some(v.clone().into_bytes()),
            _ => None,
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Option<Option<T>> {
        match value {
            Value::Null => Some(None),
            value => T::from_value(value).map(Some),
        }
    }
}

/// Why a statement failed, sorted by what the writer does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbErrorKind {
    /// A constraint refused the write: the request itself is at fault.
    Refused,
    /// The database could not take it now (locked, full, unreachable…).
    Unavailable,
    /// No write can succeed on this connection again (a file that is no
    /// longer a database, or was moved away).
    Fatal,
    /// The connection broke while a commit was asked for: the transaction
    /// may or may not have committed, so it must not be run again.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct DbError {
    pub kind: DbErrorKind,
    pub message: String,
}

pub type DbResult<T> = Result<T, DbError>;

impl DbError {
    pub fn unavailable(message: impl Into<String>) -> DbError {
        DbError {
            kind: DbErrorKind::Unavailable,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DbError {}

/// The writer's connection: every write runs its statements through this,
/// inside the transaction the writer opened.
pub trait Conn {
    /// Runs one statement; answers the rows it changed.
    fn execute(&self, sql: &str, args: &[Arg<'_>]) -> DbResult<u64>;
    /// Runs one query; answers every row.
    fn query(&self, sql: &str, args: &[Arg<'_>]) -> DbResult<Vec<Row>>;

    /// The first row, if any.
    fn query_opt(&self, sql: &str, args: &[Arg<'_>]) -> DbResult<Option<Row>> {
        Ok(self.query(sql, args)?.into_iter().next())
    }

    /// The first row; an error when there is none.
    fn query_one(&self, sql: &str, args: &[Arg<'_>]) -> DbResult<Row> {
        self.query_opt(sql, args)?
            .ok_or_else(|| DbError::unavailable("the query returned no row"))
    }

    /// Runs a statement over many rows at once: [`ROWS`] in `sql` stands
    /// for them as a table `v` (see [`ROWS`]); answers the rows changed.
    /// By default the statement runs once per row, which costs SQLite
    /// nothing; a database a round trip away sends them all in one.
    fn execute_rows(&self, sql: &str, args: &[Arg<'_>], rows: &[Vec<Arg<'_>>]) -> DbResult<u64> {
        let Some(width) = rows.first().map(Vec::len) else {
            return Ok(0);
        };
        let sql = sql.replace(ROWS, &values_table(args.len(), width));
        let mut changed = 0;
        for row in rows {
            changed += self.execute(&sql, &[args, row].concat())?;
        }
        Ok(changed)
    }

    /// Runs a query over many rows at once, as [`Conn::execute_rows`]
    /// does; answers every row of every run, in the order of `rows`.
    fn query_rows(&self, sql: &str, args: &[Arg<'_>], rows: &[Vec<Arg<'_>>]) -> DbResult<Vec<Row>> {
        let Some(width) = rows.first().map(Vec::len) else {
            return Ok(Vec::new());
        };
        let sql = sql.replace(ROWS, &values_table(args.len(), width));
        let mut out = Vec::new();
        for row in rows {
            out.extend(self.query(&sql, &[args, row].concat())?);
        }
        Ok(out)
    }
}

/// Where a statement run by [`Conn::execute_rows`] or [`Conn::query_rows`]
/// reads its rows: a table `v` whose columns are named `column1`,
/// `column2`, … (the names both databases give a `VALUES` list's columns),
/// bound after the statement's own arguments.
pub const ROWS: &str = "{rows}";

/// [`ROWS`] as one row of placeholders, numbered after `before` arguments.
fn values_table(before: usize, width: usize) -> String {
    let placeholders: Vec<String> = (1..=width).map(|i| format!("?{}", before + i)).collect();
    format!("(VALUES ({})) AS v", placeholders.join(", "))
}

/// [`ROWS`] as arrays unnested side by side, one per column, numbered after
/// `before` arguments (PostgreSQL).
pub fn unnest_table(before: usize, width: usize) -> String {
    let placeholders: Vec<String> = (1..=width).map(|i| format!("?{}", before + i)).collect();
    let columns: Vec<String> = (1..=width).map(|i| format!("column{i}")).collect();
    format!(
        "UNNEST({}) AS v({})",
        placeholders.join(", "),
        columns.join(", ")
    )
}

/// One row of values for [`Conn::execute_rows`], each owned (a row
/// outlives the expressions it was made of): `row![a, b.c()]`.
macro_rules! row {
    ($($arg:expr),* $(,)?) => {
        vec![$($crate::store::sql::ToArg::to_arg(&$arg).into_owned()),*]
    };
}
pub(crate) use row;

/// A connection the writer commits batches on.
pub trait WriteConn: Conn + Send {
    fn as_conn(&self) -> &dyn Conn;
    /// Begins the batch's transaction, holding the database's write lock.
    fn begin(&mut self) -> DbResult<()>;
    fn commit(&mut self) -> DbResult<()>;
    /// Rolls the open transaction back, if one is open.
    fn rollback(&mut self);
    /// Whether the transaction begun is still open (SQLite rolls a whole
    /// transaction back on some errors without being asked).
    fn in_transaction(&self) -> bool;
    /// Everything is committed: close the connection.
    fn close(self: Box<Self>);
}

/// SQL written with SQLite's placeholders (`?`, `?N`), with PostgreSQL's
/// (`$N`) instead. Text inside quotes is left alone.
pub fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut quoted = false;
    let mut highest = 0u32;
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                    digits.push(d);
                    chars.next();
                }
                let n = if digits.is_empty() {
                    highest + 1
                } else {
                    digits.parse().unwrap_or(highest + 1)
                };
                highest = highest.max(n);
                out.push('$');
                out.push_str(&n.to_string());
            }
            c => out.push(c),
        }
    }
    out
}

/// The pool reads run on, and its database.
#[derive(Clone, Debug)]
pub enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Pool {
    pub async fn close(&self) {
        match self {
            Pool::Sqlite(pool) => pool.close().await,
            Pool::Postgres(pool) => pool.close().await,
        }
    }
}

/// A read: SQL text (SQLite placeholders) and its values.
#[derive(Debug, Clone)]
pub struct Query<'a> {
    sql: String,
    args: Vec<Arg<'a>>,
}

/// Starts a read.
pub fn query<'a>(sql: impl Into<String>) -> Query<'a> {
    Query {
        sql: sql.into(),
        args: Vec::new(),
    }
}

/// A row type both databases' rows can be read into.
pub trait Readable:
    for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{
}
impl<T> Readable for T where
    T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{
}

impl<'a> Query<'a> {
    /// Binds the next `?`.
    pub fn bind<T: ToArg + ?Sized>(mut self, value: &'a T) -> Query<'a> {
        self.args.push(value.to_arg());
        self
    }

    /// Binds the next `?` to a value the query keeps.
    pub fn bind_owned<T: ToArg>(mut self, value: T) -> Query<'a> {
        self.args.push(value.to_arg().into_owned());
        self
    }

    /// Appends SQL text.
    pub fn push(&mut self, sql: &str) -> &mut Query<'a> {
        self.sql.push_str(sql);
        self
    }

    /// Appends a `?` bound to `value`.
    pub fn push_bind<T: ToArg>(&mut self, value: T) -> &mut Query<'a> {
        self.sql.push('?');
        self.args.push(value.to_arg().into_owned());
        self
    }

    pub async fn fetch_all<T: Readable>(&self, pool: &Pool) -> Result<Vec<T>, sqlx::Error> {
        match pool {
            Pool::Sqlite(pool) => {
                sqlx::query_as_with(&self.sql, sqlite_args(&self.args)?)
                    .fetch_all(pool)
                    .await
            }
            Pool::Postgres(pool) => {
                let sql = numbered(&self.sql);
                sqlx::query_as_with(&sql, pg_args(&self.args)?)
                    .fetch_all(pool)
                    .await
            }
        }
    }

    pub async fn fetch_optional<T: Readable>(&self, pool: &Pool) -> Result<Option<T>, sqlx::Error> {
        match pool {
            Pool::Sqlite(pool) => {
                sqlx::query_as_with(&self.sql, sqlite_args(&self.args)?)
                    .fetch_optional(pool)
                    .await
            }
            Pool::Postgres(pool) => {
                let sql = numbered(&self.sql);
                sqlx::query_as_with(&sql, pg_args(&self.args)?)
                    .fetch_optional(pool)
                    .await
            }
        }
    }

    pub async fn fetch_one<T: Readable>(&self, pool: &Pool) -> Result<T, sqlx::Error> {
        self.fetch_optional(pool)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    /// The first column of every row.
    pub async fn scalars<T>(&self, pool: &Pool) -> Result<Vec<T>, sqlx::Error>
    where
        (T,): Readable,
    {
        let rows: Vec<(T,)> = self.fetch_all(pool).await?;
        Ok(rows.into_iter().map(|(v,)| v).collect())
    }

    /// The first column of the first row, if there is a row.
    pub async fn scalar_optional<T>(&self, pool: &Pool) -> Result<Option<T>, sqlx::Error>
    where
        (T,): Readable,
    {
        let row: Option<(T,)> = self.fetch_optional(pool).await?;
        Ok(row.map(|(v,)| v))
    }

    /// The first column of the first row.
    pub async fn scalar<T>(&self, pool: &Pool) -> Result<T, sqlx::Error>
    where
        (T,): Readable,
    {
        let (value,): (T,) = self.fetch_one(pool).await?;
        Ok(value)
    }
}

fn sqlite_args(args: &[Arg<'_>]) -> Result<SqliteArguments<'static>, sqlx::Error> {
    let mut out = SqliteArguments::default();
    for arg in args {
        let added = match arg.clone() {
            Arg::Int(v) => out.add(v),
            Arg::Bool(v) => out.add(v),
            Arg::Text(v) => out.add(v.map(Cow::into_owned)),
            Arg::Bytes(v) => out.add(v.map(Cow::into_owned)),
        };
        added.map_err(sqlx::Error::Encode)?;
    }
    Ok(out)
}

/// The values of a statement, as PostgreSQL's driver takes them. Its text
/// cannot hold NUL, which SQLite's can: a NUL in text (a field of a webhook,
/// an id asked for) becomes U+FFFD, so the statement runs (the receipt
/// keeps the body's bytes as they came).
pub fn pg_args(args: &[Arg<'_>]) -> Result<PgArguments, sqlx::Error> {
    let mut out = PgArguments::default();
    for arg in args {
        let added = match arg {
            Arg::Int(v) => out.add(*v),
            Arg::Bool(v) => out.add(*v),
            Arg::Text(Some(v)) if v.contains('\0') => out.add(v.replace('\0', "\u{fffd}")),
            Arg::Text(v) => out.add(v.as_deref()),
            Arg::Bytes(v) => out.add(v.as_deref()),
        };
        added.map_err(sqlx::Error::Encode)?;
    }
    Ok(out)
}

/// The values of a statement and of the rows it runs over, the rows as one
/// array per column (see [`unnest_table`]).
pub fn pg_array_args(args: &[Arg<'_>], rows: &[Vec<Arg<'_>>]) -> Result<PgArguments, sqlx::Error> {
    fn text(v: &Option<Cow<'_, str>>) -> Option<String> {
        v.as_deref().map(|t| t.replace('\0', "\u{fffd}"))
    }
    let mut out = pg_args(args)?;
    let width = rows.first().map_or(0, Vec::len);
    for column in 0..width {
        let cells = rows.iter().map(|row| row.get(column));
        let mixed =
            || sqlx::Error::Encode(format!("column {} of the rows mixes types", column + 1).into());
        let added = match rows[0].get(column) {
            Some(Arg::Int(_)) => out.add(
                cells
                    .map(|c| match c {
                        Some(Arg::Int(v)) => Ok(*v),
                        _ => Err(mixed()),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(Arg::Bool(_)) => out.add(
                cells
                    .map(|c| match c {
                        Some(Arg::Bool(v)) => Ok(*v),
                        _ => Err(mixed()),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(Arg::Text(_)) => out.add(
                cells
                    .map(|c| match c {
                        Some(Arg::Text(v)) => Ok(text(v)),
                        _ => Err(mixed()),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(Arg::Bytes(_)) => out.add(
                cells
                    .map(|c| match c {
                        Some(Arg::Bytes(v)) => Ok(v.as_deref().map(<[u8]>::to_vec)),
                        _ => Err(mixed()),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => return Err(mixed()),
        };
        added.map_err(sqlx::Error::Encode)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::numbered;

    #[test]
    fn placeholders_become_numbered_outside_quotes() {
        assert_eq!(
            numbered("SELECT a FROM t WHERE b = ? AND c = '?' AND d = ?"),
            "SELECT a FROM t WHERE b = $1 AND c = '?' AND d = $2"
        );
        assert_eq!(
            numbered("UPDATE t SET a = ?2 WHERE b = ?1 OR c = ?2"),
            "UPDATE t SET a = $2 WHERE b = $1 OR c = $2"
        );
    }
}
