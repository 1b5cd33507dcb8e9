//! `ingest`: a realistic mix of webhooks over many connections, against
//! tunehook (`synchronous = "full"`, one HTTP sink) and then, with the same
//! client and load, against a bare handler that reads the body and answers
//! 204: the ceiling.

use crate::{
    Args,
    harness::{EVENTS, Guard, Scratch, load, row, spawn_helper, start_tunehook},
};
use std::sync::Arc;

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let dir = Scratch::new("ingest")?;
    let (sink, sink_addr) = spawn_helper("--sink-server")?;
    let _sink = Guard(sink);
    let config = format!(
        "[database]\nsynchronous = \"full\"\n\n[[sinks]]\nname = \"noop\"\nkind = \"http\"\nurl = \"http://{sink_addr}/hook\"\n"
    );
    let tunehook = start_tunehook(dir.path(), Some(&config), &[])?;
    let bodies = Arc::new(workload(200_000));
    let ours = load(
        tunehook.webhook_url(),
        Arc::clone(&bodies),
        args.connections,
        args.seconds,
    )
    .await?;
    let (peak_kib, _) = tunehook.memory_kib();
    tunehook.kill();

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
