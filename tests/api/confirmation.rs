//! Webhooks confirmed with Segmind's API: a claim is applied only once
//! Segmind's details agree, and then with what the API says; a forged
//! webhook never reaches a sink; an unreachable API lets the claim through
//! at the deadline, recorded `unconfirmed`, without its URLs; pending
//! claims survive a restart. Seen from the attacker's side: forged webhooks
//! cost Segmind's API key no more calls than the configured pace, one call
//! for a job Segmind does not know, none beyond the pending cap, and none
//! before a 429's `Retry-After` is over.

use crate::{
    fake_segmind::{API_KEY, FakeSegmind, ListAnswer},
    fake_sink::FakeSink,
    helpers::{TestApp, spawn_app_with},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tunehook::config::{Confirm, Secret, Settings, SinkSettings, Unconfirmed};

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

/// Where a forger would send users.
const EVIL_MODEL: &str = "https://evil.example/model.safetensors";

/// A forged `AVAILABLE` carrying the forger's URLs in every URL field.
fn forged_available(id: &str) -> Value {
    json!({"event": "AVAILABLE", "finetune_id": id, "name": "portrait",
           "trained_model_url": EVIL_MODEL,
           "inference_api_url": "https://evil.example/infer",
           "cloud_storage_url": "https://evil.example/bucket"})
}

/// Polls `check` every 20 ms until it holds, for at most 15 s.
async fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_forged_model_url_applied_unconfirmed_in_a_429_storm_is_never_shown_nor_forwarded() {
    let fake = FakeSegmind::start().await;
    fake.throttle_details(Some(1));
    let sink = FakeSink::start().await;
    let app = spawn_app_with(|s| {
        confirming(s, &fake.url(), Duration::from_millis(1500));
        s.sinks = vec![sink_to(&sink)];
    })
    .await;

    let receipt = claim(&app, forged_available("ft_storm")).await;
    let settled = receipt_when(&app, receipt, |r| r["confirmation"] != "pending").await;
    assert_eq!(settled["confirmation"], "unconfirmed", "{settled}");
    assert_eq!(settled["outcome"], "applied");
    assert!(
        !fake.details_calls_for("ft_storm").is_empty(),
        "Segmind was asked"
    );

    // `ingest.unconfirmed = "apply"` takes the status on the webhook's word,
    // and its other fields; never a URL.
    let job = app.job("ft_storm").await;
    assert_eq!(job["status"], "AVAILABLE");
    assert_eq!(job["name"], "portrait");
    for url in [
        "trained_model_url",
        "inference_api_url",
        "cloud_storage_url",
    ] {
        assert_eq!(job[url], Value::Null, "{url}: {job}");
    }
    assert!(!job.to_string().contains("evil.example"), "{job}");

    // The deliveries were written with the settlement: every one of them
    // reaches the sink, and none carries the forger's URLs.
    let (_, deliveries) = app.get("/v1/deliveries?limit=100").await;
    let written = deliveries["deliveries"].as_array().map_or(0, Vec::len);
    assert!(written >= 1, "{deliveries}");
    let received = sink.wait_for(written).await;
    for delivery in &received {
        assert!(
            !delivery.body.windows(12).any(|w| w == b"evil.example"),
            "{}",
            delivery.json()
        );
    }
    let event = received[0].json();
    assert_eq!(event["data"]["status"], "AVAILABLE");
    assert_eq!(event["data"]["job"]["trained_model_url"], Value::Null);
}

#[tokio::test]
async fn with_confirmation_off_a_webhooks_urls_are_believed_as_they_come() {
    let app = spawn_app_with(|s| s.ingest.confirm = Some(Confirm::Off)).await;
    let (_, answer) = app.post(forged_available("ft_believed")).await;
    assert_eq!(answer["outcome"], "applied", "{answer}");
    assert_eq!(
        app.job("ft_believed").await["trained_model_url"],
        EVIL_MODEL
    );
}

#[tokio::test]
async fn two_hundred_forged_webhooks_with_unique_ids_cost_no_more_details_calls_than_the_pace_allows()
 {
    let fake = FakeSegmind::start().await;
    let app = spawn_app_with(|s| {
        confirming(s, &fake.url(), Duration::from_secs(30));
        s.segmind.max_requests_per_second = 5.0;
        s.segmind.burst = 5;
    })
    .await;

    let posts = (0..200).map(|n| app.post(forged_available(&format!("ft_forged_{n}"))));
    for (status, answer) in futures::future::join_all(posts).await {
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["outcome"], "confirming", "{answer}");
    }
    // Well past the burst: the bucket's pace decides from here on.
    until("15 details calls", || {
        fake.calls("/finetune/request/details").len() >= 15
    })
    .await;

    let calls = fake.calls("/finetune/request/details");
    // In any second, at most the burst and a second's worth of calls (one
    // more for the jitter of arrival times); the storm the review saw made
    // 628 calls in 10 s.
    for (i, first) in calls.iter().enumerate() {
        let within = calls[i..]
            .iter()
            .take_while(|c| c.at.duration_since(first.at) < Duration::from_secs(1))
            .count();
        assert!(within <= 5 + 5 + 1, "{within} calls within a second");
    }
    let span = calls[calls.len() - 1].at.duration_since(calls[0].at);
    assert!(
        calls.len() as f64 <= 5.0 + 5.0 * span.as_secs_f64() + 1.0,
        "{} calls in {span:?}",
        calls.len()
    );
    // Each forged id, unknown to Segmind, was asked about once.
    let mut ids: Vec<String> = calls
        .iter()
        .map(|c| c.body["request_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), calls.len(), "an id was asked about twice");
}

#[tokio::test]
async fn beyond_max_pending_confirmations_a_webhook_is_stored_but_its_claim_is_not_queued() {
    let fake = FakeSegmind::start().await;
    let app = spawn_app_with(|s| {
        confirming(s, &fake.url(), Duration::from_millis(1500));
        s.ingest.max_pending_confirmations = 3;
    })
    .await;

    let mut waiting = Vec::new();
    for n in 0..3 {
        waiting.push(claim(&app, forged_available(&format!("ft_queued_{n}"))).await);
    }
    for n in 0..2 {
        let id = format!("ft_turned_away_{n}");
        let (status, answer) = app.post(forged_available(&id)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["outcome"], "dropped", "{answer}");
        let receipt = answer["receipt_id"].as_i64().expect("stored");
        let kept = receipt_when(&app, receipt, |_| true).await;
        assert_eq!(kept["outcome"], "dropped", "{kept}");
        assert_eq!(kept["confirmation"], "unconfirmed", "{kept}");
        assert!(
            kept["error"]
                .as_str()
                .is_some_and(|e| e.contains("ingest.max_pending_confirmations")),
            "{kept}"
        );
    }

    // The claims that wait are asked about; the ones turned away never are,
    // and never applied on their word.
    until("the waiting claims to be asked about", || {
        (0..3).all(|n| !fake.details_calls_for(&format!("ft_queued_{n}")).is_empty())
    })
    .await;
    for receipt in &waiting {
        receipt_when(&app, *receipt, |r| r["confirmation"] != "pending").await;
    }
    for n in 0..2 {
        let id = format!("ft_turned_away_{n}");
        assert!(
            fake.details_calls_for(&id).is_empty(),
            "{id} was asked about"
        );
        assert_eq!(app.get(&format!("/v1/jobs/{id}")).await.0, 404);
    }
    let (_, metrics) = app.get("/metrics").await;
    let text = metrics.as_str().unwrap_or_default();
    assert!(
        text.contains("tunehook_confirmations_total{result=\"over_capacity\"} 2"),
        "{text}"
    );

    // The cap counts claims waiting now, not every claim ever made.
    claim(&app, forged_available("ft_after_the_rush")).await;
}

#[tokio::test]
async fn a_job_segmind_does_not_know_costs_one_details_call_however_many_webhooks_name_it() {
    let fake = FakeSegmind::start().await;
    let app = spawn_app_with(|s| confirming(s, &fake.url(), Duration::from_secs(2))).await;

    let mut receipts = vec![claim(&app, forged_available("ft_ghost")).await];
    until("Segmind to be asked about ft_ghost", || {
        !fake.details_calls_for("ft_ghost").is_empty()
    })
    .await;
    for event in ["QUEUED", "TRAINING", "TRAINING_COMPLETED", "AVAILABLE"]
        .iter()
        .cycle()
        .take(19)
    {
        receipts.push(claim(&app, json!({"event": event, "finetune_id": "ft_ghost"})).await);
    }

    for receipt in receipts {
        let settled = receipt_when(&app, receipt, |r| r["confirmation"] != "pending").await;
        assert_eq!(settled["confirmation"], "contradicted", "{settled}");
        assert_eq!(settled["outcome"], "contradicted");
    }
    assert_eq!(fake.details_calls_for("ft_ghost").len(), 1);
    assert_eq!(app.get("/v1/jobs/ft_ghost").await.0, 404);
}

#[tokio::test]
async fn after_a_429_with_retry_after_no_call_is_made_before_the_wait_is_over() {
    let fake = FakeSegmind::start().await;
    for id in ["ft_patient", "ft_after_the_list"] {
        fake.set_details(
            id,
            remote(id, "AVAILABLE", Some("https://storage/genuine.safetensors")),
        );
    }
    let app = spawn_app_with(|s| confirming(s, &fake.url(), Duration::from_secs(10))).await;

    // The confirmer's own 429: its next call waits the 2 s asked for,
    // though its first recheck would come after 0.5 s.
    fake.throttle_next_details(1, Some(2));
    let receipt = claim(&app, forged_available("ft_patient")).await;
    let settled = receipt_when(&app, receipt, |r| r["confirmation"] != "pending").await;
    assert_eq!(settled["confirmation"], "confirmed", "{settled}");
    assert_eq!(
        app.job("ft_patient").await["trained_model_url"],
        "https://storage/genuine.safetensors"
    );
    let calls = fake.details_calls_for("ft_patient");
    assert_eq!(calls.len(), 2, "one refused, one answered");
    let gap = calls[1].at.duration_since(calls[0].at);
    assert!(
        gap >= Duration::from_secs(2),
        "asked again {gap:?} after the 429"
    );

    // A 429 the reconciler met holds back the confirmer too: one key, one
    // wait. The pass answers once its 429 is read, so the wait has begun.
    fake.answer_list(vec![ListAnswer::Status {
        status: 429,
        body: r#"{"error": "Too many requests"}"#.into(),
        retry_after: Some(2),
    }]);
    let (status, answer) = app.post_api("/v1/reconcile", json!({})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{answer}");
    assert_eq!(answer["error"]["code"], "rate_limited", "{answer}");
    let listed = fake.calls("/finetune/request/list")[0].at;
    let receipt = claim(&app, forged_available("ft_after_the_list")).await;
    // Meanwhile another pass is refused without a call.
    let (status, answer) = app.post_api("/v1/reconcile", json!({})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{answer}");
    assert_eq!(answer["error"]["code"], "rate_limited", "{answer}");
    assert_eq!(fake.calls("/finetune/request/list").len(), 1);

    let settled = receipt_when(&app, receipt, |r| r["confirmation"] != "pending").await;
    assert_eq!(settled["confirmation"], "confirmed", "{settled}");
    for call in fake.details_calls_for("ft_after_the_list") {
        let after = call.at.duration_since(listed);
        assert!(
            after >= Duration::from_secs(2),
            "details asked {after:?} after the list's 429"
        );
    }
}

#[tokio::test]
async fn with_unconfirmed_hold_a_claim_waits_past_its_deadline_until_segmind_answers() {
    let fake = FakeSegmind::start().await;
    fake.set_details(
        "ft_held",
        remote(
            "ft_held",
            "AVAILABLE",
            Some("https://storage/genuine.safetensors"),
        ),
    );
    fake.throttle_details(Some(1));
    let timeout = Duration::from_secs(1);
    let app = spawn_app_with(|s| {
        confirming(s, &fake.url(), timeout);
        s.ingest.unconfirmed = Unconfirmed::Hold;
    })
    .await;

    let posted = Instant::now();
    let receipt = claim(&app, forged_available("ft_held")).await;
    // A call well after the deadline: the claim outlived the round that
    // would have applied or dropped it.
    until("a details call after the deadline", || {
        fake.details_calls_for("ft_held")
            .iter()
            .any(|c| c.at.duration_since(posted) >= timeout + Duration::from_millis(500))
    })
    .await;
    let (_, page) = app.get("/v1/receipts?limit=10").await;
    assert_eq!(page["receipts"][0]["id"], receipt);
    assert_eq!(page["receipts"][0]["confirmation"], "pending", "{page}");
    assert_eq!(app.get("/v1/jobs/ft_held").await.0, 404, "not applied");

    fake.stop_throttling();
    let settled = receipt_when(&app, receipt, |r| r["confirmation"] != "pending").await;
    assert_eq!(settled["confirmation"], "confirmed", "{settled}");
    assert_eq!(
        app.job("ft_held").await["trained_model_url"],
        "https://storage/genuine.safetensors"
    );
}
