"""No 5xx for a payload's content (issue: Meta's 2026 surface). Each case was reproduced first.

Through the ASGI app over a real SQLite store: Twilio form bodies that cannot be read before the
signature check (invalid UTF-8, more than 1,000 fields) are a 400 problem with one log line; a
value nested ~1,000 levels deep in a mapped field, and a Twilio JSON body nested ~250 levels,
are stored and quarantined (200); an unexpected error while ingesting stores the raw payload as
quarantined in a fresh transaction (200), and only a store that cannot commit at all is 503;
Twilio bodies the signature does not cover are 415.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
import structlog
from structlog.testing import capture_logs

from bspgate.app import create_app
from bspgate.config import Settings
from bspgate.errors import StoreError
from bspgate.ingress.verify import twilio_signature
from bspgate.pipeline import IngestOutcome, ingest_or_quarantine
from bspgate.store.base import RawRecord
from bspgate.store.sqlite import SqliteStore
from tests.asgi_client import TestClient
from tests.conftest import base_config, fixture_json, meta_signature
from tests.test_ingress_providers import CHANNELS, TWILIO_TOKEN

PUBLIC = "https://gw.example.com"
TWILIO_URL = f"{PUBLIC}/webhooks/twilio-us"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    from bspgate.config import settings_from_dict
    from tests.conftest import ROOT

    config = base_config(tmp_path)
    config["channels"] = [*config["channels"], *CHANNELS]
    return settings_from_dict(config, env={}, base_dir=ROOT)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, dispatch=False)) as test_client:
        yield test_client


def raw_state(client: TestClient, raw_id: str) -> RawRecord:
    store = client.app.state.gateway.store
    found: RawRecord | None = client.portal.call(store.read, lambda tx: tx.raw(raw_id))
    assert found is not None
    return found


def raw_count(client: TestClient) -> int:
    store = client.app.state.gateway.store
    count: int = client.portal.call(
        store.read, lambda tx: tx.one("SELECT COUNT(*) FROM raw_payloads", ())[0]
    )
    return count


def twilio_form(body: bytes, signature: str = "forged") -> dict[str, str]:
    return {"content-type": "application/x-www-form-urlencoded", "x-twilio-signature": signature}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"Body=\xff\xfe&From=whatsapp%3A%2B15551234567", id="invalid-utf8"),
        pytest.param("&".join(f"f{i}=x" for i in range(1001)).encode(), id="1001-fields"),
    ],
)
def test_unreadable_twilio_form_is_a_400_problem_with_one_log_line(
    client: TestClient, body: bytes
) -> None:
    with capture_logs() as logs:
        response = client.post("/webhooks/twilio-us", content=body, headers=twilio_form(body))
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "unparseable_body"
    lines = [entry for entry in logs if entry["log_level"] in ("warning", "error")]
    assert [entry["event"] for entry in lines] == ["webhook.unparseable"]
    assert not any("exc_info" in entry or "exception" in entry for entry in logs)
    assert raw_count(client) == 0


def deep_json(depth: int) -> bytes:
    return b'{"a":' * depth + b'"x"' + b"}" * depth


def test_deeply_nested_mapped_value_is_stored_and_quarantined(client: TestClient) -> None:
    payload = fixture_json("cloudapi", "inbound_text")
    payload["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] = "@@DEEP@@"
    # orjson writes at most ~250 levels: the provider's body is built as text
    body = orjson.dumps(payload).replace(b'"@@DEEP@@"', deep_json(1000))
    response = client.post(
        "/webhooks/cloud-us",
        content=body,
        headers={"content-type": "application/json", "x-hub-signature-256": meta_signature(body)},
    )
    assert response.status_code == 200
    raw = raw_state(client, response.headers["bspgate-raw-id"])
    assert raw.state == "quarantined"
    assert "canonical schema" in (raw.reason or "")
    assert raw.body == body


def _twilio_json(payload: Any, deep: bytes = b"") -> tuple[str, bytes, dict[str, str]]:
    body = orjson.dumps(payload)
    if deep:
        body = body.replace(b'"@@DEEP@@"', deep)
    url = f"{TWILIO_URL}?{urlencode({'bodySHA256': hashlib.sha256(body).hexdigest()})}"
    signature = twilio_signature(TWILIO_TOKEN, url, {})
    headers = {"content-type": "application/json", "x-twilio-signature": signature}
    return url.removeprefix(PUBLIC), body, headers


@pytest.mark.parametrize("depth", [250, 600])
def test_twilio_json_body_nested_deeply_is_stored(client: TestClient, depth: int) -> None:
    # ~250 levels failed in orjson.dumps (500) before; now the field is kept as parsed: 250
    # levels still fit in a form field's JSON text, 600 do not and the mapping quarantines it
    fields = fixture_json("twilio", "inbound_text")
    fields["Body"] = "@@DEEP@@"
    path, body, headers = _twilio_json(fields, deep_json(depth))
    response = client.post(path, content=body, headers=headers)
    assert response.status_code == 200
    raw = raw_state(client, response.headers["bspgate-raw-id"])
    assert raw.body == body
    assert raw.state == ("processed" if depth == 250 else "quarantined")


def test_twilio_json_body_with_body_sha256_is_ingested(client: TestClient) -> None:
    path, body, headers = _twilio_json(fixture_json("twilio", "inbound_text"))
    response = client.post(path, content=body, headers=headers)
    assert response.status_code == 200
    assert raw_state(client, response.headers["bspgate-raw-id"]).state == "processed"


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", ""])
def test_twilio_body_the_signature_does_not_cover_is_415(
    client: TestClient, content_type: str
) -> None:
    # signed over the URL alone (no form fields, no bodySHA256): any body would verify
    body = orjson.dumps(fixture_json("twilio", "inbound_text"))
    headers = {"x-twilio-signature": twilio_signature(TWILIO_TOKEN, TWILIO_URL, {})}
    if content_type:
        headers["content-type"] = content_type
    response = client.post("/webhooks/twilio-us", content=body, headers=headers)
    assert response.status_code == 415
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "unsupported_media_type"
    assert raw_count(client) == 0


def test_forged_twilio_json_is_401_before_415(client: TestClient) -> None:
    body = orjson.dumps(fixture_json("twilio", "inbound_text"))
    headers = {"content-type": "application/json", "x-twilio-signature": "AAAA"}
    assert client.post("/webhooks/twilio-us", content=body, headers=headers).status_code == 401


# -- the last-resort path ------------------------------------------------------------------------
def _raw(body: bytes = b'{"name": "A\\u0000B"}') -> RawRecord:
    return RawRecord(
        id="raw_01J0000000000000000000000A",
        channel_id="cloud-us",
        provider="cloudapi",
        received_at="2026-01-01T00:00:00Z",
        content_type="application/json",
        body=body,
    )


class _DatabaseRefusal(Exception):
    """Stands in for a driver error the database raises for one payload (psycopg.DataError)."""


@pytest.mark.anyio
async def test_unexpected_ingest_error_quarantines_the_raw_payload(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    try:

        def work(tx: Any) -> IngestOutcome:
            tx.insert_raw(_raw())  # rolled back with the failing transaction
            raise _DatabaseRefusal("invalid byte sequence for encoding UTF8: 0x00 at +15551234567")

        with capture_logs() as logs:
            outcome = await ingest_or_quarantine(store, work, _raw())
        assert outcome.state == "quarantined"
        stored = await store.read(lambda tx: tx.raw(outcome.raw_id))
        assert stored is not None
        assert stored.state == "quarantined"
        assert stored.body == _raw().body
        assert "_DatabaseRefusal" in (stored.reason or "")
        assert "15551234567" not in (stored.reason or "")  # digit runs masked (PII)
        assert [e["event"] for e in logs] == ["ingest.failed_quarantined"]
    finally:
        await store.close()


@pytest.mark.anyio
async def test_store_that_cannot_commit_at_all_raises_store_error(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")  # never opened: nothing can commit

    def work(tx: Any) -> IngestOutcome:
        raise AssertionError("not reached")

    with pytest.raises(StoreError):
        await ingest_or_quarantine(store, work, _raw())


def test_store_unavailable_is_503_and_stores_nothing(client: TestClient) -> None:
    gateway = client.app.state.gateway
    client.portal.call(gateway.store.close)
    try:
        body = orjson.dumps(fixture_json("cloudapi", "inbound_text"))
        response = client.post(
            "/webhooks/cloud-us",
            content=body,
            headers={
                "content-type": "application/json",
                "x-hub-signature-256": meta_signature(body),
            },
        )
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
    finally:
        client.portal.call(gateway.store.open)


@pytest.fixture
def plain_tracebacks() -> Iterator[None]:
    """structlog's default renderer draws a failed batch's traceback with every local (rich):
    seconds of CPU for the processor's objects. `serve` formats tracebacks as plain text."""
    structlog.configure(
        processors=[
            structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
        ]
    )
    yield
    structlog.reset_defaults()


@pytest.mark.store
@pytest.mark.usefixtures("plain_tracebacks")
def test_nul_in_a_profile_name_is_answered_200_and_stored(
    client: TestClient, store_backend: str
) -> None:
    # PostgreSQL text refuses U+0000 (psycopg.DataError): the last resort quarantines the raw
    # payload; SQLite stores the name as given
    payload = fixture_json("cloudapi", "inbound_text")
    payload["entry"][0]["changes"][0]["value"]["contacts"][0]["profile"]["name"] = "Ann\u0000"
    body = orjson.dumps(payload)
    response = client.post(
        "/webhooks/cloud-us",
        content=body,
        headers={"content-type": "application/json", "x-hub-signature-256": meta_signature(body)},
    )
    assert response.status_code == 200
    raw = raw_state(client, response.headers["bspgate-raw-id"])
    assert raw.body == body
    if store_backend == "postgres":
        assert raw.state == "quarantined"
        assert "DataError" in (raw.reason or "")
    else:
        assert raw.state == "processed"
