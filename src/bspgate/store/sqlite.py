"""SQLite backend: WAL, one writer thread with group commit, a reader connection.

Every write is a function over `SqlTx` queued to the writer thread. The thread takes whatever is
queued (up to `_BATCH`): accepted raw payloads (`accept`) go in with one multi-row insert, then
each function runs (in its own SAVEPOINT only when the batch holds more than one, so one failing
function rolls back only itself), then the batch commits once with `synchronous=FULL`, and only
then are the callers' futures settled: a webhook is answered after its raw payload is on disk,
and concurrent webhooks share one fsync. Reads run on a separate connection (WAL readers never
block the writer).

`shared=True` (`bspgate serve` and its worker process): webhooks are accepted into a separate
inbox database (`<file>-inbox`, a queue table only the two processes use) so that accepting never
waits for the worker's transactions on the main file; the worker moves each payload into
`raw_payloads` in the same transaction that stores what it produced, then deletes it from the
inbox (a payload found in both after a crash in between is already processed: it is only
deleted). Two processes write each file (`bspgate serve` accepts webhooks, its worker process
derives events and delivers). SQLite's own busy handler polls with growing sleeps, so a process
that writes all the time starves the other (measured: locked out). Each write transaction instead
takes an exclusive `flock` on `<file>-writer.lock` first: a waiter blocks in the kernel and wakes
the moment the holder's short transaction commits.

Checkpoints (copying the WAL back into the database file) run in a thread of their own
(`_Checkpointer`, PASSIVE: never blocking the writer or readers), not inside the writer's
commits: with SQLite's automatic checkpoint, the commit that crossed 1,000 WAL pages copied them
all and synced the file, measured as a quarter of the writer thread's time under load, on the
answer path of the webhooks waiting for that commit. Commits still sync the WAL
(`synchronous=FULL`), so durability is unchanged; `journal_size_limit` bounds the WAL file.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import structlog

from bspgate.errors import StoreError
from bspgate.store.base import ACCEPT_LINGER, LINGER_BELOW, RawRecord
from bspgate.store.migrate import apply_migrations, schema_current
from bspgate.store.sql import SqlTx

T = TypeVar("T")
_BATCH = 256
_log = structlog.get_logger("bspgate.store")

_Item = tuple[Callable[[SqlTx], Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop]


_Answer = tuple["asyncio.Future[Any]", Any, BaseException | None]


def _settle_all(answers: list[_Answer]) -> None:
    for future, result, error in answers:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


_WAL_LIMIT = 64 * 2**20  # bytes the WAL file is cut back to after a complete checkpoint
_CHECKPOINT_EVERY = 0.2  # seconds between passive checkpoints


def _connect(path: str, *, autocheckpoint: bool = True) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
    if not autocheckpoint:
        conn.execute("PRAGMA wal_autocheckpoint=0")  # the `_Checkpointer` thread does it
    return conn


class _Checkpointer:
    """Checkpoints a WAL database from a thread and connection of its own, until stopped."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="bspgate-sqlite-checkpoint", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
            while not self._stop.wait(_CHECKPOINT_EVERY):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # the next round tries again; writes go on
                    _log.warning("store.checkpoint_failed", error=str(exc))
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def sqlite_path(dsn: str) -> str:
    """`sqlite:///bspgate.db` -> `bspgate.db`; `sqlite:////abs/path.db` -> `/abs/path.db`."""
    if not dsn.startswith("sqlite:///"):
        raise StoreError(f"not a SQLite DSN: {dsn!r}")
    return dsn[len("sqlite:///") :] or ":memory:"


