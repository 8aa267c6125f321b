"""Gupshup, Gupshup v3, Sinch and Vonage mappings against each vendor's documented payloads.

- Gupshup v2: a sent/delivered/read event's `payload.id` is the WhatsApp message id and its
  `payload.gsId` the Gupshup message id (the send API's `messageId`), so a status carries `gsId`
  (else `id`) and is listed on the send it belongs to (docs.gupshup.io "Message events").
- Gupshup v3: `statuses[].id` is the wamid and `statuses[].gs_id` the Gupshup message id that the
  v3 send API answers, so a status carries `gs_id`; Gupshup's own `enqueued` status is an accepted
  status, not quarantined (partner-docs.gupshup.io "Events"). The v3 mapping extends cloudapi,
  whose status rule reads `gs_id` first (Meta sends none: a Cloud API status keeps its wamid).
- Sinch: a captioned inbound image is a `media_card_message {url, caption}`; a send's
  `media_message` holds only Sinch's MediaProperties (url, thumbnail_url, filename_override), so a
  captioned image is refused before any call rather than sent with an undefined field.
- Vonage: a `button` message has `text: null` (contract v1.1); its label is `reply.title`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from bspgate.mapping.loader import load_mapping
from bspgate.mapping.send_cases import load_channel
from bspgate.normalize import Normalizer, demo_channel
from bspgate.pipeline import IngestOutcome
from tests.conftest import MAPPINGS, make_settings
from tests.harness import RunningGateway, ServerThread
from tests.test_mappings_e2e import StandIn


def normalize(provider: str, payload: dict[str, Any]) -> IngestOutcome:
    n = Normalizer(load_mapping(MAPPINGS, provider), demo_channel(provider))
    return n.normalize(payload, orjson.dumps(payload), "application/json")


@pytest.fixture
def stand_in() -> Iterator[tuple[StandIn, str]]:
    fake = StandIn()
    with ServerThread(fake.app) as server:
        yield fake, server.url


def statuses_of_send(gw: RunningGateway, send_id: str) -> list[str]:
    """The statuses GET /v1/messages/{id} lists, once the webhook has been processed."""
    deadline = time.monotonic() + 10
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        view = gw.client.get(f"/v1/messages/{send_id}").json()
        if view.get("statuses"):
            break
        time.sleep(0.1)
    return [s["status"] for s in view.get("statuses", [])]


# Gupshup v2 ----------------------------------------------------------------------------------

GUPSHUP_ID = "59f8db90-c37e-4408-90ab-cc54ef8246ad"
WHATSAPP_ID = "gBEGkYaYVSEEAgnZxQ3JmKK6Wvg"


def gupshup_event(kind: str, *, gs_id: str | None = GUPSHUP_ID) -> dict[str, Any]:
    """Gupshup's documented DLR event, with real digits for the masked destination."""
    payload: dict[str, Any] = {
        "id": WHATSAPP_ID,
        "type": kind,
        "destination": "918898552134",
        "payload": {"ts": 1585344475},
    }
    if gs_id is not None:
        payload["gsId"] = gs_id
    return {
        "app": "DemoAPI",
        "timestamp": 1580546677791,
        "version": 2,
        "type": "message-event",
        "payload": payload,
    }


@pytest.mark.parametrize("kind", ["sent", "delivered", "read"])
def test_gupshup_v2_dlr_status_carries_the_gupshup_message_id(kind: str) -> None:
    out = normalize("gupshup", gupshup_event(kind))
    assert out.state == "processed", out.issues
    [event] = out.events
    assert event["data"]["message"]["id"] == GUPSHUP_ID
    assert event["data"]["message"]["status"] == kind


def test_gupshup_v2_dlr_status_without_gsid_keeps_payload_id() -> None:
    """Events received more than a week after the send carry no gsId."""
    out = normalize("gupshup", gupshup_event("read", gs_id=None))
    assert out.state == "processed", out.issues
    assert out.events[0]["data"]["message"]["id"] == WHATSAPP_ID


