//! Faults of the machine under a running `tunehook serve`: the disk fills up
//! while it runs.
//!
//! The full disk is simulated without mount privileges: the process's
//! file-size limit (RLIMIT_FSIZE) is lowered with `prlimit` to 4 KiB, below
//! the size of the database and its WAL, so every write SQLite makes to them
//! fails with EFBIG, as it would with ENOSPC. The server is started through
//! `sh -c 'trap "" XFSZ; exec ...'` so SIGXFSZ is ignored (a disposition
//! that survives `exec`) and the failed writes are errors, not a kill.

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

const INGEST_TOKEN: &str = "faults-ingest-token-0123456789";
const API_TOKEN: &str = "faults-api-token-0123456789";

/// A running `tunehook serve` whose stdout (JSON logs) and stderr (where a
/// panic would be reported) are collected.
struct Server {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
    /// The threads reading stdout and stderr; they end when the process does.
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// Appends every line of `stream` to `log`; sends the listening address
/// when the log line announcing it goes by.
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

/// Starts `tunehook serve` on a free port with its database in `dir`,
/// SIGXFSZ ignored, and waits (at most 30 s) for its address.
fn serve(dir: &Path) -> Server {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"trap "" XFSZ; exec "$0" serve"#)
        .arg(env!("CARGO_BIN_EXE_tunehook"))
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TUNEHOOK_LISTEN", "127.0.0.1:0")
        .env("TUNEHOOK_LOG_FORMAT", "json")
        .env(
            "TUNEHOOK_DATABASE_URL",
            format!("sqlite://{}", dir.join("tunehook.db").display()),
        )
        .env("TUNEHOOK_INGEST_TOKEN", INGEST_TOKEN)
        .env("TUNEHOOK_API_TOKEN", API_TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    let readers = vec![
        collect(
            child.stdout.take().expect("stdout"),
            Arc::clone(&log),
            Some(tx),
        ),
        collect(child.stderr.take().expect("stderr"), Arc::clone(&log), None),
    ];
    let addr = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(addr) => addr,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "serve did not log its address within 30 s:\n{}",
                log.lock().map(|l| l.clone()).unwrap_or_default()
            );
        }
    };
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

    fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit, at most `limit`; answers the
    /// exit status and the whole log.
    fn terminate(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(killed.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // The readers end at the end of the output: every line is in.
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return (status, self.log());
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("serve did not exit within {limit:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A test that failed half-way leaves no server behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sets the file-size limit of process `pid` (`soft:hard`, in bytes or
/// `unlimited`) with `prlimit`; answers prlimit's complaint when it fails.
fn set_file_size_limit(pid: u32, limits: &str) -> Result<(), String> {
    let output = Command::new("prlimit")
        .arg("--pid")
        .arg(pid.to_string())
        .arg(format!("--fsize={limits}"))
        .output()
        .map_err(|e| format!("cannot run prlimit: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// The soft file-size limit of process `pid`, as /proc shows it.
fn soft_file_size_limit(pid: u32) -> Option<String> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max file size"))?;
    line.trim_start_matches("Max file size")
        .split_whitespace()
        .next()
        .map(str::to_owned)
}

async fn post(client: &reqwest::Client, server: &Server, body: String) -> reqwest::Response {
    client
        .post(server.url(&format!("/webhooks/segmind/{INGEST_TOKEN}")))
        .body(body)
        .send()
        .await
        .expect("the webhook request completes")
}

async fn post_event(
    client: &reqwest::Client,
    server: &Server,
    event: &str,
    id: &str,
) -> reqwest::Response {
    post(
        client,
        server,
        json!({"event": event, "finetune_id": id}).to_string(),
    )
    .await
}

async fn get(client: &reqwest::Client, server: &Server, path: &str) -> (StatusCode, Value) {
    let response = client
        .get(server.url(path))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .expect("the API request completes");
    let status = response.status();
    let text = response.text().await.expect("a body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Stops the server with SIGTERM; checks it exited cleanly without a panic
/// and answers its log.
async fn stop(server: Server) -> String {
    let (status, log) =
        tokio::task::spawn_blocking(move || server.terminate(Duration::from_secs(25)))
            .await
            .expect("terminate");
    assert!(status.success(), "exit status {status:?}\n{log}");
    assert!(!log.contains("panicked"), "a panic:\n{log}");
    log
}

/// Every item of a paged list (`key` in each page), following `next_cursor`.
async fn every_item(
    client: &reqwest::Client,
    server: &Server,
    list: &str,
    key: &str,
) -> Vec<Value> {
    let mut items = Vec::new();
    let mut path = format!("{list}?limit=500");
    for _ in 0..100 {
        let (status, page) = get(client, server, &path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        items.extend(page[key].as_array().into_iter().flatten().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("{list}?limit=500&cursor={cursor}"),
            None => break,
        }
    }
    items
}

/// Every job id, sorted.
async fn job_ids(client: &reqwest::Client, server: &Server) -> Vec<String> {
    let mut ids: Vec<String> = every_item(client, server, "/v1/jobs", "jobs")
        .await
        .iter()
        .filter_map(|j| j["finetune_id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

/// The finetune ids of every receipt (`-` for a receipt without one), sorted.
async fn receipt_ids(client: &reqwest::Client, server: &Server) -> Vec<String> {
    let mut ids: Vec<String> = every_item(client, server, "/v1/receipts", "receipts")
        .await
        .iter()
        .map(|r| r["finetune_id"].as_str().unwrap_or("-").to_owned())
        .collect();
    ids.sort();
    ids
}

async fn probe(client: &reqwest::Client, server: &Server, path: &str) -> StatusCode {
    client
        .get(server.url(path))
        .send()
        .await
        .expect("the probe completes")
        .status()
}

/// Checks a 503: the API's error shape, and a `Retry-After`.
async fn assert_unavailable(response: reqwest::Response, what: &str) {
    let status = response.status();
    let retry_after = response.headers().get("retry-after").cloned();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{what} was answered {status} while the disk was full: {text}"
    );
    assert!(retry_after.is_some(), "{what}: 503 without Retry-After");
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    assert_eq!(body["error"]["code"], "unavailable", "{what}: {text}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: {text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_gets_503_for_every_webhook_and_storing_resumes_when_space_returns() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!(
            "SKIPPED a_full_disk_gets_503...: the `prlimit` program (util-linux) is not installed"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let mut server = serve(dir.path());
    let pid = server.child.id();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");

    // Before: webhooks are stored.
    let mut acknowledged: Vec<String> = Vec::new();
    for i in 0..5 {
        let id = format!("before-{i}");
        let response = post_event(&client, &server, "QUEUED", &id).await;
        assert_eq!(response.status(), StatusCode::OK, "{id}");
        acknowledged.push(id);
    }

    // The disk fills up.
    if let Err(complaint) = set_file_size_limit(pid, "4096:unlimited") {
        eprintln!(
            "SKIPPED a_full_disk_gets_503...: prlimit cannot lower the file-size limit here: {complaint}"
        );
        return;
    }
    if let Some(soft) = soft_file_size_limit(pid) {
        assert_eq!(soft, "4096", "the limit applies to the server's process");
    }

    let mut refused: Vec<String> = Vec::new();
    // One at a time: new jobs, a new status for a known job, and a
    // duplicate (whose receipt must be stored too).
    for (event, id) in [
        ("QUEUED", "full-0"),
        ("AVAILABLE", "before-0"),
        ("QUEUED", "before-1"),
        ("TRAINING", "full-1"),
    ] {
        assert_unavailable(post_event(&client, &server, event, id).await, id).await;
        if id.starts_with("full") {
            refused.push(id.to_owned());
        }
    }
    // A body that is not JSON cannot be stored either: 503, not 400.
    assert_unavailable(post(&client, &server, "not json".into()).await, "not json").await;
    // Many at once (one batch for the writer).
    let concurrent = (0..20).map(|i| {
        let (client, server) = (&client, &server);
        async move {
            let id = format!("full-batch-{i}");
            let response = post_event(client, server, "QUEUED", &id).await;
            (id, response)
        }
    });
    for (id, response) in futures::future::join_all(concurrent).await {
        assert_unavailable(response, &id).await;
        refused.push(id);
    }
    // The process is still up and answers; reads work.
    assert!(
        matches!(server.child.try_wait(), Ok(None)),
        "the server exited:\n{}",
        server.log()
    );
    assert_eq!(probe(&client, &server, "/healthz").await, StatusCode::OK);
    assert_eq!(probe(&client, &server, "/readyz").await, StatusCode::OK);
    let mut expected_jobs = acknowledged.clone();
    expected_jobs.sort();
    assert_eq!(job_ids(&client, &server).await, expected_jobs);
    let (status, job) = get(&client, &server, "/v1/jobs/before-0").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        job["status"], "QUEUED",
        "the refused AVAILABLE was not applied"
    );
    assert_eq!(
        receipt_ids(&client, &server).await.len(),
        acknowledged.len(),
        "no receipt of a refused webhook"
    );

    // Space returns: webhooks are stored again, without a restart.
    set_file_size_limit(pid, "unlimited:unlimited").expect("prlimit raises the limit back");
    for i in 0..5 {
        let id = format!("after-{i}");
        let response = post_event(&client, &server, "QUEUED", &id).await;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert_eq!(
            status,
            StatusCode::OK,
            "{id} once the disk had room again: {text}\n{}",
            server.log()
        );
        acknowledged.push(id);
        let (status, job) = get(&client, &server, &format!("/v1/jobs/after-{i}")).await;
        assert_eq!(status, StatusCode::OK, "{job}");
    }
    let response = post_event(&client, &server, "AVAILABLE", "before-0").await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["outcome"], "applied", "{answer}");

    let log = stop(server).await;
    assert!(
        log.lines().any(
            |l| (l.contains(r#""level":"ERROR""#) || l.contains(r#""level":"WARN""#))
                && l.contains("disk")
        ),
        "the log does not say the disk failed:\n{log}"
    );

    // After a restart, exactly what was acknowledged is there.
    let server = serve(dir.path());
    let mut expected_jobs = acknowledged.clone();
    expected_jobs.sort();
    assert_eq!(job_ids(&client, &server).await, expected_jobs);
    for id in &refused {
        let (status, _) = get(&client, &server, &format!("/v1/jobs/{id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{id} got 503 but is stored");
    }
    let (_, job) = get(&client, &server, "/v1/jobs/before-0").await;
    assert_eq!(job["status"], "AVAILABLE");
    let receipts = receipt_ids(&client, &server).await;
    let mut expected_receipts = acknowledged.clone();
    expected_receipts.push("before-0".into());
    expected_receipts.sort();
    assert_eq!(
        receipts, expected_receipts,
        "one receipt per acknowledged webhook, none for a refused one"
    );
    stop(server).await;
}
