-- Identity rule 9 for the profile: the provider event time of the evidence behind the current
-- username and name, so an older webhook arriving late never overturns a newer one.
ALTER TABLE contacts ADD COLUMN username_at TEXT;
ALTER TABLE contacts ADD COLUMN name_at TEXT;
