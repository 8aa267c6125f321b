"""Multi-row statements of the staged ingest: accept raw payloads, then derive in batches.

The server stores each acknowledged webhook as a `received` raw payload (one multi-row insert per
group commit); the processor later reads them in arrival order and writes what they produce with
one statement per table per batch (`store/batch.py` buffers them). Row counts per statement are
capped so no statement exceeds a backend's parameter limit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from bspgate.store.base import ContactRow, RawRecord
from bspgate.store.sql_base import _C_COLUMNS as _CONTACT
from bspgate.store.sql_base import SqlBase

ROWS = 400  # rows per multi-row statement (<= 10 columns: well under SQLite's and psycopg's limits)
_RAW_COLUMNS = (
    "id, channel_id, provider, received_at, content_type, body, state, reason, event_count, "
    "traceparent"
)


def chunks(rows: Sequence[Any], size: int = ROWS) -> Iterator[Sequence[Any]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def by_portfolio(keys: Sequence[tuple[str, Any]]) -> Iterator[tuple[str, list[Any]]]:
    """(portfolio, values) groups of at most 200 values, so a lookup is `portfolio = ? AND
    column IN (...)`: both backends walk an index for that, where a row-value `IN (VALUES ...)`
    made SQLite scan the whole table for every batch."""
    grouped: dict[str, list[Any]] = {}
    for portfolio, value in keys:
        grouped.setdefault(portfolio, []).append(value)
    for portfolio, values in grouped.items():
        for part in chunks(values, 200):
            yield portfolio, list(part)


def _marks(count: int) -> str:
    return ", ".join("?" * count)


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
                 r.state, r.reason, r.event_count, r.traceparent)
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

    def insert_bsuid_link(self, contact: Any, bsuid: str, now: str, channel_id: str) -> None:
        """`link_bsuid(current=True)` for a contact that has no other BSUID (made just now)."""
        self.execute(
            "INSERT INTO contact_bsuids (portfolio, bsuid, contact_id, state, first_seen, "
            "last_seen, channel_id) VALUES (?, ?, ?, 'current', ?, ?, ?) "
            "ON CONFLICT (portfolio, bsuid) DO UPDATE SET contact_id = excluded.contact_id, "
            "state = excluded.state, last_seen = excluded.last_seen",
            (contact.portfolio, bsuid, contact.id, now, now, channel_id),
        )

    def owners_by_bsuid(
        self, keys: Sequence[tuple[str, str]]
    ) -> list[tuple[tuple[str, str], ContactRow]]:
        """The contacts holding these (portfolio, BSUID) pairs (current or retired)."""
        out = []
        for portfolio, part in by_portfolio(keys):
            rows = self.all(
                f"SELECT b.portfolio, b.bsuid, {_CONTACT} FROM contact_bsuids b "
                "JOIN contacts c ON c.id = b.contact_id "
                f"WHERE b.portfolio = ? AND b.bsuid IN ({_marks(len(part))})",
                [portfolio, *part],
            )
            out += [((r[0], r[1]), ContactRow(*r[2:])) for r in rows]
        return out

    def owners_by_phone(
        self, keys: Sequence[tuple[str, str]], known: set[tuple[str, str]] | None = None
    ) -> list[tuple[tuple[str, str], ContactRow]]:
        """The contacts holding these (portfolio, phone) pairs as their active alias; `known`
        collects the pairs with any alias row, active or ended (the others were never held)."""
        out = []
        for portfolio, part in by_portfolio(keys):
            rows = self.all(
                f"SELECT p.portfolio, p.phone, p.state = 'active', {_CONTACT} "
                "FROM contact_phones p JOIN contacts c ON c.id = p.contact_id "
                f"WHERE p.portfolio = ? AND p.phone IN ({_marks(len(part))})",
                [portfolio, *part],
            )
            out += [((r[0], r[1]), ContactRow(*r[3:])) for r in rows if r[2]]
            if known is not None:
                known.update((r[0], r[1]) for r in rows)
        return out

    def touch_bsuids(self, at: str, keys: Sequence[tuple[str, str]]) -> None:
        """`last_seen = at` for these (portfolio, BSUID) pairs."""
        for portfolio, part in by_portfolio(keys):
            self.execute(
                "UPDATE contact_bsuids SET last_seen = ? "
                f"WHERE portfolio = ? AND bsuid IN ({_marks(len(part))})",
                [at, portfolio, *part],
            )

    def touch_phones(self, at: str, keys: Sequence[tuple[str, str, str]]) -> None:
        """`last_seen = at` for the active aliases of these (portfolio, phone, contact id)."""
        for portfolio, part in by_portfolio([(key[0], key[1:]) for key in keys]):
            phones = sorted({phone for phone, _ in part})
            contacts = sorted({contact_id for _, contact_id in part})
            # an active (portfolio, phone) has one holder, so the two lists select the pairs
            self.execute(
                "UPDATE contact_phones SET last_seen = ? WHERE portfolio = ? "
                f"AND phone IN ({_marks(len(phones))}) AND state = 'active' "
                f"AND contact_id IN ({_marks(len(contacts))})",
                [at, portfolio, *phones, *contacts],
            )

    def inbox_raws(self, limit: int) -> list[RawRecord]:
        """The SQLite inbox database's payloads, in arrival (commit) order."""
        rows = self.all(f"SELECT {_RAW_COLUMNS} FROM inbox ORDER BY seq LIMIT ?", (limit,))
        return [RawRecord(*[*r[:5], bytes(r[5]), *r[6:]]) for r in rows]

    def inbox_raw(self, raw_id: str) -> RawRecord | None:
        """One payload of the SQLite inbox database (accepted, not yet processed), or None."""
        row = self.one(f"SELECT {_RAW_COLUMNS} FROM inbox WHERE id = ?", (raw_id,))
        return None if row is None else RawRecord(*[*row[:5], bytes(row[5]), *row[6:]])

    def inbox_count(self) -> int:
        """Payloads waiting in the SQLite inbox database (accepted, not yet processed)."""
        return int(self.one("SELECT COUNT(*) FROM inbox")[0])

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
