//! Reconciling with Segmind: jobs only the API knows, exactly-once across
//! webhooks and passes, details for missing jobs, backoff, auth failures,
//! bad answers, drift and enrichment.

use crate::{
    fake_segmind::{API_KEY, FakeSegmind, ListAnswer},
    fake_sink::FakeSink,
    helpers::{TestApp, spawn_app, spawn_app_with, transition_statuses},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use tunehook::config::{Secret, Settings};

/// Settings for an app that talks to `fake`, with no pass of its own unless
/// the test asks for one. Webhooks are applied as they come, so that these
/// tests see the reconciler alone (`tests/api/confirmation.rs` covers
/// confirming webhooks with the API).
fn segmind(settings: &mut Settings, fake: &FakeSegmind) {
    settings.segmind.base_url = fake.url();
    settings.segmind.api_key = Some(Secret::new(API_KEY));
    settings.ingest.confirm = Some(tunehook::config::Confirm::Off);
    settings.segmind.timeout = Duration::from_secs(2);
    settings.reconcile.initial_delay = Duration::from_secs(3600);
    settings.reconcile.interval = Duration::from_secs(3600);
}

async fn app_for(fake: &FakeSegmind) -> TestApp {
    spawn_app_with(|s| segmind(s, fake)).await
}

async fn pass(app: &TestApp) -> (StatusCode, Value) {
    app.post_api("/v1/reconcile", json!({})).await
}

fn listed(id: &str, status: &str) -> Value {
    json!({"id": id, "finetune_id": id, "name": format!("{id}-name"), "status": status,
           "base_model": "FLUX_PRO", "theme": "GENERAL", "train_type": "LORA", "source_type": "AWS_S3",
           "data_source_path": "https://data/set.zip", "segmind_public_model": false,
           "cloud_storage_url": null, "error_message": null})
}

#[tokio::test]
async fn a_job_only_the_list_knows_appears_with_source_reconcile() {
    let fake = FakeSegmind::start().await;
    fake.set_jobs(vec![listed("only-list", "TRAINING")]);
    let app = app_for(&fake).await;
    let (status, report) = pass(&app).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["jobs_listed"], 1);
    assert_eq!(report["transitions"], 1);
    let job = app.job("only-list").await;
    assert_eq!(job["status"], "TRAINING");
    assert_eq!(job["transitions"][0]["source"], "reconcile");
    assert_eq!(job["transitions"][0]["receipt_id"], json!(null));
    assert_eq!(job["name"], "only-list-name");
    assert_eq!(job["theme"], "GENERAL");
    assert_eq!(job["train_type"], "LORA");
    assert_eq!(job["source_type"], "AWS_S3");
    assert_eq!(job["data_source_path"], "https://data/set.zip");
    assert_eq!(job["public_model"], false);

    fake.set_jobs(vec![listed("only-list", "AVAILABLE")]);
    pass(&app).await;
    let job = app.job("only-list").await;
    assert_eq!(transition_statuses(&job), vec!["TRAINING", "AVAILABLE"]);
    assert_eq!(job["transitions"][1]["from_status"], "TRAINING");
}

