//! `dashboard`: what the dashboard's pages cost on a database with many
//! jobs. `--jobs` jobs each take the five events in order (through the
//! webhook route, as Segmind would send them; one job in a hundred fails
//! instead), every event is delivered to a sink answering 204 and each
//! failure goes dead at a sink that refuses connections; then one
//! signed-in client asks for each
//! page again and again, one request at a time, and the harness reports
//! each page's latency and size. The searches are the costly ones: a part of
//! an id or a name is looked for in every job until a page is full, so a
//! search that matches nothing reads them all.

use crate::{
    Args,
    delivery::Sink,
    harness::{API_TOKEN, EVENTS, Scratch, post_all, start_tunehook},
};
use std::time::{Duration, Instant};

/// Requests per page.
const ROUNDS: usize = 50;

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let jobs = args.jobs;
    let dir = Scratch::new("dashboard")?;
    let sink = Sink::start(false).await?;
    let config = format!(
        "[[sinks]]\nname = \"archive\"\nkind = \"http\"\nurl = \"http://{}/hook\"\n\n\
         [[sinks]]\nname = \"refused\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9/hook\"\n\
         statuses = [\"FAILED\"]\nretry_schedule = []\n",
        sink.addr
    );
    let tunehook = start_tunehook(dir.path(), Some(&config), &[])?;
    let mut per_connection = vec![Vec::new(); 32];
    let mut webhooks = 0;
    for job in 0..jobs {
        let steps: &[&str] = if job % 100 == 0 {
            &EVENTS[..2]
        } else {
            &EVENTS
        };
        let last = if job % 100 == 0 { Some("FAILED") } else { None };
        for event in steps.iter().copied().chain(last) {
            per_connection[job % 32].push(format!(
                r#"{{"event":"{event}","finetune_id":"d-{job}","name":"model-{job}","base_model":"flux-dev"}}"#
            ));
            webhooks += 1;
        }
    }
    let posted = post_all(&tunehook.webhook_url(), per_connection).await?;
    anyhow::ensure!(posted.errors == 0, "{} webhooks failed", posted.errors);
    let started = Instant::now();
    while sink.delivered() < webhooks {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "only {} deliveries arrived",
            sink.delivered()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let origin = tunehook.api_url("");
    let signed_in = client
        .post(tunehook.api_url("/signin"))
        .header("origin", &origin)
        .form(&[("token", API_TOKEN), ("next", "/")])
        .send()
        .await?;
    let cookie = signed_in
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("signing in answered {}", signed_in.status()))?;

    println!(
        "dashboard: {jobs} jobs, {webhooks} webhooks, as many deliveries; {ROUNDS} requests per page, one at a time\n"
    );
    println!("| page | p50 ms | p99 ms | KiB |");
    println!("|---|---|---|---|");
    let middle = format!("/jobs/d-{}", jobs / 2);
    let named = format!("/?q=model-{}", jobs - 1);
    let pages = [
        ("/", "jobs, first page"),
        ("/?status=AVAILABLE", "jobs in one status"),
        (named.as_str(), "search that matches one job"),
        ("/?q=no-such-job", "search that matches none"),
        (middle.as_str(), "one job"),
        ("/deliveries", "deliveries, dead first"),
        ("/sinks", "sinks and status"),
    ];
    for (path, label) in pages {
        let mut took = Vec::with_capacity(ROUNDS);
        let mut bytes = 0;
        for _ in 0..ROUNDS {
            let started = Instant::now();
            let response = client
                .get(tunehook.api_url(path))
                .header("cookie", &cookie)
                .send()
                .await?;
            let status = response.status();
            let body = response.bytes().await?;
            anyhow::ensure!(status.is_success(), "{path} answered {status}");
            took.push(started.elapsed());
            bytes = body.len();
        }
        took.sort();
        println!(
            "| {label} (`{path}`) | {:.2} | {:.2} | {:.1} |",
            ms(took[ROUNDS / 2]),
            ms(took[(ROUNDS * 99).div_ceil(100) - 1]),
            bytes as f64 / 1024.0
        );
    }
    tunehook.kill();
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
