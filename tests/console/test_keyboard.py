"""Keyboard-only use of every console page (skip link, visible focus, every control reachable),
with a screenshot of each page (`$BSPGATE_SCREENSHOTS`, default a temp dir)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.console.conftest import Gateway, sign_in
from tests.console.test_browser import B1, newest_event
from tests.identity.payloads import cloud_message

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

PAGES = {
    "overview": "/console/",
    "events": "/console/events",
    "contacts": "/console/contacts?q=Sheena",
    "deliveries": "/console/deliveries",
    "quarantine": "/console/quarantine",
    "playground": "/console/playground?provider=cloudapi&case=inbound_text",
    "send": "/console/send",
    "audit": "/console/audit",
    "login": "/console/login",
    "event": "event",  # the pages of one object: paths found at run time
    "contact": "contact",
    "quarantined": "quarantined",
}
ERRORS_ONLY = b"""{"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
  {"field": "messages", "value": {"messaging_product": "whatsapp", "metadata": {
   "display_phone_number": "15550001111", "phone_number_id": "106540352242922"},
   "errors": [{"code": 131000, "title": "Something went wrong"}]}}]}]}"""


def object_page(gateway: Gateway, name: str) -> str:
    if name == "quarantined":
        if not gateway.api.get("/v1/quarantined").json()["data"]:
            assert gateway.post(ERRORS_ONLY).status_code == 200
        return f"/console/quarantine/{gateway.api.get('/v1/quarantined').json()['data'][0]['id']}"
    if not gateway.events(limit=1):
        assert gateway.post(cloud_message("wamid.kb1", bsuid=B1)).status_code == 200
    event = newest_event(gateway)
    return (
        f"/console/events/{event['id']}"
        if name == "event"
        else f"/console/contacts/{event['subject']}"
    )


@pytest.mark.parametrize("name", list(PAGES))
def test_every_page_works_from_the_keyboard(
    page: Any, gateway: Gateway, screenshots: Path, name: str
) -> None:
    if name == "login":
        page.context.clear_cookies()
        page.goto(f"{gateway.url}{PAGES[name]}")
    else:
        path = PAGES[name] if PAGES[name].startswith("/") else object_page(gateway, name)
        sign_in(page, gateway, path)
    page.screenshot(path=str(screenshots / f"{name}.png"), full_page=True)
    page.keyboard.press("Tab")
    first = page.evaluate(
        "() => [document.activeElement.className, document.activeElement.textContent]"
    )
    assert first == ["skip", "Skip to content"]
    outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none")  # the focus is visible
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.activeElement.id") == "main"
    # every control on the page can be reached with Tab alone
    controls = page.evaluate(
        """() => Array.from(document.querySelectorAll(
             'a[href], button, input:not([type=hidden]), select, textarea, [tabindex="0"]'))
             .filter(e => e.offsetParent !== null && !e.disabled).length"""
    )
    page.goto(page.url)
    reached = set()
    for _ in range(controls + 2):
        page.keyboard.press("Tab")
        reached.add(
            page.evaluate(
                """() => { const e = document.activeElement; if (!e.dataset.seen)
                 e.dataset.seen = String(Math.random()); return e.dataset.seen; }"""
            )
        )
    assert len(reached) >= controls
