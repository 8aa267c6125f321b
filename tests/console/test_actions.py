"""Console actions and lists checked as their `/v1` twins check them: "Deliver again" to a removed
subscriber, the Quarantine list past its first page, a resubmitted Send form, audit times.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import orjson
import pytest

from bspgate.console import deliveries
from tests.conftest import SUBSCRIBER_SECRET, make_settings
from tests.console.conftest import csrf_of, in_process, signed_in, wait_until
from tests.harness import RunningGateway
from tests.identity.payloads import cloud_change, cloud_message

pytestmark = [pytest.mark.e2e, pytest.mark.store]  # store: SQLite and PostgreSQL

SUBSCRIBER = {"id": "crm", "url": "http://127.0.0.1:9/hook", "secret": SUBSCRIBER_SECRET}
PROVIDER = "https://graph.stand-in.test"  # answered by a MockTransport: no network
PHONE_NUMBER_ID = "106540352242922"


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[RunningGateway]:
    with in_process(tmp_path) as running:
        yield running


# -- deliver again ----------------------------------------------------------------------------
def _dead_letter_of_a_removed_subscriber(tmp_path: Path) -> str:
    """An event whose delivery to `old-crm` died; `old-crm` is then removed from the config."""
    old = {**SUBSCRIBER, "id": "old-crm", "retry_schedule": ["10ms"]}  # refused at once: dead
    with RunningGateway(make_settings(tmp_path, subscribers=[old])) as first:
        assert first.post("cloud-us", cloud_message("wamid.d1", phone="15551230002")).status_code
        wait_until(
            lambda: bool(
                first.client.get("/v1/deliveries", params={"state": "dead"}).json()["data"]
            ),
            "the delivery to die",
        )
        event_id: str = first.events()[0]["id"]
    return event_id


def test_deliver_again_is_not_offered_for_a_removed_subscriber(tmp_path: Path) -> None:
    event_id = _dead_letter_of_a_removed_subscriber(tmp_path)
    settings = make_settings(tmp_path, subscribers=[SUBSCRIBER])
    with RunningGateway(settings, dispatch=False) as gw, closing(signed_in(gw)) as client:
        page = client.get(f"/console/events/{event_id}").text
    assert "Deliver again to old-crm" not in page
    assert "old-crm is no longer configured" in page


def test_deliver_again_to_a_removed_subscriber_is_refused_as_the_api_refuses_it(
    tmp_path: Path,
) -> None:
    """`POST /v1/replays` answers 422 "no subscriber 'old-crm'"; the console's form (an old tab)
    is refused with that reason and requeues nothing: no lane would ever send the row."""
    event_id = _dead_letter_of_a_removed_subscriber(tmp_path)
    with RunningGateway(make_settings(tmp_path, subscribers=[SUBSCRIBER]), dispatch=False) as gw:
        api = gw.client.post("/v1/replays", json={"event_id": event_id, "subscriber_id": "old-crm"})
        assert api.status_code == 422
        with closing(signed_in(gw)) as client:
            token = csrf_of(client.get(f"/console/events/{event_id}").text)
            answer = client.post(
                f"/console/events/{event_id}/deliver",
                data={"csrf": token, "subscriber_id": "old-crm"},
            )
            audit = client.get("/console/audit").text
        assert answer.status_code == 422, unquote(answer.headers.get("location", ""))
        assert "no subscriber &#39;old-crm&#39;" in answer.text
        assert "<td>deliver_again</td>" not in audit
        dead = gw.client.get("/v1/deliveries", params={"state": "dead"}).json()["data"]
        assert [d["subscriber_id"] for d in dead] == ["old-crm"]  # still dead, not requeued


@pytest.mark.parametrize("form", ["selection", "group"])
def test_console_replays_leave_a_removed_subscribers_dead_letters(
    tmp_path: Path, form: str
) -> None:
    """As `POST /v1/replays` does: a removed subscriber's rows would be requeued for a lane that
    never runs, and counted as requeued (session review)."""
    _dead_letter_of_a_removed_subscriber(tmp_path)
    with RunningGateway(make_settings(tmp_path, subscribers=[SUBSCRIBER]), dispatch=False) as gw:
        (dead,) = gw.client.get("/v1/deliveries", params={"state": "dead"}).json()["data"]
        with closing(signed_in(gw)) as client:
            token = csrf_of(client.get("/console/deliveries").text)
            if form == "selection":
                answer = client.post(
                    "/console/deliveries/replay", data={"csrf": token, "delivery": dead["id"]}
                )
            else:
                answer = client.post(
                    "/console/deliveries/replay-filter",
                    data={
                        "csrf": token,
                        "subscriber_id": "old-crm",
                        "error": dead["last_error"] or "",
                    },
                )
        notice = unquote(answer.headers.get("location", ""))
        assert answer.status_code == 303, answer.text
        assert "0 of 1 dead letter(s) requeued" in notice, notice
        still = gw.client.get("/v1/deliveries", params={"state": "dead"}).json()["data"]
        assert [d["id"] for d in still] == [dead["id"]]


# -- quarantine ---------------------------------------------------------------------------------
def test_the_quarantine_list_is_newest_first_counted_and_pages_back(
    gateway: RunningGateway, client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It listed the 100 oldest and nothing else: the payload that raised the alert, the
    newest, could not be found from the page the overview's count links to."""
    monkeypatch.setattr(deliveries, "QUARANTINE_PAGE", 2)
    for n in range(3):  # a webhook holding only errors[] is quarantined (canonical.md §2)
        body = cloud_change({"errors": [{"code": 131000 + n, "title": f"error {n}"}]})
        assert gateway.post("cloud-us", body).status_code == 200
    raws = gateway.client.get("/v1/quarantined").json()["data"]
    newest_first = [r["id"] for r in sorted(raws, key=lambda r: (r["received_at"], r["id"]))][::-1]
    assert len(newest_first) == 3
    listed = re.compile(r'<td><a href="/console/quarantine/(raw_[0-9A-Z]+)">')
    first = client.get("/console/quarantine").text
    assert listed.findall(first) == newest_first[:2]
    assert "3 payload(s) quarantined" in first
    older = re.search(r'id="older" href="([^"]+)"', first)
    assert older is not None
    second = client.get(older.group(1)).text
    assert listed.findall(second) == newest_first[2:]
    assert 'id="older"' not in second


