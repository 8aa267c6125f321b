"""Delivery: events per second from the outbox to a local subscriber.

bspgate's real `Dispatcher` (claim due rows, sign with Standard Webhooks, POST through the shared
the aiohttp poster `bspgate serve` uses, record attempts) drains an outbox of
`--events` pending deliveries (bulk-inserted, spread over events/4 contacts, per-contact ordering
on), against a bare aiohttp `ClientSession` loop posting the same bodies at the same concurrency
(64 = the dispatcher's batch), measured in the same run, alternating. The receiver is a raw ASGI
app under uvicorn in its own process. Both sides run on uvloop. Target: >= 0.4x the bare loop.

    python -m bench.delivery [--events 10000] [--runs 2] [--postgres postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import structlog
import uvloop

from bench.common import PYTHON, SUBSCRIBER_SECRET, child, free_port, postgres_database, verdict
from bench.fill import event_body, fill_outbox
from bspgate.config import settings_from_dict
from bspgate.delivery.transport import AiohttpPoster
from bspgate.delivery.worker import Dispatcher
from bspgate.logging import configure_logging
from bspgate.metrics import Metrics

TARGET = 0.4
CONCURRENCY = 64


@contextlib.contextmanager
def receiver() -> Iterator[str]:
    port = free_port()
    command = [
        PYTHON, "-m", "uvicorn", "bench.receiver:app", "--port", str(port), "--loop", "uvloop",
        "--http", "httptools", "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    with child(command, f"http://127.0.0.1:{port}/readyz"):
        yield f"http://127.0.0.1:{port}/hook"


def subscribers(url: str) -> Any:
    config = {
        "storage": "sqlite:///unused.db",
        "mappings": "mappings",
        "server": {"public_url": "http://127.0.0.1"},
        "channels": [],
        "subscribers": [{"id": "crm", "url": url, "secret": SUBSCRIBER_SECRET}],
    }
    return settings_from_dict(config, env={}, base_dir=Path.cwd()).subscribers


async def bare_loop(url: str, count: int) -> float:
    """Events/s of a bare aiohttp session posting `count` event bodies, 64 at a time."""
    bodies = [event_body(n, f"ct_{n % (count // 4):08d}").encode() for n in range(count)]
    pending = iter(bodies)
    headers = {"content-type": "application/cloudevents+json"}
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            for body in pending:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    assert response.status == 204

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return count / (time.perf_counter() - started)


async def dispatcher_rate(store: Any, url: str, start: int, count: int) -> float:
    """Events/s of bspgate's dispatcher draining `count` freshly queued deliveries."""
    before = (await store.read(lambda tx: tx.counts())).get("deliveries_delivered", 0)
    await fill_outbox(store, start, count, max(1, count // 4), due=time.time() - 1)
    poster = AiohttpPoster()  # what `bspgate serve` delivers through
    try:
        # as `bspgate serve` runs it: the dispatcher's own loop (overlapping rounds)
        dispatcher = Dispatcher(
            store, subscribers(url), poster, Metrics(), batch=CONCURRENCY, idle_poll=0.01
        )
        started = time.perf_counter()
        task = asyncio.create_task(dispatcher.run())
        deadline = started + 600
        while time.perf_counter() < deadline:
            await asyncio.sleep(0.02)
            left = await store.read(lambda tx: tx.counts())
            if not left.get("deliveries_pending") and not left.get("deliveries_inflight"):
                break
        elapsed = time.perf_counter() - started
        dispatcher.stop()
        await task
    finally:
        await poster.aclose()
    left = await store.read(lambda tx: tx.counts())
    assert left.get("deliveries_delivered", 0) >= before + count, left
    assert not left.get("deliveries_pending"), left
    return count / elapsed


def open_store(storage: str) -> Any:
    if storage.startswith("sqlite:"):
        from bspgate.store.sqlite import SqliteStore

        return SqliteStore.from_dsn(storage)
    from bspgate.store.postgres import PostgresStore

    return PostgresStore(storage)


async def run(storage: str, url: str, events: int, runs: int) -> tuple[list[float], list[float]]:
    store = open_store(storage)
    await store.open()
    bare: list[float] = []
    ours: list[float] = []
    try:
        for number in range(runs):
            bare.append(await bare_loop(url, events))
            print(f"  bare aiohttp loop      {bare[-1]:9,.0f} events/s", flush=True)
            ours.append(await dispatcher_rate(store, url, number * events, events))
            print(f"  bspgate dispatcher     {ours[-1]:9,.0f} events/s", flush=True)
    finally:
        await store.close()
    return bare, ours


def stack_devnull() -> Any:
    return open(os.devnull, "w")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--postgres", help="PostgreSQL server URL (a throwaway database is made)")
    parser.add_argument("--log-level", default="info", help="as `bspgate serve` (default info)")
    args = parser.parse_args(argv)
    # Log as `bspgate serve` does (one JSON line per attempt at info), into /dev/null: the
    # rendering is the gateway's cost, the terminal is not.
    devnull = stack_devnull()
    configure_logging(args.log_level)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=devnull))
    print(f"delivery: {args.events:,} events per run, {args.runs} runs, concurrency {CONCURRENCY}")
    print("reproduce: python -m bench.delivery" + " ".join(f" {a}" for a in (argv or sys.argv[1:])))
    with tempfile.TemporaryDirectory(prefix="bspgate-bench-") as tmp, receiver() as url:
        backends = [("SQLite", f"sqlite:///{Path(tmp) / 'delivery.db'}")]
        with contextlib.ExitStack() as stack:
            if args.postgres:
                backends.append(
                    ("PostgreSQL", stack.enter_context(postgres_database(args.postgres)))
                )
            for label, storage in backends:
                print(f"\n{label}:")
                bare, ours = uvloop.run(run(storage, url, args.events, args.runs))
                ratio = statistics.median(ours) / statistics.median(bare)
                print(
                    f"  medians: dispatcher {statistics.median(ours):,.0f} events/s, bare "
                    f"{statistics.median(bare):,.0f} events/s: ratio {ratio:.2f}x "
                    f"(target >= {TARGET}x: {verdict(ratio, TARGET)})"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
