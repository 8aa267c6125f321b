-- Lookups that walked a whole table. Every identity lookup by phone of any state (who held a
-- number at a time, rule 9; the batch's prefetch of phone owners; a send to a phone; the API's
-- contact search) read every alias row, as the only index by phone covers active aliases alone:
-- processing a new contact cost time in proportion to the contacts stored. The contact search by
-- BSUID or username without a portfolio, and a raw payload's events (`GET /v1/raws/{id}`), did
-- the same over their tables. Building them takes a few seconds per million rows, once.
CREATE INDEX contact_phones_phone ON contact_phones (phone, portfolio);
CREATE INDEX contact_bsuids_bsuid ON contact_bsuids (bsuid);
DROP INDEX contacts_username;
CREATE INDEX contacts_username ON contacts (username, portfolio);
CREATE INDEX events_raw ON events (raw_id);
