-- Operator console: an audit trail of what operators did and saw (sign-ins, reveals of masked
-- phones and texts, replays, erasures, sends), and the indexes behind its channel and time filters.
CREATE TABLE console_audit (
    id BIGSERIAL_PK,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,            -- the API key name the operator signed in with
    action TEXT NOT NULL,           -- sign_in | sign_out | reveal | replay | erase | send | ...
    target TEXT NOT NULL,           -- the page path or the object acted on
    detail TEXT NOT NULL            -- JSON, never phone numbers or message texts
);
CREATE INDEX events_channel ON events (channel_id, seq);
CREATE INDEX events_time ON events (time, seq);
