"""Contact ids and identifiers as the console reads them: a merged contact's id answers as its
survivor (identity rule 8, as `/v1` answers it), and the Events page's Contact filter names the
contact a phone or BSUID has *now*, on every page and every poll of the live tail.
"""

from __future__ import annotations

import html as htmllib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.console.conftest import csrf_of, in_process, wait_until
from tests.harness import RunningGateway
from tests.identity.payloads import cloud_message

pytestmark = [pytest.mark.e2e, pytest.mark.store]  # store: SQLite and PostgreSQL

ROW = re.compile(r'<td><a href="/console/events/(evt_[0-9A-Z]+)"')


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[RunningGateway]:
    with in_process(tmp_path) as running:
        yield running


def _merged_pair(gateway: RunningGateway) -> tuple[str, str]:
    """(survivor, absorbed): a phone-only contact and a BSUID-only one, merged through `/v1`."""
    assert gateway.post("cloud-us", cloud_message("wamid.m1", phone="15551234567")).status_code
    assert gateway.post(
        "cloud-us", cloud_message("wamid.m2", bsuid="US.13491208655302741918")
    ).status_code
    wait_until(lambda: len(gateway.events()) == 2, "both webhooks to be processed")
    survivor, absorbed = (e["subject"] for e in gateway.events())
    answer = gateway.client.post(f"/v1/contacts/{survivor}/merge", json={"from": absorbed})
    assert answer.status_code == 200, answer.text
    return survivor, absorbed


def test_the_events_filter_follows_a_merged_contact_id_as_the_api_does(
    gateway: RunningGateway, client: httpx.Client
) -> None:
    """A CRM still keyed on the absorbed id: the page lists what `/v1/events` answers for it."""
    _survivor, absorbed = _merged_pair(gateway)
    api = [e["id"] for e in gateway.events(contact_id=absorbed)]
    assert api
    page = client.get("/console/events", params={"contact": absorbed}).text
    assert sorted(ROW.findall(page)) == sorted(api)
    assert f'value="{absorbed}"' in page  # the filter box keeps the id typed


def test_a_merged_contacts_page_offers_no_erase_and_points_to_the_survivor(
    gateway: RunningGateway, client: httpx.Client
) -> None:
    """Erasing "this" contact would erase another id: its page sends the operator there."""
    survivor, absorbed = _merged_pair(gateway)
    page = client.get(f"/console/contacts/{absorbed}").text
    assert f"/console/contacts/{absorbed}/erase" not in page
    assert f"/console/contacts/{absorbed}/merge" not in page
    note = re.search(r'<p id="merged-note">(.*?)</p>', page, re.S)
    assert note is not None
    assert f'href="/console/contacts/{survivor}"' in note.group(1)
    assert f"/console/contacts/{survivor}/erase" in client.get(f"/console/contacts/{survivor}").text


def test_erasing_by_a_merged_contacts_id_audits_the_contact_erased(
    gateway: RunningGateway, client: httpx.Client
) -> None:
    """The operation follows the merge (rule 8, as `DELETE /v1/contacts/{id}`): the audit
    entry's target is the survivor, the contact really erased, with the id typed beside it."""
    survivor, absorbed = _merged_pair(gateway)
    token = csrf_of(client.get(f"/console/contacts/{survivor}").text)
    answer = client.post(
        f"/console/contacts/{absorbed}/erase", data={"csrf": token, "confirm": absorbed}
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/console/contacts/{survivor}?erased=1"
    assert gateway.client.get(f"/v1/contacts/{survivor}").json()["erased_at"] is not None
    audit = client.get("/console/audit").text
    entry = next(row for row in audit.split("<tr>") if "<td>erase</td>" in row)
    assert f"<td>{survivor}</td>" in entry
    assert f'"requested_as": "{absorbed}"' in entry


def test_the_live_tail_shows_the_first_message_of_a_phone_no_contact_has_yet(
    gateway: RunningGateway, client: httpx.Client
) -> None:
    """The on-call engineer types the customer's number and watches the tail while the
    customer writes for the first time: the filter is resolved again on every poll."""
    page = client.get("/console/events", params={"contact": "+15550009999"}).text
    assert 'value="+15550009999"' in page  # the box keeps the phone typed (not `ct_none`)
    stream = re.search(r'data-stream="([^"]+)"', page)
    assert stream is not None
    url = htmllib.unescape(stream.group(1))
    assert gateway.post("cloud-us", cloud_message("wamid.t1", phone="15559990000")).status_code
    assert gateway.post("cloud-us", cloud_message("wamid.t2", phone="15550009999")).status_code
    wait_until(lambda: len(gateway.events()) == 2, "the webhooks to be processed")
    other, wanted = (e["id"] for e in gateway.events())
    seen = ""
    deadline = time.monotonic() + 5.0
    with client.stream("GET", url, timeout=httpx.Timeout(10.0)) as answer:
        for line in answer.iter_lines():
            seen += line + "\n"
            if wanted in seen or time.monotonic() > deadline:
                break
    assert wanted in seen
    assert other not in seen  # another person's message: not this filter's
