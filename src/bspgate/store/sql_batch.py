"""Multi-row statements of the staged ingest: accept raw payloads, then derive in batches.

The server stores each acknowledged webhook as a `received` raw payload (one multi-row insert per
group commit); the processor later reads them in arrival order and writes what they produce with
one statement per table per batch (`store/batch.py` buffers them). Row counts per statement are
capped so no statement exceeds a backend's parameter limit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from bspgate.store.base import RawRecord
from bspgate.store.sql_base import SqlBase

_ROWS = 400  # rows per multi-row statement (9 columns: well under SQLite's and psycopg's limits)
_RAW_COLUMNS = (
    "id, channel_id, provider, received_at, content_type, body, state, reason, event_count"
)


def chunks(rows: Sequence[Any], size: int = _ROWS) -> Iterator[Sequence[Any]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _values(width: int, count: int) -> str:
    one = "(" + ", ".join("?" * width) + ")"
    return ", ".join([one] * count)


class BatchQueries(SqlBase):
    """Statements mixed into `SqlTx`."""

    def insert_rows(
        self, table: str, columns: str, rows: Sequence[Sequence[Any]], suffix: str = ""
    ) -> list[Any]:
        """One `INSERT ... VALUES (...), (...)` per chunk; answers RETURNING rows, if any."""
        out: list[Any] = []
        width = len(columns.split(","))
        for part in chunks(rows):
            params = [value for row in part for value in row]
            sql = f"INSERT INTO {table} ({columns}) VALUES {_values(width, len(part))}{suffix}"
            cursor = self.execute(sql, params)
            if "RETURNING" in suffix:
                out.extend(cursor.fetchall())
        return out

    def insert_raws(self, raws: Sequence[RawRecord], table: str = "raw_payloads") -> None:
        self.insert_rows(
            table,
            _RAW_COLUMNS,
            [
                (r.id, r.channel_id, r.provider, r.received_at, r.content_type, r.body,
                 r.state, r.reason, r.event_count)
                for r in raws
            ],
        )  # fmt: skip

    def received_raws(self, limit: int, after: tuple[str, str] | None = None) -> list[RawRecord]:
        """Raw payloads accepted but not yet processed, in arrival order."""
        where, params = "state = 'received'", []
        if after is not None:
            where += " AND (received_at > ? OR (received_at = ? AND id > ?))"
            params = [after[0], after[0], after[1]]
        rows = self.all(
            f"SELECT {_RAW_COLUMNS} FROM raw_payloads WHERE {where} "
            "ORDER BY received_at, id LIMIT ?",
            [*params, limit],
        )
        return [RawRecord(*[*r[:5], bytes(r[5]), *r[6:]]) for r in rows]

    def inbox_raws(self, limit: int) -> list[RawRecord]:
        """The SQLite inbox database's payloads, in arrival (commit) order."""
        rows = self.all(f"SELECT {_RAW_COLUMNS} FROM inbox ORDER BY seq LIMIT ?", (limit,))
        return [RawRecord(*[*r[:5], bytes(r[5]), *r[6:]]) for r in rows]

    def drop_inbox(self, raw_ids: Sequence[str]) -> None:
        for part in chunks(raw_ids):
            self.execute(f"DELETE FROM inbox WHERE id IN ({', '.join('?' * len(part))})", part)

    def existing_raws(self, raw_ids: Sequence[str]) -> set[str]:
        """Which of `raw_ids` are already in `raw_payloads` (processed before a crash)."""
        found: set[str] = set()
        for part in chunks(raw_ids):
            rows = self.all(
                f"SELECT id FROM raw_payloads WHERE id IN ({', '.join('?' * len(part))})",
                list(part),
            )
            found.update(r[0] for r in rows)
        return found

    def still_received(self, raw_ids: Sequence[str], lock: bool = False) -> set[str]:
        """Which of `raw_ids` no other processor has taken (PostgreSQL replicas)."""
        found: set[str] = set()
        for part in chunks(raw_ids):
            rows = self.all(
                f"SELECT id FROM raw_payloads WHERE state = 'received' AND id IN "
                f"({', '.join('?' * len(part))}){' FOR UPDATE' if lock else ''}",
                list(part),
            )
            found.update(r[0] for r in rows)
        return found

    def existing_events(self, event_ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for part in chunks(sorted(set(event_ids))):
            rows = self.all(
                f"SELECT id FROM events WHERE id IN ({', '.join('?' * len(part))})", list(part)
            )
            found.update(r[0] for r in rows)
        return found

    def finish_raws(self, outcomes: Sequence[tuple[str, str, str | None, int]]) -> None:
        """Set (id, state, reason, event count) of processed raw payloads, one statement."""
        for part in chunks(outcomes):
            params = [value for row in part for value in row]
            self.execute(
                "UPDATE raw_payloads SET state = v.column2, reason = v.column3, "
                f"event_count = v.column4 FROM (VALUES {_values(4, len(part))}) AS v "
                "WHERE raw_payloads.id = v.column1",
                params,
            )
