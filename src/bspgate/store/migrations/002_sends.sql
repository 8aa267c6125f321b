-- Outbound sends: which provider, the outcome (pending while the provider call runs, so one
-- idempotency key never calls the provider twice), the HTTP status answered, and when.
ALTER TABLE sends ADD COLUMN provider TEXT;
ALTER TABLE sends ADD COLUMN state TEXT NOT NULL DEFAULT 'sent';   -- pending | sent | failed
ALTER TABLE sends ADD COLUMN status INTEGER;
ALTER TABLE sends ADD COLUMN updated_at TEXT;
CREATE INDEX sends_contact ON sends (contact_id, created_at);
