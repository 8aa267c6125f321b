"""The life stories of `tests/identity/test_properties.py`, over SQL on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings

from bspgate.store.postgres import _migrate
from bspgate.store.sql import SqlTx
from tests.identity.test_properties import EXAMPLES, check, seeds

pytestmark = pytest.mark.postgres


@pytest.fixture
def conn(postgres_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """One connection on a migrated schema; each example runs in a transaction rolled back."""
    with psycopg.connect(postgres_dsn) as connection:
        with connection.transaction():
            _migrate(SqlTx(connection, "format"))
        yield connection


# the fixture is shared by every example on purpose: each story rolls its own transaction back
@settings(
    max_examples=max(EXAMPLES // 15, 20),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(seed=seeds)
def test_life_stories_hold_in_postgres(conn: psycopg.Connection[Any], seed: int) -> None:
    @contextmanager
    def open_tx() -> Iterator[SqlTx]:
        with conn.transaction(force_rollback=True):
            yield SqlTx(conn, "format")

    check(open_tx, seed)
