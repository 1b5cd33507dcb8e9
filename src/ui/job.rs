//! `GET /jobs/{finetune_id}`: a job's fields, its timeline (each status,
//! where it was seen, how long the job stayed in it, drawn as one bar), the
//! receipts behind the transitions, and every sink's delivery of each event
//! with its attempts.

use super::{
    input::PagePath,
    layout::{self, Nav},
};
use crate::{
    http::AppState,
    store::{JobAttempt, JobRow, ReceiptRow, TransitionDelivery, TransitionRow},
};
use axum::{extract::State, http::StatusCode, response::Response};
use maud::{Markup, html};

/// How much of a receipt's body the page shows.
const BODY_SHOWN: usize = 64 * 1024;

/// One status of the timeline and how long the job spent in it.
struct Span<'a> {
    transition: &'a TransitionRow,
    seconds: i64,
    /// Still in it now.
    current: bool,
}

pub async fn page(
    State(state): State<AppState>,
    PagePath(finetune_id): PagePath<String>,
) -> Response {
    let store = &state.store;
    let found = tokio::try_join!(
        store.job(&finetune_id),
        store.job_sources(&finetune_id),
        store.transitions(&finetune_id),
        store.updates(&finetune_id),
        store.job_deliveries(&finetune_id),
        store.job_attempts(&finetune_id),
    );
    let (job, sources, transitions, updates, deliveries, attempts) = match found {
        Ok(found) => found,
        Err(e) => return super::unavailable(e),
    };
    let Some(job) = job else {
        return super::problem(
            StatusCode::NOT_FOUND,
            "No such job",
            &format!("tunehook has seen no job with the id {finetune_id}."),
        );
    };
    let mut receipts = Vec::new();
    for id in transitions.iter().filter_map(|t| t.receipt_id) {
        match store.receipt(id).await {
            Ok(Some(receipt)) => receipts.push(receipt),
            Ok(None) => {}
            Err(e) => return super::unavailable(e),
        }
    }
    let now = crate::time::now_rfc3339();
    let spans = spans(&job, &transitions, &now);
    let title = layout::visible(job.name.as_deref().unwrap_or(&job.finetune_id));
    let live = format!(
        "/v1/jobs/{}/events",
        super::jobs::urlencode(&job.finetune_id)
    );
    let (segmind_status, webhook_status, segmind_seen_at) = sources;
    let body = html! {
        p.crumbs { a href="/" { "Jobs" } " / " code { (job.finetune_id) } }
        div #live {
            h1 { (title) " " (layout::status(&job.status)) }
            @if crate::store::drifts(&job.status, segmind_status.as_deref()) {
                p.notice.drift role="status" {
                    span.badge.drift { "drift" } " Segmind's API says "
                    strong { (segmind_status.as_deref().unwrap_or("-")) }
                    @if let Some(at) = &segmind_seen_at { " (" (layout::time(at)) ")" }
                    "; tunehook has " strong { (job.status) }
                    "; webhooks said " strong { (webhook_status.as_deref().unwrap_or("nothing")) } "."
                }
            } @else if segmind_status.is_none() {
                p.muted #segmind-check {
                    @if state.reconciler.state().enabled {
                        "Segmind's API: not checked yet (the next reconcile pass asks)."
                    } @else {
                        "Segmind's API: not asked (the reconciler is off: set " code { "SEGMIND_API_KEY" } ")."
                    }
                }
            }
            (fields(&job))
            h2 { "Timeline" }
            @if spans.is_empty() {
                (layout::empty("No transition recorded yet."))
            } @else {
                (bar(&spans))
                (timeline(&spans))
            }
            h2 { "Events and deliveries" }
            (events(&transitions, &updates, &deliveries, &attempts))
            h2 { "Receipts" }
            @if receipts.is_empty() {
                (layout::empty("No webhook behind these transitions (they came from Segmind's API or from tunehook)."))
            }
            @for receipt in &receipts { (receipt_block(receipt)) }
        }
    };
    super::html(
        StatusCode::OK,
        layout::page(&title, Nav::Jobs, Some(&live), body),
    )
}

