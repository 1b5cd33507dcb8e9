-- /metrics and /v1/status count the pending and dead deliveries of each sink.
-- This index holds only the deliveries not yet delivered, so those counts
-- read it alone and never the delivered rows, which grow without end.
CREATE INDEX deliveries_unfinished_by_sink ON deliveries (sink, status) WHERE status <> 'delivered';
