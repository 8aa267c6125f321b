"""The console's own reads and the few writes no `/v1` operation covers, over a `SqlTx`.

Every list is bounded and walks an index in `seq` (or `id`) order, so a page costs about the same
with a thousand or a million stored events: events newest first with keyset (cursor) pagination
on `seq` (`events_type`, `events_contact`, and `events_channel`, `events_time` from migration
006), outbox counts per open state on `deliveries_due`, subscriber latencies from the most
recent attempts only. Console sessions (migration 012) are rows keyed by the SHA-256 of the id
in the cookie, so that signing out, on any replica, ends the session for every copy of it.
"""

from __future__ import annotations

import json
from typing import Any

OPEN_STATES = ("pending", "inflight", "held")
RECENT_ATTEMPTS = 5000
_FEW = 5000


# -- sessions (migration 012) --------------------------------------------------------------------
def start_session(
    tx: Any, digest: str, operator: str, now: float, idle: float, most: float
) -> None:
    """Record a new session; sessions idle for `idle` or older than `most` seconds go."""
    tx.execute(
        "DELETE FROM console_sessions WHERE seen_at < ? OR started_at < ?",
        (now - idle, now - most),
    )
    tx.execute(
        "INSERT INTO console_sessions (id, operator, started_at, seen_at) VALUES (?, ?, ?, ?)",
        (digest, operator, now, now),
    )


def session_record(tx: Any, digest: str) -> tuple[str, float, float] | None:
    """The session's operator, start and last activity (epoch seconds), or None when ended."""
    row = tx.one(
        "SELECT operator, started_at, seen_at FROM console_sessions WHERE id = ?", (digest,)
    )
    return None if row is None else (str(row[0]), float(row[1]), float(row[2]))


def touch_session(tx: Any, digest: str, now: float) -> None:
    tx.execute("UPDATE console_sessions SET seen_at = ? WHERE id = ?", (now, digest))


def end_session(tx: Any, digest: str) -> None:
    tx.execute("DELETE FROM console_sessions WHERE id = ?", (digest,))


# -- audit ---------------------------------------------------------------------------------------
def insert_audit(tx: Any, at: str, actor: str, action: str, target: str, detail: str) -> int:
    row = tx.one(
        "INSERT INTO console_audit (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?) "
        "RETURNING id",
        (at, actor, action, target, detail),
    )
    return int(row[0])


def audit_entries(tx: Any, limit: int = 200, before: int | None = None) -> list[dict[str, Any]]:
    where, params = ("WHERE id < ?", [before]) if before else ("", [])
    rows = tx.all(
        f"SELECT id, at, actor, action, target, detail FROM console_audit {where} "
        "ORDER BY id DESC LIMIT ?",
        [*params, limit],
    )
    keys = ("id", "at", "actor", "action", "target", "detail")
    return [{**dict(zip(keys, r, strict=True)), "detail": json.loads(r[5])} for r in rows]


# -- overview ----------------------------------------------------------------------------------
def outbox_summary(tx: Any, subscriber_ids: list[str]) -> dict[str, Any]:
    """Open and dead deliveries per subscriber and state, next attempt, oldest open row."""
    per: dict[str, dict[str, Any]] = tx.subscriber_backlog(subscriber_ids)
    totals: dict[str, int] = tx.outbox_totals()  # a subscriber no longer configured counts too
    quarantined = quarantined_count(tx)
    return {
        "per_subscriber": per,
        "totals": totals,
        "queue_depth": sum(totals[s] for s in OPEN_STATES),
        "quarantined": int(quarantined),
        # what /metrics reports: a removed subscriber's rows wait for no one (docs/delivery.md)
        "oldest_undelivered": tx.oldest_undelivered(subscriber_ids),
    }


def attempt_stats(tx: Any, limit: int = RECENT_ATTEMPTS) -> dict[str, dict[str, Any]]:
    """Success rate and p50/p99 latency per subscriber over the most recent attempts."""
    rows = tx.all(
        "SELECT d.subscriber_id, a.status, a.latency_ms FROM attempts a "
        "JOIN deliveries d ON d.id = a.delivery_id ORDER BY a.id DESC LIMIT ?",
        (limit,),
    )
    grouped: dict[str, list[tuple[Any, float]]] = {}
    for subscriber_id, status, latency in rows:
        grouped.setdefault(subscriber_id, []).append((status, float(latency)))
    out: dict[str, dict[str, Any]] = {}
    for subscriber_id, items in grouped.items():
        latencies = sorted(latency for _status, latency in items)
        ok = sum(1 for status, _latency in items if status is not None and 200 <= status < 300)
        out[subscriber_id] = {
            "attempts": len(items),
            "success_rate": ok / len(items),
            "p50_ms": _quantile(latencies, 0.50),
            "p99_ms": _quantile(latencies, 0.99),
        }
    return out


