"""Erasure through a real server: exactly one person's data goes, everywhere; others replay.

Alice has a rich history (legacy phone, BSUID, username, a number change, texts, a send) and
shares batched webhooks with Bob. After `DELETE /v1/contacts/{alice}` the whole database is
dumped (`sqlite3` iterdump, `pg_dump`) and searched for her BSUIDs, phones, username, name and
texts: 0 hits. Bob's items of the shared payloads still map to his events; the subscriber that
received Alice's events gets `whatsapp.contact.erased`.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bspgate.mapping.engine import apply_mapping
from bspgate.mapping.loader import load_mapping
from bspgate.schema.validate import EventValidator
from tests.conftest import MAPPINGS, SUBSCRIBER_SECRET, make_settings
from tests.harness import RunningGateway, ServerThread
from tests.identity.payloads import TS, cloud_change, cloud_user_changed_number

pytestmark = [pytest.mark.e2e, pytest.mark.store]

ALICE = {
    "bsuids": ["US.71000000000000000001", "US.71000000000000000002"],
    "phones": ["15557100001", "15557100002"],
    "username": "@alice_wonder",
    "name": "Alice Liddell",
    "texts": ["alice secret one", "alice secret two", "alice secret three"],
}
BOB = {"bsuid": "US.82000000000000000001", "phone": "15558200001", "name": "Bob Builder"}


class Sink:
    """A subscriber: verifies signatures, keeps every event it was delivered."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._webhook = Webhook(SUBSCRIBER_SECRET)
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        event = self._webhook.verify(await request.body(), dict(request.headers))
        with self._lock:
            self.events.append(event)
        return Response(status_code=204)

    def wait_for(self, count: int) -> list[dict[str, Any]]:
        for _ in range(400):  # bounded wait for the dispatcher, not a timing assertion
            with self._lock:
                if len(self.events) >= count:
                    return list(self.events)
            time.sleep(0.05)
        return list(self.events)


