//! `GET /sinks`: each sink's queue and health, the reconciler's, the jobs
//! whose two sources disagree, and the service's version and uptime.

use super::layout::{self, Nav};
use crate::http::AppState;
use axum::{extract::State, http::StatusCode, response::Response};
use maud::html;

/// Drifting jobs the page lists.
const DRIFT_SHOWN: u32 = 50;

pub async fn page(State(state): State<AppState>) -> Response {
    let sink_names: Vec<&str> = state.sinks.iter().map(|s| s.name.as_str()).collect();
    let (mut health, drift) = match tokio::try_join!(
        state.store.sink_health(&sink_names),
        state.store.drifting_jobs(DRIFT_SHOWN)
    ) {
        Ok(found) => found,
        Err(e) => return super::unavailable(e),
    };
    let reconciler = state.reconciler.state();
    let uptime = state.started.elapsed().as_secs();
    let body = html! {
        h1 { "Sinks and status" }
        p.meta {
            "tunehook " span #version { (env!("CARGO_PKG_VERSION")) }
            " · up for " span #uptime { (layout::duration(i64::try_from(uptime).unwrap_or(i64::MAX))) }
            " · since " (layout::time(&state.started_at))
        }
        h2 { "Sinks" }
        @if state.sinks.is_empty() {
            (layout::empty("No sink is configured: state changes are kept, and forwarded nowhere. Add [[sinks]] to the configuration."))
        } @else {
            div.scroll { table #sinks {
                thead { tr {
                    th { "Sink" } th { "Kind" } th { "Statuses" } th { "Pending" } th { "Dead" }
                    th { "Last success" } th { "Last failure" }
                } }
                tbody {
                    @for sink in &state.sinks {
                        @let h = health.remove(&sink.name).unwrap_or_default();
                        @let link = |status: &str| format!("/deliveries{}", layout::query(&[("sink", Some(&sink.name)), ("status", Some(status))]));
                        tr.sink data-sink=(sink.name) {
                            td { a href=(format!("/deliveries{}", layout::query(&[("sink", Some(&sink.name))]))) { (sink.name) } }
                            td { (sink.kind) }
                            td { @match sink.status_filter() {
                                Some(list) => { (list.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")) }
                                None => { "all" }
                            } }
                            td.pending { a href=(link("pending")) { (h.pending) } }
                            td.dead class=[(h.dead > 0).then_some("alarm")] { a href=(link("dead")) { (h.dead) } }
                            td { @if let Some(at) = &h.last_success { (layout::time(at)) } @else { "never" } }
                            td { @if let Some(at) = &h.last_failure { (layout::time(at)) } @else { "never" } }
                        }
                    }
                }
            } }
        }
        section #reconciler {
            h2 { "Reconciler" }
            @if !reconciler.enabled {
                p { "Off: set " code { "SEGMIND_API_KEY" } " so tunehook asks Segmind's API about every job and catches what webhooks miss." }
            } @else {
                dl.fields {
                    dt { "Every" } dd { (layout::duration(i64::try_from(reconciler.interval_seconds).unwrap_or(i64::MAX))) }
                    dt { "Last pass" } dd { @if let Some(at) = &reconciler.last_pass_finished_at { (layout::time(at)) } @else { "not yet" } }
                    dt { "Last success" } dd { @if let Some(at) = &reconciler.last_success_at { (layout::time(at)) } @else { "not yet" } }
                    dt { "Passes" } dd { (reconciler.passes) " (" (reconciler.failed_passes) " failed)" }
                    dt { "Jobs seen" } dd { (reconciler.jobs_seen) }
                    @if let Some(kind) = reconciler.last_error_kind {
                        dt { "Last error" }
                        dd.error-text { code { (kind) } " " (reconciler.last_error.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
        section #drift {
            h2 { "Drift" }
            p.muted { "Jobs whose status differs from what Segmind's API last said of them." }
            @if drift.is_empty() {
                @if !reconciler.enabled {
                    (layout::empty("Not checked: the reconciler is off, so Segmind's API is never asked (set SEGMIND_API_KEY)."))
                } @else if reconciler.last_success_at.is_none() {
                    (layout::empty("Not checked yet: no reconcile pass has finished."))
                } @else {
                    (layout::empty("None: every job Segmind's API reported agrees with tunehook."))
                }
            } @else {
                div.scroll { table {
                    thead { tr { th { "Job" } th { "Recorded" } th { "Segmind's API" } th { "Webhooks" } th { "Seen by the API" } } }
                    tbody {
                        @for row in &drift {
                            tr data-finetune-id=(row.job.finetune_id) {
                                td { a href=(format!("/jobs/{}", super::jobs::urlencode(&row.job.finetune_id))) {
                                    (layout::visible(row.job.name.as_deref().unwrap_or(&row.job.finetune_id)))
                                } }
                                td { (layout::status(&row.job.status)) }
                                td { (row.segmind_status.as_deref().unwrap_or("-")) }
                                td { (row.webhook_status.as_deref().unwrap_or("nothing")) }
                                td { @if let Some(at) = &row.segmind_seen_at { (layout::time(at)) } }
                            }
                        }
                    }
                } }
            }
        }
    };
    super::html(
        StatusCode::OK,
        layout::page("Sinks and status", Nav::Sinks, None, body),
    )
}
