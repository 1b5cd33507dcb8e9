//! What tunehook sends out and to whom: command sinks run with only the
//! environment they are given and in a process group of their own, chat
//! messages cannot ping anyone, a sink's `Retry-After` never shortens the
//! schedule, and Segmind's key never follows a redirect.

use crate::{
    fake_segmind::{API_KEY, FakeSegmind},
    fake_sink::{FakeSink, OK, Reply, earlier_tries},
    helpers::{TestApp, spawn_app_with},
};
use axum::{
    Router,
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use tunehook::{
    config::{Secret, SinkSettings},
    segmind::{SegmindClient, SegmindError},
};

/// A sink from its TOML, as a user writes it.
fn sink(toml_text: &str) -> SinkSettings {
    toml::from_str(toml_text).expect("a valid sink")
}

async fn app_with_sinks(sinks: Vec<SinkSettings>) -> TestApp {
    spawn_app_with(|s| {
        s.delivery.retry_schedule = vec![Duration::from_millis(20); 3];
        s.delivery.timeout = Duration::from_secs(5);
        s.sinks = sinks;
    })
    .await
}

/// The only delivery of the app, once `done` accepts it, with its attempts.
async fn the_delivery(app: &TestApp, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let list = app
        .wait_for("/v1/deliveries", what, |b| {
            b["deliveries"]
                .as_array()
                .and_then(|d| d.first())
                .is_some_and(&done)
        })
        .await;
    let id = &list["deliveries"][0]["id"];
    let (status, detail) = app.get(&format!("/v1/deliveries/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    detail
}

fn time(value: &Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(value.as_str().unwrap_or("?"))
        .unwrap_or_else(|e| panic!("{value} is not an RFC 3339 time: {e}"))
        .with_timezone(&chrono::Utc)
}

// ---- Retry-After ----

#[tokio::test]
async fn a_retry_after_of_zero_does_not_shorten_the_planned_wait() {
    let fake = FakeSink::answering(|body, received| {
        if earlier_tries(body, received) == 0 {
            Reply {
                status: 503,
                retry_after: Some(0),
                ..OK
            }
        } else {
            OK
        }
    })
    .await;
    let app = app_with_sinks(vec![SinkSettings {
        retry_schedule: Some(vec![Duration::from_secs(60)]),
        ..sink(&format!(
            "name = \"busy\"\nkind = \"http\"\nurl = \"{}\"",
            fake.url()
        ))
    }])
    .await;
    app.post(json!({"event": "AVAILABLE", "finetune_id": "ra0"}))
        .await;
    let delivery = the_delivery(&app, "a failed attempt", |d| d["attempts"] != 0).await;
    assert_eq!(delivery["attempts"], 1, "retried too soon: {delivery}");
    assert_eq!(delivery["attempt_log"][0]["status_code"], 503);
    let failed_at = time(&delivery["attempt_log"][0]["started_at"]);
    let next = time(&delivery["next_attempt_at"]);
    // The planned wait is 60 s ± 20%; the sink's 0 s must not replace it.
    assert!(
        next - failed_at >= chrono::Duration::seconds(47),
        "the next attempt is due {} after the failed one",
        next - failed_at
    );
    assert_eq!(fake.received().len(), 1, "no second attempt yet");
}

// ---- Chat sinks ----

#[tokio::test]
async fn a_job_named_like_a_mention_pings_nobody_in_slack_or_discord() {
    let slack = FakeSink::start().await;
    let discord = FakeSink::start().await;
    let app = app_with_sinks(vec![
        sink(&format!(
            "name = \"slack\"\nkind = \"slack\"\nurl = \"{}\"",
            slack.url()
        )),
        sink(&format!(
            "name = \"discord\"\nkind = \"discord\"\nurl = \"{}\"",
            discord.url()
        )),
    ])
    .await;
    app.post(json!({
        "event": "FAILED", "finetune_id": "ping", "name": "<!channel> @everyone",
        "error_message": "<@U123> & friends"
    }))
    .await;

    let slack_body = slack.wait_for(1).await[0].json();
    let text = slack_body["text"].as_str().expect("a text field");
    assert!(text.contains("&lt;!channel&gt;"), "{text}");
    assert!(text.contains("&lt;@U123&gt; &amp; friends"), "{text}");
    assert!(
        !text.contains('<'),
        "nothing Slack reads as a command: {text}"
    );

    let discord_body = discord.wait_for(1).await[0].json();
    assert_eq!(
        discord_body["allowed_mentions"],
        json!({"parse": []}),
        "{discord_body}"
    );
    let content = discord_body["content"].as_str().expect("a content field");
    assert!(content.contains("<!channel> @everyone"), "{content}");
}

// ---- Command sinks ----

/// A command sink running `sh -c script`, with extra TOML lines.
fn command_sink(name: &str, script: &str, extra: &str) -> SinkSettings {
    SinkSettings {
        args: vec!["-c".into(), script.into()],
        ..sink(&format!(
            "name = \"{name}\"\nkind = \"command\"\nprogram = \"sh\"\n{extra}"
        ))
    }
}

/// Whether process `pid` is gone (or a zombie waiting to be reaped).
fn is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// Waits (at most 10 s) for the process whose id the script wrote to `file`
/// to be gone.
async fn wait_until_gone(file: &std::path::Path) {
    let pid: u32 = std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("the script wrote {}: {e}", file.display()))
        .trim()
        .parse()
        .expect("a pid");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !is_gone(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "the background child {pid} is still running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_command_sees_only_the_passed_through_variables_the_events_and_its_own() {
    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().join("env");
    let app = app_with_sinks(vec![command_sink(
        "env",
        &format!("env -0 > '{}'", out.display()),
        "env = { GREETING = \"hello world\", api_url = \"https://x\" }",
    )])
    .await;
    app.post(json!({"event": "AVAILABLE", "finetune_id": "envy"}))
        .await;
    the_delivery(&app, "the command ran", |d| d["status"] == "delivered").await;

    let text = std::fs::read_to_string(&out).expect("the command wrote its environment");
    let seen: std::collections::BTreeMap<&str, &str> = text
        .split('\0')
        .filter(|line| !line.is_empty())
        .filter_map(|line| line.split_once('='))
        .collect();
    let given = [
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "TZ",
        "TUNEHOOK_EVENT_ID",
        "TUNEHOOK_FINETUNE_ID",
        "TUNEHOOK_STATUS",
        "TUNEHOOK_PREVIOUS_STATUS",
        "TUNEHOOK_EVENT_TYPE",
        "GREETING",
        "api_url",
    ];
    // What `sh` sets for itself.
    let shell = ["PWD", "OLDPWD", "SHLVL", "_"];
    let allowed = |name: &str| given.contains(&name) || shell.contains(&name);
    // The test process has variables of its own (cargo sets several), so a
    // command that inherited them would show some.
    let inherited: Vec<String> = std::env::vars()
        .map(|(name, _)| name)
        .filter(|name| !allowed(name))
        .collect();
    assert!(!inherited.is_empty(), "the test needs an outside variable");
    let leaked: Vec<&&str> = seen.keys().filter(|name| !allowed(name)).collect();
    assert!(leaked.is_empty(), "inherited {leaked:?}");
    assert_eq!(
        seen.get("PATH").copied(),
        std::env::var("PATH").ok().as_deref()
    );
    assert_eq!(seen["GREETING"], "hello world");
    assert_eq!(seen["api_url"], "https://x");
    assert_eq!(seen["TUNEHOOK_EVENT_TYPE"], "finetune.status_changed");
    assert_eq!(seen["TUNEHOOK_FINETUNE_ID"], "envy");
    assert_eq!(seen["TUNEHOOK_STATUS"], "AVAILABLE");
    assert_eq!(seen["TUNEHOOK_PREVIOUS_STATUS"], "");
}

#[tokio::test]
async fn a_command_is_told_the_event_type_and_an_update_has_no_previous_status() {
    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().join("seen");
    let app = app_with_sinks(vec![command_sink(
        "updates",
        &format!(
            "echo \"$TUNEHOOK_EVENT_TYPE|$TUNEHOOK_STATUS|$TUNEHOOK_PREVIOUS_STATUS\" > '{}'",
            out.display()
        ),
        "events = [\"finetune.updated\"]",
    )])
    .await;
    app.post(json!({"event": "AVAILABLE", "finetune_id": "upd"}))
        .await;
    app.post(json!({"event": "AVAILABLE", "finetune_id": "upd", "inference_api_url": "https://i"}))
        .await;
    the_delivery(&app, "the update ran", |d| d["status"] == "delivered").await;
    let seen = std::fs::read_to_string(&out).expect("the command ran");
    assert_eq!(seen.trim(), "finetune.updated|AVAILABLE|");
}

#[tokio::test]
async fn a_background_child_holding_the_pipes_does_not_hold_the_attempt_and_is_killed() {
    let dir = tempfile::tempdir().expect("dir");
    let pid = dir.path().join("sleeper.pid");
    let app = app_with_sinks(vec![command_sink(
        "bg",
        &format!("sleep 30 & echo $! > '{}'; echo started", pid.display()),
        // Long enough that only the grace after exit can end it in time.
        "timeout = \"2m\"",
    )])
    .await;
    app.post(json!({"event": "AVAILABLE", "finetune_id": "bg"}))
        .await;
    let delivery = the_delivery(&app, "the attempt ended", |d| d["attempts"] != 0).await;
    assert_eq!(delivery["status"], "delivered", "{delivery}");
    assert_eq!(delivery["attempt_log"][0]["exit_code"], 0);
    assert_eq!(delivery["attempt_log"][0]["response"], "started\n");
    wait_until_gone(&pid).await;
}

#[tokio::test]
async fn at_the_timeout_the_whole_process_group_is_killed() {
    let dir = tempfile::tempdir().expect("dir");
    let pid = dir.path().join("sleeper.pid");
    let app = app_with_sinks(vec![command_sink(
        "slow",
        &format!(
            "sleep 30 > /dev/null 2>&1 & echo $! > '{}'; wait",
            pid.display()
        ),
        "timeout = \"1s\"\nretry_schedule = []",
    )])
    .await;
    app.post(json!({"event": "AVAILABLE", "finetune_id": "slow"}))
        .await;
    let delivery = the_delivery(&app, "the attempt timed out", |d| d["status"] == "dead").await;
    assert!(
        delivery["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("timed out")),
        "{delivery}"
    );
    // The sleeper does not hold the pipes: only the group kill reaches it.
    wait_until_gone(&pid).await;
}

#[tokio::test]
async fn a_large_event_and_a_flood_of_output_neither_deadlock_nor_fill_memory() {
    let dir = tempfile::tempdir().expect("dir");
    let stdin = dir.path().join("stdin.json");
    // The program writes 3 MB before it reads its input: with input written
    // first and output read after, both sides would wait on a full pipe.
    let app = app_with_sinks(vec![command_sink(
        "flood",
        &format!(
            "yes | head -c 3000000; cat > '{}'; echo done >&2",
            stdin.display()
        ),
        "timeout = \"2m\"",
    )])
    .await;
    let name = "n".repeat(300_000);
    app.post(json!({"event": "AVAILABLE", "finetune_id": "big", "name": name}))
        .await;
    let delivery = the_delivery(&app, "the attempt ended", |d| d["attempts"] != 0).await;
    assert_eq!(delivery["status"], "delivered", "{delivery}");
    let response = delivery["attempt_log"][0]["response"]
        .as_str()
        .expect("a response");
    assert_eq!(response.len(), 1024, "1 KiB of the output is kept");
    assert!(response.starts_with("y\ny\n"));
    let event: Value =
        serde_json::from_str(&std::fs::read_to_string(&stdin).expect("the input was saved"))
            .expect("the whole event arrived");
    assert_eq!(event["data"]["name"].as_str().map(str::len), Some(300_000));
}

// ---- Segmind: no redirects, bounded answers ----

type Answer = dyn Fn() -> Response + Send + Sync;

/// A real HTTP server on 127.0.0.1 that answers every request with
/// `answer()` and records the headers each one carried.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
}

impl Recorder {
    async fn start(answer: impl Fn() -> Response + Send + Sync + 'static) -> Recorder {
        let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
        let answer: Arc<Answer> = Arc::new(answer);
        let record = Arc::clone(&seen);
        let app = Router::new().fallback(move |headers: HeaderMap| {
            if let Ok(mut seen) = record.lock() {
                seen.push(headers);
            }
            let answer = Arc::clone(&answer);
            async move { answer() }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Recorder { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<HeaderMap> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// A "Segmind" that redirects every call to `elsewhere`, with a secret in
/// the query of the Location.
async fn redirecting_to(elsewhere: &Recorder) -> Recorder {
    let location = format!("{}/collect?token=query-secret", elsewhere.url());
    Recorder::start(move || {
        (StatusCode::FOUND, [("location", location.clone())], "moved").into_response()
    })
    .await
}

fn client(base_url: &str) -> SegmindClient {
    SegmindClient::new(base_url, Secret::new(API_KEY), Duration::from_secs(5)).expect("a client")
}

#[tokio::test]
async fn the_segmind_key_never_follows_a_redirect_to_another_server() {
    let elsewhere = Recorder::start(|| (StatusCode::OK, "[]").into_response()).await;
    let redirector = redirecting_to(&elsewhere).await;

    // A client with reqwest's default policy would take the key along.
    reqwest::Client::new()
        .get(format!("{}/finetune/request/list", redirector.url()))
        .header("x-api-key", API_KEY)
        .send()
        .await
        .expect("followed");
    assert_eq!(
        elsewhere.seen()[0].get("x-api-key").map(|v| v.as_bytes()),
        Some(API_KEY.as_bytes()),
        "the redirect leaks the key when followed"
    );

    let error = client(&redirector.url())
        .list()
        .await
        .expect_err("a redirect is an error");
    let host = elsewhere.addr.to_string();
    match &error {
        SegmindError::Redirected {
            status,
            host: named,
        } => {
            assert_eq!(*status, 302);
            assert_eq!(*named, host);
        }
        other => panic!("not a redirect error: {other:?}"),
    }
    let message = error.to_string();
    assert!(
        message.contains("302") && message.contains(&host),
        "{message}"
    );
    assert!(
        !message.contains("query-secret") && !message.contains("/collect"),
        "{message}"
    );
    assert_eq!(
        elsewhere.seen().len(),
        1,
        "only the default client got there"
    );
    assert_eq!(redirector.seen().len(), 2);
}

#[tokio::test]
async fn a_redirecting_segmind_fails_the_pass_with_kind_redirected() {
    let elsewhere = Recorder::start(|| (StatusCode::OK, "[]").into_response()).await;
    let redirector = redirecting_to(&elsewhere).await;
    let app = spawn_app_with(|s| {
        s.segmind.base_url = redirector.url();
        s.segmind.api_key = Some(Secret::new(API_KEY));
        s.reconcile.initial_delay = Duration::from_secs(3600);
    })
    .await;
    let (status, body) = app.post_api("/v1/reconcile", json!({})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"]["code"], "redirected", "{body}");
    assert!(elsewhere.seen().is_empty());
}

/// `n` listed jobs of about 100 bytes each.
fn many_jobs(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"finetune_id": format!("job-{i}"), "status": "TRAINING", "name": "x".repeat(50)}))
        .collect()
}

#[tokio::test]
async fn a_segmind_answer_larger_than_the_cap_fails_the_call() {
    let fake = FakeSegmind::start().await;
    fake.set_jobs(many_jobs(100));
    let listed = client(&fake.url())
        .list()
        .await
        .expect("under the default cap");
    assert_eq!(listed.len(), 100);

    let error = client(&fake.url())
        .with_max_response_bytes(1024)
        .list()
        .await
        .expect_err("past the cap");
    assert!(
        matches!(error, SegmindError::TooLarge { limit: 1024 }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("segmind.max_response_bytes"),
        "{error}"
    );

    let app = spawn_app_with(|s| {
        s.segmind.base_url = fake.url();
        s.segmind.api_key = Some(Secret::new(API_KEY));
        s.segmind.max_response_bytes = 1024;
        s.reconcile.initial_delay = Duration::from_secs(3600);
    })
    .await;
    let (status, body) = app.post_api("/v1/reconcile", json!({})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"]["code"], "too_large", "{body}");
    assert!(
        app.all_jobs().await.is_empty(),
        "a failed pass changes nothing"
    );
}

#[tokio::test]
async fn an_answer_without_a_length_is_cut_off_once_it_passes_the_cap() {
    let text = serde_json::to_string(&many_jobs(20_000)).expect("json");
    let bytes = text.len();
    let body = Arc::new(text.into_bytes());
    let streaming = Recorder::start(move || {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            body.chunks(16 * 1024).map(|c| Ok(c.to_vec())).collect();
        // A stream has no Content-Length: only counting the bytes stops it.
        axum::body::Body::from_stream(futures::stream::iter(chunks)).into_response()
    })
    .await;
    let probe = reqwest::get(streaming.url()).await.expect("an answer");
    assert_eq!(probe.content_length(), None, "the answer is chunked");
    let listed = client(&streaming.url())
        .with_max_response_bytes(bytes as u64)
        .list()
        .await
        .expect("at the cap");
    assert_eq!(listed.len(), 20_000);
    let error = client(&streaming.url())
        .with_max_response_bytes(bytes as u64 / 2)
        .list()
        .await
        .expect_err("past the cap");
    assert!(matches!(error, SegmindError::TooLarge { .. }), "{error:?}");
}
