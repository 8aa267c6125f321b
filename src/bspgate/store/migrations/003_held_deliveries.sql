-- A delivery held for a phone-keyed subscriber is released with the phone filled in: the body it
-- will send then differs from the stored event, so it keeps its own copy.
ALTER TABLE deliveries ADD COLUMN body TEXT;
CREATE INDEX deliveries_contact_state ON deliveries (contact_id, state);
CREATE INDEX contact_history_kind ON contact_history (contact_id, kind);
CREATE INDEX contacts_username ON contacts (portfolio, username);
