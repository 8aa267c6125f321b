"""`SqlBase`: the plumbing of bspgate's SQL, and the identity and ingest statements.

Queries are written once with `?` placeholders; the PostgreSQL backend rewrites them to `%s`.
Nothing here commits: the backend that owns the connection decides that. The other statement
groups live beside it (`sql_contacts`, `sql_outbox`, `sql_sends`) and `sql.SqlTx` joins them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson

from bspgate.ids import new_id
from bspgate.store.base import (
    ContactRow,
    Holding,
    RawRecord,
    follow_merged,
    phone_holder_at,
)

_CONTACT_COLUMNS = (
    "id, portfolio, bsuid, parent_bsuid, phone, username, name, merged_into, bsuid_at, phone_at, "
    "created_at, username_at, name_at"
)
_C_COLUMNS = ", ".join("c." + c.strip() for c in _CONTACT_COLUMNS.split(","))
OPEN_DELIVERY_STATES = ("pending", "inflight", "held")
TERMINAL_RANK = 100  # failed and deleted: nothing moves a message on from there


def history_detail(detail: dict[str, Any]) -> str:
    """A history entry's detail as stored: JSON, keys sorted (orjson: processing writes a couple
    a webhook, and the standard library's encoder took ten times as long)."""
    return orjson.dumps(detail, option=orjson.OPT_SORT_KEYS).decode()


def _filters(
    clauses: list[str], params: list[Any], optional: Sequence[tuple[str, Any]]
) -> tuple[list[str], list[Any]]:
    """Add `clause` with its value for every optional filter that has one."""
    for clause, value in optional:
        if value:
            clauses.append(clause)
            params.append(value)
    return clauses, params


def _contact(row: Sequence[Any] | None) -> ContactRow | None:
    return None if row is None else ContactRow(*row)


EVENTS_LOCK = 7_206_102_313  # pg_advisory_xact_lock key: events commit in `seq` order


