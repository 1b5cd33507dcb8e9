//! `metrics`: what a `/metrics` scrape costs on a large database, and
//! whether scrapers slow deliveries.
//!
//! A first tunehook takes every job's five events in order. Then the
//! database is filled directly with SQL, in bulk, with `--deliveries`
//! delivered deliveries (one attempt each), as months of traffic would leave
//! it. The harness times the gauge queries `/metrics` ran before (a
//! `GROUP BY` over every delivery and attempt) and the ones it runs now
//! (indexes of what is not delivered). Then tunehook is started with an HTTP
//! sink and, per scenario, the jobs' events are replayed to the sink and the
//! clock runs until the sink has them all: without scrapers, then with
//! `--scrapers` clients each scraping every 100 ms (far more often than any
//! Prometheus does) with `metrics.cache = "0s"` (every scrape reads the
//! database) and with the default `5s`.

use crate::{
    Args,
    delivery::Sink,
    harness::{EVENTS, Scratch, call_api, post_all, start_tunehook},
};
use sqlx::{Connection, Executor, SqliteConnection};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

/// Each scraper's pace.
const SCRAPE_EVERY: Duration = Duration::from_millis(100);

/// How long one delivery scenario may take before the harness gives up.
const LIMIT: Duration = Duration::from_secs(300);

/// What `/metrics` ran before, per scrape.
const OLD_GAUGES: [&str; 3] = [
    "SELECT status, COUNT(*) FROM jobs GROUP BY status ORDER BY status",
    "SELECT sink, SUM(status = 'pending'), SUM(status = 'dead'), MAX(delivered_at)
     FROM deliveries GROUP BY sink",
    "SELECT d.sink, MAX(a.started_at) FROM delivery_attempts a
     JOIN deliveries d ON d.id = a.delivery_id
     WHERE a.error IS NOT NULL GROUP BY d.sink",
];

/// What it runs now (`Store::gauges`).
const NEW_GAUGES: [&str; 2] = [
    "SELECT status, COUNT(*) FROM jobs GROUP BY status ORDER BY status",
    "SELECT sink, SUM(status = 'pending'), SUM(status = 'dead')
     FROM deliveries WHERE status <> 'delivered' GROUP BY sink",
];

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let jobs = args.events / EVENTS.len();
    let events = jobs * EVENTS.len();
    let dir = Scratch::new("metrics")?;
    let tunehook = start_tunehook(dir.path(), None, &[])?;
    let mut per_connection = vec![Vec::new(); 32];
    for job in 0..jobs {
        for event in EVENTS {
            per_connection[job % 32].push(format!(
                r#"{{"event":"{event}","finetune_id":"m-{job}","name":"model-{job}"}}"#
            ));
        }
    }
    let posted = post_all(&tunehook.webhook_url(), per_connection).await?;
    anyhow::ensure!(posted.errors == 0, "{} webhooks failed", posted.errors);
    tunehook.kill();

    let url = format!("sqlite://{}", dir.path().join("tunehook.db").display());
    let filled = Instant::now();
    fill(&url, args.deliveries).await?;
    println!(
        "metrics: {events} events ({jobs} jobs), {} delivered deliveries and as many attempts \
         added in {:.1} s\n",
        args.deliveries,
        filled.elapsed().as_secs_f64()
    );

    let mut conn = SqliteConnection::connect(&format!("{url}?mode=ro")).await?;
    println!("| gauge queries, one scrape | median ms | max ms |");
    println!("|---|---|---|");
    for (label, queries) in [
        (
            "before: GROUP BY over every delivery and attempt",
            &OLD_GAUGES[..],
        ),
        ("now: indexes of what is not delivered", &NEW_GAUGES[..]),
    ] {
        let mut took = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            for sql in queries {
                conn.fetch_all(*sql).await?;
            }
            took.push(started.elapsed());
        }
        took.sort();
        println!(
            "| {label} | {:.2} | {:.2} |",
            took[2].as_secs_f64() * 1e3,
            took[4].as_secs_f64() * 1e3
        );
    }
    conn.close().await?;

    println!(
        "\n| scrapers | metrics.cache | events/s | seconds | scrapes | scrape p50 ms | scrape p99 ms |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (scrapers, cache) in [(0, "5s"), (args.scrapers, "0s"), (args.scrapers, "5s")] {
        let result = scenario(&dir, events, scrapers, cache).await?;
        println!(
            "| {scrapers} | {cache} | {:.0} | {:.2} | {} | {} | {} |",
            events as f64 / result.elapsed.as_secs_f64(),
            result.elapsed.as_secs_f64(),
            result.scrapes.len(),
            percentile(&result.scrapes, 0.50),
            percentile(&result.scrapes, 0.99),
        );
    }
    Ok(())
}

