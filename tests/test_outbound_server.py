"""The send path on real sockets: a uvicorn gateway and a stand-in Cloud API on loopback.

The stand-in provider is a small Starlette app on another loopback port, configured as the
channel's `base_url`. A contact writes in (signed webhook), the app sends to it through
`POST /v1/messages`, then the provider's status webhook for the returned message id — carrying no
recipient identifiers, as a failed status to a phone does — resolves to the same contact through
the recorded send (identity rule 8).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bspgate.app import create_app
from tests.conftest import API_KEY, FIXTURES, make_settings, meta_signature

pytestmark = pytest.mark.e2e
PHONE_NUMBER_ID = "106540352242922"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Server:
    """An ASGI app under uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, app: Any, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


def standin_cloud_api(received: list[dict[str, Any]]) -> Starlette:
    """Accepts `POST /<version>/<phone-number-id>/messages` as Meta does (Bearer checked)."""

    async def messages(request: Request) -> Response:
        if request.headers.get("authorization") != "Bearer standin-token":
            return JSONResponse(
                {"error": {"message": "Invalid OAuth access token", "code": 190}}, 401
            )
        body = json.loads(await request.body())
        received.append({"path": request.url.path, "body": body})
        wamid = f"wamid.STANDIN{len(received):04d}"
        return JSONResponse(
            {"messaging_product": "whatsapp", "contacts": [], "messages": [{"id": wamid}]}
        )

    return Starlette(routes=[Route("/{version}/{pnid}/messages", messages, methods=["POST"])])


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[_Server, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []
    provider_port, gateway_port = _free_port(), _free_port()
    with _Server(standin_cloud_api(received), provider_port) as provider:
        settings = make_settings(
            tmp_path,
            server={"public_url": f"http://127.0.0.1:{gateway_port}"},
            channels=[
                {
                    "id": "cloud-us",
                    "provider": "cloudapi",
                    "portfolio": "acme",
                    "business_phone": "+15550001111",
                    "secrets": {
                        "app_secret": "test-app-secret",
                        "verify_token": "vt",
                        "access_token": "standin-token",
                    },
                    "settings": {"phone_number_id": PHONE_NUMBER_ID, "base_url": provider.url},
                }
            ],
        )
        with _Server(create_app(settings, dispatch=False), gateway_port) as gateway:
            yield gateway, received


def _webhook(client: httpx.Client, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    response = client.post(
        "/webhooks/cloud-us",
        content=body,
        headers={"content-type": "application/json", "x-hub-signature-256": meta_signature(body)},
    )
    assert response.status_code == 200, response.text


def test_send_then_status_webhook_resolves_to_the_same_contact(
    servers: tuple[_Server, list[dict[str, Any]]],
) -> None:
    gateway, received = servers
    auth = {"authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        inbound = json.loads((FIXTURES / "cloudapi" / "inbound_text.json").read_text())
        # a fresh message, so the 24 h window is open now
        inbound["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"] = str(
            int(time.time())
        )
        _webhook(client, inbound)
        events = client.get(
            "/v1/events", params={"type": "whatsapp.message.received"}, headers=auth
        )
        contact_id = events.json()["data"][0]["data"]["contact"]["id"]

        sent = client.post(
            "/v1/messages",
            json={
                "channel": "cloud-us",
                "to": {"contact_id": contact_id},
                "type": "text",
                "text": {"body": "Your order has shipped."},
            },
            headers={**auth, "idempotency-key": "order-1234"},
        )
        assert sent.status_code == 202, sent.text
        answer = sent.json()
        assert answer["contact_id"] == contact_id
        assert answer["provider_message_id"] == "wamid.STANDIN0001"
        assert received[0]["path"] == f"/v23.0/{PHONE_NUMBER_ID}/messages"
        assert received[0]["body"]["recipient"] == answer_bsuid(inbound)

        status = json.loads((FIXTURES / "cloudapi" / "status_delivered.json").read_text())
        value = status["entry"][0]["changes"][0]["value"]
        del value["contacts"]
        item = value["statuses"][0]
        item["id"] = answer["provider_message_id"]
        for key in ("recipient_id", "recipient_user_id"):
            item.pop(key, None)
        _webhook(client, status)

        statuses = client.get(
            "/v1/events", params={"type": "whatsapp.message.status"}, headers=auth
        ).json()["data"]
        assert len(statuses) == 1
        assert statuses[0]["data"]["message"]["id"] == answer["provider_message_id"]
        assert statuses[0]["data"]["contact"]["id"] == contact_id

        found = client.get(f"/v1/messages/{answer['id']}", headers=auth).json()
        assert [s["status"] for s in found["statuses"]] == ["delivered"]
        again = client.post(
            "/v1/messages",
            json={
                "channel": "cloud-us",
                "to": {"contact_id": contact_id},
                "type": "text",
                "text": {"body": "Your order has shipped."},
            },
            headers={**auth, "idempotency-key": "order-1234"},
        )
        assert again.json() == answer
        assert len(received) == 1  # the provider was called once


def answer_bsuid(inbound: dict[str, Any]) -> str:
    value = inbound["entry"][0]["changes"][0]["value"]
    contact = value["contacts"][0]
    return str(contact.get("user_id") or value["messages"][0]["from_user_id"])
