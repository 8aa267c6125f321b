"""A failed attempt's error never answers the subscriber URL's credentials: an HTTP client's
error text quotes the request URL (`?token=…`), and it is stored as the attempt's error and the
delivery's `last_error`, answered by `GET /v1/deliveries[/{id}]` and told in
`bspgate.delivery.dead_lettered`; the URL in it is masked as `GET /v1/subscribers` masks it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bspgate.app import create_app
from tests.asgi_client import TestClient
from tests.conftest import API_KEY, SUBSCRIBER_SECRET, make_settings
from tests.payloads import signed, text_webhook

AUTH = {"authorization": f"Bearer {API_KEY}"}
TOKEN = "tok-SECRET-0123456789"
PASSWORD = "pw-SECRET-9876543210"


@pytest.fixture
def garbage_receiver() -> Iterator[int]:
    """A receiver answering a response no HTTP client can parse."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n")
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    server.close()


def _wait_for_attempt(client: TestClient) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        rows = client.get("/v1/deliveries", headers=AUTH).json()["data"]
        if rows and rows[0]["attempts"] >= 1:
            row: dict[str, Any] = rows[0]
            return row
        time.sleep(0.1)
    raise AssertionError("no delivery attempt was recorded")


def test_delivery_errors_do_not_reveal_the_subscriber_url_credentials(
    tmp_path: Path, garbage_receiver: int
) -> None:
    url = f"http://crm:{PASSWORD}@127.0.0.1:{garbage_receiver}/hook?token={TOKEN}"
    subscriber = {
        "id": "crm",
        "url": url,
        "secret": SUBSCRIBER_SECRET,
        "retry_schedule": ["1h"],
    }
    settings = make_settings(tmp_path, subscribers=[subscriber])
    # the production poster (aiohttp): no injected client
    with TestClient(create_app(settings, dispatch=True)) as client:
        body, headers = signed(text_webhook("wamid.SECRET1"))
        assert client.post("/webhooks/cloud-us", content=body, headers=headers).status_code == 200
        row = _wait_for_attempt(client)
        listed = client.get("/v1/deliveries", headers=AUTH).text
        one = client.get(f"/v1/deliveries/{row['id']}", headers=AUTH).text
        shown = client.get("/v1/subscribers", headers=AUTH).text
    assert row["last_error"], row  # the attempt failed, with a reason
    assert TOKEN not in shown
    assert PASSWORD not in shown
    for answer in (listed, one):  # ... the deliveries API must too
        assert TOKEN not in answer, answer
        assert PASSWORD not in answer, answer
