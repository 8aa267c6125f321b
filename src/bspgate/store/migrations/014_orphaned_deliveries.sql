-- Deliveries whose event is gone. Before the retention purge locked the events it deletes
-- (PostgreSQL), a purge racing a replay could delete an event the replay had just given a
-- delivery. Such a delivery can never be sent and, per contact, held back every later event of
-- its contact for good. Retention deletes an event with its deliveries and their attempt log:
-- this does the same for the deliveries it left behind. Nothing else deletes events, so on a
-- database that never met the race this deletes nothing.
DELETE FROM attempts WHERE delivery_id IN (
    SELECT d.id FROM deliveries d WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.id = d.event_id)
);
DELETE FROM deliveries WHERE NOT EXISTS (
    SELECT 1 FROM events e WHERE e.id = deliveries.event_id
);
