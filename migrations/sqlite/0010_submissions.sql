-- Jobs tunehook submits to Segmind itself (`POST /v1/finetunes`, `tunehook
-- segmind submit`) are recorded from REQUESTED with source `api`: widening
-- the source check means rebuilding `transitions` (foreign keys are
-- checked once the migrations are applied). Its index by receipt is made
-- again.

CREATE TABLE transitions_new (
    id          INTEGER PRIMARY KEY,
    event_id    TEXT NOT NULL UNIQUE,
    finetune_id TEXT NOT NULL REFERENCES jobs (finetune_id),
    from_status TEXT,
    to_status   TEXT NOT NULL,
    source      TEXT NOT NULL CHECK (source IN ('webhook', 'reconcile', 'api')),
    observed_at TEXT NOT NULL,
    receipt_id  INTEGER REFERENCES receipts (id),
    -- A status is recorded at most once per job.
    UNIQUE (finetune_id, to_status)
) STRICT;

INSERT INTO transitions_new (id, event_id, finetune_id, from_status, to_status, source,
    observed_at, receipt_id)
SELECT id, event_id, finetune_id, from_status, to_status, source, observed_at, receipt_id
FROM transitions;

DROP TABLE transitions;
ALTER TABLE transitions_new RENAME TO transitions;
CREATE INDEX transitions_by_receipt ON transitions (receipt_id);

-- `Idempotency-Key`s of `POST /v1/finetunes`: the key is claimed before
-- Segmind is called (the primary key decides a race), the job it made and
-- the answer given are kept, so a retried request gets the first answer
-- instead of a second paid job. A different body under the same key is
-- refused: `request_sha256` is the hash of the checked request.
CREATE TABLE idempotency_keys (
    key            TEXT PRIMARY KEY NOT NULL,
    request_sha256 TEXT NOT NULL,
    claimed_at     TEXT NOT NULL,
    -- Set in the transaction that records the job.
    finetune_id    TEXT,
    -- The answer's body, stored once it was given.
    response       TEXT
) STRICT;
