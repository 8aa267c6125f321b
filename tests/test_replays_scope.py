"""Replays: what a request names, how far a later subscriber's fan-out reaches, bad input.

- An empty scope value (`{"event_id": ""}`, an unset variable in a script) names nothing: it is
  refused like a bare POST, never read as "every dead letter" (or, with `states: [delivered]`,
  every delivery made).
- A subscriber added later is given every stored event it accepts, however many it refuses come
  first, and the operational events it would have had live (those ignore `channels`).
- A NUL character or a non-string id is a 400 problem, never a 5xx (PostgreSQL refuses NUL).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from bspgate.operations import ReplayRequest, replay_deliveries
from tests.conftest import API_KEY, make_settings
from tests.payloads import status_webhook, text_webhook
from tests.test_delivery import BI, CRM, harness, subscriber

pytestmark = [pytest.mark.anyio, pytest.mark.store]


def _client(h: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=h.app, raise_app_exceptions=False),
        base_url="http://gw",
        headers={"authorization": f"Bearer {API_KEY}"},
    )


async def _two_dead_letters(h: Any) -> None:
    """crm: wamid.1 and wamid.2 (two contacts) spend their one retry and are dead."""
    h.receiver.script[CRM] = [500, 500, 500, 500]
    await h.ingest(text_webhook("wamid.1", bsuid="US.10000000000000000001", phone=None))
    await h.ingest(text_webhook("wamid.2", bsuid="US.20000000000000000002", phone=None))
    assert await h.dispatcher.run_once() == 2
    h.clock.advance(5)
    assert await h.dispatcher.run_once() == 2
    assert {r["state"] for r in await h.deliveries()} == {"dead"}


@pytest.mark.parametrize("scope", ["event_id", "subscriber_id", "type"])
async def test_an_empty_scope_value_is_not_read_as_every_dead_letter(
    tmp_path: Path, scope: str
) -> None:
    async with harness(tmp_path, subscriber("crm", CRM, retry_schedule=["1s"])) as h:
        await _two_dead_letters(h)
        answer = await _client(h).post("/v1/replays", json={scope: ""})
        assert answer.status_code in (400, 422), answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert {r["state"] for r in await h.deliveries()} == {"dead"}


async def test_an_empty_event_id_with_delivered_state_does_not_resend_everything(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path, subscriber("crm", CRM)) as h:
        await h.ingest(text_webhook("wamid.1", bsuid="US.10000000000000000001", phone=None))
        await h.ingest(text_webhook("wamid.2", bsuid="US.20000000000000000002", phone=None))
        assert await h.dispatcher.run_once() == 2
        answer = await _client(h).post(
            "/v1/replays", json={"event_id": "", "states": ["delivered"]}
        )
        assert answer.status_code in (400, 422), answer.text
        assert await h.dispatcher.run_once() == 0
        assert len(h.receiver.requests) == 2


@pytest.mark.parametrize("raw_id", [{"a": 1}, [1], 5])
async def test_a_quarantine_replay_with_a_non_string_raw_id_is_a_400(
    tmp_path: Path, raw_id: Any
) -> None:
    async with harness(tmp_path) as h:
        answer = await _client(h).post("/v1/replays", json={"quarantined": True, "raw_id": raw_id})
        assert answer.status_code == 400, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")


async def test_a_replay_to_a_later_subscriber_reaches_past_events_it_does_not_accept(
    tmp_path: Path,
) -> None:
    # three events it refuses come first; with limit 2 it must still reach the fourth
    async with harness(tmp_path, subscriber("crm", CRM)) as h:
        for n in range(3):  # three received messages the new subscriber does not want
            await h.ingest(
                text_webhook(
                    f"wamid.{n}", bsuid=f"US.{n:020d}", phone=None, timestamp=1767225600 + n
                )
            )
        await h.ingest(status_webhook("wamid.out", "sent"))  # the one it wants, stored last
        later = make_settings(
            tmp_path,
            subscribers=[subscriber("bi", BI, events=["whatsapp.message.status"])],
        ).subscribers
        request = ReplayRequest(subscriber_id="bi", limit=2)
        first = await replay_deliveries(h.gateway.store, request, h.clock(), later)
        second = await replay_deliveries(h.gateway.store, request, h.clock(), later)
        third = await replay_deliveries(h.gateway.store, request, h.clock(), later)
        added = first["added"] + second["added"] + third["added"]
        assert added == 1, (first, second, third)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/replays", {"all": True, "event_id": "evt_\u0000"}),
        ("POST", "/v1/replays", {"quarantined": True, "raw_id": "raw_\u0000"}),
        ("GET", "/v1/deliveries?event_id=evt_%00", None),
        ("GET", "/v1/deliveries?subscriber_id=crm%00", None),
        ("GET", "/v1/deliveries/dlv_%00", None),
        ("GET", "/v1/contacts/ct_%00", None),
        ("GET", "/v1/events?type=whatsapp%00", None),
    ],
)
async def test_a_nul_character_in_a_delivery_or_replay_reference_is_not_a_5xx(
    tmp_path: Path, method: str, path: str, body: Any
) -> None:
    async with harness(tmp_path) as h:
        answer = await _client(h).request(method, path, json=body)
        assert answer.status_code == 400, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")


async def test_a_later_subscriber_is_given_the_operational_events_it_would_have_had(
    tmp_path: Path,
) -> None:
    subs = (
        subscriber("crm", CRM, retry_schedule=["1s"]),
        subscriber("ops", BI, events=["bspgate.*"], channels=["cloud-us"]),
    )
    async with harness(tmp_path, *subs) as h:
        h.receiver.script[CRM] = [500, 500]
        await h.ingest(text_webhook("wamid.1"))
        await h.dispatcher.run_once()
        h.clock.advance(5)
        await h.dispatcher.run_once()  # dead: bspgate.delivery.dead_lettered is stored
        await h.dispatcher.run_once()
        assert ("ops", "delivered") in [
            (r["subscriber_id"], r["state"]) for r in await h.deliveries()
        ]  # the configured one got it live
        later = make_settings(
            tmp_path,
            subscribers=[subscriber("ops2", BI, events=["bspgate.*"], channels=["cloud-us"])],
        ).subscribers
        result = await replay_deliveries(
            h.gateway.store, ReplayRequest(subscriber_id="ops2", dry_run=True), h.clock(), later
        )
        assert result["added"] == 1, result
