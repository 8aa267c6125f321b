"""Group commit at moderate rates: `serve`'s stages wait a moment when they find little.

Under `bspgate serve` an inbox flush that finds fewer than `LINGER_BELOW` webhooks waits
`ACCEPT_LINGER` for more, a processing round that found less than a batch is followed by the next
no sooner than `ROUND_LINGER` after it began, and a lane's claim that was not full by the next no
sooner than `DELIVERY_LINGER`; the recorder waits as long for more results. What arrives in the
meantime shares the transaction. The waits are set long here (tenths of a second) so that what
shares a commit does not depend on the machine's speed; nothing is lost or delayed past the wait.
Real SQLite files, the real processor and dispatcher loops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bspgate.delivery.transport import AiohttpPoster
from bspgate.delivery.worker import Dispatcher
from bspgate.metrics import Metrics
from bspgate.processing import Rules
from bspgate.stage import Stage, load_channel_mappings, utc_now
from bspgate.store.base import ACCEPT_LINGER, LINGER_BELOW
from bspgate.store.sqlite import SqliteStore
from tests.conftest import make_settings
from tests.payloads import text_webhook
from tests.test_delivery import harness
from tests.test_delivery_lean import bsuid
from tests.test_processing_inbox import _processor, _raw

pytestmark = pytest.mark.anyio


def _commits(store: SqliteStore) -> list[int]:
    """Record the size of every batch `store`'s writer commits (the real commit still runs)."""
    sizes: list[int] = []
    commit = store._commit

    def recording(conn: Any, tx: Any, batch: list[Any]) -> None:
        sizes.append(len(batch))
        commit(conn, tx, batch)

    store._commit = recording  # type: ignore[method-assign]
    return sizes


async def test_serve_stores_linger_and_in_process_ones_do_not(tmp_path: Path) -> None:
    served = SqliteStore(tmp_path / "served.db", shared=True)
    assert served.inbox is not None
    assert served.inbox._linger == ACCEPT_LINGER > 0
    assert served._linger == 0  # the main file's writes (processing, delivery) do not
    assert SqliteStore(tmp_path / "alone.db")._linger == 0
    assert LINGER_BELOW > 1


async def test_webhooks_arriving_within_the_wait_share_one_inbox_commit(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "gw.db", shared=True)
    await store.open()
    try:
        assert store.inbox is not None
        store.inbox._linger = 0.5
        sizes = _commits(store.inbox)
        first = asyncio.create_task(store.accept(_raw(1)))
        await asyncio.sleep(0.05)  # the writer took the first one and waits
        second = asyncio.create_task(store.accept(_raw(2)))
        await asyncio.wait_for(asyncio.gather(first, second), 10)
        assert sizes == [2]
        assert len(await store.received(10)) == 2
    finally:
        await store.close()


async def test_a_full_inbox_flush_does_not_wait(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "gw.db", shared=True)
    await store.open()
    try:
        assert store.inbox is not None
        store.inbox._linger = 60.0  # a wait would outlast the test
        sizes = _commits(store.inbox)
        # the writer busy with a slow transaction: the webhooks queue up behind it
        held = asyncio.Event()
        release = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()

        def slow(tx: Any) -> None:
            loop.call_soon_threadsafe(held.set)
            asyncio.run_coroutine_threadsafe(asyncio.wait_for(release, 10), loop).result()

        blocker = asyncio.create_task(store.inbox.transaction(slow))
        await held.wait()
        accepts = [asyncio.create_task(store.accept(_raw(n))) for n in range(LINGER_BELOW)]
        await asyncio.sleep(0.05)
        release.set_result(None)
        await asyncio.wait_for(asyncio.gather(blocker, *accepts), 10)
        assert sizes == [1, LINGER_BELOW]
    finally:
        await store.close()


async def test_closing_during_the_wait_commits_what_waits(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "gw.db", shared=True)
    await store.open()
    assert store.inbox is not None
    store.inbox._linger = 0.3
    accepted = asyncio.create_task(store.accept(_raw(1)))
    await asyncio.sleep(0.05)
    await store.close()
    await asyncio.wait_for(accepted, 10)  # resolved: durable
    reopened = SqliteStore(tmp_path / "gw.db", shared=True)
    await reopened.open()
    try:
        assert len(await reopened.received(10)) == 1
    finally:
        await reopened.close()


def _rounds(run_once: Callable[[], Awaitable[int]], found: list[int]) -> Any:
    async def recording() -> int:
        done = await run_once()
        if done:
            found.append(done)
        return done

    return recording


