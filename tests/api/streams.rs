//! Following jobs live over Server-Sent Events: every committed event in
//! order, a reconnect with `Last-Event-ID` that misses nothing, streams that
//! outlive the request timeout, a bound on their number, and a clean end at
//! shutdown.

use crate::helpers::{TestApp, spawn_app_with};
use futures::StreamExt;
use serde_json::{Value, json};
use std::{pin::Pin, time::Duration};

type Chunks = Pin<Box<dyn futures::Stream<Item = reqwest::Result<axum::body::Bytes>> + Send>>;

/// One Server-Sent Events message.
#[derive(Debug, Clone)]
struct Message {
    event: String,
    id: String,
    data: Value,
}

/// A stream read as a client would: messages split on blank lines,
/// comments skipped.
struct Stream {
    chunks: Chunks,
    buffer: String,
}

impl Stream {
    async fn open(app: &TestApp, path: &str, last_event_id: Option<&str>) -> Stream {
        let mut request = reqwest::Client::new()
            .get(app.url(path))
            .bearer_auth(&app.api_token)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("the stream opens");
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "{path}"
        );
        Stream {
            chunks: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    /// The next message, or `None` when the stream ended; panics after 10 s.
    async fn next(&mut self) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut message = Message {
                    event: String::new(),
                    id: String::new(),
                    data: Value::Null,
                };
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        message.event = v.trim().to_owned();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("id:") {
                        message.id = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        message.data = serde_json::from_str(v.trim()).expect("JSON data");
                    }
                }
                if any {
                    return Some(message);
                }
                continue;
            }
            match tokio::time::timeout_at(deadline, self.chunks.next()).await {
                Ok(Some(Ok(bytes))) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(Some(Err(_)) | None) => return None,
                Err(_) => panic!("no message within 10 s"),
            }
        }
    }
}

async fn webhook(app: &TestApp, event: &str, id: &str) {
    let (status, body) = app.post(json!({"event": event, "finetune_id": id})).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_stream_sends_every_committed_event_in_order_with_its_type_and_id() {
    let app = spawn_app_with(|s| s.server.request_timeout = Duration::from_millis(500)).await;
    let mut all = Stream::open(&app, "/v1/events", None).await;

    webhook(&app, "TRAINING", "ft_live").await;
    // Longer than the request timeout: a stream is not cut by it.
    tokio::time::sleep(Duration::from_millis(800)).await;
    webhook(&app, "AVAILABLE", "ft_live").await;
    app.post(json!({"event": "AVAILABLE", "finetune_id": "ft_live",
                    "inference_api_url": "https://api/ft_live"}))
        .await;

    let first = all.next().await.expect("a message");
    let second = all.next().await.expect("a message");
    let third = all.next().await.expect("a message");
    assert_eq!(first.event, "finetune.status_changed");
    assert_eq!(first.data["data"]["status"], "TRAINING");
    assert_eq!(second.data["data"]["status"], "AVAILABLE");
    assert_eq!(second.data["data"]["previous_status"], "TRAINING");
    assert_eq!(third.event, "finetune.updated");
    assert_eq!(third.data["data"]["changed"], json!(["inference_api_url"]));
    let job = app.job("ft_live").await;
    assert_eq!(first.id, job["transitions"][0]["id"]);
    assert_eq!(first.id, first.data["id"]);
    assert_eq!(third.id, job["updates"][0]["id"]);
}

#[tokio::test]
async fn a_reconnect_with_last_event_id_gets_exactly_what_it_missed() {
    let app = spawn_app_with(|_| {}).await;
    webhook(&app, "QUEUED", "ft_resume").await;
    webhook(&app, "TRAINING", "ft_resume").await;
    let mut stream = Stream::open(&app, "/v1/jobs/ft_resume/events", None).await;
    webhook(&app, "TRAINING_COMPLETED", "ft_resume").await;
    let seen = stream.next().await.expect("a message");
    assert_eq!(seen.data["data"]["status"], "TRAINING_COMPLETED");
    drop(stream);

    // Missed while disconnected; another job's events are not this stream's.
    webhook(&app, "INFERENCE_QUEUED", "ft_resume").await;
    webhook(&app, "TRAINING", "ft_other").await;
    webhook(&app, "AVAILABLE", "ft_resume").await;

    let mut again = Stream::open(&app, "/v1/jobs/ft_resume/events", Some(&seen.id)).await;
    let first = again.next().await.expect("a message");
    let second = again.next().await.expect("a message");
    assert_eq!(first.data["data"]["status"], "INFERENCE_QUEUED");
    assert_eq!(second.data["data"]["status"], "AVAILABLE");
    // And then it follows live, with nothing repeated.
    app.post(json!({"event": "AVAILABLE", "finetune_id": "ft_resume", "slug": "s"}))
        .await;
    let live = again.next().await.expect("a message");
    assert_eq!(live.event, "finetune.updated");
}

#[tokio::test]
async fn streams_are_bounded_and_an_unknown_job_is_a_404() {
    let app = spawn_app_with(|s| s.server.max_streams = 1).await;
    let _held = Stream::open(&app, "/v1/events", None).await;
    let (status, body) = app.get("/v1/events").await;
    assert_eq!(status, 503, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("too many event streams") && message.contains("server.max_streams"),
        "says what it is: {body}"
    );
    let (status, body) = app.get("/v1/jobs/nope/events").await;
    assert!(status == 404 || status == 503, "{status} {body}");
}

#[tokio::test]
async fn an_unknown_job_has_no_stream() {
    let app = spawn_app_with(|_| {}).await;
    let (status, body) = app.get("/v1/jobs/nope/events").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test]
async fn shutdown_ends_open_streams_cleanly() {
    let app = spawn_app_with(|s| s.server.shutdown_timeout = Duration::from_secs(20)).await;
    let mut stream = Stream::open(&app, "/v1/events", None).await;
    let started = std::time::Instant::now();
    app.stop().await;
    assert!(stream.next().await.is_none(), "the stream ended");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the stream held the shutdown until its timeout"
    );
}

