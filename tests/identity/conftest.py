"""A `StoreTx` per backend: the in-memory one and SQL over a real SQLite file (and PostgreSQL)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bspgate.store.memory import MemoryTx
from bspgate.store.sql import SqlTx
from bspgate.store.sqlite import _migrate
from tests.conftest import BACKENDS
from tests.store.pg import migrated_tx


def sqlite_tx(path: Path) -> tuple[SqlTx, sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None)
    tx = SqlTx(conn)
    conn.execute("BEGIN")
    _migrate(tx)
    return tx, conn


@pytest.fixture(params=["memory", "sqlite", *BACKENDS[1:]])
def tx(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryTx()
        return
    if request.param == "postgres":
        with migrated_tx(request.getfixturevalue("postgres_dsn")) as pg_tx:
            yield pg_tx
        return
    store, conn = sqlite_tx(tmp_path / "identity.db")
    try:
        yield store
    finally:
        conn.execute("ROLLBACK")
        conn.close()
