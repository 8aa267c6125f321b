"""Where deliveries may go: link-local and cloud metadata addresses refused (unless allowed),
checked on the address connected to; loopback allowed; redirects never followed.

The dispatcher posts through the production aiohttp poster to real receivers on loopback. The
only stand-in is DNS for a name that resolves to the metadata address (no real name does here).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bspgate.app import create_app
from bspgate.delivery.transport import REFUSED, AiohttpPoster, GuardedResolver, forbidden
from bspgate.delivery.worker import Dispatcher
from tests.conftest import make_settings
from tests.harness import ServerThread
from tests.payloads import text_webhook
from tests.test_delivery import subscriber

pytestmark = pytest.mark.anyio


class Hook:
    def __init__(self, status: int = 204, location: str | None = None) -> None:
        self.calls = 0
        self.status, self.location = status, location
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        await request.body()
        self.calls += 1
        headers = {"location": self.location} if self.location else None
        return Response(status_code=self.status, headers=headers)


async def deliver_once(tmp_path: Path, *subs: dict[str, Any]) -> list[dict[str, Any]]:
    """Ingest one event, run one dispatcher round through aiohttp, answer the attempts."""
    settings = make_settings(
        tmp_path, storage=f"sqlite:///{tmp_path / 'safety.db'}", subscribers=list(subs)
    )
    app = create_app(settings, dispatch=False)
    gateway = app.state.gateway
    await gateway.store.open()
    poster = AiohttpPoster()
    try:
        channel = settings.channel("cloud-us")
        assert channel is not None
        payload = text_webhook("wamid.1")
        await gateway.ingest(channel, payload, orjson.dumps(payload), "application/json")
        dispatcher = Dispatcher(gateway.store, settings.subscribers, poster, gateway.metrics)
        await dispatcher.run_once()
        rows = await gateway.store.read(
            lambda tx: tx.deliveries(state=None, subscriber_id=None, event_id=None, limit=10)
        )
        out = []
        for row in rows:
            attempts = await gateway.store.read(lambda tx, row=row: tx.attempts(row["id"]))
            out.append({**row, "attempts_made": attempts})
        return out
    finally:
        await poster.aclose()
        await gateway.store.close()


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("169.254.169.254", True),
        ("169.254.0.1", True),
        ("fd00:ec2::254", True),
        ("fe80::1", True),
        ("::ffff:169.254.169.254", True),
        ("127.0.0.1", False),
        ("10.0.0.5", False),
        ("192.168.1.1", False),
        ("::1", False),
        ("fd00:ec2::253", False),
    ],
)
def test_which_addresses_are_refused(address: str, refused: bool) -> None:
    assert forbidden(address) is refused


async def test_a_metadata_ip_is_refused_before_connecting(tmp_path: Path) -> None:
    url = "http://169.254.169.254/latest/meta-data"
    (row,) = await deliver_once(tmp_path, subscriber("crm", url))
    (attempt,) = row["attempts_made"]
    assert row["state"] == "pending"
    assert attempt["status"] is None
    assert REFUSED in attempt["error"]


class MetadataDns(AbstractResolver):
    """DNS stand-in: every name resolves to the cloud metadata address."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {"hostname": host, "host": "169.254.169.254", "port": port, "family": family,
             "proto": 0, "flags": 0}
        ]  # fmt: skip

    async def close(self) -> None:
        pass


async def test_a_name_resolving_to_the_metadata_address_is_refused() -> None:
    with pytest.raises(OSError, match="link-local"):
        await GuardedResolver(MetadataDns()).resolve("metadata.example", 80)


async def test_a_name_resolving_to_loopback_is_allowed(tmp_path: Path) -> None:
    hook = Hook()
    with ServerThread(hook.app) as server:
        url = f"http://localhost:{server.port}/hook"  # resolved by the real resolver
        (row,) = await deliver_once(tmp_path, subscriber("crm", url))
    assert row["state"] == "delivered"
    assert hook.calls == 1


async def test_redirects_are_not_followed(tmp_path: Path) -> None:
    target = Hook()
    with ServerThread(target.app) as moved:
        bouncer = Hook(307, f"{moved.url}/hook")
        with ServerThread(bouncer.app) as server:
            (row,) = await deliver_once(tmp_path, subscriber("crm", f"{server.url}/hook"))
    assert (row["state"], row["last_status"]) == ("pending", 307)
    assert bouncer.calls == 1
    assert target.calls == 0  # the redirect went nowhere
