//! Health, readiness, unknown routes, and what survives a restart.

use crate::helpers::{spawn_app, spawn_app_with, transition_statuses};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn health_and_readiness_answer_without_a_token() {
    let app = spawn_app().await;
    for path in ["/healthz", "/readyz"] {
        let response = app.client.get(app.url(path)).send().await.expect("sent");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_echoes_a_given_one() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("sent");
    assert!(response.headers().contains_key("x-request-id"));
    let response = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "req-123")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.headers()["x-request-id"], "req-123");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_shape() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/nowhere"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "not_found");
    let response = app
        .client
        .get(app.webhook_url())
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn a_restart_keeps_jobs_receipts_and_generated_tokens() {
    let app = spawn_app().await;
    app.post(json!({"event": "TRAINING_COMPLETED", "finetune_id": "keep"}))
        .await;
    app.post(json!({"event": "AVAILABLE", "finetune_id": "keep"}))
        .await;
    let (ingest, api) = (app.ingest_token.clone(), app.api_token.clone());
    assert!(ingest.len() >= 22 && api.len() >= 22, "at least 128 bits");
    assert_ne!(ingest, api);

    let app = app.restart().await;
    assert_eq!(app.ingest_token, ingest);
    assert_eq!(app.api_token, api);
    let job = app.job("keep").await;
    assert_eq!(job["status"], "AVAILABLE");
    assert_eq!(
        transition_statuses(&job),
        vec!["TRAINING_COMPLETED", "AVAILABLE"]
    );
    assert_eq!(app.receipts().await.len(), 2);
    let (_, body) = app
        .post(json!({"event": "AVAILABLE", "finetune_id": "keep"}))
        .await;
    assert_eq!(
        body["outcome"], "duplicate",
        "state rules see the stored job"
    );
}

#[tokio::test]
async fn the_database_is_in_wal_mode_on_disk() {
    if crate::helpers::skip_on_postgres("the file's header") {
        return;
    }
    let app = spawn_app().await;
    app.post(json!({"event": "QUEUED", "finetune_id": "w"}))
        .await;
    let dir = app.stop().await;
    let header = std::fs::read(dir.path().join("tunehook.db")).expect("the database file");
    // Bytes 18 and 19 of the SQLite header are 2 in WAL mode.
    assert_eq!((header[18], header[19]), (2, 2));
}

#[tokio::test]
async fn when_the_database_cannot_take_the_write_the_answer_is_503_and_nothing_is_stored() {
    let app = spawn_app_with(|s| {
        s.database.busy_timeout = std::time::Duration::from_millis(100);
    })
    .await;
    // Another process holds the database's write lock.
    let blocker = crate::helpers::lock_database(&app).await;

    let response = app
        .client
        .post(app.webhook_url())
        .body(json!({"event": "AVAILABLE", "finetune_id": "blocked"}).to_string())
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unavailable");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.contains("locked"), "no internal detail: {message}");

    drop(blocker);
    let (status, body) = app
        .post(json!({"event": "AVAILABLE", "finetune_id": "later"}))
        .await;
    assert_eq!(status, StatusCode::OK, "the service recovers: {body}");
    let receipts = app.receipts().await;
    assert_eq!(receipts.len(), 1, "the refused webhook left nothing behind");
    assert_eq!(receipts[0]["finetune_id"], "later");
    let (status, _) = app.get("/v1/jobs/blocked").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn after_a_clean_stop_the_database_file_alone_holds_every_webhook() {
    if crate::helpers::skip_on_postgres("a copy of the file is a backup") {
        return;
    }
    let app = spawn_app().await;
    for i in 0..20 {
        let (status, body) = app
            .post(json!({"event": "AVAILABLE", "finetune_id": format!("copy-{i}")}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let dir = app.stop().await;

    // A backup made by copying the database file once tunehook has stopped.
    let backup = tempfile::tempdir().expect("a folder");
    let file = backup.path().join("tunehook.db");
    std::fs::copy(dir.path().join("tunehook.db"), &file).expect("copied");
    let restored =
        spawn_app_with(|s| s.database.url = format!("sqlite://{}", file.display())).await;
    assert_eq!(restored.all_jobs().await.len(), 20);
}
