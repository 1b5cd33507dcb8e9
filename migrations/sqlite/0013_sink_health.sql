-- What a sink's health needs, read through indexes rather than by grouping
-- every delivery and attempt: the newest delivered delivery of each sink,
-- and failed attempts by time.
CREATE INDEX deliveries_delivered_by_sink ON deliveries (sink, delivered_at) WHERE status = 'delivered';
CREATE INDEX delivery_attempts_failed_by_time ON delivery_attempts (started_at) WHERE error IS NOT NULL;
