"""Several replicas on one PostgreSQL: two real `bspgate serve` processes share one database.

A burst of signed Cloud API webhooks split across both is delivered exactly once and in order per
contact (each process runs its own dispatcher, claiming with SKIP LOCKED); concurrent first
messages of one new BSUID on both replicas make one contact; a replica that dies mid-delivery
leaves its claim to expire and the other replica delivers the row.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
import yaml

from bspgate.config import Settings
from bspgate.delivery.worker import Dispatcher
from bspgate.metrics import Metrics
from bspgate.simulate import signed_request
from bspgate.store.postgres import PostgresStore
from tests.conftest import API_KEY, SUBSCRIBER_SECRET, base_config, make_settings, meta_signature
from tests.harness import RunningGateway
from tests.payloads import text_webhook
from tests.store.servers import CountingReceiver, GatewayProcess, free_port, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]
AUTH = {"authorization": f"Bearer {API_KEY}"}


def replica_config(tmp_path: Path, dsn: str, receiver_url: str) -> dict[str, Any]:
    return base_config(
        tmp_path,
        storage=dsn,
        subscribers=[
            {
                "id": "crm",
                "url": receiver_url,
                "secret": SUBSCRIBER_SECRET,
                "retry_schedule": ["1s", "1s", "1s"],
                "timeout": "10s",
            }
        ],
    )


@contextlib.contextmanager
def two_replicas(
    tmp_path: Path, dsn: str, receiver: CountingReceiver
) -> Iterator[tuple[Settings, list[GatewayProcess]]]:
    config = replica_config(tmp_path, dsn, receiver.url)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    settings = make_settings(tmp_path, **config)
    with contextlib.ExitStack() as stack:
        replicas = [
            stack.enter_context(GatewayProcess(path, free_port(), tmp_path / f"replica{n}.log"))
            for n in (1, 2)
        ]
        for replica in replicas:
            replica.wait_ready()
        yield settings, replicas
        for replica in replicas:
            assert "Traceback" not in replica.log(), replica.log()


class Signer:
    """Signs Cloud API bodies as `bspgate.simulate.signed_request` does, without its cost.

    `signed_request` loads and compiles the channel's mapping on every call (~0.1 s here), which
    would turn a burst into a trickle; the first body goes through it and the rest are signed the
    same way (Meta's `x-hub-signature-256`), checked against it.
    """

    def __init__(self, settings: Settings, first: bytes) -> None:
        channel = settings.channel("cloud-us")
        assert channel is not None
        url, headers, payload = signed_request(settings, channel, first)
        self.headers = {name.lower(): value for name, value in headers.items()}
        assert payload == first
        assert self.headers["x-hub-signature-256"] == meta_signature(first)
        self.path = url.removeprefix(settings.server.public_url)

    def post(self, client: httpx.Client, replica: GatewayProcess, body: bytes) -> int:
        headers = {**self.headers, "x-hub-signature-256": meta_signature(body)}
        return client.post(replica.url + self.path, content=body, headers=headers).status_code


def stored_events(replica: GatewayProcess) -> list[dict[str, Any]]:
    """Every stored event, oldest first (paged through /v1/events)."""
    out: list[dict[str, Any]] = []
    cursor = None
    with httpx.Client(base_url=replica.url, headers=AUTH, timeout=30) as client:
        while True:
            params: dict[str, Any] = {"limit": 500, **({"cursor": cursor} if cursor else {})}
            page = client.get("/v1/events", params=params).json()
            out.extend(page["data"])
            cursor = page["next_cursor"]
            if not cursor:
                return list(reversed(out))


def delivered_by(replica: GatewayProcess) -> int:
    text = httpx.get(f"{replica.url}/metrics", timeout=10).text
    match = re.search(r'bspgate_deliveries_total\{[^}]*outcome="delivered"[^}]*\} (\S+)', text)
    return int(float(match.group(1))) if match else 0


def test_burst_across_two_replicas_is_delivered_exactly_once_in_contact_order(
    tmp_path: Path, postgres_dsn: str
) -> None:
    contacts = [f"US.{9_000_000_000_000_000 + n}" for n in range(25)]
    count = 300
    with (
        CountingReceiver(SUBSCRIBER_SECRET) as receiver,
        two_replicas(tmp_path, postgres_dsn, receiver) as (settings, replicas),
    ):
        bodies = [
            orjson.dumps(
                text_webhook(
                    f"wamid.burst.{n}",
                    bsuid=contacts[n % len(contacts)],
                    phone=None,
                    timestamp=1767225600 + n,
                )
            )
            for n in range(count)
        ]
        signer = Signer(settings, bodies[0])
        limits = httpx.Limits(max_connections=32)
        with (
            httpx.Client(timeout=30, limits=limits) as client,
            ThreadPoolExecutor(16) as pool,
        ):
            statuses = list(
                pool.map(lambda n: signer.post(client, replicas[n % 2], bodies[n]), range(count))
            )
        assert statuses == [200] * count

        wait_for(lambda: receiver.distinct() == count, f"{count} distinct deliveries", 90)
        # a dispatcher round or two later: a double claim would show up as a second delivery
        wait_for(lambda: sum(delivered_by(r) for r in replicas) >= count, "both metrics")
        events = stored_events(replicas[0])
        per_replica = [delivered_by(r) for r in replicas]

    assert len(events) == count
    assert receiver.rejected == 0
    assert set(receiver.counts) == {e["id"] for e in events}
    assert max(receiver.counts.values()) == 1, receiver.counts.most_common(3)
    assert sum(per_replica) == count
    # (which replica's dispatcher delivers is a race: with per-contact ordering a dispatcher that
    # is already busy keeps the queue heads; each event is delivered once either way)
    # per-contact order: each contact's events arrive in the order they were stored
    for contact_id in {e["subject"] for e in events}:
        stored = [e["id"] for e in events if e["subject"] == contact_id]
        arrived = [event_id for subject, event_id in receiver.order if subject == contact_id]
        assert arrived == stored, contact_id
    assert len({e["subject"] for e in events}) == len(contacts)


def test_concurrent_first_messages_on_both_replicas_make_one_contact(
    tmp_path: Path, postgres_dsn: str
) -> None:
    bsuid, phone = "US.8000000000000000001", "15557654321"
    with (
        CountingReceiver(SUBSCRIBER_SECRET) as receiver,
        two_replicas(tmp_path, postgres_dsn, receiver) as (settings, replicas),
    ):
        bodies = [
            orjson.dumps(
                text_webhook(f"wamid.first.{n}", bsuid=bsuid, phone=phone, timestamp=1767225600 + n)
            )
            for n in range(10)
        ]
        start = threading.Barrier(len(bodies))
        signer = Signer(settings, bodies[0])

        def send(n: int) -> int:
            with httpx.Client(timeout=30) as client:
                start.wait(timeout=30)
                return signer.post(client, replicas[n % 2], bodies[n])

        with ThreadPoolExecutor(len(bodies)) as pool:
            assert list(pool.map(send, range(len(bodies)))) == [200] * len(bodies)
        # answered once the raw payloads are durable; the events follow right after
        wait_for(lambda: len(stored_events(replicas[1])) == len(bodies), "processing")
        events = stored_events(replicas[1])
        found = httpx.get(
            f"{replicas[0].url}/v1/contacts", params={"bsuid": bsuid}, headers=AUTH
        ).json()["data"]
        by_phone = httpx.get(
            f"{replicas[1].url}/v1/contacts", params={"phone": "+" + phone}, headers=AUTH
        ).json()["data"]
        wait_for(lambda: receiver.distinct() == len(bodies), "every delivery")

    assert len(events) == len(bodies)
    assert len({e["subject"] for e in events}) == 1
    assert [c["id"] for c in found] == [events[0]["subject"]]
    assert [c["id"] for c in by_phone] == [events[0]["subject"]]


def test_expired_claim_of_a_dead_replica_is_delivered_by_the_other(
    tmp_path: Path, postgres_dsn: str
) -> None:
    claimed, release = threading.Event(), threading.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        claimed.set()  # replica A is mid-delivery: the row is claimed, the POST never returns
        while not release.is_set():
            await asyncio.sleep(0.02)
        raise httpx.ConnectError("replica A is gone")

    async def replica_a(settings: Settings) -> None:
        """A dispatcher with a 1 s lease that dies (is cancelled) before recording anything."""
        store = PostgresStore(postgres_dsn)
        await store.open()
        try:
            async with httpx.AsyncClient(transport=httpx.MockTransport(hang)) as client:
                dispatcher = Dispatcher(store, settings.subscribers, client, Metrics(), lease=1.0)
                task = asyncio.create_task(dispatcher.run_once())
                while not release.is_set():
                    await asyncio.sleep(0.02)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            await store.close()

    with CountingReceiver(SUBSCRIBER_SECRET) as receiver:
        config = replica_config(tmp_path, postgres_dsn, receiver.url)
        settings = make_settings(tmp_path, **config)
        with RunningGateway(settings, dispatch=False) as ingress:  # stores, delivers nothing
            assert ingress.post("cloud-us", orjson.dumps(text_webhook("wamid.lease"))).is_success
            (event,) = ingress.events()
        thread = threading.Thread(target=asyncio.run, args=(replica_a(settings),))
        thread.start()
        try:
            assert claimed.wait(timeout=30), "replica A never claimed the row"
            with psycopg.connect(postgres_dsn) as conn:
                row = conn.execute("SELECT state FROM deliveries").fetchone()
            assert row == ("inflight",)
            path = tmp_path / "config.yaml"
            path.write_text(yaml.safe_dump(config))
            with GatewayProcess(path, free_port(), tmp_path / "replica-b.log") as replica_b:
                replica_b.wait_ready()
                wait_for(lambda: receiver.distinct() == 1, "replica B to deliver the row")
        finally:
            release.set()
            thread.join(timeout=30)
    with psycopg.connect(postgres_dsn) as conn:
        rows = conn.execute("SELECT state, attempts FROM deliveries").fetchall()
    assert receiver.counts == {event["id"]: 1}
    assert rows == [("delivered", 1)]  # replica A's attempt died unrecorded
