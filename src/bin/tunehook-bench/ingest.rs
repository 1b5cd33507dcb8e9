//! `ingest`: a realistic mix of webhooks over many connections, against
//! tunehook (`synchronous = "full"`, one HTTP sink) on SQLite, then on
//! PostgreSQL when `--database` names a server, and then, with the same
//! client and load, against a bare handler that reads the body and answers
//! 204: the ceiling. Each run also reads how much CPU tunehook, its writer
//! thread and the PostgreSQL server used, and how long the writer waited
//! for a CPU.

use crate::{
    Args,
    harness::{
        EVENTS, Guard, LoadResult, Scratch, load, machine_busy_seconds, process_cpu_seconds, row,
        spawn_helper, start_tunehook, thread_schedstat,
    },
    postgres::{PgDatabase, PgServer},
};
use std::sync::Arc;

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let server = match &args.postgres {
        Some(url) => Some(PgServer::open(url).await?),
        None => None,
    };
    let (sink, sink_addr) = spawn_helper("--sink-server")?;
    let sink_pid = sink.id();
    let _sink = Guard(sink);
    let config = format!(
        "[database]\nsynchronous = \"full\"\n\n[[sinks]]\nname = \"noop\"\nkind = \"http\"\nurl = \"http://{sink_addr}/hook\"\n"
    );
    let bodies = Arc::new(workload(200_000));
    let sqlite = measure(args, &config, &bodies, sink_pid, None).await?;
    let postgres = match &server {
        Some(server) => Some(measure(args, &config, &bodies, sink_pid, Some(server)).await?),
        None => None,
    };

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
        "ingest, {} connections, {} s each, synchronous=FULL, one HTTP sink",
        args.connections, args.seconds
    );
    if let Some(server) = &server {
        println!("{}", server.settings);
    }
    println!("\n| target | requests/s | p50 ms | p99 ms | max ms | errors |");
    println!("|---|---|---|---|---|---|");
    println!("{}", row("tunehook on SQLite", &sqlite.load));
    if let Some(postgres) = &postgres {
        println!("{}", row("tunehook on PostgreSQL", &postgres.load));
    }
    println!("{}", row("bare axum (ceiling)", &ceiling));
    println!();
    for (name, measured) in [("SQLite", Some(&sqlite)), ("PostgreSQL", postgres.as_ref())] {
        let Some(measured) = measured else { continue };
        println!(
            "tunehook on {name} / ceiling: {:.2}; peak RSS: {:.1} MiB",
            measured.load.rate() / ceiling.rate(),
            measured.peak_kib as f64 / 1024.0
        );
    }
    if let Some(postgres) = &postgres {
        println!(
            "PostgreSQL / SQLite: **{:.2}** (goal: at least 0.50)",
            postgres.load.rate() / sqlite.load.rate()
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "\nCPU seconds used during each {} s run ({cores} cores: {} CPU seconds in all; \
         \"anything else\" is the machine's busy time not accounted for by the others)\n",
        args.seconds,
        cores as u64 * args.seconds
    );
    println!(
        "| database | tunehook | its writer thread ran | writer waited for a CPU | PostgreSQL server | load generator and sink | anything else |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, measured) in [("SQLite", Some(&sqlite)), ("PostgreSQL", postgres.as_ref())] {
        let Some(m) = measured else { continue };
        let seconds = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
        println!(
            "| {name} | {:.2} | {} | {} | {} | {:.2} | {:.2} |",
            m.cpu,
            seconds(m.writer.map(|(ran, _)| ran)),
            seconds(m.writer.map(|(_, waited)| waited)),
            seconds(m.server_cpu),
            m.harness,
            (m.machine - m.cpu - m.server_cpu.unwrap_or(0.0) - m.harness).max(0.0),
        );
    }
    Ok(())
}

/// One run of tunehook under load, and what it used.
struct Measured {
    load: LoadResult,
    peak_kib: u64,
    /// CPU seconds tunehook used during the load.
    cpu: f64,
    /// Seconds its writer thread ran, and waited for a CPU, during the load.
    writer: Option<(f64, f64)>,
    /// CPU seconds the PostgreSQL server used during the load (when it
    /// runs on this machine).
    server_cpu: Option<f64>,
    /// CPU seconds the whole machine was busy during the load.
    machine: f64,
    /// CPU seconds the load generator (this process) and the sink used.
    harness: f64,
}

/// Starts tunehook on a fresh database (SQLite, or one of its own on
/// `server`), loads it for `--seconds` and stops it.
async fn measure(
    args: &Args,
    config: &str,
    bodies: &Arc<Vec<String>>,
    sink_pid: u32,
    server: Option<&PgServer>,
) -> anyhow::Result<Measured> {
    let dir = Scratch::new(if server.is_some() {
        "ingest-postgres"
    } else {
        "ingest"
    })?;
    let database = match server {
        Some(server) => Some(server.create().await?),
        None => None,
    };
    let env: Vec<_> = database.iter().map(PgDatabase::env).collect();
    let tunehook = start_tunehook(dir.path(), Some(config), &env)?;
    let pid = tunehook.child.id();
    let usage = || {
        (
            process_cpu_seconds(pid),
            thread_schedstat(pid, "tunehook-writer"),
            server.and_then(PgServer::cpu_seconds),
            machine_busy_seconds(),
            process_cpu_seconds(std::process::id()) + process_cpu_seconds(sink_pid),
        )
    };
    let before = usage();
    let measured = load(
        tunehook.webhook_url(),
        Arc::clone(bodies),
        args.connections,
        args.seconds,
    )
    .await?;
    let after = usage();
    let (peak_kib, _) = tunehook.memory_kib();
    tunehook.kill();
    drop(database);
    Ok(Measured {
        load: measured,
        peak_kib,
        cpu: after.0 - before.0,
        writer: after.1.zip(before.1).map(|(a, b)| (a.0 - b.0, a.1 - b.1)),
        server_cpu: after.2.zip(before.2).map(|(a, b)| a - b),
        machine: after.3 - before.3,
        harness: after.4 - before.4,
    })
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
