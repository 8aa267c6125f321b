"""Delivery: events per second from the outbox to a local subscriber; lanes; outage recovery.

bspgate's real `Dispatcher` (claim due rows, sign with Standard Webhooks, POST through the shared
the aiohttp poster `bspgate serve` uses, record attempts) drains an outbox of
`--events` pending deliveries (bulk-inserted, spread over events/4 contacts, per-contact ordering
on), against a bare aiohttp `ClientSession` loop posting the same bodies at the same concurrency
(64 = the lane's max_in_flight here), measured in the same run, alternating. The receiver is a
raw ASGI app under uvicorn in its own process. Both sides run on uvloop. Targets: >= 0.5x the bare
loop on SQLite, >= 0.4x on PostgreSQL. Each side's CPU time per event in this process is printed
too (less sensitive to a shared machine's load than events/s).

Then, on SQLite: lanes (a healthy subscriber's time to receive `--lane-events` alone, and beside
a subscriber answering after 8 s with a 10 s timeout: target < 1.2x) and an outage (the receiver
answers 503 for 25 s, default retry schedule: target drained <= 30 s after it is back).

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
from bspgate.delivery.worker import DELIVERY_LINGER, Dispatcher
from bspgate.logging import configure_logging
from bspgate.metrics import Metrics
from bspgate.serving import tune_gc
from bspgate.worker import WORKER_SWITCH_INTERVAL

TARGETS = {"SQLite": 0.5, "PostgreSQL": 0.4}
LANE_TARGET = 1.2
OUTAGE = 25.0
DRAIN_TARGET = 30.0
CONCURRENCY = 64
# CPU seconds of this process per event (µs), per run: less sensitive to a shared machine's load
CPU_US: dict[str, list[float]] = {"bare": [], "dispatcher": []}


@contextlib.contextmanager
def receiver() -> Iterator[str]:
    port = free_port()
    command = [
        PYTHON, "-m", "uvicorn", "bench.receiver:app", "--port", str(port), "--loop", "uvloop",
        "--http", "httptools", "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    with child(command, f"http://127.0.0.1:{port}/readyz"):
        yield f"http://127.0.0.1:{port}/hook"


def subscribers(url: str, *extra: dict[str, Any]) -> Any:
    config = {
        "storage": "sqlite:///unused.db",
        "mappings": "mappings",
        "server": {"public_url": "http://127.0.0.1"},
        "channels": [],
        # the bare loop's concurrency: the lane's in-flight limit matches it
        "subscribers": [
            {"id": "crm", "url": url, "secret": SUBSCRIBER_SECRET, "max_in_flight": CONCURRENCY},
            *({"secret": SUBSCRIBER_SECRET, **sub} for sub in extra),
        ],
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

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
        CPU_US["bare"].append((time.process_time() - cpu) / count * 1e6)
        return count / elapsed


async def dispatcher_rate(store: Any, url: str, start: int, count: int) -> float:
    """Events/s of bspgate's dispatcher draining `count` freshly queued deliveries."""
    counts = await store.read(lambda tx: tx.counts())
    before = counts.get("deliveries_delivered", 0)
    # deliveries a gateway run left pending (bench/growth measures after an ingress run whose
    # worker was still catching up) are drained too, and counted
    leftover = counts.get("deliveries_pending", 0)
    await fill_outbox(store, start, count, max(1, count // 4), due=time.time() - 1)
    count += leftover
    poster = AiohttpPoster()  # what `bspgate serve` delivers through
    try:
        # as `bspgate serve` runs it: the dispatcher's own loop (overlapping rounds)
        metrics = Metrics()
        dispatcher = Dispatcher(
            store,
            subscribers(url),
            poster,
            metrics,
            batch=CONCURRENCY,
            idle_poll=0.01,
            linger=DELIVERY_LINGER,  # as `bspgate serve`'s delivery worker
        )
        sample = {"subscriber": "crm", "outcome": "delivered"}
        started, cpu = time.perf_counter(), time.process_time()
        task = asyncio.create_task(dispatcher.run())
        deadline = started + 600
        # Done when the dispatcher has counted every delivery as recorded (it counts after the
        # outcome's transaction commits); the store confirms it below. Asking the store itself
        # every 20 ms (a GROUP BY over the whole outbox) cost this process more CPU than some
        # of the dispatcher's own work, and only on the dispatcher's side of the comparison.
        while time.perf_counter() < deadline:
            await asyncio.sleep(0.02)
            if (
                metrics.registry.get_sample_value("bspgate_deliveries_total", sample) or 0
            ) >= count:
                break
        elapsed = time.perf_counter() - started
        # this process's CPU per delivery: its event loop and the SQLite writer thread (the
        # PostgreSQL server and the receiver are other processes); the 20 ms check reads a counter
        CPU_US["dispatcher"].append((time.process_time() - cpu) / count * 1e6)
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


async def delivered(store: Any, subscriber: str) -> int:
    row = await store.read(
        lambda tx: tx.one(
            "SELECT COUNT(*) FROM deliveries WHERE subscriber_id = ? AND state = 'delivered'",
            (subscriber,),
        )
    )
    return int(row[0])


async def time_until(store: Any, subs: Any, count: int, fill: tuple[str, ...]) -> float:
    """Seconds until subscriber `crm` has all `count` deliveries (the others may lag)."""
    await fill_outbox(store, 0, count, max(1, count // 4), time.time() - 1, fill)
    poster = AiohttpPoster()
    dispatcher = Dispatcher(store, subs, poster, Metrics(), idle_poll=0.05, linger=DELIVERY_LINGER)
    started = time.perf_counter()
    task = dispatcher.start()
    try:
        while await delivered(store, "crm") < count:
            await asyncio.sleep(0.02)
            assert time.perf_counter() - started < 300, "no progress"
        return time.perf_counter() - started
    finally:
        dispatcher.stop()
        await task
        await poster.aclose()


async def lanes(tmp: Path, url: str, count: int) -> tuple[float, float]:
    """The healthy subscriber's time alone, then beside one answering after 8 s."""
    slow = {"id": "slow", "url": url.replace("/hook", "/slow?seconds=8"), "timeout": "10s"}
    times = []
    for name, subs, fill in (
        ("alone", subscribers(url), ("crm",)),
        ("beside", subscribers(url, slow), ("crm", "slow")),
    ):
        store = open_store(f"sqlite:///{tmp / f'lanes-{name}.db'}")
        await store.open()
        try:
            times.append(await time_until(store, subs, count, fill))
        finally:
            await store.close()
    return times[0], times[1]


async def outage(tmp: Path, url: str, count: int) -> float:
    """Seconds from the end of a 25 s outage until every delivery is in (default schedule)."""
    back = time.time() + OUTAGE
    flaky = url.replace("/hook", f"/flaky?until={back}")
    config = {"id": "crm", "url": flaky, "secret": SUBSCRIBER_SECRET}
    subs = settings_from_dict(
        {"mappings": "mappings", "channels": [], "subscribers": [config]},
        env={},
        base_dir=Path.cwd(),
    ).subscribers
    store = open_store(f"sqlite:///{tmp / 'outage.db'}")
    await store.open()
    try:
        await time_until(store, subs, count, ("crm",))
    finally:
        await store.close()
    return time.time() - back


def stack_devnull() -> Any:
    return open(os.devnull, "w")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--postgres", help="PostgreSQL server URL (a throwaway database is made)")
    parser.add_argument("--log-level", default="info", help="as `bspgate serve` (default info)")
    parser.add_argument("--lane-events", type=int, default=2000)
    parser.add_argument("--skip-scenarios", action="store_true", help="throughput only")
    args = parser.parse_args(argv)
    # Log as `bspgate serve` does (a summary line per lane and round at info, failures one line
    # each), into /dev/null: the rendering is the gateway's cost, the terminal is not.
    devnull = stack_devnull()
    configure_logging(args.log_level)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=devnull))
    # and switch threads as the worker process of `bspgate serve` does (the bare loop has no
    # second thread: nothing changes for it), with its garbage-collector settings
    sys.setswitchinterval(WORKER_SWITCH_INTERVAL)
    tune_gc()  # the worker freezes its long-lived heap once started; both sides run after this
    print(f"delivery: {args.events:,} events per run, {args.runs} runs, concurrency {CONCURRENCY}")
    print("reproduce: python -m bench.delivery" + "".join(f" {a}" for a in (argv or sys.argv[1:])))
    with tempfile.TemporaryDirectory(prefix="bspgate-bench-") as tmp, receiver() as url:
        backends = [("SQLite", f"sqlite:///{Path(tmp) / 'delivery.db'}")]
        with contextlib.ExitStack() as stack:
            if args.postgres:
                backends.append(
                    ("PostgreSQL", stack.enter_context(postgres_database(args.postgres)))
                )
            for label, storage in backends:
                print(f"\n{label}:")
                for samples in CPU_US.values():
                    samples.clear()
                bare, ours = uvloop.run(run(storage, url, args.events, args.runs))
                ratio = statistics.median(ours) / statistics.median(bare)
                target = TARGETS[label]
                print(
                    f"  medians: dispatcher {statistics.median(ours):,.0f} events/s, bare "
                    f"{statistics.median(bare):,.0f} events/s: ratio {ratio:.2f}x "
                    f"(target >= {target}x: {verdict(ratio, target)})"
                )
                print(
                    f"  CPU per event (this process): dispatcher "
                    f"{statistics.median(CPU_US['dispatcher']):,.0f} µs, bare "
                    f"{statistics.median(CPU_US['bare']):,.0f} µs"
                )
        if not args.skip_scenarios:
            alone, beside = uvloop.run(lanes(Path(tmp), url, args.lane_events))
            ratio = beside / alone
            print(
                f"\nlanes: healthy subscriber, {args.lane_events:,} events: alone {alone:.2f} s, "
                f"beside an 8 s subscriber {beside:.2f} s: {ratio:.2f}x "
                f"(target < {LANE_TARGET}x: {'met' if ratio < LANE_TARGET else 'MISSES'})"
            )
            drained = uvloop.run(outage(Path(tmp), url, 1000))
            print(
                f"outage: {OUTAGE:.0f} s of 503, 1,000 events, default schedule: drained "
                f"{drained:.1f} s after the receiver was back (target <= {DRAIN_TARGET:.0f} s: "
                f"{'met' if drained <= DRAIN_TARGET else 'MISSES'})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
