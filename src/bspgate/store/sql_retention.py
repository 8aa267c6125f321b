"""Retention statements: delete one batch of expired rows of one kind (`RetentionQueries.purge`).

Each call deletes at most `batch` rows, oldest first, in the caller's transaction, so a purge is
many short transactions that ingest interleaves with. Kinds (`bspgate.retention.KINDS`):
- `raw_payloads`: processed (and erased) raw payloads received before the cutoff;
- `quarantine`: quarantined raw payloads received before the cutoff;
- `events`: events stored before the cutoff whose deliveries are all settled (none pending,
  in flight or held), with those deliveries and their attempt log;
- `attempts`: attempt log lines older than the cutoff.
No index is needed: each statement walks the table in insertion order and stops at `batch`.

Events and replays (PostgreSQL): a replay to a subscriber added later (`fan_out_missing`) adds
pending deliveries to stored events while a purge may be choosing them. A delivery left behind
for a deleted event could never be sent and, per contact, would hold back every later event. So
the purge of events runs at READ COMMITTED (it must be the first statement of its transaction):
it locks the events it chose (`FOR UPDATE SKIP LOCKED`: an event a replay is reading is left for
the next round), then checks again, in a snapshot taken after the locks, that none has an open
delivery. A replay reads its events `FOR SHARE`: it either committed before the locks (the
check sees its deliveries) or waits for the purge and, the events gone, runs again without
them. SQLite has one writer at a time: nothing can come between the choice and the delete.
"""

from __future__ import annotations

from bspgate.store.sql_base import SqlBase

_OPEN = "('pending', 'inflight', 'held')"


class RetentionQueries(SqlBase):
    """`purge(kind, cutoff, batch)`: rows deleted (0 when nothing of that kind expired)."""

    def purge(self, kind: str, cutoff: str, batch: int) -> int:
        if kind in ("raw_payloads", "quarantine"):
            states = "('quarantined')" if kind == "quarantine" else "('processed', 'erased')"
            ids = [
                row[0]
                for row in self.all(
                    f"SELECT id FROM raw_payloads WHERE state IN {states} AND received_at < ? "
                    "ORDER BY state, received_at LIMIT ?",
                    (cutoff, batch),
                )
            ]
            return self._delete("raw_payloads", "id", ids)
        if kind == "attempts":
            ids = [
                row[0]
                for row in self.all(
                    "SELECT id FROM attempts WHERE at < ? ORDER BY id LIMIT ?", (cutoff, batch)
                )
            ]
            return self._delete("attempts", "id", ids)
        if kind == "events":
            return self._purge_events(cutoff, batch)
        raise ValueError(f"unknown retention kind {kind!r}")

    def _purge_events(self, cutoff: str, batch: int) -> int:
        lock = ""
        if self.dialect == "postgres":
            # each statement sees what committed before it, not the snapshot of the first one:
            # the check below must see a replay's deliveries that committed while we locked
            self.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            lock = " FOR UPDATE OF e SKIP LOCKED"
        ids = [
            row[0]
            for row in self.all(
                "SELECT e.id FROM events e WHERE e.stored_at < ? AND NOT EXISTS ("
                f"SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.state IN {_OPEN}"
                f") ORDER BY e.seq LIMIT ?{lock}",
                (cutoff, batch),
            )
        ]
        if ids and lock:  # locked: no replay adds to them now, but one may have as we chose
            marks = ", ".join("?" for _ in ids)
            reopened = {
                row[0]
                for row in self.all(
                    f"SELECT DISTINCT event_id FROM deliveries WHERE event_id IN ({marks}) "
                    f"AND state IN {_OPEN}",
                    ids,
                )
            }
            ids = [event_id for event_id in ids if event_id not in reopened]
        if ids:
            marks = ", ".join("?" for _ in ids)
            self.execute(
                "DELETE FROM attempts WHERE delivery_id IN "
                f"(SELECT id FROM deliveries WHERE event_id IN ({marks}))",
                ids,
            )
            self._delete("deliveries", "event_id", ids)
        return self._delete("events", "id", ids)

    def _delete(self, table: str, column: str, ids: list[str]) -> int:
        if not ids:
            return 0
        marks = ", ".join("?" for _ in ids)
        self.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", ids)
        return len(ids)
