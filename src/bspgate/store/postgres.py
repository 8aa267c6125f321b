"""PostgreSQL backend: several gateway replicas share one database.

Same `SqlTx` statements as SQLite (placeholders rewritten to `%s`), over a psycopg 3 connection
pool; each transaction runs in one of the store's own worker threads (as many as the pool has
connections, so a thread never waits for a connection).

Concurrency between replicas (and between the threads of one replica):

- Transactions run at REPEATABLE READ. A transaction that read a row another transaction then
  changed (two replicas updating one contact, or both creating the contact of one new BSUID, where
  `INSERT ... ON CONFLICT DO UPDATE` meets a row its snapshot cannot see) fails with a
  serialization error instead of silently overwriting the other's work, as READ COMMITTED would.
  Unique constraints settle the rest (one active owner per phone). The loser is retried from the
  start after a short jittered pause, so no lock is ever held across network I/O and each
  transaction sees the winner's rows on its next try: one contact, whatever the interleaving.
- Dispatchers claim with `SELECT ... FOR UPDATE OF d SKIP LOCKED` (`SqlTx.claim_due`): two
  replicas claiming at once get disjoint rows, and the guarded UPDATE makes a lost race a no-op.
- Reads (`read`, `read_sync`) run in a transaction that is always rolled back, as SQLite's
  reader does: one consistent snapshot per call, and nothing a read does persists.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import psycopg
import structlog
from psycopg_pool import ConnectionPool

from bspgate.errors import StoreConflict, StoreError
from bspgate.store.base import LINGER_BELOW, RawRecord
from bspgate.store.migrate import apply_migrations, schema_current
from bspgate.store.sql import SqlTx
from bspgate.store.sql_batch import ROWS

T = TypeVar("T")
_RETRIES = 10
_MIGRATION_LOCK = 7_206_102_311  # pg_advisory_xact_lock key: one replica migrates at a time
# Errors that mean "another transaction won this race; run again from the start".
_CONFLICTS = (
    psycopg.errors.UniqueViolation,
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
)
_log = structlog.get_logger("bspgate.store")


def _configure(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ


class PostgresStore:
    """The shared store. `dsn` is a `postgresql://` URL; `max_size` connections (and threads)."""

    def __init__(
        self,
        dsn: str,
        *,
        max_size: int = 8,
        connect_timeout: float = 30.0,
        linger: float = 0.0,
    ) -> None:
        """`linger` (`serve`: `base.ACCEPT_LINGER`): a flush that finds fewer than `LINGER_BELOW`
        webhooks waiting waits this many seconds for more to share its transaction."""
        self._linger = linger
        self.dsn = dsn.replace("postgres://", "postgresql://", 1)
        self._connect_timeout = connect_timeout  # how long open() waits for the server
        self._pool: ConnectionPool | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._max_size = max_size
        self.conflicts = 0  # transactions retried after losing a race (for tests and metrics)
        self._accepts: list[tuple[RawRecord, asyncio.Future[None]]] = []
        self._flushers = 0
        self._listener: psycopg.Connection[tuple[object, ...]] | None = None

    async def open(self) -> None:
        if self._pool is not None:
            return
        pool = ConnectionPool(
            self.dsn,
            min_size=min(2, self._max_size),
            max_size=self._max_size,
            open=False,
            configure=_configure,
            name="bspgate",
        )
        try:
            await asyncio.to_thread(pool.open, True, self._connect_timeout)
        except Exception as exc:
            await asyncio.to_thread(pool.close)
            raise StoreError(f"cannot reach PostgreSQL: {exc}") from exc
        self._pool = pool
        self._executor = ThreadPoolExecutor(self._max_size, thread_name_prefix="bspgate-pg")
        try:
            await asyncio.to_thread(self._migrate)
        except BaseException:
            await self.close()
            raise

    def _migrate(self) -> None:
        # Its own READ COMMITTED connection: a replica that waited for the migration lock must
        # see the versions the lock holder committed, which a REPEATABLE READ snapshot taken
        # before the wait would hide (it would then re-run them and fail).
        try:
            with psycopg.connect(self.dsn) as conn, conn.transaction():
                _migrate(SqlTx(conn, "format"))
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL migration failed: {exc}") from exc

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                listener.cancel_safe()
                listener.close()
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, True)
            self._executor = None
        if self._pool is not None:
            await asyncio.to_thread(self._pool.close)
            self._pool = None

    def _run(self, work: Callable[[SqlTx], T], read_only: bool, alone: bool = False) -> T:
        if self._pool is None:
            raise StoreError("the store is not open")
        for attempt in range(_RETRIES):
            try:
                with self._pool.connection() as conn:
                    if alone:
                        return _autocommitted(conn, work)
                    with conn.transaction(force_rollback=read_only):
                        return work(SqlTx(conn, "format"))
            except _CONFLICTS as exc:
                if attempt == _RETRIES - 1:
                    what = f"transaction kept conflicting ({type(exc).__name__}): {exc}"
                    if isinstance(exc, psycopg.errors.UniqueViolation):
                        raise StoreConflict(what) from exc  # the work's own key, run after run
                    raise StoreError(what) from exc  # lost races: wait, then run it again
                self.conflicts += 1
                _log.debug("store.retry_conflict", attempt=attempt + 1, error=type(exc).__name__)
                # jittered, growing pause: racing replicas retry out of step
                time.sleep(random.uniform(0, 0.002 * 2**attempt))  # noqa: S311 (not crypto)
            except psycopg.OperationalError as exc:
                raise StoreError(f"PostgreSQL failed: {exc}") from exc
        raise StoreError("unreachable")  # pragma: no cover

    async def _submit(self, work: Callable[[SqlTx], T], read_only: bool, alone: bool = False) -> T:
        if self._executor is None:
            raise StoreError("the store is not open")
        call = functools.partial(self._run, work, read_only, alone)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def statement(self, work: Callable[[SqlTx], T]) -> T:
        """`work` that runs ONE statement: outside a transaction (autocommit), which saves the
        BEGIN and the COMMIT, two of its three round trips. A single statement is atomic alone."""
        return await self._submit(work, False, alone=True)

    async def transaction(self, work: Callable[[SqlTx], T]) -> T:
        return await self._submit(work, False)

    async def read(self, work: Callable[[SqlTx], T]) -> T:
        return await self._submit(work, True)

    def listen(self, channel: str, callback: Callable[[], None]) -> None:
        """Call `callback` (from a thread) on every `NOTIFY channel`; runs until `close()`.

        Replicas tell each other about new outbox rows this way: the replica that processed a
        batch notifies, every replica's dispatcher wakes and claims its share.
        """
        import threading

        def loop() -> None:
            while self._pool is not None:
                try:
                    with psycopg.connect(self.dsn, autocommit=True) as conn:
                        conn.execute(f"LISTEN {channel}")
                        self._listener = conn
                        for _ in conn.notifies():
                            callback()
                except psycopg.Error:
                    time.sleep(0.5)

        threading.Thread(target=loop, daemon=True, name="bspgate-pg-listen").start()

    inboxed = False  # received payloads wait in raw_payloads itself

    async def received(self, limit: int) -> list[RawRecord]:
        """Accepted payloads not yet processed, in arrival order."""
        return await self.statement(lambda tx: tx.received_raws(limit))  # polled: one SELECT

    async def settle_received(self, raw_ids: list[str]) -> None:
        """Nothing to do: processing updated the rows in place."""

    async def waiting_raw(self, raw_id: str) -> RawRecord | None:
        """None: an accepted payload is a `received` row of raw_payloads, found by `tx.raw`."""
        return None

    async def queue_counts(
        self, subscriber_ids: Sequence[str] | None = None
    ) -> tuple[dict[str, int], str | None]:
        """Rows by state (received payloads among them) and the oldest undelivered event's time
        (of `subscriber_ids` alone, when given)."""
        return await self.read(lambda tx: (tx.counts(), tx.oldest_undelivered(subscriber_ids)))

    async def accept(self, raw: RawRecord) -> None:
        """Store one raw payload as received; resolves once committed.

        Group commit, as on SQLite: payloads arriving while a flush runs go in the next one (one
        multi-row insert per transaction, up to four flushes in flight), instead of one round trip
        and one commit each.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._accepts.append((raw, future))
        if self._flushers < 4:
            self._flushers += 1
            asyncio.get_running_loop().create_task(self._flush_accepts())
        await future

    async def _flush_accepts(self) -> None:
        try:
            while self._accepts:
                if self._linger and len(self._accepts) < LINGER_BELOW:
                    await asyncio.sleep(self._linger)  # a moment for more to share the commit
                batch, self._accepts = self._accepts[:ROWS], self._accepts[ROWS:]
                raws = [raw for raw, _ in batch]
                try:  # one multi-row INSERT (`ROWS` at most): a statement alone
                    await self.statement(functools.partial(SqlTx.insert_raws, raws=raws))
                except Exception as exc:  # every waiter hears it: none was acknowledged
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)
        finally:
            self._flushers -= 1

    def read_sync(self, work: Callable[[SqlTx], T]) -> T:
        return self._run(work, True)

    async def ping(self) -> bool:
        try:
            return await self.read(_schema_current)
        except Exception:  # the readiness probe reports, it does not raise
            return False


def _autocommitted(conn: psycopg.Connection[tuple[object, ...]], work: Callable[[SqlTx], T]) -> T:
    conn.autocommit = True
    try:
        return work(SqlTx(conn, "format"))
    finally:
        conn.autocommit = False  # what every other use of a pooled connection expects


def _migrate(tx: SqlTx) -> None:
    tx.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
    apply_migrations(tx, "postgres")


def _schema_current(tx: SqlTx) -> bool:
    return schema_current(tx)