#[tokio::test]
async fn a_status_seen_by_a_webhook_and_by_a_pass_is_recorded_and_delivered_once() {
    let fake = FakeSegmind::start().await;
    let sink = FakeSink::start().await;
    let sink_url = sink.url();
    let app = spawn_app_with(|s| {
        segmind(s, &fake);
        s.sinks = vec![
            toml::from_str(&format!(
                "name = \"b\"\nkind = \"http\"\nurl = \"{sink_url}\""
            ))
            .expect("sink"),
        ];
    })
    .await;

    // Webhook first, then the pass.
    app.post(json!({"event": "AVAILABLE", "finetune_id": "w-first"}))
        .await;
    fake.set_jobs(vec![listed("w-first", "AVAILABLE")]);
    let (_, report) = pass(&app).await;
    assert_eq!(report["transitions"], 0, "{report}");

    // The pass first, then the webhook.
    fake.set_jobs(vec![
        listed("w-first", "AVAILABLE"),
        listed("p-first", "AVAILABLE"),
    ]);
    pass(&app).await;
    let (_, body) = app
        .post(json!({"event": "AVAILABLE", "finetune_id": "p-first"}))
        .await;
    assert_eq!(body["outcome"], "duplicate");

    // Both at once, many times over.
    let ids: Vec<String> = (0..20).map(|i| format!("both-{i}")).collect();
    fake.set_jobs(
        ids.iter()
            .map(|id| listed(id, "TRAINING_COMPLETED"))
            .collect(),
    );
    let webhooks = ids
        .iter()
        .map(|id| app.post(json!({"event": "TRAINING_COMPLETED", "finetune_id": id})));
    let (_, (status, _)) = tokio::join!(futures::future::join_all(webhooks), pass(&app));
    assert_eq!(status, StatusCode::OK);

    for id in ids.iter().map(String::as_str).chain(["w-first", "p-first"]) {
        let job = app.job(id).await;
        assert_eq!(
            job["transitions"].as_array().map(Vec::len),
            Some(1),
            "{id}: {job}"
        );
    }
    // The pass also brings fields the webhooks lacked (names, the base
    // model): those are `finetune.updated` events, not status changes.
    let status_changes = |received: &[crate::fake_sink::Received]| -> Vec<String> {
        received
            .iter()
            .filter(|r| r.json()["type"] == "finetune.status_changed")
            .map(|r| r.header("webhook-id").to_owned())
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while status_changes(&sink.received()).len() < 22 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let delivered = status_changes(&sink.received());
    assert_eq!(delivered.len(), 22, "one delivery per transition");
    let unique: std::collections::BTreeSet<&String> = delivered.iter().collect();
    assert_eq!(unique.len(), 22);
}

#[tokio::test]
async fn an_unfinished_job_missing_from_the_list_is_fetched_through_details() {
    let fake = FakeSegmind::start().await;
    let app = app_for(&fake).await;
    fake.set_jobs(vec![listed("done", "AVAILABLE")]);
    pass(&app).await;
    app.post(json!({"event": "TRAINING_INITIATED", "finetune_id": "hidden"}))
        .await;
    // The webhook's own background lookup finds nothing yet.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fake.calls("/details").is_empty() {
        assert!(std::time::Instant::now() < deadline, "no background lookup");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fake.set_jobs(vec![]);
    fake.set_details("hidden", json!({"finetune_id": "hidden", "status": "FAILED", "error_message": "out of memory", "slug": "h"}));

    let (status, report) = pass(&app).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["details_fetched"], 1);
    let asked: Vec<Value> = fake
        .calls("/details")
        .iter()
        .map(|c| c.body.clone())
        .collect();
    assert!(
        asked.contains(&json!({"request_id": "hidden"})),
        "{asked:?}"
    );
    assert!(
        !asked.contains(&json!({"request_id": "done"})),
        "finished jobs are not asked about"
    );
    let job = app.job("hidden").await;
    assert_eq!(job["status"], "FAILED");
    assert_eq!(job["error_message"], "out of memory");
    assert_eq!(job["transitions"][1]["source"], "reconcile");
}

