//! Integration tests: each starts a real tunehook with a fresh database and
//! talks to it over HTTP on 127.0.0.1.

mod confirmation;
mod dashboard;
mod delivery;
mod fake_segmind;
mod fake_sink;
mod finetunes;
mod follow_through;
mod helpers;
mod hostile;
mod jobs_api;
mod lifecycle;
mod observability;
mod operations;
mod outgoing;
mod receipts_api;
mod reconcile;
mod security;
mod segmind_client;
mod streams;
mod webhooks;
