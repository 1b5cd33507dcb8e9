//! What only a PostgreSQL server can do to a running `tunehook`, against
//! the real binary: kill -9 during a webhook burst, the server going away
//! (through a TCP proxy the test cuts) and coming back, `pg_terminate_backend`
//! under a stream of webhooks, and bad database settings (no host, another
//! scheme, a missing database, nothing listening, a wrong password), each a
//! one-line error that never prints the password.
//!
//! Each test runs on a database of its own (`tunehook_fault_…`), created on
//! the server `TUNEHOOK_TEST_POSTGRES_URL` names (a user that may create
//! databases, e.g. postgres://postgres@127.0.0.1:5432/postgres) and dropped
//! at the end, also when the test fails. Without the variable every test
//! says SKIPPED and passes.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{Connection, Executor, PgConnection, Row};
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::{BufRead, BufReader, Read, Write},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// The variable naming the server the tests run on.
const URL_VAR: &str = "TUNEHOOK_TEST_POSTGRES_URL";
const INGEST_TOKEN: &str = "pg-faults-ingest-token-0123456789";
const API_TOKEN: &str = "pg-faults-api-token-0123456789";
/// The password of every URL a test hands tunehook: it must never be printed.
const PASSWORD: &str = "s3cret-pw";

/// The server's URL, or `None` after saying SKIPPED (past the harness's
/// capture) when the variable is not set.
fn server_url(test: &str) -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: needs a PostgreSQL server: set {URL_VAR} (for example postgres://postgres@127.0.0.1:5432/postgres)"
            );
            None
        }
    }
}

/// The host and port of the server's URL (TCP only).
fn host_port(server: &str) -> (String, u16) {
    let url = url::Url::parse(server).unwrap_or_else(|e| panic!("{URL_VAR} is not a URL: {e}"));
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| panic!("{URL_VAR} must name a TCP host"))
        .to_owned();
    (host, url.port().unwrap_or(5432))
}

// ---- A database of its own for each test ----

/// Runs `work` on a connection to `server`, on a thread and runtime of its
/// own, so that it can be called from `Drop` and from sync code.
fn on_server<T: Send + 'static>(
    server: String,
    work: impl for<'c> FnOnce(
        &'c mut PgConnection,
    ) -> futures::future::BoxFuture<'c, Result<T, sqlx::Error>>
    + Send
    + 'static,
) -> Result<T, sqlx::Error> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let mut conn =
                tokio::time::timeout(Duration::from_secs(15), PgConnection::connect(&server))
                    .await
                    .map_err(|_| sqlx::Error::PoolTimedOut)??;
            let done = tokio::time::timeout(Duration::from_secs(20), work(&mut conn))
                .await
                .map_err(|_| sqlx::Error::PoolTimedOut)
                .and_then(|done| done);
            let _ = conn.close().await;
            done
        })
    })
    .join()
    .expect("the database thread ends")
}

/// `CREATE DATABASE tunehook_fault_…` now, `DROP DATABASE … WITH (FORCE)`
/// when dropped (after a failed assertion too).
struct TestDatabase {
    name: String,
    server: String,
}

impl TestDatabase {
    fn create(server: &str) -> TestDatabase {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "tunehook_fault_{}_{}_{:08x}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        let sql = format!("CREATE DATABASE {name}");
        tokio::task::block_in_place(|| {
            on_server(server.to_owned(), move |conn| {
                Box::pin(async move { conn.execute(sql.as_str()).await.map(|_| ()) })
            })
        })
        .unwrap_or_else(|e| panic!("cannot create a test database on {URL_VAR}: {e}"));
        TestDatabase {
            name,
            server: server.to_owned(),
        }
    }

    /// The database's URL on the server, with [`PASSWORD`] as its password
    /// (the server trusts any), through `via` (host, port) when given.
    fn url(&self, via: Option<SocketAddr>) -> String {
        let mut url = url::Url::parse(&self.server).expect("a URL");
        url.set_path(&format!("/{}", self.name));
        url.set_password(Some(PASSWORD)).expect("a password");
        if let Some(addr) = via {
            url.set_host(Some(&addr.ip().to_string())).expect("a host");
            url.set_port(Some(addr.port())).expect("a port");
        }
        url.to_string()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let run = || {
            on_server(self.server.clone(), move |conn| {
                Box::pin(async move { conn.execute(sql.as_str()).await.map(|_| ()) })
            })
        };
        let dropped = match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(run)
            }
            _ => run(),
        };
        if let Err(e) = dropped {
            let _ = writeln!(std::io::stderr(), "could not drop {}: {e}", self.name);
        }
    }
}

// ---- A running `tunehook serve` ----

/// `tunehook serve` on 127.0.0.1, port 0, JSON logs, configured tokens; its
/// stdout and stderr are collected. Killed when dropped.
struct Tunehook {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
}

