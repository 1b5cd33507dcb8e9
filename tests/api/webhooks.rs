//! Receiving webhooks: parsing, outcomes, the state rules over HTTP, and
//! what is stored.

use crate::helpers::{spawn_app, spawn_app_with, transition_statuses};
use reqwest::StatusCode;
use serde_json::json;
use tunehook::config::Secret;

#[tokio::test]
async fn each_segmind_event_name_creates_a_job_in_that_status() {
    let app = spawn_app().await;
    let events = [
        "DATA_PROCESSING",
        "TRAINING_INITIATED",
        "TRAINING_COMPLETED",
        "INFERENCE_QUEUED",
        "DEPLOYING",
        "AVAILABLE",
    ];
    for (i, event) in events.iter().enumerate() {
        let id = format!("ft_{i}");
        let (status, body) = app.post(json!({"event": event, "finetune_id": id})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["outcome"], "applied");
        assert_eq!(body["status"], *event);
        assert_eq!(body["finetune_id"], id);
        assert!(body["receipt_id"].as_i64().is_some());
        let job = app.job(&id).await;
        assert_eq!(job["status"], *event);
        assert_eq!(transition_statuses(&job), vec![event.to_string()]);
        assert_eq!(job["transitions"][0]["from_status"], json!(null));
        assert_eq!(job["transitions"][0]["source"], "webhook");
    }
}

#[tokio::test]
async fn a_job_moving_through_its_life_records_each_transition_in_order() {
    let app = spawn_app().await;
    let steps = [
        "DATA_PROCESSING",
        "TRAINING_INITIATED",
        "TRAINING_COMPLETED",
        "INFERENCE_QUEUED",
        "AVAILABLE",
    ];
    for step in steps {
        let (_, body) = app
            .post(json!({"event": step, "finetune_id": "life"}))
            .await;
        assert_eq!(body["outcome"], "applied", "{step}");
    }
    let job = app.job("life").await;
    assert_eq!(job["status"], "AVAILABLE");
    assert_eq!(transition_statuses(&job), steps.to_vec());
    let transitions = job["transitions"].as_array().cloned().unwrap_or_default();
    for pair in transitions.windows(2) {
        assert_eq!(pair[1]["from_status"], pair[0]["to_status"]);
    }
}

#[tokio::test]
async fn every_id_spelling_and_nested_shape_is_understood() {
    let app = spawn_app().await;
    let shapes = [
        json!({"event": "TRAINING_COMPLETED", "finetune_id": "a1"}),
        json!({"event_type": "TRAINING_COMPLETED", "request_id": "a2"}),
        json!({"type": "TRAINING_COMPLETED", "id": "a3"}),
        json!({"data": {"status": "TRAINING_COMPLETED", "finetune_id": "a4"}}),
        json!({"finetune": {"status": "training_completed", "request_id": "a5"}}),
        json!({"payload": {"event": "Training Completed", "id": "a6"}}),
        json!({"event": "TRAINING_COMPLETED", "data": {"finetune_id": "a7"}}),
    ];
    for (i, shape) in shapes.into_iter().enumerate() {
        let id = format!("a{}", i + 1);
        let (status, body) = app.post(shape).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["outcome"], "applied", "{id}: {body}");
        assert_eq!(body["finetune_id"], id);
        assert_eq!(app.job(&id).await["status"], "TRAINING_COMPLETED");
    }
}

#[tokio::test]
async fn fields_sent_with_the_event_are_kept_on_the_job() {
    let app = spawn_app().await;
    app.post(json!({
        "event": "AVAILABLE",
        "data": {
            "finetune_id": "f1", "name": "portrait-lora", "base_model": "FLUX_PRO",
            "trained_model_url": "https://cdn.example/model.safetensors",
            "inference_api_url": "https://api.example/infer/f1",
            "cloud_storage_url": "s3://bucket/f1", "slug": "portrait-lora-f1"
        }
    }))
    .await;
    let job = app.job("f1").await;
    assert_eq!(job["name"], "portrait-lora");
    assert_eq!(job["base_model"], "FLUX_PRO");
    assert_eq!(
        job["trained_model_url"],
        "https://cdn.example/model.safetensors"
    );
    assert_eq!(job["inference_api_url"], "https://api.example/infer/f1");
    assert_eq!(job["cloud_storage_url"], "s3://bucket/f1");
    assert_eq!(job["slug"], "portrait-lora-f1");
}

