//! `delivery`: how fast the outbox drains into an HTTP sink.
//!
//! A first tunehook, with no sink, takes every job's five events in order.
//! Then, for each sink behaviour, a copy of that database is started with
//! one HTTP sink, all the transitions are replayed to it at once
//! (`POST /v1/sinks/{name}/replay`), and the clock runs until the sink has
//! accepted every event. The sink also checks that each job's events arrive
//! in order. With `--database`, the same runs again on PostgreSQL: the
//! first tunehook fills a database of its own on that server, and each
//! scenario runs on a copy of it (`CREATE DATABASE … TEMPLATE`).

use crate::{
    Args,
    harness::{EVENTS, Scratch, call_api, post_all, start_tunehook},
    postgres::{PgDatabase, PgServer},
};
use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::post};
use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// How long one scenario may take before the harness gives up.
const LIMIT: Duration = Duration::from_secs(300);

/// The sink behaviours, in the order they run: label, and whether the
/// sink fails every other request.
const SINKS: [(&str, bool); 2] = [("answers 204", false), ("fails every other request", true)];

/// The database the first tunehook filled, which each scenario copies.
enum Seeded {
    /// A scratch folder holding `tunehook.db`.
    Sqlite(Scratch),
    /// A database on the server, copied with `CREATE DATABASE … TEMPLATE`.
    Postgres(PgDatabase),
}

/// How long the PostgreSQL scenario without statistics runs before its
/// rate is taken from what arrived by then (all would take far longer).
const UNANALYZED_LIMIT: Duration = Duration::from_secs(60);

/// How often the analyzed PostgreSQL scenarios analyze the outbox while
/// the replay fills it.
const ANALYZE_EVERY: Duration = Duration::from_millis(200);

/// What a scenario runs on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Sqlite,
    /// PostgreSQL. `analyzed`: the seeded database was analyzed before it
    /// was copied, and the outbox is analyzed every [`ANALYZE_EVERY`] while
    /// the replay fills it and once more after, so the planner knows about
    /// how many deliveries there are (as autovacuum, when it is on, would
    /// in time). Otherwise the outbox, empty until the replay fills it, has
    /// no statistics at all.
    Postgres {
        analyzed: bool,
    },
}

impl Target {
    fn label(self) -> &'static str {
        match self {
            Target::Sqlite => "SQLite",
            Target::Postgres { analyzed: true } => "PostgreSQL, analyzed",
            Target::Postgres { analyzed: false } => "PostgreSQL, never analyzed",
        }
    }
}

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let server = match &args.postgres {
        Some(url) => Some(PgServer::open(url).await?),
        None => None,
    };
    let jobs = args.events / EVENTS.len();
    let events = jobs * EVENTS.len();
    let mut results = Vec::new();
    let seeded = seed(jobs, None).await?;
    for (_, failing) in SINKS {
        let outcome = scenario(&seeded, Target::Sqlite, events, failing, args.concurrency).await?;
        results.push((Target::Sqlite, failing, outcome));
    }
    drop(seeded);
    if let Some(server) = &server {
        let seeded = seed(jobs, Some(server)).await?;
        // Copies of the seed as tunehook left it first, then of the seed
        // analyzed.
        let target = Target::Postgres { analyzed: false };
        let outcome = scenario(&seeded, target, events, false, args.concurrency).await?;
        let unanalyzed = (target, false, outcome);
        if let Seeded::Postgres(database) = &seeded {
            database.analyze().await?;
        }
        for (_, failing) in SINKS {
            let target = Target::Postgres { analyzed: true };
            let outcome = scenario(&seeded, target, events, failing, args.concurrency).await?;
            results.push((target, failing, outcome));
        }
        results.push(unanalyzed);
    }

    println!(
        "delivery of {events} events ({jobs} jobs), delivery.concurrency = {} (default 16)",
        args.concurrency
    );
    if let Some(server) = &server {
        println!("{}", server.settings);
    }
    let compared = server.is_some();
    println!(
        "\n|{} sink | events/s | seconds | of which the replay | requests to the sink | out of order | pending after | dead |",
        if compared { " database |" } else { "" }
    );
    println!(
        "|---|---|---|---|---|---|---|---|{}",
        if compared { "---|" } else { "" }
    );
    for (target, failing, result) in &results {
        let database = if compared {
            format!(" {} |", target.label())
        } else {
            String::new()
        };
        let seconds = if result.delivered < events {
            format!(
                "{:.2} (stopped: {} of {events} arrived)",
                result.elapsed.as_secs_f64(),
                result.delivered
            )
        } else {
            format!("{:.2}", result.elapsed.as_secs_f64())
        };
        println!(
            "|{database} {} | {:.0} | {seconds} | {:.2} | {} | {} | {} | {} |",
            label(*failing),
            result.rate(),
            result.replay.as_secs_f64(),
            result.requests,
            result.out_of_order,
            result.pending,
            result.dead
        );
    }
    if compared {
        println!();
        let rate = |target: Target, failing: bool| {
            results
                .iter()
                .find(|(t, f, _)| *t == target && *f == failing)
                .map(|(_, _, result)| result.rate())
        };
        for (target, failing, _) in results.iter().filter(|(t, ..)| *t != Target::Sqlite) {
            if let (Some(ours), Some(sqlite)) =
                (rate(*target, *failing), rate(Target::Sqlite, *failing))
            {
                println!(
                    "{} / SQLite, sink that {}: {:.2}",
                    target.label(),
                    label(*failing),
                    ours / sqlite
                );
            }
        }
    }
    Ok(())
}