class SqliteStore:
    """The embedded store. `open()` migrates; `close()` drains the writer."""

    def __init__(
        self,
        path: str | Path,
        *,
        shared: bool = False,
        _schema: Callable[[SqlTx], None] | None = None,
        linger: float = 0.0,
    ) -> None:
        self.path = str(path)
        self._linger = linger
        self.shared = shared and self.path != ":memory:"
        self._schema = _schema or _migrate
        self._raw_table = "inbox" if _schema is not None else "raw_payloads"
        self.inbox: SqliteStore | None = None
        if self.shared and _schema is None:
            self.inbox = SqliteStore(
                self.path + "-inbox", shared=True, _schema=_inbox_schema, linger=ACCEPT_LINGER
            )
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._checkpointer: _Checkpointer | None = None

    @classmethod
    def from_dsn(cls, dsn: str, *, shared: bool = False) -> SqliteStore:
        return cls(sqlite_path(dsn), shared=shared)

    async def open(self) -> None:
        if self._thread is not None:
            return
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._thread = threading.Thread(target=self._run, name="bspgate-sqlite-writer", daemon=True)
        self._thread.start()
        self._queue.put((self._schema, ready, asyncio.get_running_loop()))
        await ready
        self._reader = _connect(self.path)
        if self.path != ":memory:":
            self._checkpointer = _Checkpointer(self.path)
        if self.inbox is not None:
            await self.inbox.open()

    async def close(self) -> None:
        if self._thread is None:
            return
        if self.inbox is not None:
            await self.inbox.close()
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.stop)
            self._checkpointer = None
        if self._reader is not None:
            # a read may still be running in a worker thread: close only between reads (a
            # connection closed under a running statement crashes the interpreter)
            await asyncio.to_thread(self._close_reader)

    def _close_reader(self) -> None:
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    async def transaction(self, work: Callable[[SqlTx], T]) -> T:
        """Run `work` in the writer thread; resolves after the batch holding it is committed."""
        if self._thread is None:
            raise StoreError("the store is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((work, future, loop))
        return await future

    async def statement(self, work: Callable[[SqlTx], T]) -> T:
        """`work` that runs one statement on PostgreSQL (`PostgresStore.statement`): here the
        writer runs it as a transaction like any other (one writer, no round trips to save)."""
        return await self.transaction(work)

    async def accept(self, raw: RawRecord) -> None:
        """Store one raw payload as received; resolves once it is durable (group commit)."""
        if self.inbox is not None:
            await self.inbox.accept(raw)
            return
        await self.transaction(_Accept(raw))

    @property
    def inboxed(self) -> bool:
        """Received payloads wait in the inbox database, not yet in `raw_payloads`."""
        return self.inbox is not None

    async def received(self, limit: int) -> list[RawRecord]:
        """Accepted payloads not yet processed, in arrival order."""
        if self.inbox is not None:
            return await self.inbox.read(lambda tx: tx.inbox_raws(limit))
        return await self.read(lambda tx: tx.received_raws(limit))

    async def waiting_raw(self, raw_id: str) -> RawRecord | None:
        """The payload `raw_id` while it waits in the inbox database (accepted under `serve`,
        not yet processed), else None. The worker commits a payload into `raw_payloads`
        before it drops it from the inbox: a caller that found no `raw_payloads` row and then
        gets None here looks there once more."""
        if self.inbox is None:
            return None
        return await self.inbox.read(lambda tx: tx.inbox_raw(raw_id))

    async def settle_received(self, raw_ids: list[str]) -> None:
        """Processed (committed in the main file): drop them from the inbox."""
        if self.inbox is not None and raw_ids:
            await self.inbox.transaction(lambda tx: tx.drop_inbox(raw_ids))

    async def queue_counts(
        self, subscriber_ids: Sequence[str] | None = None
    ) -> tuple[dict[str, int], str | None]:
        """Rows by state and the oldest undelivered event's time (of `subscriber_ids` alone,
        when given). Under `serve` the payloads accepted but not yet processed wait in the inbox
        database, and are counted there."""
        counts, oldest = await self.read(
            lambda tx: (tx.counts(), tx.oldest_undelivered(subscriber_ids))
        )
        if self.inbox is not None:
            counts["raw_received"] = await self.inbox.read(lambda tx: tx.inbox_count())
        return counts, oldest

    async def read(self, work: Callable[[SqlTx], T]) -> T:
        """Run `work` on the reader connection (consistent snapshot per call)."""
        return await asyncio.to_thread(self.read_sync, work)

    def read_sync(self, work: Callable[[SqlTx], T]) -> T:
        with self._read_lock:
            reader = self._reader
            if reader is None:
                raise StoreError("the store is not open")
            reader.execute("BEGIN")
            try:
                return work(SqlTx(reader))
            finally:
                reader.execute("ROLLBACK")

    async def ping(self) -> bool:
        """True when the database answers and its schema is current."""
        try:
            return await self.read(_schema_current)
        except Exception:  # the readiness probe reports, it does not raise
            return False

    # -- writer thread -------------------------------------------------------------------------
    def _run(self) -> None:
        conn = _connect(self.path, autocheckpoint=self.path == ":memory:")
        tx = SqlTx(conn)
        self._lock_file = open(self.path + "-writer.lock", "ab") if self.shared else None  # noqa: SIM115
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    break
                batch = [item]
                self._take(batch)
                if self._linger and len(batch) < LINGER_BELOW and isinstance(item[0], _Accept):
                    # a few webhooks at a time: wait a moment for more to share the commit
                    time.sleep(self._linger)
                    self._take(batch)
                if self._lock_file is None:
                    self._commit(conn, tx, batch)
                    continue
                fcntl.flock(self._lock_file, fcntl.LOCK_EX)
                try:
                    self._commit(conn, tx, batch)
                finally:
                    fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        finally:
            conn.close()
            if self._lock_file is not None:
                self._lock_file.close()

    def _take(self, batch: list[_Item]) -> None:
        """Add what is queued now to `batch` (up to `_BATCH`); leaves the stop sentinel queued."""
        while len(batch) < _BATCH:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                return
            if more is None:
                self._queue.put(None)
                return
            batch.append(more)

    def _commit(self, conn: sqlite3.Connection, tx: SqlTx, batch: list[_Item]) -> None:
        outcomes: list[tuple[Any, BaseException | None]] = [(None, None)] * len(batch)
        accepted = [i for i, item in enumerate(batch) if isinstance(item[0], _Accept)]
        others = [i for i, item in enumerate(batch) if not isinstance(item[0], _Accept)]
        try:
            conn.execute("BEGIN IMMEDIATE")
            if accepted:
                raws = [batch[i][0].raw for i in accepted]  # type: ignore[attr-defined]
                tx.insert_raws(raws, table=self._raw_table)
            alone = len(others) == 1 and not accepted
            for index in others:
                work = batch[index][0]
                if alone:  # nothing else to protect: a failure rolls back the transaction
                    try:
                        outcomes[index] = (work(tx), None)
                    except Exception as exc:
                        if conn.in_transaction:  # SQLite ended it already on a full disk
                            conn.execute("ROLLBACK")
                        outcomes[index] = (None, _failed(exc))
                        break
                    continue
                conn.execute("SAVEPOINT job")
                try:
                    outcomes[index] = (work(tx), None)
                    conn.execute("RELEASE job")
                except Exception as exc:
                    if not conn.in_transaction:  # SQLite ended it (a full disk): all fail
                        raise sqlite3.DatabaseError(f"the transaction ended: {exc}") from exc
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    outcomes[index] = (None, _failed(exc))
            if conn.in_transaction:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            _log.error("store.commit_failed", error=str(exc), batch=len(batch))
            failure = StoreError(f"commit failed: {exc}")
            outcomes = [(None, failure)] * len(batch)
        # one hand-over per event loop, not per caller: each wakes that loop
        answers: dict[asyncio.AbstractEventLoop, list[_Answer]] = {}
        for (_work, future, loop), (result, error) in zip(batch, outcomes, strict=True):
            answers.setdefault(loop, []).append((future, result, error))
        for loop, settled in answers.items():
            # RuntimeError: the caller's loop is gone (shutdown); nothing waits for the answer
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle_all, settled)


