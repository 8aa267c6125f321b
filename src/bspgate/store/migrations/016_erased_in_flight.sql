-- A delivery in flight when its contact was erased: the erasure lets the attempt finish and
-- marks it here. If the attempt fails, the row is erased, never retried (its content is gone).
-- Only rows marked so: a dead letter of an erased contact replayed later, or a delivery added
-- afterwards, retries as any other (a replay clears the mark). NULL for every existing row.
ALTER TABLE deliveries ADD COLUMN erased_in_flight INTEGER;
