// The modules of the API suite, shared by `tests/api` (SQLite) and
// `tests/api_postgres` (PostgreSQL): each path is written from either folder.

#[path = "../api/confirmation.rs"]
mod confirmation;
#[path = "../api/dashboard.rs"]
mod dashboard;
#[path = "../api/delivery.rs"]
mod delivery;
#[path = "../api/fake_segmind.rs"]
mod fake_segmind;
#[path = "../api/fake_sink.rs"]
mod fake_sink;
#[path = "../api/finetunes.rs"]
mod finetunes;
#[path = "../api/follow_through.rs"]
mod follow_through;
#[path = "../api/helpers.rs"]
mod helpers;
#[path = "../api/hostile.rs"]
mod hostile;
#[path = "../api/jobs_api.rs"]
mod jobs_api;
#[path = "../api/lifecycle.rs"]
mod lifecycle;
#[path = "../api/observability.rs"]
mod observability;
#[path = "../api/operations.rs"]
mod operations;
#[path = "../api/outgoing.rs"]
mod outgoing;
#[path = "../api/postgres.rs"]
mod postgres;
#[path = "../api/receipts_api.rs"]
mod receipts_api;
#[path = "../api/reconcile.rs"]
mod reconcile;
#[path = "../api/security.rs"]
mod security;
#[path = "../api/segmind_client.rs"]
mod segmind_client;
#[path = "../api/ssrf.rs"]
mod ssrf;
#[path = "../api/streams.rs"]
mod streams;
#[path = "../api/webhooks.rs"]
mod webhooks;
