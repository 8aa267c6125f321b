"""Identity through a real server for providers that announce no identity change (Twilio, ACS).

v1.1 rule 6 holds for them as for Cloud API: a known phone with a new BSUID is a recycled number,
so it gives a new contact; the contact that lost the phone gets `identity_changed` with
`change = phone_reassigned`; nothing is relinked. An operator who knows better merges by hand.
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


def test_a_known_phone_with_a_new_bsuid_is_a_new_contact(provider: Any) -> None:
    gateway, build, channel = provider
    steps = [
        build(1, phone=PHONE),  # legacy: phone only
        build(2, phone=PHONE, bsuid=B1),  # BSUID + phone: the phone-only contact gains the BSUID
        build(3, phone=PHONE, bsuid=B2),  # a known phone with a new BSUID: someone else
        build(4, bsuid=B2),  # the new BSUID alone
        build(5, bsuid=B1),  # a late webhook for the first person
    ]
    for body in steps:
        response = gateway.post(channel, body)
        assert response.status_code == 200, response.text
    events = gateway.events()
    received = "whatsapp.message.received"
    assert [e["type"] for e in events] == [received] * 2 + ["whatsapp.contact.identity_changed"] + [
        received
    ] * 3
    first_id = events[0]["data"]["contact"]["id"]
    assert events[1]["data"]["contact"]["id"] == first_id
    change = events[2]["data"]
    assert change["contact"]["id"] == first_id
    assert change["change"] == "phone_reassigned"
    assert change["contact"]["phone"] is None
    assert change["previous"] == {"bsuid": B1, "phone": "+" + PHONE}
    second_id = events[3]["data"]["contact"]["id"]
    assert second_id != first_id
    assert events[3]["data"]["contact"]["phone"] == "+" + PHONE
    assert events[4]["data"]["contact"]["id"] == second_id
    assert events[5]["data"]["contact"]["id"] == first_id  # the late webhook: its own person
    assert events[5]["data"]["contact"]["phone"] is None
    found = gateway.client.get("/v1/contacts", params={"bsuid": B1}).json()["data"]
    assert [c["id"] for c in found] == [first_id]
    assert "relinked" not in [h["kind"] for h in found[0]["history"]]


def test_an_operator_merges_a_person_who_changed_number(provider: Any) -> None:
    """Rule 11: the provider announced nothing, so the operator joins the two contacts."""
    gateway, build, channel = provider
    assert gateway.post(channel, build(1, phone=PHONE, bsuid=B1)).status_code == 200
    assert gateway.post(channel, build(2, phone="15557654321", bsuid=B2)).status_code == 200
    first, second = (e["subject"] for e in gateway.events())
    assert first != second
    merged = gateway.client.post(f"/v1/contacts/{first}/merge", json={"from": second})
    assert merged.status_code == 200, merged.text
    view = merged.json()
    assert view["id"] == first
    assert (view["bsuid"], view["phone"]) == (B2, "+15557654321")  # the newer identifiers
    assert view["history"][-1]["kind"] == "absorbed"
    assert view["history"][-1]["detail"] == {"from": second, "by": "operator", "key": "test"}
    event = gateway.events()[-1]
    assert event["type"] == "whatsapp.contact.merged"
    assert event["subject"] == first
    assert event["data"]["merged"] == {"id": second, "by": "operator"}
    assert event["data"]["raw_id"] is None
    # the absorbed id keeps resolving: lookups answer the survivor, naming the merge
    absorbed = gateway.client.get(f"/v1/contacts/{second}").json()
    assert (absorbed["id"], absorbed["merged_into"]) == (first, first)
    # later webhooks of either BSUID land on the survivor
    assert gateway.post(channel, build(3, bsuid=B1)).status_code == 200
    assert gateway.post(channel, build(4, bsuid=B2)).status_code == 200
    assert {e["subject"] for e in gateway.events()[-2:]} == {first}
    again = gateway.client.post(f"/v1/contacts/{first}/merge", json={"from": second})
    assert again.status_code == 409
    bad = gateway.client.post(f"/v1/contacts/{first}/merge", json={"from": 5})
    assert bad.status_code == 400
