"""The processor over an inbox (SQLite under `bspgate serve`): deletes run behind the next batch.

A processed batch's inbox rows are deleted while the next batch is read and mapped. Until the
delete commits, reads skip them (never processed twice); if it fails, they are read again, found
processed and only deleted. Real SQLite files, the processor's own loop pieces.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from bspgate import processing
from bspgate.app import load_channel_mappings
from bspgate.ids import new_id
from bspgate.processing import Processor, Rules
from bspgate.store.base import RawRecord
from bspgate.store.sqlite import SqliteStore
from tests.conftest import make_settings
from tests.payloads import text_webhook


def _raw(n: int) -> RawRecord:
    payload = text_webhook(f"wamid.inbox.{n}", bsuid=f"US.{8_000_000_000_000_000 + n}")
    return RawRecord(
        id=new_id("raw"),
        channel_id="cloud-us",
        provider="cloudapi",
        received_at=f"2026-01-01T00:00:{n:02d}.000000Z",
        content_type="application/json",
        body=orjson.dumps(payload),
        state="received",
    )


class SlowInbox(SqliteStore):
    """Deletes from the inbox wait for `release` (or fail, with `fail`): a slow commit."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, shared=True)
        self.release = asyncio.Event()
        self.fail = False
        self.deletes: list[list[str]] = []

    async def settle_received(self, raw_ids: list[str]) -> None:
        self.deletes.append(list(raw_ids))
        await self.release.wait()
        if self.fail:
            raise OSError("disk full")
        await super().settle_received(raw_ids)


async def _inbox_ids(store: SqliteStore) -> list[str]:
    return [raw.id for raw in await store.received(100)]


async def _counts(store: SqliteStore) -> dict[str, Any]:
    return await store.read(lambda tx: tx.counts())


async def _accepted(store: SqliteStore, count: int) -> list[RawRecord]:
    """Open `store` and accept `count` payloads into its inbox, as the server does."""
    await store.open()
    raws = [_raw(n) for n in range(count)]
    for raw in raws:
        await store.accept(raw)
    return raws


def _processor(tmp_path: Path, store: SqliteStore, batch: int) -> Processor:
    settings = make_settings(tmp_path)
    return Processor(store, Rules(settings, load_channel_mappings(settings)), batch=batch)


@pytest.mark.anyio
async def test_the_next_batch_runs_while_the_last_ones_inbox_rows_are_deleted(
    tmp_path: Path,
) -> None:
    store = SlowInbox(tmp_path / "gw.db")
    raws = await _accepted(store, 6)
    try:
        processor = _processor(tmp_path, store, batch=3)
        # two batches back to back, the first one's delete still waiting (a processor that
        # waited for it would not return)
        assert await asyncio.wait_for(processor.run_once(), 10) == 3
        assert await asyncio.wait_for(processor.run_once(), 10) == 3
        assert await processor.run_once() == 0  # nothing read twice while deletes wait
        assert store.deletes == [[r.id for r in raws[:3]], [r.id for r in raws[3:]]]
        assert len(await _inbox_ids(store)) == 6  # not deleted yet
        assert (await _counts(store)).get("raw_processed") == 6
        store.release.set()
        await processor.settled()
        assert await _inbox_ids(store) == []
        assert (await _counts(store)).get("raw_processed") == 6
    finally:
        store.release.set()
        await store.close()


@pytest.mark.anyio
async def test_a_failed_inbox_delete_is_done_again_without_processing_twice(
    tmp_path: Path,
) -> None:
    store = SlowInbox(tmp_path / "gw.db")
    await _accepted(store, 3)
    try:
        processor = _processor(tmp_path, store, batch=10)
        assert await asyncio.wait_for(processor.run_once(), 10) == 3
        store.fail = True
        store.release.set()
        await processor.settled()
        assert len(await _inbox_ids(store)) == 3  # the delete failed: still in the inbox
        events = (await _counts(store)).get("events")
        store.fail = False
        # read again: found processed already, so only deleted; no event is derived twice
        assert await processor.run_once() == 0
        await processor.settled()
        assert await _inbox_ids(store) == []
        assert (await _counts(store)).get("events") == events
        assert (await _counts(store)).get("raw_processed") == 3
    finally:
        await store.close()


@pytest.mark.anyio
async def test_a_payload_that_can_be_neither_processed_nor_quarantined_stays_in_the_inbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteStore(tmp_path / "gw.db", shared=True)
    raws = await _accepted(store, 3)
    try:
        broken = raws[1].id
        real = processing.process_batch

        def failing(tx: Any, *args: Any, **kwargs: Any) -> Any:
            if any(item.raw.id == broken for item in kwargs["batch"]):
                raise RuntimeError("a bug, and the quarantine insert fails the same way")
            return real(tx, *args, **kwargs)

        monkeypatch.setattr(processing, "process_batch", failing)
        processor = _processor(tmp_path, store, batch=10)
        assert await asyncio.wait_for(processor.run_once(), 10) == 2
        await processor.settled()
        # the other two are processed and gone from the inbox; the stuck one is kept there,
        # skipped until a restart reads it again
        assert await _inbox_ids(store) == [broken]
        assert (await _counts(store)).get("raw_processed") == 2
        assert await processor.run_once() == 0
    finally:
        await store.close()
