-- Webhooks confirmed with Segmind's API: a webhook's claim can wait, stored,
-- until Segmind's details for the job agree. Receipts get the outcomes of
-- that (`confirming` while it waits, `contradicted` when Segmind disagreed,
-- `dropped` when an unconfirmable claim was left unapplied) and a
-- `confirmation` column; widening the outcome check means rebuilding the
-- table (foreign keys are checked once the migrations are applied).

CREATE TABLE receipts_new (
    id           INTEGER PRIMARY KEY,
    received_at  TEXT NOT NULL,
    body         BLOB NOT NULL,
    body_sha256  TEXT NOT NULL,
    headers      TEXT NOT NULL,
    outcome      TEXT NOT NULL
        CHECK (outcome IN ('applied', 'duplicate', 'stale', 'unrecognized', 'invalid',
                           'confirming', 'contradicted', 'dropped')),
    finetune_id  TEXT,
    status       TEXT,
    event_id     TEXT,
    error        TEXT,
    -- NULL when confirmation was off for this webhook.
    confirmation TEXT
        CHECK (confirmation IN ('pending', 'confirmed', 'contradicted', 'unconfirmed'))
) STRICT;

INSERT INTO receipts_new (id, received_at, body, body_sha256, headers, outcome, finetune_id,
    status, event_id, error)
SELECT id, received_at, body, body_sha256, headers, outcome, finetune_id, status, event_id, error
FROM receipts;

DROP TABLE receipts;
ALTER TABLE receipts_new RENAME TO receipts;
CREATE INDEX receipts_by_outcome ON receipts (outcome, id);

-- Claims waiting for Segmind's API, one row per webhook; the row goes when
-- the claim is settled (the receipt keeps how).
CREATE TABLE confirmations (
    receipt_id    INTEGER PRIMARY KEY REFERENCES receipts (id),
    finetune_id   TEXT NOT NULL,
    -- The status the webhook claimed.
    status        TEXT NOT NULL,
    deadline      TEXT NOT NULL,
    next_check_at TEXT NOT NULL,
    checks        INTEGER NOT NULL DEFAULT 0,
    -- What Segmind's API last answered: `behind` (an earlier status) or
    -- `not_found`; NULL while it has not been reached at all.
    answered      TEXT CHECK (answered IN ('behind', 'not_found')),
    last_error    TEXT
) STRICT;

CREATE INDEX confirmations_due ON confirmations (next_check_at);
