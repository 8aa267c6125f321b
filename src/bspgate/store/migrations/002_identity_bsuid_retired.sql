-- Identity rule 9: when (by the provider's event time) a BSUID stopped being its contact's
-- current one, so a late pair of that BSUID is placed in the contact's past, not its present.
ALTER TABLE contact_bsuids ADD COLUMN retired_evidence TEXT;
