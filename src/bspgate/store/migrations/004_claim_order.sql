-- Dispatchers claim pending rows oldest first: this index lets the claim walk them in event_seq
-- order and stop at its batch size, instead of collecting and sorting every due row each round.
CREATE INDEX deliveries_claim ON deliveries (state, event_seq);
