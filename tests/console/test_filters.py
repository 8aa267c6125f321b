"""The console's event-time filters over plain HTTP: instants with any offset, refused garbage,
and a live tail that keeps to its page's window."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from bspgate.console.pages import STREAM_SECONDS
from tests.conftest import SUBSCRIBER_SECRET, make_settings
from tests.console.conftest import csrf_of, in_process, signed_in, wait_until
from tests.harness import RunningGateway
from tests.identity.payloads import cloud_message

pytestmark = [pytest.mark.e2e, pytest.mark.store]  # store: SQLite and PostgreSQL

DAY = 86400
YEAR = 365 * DAY
ROW = re.compile(r'<td><a href="/console/events/(evt_[0-9A-Z]+)"')


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[RunningGateway]:
    with in_process(tmp_path) as running:
        yield running


def _post(gateway: RunningGateway, steps: list[int], prefix: str) -> None:
    """Messages with event times 2026-01-01T00:00:00Z + step seconds, processed in order."""
    for index, step in enumerate(steps):
        stored = len(gateway.events()) + 1
        body = cloud_message(f"wamid.{prefix}{index}", bsuid="US.5555555555555555555", step=step)
        assert gateway.post("cloud-us", body).status_code == 200
        wait_until(lambda n=stored: len(gateway.events()) == n, "the webhook")


def _rows(client: httpx.Client, **params: str) -> list[str]:
    return ROW.findall(client.get("/console/events", params=params).text)


def test_the_event_time_filter_compares_instants(
    gateway: RunningGateway, client: httpx.Client
) -> None:
    _post(gateway, [0, 1, 2, 3600], "t")  # 00:00:00Z .. 00:00:02Z, and 01:00:00Z
    utc = _rows(client, since="2026-01-01T00:00:00Z", until="2026-01-01T00:01:00Z")
    assert len(utc) == 3
    assert (
        _rows(client, since="2026-01-01T02:00:00+02:00", until="2026-01-01T02:01:00+02:00") == utc
    )
    assert (
        _rows(client, since="2025-12-31T19:00:00-05:00", until="2026-01-01T00:00:01Z") == utc[-1:]
    )


def test_a_garbage_event_time_is_refused_with_a_message(
    gateway: RunningGateway, client: httpx.Client
) -> None:
    _post(gateway, [0], "g")
    answer = client.get("/console/events", params={"since": "yesterday"})
    assert answer.status_code == 400
    assert "Event time from: not an RFC 3339 time" in answer.text
    assert not ROW.findall(answer.text)
    assert 'data-stream="/' not in answer.text


def _replay_notice(client: httpx.Client, **fields: str) -> str:
    token = csrf_of(client.get("/console/deliveries").text)
    answer = client.post("/console/deliveries/replay-filter", data={"csrf": token, **fields})
    assert answer.status_code == 303
    page = client.get(answer.headers["location"]).text
    found = re.search(r'<p class="notice"[^>]*>([^<]*)</p>', page)
    assert found is not None
    return found.group(1)


def test_replay_by_filter_refuses_a_garbage_time(
    gateway: RunningGateway, client: httpx.Client
) -> None:
    notice = _replay_notice(client, since="last tuesday")
    assert notice.startswith("Replay refused, nothing was requeued: since: not an RFC 3339 time")
    notice = _replay_notice(client, until="2026-13-01T00:00:00Z")
    assert notice.startswith("Replay refused, nothing was requeued: until: ")


def test_replay_by_filter_reads_an_offset_as_an_instant(tmp_path: Path) -> None:
    subscriber = {
        "id": "crm",
        "url": "http://127.0.0.1:9/hook",  # refused at once: the delivery dies
        "secret": SUBSCRIBER_SECRET,
        "retry_schedule": ["10ms"],
    }
    settings = make_settings(tmp_path, subscribers=[subscriber])
    with RunningGateway(settings) as running:
        _post(running, [0], "r")  # event time 2026-01-01T00:00:00Z

        def dead() -> int:
            data = running.client.get("/v1/deliveries", params={"state": "dead"}).json()["data"]
            return len(data)

        wait_until(lambda: dead() == 1, "the delivery to die")
        with closing(signed_in(running)) as client:
            same_instant = "2026-01-01T02:00:00+02:00"
            assert _replay_notice(client, since=same_instant) == "1 dead letter(s) requeued"


def _tail(client: httpx.Client, url: str, seconds: float) -> list[str]:
    """The `data:` lines a live tail pushes within `seconds`."""
    pushed = []
    with client.stream("GET", url.replace("&amp;", "&"), timeout=STREAM_SECONDS) as answer:
        assert answer.status_code == 200
        deadline = time.monotonic() + seconds
        for line in answer.iter_lines():  # an idle comment every half second
            if line.startswith("data:"):
                pushed.append(line)
            if time.monotonic() > deadline:
                break
    return pushed


def test_the_live_tail_keeps_to_the_page_window(
    gateway: RunningGateway, client: httpx.Client
) -> None:
    _post(gateway, [0, 1], "in")  # in the window
    _post(gateway, [-6 * YEAR, -6 * YEAR + 1], "before")  # stored later, before the window
    window = {"since": "2026-01-01T00:00:00Z", "until": "2100-01-01T00:00:00Z"}
    page = client.get("/console/events", params=window).text
    assert len(ROW.findall(page)) == 2
    stream = re.search(r'data-stream="([^"]+)"', page)
    assert stream is not None
    assert _tail(client, stream.group(1), 2.0) == []  # newer rows, but outside the window
    _post(gateway, [-6 * YEAR + 2, 150 * DAY], "late")  # one outside, one inside
    pushed = _tail(client, stream.group(1), 2.0)
    assert len(pushed) == 1
    assert '"time":"2026-05-31T00:00:00Z"' in pushed[0]


def test_a_window_that_has_ended_has_no_live_tail(
    gateway: RunningGateway, client: httpx.Client
) -> None:
    _post(gateway, [0], "e")
    window = {"since": "2026-01-01T00:00:00Z", "until": "2026-01-02T00:00:00Z"}
    page = client.get("/console/events", params=window).text
    assert len(ROW.findall(page)) == 1
    assert 'data-stream=""' in page
    assert "This time window has ended: no live tail." in page
    answer = client.get("/console/events/stream", params=window)
    assert answer.status_code == 204  # EventSource does not reconnect
