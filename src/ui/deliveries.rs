//! `GET /deliveries`: deliveries by sink, status and job, dead letters
//! first, each dead or delivered one with a Retry button; per sink a
//! "Replay since…" form. `POST /deliveries/{id}/retry` and
//! `POST /sinks/{name}/replay` do what the API's routes of the same names do.

use super::{
    input::{PageForm, PagePath, PageQuery},
    layout::{self, Nav},
};
use crate::{
    http::AppState,
    store::{DeadFirstCursor, DeliveryFilter, DeliveryRow, ReplayRequest},
};
use axum::{extract::State, http::StatusCode, response::Response};
use maud::{Markup, html};
use serde::Deserialize;

const PAGE: u32 = 50;
const STATUSES: [&str; 3] = ["dead", "pending", "delivered"];
/// The most events one replay from the dashboard takes, as the API's default.
const REPLAY_LIMIT: u32 = 10_000;

#[derive(Debug, Default, Deserialize)]
pub struct DeliveriesQuery {
    sink: Option<String>,
    status: Option<String>,
    finetune_id: Option<String>,
    cursor: Option<String>,
    /// Set after a retry: the delivery sent again.
    retried: Option<i64>,
    /// Set after a replay: how many deliveries it enqueued.
    replayed: Option<u64>,
}

pub async fn page(
    State(state): State<AppState>,
    PageQuery(query): PageQuery<DeliveriesQuery>,
) -> Response {
    let nonempty = |v: &Option<String>| v.clone().filter(|v| !v.trim().is_empty());
    let sink = nonempty(&query.sink);
    let status = nonempty(&query.status);
    let finetune_id = nonempty(&query.finetune_id);
    if status.as_deref().is_some_and(|s| !STATUSES.contains(&s)) {
        return super::problem(
            StatusCode::BAD_REQUEST,
            "Not a delivery status",
            "A delivery is dead, pending or delivered.",
        );
    }
    let filter = DeliveryFilter {
        status: status.clone(),
        sink: sink.clone(),
        finetune_id: finetune_id.clone(),
        limit: PAGE,
        before_id: None,
    };
    let listed = if status.is_some() {
        let filter = DeliveryFilter {
            before_id: query.cursor.as_deref().and_then(|c| c.parse().ok()),
            ..filter
        };
        state
            .store
            .deliveries(&filter)
            .await
            .map(|(rows, next)| (rows, next.map(|id| id.to_string())))
    } else {
        state
            .store
            .deliveries_dead_first(&filter, query.cursor.as_deref().and_then(parse_cursor))
            .await
            .map(|(rows, next)| (rows, next.map(cursor_text)))
    };
    let (rows, next) = match listed {
        Ok(listed) => listed,
        Err(e) => return super::unavailable(e),
    };
    let here = format!(
        "/deliveries{}",
        layout::query(&[
            ("sink", sink.as_deref()),
            ("status", status.as_deref()),
            ("finetune_id", finetune_id.as_deref()),
        ])
    );
    let next_link = next.map(|cursor| {
        format!(
            "/deliveries{}",
            layout::query(&[
                ("sink", sink.as_deref()),
                ("status", status.as_deref()),
                ("finetune_id", finetune_id.as_deref()),
                ("cursor", Some(&cursor)),
            ])
        )
    });
    let sinks: Vec<&str> = state.sinks.iter().map(|s| s.name.as_str()).collect();
    let body = html! {
        h1 { "Deliveries" }
        @if let Some(id) = query.retried {
            p.notice role="status" { "Delivery " (id) " is queued to be sent again." }
        }
        @if let (Some(n), Some(sink)) = (query.replayed, &sink) {
            p.notice role="status" { (n) " event(s) queued again for " (sink) "." }
        }
        form #delivery-filter.filter method="get" action="/deliveries" {
            label { "Sink "
                select name="sink" {
                    option value="" selected[sink.is_none()] { "Any" }
                    @for name in &sinks { option value=(name) selected[sink.as_deref() == Some(*name)] { (name) } }
                }
            }
            label { "Status "
                select name="status" {
                    option value="" selected[status.is_none()] { "Any (dead first)" }
                    @for name in STATUSES { option value=(name) selected[status.as_deref() == Some(name)] { (name) } }
                }
            }
            label { "Job id " input type="text" name="finetune_id" value=[finetune_id.as_deref()]; }
            button type="submit" { "Filter" }
        }
        div #live {
            @if rows.is_empty() {
                (layout::empty("No delivery matches."))
            } @else {
                (table(&rows, &here))
            }
            @if let Some(link) = next_link {
                p.paging { a #next-page href=(link) { "More →" } }
            }
        }
        h2 { "Replay" }
        p.muted { "Sends a sink every event since a time again (its filters applied); events already waiting for it are skipped." }
        @if sinks.is_empty() { (layout::empty("No sink is configured.")) }
        @for name in &sinks {
            form.replay method="post" action=(format!("/sinks/{}/replay", super::jobs::urlencode(name))) {
                strong { (name) }
                label { "since (UTC) " input type="datetime-local" name="since" required step="1"; }
                label { "job id (optional) " input type="text" name="finetune_id"; }
                button type="submit" { "Replay since…" }
            }
        }
    };
    super::html(
        StatusCode::OK,
        layout::page("Deliveries", Nav::Deliveries, Some("/v1/events"), body),
    )
}

