-- Retention removes old receipts, attempts and delivered deliveries in
-- small batches, oldest first; these indexes find each batch without a
-- scan. Removing a receipt clears the transitions that name it, and
-- SQLite's foreign-key check looks them up: hence transitions by receipt.
CREATE INDEX receipts_by_time ON receipts (received_at);
CREATE INDEX transitions_by_receipt ON transitions (receipt_id);
CREATE INDEX delivery_attempts_by_time ON delivery_attempts (started_at);
CREATE INDEX deliveries_delivered_by_time ON deliveries (delivered_at) WHERE status = 'delivered';
