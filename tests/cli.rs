//! The `tunehook` binary as a user runs it: configuration layers and errors,
//! and `serve` + `tokens` + `send-test-event` end to end.

use serde_json::Value;
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

/// The binary, run in `dir` with a clean environment.
fn tunehook(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tunehook"));
    command
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command
}

fn run(command: &mut Command) -> (bool, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("the binary runs");
    (
        status.success(),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn shipped_config() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tunehook.toml")
}

#[test]
fn check_config_applies_environment_variables_and_redacts_secrets() {
    let dir = tempfile::tempdir().expect("dir");
    let (ok, out, err) = run(tunehook(dir.path())
        .arg("check-config")
        .env("TUNEHOOK_LISTEN", "0.0.0.0:9000")
        .env("TUNEHOOK_DATABASE_URL", "sqlite:///data/tunehook.db")
        .env("TUNEHOOK_API_TOKEN", "api-secret-value-1234")
        .env("TUNEHOOK_INGEST_TOKEN", "ingest-secret-value-1234")
        .env("SEGMIND_API_KEY", "SG_segmind_secret_key")
        .env("SEGMIND_BASE_URL", "http://127.0.0.1:9999")
        .env("TUNEHOOK_LOG", "debug")
        .env("TUNEHOOK_LOG_FORMAT", "json")
        .env("TUNEHOOK__SERVER__MAX_BODY_BYTES", "2048"));
    assert!(ok, "{err}");
    for expected in [
        r#"listen = "0.0.0.0:9000""#,
        r#"url = "sqlite:///data/tunehook.db""#,
        r#"base_url = "http://127.0.0.1:9999""#,
        r#"filter = "debug""#,
        r#"format = "json""#,
        "max_body_bytes = 2048",
        "[redacted]",
    ] {
        assert!(out.contains(expected), "missing {expected} in:\n{out}");
    }
    for secret in [
        "api-secret-value-1234",
        "ingest-secret-value-1234",
        "SG_segmind_secret_key",
    ] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{secret} leaked"
        );
    }
}

#[test]
fn the_shipped_config_file_is_valid_and_documents_the_defaults() {
    let dir = tempfile::tempdir().expect("dir");
    let (ok, with_file, err) = run(tunehook(dir.path())
        .arg("--config")
        .arg(shipped_config())
        .arg("check-config"));
    assert!(ok, "{err}");
    let (ok, without_file, _) = run(tunehook(dir.path()).arg("check-config"));
    assert!(ok);
    assert_eq!(
        with_file, without_file,
        "the file's values are the built-in defaults"
    );
}

#[test]
fn an_unknown_key_in_the_file_is_an_error_that_names_it() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:8080\"\nlisten_port = 9\n",
    )
    .expect("write");
    let (ok, _, err) = run(tunehook(dir.path())
        .arg("--config")
        .arg(&file)
        .arg("check-config"));
    assert!(!ok);
    assert!(err.contains("server.listen_port"), "{err}");

    std::fs::write(&file, "[sever]\nlisten = \"127.0.0.1:8080\"\n").expect("write");
    let (ok, _, err) = run(tunehook(dir.path())
        .env("TUNEHOOK_CONFIG", &file)
        .arg("serve"));
    assert!(!ok, "serve refuses to start");
    assert!(err.contains("sever"), "{err}");
}

#[test]
fn bad_values_are_errors_that_name_the_key() {
    let dir = tempfile::tempdir().expect("dir");
    for (var, value, key) in [
        ("TUNEHOOK_LOG_FORMAT", "xml", "log.format"),
        ("TUNEHOOK_LISTEN", "localhost", "server.listen"),
        ("TUNEHOOK_DATABASE_URL", "mysql://x", "database.url"),
        (
            "TUNEHOOK__SERVER__MAX_BODY_BYTES",
            "lots",
            "server.max_body_bytes",
        ),
        ("TUNEHOOK_INGEST_TOKEN", "has space", "ingest.token"),
    ] {
        let (ok, _, err) = run(tunehook(dir.path()).arg("check-config").env(var, value));
        assert!(!ok, "{var}={value} accepted");
        assert!(err.contains(key), "{var}: {err}");
        assert!(
            !err.contains("has space"),
            "a token value is never echoed: {err}"
        );
    }
}