fn table(rows: &[DeliveryRow], here: &str) -> Markup {
    html! {
        div.scroll { table #deliveries {
            thead { tr {
                th { "Id" } th { "Sink" } th { "Status" } th { "Job" } th { "Attempts" }
                th { "Last error" } th { "When" } th { span.visually-hidden { "Actions" } }
            } }
            tbody {
                @for d in rows {
                    tr.delivery data-delivery-id=(d.id) data-sink=(d.sink) data-status=(d.status) {
                        td { (d.id) }
                        td { (d.sink) }
                        td { span class=(format!("badge delivery {}", d.status)) { (d.status) } }
                        td { a href=(format!("/jobs/{}", super::jobs::urlencode(&d.finetune_id))) { code { (d.finetune_id) } } }
                        td { (d.attempts) }
                        td.error-text {
                            @if let Some(code) = d.last_status_code { (code) " " }
                            (d.last_error.as_deref().unwrap_or(""))
                        }
                        td {
                            @if let Some(at) = &d.delivered_at { "delivered " (layout::time(at)) }
                            @else if d.status == "pending" {
                                @if let Some(at) = d.next_attempt_at.as_deref().filter(|at| at.starts_with('2')) {
                                    "next " (layout::time(at))
                                } @else { "waits its turn" }
                            }
                        }
                        td {
                            @if d.status != "pending" {
                                form method="post" action=(format!("/deliveries/{}/retry", d.id)) {
                                    input type="hidden" name="back" value=(here);
                                    button.retry type="submit" { "Retry" }
                                }
                            }
                        }
                    }
                }
            }
        } }
    }
}

fn parse_cursor(raw: &str) -> Option<DeadFirstCursor> {
    let (dead, id) = match raw.split_at_checked(1)? {
        ("d", id) => (true, id),
        ("o", id) => (false, id),
        _ => return None,
    };
    Some(DeadFirstCursor {
        dead,
        before_id: id.parse().ok()?,
    })
}

fn cursor_text(cursor: DeadFirstCursor) -> String {
    format!(
        "{}{}",
        if cursor.dead { "d" } else { "o" },
        cursor.before_id
    )
}

#[derive(Debug, Deserialize)]
pub struct RetryForm {
    back: Option<String>,
}

/// `POST /deliveries/{id}/retry`.
pub async fn retry(
    State(state): State<AppState>,
    PagePath(id): PagePath<String>,
    PageForm(form): PageForm<RetryForm>,
) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return super::problem(
            StatusCode::NOT_FOUND,
            "No such delivery",
            "That is not a delivery id.",
        );
    };
    match state.store.delivery(id).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return super::problem(
                StatusCode::NOT_FOUND,
                "No such delivery",
                &format!("There is no delivery {id}."),
            );
        }
        Err(e) => return super::unavailable(e),
    }
    match state.store.retry_delivery(id).await {
        Ok(true) => {}
        Ok(false) => {
            return super::problem(
                StatusCode::CONFLICT,
                "Already pending",
                &format!(
                    "Delivery {id} is already waiting to be sent; only dead or delivered ones can be retried."
                ),
            );
        }
        Err(e) => return super::unavailable(e),
    }
    let back = layout::local_path(form.back.as_deref()).unwrap_or("/deliveries");
    let joiner = if back.contains('?') { '&' } else { '?' };
    super::see_other(&format!("{back}{joiner}retried={id}"))
}

#[derive(Debug, Deserialize)]
pub struct ReplayForm {
    since: String,
    finetune_id: Option<String>,
}

/// `POST /sinks/{name}/replay`: `since` as a `datetime-local` field gives
/// it (read as UTC) or as RFC 3339.
pub async fn replay(
    State(state): State<AppState>,
    PagePath(name): PagePath<String>,
    PageForm(form): PageForm<ReplayForm>,
) -> Response {
    if !state.sinks.iter().any(|s| s.name == name) {
        return super::problem(
            StatusCode::NOT_FOUND,
            "No such sink",
            &format!("No sink is named {name}."),
        );
    }
    let Some(since) = parse_since(&form.since) else {
        return super::problem(
            StatusCode::BAD_REQUEST,
            "Not a time",
            "Give the time to replay from, such as 2026-01-01T00:00.",
        );
    };
    let request = ReplayRequest {
        sink: name.clone(),
        since: crate::time::rfc3339(since),
        finetune_id: form.finetune_id.filter(|id| !id.trim().is_empty()),
        limit: REPLAY_LIMIT,
    };
    match state.store.replay(request).await {
        Ok(done) => super::see_other(&format!(
            "/deliveries{}",
            layout::query(&[
                ("sink", Some(&name)),
                ("replayed", Some(&done.enqueued.to_string())),
            ])
        )),
        Err(e) => super::unavailable(e),
    }
}

fn parse_since(raw: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let raw = raw.trim();
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(raw) {
        return Some(at.with_timezone(&chrono::Utc));
    }
    ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"]
        .iter()
        .find_map(|format| chrono::NaiveDateTime::parse_from_str(raw, format).ok())
        .map(|at| at.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_cursor_reads_back_as_written() {
        for cursor in [
            DeadFirstCursor {
                dead: true,
                before_id: 42,
            },
            DeadFirstCursor {
                dead: false,
                before_id: 7,
            },
        ] {
            assert_eq!(parse_cursor(&cursor_text(cursor)), Some(cursor));
        }
        assert_eq!(parse_cursor("x1"), None);
        assert_eq!(parse_cursor("d"), None);
    }

    #[test]
    fn replay_times_are_read_from_the_form_as_utc() {
        let at = parse_since("2026-03-04T05:06").map(crate::time::rfc3339);
        assert_eq!(at.as_deref(), Some("2026-03-04T05:06:00.000000Z"));
        assert!(parse_since("yesterday").is_none());
    }
}
