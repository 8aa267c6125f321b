"""`POST /v1/contacts/{id}/merge` with a NUL in `from` is a client error on both stores (a 500 on
PostgreSQL, which refuses NUL in a text parameter, before)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bspgate.app import create_app
from tests.asgi_client import TestClient
from tests.conftest import API_KEY, make_settings
from tests.payloads import signed, text_webhook

pytestmark = pytest.mark.store

AUTH = {"authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(make_settings(tmp_path), dispatch=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize("target", ["existing", "ct_unknown"])
def test_merge_from_with_a_nul_is_a_client_error(client: TestClient, target: str) -> None:
    if target == "existing":
        body, headers = signed(text_webhook("wamid.M1"))
        assert client.post("/webhooks/cloud-us", content=body, headers=headers).status_code == 200
        target = client.get(
            "/v1/contacts", params={"bsuid": "US.13491208655302741918"}, headers=AUTH
        ).json()["data"][0]["id"]
    answer = client.post(
        f"/v1/contacts/{target}/merge",
        content=b'{"from": "ct_\\u0000x"}',
        headers={**AUTH, "content-type": "application/json"},
    )
    assert answer.status_code in (400, 404), answer.text
    assert answer.headers["content-type"] == "application/problem+json"
