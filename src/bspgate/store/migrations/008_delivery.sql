-- Delivery lanes (one per subscriber): a claim names its owner (stable across a restart, so a
-- restarted replica takes its own dead claims back at once) and a token (an attempt finishes its
-- row only while the token still matches, so a stale attempt never overwrites a newer result).
ALTER TABLE deliveries ADD COLUMN claim_owner TEXT;
ALTER TABLE deliveries ADD COLUMN claim_token TEXT;
-- Each lane claims its own subscriber's rows oldest first.
CREATE INDEX deliveries_lane ON deliveries (subscriber_id, state, event_seq);
