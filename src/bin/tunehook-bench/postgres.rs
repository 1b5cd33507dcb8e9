//! Running tunehook on PostgreSQL: a database of its own per run on the
//! server `--database` names (`CREATE DATABASE tunehook_bench_…`, dropped
//! afterwards), its URL handed to tunehook as `TUNEHOOK_DATABASE_URL`, and
//! the server's settings and CPU time, read to explain the figures.

use crate::harness::process_cpu_seconds;
use sqlx::{Connection, Executor, PgConnection, Row};
use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// A PostgreSQL server the harness may create and drop databases on.
pub struct PgServer {
    /// The URL as given: a user allowed to `CREATE DATABASE`, and a
    /// database to connect to for that (`postgres`, typically).
    admin_url: String,
    /// The postmaster's pid, when the server runs on this machine and its
    /// processes can be read in `/proc`.
    postmaster: Option<u32>,
    /// `version`, `synchronous_commit`, `fsync`…, for the report.
    pub settings: String,
}

impl PgServer {
    /// Connects once to check the URL, and reads the server's settings.
    pub async fn open(admin_url: &str) -> anyhow::Result<PgServer> {
        let mut conn = PgConnection::connect(admin_url).await.map_err(|e| {
            anyhow::anyhow!("cannot connect to the PostgreSQL server of --database: {e}")
        })?;
        let row = sqlx::query(
            "SELECT current_setting('server_version'), current_setting('synchronous_commit'),
                    current_setting('fsync'), current_setting('wal_sync_method'),
                    current_setting('commit_delay'), current_setting('shared_buffers'),
                    current_setting('autovacuum'), pg_backend_pid()",
        )
        .fetch_one(&mut conn)
        .await?;
        let settings = format!(
            "PostgreSQL {}, synchronous_commit = {}, fsync = {}, wal_sync_method = {}, \
             commit_delay = {}, shared_buffers = {}, autovacuum = {}",
            row.get::<String, _>(0),
            row.get::<String, _>(1),
            row.get::<String, _>(2),
            row.get::<String, _>(3),
            row.get::<String, _>(4),
            row.get::<String, _>(5),
            row.get::<String, _>(6),
        );
        let backend = row.get::<i32, _>(7) as u32;
        let postmaster = parent_of(backend).filter(|pid| is_postgres(*pid));
        // Databases left by a harness that was interrupted (Ctrl-C skips
        // dropping them): their harness, on this machine as the server is,
        // no longer runs.
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT datname::text FROM pg_database WHERE datname LIKE 'tunehook\\_bench\\_%'",
        )
        .fetch_all(&mut conn)
        .await?;
        for name in names {
            let harness = name
                .split('_')
                .nth(2)
                .and_then(|pid| pid.parse::<u32>().ok());
            if postmaster.is_some() && harness.is_some_and(|pid| !is_harness(pid)) {
                eprintln!("dropping {name}, left by an interrupted run");
                conn.execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str())
                    .await?;
            }
        }
        conn.close().await?;
        Ok(PgServer {
            admin_url: admin_url.to_owned(),
            postmaster,
            settings,
        })
    }

    /// A new, empty database, dropped with the value returned.
    pub async fn create(&self) -> anyhow::Result<PgDatabase> {
        create(&self.admin_url, None).await
    }

    /// CPU seconds used so far by the server's processes (the postmaster's
    /// children: backends, WAL writer, checkpointer…) that are alive now;
    /// `None` when the server is not on this machine.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let postmaster = self.postmaster?;
        let children = children_of(postmaster);
        Some(children.into_iter().map(process_cpu_seconds).sum())
    }
}

/// Creates `tunehook_bench_<harness pid>_<n>`, empty or a copy of
/// `template`.
async fn create(admin_url: &str, template: Option<&str>) -> anyhow::Result<PgDatabase> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "tunehook_bench_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mut url = url::Url::parse(admin_url)?;
    url.set_path(&format!("/{name}"));
    let sql = match template {
        None => format!("CREATE DATABASE \"{name}\""),
        Some(template) => format!("CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""),
    };
    let mut conn = PgConnection::connect(admin_url).await?;
    // A tunehook just killed may still be connected to the template for a
    // moment (the server notices the closed sockets shortly).
    let started = Instant::now();
    loop {
        match conn.execute(sql.as_str()).await {
            Ok(_) => break,
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("55006")
                    && started.elapsed() < Duration::from_secs(10) =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    conn.close().await?;
    Ok(PgDatabase {
        admin_url: admin_url.to_owned(),
        name,
        url: url.to_string(),
    })
}

/// A database of its own on the server, dropped (with any connection to it
/// still open) when this value is.
pub struct PgDatabase {
    admin_url: String,
    pub name: String,
    /// What tunehook is given as `TUNEHOOK_DATABASE_URL`.
    pub url: String,
}

impl PgDatabase {
    /// The environment that points tunehook at this database.
    pub fn env(&self) -> (&'static str, String) {
        ("TUNEHOOK_DATABASE_URL", self.url.clone())
    }

    /// A new database with this one's contents (`CREATE DATABASE …
    /// TEMPLATE`; nothing may be connected to this one).
    pub async fn copy(&self) -> anyhow::Result<PgDatabase> {
        create(&self.admin_url, Some(&self.name)).await
    }

    /// Gathers the planner's statistics of every table, as autovacuum does
    /// once enough rows changed (checking every minute, by default).
    pub async fn analyze(&self) -> anyhow::Result<()> {
        let mut conn = PgConnection::connect(&self.url).await?;
        conn.execute("ANALYZE").await?;
        conn.close().await?;
        Ok(())
    }

    /// Analyzes `table` every `period` until the task is aborted, so that
    /// the planner's statistics follow a table that fills quickly.
    pub fn analyze_every(
        &self,
        table: &'static str,
        period: Duration,
    ) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        let url = self.url.clone();
        tokio::spawn(async move {
            let mut conn = PgConnection::connect(&url).await?;
            loop {
                conn.execute(format!("ANALYZE {table}").as_str()).await?;
                tokio::time::sleep(period).await;
            }
        })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs inside the harness's runtime, which cannot be blocked
        // on: a thread of its own with a runtime of its own drops it.
        let dropped = std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut conn = PgConnection::connect(&admin_url).await?;
                conn.execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str())
                    .await?;
                conn.close().await?;
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!(
                "could not drop the PostgreSQL database {}; drop it by hand",
                self.name
            );
        }
    }
}

/// The parent of a process, from `/proc/<pid>/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after) = stat.rsplit_once(')')?;
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `pid` is a running benchmark harness.
fn is_harness(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.trim_end().starts_with("tunehook-bench"))
}

fn is_postgres(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.trim_end().starts_with("postgres"))
}

/// Every process whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| parent_of(child) == Some(pid))
        .collect()
}
