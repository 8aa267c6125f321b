"""The dispatcher over a real SQLite outbox, a mock HTTP transport and a hand-driven clock.

Rounds are driven with `await dispatcher.run_once()`; time only moves when a test advances the
clock. The `standardwebhooks` package and the CloudEvents SDK are the oracles for what a
subscriber receives.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from bspgate.app import Gateway, create_app
from bspgate.delivery.retry import JITTER, MAX_RETRY_AFTER, decide, retry_after_seconds
from bspgate.delivery.worker import Dispatcher
from tests.conftest import SUBSCRIBER_SECRET, make_settings
from tests.payloads import text_webhook

ALICE = "US.10000000000000000001"
BOB = "US.20000000000000000002"
CRM = "https://crm.example.com/hooks/whatsapp"
BI = "https://bi.example.com/events"


class Clock:
    """An aware clock that moves only when told."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


Reply = int | httpx.Response | Exception


@dataclass
class Receiver:
    """The mock transport's handler: scripted replies per URL (then 200), every request kept."""

    script: dict[str, list[Reply]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        queue = self.script.get(str(request.url), [])
        reply: Reply = queue.pop(0) if queue else 200
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, int):
            return httpx.Response(reply)
        return reply

    def message_ids(self, url: str = CRM) -> list[str]:
        return [
            orjson.loads(r.content)["data"]["message"]["id"]
            for r in self.requests
            if str(r.url) == url
        ]


