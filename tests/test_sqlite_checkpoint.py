"""The SQLite store checkpoints its WAL from a thread of its own, never in a writer's commit."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from bspgate.store.sqlite import SqliteStore

MB = 2**20


def _write_blob(tx: object) -> None:
    tx.execute("CREATE TABLE IF NOT EXISTS blobs (data BLOB)")  # type: ignore[attr-defined]
    tx.execute("INSERT INTO blobs VALUES (?)", (b"x" * MB,))  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_committed_pages_reach_the_database_file_without_a_writer_checkpoint(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gw.db"
    store = SqliteStore(path)
    await store.open()
    try:
        before = path.stat().st_size
        await store.transaction(_write_blob)
        # the writer's commit only appended to the WAL (its automatic checkpoint is off) ...
        deadline = time.monotonic() + 5
        while path.stat().st_size < before + MB and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # ... and the checkpoint thread copied the pages into the database file
        assert path.stat().st_size >= before + MB
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT length(data) FROM blobs").fetchone() == (MB,)


@pytest.mark.anyio
async def test_close_stops_the_checkpoint_threads(tmp_path: Path) -> None:
    def checkpointers() -> int:
        return sum(t.name == "bspgate-sqlite-checkpoint" for t in threading.enumerate())

    running = checkpointers()
    store = SqliteStore(tmp_path / "gw.db", shared=True)  # with its inbox database: two
    await store.open()
    assert checkpointers() == running + 2
    await store.close()
    assert checkpointers() == running


@pytest.mark.anyio
async def test_metrics_count_the_payloads_waiting_in_the_inbox(tmp_path: Path) -> None:
    from bspgate.store.base import RawRecord

    store = SqliteStore(tmp_path / "gw.db", shared=True)  # as under `bspgate serve`
    await store.open()
    try:
        for number in range(3):
            await store.accept(
                RawRecord(
                    id=f"raw_{number}",
                    channel_id="cloud-us",
                    provider="cloudapi",
                    received_at="2026-12-06T00:00:00.000000Z",
                    content_type="application/json",
                    body=b"{}",
                    state="received",
                )
            )
        counts, _oldest = await store.queue_counts()
    finally:
        await store.close()
    assert counts["raw_received"] == 3
