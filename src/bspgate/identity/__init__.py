"""BSUID-first identity: contacts, their BSUIDs and phone aliases, per portfolio."""
