"""The provider review's two defects (tests/review_providers in the reviewed tree), through the app.

1. An Infobip REACTION names the reacted-to message in `message.context.id`
   (infobip-api-java-client 6.2.0, `WhatsAppWebhookInboundReactionMessage`: `emoji`, `action`
   ADDED|REMOVED, `context{from, id}`). The canonical reaction carries that id, its `context` is
   null (as the Cloud API mapping makes it), and `action: REMOVED` is Meta's removal form: the
   reaction without its emoji (`emoji: null`, what the Cloud API mapping makes of Meta's
   removal webhook, which leaves `emoji` out).
2. An authentication template sent through Infobip or Azure ACS fills its one-time-password
   button with the code, as mappings/cloudapi/outbound.yaml does for Meta ("assign the user's
   one-time password ... to the text property of both objects"): Infobip
   `templateData.buttons: [{type: URL, parameter}]` (WhatsAppTemplateDataContent.buttons;
   `COPY_CODE` by channel setting), ACS `bindings.buttons: [{subType: url, refValue}]` naming a
   `quickAction` value whose `text` is the code (azure-rest-api-specs 2024-08-30).

Webhooks are signed by the channel's own verifier and go through the ASGI app; sends use
`POST /v1/messages?dry_run=true`, which answers the exact provider request.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from bspgate.simulate import signed_request
from tests.conftest import API_KEY
from tests.test_outbound_api import NOW, Gateway
from tests.test_outbound_providers import BSUID, CHANNELS, channel_id

PHONE = "+15551234567"
CODE = "123456"
REACTED_TO = "2b6a2d4f-8c27-4a0c-9c2a-0d3a1f7a1e11"  # the id of the business's outbound message
AUTH_SEND: dict[str, Any] = {
    "to": {"phone": PHONE},
    "type": "template",
    "template": {
        "name": "otp_code",
        "language": "en_US",
        "category": "authentication",
        "parameters": [CODE],
    },
}
UTILITY_SEND: dict[str, Any] = {
    **AUTH_SEND,
    "template": {**AUTH_SEND["template"], "category": "utility", "name": "order_update"},
}


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    gateway = Gateway(tmp_path)
    with gateway.client:
        yield gateway


def webhook(gw: Gateway, provider: str, payload: Any) -> httpx.Response:
    channel = gw.settings.channel(channel_id(provider))
    assert channel is not None
    url, headers, body = signed_request(gw.settings, channel, json.dumps(payload).encode())
    return gw.client.post(httpx.URL(url).raw_path.decode(), content=body, headers=headers)


def events(gw: Gateway) -> list[dict[str, Any]]:
    response = gw.client.get("/v1/events?limit=500", headers={"authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def dry_run(gw: Gateway, provider: str, send: dict[str, Any]) -> dict[str, Any]:
    gw.person(phone=PHONE, wrote=NOW - timedelta(hours=1), channel=channel_id(provider))
    response = gw.post({**send, "channel": channel_id(provider)}, query="?dry_run=true")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()["body"]
    return body


def infobip_reaction(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "results": [
            {
                "from": "15551234567",
                "to": "15550001111",
                "integrationType": "WHATSAPP",
                "receivedAt": "2026-11-20T10:00:00.000+0000",
                "messageId": "wamid.HBgLMTU1NTEyMzQ1NjcVAgASGBRSRUFDVElPTjAwMDAwMDAwMDAA",
                "message": {"type": "REACTION", **message},
                "contact": {"name": "Sheena Nelson", "userId": BSUID},
                "price": {"pricePerMessage": 0, "currency": "EUR"},
            }
        ],
        "messageCount": 1,
        "pendingMessageCount": 0,
    }


def received_message(gw: Gateway, message: dict[str, Any]) -> dict[str, Any]:
    response = webhook(gw, "infobip", infobip_reaction(message))
    assert response.status_code == 200, response.text
    (event,) = events(gw)
    assert event["type"] == "whatsapp.message.received"
    result: dict[str, Any] = event["data"]["message"]
    return result


# -- 1. Infobip reactions ------------------------------------------------------------------------
def test_infobip_reaction_names_the_message_it_reacts_to(gw: Gateway) -> None:
    message = received_message(
        gw,
        {
            "emoji": "\U0001f44d",
            "action": "ADDED",
            "context": {"from": "15550001111", "id": REACTED_TO},
        },
    )
    assert message["type"] == "reaction"
    assert message["reaction"] == {"message_id": REACTED_TO, "emoji": "\U0001f44d"}
    assert message["context"] is None  # a reaction replies to nothing (as on Cloud API)


def test_infobip_reaction_removed_is_metas_removal_form(gw: Gateway) -> None:
    # Meta's removal webhook leaves `emoji` out, which the Cloud API mapping makes `null`; an
    # Infobip removal reads the same whether or not it repeats the emoji it removes.
    message = received_message(
        gw,
        {
            "emoji": "\U0001f44d",
            "action": "REMOVED",
            "context": {"from": "15550001111", "id": REACTED_TO},
        },
    )
    assert message["type"] == "reaction"
    assert message["reaction"] == {"message_id": REACTED_TO, "emoji": None}
    assert message["context"] is None


def test_infobip_reaction_without_context_keeps_the_old_field(gw: Gateway) -> None:
    message = received_message(gw, {"emoji": "\U0001f44d", "messageId": REACTED_TO})
    assert message["reaction"] == {"message_id": REACTED_TO, "emoji": "\U0001f44d"}
    assert message["context"] is None


def test_infobip_reply_context_is_still_read(gw: Gateway) -> None:
    payload = infobip_reaction({})
    payload["results"][0]["message"] = {
        "type": "INTERACTIVE_BUTTON_REPLY",
        "id": "agree",
        "title": "Agree",
        "context": {"from": "15550001111", "id": REACTED_TO},
    }
    assert webhook(gw, "infobip", payload).status_code == 200
    (event,) = events(gw)
    assert event["data"]["message"]["context"] == {"message_id": REACTED_TO}
    assert event["data"]["message"]["reaction"] is None


# -- 2. authentication templates fill the one-time-password button --------------------------------
def test_infobip_authentication_template_fills_the_otp_button(gw: Gateway) -> None:
    (message,) = dry_run(gw, "infobip", AUTH_SEND)["messages"]
    data = message["content"]["templateData"]
    assert data["body"]["placeholders"] == [CODE]
    assert data.get("buttons") == [{"type": "URL", "parameter": CODE}], data


def test_infobip_otp_button_type_is_a_channel_setting(tmp_path: Path) -> None:
    settings = {**CHANNELS["infobip"]["settings"], "otp_button_type": "COPY_CODE"}
    gateway = Gateway(tmp_path, infobip={"settings": settings})
    with gateway.client:
        (message,) = dry_run(gateway, "infobip", AUTH_SEND)["messages"]
    assert message["content"]["templateData"]["buttons"] == [
        {"type": "COPY_CODE", "parameter": CODE}
    ]


def test_azure_acs_authentication_template_binds_the_otp_button(gw: Gateway) -> None:
    template = dry_run(gw, "azure_acs", AUTH_SEND)["template"]
    values = {value["name"]: value for value in template["values"]}
    assert len(values) == len(template["values"])  # names are unique
    assert [values[b["refValue"]]["text"] for b in template["bindings"]["body"]] == [CODE]
    buttons = template["bindings"].get("buttons")
    assert buttons, f"no OTP button binding in {template['bindings']}"
    assert [b["subType"] for b in buttons] == ["url"]
    button_value = values[buttons[0]["refValue"]]
    assert (button_value["kind"], button_value["text"]) == ("quickAction", CODE)


@pytest.mark.parametrize("provider", ["infobip", "azure_acs"])
def test_other_templates_have_no_otp_button(gw: Gateway, provider: str) -> None:
    body = dry_run(gw, provider, UTILITY_SEND)
    if provider == "infobip":
        assert "buttons" not in body["messages"][0]["content"]["templateData"]
    else:
        assert "buttons" not in body["template"]["bindings"]
        assert [value["kind"] for value in body["template"]["values"]] == ["text"]


def test_a_dry_run_masks_credentials_in_a_base_url_setting(tmp_path: Path) -> None:
    # `config check` masks them (docs/configuration.md); the send preview showed them in clear
    settings = {
        **CHANNELS["infobip"]["settings"],
        "base_url": "https://bspgate:hunter2@acct.api.infobip.com",
    }
    gateway = Gateway(tmp_path, infobip={"settings": settings})
    with gateway.client:
        gateway.person(phone=PHONE, wrote=NOW - timedelta(hours=1), channel=channel_id("infobip"))
        response = gateway.post(
            {**UTILITY_SEND, "channel": channel_id("infobip")}, query="?dry_run=true"
        )
    assert response.status_code == 200, response.text
    url = response.json()["url"]
    assert "hunter2" not in response.text
    assert url.startswith("https://bspgate:****@acct.api.infobip.com/"), url
