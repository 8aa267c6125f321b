"""Growth: ingress, processing and dispatch rates at an empty store and at 1,000,000 stored
events; RSS.

The history (raw payloads, events, delivered outbox rows, 100,000 contacts with their BSUIDs and
phones) is bulk-inserted with SQL (`bench/fill.py`), then the same three measurements run as at
empty: wrk against `bspgate serve` (as bench/ingress.py, 64 connections, a subscriber and
delivery running, each run first messages from its own 10,000 new contacts, so the two runs
compare like with like); a backlog's drain (as bench/drain.py: a burst accepted with the
workers paused, then processed and delivered, new contacts again); and the dispatcher draining a
fresh outbox (as bench/delivery.py). The server's RSS is read from /proc after its wrk run.
Targets: rates at 1M >= 0.9x at empty; RSS <= 150 MB. SQLite by default; `--postgres URL` for
PostgreSQL.

    python -m bench.growth [--events 1000000] [--seconds 6] [--postgres URL]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import structlog
import uvloop

from bench.common import postgres_database, receiver, verdict
from bench.delivery import dispatcher_rate, open_store, stack_devnull
from bench.drain import drain_once
from bench.e2e import sink_server
from bench.fill import fill_history
from bench.ingress import gateway_server, measure
from bspgate.logging import configure_logging


async def prefill(storage: str, count: int) -> float:
    store = open_store(storage)
    await store.open()
    started = time.perf_counter()
    try:
        await fill_history(store, count)
    finally:
        await store.close()
    return time.perf_counter() - started


async def dispatch(storage: str, url: str, start: int, count: int) -> float:
    store = open_store(storage)
    await store.open()
    try:
        return await dispatcher_rate(store, url, start, count)
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--deliveries", type=int, default=5_000)
    parser.add_argument("--burst", type=float, default=2.0, help="seconds of the drain's burst")
    parser.add_argument("--postgres", help="PostgreSQL server URL (a throwaway database is made)")
    args = parser.parse_args(argv)
    configure_logging("info")
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=stack_devnull()))
    print(f"growth: empty vs {args.events:,} stored events")
    print("reproduce: python -m bench.growth" + "".join(f" {a}" for a in (argv or sys.argv[1:])))
    rows = {}
    with (
        tempfile.TemporaryDirectory(prefix="bspgate-bench-") as tmp,
        receiver() as url,
        sink_server() as sink,
        contextlib.ExitStack() as stack,
    ):
        folder = Path(tmp)
        storage = (
            stack.enter_context(postgres_database(args.postgres))
            if args.postgres
            else f"sqlite:///{folder / 'growth.db'}"
        )
        for label, size in (("empty", 0), ("full", args.events)):
            if size:
                took = uvloop.run(prefill(storage, size))
                print(f"  bulk-inserted {size:,} events in {took:.0f} s", flush=True)
            ingress, rss = measure(
                f"ingress ({label})", gateway_server(folder, storage, url), folder, args.seconds,
                offset=50_000_000 + size,
            )  # fmt: skip
            drain = drain_once(folder, storage, sink, args.burst, 60_000_000 + size)
            print(
                f"  {'drain (' + label + ')':<22} {drain.rate:9,.0f} webhooks/s "
                f"({drain.accepted:,} processed and delivered; workers' CPU "
                f"{drain.worker_cpu_us:.0f} us per webhook)",
                flush=True,
            )
            rate = uvloop.run(dispatch(storage, url, 10_000_000 + size, args.deliveries))
            print(f"  {'dispatch (' + label + ')':<22} {rate:9,.0f} events/s", flush=True)
            rows[label] = (ingress.rps, drain.rate, rate, rss)
        if not args.postgres:
            size_mb = sum(p.stat().st_size for p in folder.glob("growth.db*")) / 2**20
            print(f"  database size {size_mb:,.0f} MB")
    (ing0, drn0, dis0, _), (ing1, drn1, dis1, rss1) = rows["empty"], rows["full"]
    print(
        f"\n  ingress at {args.events:,}: {ing1 / ing0:.2f}x empty (target >= 0.9x: "
        f"{verdict(ing1 / ing0, 0.9)})\n"
        f"  drain at {args.events:,}: {drn1 / drn0:.2f}x empty (target >= 0.9x: "
        f"{verdict(drn1 / drn0, 0.9)})\n"
        f"  dispatch at {args.events:,}: {dis1 / dis0:.2f}x empty (target >= 0.9x: "
        f"{verdict(dis1 / dis0, 0.9)})\n"
        f"  server RSS at {args.events:,}: {rss1:.0f} MB (target <= 150 MB: "
        f"{verdict(rss1, 150, higher_is_better=False)})"
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
