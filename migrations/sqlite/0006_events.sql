-- Every event sent to sinks gets a row of its own: the status change of a
-- transition (`finetune.status_changed`) and, new here, a change to a field
-- users act on without a status change (`finetune.updated`), which has no
-- transition. Deliveries now refer to events instead of transitions, and the
-- event text moves from transitions to events.
--
-- Changing a foreign key in SQLite means rebuilding the table: tunehook runs
-- its migrations with foreign key enforcement off and checks every key
-- afterwards (`PRAGMA foreign_key_check`).

CREATE TABLE events (
    id              INTEGER PRIMARY KEY,
    event_id        TEXT NOT NULL UNIQUE,
    type            TEXT NOT NULL
        CHECK (type IN ('finetune.status_changed', 'finetune.updated')),
    finetune_id     TEXT NOT NULL REFERENCES jobs (finetune_id),
    -- The job's status the event reports: the new one for a status change,
    -- the current one for an update.
    status          TEXT NOT NULL,
    previous_status TEXT,
    -- `finetune.updated`: the names of the fields that changed, as JSON.
    changed         TEXT,
    source          TEXT NOT NULL,
    observed_at     TEXT NOT NULL,
    body            TEXT NOT NULL
) STRICT;

INSERT INTO events (event_id, type, finetune_id, status, previous_status, source, observed_at, body)
SELECT event_id, 'finetune.status_changed', finetune_id, to_status, from_status, source,
       observed_at, COALESCE(event, '{}')
FROM transitions ORDER BY id;

CREATE INDEX events_by_job ON events (finetune_id, id);
CREATE INDEX events_by_time ON events (observed_at, id);

CREATE TABLE deliveries_new (
    id               INTEGER PRIMARY KEY,
    sink             TEXT NOT NULL,
    event_id         TEXT NOT NULL REFERENCES events (event_id),
    finetune_id      TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    retry_step       INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT NOT NULL,
    last_error       TEXT,
    last_status_code INTEGER,
    last_attempt_at  TEXT,
    delivered_at     TEXT,
    created_at       TEXT NOT NULL
) STRICT;

INSERT INTO deliveries_new (id, sink, event_id, finetune_id, status, attempts, retry_step,
    next_attempt_at, last_error, last_status_code, last_attempt_at, delivered_at, created_at)
SELECT id, sink, event_id, finetune_id, status, attempts, retry_step,
    next_attempt_at, last_error, last_status_code, last_attempt_at, delivered_at, created_at
FROM deliveries;

DROP TABLE deliveries;
ALTER TABLE deliveries_new RENAME TO deliveries;

CREATE INDEX deliveries_pending_by_sink ON deliveries (sink, next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_pending_by_job ON deliveries (sink, finetune_id, id) WHERE status = 'pending';
CREATE INDEX deliveries_by_status ON deliveries (status, id);
CREATE INDEX deliveries_by_job ON deliveries (finetune_id, id);

ALTER TABLE transitions DROP COLUMN event;