def _statuses_after_a_send(
    tmp_path: Any, stand_in: Any, provider: str, answer: dict[str, Any], to: str, status: bytes
) -> tuple[str, list[str]]:
    """Send a text through `provider` (its API a stand-in answering `answer`), then post the
    signed `status` webhook: the send's provider message id and the statuses listed on it."""
    fake, base = stand_in
    channel = {**load_channel(MAPPINGS, provider, base), "id": "ch", "portfolio": "ch"}
    settings = make_settings(tmp_path, channels=[channel])
    fake.answer = answer
    with RunningGateway(settings, dispatch=False) as gw:
        sent = gw.client.post(
            "/v1/messages",
            json={
                "channel": "ch",
                "to": {"phone": to},
                "type": "text",
                "text": {"body": "Your order has shipped."},
            },
        )
        assert sent.status_code == 202, sent.text
        posted = gw.post("ch", status)
        assert posted.status_code == 200, posted.text
        return sent.json()["provider_message_id"], statuses_of_send(gw, sent.json()["id"])


def test_gupshup_v2_delivered_status_is_listed_on_its_send(tmp_path, stand_in) -> None:
    answer = {"status": 202, "body": {"status": "submitted", "messageId": GUPSHUP_ID}}
    status = orjson.dumps(gupshup_event("delivered"))
    sent = _statuses_after_a_send(tmp_path, stand_in, "gupshup", answer, "+918898552134", status)
    assert sent == (GUPSHUP_ID, ["delivered"])


# Gupshup v3 ----------------------------------------------------------------------------------

V3_GUPSHUP_ID = "7daeb742-f2dc-4c09-90e0-d879d20f7b98"
V3_WAMID = "wamid.HBgMOTE5MTYzODA1ODczFQIAERgSMDQ4RjAA"


def v3_status(status: str, timestamp: Any, *, gs_id: str | None = V3_GUPSHUP_ID) -> dict[str, Any]:
    """Gupshup's documented v3 status event, with real digits for the masked numbers."""
    st: dict[str, Any] = {
        "id": V3_WAMID,
        "recipient_id": "919163805873",
        "status": status,
        "timestamp": timestamp,
    }
    if gs_id is not None:
        st["gs_id"] = gs_id
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "919999900000", "phone_number_id": "158072934066266"},
        "statuses": [st],
    }
    return {
        "entry": [{"changes": [{"field": "messages", "value": value}], "id": "112535025189792"}],
        "gs_app_id": "82ed52f4-30c0-4f12-81b4-e7ad07bd41de",
        "object": "whatsapp_business_account",
    }


def test_gupshup_v3_status_carries_the_gupshup_message_id() -> None:
    out = normalize("gupshup_v3", v3_status("sent", "1710930461"))
    assert out.state == "processed", out.issues
    [event] = out.events
    assert event["data"]["message"]["id"] == V3_GUPSHUP_ID


def test_gupshup_v3_status_without_gs_id_keeps_the_wamid() -> None:
    out = normalize("gupshup_v3", v3_status("read", "1710930461", gs_id=None))
    assert out.state == "processed", out.issues
    assert out.events[0]["data"]["message"]["id"] == V3_WAMID


def test_gupshup_v3_enqueued_event_is_an_accepted_status() -> None:
    out = normalize("gupshup_v3", v3_status("enqueued", 1710941393420))
    assert out.state == "processed", out.issues
    [event] = out.events
    assert event["data"]["message"]["status"] == "accepted"
    assert event["data"]["message"]["provider_status"] == "enqueued"
    assert event["data"]["message"]["id"] == V3_GUPSHUP_ID


def test_gupshup_v3_delivered_status_is_listed_on_its_send(tmp_path, stand_in) -> None:
    answer = {
        "status": 200,
        "body": {
            "messaging_product": "whatsapp",
            "contacts": [{"input": "919163805873", "wa_id": "919163805873"}],
            "messages": [{"id": V3_GUPSHUP_ID}],
        },
    }
    status = orjson.dumps(v3_status("delivered", "1710930500"))
    sent = _statuses_after_a_send(tmp_path, stand_in, "gupshup_v3", answer, "+919163805873", status)
    assert sent == (V3_GUPSHUP_ID, ["delivered"])


