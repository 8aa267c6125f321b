"""The outbox: claims, attempts, outcomes, held deliveries, subscriber state and replays."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import orjson

from bspgate.store.base import DeliveryJob
from bspgate.store.sql_base import SqlBase, _filters

PROBE_AFTER = 2  # attempts a row must have had before a failing lane probes with it early


class OutboxQueries(SqlBase):
    """Statements mixed into `SqlTx`."""

    # -- outbox ---------------------------------------------------------------------------------
    def claim_due(
        self,
        now: float,
        lease: float,
        limit: int,
        ordered: set[str],
        exclude: frozenset[str] = frozenset(),
        *,
        subscriber_id: str | None = None,
        owner: str | None = None,
        token: str | None = None,
        probe: bool = False,
    ) -> list[DeliveryJob]:
        """Pending rows whose time has come (or whose lease expired), oldest first.

        For subscribers in `ordered` (ordering: per_contact) a row waits while an earlier row for
        the same (subscriber, contact) is still open, so each contact's events arrive in order.
        `subscriber_id` narrows the claim to one lane. A claim records `owner` (stable across a
        restart) and `token`: only an attempt holding the token may finish the row. `probe`
        claims the lane's oldest pending row even before it is due (a circuit breaker's probe).
        """
        # Only the head of each ordered (subscriber, contact) queue qualifies, decided in SQL so
        # a long backlog behind one failing contact never hides other contacts' due rows.
        # Two queries, not one with OR: expired leases (few), then pending rows walked in
        # event_seq order on an (…, state, event_seq) index, stopping at `limit`. One OR query
        # made the database collect and sort every due row each round: O(backlog) per claim.
        lane = (subscriber_id, ordered, exclude)
        rows = self._claim_candidates("d.state = 'inflight' AND d.lease_until <= ?", now, limit,
                                      *lane)  # fmt: skip
        if len(rows) < limit:
            # a probe takes a row whose short first retry is spent (it failed twice)
            due = f"d.state = 'pending' AND d.attempts >= {PROBE_AFTER} AND ? > 0" if probe else (
                "d.state = 'pending' AND d.next_attempt_at <= ?")  # fmt: skip
            rows += self._claim_candidates(due, now, limit - len(rows), *lane)
        if not rows:
            return []
        # one statement claims them all; the guard makes a claim race between replicas a no-op
        # for the loser, and RETURNING says which rows this claim won
        won = {
            row[0]
            for row in self.all(
                "UPDATE deliveries SET state = 'inflight', lease_until = ?, claim_owner = ?, "
                f"claim_token = ? WHERE id IN ({', '.join('?' * len(rows))}) "
                "AND (state = 'pending' OR (state = 'inflight' AND lease_until <= ?)) RETURNING id",
                (now + lease, owner, token, *(row[0] for row in rows), now),
            )
        }
        jobs: list[DeliveryJob] = []
        for row in rows:
            if row[0] in won:
                job = DeliveryJob(row[0], row[1], row[2], row[3], int(row[4]), str(row[5]))
                jobs.append(replace(job, token=token or "", due=float(row[6])))
        return jobs

    def _claim_candidates(
        self,
        due: str,
        now: float,
        limit: int,
        subscriber_id: str | None,
        ordered: set[str],
        exclude: frozenset[str],
    ) -> list[Any]:
        clauses = [due]
        params: list[Any] = [now]
        if subscriber_id is not None:
            clauses.insert(0, "d.subscriber_id = ?")
            params.insert(0, subscriber_id)
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
        # statistics, would pick deliveries_due and sort; the claim indexes walk in order.
        index = "deliveries_lane" if subscriber_id is not None else "deliveries_claim"
        if self.dialect == "postgres":
            source, lock = "deliveries d", " FOR UPDATE OF d SKIP LOCKED"
        else:
            source, lock = f"deliveries d INDEXED BY {index}", ""
        return self.all(
            "SELECT d.id, d.event_id, d.subscriber_id, d.contact_id, d.attempts, "
            f"COALESCE(d.body, e.body), d.next_attempt_at FROM {source} "
            f"JOIN events e ON e.seq = d.event_seq "
            f"WHERE {' AND '.join(clauses)} ORDER BY d.event_seq LIMIT ?{lock}",
            params,
        )

    def insert_operational_event(self, event: dict[str, Any], body: str, now: str) -> int:
        """A `bspgate.*` event (no channel, raw payload or real contact)."""
        row = self.one(
            "INSERT INTO events (id, type, channel_id, contact_id, time, stored_at, raw_id, body) "
            "VALUES (?, ?, '', ?, ?, ?, '', ?) RETURNING seq",
            (event["id"], event["type"], "bspgate", event["time"], now, body),
        )
        return int(row[0])

    def renew_leases(self, claims: Sequence[tuple[str, str]], until: float) -> int:
        """Extend the lease of (delivery_id, token) claims still held (long attempts)."""
        count = 0
        for delivery_id, token in claims:
            cursor = self.execute(
                "UPDATE deliveries SET lease_until = ? WHERE id = ? AND state = 'inflight' "
                "AND claim_token = ?",
                (until, delivery_id, token),
            )
            count += cursor.rowcount
        return count

    def reclaim_own(self, owner: str, now: float) -> int:
        """Claims `owner` held when it last stopped are dead (it is starting): due at once."""
        cursor = self.execute(
            "UPDATE deliveries SET state = 'pending', lease_until = NULL, claim_token = NULL, "
            "next_attempt_at = ? WHERE state = 'inflight' AND claim_owner = ?",
            (now, owner),
        )
        return int(cursor.rowcount)

    def pull_forward(self, subscriber_id: str, now: float, stamp: str) -> int:
        """Every pending delivery of a subscriber becomes due now (recovery, operator retry)."""
        cursor = self.execute(
            "UPDATE deliveries SET next_attempt_at = ?, updated_at = ? "
            "WHERE subscriber_id = ? AND state = 'pending' AND next_attempt_at > ?",
            (now, stamp, subscriber_id, now),
        )
        return int(cursor.rowcount)

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

    def clear_failing(self, subscriber_id: str, stamp: str) -> bool:
        """A success: True when it ends a failure streak (the subscriber just recovered)."""
        cursor = self.execute(
            "UPDATE subscriber_state SET failing_since = NULL, updated_at = ? "
            "WHERE subscriber_id = ? AND failing_since IS NOT NULL",
            (stamp, subscriber_id),
        )
        return int(cursor.rowcount) == 1

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
        accepts: Callable[[str, str, dict[str, Any]], bool] | None = None,
    ) -> int:
        """Outbox rows for stored events a subscriber never had (it was added later); with
        `accepts`, only for the events it accepts (type, channel, event)."""
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
            "SELECT e.seq, e.id, e.contact_id, e.type, e.channel_id, e.body FROM events e "
            f"WHERE {' AND '.join(clauses)} ORDER BY e.seq LIMIT ?",
            params,
        )
        added = 0
        for seq, event_id_, contact_id, type_, channel_id, body in rows:
            if accepts is not None and not accepts(type_, channel_id, orjson.loads(body)):
                continue
            self.insert_delivery(seq, event_id_, subscriber_id, contact_id, "pending", now, stamp)
            added += 1
        return added

    def recover_inflight(self, now: float) -> int:
        """After a crash of the only process using this store: claims die with it, retry now."""
        cursor = self.execute(
            "UPDATE deliveries SET state = 'pending', lease_until = NULL, claim_token = NULL, "
            "next_attempt_at = ? WHERE state = 'inflight'",
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
        """(state, attempts, next_attempt_at, status, error, updated_at, id, token) per delivery.

        A row is finished only while it is still in flight under the same claim token: an
        attempt whose lease expired (and whose row was claimed again) changes nothing.
        """
        self.execute_many(
            "UPDATE deliveries SET state = ?, attempts = ?, next_attempt_at = ?, "
            "lease_until = NULL, claim_token = NULL, last_status = ?, last_error = ?, "
            "updated_at = ? WHERE id = ? AND state = 'inflight' AND COALESCE(claim_token, '') = ?",
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