#[tokio::test]
async fn the_same_event_twice_is_a_duplicate_and_records_one_transition() {
    let app = spawn_app().await;
    let event = json!({"event": "TRAINING_COMPLETED", "finetune_id": "dup"});
    let (_, first) = app.post(event.clone()).await;
    let (status, second) = app.post(event).await;
    assert_eq!(first["outcome"], "applied");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(second["outcome"], "duplicate");
    assert_eq!(
        transition_statuses(&app.job("dup").await),
        vec!["TRAINING_COMPLETED"]
    );
    assert_eq!(app.receipts().await.len(), 2, "both requests are stored");
}

#[tokio::test]
async fn a_late_training_completed_does_not_move_an_available_job_back_but_fills_its_url() {
    let app = spawn_app().await;
    app.post(
        json!({"event": "AVAILABLE", "finetune_id": "late", "inference_api_url": "https://api/x"}),
    )
    .await;
    let (status, body) = app
        .post(json!({
            "event": "TRAINING_COMPLETED", "finetune_id": "late",
            "trained_model_url": "https://cdn/weights", "inference_api_url": "https://other"
        }))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["outcome"], "stale");
    let job = app.job("late").await;
    assert_eq!(job["status"], "AVAILABLE");
    assert_eq!(
        job["trained_model_url"], "https://cdn/weights",
        "an empty field is filled"
    );
    assert_eq!(
        job["inference_api_url"], "https://api/x",
        "a filled field is kept"
    );
    assert_eq!(transition_statuses(&job), vec!["AVAILABLE"]);
}

#[tokio::test]
async fn a_webhook_cannot_turn_one_terminal_status_into_another() {
    let app = spawn_app().await;
    app.post(json!({"event": "AVAILABLE", "finetune_id": "t"}))
        .await;
    let (_, body) = app
        .post(json!({"event": "FAILED", "finetune_id": "t"}))
        .await;
    assert_eq!(body["outcome"], "stale");
    assert_eq!(app.job("t").await["status"], "AVAILABLE");
}

#[tokio::test]
async fn a_failure_ends_a_job_in_progress() {
    let app = spawn_app().await;
    app.post(json!({"event": "TRAINING_INITIATED", "finetune_id": "f"}))
        .await;
    let (_, body) = app
        .post(json!({"event": "FAILED", "finetune_id": "f", "error_message": "dataset unreadable"}))
        .await;
    assert_eq!(body["outcome"], "applied");
    let job = app.job("f").await;
    assert_eq!(job["status"], "FAILED");
    assert_eq!(job["error_message"], "dataset unreadable");
}

#[tokio::test]
async fn an_unknown_status_is_kept_not_rejected() {
    let app = spawn_app().await;
    let (status, body) = app
        .post(json!({"status": "warming_up", "finetune_id": "u"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["outcome"], "applied");
    assert_eq!(app.job("u").await["status"], "WARMING_UP");
}

#[tokio::test]
async fn fifty_concurrent_identical_webhooks_make_exactly_one_transition() {
    let app = spawn_app().await;
    let event = json!({"event": "AVAILABLE", "finetune_id": "race"}).to_string();
    let posts = (0..50).map(|_| app.post_raw(event.clone()));
    let results = futures::future::join_all(posts).await;
    let mut outcomes: Vec<String> = results
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, StatusCode::OK, "{body}");
            body["outcome"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    outcomes.sort();
    assert_eq!(
        outcomes.iter().filter(|o| *o == "applied").count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(outcomes.iter().filter(|o| *o == "duplicate").count(), 49);
    assert_eq!(
        transition_statuses(&app.job("race").await),
        vec!["AVAILABLE"]
    );
    assert_eq!(app.receipts().await.len(), 50);
}

#[tokio::test]
async fn a_body_that_is_not_json_gets_400_and_is_still_stored() {
    let app = spawn_app().await;
    let (status, body) = app.post_raw("event=AVAILABLE&id=1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_payload");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not valid JSON")
    );
    let receipts = app.receipts().await;
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0]["outcome"], "invalid");
    assert_eq!(receipts[0]["body"], "event=AVAILABLE&id=1");
    assert!(app.all_jobs().await.is_empty(), "no job is created");
}

