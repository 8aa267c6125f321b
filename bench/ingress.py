"""Ingress: signed Cloud API webhooks per second, p50/p99 to a durable 200, at 64 connections.

bspgate (`bspgate serve`, SQLite; and PostgreSQL when `--postgres URL` is given) against the
baseline `bench/bare.py` (HMAC check + raw insert, SQLite WAL, group commit, synchronous=FULL),
measured in the same run, alternating, so machine drift hits both. Load: wrk, 2 threads,
64 keep-alive connections, every request a distinct ~1.7 KB signed webhook (10,000 contacts);
the gateway has no subscribers, so this is ingress alone. Target: bspgate >= 0.6x the baseline.

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
    PYTHON,
    WrkResult,
    bspgate_serve,
    child,
    free_port,
    gateway_config,
    median_result,
    postgres_database,
    rss_mb,
    run_wrk,
    verdict,
    wrk_script,
)

TARGET = 0.6
RATE_CEILING = 15_000  # distinct bodies per second of run prepared for wrk (no duplicates)


@contextlib.contextmanager
def bare_server(folder: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    command = [
        PYTHON, "-m", "uvicorn", "bench.bare:app", "--port", str(port), "--loop", "uvloop",
        "--http", "httptools", "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    with child(
        command, f"http://127.0.0.1:{port}/readyz", {"BARE_DB": str(folder / "bare.db")}
    ) as pid:
        yield f"http://127.0.0.1:{port}", pid


@contextlib.contextmanager
def gateway_server(folder: Path, storage: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    with bspgate_serve(gateway_config(folder, storage, port, []), port) as pid:
        yield f"http://127.0.0.1:{port}", pid


def measure(
    name: str,
    server: contextlib.AbstractContextManager[tuple[str, int]],
    folder: Path,
    seconds: float,
    offset: int,
) -> tuple[WrkResult, float]:
    count = int(seconds * RATE_CEILING)
    warm = wrk_script(folder, 2_000, offset, threads=2)
    script = wrk_script(folder, count, offset + 2_000, threads=2)
    with server as (url, pid):
        run_wrk(url, warm, 2)  # warm-up: imports, prepared statements, page cache
        result = run_wrk(url, script, seconds)
        rss = rss_mb(pid)
    if result.requests > count:
        print(f"  note: {name} sent {result.requests - count} repeated bodies", file=sys.stderr)
    print(f"  {name:<22} {result.row()}  RSS {rss:.0f} MB", flush=True)
    return result, rss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--postgres", help="PostgreSQL server URL (a throwaway database is made)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install wrk)")
    print(f"ingress: wrk -t2 -c64 -d{args.seconds:g}s, {args.runs} run(s) each, medians")
    print("reproduce: python -m bench.ingress" + " ".join(f" {a}" for a in (argv or sys.argv[1:])))
    results: dict[str, list[WrkResult]] = {"bare": [], "sqlite": [], "postgres": []}
    offset = 0
    with tempfile.TemporaryDirectory(prefix="bspgate-bench-") as tmp:
        folder = Path(tmp)
        pg_url = contextlib.ExitStack()
        with pg_url:
            database = (
                pg_url.enter_context(postgres_database(args.postgres)) if args.postgres else None
            )
            for run in range(args.runs):
                offset += 10_000_000
                results["bare"].append(
                    measure(
                        "bare route (SQLite)", bare_server(folder), folder, args.seconds, offset
                    )[0]
                )
                offset += 10_000_000
                storage = f"sqlite:///{folder / f'gateway-{run}.db'}"
                results["sqlite"].append(
                    measure(
                        "bspgate (SQLite)",
                        gateway_server(folder, storage),
                        folder,
                        args.seconds,
                        offset,
                    )[0]
                )
                if database:
                    offset += 10_000_000
                    results["postgres"].append(
                        measure("bspgate (PostgreSQL)", gateway_server(folder, database), folder,
                                args.seconds, offset)[0]
                    )  # fmt: skip
    bare = median_result(results["bare"])
    print("\nmedians:")
    print(f"  {'bare route (SQLite)':<22} {bare.row()}")
    for key, label in (("sqlite", "bspgate (SQLite)"), ("postgres", "bspgate (PostgreSQL)")):
        if not results[key]:
            continue
        ours = median_result(results[key])
        ratio = ours.rps / bare.rps
        print(
            f"  {label:<22} {ours.row()}\n"
            f"  {'':<22} ratio {ratio:.2f}x the bare route (target >= {TARGET}x: "
            f"{verdict(ratio, TARGET)}); p99 {ours.p99_ms / bare.p99_ms:.1f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
