//! Tokens generated on first start and kept in the database, so the webhook
//! URL registered in Segmind's console survives restarts.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rusqlite::Connection;

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

pub(super) fn load_or_generate(conn: &Connection) -> rusqlite::Result<Tokens> {
    Ok(Tokens {
        ingest: load_or_generate_one(conn, "ingest_token")?,
        api: load_or_generate_one(conn, "api_token")?,
    })
}

fn load_or_generate_one(conn: &Connection, key: &str) -> rusqlite::Result<String> {
    conn.execute(
        "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
        (key, random_token()),
    )?;
    conn.query_row("SELECT value FROM settings WHERE key = ?1", [key], |row| {
        row.get(0)
    })
}

/// 256 random bits, URL-safe base64 without padding (43 characters).
fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}
