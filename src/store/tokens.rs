//! Tokens generated on first start and kept in the database, so the webhook
//! URL registered in Segmind's console survives restarts, and replaced on
//! demand when one has leaked.

use super::sql::{Conn, DbResult, args};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

/// The generated tokens. Configured tokens, when present, are used instead.
#[derive(Clone, PartialEq, Eq)]
pub struct Tokens {
    pub ingest: String,
    pub api: String,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens([redacted])")
    }
}

/// Which of the two tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// The secret in the webhook URL.
    Ingest,
    /// The bearer token of the `/v1` API.
    Api,
}

impl TokenKind {
    pub const ALL: [TokenKind; 2] = [TokenKind::Ingest, TokenKind::Api];

    /// The name users type: `ingest` or `api`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Ingest => "ingest",
            TokenKind::Api => "api",
        }
    }

    pub fn parse(raw: &str) -> Option<TokenKind> {
        TokenKind::ALL.into_iter().find(|k| k.as_str() == raw)
    }

    /// The configuration key that, when set, replaces the generated token.
    pub fn config_key(self) -> &'static str {
        match self {
            TokenKind::Ingest => "ingest.token",
            TokenKind::Api => "api.token",
        }
    }

    /// The environment variable that sets [`Self::config_key`].
    pub fn env_var(self) -> &'static str {
        match self {
            TokenKind::Ingest => "TUNEHOOK_INGEST_TOKEN",
            TokenKind::Api => "TUNEHOOK_API_TOKEN",
        }
    }

    /// Why a configured token cannot be rotated, and where to change it.
    pub fn configured_message(self) -> String {
        format!(
            "`{}` is set in the configuration ({} or the config file); change it there",
            self.config_key(),
            self.env_var()
        )
    }

    fn settings_key(self) -> &'static str {
        match self {
            TokenKind::Ingest => "ingest_token",
            TokenKind::Api => "api_token",
        }
    }
}

pub(super) fn load_or_generate(conn: &dyn Conn) -> DbResult<Tokens> {
    Ok(Tokens {
        ingest: load_or_generate_one(conn, TokenKind::Ingest.settings_key())?,
        api: load_or_generate_one(conn, TokenKind::Api.settings_key())?,
    })
}

/// Replaces one generated token with a new random one; answers the new one.
pub(super) fn rotate(conn: &dyn Conn, kind: TokenKind) -> DbResult<String> {
    let token = random_token();
    conn.execute(
        "INSERT INTO settings (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        args![kind.settings_key(), token],
    )?;
    Ok(token)
}

/// The SQL that reads both stored tokens, for a service to notice a
/// rotation made by another process.
pub(super) const READ_BOTH: &str = "SELECT
    (SELECT value FROM settings WHERE key = 'ingest_token'),
    (SELECT value FROM settings WHERE key = 'api_token')";

fn load_or_generate_one(conn: &dyn Conn, key: &str) -> DbResult<String> {
    conn.execute(
        "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
        args![key, random_token()],
    )?;
    conn.query_one("SELECT value FROM settings WHERE key = ?1", args![key])?
        .get(0)
}

/// 256 random bits, URL-safe base64 without padding (43 characters).
fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn database() -> Connection {
        let conn = Connection::open_in_memory().expect("an in-memory database");
        conn.execute_batch(
            "CREATE TABLE settings (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)",
        )
        .expect("the settings table");
        conn
    }

    #[test]
    fn rotating_one_token_replaces_it_and_leaves_the_other() {
        let conn = database();
        let before = load_or_generate(&conn).expect("tokens");
        let new = rotate(&conn, TokenKind::Ingest).expect("rotated");
        let after = load_or_generate(&conn).expect("tokens");
        assert_ne!(new, before.ingest);
        assert_eq!(after.ingest, new);
        assert_eq!(after.api, before.api);
        assert_eq!(new.len(), 43);
    }

    #[test]
    fn the_message_for_a_configured_token_names_the_key_and_the_variable() {
        let message = TokenKind::Api.configured_message();
        assert!(message.contains("`api.token`") && message.contains("TUNEHOOK_API_TOKEN"));
    }
}
