//! Browser tests: a real tunehook on 127.0.0.1 and a headless Chromium that
//! uses its dashboard as a person would: signing in, reading pages that
//! update themselves, clicking buttons. They need `chromedriver` and
//! `chromium` (see `driver.rs`); without them each test says SKIPPED.

// Shared with the API tests, which use the parts these tests do not.
#[allow(dead_code)]
#[path = "../api/fake_sink.rs"]
mod fake_sink;
#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;
#[path = "../api/postgres.rs"]
mod postgres;

/// The dashboard is tested on SQLite: what it reads is the API suite's to
/// prove on both databases.
const BACKEND: helpers::Backend = helpers::Backend::Sqlite;

mod dashboard;
mod driver;
mod harness;
mod screenshots;
