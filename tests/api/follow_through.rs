//! Following a job through to the end: fields that arrive after the status
//! change that needed them reach every sink as `finetune.updated` events,
//! in order after that status change.

use crate::{
    fake_segmind::{API_KEY, FakeSegmind},
    fake_sink::FakeSink,
    helpers::{TestApp, spawn_app_with},
};
use serde_json::{Value, json};
use std::time::Duration;
use tunehook::config::{Secret, Settings, SinkSettings};

fn http_sink(name: &str, url: &str, extra: &str) -> SinkSettings {
    toml::from_str(&format!(
        "name = \"{name}\"\nkind = \"http\"\nurl = \"{url}\"\n{extra}"
    ))
    .expect("a valid sink")
}

fn fast_retries(settings: &mut Settings) {
    settings.delivery.retry_schedule = vec![Duration::from_millis(20); 3];
}

fn segmind(settings: &mut Settings, fake: &FakeSegmind) {
    settings.segmind.base_url = fake.url();
    settings.segmind.api_key = Some(Secret::new(API_KEY));
    settings.segmind.timeout = Duration::from_secs(2);
    settings.reconcile.initial_delay = Duration::from_secs(3600);
    settings.reconcile.interval = Duration::from_secs(3600);
}

fn types(received: &[crate::fake_sink::Received]) -> Vec<String> {
    received
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn available_without_urls(app: &TestApp, id: &str) {
    let (status, body) = app
        .post(json!({"event": "AVAILABLE", "finetune_id": id, "name": "portrait"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outcome"], "applied", "{body}");
}

#[tokio::test]
async fn a_late_url_from_a_duplicate_webhook_reaches_the_sink_after_the_status_change() {
    let sink = FakeSink::start().await;
    let url = sink.url();
    let app = spawn_app_with(|s| {
        fast_retries(s);
        s.sinks = vec![http_sink("backend", &url, "")];
    })
    .await;

    available_without_urls(&app, "ft_late").await;
    let (_, body) = app
        .post(json!({"event": "AVAILABLE", "finetune_id": "ft_late",
                     "inference_api_url": "https://api.segmind.com/v1/ft_late"}))
        .await;
    assert_eq!(body["outcome"], "duplicate", "{body}");

    let received = sink.wait_for(2).await;
    assert_eq!(
        types(&received),
        ["finetune.status_changed", "finetune.updated"]
    );
    let first = received[0].json();
    assert_eq!(first["data"]["job"]["inference_api_url"], Value::Null);
    let update = received[1].json();
    assert_eq!(update["data"]["finetune_id"], "ft_late");
    assert_eq!(update["data"]["status"], "AVAILABLE");
    assert_eq!(update["data"]["changed"], json!(["inference_api_url"]));
    assert_eq!(update["data"]["source"], "webhook");
    assert_eq!(
        update["data"]["job"]["inference_api_url"],
        "https://api.segmind.com/v1/ft_late"
    );
    assert_eq!(received[1].header("webhook-id"), update["id"]);
    assert_ne!(update["id"], first["id"]);

    let job = app.job("ft_late").await;
    assert_eq!(job["transitions"].as_array().map(Vec::len), Some(1));
    let updates = job["updates"].as_array().cloned().unwrap_or_default();
    assert_eq!(updates.len(), 1, "{job}");
    assert_eq!(updates[0]["id"], update["id"]);
    assert_eq!(updates[0]["changed"], json!(["inference_api_url"]));
    assert_eq!(updates[0]["deliveries"][0]["sink"], "backend");

    // The same fields again change nothing and send nothing.
    app.post(json!({"event": "AVAILABLE", "finetune_id": "ft_late",
                    "inference_api_url": "https://api.segmind.com/v1/ft_late"}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.received().len(), 2);
}

#[tokio::test]
async fn a_reconcile_pass_that_brings_the_url_sends_an_update_with_source_reconcile() {
    let fake = FakeSegmind::start().await;
    let sink = FakeSink::start().await;
    let url = sink.url();
    let app = spawn_app_with(|s| {
        segmind(s, &fake);
        fast_retries(s);
        s.ingest.confirm = Some(tunehook::config::Confirm::Off);
        s.sinks = vec![http_sink("backend", &url, "")];
    })
    .await;
    available_without_urls(&app, "ft_pass").await;
    fake.set_jobs(vec![
        json!({"id": "ft_pass", "finetune_id": "ft_pass", "status": "AVAILABLE",
        "name": "portrait", "inference_api_url": "https://api.segmind.com/v1/ft_pass",
        "trained_model_url": "https://storage/ft_pass.safetensors"}),
    ]);
    let (status, report) = app.post_api("/v1/reconcile", json!({})).await;
    assert_eq!(status, 200, "{report}");

    let received = sink.wait_for(2).await;
    assert_eq!(
        types(&received),
        ["finetune.status_changed", "finetune.updated"]
    );
    let update = received[1].json();
    assert_eq!(update["data"]["source"], "reconcile");
    assert_eq!(
        update["data"]["changed"],
        json!(["trained_model_url", "inference_api_url"])
    );

    // A second pass with nothing new sends nothing.
    app.post_api("/v1/reconcile", json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.received().len(), 2);
}

#[tokio::test]
async fn sinks_choose_their_event_types_and_updates_follow_the_status_filter() {
    let all = FakeSink::start().await;
    let status_only = FakeSink::start().await;
    let failures_only = FakeSink::start().await;
    let (a, b, c) = (all.url(), status_only.url(), failures_only.url());
    let app = spawn_app_with(|s| {
        fast_retries(s);
        s.sinks = vec![
            http_sink("all", &a, ""),
            http_sink("status", &b, "events = [\"finetune.status_changed\"]"),
            http_sink("failures", &c, "statuses = [\"FAILED\"]"),
        ];
    })
    .await;
    available_without_urls(&app, "ft_filter").await;
    app.post(
        json!({"event": "TRAINING_COMPLETED", "finetune_id": "ft_filter",
                    "trained_model_url": "https://storage/w.safetensors"}),
    )
    .await;

    assert_eq!(
        types(&all.wait_for(2).await),
        ["finetune.status_changed", "finetune.updated"]
    );
    assert_eq!(
        types(&status_only.wait_for(1).await),
        ["finetune.status_changed"]
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status_only.received().len(), 1);
    assert!(failures_only.received().is_empty());
}

#[tokio::test]
async fn an_unknown_event_type_in_a_sink_is_a_startup_error_naming_it() {
    let settings = Settings {
        sinks: vec![http_sink(
            "backend",
            "http://127.0.0.1:9/",
            "events = [\"finetune.deleted\"]",
        )],
        ..Settings::default()
    };
    let error = settings.validate().expect_err("refused");
    let message = error.to_string();
    assert!(message.contains("events"), "{message}");
    assert!(message.contains("finetune.deleted"), "{message}");
}
