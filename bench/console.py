"""Console pages at a large store: every page's answer time with 1,000,000 stored events.

The history is bulk-inserted with SQL (`bench/fill.py`: raw payloads, events, delivered outbox
rows, 100,000 contacts), plus dead letters, attempts and quarantined payloads so no page is
empty. Then `bspgate serve` answers each console page `--requests` times in a row after a
warm-up, signed in as an operator. Baselines from the same server in the same run: `/healthz`
(the HTTP floor) and `GET /v1/events?limit=50` (the API's newest page). Target: every page's
p95 <= 200 ms. The live tail's delay (webhook posted -> its row on the stream) is measured too.

    python -m bench.console [--events 1000000] [--requests 20] [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    API_KEY,
    SUBSCRIBER_SECRET,
    bspgate_serve,
    free_port,
    gateway_config,
    postgres_database,
    verdict,
)
from bench.delivery import open_store
from bench.fill import STAMP, fill_history
from bspgate.config import load_settings
from bspgate.simulate import signed_request

TARGET_MS = 200.0


def extras(tx: Any, dead: int, quarantined: int) -> None:
    """Dead letters with their attempts, and quarantined payloads, on top of the history."""
    tx.execute(
        "UPDATE deliveries SET state = 'dead', last_status = 500, last_error = 'HTTP 500', "
        "attempts = 7 WHERE event_seq IN (SELECT seq FROM events ORDER BY seq DESC LIMIT ?)",
        (dead,),
    )
    tx.execute(
        "INSERT INTO attempts (delivery_id, at, status, latency_ms, error) SELECT id, ?, "
        "CASE WHEN state = 'dead' THEN 500 ELSE 200 END, 12.5, NULL FROM deliveries "
        "ORDER BY event_seq DESC LIMIT ?",
        (STAMP, dead * 5),
    )
    for n in range(quarantined):
        tx.execute(
            "INSERT INTO raw_payloads (id, channel_id, provider, received_at, content_type, body, "
            "state, reason) VALUES (?, 'cloud-us', 'cloudapi', ?, 'application/json', ?, "
            "'quarantined', 'no rule matched')",
            (f"raw_q_{n:05d}", STAMP, b'{"object":"whatsapp_business_account","entry":[]}'),
        )


async def prefill(storage: str, count: int) -> float:
    store = open_store(storage)
    await store.open()
    started = time.perf_counter()
    try:
        await fill_history(store, count)
        await store.transaction(lambda tx: extras(tx, min(1000, count // 10), 50))
    finally:
        await store.close()
    return time.perf_counter() - started


def sign_in(base: str) -> httpx.Client:
    # the console signs in with its cookie; the /v1 baseline sends the key as a Bearer token
    headers = {"authorization": f"Bearer {API_KEY}"}
    client = httpx.Client(base_url=base, timeout=60, follow_redirects=False, headers=headers)
    form = client.get("/console/login").text
    token = re.search(r'name="csrf" value="([^"]+)"', form)
    assert token is not None
    answer = client.post("/console/login", data={"csrf": token.group(1), "key": API_KEY})
    assert answer.status_code == 303, answer.text
    return client


def timings(client: httpx.Client, path: str, requests: int) -> list[float]:
    for _ in range(2):  # warm-up: page cache, template compilation
        client.get(path)
    out = []
    for _ in range(requests):
        started = time.perf_counter()
        answer = client.get(path)
        out.append((time.perf_counter() - started) * 1000)
        if answer.status_code != 200:
            raise RuntimeError(f"{path} answered {answer.status_code}")
    return out


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def tail_delay(client: httpx.Client, base: str, config: Path) -> float:
    """Seconds from posting a webhook to its row arriving on the console's live tail."""
    settings = load_settings(config, env={})
    channel = settings.channel("cloud-us")
    assert channel is not None
    body = Path(__file__).resolve().parent.parent / "tests/fixtures/cloudapi/inbound_text.json"
    url, headers, payload = signed_request(settings, channel, body.read_bytes())
    seen = threading.Event()

    def listen() -> None:
        with client.stream("GET", "/console/events/stream", timeout=30) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:") and "whatsapp.message.received" in line:
                    seen.set()
                    return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    time.sleep(1.0)  # the stream is open and has read the newest seq
    started = time.perf_counter()
    httpx.post(url, content=payload, headers=headers, timeout=30)
    seen.wait(timeout=20)
    return time.perf_counter() - started if seen.is_set() else float("inf")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--postgres", help="PostgreSQL server URL (a throwaway database is made)")
    args = parser.parse_args(argv)
    print(f"console: {args.events:,} stored events, {args.requests} requests per page")
    print("reproduce: python -m bench.console" + "".join(f" {a}" for a in (argv or sys.argv[1:])))
    with (
        tempfile.TemporaryDirectory(prefix="bspgate-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        folder = Path(tmp)
        storage = f"sqlite:///{folder / 'console.db'}"
        if args.postgres:
            storage = stack.enter_context(postgres_database(args.postgres))
        seconds = asyncio.run(prefill(storage, args.events))
        print(f"  filled in {seconds:.0f} s")
        port = free_port()
        subscriber = {"id": "crm", "url": "http://127.0.0.1:9/hook", "secret": SUBSCRIBER_SECRET,
                      "retry_schedule": ["1h"]}  # fmt: skip
        config = gateway_config(folder, storage, port, [subscriber])
        with bspgate_serve(config, port):
            base = f"http://127.0.0.1:{port}"
            client = sign_in(base)
            middle = f"evt_bench_{args.events // 2:09d}"
            deep = client.get("/v1/events?limit=500").json()["next_cursor"]
            pages = {
                "baseline /healthz": "/healthz",
                "baseline /v1/events": "/v1/events?limit=50",
                "overview": "/console/",
                "events": "/console/events",
                "events, older page": f"/console/events?cursor={deep}",
                "events by type (none)": "/console/events?type=whatsapp.message.status",
                "events by channel": "/console/events?channel=cloud-us",
                "events by contact": "/console/events?contact=ct_bench_00000042",
                "events since (recent)": "/console/events?since=2025-12-31T00:00:00Z",
                "events in a past window": "/console/events?since=2025-06-01T00:00:00Z"
                "&until=2025-06-02T00:00:00Z",
                "events since (none yet)": "/console/events?since=2027-01-01T00:00:00Z",
                "event page": f"/console/events/{middle}",
                "contact search (BSUID)": "/console/contacts?q=US.90000000000000000042",
                "contact search (name)": "/console/contacts?q=Sheena",
                "contact page": "/console/contacts/ct_bench_00000042",
                "deliveries": "/console/deliveries",
                "quarantine": "/console/quarantine",
                "quarantined payload, dry run": "/console/quarantine/raw_q_00001?dry_run=1",
                "playground": "/console/playground?provider=cloudapi&case=inbound_text",
                "send": "/console/send",
                "audit": "/console/audit",
            }
            worst = 0.0
            for name, path in pages.items():
                values = timings(client, path, args.requests)
                mid, high = statistics.median(values), p95(values)
                if not name.startswith("baseline"):
                    worst = max(worst, high)
                print(
                    f"  {name:<30} p50 {mid:7.1f} ms  p95 {high:7.1f} ms  max {max(values):7.1f} ms"
                )
            delay = tail_delay(client, base, config)
            print(f"  live tail: webhook -> row on the stream in {delay:.2f} s (target 2 s)")
            client.close()
    print(f"worst page p95 {worst:.1f} ms vs target {TARGET_MS:.0f} ms: "
          f"{verdict(worst, TARGET_MS, higher_is_better=False)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
