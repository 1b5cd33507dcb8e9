//! The jobs API: auth, listing, pagination, filters and errors.

use crate::helpers::spawn_app;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashSet;

#[tokio::test]
async fn the_api_refuses_requests_without_the_bearer_token() {
    let app = spawn_app().await;
    for path in ["/v1/jobs", "/v1/jobs/x", "/v1/receipts"] {
        let response = app.client.get(app.url(path)).send().await.expect("sent");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], "unauthorized");

        let response = app
            .client
            .get(app.url(path))
            .bearer_auth("wrong")
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    let response = app
        .client
        .get(app.url("/v1/jobs"))
        .bearer_auth(&app.ingest_token)
        .send()
        .await
        .expect("sent");
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "the ingest token is not an API token"
    );
}

#[tokio::test]
async fn an_unknown_job_is_a_404_in_the_error_shape() {
    let app = spawn_app().await;
    let (status, body) = app.get("/v1/jobs/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("nope")
    );
}

#[tokio::test]
async fn jobs_are_listed_most_recently_updated_first_across_pages() {
    let app = spawn_app().await;
    for i in 0..7 {
        app.post(json!({"event": "QUEUED", "finetune_id": format!("job{i}")}))
            .await;
    }
    // job2 moves on last, so it is the most recently updated.
    app.post(json!({"event": "TRAINING", "finetune_id": "job2"}))
        .await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?limit=3&cursor={c}"),
            None => "/v1/jobs?limit=3".to_owned(),
        };
        let (status, body) = app.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let jobs = body["jobs"].as_array().cloned().unwrap_or_default();
        assert!(jobs.len() <= 3);
        seen.extend(jobs);
        pages += 1;
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    let ids: Vec<&str> = seen
        .iter()
        .filter_map(|j| j["finetune_id"].as_str())
        .collect();
    assert_eq!(ids.len(), 7);
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        7,
        "no job twice: {ids:?}"
    );
    assert_eq!(ids[0], "job2");
    let times: Vec<&str> = seen
        .iter()
        .filter_map(|j| j["updated_at"].as_str())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
}

#[tokio::test]
async fn jobs_can_be_filtered_by_status() {
    let app = spawn_app().await;
    app.post(json!({"event": "AVAILABLE", "finetune_id": "a"}))
        .await;
    app.post(json!({"event": "FAILED", "finetune_id": "b"}))
        .await;
    app.post(json!({"event": "AVAILABLE", "finetune_id": "c"}))
        .await;
    let (status, body) = app.get("/v1/jobs?status=available").await;
    assert_eq!(status, StatusCode::OK);
    let mut ids: Vec<&str> = body["jobs"]
        .as_array()
        .map(|a| a.iter().filter_map(|j| j["finetune_id"].as_str()).collect())
        .unwrap_or_default();
    ids.sort();
    assert_eq!(ids, vec!["a", "c"]);
    assert_eq!(body["next_cursor"], json!(null));
}

#[tokio::test]
async fn a_bad_list_parameter_is_a_400_that_names_it() {
    let app = spawn_app().await;
    for (query, name) in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("cursor=%%%", "cursor"),
        ("cursor=bm90LWEtY3Vyc29y", "cursor"),
        ("status=%3Cscript%3E", "status"),
    ] {
        let (status, body) = app.get(&format!("/v1/jobs?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_parameter");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(name), "{query}: {message}");
    }
}

#[tokio::test]
async fn the_limit_defaults_to_50_and_goes_up_to_500() {
    let app = spawn_app().await;
    let posts =
        (0..60).map(|i| app.post(json!({"event": "QUEUED", "finetune_id": format!("j{i}")})));
    futures::future::join_all(posts).await;
    let (_, body) = app.get("/v1/jobs").await;
    assert_eq!(body["jobs"].as_array().map(Vec::len), Some(50));
    assert!(body["next_cursor"].is_string());
    let (_, body) = app.get("/v1/jobs?limit=500").await;
    assert_eq!(body["jobs"].as_array().map(Vec::len), Some(60));
    assert_eq!(body["next_cursor"], json!(null));
}

#[tokio::test]
async fn a_job_shows_every_documented_field() {
    let app = spawn_app().await;
    app.post(json!({"event": "AVAILABLE", "finetune_id": "full", "name": "n"}))
        .await;
    let job = app.job("full").await;
    for field in [
        "finetune_id",
        "name",
        "status",
        "base_model",
        "trained_model_url",
        "inference_api_url",
        "cloud_storage_url",
        "error_message",
        "first_seen_at",
        "updated_at",
        "transitions",
    ] {
        assert!(job.get(field).is_some(), "missing {field}: {job}");
    }
    let first_seen = job["first_seen_at"].as_str().unwrap_or_default();
    assert!(
        chrono::DateTime::parse_from_rfc3339(first_seen).is_ok() && first_seen.ends_with('Z'),
        "RFC 3339 UTC: {first_seen}"
    );
}
