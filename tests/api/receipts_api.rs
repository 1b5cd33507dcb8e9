//! The receipts API: every webhook request, as received.

use crate::helpers::spawn_app;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn receipts_keep_the_body_and_can_be_filtered_by_outcome() {
    let app = spawn_app().await;
    app.post(json!({"event": "AVAILABLE", "finetune_id": "r", "extra": {"kept": true}}))
        .await;
    app.post(json!({"event": "AVAILABLE", "finetune_id": "r"}))
        .await;
    app.post_raw("not json").await;

    let receipts = app.receipts().await;
    assert_eq!(receipts.len(), 3);
    let outcomes: Vec<&str> = receipts
        .iter()
        .filter_map(|r| r["outcome"].as_str())
        .collect();
    assert_eq!(
        outcomes,
        vec!["invalid", "duplicate", "applied"],
        "newest first"
    );
    assert_eq!(receipts[2]["body"]["extra"]["kept"], true);
    assert_eq!(receipts[2]["finetune_id"], "r");
    assert_eq!(receipts[2]["body_sha256"].as_str().map(str::len), Some(64));

    let (status, body) = app.get("/v1/receipts?outcome=duplicate").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["receipts"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["receipts"][0]["outcome"], "duplicate");
}

#[tokio::test]
async fn receipts_page_with_a_cursor() {
    let app = spawn_app().await;
    for i in 0..5 {
        app.post(json!({"event": "QUEUED", "finetune_id": format!("p{i}")}))
            .await;
    }
    let (_, first) = app.get("/v1/receipts?limit=2").await;
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let (_, second) = app
        .get(&format!("/v1/receipts?limit=2&cursor={cursor}"))
        .await;
    let first_ids: Vec<i64> = first["receipts"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["id"].as_i64()).collect())
        .unwrap_or_default();
    let second_ids: Vec<i64> = second["receipts"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["id"].as_i64()).collect())
        .unwrap_or_default();
    assert_eq!(first_ids, vec![5, 4]);
    assert_eq!(second_ids, vec![3, 2]);
}

#[tokio::test]
async fn an_unknown_outcome_filter_is_a_400_listing_the_outcomes() {
    let app = spawn_app().await;
    let (status, body) = app.get("/v1/receipts?outcome=weird").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("outcome") && message.contains("unrecognized"),
        "{message}"
    );
}
