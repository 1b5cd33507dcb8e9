//! The test harness: a real tunehook on 127.0.0.1, port 0, with a fresh
//! database in its own temporary folder (SQLite) or of its own on the
//! server `TUNEHOOK_TEST_POSTGRES_URL` names (PostgreSQL, the suite of
//! `tests/api_postgres`), driven over HTTP.

use reqwest::StatusCode;
use serde_json::Value;
use std::{net::SocketAddr, path::Path, time::Duration};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tunehook::{app::Application, config::Settings};

pub struct TestApp {
    pub addr: SocketAddr,
    pub ingest_token: String,
    pub api_token: String,
    pub client: reqwest::Client,
    pub dir: TempDir,
    pub settings: Settings,
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
    /// The test's PostgreSQL database, dropped with the last app on it.
    database: Option<crate::postgres::TestDatabase>,
}

/// Which database a suite runs on (each suite names one of the two).
#[allow(dead_code)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Whether this suite runs on PostgreSQL.
pub fn on_postgres() -> bool {
    crate::BACKEND == Backend::Postgres
}

/// True, after saying SKIPPED, when the suite runs on PostgreSQL: for a
/// test about the SQLite file itself, which returns at once then.
pub fn skip_on_postgres(why: &str) -> bool {
    if on_postgres() {
        crate::postgres::skipped(&format!("about the SQLite file: {why}"));
    }
    on_postgres()
}

/// Another connection holding the database's write lock, as another
/// process would: the writer waits on it (up to `database.busy_timeout`)
/// until this is dropped.
#[allow(dead_code)] // held, never read
pub enum WriteLock {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

pub async fn lock_database(app: &TestApp) -> WriteLock {
    use sqlx::{Connection, Executor};
    if on_postgres() {
        let mut blocker = sqlx::PgConnection::connect(&app.settings.database.url)
            .await
            .expect("connect");
        blocker.execute("BEGIN").await.expect("begin");
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(tunehook::store::postgres::WRITE_LOCK)
            .execute(&mut blocker)
            .await
            .expect("lock");
        WriteLock::Postgres(blocker)
    } else {
        let url = format!("sqlite://{}", app.dir.path().join("tunehook.db").display());
        let mut blocker = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("connect");
        blocker.execute("BEGIN IMMEDIATE").await.expect("lock");
        WriteLock::Sqlite(blocker)
    }
}

/// Settings for a test: loopback, port 0, a database in `dir`.
pub fn test_settings(dir: &Path) -> Settings {
    let mut settings = Settings::default();
    settings.server.listen = "127.0.0.1:0".into();
    settings.server.shutdown_timeout = Duration::from_secs(5);
    settings.database.url = format!("sqlite://{}", dir.join("tunehook.db").display());
    settings
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts an app after `adjust` has changed its settings.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let mut settings = test_settings(dir.path());
    let database = on_postgres().then(|| {
        let database = crate::postgres::TestDatabase::create();
        settings.database.url = database.url.clone();
        database
    });
    adjust(&mut settings);
    start(settings, dir, database).await
}

async fn start(
    settings: Settings,
    dir: TempDir,
    database: Option<crate::postgres::TestDatabase>,
) -> TestApp {
    let app = Application::build(settings.clone())
        .await
        .expect("the app starts");
    let addr = app.local_addr();
    let ingest_token = app.ingest_token().expose().to_owned();
    let api_token = app.api_token().expose().to_owned();
    let shutdown = app.shutdown_token();
    let handle = tokio::spawn(app.run());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client");
    TestApp {
        addr,
        ingest_token,
        api_token,
        client,
        dir,
        settings,
        shutdown,
        handle,
        database,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn webhook_url(&self) -> String {
        self.url(&format!("/webhooks/segmind/{}", self.ingest_token))
    }

    /// POSTs raw bytes to the webhook URL.
    pub async fn post_raw(&self, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
        let response = self
            .client
            .post(self.webhook_url())
            .body(body)
            .send()
            .await
            .expect("the webhook request completes");
        read(response).await
    }

    /// POSTs a JSON webhook.
    pub async fn post(&self, body: Value) -> (StatusCode, Value) {
        self.post_raw(body.to_string()).await
    }

    /// GETs an API path with the API token.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(self.url(path))
            .bearer_auth(&self.api_token)
            .send()
            .await
            .expect("the API request completes");
        read(response).await
    }

    /// The job as the API shows it; panics when it is not there.
    pub async fn job(&self, finetune_id: &str) -> Value {
        let (status, job) = self.get(&format!("/v1/jobs/{finetune_id}")).await;
        assert_eq!(status, StatusCode::OK, "job {finetune_id}: {job}");
        job
    }

    pub async fn receipts(&self) -> Vec<Value> {
        let (status, body) = self.get("/v1/receipts?limit=500").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["receipts"].as_array().cloned().unwrap_or_default()
    }

    pub async fn all_jobs(&self) -> Vec<Value> {
        let (status, body) = self.get("/v1/jobs?limit=500").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["jobs"].as_array().cloned().unwrap_or_default()
    }

    /// Stops the app the way SIGTERM would and returns its folder.
    pub async fn stop(self) -> TempDir {
        self.stop_keeping_database().await.0
    }

    async fn stop_keeping_database(self) -> (TempDir, Option<crate::postgres::TestDatabase>) {
        self.shutdown.cancel();
        self.handle
            .await
            .expect("the app task ends")
            .expect("the app stops cleanly");
        (self.dir, self.database)
    }

    /// Stops the app and starts a new one on the same database and settings.
    pub async fn restart(self) -> TestApp {
        self.restart_with(|_| {}).await
    }

    /// Stops the app and starts a new one on the same database, after
    /// `adjust` has changed its settings.
    pub async fn restart_with(self, adjust: impl FnOnce(&mut Settings)) -> TestApp {
        let mut settings = self.settings.clone();
        let (dir, database) = self.stop_keeping_database().await;
        adjust(&mut settings);
        start(settings, dir, database).await
    }

    /// POSTs an API path with the API token and a JSON body.
    pub async fn post_api(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(self.url(path))
            .bearer_auth(&self.api_token)
            .json(&body)
            .send()
            .await
            .expect("the API request completes");
        read(response).await
    }

    /// Polls `GET path` until `done` accepts the body, for at most 15 s.
    pub async fn wait_for(&self, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let (_, body) = self.get(path).await;
            if done(&body) {
                return body;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// The statuses of a job's transitions, oldest first.
pub fn transition_statuses(job: &Value) -> Vec<String> {
    job["transitions"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| t["to_status"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}
