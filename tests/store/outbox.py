"""Outbox rows for store-level tests: events evt0..evtN-1, one per contact ct0..ctN-1."""

from __future__ import annotations

from bspgate.store.sql import SqlTx

NOW = "2026-04-02T10:00:00Z"


def pending_rows(tx: SqlTx, count: int) -> None:
    """`count` events, each with a pending delivery to `crm`, due at once."""
    for n in range(count):
        tx.execute(
            "INSERT INTO events (id, type, channel_id, contact_id, time, stored_at, raw_id, body) "
            "VALUES (?, 'whatsapp.message.received', 'ch', ?, ?, ?, 'raw', '{}')",
            (f"evt{n}", f"ct{n}", NOW, NOW),
        )
        seq = tx.one("SELECT seq FROM events WHERE id = ?", (f"evt{n}",))[0]
        tx.insert_delivery(seq, f"evt{n}", "crm", f"ct{n}", "pending", 0.0, NOW)
