"""Odd requests to the console: a NUL character anywhere an id or value travels, an audit page
number past 64 bits, and an action posted after the session ended.

A NUL is refused as `/v1` refuses it (`400`, nothing read): PostgreSQL refuses it in a text
parameter (a 500 before), SQLite answered an empty page as if nothing matched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from bspgate.console.session import SESSION_SECONDS
from tests.conftest import API_KEY, SUBSCRIBER_SECRET
from tests.console.conftest import Clock, csrf_of, in_process, signed_in
from tests.harness import RunningGateway

pytestmark = [pytest.mark.e2e, pytest.mark.store]  # store: SQLite and PostgreSQL

SUBSCRIBER = {"id": "crm", "url": "http://127.0.0.1:9/hook", "secret": SUBSCRIBER_SECRET}
CONTACT = "ct_01AAAAAAAAAAAAAAAAAAAAAAAA"
NUL_PAGES = [
    "/console/events?contact=%00",
    "/console/events?contact=ct_%00",
    "/console/events?type=%00",
    "/console/events?channel=a%00",
    "/console/events/evt_%00",
    "/console/contacts?q=ab%00c",
    "/console/contacts/ct_%00",
    "/console/deliveries?subscriber=%00",
    "/console/deliveries?error=%00",
    "/console/quarantine?before=raw_%00",
    "/console/quarantine/raw_%00",
    "/console/events/stream?contact=%00",
]


@pytest.fixture
def gateway(tmp_path: Path, clock: Clock) -> Iterator[RunningGateway]:
    with in_process(tmp_path, clock) as running:
        yield running


@pytest.mark.parametrize("path", NUL_PAGES)
def test_a_nul_in_a_page_address_is_a_400(client: httpx.Client, path: str) -> None:
    """Every page that reads an id or a filter value from its path or query."""
    answer = client.get(path)
    assert answer.status_code == 400, answer.text[:200]
    if "/stream" not in path:
        assert "NUL character" in answer.text


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        (f"/console/contacts/{CONTACT}/merge", {"from": "ct_\x00", "confirm": "yes"}),
        ("/console/events/evt_01AAAAAAAAAAAAAAAAAAAAAAAA/deliver", {"subscriber_id": "crm\x00"}),
        ("/console/deliveries/replay-filter", {"subscriber_id": "crm", "error": "\x00"}),
        ("/console/deliveries/retry-now", {"subscriber_id": "crm\x00"}),
    ],
)
def test_a_nul_in_a_form_field_is_a_400_that_changes_nothing(
    gateway: RunningGateway, client: httpx.Client, path: str, fields: dict[str, str]
) -> None:
    token = csrf_of(client.get("/console/deliveries").text)
    answer = client.post(path, data={"csrf": token, **fields})
    assert answer.status_code == 400, answer.text[:200]
    assert "NUL character" in answer.text
    audit = client.get("/console/audit").text
    assert audit.count("<tr><td>") == 1  # the sign-in only: refused before the action ran


def test_a_nul_in_an_action_needs_the_csrf_token_first(client: httpx.Client) -> None:
    """The CSRF check still comes first: a forged form is a 403 whatever it holds."""
    answer = client.post("/console/deliveries/retry-now", data={"csrf": "x", "s": "\x00"})
    assert answer.status_code == 403


def test_an_audit_page_number_past_64_bits_answers_the_newest_page(
    client: httpx.Client,
) -> None:
    """`before` is the "Older entries" id; a huge one overflowed SQLite's integer binding."""
    for before in ("99999999999999999999999", "-99999999999999999999999"):
        answer = client.get("/console/audit", params={"before": before})
        assert answer.status_code == 200, answer.text[:200]
        assert "<td>sign_in</td>" in answer.text


def _expired_action(
    gateway: RunningGateway, clock: Clock, headers: dict[str, str]
) -> httpx.Response:
    """Sign in, open the deliveries page, wait out the session, then post "Retry pending now"
    and sign in again as the browser would (following `next`): the page landed on."""
    with closing(signed_in(gateway)) as client:
        token = csrf_of(client.get("/console/deliveries").text)
        clock.advance(SESSION_SECONDS + 60)
        answer = client.post(
            "/console/deliveries/retry-now",
            data={"csrf": token, "subscriber_id": "crm"},
            headers=headers,
        )
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/console/login?next=")
        login = client.get(answer.headers["location"])
        next_ = parse_qs(urlsplit(answer.headers["location"]).query)["next"][0]
        form = {"csrf": csrf_of(login.text), "key": API_KEY, "next": next_}
        signed = client.post("/console/login", data=form)
        assert signed.status_code == 303
        landing = client.get(signed.headers["location"])
        assert landing.status_code == 200, (signed.headers["location"], landing.text[:80])
        return landing


def test_an_action_after_the_session_ended_returns_to_the_referring_page(
    gateway: RunningGateway, clock: Clock
) -> None:
    """The browser sends a same-origin `Referer` (`Referrer-Policy: same-origin`): back there."""
    page = f"{gateway._server.url}/console/deliveries?subscriber=crm"
    landing = _expired_action(gateway, clock, {"referer": page})
    assert str(landing.url).endswith("/console/deliveries?subscriber=crm")


def test_an_action_after_the_session_ended_returns_to_its_section_without_a_referer(
    gateway: RunningGateway, clock: Clock
) -> None:
    """No `Referer`, or another site's: the section's page, never the POST-only action URL."""
    for headers in ({}, {"referer": "https://evil.example/console/events"}):
        landing = _expired_action(gateway, clock, headers)
        assert urlsplit(str(landing.url)).path == "/console/deliveries"


def test_an_action_on_one_item_after_the_session_ended_returns_to_that_items_page(
    gateway: RunningGateway, clock: Clock
) -> None:
    """No `Referer`: "Deliver again" on an event goes back to that event's page."""
    event = "evt_01AAAAAAAAAAAAAAAAAAAAAAAA"
    with closing(signed_in(gateway)) as client:
        token = csrf_of(client.get("/console/deliveries").text)
        clock.advance(SESSION_SECONDS + 60)
        answer = client.post(
            f"/console/events/{event}/deliver", data={"csrf": token, "subscriber_id": "crm"}
        )
    assert answer.status_code == 303
    assert parse_qs(urlsplit(answer.headers["location"]).query)["next"] == [
        f"/console/events/{event}"
    ]
