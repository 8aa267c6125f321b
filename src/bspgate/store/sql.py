"""`SqlTx`: every SQL statement of bspgate, over a DB-API connection (sqlite3 or psycopg).

Queries are written once with `?` placeholders; the PostgreSQL backend rewrites them to `%s`.
The class implements `StoreTx` (identity and ingest, inside a transaction) and the dispatcher's
and read API's queries. It never commits: the backend that owns the connection decides that.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from bspgate.ids import new_id
from bspgate.store.base import ContactRow, DeliveryJob, RawRecord

_CONTACT_COLUMNS = "id, portfolio, bsuid, parent_bsuid, phone, username, name, merged_into"
OPEN_DELIVERY_STATES = ("pending", "inflight", "held")
TERMINAL_RANK = 100  # failed and deleted: nothing moves a message on from there


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


class SqlTx:
    """SQL over one connection. `paramstyle` is "qmark" (sqlite3) or "format" (psycopg)."""

    def __init__(self, conn: Any, paramstyle: str = "qmark") -> None:
        self.conn = conn
        self._format = paramstyle == "format"
        # the few statements spelled per database check this ("postgres" means psycopg)
        self.dialect = "postgres" if self._format else "sqlite"

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
        # A contact merged into another answers as the survivor.
        seen = 0
        while contact is not None and contact.merged_into and seen < 8:
            contact = self.contact(contact.merged_into)
            seen += 1
        return contact

    def contact(self, contact_id: str) -> ContactRow | None:
        return _contact(
            self.one(f"SELECT {_CONTACT_COLUMNS} FROM contacts WHERE id = ?", (contact_id,))
        )

    def contact_by_bsuid(self, portfolio: str, bsuid: str) -> ContactRow | None:
        row = self.one(
            f"SELECT {', '.join('c.' + c.strip() for c in _CONTACT_COLUMNS.split(','))} "
            "FROM contact_bsuids b JOIN contacts c ON c.id = b.contact_id "
            "WHERE b.portfolio = ? AND b.bsuid = ?",
            (portfolio, bsuid),
        )
        return self._follow(_contact(row))

    def contact_by_phone(self, portfolio: str, phone: str) -> ContactRow | None:
        row = self.one(
            f"SELECT {', '.join('c.' + c.strip() for c in _CONTACT_COLUMNS.split(','))} "
            "FROM contact_phones p JOIN contacts c ON c.id = p.contact_id "
            "WHERE p.portfolio = ? AND p.phone = ? AND p.state = 'active'",
            (portfolio, phone),
        )
        return self._follow(_contact(row))

    def create_contact(self, portfolio: str, now: str) -> ContactRow:
        contact = ContactRow(id=new_id("ct"), portfolio=portfolio)
        self.execute(
            "INSERT INTO contacts (id, portfolio, created_at, updated_at) VALUES (?, ?, ?, ?)",
            (contact.id, portfolio, now, now),
        )
        return contact

    def save_contact(self, contact: ContactRow, now: str) -> None:
        self.execute(
            "UPDATE contacts SET bsuid = ?, parent_bsuid = ?, phone = ?, username = ?, name = ?, "
            "merged_into = ?, updated_at = ? WHERE id = ?",
            (
                contact.bsuid,
                contact.parent_bsuid,
                contact.phone,
                contact.username,
                contact.name,
                contact.merged_into,
                now,
                contact.id,
            ),
        )

    def link_bsuid(
        self, contact: ContactRow, bsuid: str, now: str, channel_id: str, *, current: bool
    ) -> None:
        if current:
            self.execute(
                "UPDATE contact_bsuids SET state = 'retired' WHERE contact_id = ? AND bsuid <> ?",
                (contact.id, bsuid),
            )
        state = "current" if current else "retired"
        self.execute(
            "INSERT INTO contact_bsuids (portfolio, bsuid, contact_id, state, first_seen, "
            "last_seen, channel_id) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (portfolio, bsuid) DO UPDATE SET contact_id = excluded.contact_id, "
            "state = excluded.state, last_seen = excluded.last_seen",
            (contact.portfolio, bsuid, contact.id, state, now, now, channel_id),
        )

    def link_phone(self, contact: ContactRow, phone: str, now: str, channel_id: str) -> None:
        self.execute(
            "INSERT INTO contact_phones (portfolio, phone, contact_id, state, first_seen, "
            "last_seen, channel_id) VALUES (?, ?, ?, 'active', ?, ?, ?)",
            (contact.portfolio, phone, contact.id, now, now, channel_id),
        )

    def end_phone(self, contact_id: str, phone: str, now: str, state: str, reason: str) -> None:
        self.execute(
            "UPDATE contact_phones SET state = ?, ended_at = ?, reason = ? "
            "WHERE contact_id = ? AND phone = ? AND state = 'active'",
            (state, now, reason, contact_id, phone),
        )

    def touch_identifiers(self, contact: ContactRow, now: str) -> None:
        if contact.bsuid:
            self.execute(
                "UPDATE contact_bsuids SET last_seen = ? WHERE portfolio = ? AND bsuid = ?",
                (now, contact.portfolio, contact.bsuid),
            )
        if contact.phone:
            self.execute(
                "UPDATE contact_phones SET last_seen = ? WHERE contact_id = ? AND phone = ? "
                "AND state = 'active'",
                (now, contact.id, contact.phone),
            )

    def add_history(self, contact_id: str, now: str, kind: str, detail: dict[str, Any]) -> None:
        self.execute(
            "INSERT INTO contact_history (contact_id, at, kind, detail) VALUES (?, ?, ?, ?)",
            (contact_id, now, kind, json.dumps(detail, sort_keys=True)),
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

    # -- contacts (read API, erasure) ---------------------------------------------------------
    def contact_view(self, contact_id: str) -> dict[str, Any] | None:
        """A contact with its identifiers and their history, as the API answers it."""
        row = self.one(
            "SELECT id, portfolio, bsuid, parent_bsuid, phone, username, name, merged_into, "
            "created_at, updated_at, erased_at FROM contacts WHERE id = ?",
            (contact_id,),
        )
        if row is None:
            return None
        keys = (
            "id",
            "portfolio",
            "bsuid",
            "parent_bsuid",
            "phone",
            "username",
            "name",
            "merged_into",
            "created_at",
            "updated_at",
            "erased_at",
        )
        view: dict[str, Any] = dict(zip(keys, row, strict=True))
        view["bsuids"] = [
            dict(zip(("bsuid", "state", "first_seen", "last_seen", "channel_id"), r, strict=True))
            for r in self.all(
                "SELECT bsuid, state, first_seen, last_seen, channel_id FROM contact_bsuids "
                "WHERE contact_id = ? ORDER BY first_seen, bsuid",
                (contact_id,),
            )
        ]
        view["phones"] = [
            dict(
                zip(
                    (
                        "phone",
                        "state",
                        "first_seen",
                        "last_seen",
                        "ended_at",
                        "reason",
                        "channel_id",
                    ),
                    r,
                    strict=True,
                )
            )
            for r in self.all(
                "SELECT phone, state, first_seen, last_seen, ended_at, reason, channel_id "
                "FROM contact_phones WHERE contact_id = ? ORDER BY id",
                (contact_id,),
            )
        ]
        view["history"] = [
            {"at": at, "kind": kind, "detail": json.loads(detail)}
            for at, kind, detail in self.all(
                "SELECT at, kind, detail FROM contact_history WHERE contact_id = ? ORDER BY id",
                (contact_id,),
            )
        ]
        return view

    def find_contacts(
        self,
        *,
        bsuid: str | None = None,
        phone: str | None = None,
        username: str | None = None,
        portfolio: str | None = None,
    ) -> list[str]:
        """Contact ids by any identifier it ever had (old BSUIDs and past phones included)."""
        scope, params = ("", []) if portfolio is None else (" AND portfolio = ?", [portfolio])
        if bsuid is not None:
            sql = f"SELECT contact_id FROM contact_bsuids WHERE bsuid = ?{scope}"
            values: list[Any] = [bsuid, *params]
        elif phone is not None:
            # the active owner first, then contacts the phone belonged to before
            sql = (
                f"SELECT contact_id FROM contact_phones WHERE phone = ?{scope} "
                "ORDER BY CASE state WHEN 'active' THEN 0 ELSE 1 END, id DESC"
            )
            values = [phone, *params]
        elif username is not None:
            sql = f"SELECT id FROM contacts WHERE username = ?{scope} ORDER BY updated_at DESC"
            values = [username, *params]
        else:
            return []
        seen: list[str] = []
        for (contact_id,) in self.all(sql, values):
            if contact_id not in seen:
                seen.append(contact_id)
        return seen

    def erase_contact(self, contact_id: str, now: float, stamp: str) -> dict[str, int] | None:
        """Erasure on request: phone, names, usernames, message content and raw payloads go.

        Delivered events stay delivered; undelivered ones are cancelled so no erased data leaves
        after the request. BSUIDs stay (pseudonymous keys), so the contact id keeps working.
        """
        if self.contact(contact_id) is None:
            return None
        self.execute(
            "UPDATE contacts SET phone = NULL, username = NULL, name = NULL, erased_at = ?, "
            "updated_at = ? WHERE id = ?",
            (stamp, stamp, contact_id),
        )
        phones = self.execute("DELETE FROM contact_phones WHERE contact_id = ?", (contact_id,))
        self.execute(
            "UPDATE contact_history SET detail = '{}' WHERE contact_id = ? "
            "AND kind IN ('username_changed', 'name_changed')",
            (contact_id,),
        )
        events = self.all(
            "SELECT seq, body, raw_id FROM events WHERE contact_id = ?", (contact_id,)
        )
        raw_ids = set()
        for seq, body, raw_id in events:
            event = json.loads(body)
            data = event["data"]
            data["contact"].update(phone=None, username=None, name=None)
            message = data.get("message") or {}
            for key in ("text", "media", "location", "reply"):
                if key in message:
                    message[key] = None
            self.execute(
                "UPDATE events SET body = ? WHERE seq = ?",
                (json.dumps(event, separators=(",", ":")), seq),
            )
            raw_ids.add(raw_id)
        for raw_id in raw_ids:
            self.execute(
                "UPDATE raw_payloads SET body = ?, state = 'erased', reason = 'contact erased' "
                "WHERE id = ?",
                (b"", raw_id),
            )
        cancelled = self.execute(
            "UPDATE deliveries SET state = 'erased', body = NULL, updated_at = ? "
            "WHERE contact_id = ? AND state IN ('pending', 'held', 'inflight')",
            (stamp, contact_id),
        )
        summary = {
            "phones": phones.rowcount,
            "events": len(events),
            "raw_payloads": len(raw_ids),
            "deliveries_cancelled": cancelled.rowcount,
        }
        self.add_history(contact_id, stamp, "erased", summary)
        return summary

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

    # -- outbox ---------------------------------------------------------------------------------
    def claim_due(
        self,
        now: float,
        lease: float,
        limit: int,
        ordered: set[str],
        exclude: frozenset[str] = frozenset(),
    ) -> list[DeliveryJob]:
        """Pending rows whose time has come (or whose lease expired), oldest first.

        For subscribers in `ordered` (ordering: per_contact) a row waits while an earlier row for
        the same (subscriber, contact) is still open, so each contact's events arrive in order.
        """
        # Only the head of each ordered (subscriber, contact) queue qualifies, decided in SQL so
        # a long backlog behind one failing contact never hides other contacts' due rows.
        # Two queries, not one with OR: expired leases (few), then pending rows walked in
        # event_seq order on the (state, event_seq) index, stopping at `limit`. One OR query
        # made the database collect and sort every due row each round: O(backlog) per claim.
        rows = self._claim_candidates("d.state = 'inflight' AND d.lease_until <= ?", now, limit,
                                      ordered, exclude)  # fmt: skip
        if len(rows) < limit:
            rows += self._claim_candidates("d.state = 'pending' AND d.next_attempt_at <= ?", now,
                                           limit - len(rows), ordered, exclude)  # fmt: skip
        jobs: list[DeliveryJob] = []
        for row in rows:
            # the guard makes a claim race between replicas a no-op for the loser
            claimed = self.execute(
                "UPDATE deliveries SET state = 'inflight', lease_until = ? WHERE id = ? "
                "AND (state = 'pending' OR (state = 'inflight' AND lease_until <= ?))",
                (now + lease, row[0], now),
            )
            if claimed.rowcount == 1:
                jobs.append(DeliveryJob(row[0], row[1], row[2], row[3], int(row[4]), str(row[5])))
        return jobs

    def _claim_candidates(
        self, due: str, now: float, limit: int, ordered: set[str], exclude: frozenset[str]
    ) -> list[Any]:
        clauses = [due]
        params: list[Any] = [now]
        if exclude:
            clauses.append(f"d.subscriber_id NOT IN ({', '.join('?' * len(exclude))})")
            params.extend(sorted(exclude))
        if ordered:
            clauses.append(
                f"(d.subscriber_id NOT IN ({', '.join('?' * len(ordered))}) OR NOT EXISTS ("
                "SELECT 1 FROM deliveries p WHERE p.subscriber_id = d.subscriber_id "
                "AND p.contact_id = d.contact_id AND p.event_seq < d.event_seq "
                "AND p.state IN ('pending', 'inflight', 'held')))"
            )
            params.extend(sorted(ordered))
        params.append(limit)
        # PostgreSQL: replicas claim concurrently; SKIP LOCKED hands each one disjoint rows
        # (SQLite has a single writer, so nothing to lock). SQLite's planner, without
        # statistics, would pick deliveries_due and sort; the claim index walks in order.
        if self.dialect == "postgres":
            source, lock = "deliveries d", " FOR UPDATE OF d SKIP LOCKED"
        else:
            source, lock = "deliveries d INDEXED BY deliveries_claim", ""
        return self.all(
            "SELECT d.id, d.event_id, d.subscriber_id, d.contact_id, d.attempts, "
            f"COALESCE(d.body, e.body) FROM {source} JOIN events e ON e.seq = d.event_seq "
            f"WHERE {' AND '.join(clauses)} ORDER BY d.event_seq LIMIT ?{lock}",
            params,
        )

    # -- subscribers, replays ------------------------------------------------------------------
    def subscriber_states(self) -> dict[str, dict[str, Any]]:
        rows = self.all(
            "SELECT subscriber_id, disabled_at, reason, failing_since, updated_at "
            "FROM subscriber_state"
        )
        keys = ("disabled_at", "reason", "failing_since", "updated_at")
        return {row[0]: dict(zip(keys, row[1:], strict=True)) for row in rows}

    def _upsert_subscriber(
        self, subscriber_id: str, stamp: str, assignments: str, values: Sequence[Any]
    ) -> None:
        self.execute(
            "INSERT INTO subscriber_state (subscriber_id, updated_at) VALUES (?, ?) "
            "ON CONFLICT (subscriber_id) DO NOTHING",
            (subscriber_id, stamp),
        )
        self.execute(
            f"UPDATE subscriber_state SET {assignments}, updated_at = ? WHERE subscriber_id = ?",
            (*values, stamp, subscriber_id),
        )

    def disable_subscriber(self, subscriber_id: str, reason: str, stamp: str) -> None:
        self._upsert_subscriber(
            subscriber_id, stamp, "disabled_at = ?, reason = ?", (stamp, reason)
        )

    def enable_subscriber(self, subscriber_id: str, stamp: str) -> None:
        self._upsert_subscriber(
            subscriber_id, stamp, "disabled_at = NULL, reason = NULL, failing_since = NULL", ()
        )

    def subscriber_result(
        self, subscriber_id: str, ok: bool, now: float, stamp: str
    ) -> float | None:
        """Track sustained failure: answers since when the subscriber has been failing."""
        if ok:
            self.execute(
                "UPDATE subscriber_state SET failing_since = NULL, updated_at = ? "
                "WHERE subscriber_id = ? AND failing_since IS NOT NULL",
                (stamp, subscriber_id),
            )
            return None
        self._upsert_subscriber(
            subscriber_id, stamp, "failing_since = COALESCE(failing_since, ?)", (now,)
        )
        row = self.one(
            "SELECT failing_since FROM subscriber_state WHERE subscriber_id = ?", (subscriber_id,)
        )
        return None if row is None or row[0] is None else float(row[0])

    def replay_candidates(
        self,
        *,
        event_id: str | None,
        subscriber_id: str | None,
        type_: str | None,
        since: str | None,
        until: str | None,
        states: Sequence[str],
        limit: int,
    ) -> list[dict[str, Any]]:
        """Deliveries a replay would re-send: by event, subscriber, type and event-time window."""
        clauses, params = _filters(
            [f"d.state IN ({', '.join('?' * len(states))})"],
            list(states),
            (
                ("d.event_id = ?", event_id),
                ("d.subscriber_id = ?", subscriber_id),
                ("e.type = ?", type_),
                ("e.time >= ?", since),
                ("e.time < ?", until),
            ),
        )
        params.append(limit)
        rows = self.all(
            "SELECT d.id, d.event_id, d.subscriber_id, d.state, e.type, e.time "
            "FROM deliveries d JOIN events e ON e.seq = d.event_seq "
            f"WHERE {' AND '.join(clauses)} ORDER BY d.event_seq LIMIT ?",
            params,
        )
        keys = ("id", "event_id", "subscriber_id", "state", "type", "time")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def fan_out_missing(
        self,
        subscriber_id: str,
        *,
        event_id: str | None,
        type_: str | None,
        since: str | None,
        until: str | None,
        now: float,
        stamp: str,
        limit: int,
    ) -> int:
        """Outbox rows for stored events a subscriber never had (it was added later)."""
        clauses, params = _filters(
            [
                "e.superseded = 0",
                "NOT EXISTS (SELECT 1 FROM deliveries d "
                "WHERE d.event_id = e.id AND d.subscriber_id = ?)",
            ],
            [subscriber_id],
            (
                ("e.id = ?", event_id),
                ("e.type = ?", type_),
                ("e.time >= ?", since),
                ("e.time < ?", until),
            ),
        )
        params.append(limit)
        rows = self.all(
            f"SELECT e.seq, e.id, e.contact_id FROM events e WHERE {' AND '.join(clauses)} "
            "ORDER BY e.seq LIMIT ?",
            params,
        )
        for seq, event_id_, contact_id in rows:
            self.insert_delivery(seq, event_id_, subscriber_id, contact_id, "pending", now, stamp)
        return len(rows)

    def recover_inflight(self, now: float) -> int:
        """After a crash of the only process using this store: claims die with it, retry now."""
        cursor = self.execute(
            "UPDATE deliveries SET state = 'pending', lease_until = NULL, next_attempt_at = ? "
            "WHERE state = 'inflight'",
            (now,),
        )
        return int(cursor.rowcount)

    def expire_held(self, subscriber_id: str, held_since_before: float, stamp: str) -> int:
        """Held deliveries whose contact never gained a phone within the subscriber's hold_for."""
        cursor = self.execute(
            "UPDATE deliveries SET state = 'expired', last_error = 'no phone within hold_for', "
            "updated_at = ? WHERE subscriber_id = ? AND state = 'held' AND next_attempt_at < ?",
            (stamp, subscriber_id, held_since_before),
        )
        return int(cursor.rowcount)

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        if self._format:
            cursor = self.conn.cursor()
            try:
                cursor.executemany(sql.replace("?", "%s"), rows)
            finally:
                cursor.close()
        else:
            self.conn.executemany(sql, rows)

    def record_attempts(self, rows: Sequence[Sequence[Any]]) -> None:
        """(delivery_id, at, status, latency_ms, error) per attempt."""
        self.execute_many(
            "INSERT INTO attempts (delivery_id, at, status, latency_ms, error) "
            "VALUES (?, ?, ?, ?, ?)",
            rows,
        )

    def finish_deliveries(self, rows: Sequence[Sequence[Any]]) -> None:
        """(state, attempts, next_attempt_at, status, error, updated_at, id) per delivery."""
        self.execute_many(
            "UPDATE deliveries SET state = ?, attempts = ?, next_attempt_at = ?, "
            "lease_until = NULL, last_status = ?, last_error = ?, updated_at = ? WHERE id = ?",
            rows,
        )

    def record_attempt(
        self,
        delivery_id: str,
        at: str,
        status: int | None,
        latency_ms: float,
        error: str | None,
    ) -> None:
        self.execute(
            "INSERT INTO attempts (delivery_id, at, status, latency_ms, error) "
            "VALUES (?, ?, ?, ?, ?)",
            (delivery_id, at, status, latency_ms, error),
        )

    def finish_delivery(
        self,
        delivery_id: str,
        state: str,
        attempts: int,
        next_attempt_at: float,
        status: int | None,
        error: str | None,
        now: str,
    ) -> None:
        self.execute(
            "UPDATE deliveries SET state = ?, attempts = ?, next_attempt_at = ?, "
            "lease_until = NULL, "
            "last_status = ?, last_error = ?, updated_at = ? WHERE id = ?",
            (state, attempts, next_attempt_at, status, error, now, delivery_id),
        )

    def deliveries(
        self,
        *,
        state: str | None,
        subscriber_id: str | None,
        event_id: str | None,
        limit: int,
        delivery_id: str | None = None,
    ) -> list[dict[str, Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("state", state),
            ("subscriber_id", subscriber_id),
            ("event_id", event_id),
            ("id", delivery_id),
        ):
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        params.append(limit)
        rows = self.all(
            "SELECT id, event_id, subscriber_id, contact_id, state, attempts, next_attempt_at, "
            f"last_status, last_error, created_at, updated_at FROM deliveries {where} "
            "ORDER BY event_seq DESC LIMIT ?",
            params,
        )
        keys = (
            "id",
            "event_id",
            "subscriber_id",
            "contact_id",
            "state",
            "attempts",
            "next_attempt_at",
            "last_status",
            "last_error",
            "created_at",
            "updated_at",
        )
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def delivery(self, delivery_id: str) -> dict[str, Any] | None:
        rows = [
            d
            for d in self.deliveries(
                state=None, subscriber_id=None, event_id=None, limit=1, delivery_id=delivery_id
            )
        ]
        return rows[0] if rows else None

    def attempts(self, delivery_id: str) -> list[dict[str, Any]]:
        rows = self.all(
            "SELECT at, status, latency_ms, error FROM attempts WHERE delivery_id = ? ORDER BY id",
            (delivery_id,),
        )
        return [
            {"at": at, "status": status, "latency_ms": latency, "error": error}
            for at, status, latency, error in rows
        ]

    def requeue(self, delivery_ids: Sequence[str], now: float, stamp: str) -> int:
        count = 0
        for delivery_id in delivery_ids:
            cursor = self.execute(
                "UPDATE deliveries SET state = 'pending', next_attempt_at = ?, attempts = 0, "
                "updated_at = ? WHERE id = ? AND state IN ('dead', 'delivered', 'expired')",
                (now, stamp, delivery_id),
            )
            count += cursor.rowcount
        return count

    def oldest_undelivered(self) -> str | None:
        """When the oldest delivery still waiting (pending, in flight or held) was created."""
        row = self.one(
            "SELECT MIN(created_at) FROM deliveries WHERE state IN ('pending', 'inflight', 'held')"
        )
        return None if row is None or row[0] is None else str(row[0])

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for state, number in self.all("SELECT state, COUNT(*) FROM deliveries GROUP BY state"):
            out[f"deliveries_{state}"] = int(number)
        for state, number in self.all("SELECT state, COUNT(*) FROM raw_payloads GROUP BY state"):
            out[f"raw_{state}"] = int(number)
        return out

    # -- sends --------------------------------------------------------------------------------
    # Outbound sends (bspgate.outbound): addressing reads, the send record, idempotency keys.
    _SEND_COLUMNS = (
        "id, channel_id, contact_id, provider_message_id, idempotency_key, created_at, "
        "request, answer, provider, state, status, updated_at"
    )

    def phone_alias_state(self, portfolio: str, phone: str) -> tuple[str, str] | None:
        """(contact id, state) of a phone alias: the active row, else the latest ended one."""
        row = self.one(
            "SELECT contact_id, state FROM contact_phones WHERE portfolio = ? AND phone = ? "
            "ORDER BY CASE WHEN state = 'active' THEN 0 ELSE 1 END, id DESC LIMIT 1",
            (portfolio, phone),
        )
        return None if row is None else (str(row[0]), str(row[1]))

    def last_inbound_at(self, contact_id: str, channel_id: str) -> str | None:
        row = self.one(
            "SELECT last_inbound_at FROM conversations WHERE contact_id = ? AND channel_id = ?",
            (contact_id, channel_id),
        )
        return None if row is None else str(row[0])

    def _send_row(self, row: Sequence[Any] | None) -> dict[str, Any] | None:
        if row is None:
            return None
        keys = [c.strip() for c in self._SEND_COLUMNS.split(",")]
        return dict(zip(keys, row, strict=True))

    def send_by_key(self, key: str) -> dict[str, Any] | None:
        return self._send_row(
            self.one(f"SELECT {self._SEND_COLUMNS} FROM sends WHERE idempotency_key = ?", (key,))
        )

    def send_record(self, send_id: str) -> dict[str, Any] | None:
        return self._send_row(
            self.one(f"SELECT {self._SEND_COLUMNS} FROM sends WHERE id = ?", (send_id,))
        )

    def reserve_send(self, send: dict[str, Any]) -> bool:
        """Insert a pending send; False when its idempotency key is already taken."""
        cursor = self.execute(
            "INSERT INTO sends (id, channel_id, contact_id, provider_message_id, "
            "idempotency_key, created_at, request, answer, provider, state, status, updated_at) "
            "VALUES (?, ?, ?, NULL, ?, ?, ?, '', ?, 'pending', NULL, ?) "
            "ON CONFLICT (idempotency_key) DO NOTHING",
            (
                send["id"],
                send["channel_id"],
                send["contact_id"],
                send["idempotency_key"],
                send["created_at"],
                send["request"],
                send["provider"],
                send["created_at"],
            ),
        )
        return bool(cursor.rowcount == 1)

    def finish_send(
        self,
        send_id: str,
        *,
        contact_id: str | None,
        provider_message_id: str | None,
        state: str,
        status: int,
        answer: str,
        now: str,
        keep_key: bool = True,
    ) -> None:
        """Record the outcome; `keep_key=False` frees the idempotency key for a retry."""
        self.execute(
            "UPDATE sends SET contact_id = ?, provider_message_id = ?, state = ?, status = ?, "
            "answer = ?, updated_at = ?"
            + ("" if keep_key else ", idempotency_key = NULL")
            + " WHERE id = ?",
            (contact_id, provider_message_id, state, status, answer, now, send_id),
        )

    def release_send_key(self, send_id: str) -> None:
        """Forget an expired idempotency key (the send itself stays)."""
        self.execute("UPDATE sends SET idempotency_key = NULL WHERE id = ?", (send_id,))

    def status_event_bodies(self, channel_id: str, contact_ids: list[str]) -> list[str]:
        """Bodies of the status events of these contacts on a channel, oldest first."""
        if not contact_ids:
            return []
        marks = ", ".join("?" for _ in contact_ids)
        rows = self.all(
            f"SELECT body FROM events WHERE contact_id IN ({marks}) AND channel_id = ? "
            "AND type = 'whatsapp.message.status' ORDER BY seq",
            (*contact_ids, channel_id),
        )
        return [str(row[0]) for row in rows]
