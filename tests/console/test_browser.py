"""The console in a real browser against a real `bspgate serve` and a real receiver.

Each test drives Chromium as an operator would (keyboard and clicks), and checks the outcome
both on the page and where it must land: the receiver, `/v1`, the audit log.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from bspgate.mapping.loader import load_mapping, mapping_names
from bspgate.normalize import Normalizer, demo_channel
from tests.conftest import API_KEY, FIXTURES, MAPPINGS
from tests.console.conftest import ACCESS_TOKEN, Gateway, Receiver, sign_in, wait_until
from tests.identity.payloads import (
    cloud_message,
    cloud_user_changed_number,
    cloud_user_changed_user_id,
)

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

PHONE = "15557654321"
B1 = "US.1111111111111111111"
B2 = "US.2222222222222222222"


def newest_event(gateway: Gateway, **params: Any) -> dict[str, Any]:
    events = gateway.events(limit=1, **params)
    assert events, "no event stored"
    return events[0]


def test_sign_in_wrong_key_then_sign_out(page: Any, gateway: Gateway) -> None:
    page.goto(f"{gateway.url}/console/events")
    assert "/console/login" in page.url  # not signed in: sent to the form
    page.fill("#key", "not-a-key")
    page.keyboard.press("Enter")
    assert page.locator("[role=alert]").inner_text().startswith("That key is not")
    page.fill("#key", API_KEY)
    page.keyboard.press("Enter")
    page.wait_for_url("**/console/events")  # back where the operator was going
    cookie = next(c for c in page.context.cookies() if c["name"] == "bspgate_console")
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/console"
    assert cookie["expires"] > 0  # a session with an expiry, not a forever cookie
    assert "oncall" in page.locator(".who").inner_text()
    page.click("text=Sign out")
    page.wait_for_url("**/console/login")
    page.goto(f"{gateway.url}/console/deliveries")
    assert "/console/login" in page.url
    actions = [e["action"] for e in _audit_rows(page, gateway)]
    assert "sign_in" in actions
    assert "sign_out" in actions


def _audit_rows(page: Any, gateway: Gateway) -> list[dict[str, str]]:
    sign_in(page, gateway, "/console/audit")
    rows = page.locator("#audit tbody tr")
    out = []
    for index in range(rows.count()):
        cells = rows.nth(index).locator("td").all_inner_texts()
        out.append({"actor": cells[2], "action": cells[3], "target": cells[4]})
    return out


def test_a_forged_or_stale_csrf_token_is_refused(page: Any, gateway: Gateway) -> None:
    sign_in(page, gateway, "/console/deliveries")
    page.eval_on_selector_all("input[name=csrf]", "els => els.forEach(e => e.value = 'forged')")
    page.click("button:has-text('Disable crm')")
    assert page.locator("h1").inner_text() == "Refused"
    assert "CSRF" in page.locator(".message").inner_text()
    subscribers = gateway.api.get("/v1/subscribers").json()["data"]
    assert subscribers[0]["enabled"] is True  # nothing changed
    # a form posted from another origin (no token at all) is refused as well
    status = page.evaluate(
        """async (url) => (await fetch(url, {method: 'POST', body: new URLSearchParams(
             {subscriber_id: 'crm'})})).status""",
        f"{gateway.url}/console/subscribers/crm/disable",
    )
    assert status == 403
    assert gateway.api.get("/v1/subscribers").json()["data"][0]["enabled"] is True


def test_phones_and_texts_masked_until_a_reveal_that_is_audited(
    page: Any, gateway: Gateway
) -> None:
    assert gateway.post(cloud_message("wamid.mask1", phone=PHONE, bsuid=B1)).status_code == 200
    event = newest_event(gateway)
    sign_in(page, gateway, f"/console/events/{event['id']}")
    html = page.content()
    assert PHONE not in html
    assert "message wamid.mask1" not in html
    assert "+•••••••••21" in html
    assert "[hidden]" in html
    page.fill("#reveal-reason", "ticket 42")
    page.click("#reveal")
    page.wait_for_selector("text=Revealed:")
    html = page.content()
    assert f"+{PHONE}" in html
    assert "message wamid.mask1" in html
    # the reveal is for this page only
    page.goto(f"{gateway.url}/console/events")
    assert "message wamid.mask1" not in page.content()
    entry = next(e for e in _audit_rows(page, gateway) if e["action"] == "reveal")
    assert entry == {
        "actor": "oncall",
        "action": "reveal",
        "target": f"/console/events/{event['id']}",
    }


def test_a_webhook_appears_in_the_live_tail(page: Any, gateway: Gateway) -> None:
    sign_in(page, gateway, "/console/events")
    page.wait_for_selector("#tail-state:has-text('Live tail: on')")
    assert gateway.post(cloud_message("wamid.tail1", bsuid=B1, step=5)).status_code == 200
    event = newest_event(gateway)
    row = page.locator(f"#event-rows tr.fresh:has-text('{event['id']}')")
    row.wait_for(timeout=10_000)
    assert "whatsapp.message.received" in row.inner_text()


def test_relinked_contact_timeline_shows_both_bsuids_and_the_retired_phone(
    page: Any, gateway: Gateway
) -> None:
    old_phone, new_phone = "15550009901", "15550009902"
    b_old, b_new = "US.3333333333333333333", "US.4444444444444444444"
    for body in (
        cloud_message("wamid.rl1", phone=old_phone, bsuid=b_old),
        cloud_user_changed_user_id("wamid.rl2", b_old, b_new, step=1),
        cloud_user_changed_number("wamid.rl3", b_new, b_new, old_phone, new_phone, step=2),
        cloud_message("wamid.rl4", phone=new_phone, bsuid=b_new, step=3),
    ):
        assert gateway.post(body).status_code == 200
    sign_in(page, gateway, "/console/contacts")
    page.fill("#q", b_old)  # the retired BSUID finds the contact
    page.keyboard.press("Enter")
    page.click("#results a[href^='/console/contacts/ct_']")
    page.click("#reveal")
    page.wait_for_selector("text=Revealed:")
    timeline = page.locator("#timeline").inner_text()
    assert f"BSUID {b_old}" in timeline
    assert "retired" in timeline
    assert f"BSUID {b_new}" in timeline
    assert "(current)" in timeline
    assert f"phone +{old_phone} (retired)" in timeline
    assert f"phone +{new_phone} (active)" in timeline
    assert page.locator("#timeline a[href^='/console/events/evt_']").count() >= 3
    # the old phone in any typed form finds the same contact
    contact_url = page.url
    page.goto(f"{gateway.url}/console/contacts?q=%2B1 (555) 000-9901")
    assert (
        page.locator("#results a[href^='/console/contacts/ct_']").first.get_attribute("href")
        in contact_url
    )


def test_merge_and_erase_from_the_contact_page_after_confirmation(
    page: Any, gateway: Gateway
) -> None:
    b_one, b_two = "US.6666666666666666666", "US.7777777777777777777"
    assert gateway.post(cloud_message("wamid.mg1", bsuid=b_one, step=30)).status_code == 200
    assert gateway.post(cloud_message("wamid.mg2", bsuid=b_two, step=31)).status_code == 200
    into = gateway.api.get("/v1/contacts", params={"bsuid": b_one}).json()["data"][0]["id"]
    other = gateway.api.get("/v1/contacts", params={"bsuid": b_two}).json()["data"][0]["id"]
    sign_in(page, gateway, f"/console/contacts/{into}")
    page.fill("#merge-from", other)
    page.click("#merge")  # not confirmed: the browser keeps the form (the box is required)
    assert gateway.api.get(f"/v1/contacts/{other}").json().get("merged_into") is None
    page.check("#merge-confirm")
    page.click("#merge")
    page.wait_for_selector(f"text=Merged {other} into this contact.")
    assert gateway.api.get(f"/v1/contacts/{other}").json()["merged_into"] == into
    assert f"from: {other}" in page.locator("#timeline").inner_text()  # ids are never masked
    page.fill("#erase-confirm", "ct_wrong")
    page.click("button:has-text('Erase contact')")
    assert page.locator("h1").inner_text() == "Not erased"
    assert gateway.api.get(f"/v1/contacts/{into}").json()["erased_at"] is None
    page.goto(f"{gateway.url}/console/contacts/{into}")
    page.fill("#erase-confirm", into)
    page.click("button:has-text('Erase contact')")
    page.wait_for_selector("text=Erased: phone, names")
    assert gateway.api.get(f"/v1/contacts/{into}").json()["erased_at"] is not None
    assert {"merge", "erase"} <= {e["action"] for e in _audit_rows(page, gateway)}


def test_a_dead_letter_replayed_from_the_console_reaches_the_receiver(
    page: Any, gateway: Gateway, receiver: tuple[Receiver, str]
) -> None:
    sink, _url = receiver
    body = cloud_message("wamid.dead1", bsuid=B2, step=9)
    channel = gateway.settings.channel("cloud-us")
    assert channel is not None
    event_id = (
        Normalizer(load_mapping(MAPPINGS, "cloudapi"), channel).normalize_body(body).events[0]["id"]
    )
    sink.failing.add(event_id)
    assert gateway.post(body).status_code == 200

    def dead() -> bool:
        rows = gateway.api.get("/v1/deliveries", params={"event_id": event_id}).json()["data"]
        return bool(rows) and rows[0]["state"] == "dead"

    wait_until(dead, "the delivery to die")
    sink.failing.discard(event_id)
    sign_in(page, gateway, "/console/deliveries")
    assert page.locator("#dead-groups").inner_text().count("crm") >= 1
    page.check(f"input[aria-label='Select {event_id} for crm']")
    page.click("button:has-text('Replay selected')")
    assert "1 dead letter(s) requeued" in page.locator("#notice").inner_text()
    wait_until(lambda: event_id in sink.accepted_ids(), "the replayed delivery")
    assert any(e["action"] == "replay" for e in _audit_rows(page, gateway))


def test_a_test_event_reaches_the_subscriber_signed(
    page: Any, gateway: Gateway, receiver: tuple[Receiver, str]
) -> None:
    sink, _url = receiver
    sign_in(page, gateway, "/console/deliveries")
    page.click("button:has-text('Send a test event')")
    notice = page.locator("#notice").inner_text()
    assert "answered HTTP 200" in notice
    event_id = re.search(r"evt_[0-9A-Z]+", notice).group(0)
    tests = [e for e in sink.accepted if e["id"] == event_id]  # the receiver verified it
    assert [e["type"] for e in tests] == ["bspgate.console.test"]
    assert event_id not in {e["id"] for e in gateway.events()}  # nothing was stored


def test_quarantine_fixed_mapping_run_then_ingest_is_delivered(
    page: Any, gateway: Gateway, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    sink, url = receiver
    mappings = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, mappings)
    mapping = mappings / "cloudapi" / "mapping.yaml"
    original = mapping.read_text()
    # the bug: the message rule never matches (its condition starts with `` `false` && ``)
    broken = re.sub(
        r"(- name: message\n(?:.*\n)*?\s+when: >-\n\s+)", r"\1`false` && ", original, count=1
    )
    assert broken != original
    mapping.write_text(broken)
    first = Gateway(tmp_path, url, mappings).start()
    try:
        assert first.post(cloud_message("wamid.q1", bsuid=B1, step=20)).status_code == 200
        quarantined = first.api.get("/v1/quarantined").json()["data"]
        assert len(quarantined) == 1
    finally:
        first.stop()
    mapping.write_text(original)  # the fix, deployed
    fixed = Gateway(tmp_path, url, mappings, port=first.port).start()
    try:
        raw_id = quarantined[0]["id"]
        sign_in(page, fixed, "/console/quarantine")
        page.click(f"a:has-text('{raw_id}')")
        page.click("#dry-run")
        assert page.locator("#trial-state").inner_text() == "processed"
        event_id = re.search(r"evt_[0-9A-Z]+", page.locator("#trial").inner_text()).group(0)
        assert fixed.events() == []  # the dry run stored nothing
        page.click("#ingest")
        assert page.locator("#ingest-result").inner_text() == "Ingested: processed:1"
        assert page.locator("#raw-state").inner_text() == "processed"
        wait_until(lambda: event_id in sink.accepted_ids(), "the ingested event's delivery")
    finally:
        fixed.stop()


PASTED = {
    "cloudapi": "cloudapi/inbound_bsuid_only.json",
    "dialog360": "dialog360/inbound_text.json",
    "twilio": "twilio/inbound_bsuid_only.json",
    "infobip": "infobip/inbound_text.json",
    "azure_acs": "azure_acs/inbound_bsuid_only.json",
    "connectly": "connectly/inbound_bsuid_only.json",
}


def test_the_playground_normalizes_a_pasted_payload_of_each_provider(
    page: Any, gateway: Gateway
) -> None:
    assert set(PASTED) <= set(mapping_names(MAPPINGS))
    sign_in(page, gateway, "/console/playground")
    for provider, name in PASTED.items():
        body = (FIXTURES / name).read_bytes()
        expected = Normalizer(load_mapping(MAPPINGS, provider), demo_channel(provider))
        ids = [e["id"] for e in expected.normalize_body(body).events]
        if provider == "cloudapi":  # the configured cloud-us channel is used for cloudapi
            channel = gateway.settings.channel("cloud-us")
            assert channel is not None
            ids = [e["id"] for e in Normalizer(expected.spec, channel).normalize_body(body).events]
        assert ids, provider
        page.select_option("#pg-provider", provider)
        page.fill("#payload", body.decode())
        page.click("#normalize")
        assert page.locator("#result-state").inner_text() == "processed", provider
        shown = page.locator("#event-ids code").all_inner_texts()
        assert shown == ids, provider
    assert gateway.events(type="whatsapp.message.received", contact_id="none") == []
    # a broken payload names the problem
    page.fill("#payload", '{"object": "whatsapp_business_account", "entry": []}')
    page.select_option("#pg-provider", "cloudapi")
    page.click("#normalize")
    assert page.locator("#result-state").inner_text() == "quarantined"
    assert page.locator("#issues li").count() >= 1


def test_a_dry_run_send_shows_the_provider_request_with_secrets_masked(
    page: Any, gateway: Gateway
) -> None:
    send = {"channel": "cloud-us", "to": {"bsuid": B1}, "type": "text", "text": {"body": "hola"}}
    sign_in(page, gateway, "/console/send")
    page.fill("#send-json", orjson.dumps(send).decode())
    page.click("#preview")
    request = page.locator("#provider-request").inner_text()
    assert "https://graph.facebook.com/" in request
    assert "/106540352242922/messages" in request
    assert B1 in request
    assert ACCESS_TOKEN not in page.content()
    assert "Addressed by bsuid" in page.locator("#addressing").inner_text()
    # a refusal is explained, not sent
    page.fill("#send-json", orjson.dumps({**send, "to": {"bsuid": "nope"}}).decode())
    page.click("#preview")
    assert "invalid_bsuid" in page.locator("#outcome").inner_text()
