-- The core schema: receipts (every webhook request as received), jobs (the
-- current picture of each fine-tune) and transitions (every status change,
-- at most once per job and status), plus settings for generated tokens.
-- Timestamps are RFC 3339 UTC text with a fixed width, so they sort as text.

CREATE TABLE settings (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE receipts (
    id          INTEGER PRIMARY KEY,
    received_at TEXT NOT NULL,
    body        BLOB NOT NULL,
    body_sha256 TEXT NOT NULL,
    headers     TEXT NOT NULL,
    outcome     TEXT NOT NULL
        CHECK (outcome IN ('applied', 'duplicate', 'stale', 'unrecognized', 'invalid')),
    finetune_id TEXT,
    status      TEXT,
    event_id    TEXT,
    error       TEXT
) STRICT;

CREATE INDEX receipts_by_outcome ON receipts (outcome, id);

CREATE TABLE jobs (
    finetune_id       TEXT PRIMARY KEY NOT NULL,
    status            TEXT NOT NULL,
    status_rank       INTEGER NOT NULL,
    name              TEXT,
    base_model        TEXT,
    slug              TEXT,
    trained_model_url TEXT,
    inference_api_url TEXT,
    cloud_storage_url TEXT,
    error_message     TEXT,
    created_ts        TEXT,
    updated_ts        TEXT,
    first_seen_at     TEXT NOT NULL,
    updated_at        TEXT NOT NULL
) STRICT;

CREATE INDEX jobs_by_update ON jobs (updated_at DESC, finetune_id DESC);
CREATE INDEX jobs_by_status_update ON jobs (status, updated_at DESC, finetune_id DESC);

CREATE TABLE transitions (
    id          INTEGER PRIMARY KEY,
    event_id    TEXT NOT NULL UNIQUE,
    finetune_id TEXT NOT NULL REFERENCES jobs (finetune_id),
    from_status TEXT,
    to_status   TEXT NOT NULL,
    source      TEXT NOT NULL CHECK (source IN ('webhook', 'reconcile')),
    observed_at TEXT NOT NULL,
    receipt_id  INTEGER REFERENCES receipts (id),
    -- A status is recorded at most once per job: concurrent or repeated
    -- deliveries of the same event cannot create a second transition.
    UNIQUE (finetune_id, to_status)
) STRICT;
