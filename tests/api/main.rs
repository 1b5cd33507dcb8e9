//! Integration tests: each starts a real tunehook with a fresh database and
//! talks to it over HTTP on 127.0.0.1. This suite runs on SQLite;
//! `tests/api_postgres` runs the same tests on PostgreSQL.

/// The database this suite runs on.
const BACKEND: helpers::Backend = helpers::Backend::Sqlite;

include!("suite.rs");