#[test]
fn a_missing_config_file_named_on_the_command_line_is_an_error() {
    let dir = tempfile::tempdir().expect("dir");
    let (ok, _, err) = run(tunehook(dir.path()).args(["--config", "nope.toml", "check-config"]));
    assert!(!ok);
    assert!(err.contains("nope.toml"), "{err}");
}

#[test]
fn migrate_creates_the_database_where_configured() {
    let dir = tempfile::tempdir().expect("dir");
    let (ok, out, err) = run(tunehook(dir.path())
        .arg("migrate")
        .env("TUNEHOOK_DATABASE_URL", "sqlite://nested/folder/t.db"));
    assert!(ok, "{err}");
    assert!(out.contains("migration"), "{out}");
    assert!(dir.path().join("nested/folder/t.db").exists());
}

#[test]
fn every_command_has_help_with_an_example() {
    let dir = tempfile::tempdir().expect("dir");
    for command in [
        "serve",
        "migrate",
        "check-config",
        "tokens",
        "reconcile",
        "prune",
        "healthcheck",
        "send-test-event",
    ] {
        let (ok, out, _) = run(tunehook(dir.path()).args([command, "--help"]));
        assert!(ok, "{command}");
        assert!(out.contains("Example"), "{command}: {out}");
    }
}

/// A running `tunehook serve`, with its log collected.
struct Server {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
}

fn start_server(dir: &Path) -> Server {
    let mut command = tunehook(dir);
    command
        .arg("serve")
        .env("TUNEHOOK_LISTEN", "127.0.0.1:0")
        .env("TUNEHOOK_LOG_FORMAT", "json");
    start(command)
}

