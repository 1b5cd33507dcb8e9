//! Tokens generated on first start and kept in the database, so the webhook
//! URL registered in Segmind's console survives restarts.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sqlx::SqliteConnection;

/// The generated tokens. Configured tokens, when present, are used instead.
#[derive(Clone)]
pub struct Tokens {
    pub ingest: String,
    pub api: String,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens([redacted])")
    }
}

pub(super) async fn load_or_generate(conn: &mut SqliteConnection) -> Result<Tokens, sqlx::Error> {
    Ok(Tokens {
        ingest: load_or_generate_one(conn, "ingest_token").await?,
        api: load_or_generate_one(conn, "api_token").await?,
    })
}

async fn load_or_generate_one(
    conn: &mut SqliteConnection,
    key: &str,
) -> Result<String, sqlx::Error> {
    sqlx::query("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING")
        .bind(key)
        .bind(random_token())
        .execute(&mut *conn)
        .await?;
    sqlx::query_scalar("SELECT value FROM settings WHERE key = ?")
        .bind(key)
        .fetch_one(&mut *conn)
        .await
}

/// 256 random bits, URL-safe base64 without padding (43 characters).
fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}
