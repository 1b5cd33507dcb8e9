-- Dashboard sessions. The cookie's value is never stored, only its SHA-256,
-- so a copy of the database signs nobody in. `token_sha256` is the digest of
-- the API token the session was opened with: once that token is rotated, the
-- session no longer counts.
CREATE TABLE ui_sessions (
    id_sha256 TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
) WITHOUT ROWID;

CREATE INDEX ui_sessions_by_expiry ON ui_sessions (expires_at);