#[tokio::test]
async fn an_unusable_status_gets_400_naming_the_key() {
    let app = spawn_app().await;
    let (status, body) = app
        .post(json!({"status": "'; DROP TABLE jobs; --", "finetune_id": "x"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("`status`")
    );
    assert!(app.all_jobs().await.is_empty());
    assert_eq!(app.receipts().await[0]["outcome"], "invalid");
}

#[tokio::test]
async fn json_without_a_job_id_or_status_is_stored_as_unrecognized_and_answered_200() {
    let app = spawn_app().await;
    let (status, body) = app
        .post(json!({"message": "Test webhook from the console"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["outcome"], "unrecognized");
    let (status, body) = app.post(json!({"event": "AVAILABLE"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["outcome"], "unrecognized");
    assert_eq!(body["status"], "AVAILABLE");
    assert_eq!(app.receipts().await.len(), 2);
    assert!(app.all_jobs().await.is_empty());
}

#[tokio::test]
async fn a_json_body_needs_no_json_content_type() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.webhook_url())
        .header("content-type", "text/plain")
        .body(r#"{"event":"DEPLOYING","finetune_id":"ct"}"#)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(app.job("ct").await["status"], "DEPLOYING");
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413_and_nothing_is_stored() {
    let app = spawn_app_with(|s| s.server.max_body_bytes = 1024).await;
    let big = json!({"event": "AVAILABLE", "finetune_id": "big", "pad": "x".repeat(2000)});
    let (status, body) = app.post(big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"]["code"], "payload_too_large");
    let (status, _) = app
        .post(json!({"event": "AVAILABLE", "finetune_id": "small"}))
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a body within the limit still passes"
    );
    assert_eq!(app.receipts().await.len(), 1);
}

#[tokio::test]
async fn a_streamed_body_over_the_limit_without_a_length_gets_413() {
    let app = spawn_app_with(|s| s.server.max_body_bytes = 1024).await;
    let chunks: Vec<Result<String, std::io::Error>> = (0..8).map(|_| Ok("x".repeat(512))).collect();
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let (status, _) = app.post_raw(body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(app.receipts().await.is_empty());
}

#[tokio::test]
async fn a_wrong_token_gets_401_and_nothing_is_stored() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/webhooks/segmind/not-the-token"))
        .body(json!({"event": "AVAILABLE", "finetune_id": "x"}).to_string())
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unauthorized");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("unknown webhook token in the URL"),
        "says what is wrong, without a bearer token webhooks never use: {message}"
    );
    assert!(message.contains("tunehook tokens"), "and what to do: {message}");
    assert!(app.receipts().await.is_empty());
    assert!(app.all_jobs().await.is_empty());
}

#[tokio::test]
async fn a_configured_ingest_token_is_the_one_that_works() {
    let app =
        spawn_app_with(|s| s.ingest.token = Some(Secret::new("configured-ingest-token"))).await;
    assert_eq!(app.ingest_token, "configured-ingest-token");
    let (status, _) = app
        .post(json!({"event": "QUEUED", "finetune_id": "c"}))
        .await;
    assert_eq!(status, StatusCode::OK);
}
