-- Fields that Segmind's list and details endpoints report, and what each
-- path last said about a job's status, to show drift between them.

ALTER TABLE jobs ADD COLUMN theme TEXT;
ALTER TABLE jobs ADD COLUMN train_type TEXT;
ALTER TABLE jobs ADD COLUMN source_type TEXT;
ALTER TABLE jobs ADD COLUMN data_source_path TEXT;
ALTER TABLE jobs ADD COLUMN public_model INTEGER;
-- The last status a webhook reported that the job took or already had.
ALTER TABLE jobs ADD COLUMN webhook_status TEXT;
-- The last status Segmind's API reported, and when it was asked.
ALTER TABLE jobs ADD COLUMN segmind_status TEXT;
ALTER TABLE jobs ADD COLUMN segmind_seen_at TEXT;

UPDATE jobs SET webhook_status = (
    SELECT t.to_status FROM transitions t
    WHERE t.finetune_id = jobs.finetune_id AND t.source = 'webhook'
    ORDER BY t.id DESC LIMIT 1);

CREATE INDEX jobs_drift ON jobs (updated_at DESC, finetune_id DESC)
    WHERE segmind_status IS NOT NULL AND segmind_status IS NOT webhook_status;
