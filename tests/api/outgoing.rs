//! What tunehook sends out and to whom: command sinks run with only the
//! environment they are given and in a process group of their own, chat
//! messages cannot ping anyone, a sink's `Retry-After` never shortens the
//! schedule, and Segmind's key never follows a redirect.

use crate::{
    fake_sink::{FakeSink, OK, Reply, earlier_tries},
    helpers::{TestApp, spawn_app_with},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use tunehook::config::SinkSettings;

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
    assert!(!text.contains('<'), "nothing Slack reads as a command: {text}");

    let discord_body = discord.wait_for(1).await[0].json();
    assert_eq!(
        discord_body["allowed_mentions"],
        json!({"parse": []}),
        "{discord_body}"
    );
    let content = discord_body["content"].as_str().expect("a content field");
    assert!(content.contains("<!channel> @everyone"), "{content}");
}