fn spans<'a>(job: &JobRow, transitions: &'a [TransitionRow], now: &str) -> Vec<Span<'a>> {
    let finished = crate::domain::status::Status::from_stored(&job.status).is_terminal();
    transitions
        .iter()
        .enumerate()
        .map(|(i, transition)| {
            let next = transitions.get(i + 1);
            let current = next.is_none() && !finished;
            let until = match next {
                Some(next) => next.observed_at.as_str(),
                None if current => now,
                None => transition.observed_at.as_str(),
            };
            Span {
                transition,
                seconds: layout::seconds_between(&transition.observed_at, until),
                current,
            }
        })
        .collect()
}

fn fields(job: &JobRow) -> Markup {
    let text = |v: &Option<String>| v.clone();
    let rows: Vec<(&str, Option<String>, bool)> = vec![
        ("Id", Some(job.finetune_id.clone()), false),
        ("Name", text(&job.name), false),
        ("Base model", text(&job.base_model), false),
        ("Slug", text(&job.slug), false),
        ("Trained model", text(&job.trained_model_url), true),
        ("Inference API", text(&job.inference_api_url), true),
        ("Cloud storage", text(&job.cloud_storage_url), true),
        ("Dataset", text(&job.data_source_path), true),
        ("Error", text(&job.error_message), false),
        ("Theme", text(&job.theme), false),
        ("Train type", text(&job.train_type), false),
        ("Source type", text(&job.source_type), false),
        (
            "Public model",
            job.public_model
                .map(|p| if p { "yes" } else { "no" }.to_owned()),
            false,
        ),
        ("Created (Segmind)", text(&job.created_ts), false),
        ("Updated (Segmind)", text(&job.updated_ts), false),
    ];
    html! {
        dl #fields.fields {
            @for (name, value, link) in rows {
                @if let Some(value) = value {
                    dt { (name) }
                    dd { @if link { (layout::maybe_link(&value)) } @else { (layout::visible(&value)) } }
                }
            }
            dt { "First seen" } dd { (layout::time(&job.first_seen_at)) }
            dt { "Last change" } dd { (layout::time(&job.updated_at)) }
        }
    }
}

