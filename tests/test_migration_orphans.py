"""Migration 014: deliveries left behind by a retention purge that raced a replay are removed.

Before the purge locked its events (PostgreSQL), a replay could give a delivery to an event the
purge then deleted. That delivery could never be sent and held back its contact's later events
for good (per-contact order). Upgrading deletes such deliveries and their attempts, and nothing
else. The database is built at the current schema, the orphan written as the race left it, and
the migration applied again as an upgrade would.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bspgate.store.migrate import apply_migrations
from bspgate.store.sql import SqlTx
from tests.store.pg import migrated_tx

MIGRATION = "014_orphaned_deliveries"
STAMP = "2026-12-01T00:00:00+00:00"


def _story(tx: SqlTx, dialect: str) -> list[tuple[str, str]]:
    """One event with a delivered and a pending delivery, one pending delivery whose event the
    race deleted; the migration applied again. Returns the deliveries left (id, state)."""
    tx.execute(
        "INSERT INTO events (id, type, channel_id, contact_id, time, stored_at, raw_id, body) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        ("evt_kept", "whatsapp.message.received", "wa", "ct_a", STAMP, STAMP, "raw_1", "{}"),
    )
    rows = [
        ("dlv_kept", "evt_kept", "crm", "pending"),
        ("dlv_done", "evt_kept", "old", "delivered"),
        ("dlv_orphan", "evt_purged", "crm", "pending"),
    ]
    for delivery_id, event_id, subscriber_id, state in rows:
        tx.execute(
            "INSERT INTO deliveries (id, event_seq, event_id, subscriber_id, contact_id, state, "
            "next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (delivery_id, 1, event_id, subscriber_id, "ct_a", state, 0.0, STAMP, STAMP),
        )
        tx.execute(
            "INSERT INTO attempts (delivery_id, at, status, latency_ms, error) "
            "VALUES (?, ?, ?, ?, ?)",
            (delivery_id, STAMP, 503, 12.0, None),
        )
    tx.execute("DELETE FROM schema_migrations WHERE name = ?", (MIGRATION,))
    apply_migrations(tx, dialect)
    assert tx.one("SELECT COUNT(*) FROM schema_migrations WHERE name = ?", (MIGRATION,)) == (1,)
    kept = tx.all("SELECT delivery_id FROM attempts ORDER BY delivery_id")
    assert [row[0] for row in kept] == ["dlv_done", "dlv_kept"]
    return [(row[0], row[1]) for row in tx.all("SELECT id, state FROM deliveries ORDER BY id")]


def test_sqlite_upgrade_removes_deliveries_of_purged_events(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "gw.db", isolation_level=None)
    conn.execute("BEGIN")
    tx = SqlTx(conn)
    apply_migrations(tx, "sqlite")
    assert _story(tx, "sqlite") == [("dlv_done", "delivered"), ("dlv_kept", "pending")]
    conn.execute("COMMIT")
    conn.close()


@pytest.mark.postgres
def test_postgres_upgrade_removes_deliveries_of_purged_events(postgres_dsn: str) -> None:
    with migrated_tx(postgres_dsn) as tx:
        assert _story(tx, "postgres") == [("dlv_done", "delivered"), ("dlv_kept", "pending")]