#[tokio::test]
async fn a_rate_limited_pass_waits_as_asked_and_then_succeeds() {
    let fake = FakeSegmind::start().await;
    fake.set_jobs(vec![listed("rl", "QUEUED")]);
    fake.answer_list(vec![ListAnswer::Status {
        status: 429,
        body: r#"{"error": "Too many requests"}"#.into(),
        retry_after: Some(1),
    }]);
    let app = spawn_app_with(|s| {
        segmind(s, &fake);
        s.reconcile.initial_delay = Duration::from_millis(10);
    })
    .await;
    let status = app
        .wait_for("/v1/status", "a successful pass", |s| {
            s["reconciler"]["last_success_at"].is_string()
        })
        .await;
    assert_eq!(status["reconciler"]["failed_passes"], 1);
    assert_eq!(status["reconciler"]["last_error"], json!(null));
    let calls = fake.calls("/list");
    let gap = calls[1].at.duration_since(calls[0].at);
    assert!(gap >= Duration::from_millis(900), "waited {gap:?}");
    assert!(
        gap < Duration::from_secs(60),
        "backed off instead of waiting the hour-long interval"
    );
    assert_eq!(app.job("rl").await["status"], "QUEUED");
}

#[tokio::test]
async fn a_refused_api_key_shows_auth_failed_and_is_not_retried_in_a_storm() {
    let fake = FakeSegmind::start().await;
    let app = spawn_app_with(|s| {
        segmind(s, &fake);
        s.segmind.api_key = Some(Secret::new("SG_wrong"));
        s.reconcile.initial_delay = Duration::from_millis(10);
    })
    .await;
    let status = app
        .wait_for("/v1/status", "a failed pass", |s| {
            s["reconciler"]["passes"] == 1
        })
        .await;
    assert_eq!(status["reconciler"]["enabled"], true);
    assert_eq!(status["reconciler"]["last_error_kind"], "auth_failed");
    assert!(
        status["reconciler"]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("Invalid API key")
    );
    assert!(
        !status.to_string().contains("SG_wrong"),
        "the key is not shown"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.calls("/list").len(), 1, "no retry storm");
}

#[tokio::test]
async fn a_pass_over_a_bad_answer_changes_nothing() {
    let fake = FakeSegmind::start().await;
    let app = app_for(&fake).await;
    app.post(json!({"event": "TRAINING", "finetune_id": "steady"}))
        .await;
    fake.set_jobs(vec![listed("steady", "AVAILABLE"), listed("new", "QUEUED")]);
    for (answer, kind) in [
        (ListAnswer::Garbage, "undecodable"),
        (
            ListAnswer::Status {
                status: 500,
                body: "oops".into(),
                retry_after: None,
            },
            "server_error",
        ),
        (ListAnswer::Hang, "timeout"),
    ] {
        fake.answer_list(vec![answer]);
        let (status, body) = pass(&app).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        assert_eq!(body["error"]["code"], kind);
        let (_, s) = app.get("/v1/status").await;
        assert_eq!(s["reconciler"]["last_error_kind"], kind);
        assert_eq!(app.job("steady").await["status"], "TRAINING");
        assert_eq!(app.all_jobs().await.len(), 1);
    }
    let (status, _) = pass(&app).await;
    assert_eq!(status, StatusCode::OK, "it recovers");
    assert_eq!(app.job("steady").await["status"], "AVAILABLE");
}