/// Appends every line of `stream` to `log`; sends the listening address
/// when the line announcing it goes by.
fn collect(
    stream: impl Read + Send + 'static,
    log: Arc<Mutex<String>>,
    addr: Option<mpsc::Sender<String>>,
) {
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
    });
}

/// Starts `tunehook serve` on `database_url` (with the config file
/// `config`, when given) and waits at most 30 s for its address.
fn serve(dir: &Path, database_url: &str, config: Option<&Path>) -> Tunehook {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tunehook"));
    command
        .arg("serve")
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TUNEHOOK_LISTEN", "127.0.0.1:0")
        .env("TUNEHOOK_LOG_FORMAT", "json")
        .env("TUNEHOOK_LOG", "info")
        .env("TUNEHOOK_DATABASE_URL", database_url)
        .env("TUNEHOOK_INGEST_TOKEN", INGEST_TOKEN)
        .env("TUNEHOOK_API_TOKEN", API_TOKEN)
        .env("TUNEHOOK__DATABASE__CONNECT_TIMEOUT", "10s")
        .env("TUNEHOOK__SERVER__SHUTDOWN_TIMEOUT", "5s")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(config) = config {
        command.env("TUNEHOOK_CONFIG", config);
    }
    let mut child = command.spawn().expect("tunehook serve starts");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    collect(
        child.stdout.take().expect("stdout"),
        Arc::clone(&log),
        Some(tx),
    );
    collect(child.stderr.take().expect("stderr"), Arc::clone(&log), None);
    // Ends early (disconnected) when the process exits before listening.
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(addr) => Tunehook { child, addr, log },
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
            panic!(
                "tunehook serve did not log its address within 30 s:\n{}",
                log.lock().map(|l| l.clone()).unwrap_or_default()
            );
        }
    }
}

impl Tunehook {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn webhook_url(&self) -> String {
        self.url(&format!("/webhooks/segmind/{INGEST_TOKEN}"))
    }

