//! Webhooks confirmed with Segmind's API: a claim is applied only once
//! Segmind's details agree, and then with what the API says; a forged
//! webhook never reaches a sink; an unreachable API lets the claim through
//! at the deadline, recorded `unconfirmed`; pending claims survive a restart.

use crate::{
    fake_segmind::{API_KEY, FakeSegmind},
    fake_sink::FakeSink,
    helpers::{TestApp, spawn_app_with},
};
use serde_json::{Value, json};
use std::time::Duration;
use tunehook::config::{Secret, Settings, SinkSettings, Unconfirmed};

fn confirming(settings: &mut Settings, base_url: &str, timeout: Duration) {
    settings.segmind.base_url = base_url.to_owned();
    settings.segmind.api_key = Some(Secret::new(API_KEY));
    settings.segmind.timeout = Duration::from_secs(1);
    settings.reconcile.initial_delay = Duration::from_secs(3600);
    settings.reconcile.interval = Duration::from_secs(3600);
    settings.ingest.confirm_timeout = timeout;
    settings.delivery.retry_schedule = vec![Duration::from_millis(20); 3];
}

fn sink_to(sink: &FakeSink) -> SinkSettings {
    toml::from_str(&format!(
        "name = \"backend\"\nkind = \"http\"\nurl = \"{}\"",
        sink.url()
    ))
    .expect("a valid sink")
}

fn remote(id: &str, status: &str, model_url: Option<&str>) -> Value {
    json!({"id": id, "finetune_id": id, "name": "portrait", "status": status,
           "base_model": "FLUX_PRO", "trained_model_url": model_url})
}

/// The receipt with this id, once `done` accepts it.
async fn receipt_when(app: &TestApp, id: i64, done: impl Fn(&Value) -> bool) -> Value {
    let page = app
        .wait_for("/v1/receipts?limit=500", "the receipt to settle", |body| {
            body["receipts"]
                .as_array()
                .and_then(|rs| rs.iter().find(|r| r["id"] == id))
                .is_some_and(&done)
        })
        .await;
    page["receipts"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["id"] == id))
        .cloned()
        .unwrap_or_default()
}

