//! `GET /`: counts per status, then the jobs, most recently updated first,
//! with a filter by status and a search by id or name.

use super::{
    input::PageQuery,
    layout::{self, Nav},
};
use crate::{
    domain::status::KNOWN_STATUSES,
    http::{AppState, params},
    store::{JobSearch, JobSummary},
};
use axum::{extract::State, http::StatusCode, response::Response};
use maud::{Markup, html};
use serde::Deserialize;

/// Jobs on one page.
const PAGE: u32 = 50;

#[derive(Debug, Default, Deserialize)]
pub struct JobsQuery {
    status: Option<String>,
    q: Option<String>,
    cursor: Option<String>,
}

pub async fn page(
    State(state): State<AppState>,
    PageQuery(query): PageQuery<JobsQuery>,
) -> Response {
    let status = query.status.as_deref().filter(|s| !s.is_empty());
    let status = match params::status(status) {
        Ok(status) => status.map(|s| s.as_str().to_owned()),
        Err(_) => {
            return super::problem(
                StatusCode::BAD_REQUEST,
                "Not a status",
                "The status filter is not a status name.",
            );
        }
    };
    let text = query
        .q
        .as_deref()
        .map(str::trim)
        .filter(|q| !q.is_empty())
        .map(|q| q.chars().take(200).collect::<String>());
    let after = query
        .cursor
        .as_deref()
        .and_then(|c| params::decode_job_cursor(c).ok());
    let search = JobSearch {
        status: status.clone(),
        text: text.clone(),
        limit: PAGE,
        after,
    };
    let (counts, (jobs, next)) = match tokio::try_join!(
        state.store.status_counts(),
        state.store.job_summaries(&search)
    ) {
        Ok(found) => found,
        Err(e) => return super::unavailable(e),
    };
    let now = crate::time::now_rfc3339();
    let next_link = next.map(|(at, id)| {
        let cursor = params::encode_job_cursor(&at, &id);
        format!(
            "/{}",
            layout::query(&[
                ("status", status.as_deref()),
                ("q", text.as_deref()),
                ("cursor", Some(&cursor)),
            ])
        )
    });
    let body = html! {
        h1 { "Jobs" }
        (filter(&counts, status.as_deref(), text.as_deref()))
        div #live {
            (count_list(&counts, status.as_deref()))
            @if jobs.is_empty() {
                (layout::empty(if status.is_some() || text.is_some() {
                    "No job matches."
                } else {
                    "No job yet. Jobs appear here as Segmind's webhooks and the reconciler report them."
                }))
            } @else {
                (table(&jobs, &now))
            }
            @if let Some(link) = next_link {
                p.paging { a #next-page href=(link) { "Older jobs →" } }
            }
        }
    };
    super::html(
        StatusCode::OK,
        layout::page("Jobs", Nav::Jobs, Some("/v1/events"), body),
    )
}

fn filter(counts: &[(String, i64)], status: Option<&str>, text: Option<&str>) -> Markup {
    let mut names: Vec<&str> = KNOWN_STATUSES.to_vec();
    for (name, _) in counts {
        if !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    html! {
        form #job-filter.filter method="get" action="/" role="search" {
            label { "Status "
                select name="status" {
                    option value="" selected[status.is_none()] { "Any" }
                    @for name in &names {
                        option value=(name) selected[status == Some(*name)] { (name) }
                    }
                }
            }
            label { "Id or name "
                input type="search" name="q" value=[text] placeholder="part of an id or a name";
            }
            button type="submit" { "Filter" }
            @if status.is_some() || text.is_some() {
                a href="/" { "Clear" }
            }
        }
    }
}

fn count_list(counts: &[(String, i64)], current: Option<&str>) -> Markup {
    html! {
        ul #counts.counts aria-label="Jobs per status" {
            @for (name, count) in counts {
                li data-status=(name) class=[(current == Some(name.as_str())).then_some("current")] {
                    a href=(format!("/{}", layout::query(&[("status", Some(name))]))) {
                        (layout::status(name)) " " strong { (count) }
                    }
                }
            }
        }
    }
}

fn table(jobs: &[JobSummary], now: &str) -> Markup {
    html! {
        div.scroll {
            table #jobs {
                thead { tr {
                    th scope="col" { "Status" }
                    th scope="col" { "Name" }
                    th scope="col" { "Id" }
                    th scope="col" { "Base model" }
                    th scope="col" { "First seen" }
                    th scope="col" { "In status for" }
                } }
                tbody {
                    @for summary in jobs {
                        @let job = &summary.job;
                        tr.job data-finetune-id=(job.finetune_id) {
                            td.status {
                                (layout::status(&job.status))
                                @if summary.drifts() {
                                    " "
                                    span.badge.drift title=(format!(
                                        "Segmind's API says {}; tunehook has {}; webhooks said {}",
                                        summary.segmind_status.as_deref().unwrap_or("-"),
                                        job.status,
                                        summary.webhook_status.as_deref().unwrap_or("nothing")
                                    )) { "drift" }
                                }
                            }
                            td.name { (layout::visible(job.name.as_deref().unwrap_or(""))) }
                            td.id { a href=(format!("/jobs/{}", urlencode(&job.finetune_id))) { code { (job.finetune_id) } } }
                            td.base-model { (job.base_model.as_deref().unwrap_or("")) }
                            td.first-seen { (layout::time(&job.first_seen_at)) }
                            td.in-status { (layout::duration(layout::seconds_between(&summary.status_since, now))) }
                        }
                    }
                }
            }
        }
    }
}

/// A job id as one path segment.
pub(super) fn urlencode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
