//! The benchmark harness: starts the release `tunehook` on 127.0.0.1 with a
//! fresh database and drives it over HTTP, reporting throughput, latency,
//! errors and tunehook's memory. Everything stays on the loopback interface.
//!
//!   cargo build --release
//!   cargo run --release --bin tunehook-bench -- ingest   [--connections 64] [--seconds 10] [--database postgres://…]
//!   cargo run --release --bin tunehook-bench -- delivery [--events 20000] [--concurrency 16] [--database postgres://…]
//!   cargo run --release --bin tunehook-bench -- reconcile [--jobs 10000]
//!   cargo run --release --bin tunehook-bench -- startup  [--receipts 1000000]
//!   cargo run --release --bin tunehook-bench -- metrics  [--deliveries 1000000] [--events 10000] [--scrapers 4]
//!   cargo run --release --bin tunehook-bench -- dashboard [--jobs 10000]
//!
//! `ingest` compares tunehook with a bare handler (the ceiling); `delivery`
//! drains an outbox into a sink answering 204 and into one failing every
//! other request; `reconcile` times passes over a fake Segmind list;
//! `startup` times exec to `/readyz` 200; `metrics` times scrapes on a
//! database with a million deliveries, and deliveries while scrapers run;
//! `dashboard` times the dashboard's pages over many jobs. BENCHMARKS.md has the figures.
//!
//! tunehook runs on SQLite, a file in a scratch folder. With `--database
//! postgres://USER@HOST:5432/postgres` (or `TUNEHOOK_BENCH_POSTGRES_URL`),
//! `ingest` and `delivery` also run it on PostgreSQL, each run on a
//! database of its own created on that server (`tunehook_bench_…`, dropped
//! afterwards; the URL's user needs `CREATEDB`), and print both side by side.

mod dashboard;
mod delivery;
mod harness;
mod ingest;
mod metrics;
mod postgres;
mod reconcile;
mod startup;

/// What to run, and how hard.
pub struct Args {
    pub mode: String,
    pub connections: usize,
    pub seconds: u64,
    pub receipts: u64,
    pub events: usize,
    pub jobs: usize,
    /// `delivery.concurrency` for the delivery benchmark.
    pub concurrency: usize,
    /// Delivered deliveries the metrics benchmark fills the database with.
    pub deliveries: u64,
    /// Clients scraping `/metrics` at once in the metrics benchmark.
    pub scrapers: usize,
    /// Whether `--events` was given (the metrics benchmark defaults to fewer).
    pub events_given: bool,
    /// A PostgreSQL server to run `ingest` and `delivery` on as well as
    /// SQLite (`--database`, or `TUNEHOOK_BENCH_POSTGRES_URL`).
    pub postgres: Option<String>,
    /// Whether `--database` was given on the command line.
    pub postgres_given: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        mode: "ingest".into(),
        connections: 64,
        seconds: 10,
        receipts: 1_000_000,
        events: 20_000,
        jobs: 10_000,
        concurrency: 16,
        deliveries: 1_000_000,
        scrapers: 4,
        events_given: false,
        postgres: std::env::var("TUNEHOOK_BENCH_POSTGRES_URL")
            .ok()
            .filter(|url| !url.is_empty()),
        postgres_given: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut number = |name: &str| -> anyhow::Result<u64> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow::anyhow!("{name} takes a positive number"))
        };
        match arg.as_str() {
            "--connections" => args.connections = number(&arg)?.max(1) as usize,
            "--seconds" => args.seconds = number(&arg)?.max(1),
            "--receipts" => args.receipts = number(&arg)?,
            "--events" => {
                args.events = number(&arg)?.max(5) as usize;
                args.events_given = true;
            }
            "--deliveries" => args.deliveries = number(&arg)?,
            "--scrapers" => args.scrapers = number(&arg)? as usize,
            "--jobs" => args.jobs = number(&arg)?.max(100) as usize,
            "--concurrency" => args.concurrency = number(&arg)?.max(1) as usize,
            "--database" => {
                let url = it.next().unwrap_or_default();
                anyhow::ensure!(
                    url.starts_with("postgres://") || url.starts_with("postgresql://"),
                    "--database takes a PostgreSQL URL, for example \
                     postgres://postgres@127.0.0.1:5432/postgres (SQLite always runs)"
                );
                args.postgres = Some(url);
                args.postgres_given = true;
            }
            "--ceiling-server" => args.mode = "ceiling-server".into(),
            "--sink-server" => args.mode = "sink-server".into(),
            flag if flag.starts_with("--") => anyhow::bail!("unknown option {flag}"),
            mode => args.mode = mode.to_owned(),
        }
    }
    Ok(args)
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    if args.postgres_given && !matches!(args.mode.as_str(), "ingest" | "delivery") {
        anyhow::bail!("--database applies to ingest and delivery; the others run on SQLite only");
    }
    let runtime = tokio::runtime::Runtime::new()?;
    match args.mode.as_str() {
        "ceiling-server" | "sink-server" => runtime.block_on(harness::serve_bare()),
        "ingest" => runtime.block_on(ingest::run(&args)),
        "delivery" => runtime.block_on(delivery::run(&args)),
        "reconcile" => runtime.block_on(reconcile::run(&args)),
        "startup" => runtime.block_on(startup::run(&args)),
        "dashboard" => runtime.block_on(dashboard::run(&args)),
        "metrics" => {
            let mut args = args;
            if !args.events_given {
                args.events = 10_000;
            }
            runtime.block_on(metrics::run(&args))
        }
        other => {
            anyhow::bail!(
                "unknown benchmark `{other}`: ingest, delivery, reconcile, startup, metrics or dashboard"
            )
        }
    }
}