    /// The last lines of the log, for failure messages.
    fn log_tail(&self) -> String {
        let log = self.log.lock().map(|l| l.clone()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, and the exit reaped.
    fn kill_9(&mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }
}

impl Drop for Tunehook {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---- HTTP helpers ----

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client")
}

/// Posts `{"event", "finetune_id"}`: the answer's status and JSON body, or
/// the request's error.
async fn post_event(
    client: &reqwest::Client,
    url: &str,
    event: &str,
    id: &str,
) -> Result<(StatusCode, Value), reqwest::Error> {
    let response = client
        .post(url)
        .body(json!({"event": event, "finetune_id": id}).to_string())
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// A webhook's answer (status and JSON body), or why there was none.
type Answer = Result<(StatusCode, Value), String>;

/// A `/v1` GET with the API token: the status and the JSON body.
async fn get(client: &reqwest::Client, server: &Tunehook, path: &str) -> (StatusCode, Value) {
    let response = client
        .get(server.url(path))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", server.log_tail()));
    let status = response.status();
    let text = response.text().await.expect("a body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Every item of a paged `/v1` list (`key` in each page), following
/// `next_cursor` (the receipts' `before_id`, the jobs' position).
async fn every_item(
    client: &reqwest::Client,
    server: &Tunehook,
    list: &str,
    key: &str,
) -> Vec<Value> {
    let mut items = Vec::new();
    let mut path = format!("{list}?limit=500");
    for _ in 0..100 {
        let (status, page) = get(client, server, &path).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {page}");
        items.extend(page[key].as_array().into_iter().flatten().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("{list}?limit=500&cursor={cursor}"),
            None => return items,
        }
    }
    panic!("{list} did not end within 100 pages");
}

/// Every receipt, by id.
async fn receipts(client: &reqwest::Client, server: &Tunehook) -> BTreeMap<i64, Value> {
    every_item(client, server, "/v1/receipts", "receipts")
        .await
        .into_iter()
        .map(|r| (r["id"].as_i64().expect("a receipt id"), r))
        .collect()
}

/// The status of an unauthenticated probe (`/healthz`, `/readyz`).
async fn probe(client: &reqwest::Client, server: &Tunehook, path: &str) -> Option<StatusCode> {
    client
        .get(server.url(path))
        .send()
        .await
        .ok()
        .map(|r| r.status())
}

/// Polls `path` until it answers `want`, at most `within`; answers how long
/// that took.
async fn wait_for(
    client: &reqwest::Client,
    server: &Tunehook,
    path: &str,
    want: StatusCode,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let got = probe(client, server, path).await;
        if got == Some(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{path} still answers {got:?}, not {want}, after {within:?}\n{}",
            server.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- A fake sink ----

/// An HTTP sink on 127.0.0.1 that answers 204 and records every event.
struct FakeSink {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Value>>>,
}

impl FakeSink {
    async fn start() -> FakeSink {
        async fn receive(
            axum::extract::State(received): axum::extract::State<Arc<Mutex<Vec<Value>>>>,
            body: axum::body::Bytes,
        ) -> StatusCode {
            let event = serde_json::from_slice(&body).unwrap_or(Value::Null);
            received.lock().expect("the sink's record").push(event);
            StatusCode::NO_CONTENT
        }
        let received = Arc::new(Mutex::new(Vec::new()));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::post(receive))
            .with_state(Arc::clone(&received));
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeSink { addr, received }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn received(&self) -> Vec<Value> {
        self.received.lock().expect("the sink's record").clone()
    }
}

// ---- A TCP proxy the test can cut ----

#[derive(Default)]
struct ProxyState {
    open: bool,
    connections: Vec<tokio::task::AbortHandle>,
}

/// Passes TCP between tunehook and PostgreSQL while open; `cut` closes
/// every connection and, until `reopen`, closes each new one at once.
struct Proxy {
    addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(ProxyState {
            open: true,
            connections: Vec::new(),
        }));
        let shared = Arc::clone(&state);
        let accepting = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                // The check and the registration under one lock, so that a
                // cut never misses a connection accepted just before it.
                let mut state = shared.lock().expect("the proxy's state");
                if !state.open {
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                let piping = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                state.connections.retain(|c| !c.is_finished());
                state.connections.push(piping.abort_handle());
            }
        });
        Proxy {
            addr,
            state,
            accepting,
        }
    }

    /// Closes every open connection; new ones are closed at once.
    fn cut(&self) {
        let mut state = self.state.lock().expect("the proxy's state");
        state.open = false;
        for connection in state.connections.drain(..) {
            connection.abort();
        }
    }

    fn reopen(&self) {
        self.state.lock().expect("the proxy's state").open = true;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accepting.abort();
        self.cut();
    }
}

// ---- 1. kill -9 during a webhook burst ----

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_a_webhook_burst_loses_no_acknowledged_webhook_and_delivers_every_transition_in_order()
 {
    let Some(server_url) = server_url("kill_9_during_a_webhook_burst") else {
        return;
    };
    const JOBS: usize = 100;
    const STEPS: [&str; 3] = ["QUEUED", "TRAINING", "AVAILABLE"];
    const KILL_AFTER: usize = 150;
    let database = TestDatabase::create(&server_url);
    let dir = tempfile::tempdir().expect("dir");
    let sink = FakeSink::start().await;
    let config = dir.path().join("tunehook.toml");
    std::fs::write(
        &config,
        format!(
            "[delivery]\nretry_schedule = [\"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\"]\ntimeout = \"3s\"\n\n[[sinks]]\nname = \"fake\"\nkind = \"http\"\nurl = \"{}\"\n",
            sink.url()
        ),
    )
    .expect("config");
    let db_url = database.url(None);
    let mut first = tokio::task::block_in_place(|| serve(dir.path(), &db_url, Some(&config)));
    let client = client();

    // What each job's webhooks got: the receipt ids of the acknowledged
    // ones (in order), and the step in doubt (sent, never answered).
    #[derive(Debug, Default, Clone)]
    struct Posted {
        acknowledged: Vec<(usize, i64)>,
        in_doubt: Option<usize>,
        refused: Vec<(usize, StatusCode, Value)>,
    }
    let next_job = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let url = first.webhook_url();
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            let (next_job, answered, killed) = (
                Arc::clone(&next_job),
                Arc::clone(&answered),
                Arc::clone(&killed),
            );
            tokio::spawn(async move {
                let mut jobs: Vec<(String, Posted)> = Vec::new();
                while !killed.load(Ordering::SeqCst) {
                    let j = next_job.fetch_add(1, Ordering::SeqCst);
                    if j >= JOBS {
                        break;
                    }
                    let id = format!("burst-{j:03}");
                    let mut posted = Posted::default();
                    // A job's events in order, each after the previous one's
                    // answer; the first one not acknowledged ends the job.
                    for (step, event) in STEPS.iter().enumerate() {
                        match post_event(&client, &url, event, &id).await {
                            Ok((status, body)) if status == StatusCode::OK => {
                                answered.fetch_add(1, Ordering::SeqCst);
                                assert_eq!(body["outcome"], "applied", "{id} {event}: {body}");
                                let receipt = body["receipt_id"].as_i64().expect("a receipt id");
                                posted.acknowledged.push((step, receipt));
                            }
                            Ok((status, body)) => {
                                posted.refused.push((step, status, body));
                                break;
                            }
                            Err(_) => {
                                posted.in_doubt = Some(step);
                                break;
                            }
                        }
                    }
                    jobs.push((id, posted));
                }
                jobs
            })
        })
        .collect();

    // SIGKILL once about half of the burst is answered.
    let deadline = Instant::now() + Duration::from_secs(30);
    while answered.load(Ordering::SeqCst) < KILL_AFTER {
        assert!(
            Instant::now() < deadline,
            "only {} webhooks answered within 30 s\n{}",
            answered.load(Ordering::SeqCst),
            first.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Posters stop taking new jobs; requests in flight meet the kill.
    killed.store(true, Ordering::SeqCst);
    first.kill_9();
    let mut posted: BTreeMap<String, Posted> = BTreeMap::new();
    for worker in workers {
        let jobs = tokio::time::timeout(Duration::from_secs(30), worker)
            .await
            .expect("the posters end once the server is gone")
            .expect("a poster");
        posted.extend(jobs);
    }
    let acknowledged: usize = posted.values().map(|p| p.acknowledged.len()).sum();
    let in_doubt = posted.values().filter(|p| p.in_doubt.is_some()).count();
    let refused: Vec<_> = posted
        .iter()
        .flat_map(|(id, p)| p.refused.iter().map(move |r| (id, r)))
        .collect();
    assert!(
        refused.is_empty(),
        "webhooks refused before the kill: {refused:?}\n{}",
        first.log_tail()
    );
    assert!(
        acknowledged >= KILL_AFTER && acknowledged < JOBS * STEPS.len(),
        "the kill came mid-burst: {acknowledged} of {} acknowledged",
        JOBS * STEPS.len()
    );
    drop(first);

    // Restarted on the same database.
    let second = tokio::task::block_in_place(|| serve(dir.path(), &db_url, Some(&config)));
    let stored = receipts(&client, &second).await;
    for (id, p) in &posted {
        for &(step, receipt) in &p.acknowledged {
            let found = stored.get(&receipt).unwrap_or_else(|| {
                panic!(
                    "{id} {} was answered 200 (receipt {receipt}) but its receipt is gone after kill -9",
                    STEPS[step]
                )
            });
            assert_eq!(
                found["finetune_id"],
                id.as_str(),
                "receipt {receipt}: {found}"
            );
            assert_eq!(found["status"], STEPS[step], "receipt {receipt}: {found}");
        }
        let Some(&(last, _)) = p.acknowledged.last() else {
            continue;
        };
        let (status, job) = get(&client, &second, &format!("/v1/jobs/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{id} was acknowledged: {job}");
        let recorded: Vec<&str> = job["transitions"]
            .as_array()
            .expect("transitions")
            .iter()
            .filter_map(|t| t["to_status"].as_str())
            .collect();
        for &(step, _) in &p.acknowledged {
            assert!(
                recorded.contains(&STEPS[step]),
                "{id}: the acknowledged {} has no transition: {recorded:?}",
                STEPS[step]
            );
        }
        // The last acknowledged status, or the one in flight at the kill.
        let mut allowed = vec![STEPS[last]];
        allowed.extend(p.in_doubt.map(|s| STEPS[s]));
        let now = job["status"].as_str().unwrap_or_default();
        assert!(
            allowed.contains(&now),
            "{id} is {now}; acknowledged up to {}, in doubt {:?}",
            STEPS[last],
            p.in_doubt.map(|s| STEPS[s])
        );
    }

    // Every transition recorded, of every job stored (acknowledged or not),
    // reaches the sink, each job's in order.
    let mut transitions: HashMap<String, Vec<String>> = HashMap::new();
    for job in every_item(&client, &second, "/v1/jobs", "jobs").await {
        let id = job["finetune_id"].as_str().expect("an id").to_owned();
        let (status, job) = get(&client, &second, &format!("/v1/jobs/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{job}");
        let ids = job["transitions"]
            .as_array()
            .expect("transitions")
            .iter()
            .map(|t| t["id"].as_str().expect("a transition id").to_owned())
            .collect();
        transitions.insert(id, ids);
    }
    for (id, p) in &posted {
        assert!(
            p.acknowledged.is_empty() || transitions.contains_key(id),
            "{id} is missing from /v1/jobs"
        );
    }
    let wanted: HashSet<&String> = transitions.values().flatten().collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let delivered = loop {
        let received = sink.received();
        let got: HashSet<&str> = received.iter().filter_map(|e| e["id"].as_str()).collect();
        let missing: Vec<&&String> = wanted
            .iter()
            .filter(|id| !got.contains(id.as_str()))
            .collect();
        if missing.is_empty() {
            break received;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} transitions never reached the sink within 30 s of the restart, such as {:?}\n{}",
            missing.len(),
            wanted.len(),
            missing.first(),
            second.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Per job, in the order received (a redelivery after the crash may
    // repeat an event), no event comes after a later one of the same job.
    let mut arrived: HashMap<&str, Vec<usize>> = HashMap::new();
    for event in delivered
        .iter()
        .filter(|e| e["type"] == "finetune.status_changed")
    {
        let job = event["data"]["finetune_id"]
            .as_str()
            .expect("a finetune id");
        let order = transitions
            .get(job)
            .and_then(|ids| ids.iter().position(|t| event["id"] == t.as_str()))
            .unwrap_or_else(|| panic!("the sink got an event that is not a transition: {event}"));
        arrived.entry(job).or_default().push(order);
    }
    for (job, order) in &arrived {
        assert!(
            order.windows(2).all(|w| w[0] <= w[1]),
            "{job}'s events reached the sink out of order (indices of its transitions, oldest first = 0): {order:?}"
        );
    }
    eprintln!(
        "kill -9: {acknowledged} acknowledged, {in_doubt} in doubt, {} transitions, {} events received",
        wanted.len(),
        delivered.len()
    );
}

// ---- 2. The database goes away and comes back ----

#[tokio::test(flavor = "multi_thread")]
async fn the_database_going_away_gets_503_for_webhooks_and_not_ready_and_tunehook_recovers_by_itself()
 {
    let Some(server_url) = server_url("the_database_going_away") else {
        return;
    };
    let database = TestDatabase::create(&server_url);
    let (host, port) = host_port(&server_url);
    let proxy = Proxy::start(format!("{host}:{port}")).await;
    let dir = tempfile::tempdir().expect("dir");
    let db_url = database.url(Some(proxy.addr));
    let mut server = tokio::task::block_in_place(|| serve(dir.path(), &db_url, None));
    let client = client();
    let url = server.webhook_url();

    // The proxy passes traffic: webhooks are stored.
    let mut stored_ids: Vec<i64> = Vec::new();
    for i in 0..5 {
        let (status, body) = post_event(&client, &url, "QUEUED", &format!("before-{i}"))
            .await
            .expect("answered");
        assert_eq!(status, StatusCode::OK, "before-{i}: {body}");
        stored_ids.push(body["receipt_id"].as_i64().expect("a receipt id"));
    }
    assert_eq!(
        probe(&client, &server, "/readyz").await,
        Some(StatusCode::OK)
    );

    // The server goes away: every connection cut, new ones refused.
    proxy.cut();
    let not_ready = wait_for(
        &client,
        &server,
        "/readyz",
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(10),
    )
    .await;
    let mut refused: Vec<String> = Vec::new();
    for i in 0..5 {
        let id = format!("outage-{i}");
        let (status, body) = post_event(&client, &url, "QUEUED", &id)
            .await
            .unwrap_or_else(|e| panic!("{id} got no answer during the outage: {e}"));
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{id} during the outage: {body}\n{}",
            server.log_tail()
        );
        refused.push(id);
    }
    // A known job's next status, and many at once.
    let (status, body) = post_event(&client, &url, "TRAINING", "before-0")
        .await
        .expect("answered");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let concurrent = (0..10).map(|i| {
        let (client, url) = (&client, &url);
        async move {
            let id = format!("outage-many-{i}");
            (id.clone(), post_event(client, url, "QUEUED", &id).await)
        }
    });
    for (id, answer) in futures::future::join_all(concurrent).await {
        let (status, body) =
            answer.unwrap_or_else(|e| panic!("{id} got no answer during the outage: {e}"));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{id}: {body}");
        refused.push(id);
    }
    assert_eq!(
        probe(&client, &server, "/healthz").await,
        Some(StatusCode::OK),
        "liveness during the outage\n{}",
        server.log_tail()
    );
    assert!(server.is_running(), "tunehook exited during the outage");
    // Still out a while later (no 2xx sneaks in once the pool gives up).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, body) = post_event(&client, &url, "QUEUED", "outage-late")
        .await
        .expect("answered");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    refused.push("outage-late".into());
    assert_eq!(
        probe(&client, &server, "/readyz").await,
        Some(StatusCode::SERVICE_UNAVAILABLE)
    );

    // The server comes back: ready again, without a restart.
    proxy.reopen();
    let ready = wait_for(
        &client,
        &server,
        "/readyz",
        StatusCode::OK,
        Duration::from_secs(20),
    )
    .await;
    for i in 0..5 {
        let (status, body) = post_event(&client, &url, "QUEUED", &format!("after-{i}"))
            .await
            .expect("answered");
        assert_eq!(
            status,
            StatusCode::OK,
            "after-{i}, once the server was back: {body}\n{}",
            server.log_tail()
        );
        stored_ids.push(body["receipt_id"].as_i64().expect("a receipt id"));
    }
    let (status, body) = post_event(&client, &url, "TRAINING", "before-0")
        .await
        .expect("answered");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["outcome"], "applied", "{body}");
    stored_ids.push(body["receipt_id"].as_i64().expect("a receipt id"));

    // Exactly the webhooks answered 200 are stored.
    let stored = receipts(&client, &server).await;
    let mut expected = stored_ids.clone();
    expected.sort();
    assert_eq!(
        stored.keys().copied().collect::<Vec<_>>(),
        expected,
        "one receipt per webhook answered 200, none for one answered 503: {:?}",
        stored
            .values()
            .map(|r| (&r["id"], &r["finetune_id"], &r["status"]))
            .collect::<Vec<_>>()
    );
    for id in &refused {
        let (status, _) = get(&client, &server, &format!("/v1/jobs/{id}")).await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{id} was answered 503 but is stored"
        );
    }
    eprintln!(
        "the database going away: /readyz 503 after {not_ready:?}, 200 {ready:?} after the server came back"
    );
}

// ---- 3. pg_terminate_backend under a stream of webhooks ----

#[tokio::test(flavor = "multi_thread")]
async fn pg_terminate_backend_under_a_stream_of_webhooks_loses_no_acknowledged_webhook() {
    let Some(server_url) = server_url("pg_terminate_backend_under_a_stream_of_webhooks") else {
        return;
    };
    let database = TestDatabase::create(&server_url);
    let dir = tempfile::tempdir().expect("dir");
    let db_url = database.url(None);
    let server = tokio::task::block_in_place(|| serve(dir.path(), &db_url, None));
    let client = client();
    let url = server.webhook_url();

    // Six posters, each a new job per webhook, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let posters: Vec<_> = (0..6)
        .map(|w| {
            let (client, url, stop) = (client.clone(), url.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut answers: Vec<(String, Answer)> = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) && n < 100_000 {
                    let id = format!("term-{w}-{n}");
                    let answer = post_event(&client, &url, "QUEUED", &id)
                        .await
                        .map_err(|e| e.to_string());
                    answers.push((id, answer));
                    n += 1;
                }
                answers
            })
        })
        .collect();

    // Every backend of the test's database, a few times.
    let mut admin = PgConnection::connect(&server_url).await.expect("admin");
    let mut terminated = Vec::new();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        let rows = sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&database.name)
        .fetch_all(&mut admin)
        .await
        .expect("pg_terminate_backend");
        terminated.push(rows.iter().filter(|r| r.get::<bool, _>(0)).count());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let _ = admin.close().await;
    // The stream goes on a while after the last termination, then stops.
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::SeqCst);
    let mut answers = Vec::new();
    for poster in posters {
        answers.extend(
            tokio::time::timeout(Duration::from_secs(30), poster)
                .await
                .expect("the posters stop")
                .expect("a poster"),
        );
    }
    assert!(
        terminated.iter().sum::<usize>() > 0,
        "no backend of the test's database was terminated: {terminated:?}"
    );

