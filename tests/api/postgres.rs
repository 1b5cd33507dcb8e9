//! A database of its own for each test of the PostgreSQL suite, created on
//! the server `TUNEHOOK_TEST_POSTGRES_URL` names (a URL whose user may
//! create databases, e.g. postgres://postgres@127.0.0.1:5432/postgres) and
//! dropped when the test's last app is gone.

use sqlx::{Connection, Executor, PgConnection};
use std::{
    io::Write,
    sync::atomic::{AtomicU32, Ordering},
};

/// The variable naming the server the PostgreSQL suite runs on.
pub const URL_VAR: &str = "TUNEHOOK_TEST_POSTGRES_URL";

/// Says on the terminal (past the test harness's capture) that a test did
/// not run, and why.
pub fn skipped(why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED on PostgreSQL: {why}");
}

/// The server's URL; without one the PostgreSQL suite says SKIPPED and the
/// test binary ends, passing, before any test needs a database.
pub fn server_url() -> String {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: the API suite on PostgreSQL needs a server: set {URL_VAR} (for example postgres://postgres@127.0.0.1:5432/postgres)"
            );
            std::process::exit(0);
        }
    }
}

pub struct TestDatabase {
    pub url: String,
    name: String,
    server: String,
}

/// Runs `work` on a connection to the server, on a thread and runtime of
/// its own, so that it can be called from sync code and from `Drop`.
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
            let mut conn = PgConnection::connect(&server).await?;
            let done = work(&mut conn).await;
            let _ = conn.close().await;
            done
        })
    })
    .join()
    .expect("the database thread ends")
}

impl TestDatabase {
    pub fn create() -> TestDatabase {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let server = server_url();
        let name = format!(
            "tunehook_test_{}_{}_{:08x}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        let sql = format!("CREATE DATABASE {name}");
        on_server(server.clone(), move |conn| {
            Box::pin(async move { conn.execute(sql.as_str()).await.map(|_| ()) })
        })
        .unwrap_or_else(|e| panic!("cannot create a test database on {URL_VAR}: {e}"));
        let mut url = url::Url::parse(&server).expect("a URL");
        url.set_path(&format!("/{name}"));
        TestDatabase {
            url: url.to_string(),
            name,
            server,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let dropped = on_server(self.server.clone(), move |conn| {
            Box::pin(async move { conn.execute(sql.as_str()).await.map(|_| ()) })
        });
        if let Err(e) = dropped {
            skipped(&format!("could not drop {}: {e}", self.name));
        }
    }
}
