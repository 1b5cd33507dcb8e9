-- When Segmind's API last reported each job, kept out of the jobs table: a
-- reconcile pass sees every job, and writing that time into each job's row
-- rewrote the whole table on every pass even when nothing had changed.
-- The rows here are narrow, and they also remember ids Segmind's details
-- answer 404 for, so those are asked again with growing waits, then no more.

CREATE TABLE segmind_sightings (
    finetune_id     TEXT PRIMARY KEY NOT NULL,
    -- The last time Segmind's API reported the job.
    seen_at         TEXT,
    -- The first 404 of the current run of them.
    missing_since   TEXT,
    misses          INTEGER NOT NULL DEFAULT 0,
    -- When the details may be asked for again; far in the future once the
    -- id is forgotten.
    next_details_at TEXT
) STRICT, WITHOUT ROWID;

INSERT INTO segmind_sightings (finetune_id, seen_at)
SELECT finetune_id, segmind_seen_at FROM jobs WHERE segmind_seen_at IS NOT NULL;

ALTER TABLE jobs DROP COLUMN segmind_seen_at;
