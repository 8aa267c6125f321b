"""What a send answers once the provider has been called: recorded, unknown, or refused.

A provider message id already recorded on the channel (recorded without a 500, the first
correlation kept, also when two sends race to record it on PostgreSQL), a 2xx answer with no
message id (an unknown outcome, not a rejection), and the timeout detail. Runs on SQLite, and
on PostgreSQL when `BSPGATE_TEST_POSTGRES_URL` is set.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import respx
import structlog

from bspgate.app import create_app
from bspgate.config import settings_from_dict
from tests.asgi_client import TestClient
from tests.conftest import API_KEY, ROOT, storage_url
from tests.test_outbound_api import META_URL, NOW, Gateway, cloud
from tests.test_outbound_providers import (
    PROVIDERS,
    channel_id,
    config_dict,
    stand_in,
    template,
    text,
)

pytestmark = pytest.mark.store
PHONE_1, PHONE_2 = "+15550100001", "+15550100002"


class StoreGateway(Gateway):
    """`Gateway` on the running test's store backend (SQLite, or a PostgreSQL schema)."""

    def __init__(self, tmp_path: Path) -> None:
        config = config_dict(tmp_path)
        for channel in config["channels"]:
            channel["service_window"] = "off"
        config["storage"] = storage_url(tmp_path)
        self.settings = settings_from_dict(config, env={}, base_dir=ROOT, known_mappings=PROVIDERS)
        self.http = httpx.AsyncClient()
        self.app = create_app(
            self.settings, http_client=self.http, clock=lambda: NOW, dispatch=False
        )
        self.client = TestClient(self.app)


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[StoreGateway]:
    gateway = StoreGateway(tmp_path)
    with gateway.client:
        yield gateway


def same_id(router: respx.MockRouter, message_id: str = "wamid.SAME") -> respx.Route:
    answer = {"messaging_product": "whatsapp", "messages": [{"id": message_id}]}
    return router.post(META_URL).mock(return_value=httpx.Response(200, json=answer))


# -- a provider message id the channel has already recorded -------------------------------------
def test_repeated_provider_message_id_still_answers_202(gw: StoreGateway) -> None:
    with respx.mock(assert_all_called=True) as router:
        same_id(router)
        first = gw.post(cloud(text({"phone": PHONE_1})), key="dup-1")
        second = gw.post(cloud(text({"phone": PHONE_2})), key="dup-2")
    assert (first.status_code, second.status_code) == (202, 202), second.json()
    assert second.json()["provider_message_id"] == "wamid.SAME"
    assert second.json()["contact_id"] != first.json()["contact_id"]


def test_repeated_provider_message_id_replays_with_its_key(gw: StoreGateway) -> None:
    with respx.mock(assert_all_called=True) as router:
        route = same_id(router)
        gw.post(cloud(text({"phone": PHONE_1})), key="dup-1")
        second = gw.post(cloud(text({"phone": PHONE_2})), key="dup-2")
        again = gw.post(cloud(text({"phone": PHONE_2})), key="dup-2")
    assert route.call_count == 2  # the retry is answered from the store, not sent again
    assert (again.status_code, again.json()) == (202, second.json())
    assert again.headers["idempotent-replayed"] == "true"


def test_repeated_provider_message_id_keeps_the_first_correlation(gw: StoreGateway) -> None:
    with respx.mock(assert_all_called=True) as router:
        same_id(router)
        first = gw.post(cloud(text({"phone": PHONE_1})))
        second = gw.post(cloud(text({"phone": PHONE_2})))
    owner = gw.transaction(lambda tx: tx.contact_for_send(channel_id("cloudapi"), "wamid.SAME"))
    assert owner == first.json()["contact_id"]
    shown = gw.client.get(
        f"/v1/messages/{second.json()['id']}", headers={"authorization": f"Bearer {API_KEY}"}
    ).json()
    assert (shown["state"], shown["provider_message_id"]) == ("sent", "wamid.SAME")


def test_repeated_provider_message_id_is_logged_without_pii(gw: StoreGateway) -> None:
    with respx.mock(assert_all_called=True) as router, structlog.testing.capture_logs() as logs:
        same_id(router)
        gw.post(cloud(text({"phone": PHONE_1})))
        second = gw.post(cloud(text({"phone": PHONE_2})))
    (warning,) = [e for e in logs if e["event"] == "outbound.provider_message_id_reused"]
    assert warning["log_level"] == "warning"
    assert warning["send_id"] == second.json()["id"]
    assert PHONE_2.lstrip("+") not in repr(warning)


