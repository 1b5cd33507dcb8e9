//! Prometheus metrics. Counters and histograms are recorded where things
//! happen; gauges that describe stored state (outbox depth, jobs by status)
//! are read from the database when `/metrics` is scraped, so they are never
//! stale. Every name starts with `tunehook_`.

use crate::domain::Status;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::{sync::OnceLock, time::Duration};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Seconds, from 1 ms to 30 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the process-wide recorder once; later calls reuse it.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
}

/// The metrics in Prometheus text format.
pub fn render() -> String {
    match install() {
        Some(handle) => {
            handle.run_upkeep();
            handle.render()
        }
        None => String::new(),
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "tunehook_webhooks_received_total",
        "Webhook requests stored, by outcome."
    );
    describe_histogram!(
        "tunehook_webhook_duration_seconds",
        metrics::Unit::Seconds,
        "Time to store and answer a webhook."
    );
    describe_counter!(
        "tunehook_confirmations_total",
        "Webhook claims settled against Segmind's API, by result (confirmed, contradicted, unconfirmed, dropped; over_capacity: not queued, too many were waiting)."
    );
    describe_counter!(
        "tunehook_transitions_total",
        "Job transitions recorded, by status and source."
    );
    describe_counter!(
        "tunehook_deliveries_total",
        "Delivery attempts, by sink and result."
    );
    describe_histogram!(
        "tunehook_delivery_attempt_duration_seconds",
        metrics::Unit::Seconds,
        "Time of one delivery attempt, by sink."
    );
    describe_counter!(
        "tunehook_reconcile_passes_total",
        "Reconcile passes, by result."
    );
    describe_gauge!(
        "tunehook_reconcile_last_success_timestamp_seconds",
        "Unix time of the last successful reconcile pass."
    );
}

pub fn webhook(outcome: &'static str, took: Duration) {
    metrics::counter!("tunehook_webhooks_received_total", "outcome" => outcome).increment(1);
    metrics::histogram!("tunehook_webhook_duration_seconds").record(took.as_secs_f64());
}

/// A status as a metric label: its name when the rank table knows it,
/// `OTHER` otherwise, so whoever can post webhooks cannot add series to
/// `/metrics` without limit.
pub fn status_label(status: &str) -> &str {
    if Status::from_stored(status).is_known() {
        status
    } else {
        "OTHER"
    }
}

pub fn transition(status: &str, source: &'static str) {
    metrics::counter!("tunehook_transitions_total", "status" => status_label(status).to_owned(), "source" => source)
        .increment(1);
}

pub fn confirmations(result: &'static str, count: usize) {
    if count > 0 {
        metrics::counter!("tunehook_confirmations_total", "result" => result)
            .increment(count as u64);
    }
}

pub fn delivery_attempt(sink: &str, result: &'static str, took: Duration) {
    metrics::counter!("tunehook_deliveries_total", "sink" => sink.to_owned(), "result" => result)
        .increment(1);
    metrics::histogram!("tunehook_delivery_attempt_duration_seconds", "sink" => sink.to_owned())
        .record(took.as_secs_f64());
}

pub fn reconcile_pass(result: &'static str) {
    metrics::counter!("tunehook_reconcile_passes_total", "result" => result).increment(1);
    if result == "success" {
        let now = chrono::Utc::now().timestamp() as f64;
        metrics::gauge!("tunehook_reconcile_last_success_timestamp_seconds").set(now);
    }
}

/// Gauges read from the database at scrape time, in Prometheus text format.
pub fn render_gauges(jobs_by_status: &[(String, i64)], outbox: &[(String, i64, i64)]) -> String {
    let mut out = String::new();
    out.push_str("# HELP tunehook_jobs Jobs by current status (statuses the rank table does not know count as OTHER).\n# TYPE tunehook_jobs gauge\n");
    let mut by_label: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
    for (status, count) in jobs_by_status {
        *by_label.entry(status_label(status)).or_default() += count;
    }
    for (status, count) in by_label {
        out.push_str(&format!(
            "tunehook_jobs{{status=\"{}\"}} {count}\n",
            escape(status)
        ));
    }
    out.push_str("# HELP tunehook_outbox_pending Deliveries waiting, per sink.\n# TYPE tunehook_outbox_pending gauge\n");
    for (sink, pending, _) in outbox {
        out.push_str(&format!(
            "tunehook_outbox_pending{{sink=\"{}\"}} {pending}\n",
            escape(sink)
        ));
    }
    out.push_str("# HELP tunehook_outbox_dead Dead deliveries, per sink.\n# TYPE tunehook_outbox_dead gauge\n");
    for (sink, _, dead) in outbox {
        out.push_str(&format!(
            "tunehook_outbox_dead{{sink=\"{}\"}} {dead}\n",
            escape(sink)
        ));
    }
    out
}

/// The database's size on disk (pages plus the write-ahead log), read at
/// scrape time.
pub fn render_database_bytes(bytes: u64) -> String {
    format!(
        "# HELP tunehook_database_bytes Size of the database on disk: its pages plus the write-ahead log.\n# TYPE tunehook_database_bytes gauge\ntunehook_database_bytes {bytes}\n"
    )
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