class _Accept:
    """A queued raw payload: the writer inserts all of a batch's with one statement."""

    __slots__ = ("raw",)

    def __init__(self, raw: RawRecord) -> None:
        self.raw = raw

    def __call__(self, tx: SqlTx) -> None:
        tx.insert_raws([self.raw])


def _migrate(tx: SqlTx) -> None:
    apply_migrations(tx, "sqlite")


# SQLite's own failures (result code names), not the work's: a bad statement is the work's
_STORE_FAULTS = ("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_NOMEM",
                 "SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PROTOCOL", "SQLITE_CORRUPT",
                 "SQLITE_NOTADB")  # fmt: skip


def _failed(exc: Exception) -> Exception:
    """What a transaction's caller gets for `exc`: SQLite failing (a full disk, an I/O error)
    as a `StoreError`, so it is retried later, never taken for the work's own fault (the
    processor would quarantine a valid payload for it); anything else as it was raised."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if isinstance(exc, sqlite3.Error) and name.startswith(_STORE_FAULTS):
        failure = StoreError(f"SQLite failed: {exc}")
        failure.__cause__ = exc
        return failure
    return exc


def _inbox_schema(tx: SqlTx) -> None:
    tx.execute(
        "CREATE TABLE IF NOT EXISTS inbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
        "id TEXT NOT NULL UNIQUE, channel_id TEXT NOT NULL, provider TEXT NOT NULL, "
        "received_at TEXT NOT NULL, content_type TEXT NOT NULL, body BLOB NOT NULL, "
        "state TEXT NOT NULL, reason TEXT, event_count INTEGER NOT NULL DEFAULT 0, "
        "traceparent TEXT)"
    )


def _schema_current(tx: SqlTx) -> bool:
    return schema_current(tx)
