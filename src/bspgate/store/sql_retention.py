"""Retention statements: delete one batch of expired rows of one kind (`RetentionQueries.purge`).

Each call deletes at most `batch` rows, oldest first, in the caller's transaction, so a purge is
many short transactions that ingest interleaves with. Kinds (`bspgate.retention.KINDS`):
- `raw_payloads`: processed (and erased) raw payloads received before the cutoff;
- `quarantine`: quarantined raw payloads received before the cutoff;
- `events`: events stored before the cutoff whose deliveries are all settled (none pending,
  in flight or held), with those deliveries and their attempt log;
- `attempts`: attempt log lines older than the cutoff.
No index is needed: each statement walks the table in insertion order and stops at `batch`.
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
            ids = [
                row[0]
                for row in self.all(
                    "SELECT e.id FROM events e WHERE e.stored_at < ? AND NOT EXISTS ("
                    f"SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.state IN {_OPEN}"
                    ") ORDER BY e.seq LIMIT ?",
                    (cutoff, batch),
                )
            ]
            if ids:
                marks = ", ".join("?" for _ in ids)
                self.execute(
                    "DELETE FROM attempts WHERE delivery_id IN "
                    f"(SELECT id FROM deliveries WHERE event_id IN ({marks}))",
                    ids,
                )
                self._delete("deliveries", "event_id", ids)
            return self._delete("events", "id", ids)
        raise ValueError(f"unknown retention kind {kind!r}")

    def _delete(self, table: str, column: str, ids: list[str]) -> int:
        if not ids:
            return 0
        marks = ", ".join("?" for _ in ids)
        self.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", ids)
        return len(ids)
