//! What every benchmark needs: scratch folders, child processes that never
//! outlive the harness, starting tunehook and waiting for it, memory
//! readings, and a closed-loop HTTP load generator.

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

/// A job's events, in the order Segmind sends them.
pub const EVENTS: [&str; 5] = [
    "DATA_PROCESSING",
    "TRAINING_INITIATED",
    "TRAINING_COMPLETED",
    "INFERENCE_QUEUED",
    "AVAILABLE",
];

/// A scratch folder, removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(label: &str) -> anyhow::Result<Scratch> {
        let path =
            std::env::temp_dir().join(format!("tunehook-bench-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(Scratch(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A bare axum server that reads the body and answers 204; prints its
/// address on the first line of stdout.
pub async fn serve_bare() -> anyhow::Result<()> {
    let app = Router::new().fallback(post(|_body: Bytes| async { StatusCode::NO_CONTENT }));
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
pub fn spawn_helper(flag: &str) -> anyhow::Result<(Child, SocketAddr)> {
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

pub struct Tunehook {
    pub child: Child,
    pub addr: SocketAddr,
    pub ready_after: Duration,
}

/// The tokens every benchmark run uses.
pub const INGEST_TOKEN: &str = "bench-token";
pub const API_TOKEN: &str = "bench-api";

impl Tunehook {
    pub fn webhook_url(&self) -> String {
        format!("http://{}/webhooks/segmind/{INGEST_TOKEN}", self.addr)
    }

    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Peak and current resident memory, in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        memory_kib(self.child.id())
    }

    /// Stops it the hard way: benchmarks do not measure shutdown.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Tunehook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed when dropped, so an error never leaves servers behind.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the release tunehook in `dir` with a database there, `config` as
/// its configuration file (when given) and `extra_env`; returns once
/// `/readyz` answers 200.
pub fn start_tunehook(
    dir: &Path,
    config: Option<&str>,
    extra_env: &[(&str, String)],
) -> anyhow::Result<Tunehook> {
    let exe = sibling("tunehook")?;
    let started = Instant::now();
    let mut command = Command::new(exe);
    command
        .arg("serve")
        .current_dir(dir)
        .env_clear()
        .env("TUNEHOOK_LISTEN", "127.0.0.1:0")
        .env("TUNEHOOK_LOG_FORMAT", "json")
        .env(
            "TUNEHOOK_LOG",
            std::env::var("TUNEHOOK_BENCH_LOG").unwrap_or_else(|_| "error".into())
                + ",tunehook::app=info",
        )
        .env("TUNEHOOK_INGEST_TOKEN", INGEST_TOKEN)
        .env("TUNEHOOK_API_TOKEN", API_TOKEN)
        .env(
            "TUNEHOOK_DATABASE_URL",
            format!("sqlite://{}/tunehook.db", dir.display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(config) = config {
        let file = dir.join("bench.toml");
        std::fs::write(&file, config)?;
        command.env("TUNEHOOK_CONFIG", file);
    }
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
    // Errors (or what TUNEHOOK_BENCH_LOG asks for) go on to stderr.
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            eprintln!("{line}");
        }
    });
    let ready_after = wait_ready(addr, started)?;
    Ok(Tunehook {
        child,
        addr,
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
pub fn memory_kib(pid: u32) -> (u64, u64) {
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

/// CPU seconds (user and system) a process has used, all its threads
/// together, from `/proc/<pid>/stat` (in clock ticks of 1/100 s, as Linux
/// reports them to programs); 0 when it cannot be read.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, after)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    // After the command: state, ppid, …; utime and stime are the 12th and
    // 13th fields from there.
    let ticks: u64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}

/// CPU seconds the whole machine has spent busy (all cores, any process),
/// from `/proc/stat`: what tunehook and the server used, and what anything
/// else running on the machine took from them.
pub fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …: busy is all but
    // idle and iowait (guest time is counted in user already).
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    busy as f64 / 100.0
}

/// How long the thread of `pid` named `name` ran on a CPU and waited for
/// one while runnable, in seconds (`/proc/<pid>/task/<tid>/schedstat`).
pub fn thread_schedstat(pid: u32, name: &str) -> Option<(f64, f64)> {
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = entry.ok()?.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let schedstat = std::fs::read_to_string(path.join("schedstat")).ok()?;
        let mut fields = schedstat.split_whitespace().map(|v| v.parse::<u64>().ok());
        let ran = fields.next()??;
        let waited = fields.next()??;
        return Some((ran as f64 / 1e9, waited as f64 / 1e9));
    }
    None
}

pub struct LoadResult {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latencies_us: Vec<u64>,
}

impl LoadResult {
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies_us.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        Duration::from_micros(self.latencies_us[i])
    }

    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

/// `connections` clients, each on its own keep-alive connection, posting
/// the bodies in turn (each job's events stay with one connection, in
/// order) for `seconds`.
pub async fn load(
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
                match post_one(&client, &url, body).await {
                    Some(micros) => latencies.push(micros),
                    None => {
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

/// Posts one JSON body; answers its latency in microseconds, or `None`
/// when it failed or got no 2xx.
async fn post_one(client: &reqwest::Client, url: &str, body: String) -> Option<u64> {
    let sent = Instant::now();
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .ok()
        .filter(|r| r.status().is_success())?;
    let _ = response.bytes().await;
    Some(sent.elapsed().as_micros() as u64)
}

/// A markdown table row: rate, p50, p99, max, errors.
pub fn row(name: &str, r: &LoadResult) -> String {
    format!(
        "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
        r.rate(),
        r.percentile(0.50).as_secs_f64() * 1e3,
        r.percentile(0.99).as_secs_f64() * 1e3,
        r.latencies_us.last().copied().unwrap_or(0) as f64 / 1e3,
        r.errors
    )
}

/// Posts every body once: each connection its own list, in order (so a
/// job's events keep their order when a job stays on one connection).
pub async fn post_all(url: &str, per_connection: Vec<Vec<String>>) -> anyhow::Result<LoadResult> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for bodies in per_connection {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()?;
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut errors) = (Vec::with_capacity(bodies.len()), 0u64);
            for body in bodies {
                match post_one(&client, &url, body).await {
                    Some(micros) => latencies.push(micros),
                    None => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let (mut latencies_us, mut errors) = (Vec::new(), 0);
    for task in tasks {
        let (latencies, failed) = task.await?;
        latencies_us.extend(latencies);
        errors += failed;
    }
    latencies_us.sort_unstable();
    Ok(LoadResult {
        requests: latencies_us.len() as u64,
        errors,
        elapsed: started.elapsed(),
        latencies_us,
    })
}

/// Calls tunehook's API with the benchmark's API token; answers the JSON.
pub async fn call_api(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let response = client
        .request(method, url)
        .bearer_auth(API_TOKEN)
        .json(&body)
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    anyhow::ensure!(status.is_success(), "{url} answered {status}: {text}");
    Ok(serde_json::from_str(&text)?)
}
