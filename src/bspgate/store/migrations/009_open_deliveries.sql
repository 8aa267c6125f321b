-- A claim keeps each contact's events in order: a row is claimable only while no earlier row of
-- the same (subscriber, contact) is still open. That check probed deliveries_order, which holds
-- every row a contact ever had (and, on PostgreSQL, every version of each): its cost grew with
-- the contact's history. This index holds open rows only, so the check stays as cheap for a
-- contact with years of messages as for a new one.
CREATE INDEX deliveries_open ON deliveries (subscriber_id, contact_id, event_seq)
    WHERE state IN ('pending', 'inflight', 'held');
DROP INDEX deliveries_order;
