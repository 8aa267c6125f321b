"""PostgreSQL: events commit in `seq` order; a follower of `GET /v1/events?after=` skips none.

An event's `seq` (the stream's cursor) comes from a sequence at insert time, and several
transactions insert events: processing, each replica's delivery recorder (`bspgate.*` events),
an operator's merge. Had a higher `seq` committed while a lower one was still open, a follower
reading in between would get a `tail_cursor` past the lower one and never see it. Every
transaction inserting events holds one lock from its first insert to its commit
(`SqlBase.order_events`): the later insert waits for the earlier commit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from bspgate.app import create_app
from bspgate.store.sql import SqlTx
from tests.asgi_client import TestClient
from tests.conftest import API_KEY, make_settings, storage_url
from tests.payloads import signed, text_webhook

pytestmark = pytest.mark.store

AUTH = {"authorization": f"Bearer {API_KEY}"}
OPS: dict[str, Any] = {
    "specversion": "1.0",
    "id": "ops_01TESTTESTTESTTESTTESTTEST",
    "source": "/bspgate",
    "type": "bspgate.subscriber.disabled",
    "subject": "crm",
    "time": "2026-01-01T00:00:00Z",
    "datacontenttype": "application/json",
    "data": {"subscriber": "crm", "reason": "x", "disabled_at": "2026-01-01T00:00:00Z"},
}


@pytest.fixture
def client(tmp_path: Path, store_backend: str) -> Iterator[TestClient]:
    if store_backend != "postgres":
        pytest.skip("SQLite has one writer at a time: seq order is commit order")
    with TestClient(create_app(make_settings(tmp_path), dispatch=False)) as client:
        yield client


def _post(client: TestClient, message_id: str) -> None:
    body, headers = signed(text_webhook(message_id))
    assert client.post("/webhooks/cloud-us", content=body, headers=headers).status_code == 200


def _page(client: TestClient, after: str | None = None) -> dict[str, Any]:
    params = {"after": after} if after else {}
    answer = client.get("/v1/events", params=params, headers=AUTH)
    assert answer.status_code == 200, answer.text
    page: dict[str, Any] = answer.json()
    return page


def test_a_follower_sees_an_event_whose_transaction_was_open_when_a_later_one_was_processed(
    client: TestClient, tmp_path: Path
) -> None:
    _post(client, "wamid.FIRST")
    first = _page(client)
    cursor, seen = first["tail_cursor"], [e["id"] for e in first["data"]]
    inserted = threading.Event()

    def recorder() -> None:
        # a delivery recorder's transaction: inserts a `bspgate.*` event, commits a moment later
        with psycopg.connect(storage_url(tmp_path)) as conn:
            SqlTx(conn, "format").insert_operational_event(
                OPS, orjson.dumps(OPS).decode(), "2026-01-01T00:00:00Z"
            )
            inserted.set()
            time.sleep(0.5)
            conn.commit()

    thread = threading.Thread(target=recorder)
    thread.start()
    assert inserted.wait(10)
    _post(client, "wamid.SECOND")  # processed meanwhile: it waits for the open one to commit
    page = _page(client, cursor)
    seen += [e["id"] for e in page["data"]]
    thread.join(10)
    for _ in range(2):  # the follower continues from tail_cursor, as documented
        page = _page(client, page["tail_cursor"])
        seen += [e["id"] for e in page["data"]]
    stored = [e["id"] for e in _page(client)["data"]]
    assert OPS["id"] in stored
    assert sorted(seen) == sorted(stored), f"never followed: {sorted(set(stored) - set(seen))}"
