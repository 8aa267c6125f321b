-- deliveries_event (event_id) repeated the first column of the UNIQUE (event_id, subscriber_id)
-- index every backend builds for the table: lookups by event (retention, the API's deliveries of
-- an event) use that one. Every outbox row paid for both.
DROP INDEX deliveries_event;
