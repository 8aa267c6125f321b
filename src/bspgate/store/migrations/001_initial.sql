-- Raw provider payloads: stored before any answer, with their processing state.
CREATE TABLE raw_payloads (
    id TEXT PRIMARY KEY,
    channel_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    received_at TEXT NOT NULL,
    content_type TEXT NOT NULL,
    body BYTEA NOT NULL,
    state TEXT NOT NULL,            -- processed | quarantined | duplicate | erased
    reason TEXT,
    event_count INTEGER NOT NULL DEFAULT 0,
    replayed_at TEXT
);
CREATE INDEX raw_payloads_state ON raw_payloads (state, received_at);

CREATE TABLE events (
    seq BIGSERIAL_PK,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    time TEXT NOT NULL,
    stored_at TEXT NOT NULL,
    raw_id TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX events_contact ON events (contact_id, seq);
CREATE INDEX events_type ON events (type, seq);

CREATE TABLE contacts (
    id TEXT PRIMARY KEY,
    portfolio TEXT NOT NULL,
    bsuid TEXT,
    parent_bsuid TEXT,
    phone TEXT,
    username TEXT,
    name TEXT,
    merged_into TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    erased_at TEXT
);

-- Every BSUID a contact ever had; the contact's current one is contacts.bsuid.
CREATE TABLE contact_bsuids (
    portfolio TEXT NOT NULL,
    bsuid TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    state TEXT NOT NULL,            -- current | retired
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    channel_id TEXT,
    PRIMARY KEY (portfolio, bsuid)
);
CREATE INDEX contact_bsuids_contact ON contact_bsuids (contact_id);

-- Phone aliases with history: at most one active owner per (portfolio, phone).
CREATE TABLE contact_phones (
    id BIGSERIAL_PK,
    portfolio TEXT NOT NULL,
    phone TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    state TEXT NOT NULL,            -- active | retired | moved
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    ended_at TEXT,
    reason TEXT,
    channel_id TEXT
);
CREATE UNIQUE INDEX contact_phones_active ON contact_phones (portfolio, phone) WHERE state = 'active';
CREATE INDEX contact_phones_contact ON contact_phones (contact_id);

-- What happened to a contact's identity, and why (captured, merged, moved, relinked, erased).
CREATE TABLE contact_history (
    id BIGSERIAL_PK,
    contact_id TEXT NOT NULL,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX contact_history_contact ON contact_history (contact_id, id);

-- Last inbound message per contact and channel: the 24 h service window.
CREATE TABLE conversations (
    contact_id TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    last_inbound_at TEXT NOT NULL,
    PRIMARY KEY (contact_id, channel_id)
);

-- Outbound sends: provider message id -> contact, for status correlation.
CREATE TABLE sends (
    id TEXT PRIMARY KEY,
    channel_id TEXT NOT NULL,
    contact_id TEXT,
    provider_message_id TEXT,
    idempotency_key TEXT,
    created_at TEXT NOT NULL,
    request TEXT NOT NULL,
    answer TEXT NOT NULL
);
CREATE UNIQUE INDEX sends_provider_id ON sends (channel_id, provider_message_id);
CREATE UNIQUE INDEX sends_idempotency ON sends (idempotency_key);

-- One row per (event, subscriber): the outbox.
CREATE TABLE deliveries (
    id TEXT PRIMARY KEY,
    event_seq BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    subscriber_id TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    state TEXT NOT NULL,            -- pending | inflight | held | delivered | dead | superseded
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    lease_until DOUBLE PRECISION,
    last_status INTEGER,
    last_error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (event_id, subscriber_id)
);
CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at);
CREATE INDEX deliveries_order ON deliveries (subscriber_id, contact_id, event_seq);

CREATE TABLE attempts (
    id BIGSERIAL_PK,
    delivery_id TEXT NOT NULL,
    at TEXT NOT NULL,
    status INTEGER,
    latency_ms DOUBLE PRECISION NOT NULL,
    error TEXT
);
CREATE INDEX attempts_delivery ON attempts (delivery_id, id);
