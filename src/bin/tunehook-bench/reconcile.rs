//! `reconcile`: passes over a fake Segmind list of many jobs.
//!
//! A local server plays Segmind's list endpoint. The first pass learns every
//! job; then 1% of the unfinished jobs move on and the second pass, the one
//! the goal is about, records just those; a third pass finds nothing new.
//! Each pass is run with `POST /v1/reconcile`, which answers when the pass
//! is committed.

use crate::{
    Args,
    harness::{Scratch, call_api, start_tunehook},
};
use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};
use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Instant,
};

const API_KEY: &str = "SG_bench_key";

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let jobs = args.jobs;
    let segmind = FakeList::start(listing(jobs, false)).await?;
    let dir = Scratch::new("reconcile")?;
    let config = "[reconcile]\ninterval = \"1h\"\ninitial_delay = \"1h\"\n";
    let tunehook = start_tunehook(
        dir.path(),
        Some(config),
        &[
            ("SEGMIND_API_KEY", API_KEY.to_owned()),
            ("SEGMIND_BASE_URL", format!("http://{}", segmind.addr)),
        ],
    )?;
    let client = reqwest::Client::new();
    let url = tunehook.api_url("/v1/reconcile");
    let pass = || async {
        let started = Instant::now();
        let report = call_api(&client, reqwest::Method::POST, &url, json!({})).await?;
        anyhow::Ok((started.elapsed(), report))
    };

    let (first, first_report) = pass().await?;
    segmind.set(listing(jobs, true));
    let (second, second_report) = pass().await?;
    let (third, third_report) = pass().await?;
    let (peak_kib, _) = tunehook.memory_kib();

    let changed = jobs.div_ceil(100) as u64;
    anyhow::ensure!(
        second_report["transitions"].as_u64() == Some(changed),
        "the second pass recorded {} rather than {changed} transitions",
        second_report["transitions"]
    );
    println!("reconcile over a list of {jobs} jobs (half finished, half in progress)\n");
    println!("| pass | seconds | jobs listed | transitions |");
    println!("|---|---|---|---|");
    for (label, took, report) in [
        ("first (every job new)", first, &first_report),
        ("second (1% changed)", second, &second_report),
        ("third (nothing changed)", third, &third_report),
    ] {
        println!(
            "| {label} | {:.3} | {} | {} |",
            took.as_secs_f64(),
            report["jobs_listed"],
            report["transitions"]
        );
    }
    println!("\ntunehook peak RSS: {:.1} MiB", peak_kib as f64 / 1024.0);
    Ok(())
}

/// The list as Segmind would answer it: even jobs finished with their
/// URLs, odd jobs training; with `moved`, one job in a hundred (odd ones)
/// has finished training.
fn listing(jobs: usize, moved: bool) -> Bytes {
    let list: Vec<Value> = (0..jobs)
        .map(|i| {
            let id = format!("r-{i:06}");
            let mut job = json!({
                "id": id, "finetune_id": id, "name": format!("model-{i}"),
                "base_model": "flux-dev", "created_ts": "2026-01-01T00:00:00Z",
            });
            let status = if i % 2 == 0 {
                job["trained_model_url"] =
                    json!(format!("https://models.example/{id}.safetensors"));
                "AVAILABLE"
            } else if moved && i % 100 == 1 {
                "TRAINING_COMPLETED"
            } else {
                "TRAINING_INITIATED"
            };
            job["status"] = json!(status);
            job
        })
        .collect();
    Bytes::from(serde_json::to_vec(&list).unwrap_or_default())
}

/// A local server playing Segmind's list endpoint.
struct FakeList {
    addr: SocketAddr,
    body: Arc<RwLock<Bytes>>,
}

impl FakeList {
    async fn start(body: Bytes) -> anyhow::Result<FakeList> {
        let body = Arc::new(RwLock::new(body));
        let app = Router::new()
            .route("/finetune/request/list", get(list))
            .fallback(|| async { StatusCode::NOT_FOUND })
            .with_state(Arc::clone(&body));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(FakeList { addr, body })
    }

    fn set(&self, body: Bytes) {
        if let Ok(mut current) = self.body.write() {
            *current = body;
        }
    }
}

async fn list(State(body): State<Arc<RwLock<Bytes>>>, headers: HeaderMap) -> Response {
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(API_KEY) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let body = body.read().map(|b| b.clone()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}
