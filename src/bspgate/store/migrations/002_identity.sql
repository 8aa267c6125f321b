-- Identity rule 9: every identity fact carries the provider event time of its evidence. On a
-- contact, the time behind its current BSUID and its current phone alias; on a phone alias row,
-- the time it was first taught and the time of the evidence that ended it.
ALTER TABLE contacts ADD COLUMN bsuid_at TEXT;
ALTER TABLE contacts ADD COLUMN phone_at TEXT;
ALTER TABLE contact_phones ADD COLUMN evidence_at TEXT;
ALTER TABLE contact_phones ADD COLUMN ended_evidence TEXT;
CREATE INDEX contacts_merged_into ON contacts (merged_into);
-- Erasure audit: who erased which contact when, and how much was removed (never the values).
CREATE TABLE erasures (
    id BIGSERIAL_PK,
    contact_id TEXT NOT NULL,
    erased_at TEXT NOT NULL,
    requested_by TEXT,
    summary TEXT NOT NULL
);