/// The timeline as one horizontal bar: each status a share of the job's
/// life as wide as the time it spent there. SVG attributes, not inline
/// styles, give the widths, so the page needs no `style-src`.
fn bar(spans: &[Span<'_>]) -> Markup {
    const WIDTH: f64 = 1000.0;
    let total: i64 = spans.iter().map(|s| s.seconds).sum();
    let shares: Vec<f64> = if total == 0 {
        vec![WIDTH / spans.len() as f64; spans.len()]
    } else {
        spans
            .iter()
            .map(|s| s.seconds as f64 / total as f64 * WIDTH)
            .collect()
    };
    let starts: Vec<f64> = shares
        .iter()
        .scan(0.0, |x, width| {
            let at = *x;
            *x += width;
            Some(at)
        })
        .collect();
    html! {
        svg #durations.bar viewBox="0 0 1000 28" preserveAspectRatio="none" role="img"
            aria-label="How long the job spent in each status" {
            @for ((span, width), at) in spans.iter().zip(&shares).zip(&starts) {
                rect x=(format!("{at:.1}")) y="0" width=(format!("{:.1}", width.max(2.0))) height="28"
                    class=(format!("seg {}", layout::status_family(&span.transition.to_status))) {
                    title { (span.transition.to_status) ": " (layout::duration(span.seconds)) }
                }
            }
        }
    }
}

fn timeline(spans: &[Span<'_>]) -> Markup {
    html! {
        ol #timeline.timeline {
            @for span in spans {
                @let t = span.transition;
                li.transition data-status=(t.to_status) data-source=(t.source) {
                    (layout::status(&t.to_status))
                    span.source { "from " (t.source) }
                    " " (layout::time(&t.observed_at))
                    span.spent {
                        @if span.current { "for " (layout::duration(span.seconds)) " so far" }
                        @else if span.seconds > 0 { "for " (layout::duration(span.seconds)) }
                    }
                    @if let Some(receipt) = t.receipt_id {
                        " " a href=(format!("#receipt-{receipt}")) { "receipt " (receipt) }
                    }
                }
            }
        }
    }
}

fn events(
    transitions: &[TransitionRow],
    updates: &[crate::store::UpdateRow],
    deliveries: &[TransitionDelivery],
    attempts: &[JobAttempt],
) -> Markup {
    let mut list: Vec<(&str, String, &str, &str)> = transitions
        .iter()
        .map(|t| {
            (
                t.id.as_str(),
                format!("status changed to {}", t.to_status),
                t.observed_at.as_str(),
                t.source.as_str(),
            )
        })
        .chain(updates.iter().map(|u| {
            (
                u.id.as_str(),
                format!("updated: {}", u.changed.join(", ")),
                u.observed_at.as_str(),
                u.source.as_str(),
            )
        }))
        .collect();
    list.sort_by(|a, b| a.2.cmp(b.2));
    html! {
        @if list.is_empty() { (layout::empty("No event yet.")) }
        @for (event_id, what, at, source) in list {
            section.event data-event-id=(event_id) {
                h3 { (what) }
                p.meta { (layout::time(at)) " · from " (source) " · event " code { (event_id) } }
                @let mine: Vec<&TransitionDelivery> = deliveries.iter().filter(|d| d.event_id == event_id).collect();
                @if mine.is_empty() {
                    (layout::empty("No sink takes this event."))
                } @else {
                    div.scroll { table.deliveries {
                        thead { tr { th { "Sink" } th { "Status" } th { "Attempts" } } }
                        tbody {
                            @for d in mine {
                                tr.delivery data-delivery-id=(d.id) data-sink=(d.sink) data-status=(d.status) {
                                    td { (d.sink) }
                                    td { span class=(format!("badge delivery {}", d.status)) { (d.status) } }
                                    td { (attempt_table(d.id, attempts)) }
                                }
                            }
                        }
                    } }
                }
            }
        }
    }
}

/// The attempts at one delivery: when, how long, what came back.
pub(super) fn attempt_table(delivery_id: i64, attempts: &[JobAttempt]) -> Markup {
    let mine: Vec<&JobAttempt> = attempts
        .iter()
        .filter(|a| a.delivery_id == delivery_id)
        .collect();
    html! {
        @if mine.is_empty() { span.muted { "none yet" } } @else {
            table.attempts {
                thead { tr { th { "When" } th { "Took" } th { "Code" } th { "Error" } th { "Response" } } }
                tbody {
                    @for a in mine {
                        @let a = &a.attempt;
                        tr {
                            td { (layout::time(&a.started_at)) }
                            td { (a.duration_ms) " ms" }
                            td { (a.status_code.or(a.exit_code).map(|c| c.to_string()).unwrap_or_default()) }
                            td.error-text { (a.error.as_deref().unwrap_or("")) }
                            td { @if let Some(r) = &a.response { code.response { (r) } } }
                        }
                    }
                }
            }
        }
    }
}

fn receipt_block(receipt: &ReceiptRow) -> Markup {
    let text = String::from_utf8_lossy(&receipt.body);
    let shown = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.into_owned());
    let cut = shown.len() > BODY_SHOWN;
    let shown: String = if cut {
        let mut end = BODY_SHOWN;
        while !shown.is_char_boundary(end) {
            end -= 1;
        }
        shown[..end].to_owned()
    } else {
        shown
    };
    html! {
        details.receipt id=(format!("receipt-{}", receipt.id)) {
            summary {
                "Receipt " (receipt.id) " · " (layout::time(&receipt.received_at)) " · " (receipt.outcome)
                @if let Some(status) = &receipt.status { " · " (status) }
            }
            pre.body { (shown) }
            @if cut { p.muted { "Shown up to 64 KiB of " (receipt.body_bytes) " bytes." } }
        }
    }
}
