"""Backlog drain: how fast processing and delivery catch up after a burst, on their own.

`bspgate serve` (one subscriber, the sink of `bench/e2e.py`; info logs) accepts a burst of
distinct signed Cloud API webhooks (wrk, 64 connections, `--burst` seconds) while its worker
processes are paused (SIGSTOP: a processing outage), so every webhook is stored and none is
processed yet; the backlog is read from `GET /metrics` (`bspgate_store_rows{state="raw_received"}`)
once it stops changing. Then the workers resume, and the benchmark times how long until every
payload is processed (that count reads 0, polled every 0.1 s) and until the last event arrived at
the subscriber (the sink's own arrival time).

That is the back half's rate with the machine's cores to itself and no webhook arriving: what an
operator can expect a backlog to drain at, and a ceiling of the end-to-end rate (`bench/e2e.py`),
where the server takes its share of the cores as well. The workers' CPU per webhook is read from
/proc (on PostgreSQL the database server's own processes are not in it). Compared with the bare
durable route's maximum (`bench/bare.py`) in the same run, before and after the drains (the
higher of the two), as the end-to-end benchmark is.

    python -m bench.drain [--burst 4] [--runs 2] [--postgres postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.common import postgres_database, run_wrk, wrk_script
from bench.e2e import backends, bare_max, settle, workspace
from bench.ingress import gateway_server

LIMIT = 300.0  # seconds a drain may take before the run is reported as stuck
POLL = 0.1
_QUEUED = re.compile(r'^bspgate_store_rows\{state="raw_received"\} (\S+)$', re.MULTILINE)


@dataclass
class Drain:
    accepted: int
    processed_s: float
    delivered_s: float
    worker_cpu_us: float  # both workers' CPU per webhook while draining

    @property
    def rate(self) -> float:
        """Webhooks a second from resume to the last event arrived."""
        return self.accepted / self.delivered_s


def _workers(pid: int) -> list[int]:
    """The server's child processes (its workers; a resource tracker idles beside them)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            children += [int(c) for c in (task / "children").read_text().split()]
    return children


def _cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total


def _queued(client: httpx.Client, url: str) -> float:
    """Payloads accepted and not yet processed, as `/metrics` reports them."""
    found = _QUEUED.search(client.get(f"{url}/metrics").text)
    if found is None:
        raise RuntimeError("/metrics has no raw_received count")
    return float(found.group(1))


def _backlog(client: httpx.Client, url: str) -> int:
    """The stored backlog once the last answers are committed (two equal reads in a row)."""
    last = -1.0
    for _ in range(50):
        now = _queued(client, url)
        if now == last:
            return int(now)
        last = now
        time.sleep(0.2)
    raise RuntimeError("the backlog kept changing with the workers paused")


@contextlib.contextmanager
def _paused(pids: list[int]) -> Iterator[None]:
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def drain_once(folder: Path, storage: str, sink: str, burst: float, offset: int) -> Drain:
    with (
        gateway_server(folder, storage, f"{sink}/hook") as (url, pid),
        httpx.Client(timeout=30) as client,
    ):
        run_wrk(url, wrk_script(folder, 2_000, offset, threads=2), 2)  # warm-up, delivered too
        settle(sink)
        workers = _workers(pid)
        if len(workers) < 2:  # the processing and delivery workers (and a resource tracker)
            raise RuntimeError("the server's worker processes are not listed in /proc")
        count = int(burst * 15_000)
        script = wrk_script(folder, count, offset + 2_000, threads=2)
        with _paused(workers):
            result = run_wrk(url, script, burst)
            if result.requests > count:  # repeats are duplicates: no events to wait for
                raise RuntimeError(f"wrk sent {result.requests - count} repeated bodies")
            accepted = _backlog(client, url)  # exactly what was stored, answered or not
            start_cpu = _cpu_ticks(workers)
            started = time.monotonic()
        processed_s = delivered_s = math.nan
        last, arrived = started, 0
        while time.monotonic() - started < LIMIT:
            time.sleep(POLL)
            if math.isnan(processed_s) and _queued(client, url) == 0:
                processed_s = time.monotonic() - started  # to within a poll
            arrivals = client.get(f"{sink}/drain").json()  # (number, monotonic time) each
            arrived += len(arrivals)
            last = max([last, *(at for _, at in arrivals)])
            if arrived >= accepted:
                delivered_s = last - started  # the sink's own arrival time: no poll delay
                processed_s = min(processed_s, delivered_s)
                break
        cpu_us = (_cpu_ticks(workers) - start_cpu) * 1e6 / os.sysconf("SC_CLK_TCK")
    return Drain(accepted, processed_s, delivered_s, cpu_us / max(accepted, 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=float, default=4.0, help="seconds of accepting")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--postgres", help="PostgreSQL server URL (a throwaway database is made)")
    parser.add_argument("--no-sqlite", action="store_true")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install wrk)")
    print("reproduce: python -m bench.drain" + "".join(f" {a}" for a in (argv or sys.argv[1:])))
    summary = []
    stuck = False
    with workspace() as (folder, sink, stack):
        offset = 0
        for backend, server in backends(args):
            database = stack.enter_context(postgres_database(server)) if server else None
            top = bare_max(folder, database, 8.0)
            print(f"\n{backend}: bare durable route maximum {top:,.0f} req/s (wrk, 64 conns)")
            tops = [top]
            drains = []
            for run in range(args.runs):
                offset += 10_000_000
                storage = (
                    stack.enter_context(postgres_database(server, f"_{run}"))
                    if server
                    else f"sqlite:///{folder / f'drain-{run}.db'}"
                )
                drain = drain_once(folder, storage, sink, args.burst, offset)
                if math.isnan(drain.delivered_s):
                    print(f"  run {run + 1}: {drain.accepted:,} stored, not drained in {LIMIT:g} s")
                    stuck = True
                    break
                drains.append(drain)
                print(
                    f"  run {run + 1}: {drain.accepted:,} stored; processed in "
                    f"{drain.processed_s:.2f} s, every event arrived in {drain.delivered_s:.2f} s "
                    f"= {drain.rate:,.0f} webhooks/s; "
                    f"workers' CPU {drain.worker_cpu_us:.0f} us per webhook",
                    flush=True,
                )
            if not drains:
                continue
            # measured again after the runs; the higher of the two maxima (never flattering)
            tops.append(bare_max(folder, database, 8.0))
            print(f"  bare durable route maximum after the runs: {tops[-1]:,.0f} req/s")
            top = max(tops)
            rate = statistics.median(d.rate for d in drains)
            summary.append(
                f"  {backend}: a backlog drains at {rate:,.0f} webhooks/s (median of "
                f"{len(drains)}) = {rate / top:.2f}x the bare route's maximum {top:,.0f} req/s"
            )
    print("\n" + "\n".join(summary))
    return 1 if stuck else 0


if __name__ == "__main__":
    sys.exit(main())