    // Once the terminations stop, webhooks succeed, without a restart.
    for i in 0..10 {
        let id = format!("final-{i}");
        let (status, body) = post_event(&client, &url, "QUEUED", &id)
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(
            status,
            StatusCode::OK,
            "{id} after the terminations stopped: {body}\n{}",
            server.log_tail()
        );
        answers.push((id, Ok((status, body))));
    }
    assert_eq!(
        probe(&client, &server, "/readyz").await,
        Some(StatusCode::OK)
    );
    // The terminations reached the writer: it had to connect again.
    let log = server.log.lock().map(|l| l.clone()).unwrap_or_default();
    let writer_connections = log
        .lines()
        .filter(|l| l.contains("the database writer is connected to PostgreSQL"))
        .count();
    assert!(
        writer_connections >= 2,
        "the writer's connection was never terminated and opened again ({writer_connections} connection(s) logged)\n{}",
        server.log_tail()
    );

    let failed: Vec<_> = answers.iter().filter(|(_, a)| a.is_err()).collect();
    assert!(
        failed.is_empty(),
        "requests that got no answer at all: {:?}",
        &failed[..failed.len().min(5)]
    );
    let odd: Vec<_> = answers
        .iter()
        .filter_map(|(id, a)| a.as_ref().ok().map(|(s, b)| (id, s, b)))
        .filter(|(_, s, _)| ![StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE].contains(s))
        .collect();
    assert!(odd.is_empty(), "answers neither 200 nor 503: {odd:?}");
    let acknowledged: Vec<(&String, i64)> = answers
        .iter()
        .filter_map(|(id, a)| match a {
            Ok((status, body)) if *status == StatusCode::OK => {
                Some((id, body["receipt_id"].as_i64().expect("a receipt id")))
            }
            _ => None,
        })
        .collect();
    let unavailable = answers.len() - acknowledged.len();
    let stored = receipts(&client, &server).await;
    let missing: Vec<_> = acknowledged
        .iter()
        .filter(|(id, receipt)| {
            stored
                .get(receipt)
                .is_none_or(|r| r["finetune_id"] != id.as_str())
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} webhooks answered 200 have no receipt, such as {:?}",
        missing.len(),
        missing.first()
    );
    let jobs: HashSet<String> = every_item(&client, &server, "/v1/jobs", "jobs")
        .await
        .iter()
        .filter_map(|j| j["finetune_id"].as_str().map(str::to_owned))
        .collect();
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|(id, _)| !jobs.contains(id.as_str()))
        .collect();
    assert!(lost.is_empty(), "acknowledged jobs missing: {lost:?}");
    eprintln!(
        "pg_terminate_backend: backends terminated per round {terminated:?}; the writer connected {writer_connections} times; {} webhooks answered 200, {unavailable} answered 503",
        acknowledged.len()
    );
}

