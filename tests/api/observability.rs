//! Metrics, load shedding and slow clients.

use crate::helpers::{spawn_app, spawn_app_with};
use reqwest::StatusCode;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Sends the start of a webhook request whose body never finishes.
async fn hold_a_webhook_open(addr: std::net::SocketAddr, token: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /webhooks/segmind/{token} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"ev"
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    stream
}

#[tokio::test]
async fn metrics_show_webhooks_transitions_jobs_and_latency_in_prometheus_format() {
    let app = spawn_app().await;
    app.post(json!({"event": "AVAILABLE", "finetune_id": "m1"}))
        .await;
    app.post(json!({"event": "AVAILABLE", "finetune_id": "m1"}))
        .await;
    let response = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/plain")
    );
    let text = response.text().await.expect("text");
    for needle in [
        "tunehook_webhooks_received_total{outcome=\"applied\"}",
        "tunehook_webhooks_received_total{outcome=\"duplicate\"}",
        "tunehook_transitions_total{status=\"AVAILABLE\",source=\"webhook\"}",
        "tunehook_webhook_duration_seconds_bucket",
        "tunehook_jobs{status=\"AVAILABLE\"} 1",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(line.starts_with("tunehook_"), "unprefixed metric: {line}");
    }
}

#[tokio::test]
async fn metrics_can_require_the_api_token() {
    let app = spawn_app_with(|s| s.metrics.require_token = true).await;
    let response = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth(&app.api_token)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn beyond_the_webhook_limit_the_answer_is_a_quick_503_with_retry_after() {
    let app = spawn_app_with(|s| s.server.max_concurrent_webhooks = 1).await;
    let _held = hold_a_webhook_open(app.addr, &app.ingest_token).await;
    // Let the held request reach its handler.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let started = Instant::now();
        let response = app
            .client
            .post(app.webhook_url())
            .body(json!({"event": "AVAILABLE", "finetune_id": "shed"}).to_string())
            .send()
            .await
            .expect("sent");
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "answered quickly"
            );
            assert!(response.headers().contains_key("retry-after"));
            break;
        }
        assert!(Instant::now() < deadline, "never shed load");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = app.get("/v1/jobs/shed").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a shed webhook is not stored"
    );
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .expect("sent")
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_client_that_sends_one_byte_at_a_time_is_cut_off_and_holds_nobody_up() {
    let app = spawn_app_with(|s| s.server.request_timeout = Duration::from_millis(500)).await;
    let mut slow = hold_a_webhook_open(app.addr, &app.ingest_token).await;
    let trickle = tokio::spawn(async move {
        let started = Instant::now();
        let mut answer = Vec::new();
        for _ in 0..50 {
            if slow.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut buf = [0u8; 512];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await
            {
                if n == 0 {
                    break;
                }
                answer.extend_from_slice(&buf[..n]);
                break;
            }
        }
        (
            started.elapsed(),
            String::from_utf8_lossy(&answer).into_owned(),
        )
    });
    // Meanwhile, everyone else is served.
    let (status, body) = app
        .post(json!({"event": "QUEUED", "finetune_id": "fast"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (took, answer) = trickle.await.expect("trickle");
    assert!(
        took < Duration::from_secs(4),
        "the slow client was held {took:?}"
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "answered: {answer:?}");
}

#[tokio::test]
async fn the_openapi_document_covers_every_route_the_router_serves() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
    let doc: serde_json::Value = response.json().await.expect("json");
    assert!(
        doc["openapi"].as_str().unwrap_or("").starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let routes = tunehook::http::route_table();
    for (method, path) in &routes {
        let operation = &doc["paths"][*path][method.as_str().to_lowercase()];
        assert!(
            operation.is_object(),
            "{method} {path} is not in the OpenAPI document"
        );
        if path.starts_with("/v1/") {
            assert!(
                operation["security"].is_array(),
                "{method} {path} does not say it needs the token"
            );
            assert!(
                operation["responses"]["401"].is_object(),
                "{method} {path} lacks its 401"
            );
        }
        if path.contains('{') {
            assert!(
                operation["parameters"].is_array(),
                "{method} {path} lacks its path parameter"
            );
        }
    }
    let documented: usize = doc["paths"]
        .as_object()
        .map(|paths| {
            paths
                .values()
                .map(|p| p.as_object().map_or(0, |ops| ops.len()))
                .sum()
        })
        .unwrap_or(0);
    assert_eq!(
        documented,
        routes.len(),
        "the document has routes the router does not serve"
    );
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    for route in ["/v1/jobs", "/v1/deliveries"] {
        let names: Vec<&str> = doc["paths"][route]["get"]["parameters"]
            .as_array()
            .map(|ps| ps.iter().filter_map(|p| p["name"].as_str()).collect())
            .unwrap_or_default();
        assert!(
            names.contains(&"limit") && names.contains(&"cursor"),
            "{route}: {names:?}"
        );
    }
}

#[tokio::test]
async fn a_client_that_trickles_its_headers_is_disconnected() {
    let app = spawn_app_with(|s| s.server.header_read_timeout = Duration::from_millis(300)).await;
    let mut slow = TcpStream::connect(app.addr).await.expect("connect");
    let started = Instant::now();
    let mut closed = false;
    for byte in b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: "
        .iter()
        .cycle()
        .take(100)
    {
        if slow.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(100), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(closed, "the connection stayed open");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "held for {:?}",
        started.elapsed()
    );
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .expect("sent")
            .status(),
        StatusCode::OK
    );
}
