"""Identity rule 10 with rules 6 and 8: what a send's answer teaches is told downstream too."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import respx

from bspgate.identity.resolver import IdentityResolver, Observation
from tests.test_outbound_api import CLOUD, META_URL, NOW, Gateway, iso, text

B1 = "US.13491208655302741918"
B3 = "US.30000000000000000003"
P1 = "+15551234567"
AUTH = {"authorization": "Bearer test-api-key"}


def _answer(user_id: str) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "contacts": [{"input": P1, "wa_id": P1.lstrip("+"), "user_id": user_id}],
        "messages": [{"id": "wamid.SENT1"}],
    }


def _events(gw: Gateway) -> list[dict[str, Any]]:
    page = gw.client.get("/v1/events", params={"limit": 500}, headers=AUTH).json()
    return list(reversed(page["data"]))


def test_a_send_answer_moving_a_phone_tells_the_contact_that_lost_it(tmp_path: Path) -> None:
    gw = Gateway(tmp_path, cloudapi={"send_by": "phone"})
    with gw.client:
        earlier = iso(NOW - timedelta(hours=1))

        def seed(tx: Any) -> str:
            resolver = IdentityResolver(tx, "acme", CLOUD, earlier)
            contact = resolver.observe(Observation(bsuid=B1, phone=P1))
            tx.mark_inbound(contact.id, CLOUD, earlier)
            return str(contact.id)

        old = gw.transaction(seed)
        with respx.mock() as router:
            router.post(META_URL).mock(return_value=httpx.Response(200, json=_answer(B3)))
            sent = gw.post({**text({"phone": P1}), "channel": CLOUD})
        assert sent.status_code == 202, sent.text
        (changed,) = [e for e in _events(gw) if e["type"] == "whatsapp.contact.identity_changed"]
        assert changed["subject"] == old
        assert changed["data"]["change"] == "phone_reassigned"
        assert changed["data"]["previous"] == {"bsuid": B1, "phone": P1}
        assert changed["data"]["raw_id"] is None  # learned from the answer, not a payload
        # the message reached the number's new holder: the send is theirs, not the customer's
        holder = gw.transaction(lambda tx: tx.contact_by_bsuid("acme", B3))
        assert sent.json()["contact_id"] == holder.id != old
        shown = gw.client.get(f"/v1/messages/{sent.json()['id']}", headers=AUTH).json()
        assert shown["contact_id"] == holder.id


def test_a_send_answer_joining_two_contacts_announces_the_merge(tmp_path: Path) -> None:
    gw = Gateway(tmp_path)
    with gw.client:
        legacy = gw.person(phone=P1, wrote=NOW - timedelta(hours=1))
        by_bsuid = gw.person(bsuid=B3, wrote=NOW - timedelta(hours=1))
        with respx.mock() as router:
            router.post(META_URL).mock(return_value=httpx.Response(200, json=_answer(B3)))
            sent = gw.post({**text({"contact_id": legacy}), "channel": CLOUD})
        assert sent.status_code == 202, sent.text
        (merged,) = [e for e in _events(gw) if e["type"] == "whatsapp.contact.merged"]
        assert {merged["subject"], merged["data"]["merged"]["id"]} == {legacy, by_bsuid}
        assert merged["data"]["merged"]["by"] == "identity_rule"
