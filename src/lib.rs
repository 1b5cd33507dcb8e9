//! tunehook receives Segmind fine-tune webhooks, keeps every job's state in
//! SQLite, and answers job-state questions over a small REST API.
//!
//! The modules, in the order a webhook meets them:
//!
//! - [`http`]: axum routes. `http::webhooks` takes `POST /webhooks/segmind/{token}`,
//!   checks the token, reads the body within its size limit and hands it on.
//! - [`domain`]: pure rules with no I/O. `domain::payload` reads the
//!   undocumented body leniently; `domain::status` ranks statuses;
//!   `domain::rules` decides whether an observation moves a job.
//! - [`store`]: SQLite, the only place with SQL. Its single writer stores
//!   the receipt, the job and the transition in one transaction and commits
//!   many requests at once (group commit) before any of them is answered.
//! - [`confirm`]: with Segmind's API configured, webhook claims wait, stored,
//!   until Segmind's details for the job agree, and are applied then.
//! - [`retention`] prunes old receipts, attempts and delivered deliveries
//!   in small steps through the same writer.
//! - [`feed`]: committed events, read back for the Server-Sent Events streams.
//! - [`ui`]: the web dashboard at `/`, pages rendered on the server from
//!   the same store the API reads.
//! - [`app`] builds all of this from [`config::Settings`], binds the listener
//!   and shuts down cleanly; [`telemetry`] sets up logging.

pub mod app;
pub mod cli;
pub mod config;
pub mod confirm;
pub mod dataset;
pub mod delivery;
pub mod domain;
pub mod feed;
pub mod http;
pub mod reconcile;
pub mod retention;
pub mod segmind;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod ui;
pub mod watch;
