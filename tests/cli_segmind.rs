//! `tunehook segmind …` as a user runs it: the binary against the fake
//! Segmind (a real HTTP server on 127.0.0.1), with a clean environment and
//! a fresh folder. Exit codes: 0 success, 2 a check failed and nothing was
//! sent, 1 Segmind refused.

// The fake is shared with the API tests; this file uses part of it.
#[allow(dead_code)]
#[path = "api/fake_segmind.rs"]
mod fake_segmind;

use fake_segmind::{API_KEY, FakeSegmind};
use serde_json::{Value, json};
use std::{io::Write, path::Path};
use tunehook::{config::DatabaseSettings, store::Store};

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary in `dir` with only the environment given (and PATH).
async fn tunehook(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tunehook"));
    command
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env(
            "TUNEHOOK_DATABASE_URL",
            format!("sqlite://{}", dir.join("tunehook.db").display()),
        )
        .args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().await.expect("the binary runs");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn segmind_env(fake: &FakeSegmind) -> Vec<(&'static str, String)> {
    vec![
        ("SEGMIND_API_KEY", API_KEY.to_owned()),
        ("SEGMIND_BASE_URL", fake.url()),
    ]
}

async fn run_with(fake: &FakeSegmind, dir: &Path, args: &[&str]) -> Run {
    let env = segmind_env(fake);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    tunehook(dir, &env, args).await
}

/// `segmind submit` with the three required flags, then `extra`.
fn submit_args<'a>(
    name: &'a str,
    dataset: &'a str,
    prompt: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "segmind",
        "submit",
        "--name",
        name,
        "--dataset",
        dataset,
        "--instance-prompt",
        prompt,
    ];
    args.extend_from_slice(extra);
    args
}

/// A ZIP at `dir/name` with these entries.
fn zip_at(dir: &Path, name: &str, entries: &[(&str, &[u8])]) -> std::path::PathBuf {
    let path = dir.join(name);
    let mut writer = zip::ZipWriter::new(std::fs::File::create(&path).expect("a file"));
    for (entry, bytes) in entries {
        writer
            .start_file(*entry, zip::write::SimpleFileOptions::default())
            .expect("an entry");
        writer.write_all(bytes).expect("written");
    }
    writer.finish().expect("finished");
    path
}

#[tokio::test]
async fn a_dry_run_of_a_bad_request_exits_2_naming_every_field_and_sends_nothing() {
    let fake = FakeSegmind::start().await;
    let dir = tempfile::tempdir().expect("a folder");
    let url = fake.dataset_url("ok.zip");
    let run = run_with(
        &fake,
        dir.path(),
        &submit_args(
            "me",
            &url,
            "a photo of TOK",
            &[
                "--lora-rank",
                "24",
                "--iterations",
                "50",
                "--theme",
                "cosmic",
                "--dry-run",
            ],
        ),
    )
    .await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    for expected in [
        "error: theme: must be one of CHARACTER, PRODUCT, STYLE, GENERAL (got `cosmic`)",
        "error: advance_parameters.iterations: must be at least 100 (got 50)",
        "error: advance_parameters.lora_rank: must be 16 or 32 (got 24)",
        "nothing was sent to Segmind",
    ] {
        assert!(run.stderr.contains(expected), "{expected}: {}", run.stderr);
    }
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(fake.calls("/finetune/request/submit").is_empty());
}

