"""GET /v1/messages/{id} lists the send's statuses, also those that landed on another contact:
a status pairing the addressed number with another person's BSUID (a recycled number, rule 6)
lands on the number's new holder, while the send stays the customer's."""

from __future__ import annotations

from pathlib import Path

import httpx
import respx

from tests.identity.sends import (
    CLOUD,
    G4,
    NOW,
    TWILIO,
    TWILIO_URL,
    auth_template,
    cloud_answer,
    cloud_status,
    twilio_answer,
    twilio_status,
)

B1 = "US.13491208655302741918"  # the customer
B3 = "US.30000000000000000003"  # whoever holds the number now
P1 = "+15551234567"


def test_cloudapi_status_from_the_numbers_new_holder_is_listed_on_the_send(tmp_path: Path) -> None:
    gw = G4(tmp_path)
    with gw.client:
        customer = gw.person(bsuid=B1, phone=P1, wrote=NOW)
        # authentication templates go to the phone (contract §3 rule 2); Meta's answer names the
        # number only (no user_id), so nothing is learned from it
        sent = gw.send_cloud({"contact_id": customer}, cloud_answer("wamid.S1", wa_id=P1[1:]))
        assert sent.status_code == 202, sent.text
        assert sent.json()["addressed_by"] == "phone"
        # Meta reports the message delivered to the number's current holder (rule 6)
        gw.hook(CLOUD, cloud_status("wamid.S1", "delivered", phone=P1, bsuid=B3, step=5))
        stored = [e for e in gw.events() if e["type"] == "whatsapp.message.status"]
        assert [e["data"]["message"]["id"] for e in stored] == ["wamid.S1"]
        assert stored[0]["data"]["contact"]["bsuid"] == B3  # the one the message reached
        shown = gw.message(sent.json()["id"])
        assert [s["status"] for s in shown["statuses"]] == ["delivered"], shown


def test_twilio_status_pairing_the_phone_with_a_new_bsuid_is_listed_on_the_send(
    tmp_path: Path,
) -> None:
    gw = G4(tmp_path)
    with gw.client:
        customer = gw.person(bsuid=B1, phone=P1, wrote=NOW, channel=TWILIO)
        sid = "SM" + "a" * 32
        with respx.mock(assert_all_called=True) as router:
            router.post(TWILIO_URL).mock(
                return_value=httpx.Response(201, json=twilio_answer(sid, P1))
            )
            sent = gw.post({**auth_template({"contact_id": customer}), "channel": TWILIO})
        assert sent.status_code == 202, sent.text
        assert sent.json()["addressed_by"] == "phone"
        gw.hook(TWILIO, twilio_status(sid, "delivered", to=P1, external=B3))
        stored = [e for e in gw.events() if e["type"] == "whatsapp.message.status"]
        assert [e["data"]["message"]["id"] for e in stored] == [sid]
        shown = gw.message(sent.json()["id"])
        assert [s["status"] for s in shown["statuses"]] == ["delivered"], shown
