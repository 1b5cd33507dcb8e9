//! `POST /v1/finetunes` and `PUT /v1/jobs/{id}/access` against the fake
//! Segmind: requests are checked before anything is paid for, an accepted
//! one is tracked from REQUESTED and announced to sinks, a retried one with
//! the same `Idempotency-Key` makes no second job. The dataset URL checks
//! run here against the fake's public datasets.

use crate::{
    fake_segmind::{API_KEY, FakeSegmind},
    fake_sink::FakeSink,
    helpers::{TestApp, spawn_app_with, transition_statuses},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use tunehook::{
    config::{Secret, Settings, SinkSettings},
    dataset::remote::{Reach, UrlChecker},
};

fn segmind(settings: &mut Settings, fake: &FakeSegmind) {
    settings.segmind.base_url = fake.url();
    settings.segmind.api_key = Some(Secret::new(API_KEY));
    // Webhooks are applied as they come: this file is about submissions.
    settings.ingest.confirm = Some(tunehook::config::Confirm::Off);
    settings.segmind.timeout = Duration::from_secs(5);
    // The fake's datasets are on 127.0.0.1.
    settings.dataset.allow_private = true;
    settings.reconcile.initial_delay = Duration::from_secs(3600);
    settings.reconcile.interval = Duration::from_secs(3600);
}

async fn app_for(fake: &FakeSegmind) -> TestApp {
    spawn_app_with(|s| segmind(s, fake)).await
}

fn request(fake: &FakeSegmind) -> Value {
    json!({
        "name": "portrait", "data_source_path": fake.dataset_url("ok.zip"),
        "instance_prompt": "a photo of 1MAN", "trigger_word": "1MAN", "theme": "character",
        "advance_parameters": {"iterations": 150, "finetune_type": "lora", "priority": "speed"}
    })
}

async fn submit(app: &TestApp, body: &Value, key: Option<&str>) -> (StatusCode, Value, bool) {
    let mut builder = app
        .client
        .post(app.url("/v1/finetunes"))
        .bearer_auth(&app.api_token)
        .json(body);
    if let Some(key) = key {
        builder = builder.header("idempotency-key", key);
    }
    let response = builder.send().await.expect("the request completes");
    let status = response.status();
    let replayed = response.headers().contains_key("idempotent-replayed");
    let text = response.text().await.expect("a body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        replayed,
    )
}

fn fields(body: &Value) -> Vec<(String, String)> {
    body["error"]["fields"]
        .as_array()
        .map(|fs| {
            fs.iter()
                .map(|f| {
                    (
                        f["field"].as_str().unwrap_or_default().to_owned(),
                        f["message"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_request_breaking_rules_gets_422_naming_every_field_and_nothing_is_sent() {
    let fake = FakeSegmind::start().await;
    let app = app_for(&fake).await;
    let body = json!({"name": "n", "theme": "cosmic",
        "advance_parameters": {"lora_rank": 24, "iterations": 50}});
    let (status, answer, _) = submit(&app, &body, None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_request");
    assert_eq!(
        fields(&answer),
        [
            ("data_source_path".into(), "is required".into()),
            ("instance_prompt".into(), "is required".into()),
            (
                "theme".into(),
                "must be one of CHARACTER, PRODUCT, STYLE, GENERAL (got `cosmic`)".into()
            ),
            (
                "advance_parameters.iterations".into(),
                "must be at least 100 (got 50)".into()
            ),
            (
                "advance_parameters.lora_rank".into(),
                "must be 16 or 32 (got 24)".into()
            ),
        ]
    );
    assert!(fake.calls("/finetune/request/submit").is_empty());
    assert!(app.all_jobs().await.is_empty());
}

#[tokio::test]
async fn a_submitted_job_is_tracked_from_requested_to_available_and_each_step_reaches_sinks() {
    let fake = FakeSegmind::start().await;
    let sink = FakeSink::start().await;
    let app = spawn_app_with(|s| {
        segmind(s, &fake);
        s.delivery.retry_schedule = vec![Duration::from_millis(20); 3];
        s.sinks = vec![
            toml::from_str::<SinkSettings>(&format!(
                "name = \"backend\"\nkind = \"http\"\nurl = \"{}\"",
                sink.url()
            ))
            .expect("a sink"),
        ];
    })
    .await;
    let (status, job, _) = submit(&app, &request(&fake), None).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    assert_eq!(job["finetune_id"], "new-job-1");
    assert_eq!(job["status"], "REQUESTED");
    assert_eq!(job["name"], "portrait");
    assert_eq!(job["theme"], "CHARACTER");
    assert_eq!(job["train_type"], "LORA");
    assert_eq!(job["transitions"][0]["source"], "api");

    // Segmind got the checked request, defaults filled and enums upper-cased.
    let sent = &fake.calls("/finetune/request/submit")[0].body;
    assert_eq!(sent["theme"], "CHARACTER");
    assert_eq!(sent["base_model"], "FLUX_PRO");
    assert_eq!(sent["segmind_public"], false);
    assert_eq!(
        sent["advance_parameters"],
        json!({"iterations": 150, "captioning": true, "priority": "SPEED",
               "finetune_type": "LORA", "lora_rank": 32, "learning_rate": 0.0001})
    );

    for event in ["TRAINING_COMPLETED", "INFERENCE_QUEUED", "AVAILABLE"] {
        let (status, body) = app
            .post(json!({"event": event, "finetune_id": "new-job-1"}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let job = app.job("new-job-1").await;
    assert_eq!(job["status"], "AVAILABLE");
    assert_eq!(
        transition_statuses(&job),
        [
            "REQUESTED",
            "TRAINING_COMPLETED",
            "INFERENCE_QUEUED",
            "AVAILABLE"
        ]
    );
    let received = sink.wait_for(4).await;
    let seen: Vec<(String, String)> = received
        .iter()
        .map(|r| {
            let event = r.json();
            (
                event["data"]["status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                event["data"]["source"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("REQUESTED".into(), "api".into()),
            ("TRAINING_COMPLETED".into(), "webhook".into()),
            ("INFERENCE_QUEUED".into(), "webhook".into()),
            ("AVAILABLE".into(), "webhook".into()),
        ]
    );
}

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_gets_the_first_answer_and_no_second_job() {
    let fake = FakeSegmind::start().await;
    let app = app_for(&fake).await;
    let body = request(&fake);
    let (first_status, first, first_replayed) = submit(&app, &body, Some("k-1")).await;
    assert_eq!(first_status, StatusCode::CREATED, "{first}");
    assert!(!first_replayed);
    let (again_status, again, replayed) = submit(&app, &body, Some("k-1")).await;
    assert_eq!(again_status, StatusCode::CREATED, "{again}");
    assert!(replayed);
    assert_eq!(again, first);
    assert_eq!(fake.calls("/finetune/request/submit").len(), 1);
    assert_eq!(app.all_jobs().await.len(), 1);

    // The same request in another case is the same request.
    let mut same = body.clone();
    same["theme"] = json!("CHARACTER");
    let (_, _, replayed) = submit(&app, &same, Some("k-1")).await;
    assert!(replayed);

    let mut other = body.clone();
    other["name"] = json!("another");
    let (status, answer, _) = submit(&app, &other, Some("k-1")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["error"]["code"], "idempotency_key_reused");

    let (status, second, _) = submit(&app, &body, Some("k-2")).await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    assert_eq!(second["finetune_id"], "new-job-2");
}

#[tokio::test]
async fn the_first_answer_survives_a_restart() {
    let fake = FakeSegmind::start().await;
    let app = app_for(&fake).await;
    let body = request(&fake);
    let (_, first, _) = submit(&app, &body, Some("k-restart")).await;
    let app = app.restart().await;
    let (status, again, replayed) = submit(&app, &body, Some("k-restart")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(replayed);
    assert_eq!(again, first);
    assert_eq!(fake.calls("/finetune/request/submit").len(), 1);
}

#[tokio::test]
async fn segminds_refusal_is_a_502_with_its_message_and_a_retry_may_try_again() {
    let fake = FakeSegmind::start().await;
    fake.answer_submit(vec![(400, r#"{"error": "Dataset name already used"}"#)]);
    let app = app_for(&fake).await;
    let body = request(&fake);
    let (status, answer, _) = submit(&app, &body, Some("k-refused")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("400"), "{message}");
    assert!(message.contains("Dataset name already used"), "{message}");
    assert!(!answer.to_string().contains(API_KEY));
    assert!(app.all_jobs().await.is_empty());

    let (status, job, replayed) = submit(&app, &body, Some("k-refused")).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    assert!(!replayed);
}

#[tokio::test]
async fn without_a_segmind_key_submitting_is_a_409_that_says_so() {
    let fake = FakeSegmind::start().await;
    let app = spawn_app_with(|_| {}).await;
    let (status, answer, _) = submit(&app, &request(&fake), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(answer["error"]["code"], "segmind_not_configured");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("SEGMIND_API_KEY")
    );
}

#[tokio::test]
async fn a_dataset_url_that_would_fail_at_segmind_is_refused_before_it_is_sent() {
    let fake = FakeSegmind::start().await;
    let app = app_for(&fake).await;
    for (name, expected) in [
        ("no-head.zip", "HEAD"),
        ("no-length.zip", "Content-Length"),
        ("huge.zip", "150.0 MB"),
        ("page.zip", "ZIP signature"),
        ("loop.zip", "more than 5 times"),
        ("gone.zip", "404"),
    ] {
        let mut body = request(&fake);
        body["data_source_path"] = json!(fake.dataset_url(name));
        let (status, answer, _) = submit(&app, &body, None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {answer}");
        let problems = fields(&answer);
        assert!(
            problems
                .iter()
                .any(|(f, m)| f == "data_source_path" && m.contains(expected)),
            "{name}: {problems:?}"
        );
    }
    let mut local = request(&fake);
    local["data_source_path"] = json!("photos/set.zip");
    let (status, answer, _) = submit(&app, &local, None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(fields(&answer)[0].1.contains("http(s) URL"));
    assert!(fake.calls("/finetune/request/submit").is_empty());
}

#[tokio::test]
async fn a_url_reached_through_a_redirect_passes_and_the_redirect_is_reported() {
    let fake = FakeSegmind::start().await;
    let checker = UrlChecker::new(Duration::from_secs(5), Reach::Anywhere).expect("a checker");
    let report = checker.check(&fake.dataset_url("moved.zip")).await;
    assert!(report.is_ok(), "{report:?}");
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("redirects (302) to") && n.ends_with("/datasets/ok.zip")),
        "{report:?}"
    );
    let direct = checker.check(&fake.dataset_url("ok.zip")).await;
    assert!(direct.is_ok() && direct.notes.is_empty(), "{direct:?}");
}

#[tokio::test]
async fn setting_access_goes_to_segmind_and_is_recorded_on_the_job() {
    let fake = FakeSegmind::start().await;
    let app = app_for(&fake).await;
    let (status, _, _) = submit(&app, &request(&fake), None).await;
    assert_eq!(status, StatusCode::CREATED);

    let response = app
        .client
        .put(app.url("/v1/jobs/new-job-1/access"))
        .bearer_auth(&app.api_token)
        .json(&json!({"public": true}))
        .send()
        .await
        .expect("the request completes");
    assert_eq!(response.status(), StatusCode::OK);
    let job: Value = response.json().await.expect("a job");
    assert_eq!(job["public_model"], true);
    assert_eq!(job["updates"][0]["changed"], json!(["public_model"]));
    assert_eq!(
        fake.access_updates(),
        [("new-job-1".to_owned(), "True".to_owned())]
    );

    let unknown = app
        .client
        .put(app.url("/v1/jobs/nobody/access"))
        .bearer_auth(&app.api_token)
        .json(&json!({"public": true}))
        .send()
        .await
        .expect("the request completes");
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(fake.access_updates().len(), 1);
}

#[tokio::test]
async fn a_generated_zip_reaches_the_presigned_url_intact_with_progress_to_its_length() {
    use std::io::Write;
    let fake = FakeSegmind::start().await;
    let dir = tempfile::tempdir().expect("a folder");
    let path = dir.path().join("set.zip");
    let mut writer = zip::ZipWriter::new(std::fs::File::create(&path).expect("a file"));
    for i in 0..3 {
        writer
            .start_file(format!("{i}.png"), zip::write::SimpleFileOptions::default())
            .expect("an entry");
        writer
            .write_all(b"\x89PNG\r\n\x1a\n")
            .and_then(|()| writer.write_all(&vec![i as u8; 200_000]))
            .expect("written");
    }
    writer.finish().expect("finished");
    let bytes = std::fs::read(&path).expect("read back");

    let client = tunehook::segmind::SegmindClient::new(
        &fake.url(),
        Secret::new(API_KEY),
        Duration::from_secs(5),
    )
    .expect("a client");
    let urls = client.presigned_url("set.zip").await.expect("urls");
    let uploader =
        tunehook::segmind::upload::Uploader::new(Duration::from_secs(5)).expect("an uploader");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = std::sync::Arc::clone(&seen);
    let sent = uploader
        .put_file(
            urls.presigned_url.as_deref().expect("a pre-signed URL"),
            &path,
            move |done, total| record.lock().expect("lock").push((done, total)),
        )
        .await
        .expect("uploaded");
    assert_eq!(sent, bytes.len() as u64);
    assert_eq!(fake.upload("set.zip").as_deref(), Some(bytes.as_slice()));
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.last(), Some(&(sent, sent)));
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
}

#[tokio::test]
async fn a_refused_upload_shows_the_status_and_never_the_signature() {
    let fake = FakeSegmind::start().await;
    let dir = tempfile::tempdir().expect("a folder");
    let path = dir.path().join("set.zip");
    std::fs::write(&path, b"PK\x03\x04").expect("a file");
    let uploader =
        tunehook::segmind::upload::Uploader::new(Duration::from_secs(5)).expect("an uploader");
    // Without its signature the fake bucket refuses, as S3 would.
    let error = uploader
        .put_file(&format!("{}/uploads/set.zip", fake.url()), &path, |_, _| {})
        .await
        .expect_err("refused");
    assert_eq!(
        error.to_string(),
        "the upload was refused (403): missing signature"
    );
    assert!(fake.upload("set.zip").is_none());
}

#[tokio::test]
async fn a_webhook_that_beats_the_submission_keeps_its_status_and_the_job_gains_what_was_sent() {
    let fake = FakeSegmind::start().await;
    let app = app_for(&fake).await;
    // Segmind's ids are predictable here: its first job is new-job-1.
    let (status, body) = app
        .post(json!({"event": "TRAINING", "finetune_id": "new-job-1"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, job, _) = submit(&app, &request(&fake), None).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    assert_eq!(job["status"], "TRAINING");
    assert_eq!(transition_statuses(&job), ["TRAINING"]);
    assert_eq!(job["name"], "portrait");
    assert_eq!(job["theme"], "CHARACTER");
}

/// The `data:` of the next `n` messages of a Server-Sent Events stream,
/// within 10 s.
async fn stream_data(response: reqwest::Response, n: usize) -> Vec<Value> {
    use futures::StreamExt;
    let mut chunks = response.bytes_stream();
    let mut buffer = String::new();
    let mut found = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while found.len() < n {
        if let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:")) {
                found.push(serde_json::from_str(data.trim()).expect("JSON data"));
            }
            continue;
        }
        match tokio::time::timeout_at(deadline, chunks.next()).await {
            Ok(Some(Ok(bytes))) => buffer.push_str(&String::from_utf8_lossy(&bytes)),
            other => panic!("the stream ended or stalled after {found:?}: {other:?}"),
        }
    }
    found
}

#[tokio::test]
async fn a_live_stream_sees_a_submitted_job_from_requested_to_available_in_order() {
    let fake = FakeSegmind::start().await;
    let app = app_for(&fake).await;
    let stream = reqwest::Client::new()
        .get(app.url("/v1/events"))
        .bearer_auth(&app.api_token)
        .send()
        .await
        .expect("the stream opens");
    assert_eq!(stream.status(), StatusCode::OK);
    let (status, _, _) = submit(&app, &request(&fake), None).await;
    assert_eq!(status, StatusCode::CREATED);
    for event in ["TRAINING_COMPLETED", "AVAILABLE"] {
        app.post(json!({"event": event, "finetune_id": "new-job-1"}))
            .await;
    }
    let seen: Vec<(String, String)> = stream_data(stream, 3)
        .await
        .iter()
        .map(|e| {
            (
                e["data"]["status"].as_str().unwrap_or_default().to_owned(),
                e["data"]["source"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("REQUESTED".into(), "api".into()),
            ("TRAINING_COMPLETED".into(), "webhook".into()),
            ("AVAILABLE".into(), "webhook".into()),
        ]
    );
}

#[tokio::test]
async fn two_idempotency_keys_are_a_400_and_a_body_over_the_limit_a_413() {
    let fake = FakeSegmind::start().await;
    let app = app_for(&fake).await;
    let response = app
        .client
        .post(app.url("/v1/finetunes"))
        .bearer_auth(&app.api_token)
        .header("idempotency-key", "first")
        .header("idempotency-key", "second")
        .json(&request(&fake))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "invalid_idempotency_key", "{body}");
    assert!(
        fake.calls("/finetune/request/submit").is_empty(),
        "nothing was sent to Segmind"
    );

    let huge = json!({"name": "x".repeat(10 * 1024 * 1024)});
    let response = app
        .client
        .post(app.url("/v1/finetunes"))
        .bearer_auth(&app.api_token)
        .json(&huge)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
}