#[tokio::test]
async fn watching_a_job_reports_each_change_and_ends_at_available() {
    let app = spawn_app_with(|_| {}).await;
    webhook(&app, "TRAINING", "ft_watch").await;
    let base = format!("http://{}", app.addr);
    let token = app.api_token.clone();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = std::sync::Arc::clone(&lines);
    let watcher = tokio::spawn(async move {
        tunehook::watch::watch(&base, &token, "ft_watch", |line| {
            seen.lock().expect("lock").push(line.to_owned())
        })
        .await
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while lines.lock().expect("lock").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the watcher never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    webhook(&app, "TRAINING_COMPLETED", "ft_watch").await;
    webhook(&app, "AVAILABLE", "ft_watch").await;
    let ending = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("the watcher ends")
        .expect("no panic")
        .expect("no error");
    assert_eq!(ending, tunehook::watch::Ending::Available);
    let lines = lines.lock().expect("lock").clone();
    assert_eq!(
        lines,
        [
            "ft_watch: TRAINING",
            "ft_watch: TRAINING → TRAINING_COMPLETED (webhook)",
            "ft_watch: TRAINING_COMPLETED → AVAILABLE (webhook)"
        ]
    );
}

#[tokio::test]
async fn watching_a_failed_job_ends_with_its_failure_at_once() {
    let app = spawn_app_with(|_| {}).await;
    app.post(json!({"event": "FAILED", "finetune_id": "ft_failed", "error_message": "out of GPU memory"}))
        .await;
    let base = format!("http://{}", app.addr);
    let ending = tunehook::watch::watch(&base, &app.api_token, "ft_failed", |_| {})
        .await
        .expect("no error");
    assert_eq!(
        ending,
        tunehook::watch::Ending::Failed {
            status: "FAILED".into(),
            error: Some("out of GPU memory".into())
        }
    );
}

#[tokio::test]
async fn watching_a_stopped_service_fails_at_once_saying_where_it_looked() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    let started = std::time::Instant::now();
    let error = tunehook::watch::watch(&format!("http://127.0.0.1:{port}"), "t", "ft", |_| {})
        .await
        .expect_err("nothing to watch");
    assert!(started.elapsed() < Duration::from_secs(3), "waited {:?}", started.elapsed());
    let message = format!("{error:#}");
    assert!(
        message.contains(&format!("cannot reach tunehook at http://127.0.0.1:{port}")),
        "{message}"
    );
}

#[tokio::test]
async fn a_stream_opened_with_the_bearer_token_ends_when_that_token_is_rotated() {
    let app = spawn_app_with(|_| {}).await;
    let mut stream = Stream::open(&app, "/v1/events", None).await;
    app.post(json!({"event": "QUEUED", "finetune_id": "before"}))
        .await;
    let first = stream.next().await.expect("an event before the rotation");
    assert_eq!(first.data["data"]["finetune_id"], "before");

    let (status, answer) = app
        .post_api("/v1/tokens/rotate", json!({"token": "api"}))
        .await;
    assert_eq!(status, 200, "{answer}");
    app.post(json!({"event": "QUEUED", "finetune_id": "after"}))
        .await;
    // The old token's stream ends (within the 10 s each read allows)
    // instead of carrying what follows; the one event committed at the
    // moment of the rotation may still slip through.
    let mut carried = 0;
    while stream.next().await.is_some() {
        carried += 1;
        assert!(carried <= 1, "a stream of the rotated token went on");
    }
}
