//! Operating the `tunehook` binary: a writer that stops makes the process
//! exit non-zero, and `tunehook prune` removes old history and keeps jobs
//! and transitions, while the service runs or not.

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

const INGEST_TOKEN: &str = "operations-ingest-token-0123456789";
const API_TOKEN: &str = "operations-api-token-0123456789";

/// The binary, run in `dir` with a clean environment and known tokens.
fn tunehook(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tunehook"));
    command
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TUNEHOOK_INGEST_TOKEN", INGEST_TOKEN)
        .env("TUNEHOOK_API_TOKEN", API_TOKEN);
    command
}

/// Runs a command to its end: success, stdout, stderr.
fn run(command: &mut Command) -> (bool, String, String) {
    let output = command.output().expect("the binary runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A running `tunehook serve` whose stdout (JSON logs) and stderr are
/// collected.
struct Server {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

fn collect(
    stream: impl Read + Send + 'static,
    log: Arc<Mutex<String>>,
    addr: Option<mpsc::Sender<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if let (Some(tx), Ok(event)) = (&addr, serde_json::from_str::<Value>(&line)) {
                if event["message"] == "tunehook is listening" {
                    let _ = tx.send(event["addr"].as_str().unwrap_or_default().to_owned());
                }
            }
            if let Ok(mut log) = log.lock() {
                log.push_str(&line);
                log.push('\n');
            }
        }
    })
}

