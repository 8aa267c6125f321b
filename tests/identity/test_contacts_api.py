"""Contacts API, erasure, and deliveries held for phone-keyed subscribers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from bspgate.app import create_app
from bspgate.delivery.worker import Dispatcher
from bspgate.metrics import Metrics
from tests.asgi_client import TestClient
from tests.conftest import API_KEY, SUBSCRIBER_SECRET, make_settings, meta_signature
from tests.identity.payloads import (
    cloud_message,
    cloud_user_changed_user_id,
    cloud_user_changed_user_id_as_documented,
)

pytestmark = pytest.mark.store  # runs on SQLite and PostgreSQL

B1 = "US.13491208655302741918"
B2 = "US.20000000000000000001"
PHONE = "15551234567"
AUTH = {"authorization": f"Bearer {API_KEY}"}


def _subscriber(sub_id: str, require_phone: bool) -> dict[str, Any]:
    return {
        "id": sub_id,
        "url": f"https://{sub_id}.example.com/hook",
        "secret": SUBSCRIBER_SECRET,
        "require_phone": require_phone,
        "retry_schedule": ["1s"],
        "hold_for": "1d",
    }


@pytest.fixture
def client(tmp_path: Path) -> Any:
    settings = make_settings(
        tmp_path, subscribers=[_subscriber("crm", True), _subscriber("bi", False)]
    )
    with TestClient(create_app(settings, dispatch=False)) as test_client:
        yield test_client


def _post(client: TestClient, body: bytes) -> None:
    headers = {"x-hub-signature-256": meta_signature(body), "content-type": "application/json"}
    assert client.post("/webhooks/cloud-us", content=body, headers=headers).status_code == 200


def _deliveries(client: TestClient, subscriber: str) -> list[dict[str, Any]]:
    store = client.app.state.gateway.store  # type: ignore[attr-defined]
    rows: list[dict[str, Any]] = store.read_sync(
        lambda tx: tx.deliveries(state=None, subscriber_id=subscriber, event_id=None, limit=100)
    )
    return rows


def _contact_id(client: TestClient) -> str:
    events = client.get("/v1/events", headers=AUTH).json()["data"]
    return str(events[0]["data"]["contact"]["id"])


def test_contact_by_id_shows_identifiers_and_history(client: TestClient) -> None:
    _post(client, cloud_message("wamid.1", phone=PHONE, bsuid=B1))
    contact_id = _contact_id(client)
    view = client.get(f"/v1/contacts/{contact_id}", headers=AUTH).json()
    assert view["bsuid"] == B1
    assert view["phone"] == "+" + PHONE
    assert view["bsuids"][0]["state"] == "current"
    assert view["phones"][0]["channel_id"] == "cloud-us"
    assert [h["kind"] for h in view["history"]][:2] == ["created", "phone_captured"]


def test_unknown_contact_is_404_problem(client: TestClient) -> None:
    response = client.get("/v1/contacts/ct_01M81D0ZKKHBEQCPHCSD87B3MS", headers=AUTH)
    assert response.status_code == 404
    assert response.json()["code"] == "unknown_contact"


def test_lookup_needs_exactly_one_identifier(client: TestClient) -> None:
    response = client.get("/v1/contacts", params={"bsuid": B1, "phone": PHONE}, headers=AUTH)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"


def test_lookup_by_username(client: TestClient) -> None:
    body = json.loads(cloud_message("wamid.1", bsuid=B1))
    body["entry"][0]["changes"][0]["value"]["contacts"][0]["profile"]["username"] = "@sheena"
    _post(client, json.dumps(body).encode())
    found = client.get("/v1/contacts", params={"username": "@sheena"}, headers=AUTH).json()
    assert [c["bsuid"] for c in found["data"]] == [B1]


def test_contacts_need_an_api_key(client: TestClient) -> None:
    assert client.get("/v1/contacts", params={"bsuid": B1}).status_code == 401


def test_phone_keyed_subscriber_holds_events_without_phone(client: TestClient) -> None:
    _post(client, cloud_message("wamid.1", bsuid=B1))
    assert [d["state"] for d in _deliveries(client, "crm")] == ["held"]
    assert [d["state"] for d in _deliveries(client, "bi")] == ["pending"]


def test_held_delivery_is_released_with_the_phone_filled_in(client: TestClient) -> None:
    _post(client, cloud_message("wamid.1", bsuid=B1))
    _post(client, cloud_message("wamid.2", bsuid=B1, phone=PHONE, step=1))
    assert [d["state"] for d in _deliveries(client, "crm")] == ["pending", "pending"]
    store = client.app.state.gateway.store  # type: ignore[attr-defined]
    jobs = store.read_sync(lambda tx: tx.claim_due(9e12, 60, 10, set()))
    held = [j for j in jobs if j.subscriber_id == "crm"]
    assert {json.loads(j.body)["data"]["contact"]["phone"] for j in held} == {"+" + PHONE}
    first = [j for j in jobs if j.subscriber_id == "bi" and j.event_id == held[0].event_id]
    if first and json.loads(held[0].body)["data"]["message"]["id"] == "wamid.1":
        # the event as stored (and as other subscribers get it) is unchanged
        assert json.loads(first[0].body)["data"]["contact"]["phone"] is None


@pytest.mark.anyio
async def test_held_delivery_expires_after_hold_for(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, subscribers=[_subscriber("crm", True)])
    app = create_app(settings, dispatch=False)
    gateway = app.state.gateway
    await gateway.store.open()
    try:
        channel = settings.channel("cloud-us")
        assert channel is not None
        await gateway.ingest(channel, json.loads(cloud_message("wamid.1", bsuid=B1)), b"{}", "")
        later = datetime.now(UTC) + timedelta(days=2)
        transport = httpx.MockTransport(lambda request: httpx.Response(200))
        async with httpx.AsyncClient(transport=transport) as http:
            dispatcher = Dispatcher(
                gateway.store, settings.subscribers, http, Metrics(), clock=lambda: later
            )
            assert await dispatcher.run_once() == 0
        rows = await gateway.store.read(
            lambda tx: tx.deliveries(state=None, subscriber_id="crm", event_id=None, limit=5)
        )
        assert [r["state"] for r in rows] == ["expired"]
    finally:
        await gateway.store.close()


def test_erasure_removes_pii_and_keeps_the_contact_id(client: TestClient) -> None:
    _post(client, cloud_message("wamid.1", phone=PHONE, bsuid=B1))
    contact_id = _contact_id(client)
    erased = client.delete(f"/v1/contacts/{contact_id}", headers=AUTH)
    assert erased.status_code == 200
    assert erased.json()["erased"]["raw_payloads_blanked"] == 1
    view = client.get(f"/v1/contacts/{contact_id}", headers=AUTH).json()
    assert (view["phone"], view["name"], view["phones"]) == (None, None, [])
    assert view["erased_at"]
    assert view["history"][-1]["kind"] == "erased"
    events = client.get("/v1/events", headers=AUTH).json()["data"]
    [event] = [e for e in events if e["type"] == "whatsapp.message.received"]
    assert event["data"]["contact"] == {
        "id": contact_id,
        **dict.fromkeys(("bsuid", "parent_bsuid", "phone", "username", "name")),
    }
    assert event["data"]["message"]["text"] is None
    assert event["data"]["contact"]["id"] == contact_id
    store = client.app.state.gateway.store  # type: ignore[attr-defined]
    raw = store.read_sync(lambda tx: tx.raw(event["data"]["raw_id"]))
    assert (raw.state, raw.body) == ("erased", b"")
    assert {d["state"] for d in _deliveries(client, "bi")} == {"erased"}
    assert client.delete(f"/v1/contacts/{contact_id}x", headers=AUTH).status_code == 404


def test_old_bsuid_finds_the_relinked_contact(client: TestClient) -> None:
    _post(client, cloud_message("wamid.1", phone=PHONE, bsuid=B1))
    _post(client, cloud_user_changed_user_id("wamid.2", B1, B2, step=1))
    found = client.get("/v1/contacts", params={"bsuid": B1}, headers=AUTH).json()["data"]
    assert [c["bsuid"] for c in found] == [B2]


@pytest.mark.parametrize("new_phone", ["15557654321", None], ids=["new-phone", "phone-hidden"])
def test_a_bsuid_change_naming_the_old_bsuid_only_in_its_body_relinks(
    client: TestClient, new_phone: str | None
) -> None:
    _post(client, cloud_message("wamid.1", phone=PHONE, bsuid=B1))
    before = client.get("/v1/contacts", params={"bsuid": B1}, headers=AUTH).json()["data"][0]
    _post(client, cloud_user_changed_user_id_as_documented("wamid.2", B1, B2, PHONE, new_phone, 1))
    after = client.get("/v1/contacts", params={"bsuid": B2}, headers=AUTH).json()["data"]
    assert [c["id"] for c in after] == [before["id"]]  # the same contact, relinked (rule 5)
    assert after[0]["phone"] == (f"+{new_phone}" if new_phone else None)
    old_alias = [p for p in after[0]["phones"] if p["phone"] == f"+{PHONE}"]
    assert [p["state"] for p in old_alias] == ["retired"]  # never sent to again
    changed = client.get(
        "/v1/events", params={"type": "whatsapp.contact.identity_changed"}, headers=AUTH
    ).json()["data"]
    assert changed[0]["data"]["previous"] == {"bsuid": B1, "phone": f"+{PHONE}"}


def test_metrics_show_queue_depth_and_oldest_undelivered_age(client: TestClient) -> None:
    _post(client, cloud_message("wamid.1", bsuid=B1))
    text = client.get("/metrics").text
    assert 'bspgate_store_rows{state="deliveries_pending"} 1.0' in text
    assert 'bspgate_store_rows{state="deliveries_held"} 1.0' in text
    (line,) = [x for x in text.splitlines() if x.startswith("bspgate_oldest_undelivered_seconds")]
    assert float(line.split()[-1]) >= 0.0


def test_a_queue_emptied_reads_zero_not_its_last_count(client: TestClient) -> None:
    text = client.get("/metrics").text  # the watched queues are there before any row
    assert 'bspgate_store_rows{state="deliveries_held"} 0.0' in text
    assert 'bspgate_store_rows{state="raw_received"} 0.0' in text
    _post(client, cloud_message("wamid.1", bsuid=B1))  # "bi" needs a phone: held
    assert 'bspgate_store_rows{state="deliveries_held"} 1.0' in client.get("/metrics").text
    _post(client, cloud_message("wamid.2", phone=PHONE, bsuid=B1))  # the phone releases it
    assert [d["state"] for d in _deliveries(client, "bi")] == ["pending", "pending"]
    text = client.get("/metrics").text
    assert 'bspgate_store_rows{state="deliveries_held"} 0.0' in text
    assert 'bspgate_store_rows{state="deliveries_pending"} 4.0' in text


@pytest.mark.parametrize(
    "query",
    [
        {"phone": "+15551234567"},
        {"phone": "15551234567"},
        {"phone": " 15551234567"},  # an unencoded + arrives as a space
        {"phone": "whatsapp:+1 555-123-4567"},
        {"username": "bo"},
        {"username": "@bo"},
        {"bsuid": B1},
    ],
)
def test_lookups_normalize_like_the_cli(client: TestClient, query: dict[str, str]) -> None:
    body = json.loads(cloud_message("wamid.1", phone=PHONE, bsuid=B1))
    body["entry"][0]["changes"][0]["value"]["contacts"][0]["profile"]["username"] = "@bo"
    _post(client, json.dumps(body).encode())
    found = client.get("/v1/contacts", params=query, headers=AUTH).json()["data"]
    assert [c["bsuid"] for c in found] == [B1]


def test_a_late_webhook_on_a_retired_bsuid_moves_its_last_seen(client: TestClient) -> None:
    _post(client, cloud_message("wamid.1", phone=PHONE, bsuid=B1))
    _post(client, cloud_user_changed_user_id("wamid.2", B1, B2, step=1))
    contact_id = _contact_id(client)

    def last_seen() -> str:
        view = client.get(f"/v1/contacts/{contact_id}", headers=AUTH).json()
        return str(next(b["last_seen"] for b in view["bsuids"] if b["bsuid"] == B1))

    before = last_seen()
    gateway = client.app.state.gateway  # type: ignore[attr-defined]
    later = datetime.now(UTC) + timedelta(hours=1)
    gateway.clock = lambda: later
    _post(client, cloud_message("wamid.3", bsuid=B1, step=2))
    assert last_seen() > before


def test_the_current_parent_bsuid_is_not_listed_as_retired(client: TestClient) -> None:
    body = json.loads(cloud_message("wamid.1", bsuid=B1))
    value = body["entry"][0]["changes"][0]["value"]
    value["messages"][0]["from_parent_user_id"] = "US.ENT.11815799212886844830"
    value["contacts"][0]["parent_user_id"] = "US.ENT.11815799212886844830"
    _post(client, json.dumps(body).encode())
    view = client.get(f"/v1/contacts/{_contact_id(client)}", headers=AUTH).json()
    states = {b["bsuid"]: b["state"] for b in view["bsuids"]}
    assert view["parent_bsuid"] == "US.ENT.11815799212886844830"
    assert states == {B1: "current", "US.ENT.11815799212886844830": "parent"}


def test_events_by_a_merged_contacts_id_answer_the_survivors(client: TestClient) -> None:
    _post(client, cloud_message("wamid.1", phone="15551234567", step=1))  # phone-only contact
    _post(client, cloud_message("wamid.2", bsuid="US.13491208655302741918", step=2))
    _post(
        client,
        cloud_message("wamid.3", phone="15551234567", bsuid="US.13491208655302741918", step=3),
    )
    auth = {"authorization": f"Bearer {API_KEY}"}
    everything = client.get("/v1/events", headers=auth).json()["data"]
    merged = next(e for e in everything if e["type"] == "whatsapp.contact.merged")
    absorbed, survivor = merged["data"]["merged"]["id"], merged["subject"]
    by_absorbed = client.get("/v1/events", params={"contact_id": absorbed}, headers=auth).json()
    by_survivor = client.get("/v1/events", params={"contact_id": survivor}, headers=auth).json()
    assert by_absorbed["data"] == by_survivor["data"]
    ids = {e["data"]["message"]["id"] for e in by_absorbed["data"] if "message" in e["data"]}
    assert ids == {"wamid.1", "wamid.2", "wamid.3"}  # the merged contact's own message too