#[tokio::test]
async fn drift_lists_jobs_tunehook_and_segmind_disagree_on_once_segmind_was_asked() {
    let fake = FakeSegmind::start().await;
    let app = app_for(&fake).await;
    // Webhooks said AVAILABLE; Segmind's API says TRAINING (tunehook keeps
    // the later status): a real disagreement.
    app.post(json!({"event": "AVAILABLE", "finetune_id": "ahead"}))
        .await;
    // Webhooks are behind; the pass brings the job to Segmind's status.
    app.post(json!({"event": "TRAINING_COMPLETED", "finetune_id": "behind"}))
        .await;
    // Webhooks never spoke of it; the pass records it as Segmind has it.
    // A job the API was never asked about yet.
    app.post(json!({"event": "QUEUED", "finetune_id": "unchecked"}))
        .await;
    let (_, before) = app.get("/v1/jobs?drift=true").await;
    assert_eq!(before["jobs"], json!([]), "nothing is drift before Segmind is asked");
    fake.set_jobs(vec![
        listed("ahead", "TRAINING"),
        listed("behind", "AVAILABLE"),
        listed("silent", "QUEUED"),
    ]);
    pass(&app).await;
    let (status, body) = app.get("/v1/jobs?drift=true").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let jobs = body["jobs"].as_array().cloned().unwrap_or_default();
    let drifting: Vec<(String, Value, Value, Value)> = jobs
        .iter()
        .map(|j| {
            (
                j["finetune_id"].as_str().unwrap_or("").to_owned(),
                j["status"].clone(),
                j["segmind_status"].clone(),
                j["webhook_status"].clone(),
            )
        })
        .collect();
    assert_eq!(
        drifting,
        vec![(
            "ahead".to_owned(),
            json!("AVAILABLE"),
            json!("TRAINING"),
            json!("AVAILABLE")
        )]
    );
    assert_eq!(app.job("behind").await["status"], "AVAILABLE");
    assert_eq!(app.job("unchecked").await["segmind_status"], Value::Null);
    let (status, _) = app.get("/v1/jobs?drift=maybe").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_webhook_for_a_new_job_gets_its_details_in_the_background() {
    let fake = FakeSegmind::start().await;
    fake.set_details("fresh", json!({"finetune_id": "fresh", "status": "TRAINING_COMPLETED", "base_model": "FLUX_PRO", "cloud_storage_url": "s3://m"}));
    let app = app_for(&fake).await;
    let (status, body) = app
        .post(json!({"event": "TRAINING_COMPLETED", "finetune_id": "fresh"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["outcome"], "applied");
    let job = app
        .wait_for("/v1/jobs/fresh", "the details", |j| {
            j["cloud_storage_url"] == "s3://m"
        })
        .await;
    assert_eq!(job["base_model"], "FLUX_PRO");
    assert_eq!(
        transition_statuses(&job),
        vec!["TRAINING_COMPLETED"],
        "no second transition"
    );
}

#[tokio::test]
async fn without_an_api_key_the_reconciler_is_off_and_says_so() {
    let app = spawn_app().await;
    let (status, body) = app.get("/v1/status").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["reconciler"]["enabled"], false);
    assert!(body["version"].is_string() && body["uptime_seconds"].is_u64());
    assert_eq!(body["webhook_path"], "/webhooks/segmind/{ingest token}");
    let (status, body) = pass(&app).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("SEGMIND_API_KEY")
    );
    let (status, body) = app
        .post(json!({"event": "AVAILABLE", "finetune_id": "still-works"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn the_reconcile_command_runs_one_pass_and_exits() {
    let fake = FakeSegmind::start().await;
    fake.set_jobs(vec![listed("cli-job", "DEPLOYING")]);
    let dir = tempfile::tempdir().expect("dir");
    let database = crate::helpers::on_postgres().then(crate::postgres::TestDatabase::create);
    let db = match &database {
        Some(database) => database.url.clone(),
        None => format!("sqlite://{}", dir.path().join("t.db").display()),
    };
    // The database a served tunehook made.
    let migrated = tokio::process::Command::new(env!("CARGO_BIN_EXE_tunehook"))
        .arg("migrate")
        .current_dir(dir.path())
        .env("TUNEHOOK_DATABASE_URL", &db)
        .output()
        .await
        .expect("runs");
    assert!(migrated.status.success(), "{migrated:?}");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tunehook"))
        .arg("reconcile")
        .current_dir(dir.path())
        .env("TUNEHOOK_DATABASE_URL", &db)
        .env("SEGMIND_API_KEY", API_KEY)
        .env("SEGMIND_BASE_URL", fake.url())
        .output()
        .await
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("a JSON summary");
    assert_eq!(report["transitions"], 1);
    let app = spawn_app_with(|s| s.database.url = db.clone()).await;
    assert_eq!(app.job("cli-job").await["status"], "DEPLOYING");

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tunehook"))
        .arg("reconcile")
        .current_dir(dir.path())
        .env("TUNEHOOK_DATABASE_URL", &db)
        .output()
        .await
        .expect("runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("SEGMIND_API_KEY"));
}

/// Records every write to the jobs table from now on, through a trigger
/// in the database file itself.
fn watch_job_writes(app: &TestApp) -> rusqlite::Connection {
    let conn =
        rusqlite::Connection::open(app.dir.path().join("tunehook.db")).expect("the database");
    conn.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    conn.execute_batch(
        "CREATE TABLE job_writes (finetune_id TEXT);
         CREATE TRIGGER job_updated AFTER UPDATE ON jobs
            BEGIN INSERT INTO job_writes VALUES (new.finetune_id); END;
         CREATE TRIGGER job_inserted AFTER INSERT ON jobs
            BEGIN INSERT INTO job_writes VALUES (new.finetune_id); END;",
    )
    .expect("the trigger");
    conn
}

#[tokio::test]
async fn a_pass_in_which_nothing_changed_writes_no_job_row() {
    if crate::helpers::skip_on_postgres("a trigger in the file counts the writes") {
        return;
    }
    let fake = FakeSegmind::start().await;
    let jobs: Vec<Value> = (0..50)
        .map(|i| listed(&format!("steady-{i}"), "TRAINING"))
        .collect();
    fake.set_jobs(jobs);
    let app = app_for(&fake).await;
    let (status, report) = pass(&app).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["jobs_created"], 50);
    let first_seen = app.job("steady-0").await["segmind_seen_at"].clone();
    assert!(first_seen.is_string(), "{first_seen}");

    let audit = watch_job_writes(&app);
    let (_, report) = pass(&app).await;
    assert_eq!(report["transitions"], 0, "{report}");
    let writes: i64 = audit
        .query_row("SELECT COUNT(*) FROM job_writes", [], |r| r.get(0))
        .expect("count");
    assert_eq!(writes, 0, "an unchanged pass wrote job rows");
    // Yet tunehook knows Segmind reported them again.
    let seen = app.job("steady-0").await["segmind_seen_at"].clone();
    assert!(seen.is_string() && seen != first_seen, "{seen}");

    // A pass that changes one job writes that one row.
    let mut changed: Vec<Value> = (0..50)
        .map(|i| listed(&format!("steady-{i}"), "TRAINING"))
        .collect();
    changed[7] = listed("steady-7", "TRAINING_COMPLETED");
    fake.set_jobs(changed);
    pass(&app).await;
    let written: Vec<String> = audit
        .prepare("SELECT finetune_id FROM job_writes")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("rows");
    assert_eq!(written, ["steady-7"]);
}

#[tokio::test]
async fn an_id_segmind_does_not_know_is_asked_again_later_then_forgotten() {
    let fake = FakeSegmind::start().await;
    let app = spawn_app_with(|s| {
        segmind(s, &fake);
        s.reconcile.forget_after = Duration::from_millis(800);
    })
    .await;
    app.post(json!({"event": "TRAINING", "finetune_id": "ghost"}))
        .await;
    let asked = || fake.calls("/finetune/request/details").len();
    // A new job's details are asked for in the background first.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while asked() == 0 {
        assert!(std::time::Instant::now() < deadline, "no background lookup");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pass(&app).await;
    assert_eq!(asked(), 2);
    // Asked again only once the wait is over, not on every pass.
    pass(&app).await;
    assert_eq!(asked(), 2, "asked again at once");

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        pass(&app).await;
        if app.job("ghost").await["segmind_status"] == "NOT_FOUND" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never forgotten");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after_forgetting = asked();
    assert_eq!(
        after_forgetting, 3,
        "asked once more at its forgetting time"
    );
    for _ in 0..3 {
        pass(&app).await;
    }
    assert_eq!(
        asked(),
        after_forgetting,
        "a forgotten id is not asked about"
    );
    assert_eq!(app.job("ghost").await["status"], "TRAINING");
}
