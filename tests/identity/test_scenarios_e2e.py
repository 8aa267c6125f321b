"""Identity scenarios through a real server on loopback: one contact id through a person's life."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import APP_SECRET, make_settings
from tests.harness import RunningGateway
from tests.identity.payloads import (
    cloud_message,
    cloud_user_changed_number,
    cloud_user_changed_user_id,
)

pytestmark = [pytest.mark.e2e, pytest.mark.store]  # store: runs on SQLite and PostgreSQL

B1 = "US.13491208655302741918"
B2 = "US.20000000000000000001"
B3 = "US.30000000000000000003"
PHONE = "15551234567"


def _channel(channel_id: str, portfolio: str) -> dict[str, Any]:
    return {
        "id": channel_id,
        "provider": "cloudapi",
        "portfolio": portfolio,
        "business_phone": "+15550001111",
        "secrets": {"app_secret": APP_SECRET, "verify_token": "vt"},
    }


@pytest.fixture
def gateway(tmp_path: Path) -> Any:
    settings = make_settings(
        tmp_path, channels=[_channel("cloud-us", "acme"), _channel("cloud-br", "globex")]
    )
    with RunningGateway(settings) as running:
        yield running


def _post_ok(gateway: RunningGateway, body: bytes, channel: str = "cloud-us") -> None:
    response = gateway.post(channel, body)
    assert response.status_code == 200, response.text


def test_one_contact_id_through_a_persons_life(gateway: RunningGateway) -> None:
    _post_ok(
        gateway,
        cloud_message("wamid.1", phone=PHONE),
    )  # legacy: phone only
    _post_ok(gateway, cloud_message("wamid.2", phone=PHONE, bsuid=B1, step=1))  # merge
    _post_ok(gateway, cloud_user_changed_user_id("wamid.3", B1, B2, step=2))  # relink
    _post_ok(gateway, cloud_message("wamid.4", bsuid=B2, step=3))  # new BSUID only
    _post_ok(gateway, cloud_message("wamid.5", bsuid=B1, phone=PHONE, step=4))  # late, old BSUID
    events = gateway.events()
    assert [e["type"] for e in events] == [
        "whatsapp.message.received",
        "whatsapp.message.received",
        "whatsapp.contact.identity_changed",
        "whatsapp.message.received",
        "whatsapp.message.received",
    ]
    assert len({e["data"]["contact"]["id"] for e in events}) == 1
    assert events[1]["data"]["contact"]["bsuid"] == B1
    change = events[2]["data"]
    assert change["change"] == "bsuid_changed"
    assert change["previous"] == {"bsuid": B1, "phone": "+" + PHONE}
    assert change["contact"]["bsuid"] == B2
    for event in events[2:]:  # the old phone is retired with the old BSUID: never shown again
        assert event["data"]["contact"]["phone"] is None
        assert event["data"]["contact"]["bsuid"] == B2
    contact_id = events[0]["data"]["contact"]["id"]
    view = gateway.client.get(f"/v1/contacts/{contact_id}").json()
    assert {b["bsuid"]: b["state"] for b in view["bsuids"]} == {B1: "retired", B2: "current"}
    assert [(p["phone"], p["state"]) for p in view["phones"]] == [("+" + PHONE, "retired")]
    found = gateway.client.get("/v1/contacts", params={"bsuid": B1}).json()["data"]
    assert [c["id"] for c in found] == [contact_id]


def test_number_change_names_the_new_phone(gateway: RunningGateway) -> None:
    _post_ok(gateway, cloud_message("wamid.1", phone=PHONE, bsuid=B1))
    _post_ok(gateway, cloud_user_changed_number("wamid.2", B1, B2, PHONE, "15557654321", step=1))
    _post_ok(gateway, cloud_message("wamid.3", bsuid=B2, step=2))
    events = gateway.events()
    assert len({e["data"]["contact"]["id"] for e in events}) == 1
    assert events[1]["data"]["previous"]["phone"] == "+" + PHONE
    assert events[2]["data"]["contact"]["phone"] == "+15557654321"


def test_recycled_phone_gives_two_contacts_and_moves_the_alias(gateway: RunningGateway) -> None:
    _post_ok(gateway, cloud_message("wamid.1", phone=PHONE, bsuid=B1))
    _post_ok(gateway, cloud_message("wamid.2", phone=PHONE, bsuid=B3, step=1))
    first, reassigned, second = gateway.events()
    assert first["data"]["contact"]["id"] != second["data"]["contact"]["id"]
    assert reassigned["type"] == "whatsapp.contact.identity_changed"
    assert reassigned["subject"] == first["data"]["contact"]["id"]
    assert reassigned["data"]["change"] == "phone_reassigned"
    assert reassigned["data"]["previous"] == {"bsuid": B1, "phone": "+" + PHONE}
    assert reassigned["data"]["contact"]["phone"] is None
    owners = gateway.client.get("/v1/contacts", params={"phone": "+" + PHONE}).json()["data"]
    assert [c["id"] for c in owners] == [
        second["data"]["contact"]["id"],
        first["data"]["contact"]["id"],
    ]
    assert owners[0]["phone"] == "+" + PHONE
    assert owners[1]["phone"] is None
    assert owners[1]["phones"][0]["state"] == "moved"


def test_same_bsuid_in_two_portfolios_is_two_contacts(gateway: RunningGateway) -> None:
    _post_ok(gateway, cloud_message("wamid.1", bsuid=B1), "cloud-us")
    _post_ok(gateway, cloud_message("wamid.2", bsuid=B1), "cloud-br")
    ids = {e["data"]["contact"]["id"] for e in gateway.events()}
    assert len(ids) == 2
    found = gateway.client.get("/v1/contacts", params={"bsuid": B1}).json()["data"]
    assert sorted(c["portfolio"] for c in found) == ["acme", "globex"]


def test_concurrent_first_messages_make_one_contact(gateway: RunningGateway) -> None:
    bodies = [cloud_message(f"wamid.c{i}", bsuid=B3, step=i) for i in range(12)]
    statuses: list[int] = []

    def send(body: bytes) -> None:
        statuses.append(gateway.post("cloud-us", body).status_code)

    threads = [threading.Thread(target=send, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert statuses == [200] * 12
    events = gateway.events()
    assert len(events) == 12
    assert len({e["data"]["contact"]["id"] for e in events}) == 1


def test_rule8_a_legacy_contact_and_a_username_contact_paired_once_merge(
    gateway: RunningGateway,
) -> None:
    _post_ok(gateway, cloud_message("wamid.1", phone=PHONE))  # before BSUIDs: phone only
    _post_ok(gateway, cloud_message("wamid.2", bsuid=B1, step=1))  # by username: BSUID only
    _post_ok(gateway, cloud_message("wamid.3", phone=PHONE, bsuid=B1, step=2))  # one payload pairs
    legacy, by_name, merged, paired = gateway.events()
    assert legacy["subject"] != by_name["subject"]
    assert merged["type"] == "whatsapp.contact.merged"
    assert merged["subject"] == legacy["subject"]  # the older survives
    assert merged["data"]["merged"] == {"id": by_name["subject"], "by": "identity_rule"}
    assert merged["data"]["contact"]["bsuid"] == B1
    assert merged["data"]["contact"]["phone"] == "+" + PHONE
    assert paired["subject"] == legacy["subject"]
    absorbed = gateway.client.get(f"/v1/contacts/{by_name['subject']}").json()
    assert (absorbed["id"], absorbed["merged_into"]) == (legacy["subject"], legacy["subject"])
    _post_ok(gateway, cloud_message("wamid.4", bsuid=B1, step=3))
    assert gateway.events()[-1]["subject"] == legacy["subject"]


def test_rule9_a_late_retry_of_the_previous_owner_keeps_its_own_contact(
    gateway: RunningGateway,
) -> None:
    _post_ok(gateway, cloud_message("wamid.1", phone=PHONE, bsuid=B1, step=1))
    _post_ok(gateway, cloud_message("wamid.2", phone=PHONE, bsuid=B3, step=5))  # recycled
    _post_ok(gateway, cloud_message("wamid.9", phone=PHONE, bsuid=B1, step=2))  # late retry
    events = gateway.events()
    first, reassigned, second, late = events
    assert reassigned["data"]["change"] == "phone_reassigned"
    assert late["subject"] == first["subject"]
    assert late["data"]["contact"]["phone"] is None
    owners = gateway.client.get("/v1/contacts", params={"phone": PHONE}).json()["data"]
    assert owners[0]["id"] == second["subject"]
    assert owners[0]["phone"] == "+" + PHONE


def test_rule9_identity_changes_arriving_out_of_order_end_in_the_later_state(
    gateway: RunningGateway,
) -> None:
    _post_ok(gateway, cloud_message("wamid.1", phone=PHONE, bsuid=B1, step=1))
    # B2 -> B3 (later) arrives before B1 -> B2 (earlier)
    _post_ok(gateway, cloud_user_changed_user_id("wamid.3", B2, B3, step=3))
    _post_ok(gateway, cloud_user_changed_user_id("wamid.2", B1, B2, step=2))
    _post_ok(gateway, cloud_message("wamid.4", bsuid=B1, step=4))
    last = gateway.events()[-1]
    assert last["data"]["contact"]["bsuid"] == B3
    assert last["data"]["contact"]["phone"] is None
    view = gateway.client.get(f"/v1/contacts/{last['subject']}").json()
    assert {b["bsuid"]: b["state"] for b in view["bsuids"]} == {
        B1: "retired",
        B2: "retired",
        B3: "current",
    }


def test_identity_change_naming_the_new_bsuid_only_in_from_user_id_relinks(
    gateway: RunningGateway,
) -> None:
    _post_ok(gateway, cloud_message("wamid.1", phone=PHONE, bsuid=B1))
    _post_ok(gateway, cloud_user_changed_user_id("wamid.2", B1, B2, step=1, in_system=False))
    first, change = gateway.events()
    assert change["data"]["change"] == "bsuid_changed"
    assert change["data"]["contact"]["id"] == first["data"]["contact"]["id"]
    assert change["data"]["contact"]["bsuid"] == B2
    assert change["data"]["previous"]["bsuid"] == B1


def test_identity_change_naming_no_new_identifier_is_quarantined_and_changes_nothing(
    gateway: RunningGateway,
) -> None:
    _post_ok(gateway, cloud_message("wamid.1", phone=PHONE, bsuid=B1))
    _post_ok(gateway, cloud_user_changed_user_id("wamid.2", B1, None, step=1))
    events = gateway.events()
    assert [e["type"] for e in events] == ["whatsapp.message.received"]
    quarantined = gateway.client.get("/v1/quarantined").json()["data"]
    assert len(quarantined) == 1
    assert "names neither a new BSUID nor a phone" in quarantined[0]["reason"]
    view = gateway.client.get(f"/v1/contacts/{events[0]['subject']}").json()
    assert view["bsuid"] == B1
    assert view["phone"] == "+" + PHONE  # not retired by an announcement naming no successor