/// Starts `tunehook serve` in `dir` on a free port, with `env` added, and
/// waits (at most 30 s) for its address.
fn serve(dir: &Path, env: &[(&str, &str)]) -> Server {
    let mut command = tunehook(dir);
    command
        .arg("serve")
        .env("TUNEHOOK_LISTEN", "127.0.0.1:0")
        .env("TUNEHOOK_LOG_FORMAT", "json")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("serve starts");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let readers = vec![
        collect(stdout, Arc::clone(&log), Some(tx)),
        collect(stderr, Arc::clone(&log), None),
    ];
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("serve logs its address");
    Server {
        child,
        addr,
        log,
        readers,
    }
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits for the process to exit on its own, at most `limit`; answers
    /// its exit status and the whole log.
    fn wait_for_exit(mut self, limit: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                let log = self.log.lock().map(|l| l.clone()).unwrap_or_default();
                return (status, log);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let log = self.log.lock().map(|l| l.clone()).unwrap_or_default();
                panic!("serve did not exit within {limit:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server with SIGTERM and checks it exited cleanly.
    fn terminate(self) {
        let pid = self.child.id().to_string();
        let (ok, _, err) = run(Command::new("kill").args(["-TERM", &pid]));
        assert!(ok, "kill: {err}");
        let (status, log) = self.wait_for_exit(Duration::from_secs(30));
        assert!(status.success(), "exit status {status:?}\n{log}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client")
}

async fn post_event(server: &Server, event: &str, finetune_id: &str) -> StatusCode {
    client()
        .post(server.url(&format!("/webhooks/segmind/{INGEST_TOKEN}")))
        .body(json!({"event": event, "finetune_id": finetune_id}).to_string())
        .send()
        .await
        .expect("the webhook request completes")
        .status()
}

async fn get(server: &Server, path: &str) -> (StatusCode, Value) {
    let response = client()
        .get(server.url(path))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .expect("the request completes");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The test hook exists only in debug builds (a release binary ignores it).
#[cfg(debug_assertions)]
#[tokio::test(flavor = "multi_thread")]
async fn when_the_writer_stops_the_service_answers_503_and_exits_non_zero() {
    let dir = tempfile::tempdir().expect("dir");
    let server = serve(dir.path(), &[("TUNEHOOK_TEST_WRITER_PANIC_AFTER", "2")]);
    assert_eq!(post_event(&server, "QUEUED", "w-1").await, StatusCode::OK);
    assert_eq!(post_event(&server, "QUEUED", "w-2").await, StatusCode::OK);

    // The writer stops on the third webhook: it is not acknowledged.
    assert_eq!(
        post_event(&server, "QUEUED", "w-3").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // The service says so to health probes and to every client while it
    // is still up: no 2xx after the writer stopped.
    for path in ["/healthz", "/readyz", "/v1/jobs"] {
        let response = client()
            .get(server.url(path))
            .bearer_auth(API_TOKEN)
            .send()
            .await;
        if let Ok(response) = response {
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        }
    }

    let (status, log) = server.wait_for_exit(Duration::from_secs(20));
    assert!(
        !status.success(),
        "the process exits non-zero: {status:?}\n{log}"
    );
    let stopped = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|event| {
            event["level"] == "ERROR"
                && event["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("database writer stopped"))
        });
    let stopped = stopped.unwrap_or_else(|| panic!("an ERROR line says why:\n{log}"));
    assert!(
        stopped["cause"]
            .as_str()
            .is_some_and(|c| c.contains("panicked")),
        "{stopped}"
    );
    assert!(!log.contains(INGEST_TOKEN), "the ingest token leaked");

    // Restarted, it serves again, with what was acknowledged.
    let server = serve(dir.path(), &[]);
    let (status, job) = get(&server, "/v1/jobs/w-2").await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(post_event(&server, "QUEUED", "w-4").await, StatusCode::OK);
    server.terminate();
}

/// Runs `tunehook prune` with `args` in `dir` and reads its JSON answer.
fn prune(dir: &Path, args: &[&str]) -> Value {
    let (ok, out, err) = run(tunehook(dir).arg("prune").args(args));
    assert!(ok, "prune {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("prune prints JSON ({e}): {out}"))
}

async fn receipt_count(server: &Server) -> usize {
    let (status, body) = get(server, "/v1/receipts?limit=500").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["receipts"]
        .as_array()
        .map(Vec::len)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_removes_old_receipts_and_keeps_jobs_and_transitions_while_the_service_runs() {
    let dir = tempfile::tempdir().expect("dir");
    let server = serve(dir.path(), &[]);
    for (event, id) in [("QUEUED", "p-1"), ("AVAILABLE", "p-1"), ("QUEUED", "p-2")] {
        assert_eq!(post_event(&server, event, id).await, StatusCode::OK);
    }

    // A dry run says what would go and removes nothing.
    let preview = prune(dir.path(), &["--older-than", "0s", "--dry-run"]);
    assert_eq!(preview["dry_run"], true);
    assert_eq!(preview["would_remove"]["receipts"], 3, "{preview}");
    assert_eq!(receipt_count(&server).await, 3);
    // With the configured retention (90 days) nothing is old enough.
    let kept = prune(dir.path(), &[]);
    assert_eq!(kept["removed"]["receipts"], 0, "{kept}");
    assert_eq!(receipt_count(&server).await, 3);

    // Everything received so far is older than "0s ago".
    let pruned = prune(dir.path(), &["--older-than", "0s"]);
    assert_eq!(pruned["dry_run"], false);
    assert_eq!(
        pruned["removed"],
        json!({"receipts": 3, "attempts": 0, "delivered": 0}),
        "{pruned}"
    );
    assert_eq!(receipt_count(&server).await, 0);
    let (_, job) = get(&server, "/v1/jobs/p-1").await;
    assert_eq!(job["status"], "AVAILABLE", "{job}");
    let transitions = job["transitions"].as_array().expect("transitions");
    assert_eq!(transitions.len(), 2, "transitions are kept: {job}");
    assert!(
        transitions.iter().all(|t| t["receipt_id"].is_null()),
        "they no longer name the removed receipts: {job}"
    );
    let (status, _) = get(&server, "/v1/jobs/p-2").await;
    assert_eq!(status, StatusCode::OK);

    // The service saw the prune made by the other process, and goes on.
    let (_, status_body) = get(&server, "/v1/status").await;
    let retention = &status_body["retention"];
    assert!(retention["last_prune_at"].is_string(), "{status_body}");
    assert_eq!(retention["last_prune_removed"]["receipts"], 3);
    assert_eq!(retention["receipts"], "90d");
    assert_eq!(post_event(&server, "TRAINING", "p-2").await, StatusCode::OK);
    assert_eq!(receipt_count(&server).await, 1);
    server.terminate();

    // With the service stopped, too.
    let again = prune(dir.path(), &["--older-than", "0s"]);
    assert_eq!(again["removed"]["receipts"], 1, "{again}");
    let nothing = prune(dir.path(), &["--older-than", "0s", "--dry-run"]);
    assert_eq!(
        nothing["would_remove"],
        json!({"receipts": 0, "attempts": 0, "delivered": 0})
    );
}

#[test]
fn prune_refuses_a_duration_it_cannot_read() {
    let dir = tempfile::tempdir().expect("dir");
    let (ok, _, err) = run(tunehook(dir.path()).args(["prune", "--older-than", "soon"]));
    assert!(!ok);
    assert!(err.contains("--older-than"), "{err}");
}