fn label(failing: bool) -> &'static str {
    SINKS
        .iter()
        .find(|(_, f)| *f == failing)
        .map_or("", |(label, _)| label)
}

/// Starts a first tunehook with no sink (on SQLite, or on a database of its
/// own on `server`) and posts every job's five events to it, in order.
async fn seed(jobs: usize, server: Option<&PgServer>) -> anyhow::Result<Seeded> {
    let dir = Scratch::new("delivery-seed")?;
    let database = match server {
        Some(server) => Some(server.create().await?),
        None => None,
    };
    let env: Vec<_> = database.iter().map(PgDatabase::env).collect();
    let tunehook = start_tunehook(dir.path(), None, &env)?;
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
    Ok(match database {
        Some(database) => Seeded::Postgres(database),
        None => Seeded::Sqlite(dir),
    })
}

struct Outcome {
    elapsed: Duration,
    /// How long the replay call took (enqueuing every delivery).
    replay: Duration,
    /// Events the sink accepted by then (all, unless the scenario stopped
    /// at its limit).
    delivered: usize,
    requests: u64,
    out_of_order: u64,
    pending: i64,
    dead: i64,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64()
    }
}

async fn scenario(
    seeded: &Seeded,
    target: Target,
    events: usize,
    failing: bool,
    concurrency: usize,
) -> anyhow::Result<Outcome> {
    let dir = Scratch::new(if failing {
        "delivery-failing"
    } else {
        "delivery-ok"
    })?;
    // A copy of the seeded database, dropped at the end of the scenario.
    let mut copy = None;
    match seeded {
        Seeded::Sqlite(seed) => {
            for file in ["tunehook.db", "tunehook.db-wal"] {
                if seed.path().join(file).exists() {
                    std::fs::copy(seed.path().join(file), dir.path().join(file))?;
                }
            }
        }
        Seeded::Postgres(seed) => copy = Some(seed.copy().await?),
    }
    let env: Vec<_> = copy.iter().map(PgDatabase::env).collect();
    let sink = Sink::start(failing).await?;
    // Failed attempts come back after a short wait, many times before dead.
    let config = format!(
        "[delivery]\nconcurrency = {concurrency}\nretry_schedule = [{}]\n\n[[sinks]]\nname = \"bench\"\nkind = \"http\"\nurl = \"http://{}/hook\"\n",
        vec!["\"20ms\""; 20].join(", "),
        sink.addr
    );
    let tunehook = start_tunehook(dir.path(), Some(&config), &env)?;
    let client = reqwest::Client::new();
    let started = Instant::now();
    // Analyzed: the outbox's statistics follow it while the replay fills it.
    let analyzing = match (&copy, target) {
        (Some(copy), Target::Postgres { analyzed: true }) => {
            Some(copy.analyze_every("deliveries", ANALYZE_EVERY))
        }
        _ => None,
    };
    let replayed = call_api(
        &client,
        reqwest::Method::POST,
        &tunehook.api_url("/v1/sinks/bench/replay"),
        serde_json::json!({"since": "2000-01-01T00:00:00Z", "limit": 100_000}),
    )
    .await?;
    let replay = started.elapsed();
    anyhow::ensure!(
        replayed["enqueued"].as_u64() == Some(events as u64),
        "the replay enqueued {replayed} rather than {events} events"
    );
    if let (Some(analyzing), Some(copy)) = (analyzing, &copy) {
        analyzing.abort();
        copy.analyze().await?;
    }
    let limit = (target == Target::Postgres { analyzed: false }).then_some(UNANALYZED_LIMIT);
    while sink.delivered() < events {
        if limit.is_some_and(|limit| started.elapsed() >= limit) {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < LIMIT,
            "only {} of {events} events arrived in {LIMIT:?}",
            sink.delivered()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    let delivered = sink.delivered();
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
        replay,
        delivered,
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