async def test_payloads_arriving_within_the_round_wait_share_the_next_round(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "gw.db", shared=True)
    await store.open()
    try:
        processor = _processor(tmp_path, store, batch=64)
        processor.linger, processor.idle_poll = 0.5, 0.005
        found: list[int] = []
        processor.run_once = _rounds(processor.run_once, found)  # type: ignore[method-assign]
        task = asyncio.create_task(processor.run())
        await store.accept(_raw(1))
        for _ in range(500):
            if found:
                break
            await asyncio.sleep(0.01)
        assert found == [1]
        # two more while the processor waits out its round: processed together
        await store.accept(_raw(2))
        await asyncio.sleep(0.02)
        await store.accept(_raw(3))
        for _ in range(500):
            if sum(found) == 3:
                break
            await asyncio.sleep(0.01)
        processor.stop()
        await asyncio.wait_for(task, 10)
        assert found == [1, 2]
        assert (await store.read(lambda tx: tx.counts())).get("raw_processed") == 3
    finally:
        await store.close()


async def test_claims_after_a_partial_one_wait_and_take_what_came(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        dispatcher: Dispatcher = h.dispatcher
        dispatcher.linger, dispatcher.idle_poll = 0.5, 0.01
        claims: list[int] = []
        claim = dispatcher._claim

        async def recording(lane: Any, most: int) -> Any:
            jobs = await claim(lane, most)
            if jobs:
                claims.append(len(jobs))
            return jobs

        dispatcher._claim = recording  # type: ignore[method-assign]
        await h.ingest(text_webhook("wamid.1", bsuid=bsuid(1), phone=None))
        task = dispatcher.start()
        for _ in range(500):
            if len(h.receiver.requests) == 1:
                break
            await asyncio.sleep(0.01)
        await h.ingest(text_webhook("wamid.2", bsuid=bsuid(2), phone=None))
        dispatcher.wake()
        await asyncio.sleep(0.05)  # an idle poll's time: without the wait, a claim of one
        await h.ingest(text_webhook("wamid.3", bsuid=bsuid(3), phone=None))
        dispatcher.wake()
        for _ in range(500):
            if {row["state"] for row in await h.deliveries()} == {"delivered"}:
                break
            await asyncio.sleep(0.01)
        dispatcher.stop()
        await asyncio.wait_for(task, 10)
        assert claims == [1, 2]
        assert len(h.receiver.requests) == 3


async def test_results_arriving_within_the_wait_share_one_record(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        dispatcher: Dispatcher = h.dispatcher
        dispatcher.linger = 0.5
        records: list[int] = []
        record = dispatcher._record

        async def recording(results: list[Any]) -> None:
            records.append(len(results))
            await record(results)

        dispatcher._record = recording  # type: ignore[method-assign]
        for n in range(3):
            await h.ingest(text_webhook(f"wamid.{n}", bsuid=bsuid(n), phone=None))
        lane = dispatcher.lanes["crm"]
        dispatcher._results = asyncio.Queue()
        jobs = await dispatcher._claim(lane, 64)
        recorder = asyncio.create_task(dispatcher._recorder())
        for job in jobs:  # answers a few milliseconds apart
            dispatcher._results.put_nowait(await dispatcher._attempt(job[0]))
            await asyncio.sleep(0.02)
        for _ in range(500):
            if records and not dispatcher._recording:
                break
            await asyncio.sleep(0.01)
        recorder.cancel()
        assert records == [3]
        assert {row["state"] for row in await h.deliveries()} == {"delivered"}


async def test_serves_workers_linger_and_in_process_stages_do_not(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    rules = Rules(settings, load_channel_mappings(settings))
    store = SqliteStore(tmp_path / "gw.db")
    for linger in (True, False):
        stage = Stage(
            store, rules, settings, utc_now, True, AiohttpPoster(), Metrics(), linger=linger
        )
        assert stage.processor is not None
        assert stage.dispatcher is not None
        assert (stage.processor.linger > 0) is linger
        assert (stage.dispatcher.linger > 0) is linger


async def test_stopping_while_the_recorder_waits_still_records(tmp_path: Path) -> None:
    # an answer taken by the recorder, which then waits for more: a stop must not drop it
    # (the row would stay in flight and be sent again after a restart)
    async with harness(tmp_path) as h:
        dispatcher: Dispatcher = h.dispatcher
        dispatcher.linger, dispatcher.idle_poll = 0.5, 0.01
        await h.ingest(text_webhook("wamid.1", bsuid=bsuid(1), phone=None))
        task = dispatcher.start()
        for _ in range(500):
            if h.receiver.requests:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the answer is with the recorder, which waits
        dispatcher.stop()
        await asyncio.wait_for(task, 10)
        assert [row["state"] for row in await h.deliveries()] == ["delivered"]
