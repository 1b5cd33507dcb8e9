-- Drift is a disagreement between tunehook and Segmind's API once the API
-- has been asked: the job's status against what the API last said, not
-- against what webhooks said (a job submitted from here has no webhook
-- yet, and agrees with Segmind). The partial index follows.
DROP INDEX jobs_drift;
CREATE INDEX jobs_drift ON jobs (updated_at DESC, finetune_id DESC)
    WHERE segmind_status IS NOT NULL AND segmind_status IS DISTINCT FROM status;
