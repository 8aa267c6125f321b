"""End to end on loopback: a real uvicorn gateway delivering to a real receiver that verifies.

The receiver is a second Starlette app under uvicorn that checks every delivery with the
`standardwebhooks` package (the library a downstream app would use) and parses it with the
CloudEvents SDK. Servers run in threads (and once as the `bspgate serve` console command in a
subprocess); every wait is a bounded poll with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
import yaml
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bspgate import cli
from bspgate.app import create_app
from bspgate.config import Settings
from bspgate.mapping.loader import load_mapping
from bspgate.normalize import Normalizer
from bspgate.simulate import signed_request
from tests.conftest import (
    API_KEY,
    APP_SECRET,
    FIXTURES,
    MAPPINGS,
    ROOT,
    SUBSCRIBER_SECRET,
    make_settings,
    storage_url,
)

pytestmark = [pytest.mark.e2e, pytest.mark.store]  # store: runs on SQLite and PostgreSQL
DEADLINE = 10.0


def wait_for(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def webhook_fixtures() -> list[Path]:
    """Every Cloud API fixture that is a webhook (not a send request or answer)."""
    return [
        path
        for path in sorted((FIXTURES / "cloudapi").glob("*.json"))
        if orjson.loads(path.read_bytes()).get("object") == "whatsapp_business_account"
    ]


def expected_event_ids(settings: Settings, paths: list[Path]) -> set[str]:
    """The distinct event ids `bspgate normalize` gives for these payloads on cloud-us.

    Fixtures share message ids (one wamid, several shapes), so they are fewer than the files.
    """
    channel = settings.channel("cloud-us")
    assert channel is not None
    normalizer = Normalizer(load_mapping(settings.mappings_dir, "cloudapi"), channel)
    ids: set[str] = set()
    for path in paths:
        outcome = normalizer.normalize_body(path.read_bytes())
        assert outcome.state in ("processed", "duplicate"), (path.name, outcome.issues)
        ids.update(event["id"] for event in outcome.events)
    return ids


# -- the receiver ------------------------------------------------------------------------------
@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    status: int
    verified: bool

    @property
    def event(self) -> dict[str, Any]:
        value: dict[str, Any] = orjson.loads(self.body)
        return value


@dataclass
class Receiver:
    """Verifies each delivery; answers from `script` (then 200); 401 when verification fails."""

    secret: str
    script: list[int] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        headers = dict(request.headers)
        try:
            Webhook(self.secret).verify(body, headers)
            from_http_event(HTTPMessage(headers, body))  # conformance: the SDK must parse it
            verified = True
        except WebhookVerificationError:
            verified = False
        with self.lock:
            status = (self.script.pop(0) if self.script else 200) if verified else 401
            self.deliveries.append(Delivery(headers, body, status, verified))
        return Response(status_code=status)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    def accepted(self) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.verified and d.status == 200]

    def all(self) -> list[Delivery]:
        with self.lock:
            return list(self.deliveries)


# -- servers in threads ------------------------------------------------------------------------
def loopback_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def free_port() -> int:
    with loopback_socket() as sock:
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def serve(app: Any, sock: socket.socket) -> Iterator[str]:
    """Run `app` under uvicorn on `sock` in a thread; yields its base URL; stops it after."""
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, "uvicorn to start")
        host, port = sock.getsockname()
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=DEADLINE)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


@dataclass
class Stack:
    settings: Settings
    app: Starlette
    gateway_url: str
    receiver: Receiver

    def post(self, body: bytes) -> httpx.Response:
        channel = self.settings.channel("cloud-us")
        assert channel is not None
        url, headers, signed_body = signed_request(self.settings, channel, body)
        assert url.startswith(self.gateway_url)
        return httpx.post(url, content=signed_body, headers=headers, timeout=DEADLINE)

    def stored_event_ids(self) -> list[str]:
        response = httpx.get(
            f"{self.gateway_url}/v1/events",
            params={"limit": 500},
            headers={"authorization": f"Bearer {API_KEY}"},
            timeout=DEADLINE,
        )
        assert response.status_code == 200
        return [event["id"] for event in response.json()["data"]]

    def delivery_rows(self) -> list[dict[str, Any]]:
        store = self.app.state.gateway.store
        rows: list[dict[str, Any]] = store.read_sync(
            lambda tx: [
                {**row, "attempts_made": tx.attempts(row["id"])}
                for row in tx.deliveries(state=None, subscriber_id=None, event_id=None, limit=500)
            ]
        )
        return rows


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    receiver = Receiver(SUBSCRIBER_SECRET)
    receiver_sock, gateway_sock = loopback_socket(), loopback_socket()
    with serve(receiver.app(), receiver_sock) as receiver_url:
        host, port = gateway_sock.getsockname()
        settings = make_settings(
            tmp_path,
            server={"host": host, "port": port, "public_url": f"http://{host}:{port}"},
            subscribers=[
                {
                    "id": "crm",
                    "url": f"{receiver_url}/hook",
                    "secret": SUBSCRIBER_SECRET,
                    "retry_schedule": ["1s", "1s"],
                    "timeout": "5s",
                }
            ],
        )
        app = create_app(settings)
        with serve(app, gateway_sock) as gateway_url:
            yield Stack(settings, app, gateway_url, receiver)


def test_gateway_delivers_every_fixture_verified_to_a_real_receiver(stack: Stack) -> None:
    fixtures = webhook_fixtures()
    assert len(fixtures) >= 5
    for path in fixtures:
        response = stack.post(path.read_bytes())
        assert response.status_code == 200, (path.name, response.text)
    stored = stack.stored_event_ids()
    assert sorted(stored) == sorted(expected_event_ids(stack.settings, fixtures))
    wait_for(
        lambda: len(stack.receiver.accepted()) >= len(stored), f"{len(stored)} verified deliveries"
    )
    received = [d.headers["webhook-id"] for d in stack.receiver.accepted()]
    assert sorted(received) == sorted(stored)
    assert all(d.verified for d in stack.receiver.all())
    assert {d.headers["content-type"] for d in stack.receiver.all()} == {
        "application/cloudevents+json"
    }


def test_received_event_matches_the_stored_event(stack: Stack) -> None:
    body = (FIXTURES / "cloudapi" / "inbound_text.json").read_bytes()
    assert stack.post(body).status_code == 200
    wait_for(lambda: len(stack.receiver.accepted()) == 1, "one verified delivery")
    (delivery,) = stack.receiver.accepted()
    event = delivery.event
    assert event["type"] == "whatsapp.message.received"
    assert event["data"]["message"]["text"] == "Does it come in another color?"
    assert event["data"]["contact"]["bsuid"] == "US.13491208655302741918"
    assert stack.stored_event_ids() == [event["id"]]


def test_receiver_500_then_200_is_retried_then_delivered(stack: Stack) -> None:
    stack.receiver.script[:] = [500]
    body = (FIXTURES / "cloudapi" / "inbound_text.json").read_bytes()
    assert stack.post(body).status_code == 200
    wait_for(lambda: len(stack.receiver.accepted()) == 1, "the retried delivery")
    first, second = stack.receiver.all()
    assert (first.status, second.status) == (500, 200)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.body == second.body
    wait_for(lambda: stack.delivery_rows()[0]["state"] == "delivered", "the delivered state")
    (row,) = stack.delivery_rows()
    assert row["attempts"] == 2
    assert [a["status"] for a in row["attempts_made"]] == [500, 200]


def test_retried_webhook_is_delivered_once(stack: Stack) -> None:
    body = (FIXTURES / "cloudapi" / "inbound_text.json").read_bytes()
    assert stack.post(body).status_code == 200
    assert stack.post(body).status_code == 200
    wait_for(lambda: len(stack.receiver.accepted()) == 1, "one verified delivery")
    wait_for(lambda: stack.delivery_rows()[0]["state"] == "delivered", "the delivered state")
    assert len(stack.delivery_rows()) == 1
    assert len(stack.receiver.all()) == 1


# -- the console script ------------------------------------------------------------------------
def test_bspgate_serve_and_simulate_deliver_to_a_real_receiver(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    receiver = Receiver(SUBSCRIBER_SECRET)
    port = free_port()
    with serve(receiver.app(), loopback_socket()) as receiver_url:
        config = tmp_path / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "storage": storage_url(tmp_path, "gateway.db"),
                    "mappings": str(MAPPINGS),
                    "server": {
                        "host": "127.0.0.1",
                        "port": port,
                        "public_url": f"http://127.0.0.1:{port}",
                    },
                    "api_keys": [{"name": "test", "key": "${E2E_API_KEY}"}],
                    "channels": [
                        {
                            "id": "cloud-us",
                            "provider": "cloudapi",
                            "portfolio": "acme",
                            "secrets": {"app_secret": "${E2E_APP_SECRET}", "verify_token": "vt"},
                        }
                    ],
                    "subscribers": [
                        {
                            "id": "crm",
                            "url": f"{receiver_url}/hook",
                            "secret": SUBSCRIBER_SECRET,
                            # a filter travels to the delivery worker process too
                            "filter": {"data.contact.bsuid": {"exists": True}},
                        },
                        {
                            "id": "status-only",
                            "url": f"{receiver_url}/hook",
                            "secret": SUBSCRIBER_SECRET,
                            "filter": {"type": {"eq": "whatsapp.message.status"}},
                        },
                    ],
                }
            )
        )
        env = {**os.environ, "E2E_API_KEY": API_KEY, "E2E_APP_SECRET": APP_SECRET}
        process = subprocess.Popen(
            [sys.executable, "-m", "bspgate", "serve", "--config", str(config)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:

            def healthy() -> bool:
                assert process.poll() is None, "bspgate serve exited"
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(healthy, "bspgate serve to answer /healthz")
            fixture = FIXTURES / "cloudapi" / "inbound_bsuid_only.json"
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("E2E_API_KEY", API_KEY)
                patch.setenv("E2E_APP_SECRET", APP_SECRET)
                code = cli.main(["simulate", "cloud-us", str(fixture), "--config", str(config)])
            answer = orjson.loads(capsys.readouterr().out)
            assert code == 0, answer
            assert answer["status"] == 200
            assert answer["raw_id"].startswith("raw_")
            wait_for(lambda: len(receiver.accepted()) == 1, "the delivery from bspgate serve")
            event = receiver.accepted()[0].event
            assert event["data"]["contact"]["bsuid"] == "US.13491208655302741918"
            assert event["data"]["raw_id"] == answer["raw_id"]
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                _, stderr = process.communicate(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                process.kill()
                _, stderr = process.communicate()
        # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit says why it stopped
    assert process.returncode in (0, -signal.SIGTERM), stderr.decode()
    assert b"Traceback" not in stderr, stderr.decode()
