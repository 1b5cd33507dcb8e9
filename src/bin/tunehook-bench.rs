//! The benchmark harness: starts the release `tunehook` on 127.0.0.1 with a
//! fresh database and drives it over HTTP, reporting throughput, latency,
//! errors and tunehook's peak memory.
//!
//!   cargo build --release && cargo run --release --bin tunehook-bench -- ingest
//!   cargo run --release --bin tunehook-bench -- startup
//!
//! `ingest` posts a realistic mix (each job's events in order, plus 10%
//! duplicates and 5% out of order) over 64 connections with one HTTP sink
//! configured, then the same load, with the same client, against a bare
//! handler that reads the body and answers 204 (the ceiling), and reports
//! their ratio. `startup` times exec to `/readyz` 200 on an empty database
//! and on one with many receipts, and reports idle memory.

use axum::{Router, body::Bytes, http::StatusCode, routing::post};
use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

const EVENTS: [&str; 5] = [
    "DATA_PROCESSING",
    "TRAINING_INITIATED",
    "TRAINING_COMPLETED",
    "INFERENCE_QUEUED",
    "AVAILABLE",
];

/// A scratch folder, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(label: &str) -> anyhow::Result<Scratch> {
        let path =
            std::env::temp_dir().join(format!("tunehook-bench-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(Scratch(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Args {
    mode: String,
    connections: usize,
    seconds: u64,
    receipts: u64,
}

fn args() -> Args {
    let mut args = Args {
        mode: "ingest".into(),
        connections: 64,
        seconds: 10,
        receipts: 1_000_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--connections" => {
                args.connections = it.next().and_then(|v| v.parse().ok()).unwrap_or(64)
            }
            "--seconds" => args.seconds = it.next().and_then(|v| v.parse().ok()).unwrap_or(10),
            "--receipts" => {
                args.receipts = it.next().and_then(|v| v.parse().ok()).unwrap_or(1_000_000)
            }
            "--ceiling-server" => args.mode = "ceiling-server".into(),
            "--sink-server" => args.mode = "sink-server".into(),
            mode => args.mode = mode.to_owned(),
        }
    }
    args
}

fn main() -> anyhow::Result<()> {
    let args = args();
    let runtime = tokio::runtime::Runtime::new()?;
    match args.mode.as_str() {
        "ceiling-server" => runtime.block_on(serve_bare(StatusCode::NO_CONTENT)),
        "sink-server" => runtime.block_on(serve_bare(StatusCode::NO_CONTENT)),
        "ingest" => runtime.block_on(ingest(&args)),
        "startup" => runtime.block_on(startup(&args)),
        other => anyhow::bail!("unknown benchmark `{other}`: ingest or startup"),
    }
}

