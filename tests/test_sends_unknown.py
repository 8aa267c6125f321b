"""Sends never double, through a real gateway (uvicorn) and provider stand-ins on loopback.

A stand-in that never answers in time, and one that reads the request and drops the connection:
both outcomes are ambiguous (the message may have gone), stored as `unknown`, and answered so to
every retry with the same Idempotency-Key, without a second provider call; a new key sends. A key
left pending by a process that died mid-call is settled `unknown` after the lease.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bspgate.app import create_app
from bspgate.outbound.service import PENDING_LEASE, SendService, validate_send
from tests.conftest import API_KEY, make_settings
from tests.harness import ServerThread, free_port

PNID = "106540352242922"
AUTH = {"authorization": f"Bearer {API_KEY}"}
SEND: dict[str, Any] = {
    "channel": "cloud-us",
    "to": {"phone": "+15551234567"},
    "type": "template",
    "template": {
        "name": "order_update",
        "language": "en_US",
        "category": "utility",
        "parameters": ["Sheena", "#1234"],
    },
}


class Provider:
    """A Cloud API stand-in: `mode` is "slow" (never answers in time), "drop" or "ok"."""

    def __init__(self) -> None:
        self.mode = "slow"
        self.calls = 0
        self.release = threading.Event()
        self.app = Starlette(
            routes=[Route("/{v}/{pnid}/messages", self.messages, methods=["POST"])]
        )

    async def messages(self, request: Request) -> Response:
        await request.body()
        self.calls += 1
        if self.mode == "slow":
            while not self.release.is_set():
                await asyncio.sleep(0.02)
        return JSONResponse({"messaging_product": "whatsapp", "messages": [{"id": "wamid.OK"}]})


class Dropper:
    """A TCP server that reads one HTTP request, then closes the connection without answering."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.calls = 0
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.calls += 1  # the request was written; the answer never comes


def gateway_for(tmp_path: Path, base_url: str) -> tuple[ServerThread, Any]:
    port = free_port()
    settings = make_settings(
        tmp_path,
        storage=f"sqlite:///{tmp_path / 'sends.db'}",
        server={"public_url": f"http://127.0.0.1:{port}"},
        channels=[
            {
                "id": "cloud-us",
                "provider": "cloudapi",
                "portfolio": "acme",
                "business_phone": "+15550001111",
                "secrets": {"app_secret": "s", "verify_token": "vt", "access_token": "token"},
                "settings": {"phone_number_id": PNID, "base_url": base_url},
            }
        ],
    )
    app = create_app(settings, dispatch=False)
    gateway = app.state.gateway
    # the provider timeout, shortened so the stand-in's silence is a timeout within the test
    app.state.send_service = SendService(
        settings, store=gateway.store, client=gateway.client, clock=gateway.clock,
        provider_timeout=0.5,
    )  # fmt: skip
    return ServerThread(app, port), gateway


def post(client: httpx.Client, key: str) -> httpx.Response:
    return client.post("/v1/messages", json=SEND, headers={**AUTH, "idempotency-key": key})


@pytest.fixture
def provider() -> Iterator[Provider]:
    standin = Provider()
    with ServerThread(standin.app) as server:
        standin.url = server.url  # type: ignore[attr-defined]
        yield standin
        standin.release.set()


def test_a_provider_timeout_is_unknown_for_every_retry_with_the_key(
    tmp_path: Path, provider: Provider
) -> None:
    server, _ = gateway_for(tmp_path, provider.url)  # type: ignore[attr-defined]
    with server, httpx.Client(base_url=server.url, timeout=30) as client:
        first = post(client, "order-1")
        assert first.status_code == 502
        assert first.json()["code"] == "send_outcome_unknown"
        assert first.json()["outcome"] == "unknown"
        provider.mode = "ok"
        again = post(client, "order-1")
        assert (again.status_code, again.json()) == (502, first.json())
        assert provider.calls == 1  # the retry never reached the provider
        looked = client.get(f"/v1/messages/{first.json()['send_id']}", headers=AUTH).json()
        assert looked["state"] == "unknown"
        fresh = post(client, "order-2")  # a new key: the caller decided to send again
        assert fresh.status_code == 202
        assert provider.calls == 2


def test_a_connection_lost_after_the_request_is_unknown(tmp_path: Path) -> None:
    dropper = Dropper()
    server, _ = gateway_for(tmp_path, dropper.url)
    with server, httpx.Client(base_url=server.url, timeout=30) as client:
        first = post(client, "order-1")
        assert first.status_code == 502
        assert first.json()["code"] == "send_outcome_unknown"
        calls = dropper.calls
        again = post(client, "order-1")
        assert (again.status_code, again.json()["code"]) == (502, "send_outcome_unknown")
        assert dropper.calls == calls == 1
    dropper.sock.close()


def test_a_pending_key_of_a_dead_process_is_settled_after_the_lease(
    tmp_path: Path, provider: Provider
) -> None:
    provider.mode = "ok"
    server, _ = gateway_for(tmp_path, provider.url)  # type: ignore[attr-defined]
    with server, httpx.Client(base_url=server.url, timeout=30) as client:
        # what a process killed mid-call leaves: the key reserved, still pending, long ago
        started = datetime.now(UTC) - PENDING_LEASE - timedelta(seconds=5)
        stamp = started.isoformat().replace("+00:00", "Z")
        fingerprint = orjson.dumps(validate_send(SEND), option=orjson.OPT_SORT_KEYS).decode()
        with sqlite3.connect(tmp_path / "sends.db") as db:
            db.execute(
                "INSERT INTO sends (id, channel_id, idempotency_key, created_at, request, "
                "answer, provider, state, updated_at) "
                "VALUES ('snd_dead', 'cloud-us', 'order-1', ?, ?, '', 'cloudapi', 'pending', ?)",
                (stamp, fingerprint, stamp),
            )
        answer = post(client, "order-1")
        assert answer.status_code == 502
        assert answer.json()["code"] == "send_outcome_unknown"
        assert "stopped while the provider call was running" in answer.json()["detail"]
        assert provider.calls == 0  # settled, not sent (it may have gone before the crash)
        assert post(client, "order-1").json() == answer.json()
