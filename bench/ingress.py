"""Ingress: signed Cloud API webhooks per second, p50/p99 to a durable 200, at 64 connections.

`bspgate serve` as users run it (one subscriber, the dispatcher delivering to a local receiver,
info logs) against the bare durable route (`bench/bare.py`: HMAC, JSON parse, raw insert) on the
same backend, measured in the same run, alternating, so machine drift hits both. Load: wrk,
2 threads, 64 keep-alive connections, every request a distinct ~2 KB signed webhook over 10,000
contacts (each run its own contacts). Targets: SQLite >= 0.7x the bare SQLite route and p99 <=
1.5x its p99; PostgreSQL >= 0.5x the bare PostgreSQL route.

    python -m bench.ingress [--seconds 8] [--runs 2] [--postgres postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.common import (
    WrkResult,
    bare_server,
    bspgate_serve,
    free_port,
    gateway_config,
    median_result,
    postgres_database,
    receiver,
    rss_mb,
    run_wrk,
    subscriber,
    verdict,
    wrk_script,
)

TARGETS = {"sqlite": 0.7, "postgres": 0.5}
P99_TARGET = 1.5
RATE_CEILING = 15_000  # distinct bodies per second of run prepared for wrk (no duplicates)


@contextlib.contextmanager
def gateway_server(
    folder: Path, storage: str, subscriber_url: str | None = None
) -> Iterator[tuple[str, int]]:
    port = free_port()
    subscribers = [subscriber(subscriber_url)] if subscriber_url else []
    with bspgate_serve(gateway_config(folder, storage, port, subscribers), port) as pid:
        yield f"http://127.0.0.1:{port}", pid


def measure(
    name: str,
    server: contextlib.AbstractContextManager[tuple[str, int]],
    folder: Path,
    seconds: float,
    offset: int,
) -> tuple[WrkResult, float]:
    count = int(seconds * RATE_CEILING)
    base = offset // 1000  # every run its own 10,000 contacts: first messages, like with like
    warm = wrk_script(folder, 2_000, offset, threads=2, contact_base=base)
    script = wrk_script(folder, count, offset + 2_000, threads=2, contact_base=base)
    with server as (url, pid):
        run_wrk(url, warm, 2)  # warm-up: imports, prepared statements, page cache
        result = run_wrk(url, script, seconds)
        rss = rss_mb(pid)
    if result.requests > count:
        print(f"  note: {name} sent {result.requests - count} repeated bodies", file=sys.stderr)
    print(f"  {name:<24} {result.row()}  RSS {rss:.0f} MB", flush=True)
    return result, rss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--postgres", help="PostgreSQL server URL (a throwaway database is made)")
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL pairs only")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install wrk)")
    print(f"ingress: wrk -t2 -c64 -d{args.seconds:g}s, {args.runs} run(s) each, medians")
    print("reproduce: python -m bench.ingress" + "".join(f" {a}" for a in (argv or sys.argv[1:])))
    results: dict[str, list[WrkResult]] = {}
    offset = 0
    with (
        tempfile.TemporaryDirectory(prefix="bspgate-bench-") as tmp,
        receiver() as hook,
        contextlib.ExitStack() as stack,
    ):
        folder = Path(tmp)
        pairs = [] if args.no_sqlite else ["sqlite"]
        if args.postgres:
            pairs.append("postgres")
        for run in range(args.runs):
            for backend in pairs:
                database = None
                if backend == "postgres":
                    database = stack.enter_context(postgres_database(args.postgres))
                    storage = database
                else:
                    storage = f"sqlite:///{folder / f'gateway-{run}.db'}"
                servers = [
                    (f"bare {backend}", bare_server(folder, database)),
                    (f"bspgate {backend}", gateway_server(folder, storage, hook)),
                ]
                if run % 2:
                    servers.reverse()  # alternate which goes first
                for name, server in servers:
                    offset += 10_000_000
                    result, _ = measure(name, server, folder, args.seconds, offset)
                    results.setdefault(name, []).append(result)
    print("\nmedians:")
    for backend in pairs:
        bare = median_result(results[f"bare {backend}"])
        ours = median_result(results[f"bspgate {backend}"])
        ratio = ours.rps / bare.rps
        p99 = ours.p99_ms / bare.p99_ms
        print(
            f"  {'bare ' + backend:<24} {bare.row()}\n  {'bspgate ' + backend:<24} {ours.row()}\n"
            f"  {'':<24} ratio {ratio:.2f}x (target >= {TARGETS[backend]}x: "
            f"{verdict(ratio, TARGETS[backend])}); p99 {p99:.2f}x"
            + (f" (target <= {P99_TARGET}x: {verdict(p99, P99_TARGET, False)})"
               if backend == "sqlite" else "")
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