# -- send -----------------------------------------------------------------------------------------
def _cloud_channel() -> dict[str, Any]:
    return {
        "id": "cloud-us",
        "provider": "cloudapi",
        "portfolio": "acme",
        "business_phone": "+15550001111",
        "service_window": "off",
        "secrets": {"app_secret": "app-secret", "verify_token": "vt", "access_token": "tok"},
        "settings": {"phone_number_id": PHONE_NUMBER_ID, "base_url": PROVIDER},
    }


def test_a_resubmitted_send_form_replays_the_first_send(tmp_path: Path) -> None:
    """A browser's reload of the Send answer posts the same form again: its Idempotency-Key
    makes that a replay of the first answer, and the provider is called once."""
    calls: list[dict[str, Any]] = []

    def provider(request: httpx.Request) -> httpx.Response:
        calls.append(orjson.loads(request.content))
        wamid = f"wamid.STANDIN{len(calls)}"
        return httpx.Response(
            200, json={"messaging_product": "whatsapp", "messages": [{"id": wamid}]}
        )

    settings = make_settings(tmp_path, channels=[_cloud_channel()])
    http = httpx.AsyncClient(transport=httpx.MockTransport(provider))
    send = {"channel": "cloud-us", "to": {"phone": "+15551230077"}, "type": "text",
            "text": {"body": "Your order has shipped."}}  # fmt: skip
    with (
        RunningGateway(settings, dispatch=False, http_client=http) as gw,
        closing(signed_in(gw)) as client,
    ):
        form_page = client.get("/console/send").text
        key = re.search(r'name="idempotency_key" value="([^"]+)"', form_page)
        assert key is not None
        form = {
            "csrf": csrf_of(form_page),
            "idempotency_key": key.group(1),
            "send": orjson.dumps(send).decode(),
            "mode": "send",
        }
        first, again = (client.post("/console/send", data=form) for _ in range(2))
        answer_page = first.text
    sent_ids = [re.findall(r"snd_[0-9A-Z]+", page.text)[:1] for page in (first, again)]
    assert first.status_code == again.status_code == 200
    assert len(calls) == 1  # the reload sent nothing
    assert sent_ids[0]
    assert sent_ids[0] == sent_ids[1]
    assert 'id="replayed"' in again.text
    assert 'id="replayed"' not in answer_page
    next_key = re.search(r'name="idempotency_key" value="([^"]+)"', answer_page)
    assert next_key is not None
    assert next_key.group(1) != key.group(1)  # a deliberate second send: a new key


# -- audit --------------------------------------------------------------------------------------
def test_audit_times_are_utc_with_z(gateway: RunningGateway, client: httpx.Client) -> None:
    """As every time bspgate writes (`bspgate.times.iso`), not `isoformat()`'s `+00:00`."""
    store = gateway._server.server.config.app.state.gateway.store
    stamps = store.read_sync(lambda tx: tx.all("SELECT at FROM console_audit"))
    assert stamps
    for (at,) in stamps:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", at), at
