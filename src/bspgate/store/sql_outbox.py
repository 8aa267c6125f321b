"""The outbox: claims, attempts, outcomes, held deliveries, subscriber state and replays."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from bspgate.store.base import BACKLOG_STATES, DeliveryJob, empty_backlog
from bspgate.store.sql_base import SqlBase, _filters

_BACKLOG = "(" + ", ".join(f"'{state}'" for state in BACKLOG_STATES) + ")"  # SQL IN list

# the candidate columns named, for the JSON aggregate of a SQLite claim
_AS = (
    "d.id AS id, d.event_id AS event_id, d.subscriber_id AS subscriber_id, "
    "d.contact_id AS contact_id, d.attempts AS attempts, COALESCE(d.body, e.body) AS body, "
    "d.next_attempt_at AS next_attempt_at"
)
PROBE_AFTER = 2  # attempts a row must have had before a failing lane probes with it early


def _no_earlier_open(dialect: str) -> str:
    """A claim's condition for per-contact order: no earlier open row of the same (subscriber,
    contact) as the candidate `d`. It probes `deliveries_open`, an index of open rows only, so
    its cost does not grow with the contact's history (migration 009).

    On PostgreSQL `OFFSET 0` keeps it a subquery run per candidate, an index probe. Without it
    the planner may turn it into an anti join, and a generic plan made while the outbox was
    small then scanned every row of the subscriber per candidate (claims of up to 123 ms at 700
    webhooks/s, measured: the backlog grew).
    """
    offset = " OFFSET 0" if dialect == "postgres" else ""
    return (
        "NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.subscriber_id = d.subscriber_id "
        "AND p.contact_id = d.contact_id AND p.event_seq < d.event_seq "
        f"AND p.state IN ('pending', 'inflight', 'held'){offset})"
    )


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
        # for the loser, and RETURNING says which rows this claim won. The guard is a CASE, not
        # `state = 'pending' OR (state = 'inflight' AND ...)`: with that OR and more than a few
        # ids SQLite's planner chose a MULTI-INDEX OR over deliveries_claim (state = ?), reading
        # every pending row of the outbox per claim (~180 µs per claimed row at a 20,000 row
        # backlog, against ~6 µs by primary key).
        guard = (
            "CASE state WHEN 'pending' THEN TRUE WHEN 'inflight' THEN lease_until <= ? "
            "ELSE FALSE END"
        )
        claim_set = "UPDATE deliveries SET state = 'inflight', lease_until = ?, claim_owner = ?, "
        if self.dialect == "postgres":
            won = {
                row[0]
                for row in self.all(
                    f"{claim_set}claim_token = ? WHERE id IN ({', '.join('?' * len(rows))}) "
                    f"AND {guard} RETURNING id",
                    (now + lease, owner, token, *(row[0] for row in rows), now),
                )
            }
        else:
            # SQLite: the ids as one JSON array and no RETURNING, so the claim is one step (see
            # _claim_candidates). The transaction holds the write lock since its BEGIN, so every
            # candidate is won unless a row changed under it, which the count would show.
            ids = orjson.dumps([row[0] for row in rows]).decode()
            cursor = self.execute(
                f"{claim_set}claim_token = ? WHERE id IN (SELECT value FROM json_each(?)) "
                f"AND {guard}",
                (now + lease, owner, token, ids, now),
            )
            if cursor.rowcount == len(rows):
                won = {row[0] for row in rows}
            else:
                won = {
                    row[0]
                    for row in self.all(
                        "SELECT id FROM deliveries WHERE id IN (SELECT value FROM json_each(?)) "
                        "AND state = 'inflight' AND claim_token IS ? AND lease_until = ?",
                        (ids, token, now + lease),
                    )
                }
        claim = token or ""
        return [
            DeliveryJob(
                row[0], row[1], row[2], row[3], int(row[4]), str(row[5]), claim, float(row[6])
            )
            for row in rows
            if row[0] in won
        ]

    def claim_lane(
        self,
        now: float,
        lease: float,
        limit: int,
        ordered: set[str],
        *,
        subscriber_id: str,
        owner: str,
        token: str,
    ) -> tuple[str | None, list[DeliveryJob]]:
        """One lane's plain claim (no probe): (the reason it is disabled, or None; its rows).

        What `subscriber_states` and `claim_due` answer together. On PostgreSQL it is ONE
        statement, run outside a transaction: a claim was six round trips (BEGIN, the state,
        expired leases, due rows, the update, COMMIT), each a wake-up of the server and of the
        dispatcher under load. The candidates are locked `SKIP LOCKED` as in `claim_due`, and
        the update's guard makes a race with another replica a no-op for the loser.
        """
        if self.dialect != "postgres":
            state = self.subscriber_states().get(subscriber_id) or {}
            if state.get("disabled_at"):
                return str(state.get("reason")), []
            return None, self.claim_due(
                now, lease, limit, ordered, subscriber_id=subscriber_id, owner=owner, token=token
            )
        # the head of each contact's queue only (as claim_due)
        waiting = f" AND {_no_earlier_open(self.dialect)}" if subscriber_id in ordered else ""

        def candidates(due: str, limit: str) -> str:
            return (
                f"SELECT d.id, d.event_seq FROM deliveries d WHERE d.subscriber_id = ? AND {due}"
                f"{waiting} AND NOT EXISTS (SELECT 1 FROM disabled) ORDER BY d.event_seq "
                f"LIMIT {limit} FOR UPDATE OF d SKIP LOCKED"
            )

        expired = candidates("d.state = 'inflight' AND d.lease_until <= ?", "?")
        # due rows fill what expired leases left: no row is locked that the claim cannot take
        # (another replica's claim skips locked rows)
        due = candidates(
            "d.state = 'pending' AND d.next_attempt_at <= ?",
            "GREATEST(? - (SELECT COUNT(*) FROM expired), 0)",
        )
        rows = self.all(
            "WITH disabled AS (SELECT reason FROM subscriber_state WHERE subscriber_id = ? "
            "AND disabled_at IS NOT NULL), "
            f"expired AS ({expired}), due AS ({due}), "
            # expired leases first, then due rows, each oldest first (as claim_due)
            "picked AS (SELECT id, k, event_seq FROM (SELECT id, 0 AS k, event_seq FROM expired "
            "UNION ALL SELECT id, 1, event_seq FROM due) c ORDER BY k, event_seq LIMIT ?), "
            "won AS (UPDATE deliveries d SET state = 'inflight', lease_until = ?, "
            "claim_owner = ?, claim_token = ? FROM picked p WHERE d.id = p.id AND CASE d.state "
            "WHEN 'pending' THEN TRUE WHEN 'inflight' THEN d.lease_until <= ? ELSE FALSE END "
            "RETURNING d.id, d.event_id, d.subscriber_id, d.contact_id, d.attempts, d.body, "
            "d.next_attempt_at, d.event_seq) "
            "SELECT w.id, w.event_id, w.subscriber_id, w.contact_id, w.attempts, "
            "COALESCE(w.body, e.body), w.next_attempt_at, p.k, p.event_seq, NULL "
            "FROM won w JOIN picked p ON p.id = w.id JOIN events e ON e.seq = w.event_seq "
            "UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, reason "
            "FROM disabled",
            (subscriber_id, subscriber_id, now, limit, subscriber_id, now, limit, limit,
             now + lease, owner, token, now),
        )  # fmt: skip
        for row in rows:
            if row[0] is None:
                return str(row[9]), []
        rows.sort(key=lambda row: (row[7], row[8]))
        return None, [
            DeliveryJob(
                row[0], row[1], row[2], row[3], int(row[4]), str(row[5]), token, float(row[6])
            )
            for row in rows
        ]

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
                f"(d.subscriber_id NOT IN ({', '.join('?' * len(ordered))}) OR "
                f"{_no_earlier_open(self.dialect)})"
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
        columns = (
            "d.id, d.event_id, d.subscriber_id, d.contact_id, d.attempts, "
            "COALESCE(d.body, e.body), d.next_attempt_at"
        )
        query = (
            f"SELECT {columns}, d.event_seq FROM {source} JOIN events e ON e.seq = d.event_seq "
            f"WHERE {' AND '.join(clauses)} ORDER BY d.event_seq LIMIT ?{lock}"
        )
        if self.dialect == "postgres":
            return self.all(query, params)
        # SQLite: the rows as one JSON array, one step. Each step of a statement gives the GIL
        # up and then waits to take it back from the busy event loop; row by row, a 64-row
        # claim waited ~20 ms on that (the dispatcher's lane stood idle meanwhile).
        row = self.one(
            "SELECT json_group_array(json_array(id, event_id, subscriber_id, contact_id, "
            f"attempts, body, next_attempt_at, event_seq)) FROM ({query.replace(columns, _AS)})",
            params,
        )
        found: list[list[Any]] = orjson.loads(row[0]) if row and row[0] else []
        found.sort(key=lambda item: item[7])  # event_seq order, whatever the aggregate's
        return found

    def insert_operational_event(self, event: dict[str, Any], body: str, now: str) -> int:
        """A `bspgate.*` event (no channel, raw payload or real contact).

        They share one pseudo contact, so a `per_contact` subscriber gets them in `seq` order.
        On PostgreSQL several transactions write them (each replica's recorder, processing,
        the drift reporter), and a sequence hands out numbers before commit: a later number
        could commit, and be delivered, first: `order_events` makes them commit in the order of
        their numbers, as every other event.
        """
        self.order_events()
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

    def subscriber_backlog(self, subscriber_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Open and dead deliveries of each subscriber: how many in each state, when the next
        pending one is due (epoch seconds) and when the oldest open one was created.

        Per subscriber, so the counts are read from `deliveries_lane` alone (a dead-letter
        queue of millions is counted in its index, not read row by row); the times come from
        the open rows only."""
        out: dict[str, dict[str, Any]] = {}
        for subscriber_id in subscriber_ids:
            entry = out[subscriber_id] = empty_backlog()
            for state, count in self.all(
                f"SELECT state, COUNT(*) FROM deliveries WHERE subscriber_id = ? AND state IN "
                f"{_BACKLOG} GROUP BY state",
                (subscriber_id,),
            ):
                entry[state] = int(count)
            if entry["pending"] or entry["inflight"] or entry["held"]:
                due, oldest = self.one(
                    "SELECT MIN(CASE WHEN state = 'pending' THEN next_attempt_at END), "
                    "MIN(created_at) FROM deliveries WHERE subscriber_id = ? AND state IN "
                    "('pending', 'inflight', 'held')",
                    (subscriber_id,),
                )
                entry["next_attempt_at"] = None if due is None else float(due)
                entry["oldest_open_at"] = None if oldest is None else str(oldest)
        return out

    def outbox_totals(self) -> dict[str, int]:
        """Open and dead deliveries by state, whichever subscriber (from `deliveries_claim`)."""
        totals = dict.fromkeys(BACKLOG_STATES, 0)
        for state, count in self.all(
            f"SELECT state, COUNT(*) FROM deliveries WHERE state IN {_BACKLOG} GROUP BY state"
        ):
            totals[state] = int(count)
        return totals

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

    def request_retry(self, subscriber_id: str, now: float, stamp: str) -> None:
        """An operator asked to retry the subscriber now: its lanes, in whichever process or
        replica they run, read it (`retry_requested`) and probe at once."""
        self._upsert_subscriber(subscriber_id, stamp, "retry_at = ?", (now,))

    def retry_requested(self, subscriber_id: str) -> float | None:
        """When an operator last asked to retry the subscriber now (None: never)."""
        row = self.one(
            "SELECT retry_at FROM subscriber_state WHERE subscriber_id = ?", (subscriber_id,)
        )
        return None if row is None or row[0] is None else float(row[0])

    def clear_failing(self, subscriber_id: str, stamp: str) -> float | None:
        """A success: when the failure streak it ends began (None: there was none)."""
        row = self.one(
            "SELECT failing_since FROM subscriber_state "
            "WHERE subscriber_id = ? AND failing_since IS NOT NULL",
            (subscriber_id,),
        )
        if row is None:
            return None
        self.execute(
            "UPDATE subscriber_state SET failing_since = NULL, updated_at = ? "
            "WHERE subscriber_id = ?",
            (stamp, subscriber_id),
        )
        return float(row[0])

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
        self, scope: ReplayScope, *, limit: int, configured: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """Deliveries a replay would re-send: by event, subscriber, type and event-time window;
        with `configured`, only those of these subscribers (the ones a lane runs for)."""
        clauses, params = scope.where()
        if configured is not None:
            clauses.append(_among("d.subscriber_id", configured))
            params.extend(configured)
        params.append(limit)
        rows = self.all(
            "SELECT d.id, d.event_id, d.subscriber_id, d.state, e.type, e.time "
            "FROM deliveries d JOIN events e ON e.seq = d.event_seq "
            f"WHERE {' AND '.join(clauses)} ORDER BY d.event_seq LIMIT ?",
            params,
        )
        keys = ("id", "event_id", "subscriber_id", "state", "type", "time")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def replay_skipped(self, scope: ReplayScope, *, configured: Sequence[str]) -> dict[str, int]:
        """What a replay's filter matches among subscribers NOT in `configured` (removed from
        the config): how many deliveries per subscriber, left as they are."""
        clauses, params = scope.where()
        clauses.append(f"NOT ({_among('d.subscriber_id', configured)})")
        params.extend(configured)
        rows = self.all(
            "SELECT d.subscriber_id, COUNT(*) FROM deliveries d JOIN events e ON "
            f"e.seq = d.event_seq WHERE {' AND '.join(clauses)} GROUP BY d.subscriber_id "
            "ORDER BY d.subscriber_id",
            params,
        )
        return {str(sub): int(count) for sub, count in rows}

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
        require_phone: bool = False,
        dry_run: bool = False,
    ) -> int:
        """Outbox rows for stored events a subscriber never had (it was added later); with
        `accepts`, only for the events it accepts (type, channel, event). With `require_phone`
        (the subscriber's), an event without the contact's phone is held as a new one would be,
        unless its contact has a phone by now: then it goes with the phone filled in.
        `dry_run`: only count the rows it would add."""
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
        # pages in event order until `limit` accepted events: the events it refuses get no row,
        # so a plain LIMIT would find them first on every run and never reach the ones behind.
        # PostgreSQL: read FOR SHARE, so retention cannot delete an event this adds a delivery
        # to (its purge locks the events it deletes FOR UPDATE: one waits for the other, see
        # sql_retention). Without the lock the delivery outlived its event, unsendable for good.
        share = " FOR SHARE OF e" if self.dialect == "postgres" and not dry_run else ""
        query = (
            "SELECT e.seq, e.id, e.contact_id, e.type, e.channel_id, e.body FROM events e "
            f"WHERE {' AND '.join(clauses)} AND e.seq > ? ORDER BY e.seq LIMIT ?{share}"
        )
        page = max(limit, 1_000) if accepts is not None else limit
        added, held, after = 0, set(), -1
        while added < limit:
            rows = self.all(query, [*params, after, page])
            for seq, event_id_, contact_id, type_, channel_id, body in rows:
                after = seq
                event = orjson.loads(body)
                if accepts is not None and not accepts(type_, channel_id, event):
                    continue
                added += 1
                if not dry_run:
                    state = "held" if require_phone and _lacks_phone(event) else "pending"
                    self.insert_delivery(
                        seq, event_id_, subscriber_id, contact_id, state, now, stamp
                    )
                    if state == "held":
                        held.add(contact_id)
                if added == limit:
                    break
            if len(rows) < page:
                break
        for contact_id in sorted(held):
            self._release_if_phone(contact_id, now, stamp)
        return added

    def _release_if_phone(self, contact_id: str, now: float, stamp: str) -> None:
        """Held rows of a contact that has a phone by now go out as holds do when it gains one
        (`release_held`: pending, the phone filled in); otherwise they stay held."""
        row = self.one("SELECT phone FROM contacts WHERE id = ?", (contact_id,))
        if row is not None and row[0]:
            self.release_held(contact_id, str(row[0]), now, stamp)

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

    def release_unrequired(self, subscriber_id: str, now: float, stamp: str) -> int:
        """Held deliveries of a subscriber that no longer requires a phone go out as they are."""
        cursor = self.execute(
            "UPDATE deliveries SET state = 'pending', next_attempt_at = ?, updated_at = ? "
            "WHERE subscriber_id = ? AND state = 'held'",
            (now, stamp, subscriber_id),
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
        if self.dialect == "postgres" and len(rows) > 1:
            # PostgreSQL: one statement over arrays, not one per row (fewer executor starts on
            # the server, one fixed statement text)
            ids, stamps, statuses, latencies, errors = _columns(rows)
            self.execute(
                "INSERT INTO attempts (delivery_id, at, status, latency_ms, error) "
                "SELECT * FROM unnest(?::text[], ?::text[], ?::int[], ?::float8[], ?::text[])",
                (ids, stamps, _ints(statuses), _floats(latencies), errors),
            )
            return
        if len(rows) > 1:
            # SQLite: one statement over a JSON array. executemany steps once per row, and each
            # step gives the GIL up and waits to take it back from a busy event loop (the
            # dispatcher's claims and records waited ~20 ms per transaction on that).
            items = ", ".join(_item("value", n) for n in range(5))
            self.execute(
                "INSERT INTO attempts (delivery_id, at, status, latency_ms, error) "
                f"SELECT {items} FROM json_each(?) ORDER BY key",
                (orjson.dumps(rows).decode(),),
            )
            return
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
        if self.dialect == "postgres" and len(rows) > 1:
            # one statement over arrays (as record_attempts). A delivery listed twice (a stale
            # attempt beside the current one) holds two tokens: only the current one matches.
            states, attempts, due, statuses, errors, stamps, ids, tokens = _columns(rows)
            self.execute(
                "UPDATE deliveries AS d SET state = v.state, attempts = v.attempts, "
                "next_attempt_at = v.due, lease_until = NULL, claim_token = NULL, "
                "last_status = v.status, last_error = v.error, updated_at = v.stamp "
                "FROM unnest(?::text[], ?::int[], ?::float8[], ?::int[], ?::text[], ?::text[], "
                "?::text[], ?::text[]) AS v(state, attempts, due, status, error, stamp, id, token) "
                "WHERE d.id = v.id AND d.state = 'inflight' "
                "AND COALESCE(d.claim_token, '') = v.token",
                (states, _ints(attempts), _floats(due), _ints(statuses), errors, stamps, ids,
                 tokens),
            )  # fmt: skip
            return
        if len(rows) > 1:
            # SQLite: one statement over a JSON array (as record_attempts). `+state`: without
            # it the planner walked deliveries_claim over every in-flight row per array item.
            v = [_item("v.value", n) for n in range(8)]
            self.execute(
                f"UPDATE deliveries SET state = {v[0]}, attempts = {v[1]}, "
                f"next_attempt_at = {v[2]}, lease_until = NULL, claim_token = NULL, "
                f"last_status = {v[3]}, last_error = {v[4]}, updated_at = {v[5]} "
                f"FROM json_each(?) AS v WHERE deliveries.id = {v[6]} AND +deliveries.state = "
                f"'inflight' AND COALESCE(deliveries.claim_token, '') = {v[7]}",
                (orjson.dumps(rows).decode(),),
            )
            return
        self.execute_many(
            "UPDATE deliveries SET state = ?, attempts = ?, next_attempt_at = ?, "
            "lease_until = NULL, claim_token = NULL, last_status = ?, last_error = ?, "
            "updated_at = ? WHERE id = ? AND state = 'inflight' AND COALESCE(claim_token, '') = ?",
            rows,
        )

    def record_delivered(
        self,
        attempts: Sequence[Sequence[Any]],
        finished: Sequence[Sequence[Any]],
        subscribers: Sequence[str],
    ) -> bool:
        """A round where every attempt was delivered: its attempts (as `record_attempts`) and
        outcomes (as `finish_deliveries`), written only while none of `subscribers` is
        failing in the store. Answers False, having written nothing, when one is: a success
        then ends a failure streak, and the full record (`clear_failing`, `pull_forward`, the
        recovered event) must run in a transaction.

        On PostgreSQL it is ONE statement, run outside a transaction (the full record was five
        round trips: BEGIN, attempts, outcomes, the failure streak, COMMIT). Every part reads
        the same snapshot, so the guard and the writes agree.
        """
        if self.dialect != "postgres":
            if self._failing(subscribers):
                return False
            self.record_attempts(attempts)
            self.finish_deliveries(finished)
            return True
        ids, stamps, statuses, latencies, errors = _columns(attempts)
        states, counts, due, codes, reasons, updated, rows, tokens = _columns(finished)
        row = self.one(
            "WITH failing AS (SELECT 1 FROM subscriber_state WHERE subscriber_id = ANY(?::text[]) "
            "AND failing_since IS NOT NULL), "
            "tried AS (INSERT INTO attempts (delivery_id, at, status, latency_ms, error) "
            "SELECT * FROM unnest(?::text[], ?::text[], ?::int[], ?::float8[], ?::text[]) "
            "WHERE NOT EXISTS (SELECT 1 FROM failing)), "
            "done AS (UPDATE deliveries AS d SET state = v.state, attempts = v.attempts, "
            "next_attempt_at = v.due, lease_until = NULL, claim_token = NULL, "
            "last_status = v.status, last_error = v.error, updated_at = v.stamp "
            "FROM unnest(?::text[], ?::int[], ?::float8[], ?::int[], ?::text[], ?::text[], "
            "?::text[], ?::text[]) AS v(state, attempts, due, status, error, stamp, id, token) "
            "WHERE d.id = v.id AND d.state = 'inflight' "
            "AND COALESCE(d.claim_token, '') = v.token AND NOT EXISTS (SELECT 1 FROM failing)) "
            "SELECT NOT EXISTS (SELECT 1 FROM failing)",
            (list(subscribers), ids, stamps, _ints(statuses), _floats(latencies), errors,
             states, _ints(counts), _floats(due), _ints(codes), reasons, updated, rows, tokens),
        )  # fmt: skip
        return bool(row and row[0])

    def _failing(self, subscribers: Sequence[str]) -> bool:
        marks = ", ".join("?" * len(subscribers))
        return (
            self.one(
                f"SELECT 1 FROM subscriber_state WHERE subscriber_id IN ({marks}) "
                "AND failing_since IS NOT NULL LIMIT 1",
                tuple(subscribers),
            )
            is not None
        )

    def cancel_erased(self, delivery_ids: Sequence[str], stamp: str) -> set[str]:
        """Of `delivery_ids` (just recorded as not delivered, or released unsent), those that
        were in flight when their contact was erased (`erase_contact` marks them and lets
        them finish): erased now, never retried. Answers their ids."""
        if not delivery_ids:
            return set()
        ids = sorted(set(delivery_ids))
        found = [
            str(row[0])
            for row in self.all(
                f"SELECT id FROM deliveries WHERE {_among('id', ids)} "
                "AND state IN ('pending', 'dead') AND erased_in_flight = 1",
                ids,
            )
        ]
        if found:
            self.execute(
                "UPDATE deliveries SET state = 'erased', body = NULL, lease_until = NULL, "
                f"claim_token = NULL, updated_at = ? WHERE {_among('id', found)}",
                (stamp, *found),
            )
        return set(found)

    def release_claims(self, rows: Sequence[tuple[str, str]]) -> None:
        """(delivery_id, token) claims given back unsent: pending again with the attempts and
        due time they had (a dispatcher claimed ahead, then was paused by a 429 or stopped)."""
        self.execute_many(
            "UPDATE deliveries SET state = 'pending', lease_until = NULL, claim_token = NULL "
            "WHERE id = ? AND state = 'inflight' AND COALESCE(claim_token, '') = ?",
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
        # one event's rows share its seq: ordered by subscriber, they come straight from the
        # UNIQUE (event_id, subscriber_id) index (by seq, SQLite walked every row in `state`)
        order = "subscriber_id" if event_id else "event_seq DESC"
        rows = self.all(
            "SELECT id, event_id, subscriber_id, contact_id, state, attempts, next_attempt_at, "
            f"last_status, last_error, created_at, updated_at FROM deliveries {where} "
            f"ORDER BY {order} LIMIT ?",
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

    def requeue(
        self,
        delivery_ids: Sequence[str],
        now: float,
        stamp: str,
        configured: Sequence[str] | None = None,
    ) -> int:
        """Dead, delivered or expired deliveries go again, their attempts reset. An expired one
        was held until its subscriber's `hold_for` ran out (`require_phone`, and its contact had
        no phone): it goes as a new one would, held again while the contact still has no phone,
        else pending with the phone filled in. With `configured`, only the deliveries of these
        subscribers (no lane runs for another: its row would wait for good)."""
        if configured is not None and delivery_ids:
            ids = list(delivery_ids)
            delivery_ids = [
                str(row[0])
                for row in self.all(
                    f"SELECT id FROM deliveries WHERE {_among('id', ids)} "
                    f"AND {_among('subscriber_id', configured)}",
                    [*ids, *configured],
                )
            ]
        count = 0
        for delivery_id in delivery_ids:
            cursor = self.execute(
                "UPDATE deliveries SET state = 'pending', next_attempt_at = ?, attempts = 0, "
                "erased_in_flight = NULL, updated_at = ? WHERE id = ? "
                "AND state IN ('dead', 'delivered')",
                (now, stamp, delivery_id),
            )
            if not cursor.rowcount:
                cursor = self._requeue_expired(delivery_id, now, stamp)
            count += cursor.rowcount
        return count

    def _requeue_expired(self, delivery_id: str, now: float, stamp: str) -> Any:
        row = self.one(
            "SELECT d.contact_id, COALESCE(d.body, e.body) FROM deliveries d "
            "JOIN events e ON e.seq = d.event_seq WHERE d.id = ? AND d.state = 'expired'",
            (delivery_id,),
        )
        held = row is not None and _lacks_phone(orjson.loads(row[1]))
        cursor = self.execute(
            "UPDATE deliveries SET state = ?, next_attempt_at = ?, attempts = 0, updated_at = ? "
            "WHERE id = ? AND state = 'expired'",
            ("held" if held else "pending", now, stamp, delivery_id),
        )
        if held and row is not None:
            self._release_if_phone(row[0], now, stamp)
        return cursor

    def oldest_undelivered(self, subscriber_ids: Sequence[str] | None = None) -> str | None:
        """When the oldest delivery still waiting (pending, in flight or held) was created; with
        `subscriber_ids` (the configured ones), only theirs. A subscriber removed from the config
        keeps its open rows, but nothing will send them: they are not waiting for anyone."""
        where, params = "", list(subscriber_ids or ())
        if subscriber_ids is not None:
            if not params:
                return None
            where = f" AND subscriber_id IN ({', '.join('?' for _ in params)})"
        row = self.one(
            "SELECT MIN(created_at) FROM deliveries WHERE state IN ('pending', 'inflight', 'held')"
            f"{where}",
            params,
        )
        return None if row is None or row[0] is None else str(row[0])

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for state, number in self.all("SELECT state, COUNT(*) FROM deliveries GROUP BY state"):
            out[f"deliveries_{state}"] = int(number)
        for state, number in self.all("SELECT state, COUNT(*) FROM raw_payloads GROUP BY state"):
            out[f"raw_{state}"] = int(number)
        return out


@dataclass(frozen=True)
class ReplayScope:
    """What a replay names: deliveries in `states`, by event, subscriber, type and event-time
    window (a None field does not filter)."""

    event_id: str | None
    subscriber_id: str | None
    type_: str | None
    since: str | None
    until: str | None
    states: Sequence[str]

    def where(self) -> tuple[list[str], list[Any]]:
        """WHERE clauses over `deliveries d JOIN events e`, and their parameters."""
        return _filters(
            [f"d.state IN ({', '.join('?' * len(self.states))})"],
            list(self.states),
            (
                ("d.event_id = ?", self.event_id),
                ("d.subscriber_id = ?", self.subscriber_id),
                ("e.type = ?", self.type_),
                ("e.time >= ?", self.since),
                ("e.time < ?", self.until),
            ),
        )


def _among(column: str, values: Sequence[str]) -> str:
    """`column IN (?, …)` for `values` (false for none: SQL has no empty IN list)."""
    if not values:
        return "1 = 0"
    return f"{column} IN ({', '.join('?' * len(values))})"


def _lacks_phone(event: dict[str, Any]) -> bool:
    """An event about a contact whose phone it does not carry (what `require_phone` holds)."""
    contact = (event.get("data") or {}).get("contact")
    return isinstance(contact, dict) and not contact.get("phone")


def _columns(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Rows as columns (one array parameter each)."""
    return [list(column) for column in zip(*rows, strict=True)]


def _ints(values: list[Any]) -> list[int | None]:
    # one Python type per array: psycopg picks the array's type from its elements
    return [None if value is None else int(value) for value in values]


def _floats(values: list[Any]) -> list[float | None]:
    return [None if value is None else float(value) for value in values]


def _item(array: str, index: int) -> str:
    """SQLite: element `index` of a JSON array (json_extract: any SQLite with JSON1)."""
    return f"json_extract({array}, '$[{index}]')"
