//! The integration tests of `tests/api`, each on a PostgreSQL database of
//! its own: created on the server `TUNEHOOK_TEST_POSTGRES_URL` names and
//! dropped after the test. Without that variable the suite says SKIPPED
//! and passes; the tests about the SQLite file itself say SKIPPED here.

/// The database this suite runs on.
const BACKEND: helpers::Backend = helpers::Backend::Postgres;

include!("../api/suite.rs");