# Sinch ---------------------------------------------------------------------------------------


def sinch_inbound(contact_message: dict[str, Any]) -> dict[str, Any]:
    return {
        "app_id": "01EB37HMH1M6SV18ASNS3G135H",
        "accepted_time": "2026-01-01T00:05:00.1Z",
        "event_time": "2026-01-01T00:05:00Z",
        "project_id": "e2df3a34-a71b-4448-9db5-a8d2baad28e4",
        "message": {
            "id": "01JGZ0EEEEEEEEEEEEEEEEEEEE",
            "direction": "TO_APP",
            "channel_identity": {"channel": "WHATSAPP", "identity": "15551234567", "app_id": ""},
            "accept_time": "2026-01-01T00:05:00Z",
            "contact_message": contact_message,
        },
    }


def test_sinch_inbound_media_card_keeps_url_and_caption() -> None:
    card = {"url": "https://media.example/broken-part.jpg", "caption": "broken part"}
    out = normalize("sinch", sinch_inbound({"media_card_message": card}))
    assert out.state == "processed", out.issues
    message = out.events[0]["data"]["message"]
    assert message["type"] == "image"
    assert (message["media"] or {}).get("url") == "https://media.example/broken-part.jpg"
    assert message["text"] == "broken part"


def test_sinch_image_send_uses_only_documented_media_message_fields(tmp_path, stand_in) -> None:
    fake, base = stand_in
    channel = {**load_channel(MAPPINGS, "sinch", base), "id": "sn", "portfolio": "sn"}
    settings = make_settings(tmp_path, channels=[channel])
    fake.answer = {
        "status": 200,
        "body": {
            "accepted_time": "2026-11-20T12:00:00.123Z",
            "message_id": "01JHSENDIMAGETOPHONE000000",
        },
    }
    image = {"url": "https://media.example/catalog.jpg"}
    with RunningGateway(settings, dispatch=False) as gw:
        captioned = gw.client.post(
            "/v1/messages",
            json={
                "channel": "sn",
                "to": {"phone": "+15551234567"},
                "type": "image",
                "image": {**image, "caption": "New colours"},
            },
        )
        assert captioned.status_code == 422, captioned.text
        assert captioned.json()["code"] == "unsupported_message"
        assert fake.received == []
        sent = gw.client.post(
            "/v1/messages",
            json={
                "channel": "sn",
                "to": {"phone": "+15551234567"},
                "type": "image",
                "image": image,
            },
        )
        assert sent.status_code == 202, sent.text
    [request] = fake.received
    media = orjson.loads(request.content)["message"]["media_message"]
    assert media == image
    assert set(media) <= {"url", "thumbnail_url", "filename_override"}


# Vonage --------------------------------------------------------------------------------------


def test_vonage_button_reply_has_null_text() -> None:
    payload = {
        "channel": "whatsapp",
        "message_uuid": "aaaaaaaa-bbbb-4ccc-8ddd-0123456789b1",
        "to": "447700900000",
        "from": "447700900001",
        "timestamp": "2025-02-03T12:20:00Z",
        "profile": {"name": "Jane Smith"},
        "context_status": "available",
        "context": {
            "message_uuid": "aaaaaaaa-bbbb-4ccc-8ddd-0123456789a0",
            "message_from": "447700900000",
        },
        "message_type": "button",
        "button": {"payload": "yes-payload", "text": "Yes"},
    }
    out = normalize("vonage", payload)
    assert out.state == "processed", out.issues
    message = out.events[0]["data"]["message"]
    assert message["type"] == "button"
    assert message["reply"] == {"id": "yes-payload", "title": "Yes"}
    assert message["text"] is None
