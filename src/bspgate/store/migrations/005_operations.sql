-- Status order per message: a status that would move a message backwards is stored, superseded.
CREATE TABLE message_status (
    channel_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    status TEXT NOT NULL,
    rank INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (channel_id, message_id)
);
ALTER TABLE events ADD COLUMN superseded INTEGER NOT NULL DEFAULT 0;

-- Operator-visible subscriber state: disabled (410 Gone, or failing too long) and why.
CREATE TABLE subscriber_state (
    subscriber_id TEXT PRIMARY KEY,
    disabled_at TEXT,
    reason TEXT,
    failing_since DOUBLE PRECISION,
    updated_at TEXT NOT NULL
);
CREATE INDEX deliveries_event ON deliveries (event_id);
