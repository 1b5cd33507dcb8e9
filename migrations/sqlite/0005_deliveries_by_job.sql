-- A job's deliveries (GET /v1/jobs/{id}, GET /v1/deliveries?finetune_id=) are
-- found through an index rather than a scan of every delivery. Nothing looks
-- deliveries up by event id, so that index goes.
DROP INDEX deliveries_by_event;
CREATE INDEX deliveries_by_job ON deliveries (finetune_id, id);