async fn claim(app: &TestApp, body: Value) -> i64 {
    let (status, answer) = app.post(body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outcome"], "confirming", "{answer}");
    answer["receipt_id"].as_i64().expect("a receipt id")
}

#[tokio::test]
async fn a_forged_available_is_contradicted_and_never_reaches_a_sink() {
    let fake = FakeSegmind::start().await;
    fake.set_details("ft_forged", remote("ft_forged", "TRAINING", None));
    let sink = FakeSink::start().await;
    let app = spawn_app_with(|s| {
        confirming(s, &fake.url(), Duration::from_millis(1500));
        s.sinks = vec![sink_to(&sink)];
    })
    .await;

    let receipt = claim(
        &app,
        json!({"event": "AVAILABLE", "finetune_id": "ft_forged",
               "trained_model_url": "https://attacker.example/model.safetensors"}),
    )
    .await;
    let settled = receipt_when(&app, receipt, |r| r["confirmation"] != "pending").await;
    assert_eq!(settled["confirmation"], "contradicted", "{settled}");
    assert_eq!(settled["outcome"], "contradicted");

    // The job takes what Segmind says; the forged claim is nowhere.
    let job = app.job("ft_forged").await;
    assert_eq!(job["status"], "TRAINING");
    assert_eq!(job["trained_model_url"], Value::Null);
    let received = sink.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for delivery in sink.received() {
        let event = delivery.json();
        assert_ne!(event["data"]["status"], "AVAILABLE", "{event}");
        assert!(!delivery.body.windows(8).any(|w| w == b"attacker"));
    }
    assert_eq!(received[0].json()["data"]["status"], "TRAINING");
    assert!(!fake.calls("/finetune/request/details").is_empty());
}

#[tokio::test]
async fn a_genuine_webhook_is_confirmed_and_forwarded_with_the_apis_fields() {
    let fake = FakeSegmind::start().await;
    fake.set_details(
        "ft_real",
        remote(
            "ft_real",
            "AVAILABLE",
            Some("https://storage/genuine.safetensors"),
        ),
    );
    let sink = FakeSink::start().await;
    let app = spawn_app_with(|s| {
        confirming(s, &fake.url(), Duration::from_secs(30));
        s.sinks = vec![sink_to(&sink)];
    })
    .await;

    let receipt = claim(
        &app,
        json!({"event": "AVAILABLE", "finetune_id": "ft_real",
               "trained_model_url": "https://elsewhere/other.safetensors"}),
    )
    .await;
    let settled = receipt_when(&app, receipt, |r| r["confirmation"] != "pending").await;
    assert_eq!(settled["confirmation"], "confirmed", "{settled}");
    assert_eq!(settled["outcome"], "applied");

    let received = sink.wait_for(1).await;
    let event = received[0].json();
    assert_eq!(event["type"], "finetune.status_changed");
    assert_eq!(event["data"]["status"], "AVAILABLE");
    assert_eq!(event["data"]["source"], "webhook");
    assert_eq!(
        event["data"]["job"]["trained_model_url"],
        "https://storage/genuine.safetensors"
    );
    let job = app.job("ft_real").await;
    assert_eq!(job["transitions"][0]["receipt_id"], receipt);
    assert_eq!(job["base_model"], "FLUX_PRO");

    let (_, metrics) = app.get("/metrics").await;
    let text = metrics.as_str().unwrap_or_default();
    assert!(
        text.contains("tunehook_confirmations_total{result=\"confirmed\"}"),
        "{text}"
    );
}

/// A port with nothing listening.
async fn closed_port() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

#[tokio::test]
async fn with_segmind_unreachable_the_claim_is_applied_unconfirmed_at_the_deadline() {
    let down = closed_port().await;
    let sink = FakeSink::start().await;
    let app = spawn_app_with(|s| {
        confirming(s, &down, Duration::from_millis(1500));
        s.sinks = vec![sink_to(&sink)];
    })
    .await;
    let receipt = claim(
        &app,
        json!({"event": "AVAILABLE", "finetune_id": "ft_down", "name": "kept"}),
    )
    .await;
    assert!(
        app.get("/v1/jobs/ft_down").await.0 == 404,
        "not applied yet"
    );
    let settled = receipt_when(&app, receipt, |r| r["confirmation"] != "pending").await;
    assert_eq!(settled["confirmation"], "unconfirmed", "{settled}");
    assert_eq!(settled["outcome"], "applied");
    let job = app.job("ft_down").await;
    assert_eq!(job["status"], "AVAILABLE");
    assert_eq!(job["name"], "kept");
    assert_eq!(
        sink.wait_for(1).await[0].json()["data"]["status"],
        "AVAILABLE"
    );
}

#[tokio::test]
async fn with_unconfirmed_drop_an_unconfirmable_claim_is_left_unapplied() {
    let down = closed_port().await;
    let app = spawn_app_with(|s| {
        confirming(s, &down, Duration::from_millis(1000));
        s.ingest.unconfirmed = Unconfirmed::Drop;
    })
    .await;
    let receipt = claim(
        &app,
        json!({"event": "AVAILABLE", "finetune_id": "ft_dropped"}),
    )
    .await;
    let settled = receipt_when(&app, receipt, |r| r["confirmation"] != "pending").await;
    assert_eq!(settled["confirmation"], "unconfirmed", "{settled}");
    assert_eq!(settled["outcome"], "dropped");
    assert_eq!(app.get("/v1/jobs/ft_dropped").await.0, 404);
}

#[tokio::test]
async fn a_pending_confirmation_survives_a_restart() {
    let fake = FakeSegmind::start().await;
    let app = spawn_app_with(|s| confirming(s, &fake.url(), Duration::from_secs(60))).await;
    // Segmind does not know the job yet: the claim waits.
    let receipt = claim(
        &app,
        json!({"event": "TRAINING_COMPLETED", "finetune_id": "ft_restart"}),
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fake.calls("/finetune/request/details").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "Segmind was never asked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let app = app.restart().await;
    let (_, page) = app.get("/v1/receipts?limit=10").await;
    assert_eq!(page["receipts"][0]["confirmation"], "pending", "{page}");

    fake.set_details(
        "ft_restart",
        remote("ft_restart", "TRAINING_COMPLETED", None),
    );
    let settled = receipt_when(&app, receipt, |r| r["confirmation"] != "pending").await;
    assert_eq!(settled["confirmation"], "confirmed", "{settled}");
    assert_eq!(app.job("ft_restart").await["status"], "TRAINING_COMPLETED");
}

#[tokio::test]
async fn confirmation_is_off_without_an_api_key_and_webhooks_apply_at_once() {
    let app = spawn_app_with(|_| {}).await;
    let (_, answer) = app
        .post(json!({"event": "AVAILABLE", "finetune_id": "ft_plain"}))
        .await;
    assert_eq!(answer["outcome"], "applied");
    let (_, page) = app.get("/v1/receipts?limit=1").await;
    assert_eq!(page["receipts"][0]["confirmation"], Value::Null);
}
