"""Events whose contact has no phone are held for `require_phone` subscribers, whoever raised
them: a webhook, a send answer's reassignment (rules 10 and 6) or an operator merge (rule 11)."""

from __future__ import annotations

from pathlib import Path

from tests.identity.sends import AUTH, CLOUD, G4, NOW, cloud_answer, cloud_text, subscriber

B1 = "US.13491208655302741918"
B3 = "US.30000000000000000003"
B4 = "US.40000000000000000004"
P1 = "+15551234567"


def _states(gw: G4, sub: str, event_type: str) -> list[str]:
    ids = {e["id"] for e in gw.events() if e["type"] == event_type}
    return [d["state"] for d in gw.deliveries(sub) if d["event_id"] in ids]


def test_a_send_answers_phone_reassigned_is_held_like_a_webhooks(tmp_path: Path) -> None:
    gw = G4(tmp_path, subscribers=[subscriber("crm", True), subscriber("bi", False)])
    with gw.client:
        customer = gw.person(bsuid=B1, phone=P1, wrote=NOW)
        # Cloud API's answer pairs the number with another person's BSUID (rules 10 and 6)
        sent = gw.send_cloud(
            {"contact_id": customer}, cloud_answer("wamid.S1", wa_id=P1[1:], user_id=B3)
        )
        assert sent.status_code == 202, sent.text
        (changed,) = [e for e in gw.events() if e["type"] == "whatsapp.contact.identity_changed"]
        assert changed["subject"] == customer
        assert changed["data"]["contact"]["phone"] is None
        assert _states(gw, "bi", "whatsapp.contact.identity_changed") == ["pending"]
        assert _states(gw, "crm", "whatsapp.contact.identity_changed") == ["held"]


def test_the_same_reassignment_from_a_webhook_is_held(tmp_path: Path) -> None:
    """The same reassignment learned from a webhook: held, as the others now are."""
    gw = G4(tmp_path, subscribers=[subscriber("crm", True), subscriber("bi", False)])
    with gw.client:
        gw.hook(CLOUD, cloud_text("wamid.1", phone=P1, bsuid=B1, step=-10))
        gw.hook(CLOUD, cloud_text("wamid.2", phone=P1, bsuid=B3, step=-5))
        assert _states(gw, "crm", "whatsapp.contact.identity_changed") == ["held"]


def test_an_operator_merge_of_contacts_without_phone_is_held(tmp_path: Path) -> None:
    gw = G4(tmp_path, subscribers=[subscriber("crm", True), subscriber("bi", False)])
    with gw.client:
        gw.hook(CLOUD, cloud_text("wamid.1", bsuid=B1, step=-10))
        gw.hook(CLOUD, cloud_text("wamid.2", bsuid=B4, step=-5))
        first, second = (e["subject"] for e in gw.events())
        merged = gw.client.post(f"/v1/contacts/{first}/merge", json={"from": second}, headers=AUTH)
        assert merged.status_code == 200, merged.text
        assert merged.json()["phone"] is None
        assert _states(gw, "bi", "whatsapp.contact.merged") == ["pending"]
        assert _states(gw, "crm", "whatsapp.contact.merged") == ["held"]