@dataclass
class Harness:
    gateway: Gateway
    dispatcher: Dispatcher
    clock: Clock
    receiver: Receiver
    app: Any = None  # the ASGI app (its store already open), for /v1 calls in tests

    async def ingest(self, payload: dict[str, Any]) -> None:
        channel = self.gateway.settings.channel("cloud-us")
        assert channel is not None
        outcome = await self.gateway.ingest(
            channel, payload, orjson.dumps(payload), "application/json"
        )
        assert outcome.state == "processed", outcome.issues

    async def deliveries(self, subscriber: str | None = None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self.gateway.store.read(
            lambda tx: tx.deliveries(state=None, subscriber_id=subscriber, event_id=None, limit=100)
        )
        return rows

    async def only_delivery(self) -> dict[str, Any]:
        (row,) = await self.deliveries()
        return row

    async def attempts(self, delivery_id: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self.gateway.store.read(
            lambda tx: tx.attempts(delivery_id)
        )
        return rows


def subscriber(id_: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"id": id_, "url": url, "secret": SUBSCRIBER_SECRET, **extra}


@asynccontextmanager
async def harness(
    tmp_path: Path,
    *subscribers: dict[str, Any],
    clock: Clock | None = None,
    batch: int = 64,
    **overrides: Any,
) -> AsyncIterator[Harness]:
    clock = clock or Clock(datetime.now(UTC).replace(microsecond=0))
    receiver = Receiver()
    settings = make_settings(
        tmp_path, subscribers=list(subscribers) or [subscriber("crm", CRM)], **overrides
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(receiver)) as client:
        app = create_app(settings, http_client=client, clock=clock, dispatch=False)
        gateway: Gateway = app.state.gateway
        await gateway.store.open()
        try:
            dispatcher = Dispatcher(
                gateway.store,
                settings.subscribers,
                client,
                gateway.metrics,
                clock=clock,
                batch=batch,
            )
            yield Harness(gateway, dispatcher, clock, receiver, app)
        finally:
            await gateway.store.close()


pytestmark = [pytest.mark.anyio, pytest.mark.store]  # store: runs on SQLite and PostgreSQL


# -- what a subscriber receives -------------------------------------------------------------------
async def test_delivery_signature_verifies_with_standardwebhooks(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.ingest(text_webhook("wamid.1"))
        assert await h.dispatcher.run_once() == 1
        (request,) = h.receiver.requests
        payload = Webhook(SUBSCRIBER_SECRET).verify(request.content, dict(request.headers))
        assert payload["data"]["message"]["id"] == "wamid.1"


async def test_delivery_signature_fails_with_another_secret(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.ingest(text_webhook("wamid.1"))
        await h.dispatcher.run_once()
        (request,) = h.receiver.requests
        other = Webhook("whsec_" + "A" * 32)
        with pytest.raises(WebhookVerificationError):
            other.verify(request.content, dict(request.headers))


async def test_signature_verifies_when_the_clock_is_not_utc(tmp_path: Path) -> None:
    local = datetime.now(timezone(timedelta(hours=5, minutes=30))).replace(microsecond=0)
    async with harness(tmp_path, clock=Clock(local)) as h:
        await h.ingest(text_webhook("wamid.1"))
        await h.dispatcher.run_once()
        (request,) = h.receiver.requests
        Webhook(SUBSCRIBER_SECRET).verify(request.content, dict(request.headers))
        assert request.headers["webhook-timestamp"] == str(int(local.timestamp()))


async def test_webhook_id_is_the_event_id(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.ingest(text_webhook("wamid.1"))
        await h.dispatcher.run_once()
        (request,) = h.receiver.requests
        assert request.headers["webhook-id"] == orjson.loads(request.content)["id"]
        assert request.headers["webhook-id"] == (await h.only_delivery())["event_id"]


async def test_webhook_timestamp_is_the_clock(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.ingest(text_webhook("wamid.1"))
        await h.dispatcher.run_once()
        (request,) = h.receiver.requests
        assert request.headers["webhook-timestamp"] == str(int(h.clock.now.timestamp()))


async def test_content_type_is_structured_cloudevents_json(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.ingest(text_webhook("wamid.1"))
        await h.dispatcher.run_once()
        (request,) = h.receiver.requests
        assert request.method == "POST"
        assert request.headers["content-type"] == "application/cloudevents+json"


async def test_body_parses_with_the_cloudevents_sdk(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.ingest(text_webhook("wamid.1", bsuid=ALICE))
        await h.dispatcher.run_once()
        (request,) = h.receiver.requests
        event = from_http_event(HTTPMessage(dict(request.headers), request.content))
        body = orjson.loads(request.content)
        assert event.get_specversion() == "1.0"
        assert event.get_id() == body["id"]
        assert event.get_type() == "whatsapp.message.received"
        assert event.get_source() == "/channels/cloud-us"
        assert event.get_subject() == body["data"]["contact"]["id"]
        assert event.get_datacontenttype() == "application/json"
        assert event.get_time() == datetime(2026, 1, 1, tzinfo=UTC)
        data = event.get_data()
        assert isinstance(data, dict)
        assert data["contact"]["bsuid"] == ALICE
        assert data["message"]["text"] == "Does it come in another color?"


async def test_delivered_attempt_is_recorded(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.ingest(text_webhook("wamid.1"))
        await h.dispatcher.run_once()
        row = await h.only_delivery()
        assert row["state"] == "delivered"
        assert row["attempts"] == 1
        assert row["last_status"] == 200
        (attempt,) = await h.attempts(row["id"])
        assert attempt["status"] == 200
        assert attempt["error"] is None
        assert attempt["latency_ms"] >= 0
        assert await h.dispatcher.run_once() == 0


async def test_nothing_due_is_an_empty_round(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        assert await h.dispatcher.run_once() == 0
        assert h.receiver.requests == []


# -- retries -----------------------------------------------------------------------------------
async def test_retry_then_success(tmp_path: Path) -> None:
    sub = subscriber("crm", CRM, retry_schedule=["10s", "1m"])
    async with harness(tmp_path, sub) as h:
        h.receiver.script[CRM] = [500, 200]
        await h.ingest(text_webhook("wamid.1"))
        assert await h.dispatcher.run_once() == 1
        row = await h.only_delivery()
        assert row["state"] == "pending"
        assert row["attempts"] == 1
        assert row["last_status"] == 500
        assert row["last_error"] == "HTTP 500"
        wait = row["next_attempt_at"] - h.clock.now.timestamp()
        assert 10 * (1 - JITTER) <= wait <= 10 * (1 + JITTER)

        h.clock.advance(wait - 0.5)
        assert await h.dispatcher.run_once() == 0
        h.clock.advance(1)
        assert await h.dispatcher.run_once() == 1

        row = await h.only_delivery()
        assert row["state"] == "delivered"
        assert row["attempts"] == 2
        assert [a["status"] for a in await h.attempts(row["id"])] == [500, 200]
        first, second = h.receiver.requests
        assert first.headers["webhook-id"] == second.headers["webhook-id"]
        assert first.content == second.content


async def test_second_retry_waits_for_the_second_schedule_entry(tmp_path: Path) -> None:
    sub = subscriber("crm", CRM, retry_schedule=["10s", "1h"])
    async with harness(tmp_path, sub) as h:
        h.receiver.script[CRM] = [500, 500]
        await h.ingest(text_webhook("wamid.1"))
        await h.dispatcher.run_once()
        h.clock.advance(13)
        await h.dispatcher.run_once()
        row = await h.only_delivery()
        wait = row["next_attempt_at"] - h.clock.now.timestamp()
        assert 3600 * (1 - JITTER) <= wait <= 3600 * (1 + JITTER)


async def test_connection_error_is_retried_and_recorded(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        h.receiver.script[CRM] = [httpx.ConnectError("connection refused")]
        await h.ingest(text_webhook("wamid.1"))
        await h.dispatcher.run_once()
        row = await h.only_delivery()
        assert row["state"] == "pending"
        assert row["last_status"] is None
        (attempt,) = await h.attempts(row["id"])
        assert attempt["status"] is None
        assert "ConnectError" in attempt["error"]


async def test_timeout_is_retried(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        h.receiver.script[CRM] = [httpx.ReadTimeout("slow")]
        await h.ingest(text_webhook("wamid.1"))
        await h.dispatcher.run_once()
        row = await h.only_delivery()
        assert row["state"] == "pending"
        assert "ReadTimeout" in row["last_error"]


async def test_retry_after_seconds_is_honoured(tmp_path: Path) -> None:
    sub = subscriber("crm", CRM, retry_schedule=["10s"])
    async with harness(tmp_path, sub) as h:
        h.receiver.script[CRM] = [httpx.Response(503, headers={"retry-after": "120"})]
        await h.ingest(text_webhook("wamid.1"))
        await h.dispatcher.run_once()
        row = await h.only_delivery()
        assert row["next_attempt_at"] - h.clock.now.timestamp() == pytest.approx(120)
        h.clock.advance(119)
        assert await h.dispatcher.run_once() == 0
        h.clock.advance(1)
        assert await h.dispatcher.run_once() == 1
        assert (await h.only_delivery())["state"] == "delivered"


async def test_retry_after_http_date_is_honoured(tmp_path: Path) -> None:
    sub = subscriber("crm", CRM, retry_schedule=["10s"])
    async with harness(tmp_path, sub) as h:
        later = format_datetime(h.clock.now + timedelta(minutes=5), usegmt=True)
        h.receiver.script[CRM] = [httpx.Response(429, headers={"retry-after": later})]
        await h.ingest(text_webhook("wamid.1"))
        await h.dispatcher.run_once()
        row = await h.only_delivery()
        assert row["next_attempt_at"] - h.clock.now.timestamp() == pytest.approx(300)


async def test_shorter_retry_after_keeps_the_schedule(tmp_path: Path) -> None:
    sub = subscriber("crm", CRM, retry_schedule=["1m"])
    async with harness(tmp_path, sub) as h:
        h.receiver.script[CRM] = [httpx.Response(503, headers={"retry-after": "1"})]
        await h.ingest(text_webhook("wamid.1"))
        await h.dispatcher.run_once()
        wait = (await h.only_delivery())["next_attempt_at"] - h.clock.now.timestamp()
        assert 60 * (1 - JITTER) <= wait <= 60 * (1 + JITTER)


async def test_dead_letter_after_the_schedule_is_spent(tmp_path: Path) -> None:
    sub = subscriber("crm", CRM, retry_schedule=["1s", "2s"])
    async with harness(tmp_path, sub) as h:
        h.receiver.script[CRM] = [500, 502, 503, 200]
        await h.ingest(text_webhook("wamid.1"))
        for _ in range(3):
            assert await h.dispatcher.run_once() == 1
            h.clock.advance(10)
        row = await h.only_delivery()
        assert row["state"] == "dead"
        assert row["attempts"] == 3
        assert row["last_status"] == 503
        attempts = await h.attempts(row["id"])
        assert [a["status"] for a in attempts] == [500, 502, 503]
        assert [a["error"] for a in attempts] == ["HTTP 500", "HTTP 502", "HTTP 503"]
        assert all(a["latency_ms"] >= 0 for a in attempts)
        h.clock.advance(86_400)
        assert await h.dispatcher.run_once() == 0
        assert len(h.receiver.requests) == 3


# -- ordering ----------------------------------------------------------------------------------
async def test_failing_event_holds_the_contacts_later_events_while_others_flow(
    tmp_path: Path,
) -> None:
    sub = subscriber("crm", CRM, retry_schedule=["30s"])
    async with harness(tmp_path, sub) as h:
        h.receiver.script[CRM] = [500]  # the first request (Alice's first event) fails
        await h.ingest(text_webhook("wamid.A1", bsuid=ALICE, phone=None, timestamp=1767225600))
        await h.ingest(text_webhook("wamid.A2", bsuid=ALICE, phone=None, timestamp=1767225601))
        await h.ingest(text_webhook("wamid.B1", bsuid=BOB, phone=None, timestamp=1767225602))

        assert await h.dispatcher.run_once() == 2  # A1 (fails) and B1; A2 waits behind A1
        await h.ingest(text_webhook("wamid.B2", bsuid=BOB, phone=None, timestamp=1767225603))
        assert await h.dispatcher.run_once() == 1  # B2 flows; A2 still waits
        assert await h.dispatcher.run_once() == 0

        h.clock.advance(40)
        assert await h.dispatcher.run_once() == 1  # A1 again, now delivered
        assert await h.dispatcher.run_once() == 1  # then A2
        assert h.receiver.message_ids() == [
            "wamid.A1",
            "wamid.B1",
            "wamid.B2",
            "wamid.A1",
            "wamid.A2",
        ]
        assert {r["state"] for r in await h.deliveries()} == {"delivered"}


async def test_ordering_none_does_not_hold_later_events(tmp_path: Path) -> None:
    sub = subscriber("crm", CRM, retry_schedule=["30s"], ordering="none")
    async with harness(tmp_path, sub) as h:
        h.receiver.script[CRM] = [500]
        await h.ingest(text_webhook("wamid.A1", bsuid=ALICE, phone=None, timestamp=1767225600))
        await h.ingest(text_webhook("wamid.A2", bsuid=ALICE, phone=None, timestamp=1767225601))
        assert await h.dispatcher.run_once() == 2
        assert h.receiver.message_ids() == ["wamid.A1", "wamid.A2"]


async def test_ordering_is_per_subscriber(tmp_path: Path) -> None:
    subs = (subscriber("crm", CRM, retry_schedule=["30s"]), subscriber("bi", BI))
    async with harness(tmp_path, *subs) as h:
        h.receiver.script[CRM] = [500]
        await h.ingest(text_webhook("wamid.A1", bsuid=ALICE, phone=None, timestamp=1767225600))
        await h.ingest(text_webhook("wamid.A2", bsuid=ALICE, phone=None, timestamp=1767225601))
        await h.dispatcher.run_once()
        await h.dispatcher.run_once()
        assert h.receiver.message_ids(BI) == ["wamid.A1", "wamid.A2"]
        assert h.receiver.message_ids(CRM) == ["wamid.A1"]


async def test_one_contacts_backlog_does_not_starve_other_contacts(tmp_path: Path) -> None:
    sub = subscriber("crm", CRM, retry_schedule=["1h"])
    async with harness(tmp_path, sub, batch=1) as h:
        h.receiver.script[CRM] = [500]
        for index in range(6):
            payload = text_webhook(f"wamid.A{index}", bsuid=ALICE, phone=None)
            await h.ingest(payload)
        await h.ingest(text_webhook("wamid.B1", bsuid=BOB, phone=None))
        await h.dispatcher.run_once()  # A0 fails; A1..A5 must wait for it
        assert await h.dispatcher.run_once() == 1
        assert h.receiver.message_ids()[-1] == "wamid.B1"


# -- 410 Gone ------------------------------------------------------------------------------------
async def test_410_disables_the_subscriber(tmp_path: Path) -> None:
    subs = (subscriber("crm", CRM), subscriber("bi", BI))
    async with harness(tmp_path, *subs) as h:
        h.receiver.script[CRM] = [410]
        # no phones: one shared phone would move between the two contacts (identity rule 6)
        await h.ingest(text_webhook("wamid.1", bsuid=ALICE, phone=None))
        assert await h.dispatcher.run_once() == 2
        assert "crm" in h.dispatcher.disabled

        await h.ingest(text_webhook("wamid.2", bsuid=BOB, phone=None))
        h.clock.advance(3600)
        assert await h.dispatcher.run_once() == 1
        assert h.receiver.message_ids(CRM) == ["wamid.1"]
        assert h.receiver.message_ids(BI) == ["wamid.1", "wamid.2"]
        first_event = h.receiver.requests[0].headers["webhook-id"]
        (gone,) = [r for r in await h.deliveries("crm") if r["event_id"] == first_event]
        assert gone["state"] != "delivered"
        assert gone["last_status"] == 410


# -- retry.py ----------------------------------------------------------------------------------
SCHEDULE = (5.0, 300.0, 1800.0)


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_decide_2xx_is_delivered(status: int) -> None:
    assert decide(status, 1, SCHEDULE).state == "delivered"


def test_decide_410_is_gone_even_after_the_last_attempt() -> None:
    assert decide(410, 1, SCHEDULE).state == "gone"
    assert decide(410, 9, SCHEDULE).state == "gone"


@pytest.mark.parametrize("status", [None, 301, 400, 404, 429, 500, 503])
def test_decide_failure_within_the_schedule_is_pending(status: int | None) -> None:
    assert decide(status, 1, SCHEDULE).state == "pending"


@pytest.mark.parametrize(("attempts", "base"), [(1, 5.0), (2, 300.0), (3, 1800.0)])
def test_decide_waits_the_schedule_entry_with_jitter(attempts: int, base: float) -> None:
    rng = random.Random(7)
    delays = [decide(500, attempts, SCHEDULE, rng=rng).delay for _ in range(200)]
    assert all(base * (1 - JITTER) <= d <= base * (1 + JITTER) for d in delays)
    assert len(set(delays)) > 1  # jittered, not fixed


def test_decide_after_the_last_entry_is_dead() -> None:
    assert decide(500, len(SCHEDULE) + 1, SCHEDULE).state == "dead"
    assert decide(None, len(SCHEDULE) + 1, SCHEDULE).state == "dead"


def test_decide_with_an_empty_schedule_is_dead_at_once() -> None:
    assert decide(500, 1, ()).state == "dead"


def test_decide_longer_retry_after_replaces_the_schedule() -> None:
    verdict = decide(503, 1, SCHEDULE, retry_after=600.0)
    assert verdict == type(verdict)("pending", 600.0)


def test_decide_shorter_retry_after_keeps_the_schedule() -> None:
    verdict = decide(503, 2, SCHEDULE, retry_after=1.0, rng=random.Random(1))
    assert 300 * (1 - JITTER) <= verdict.delay <= 300 * (1 + JITTER)


def test_decide_retry_after_is_capped_at_one_day() -> None:
    assert decide(503, 1, SCHEDULE, retry_after=10 * MAX_RETRY_AFTER).delay == MAX_RETRY_AFTER


NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("Thu, 01 Jan 2026 12:05:00 GMT", 300.0),
        ("Thu, 01 Jan 2026 12:05:00", 300.0),
        ("Thu, 01 Jan 2026 11:00:00 GMT", 0.0),
    ],
)
def test_retry_after_seconds_reads_seconds_and_http_dates(value: str, seconds: float) -> None:
    assert retry_after_seconds(value, NOW) == seconds


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "Thu, 99 Foo 2026"])
def test_retry_after_seconds_ignores_what_it_cannot_read(value: str | None) -> None:
    assert retry_after_seconds(value, NOW) is None