def _quantile(ordered: list[float], q: float) -> float:
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


# -- events ------------------------------------------------------------------------------------
EVENT_COLUMNS = ("seq", "id", "type", "channel_id", "contact_id", "time", "stored_at", "body")


def events_page(
    tx: Any,
    *,
    type_: str | None = None,
    channel_id: str | None = None,
    contact_id: str | None = None,
    since: str | None = None,
    until: str | None = None,
    before_seq: int | None = None,
    after_seq: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Events newest first (oldest first with `after_seq`, the live tail), keyset-paginated."""
    clauses: list[str] = []
    params: list[Any] = []
    for clause, value in (
        ("type = ?", type_),
        ("channel_id = ?", channel_id),
        ("contact_id = ?", contact_id),
        ("time >= ?", since),
        ("time < ?", until),
        ("seq < ?", before_seq),
        ("seq > ?", after_seq),
    ):
        if value is not None and value != "":
            clauses.append(clause)
            params.append(value)
    order = "ASC" if after_seq is not None else "DESC"
    # the live tail (`after_seq`) reads only the rows stored after its last one, by `seq`
    if after_seq is None and (since or until) and not (type_ or channel_id or contact_id):
        window = _window_seqs(tx, since, until)
        if window is not None:  # a small window: its seqs from the time index, then the page
            keep = [q for q in window if (before_seq is None or q < before_seq)
                    and (after_seq is None or q > after_seq)]  # fmt: skip
            keep = sorted(keep, reverse=order == "DESC")[:limit]
            if not keep:
                return []
            clauses, params = [f"seq IN ({', '.join('?' * len(keep))})"], list(keep)
    where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    source = "events"
    if tx.dialect == "sqlite" and (since or until) and not clauses[0].startswith("seq IN"):
        source = "events NOT INDEXED"  # a broad window: newest first by seq, stop at a page
    rows = tx.all(
        f"SELECT {', '.join(EVENT_COLUMNS)} FROM {source} {where} ORDER BY seq {order} LIMIT ?",
        [*params, limit],
    )
    return [dict(zip(EVENT_COLUMNS, row, strict=True)) for row in rows]


def _window_seqs(tx: Any, since: str | None, until: str | None) -> list[int] | None:
    """The seqs of the events in a time window when it holds at most `_FEW`, else None.

    Read in time order from the covering (time, seq) index, which both SQLite and PostgreSQL
    choose for `ORDER BY time LIMIT` whatever their statistics say; at most `_FEW + 1` entries.
    A broad window is better read newest first by `seq`: a page of it is found at once.
    """
    clauses = ["time >= ?"] if since else []
    clauses += ["time < ?"] if until else []
    values = [v for v in (since, until) if v]
    rows = tx.all(
        f"SELECT seq FROM events WHERE {' AND '.join(clauses)} ORDER BY time LIMIT {_FEW + 1}",
        values,
    )
    return None if len(rows) > _FEW else [int(r[0]) for r in rows]


def newest_seq(tx: Any) -> int:
    row = tx.one("SELECT MAX(seq) FROM events")
    return int(row[0] or 0)


def event_row(tx: Any, event_id: str) -> dict[str, Any] | None:
    row = tx.one(f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE id = ?", (event_id,))
    return None if row is None else dict(zip(EVENT_COLUMNS, row, strict=True))


# -- contacts ----------------------------------------------------------------------------------
def contacts_by_name(tx: Any, text: str, limit: int = 50) -> list[str]:
    pattern = "%" + text.lower().replace("%", "").replace("_", "") + "%"
    rows = tx.all(
        # the first matches, unsorted: a sort would read every matching contact
        "SELECT id FROM contacts WHERE LOWER(name) LIKE ? OR LOWER(username) LIKE ? LIMIT ?",
        (pattern, pattern, limit),
    )
    return [r[0] for r in rows]


def contact_sends(tx: Any, contact_id: str, limit: int = 50) -> list[dict[str, Any]]:
    keys = ("id", "channel_id", "provider_message_id", "created_at", "state", "status")
    rows = tx.all(
        f"SELECT {', '.join(keys)} FROM sends WHERE contact_id = ? "
        "ORDER BY created_at DESC LIMIT ?",
        (contact_id, limit),
    )
    return [dict(zip(keys, r, strict=True)) for r in rows]


def events_stored_at(tx: Any, contact_id: str, stamps: list[str]) -> dict[str, str]:
    """The first event of this contact stored at each of these times (what taught a change)."""
    if not stamps:
        return {}
    marks = ", ".join("?" for _ in stamps)
    rows = tx.all(
        f"SELECT stored_at, MIN(id) FROM events WHERE contact_id = ? AND stored_at IN ({marks}) "
        "GROUP BY stored_at",
        (contact_id, *stamps),
    )
    return {str(at): str(event_id) for at, event_id in rows}


# -- quarantine --------------------------------------------------------------------------------
QUARANTINE_COLUMNS = ("id", "channel_id", "provider", "received_at", "reason")


def quarantined_page(tx: Any, limit: int, before: str | None = None) -> list[dict[str, Any]]:
    """Quarantined payloads newest first (`raw_payloads_state`: state, received_at), a page at a
    time: `before` is the last payload of the page shown (keyset on received_at, then id); an
    id not stored starts at the newest."""
    clauses, params = ["state = 'quarantined'"], []
    anchor = (
        None
        if before is None
        else tx.one("SELECT received_at, id FROM raw_payloads WHERE id = ?", (before,))
    )
    if anchor is not None:
        clauses.append("(received_at < ? OR (received_at = ? AND id < ?))")
        params.extend([anchor[0], anchor[0], anchor[1]])
    rows = tx.all(
        f"SELECT {', '.join(QUARANTINE_COLUMNS)} FROM raw_payloads "
        f"WHERE {' AND '.join(clauses)} ORDER BY received_at DESC, id DESC LIMIT ?",
        [*params, limit],
    )
    return [dict(zip(QUARANTINE_COLUMNS, r, strict=True)) for r in rows]


def quarantined_count(tx: Any) -> int:
    return int(tx.one("SELECT COUNT(*) FROM raw_payloads WHERE state = 'quarantined'")[0])


# -- deliveries --------------------------------------------------------------------------------
def dead_groups(tx: Any, limit: int = 100) -> list[dict[str, Any]]:
    keys = ("subscriber_id", "error", "status", "count", "first", "last")
    rows = tx.all(
        "SELECT subscriber_id, COALESCE(last_error, ''), last_status, COUNT(*), "
        "MIN(updated_at), MAX(updated_at) FROM deliveries WHERE state = 'dead' "
        "GROUP BY subscriber_id, COALESCE(last_error, ''), last_status "
        "ORDER BY COUNT(*) DESC LIMIT ?",
        (limit,),
    )
    return [dict(zip(keys, r, strict=True)) for r in rows]


def dead_letters(
    tx: Any, *, subscriber_id: str | None, error: str | None, limit: int = 200
) -> list[dict[str, Any]]:
    clauses, params = ["d.state = 'dead'"], []
    if subscriber_id:
        clauses.append("d.subscriber_id = ?")
        params.append(subscriber_id)
    if error is not None:
        clauses.append("COALESCE(d.last_error, '') = ?")
        params.append(error)
    keys = (
        "id",
        "event_id",
        "subscriber_id",
        "last_status",
        "last_error",
        "attempts",
        "updated_at",
        "type",
    )
    rows = tx.all(
        "SELECT d.id, d.event_id, d.subscriber_id, d.last_status, d.last_error, d.attempts, "
        "d.updated_at, e.type FROM deliveries d JOIN events e ON e.seq = d.event_seq "
        f"WHERE {' AND '.join(clauses)} ORDER BY d.event_seq DESC LIMIT ?",
        [*params, limit],
    )
    return [dict(zip(keys, r, strict=True)) for r in rows]


def retry_pending_now(
    tx: Any, now: float, stamp: str, subscriber_id: str | None
) -> tuple[int, int]:
    """Pending deliveries waiting for a later retry become due now: how many moved, and how
    many were due already (overdue rows wait for their lane, not for a retry time)."""
    scope, params = ("AND subscriber_id = ?", [subscriber_id]) if subscriber_id else ("", [])
    due = tx.one(
        f"SELECT count(*) FROM deliveries WHERE state = 'pending' AND next_attempt_at <= ? {scope}",
        [now, *params],
    )
    cursor = tx.execute(
        "UPDATE deliveries SET next_attempt_at = ?, updated_at = ? "
        f"WHERE state = 'pending' AND next_attempt_at > ? {scope}",
        [now, stamp, now, *params],
    )
    return int(cursor.rowcount), int(due[0] if due else 0)
