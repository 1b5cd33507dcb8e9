//! What a hostile peer or a careless operator could do with tunehook's
//! secrets and resources: files at rest, token rotation, the connection cap,
//! and the cost of a metrics scrape.

use crate::helpers::{spawn_app, spawn_app_with};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    time::{Duration, Instant},
};
use tokio::net::TcpStream;
use tunehook::config::Secret;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn the_data_folder_and_the_database_files_are_private_to_tunehooks_user() {
    if crate::helpers::skip_on_postgres("the modes of the folder and files") {
        return;
    }
    let app = spawn_app_with(|s| {
        let file = Path::new(s.database.url.trim_start_matches("sqlite://"))
            .with_file_name("data/nested/tunehook.db");
        s.database.url = format!("sqlite://{}", file.display());
    })
    .await;
    // A webhook makes sure the write-ahead log and shared memory exist.
    let (status, _) = app
        .post(json!({"event": "QUEUED", "finetune_id": "private"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let db = app.dir.path().join("data/nested/tunehook.db");
    assert_eq!(mode(&app.dir.path().join("data")), 0o700);
    assert_eq!(mode(&app.dir.path().join("data/nested")), 0o700);
    for file in [
        db.clone(),
        db.with_extension("db-wal"),
        db.with_extension("db-shm"),
    ] {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
}

/// POSTs `body` to the API with `token`.
async fn post_with(
    app: &crate::helpers::TestApp,
    path: &str,
    token: &str,
    body: Value,
) -> (StatusCode, Value) {
    let response = app
        .client
        .post(app.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("sent");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn webhook_status(app: &crate::helpers::TestApp, token: &str) -> StatusCode {
    app.client
        .post(app.url(&format!("/webhooks/segmind/{token}")))
        .body(json!({"event": "QUEUED", "finetune_id": "rotated"}).to_string())
        .send()
        .await
        .expect("sent")
        .status()
}

#[tokio::test]
async fn rotating_the_ingest_token_refuses_the_old_webhook_url_at_once_and_accepts_the_new() {
    let app = spawn_app_with(|s| s.server.public_url = "https://hooks.example.com/".into()).await;
    let old = app.ingest_token.clone();
    assert_eq!(webhook_status(&app, &old).await, StatusCode::OK);

    let (status, answer) = app
        .post_api("/v1/tokens/rotate", json!({"token": "ingest"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let new = answer["value"].as_str().expect("the new token").to_owned();
    assert_ne!(new, old);
    assert_eq!(answer["webhook_path"], format!("/webhooks/segmind/{new}"));
    assert_eq!(
        answer["webhook_url"],
        format!("https://hooks.example.com/webhooks/segmind/{new}")
    );

    assert_eq!(webhook_status(&app, &old).await, StatusCode::UNAUTHORIZED);
    assert_eq!(webhook_status(&app, &new).await, StatusCode::OK);
    // The API token is untouched.
    let (status, _) = app.get("/v1/jobs").await;
    assert_eq!(status, StatusCode::OK);

    // A restart keeps the new token: it is stored, not only in memory.
    let app = app.restart().await;
    assert_eq!(app.ingest_token, new);
}

#[tokio::test]
async fn rotating_the_api_token_answers_the_new_one_and_the_old_one_stops_working() {
    let app = spawn_app().await;
    let old = app.api_token.clone();
    let (status, answer) =
        post_with(&app, "/v1/tokens/rotate", &old, json!({"token": "api"})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let new = answer["value"].as_str().expect("the new token").to_owned();
    assert_ne!(new, old);
    assert_eq!(answer["webhook_path"], Value::Null);

    let (status, _) = post_with(&app, "/v1/tokens/rotate", &old, json!({"token": "api"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let response = app
        .client
        .get(app.url("/v1/jobs"))
        .bearer_auth(&new)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
    // The ingest token is untouched.
    assert_eq!(
        webhook_status(&app, &app.ingest_token).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_configured_token_cannot_be_rotated_and_the_answer_says_where_it_is_set() {
    let app = spawn_app_with(|s| {
        s.ingest.token = Some(Secret::new("configured-ingest-token"));
        s.api.token = Some(Secret::new("configured-api-token"));
    })
    .await;
    for (which, key, var) in [
        ("ingest", "ingest.token", "TUNEHOOK_INGEST_TOKEN"),
        ("api", "api.token", "TUNEHOOK_API_TOKEN"),
    ] {
        let (status, body) = app
            .post_api("/v1/tokens/rotate", json!({"token": which}))
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(key) && message.contains(var), "{message}");
        assert!(
            !message.contains("configured-"),
            "a token leaked: {message}"
        );
    }
    assert_eq!(
        webhook_status(&app, "configured-ingest-token").await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_rotation_names_a_known_token_or_is_a_400() {
    let app = spawn_app().await;
    for body in [
        json!({"token": "segmind"}),
        json!({}),
        json!({"token": "api", "x": 1}),
    ] {
        let (status, answer) = app.post_api("/v1/tokens/rotate", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_body");
    }
}

/// Polls until `done`, for at most 15 s.
async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn beyond_max_connections_a_new_connection_is_not_served_until_one_closes() {
    let app = spawn_app_with(|s| {
        s.server.max_connections = 2;
        // The idle connections must stay open for the whole test.
        s.server.header_read_timeout = Duration::from_secs(60);
    })
    .await;
    let first = TcpStream::connect(app.addr).await.expect("connect");
    let _second = TcpStream::connect(app.addr).await.expect("connect");

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a client");
    let url = app.url("/healthz");
    let third = tokio::spawn(async move { client.get(url).send().await.map(|r| r.status()) });
    // Without the cap, the request is answered in milliseconds; with it,
    // it waits however long the two connections stay open.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served while two were open"
    );

    drop(first);
    eventually("the third request to be served", async || {
        third.is_finished()
    })
    .await;
    let status = third.await.expect("the task").expect("the request");
    assert_eq!(status, StatusCode::OK);
}

async fn scrape(app: &crate::helpers::TestApp) -> String {
    app.client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("text")
}

#[tokio::test]
async fn the_database_gauges_are_read_at_most_once_per_metrics_cache() {
    let app = spawn_app_with(|s| s.metrics.cache = Duration::from_secs(3600)).await;
    app.post(json!({"event": "AVAILABLE", "finetune_id": "g1"}))
        .await;
    assert!(
        scrape(&app)
            .await
            .contains("tunehook_jobs{status=\"AVAILABLE\"} 1")
    );
    app.post(json!({"event": "AVAILABLE", "finetune_id": "g2"}))
        .await;
    let text = scrape(&app).await;
    assert!(
        text.contains("tunehook_jobs{status=\"AVAILABLE\"} 1"),
        "the cached gauges were read again: {text}"
    );
    // Counters are not cached: they come from memory, for free.
    assert!(
        text.contains("tunehook_webhooks_received_total{outcome=\"applied\"}"),
        "{text}"
    );

    let app = app.restart_with(|s| s.metrics.cache = Duration::ZERO).await;
    app.post(json!({"event": "AVAILABLE", "finetune_id": "g3"}))
        .await;
    assert!(
        scrape(&app)
            .await
            .contains("tunehook_jobs{status=\"AVAILABLE\"} 3")
    );
    app.post(json!({"event": "AVAILABLE", "finetune_id": "g4"}))
        .await;
    assert!(
        scrape(&app)
            .await
            .contains("tunehook_jobs{status=\"AVAILABLE\"} 4")
    );
}

#[tokio::test]
async fn api_answers_are_never_cached_nor_sniffed() {
    let app = spawn_app().await;
    for (path, token) in [("/v1/jobs", true), ("/v1/jobs", false), ("/v1/status", true)] {
        let mut request = app.client.get(app.url(path));
        if token {
            request = request.bearer_auth(&app.api_token);
        }
        let response = request.send().await.expect("sent");
        let headers = response.headers();
        assert_eq!(headers["cache-control"], "no-store", "{path} {token}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path} {token}");
    }
}