/// Adds `count` delivered deliveries of the stored events to the sink
/// `bench`, each with one attempt (one in a hundred failed first).
async fn fill(url: &str, count: u64) -> anyhow::Result<()> {
    let mut conn = SqliteConnection::connect(url).await?;
    conn.execute("PRAGMA synchronous = OFF").await?;
    conn.execute(
        "CREATE TEMP TABLE stored_events AS
         SELECT row_number() OVER (ORDER BY id) - 1 AS k, event_id, finetune_id FROM events",
    )
    .await?;
    conn.execute(
        sqlx::query(
            "INSERT INTO deliveries (sink, event_id, finetune_id, status, attempts, retry_step,
                 next_attempt_at, last_status_code, last_attempt_at, delivered_at, created_at)
             WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?1 - 1)
             SELECT 'bench', e.event_id, e.finetune_id, 'delivered', 1, 1,
                 '2025-06-01T00:00:00.000000Z', 204, '2025-06-01T00:00:00.000000Z',
                 '2025-06-01T00:00:00.000000Z', '2025-06-01T00:00:00.000000Z'
             FROM n JOIN stored_events e ON e.k = n.i % (SELECT COUNT(*) FROM stored_events)",
        )
        .bind(count as i64),
    )
    .await?;
    conn.execute(
        "INSERT INTO delivery_attempts (delivery_id, started_at, duration_ms, status_code, error)
         SELECT id, '2025-06-01T00:00:00.000000Z', 3,
             CASE WHEN id % 100 = 0 THEN 500 ELSE 204 END,
             CASE WHEN id % 100 = 0 THEN 'HTTP 500' END
         FROM deliveries",
    )
    .await?;
    // Closing checkpoints the WAL, as a stopped tunehook leaves it.
    conn.close().await?;
    Ok(())
}

struct Outcome {
    elapsed: Duration,
    /// Each scrape's latency, sorted.
    scrapes: Vec<Duration>,
}

async fn scenario(
    dir: &Scratch,
    events: usize,
    scrapers: usize,
    cache: &str,
) -> anyhow::Result<Outcome> {
    let sink = Sink::start(false).await?;
    let config = format!(
        "[metrics]\ncache = \"{cache}\"\n\n[[sinks]]\nname = \"bench\"\nkind = \"http\"\nurl = \"http://{}/hook\"\n",
        sink.addr
    );
    let tunehook = start_tunehook(dir.path(), Some(&config), &[])?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..scrapers {
        let (url, stop) = (tunehook.api_url("/metrics"), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut took = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let ok = match client.get(&url).send().await {
                    Ok(response) if response.status().is_success() => {
                        response.bytes().await.is_ok()
                    }
                    _ => false,
                };
                if ok {
                    took.push(started.elapsed());
                }
                tokio::time::sleep(SCRAPE_EVERY.saturating_sub(started.elapsed())).await;
            }
            took
        }));
    }
    let client = reqwest::Client::new();
    let started = Instant::now();
    let replayed = call_api(
        &client,
        reqwest::Method::POST,
        &tunehook.api_url("/v1/sinks/bench/replay"),
        serde_json::json!({"since": "2000-01-01T00:00:00Z"}),
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
    stop.store(true, Ordering::Relaxed);
    let mut scrapes = Vec::new();
    for task in tasks {
        scrapes.extend(task.await?);
    }
    scrapes.sort();
    tunehook.kill();
    Ok(Outcome { elapsed, scrapes })
}

fn percentile(sorted: &[Duration], p: f64) -> String {
    if sorted.is_empty() {
        return "-".into();
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    format!("{:.2}", sorted[i].as_secs_f64() * 1e3)
}
