"""The claim's per-contact order check probes the index of open deliveries on both databases.

A row is claimable only while no earlier row of its (subscriber, contact) is open. Probed on an
index of every row, that check costs more the longer a contact's history (and on PostgreSQL
the more versions each row left behind); `deliveries_open` holds open rows only (migration 009).
The plans are asserted because the answer is the same either way: only the cost differs.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

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


@pytest.fixture
def migrated(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """An SQLite database with every migration applied (autocommit)."""
    conn = sqlite3.connect(tmp_path / "gw.db", isolation_level=None)
    conn.execute("BEGIN")
    apply_migrations(SqlTx(conn), "sqlite")
    conn.execute("COMMIT")
    yield conn
    conn.close()


def _plan(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> str:
    return " | ".join(str(row[3]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))


def _only_plan(conn: sqlite3.Connection, run: Callable[[SqlTx], object]) -> str:
    """The plan of the one statement `run` makes."""
    recording = Recording(conn)
    run(SqlTx(recording))
    ((sql, params),) = recording.seen
    return _plan(conn, sql, params)


def test_no_index_repeats_the_leading_columns_of_another(migrated: sqlite3.Connection) -> None:
    # every index is written on every insert: one whose columns lead another index of the same
    # table (deliveries_event before migration 010) costs each row a write and buys nothing
    conn = migrated
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    redundant = []
    for table in tables:
        indexes = {
            name: [col[2] for col in conn.execute(f"PRAGMA index_info('{name}')")]
            for _, name, _, _, partial in conn.execute(f"PRAGMA index_list('{table}')")
            if not partial  # a partial index covers other rows: no repeat of a full one
        }
        for name, columns in indexes.items():
            for other, wider in indexes.items():
                if other != name and wider[: len(columns)] == columns:
                    redundant.append(f"{name} {columns} leads {other} {wider}")
    assert redundant == []


def test_lookups_by_event_use_the_unique_index(migrated: sqlite3.Connection) -> None:
    for sql in (
        "SELECT id FROM deliveries WHERE event_id IN (?, ?)",  # the retention purge
        "SELECT 1 FROM events e WHERE NOT EXISTS (SELECT 1 FROM deliveries d "
        "WHERE d.event_id = e.id AND d.state IN ('pending', 'inflight', 'held'))",
    ):
        plan = _plan(migrated, sql, ["a"] * sql.count("?"))
        # the UNIQUE (event_id, subscriber_id) index, not one of its own
        assert "INDEX sqlite_autoindex_deliveries_2 (event_id=?" in plan, plan


def test_deliveries_of_one_event_in_one_state_search_the_event(
    migrated: sqlite3.Connection,
) -> None:
    # `GET /v1/deliveries?event_id=...&state=dead`: ordered by seq, SQLite walked every dead
    # row (deliveries_claim) looking for the event's few
    plan = _only_plan(
        migrated,
        lambda tx: tx.deliveries(state="dead", subscriber_id=None, event_id="evt_1", limit=50),
    )
    assert "INDEX sqlite_autoindex_deliveries_2 (event_id=?)" in plan, plan
    assert "TEMP B-TREE" not in plan, plan


def test_a_subscribers_backlog_is_counted_in_an_index(migrated: sqlite3.Connection) -> None:
    # `GET /v1/subscribers`, `bspgate subscribers list` and the console's overview: a dead-letter
    # queue of millions must be counted in `deliveries_lane`, not read row by row
    # (nothing open: no second statement, for the times of open rows)
    plan = _only_plan(migrated, lambda tx: tx.subscriber_backlog(["crm"]))
    assert "COVERING INDEX deliveries_lane (subscriber_id=? AND state=?)" in plan, plan
