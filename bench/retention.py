"""Retention: ingest p99 while a purge of many old rows runs, against ingest with no purge.

Same run, same machine, same filled SQLite file (a copy per phase): `--rows` past webhooks
(raw payload, event, delivered outbox row each) are bulk-inserted with an old timestamp; then
  baseline: `bspgate serve` with retention off, `--concurrency` clients post distinct signed
            Cloud API webhooks for `--seconds`;
  purge:    the same with `retention: {events: 1d, raw_payloads: 1d, attempts: 1d}`, so the
            background purger deletes every filled row (in batches of 500) while ingest runs.
Reports each phase's p50/p99 webhook latency, rows purged during the purge window (from
/metrics), and the p99 ratio (target: purge p99 <= 2x baseline p99).

    python -m bench.retention [--rows 1000000] [--seconds 10] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from bench.common import body, bspgate_serve, free_port, gateway_config, signature, verdict
from bench.fill import fill_history
from bspgate.store.sqlite import SqliteStore


async def _fill(path: Path, rows: int) -> float:
    store = SqliteStore(path)
    await store.open()
    started = time.perf_counter()
    try:
        await fill_history(store, rows, contacts=min(rows, 50_000))
    finally:
        await store.close()
    return time.perf_counter() - started


async def _load(base: str, seconds: float, concurrency: int, offset: int) -> list[float]:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    counter = iter(range(offset, offset + 10_000_000))

    async def client() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            while time.monotonic() < deadline:
                payload = body(next(counter))
                headers = {
                    "content-type": "application/json",
                    "x-hub-signature-256": signature(payload),
                }
                started = time.perf_counter()
                answer = await http.post("/webhooks/cloud-us", content=payload, headers=headers)
                latencies.append(time.perf_counter() - started)
                if answer.status_code != 200:
                    raise RuntimeError(f"webhook answered {answer.status_code}: {answer.text}")

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies


def _purged(base: str) -> float:
    text = httpx.get(base + "/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("bspgate_retention_purged_total{")
    )


def _phase(
    folder: Path, db: Path, retention: dict[str, str] | None, args: argparse.Namespace, offset: int
) -> tuple[list[float], float, float]:
    port = free_port()
    config = gateway_config(folder, f"sqlite:///{db}", port, [])
    if retention:
        data = yaml.safe_load(config.read_text())
        data["retention"] = retention
        config.write_text(yaml.safe_dump(data))
    base = f"http://127.0.0.1:{port}"
    with bspgate_serve(config, port):
        latencies = asyncio.run(_load(base, args.seconds, args.concurrency, offset))
        purged = _purged(base)
        remaining = time.monotonic() + args.drain
        while retention and purged < args.rows * 2 and time.monotonic() < remaining:
            time.sleep(0.5)
            purged_after = _purged(base)
            if purged_after == purged:
                break
            purged = purged_after
        total = _purged(base)
    return latencies, purged, total


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1] * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="old webhooks to fill")
    parser.add_argument("--seconds", type=float, default=10.0, help="load per phase")
    parser.add_argument("--concurrency", type=int, default=4, help="concurrent clients")
    parser.add_argument("--drain", type=float, default=0.0, help="seconds to wait for the rest")
    args = parser.parse_args(argv)
    print(f"retention: ingest p99 during a purge of {args.rows:,} old webhooks vs no purge")
    print("reproduce: python -m bench.retention" + "".join(f" {a}" for a in (argv or sys.argv[1:])))
    with tempfile.TemporaryDirectory(prefix="bspgate-bench-") as tmp:
        folder = Path(tmp)
        filled = folder / "filled.db"
        took = asyncio.run(_fill(filled, args.rows))
        print(f"  bulk-inserted {args.rows:,} webhooks in {took:.0f} s", flush=True)
        results = {}
        for label, retention in (
            ("baseline", None),
            ("purge", {"events": "1d", "raw_payloads": "1d", "attempts": "1d", "interval": "1s"}),
        ):
            db = folder / f"{label}.db"
            for suffix in ("", "-wal", "-shm"):
                if Path(f"{filled}{suffix}").exists():
                    shutil.copy(f"{filled}{suffix}", f"{db}{suffix}")
            latencies, during, total = _phase(folder, db, retention, args, 50_000_000)
            results[label] = latencies
            line = (
                f"  {label:<9} {len(latencies):6,} webhooks  p50 {_p(latencies, 0.5):6.2f} ms  "
                f"p99 {_p(latencies, 0.99):6.2f} ms"
            )
            if retention:
                line += f"  rows purged during load {during:,.0f} (by the end {total:,.0f})"
            print(line, flush=True)
    ratio = _p(results["purge"], 0.99) / _p(results["baseline"], 0.99)
    print(
        f"\n  p99 during purge: {ratio:.2f}x baseline (target <= 2x: {verdict(ratio, 2.0, False)})"
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
