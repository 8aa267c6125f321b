"""Delivery defects an outside review found (tests/review_delivery of the reviewed copy), ported.

Real parts only: the store of the running backend (SQLite; PostgreSQL when configured), a real
subscriber on loopback (uvicorn in a thread, `tests.harness.ServerThread`), the production
poster (aiohttp), the real `Dispatcher` driven by a hand clock, and `/v1` through the ASGI app.

- An erasure while one of the contact's events is in flight: the subscriber may already hold the
  event, so it is told `whatsapp.contact.erased`, after that attempt's answer (never before it:
  a late event would recreate what the receiver erased). A failed in-flight attempt is never
  retried, nor reported as a dead letter.
- A `2xx` carrying a `Retry-After` that `str.isdigit` accepts but `float` cannot read (`²`) is
  a delivery, sent once.
- Retrying a disabled subscriber answers 409 `subscriber_disabled` with the reason and remedy.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from structlog.testing import capture_logs

from bspgate.app import create_app
from bspgate.delivery.retry import retry_after_seconds
from bspgate.delivery.transport import AiohttpPoster
from bspgate.delivery.worker import Dispatcher
from tests.conftest import API_KEY, make_settings
from tests.harness import ServerThread
from tests.payloads import text_webhook
from tests.test_delivery import Clock, Harness, subscriber

pytestmark = [pytest.mark.anyio, pytest.mark.store]  # store: runs on SQLite and PostgreSQL

HOLD = "hold"  # a scripted answer: wait for `Sink.release`, then answer `Sink.held_status`


class Sink:
    """A subscriber on loopback: per path, scripted answers (an HTTP status, a `Response`, or
    `HOLD`), then 200; every request kept as (path, event)."""

    def __init__(self) -> None:
        self.script: dict[str, list[Any]] = {}
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.release = threading.Event()
        self.held_status = 200
        self.app = Starlette(routes=[Route("/{path:path}", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        self.seen.append((request.url.path, orjson.loads(body)))
        queue = self.script.get(request.url.path, [])
        reply = queue.pop(0) if queue else 200
        if reply == HOLD:  # the subscriber has the body, and answers when told
            await asyncio.to_thread(self.release.wait, 30)
            reply = self.held_status
        return reply if isinstance(reply, Response) else Response(status_code=reply)

    def types(self, path: str) -> list[str]:
        return [event["type"] for at, event in self.seen if at == path]


@asynccontextmanager
async def loopback(
    tmp_path: Path, *subscribers: dict[str, Any], clock: Clock | None = None
) -> AsyncIterator[tuple[Harness, Sink]]:
    """A gateway (store open, no dispatcher of its own), a `Dispatcher` with the production
    poster, and a `Sink` on loopback; a subscriber's `url` holds `{sink}` for the sink's."""
    sink = Sink()
    with ServerThread(sink.app) as server:
        subs = [{**s, "url": s["url"].replace("{sink}", server.url)} for s in subscribers]
        settings = make_settings(tmp_path, subscribers=subs)
        clock = clock or Clock(datetime.now(UTC).replace(microsecond=0))
        app = create_app(settings, clock=clock, dispatch=False)
        gateway = app.state.gateway
        await gateway.store.open()
        poster = AiohttpPoster()
        try:
            dispatcher = Dispatcher(
                gateway.store, settings.subscribers, poster, gateway.metrics, clock=clock
            )
            yield Harness(gateway, dispatcher, clock, sink, app), sink  # type: ignore[arg-type]
        finally:
            await poster.aclose()
            await gateway.client.aclose()
            await gateway.store.close()


def api(h: Harness) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=h.app),
        base_url="http://gw",
        headers={"authorization": f"Bearer {API_KEY}"},
    )


# -- erasure while an event is in flight ---------------------------------------------------------
async def _erase_in_flight(
    h: Harness, sink: Sink, failures: int = 0
) -> tuple[dict[str, Any], dict[str, Any], asyncio.Task[int]]:
    """wamid.1 is POSTed to crm (after `failures` failed attempts), which holds it, and its
    contact is erased meanwhile: answers the erasure's summary, the delivery row and the round
    still waiting for the answer."""
    sink.script["/crm"] = [*([500] * failures), HOLD]
    await h.ingest(text_webhook("wamid.1", phone="15551234567", text="my secret text"))
    row = await h.only_delivery()
    for _ in range(failures):
        assert await h.dispatcher.run_once() == 1
        h.clock.advance(2)
    sending = asyncio.create_task(h.dispatcher.run_once())
    for _ in range(500):  # until the subscriber has the request
        if len(sink.seen) > failures:
            break
        await asyncio.sleep(0.02)
    assert len(sink.seen) > failures, "the subscriber got no request"
    async with api(h) as client:
        answer = await client.delete(f"/v1/contacts/{row['contact_id']}")
    assert answer.status_code == 200, answer.text
    summary: dict[str, Any] = answer.json()["erased"]
    assert summary["deliveries_in_flight"] == 1
    assert summary["notified"] == 1  # it may hold the whole event already
    # the notice waits behind the attempt in flight (per-contact order): no round sends it
    for _ in range(2):
        h.clock.advance(1)
        assert await h.dispatcher.run_once() == 0
    assert sink.types("/crm") == ["whatsapp.message.received"] * (failures + 1)
    return summary, row, sending


async def _stored(h: Harness, delivery_id: str) -> dict[str, Any]:
    row: dict[str, Any] = await h.gateway.store.read(lambda tx: tx.delivery(delivery_id))
    return row


async def test_a_subscriber_receiving_an_event_during_the_erasure_is_told_after_it(
    tmp_path: Path,
) -> None:
    async with loopback(tmp_path, subscriber("crm", "{sink}/crm")) as (h, sink):
        _, row, sending = await _erase_in_flight(h, sink)
        sink.release.set()  # crm answers 200: it holds the contact's phone and text
        await sending
        assert (await _stored(h, row["id"]))["state"] == "delivered"
        for _ in range(2):
            h.clock.advance(1)
            await h.dispatcher.run_once()
        assert sink.types("/crm") == ["whatsapp.message.received", "whatsapp.contact.erased"]
        notice = sink.seen[-1][1]
        assert notice["data"]["contact"] == {
            "id": row["contact_id"],
            **dict.fromkeys(("bsuid", "parent_bsuid", "phone", "username", "name")),
        }


async def test_a_failed_attempt_in_flight_at_the_erasure_is_erased_not_retried(
    tmp_path: Path,
) -> None:
    """Its last attempt (the second of `retry_schedule: [1s]`) fails: the row is erased, not a
    dead letter (no `bspgate.delivery.dead_lettered`), logged as erased; the notice follows."""
    subs = (
        subscriber("crm", "{sink}/crm", retry_schedule=["1s"]),
        subscriber("ops", "{sink}/ops", events=["bspgate.*"]),
    )
    async with loopback(tmp_path, *subs) as (h, sink):
        _, row, sending = await _erase_in_flight(h, sink, failures=1)
        sink.held_status = 503
        with capture_logs() as logs:
            sink.release.set()
            await sending
        stored = await _stored(h, row["id"])
        assert (stored["state"], stored["last_status"]) == ("erased", 503)
        logged = [e for e in logs if e.get("delivery_id") == row["id"]]
        assert [e["outcome"] for e in logged] == ["erased"], logged  # as stored, not "dead"
        for _ in range(3):
            h.clock.advance(1)
            await h.dispatcher.run_once()
        received = ["whatsapp.message.received"] * 2
        assert sink.types("/crm") == [*received, "whatsapp.contact.erased"]
        assert "bspgate.delivery.dead_lettered" not in sink.types("/ops")
        assert (await _stored(h, row["id"]))["state"] == "erased"


async def test_a_failed_attempt_in_flight_at_the_erasure_is_not_retried_later(
    tmp_path: Path,
) -> None:
    async with loopback(tmp_path, subscriber("crm", "{sink}/crm", retry_schedule=["1s"])) as (
        h,
        sink,
    ):
        _, row, sending = await _erase_in_flight(h, sink)
        sink.held_status = 500
        sink.release.set()
        await sending
        for _ in range(4):
            h.clock.advance(2)
            await h.dispatcher.run_once()
        # never sent again (not even as the erased copy): only the notice followed
        assert sink.types("/crm") == ["whatsapp.message.received", "whatsapp.contact.erased"]
        assert (await _stored(h, row["id"]))["state"] == "erased"


# -- a 2xx is a delivery, whatever its Retry-After ---------------------------------------------
def _retry_after(status: int, value: str) -> Response:
    """An answer whose Retry-After is `value` as UTF-8 bytes on the wire (Starlette would
    encode it as latin-1, which the client reads back as something else)."""
    answer = Response(status_code=status)
    answer.raw_headers.append((b"retry-after", value.encode()))
    return answer


async def test_a_200_with_an_unreadable_retry_after_is_delivered_once(tmp_path: Path) -> None:
    async with loopback(tmp_path, subscriber("crm", "{sink}/crm", retry_schedule=["1s"])) as (
        h,
        sink,
    ):
        sink.script["/crm"] = [_retry_after(200, "²")]
        await h.ingest(text_webhook("wamid.1"))
        assert await h.dispatcher.run_once() == 1
        for _ in range(3):
            h.clock.advance(2)
            await h.dispatcher.run_once()
        row = await h.only_delivery()
        attempts = await h.attempts(row["id"])
        assert [(a["status"], a["error"]) for a in attempts] == [(200, None)]
        assert row["state"] == "delivered"
        assert len(sink.seen) == 1, "the acknowledged event was sent again"


async def test_a_failure_with_an_unreadable_retry_after_keeps_its_status(tmp_path: Path) -> None:
    async with loopback(tmp_path, subscriber("crm", "{sink}/crm", retry_schedule=["1s"])) as (
        h,
        sink,
    ):
        sink.script["/crm"] = [_retry_after(503, "³")]
        await h.ingest(text_webhook("wamid.1"))
        assert await h.dispatcher.run_once() == 1
        row = await h.only_delivery()
        attempts = await h.attempts(row["id"])
        assert [(a["status"], a["error"]) for a in attempts] == [(503, "HTTP 503")]
        assert row["state"] == "pending"  # on the schedule: the header asked nothing readable


@pytest.mark.parametrize(
    "value", ["\u00b2", "\u00b3", "\u0661\u0662", "\U0001d7d7", "1\u00b2", " \u00b2 "]
)
def test_retry_after_seconds_reads_ascii_digits_only(value: str) -> None:
    assert retry_after_seconds(value, datetime.now(UTC)) is None


# -- retrying a disabled subscriber --------------------------------------------------------------
async def test_retrying_a_disabled_subscriber_is_refused_with_the_reason(tmp_path: Path) -> None:
    crm = subscriber("crm", "{sink}/crm", retry_schedule=["1h", "1h"])
    async with loopback(tmp_path, crm) as (h, sink):
        sink.script["/crm"] = [500, 500]
        for n in range(2):
            await h.ingest(
                text_webhook(f"wamid.{n}", bsuid=f"US.1349120865530274191{n}", phone=None)
            )
        assert await h.dispatcher.run_once() == 2  # both failed: due in an hour
        async with api(h) as client:
            assert (await client.post("/v1/subscribers/crm/disable")).status_code == 200
            answer = await client.post("/v1/subscribers/crm/retry")
        assert answer.status_code == 409, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        problem = answer.json()
        assert problem["code"] == "subscriber_disabled"
        assert problem["reason"] == "disabled by an operator"
        assert problem["remedy"] == "bspgate subscribers enable crm"
        assert "disabled by an operator" in problem["detail"]
        assert "bspgate subscribers enable crm" in problem["detail"]
        # nothing was made due: still an hour (± 20 %) away
        due = {r["next_attempt_at"] for r in await h.deliveries()}
        assert min(due) > h.clock().timestamp() + 2000


async def test_a_replayed_dead_letter_of_an_erased_contact_is_retried_after_a_503(
    tmp_path: Path,
) -> None:
    # only a delivery in flight at the erasure is erased when its attempt fails; one requeued
    # later (its body erased) retries as any other (session review)
    sub = subscriber("crm", "{sink}/crm", retry_schedule=["1s"])
    async with loopback(tmp_path, sub) as (h, sink):
        sink.script["/crm"] = [500, 500]  # two attempts: a dead letter
        await h.ingest(text_webhook("wamid.1", phone="15551234567", text="my secret text"))
        assert await h.dispatcher.run_once() == 1
        h.clock.advance(2)
        assert await h.dispatcher.run_once() == 1
        row = await h.only_delivery()
        assert row["state"] == "dead"
        async with api(h) as client:
            erased = await client.delete(f"/v1/contacts/{row['contact_id']}")
            assert erased.status_code == 200, erased.text
            answer = await client.post("/v1/replays", json={"all": True})
        assert answer.status_code == 202, answer.text
        assert answer.json()["requeued"] == 1
        sink.script["/crm"] = [503]  # one transient failure, then 200
        h.clock.advance(1)
        assert await h.dispatcher.run_once() == 1
        state = (await h.gateway.store.read(lambda tx: tx.delivery(row["id"])))["state"]
        # a replayed delivery that failed once is retried on the schedule
        assert state == "pending", f"the replayed delivery was {state!r} after one 503"
        for _ in range(3):
            h.clock.advance(2)
            await h.dispatcher.run_once()
        received = sink.types("/crm")
        assert received.count("whatsapp.message.received") == 4, received


async def test_a_subscriber_that_was_posted_the_event_and_failed_is_told_of_the_erasure(
    tmp_path: Path,
) -> None:
    # it was POSTed the whole event (phone, text) and answered 500, its row waiting for a retry
    # when the contact is erased: it may have kept the event, so it is told (session review)
    sub = subscriber("crm", "{sink}/crm", retry_schedule=["60s"])
    async with loopback(tmp_path, sub) as (h, sink):
        sink.script["/crm"] = [500]
        await h.ingest(text_webhook("wamid.1", phone="15551234567", text="my secret text"))
        assert await h.dispatcher.run_once() == 1
        row = await h.only_delivery()
        assert row["state"] == "pending"
        assert "my secret text" in str(sink.seen[0][1]["data"])  # it holds the whole event
        async with api(h) as client:
            erased = await client.delete(f"/v1/contacts/{row['contact_id']}")
        assert erased.status_code == 200, erased.text
        assert erased.json()["erased"]["notified"] == 1, erased.json()