/// A bare axum server that reads the body and answers `status`; prints its
/// address on the first line of stdout.
async fn serve_bare(status: StatusCode) -> anyhow::Result<()> {
    let app = Router::new().fallback(post(move |_body: Bytes| async move { status }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me.with_file_name(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: run `cargo build --release` first",
        path.display()
    );
    Ok(path)
}

/// Starts this harness in a server mode; returns the child and its address.
fn spawn_helper(flag: &str) -> anyhow::Result<(Child, SocketAddr)> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg(flag)
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    Ok((child, line.trim().parse()?))
}

struct Tunehook {
    child: Child,
    addr: SocketAddr,
    ingest_token: String,
    started: Instant,
    ready_after: Duration,
}

/// A child process killed when dropped, so an error never leaves servers behind.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_tunehook(dir: &Path, extra_env: &[(&str, String)]) -> anyhow::Result<Tunehook> {
    let exe = sibling("tunehook")?;
    let started = Instant::now();
    let mut command = Command::new(exe);
    command
        .arg("serve")
        .current_dir(dir)
        .env_clear()
        .env("TUNEHOOK_LISTEN", "127.0.0.1:0")
        .env("TUNEHOOK_LOG_FORMAT", "json")
        .env("TUNEHOOK_LOG", "warn,tunehook::app=info")
        .env("TUNEHOOK_INGEST_TOKEN", "bench-token")
        .env("TUNEHOOK_API_TOKEN", "bench-api")
        .env(
            "TUNEHOOK_DATABASE_URL",
            format!("sqlite://{}/tunehook.db", dir.display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in extra_env {
        command.env(k, v);
    }
    let mut child = command.spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("tunehook exited with {status}");
        }
        let line = lines
            .next()
            .ok_or_else(|| anyhow::anyhow!("tunehook exited"))??;
        let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if event["message"] == "tunehook is listening" {
            break event["addr"].as_str().unwrap_or_default().parse()?;
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let ready_after = wait_ready(addr, started)?;
    Ok(Tunehook {
        child,
        addr,
        ingest_token: "bench-token".into(),
        started,
        ready_after,
    })
}

/// Polls `/readyz` over a plain TCP connection until it answers 200.
fn wait_ready(addr: SocketAddr, started: Instant) -> anyhow::Result<Duration> {
    use std::io::{Read, Write};
    loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(addr) {
            let _ =
                stream.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200") {
                return Ok(started.elapsed());
            }
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "never ready");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Peak and current resident memory of a process, in KiB (Linux).
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// The webhook bodies of `jobs` jobs: each job's events in order, then 10%
/// duplicates of earlier events and 5% swapped with their predecessor.
fn workload(jobs: usize) -> Vec<String> {
    let mut bodies = Vec::with_capacity(jobs * 6);
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for job in 0..jobs {
        let mut events: Vec<&str> = EVENTS.to_vec();
        if next() % 20 == 0 {
            let i = 1 + (next() % 4) as usize;
            events.swap(i - 1, i);
        }
        for (i, event) in events.iter().enumerate() {
            let body = format!(
                r#"{{"event":"{event}","finetune_id":"bench-{job}","name":"model-{job}","timestamp":"2026-01-01T00:00:0{i}Z"}}"#
            );
            bodies.push(body.clone());
            if next() % 10 == 0 {
                bodies.push(body);
            }
        }
    }
    bodies
}

struct LoadResult {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl LoadResult {
    fn percentile(&self, p: f64) -> Duration {
        if self.latencies_us.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        Duration::from_micros(self.latencies_us[i])
    }

    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

/// `connections` clients, each on its own keep-alive connection, posting
/// the bodies in turn (each job's events stay with one connection, in
/// order) for `seconds`.
async fn load(
    url: String,
    bodies: Arc<Vec<String>>,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<LoadResult> {
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..connections {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()?;
        let (url, bodies, stop, errors) = (
            url.clone(),
            Arc::clone(&bodies),
            Arc::clone(&stop),
            Arc::clone(&errors),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = worker;
            while !stop.load(Ordering::Relaxed) {
                let body = bodies[i % bodies.len()].clone();
                i += connections;
                let sent = Instant::now();
                match client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        latencies.push(sent.elapsed().as_micros() as u64);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies_us = Vec::new();
    for task in tasks {
        latencies_us.extend(task.await?);
    }
    let elapsed = started.elapsed();
    latencies_us.sort_unstable();
    Ok(LoadResult {
        requests: latencies_us.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        latencies_us,
    })
}

fn row(name: &str, r: &LoadResult) -> String {
    format!(
        "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
        r.rate(),
        r.percentile(0.50).as_secs_f64() * 1e3,
        r.percentile(0.99).as_secs_f64() * 1e3,
        r.latencies_us.last().copied().unwrap_or(0) as f64 / 1e3,
        r.errors
    )
}

async fn ingest(args: &Args) -> anyhow::Result<()> {
    let dir = Scratch::new("ingest")?;
    let (sink, sink_addr) = spawn_helper("--sink-server")?;
    let _sink = Guard(sink);
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nsynchronous = \"full\"\n\n[[sinks]]\nname = \"noop\"\nkind = \"http\"\nurl = \"http://{sink_addr}/hook\"\n"
        ),
    )?;
    let mut tunehook = start_tunehook(
        dir.path(),
        &[("TUNEHOOK_CONFIG", config.display().to_string())],
    )?;
    let bodies = Arc::new(workload(200_000));
    let url = format!(
        "http://{}/webhooks/segmind/{}",
        tunehook.addr, tunehook.ingest_token
    );
    let ours = load(url, Arc::clone(&bodies), args.connections, args.seconds).await?;
    let (peak_kib, _) = memory_kib(tunehook.child.id());
    let _ = tunehook.child.kill();
    let _ = tunehook.child.wait();

    let (ceiling_server, ceiling_addr) = spawn_helper("--ceiling-server")?;
    let _ceiling_server = Guard(ceiling_server);
    let ceiling = load(
        format!("http://{ceiling_addr}/"),
        bodies,
        args.connections,
        args.seconds,
    )
    .await?;

    println!(
        "ingest, {} connections, {} s each, synchronous=FULL, one HTTP sink\n",
        args.connections, args.seconds
    );
    println!("| target | requests/s | p50 ms | p99 ms | max ms | errors |");
    println!("|---|---|---|---|---|---|");
    println!("{}", row("tunehook", &ours));
    println!("{}", row("bare axum (ceiling)", &ceiling));
    println!(
        "\ntunehook / ceiling: {:.2}; tunehook peak RSS: {:.1} MiB",
        ours.rate() / ceiling.rate(),
        peak_kib as f64 / 1024.0
    );
    Ok(())
}

async fn startup(args: &Args) -> anyhow::Result<()> {
    let dir = Scratch::new("startup")?;
    let mut empty = start_tunehook(dir.path(), &[])?;
    let empty_ready = empty.ready_after;
    std::thread::sleep(Duration::from_millis(500));
    let (_, idle_kib) = memory_kib(empty.child.id());
    let _ = empty.child.kill();
    let _ = empty.child.wait();

    // Fill a database with receipts directly, then time a start on it.
    let db = dir.path().join("tunehook.db");
    let url = format!("sqlite://{}", db.display());
    {
        use sqlx::{Connection, Executor};
        let mut conn = sqlx::SqliteConnection::connect(&url).await?;
        conn.execute(
            sqlx::query(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
                 INSERT INTO receipts (received_at, body, body_sha256, headers, outcome)
                 SELECT '2026-01-01T00:00:00.000000Z', CAST('{\"event\":\"AVAILABLE\"}' AS BLOB), '', '{}', 'unrecognized' FROM n",
            )
            .bind(args.receipts as i64),
        )
        .await?;
    }
    let mut full = start_tunehook(dir.path(), &[])?;
    let full_ready = full.ready_after;
    let _ = full.child.kill();
    let _ = full.child.wait();
    let _ = (empty.started, full.started);

    println!("| database | exec to /readyz 200 |");
    println!("|---|---|");
    println!("| empty | {:.1} ms |", empty_ready.as_secs_f64() * 1e3);
    println!(
        "| {} receipts | {:.1} ms |",
        args.receipts,
        full_ready.as_secs_f64() * 1e3
    );
    println!("\nidle RSS: {:.1} MiB", idle_kib as f64 / 1024.0);
    Ok(())
}