// ---- 4. Bad database settings ----

/// What a finished `tunehook` command left.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Ran {
    fn show(&self) -> String {
        format!(
            "exit {:?} after {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.took, self.stdout, self.stderr
        )
    }

    /// The password appears nowhere.
    fn assert_no_password(&self) {
        assert!(
            !self.stdout.contains(PASSWORD) && !self.stderr.contains(PASSWORD),
            "the password is printed:\n{}",
            self.show()
        );
    }

    /// stderr is one line, an error.
    fn assert_one_line_error(&self) {
        let lines: Vec<&str> = self.stderr.trim_end().lines().collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with("error: "),
            "not a one-line error on stderr:\n{}",
            self.show()
        );
    }
}

/// Runs `tunehook ARGS` in an empty folder with only `env` (and PATH), at
/// most `limit`.
async fn tunehook(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Ran {
    let dir = tempfile::tempdir().expect("dir");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tunehook"));
    command
        .args(args)
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let start = Instant::now();
    let output = tokio::time::timeout(limit, command.output())
        .await
        .unwrap_or_else(|_| panic!("tunehook {args:?} did not exit within {limit:?}"))
        .expect("tunehook runs");
    Ran {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        took: start.elapsed(),
    }
}

/// A port on 127.0.0.1 that nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_url_without_a_host_is_a_configuration_error_naming_database_url() {
    if server_url("a_postgres_url_without_a_host").is_none() {
        return;
    }
    let url = format!("postgres://u:{PASSWORD}@");
    for command in ["check-config", "migrate"] {
        let ran = tunehook(
            &[command],
            &[("TUNEHOOK_DATABASE_URL", &url)],
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(ran.code, Some(2), "{command}: {}", ran.show());
        ran.assert_one_line_error();
        assert!(
            ran.stderr.contains("database.url"),
            "{command}: {}",
            ran.show()
        );
        ran.assert_no_password();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_url_of_another_database_is_a_configuration_error_naming_database_url() {
    if server_url("a_url_of_another_database").is_none() {
        return;
    }
    let url = format!("mysql://u:{PASSWORD}@127.0.0.1/x");
    for command in ["check-config", "migrate"] {
        let ran = tunehook(
            &[command],
            &[("TUNEHOOK_DATABASE_URL", &url)],
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(ran.code, Some(2), "{command}: {}", ran.show());
        ran.assert_one_line_error();
        assert!(
            ran.stderr.contains("database.url") && ran.stderr.contains("postgres://"),
            "{command}: {}",
            ran.show()
        );
        ran.assert_no_password();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_on_a_missing_database_says_at_once_to_create_it() {
    let Some(server_url) = server_url("migrate_on_a_missing_database") else {
        return;
    };
    let name = format!(
        "tunehook_missing_{}_{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let mut url = url::Url::parse(&server_url).expect("a URL");
    url.set_path(&format!("/{name}"));
    url.set_password(Some(PASSWORD)).expect("a password");
    let ran = tunehook(
        &["migrate"],
        &[
            ("TUNEHOOK_DATABASE_URL", url.as_str()),
            ("TUNEHOOK__DATABASE__CONNECT_TIMEOUT", "20s"),
        ],
        Duration::from_secs(25),
    )
    .await;
    assert_eq!(ran.code, Some(1), "{}", ran.show());
    assert!(
        ran.took < Duration::from_secs(5),
        "a missing database is said at once, not after retrying: {}",
        ran.show()
    );
    ran.assert_one_line_error();
    assert!(
        ran.stderr.contains(&name) && ran.stderr.contains("create"),
        "names the database and says to create it: {}",
        ran.show()
    );
    ran.assert_no_password();
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_with_nothing_listening_retries_until_connect_timeout_then_names_the_host() {
    if server_url("migrate_with_nothing_listening").is_none() {
        return;
    }
    let port = closed_port();
    let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/tunehook");
    let ran = tunehook(
        &["migrate"],
        &[
            ("TUNEHOOK_DATABASE_URL", &url),
            ("TUNEHOOK__DATABASE__CONNECT_TIMEOUT", "2s"),
            ("TUNEHOOK_LOG_FORMAT", "json"),
        ],
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(ran.code, Some(1), "{}", ran.show());
    // A refused connection fails in microseconds: an exit after about
    // 2 s means it was tried again until connect_timeout.
    assert!(
        ran.took >= Duration::from_millis(1500) && ran.took < Duration::from_secs(8),
        "gives up after about connect_timeout (2s): {}",
        ran.show()
    );
    ran.assert_one_line_error();
    assert!(
        ran.stderr.contains(&format!("127.0.0.1:{port}")),
        "names the host and port: {}",
        ran.show()
    );
    ran.assert_no_password();
    // Each failed attempt is logged (README: "each attempt logged with the
    // host and the reason"), so whoever runs `migrate` sees it retrying.
    let output = format!("{}\n{}", ran.stdout, ran.stderr);
    let retries = output
        .lines()
        .filter(|l| l.contains("trying again") && l.contains(&format!("127.0.0.1:{port}")))
        .count();
    assert!(
        retries >= 2,
        "`tunehook migrate` shows no line per failed attempt: {}",
        ran.show()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_with_nothing_listening_logs_each_retry_with_host_and_reason_then_exits_1() {
    if server_url("serve_with_nothing_listening").is_none() {
        return;
    }
    let port = closed_port();
    let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/tunehook");
    let ran = tunehook(
        &["serve"],
        &[
            ("TUNEHOOK_DATABASE_URL", &url),
            ("TUNEHOOK__DATABASE__CONNECT_TIMEOUT", "2s"),
            ("TUNEHOOK_LISTEN", "127.0.0.1:0"),
            ("TUNEHOOK_LOG_FORMAT", "json"),
        ],
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(ran.code, Some(1), "{}", ran.show());
    assert!(
        ran.took >= Duration::from_millis(1500) && ran.took < Duration::from_secs(8),
        "gives up after about connect_timeout (2s): {}",
        ran.show()
    );
    ran.assert_no_password();
    let retries: Vec<Value> = ran
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| {
            l["level"] == "WARN" && l["message"] == "cannot reach PostgreSQL yet; trying again"
        })
        .collect();
    assert!(
        retries.len() >= 2,
        "each failed attempt is logged: {}",
        ran.show()
    );
    for line in &retries {
        assert!(
            line["host"]
                .as_str()
                .is_some_and(|h| h.contains(&format!("127.0.0.1:{port}")))
                && line["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "a retry line names the host and the reason: {line}"
        );
    }
    assert!(
        ran.stderr.contains(&format!("127.0.0.1:{port}")) && ran.stderr.contains("error"),
        "the last word names the host: {}",
        ran.show()
    );
}

/// A fake PostgreSQL on 127.0.0.1 that refuses every login with SQLSTATE
/// 28P01, as a server with password authentication does for a wrong one;
/// counts the connections it got.
async fn refusing_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), refuse_login(&mut socket)).await;
            });
        }
    });
    (addr, connections)
}

async fn refuse_login(socket: &mut TcpStream) -> std::io::Result<()> {
    loop {
        let length = socket.read_u32().await? as usize;
        let code = socket.read_u32().await?;
        // SSLRequest and GSSENCRequest: 8 bytes; answered "no".
        if length == 8 && (code == 80_877_103 || code == 80_877_104) {
            socket.write_all(b"N").await?;
            continue;
        }
        // The StartupMessage: read the rest, then refuse.
        let mut rest = vec![0u8; length.saturating_sub(8)];
        socket.read_exact(&mut rest).await?;
        break;
    }
    let mut fields = Vec::new();
    for (kind, text) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "28P01"),
        (b'M', "password authentication failed for user \"u\""),
    ] {
        fields.push(kind);
        fields.extend_from_slice(text.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut message = vec![b'E'];
    message.extend_from_slice(&(4 + fields.len() as u32).to_be_bytes());
    message.extend_from_slice(&fields);
    socket.write_all(&message).await?;
    socket.flush().await?;
    socket.shutdown().await
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_with_a_wrong_password_says_so_at_once_without_printing_it() {
    if server_url("migrate_with_a_wrong_password").is_none() {
        return;
    }
    let (addr, connections) = refusing_server().await;
    let url = format!("postgres://u:{PASSWORD}@{addr}/x");
    let ran = tunehook(
        &["migrate"],
        &[
            ("TUNEHOOK_DATABASE_URL", &url),
            ("TUNEHOOK__DATABASE__CONNECT_TIMEOUT", "20s"),
        ],
        Duration::from_secs(25),
    )
    .await;
    assert_eq!(ran.code, Some(1), "{}", ran.show());
    assert!(
        ran.took < Duration::from_secs(5),
        "a wrong password is said at once, not after retrying: {}",
        ran.show()
    );
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "a refused login is not tried again: {}",
        ran.show()
    );
    ran.assert_one_line_error();
    assert!(
        ran.stderr.contains("password") && ran.stderr.contains("database.url"),
        "says to check the password in database.url: {}",
        ran.show()
    );
    ran.assert_no_password();
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_prints_a_postgres_url_with_its_password_redacted() {
    let Some(server_url) = server_url("check_config_prints_a_postgres_url") else {
        return;
    };
    let (host, port) = host_port(&server_url);
    for url in [
        format!("postgres://postgres:{PASSWORD}@{host}:{port}/tunehook"),
        format!("postgresql://postgres@{host}:{port}/tunehook?password={PASSWORD}&sslmode=disable"),
    ] {
        let ran = tunehook(
            &["check-config"],
            &[("TUNEHOOK_DATABASE_URL", &url)],
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(ran.code, Some(0), "{}", ran.show());
        let shown = ran
            .stdout
            .lines()
            .find(|l| l.starts_with("url = "))
            .unwrap_or_else(|| panic!("no database url shown: {}", ran.show()));
        assert!(
            shown.contains(&format!("{host}:{port}")) && shown.contains("[redacted]"),
            "the URL is shown with its host and the password redacted: {shown}"
        );
        ran.assert_no_password();
    }
}
