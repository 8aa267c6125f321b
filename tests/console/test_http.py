"""The console over plain HTTP (no browser): sessions, CSRF, masking, audit, pagination, off."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from bspgate.console.activity import Activity
from bspgate.console.render import mask_event, mask_payload, mask_phone, payload_view
from bspgate.console.session import safe_next
from tests.conftest import API_KEY, SUBSCRIBER_SECRET, make_settings
from tests.console.conftest import csrf_of, in_process, signed_in, wait_until
from tests.harness import RunningGateway
from tests.identity.payloads import cloud_message

pytestmark = [pytest.mark.e2e, pytest.mark.store]  # store: SQLite and PostgreSQL


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[RunningGateway]:
    with in_process(tmp_path) as running:
        yield running


def test_session_cookie_is_httponly_strict_scoped_and_expiring(gateway: RunningGateway) -> None:
    client = httpx.Client(base_url=gateway._server.url, follow_redirects=False)
    login = client.get("/console/login")
    token = csrf_of(login.text)
    answer = client.post("/console/login", data={"csrf": token, "key": API_KEY})
    cookie = answer.headers["set-cookie"].lower()
    for part in ("httponly", "samesite=strict", "path=/console", "max-age=28800"):
        assert part in cookie
    assert answer.headers["location"] == "/console/"
    assert client.get("/console/").status_code == 200
    client.close()


def test_sign_in_refusals(gateway: RunningGateway) -> None:
    client = httpx.Client(base_url=gateway._server.url, follow_redirects=False)
    token = csrf_of(client.get("/console/login").text)
    assert client.post("/console/login", data={"key": API_KEY}).status_code == 403  # no token
    assert client.post("/console/login", data={"csrf": token, "key": "x"}).status_code == 401
    assert client.get("/console/").status_code == 303  # still signed out
    client.close()


def test_actions_without_the_token_change_nothing(gateway: RunningGateway) -> None:
    client = signed_in(gateway)
    refused = client.post("/console/subscribers/crm/disable", data={"csrf": "forged"})
    assert refused.status_code == 403
    other_site = client.post(
        "/console/subscribers/crm/disable",
        data={"csrf": csrf_of(client.get("/console/deliveries").text)},
        headers={"origin": "https://evil.example"},
    )
    assert other_site.status_code == 403
    assert gateway.client.get("/v1/subscribers").json()["data"][0]["enabled"] is True
    token = csrf_of(client.get("/console/deliveries").text)
    assert client.post("/console/subscribers/crm/disable", data={"csrf": token}).status_code == 303
    assert gateway.client.get("/v1/subscribers").json()["data"][0]["enabled"] is False
    client.close()


def test_retry_now_is_stored_for_the_delivery_worker(gateway: RunningGateway) -> None:
    client = signed_in(gateway)
    token = csrf_of(client.get("/console/deliveries").text)
    assert (
        gateway.post("cloud-us", cloud_message("wamid.r1", phone="15551230098")).status_code == 200
    )

    def queued() -> bool:  # no dispatcher here: the delivery waits, due since it was made
        rows = gateway.client.get("/v1/deliveries", params={"state": "pending"}).json()["data"]
        return bool(rows)

    wait_until(queued, "the delivery to be queued")
    answer = client.post("/console/deliveries/retry-now", data={"csrf": token})
    assert answer.status_code == 303
    notice = unquote(answer.headers["location"])
    assert "0 pending deliver(ies) made due now; 1 were due already" in notice  # was "0 … due now"
    store = gateway._server.server.config.app.state.gateway.store
    asked = store.read_sync(lambda tx: tx.retry_requested("crm"))
    assert asked is not None  # a lane in another process reads it and probes at once
    client.close()


def test_reveal_is_audited_and_scoped_to_one_page(gateway: RunningGateway) -> None:
    body = cloud_message("wamid.h1", phone="15551230099")
    assert gateway.post("cloud-us", body).status_code == 200
    wait_until(lambda: len(gateway.events()) == 1, "the webhook to be processed")
    event_id = gateway.events()[0]["id"]
    client = signed_in(gateway)
    page = f"/console/events/{event_id}"
    assert "15551230099" not in client.get(page).text
    token = csrf_of(client.get(page).text)
    answer = client.post("/console/reveal", data={"csrf": token, "path": page, "reason": "T-1"})
    assert answer.headers["location"] == page
    assert "+15551230099" in client.get(page).text
    assert "15551230099" not in client.get("/console/events").text
    store = gateway._server.server.config.app.state.gateway.store
    rows = store.read_sync(
        lambda tx: tx.all("SELECT actor, action, target, detail FROM console_audit")
    )
    assert ("test", "reveal", page, '{"reason":"T-1"}') in [tuple(r) for r in rows]
    client.close()


def test_events_pages_by_cursor_without_overlap(gateway: RunningGateway) -> None:
    for index in range(60):
        body = cloud_message(f"wamid.p{index}", bsuid="US.5555555555555555555", step=index)
        assert gateway.post("cloud-us", body).status_code == 200
    wait_until(lambda: len(gateway.events()) == 60, "the webhooks to be processed")
    client = signed_in(gateway)
    first = client.get("/console/events").text
    older = re.search(r'href="(/console/events\?cursor=[^"]+)"', first)
    assert older is not None
    second = client.get(older.group(1).replace("&amp;", "&")).text
    ids_first = set(re.findall(r"/console/events/(evt_[0-9A-Z]+)", first))
    ids_second = set(re.findall(r"/console/events/(evt_[0-9A-Z]+)", second))
    assert len(ids_first) == 50
    assert len(ids_second) == 10
    assert not ids_first & ids_second
    # the contact filter takes a BSUID too (it shows the contact it resolves to)
    by_bsuid = client.get("/console/events", params={"contact": "US.5555555555555555555"}).text
    assert len(set(re.findall(r"/console/events/(evt_[0-9A-Z]+)", by_bsuid))) == 50
    nobody = client.get("/console/events", params={"contact": "US.9999999999999999999"}).text
    assert "No events match." in nobody
    client.close()


def test_console_false_serves_no_console(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, console=False)
    with RunningGateway(settings, dispatch=False) as running:
        assert running.client.get("/console/login").status_code == 404
        assert running.client.get("/healthz").status_code == 200


def test_masking() -> None:
    assert mask_phone("+15551234567") == "+•••••••••67"
    assert mask_phone("whatsapp:+1 555 123") == "whatsapp:+• ••• •23"
    event = {"data": {"contact": {"phone": "+15551234567", "bsuid": "US.123456789"},
                      "message": {"text": "secret words", "type": "text"},
                      "previous": {"phone": "+15550000011"}}}  # fmt: skip
    masked = mask_event(event)
    assert masked["data"]["contact"] == {"phone": "+•••••••••67", "bsuid": "US.123456789"}
    assert masked["data"]["message"]["text"] == "[hidden]"
    assert masked["data"]["previous"]["phone"] == "+•••••••••11"
    assert event["data"]["message"]["text"] == "secret words"  # a copy was masked
    raw = {"from": "15551234567", "from_user_id": "US.13491208655302741918",
           "text": {"body": "hello"}, "From": "whatsapp:US.13491208655302741918",
           "timestamp": "1767225600", "contact": "ct_01M8SR87CZK27B3Y27CC50J4PV",
           "note": "+15550001111", "time": "call me +15551239999 today"}  # fmt: skip
    assert mask_payload(raw) == {
        "from": "•••••••••67",
        "from_user_id": "US.13491208655302741918",
        "text": {"body": "[hidden]"},
        "From": "whatsapp:US.13491208655302741918",
        "timestamp": "1767225600",
        "contact": "ct_01M8SR87CZK27B3Y27CC50J4PV",
        "note": "+•••••••••11",
        "time": "call me +•••••••••99 today",  # a phone inside free text where a time belongs
    }


def test_a_form_body_is_shown_as_masked_fields() -> None:
    body = b"From=whatsapp%3A%2B15551234567&Body=hi+there&WaId=15551234567&NumMedia=0"
    form = "application/x-www-form-urlencoded"
    assert payload_view(body, form, reveal=False) == {
        "From": "whatsapp:+•••••••••67",
        "Body": "[hidden]",
        "WaId": "•••••••••67",
        "NumMedia": "0",
    }
    assert payload_view(body, form, reveal=True)["Body"] == "hi there"
    assert payload_view(b"\x00binary", "application/octet-stream", reveal=False).startswith("[")


def test_next_never_leaves_the_console() -> None:
    assert safe_next("/console/events?type=x") == "/console/events?type=x"
    for bad in ("https://evil.example/", "//evil.example", "/consolex\\..", "", None):
        assert safe_next(bad) == "/console/"


def test_activity_counts_the_window_only() -> None:
    registry = CollectorRegistry()
    hooks = Counter("w_total", "w", ["channel", "outcome"], registry=registry)
    events = Counter("e_total", "e", ["type"], registry=registry)
    activity = Activity(hooks, events, started=1000.0)
    hooks.labels("cloud-us", "processed").inc(3)
    activity.sample(now=1000.0)
    hooks.labels("cloud-us", "processed").inc(2)
    hooks.labels("cloud-us", "unauthorized").inc()
    events.labels("whatsapp.message.received").inc(2)
    recent = activity.recent(minutes=5, now=1000.0 + 301)
    assert recent["since"] == 1000.0
    assert recent["by_channel"] == {"cloud-us": {"processed": 2, "unauthorized": 1}}
    assert recent["by_type"] == {"whatsapp.message.received": 2}


def test_subscriber_urls_are_shown_without_credentials(tmp_path: Path) -> None:
    url = "http://user:pw@127.0.0.1:9/hook?token=supersecret&tenant=acme"
    subscriber = {"id": "crm", "url": url, "secret": SUBSCRIBER_SECRET}
    settings = make_settings(tmp_path, subscribers=[subscriber])
    with RunningGateway(settings, dispatch=False) as running:
        client = signed_in(running)
        deliveries = client.get("/console/deliveries").text
        for html in (deliveries, client.get("/console/").text):
            assert "supersecret" not in html
            assert "user:pw@" not in html
        assert "http://user:****@127.0.0.1:9/hook?token=****&amp;tenant=acme" in deliveries
        client.close()


def test_the_events_type_filter_offers_every_event_type(gateway: RunningGateway) -> None:
    client = signed_in(gateway)
    page = client.get("/console/events").text
    offered = set(re.findall(r"<option(?: selected)?>([a-z_.]+)</option>", page))
    for kind in ("whatsapp.contact.merged", "whatsapp.contact.erased", "bspgate.mapping.drift"):
        assert kind in offered  # it offered three types, not these
    client.close()


def test_the_audit_log_pages_back_past_its_newest_entries(
    gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bspgate.console import pages

    monkeypatch.setattr(pages, "AUDIT_PAGE", 2)  # it showed the newest 200 and no way back
    client = signed_in(gateway)  # one entry: the sign-in
    for reason in ("T-1", "T-2"):
        token = csrf_of(client.get("/console/events").text)
        form = {"csrf": token, "path": "/console/events", "reason": reason}
        assert client.post("/console/reveal", data=form).status_code == 303
    first = client.get("/console/audit").text
    assert first.count("<tr><td>") == 2
    older = re.search(r'id="older" href="([^"]+)"', first)
    assert older is not None
    second = client.get(older.group(1)).text
    assert second.count("<tr><td>") == 1
    assert "sign_in" in second
    assert 'id="older"' not in second
    client.close()
