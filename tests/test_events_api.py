"""`GET /v1/events`: Bearer auth, newest first, filters and cursor pagination."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bspgate.api.events import encode_cursor
from bspgate.app import create_app
from tests.asgi_client import TestClient
from tests.conftest import API_KEY, make_settings
from tests.payloads import signed, status_webhook, text_webhook

pytestmark = pytest.mark.store  # runs on SQLite and PostgreSQL

AUTH = {"authorization": f"Bearer {API_KEY}"}
ALICE = "US.10000000000000000001"
BOB = "US.20000000000000000002"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(tmp_path), dispatch=False)) as client:
        yield client


def post(client: TestClient, payload: dict[str, Any]) -> None:
    body, headers = signed(payload)
    response = client.post("/webhooks/cloud-us", content=body, headers=headers)
    assert response.status_code == 200, response.text


def events(client: TestClient, **params: Any) -> dict[str, Any]:
    response = client.get("/v1/events", params=params, headers=AUTH)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


@pytest.fixture
def stored(client: TestClient) -> TestClient:
    """Five events: Alice's texts at t0 and t2, Bob's text at t1, a status for each at t3, t4."""
    post(client, text_webhook("wamid.A1", bsuid=ALICE, phone=None, timestamp=1767225600))
    post(client, text_webhook("wamid.B1", bsuid=BOB, phone=None, timestamp=1767225660))
    post(client, text_webhook("wamid.A2", bsuid=ALICE, phone=None, timestamp=1767225720))
    post(client, status_webhook("wamid.OUT1", bsuid=ALICE, timestamp=1767225780))
    post(client, status_webhook("wamid.OUT2", bsuid=BOB, timestamp=1767225840))
    return client


def message_ids(page: dict[str, Any]) -> list[str]:
    return [event["data"]["message"]["id"] for event in page["data"]]


def test_missing_bearer_is_401_problem(client: TestClient) -> None:
    response = client.get("/v1/events")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["code"] == "unauthorized"


def test_wrong_bearer_is_401(client: TestClient) -> None:
    response = client.get("/v1/events", headers={"authorization": "Bearer not-the-key"})
    assert response.status_code == 401


def test_other_scheme_with_the_right_key_is_401(client: TestClient) -> None:
    response = client.get("/v1/events", headers={"authorization": f"Basic {API_KEY}"})
    assert response.status_code == 401


def test_no_events_is_an_empty_page_whose_tail_cursor_is_the_start(client: TestClient) -> None:
    page = events(client)
    assert (page["data"], page["next_cursor"]) == ([], None)
    assert page["tail_cursor"] == encode_cursor(0)  # a follower starts at the first event


def test_events_are_listed_newest_first(stored: TestClient) -> None:
    page = events(stored)
    assert message_ids(page) == ["wamid.OUT2", "wamid.OUT1", "wamid.A2", "wamid.B1", "wamid.A1"]
    assert page["next_cursor"] is None


def test_listed_events_are_canonical_cloudevents(stored: TestClient) -> None:
    event = events(stored, limit=1)["data"][0]
    assert event["specversion"] == "1.0"
    assert event["id"].startswith("evt_")
    assert event["source"] == "/channels/cloud-us"
    assert event["subject"] == event["data"]["contact"]["id"]


def test_type_filter(stored: TestClient) -> None:
    page = events(stored, type="whatsapp.message.status")
    assert message_ids(page) == ["wamid.OUT2", "wamid.OUT1"]
    assert {e["type"] for e in page["data"]} == {"whatsapp.message.status"}


def test_contact_id_filter(stored: TestClient) -> None:
    alice = next(
        e["subject"] for e in events(stored)["data"] if e["data"]["contact"]["bsuid"] == ALICE
    )
    page = events(stored, contact_id=alice)
    assert message_ids(page) == ["wamid.OUT1", "wamid.A2", "wamid.A1"]


def test_unknown_contact_id_matches_nothing(stored: TestClient) -> None:
    assert events(stored, contact_id="ct_00000000000000000000000000")["data"] == []


def test_since_filter_is_inclusive_on_event_time(stored: TestClient) -> None:
    page = events(stored, since="2026-01-01T00:02:00Z")
    assert message_ids(page) == ["wamid.OUT2", "wamid.OUT1", "wamid.A2"]


def test_filters_combine(stored: TestClient) -> None:
    page = events(stored, type="whatsapp.message.received", since="2026-01-01T00:01:00Z")
    assert message_ids(page) == ["wamid.A2", "wamid.B1"]


@pytest.mark.parametrize("limit", [1, 2, 3, 5])
def test_cursor_pagination_visits_every_event_once(stored: TestClient, limit: int) -> None:
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(10):  # bounded: 5 events need at most 6 pages
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        page = events(stored, **params)
        assert len(page["data"]) <= limit
        seen.extend(e["id"] for e in page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    everything = [e["id"] for e in events(stored)["data"]]
    assert seen == everything
    assert len(set(seen)) == 5


def test_cursor_pagination_keeps_filters(stored: TestClient) -> None:
    first = events(stored, type="whatsapp.message.received", limit=2)
    second = events(stored, type="whatsapp.message.received", limit=2, cursor=first["next_cursor"])
    assert message_ids(first) + message_ids(second) == ["wamid.A2", "wamid.B1", "wamid.A1"]


def test_after_the_newest_tail_cursor_is_empty(stored: TestClient) -> None:
    newest = events(stored, limit=1)["tail_cursor"]
    assert events(stored, after=newest)["data"] == []


def test_after_a_cursor_answers_newer_events_oldest_first(stored: TestClient) -> None:
    oldest = events(stored, limit=5)["next_cursor"]  # a full page ends at its oldest event
    page = events(stored, after=oldest)
    assert message_ids(page) == ["wamid.B1", "wamid.A2", "wamid.OUT1", "wamid.OUT2"]
    assert page["next_cursor"] is None


def test_tail_cursor_follows_from_the_newest_event(stored: TestClient) -> None:
    newest_first = events(stored, limit=3)
    assert events(stored, after=newest_first["tail_cursor"])["data"] == []
    oldest_first = events(stored, after=events(stored, limit=5)["next_cursor"])
    assert events(stored, after=oldest_first["tail_cursor"])["data"] == []


@pytest.mark.parametrize("cursor", ["!!!", "eDEy", "", "s1", "czE2YQ"])
def test_invalid_cursor_is_400_problem(client: TestClient, cursor: str) -> None:
    response = client.get("/v1/events", params={"cursor": cursor}, headers=AUTH)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "invalid_query"


@pytest.mark.parametrize(
    "since", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "yesterday"]
)
def test_since_outside_the_representable_range_is_400_problem(
    client: TestClient, since: str
) -> None:
    response = client.get("/v1/events", params={"since": since}, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_query"


@pytest.mark.parametrize("limit", ["0", "501", "-1", "ten", "1.5", ""])
def test_invalid_limit_is_400_problem(client: TestClient, limit: str) -> None:
    response = client.get("/v1/events", params={"limit": limit}, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_query"


def test_deliveries_by_an_unknown_state_is_400_problem(client: TestClient) -> None:
    response = client.get("/v1/deliveries", params={"state": "bogus"}, headers=AUTH)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "invalid_query"
    assert "delivered" in response.json()["detail"]  # names the states there are
    known = client.get("/v1/deliveries", params={"state": "dead"}, headers=AUTH)
    assert known.status_code == 200