def test_two_sends_racing_on_one_reused_provider_id_both_answer_202(
    gw: StoreGateway, store_backend: str
) -> None:
    # Both sends check the channel's ids before either records: the second record then hits the
    # unique index, and its transaction is run again, now seeing the first send's correlation.
    if store_backend != "postgres":
        pytest.skip("SQLite has one writer: two sends' records never overlap")
    dsn = storage_url(Path("unused"))
    arrived, go = threading.Semaphore(0), threading.Event()

    async def provider(request: httpx.Request) -> httpx.Response:
        arrived.release()
        while not go.is_set():  # both sends are at the provider; answer once sends is locked
            await asyncio.sleep(0.005)
        answer = {"messaging_product": "whatsapp", "messages": [{"id": "wamid.SAME"}]}
        return httpx.Response(200, json=answer)

    answers: dict[str, httpx.Response] = {}

    def send(key: str, phone: str) -> None:
        answers[key] = gw.post(cloud(text({"phone": phone})), key=key)

    with respx.mock(assert_all_called=True) as router, psycopg.connect(dsn) as blocker:
        router.post(META_URL).mock(side_effect=provider)
        threads = [
            threading.Thread(target=send, args=args)
            for args in (("race-1", PHONE_1), ("race-2", PHONE_2))
        ]
        for thread in threads:
            thread.start()
        assert arrived.acquire(timeout=10)
        assert arrived.acquire(timeout=10)
        # reads pass this lock, the records' UPDATE of `sends` waits for it: both sends read
        # "no send holds this id" before either can record
        blocker.execute("LOCK TABLE sends IN SHARE ROW EXCLUSIVE MODE")
        go.set()
        for _ in range(1000):
            waiting = blocker.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).fetchone()
            if waiting is not None and waiting[0] >= 2:
                break
            time.sleep(0.01)
        else:
            pytest.fail("the two records never waited on the lock together")
        blocker.commit()  # release: one records, the other meets the unique index
        for thread in threads:
            thread.join(timeout=30)
    first, second = answers["race-1"], answers["race-2"]
    assert (first.status_code, second.status_code) == (202, 202), (first.json(), second.json())
    assert {first.json()["provider_message_id"], second.json()["provider_message_id"]} == {
        "wamid.SAME"
    }
    assert gw.app.state.gateway.store.conflicts >= 1  # the race happened and was run again
    owner = gw.transaction(lambda tx: tx.contact_for_send(channel_id("cloudapi"), "wamid.SAME"))
    assert owner in {first.json()["contact_id"], second.json()["contact_id"]}


# -- a 2xx answer without a message id ------------------------------------------------------------
@pytest.mark.parametrize(
    ("provider", "status", "answer"),
    [
        ("cloudapi", 200, {"messaging_product": "whatsapp", "messages": []}),
        ("azure_acs", 202, {"receipts": []}),
        ("cloudapi", 200, None),
    ],
    ids=["meta-empty-messages", "azure-empty-receipts", "empty-body"],
)
def test_accepted_without_message_id_is_an_unknown_outcome(
    gw: StoreGateway, provider: str, status: int, answer: Any
) -> None:
    send = {**template({"phone": PHONE_1}), "channel": channel_id(provider)}
    with respx.mock(assert_all_called=True) as router:
        reply = (
            httpx.Response(status, json=answer) if answer is not None else httpx.Response(status)
        )
        route = router.post(url__startswith=stand_in(provider) + "/").mock(return_value=reply)
        response = gw.post(send, key="no-id")
        again = gw.post(send, key="no-id")
    problem = response.json()
    assert (response.status_code, problem["code"]) == (502, "send_outcome_unknown")
    assert problem["outcome"] == "unknown"
    assert problem["provider_status"] == status
    assert "no message id" in problem["detail"]
    assert (again.status_code, again.json()) == (502, problem)  # the key never sends again
    assert route.call_count == 1


# -- the timeout detail ---------------------------------------------------------------------------
def test_timeout_detail_says_the_outcome_once(gw: StoreGateway) -> None:
    with respx.mock(assert_all_called=True) as router:
        router.post(META_URL).mock(side_effect=httpx.ReadTimeout("slow"))
        response = gw.post(cloud(template({"phone": PHONE_1})))
    detail = response.json()["detail"]
    assert response.json()["code"] == "send_outcome_unknown"
    assert detail.count("may or may not have been sent") == 1, detail
    assert "ReadTimeout" in detail


def test_an_unknown_outcome_is_logged_without_the_providers_words(gw: StoreGateway) -> None:
    # a 5xx may quote the request back: the message text, the recipient's number
    quoted = {"error": {"message": f"failed to send 'SECRET TEXT' to {PHONE_1}"}}
    with respx.mock(assert_all_called=True) as router, structlog.testing.capture_logs() as logs:
        router.post(META_URL).mock(return_value=httpx.Response(503, json=quoted))
        response = gw.post(cloud(template({"phone": PHONE_1})))
    assert response.json()["code"] == "send_outcome_unknown"
    (warning,) = [e for e in logs if e["event"] == "outbound.outcome_unknown"]
    assert warning["provider_status"] == 503
    assert "SECRET TEXT" not in repr(warning)
    assert PHONE_1.lstrip("+") not in repr(warning)
