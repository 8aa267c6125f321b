"""Identity scenarios for providers that announce no identity change (Twilio, Azure ACS).

They forward no `user_changed_*` system message, so the contract relinks when a known phone
arrives with a new BSUID: the contact keeps its id, downstream gets an `identity_changed` event
inferred by the gateway, and the old BSUID still resolves for late webhooks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_settings
from tests.harness import RunningGateway
from tests.identity.payloads import acs_message, twilio_message

pytestmark = [pytest.mark.e2e, pytest.mark.store]

B1 = "US.13491208655302741918"
B2 = "US.20000000000000000001"
PHONE = "15551234567"

CHANNELS: dict[str, dict[str, Any]] = {
    "twilio": {
        "id": "tw",
        "provider": "twilio",
        "portfolio": "acme",
        "secrets": {"auth_token": "tw-token", "account_sid": "AC" + "0" * 32},
    },
    "azure_acs": {
        "id": "acs",
        "provider": "azure_acs",
        "portfolio": "acme",
        "secrets": {"webhook_secret": "acs-code"},
    },
}


def _twilio(n: int, *, phone: str | None = None, bsuid: str | None = None) -> bytes:
    return twilio_message(f"SM{n:032d}", phone=phone, bsuid=bsuid)


def _acs(n: int, *, phone: str | None = None, bsuid: str | None = None) -> bytes:
    return acs_message(f"msg-{n}", phone=phone, bsuid=bsuid, step=n)


BUILDERS: dict[str, Callable[..., bytes]] = {"twilio": _twilio, "azure_acs": _acs}


@pytest.fixture(params=["twilio", "azure_acs"])
def provider(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Any, str]]:
    settings = make_settings(tmp_path, channels=[CHANNELS[request.param]])
    with RunningGateway(settings) as gateway:
        yield gateway, BUILDERS[request.param], CHANNELS[request.param]["id"]


def test_one_contact_id_through_an_unannounced_identity_change(provider: Any) -> None:
    gateway, build, channel = provider
    steps = [
        build(1, phone=PHONE),  # legacy: phone only
        build(2, phone=PHONE, bsuid=B1),  # BSUID + phone: merged into the phone-only contact
        build(3, phone=PHONE, bsuid=B2),  # a known phone with a new BSUID: relinked
        build(4, bsuid=B2),  # the new BSUID alone
        build(5, bsuid=B1),  # a late webhook for the old BSUID
    ]
    for body in steps:
        response = gateway.post(channel, body)
        assert response.status_code == 200, response.text
    events = gateway.events()
    types = [e["type"] for e in events]
    assert (
        types
        == ["whatsapp.message.received"] * 2
        + ["whatsapp.contact.identity_changed"]
        + ["whatsapp.message.received"] * 3
    )
    assert len({e["data"]["contact"]["id"] for e in events}) == 1
    change = events[2]["data"]
    assert change["previous"]["bsuid"] == B1
    assert change["contact"]["bsuid"] == B2
    assert events[-1]["data"]["contact"]["bsuid"] == B2  # the late webhook lands on the contact
    found = gateway.client.get("/v1/contacts", params={"bsuid": B1}).json()["data"]
    assert [c["id"] for c in found] == [events[0]["data"]["contact"]["id"]]
    history = [h["kind"] for h in found[0]["history"]]
    assert "relinked" in history
