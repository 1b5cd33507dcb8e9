//! `GET /v1/events` and `GET /v1/jobs/{finetune_id}/events`: Server-Sent
//! Events, one message per committed event (`event:` its type, `id:` its
//! id, `data:` the JSON sinks receive).
//!
//! A stream sends what the live feed (`crate::feed`) read from the
//! database. `Last-Event-ID` resumes after that event from the database,
//! so a reconnect misses nothing. Streams are bounded in number
//! (`server.max_streams`), are not cut by the request timeout (the answer
//! itself is immediate), keep proxies awake with a comment every 15 s, and
//! end at shutdown. A stream a dashboard session opened ends, too, within
//! a few seconds of that session's end, and one opened with the bearer
//! token ends when that token is rotated.

use super::{
    AppState,
    auth::{self, SessionAuth},
    error::ApiError,
    error::ErrorBody,
    params::ApiPath,
};
use crate::store::{FeedEvent, Store};
use axum::{
    Extension,
    extract::State,
    http::HeaderMap,
    response::sse::{Event, KeepAlive, KeepAliveStream, Sse},
};
use std::{convert::Infallible, sync::Arc, time::Duration};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// The comment that keeps a quiet stream open through proxies.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How often a stream opened by a dashboard session checks that the
/// session is still open.
const SESSION_CHECK: Duration = Duration::from_secs(2);
/// Events read from the database at a time when catching up.
const CATCH_UP: u32 = 200;

type EventStream = Sse<KeepAliveStream<ReceiverStream<Result<Event, Infallible>>>>;

/// Every job's events as they are committed.
#[utoipa::path(get, path = "/v1/events", tag = "events", security(("bearer" = [])),
    params(("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")),
    responses((status = 200, description = "A stream of Server-Sent Events: `event:` the type (`finetune.status_changed` or `finetune.updated`), `id:` the event id, `data:` the event as sinks receive it", content_type = "text/event-stream", body = String),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 503, description = "Too many streams open (`server.max_streams`)", body = ErrorBody)))]
pub async fn all(
    State(state): State<AppState>,
    session: Option<Extension<SessionAuth>>,
    headers: HeaderMap,
) -> Result<EventStream, ApiError> {
    open(&state, None, &headers, session.map(|Extension(s)| s)).await
}

/// One job's events as they are committed.
#[utoipa::path(get, path = "/v1/jobs/{finetune_id}/events", tag = "events", security(("bearer" = [])),
    params(("finetune_id" = String, Path, description = "The job's id"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")),
    responses((status = 200, description = "A stream of Server-Sent Events, as `GET /v1/events` but for one job", content_type = "text/event-stream", body = String),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 503, description = "Too many streams open (`server.max_streams`)", body = ErrorBody)))]
pub async fn job(
    State(state): State<AppState>,
    ApiPath(finetune_id): ApiPath<String>,
    session: Option<Extension<SessionAuth>>,
    headers: HeaderMap,
) -> Result<EventStream, ApiError> {
    if state.store.job(&finetune_id).await?.is_none() {
        return Err(ApiError::NotFound(format!(
            "no job with finetune_id `{finetune_id}`"
        )));
    }
    open(
        &state,
        Some(finetune_id),
        &headers,
        session.map(|Extension(s)| s),
    )
    .await
}

async fn open(
    state: &AppState,
    finetune_id: Option<String>,
    headers: &HeaderMap,
    session: Option<SessionAuth>,
) -> Result<EventStream, ApiError> {
    let permit = Arc::clone(&state.stream_permits)
        .try_acquire_owned()
        .map_err(|_| ApiError::TooManyStreams)?;
    // Subscribed before "now" is read: whatever is committed after it
    // arrives through the feed, and nothing committed before it does.
    let live = state.feed.subscribe();
    let now = state.store.last_event_seq().await?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|id| !id.is_empty());
    let start = match resume {
        // An id tunehook never gave (or a stale one) starts from now.
        Some(id) => state.store.event_seq(id).await?.unwrap_or(now),
        None => now,
    };
    let (tx, rx) = mpsc::channel(64);
    // Ends the stream: at shutdown, when the session that opened it ends,
    // or when the bearer token it was opened with is rotated.
    let ended = state.shutdown.child_token();
    match session {
        Some(session) => {
            tokio::spawn(end_with_session(state.clone(), session, ended.clone()));
        }
        None => {
            let rotated = state
                .credentials
                .api
                .rotated_from(state.credentials.api.current());
            let ended = ended.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = ended.cancelled() => {}
                    () = rotated => ended.cancel(),
                }
            });
        }
    }
    let pump = Pump {
        store: state.store.clone(),
        finetune_id,
        last: start,
        tx,
        shutdown: ended.clone(),
    };
    tokio::spawn(async move {
        let _permit = permit;
        pump.run(live).await;
        ended.cancel();
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// Ends a stream opened by a dashboard session (`ended`) once that session
/// has ended (signed out, expired, or its API token rotated), checking every
/// [`SESSION_CHECK`]; returns when the stream ends anyway.
async fn end_with_session(state: AppState, session: SessionAuth, ended: CancellationToken) {
    loop {
        tokio::select! {
            () = ended.cancelled() => return,
            () = tokio::time::sleep(SESSION_CHECK) => {}
        }
        if !auth::session_still_open(&state, &session.id_sha256).await {
            ended.cancel();
            return;
        }
    }
}

/// Moves events to one stream: first what the database holds after
/// `last`, then what the feed hands on, reading the database again
/// whenever the stream fell too far behind the feed.
struct Pump {
    store: Store,
    finetune_id: Option<String>,
    last: i64,
    tx: mpsc::Sender<Result<Event, Infallible>>,
    shutdown: CancellationToken,
}

impl Pump {
    async fn run(mut self, mut live: broadcast::Receiver<Arc<FeedEvent>>) {
        loop {
            if !self.catch_up().await {
                return;
            }
            loop {
                let next = tokio::select! {
                    () = self.shutdown.cancelled() => return,
                    () = self.tx.closed() => return,
                    next = live.recv() => next,
                };
                match next {
                    Ok(event) => {
                        if event.seq <= self.last || !self.wants(&event) {
                            continue;
                        }
                        if !self.send(&event).await {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    }

    fn wants(&self, event: &FeedEvent) -> bool {
        self.finetune_id
            .as_deref()
            .is_none_or(|id| id == event.finetune_id)
    }

    /// Sends what the database holds after `last`; false once the stream
    /// is gone.
    async fn catch_up(&mut self) -> bool {
        loop {
            let events = match self
                .store
                .events_after(self.last, self.finetune_id.as_deref(), CATCH_UP)
                .await
            {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read events for a stream; closing it");
                    return false;
                }
            };
            let full = events.len() == CATCH_UP as usize;
            for event in &events {
                if !self.send(event).await {
                    return false;
                }
            }
            if !full {
                return true;
            }
        }
    }

    async fn send(&mut self, event: &FeedEvent) -> bool {
        self.last = event.seq;
        let message = Event::default()
            .event(&event.kind)
            .id(&event.event_id)
            .data(&event.body);
        tokio::select! {
            () = self.shutdown.cancelled() => false,
            sent = self.tx.send(Ok(message)) => sent.is_ok(),
        }
    }
}
