"""Lanes through real processes: bspgate under uvicorn, receivers under uvicorn, all on loopback.

The slow receiver holds every request open until the test lets it answer (as a subscriber
answering after 8 s would, but without a timed assertion): the healthy subscriber's events must
all arrive while the slow one's first request is still open.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.conftest import SUBSCRIBER_SECRET, make_settings
from tests.harness import RunningGateway, ServerThread
from tests.payloads import text_webhook


class CountingReceiver:
    """Verifies signatures and keeps message ids in arrival order; `hold` keeps requests open."""

    def __init__(self, *, hold: bool = False, status: int = 204, close: bool = False) -> None:
        """`close`: answer `Connection: close`, so every request needs a new connection."""
        self.arrived: list[str] = []
        self.headers = {"connection": "close"} if close else {}
        self.open = 0  # requests received and not answered yet
        self.answered = 0
        self.status = status
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self._lock = threading.Lock()
        self._webhook = Webhook(SUBSCRIBER_SECRET)
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        event = self._webhook.verify(body, dict(request.headers))
        with self._lock:
            self.open += 1
        while not self.release.is_set():
            await asyncio.sleep(0.01)
        with self._lock:
            self.open -= 1
            self.answered += 1
            if 200 <= self.status < 300:
                self.arrived.append(event["data"]["message"]["id"])
        return Response(status_code=self.status, headers=self.headers)


def wait_for(condition: Callable[[], bool], what: str, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def subscriber(id_: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"id": id_, "url": url, "secret": SUBSCRIBER_SECRET, **extra}


def test_a_slow_subscriber_never_delays_a_healthy_one(tmp_path: Path) -> None:
    slow, healthy = CountingReceiver(hold=True), CountingReceiver()
    with ServerThread(slow.app) as slow_server, ServerThread(healthy.app) as healthy_server:
        subscribers = [
            subscriber("slow", f"{slow_server.url}/hook", timeout="10s", max_in_flight=4),
            subscriber("healthy", f"{healthy_server.url}/hook"),
        ]
        storage = f"sqlite:///{tmp_path / 'lanes.db'}"
        settings = make_settings(tmp_path, storage=storage, subscribers=subscribers)
        with RunningGateway(settings) as gateway:
            # 12 contacts, 5 messages each: more than the slow lane's 4 slots
            sent = [f"wamid.lane{n}" for n in range(60)]
            for n, message_id in enumerate(sent):
                bsuid = f"US.{n % 12:020d}"
                body = orjson.dumps(text_webhook(message_id, bsuid=bsuid, phone=None))
                assert gateway.post("cloud-us", body).is_success
            wait_for(lambda: len(healthy.arrived) == len(sent), "the healthy subscriber")
            # every healthy delivery arrived while the slow lane's first requests are still open
            assert slow.answered == 0
            assert slow.open == 4  # its in-flight limit, not one more
            slow.release.set()
            wait_for(lambda: len(slow.arrived) == len(sent), "the slow subscriber")
    assert sorted(healthy.arrived) == sorted(sent)
    assert sorted(slow.arrived) == sorted(sent)
    for arrived in (healthy.arrived, slow.arrived):
        for contact in range(12):  # per-contact order holds in both lanes
            mine = [m for m in arrived if int(m.removeprefix("wamid.lane")) % 12 == contact]
            assert mine == sorted(mine, key=lambda m: int(m.removeprefix("wamid.lane")))


class BatchReceiver:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self._webhook = Webhook(SUBSCRIBER_SECRET)
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        self._webhook.verify(body, dict(request.headers))
        assert request.headers["content-type"] == "application/cloudevents-batch+json"
        self.batches.append([e["data"]["message"]["id"] for e in orjson.loads(body)])
        return Response(status_code=204)


def test_batch_delivery_through_a_running_gateway(tmp_path: Path) -> None:
    receiver = BatchReceiver()
    with ServerThread(receiver.app) as server:
        sub = subscriber("crm", f"{server.url}/hook", batch={"max": 10, "wait": "50ms"})
        storage = f"sqlite:///{tmp_path / 'batch.db'}"
        settings = make_settings(tmp_path, storage=storage, subscribers=[sub])
        with RunningGateway(settings) as gateway:
            sent = [f"wamid.b{n}" for n in range(30)]
            for n, message_id in enumerate(sent):
                body = orjson.dumps(text_webhook(message_id, bsuid=f"US.{n:020d}", phone=None))
                assert gateway.post("cloud-us", body).is_success
            wait_for(lambda: sum(len(b) for b in receiver.batches) >= len(sent), "every event")
    arrived = [m for batch in receiver.batches for m in batch]
    assert sorted(arrived) == sorted(sent)  # each exactly once
    assert all(len(batch) <= 10 for batch in receiver.batches)
    assert len(receiver.batches) < len(sent)  # batched, not one request each


def test_a_slow_subscriber_does_not_take_the_connections_of_another(tmp_path: Path) -> None:
    # The slow lane holds 100 requests open (its max_in_flight): once the shared connection pool
    # had 100 connections, the healthy lane's requests waited for one, their timeout running.
    # The healthy receiver closes each connection: every request needs a new one.
    slow, healthy = CountingReceiver(hold=True), CountingReceiver(close=True)
    with ServerThread(slow.app) as slow_server, ServerThread(healthy.app) as healthy_server:
        subscribers = [
            subscriber(
                "slow", f"{slow_server.url}/hook", timeout="60s", max_in_flight=100,
                ordering="none",
            ),
            subscriber("healthy", f"{healthy_server.url}/hook", timeout="2s"),
        ]  # fmt: skip
        storage = f"sqlite:///{tmp_path / 'pool.db'}"
        settings = make_settings(tmp_path, storage=storage, subscribers=subscribers)
        try:
            with RunningGateway(settings) as gateway:
                sent = [f"wamid.pool{n}" for n in range(105)]
                for n, message_id in enumerate(sent[:100]):
                    body = orjson.dumps(text_webhook(message_id, bsuid=f"US.{n:020d}", phone=None))
                    assert gateway.post("cloud-us", body).is_success
                wait_for(lambda: slow.open == 100, "the slow lane's 100 open requests")
                for n, message_id in enumerate(sent[100:], start=100):
                    body = orjson.dumps(text_webhook(message_id, bsuid=f"US.{n:020d}", phone=None))
                    assert gateway.post("cloud-us", body).is_success
                wait_for(lambda: len(healthy.arrived) == len(sent), "the healthy subscriber")
                assert slow.answered == 0  # all of it while the slow lane's requests are open
                attempts = gateway.client.get(
                    "/v1/deliveries", params={"subscriber_id": "healthy", "limit": 200}
                ).json()["data"]
                slow.release.set()
                wait_for(lambda: len(slow.arrived) == len(sent), "the slow subscriber")
        finally:
            slow.release.set()
    assert sorted(healthy.arrived) == sorted(sent)
    assert {(row["state"], row["attempts"]) for row in attempts} == {("delivered", 1)}
