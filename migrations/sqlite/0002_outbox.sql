-- The transactional outbox: every applied transition carries the event sent
-- for it, and one delivery row per matching sink, written in the same
-- transaction as the transition. Attempts are kept for inspection.

ALTER TABLE transitions ADD COLUMN event TEXT;

-- Events for transitions recorded before this migration, built the same way
-- the service builds them.
UPDATE transitions SET event = json_object(
    'type', 'finetune.status_changed',
    'id', transitions.event_id,
    'timestamp', transitions.observed_at,
    'data', json_object(
        'finetune_id', transitions.finetune_id,
        'name', jobs.name,
        'status', transitions.to_status,
        'previous_status', transitions.from_status,
        'source', transitions.source,
        'job', json_object(
            'finetune_id', jobs.finetune_id, 'name', jobs.name, 'status', jobs.status,
            'base_model', jobs.base_model, 'slug', jobs.slug,
            'trained_model_url', jobs.trained_model_url,
            'inference_api_url', jobs.inference_api_url,
            'cloud_storage_url', jobs.cloud_storage_url,
            'error_message', jobs.error_message, 'created_ts', jobs.created_ts,
            'updated_ts', jobs.updated_ts, 'first_seen_at', jobs.first_seen_at,
            'updated_at', jobs.updated_at)))
FROM jobs WHERE jobs.finetune_id = transitions.finetune_id;

CREATE TABLE deliveries (
    id               INTEGER PRIMARY KEY,
    sink             TEXT NOT NULL,
    event_id         TEXT NOT NULL REFERENCES transitions (event_id),
    finetune_id      TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    -- Attempts made in all; `retry_step` counts those since the last manual
    -- retry and picks the next wait from the schedule.
    attempts         INTEGER NOT NULL DEFAULT 0,
    retry_step       INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT NOT NULL,
    last_error       TEXT,
    last_status_code INTEGER,
    last_attempt_at  TEXT,
    delivered_at     TEXT,
    created_at       TEXT NOT NULL
) STRICT;

-- Due work per sink, and the per-job order check (an earlier pending
-- delivery of the same job to the same sink holds later ones).
CREATE INDEX deliveries_pending_by_sink ON deliveries (sink, next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_pending_by_job ON deliveries (sink, finetune_id, id) WHERE status = 'pending';
CREATE INDEX deliveries_by_event ON deliveries (event_id);
CREATE INDEX deliveries_by_status ON deliveries (status, id);

CREATE TABLE delivery_attempts (
    id          INTEGER PRIMARY KEY,
    delivery_id INTEGER NOT NULL REFERENCES deliveries (id),
    started_at  TEXT NOT NULL,
    duration_ms INTEGER NOT NULL,
    status_code INTEGER,
    exit_code   INTEGER,
    error       TEXT,
    response    TEXT
) STRICT;

CREATE INDEX delivery_attempts_by_delivery ON delivery_attempts (delivery_id, id);
