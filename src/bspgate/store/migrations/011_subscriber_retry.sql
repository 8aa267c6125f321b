-- An operator's "retry this subscriber now" (`POST /v1/subscribers/{id}/retry`, `bspgate
-- subscribers retry`) is answered by whichever process serves the API or runs the CLI, while
-- the subscriber's lane runs in the delivery worker (or in other replicas): the request's time is
-- stored here, and a lane whose breaker is open, or that a 429 paused, reads it and probes at once.
ALTER TABLE subscriber_state ADD COLUMN retry_at DOUBLE PRECISION;
