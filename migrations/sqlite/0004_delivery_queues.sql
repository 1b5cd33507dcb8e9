-- Per job and sink, only the oldest pending delivery keeps a real
-- next_attempt_at; the ones behind it wait with a time no clock reaches and
-- become due when it is delivered or dead. Due work is then found through
-- the index alone, however long the queues behind a failing sink grow.
UPDATE deliveries SET next_attempt_at = '9999-12-31T23:59:59.999999Z'
WHERE status = 'pending' AND EXISTS (
    SELECT 1 FROM deliveries e
    WHERE e.sink = deliveries.sink AND e.finetune_id = deliveries.finetune_id
      AND e.status = 'pending' AND e.id < deliveries.id);
