"""Events describe themselves: `dataschema` (served at /v1/schemas/{type}.json) and the W3C
`traceparent` of their webhook, carried onto every delivery. Through a real server on loopback.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import jsonschema
import orjson
import pytest

from bspgate.schema.catalog import traceparent_for
from bspgate.simulate import signed_request
from tests.conftest import make_settings
from tests.harness import RunningGateway
from tests.payloads import text_webhook
from tests.test_delivery import CRM, harness, subscriber

TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
FORMAT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")


def test_events_carry_dataschema_and_the_webhooks_traceparent(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, storage=f"sqlite:///{tmp_path / 'described.db'}")
    with RunningGateway(settings, dispatch=False) as gateway:
        body = orjson.dumps(text_webhook("wamid.1"))
        channel = gateway.settings.channel("cloud-us")
        assert channel is not None
        url, headers, payload = signed_request(gateway.settings, channel, body)
        answer = gateway.client.post(
            url, content=payload, headers={**headers, "traceparent": TRACE}
        )
        assert answer.is_success
        assert gateway.post("cloud-us", orjson.dumps(text_webhook("wamid.2"))).is_success
        first, second = gateway.events()
        assert first["traceparent"] == TRACE
        assert FORMAT.match(second["traceparent"])  # none came with it: a new one
        assert second["traceparent"] != TRACE
        public = gateway.settings.server.public_url
        assert first["dataschema"] == f"{public}/v1/schemas/whatsapp.message.received.json"
        schema = httpx.get(first["dataschema"], timeout=10)  # served without a key
        assert schema.status_code == 200
        jsonschema.Draft202012Validator(schema.json()).validate(first)
        status_schema = httpx.get(f"{public}/v1/schemas/whatsapp.message.status.json").json()
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft202012Validator(status_schema).validate(first)
        missing = httpx.get(f"{public}/v1/schemas/whatsapp.nothing.json")
        assert missing.status_code == 404


@pytest.mark.parametrize(
    "header",
    [
        None,
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent id
    ],
)
def test_a_missing_or_invalid_traceparent_gets_a_new_one(header: str | None) -> None:
    made = traceparent_for(header)
    assert FORMAT.match(made)
    assert made != header


@pytest.mark.anyio
async def test_each_delivery_carries_the_events_traceparent(tmp_path: Path) -> None:
    async with harness(tmp_path, subscriber("crm", CRM)) as h:
        channel = h.gateway.settings.channel("cloud-us")
        assert channel is not None
        payload = text_webhook("wamid.1")
        await h.gateway.ingest(channel, payload, orjson.dumps(payload), "application/json", TRACE)
        assert await h.dispatcher.run_once() == 1
        (request,) = h.receiver.requests
        assert request.headers["traceparent"] == TRACE
        assert orjson.loads(request.content)["traceparent"] == TRACE
