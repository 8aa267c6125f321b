"""`SqlTx`: every SQL statement of bspgate, over a DB-API connection (sqlite3 or psycopg).

The class implements `StoreTx` (identity and ingest, inside a transaction) and the dispatcher's,
read API's and send path's queries, grouped by concern in `sql_base` (plumbing, identity,
ingest), `sql_contacts`, `sql_outbox` and `sql_sends`, and joined here with the raw-payload and
event reads. It never commits: the backend that owns the connection decides that.
"""

from __future__ import annotations

from typing import Any

from bspgate.store.base import RawRecord
from bspgate.store.sql_base import OPEN_DELIVERY_STATES, TERMINAL_RANK, SqlBase
from bspgate.store.sql_batch import BatchQueries
from bspgate.store.sql_contacts import ContactQueries
from bspgate.store.sql_outbox import OutboxQueries
from bspgate.store.sql_retention import RetentionQueries
from bspgate.store.sql_sends import SendQueries

__all__ = ["OPEN_DELIVERY_STATES", "TERMINAL_RANK", "SqlTx"]


class SqlTx(ContactQueries, OutboxQueries, SendQueries, BatchQueries, RetentionQueries, SqlBase):
    """All of bspgate's statements over one connection."""

    # -- raw payloads ---------------------------------------------------------------------------
    def raw(self, raw_id: str) -> RawRecord | None:
        row = self.one(
            "SELECT id, channel_id, provider, received_at, content_type, body, state, reason, "
            "event_count FROM raw_payloads WHERE id = ?",
            (raw_id,),
        )
        if row is None:
            return None
        values = list(row)
        values[5] = bytes(values[5])
        return RawRecord(*values)

    def events_of_raw(self, raw_id: str) -> list[tuple[str, str]]:
        """(id, type) of the events a raw payload produced, in stream order."""
        rows = self.all("SELECT id, type FROM events WHERE raw_id = ? ORDER BY seq", (raw_id,))
        return [(str(row[0]), str(row[1])) for row in rows]

    def raws(self, state: str, limit: int) -> list[RawRecord]:
        rows = self.all(
            "SELECT id, channel_id, provider, received_at, content_type, body, state, reason, "
            "event_count FROM raw_payloads WHERE state = ? ORDER BY received_at, id LIMIT ?",
            (state, limit),
        )
        return [RawRecord(*[*r[:5], bytes(r[5]), *r[6:]]) for r in rows]

    # -- reads ----------------------------------------------------------------------------------
    def list_events(
        self,
        *,
        type_: str | None,
        contact_id: str | None,
        since: str | None,
        before_seq: int | None,
        after_seq: int | None,
        limit: int,
        include_superseded: bool = False,
    ) -> list[tuple[int, str]]:
        clauses: list[str] = []
        params: list[Any] = []
        if type_:
            clauses.append("type = ?")
            params.append(type_)
        if contact_id:
            clauses.append("contact_id = ?")
            params.append(contact_id)
        if since:
            clauses.append("time >= ?")
            params.append(since)
        if before_seq is not None:
            clauses.append("seq < ?")
            params.append(before_seq)
        if after_seq is not None:
            clauses.append("seq > ?")
            params.append(after_seq)
        if not include_superseded:
            clauses.append("superseded = 0")
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        order = "ASC" if after_seq is not None else "DESC"
        params.append(limit)
        rows = self.all(
            f"SELECT seq, body FROM events {where} ORDER BY seq {order} LIMIT ?", params
        )
        return [(int(seq), body) for seq, body in rows]

    def event_body(self, event_id: str) -> str | None:
        row = self.one("SELECT body FROM events WHERE id = ?", (event_id,))
        return None if row is None else str(row[0])
