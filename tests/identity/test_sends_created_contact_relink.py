"""A contact made by a send to an unknown BSUID follows the person's identity change.

A send teaches who an address is, not since when (rule 9: facts carry the provider event time of
the payload that taught them). So a `user_changed_user_id` that happened before the send, whose
webhook arrives after it, still moves the contact to the new BSUID (rule 5): the event, later
messages and later sends by `contact_id` all use the new one.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import respx

from tests.identity.sends import (
    CLOUD,
    G4,
    META_URL,
    cloud_answer,
    cloud_changed_user_id,
    cloud_text,
    utility_template,
)

OLD = "US.13491208655302741918"
NEW = "US.20000000000000000002"


def test_a_late_identity_change_relinks_a_contact_a_send_created(tmp_path: Path) -> None:
    gw = G4(tmp_path)
    with gw.client:
        with respx.mock(assert_all_called=True) as router:
            router.post(META_URL).mock(
                return_value=httpx.Response(200, json=cloud_answer("wamid.S1", user_id=OLD))
            )
            sent = gw.post({**utility_template({"bsuid": OLD}), "channel": CLOUD})
        assert sent.status_code == 202, sent.text
        contact = sent.json()["contact_id"]
        # the person changed their BSUID a minute before the send; the webhook arrives now
        gw.hook(CLOUD, cloud_changed_user_id("wamid.sys", OLD, NEW, step=-60))
        # and writes from the new BSUID a minute after the send
        gw.hook(CLOUD, cloud_text("wamid.in1", bsuid=NEW, step=60))
        changed, received = gw.events()
        assert changed["type"] == "whatsapp.contact.identity_changed"
        assert changed["subject"] == received["subject"] == contact
        assert changed["data"]["previous"]["bsuid"] == OLD
        assert changed["data"]["contact"]["bsuid"] == NEW  # "the contact after the change"
        assert received["data"]["contact"]["bsuid"] == NEW
        view = gw.contact(contact)
        assert {b["bsuid"]: b["state"] for b in view["bsuids"]} == {OLD: "retired", NEW: "current"}
        with respx.mock(assert_all_called=True) as router:
            route = router.post(META_URL).mock(
                return_value=httpx.Response(200, json=cloud_answer("wamid.S2", user_id=NEW))
            )
            again = gw.post({**utility_template({"contact_id": contact}), "channel": CLOUD})
        assert again.status_code == 202, again.text
        assert json.loads(route.calls.last.request.content)["recipient"] == NEW
