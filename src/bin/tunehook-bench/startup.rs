//! `startup`: exec to `/readyz` 200 on an empty database and on one with
//! many receipts, and idle memory.

use crate::{
    Args,
    harness::{Scratch, start_tunehook},
};
use std::time::Duration;

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let dir = Scratch::new("startup")?;
    let empty = start_tunehook(dir.path(), None, &[])?;
    let empty_ready = empty.ready_after;
    std::thread::sleep(Duration::from_millis(500));
    let (_, idle_kib) = empty.memory_kib();
    empty.kill();

    // Fill the database with receipts directly, then time a start on it.
    let url = format!("sqlite://{}", dir.path().join("tunehook.db").display());
    {
        use sqlx::{Connection, Executor};
        let mut conn = sqlx::SqliteConnection::connect(&url).await?;
        conn.execute(
            sqlx::query(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
                 INSERT INTO receipts (received_at, body, body_sha256, headers, outcome)
                 SELECT '2026-01-01T00:00:00.000000Z', CAST('{\"event\":\"AVAILABLE\"}' AS BLOB), '', '{}', 'unrecognized' FROM n",
            )
            .bind(args.receipts as i64),
        )
        .await?;
        // Closing checkpoints the WAL, as a stopped tunehook leaves it.
        conn.close().await?;
    }
    let full = start_tunehook(dir.path(), None, &[])?;
    let full_ready = full.ready_after;
    full.kill();

    println!("| database | exec to /readyz 200 |");
    println!("|---|---|");
    println!("| empty | {:.1} ms |", empty_ready.as_secs_f64() * 1e3);
    println!(
        "| {} receipts | {:.1} ms |",
        args.receipts,
        full_ready.as_secs_f64() * 1e3
    );
    println!("\nidle RSS: {:.1} MiB", idle_kib as f64 / 1024.0);
    Ok(())
}
