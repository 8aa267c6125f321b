-- The staged ingest (issue 11): a webhook is answered once its raw payload is stored as
-- `received`; the W3C trace context it came with must reach the events derived from it later.
ALTER TABLE raw_payloads ADD COLUMN traceparent TEXT;
-- The processor reads received payloads in arrival order; the index stays as small as the backlog.
CREATE INDEX raw_payloads_received ON raw_payloads (received_at, id) WHERE state = 'received';
