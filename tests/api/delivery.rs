//! Forwarding transitions to sinks: the event, signatures, retries, dead
//! letters, per-job order, restarts, filters, and each sink kind.

use crate::{
    fake_sink::{FAIL, FakeSink, OK, Reply, earlier_tries},
    helpers::{TestApp, spawn_app_with},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;
use std::time::Duration;
use tunehook::config::{Settings, SinkSettings};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A sink from its TOML, as a user writes it.
fn sink(toml_text: &str) -> SinkSettings {
    toml::from_str(toml_text).expect("a valid sink")
}

/// An `http` sink named `name` posting to `url`.
fn http_sink(name: &str, url: &str) -> SinkSettings {
    sink(&format!(
        "name = \"{name}\"\nkind = \"http\"\nurl = \"{url}\""
    ))
}

fn fast_retries(settings: &mut Settings) {
    settings.delivery.retry_schedule = vec![Duration::from_millis(20); 3];
    settings.delivery.timeout = Duration::from_secs(5);
}

async fn app_with_sinks(sinks: Vec<SinkSettings>) -> TestApp {
    spawn_app_with(|s| {
        fast_retries(s);
        s.sinks = sinks;
    })
    .await
}

/// The Standard Webhooks check, written from the specification alone.
fn verify(secret: &str, id: &str, timestamp: &str, body: &[u8], signatures: &str) -> bool {
    let Ok(key) = STANDARD.decode(secret.trim_start_matches("whsec_")) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    signatures.split(' ').any(|s| s == expected)
}

async fn deliveries(app: &TestApp, query: &str) -> Vec<Value> {
    let (status, body) = app.get(&format!("/v1/deliveries?{query}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["deliveries"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn the_independent_check_accepts_the_specifications_test_vector() {
    assert!(verify(
        SECRET,
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "1614265330",
        br#"{"test": 2432232314}"#,
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    ));
    assert!(!verify(
        SECRET,
        "msg_other",
        "1614265330",
        br#"{"test": 2432232314}"#,
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    ));
}

#[tokio::test]
async fn a_transition_reaches_an_http_sink_signed_per_standard_webhooks() {
    let fake = FakeSink::start().await;
    let app = app_with_sinks(vec![sink(&format!(
        "name = \"backend\"\nkind = \"http\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\nheaders = {{ \"x-team\" = \"ml\" }}",
        fake.url()
    ))])
    .await;
    app.post(json!({"event": "INFERENCE_QUEUED", "finetune_id": "ft", "name": "portrait"}))
        .await;
    app.post(
        json!({"event": "AVAILABLE", "finetune_id": "ft", "inference_api_url": "https://api/x"}),
    )
    .await;

    let received = fake.wait_for(2).await;
    let request = &received[1];
    let event = request.json();
    assert_eq!(request.header("content-type"), "application/json");
    assert!(request.header("user-agent").starts_with("tunehook/"));
    assert_eq!(request.header("x-team"), "ml");
    assert_eq!(
        request.header("webhook-id"),
        event["id"].as_str().unwrap_or("?")
    );
    assert!(
        verify(
            SECRET,
            request.header("webhook-id"),
            request.header("webhook-timestamp"),
            &request.body,
            request.header("webhook-signature"),
        ),
        "the signature verifies"
    );
    let timestamp: i64 = request
        .header("webhook-timestamp")
        .parse()
        .expect("seconds");
    assert!((chrono::Utc::now().timestamp() - timestamp).abs() < 60);

    assert_eq!(event["type"], "finetune.status_changed");
    assert_eq!(event["data"]["finetune_id"], "ft");
    assert_eq!(event["data"]["name"], "portrait");
    assert_eq!(event["data"]["status"], "AVAILABLE");
    assert_eq!(event["data"]["previous_status"], "INFERENCE_QUEUED");
    assert_eq!(event["data"]["source"], "webhook");
    let mut job = app.job("ft").await;
    let transitions = job["transitions"].clone();
    if let Some(j) = job.as_object_mut() {
        for what_tunehook_keeps in [
            "transitions",
            "updates",
            "segmind_status",
            "segmind_seen_at",
            "webhook_status",
        ] {
            j.remove(what_tunehook_keeps);
        }
    }
    assert_eq!(event["data"]["job"], job, "the job as the API shows it");
    assert_eq!(
        event["id"], transitions[1]["id"],
        "the event id is the transition's id"
    );
    assert!(
        chrono::DateTime::parse_from_rfc3339(event["timestamp"].as_str().unwrap_or("")).is_ok()
    );

    let job = app
        .wait_for("/v1/jobs/ft", "both deliveries shown on the job", |job| {
            job["transitions"].as_array().is_some_and(|ts| {
                ts.iter()
                    .all(|t| t["deliveries"][0]["status"] == "delivered")
            })
        })
        .await;
    assert_eq!(job["transitions"][1]["deliveries"][0]["sink"], "backend");
}

#[tokio::test]
async fn a_sink_that_fails_twice_gets_the_event_once_on_the_third_attempt() {
    let fake = FakeSink::answering(|body, received| {
        if earlier_tries(body, received) < 2 {
            FAIL
        } else {
            OK
        }
    })
    .await;
    let app = app_with_sinks(vec![http_sink("b", &fake.url())]).await;
    app.post(json!({"event": "AVAILABLE", "finetune_id": "f3"}))
        .await;

    let list = app
        .wait_for("/v1/deliveries", "a delivered delivery", |b| {
            b["deliveries"][0]["status"] == "delivered"
        })
        .await;
    let delivery = &list["deliveries"][0];
    assert_eq!(delivery["attempts"], 3);
    assert_eq!(delivery["sink"], "b");
    assert_eq!(delivery["finetune_id"], "f3");
    assert!(delivery["delivered_at"].is_string());
    let received = fake.received();
    assert_eq!(received.len(), 3);
    assert!(
        received
            .iter()
            .all(|r| r.header("webhook-id") == received[0].header("webhook-id")),
        "one id across retries"
    );
    assert!(
        received.iter().all(|r| r.body == received[0].body),
        "the same body across retries"
    );

    let (_, detail) = app.get(&format!("/v1/deliveries/{}", delivery["id"])).await;
    let log = detail["attempt_log"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let codes: Vec<i64> = log
        .iter()
        .filter_map(|a| a["status_code"].as_i64())
        .collect();
    assert_eq!(codes, vec![500, 500, 204]);
    assert!(log[0]["error"].is_string() && log[2]["error"].is_null());
    assert_eq!(log[0]["response"], "ok");
}

#[tokio::test]
async fn retry_after_from_the_sink_is_honoured() {
    let fake = FakeSink::answering(|body, received| {
        if earlier_tries(body, received) == 0 {
            Reply {
                status: 429,
                retry_after: Some(1),
                ..OK
            }
        } else {
            OK
        }
    })
    .await;
    let app = app_with_sinks(vec![http_sink("b", &fake.url())]).await;
    app.post(json!({"event": "AVAILABLE", "finetune_id": "ra"}))
        .await;
    let received = fake.wait_for(2).await;
    let gap = received[1].at.duration_since(received[0].at);
    assert!(
        gap >= Duration::from_millis(900),
        "waited {gap:?}, not the 20ms schedule"
    );
}

#[tokio::test]
async fn an_exhausted_delivery_is_dead_until_retried_by_hand() {
    let fake = FakeSink::answering(|_, _| FAIL).await;
    let app = app_with_sinks(vec![http_sink("b", &fake.url())]).await;
    app.post(json!({"event": "FAILED", "finetune_id": "dead"}))
        .await;

    let list = app
        .wait_for("/v1/deliveries?status=dead", "a dead delivery", |b| {
            b["deliveries"].as_array().is_some_and(|d| d.len() == 1)
        })
        .await;
    let delivery = &list["deliveries"][0];
    assert_eq!(
        delivery["attempts"], 4,
        "one attempt, then one per scheduled wait"
    );
    assert_eq!(delivery["last_status_code"], 500);
    assert!(
        delivery["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("500")
    );
    let (_, sinks) = app.get("/v1/sinks").await;
    assert_eq!(sinks["sinks"][0]["dead"], 1);
    assert_eq!(sinks["sinks"][0]["pending"], 0);
    assert!(sinks["sinks"][0]["last_failure"].is_string());

    fake.answer(|_, _| OK);
    let id = delivery["id"].as_i64().expect("id");
    let (status, body) = app
        .post_api(&format!("/v1/deliveries/{id}/retry"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "pending");
    app.wait_for(
        &format!("/v1/deliveries/{id}"),
        "the retried delivery",
        |d| d["status"] == "delivered",
    )
    .await;
    assert_eq!(fake.received().len(), 5);

    let (status, body) = app.post_api("/v1/deliveries/999999/retry", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn a_failing_event_holds_later_events_of_its_job_but_not_other_jobs() {
    let fake = FakeSink::answering(|body, received| {
        let first_of_stuck = body["data"]["finetune_id"] == "stuck"
            && body["data"]["status"] == "TRAINING_COMPLETED";
        if first_of_stuck && earlier_tries(body, received) < 3 {
            FAIL
        } else {
            OK
        }
    })
    .await;
    let app = spawn_app_with(|s| {
        s.delivery.retry_schedule = vec![Duration::from_millis(100); 5];
        s.sinks = vec![http_sink("b", &fake.url())];
    })
    .await;
    for (id, status) in [
        ("stuck", "TRAINING_COMPLETED"),
        ("stuck", "AVAILABLE"),
        ("free", "TRAINING_COMPLETED"),
        ("free", "AVAILABLE"),
    ] {
        app.post(json!({"event": status, "finetune_id": id})).await;
    }
    // Four tries of stuck's first event, its second, and free's two.
    let received = fake.wait_for(7).await;
    let seen: Vec<(String, String)> = received
        .iter()
        .map(|r| {
            let e = r.json();
            let id = e["data"]["finetune_id"].as_str().unwrap_or("").to_owned();
            let status = e["data"]["status"].as_str().unwrap_or("").to_owned();
            (id, status)
        })
        .collect();
    let stuck: Vec<&str> = seen
        .iter()
        .filter(|s| s.0 == "stuck")
        .map(|s| s.1.as_str())
        .collect();
    assert_eq!(
        stuck,
        vec!["TRAINING_COMPLETED"; 4]
            .into_iter()
            .chain(["AVAILABLE"])
            .collect::<Vec<_>>()
    );
    let free: Vec<&str> = seen
        .iter()
        .filter(|s| s.0 == "free")
        .map(|s| s.1.as_str())
        .collect();
    assert_eq!(free, vec!["TRAINING_COMPLETED", "AVAILABLE"]);
    let position = |id: &str, status: &str| {
        seen.iter()
            .position(|s| s.0 == id && s.1 == status)
            .unwrap_or(usize::MAX)
    };
    let last_stuck_try = seen
        .iter()
        .rposition(|s| s.0 == "stuck" && s.1 == "TRAINING_COMPLETED")
        .unwrap_or(0);
    assert!(
        position("free", "AVAILABLE") < last_stuck_try,
        "the other job flowed meanwhile: {seen:?}"
    );
}

#[tokio::test]
async fn deliveries_pending_at_shutdown_are_delivered_after_a_restart() {
    let fake = FakeSink::answering(|_, _| Reply { status: 503, ..OK }).await;
    let app = spawn_app_with(|s| {
        s.delivery.retry_schedule = vec![Duration::from_millis(50); 50];
        s.sinks = vec![http_sink("b", &fake.url())];
    })
    .await;
    for i in 0..5 {
        app.post(json!({"event": "AVAILABLE", "finetune_id": format!("r{i}")}))
            .await;
    }
    fake.wait_for(5).await;
    let app = app.restart().await;
    let before = fake.received().len();
    fake.answer(|_, _| OK);
    app.wait_for(
        "/v1/deliveries?status=delivered",
        "all delivered after restart",
        |b| b["deliveries"].as_array().is_some_and(|d| d.len() == 5),
    )
    .await;
    assert!(
        fake.received().len() > before,
        "attempts resumed after the restart"
    );
}

#[tokio::test]
async fn a_status_filter_forwards_only_the_statuses_it_names() {
    let all = FakeSink::start().await;
    let done = FakeSink::start().await;
    let app = app_with_sinks(vec![
        http_sink("all", &all.url()),
        sink(&format!("name = \"done\"\nkind = \"http\"\nurl = \"{}\"\nstatuses = [\"available\", \"FAILED\"]", done.url())),
    ])
    .await;
    for status in ["TRAINING_COMPLETED", "INFERENCE_QUEUED", "AVAILABLE"] {
        app.post(json!({"event": status, "finetune_id": "flt"}))
            .await;
    }
    all.wait_for(3).await;
    app.wait_for("/v1/deliveries?status=pending", "nothing pending", |b| {
        b["deliveries"].as_array().is_some_and(|d| d.is_empty())
    })
    .await;
    let received = done.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].json()["data"]["status"], "AVAILABLE");
    let (_, sinks) = app.get("/v1/sinks").await;
    assert_eq!(
        sinks["sinks"][1]["statuses"],
        json!(["AVAILABLE", "FAILED"])
    );
    assert_eq!(sinks["sinks"][0]["statuses"], json!(null));
}

#[tokio::test]
async fn a_sink_added_later_receives_only_new_events_until_replayed() {
    let fake = FakeSink::start().await;
    let app = app_with_sinks(vec![]).await;
    app.post(json!({"event": "AVAILABLE", "finetune_id": "old"}))
        .await;
    let url = fake.url();
    let app = app
        .restart_with(|s| s.sinks = vec![http_sink("late", &url)])
        .await;
    app.post(json!({"event": "AVAILABLE", "finetune_id": "new"}))
        .await;
    let received = fake.wait_for(1).await;
    assert_eq!(received[0].json()["data"]["finetune_id"], "new");

    let (status, body) = app
        .post_api(
            "/v1/sinks/late/replay",
            json!({"since": "2000-01-01T00:00:00Z", "finetune_id": "old"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["enqueued"], 1);
    let received = fake.wait_for(2).await;
    assert_eq!(received[1].json()["data"]["finetune_id"], "old");
    // An event whose delivery is still pending is not queued again: wait
    // until the replayed one is recorded delivered.
    app.wait_for(
        "/v1/deliveries?status=pending",
        "no pending delivery",
        |b| b["deliveries"].as_array().is_some_and(|d| d.is_empty()),
    )
    .await;

    let (status, body) = app
        .post_api(
            "/v1/sinks/late/replay",
            json!({"since": "2000-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(body["enqueued"], 2, "{status} {body}");
    assert_eq!(body["skipped"], 0, "{body}");
    assert_eq!(body["next_since"], json!(null), "{body}");
    let received = fake.wait_for(4).await;
    let replayed_new = received
        .iter()
        .filter(|r| r.json()["data"]["finetune_id"] == "new")
        .count();
    assert_eq!(replayed_new, 2);
    let ids: Vec<&str> = received.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(
        ids.iter().collect::<std::collections::BTreeSet<_>>().len(),
        2,
        "a replay keeps the event id"
    );

    let (status, _) = app
        .post_api(
            "/v1/sinks/nope/replay",
            json!({"since": "2000-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = app
        .post_api("/v1/sinks/late/replay", json!({"since": "yesterday"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("since")
    );
    let (status, body) = app.post_api("/v1/sinks/late/replay", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn the_file_sink_appends_one_json_line_per_event() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("out/events.jsonl");
    let app = app_with_sinks(vec![sink(&format!(
        "name = \"log\"\nkind = \"file\"\npath = \"{}\"",
        path.display()
    ))])
    .await;
    for status in ["TRAINING_COMPLETED", "AVAILABLE"] {
        app.post(json!({"event": status, "finetune_id": "file"}))
            .await;
    }
    app.wait_for("/v1/deliveries?status=delivered", "two deliveries", |b| {
        b["deliveries"].as_array().is_some_and(|d| d.len() == 2)
    })
    .await;
    let text = std::fs::read_to_string(&path).expect("the file exists");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let statuses: Vec<&str> = lines
        .iter()
        .filter_map(|e| e["data"]["status"].as_str())
        .collect();
    assert_eq!(statuses, vec!["TRAINING_COMPLETED", "AVAILABLE"]);
    assert!(text.ends_with('\n'));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "events are readable by tunehook's user alone");
}

#[tokio::test]
async fn the_command_sink_gets_the_event_on_stdin_and_its_variables() {
    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().display().to_string();
    let script = format!(
        "cat > {out}/$TUNEHOOK_EVENT_ID.json; echo \"$TUNEHOOK_FINETUNE_ID $TUNEHOOK_STATUS $TUNEHOOK_PREVIOUS_STATUS\" > {out}/$TUNEHOOK_EVENT_ID.env"
    );
    let app = app_with_sinks(vec![SinkSettings {
        args: vec!["-c".into(), script],
        ..sink("name = \"cmd\"\nkind = \"command\"\nprogram = \"sh\"")
    }])
    .await;
    app.post(json!({"event": "DEPLOYING", "finetune_id": "c1"}))
        .await;
    app.post(json!({"event": "AVAILABLE", "finetune_id": "c1"}))
        .await;
    app.wait_for("/v1/deliveries?status=delivered", "two deliveries", |b| {
        b["deliveries"].as_array().is_some_and(|d| d.len() == 2)
    })
    .await;
    let job = app.job("c1").await;
    let id = job["transitions"][1]["id"].as_str().expect("id");
    let event: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(format!("{id}.json"))).expect("stdin saved"),
    )
    .expect("json");
    assert_eq!(event["id"], id);
    let env = std::fs::read_to_string(dir.path().join(format!("{id}.env"))).expect("env saved");
    assert_eq!(env.trim(), "c1 AVAILABLE DEPLOYING");
}

#[tokio::test]
async fn a_command_that_exits_non_zero_or_runs_too_long_fails_the_attempt() {
    let app = app_with_sinks(vec![
        SinkSettings {
            args: vec!["-c".into(), "echo nope >&2; exit 3".into()],
            ..sink("name = \"exit\"\nkind = \"command\"\nprogram = \"sh\"")
        },
        SinkSettings {
            args: vec!["-c".into(), "sleep 30".into()],
            timeout: Some(Duration::from_millis(200)),
            retry_schedule: Some(vec![]),
            ..sink("name = \"slow\"\nkind = \"command\"\nprogram = \"sh\"")
        },
    ])
    .await;
    app.post(json!({"event": "AVAILABLE", "finetune_id": "cx"}))
        .await;
    let dead = app
        .wait_for("/v1/deliveries?status=dead", "both dead", |b| {
            b["deliveries"].as_array().is_some_and(|d| d.len() == 2)
        })
        .await;
    let by_sink = |name: &str| {
        dead["deliveries"]
            .as_array()
            .and_then(|d| d.iter().find(|x| x["sink"] == name).cloned())
            .expect("delivery")
    };
    let exit = by_sink("exit");
    assert_eq!(exit["attempts"], 4);
    assert_eq!(exit["last_status_code"], 3, "the exit code");
    let (_, detail) = app.get(&format!("/v1/deliveries/{}", exit["id"])).await;
    assert_eq!(detail["attempt_log"][0]["exit_code"], 3);
    assert_eq!(detail["attempt_log"][0]["response"], "nope\n");
    let slow = by_sink("slow");
    assert_eq!(slow["attempts"], 1, "an empty schedule means one attempt");
    assert!(
        slow["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("timed out"),
        "{slow}"
    );
}

#[tokio::test]
async fn slack_and_discord_get_a_message_naming_the_job_its_change_and_urls() {
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
    app.post(json!({"event": "INFERENCE_QUEUED", "finetune_id": "chat", "name": "portrait"}))
        .await;
    app.post(json!({
        "event": "AVAILABLE", "finetune_id": "chat",
        "trained_model_url": "https://cdn/w.safetensors", "inference_api_url": "https://api/chat"
    }))
    .await;
    for (fake, key) in [(&slack, "text"), (&discord, "content")] {
        let received = fake.wait_for(2).await;
        let body = received[1].json();
        let text = body[key]
            .as_str()
            .unwrap_or_else(|| panic!("a {key} field: {body}"));
        for part in [
            "portrait",
            "chat",
            "INFERENCE_QUEUED",
            "AVAILABLE",
            "https://cdn/w.safetensors",
            "https://api/chat",
        ] {
            assert!(text.contains(part), "{key} lacks {part}: {text}");
        }
    }
}

#[tokio::test]
async fn the_deliveries_list_filters_and_pages() {
    let fake = FakeSink::start().await;
    let app = app_with_sinks(vec![http_sink("b", &fake.url())]).await;
    for i in 0..3 {
        app.post(json!({"event": "AVAILABLE", "finetune_id": format!("p{i}")}))
            .await;
    }
    fake.wait_for(3).await;
    let only = deliveries(&app, "finetune_id=p1").await;
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["finetune_id"], "p1");
    for field in [
        "id",
        "sink",
        "event_id",
        "finetune_id",
        "status",
        "attempts",
        "next_attempt_at",
        "last_error",
        "last_status_code",
        "delivered_at",
    ] {
        assert!(only[0].get(field).is_some(), "missing {field}");
    }
    let (_, page) = app.get("/v1/deliveries?limit=2").await;
    assert_eq!(page["deliveries"].as_array().map(Vec::len), Some(2));
    let cursor = page["next_cursor"].as_str().expect("a cursor");
    let (_, rest) = app
        .get(&format!("/v1/deliveries?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(rest["deliveries"].as_array().map(Vec::len), Some(1));
    assert!(deliveries(&app, "sink=other").await.is_empty());
    let (status, body) = app.get("/v1/deliveries?status=lost").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("status")
    );
    let (status, _) = app.get("/v1/deliveries/abc").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_sink_that_refuses_connections_then_fails_then_recovers_gets_everything_in_order() {
    // An address where nothing listens yet.
    let addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("addr")
    };
    let app = spawn_app_with(|s| {
        s.delivery.retry_schedule = vec![Duration::from_millis(50); 100];
        s.sinks = vec![http_sink("b", &format!("http://{addr}/hook"))];
    })
    .await;
    let steps = ["TRAINING_COMPLETED", "INFERENCE_QUEUED", "AVAILABLE"];
    for step in steps {
        for job in ["j1", "j2", "j3"] {
            app.post(json!({"event": step, "finetune_id": job})).await;
        }
    }
    // Refused connections are recorded as failed attempts.
    app.wait_for(
        "/v1/deliveries?limit=500",
        "failed attempts while the sink is down",
        |b| {
            b["deliveries"]
                .as_array()
                .is_some_and(|d| d.iter().any(|x| x["attempts"].as_i64().unwrap_or(0) >= 2))
        },
    )
    .await;
    // The sink comes back answering 500 for a while, then recovers.
    let fake = FakeSink::answering_on(
        addr,
        |_, received| if received.len() < 6 { FAIL } else { OK },
    )
    .await;
    app.wait_for(
        "/v1/deliveries?status=delivered&limit=500",
        "all delivered",
        |b| b["deliveries"].as_array().is_some_and(|d| d.len() == 9),
    )
    .await;
    assert!(
        deliveries(&app, "status=dead").await.is_empty(),
        "nothing dead"
    );
    let delivered: Vec<Value> = fake
        .received()
        .iter()
        .filter(|r| r.json()["id"].is_string())
        .map(|r| r.json())
        .collect();
    for job in ["j1", "j2", "j3"] {
        // Every try of this job's events, in arrival order: a later event is
        // never tried before an earlier one is through.
        let tried: Vec<usize> = delivered
            .iter()
            .filter(|e| e["data"]["finetune_id"] == job)
            .filter_map(|e| steps.iter().position(|s| e["data"]["status"] == *s))
            .collect();
        assert!(
            tried.windows(2).all(|w| w[0] <= w[1]),
            "{job} out of order: {tried:?}"
        );
        assert_eq!(tried.last(), Some(&2), "{job} got its last event");
    }
}

#[tokio::test]
async fn events_behind_a_failing_one_wait_and_a_retried_event_goes_first() {
    // The sink refuses `queue`'s TRAINING_COMPLETED until told otherwise.
    let fake = FakeSink::answering(|body, _| {
        if body["data"]["status"] == "TRAINING_COMPLETED" {
            FAIL
        } else {
            OK
        }
    })
    .await;
    let app = spawn_app_with(|s| {
        // After one failure, the next try would be an hour away.
        s.delivery.retry_schedule = vec![Duration::from_secs(3600)];
        s.sinks = vec![http_sink("b", &fake.url())];
    })
    .await;
    for status in ["TRAINING_INITIATED", "TRAINING_COMPLETED", "AVAILABLE"] {
        app.post(json!({"event": status, "finetune_id": "queue"}))
            .await;
    }
    fake.wait_for(2).await;
    let list = app
        .wait_for(
            "/v1/deliveries?finetune_id=queue",
            "the failed attempt recorded",
            |b| b["deliveries"][1]["attempts"] == 1,
        )
        .await;
    // Newest first: AVAILABLE waits (no time of its own), TRAINING_COMPLETED
    // is due in an hour, TRAINING_INITIATED is delivered.
    let rows = list["deliveries"].as_array().cloned().unwrap_or_default();
    let shape: Vec<(&str, bool)> = rows
        .iter()
        .map(|d| {
            (
                d["status"].as_str().unwrap_or(""),
                d["next_attempt_at"].is_string(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        vec![("pending", false), ("pending", true), ("delivered", false)]
    );

    // Sending the delivered first event again puts it ahead of the queue;
    // once it is through, the rest follow at once, in order.
    fake.answer(|_, _| OK);
    let first = rows[2]["id"].as_i64().expect("id");
    let (status, body) = app
        .post_api(&format!("/v1/deliveries/{first}/retry"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let received = fake.wait_for(5).await;
    let order: Vec<String> = received
        .iter()
        .map(|r| r.json()["data"]["status"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        order,
        [
            "TRAINING_INITIATED",
            "TRAINING_COMPLETED",
            "TRAINING_INITIATED",
            "TRAINING_COMPLETED",
            "AVAILABLE"
        ]
    );
    app.wait_for("/v1/sinks", "an empty queue", |b| {
        b["sinks"][0]["pending"] == 0
    })
    .await;
}

#[tokio::test]
async fn an_event_retried_by_hand_waits_while_its_job_has_an_event_in_flight() {
    // The sink takes its time over AVAILABLE.
    let fake = FakeSink::answering(|body, _| {
        if body["data"]["status"] == "AVAILABLE" {
            Reply {
                delay: Duration::from_millis(600),
                ..OK
            }
        } else {
            OK
        }
    })
    .await;
    let app = app_with_sinks(vec![http_sink("b", &fake.url())]).await;
    app.post(json!({"event": "TRAINING_COMPLETED", "finetune_id": "slow"}))
        .await;
    let delivered = app
        .wait_for(
            "/v1/deliveries?finetune_id=slow&status=delivered",
            "the first event delivered",
            |b| b["deliveries"].as_array().is_some_and(|d| d.len() == 1),
        )
        .await;
    let first = delivered["deliveries"][0]["id"].as_i64().expect("id");
    app.post(json!({"event": "AVAILABLE", "finetune_id": "slow"}))
        .await;
    fake.wait_for(2).await;

    // AVAILABLE is at the sink; the first event, sent again, must not
    // overtake it.
    let (status, body) = app
        .post_api(&format!("/v1/deliveries/{first}/retry"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let received = fake.wait_for(3).await;
    let statuses: Vec<Value> = received
        .iter()
        .map(|r| r.json()["data"]["status"].clone())
        .collect();
    assert_eq!(
        statuses,
        [
            json!("TRAINING_COMPLETED"),
            json!("AVAILABLE"),
            json!("TRAINING_COMPLETED")
        ]
    );
    let gap = received[2].at.duration_since(received[1].at);
    assert!(
        gap >= Duration::from_millis(550),
        "sent again {gap:?} after AVAILABLE arrived, before the sink answered it"
    );
}