def _message(
    msg_id: str,
    step: int,
    *,
    bsuid: str | None,
    phone: str | None,
    text: str,
    name: str,
    username: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    message: dict[str, Any] = {
        "id": msg_id,
        "timestamp": str(TS + step),
        "type": "text",
        "text": {"body": text},
    }
    profile: dict[str, Any] = {"name": name}
    if username:
        profile["username"] = username
    contact: dict[str, Any] = {"profile": profile}
    if phone:
        message["from"] = contact["wa_id"] = phone
    if bsuid:
        message["from_user_id"] = contact["user_id"] = bsuid
    return contact, message


def _batch(*items: tuple[dict[str, Any], dict[str, Any]]) -> bytes:
    return cloud_change({"contacts": [c for c, _ in items], "messages": [m for _, m in items]})


def _bob(msg_id: str, step: int) -> tuple[dict[str, Any], dict[str, Any]]:
    return _message(
        msg_id,
        step,
        bsuid=BOB["bsuid"],
        phone=BOB["phone"],
        text=f"bob says {msg_id}",
        name=BOB["name"],
    )


def _dump(gateway: RunningGateway, tmp_path: Path) -> str:
    storage = gateway.settings.storage
    if storage.startswith("sqlite"):
        conn = sqlite3.connect(storage.removeprefix("sqlite:///"))
        try:
            return "\n".join(conn.iterdump())
        finally:
            conn.close()
    parts = urlsplit(storage)
    schema = dict(parse_qsl(parts.query))["options"].split("=", 1)[1]
    plain = parts._replace(query="").geturl()
    dumped = subprocess.run(
        ["pg_dump", "--data-only", "--inserts", "-n", schema, plain],
        capture_output=True,
        check=True,
        text=True,
    )
    return dumped.stdout


def _raw_body(gateway: RunningGateway, raw_id: str) -> bytes:
    storage = gateway.settings.storage
    query = "SELECT body FROM raw_payloads WHERE id = "
    if storage.startswith("sqlite"):
        conn = sqlite3.connect(storage.removeprefix("sqlite:///"))
        try:
            return bytes(conn.execute(query + "?", (raw_id,)).fetchone()[0])
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(storage) as pg_conn:
        row = pg_conn.execute(query + "%s", (raw_id,)).fetchone()
        assert row is not None
        return bytes(row[0])


@pytest.fixture
def sink() -> Iterator[tuple[Sink, str]]:
    receiving = Sink()
    with ServerThread(receiving.app) as server:
        yield receiving, f"{server.url}/hook"


def test_erasure_leaves_no_trace_of_the_person_and_keeps_others_replayable(
    tmp_path: Path, sink: tuple[Sink, str]
) -> None:
    receiver, url = sink
    subscriber = {"id": "crm", "url": url, "secret": SUBSCRIBER_SECRET, "retry_schedule": ["1s"]}
    settings = make_settings(tmp_path, subscribers=[subscriber])
    b1, b2 = ALICE["bsuids"]
    p1, p2 = ALICE["phones"]
    texts = ALICE["texts"]
    with RunningGateway(settings) as gateway:
        steps = [
            # legacy: Alice by phone only, batched with Bob
            _batch(
                _message("wamid.a1", 1, bsuid=None, phone=p1, text=texts[0], name=ALICE["name"]),
                _bob("wamid.b1", 1),
            ),
            # Alice by BSUID, username and phone, batched with Bob
            _batch(
                _bob("wamid.b2", 2),
                _message(
                    "wamid.a2",
                    2,
                    bsuid=b1,
                    phone=p1,
                    text=texts[1],
                    name=ALICE["name"],
                    username=ALICE["username"],
                ),
            ),
            cloud_user_changed_number("wamid.a3", b1, b2, p1, p2, step=3),
            _batch(
                _message("wamid.a4", 4, bsuid=b2, phone=None, text=texts[2], name=ALICE["name"])
            ),
        ]
        for body in steps:
            assert gateway.post("cloud-us", body).status_code == 200
        events = gateway.events()
        alice_ids = {e["subject"] for e in events if e["data"]["contact"]["bsuid"] in (b1, b2)}
        assert len(alice_ids) == 1
        alice = alice_ids.pop()
        delivered = receiver.wait_for(len(events))
        assert len(delivered) == len(events)

        erased = gateway.client.delete(f"/v1/contacts/{alice}")
        assert erased.status_code == 200, erased.text
        summary = erased.json()["erased"]
        assert summary["raw_payloads_trimmed"] == 2  # the two batches shared with Bob
        assert summary["notified"] == 1
        final = receiver.wait_for(len(events) + 1)[-1]
        assert final["type"] == "whatsapp.contact.erased"
        assert final["data"]["contact"] == {
            "id": alice,
            **dict.fromkeys(("bsuid", "parent_bsuid", "phone", "username", "name")),
        }
        validator = EventValidator()
        for event in gateway.events():  # every kept event stays valid against the contract
            validator.validate(event)

        dump = _dump(gateway, tmp_path)
        secrets = [b1, b2, p1, p2, ALICE["username"], ALICE["name"], *texts]
        assert [s for s in secrets if s in dump] == []
        assert BOB["bsuid"] in dump
        assert "bob says wamid.b1" in dump

        # Bob's items of the shared payloads still map to his events
        spec = load_mapping(MAPPINGS, "cloudapi")
        channel = gateway.settings.channel("cloud-us")
        assert channel is not None
        bob_ids = {e["data"]["message"]["id"] for e in events if e["subject"] != alice}
        raw_ids = {e["data"]["raw_id"] for e in events if e["subject"] != alice}
        replayed: set[str] = set()
        for raw_id in raw_ids:
            body = _raw_body(gateway, raw_id)
            mapped = apply_mapping(spec, json.loads(body), channel.as_scope(), received_at="x")
            replayed |= {d.data["message"]["id"] for d in mapped.drafts}
        assert replayed == bob_ids == {"wamid.b1", "wamid.b2"}