#[tokio::test]
async fn a_dry_run_of_a_good_request_prints_exactly_what_would_be_sent() {
    let fake = FakeSegmind::start().await;
    let dir = tempfile::tempdir().expect("a folder");
    let url = fake.dataset_url("ok.zip");
    let run = run_with(
        &fake,
        dir.path(),
        &submit_args(
            "me",
            &url,
            "a photo of TOK",
            &[
                "--theme",
                "style",
                "--finetune-type",
                "lora",
                "--captioning",
                "false",
                "--public",
                "true",
                "--dry-run",
            ],
        ),
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let printed: Value = serde_json::from_str(&run.stdout).expect("the request as JSON");
    assert_eq!(
        printed,
        json!({
            "name": "me", "data_source_path": url, "instance_prompt": "a photo of TOK",
            "trigger_word": "TOK", "base_model": "FLUX_PRO", "theme": "STYLE", "segmind_public": true,
            "advance_parameters": {"iterations": 300, "captioning": false, "priority": "QUALITY",
                "finetune_type": "LORA", "lora_rank": 32, "learning_rate": 0.0001}
        })
    );
    assert!(fake.calls("/finetune/request/submit").is_empty());

    // The same request from a file is the same request.
    let file = dir.path().join("request.json");
    std::fs::write(&file, serde_json::to_vec(&printed).expect("json")).expect("written");
    let from_file = run_with(
        &fake,
        dir.path(),
        &["segmind", "submit", "--file", "request.json", "--dry-run"],
    )
    .await;
    assert_eq!(from_file.code, Some(0), "{}", from_file.stderr);
    assert_eq!(
        serde_json::from_str::<Value>(&from_file.stdout).expect("json"),
        printed
    );
}

#[tokio::test]
async fn a_dataset_url_without_head_fails_the_dry_run() {
    let fake = FakeSegmind::start().await;
    let dir = tempfile::tempdir().expect("a folder");
    let url = fake.dataset_url("no-head.zip");
    let run = run_with(
        &fake,
        dir.path(),
        &submit_args("me", &url, "p", &["--dry-run"]),
    )
    .await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("answered 405 Method Not Allowed"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn upload_puts_the_checked_zip_through_the_presigned_url_and_prints_the_s3_url() {
    let fake = FakeSegmind::start().await;
    let dir = tempfile::tempdir().expect("a folder");
    let big: Vec<u8> = PNG
        .iter()
        .copied()
        .chain((0..300_000u32).map(|i| i as u8))
        .collect();
    let path = zip_at(
        dir.path(),
        "faces.zip",
        &[
            ("a.png", &big),
            ("a.txt", b"a photo of TOK"),
            ("__MACOSX/._a.png", b"x"),
        ],
    );
    let run = run_with(
        &fake,
        dir.path(),
        &["segmind", "upload", path.to_str().expect("utf-8")],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        run.stdout.trim(),
        format!("{}/uploads/faces.zip", fake.url())
    );
    let sent = std::fs::read(&path).expect("read");
    assert_eq!(fake.upload("faces.zip"), Some(sent.clone()));
    assert_eq!(
        fake.calls("/finetune/request/upload/pre-signed-url")[0].body,
        json!({"name": "faces.zip"})
    );
    // Not a terminal: progress comes as plain lines.
    assert!(
        run.stderr
            .contains(&format!("uploaded {} bytes", sent.len())),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("ignored 1 entry under __MACOSX/"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("X-Amz-Signature"), "{}", run.stderr);
}

#[tokio::test]
async fn upload_of_a_zip_with_images_in_a_folder_exits_2_and_sends_nothing() {
    let fake = FakeSegmind::start().await;
    let dir = tempfile::tempdir().expect("a folder");
    let path = zip_at(dir.path(), "set.zip", &[("set/a.png", PNG)]);
    let run = run_with(&fake, dir.path(), &["segmind", "upload", "set.zip"]).await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("set/a.png"), "{}", run.stderr);
    assert!(
        fake.calls("/finetune/request/upload/pre-signed-url")
            .is_empty()
    );
    assert!(path.exists());
}

#[tokio::test]
async fn submitting_a_local_zip_uploads_it_submits_and_records_the_job_as_requested() {
    let fake = FakeSegmind::start().await;
    let dir = tempfile::tempdir().expect("a folder");
    let migrated = tunehook(dir.path(), &[], &["migrate"]).await;
    assert_eq!(migrated.code, Some(0), "{}", migrated.stderr);
    zip_at(dir.path(), "me.zip", &[("1.png", PNG), ("2.png", PNG)]);
    let run = run_with(
        &fake,
        dir.path(),
        &submit_args("me", "me.zip", "a photo of TOK", &[]),
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout.trim(), "new-job-1");
    let s3_url = format!("{}/uploads/me.zip", fake.url());
    assert!(fake.upload("me.zip").is_some());
    assert_eq!(
        fake.calls("/finetune/request/submit")[0].body["data_source_path"],
        s3_url
    );

    let settings = DatabaseSettings {
        url: format!("sqlite://{}", dir.path().join("tunehook.db").display()),
        ..DatabaseSettings::default()
    };
    let (store, writer) = Store::open(&settings, Vec::new())
        .await
        .expect("the database");
    let job = store
        .job("new-job-1")
        .await
        .expect("a read")
        .expect("recorded");
    assert_eq!(job.status, "REQUESTED");
    assert_eq!(job.data_source_path.as_deref(), Some(s3_url.as_str()));
    let transitions = store.transitions("new-job-1").await.expect("a read");
    assert_eq!(transitions[0].source, "api");
    drop(store);
    writer.finished().await.expect("closed");
}

#[tokio::test]
async fn segminds_refusal_exits_1_with_its_status_and_message_and_never_the_key() {
    let fake = FakeSegmind::start().await;
    let dir = tempfile::tempdir().expect("a folder");
    let url = fake.dataset_url("ok.zip");
    let run = tunehook(
        dir.path(),
        &[
            ("SEGMIND_API_KEY", "SG_wrong_secret_key"),
            ("SEGMIND_BASE_URL", &fake.url()),
        ],
        &submit_args("me", &url, "p", &[]),
    )
    .await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("401"), "{}", run.stderr);
    assert!(run.stderr.contains("Invalid API key"), "{}", run.stderr);
    assert!(!run.stderr.contains("SG_wrong_secret_key"));
    assert!(!run.stdout.contains("SG_wrong_secret_key"));
}

#[tokio::test]
async fn list_details_and_access_print_a_table_or_json() {
    let fake = FakeSegmind::start().await;
    let job = json!({"id": "ft_1", "finetune_id": "ft_1", "name": "portrait", "status": "AVAILABLE",
        "base_model": "FLUX_PRO", "train_type": "LORA", "segmind_public_model": false});
    fake.set_jobs(vec![job.clone()]);
    fake.set_details("ft_1", job);
    let dir = tempfile::tempdir().expect("a folder");

    let table = run_with(&fake, dir.path(), &["segmind", "list"]).await;
    assert_eq!(table.code, Some(0), "{}", table.stderr);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines[0], "ID    STATUS     NAME      BASE MODEL  TYPE");
    assert_eq!(lines[1], "ft_1  AVAILABLE  portrait  FLUX_PRO    LORA");

    let listed = run_with(&fake, dir.path(), &["segmind", "list", "--json"]).await;
    let listed: Value = serde_json::from_str(&listed.stdout).expect("json");
    assert_eq!(listed[0]["finetune_id"], "ft_1");

    let details = run_with(&fake, dir.path(), &["segmind", "details", "ft_1"]).await;
    assert_eq!(details.code, Some(0), "{}", details.stderr);
    assert!(
        details
            .stdout
            .lines()
            .any(|l| l.starts_with("status ") && l.ends_with(" AVAILABLE")),
        "{}",
        details.stdout
    );
    let unknown = run_with(&fake, dir.path(), &["segmind", "details", "nobody"]).await;
    assert_eq!(unknown.code, Some(1), "{}", unknown.stderr);

    let access = run_with(
        &fake,
        dir.path(),
        &["segmind", "access", "ft_1", "--public", "true", "--json"],
    )
    .await;
    assert_eq!(access.code, Some(0), "{}", access.stderr);
    assert_eq!(
        serde_json::from_str::<Value>(&access.stdout).expect("json"),
        json!({"finetune_id": "ft_1", "public": true})
    );
    assert_eq!(
        fake.access_updates(),
        [("ft_1".to_owned(), "True".to_owned())]
    );
}

#[tokio::test]
async fn access_on_a_job_submitted_from_here_is_recorded_on_it() {
    let fake = FakeSegmind::start().await;
    let dir = tempfile::tempdir().expect("a folder");
    // The database a served tunehook made.
    let migrated = tunehook(dir.path(), &[], &["migrate"]).await;
    assert_eq!(migrated.code, Some(0), "{}", migrated.stderr);
    let url = fake.dataset_url("ok.zip");
    let submitted = run_with(&fake, dir.path(), &submit_args("me", &url, "p", &[])).await;
    assert_eq!(submitted.code, Some(0), "{}", submitted.stderr);
    let access = run_with(
        &fake,
        dir.path(),
        &["segmind", "access", "new-job-1", "--public", "true"],
    )
    .await;
    assert_eq!(access.code, Some(0), "{}", access.stderr);
    assert_eq!(access.stdout.trim(), "new-job-1 is now public");

    let settings = DatabaseSettings {
        url: format!("sqlite://{}", dir.path().join("tunehook.db").display()),
        ..DatabaseSettings::default()
    };
    let (store, writer) = Store::open(&settings, Vec::new())
        .await
        .expect("the database");
    let job = store
        .job("new-job-1")
        .await
        .expect("a read")
        .expect("recorded");
    assert_eq!(job.public_model, Some(true));
    drop(store);
    writer.finished().await.expect("closed");
}

#[tokio::test]
async fn watch_follows_a_job_on_a_running_tunehook_and_exits_0_at_available() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().expect("dir");
    let mut settings = tunehook::config::Settings::default();
    settings.server.listen = "127.0.0.1:0".into();
    settings.database.url = format!("sqlite://{}", dir.path().join("served.db").display());
    let app = tunehook::app::Application::build(settings)
        .await
        .expect("the app starts");
    let base = format!("http://{}", app.local_addr());
    let (ingest, api) = (
        app.ingest_token().expose().to_owned(),
        app.api_token().expose().to_owned(),
    );
    let shutdown = app.shutdown_token();
    let served = tokio::spawn(app.run());
    let post = |event: &'static str| {
        let url = format!("{base}/webhooks/segmind/{ingest}");
        async move {
            reqwest::Client::new()
                .post(url)
                .json(&json!({"event": event, "finetune_id": "ft_watched"}))
                .send()
                .await
                .expect("posted");
        }
    };
    post("TRAINING").await;

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tunehook"))
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TUNEHOOK_API_TOKEN", &api)
        .args(["segmind", "watch", "ft_watched", "--url", &base])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
        .await
        .expect("a first line")
        .expect("readable");
    assert_eq!(first.as_deref(), Some("ft_watched: TRAINING"));
    post("AVAILABLE").await;
    let status = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait())
        .await
        .expect("watch exits")
        .expect("an exit status");
    let rest = lines.next_line().await.expect("readable");
    assert_eq!(
        rest.as_deref(),
        Some("ft_watched: TRAINING → AVAILABLE (webhook)")
    );
    assert_eq!(status.code(), Some(0));
    shutdown.cancel();
    let _ = served.await;
}

#[tokio::test]
async fn segmind_unreachable_names_the_host_it_tried() {
    let dir = tempfile::tempdir().expect("a folder");
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let run = tunehook(
        dir.path(),
        &[("SEGMIND_API_KEY", API_KEY), ("SEGMIND_BASE_URL", &base)],
        &["segmind", "list"],
    )
    .await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("cannot reach Segmind at 127.0.0.1:{port}")),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(API_KEY), "{}", run.stderr);
}
