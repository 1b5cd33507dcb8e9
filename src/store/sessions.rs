//! Dashboard sessions: opened on sign-in, ended on sign-out, expired by
//! time or by a rotation of the API token they were opened with.
//!
//! Only digests are stored: the SHA-256 of the cookie's value and of the
//! API token, so neither a copy of the database nor a reader of its file
//! can sign anybody in.

use super::{
    Store, StoreError, commands,
    sql::{Conn, DbResult, args, query},
};

/// A session to open: digests only.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id_sha256: String,
    pub token_sha256: String,
    pub created_at: String,
    pub expires_at: String,
}

/// Opens `session`, and forgets every session expired by its start.
pub(super) fn open(conn: &dyn Conn, session: &NewSession) -> DbResult<()> {
    conn.execute(
        "DELETE FROM ui_sessions WHERE expires_at <= ?",
        args![session.created_at],
    )?;
    conn.execute(
        "INSERT INTO ui_sessions (id_sha256, token_sha256, created_at, expires_at)
         VALUES (?, ?, ?, ?)",
        args![
            session.id_sha256,
            session.token_sha256,
            session.created_at,
            session.expires_at,
        ],
    )?;
    Ok(())
}

/// Ends the session whose cookie digests to `id_sha256`, if it exists.
pub(super) fn end(conn: &dyn Conn, id_sha256: &str) -> DbResult<()> {
    conn.execute(
        "DELETE FROM ui_sessions WHERE id_sha256 = ?",
        args![id_sha256],
    )?;
    Ok(())
}

impl Store {
    pub async fn open_session(&self, session: NewSession) -> Result<(), StoreError> {
        self.writer.run(commands::OpenSession(session)).await
    }

    pub async fn end_session(&self, id_sha256: String) -> Result<(), StoreError> {
        self.writer.run(commands::EndSession(id_sha256)).await
    }

    /// True when a session with this digest is open at `now` and was opened
    /// with the API token whose digest is `token_sha256`.
    pub async fn session_valid(
        &self,
        id_sha256: &str,
        token_sha256: &str,
        now: &str,
    ) -> Result<bool, StoreError> {
        let found: i64 = query(
            "SELECT COUNT(*) FROM ui_sessions
             WHERE id_sha256 = ? AND token_sha256 = ? AND expires_at > ?",
        )
        .bind(id_sha256)
        .bind(token_sha256)
        .bind(now)
        .scalar(&self.reads)
        .await?;
        Ok(found > 0)
    }
}
