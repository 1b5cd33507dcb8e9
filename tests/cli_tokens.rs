//! `tunehook tokens --rotate` as an operator runs it, against a database a
//! service is using, and the warning about a database file others can read.

use reqwest::StatusCode;
use std::{
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};
use tunehook::{app::Application, config::Settings};

/// The binary, run in `dir` on the database there, with a clean environment.
fn tunehook(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tunehook"));
    command
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TUNEHOOK_DATABASE_URL", database_url(dir));
    command
}

fn database_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("tunehook.db").display())
}

fn run(command: &mut Command) -> (Option<i32>, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("the binary runs");
    (
        status.code(),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// The token on the line after the one starting with `heading`.
fn token_after(out: &str, heading: &str) -> String {
    let mut lines = out.lines();
    lines.by_ref().find(|l| l.starts_with(heading));
    lines
        .next()
        .unwrap_or_else(|| panic!("no line after {heading} in {out}"))
        .trim()
        .to_owned()
}

fn ingest_token_in(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("Webhook path: /webhooks/segmind/"))
        .unwrap_or_else(|| panic!("no webhook path in {out}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn rotating_the_ingest_token_from_the_command_line_makes_a_running_service_refuse_the_old_one()
 {
    let dir = tempfile::tempdir().expect("dir");
    let mut settings = Settings::default();
    settings.server.listen = "127.0.0.1:0".into();
    settings.database.url = database_url(dir.path());
    let app = Application::build(settings).await.expect("the app starts");
    let addr = app.local_addr();
    let old = app.ingest_token().expose().to_owned();
    let shutdown = app.shutdown_token();
    let running = tokio::spawn(app.run());
    let client = reqwest::Client::new();
    let post = |token: String| {
        let client = client.clone();
        async move {
            client
                .post(format!("http://{addr}/webhooks/segmind/{token}"))
                .body(r#"{"event": "QUEUED", "finetune_id": "cli-rotated"}"#)
                .send()
                .await
                .expect("sent")
                .status()
        }
    };
    assert_eq!(post(old.clone()).await, StatusCode::OK);

    let (code, out, err) = run(tunehook(dir.path()).args(["tokens", "--rotate", "ingest"]));
    assert_eq!(code, Some(0), "{out}{err}");
    let new = ingest_token_in(&out);
    assert_ne!(new, old);

    // The service re-reads the stored tokens every second.
    let deadline = Instant::now() + Duration::from_secs(10);
    while post(old.clone()).await != StatusCode::UNAUTHORIZED {
        assert!(Instant::now() < deadline, "the old token is still accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(post(new.clone()).await, StatusCode::OK);
    // `tunehook tokens` prints the new one.
    let (code, out, _) = run(tunehook(dir.path()).arg("tokens"));
    assert_eq!(code, Some(0));
    assert_eq!(ingest_token_in(&out), new);

    shutdown.cancel();
    running.await.expect("joined").expect("a clean stop");
}

#[test]
fn rotating_the_api_token_prints_a_new_one_that_tokens_then_shows() {
    let dir = tempfile::tempdir().expect("dir");
    // The database a served tunehook made.
    let (code, _, err) = run(tunehook(dir.path()).arg("migrate"));
    assert_eq!(code, Some(0), "{err}");
    let (code, before, err) = run(tunehook(dir.path()).arg("tokens"));
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = run(tunehook(dir.path()).args(["tokens", "--rotate", "api"]));
    assert_eq!(code, Some(0), "{err}");
    let new = token_after(&out, "API token");
    assert_ne!(new, token_after(&before, "API token"));
    let (_, after, _) = run(tunehook(dir.path()).arg("tokens"));
    assert_eq!(token_after(&after, "API token"), new);
    assert_eq!(ingest_token_in(&after), ingest_token_in(&before));
}

#[test]
fn rotating_a_configured_token_exits_2_saying_where_it_is_set() {
    let dir = tempfile::tempdir().expect("dir");
    for (which, var, key) in [
        ("api", "TUNEHOOK_API_TOKEN", "api.token"),
        ("ingest", "TUNEHOOK_INGEST_TOKEN", "ingest.token"),
    ] {
        let (code, out, err) = run(tunehook(dir.path())
            .args(["tokens", "--rotate", which])
            .env(var, "a-configured-secret-token"));
        assert_eq!(code, Some(2), "{out}{err}");
        assert!(err.contains(key) && err.contains(var), "{err}");
        assert!(
            !out.contains("a-configured-secret") && !err.contains("a-configured-secret"),
            "the token was printed"
        );
    }
    let (code, _, err) = run(tunehook(dir.path()).args(["tokens", "--rotate", "segmind"]));
    assert_eq!(code, Some(2), "{err}");
}

#[test]
fn a_database_file_other_users_can_read_gets_a_warning_with_the_fix() {
    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("tunehook.db");
    let (code, _, err) = run(tunehook(dir.path()).arg("migrate"));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        std::fs::metadata(&db).expect("db").permissions().mode() & 0o777,
        0o600
    );
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");

    let mut child = tunehook(dir.path())
        .arg("serve")
        .env("TUNEHOOK_LISTEN", "127.0.0.1:0")
        .env("TUNEHOOK_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut warning = None;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if line.contains("chmod 600") {
            warning = Some(line.clone());
        }
        if line.contains("tunehook is listening") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let warning = warning.expect("a warning before the service listens");
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains(&format!("chmod 600 {}", db.display())),
        "{warning}"
    );
}

#[test]
fn commands_run_away_from_the_service_say_where_they_looked_and_make_no_database() {
    // As a user would: the default URL, relative to a folder holding no
    // database.
    let elsewhere = tempfile::tempdir().expect("dir");
    for args in [
        &["tokens"][..],
        &["tokens", "--rotate", "api"],
        &["prune", "--dry-run"],
        &["reconcile"],
    ] {
        let (code, out, err) = run(Command::new(env!("CARGO_BIN_EXE_tunehook"))
            .current_dir(elsewhere.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("SEGMIND_API_KEY", "sk-unused")
            .env("SEGMIND_BASE_URL", "http://127.0.0.1:9")
            .args(args));
        assert_eq!(code, Some(1), "{args:?}: {out}{err}");
        let looked_at = elsewhere.path().join("data/tunehook.db");
        assert!(
            err.contains(&looked_at.display().to_string()),
            "{args:?} names the path it looked at: {err}"
        );
        assert!(
            err.contains("TUNEHOOK_DATABASE_URL"),
            "{args:?} says how to point it elsewhere: {err}"
        );
        assert!(
            !elsewhere.path().join("data").exists(),
            "{args:?} made no database"
        );
        assert!(out.is_empty(), "{args:?} printed no tokens: {out}");
    }
}
