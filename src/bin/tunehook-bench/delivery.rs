//! `delivery`: how fast the outbox drains into an HTTP sink.
//!
//! A first tunehook, with no sink, takes every job's five events in order.
//! Then, for each sink behaviour, a copy of that database is started with
//! one HTTP sink, all the transitions are replayed to it at once
//! (`POST /v1/sinks/{name}/replay`), and the clock runs until the sink has
//! accepted every event. The sink also checks that each job's events arrive
//! in order.

use crate::{
    Args,
    harness::{EVENTS, Scratch, call_api, post_all, start_tunehook},
};
use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::post};
use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// How long one scenario may take before the harness gives up.
const LIMIT: Duration = Duration::from_secs(300);

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let jobs = args.events / EVENTS.len();
    let seed = Scratch::new("delivery-seed")?;
    let tunehook = start_tunehook(seed.path(), None, &[])?;
    let mut per_connection = vec![Vec::new(); 32];
    for job in 0..jobs {
        for event in EVENTS {
            per_connection[job % 32].push(format!(
                r#"{{"event":"{event}","finetune_id":"d-{job}","name":"model-{job}"}}"#
            ));
        }
    }
    let posted = post_all(&tunehook.webhook_url(), per_connection).await?;
    anyhow::ensure!(posted.errors == 0, "{} webhooks failed", posted.errors);
    tunehook.kill();
    let events = jobs * EVENTS.len();

    println!(
        "delivery of {events} events ({jobs} jobs), delivery.concurrency = {} (default 16)\n",
        args.concurrency
    );
    println!(
        "| sink | events/s | seconds | requests to the sink | out of order | pending after | dead |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (label, failing) in [("answers 204", false), ("fails every other request", true)] {
        let result = scenario(seed.path(), events, failing, args.concurrency).await?;
        println!(
            "| {label} | {:.0} | {:.2} | {} | {} | {} | {} |",
            events as f64 / result.elapsed.as_secs_f64(),
            result.elapsed.as_secs_f64(),
            result.requests,
            result.out_of_order,
            result.pending,
            result.dead
        );
    }
    Ok(())
}

struct Outcome {
    elapsed: Duration,
    requests: u64,
    out_of_order: u64,
    pending: i64,
    dead: i64,
}

async fn scenario(
    seeded: &Path,
    events: usize,
    failing: bool,
    concurrency: usize,
) -> anyhow::Result<Outcome> {
    let dir = Scratch::new(if failing {
        "delivery-failing"
    } else {
        "delivery-ok"
    })?;
    for file in ["tunehook.db", "tunehook.db-wal"] {
        if seeded.join(file).exists() {
            std::fs::copy(seeded.join(file), dir.path().join(file))?;
        }
    }
    let sink = Sink::start(failing).await?;
    // Failed attempts come back after a short wait, many times before dead.
    let config = format!(
        "[delivery]\nconcurrency = {concurrency}\nretry_schedule = [{}]\n\n[[sinks]]\nname = \"bench\"\nkind = \"http\"\nurl = \"http://{}/hook\"\n",
        vec!["\"20ms\""; 20].join(", "),
        sink.addr
    );
    let tunehook = start_tunehook(dir.path(), Some(&config), &[])?;
    let client = reqwest::Client::new();
    let started = Instant::now();
    let replayed = call_api(
        &client,
        reqwest::Method::POST,
        &tunehook.api_url("/v1/sinks/bench/replay"),
        serde_json::json!({"since": "2000-01-01T00:00:00Z", "limit": 100_000}),
    )
    .await?;
    anyhow::ensure!(
        replayed["enqueued"].as_u64() == Some(events as u64),
        "the replay enqueued {replayed} rather than {events} events"
    );
    while sink.delivered() < events {
        anyhow::ensure!(
            started.elapsed() < LIMIT,
            "only {} of {events} events arrived in {LIMIT:?}",
            sink.delivered()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    // Let the last attempts be recorded before reading the outbox.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sinks = call_api(
        &client,
        reqwest::Method::GET,
        &tunehook.api_url("/v1/sinks"),
        serde_json::Value::Null,
    )
    .await?;
    let health = &sinks["sinks"][0];
    Ok(Outcome {
        elapsed,
        requests: sink.state.requests.load(Ordering::Relaxed),
        out_of_order: sink.state.out_of_order.load(Ordering::Relaxed),
        pending: health["pending"].as_i64().unwrap_or(-1),
        dead: health["dead"].as_i64().unwrap_or(-1),
    })
}

#[derive(Default)]
struct SinkState {
    failing: bool,
    requests: AtomicU64,
    out_of_order: AtomicU64,
    /// Per job, the index in `EVENTS` of the last event accepted.
    last: Mutex<HashMap<String, usize>>,
    accepted: Mutex<HashSet<String>>,
}

/// A local HTTP sink that records what it accepts.
pub struct Sink {
    pub addr: SocketAddr,
    state: Arc<SinkState>,
}

impl Sink {
    pub async fn start(failing: bool) -> anyhow::Result<Sink> {
        let state = Arc::new(SinkState {
            failing,
            ..SinkState::default()
        });
        let app = Router::new()
            .route("/hook", post(accept))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Sink { addr, state })
    }

    pub fn delivered(&self) -> usize {
        self.state.accepted.lock().map(|a| a.len()).unwrap_or(0)
    }
}

async fn accept(State(state): State<Arc<SinkState>>, body: Bytes) -> StatusCode {
    let n = state.requests.fetch_add(1, Ordering::Relaxed);
    if state.failing && n % 2 == 1 {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let job = event["data"]["finetune_id"].as_str().unwrap_or_default();
    let status = event["data"]["status"].as_str().unwrap_or_default();
    let rank = EVENTS.iter().position(|e| *e == status).unwrap_or(0);
    if let Ok(mut last) = state.last.lock() {
        let seen = last.entry(job.to_owned()).or_insert(0);
        if rank < *seen {
            state.out_of_order.fetch_add(1, Ordering::Relaxed);
        }
        *seen = rank.max(*seen);
    }
    if let Ok(mut accepted) = state.accepted.lock() {
        accepted.insert(event["id"].as_str().unwrap_or_default().to_owned());
    }
    StatusCode::NO_CONTENT
}