/// Starts `command` (a `serve` with JSON logs) and waits for its address.
fn start(mut command: Command) -> Server {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("serve starts");
    let stdout = child.stdout.take().expect("stdout");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    let collected = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(event) = serde_json::from_str::<Value>(&line) {
                if event["message"] == "tunehook is listening" {
                    let _ = tx.send(event["addr"].as_str().unwrap_or_default().to_owned());
                }
            }
            if let Ok(mut log) = collected.lock() {
                log.push_str(&line);
                log.push('\n');
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("serve logs its address");
    Server { child, addr, log }
}

impl Server {
    /// Sends SIGTERM and waits for the exit, at most `limit`.
    fn terminate(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        let (ok, _, err) = run(Command::new("kill").args(["-TERM", &pid]));
        assert!(ok, "kill: {err}");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(50));
                let log = self.log.lock().map(|l| l.clone()).unwrap_or_default();
                return (status, log);
            }
            assert!(
                Instant::now() < deadline,
                "serve did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Eight clients posting `event` webhooks for new jobs (`{prefix}{worker}-{n}`)
/// as fast as they can, until the server goes away; each answers the ids
/// that got a 2xx.
fn post_until_gone(
    client: &reqwest::Client,
    url: &str,
    prefix: &'static str,
    event: &'static str,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..8)
        .map(|worker| {
            let (client, url) = (client.clone(), url.to_owned());
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for n in 0..100_000 {
                    let id = format!("{prefix}{worker}-{n}");
                    let body = serde_json::json!({"event": event, "finetune_id": id}).to_string();
                    match client.post(&url).body(body).send().await {
                        Ok(r) if r.status().is_success() => acknowledged.push(id),
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                acknowledged
            })
        })
        .collect()
}

/// Reads `tunehook tokens`: the webhook path and the API token.
fn tokens(dir: &Path) -> (String, String) {
    let (ok, out, err) = run(tunehook(dir).arg("tokens"));
    assert!(ok, "{err}");
    let path = out
        .lines()
        .find_map(|l| l.strip_prefix("Webhook path: "))
        .expect("a webhook path line")
        .to_owned();
    let mut lines = out.lines();
    lines.by_ref().find(|l| l.starts_with("API token"));
    let api = lines.next().expect("the API token line").trim().to_owned();
    (path, api)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_user_runs_serve_registers_the_printed_url_and_sees_the_job() {
    let dir = tempfile::tempdir().expect("dir");
    let server = start_server(dir.path());
    assert!(
        dir.path().join("data/tunehook.db").exists(),
        "the default database is created under data/"
    );
    let (path, api_token) = tokens(dir.path());
    assert!(path.starts_with("/webhooks/segmind/"));
    let ingest_token = path.trim_start_matches("/webhooks/segmind/").to_owned();

    let url = format!("http://{}{path}", server.addr);
    let (ok, out, err) = run(tunehook(dir.path()).args([
        "send-test-event",
        &url,
        "--event",
        "AVAILABLE",
        "--finetune-id",
        "ft_cli",
        "--name",
        "cli-model",
    ]));
    assert!(ok, "{out}{err}");
    assert!(out.contains("HTTP 200") && out.contains("applied"), "{out}");

    let client = reqwest::Client::new();
    let jobs: Value = client
        .get(format!("http://{}/v1/jobs", server.addr))
        .bearer_auth(&api_token)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(jobs["jobs"][0]["finetune_id"], "ft_cli");
    assert_eq!(jobs["jobs"][0]["status"], "AVAILABLE");
    assert_eq!(jobs["jobs"][0]["name"], "cli-model");

    // A wrong token through the same command fails visibly.
    let bad = format!("http://{}/webhooks/segmind/wrong", server.addr);
    let (ok, out, _) = run(tunehook(dir.path()).args([
        "send-test-event",
        &bad,
        "--event",
        "AVAILABLE",
        "--finetune-id",
        "x",
    ]));
    assert!(!ok);
    assert!(out.contains("401"), "{out}");

    let (status, log) = server.terminate(Duration::from_secs(20));
    assert!(status.success(), "exit status {status:?}");
    assert!(log.contains("webhook stored"), "{log}");
    assert!(
        log.contains("tunehook tokens"),
        "the log says how to get the URL"
    );
    assert!(
        !log.contains(&ingest_token),
        "the ingest token leaked into the log"
    );
    assert!(
        !log.contains(&api_token),
        "the API token leaked into the log"
    );

    // Started again, it keeps the job and the tokens.
    let server = start_server(dir.path());
    assert_eq!(tokens(dir.path()), (path, api_token.clone()));
    let job: Value = client
        .get(format!("http://{}/v1/jobs/ft_cli", server.addr))
        .bearer_auth(&api_token)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(job["status"], "AVAILABLE");
    let (status, _) = server.terminate(Duration::from_secs(20));
    assert!(status.success());
}

#[test]
fn sink_mistakes_are_errors_naming_the_sink_and_the_key() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("sinks.toml");
    let cases = [
        (
            "[[sinks]]\nname = \"a\"\nkind = \"http\"\nurl = \"http://x\"\n[[sinks]]\nname = \"a\"\nkind = \"file\"\npath = \"x\"\n",
            "sink `a`",
            "name",
        ),
        (
            "[[sinks]]\nname = \"b\"\nkind = \"pigeon\"\n",
            "sink `b`",
            "kind",
        ),
        (
            "[[sinks]]\nname = \"c\"\nkind = \"slack\"\n",
            "sink `c`",
            "url",
        ),
        (
            "[[sinks]]\nname = \"d\"\nkind = \"http\"\nurl = \"http://x\"\nsecret = \"whsec_%%%not-base64\"\n",
            "sink `d`",
            "secret",
        ),
        (
            "[[sinks]]\nname = \"e\"\nkind = \"file\"\n",
            "sink `e`",
            "path",
        ),
        (
            "[[sinks]]\nname = \"f\"\nkind = \"command\"\n",
            "sink `f`",
            "program",
        ),
        (
            "[[sinks]]\nname = \"Bad Name\"\nkind = \"file\"\npath = \"x\"\n",
            "Bad Name",
            "name",
        ),
        (
            "[[sinks]]\nname = \"g\"\nkind = \"http\"\nurl = \"http://x\"\ncolour = \"red\"\n",
            "colour",
            "colour",
        ),
    ];
    for (text, sink, key) in cases {
        std::fs::write(&file, text).expect("write");
        let (ok, _, err) = run(tunehook(dir.path())
            .arg("--config")
            .arg(&file)
            .arg("check-config"));
        assert!(!ok, "accepted:\n{text}");
        assert!(err.contains(sink) && err.contains(key), "{err}");
        assert!(
            !err.contains("%%%not-base64"),
            "the secret is not echoed: {err}"
        );
    }
}

#[test]
fn check_config_shows_sinks_without_their_secrets() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("sinks.toml");
    std::fs::write(
        &file,
        "[delivery]\nretry_schedule = [\"1s\", \"2m\"]\n\n[[sinks]]\nname = \"backend\"\nkind = \"http\"\nurl = \"https://example.com/hooks/x\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nheaders = { authorization = \"Bearer hdr-secret\" }\n\n[[sinks]]\nname = \"team\"\nkind = \"slack\"\nurl = \"https://hooks.slack.com/services/T0/B0/slack-secret\"\n",
    )
    .expect("write");
    let (ok, out, err) = run(tunehook(dir.path())
        .arg("--config")
        .arg(&file)
        .arg("check-config"));
    assert!(ok, "{err}");
    assert!(
        out.contains("name = \"backend\"") && out.contains("name = \"team\""),
        "{out}"
    );
    assert!(
        out.contains("retry_schedule = [\n    \"1s\",\n    \"2m\",\n]") || out.contains("\"2m\""),
        "{out}"
    );
    for secret in [
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "hdr-secret",
        "slack-secret",
        "/hooks/x",
    ] {
        assert!(!out.contains(secret), "{secret} shown:\n{out}");
    }
    assert!(out.contains("https://hooks.slack.com/"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_loses_no_acknowledged_webhook_and_exits_in_time() {
    let dir = tempfile::tempdir().expect("dir");
    let server = start_server(dir.path());
    let (path, api_token) = tokens(dir.path());
    let url = format!("http://{}{path}", server.addr);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");

    // Eight clients post as fast as they can until the server goes away.
    let posters = post_until_gone(&client, &url, "w", "QUEUED");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let (status, _) =
        tokio::task::spawn_blocking(move || server.terminate(Duration::from_secs(25)))
            .await
            .expect("terminate");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(21),
        "exited within server.shutdown_timeout"
    );
    let mut acknowledged = Vec::new();
    for poster in posters {
        acknowledged.extend(poster.await.expect("poster"));
    }
    assert!(
        !acknowledged.is_empty(),
        "some webhooks were posted before SIGTERM"
    );

    let server = start_server(dir.path());
    let mut stored = std::collections::HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let page_url = match &cursor {
            Some(c) => format!("http://{}/v1/jobs?limit=500&cursor={c}", server.addr),
            None => format!("http://{}/v1/jobs?limit=500", server.addr),
        };
        let page: Value = client
            .get(page_url)
            .bearer_auth(&api_token)
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("json");
        for job in page["jobs"].as_array().into_iter().flatten() {
            stored.insert(job["finetune_id"].as_str().unwrap_or_default().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !stored.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged webhooks lost, such as {:?}",
        lost.len(),
        lost.first()
    );
    let (status, _) =
        tokio::task::spawn_blocking(move || server.terminate(Duration::from_secs(25)))
            .await
            .expect("terminate");
    assert!(status.success());
}

/// The Dockerfile's runtime stage: its ENV, WORKDIR, ENTRYPOINT, CMD and
/// HEALTHCHECK command, read from the file so this test follows it.
struct Image {
    env: Vec<(String, String)>,
    workdir: String,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    healthcheck: Vec<String>,
}

fn image() -> Image {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile"))
        .expect("the Dockerfile");
    let joined = text.replace("\\\n", " ");
    let runtime = joined.rsplit("\nFROM ").next().unwrap_or_default();
    let exec_form = |line: &str| -> Vec<String> {
        serde_json::from_str(line.trim()).expect("an exec-form instruction")
    };
    let mut image = Image {
        env: vec![],
        workdir: "/".into(),
        entrypoint: vec![],
        cmd: vec![],
        healthcheck: vec![],
    };
    for line in runtime.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("ENV ") {
            for pair in rest.split_whitespace() {
                let (k, v) = pair.split_once('=').expect("ENV KEY=VALUE");
                image.env.push((k.to_owned(), v.to_owned()));
            }
        } else if let Some(rest) = line.strip_prefix("WORKDIR ") {
            image.workdir = rest.trim().to_owned();
        } else if let Some(rest) = line.strip_prefix("ENTRYPOINT ") {
            image.entrypoint = exec_form(rest);
        } else if let Some(rest) = line.strip_prefix("CMD ") {
            image.cmd = exec_form(rest);
        } else if let Some(rest) = line.strip_prefix("HEALTHCHECK ") {
            image.healthcheck = exec_form(rest.split_once(" CMD ").expect("HEALTHCHECK ... CMD").1);
        }
    }
    image
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_runs_as_the_container_image_would() {
    let image = image();
    assert_eq!(image.entrypoint, vec!["tunehook"]);
    assert_eq!(image.cmd, vec!["serve"]);
    assert_eq!(image.healthcheck, vec!["tunehook", "healthcheck"]);
    let env: std::collections::HashMap<_, _> = image.env.iter().cloned().collect();
    assert_eq!(
        env.get("TUNEHOOK_LISTEN").map(String::as_str),
        Some("0.0.0.0:8080")
    );
    assert_eq!(
        env.get("TUNEHOOK_DATABASE_URL").map(String::as_str),
        Some("sqlite:///data/tunehook.db")
    );

    // The image's filesystem, under a temporary root: /app with the shipped
    // config, and an empty /data volume.
    let root = tempfile::tempdir().expect("dir");
    let app = root.path().join(image.workdir.trim_start_matches('/'));
    let data = root.path().join("data");
    std::fs::create_dir_all(app.join("config")).expect("mkdir");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::copy(shipped_config(), app.join("config/tunehook.toml")).expect("copy config");
    let as_image = |args: &[&str], listen: &str| {
        let mut command = tunehook(&app);
        for (k, v) in &image.env {
            let v = v.replace("sqlite:///data/", &format!("sqlite://{}/", data.display()));
            command.env(k, v);
        }
        // A free port instead of 8080, as `docker run -p` would map it.
        command.env("TUNEHOOK_LISTEN", listen).args(args);
        command
    };

    let cmd: Vec<&str> = image.cmd.iter().map(String::as_str).collect();
    let server = start(as_image(&cmd, "127.0.0.1:0"));
    let client = reqwest::Client::new();
    let ready = client
        .get(format!("http://{}/readyz", server.addr))
        .send()
        .await
        .expect("sent");
    assert_eq!(ready.status(), reqwest::StatusCode::OK);
    assert!(
        data.join("tunehook.db").exists(),
        "the database is on the volume"
    );

    let health: Vec<&str> = image.healthcheck[1..].iter().map(String::as_str).collect();
    let (ok, out, err) = run(&mut as_image(&health, &server.addr));
    assert!(ok, "the HEALTHCHECK command fails: {out}{err}");

    let (ok, out, err) = run(&mut as_image(&["tokens"], &server.addr));
    assert!(ok, "{err}");
    let path = out
        .lines()
        .find_map(|l| l.strip_prefix("Webhook path: "))
        .expect("a path")
        .to_owned();
    let api = out
        .lines()
        .skip_while(|l| !l.starts_with("API token"))
        .nth(1)
        .expect("a token")
        .trim()
        .to_owned();
    let url = format!("http://{}{path}", server.addr);
    let (ok, out, _) = run(&mut as_image(
        &[
            "send-test-event",
            &url,
            "--event",
            "AVAILABLE",
            "--finetune-id",
            "in-image",
        ],
        &server.addr,
    ));
    assert!(ok, "{out}");
    let job: Value = client
        .get(format!("http://{}/v1/jobs/in-image", server.addr))
        .bearer_auth(&api)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(job["status"], "AVAILABLE");
    let (status, log) =
        tokio::task::spawn_blocking(move || server.terminate(Duration::from_secs(25)))
            .await
            .expect("terminate");
    assert!(status.success());
    assert!(
        log.lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "JSON logs, as the image sets"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_under_load_loses_no_acknowledged_webhook_and_every_transition_is_delivered_after_restart()
 {
    let dir = tempfile::tempdir().expect("dir");
    let events = dir.path().join("events.jsonl");
    let config = dir.path().join("tunehook.toml");
    std::fs::write(
        &config,
        format!(
            "[delivery]\nretry_schedule = [\"50ms\", \"50ms\", \"50ms\"]\n\n[[sinks]]\nname = \"archive\"\nkind = \"file\"\npath = \"{}\"\n",
            events.display()
        ),
    )
    .expect("config");
    let serve = || {
        let mut command = tunehook(dir.path());
        command
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .env("TUNEHOOK_LISTEN", "127.0.0.1:0")
            .env("TUNEHOOK_LOG_FORMAT", "json");
        start(command)
    };
    let mut server = serve();
    let (path, api_token) = tokens(dir.path());
    let url = format!("http://{}{path}", server.addr);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let posters = post_until_gone(&client, &url, "k", "AVAILABLE");
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.child.kill().expect("SIGKILL");
    let _ = server.child.wait();
    let mut acknowledged = Vec::new();
    for poster in posters {
        acknowledged.extend(poster.await.expect("poster"));
    }
    assert!(!acknowledged.is_empty());

    let server = serve();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page: Value = client
            .get(format!(
                "http://{}/v1/deliveries?status=pending&limit=1",
                server.addr
            ))
            .bearer_auth(&api_token)
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("json");
        if page["deliveries"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries still pending after restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered: std::collections::HashSet<String> = std::fs::read_to_string(&events)
        .expect("the sink's file")
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|e| e["data"]["finetune_id"].as_str().map(str::to_owned))
        .collect();
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !delivered.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged webhooks never reached the sink, such as {:?}",
        missing.len(),
        missing.first()
    );
    for id in acknowledged.iter().step_by(97) {
        let status = client
            .get(format!("http://{}/v1/jobs/{id}", server.addr))
            .bearer_auth(&api_token)
            .send()
            .await
            .expect("sent")
            .status();
        assert_eq!(
            status,
            reqwest::StatusCode::OK,
            "{id} was acknowledged but is not stored"
        );
    }
    let (status, _) =
        tokio::task::spawn_blocking(move || server.terminate(Duration::from_secs(25)))
            .await
            .expect("terminate");
    assert!(status.success());
}

// ---- Redaction: no command prints a token, whatever fails ----

/// A port on 127.0.0.1 that nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    port
}

#[test]
fn send_test_event_to_a_closed_port_does_not_print_the_token() {
    let dir = tempfile::tempdir().expect("dir");
    let port = closed_port();
    let token = "ingest-token-that-must-not-print-0123456789";
    for url in [
        format!("http://127.0.0.1:{port}/webhooks/segmind/{token}"),
        format!("http://127.0.0.1:{port}/webhooks/segmind/{token}/?again={token}"),
        format!("http://user:{token}@127.0.0.1:{port}/webhooks/segmind/{token}"),
    ] {
        let (ok, out, err) = run(tunehook(dir.path()).args([
            "send-test-event",
            &url,
            "--event",
            "AVAILABLE",
            "--finetune-id",
            "ft",
        ]));
        assert!(!ok, "nothing listens on {port}");
        assert!(
            err.contains("cannot reach") && err.contains("[token]"),
            "says what failed: {err}"
        );
        assert!(
            !out.contains(token) && !err.contains(token),
            "the token is printed:\n{out}\n{err}"
        );
    }
}

#[test]
fn serve_logs_the_absolute_path_of_the_database_it_opened() {
    let dir = tempfile::tempdir().expect("dir");
    let mut command = tunehook(dir.path());
    command
        .arg("serve")
        .env("TUNEHOOK_LISTEN", "127.0.0.1:0")
        .env("TUNEHOOK_LOG_FORMAT", "json")
        .env("TUNEHOOK_DATABASE_URL", "sqlite://relative/t.db");
    let server = start(command);
    let (status, log) = server.terminate(Duration::from_secs(30));
    assert!(status.success(), "{log}");
    let expected = std::fs::canonicalize(dir.path())
        .expect("the folder")
        .join("relative/t.db");
    let opened = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|event| event["message"] == "the database is open")
        .unwrap_or_else(|| panic!("no line says which database is open:\n{log}"));
    assert_eq!(
        opened["database"].as_str(),
        Some(expected.display().to_string().as_str()),
        "{opened}"
    );
}

#[test]
fn config_errors_speak_the_users_words_and_a_mistyped_variable_is_named() {
    let dir = tempfile::tempdir().expect("dir");
    for (var, value, says) in [
        (
            "TUNEHOOK__SERVER__MAX_BODY_BYTES",
            "lots",
            "server.max_body_bytes: expected a whole number of 0 or more, such as 1024",
        ),
        (
            "TUNEHOOK__SERVER__MAX_BODY_BYTES",
            "-5",
            "server.max_body_bytes: expected a whole number of 0 or more",
        ),
        (
            "TUNEHOOK__SERVER__REQUEST_TIMEOUT",
            "30x",
            "server.request_timeout: expected a duration such as \"30s\", \"5m\" or \"2h\"",
        ),
        (
            "TUNEHOOK__SERVER__PUBLIC_URL",
            "tunehook.example.com",
            "server.public_url: `tunehook.example.com` is not an absolute http(s) URL",
        ),
        (
            "TUNEHOOK_API_TOKEN",
            "short-token",
            "api.token is shorter than 16 characters",
        ),
    ] {
        let (ok, _, err) = run(tunehook(dir.path()).arg("check-config").env(var, value));
        assert!(!ok, "{var}={value}");
        assert!(err.contains(says), "{var}={value}: {err}");
        assert!(!err.contains("usize"), "{err}");
    }

    let (ok, out, err) = run(tunehook(dir.path())
        .arg("check-config")
        .env("TUNEHOOK_LISTNE", "0.0.0.0:9000")
        .env("TUNEHOOK_SERVICE_HOST", "10.0.0.1"));
    assert!(ok, "a warning, not an error: {err}");
    assert!(
        err.contains("TUNEHOOK_LISTNE sets nothing; did you mean TUNEHOOK_LISTEN (server.listen)?"),
        "{err}"
    );
    assert!(!err.contains("TUNEHOOK_SERVICE_HOST"), "{err}");
    assert!(out.contains("listen = \"127.0.0.1:8080\""), "{out}");
}
