"""PostgreSQL backend: several gateway replicas share one database.

Same `SqlTx` statements as SQLite (placeholders rewritten to `%s`), over a psycopg 3 connection
pool; each transaction runs in a worker thread. Races between replicas are settled by the unique
constraints: a transaction that loses one (two replicas creating the same new contact) is retried
from the start, so no lock is ever held across network I/O. Dispatchers on different replicas
never claim the same row: `claim_due` updates a row only while it is still claimable, and the
update's row lock serializes the claim.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

import psycopg
import structlog
from psycopg_pool import ConnectionPool

from bspgate.errors import StoreError
from bspgate.store.migrate import LATEST, migrations
from bspgate.store.sql import SqlTx

T = TypeVar("T")
_RETRIES = 5
_MIGRATION_LOCK = 7_206_102_311  # pg_advisory_xact_lock key: one replica migrates at a time
_log = structlog.get_logger("bspgate.store")


class PostgresStore:
    """The shared store. `dsn` is a `postgresql://` URL."""

    def __init__(self, dsn: str, *, max_size: int = 8) -> None:
        self.dsn = dsn.replace("postgres://", "postgresql://", 1)
        self._pool: ConnectionPool | None = None
        self._max_size = max_size

    async def open(self) -> None:
        if self._pool is not None:
            return
        pool = ConnectionPool(self.dsn, min_size=1, max_size=self._max_size, open=False)
        try:
            await asyncio.to_thread(pool.open, True, 30.0)
        except Exception as exc:
            raise StoreError(f"cannot reach PostgreSQL: {exc}") from exc
        self._pool = pool
        await self.transaction(_migrate)

    async def close(self) -> None:
        if self._pool is not None:
            await asyncio.to_thread(self._pool.close)
            self._pool = None

    def _run(self, work: Callable[[SqlTx], T], read_only: bool) -> T:
        if self._pool is None:
            raise StoreError("the store is not open")
        for attempt in range(_RETRIES):
            try:
                with self._pool.connection() as conn, conn.transaction():
                    if read_only:
                        conn.execute("SET TRANSACTION READ ONLY")
                    return work(SqlTx(conn, "format"))
            except (psycopg.errors.UniqueViolation, psycopg.errors.SerializationFailure) as exc:
                if attempt == _RETRIES - 1:
                    raise StoreError(f"transaction kept conflicting: {exc}") from exc
                _log.info("store.retry_conflict", attempt=attempt + 1, error=type(exc).__name__)
            except psycopg.OperationalError as exc:
                raise StoreError(f"PostgreSQL failed: {exc}") from exc
        raise StoreError("unreachable")  # pragma: no cover

    async def transaction(self, work: Callable[[SqlTx], T]) -> T:
        return await asyncio.to_thread(self._run, work, False)

    async def read(self, work: Callable[[SqlTx], T]) -> T:
        return await asyncio.to_thread(self._run, work, True)

    def read_sync(self, work: Callable[[SqlTx], T]) -> T:
        return self._run(work, True)

    async def ping(self) -> bool:
        try:
            return await self.read(_schema_current)
        except Exception:  # the readiness probe reports, it does not raise
            return False


def _migrate(tx: SqlTx) -> None:
    tx.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
    tx.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
        "name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    done = {row[0] for row in tx.all("SELECT version FROM schema_migrations")}
    for migration in migrations("postgres"):
        if migration.version in done:
            continue
        for statement in migration.statements:
            tx.execute(statement)
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
            (migration.version, migration.name, datetime.now(UTC).isoformat()),
        )
        _log.info("store.migrated", version=migration.version, migration=migration.name)


def _schema_current(tx: SqlTx) -> bool:
    row = tx.one("SELECT MAX(version) FROM schema_migrations")
    return row is not None and row[0] == LATEST
