//! Bounded work and history: receipt lists that carry only the start of
//! each body, a memory bound on webhooks waiting for the writer, requests
//! whose client left before the writer reached them, replays in pages that
//! never queue an event twice, and retention.

use crate::{
    fake_sink::FakeSink,
    helpers::{TestApp, lock_database, spawn_app, spawn_app_with},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use tunehook::config::SinkSettings;

/// A webhook body of about `size` bytes for job `id`.
fn padded_webhook(id: &str, size: usize) -> String {
    json!({"event": "QUEUED", "finetune_id": id, "padding": "x".repeat(size)}).to_string()
}

fn http_sink(name: &str, url: &str) -> SinkSettings {
    toml::from_str(&format!(
        "name = \"{name}\"\nkind = \"http\"\nurl = \"{url}\""
    ))
    .expect("a valid sink")
}

#[tokio::test]
async fn a_receipt_list_cuts_bodies_at_4_kib_and_one_receipt_has_its_whole_body() {
    let app = spawn_app().await;
    let big = padded_webhook("big", 10_000);
    let (status, stored) = app.post_raw(big.clone()).await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    app.post(json!({"event": "QUEUED", "finetune_id": "small"}))
        .await;

    let receipts = app.receipts().await;
    let small = &receipts[0];
    assert_eq!(small["body_truncated"], false);
    assert_eq!(
        small["body"]["finetune_id"], "small",
        "a short body is JSON"
    );
    let listed = &receipts[1];
    assert_eq!(listed["body_truncated"], true);
    assert_eq!(listed["body_bytes"], big.len());
    let start = listed["body"].as_str().expect("a cut body is text");
    assert_eq!(start.len(), 4096);
    assert!(big.starts_with(start));

    let (status, whole) = app
        .get(&format!("/v1/receipts/{}", stored["receipt_id"]))
        .await;
    assert_eq!(status, StatusCode::OK, "{whole}");
    assert_eq!(whole["body_truncated"], false);
    assert_eq!(whole["body_bytes"], big.len());
    assert_eq!(
        whole["body"],
        serde_json::from_str::<Value>(&big).expect("json")
    );
    assert_eq!(whole["id"], stored["receipt_id"]);

    for unknown in ["999999", "not-a-number"] {
        let (status, body) = app.get(&format!("/v1/receipts/{unknown}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{unknown}: {body}");
        assert_eq!(body["error"]["code"], "not_found");
    }
}

#[tokio::test]
async fn past_the_byte_bound_on_webhooks_waiting_for_the_writer_the_answer_is_a_quick_503() {
    // Room for one 2 KiB body waiting, not two.
    let app = spawn_app_with(|s| {
        s.server.max_pending_webhook_bytes = 3 * 1024;
        s.database.busy_timeout = Duration::from_secs(30);
    })
    .await;
    let blocker = lock_database(&app).await;

    // Two webhooks at once: the first to take its bytes waits for the
    // writer (held up by the lock); the other is refused at once.
    let post = |id: &'static str| {
        let request = app
            .client
            .post(app.webhook_url())
            .body(padded_webhook(id, 2000))
            .send();
        async move { (id, request.await.expect("the webhook request completes")) }
    };
    let mut first = Box::pin(post("bytes-a"));
    let mut second = Box::pin(post("bytes-b"));
    let (refused_id, refused, waiting) = tokio::select! {
        (id, response) = &mut first => (id, response, second),
        (id, response) = &mut second => (id, response, first),
    };
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unavailable");

    // Once the writer can write, the waiting one is stored and its bytes
    // are given back: the refused one goes through when sent again.
    drop(blocker);
    let (stored_id, stored) = waiting.await;
    assert_eq!(stored.status(), StatusCode::OK, "{stored_id}");
    let (status, _) = app.post_raw(padded_webhook(refused_id, 2000)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.receipts().await.len(), 2);
}

#[tokio::test]
async fn a_webhook_whose_client_was_answered_408_before_the_writer_reached_it_is_not_stored() {
    let app = spawn_app_with(|s| {
        s.server.request_timeout = Duration::from_millis(300);
        s.database.busy_timeout = Duration::from_secs(30);
    })
    .await;
    let blocker = lock_database(&app).await;
    // The first webhook's batch has begun: the writer waits on the lock
    // inside it. It is stored once the lock goes, though its client was
    // told 408 (never a 2xx).
    let (status, _) = app
        .post(json!({"event": "QUEUED", "finetune_id": "begun"}))
        .await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    // The second one is still queued behind it when its handler gives up.
    let (status, _) = app
        .post(json!({"event": "QUEUED", "finetune_id": "abandoned"}))
        .await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    drop(blocker);

    let (status, body) = app
        .post(json!({"event": "QUEUED", "finetune_id": "after"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stored: Vec<String> = app
        .receipts()
        .await
        .iter()
        .filter_map(|r| r["finetune_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(stored, vec!["after", "begun"], "newest first");
    let (status, _) = app.get("/v1/jobs/abandoned").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// An app whose sink `late` (answering 500, retried only after an hour, so
/// what is queued stays pending) is added after `events` were received.
async fn app_with_a_late_sink(fake: &FakeSink, events: &[(&str, &str)]) -> TestApp {
    let app = spawn_app().await;
    for (event, id) in events {
        let (status, body) = app.post(json!({"event": event, "finetune_id": id})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let url = fake.url();
    app.restart_with(|s| {
        s.delivery.retry_schedule = vec![Duration::from_secs(3600)];
        s.sinks = vec![http_sink("late", &url)];
    })
    .await
}

async fn pending_to_late(app: &TestApp) -> Vec<String> {
    let (status, body) = app
        .get("/v1/deliveries?sink=late&status=pending&limit=500")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut events: Vec<String> = body["deliveries"]
        .as_array()
        .map(|ds| {
            ds.iter()
                .filter_map(|d| d["event_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    events.sort();
    events
}

#[tokio::test]
async fn a_replay_sent_again_enqueues_nothing_the_second_time() {
    let fake = FakeSink::answering(|_, _| crate::fake_sink::FAIL).await;
    let app = app_with_a_late_sink(
        &fake,
        &[
            ("QUEUED", "again-1"),
            ("TRAINING", "again-1"),
            ("QUEUED", "again-2"),
        ],
    )
    .await;
    let replay = json!({"since": "2000-01-01T00:00:00Z"});
    let (status, first) = app.post_api("/v1/sinks/late/replay", replay.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(
        first,
        json!({"enqueued": 3, "skipped": 0, "next_since": null})
    );
    let queued = pending_to_late(&app).await;
    assert_eq!(queued.len(), 3);

    // A client that did not see the answer sends the same request again.
    let (status, second) = app.post_api("/v1/sinks/late/replay", replay).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(
        second,
        json!({"enqueued": 0, "skipped": 3, "next_since": null})
    );
    assert_eq!(
        pending_to_late(&app).await,
        queued,
        "nothing is queued twice"
    );
}

#[tokio::test]
async fn a_replay_pages_with_next_since_and_every_event_is_queued_once() {
    let fake = FakeSink::answering(|_, _| crate::fake_sink::FAIL).await;
    let events = [
        ("QUEUED", "page-1"),
        ("QUEUED", "page-2"),
        ("TRAINING", "page-1"),
        ("QUEUED", "page-3"),
        ("TRAINING", "page-2"),
    ];
    let app = app_with_a_late_sink(&fake, &events).await;
    let mut observed: Vec<String> = Vec::new();
    for id in ["page-1", "page-2", "page-3"] {
        let job = app.job(id).await;
        for t in job["transitions"].as_array().expect("transitions") {
            observed.push(t["observed_at"].as_str().expect("a time").to_owned());
        }
    }
    observed.sort();

    let mut since = "2000-01-01T00:00:00Z".to_owned();
    let mut pages = Vec::new();
    loop {
        let (status, page) = app
            .post_api("/v1/sinks/late/replay", json!({"since": since, "limit": 2}))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages.push((page["enqueued"].as_u64(), page["skipped"].as_u64()));
        match page["next_since"].as_str() {
            Some(next) => since = next.to_owned(),
            None => break,
        }
        assert!(pages.len() < 10, "the pages end: {pages:?}");
        // Each page ends where the next event begins.
        assert_eq!(since, observed[pages.len() * 2]);
    }
    assert_eq!(
        pages,
        vec![(Some(2), Some(0)), (Some(2), Some(0)), (Some(1), Some(0))]
    );
    assert_eq!(pending_to_late(&app).await.len(), events.len());
}

#[tokio::test]
async fn a_replay_page_never_ends_among_events_observed_at_the_same_time() {
    use crate::fake_segmind::{API_KEY, FakeSegmind};
    let segmind = FakeSegmind::start().await;
    // One pass records its three jobs' transitions at one time.
    segmind.set_jobs(
        ["tie-1", "tie-2", "tie-3"]
            .iter()
            .map(|id| json!({"id": id, "finetune_id": id, "status": "TRAINING"}))
            .collect(),
    );
    let sink = FakeSink::answering(|_, _| crate::fake_sink::FAIL).await;
    let url = sink.url();
    let app = spawn_app_with(|s| {
        s.segmind.base_url = segmind.url();
        s.segmind.api_key = Some(tunehook::config::Secret::new(API_KEY));
        s.reconcile.initial_delay = Duration::from_secs(3600);
        s.reconcile.interval = Duration::from_secs(3600);
        s.delivery.retry_schedule = vec![Duration::from_secs(3600)];
        s.sinks = vec![http_sink("late", &url)];
    })
    .await;
    let (status, report) = app.post_api("/v1/reconcile", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["transitions"], 3);
    let (status, page) = app
        .post_api(
            "/v1/sinks/late/replay",
            json!({"since": "2000-01-01T00:00:00Z", "limit": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    // Their first deliveries are pending already: skipped, all three, in
    // one page, since a page cannot end inside one time.
    assert_eq!(
        page,
        json!({"enqueued": 0, "skipped": 3, "next_since": null})
    );
}

#[tokio::test]
async fn a_replay_limit_out_of_range_is_a_400_naming_it() {
    let fake = FakeSink::start().await;
    let app = app_with_a_late_sink(&fake, &[]).await;
    for limit in [json!(0), json!(100_001), json!(-5)] {
        let (status, body) = app
            .post_api(
                "/v1/sinks/late/replay",
                json!({"since": "2000-01-01T00:00:00Z", "limit": limit}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{limit}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("limit"), "{message}");
    }
}

#[tokio::test]
async fn the_pruner_removes_delivered_deliveries_and_keeps_dead_ones_jobs_and_transitions() {
    // Job "ok" is delivered; job "dead" fails until its schedule runs out.
    let fake = FakeSink::answering(|body, _| {
        if body["data"]["finetune_id"] == "dead" {
            crate::fake_sink::FAIL
        } else {
            crate::fake_sink::OK
        }
    })
    .await;
    let url = fake.url();
    let app = spawn_app_with(|s| {
        s.delivery.retry_schedule = vec![Duration::from_millis(20)];
        s.sinks = vec![http_sink("s", &url)];
        s.retention.receipts = tunehook::config::Keep::Forever;
        s.retention.attempts = tunehook::config::Keep::Forever;
        s.retention.delivered = tunehook::config::Keep::For(Duration::from_millis(1));
        s.retention.initial_delay = Duration::from_millis(50);
        s.retention.interval = Duration::from_millis(50);
    })
    .await;
    app.post(json!({"event": "AVAILABLE", "finetune_id": "ok"}))
        .await;
    app.post(json!({"event": "FAILED", "finetune_id": "dead"}))
        .await;

    let status = app
        .wait_for("/v1/status", "a prune that removed the delivery", |s| {
            s["retention"]["last_prune_removed"]["delivered"].as_u64() >= Some(1)
        })
        .await;
    assert_eq!(status["retention"]["delivered"], "1ms");
    assert_eq!(status["retention"]["receipts"], "forever");
    let dead = app
        .wait_for("/v1/deliveries?status=dead", "the dead delivery", |b| {
            b["deliveries"].as_array().is_some_and(|d| d.len() == 1)
        })
        .await;
    let dead_id = dead["deliveries"][0]["id"].as_i64().expect("an id");
    let (_, delivered) = app.get("/v1/deliveries?status=delivered").await;
    assert_eq!(delivered["deliveries"], json!([]), "{delivered}");
    let (status, detail) = app.get(&format!("/v1/deliveries/{dead_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        detail["attempt_log"].as_array().map(Vec::len),
        Some(2),
        "attempts are kept forever here: {detail}"
    );
    for id in ["ok", "dead"] {
        let job = app.job(id).await;
        assert_eq!(
            job["transitions"].as_array().map(Vec::len),
            Some(1),
            "{job}"
        );
    }
    assert_eq!(
        app.receipts().await.len(),
        2,
        "receipts are kept forever here"
    );
}

#[tokio::test]
async fn metrics_show_the_size_of_the_database_on_disk() {
    let app = spawn_app().await;
    app.post_raw(padded_webhook("size", 50_000)).await;
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("text");
    let bytes: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("tunehook_database_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no tunehook_database_bytes in:\n{text}"));
    assert!(bytes > 50_000, "the stored body counts: {bytes}");
}
