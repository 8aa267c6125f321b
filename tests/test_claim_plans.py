"""The claim's per-contact order check probes the index of open deliveries on both databases.

A row is claimable only while no earlier row of its (subscriber, contact) is open. Probed on an
index of every row, that check costs more the longer a contact's history (and on PostgreSQL
the more versions each row left behind); `deliveries_open` holds open rows only (migration 009).
The plans are asserted because the answer is the same either way: only the cost differs.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest

from bspgate.store.migrate import apply_migrations
from bspgate.store.sql import SqlTx
from tests.store.pg import migrated_tx
from tests.store.recording import Recording


def test_sqlite_claim_probes_open_deliveries(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "gw.db", isolation_level=None)
    conn.execute("BEGIN")
    apply_migrations(SqlTx(conn), "sqlite")
    recording = Recording(conn)
    SqlTx(recording).claim_due(100.0, 60.0, 10, {"crm"}, subscriber_id="crm", token="t")
    conn.execute("COMMIT")
    plans = [
        " | ".join(str(row[3]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
        for sql, params in recording.seen
        if "NOT EXISTS" in sql
    ]
    assert plans
    for plan in plans:
        assert "SEARCH p USING INDEX deliveries_open" in plan
    conn.close()


@pytest.mark.postgres
def test_postgres_claim_probes_open_deliveries(postgres_dsn: str) -> None:
    with migrated_tx(postgres_dsn) as setup:
        setup.conn.commit()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        recording = Recording(conn)
        SqlTx(recording, "format").claim_lane(
            100.0, 60.0, 10, {"crm"}, subscriber_id="crm", owner="me", token="t"
        )
        sql, params = next(seen for seen in recording.seen if "NOT EXISTS" in seen[0])
        conn.execute("SET enable_seqscan = off")  # an empty table: ask for the index's plan
        plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + sql, params))
    assert "deliveries_open" in plan
    assert "deliveries_order" not in plan