class SqlBase:
    """SQL over one connection. `paramstyle` is "qmark" (sqlite3) or "format" (psycopg)."""

    def __init__(self, conn: Any, paramstyle: str = "qmark") -> None:
        self.conn = conn
        self._format = paramstyle == "format"
        # the few statements spelled per database check this ("postgres" means psycopg)
        self.dialect = "postgres" if self._format else "sqlite"
        self._events_ordered = False

    def order_events(self) -> None:
        """Before a transaction inserts events: on PostgreSQL, take the events lock (once).

        An event's `seq` is the cursor of `GET /v1/events?after=` and of per-contact order, and
        PostgreSQL hands sequence numbers out at insert, not at commit. Transactions inserting
        events (processing, a replica's delivery recorder, an operator's merge) would commit
        out of `seq` order, and a follower that read in between would never see the lower one.
        Holding this lock from the first insert to the commit makes `seq` order commit order.
        SQLite has one writer: its order is commit order already.
        """
        if self.dialect == "postgres" and not self._events_ordered:
            self.execute("SELECT pg_advisory_xact_lock(?)", (EVENTS_LOCK,))
            self._events_ordered = True

    # -- plumbing ---------------------------------------------------------------------------
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self._format:
            sql = sql.replace("?", "%s")
        return self.conn.execute(sql, params)

    def one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.execute(sql, params).fetchone()

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(self.execute(sql, params).fetchall())

    # -- identity -----------------------------------------------------------------------------
    def _follow(self, contact: ContactRow | None) -> ContactRow | None:
        return follow_merged(contact, self.contact)

    def contact(self, contact_id: str) -> ContactRow | None:
        return _contact(
            self.one(f"SELECT {_CONTACT_COLUMNS} FROM contacts WHERE id = ?", (contact_id,))
        )

    def contact_by_bsuid(self, portfolio: str, bsuid: str) -> ContactRow | None:
        row = self.one(
            f"SELECT {_C_COLUMNS} FROM contact_bsuids b JOIN contacts c ON c.id = b.contact_id "
            "WHERE b.portfolio = ? AND b.bsuid = ?",
            (portfolio, bsuid),
        )
        return self._follow(_contact(row))

    def contact_by_phone(self, portfolio: str, phone: str) -> ContactRow | None:
        row = self.one(
            f"SELECT {_C_COLUMNS} FROM contact_phones p JOIN contacts c ON c.id = p.contact_id "
            "WHERE p.portfolio = ? AND p.phone = ? AND p.state = 'active'",
            (portfolio, phone),
        )
        return self._follow(_contact(row))

    def create_contact(self, portfolio: str, now: str) -> ContactRow:
        contact = ContactRow(id=new_id("ct"), portfolio=portfolio, created_at=now)
        self.execute(
            "INSERT INTO contacts (id, portfolio, created_at, updated_at) VALUES (?, ?, ?, ?)",
            (contact.id, portfolio, now, now),
        )
        return contact

    def save_contact(self, contact: ContactRow, now: str) -> None:
        self.execute(
            "UPDATE contacts SET bsuid = ?, parent_bsuid = ?, phone = ?, username = ?, name = ?, "
            "merged_into = ?, bsuid_at = ?, phone_at = ?, username_at = ?, name_at = ?, "
            "updated_at = ? WHERE id = ?",
            (
                contact.bsuid,
                contact.parent_bsuid,
                contact.phone,
                contact.username,
                contact.name,
                contact.merged_into,
                contact.bsuid_at,
                contact.phone_at,
                contact.username_at,
                contact.name_at,
                now,
                contact.id,
            ),
        )

    def link_bsuid(
        self,
        contact: ContactRow,
        bsuid: str,
        now: str,
        channel_id: str,
        *,
        current: bool,
        evidence: str | None = None,
    ) -> None:
        """Link `bsuid` to the contact; a current one retires the others as of `evidence`."""
        if current:
            self.execute(
                "UPDATE contact_bsuids SET state = 'retired', retired_evidence = "
                "CASE WHEN retired_evidence IS NULL OR ? < retired_evidence THEN ? "
                "ELSE retired_evidence END WHERE contact_id = ? AND bsuid <> ? "
                "AND state = 'current'",
                (evidence, evidence, contact.id, bsuid),
            )
        state = "current" if current else "retired"
        retired = None if current else evidence
        self.execute(
            "INSERT INTO contact_bsuids (portfolio, bsuid, contact_id, state, first_seen, "
            "last_seen, channel_id, retired_evidence) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (portfolio, bsuid) DO UPDATE SET contact_id = excluded.contact_id, "
            "state = excluded.state, last_seen = excluded.last_seen, "
            "retired_evidence = CASE WHEN excluded.state = 'current' THEN NULL "
            "WHEN contact_bsuids.retired_evidence IS NULL "
            "OR excluded.retired_evidence < contact_bsuids.retired_evidence "
            "THEN excluded.retired_evidence ELSE contact_bsuids.retired_evidence END",
            (contact.portfolio, bsuid, contact.id, state, now, now, channel_id, retired),
        )

    def bsuid_retired_at(self, portfolio: str, bsuid: str) -> str | None:
        row = self.one(
            "SELECT retired_evidence FROM contact_bsuids WHERE portfolio = ? AND bsuid = ?",
            (portfolio, bsuid),
        )
        return None if row is None or row[0] is None else str(row[0])

    def link_phone(
        self,
        contact: ContactRow,
        phone: str,
        now: str,
        channel_id: str,
        evidence: str | None = None,
    ) -> None:
        self.execute(
            "INSERT INTO contact_phones (portfolio, phone, contact_id, state, first_seen, "
            "last_seen, channel_id, evidence_at) VALUES (?, ?, ?, 'active', ?, ?, ?, ?)",
            (contact.portfolio, phone, contact.id, now, now, channel_id, evidence),
        )

    def end_phone(
        self,
        contact_id: str,
        phone: str,
        now: str,
        state: str,
        reason: str,
        evidence: str | None = None,
    ) -> None:
        self.execute(
            "UPDATE contact_phones SET state = ?, ended_at = ?, reason = ?, ended_evidence = ? "
            "WHERE contact_id = ? AND phone = ? AND state = 'active'",
            (state, now, reason, evidence, contact_id, phone),
        )

    def phone_owner_at(
        self, portfolio: str, phone: str, at: str, holding: Holding = "at"
    ) -> ContactRow | None:
        """Who held `phone` at event time `at` (rule 9; see `phone_holder_at`)."""
        rows = self.all(
            "SELECT contact_id, state, evidence_at, ended_evidence FROM contact_phones "
            "WHERE portfolio = ? AND phone = ? ORDER BY id",
            (portfolio, phone),
        )
        holder = phone_holder_at([tuple(r) for r in rows], at, holding)
        return self._follow(self.contact(holder)) if holder else None

    def phone_taught_after(self, portfolio: str, phone: str, at: str, contact_id: str) -> bool:
        """Did another contact get `phone` by evidence newer than `at` (rule 9)?"""
        row = self.one(
            "SELECT 1 FROM contact_phones WHERE portfolio = ? AND phone = ? "
            "AND contact_id <> ? AND evidence_at > ? LIMIT 1",
            (portfolio, phone, contact_id, at),
        )
        return row is not None

    def phone_known_since(self, contact_id: str, phone: str, at: str) -> None:
        """Older evidence that the contact held its active alias `phone`: it starts at `at`."""
        self.execute(
            "UPDATE contact_phones SET evidence_at = ? WHERE contact_id = ? AND phone = ? "
            "AND state = 'active' AND evidence_at > ?",
            (at, contact_id, phone, at),
        )

    def record_past_phone(
        self,
        contact: ContactRow,
        phone: str,
        now: str,
        channel_id: str,
        since: str,
        until: str,
        *,
        moved: bool = False,
    ) -> None:
        """A phone the contact had under a BSUID that is retired now, or (`moved`) until another
        contact took the number (both learned late). A dated `since` dates a span of the
        contact's own that nobody had dated (an identity change's previous number, `''`): rule 9
        weighs later holders against it."""
        if since:
            self.execute(
                "UPDATE contact_phones SET evidence_at = ? WHERE contact_id = ? AND phone = ? "
                "AND evidence_at = '' AND state <> 'active' AND ended_evidence >= ?",
                (since, contact.id, phone, since),
            )
        known = self.one(  # a span of the contact's own that already covers this one
            "SELECT 1 FROM contact_phones WHERE contact_id = ? AND phone = ? "
            "AND (evidence_at IS NULL OR evidence_at <= ?) "
            "AND (state = 'active' OR ended_evidence >= ?)",
            (contact.id, phone, since, until),
        )
        if known is None:
            self.execute(
                "INSERT INTO contact_phones (portfolio, phone, contact_id, state, first_seen, "
                "last_seen, ended_at, reason, channel_id, evidence_at, ended_evidence) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    contact.portfolio,
                    phone,
                    contact.id,
                    "moved" if moved else "retired",
                    now,
                    now,
                    now,
                    "moved to a newer holder" if moved else "identity changed",
                    channel_id,
                    since,
                    until,
                ),
            )

    def touch_identifiers(self, contact: ContactRow, now: str) -> None:
        if contact.bsuid:
            self.touch_bsuid(contact.portfolio, contact.bsuid, now)
        if contact.phone:
            self.execute(
                "UPDATE contact_phones SET last_seen = ? WHERE contact_id = ? AND phone = ? "
                "AND state = 'active'",
                (now, contact.id, contact.phone),
            )

    def touch_bsuid(self, portfolio: str, bsuid: str, now: str) -> None:
        self.execute(
            "UPDATE contact_bsuids SET last_seen = ? WHERE portfolio = ? AND bsuid = ?",
            (now, portfolio, bsuid),
        )

    def merge_rows(self, absorbed_id: str, survivor_id: str, now: str) -> None:
        """Rule 8: the absorbed contact's identifiers, history, events, conversations, sends and
        undelivered outbox rows now belong to the survivor (delivered rows stay as delivered)."""
        for table in ("contact_bsuids", "contact_phones", "contact_history", "events", "sends"):
            self.execute(
                f"UPDATE {table} SET contact_id = ? WHERE contact_id = ?",
                (survivor_id, absorbed_id),
            )
        self.execute(
            "UPDATE deliveries SET contact_id = ?, updated_at = ? WHERE contact_id = ? "
            "AND state IN ('pending', 'inflight', 'held')",
            (survivor_id, now, absorbed_id),
        )
        for channel_id, at in self.all(
            "SELECT channel_id, last_inbound_at FROM conversations WHERE contact_id = ?",
            (absorbed_id,),
        ):
            self.mark_inbound(survivor_id, channel_id, at)
        self.execute("DELETE FROM conversations WHERE contact_id = ?", (absorbed_id,))

    def add_history(self, contact_id: str, now: str, kind: str, detail: dict[str, Any]) -> None:
        self.execute(
            "INSERT INTO contact_history (contact_id, at, kind, detail) VALUES (?, ?, ?, ?)",
            (contact_id, now, kind, history_detail(detail)),
        )

    def contact_for_send(self, channel_id: str, provider_message_id: str) -> str | None:
        row = self.one(
            "SELECT contact_id FROM sends WHERE channel_id = ? AND provider_message_id = ?",
            (channel_id, provider_message_id),
        )
        return None if row is None else row[0]

    def mark_inbound(self, contact_id: str, channel_id: str, at: str) -> None:
        self.execute(
            "INSERT INTO conversations (contact_id, channel_id, last_inbound_at) VALUES (?, ?, ?) "
            "ON CONFLICT (contact_id, channel_id) DO UPDATE SET last_inbound_at = "
            "CASE WHEN excluded.last_inbound_at > conversations.last_inbound_at "
            "THEN excluded.last_inbound_at ELSE conversations.last_inbound_at END",
            (contact_id, channel_id, at),
        )

    def release_held(self, contact_id: str, phone: str, now: float, stamp: str) -> int:
        """Held deliveries of a contact that just gained a phone: pending, phone filled in."""
        rows = self.all(
            "SELECT d.id, COALESCE(d.body, e.body) FROM deliveries d "
            "JOIN events e ON e.seq = d.event_seq WHERE d.contact_id = ? AND d.state = 'held'",
            (contact_id,),
        )
        for delivery_id, body in rows:
            event = json.loads(body)
            event["data"]["contact"]["phone"] = phone
            self.execute(
                "UPDATE deliveries SET state = 'pending', body = ?, next_attempt_at = ?, "
                "updated_at = ? WHERE id = ?",
                (json.dumps(event, separators=(",", ":")), now, stamp, delivery_id),
            )
        return len(rows)

    # -- ingest -------------------------------------------------------------------------------
    def event_exists(self, event_id: str) -> bool:
        return self.one("SELECT 1 FROM events WHERE id = ?", (event_id,)) is not None

    def insert_raw(self, raw: RawRecord) -> None:
        self.execute(
            "INSERT INTO raw_payloads (id, channel_id, provider, received_at, content_type, body, "
            "state, reason, event_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                raw.id,
                raw.channel_id,
                raw.provider,
                raw.received_at,
                raw.content_type,
                raw.body,
                raw.state,
                raw.reason,
                raw.event_count,
            ),
        )

    def update_raw(self, raw_id: str, state: str, reason: str | None, event_count: int) -> None:
        self.execute(
            "UPDATE raw_payloads SET state = ?, reason = ?, event_count = ? WHERE id = ?",
            (state, reason, event_count, raw_id),
        )

    def insert_event(
        self, event: dict[str, Any], body: str, now: str, superseded: bool = False
    ) -> int:
        self.order_events()
        row = self.one(
            "INSERT INTO events (id, type, channel_id, contact_id, time, stored_at, raw_id, body, "
            "superseded) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
            (
                event["id"],
                event["type"],
                event["data"]["channel"]["id"],
                event["subject"],
                event["time"],
                now,
                event["data"]["raw_id"],
                body,
                1 if superseded else 0,
            ),
        )
        return int(row[0])

    def insert_delivery(
        self,
        event_seq: int,
        event_id: str,
        subscriber_id: str,
        contact_id: str,
        state: str,
        due: float,
        now: str,
    ) -> None:
        self.execute(
            "INSERT INTO deliveries (id, event_seq, event_id, subscriber_id, contact_id, state, "
            "next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (event_id, subscriber_id) DO NOTHING",
            (new_id("dlv"), event_seq, event_id, subscriber_id, contact_id, state, due, now, now),
        )

    def advance_status(
        self, channel_id: str, message_id: str, status: str, rank: int, stamp: str
    ) -> bool:
        """Record a message's status if it moves forward; False when it would move backwards."""
        row = self.one(
            "SELECT rank FROM message_status WHERE channel_id = ? AND message_id = ?",
            (channel_id, message_id),
        )
        if row is not None and (row[0] >= rank or row[0] >= TERMINAL_RANK):
            return False
        self.execute(
            "INSERT INTO message_status (channel_id, message_id, status, rank, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (channel_id, message_id) DO UPDATE SET "
            "status = excluded.status, rank = excluded.rank, updated_at = excluded.updated_at",
            (channel_id, message_id, status, rank, stamp),
        )
        return True
