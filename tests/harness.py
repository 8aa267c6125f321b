"""A real bspgate server on loopback for end-to-end tests: uvicorn in a thread, a free port.

`RunningGateway(settings)` starts `create_app(settings)` under uvicorn and stops it on exit; its
`post(channel_id, body)` signs the body exactly as the channel's provider would.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import replace
from types import TracebackType
from typing import Any

import httpx
import uvicorn

from bspgate.app import create_app
from bspgate.config import ServerSettings, Settings
from bspgate.simulate import signed_request
from tests.conftest import API_KEY


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerThread:
    """Any ASGI app under uvicorn on 127.0.0.1, in a background thread."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=20)


class RunningGateway:
    """bspgate serving `settings` on loopback (public_url rewritten to the chosen port)."""

    def __init__(self, settings: Settings, **app_options: Any) -> None:
        port = free_port()
        server = replace(settings.server, public_url=f"http://127.0.0.1:{port}")
        self.settings = replace(
            settings,
            server=ServerSettings(
                **{
                    "host": server.host,
                    "port": port,
                    "public_url": server.public_url,
                    "max_body_bytes": server.max_body_bytes,
                }
            ),
        )
        self._server = ServerThread(create_app(self.settings, **app_options), port)
        self.client = httpx.Client(
            base_url=self._server.url, timeout=30, headers={"authorization": f"Bearer {API_KEY}"}
        )

    def __enter__(self) -> RunningGateway:
        self._server.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.client.close()
        self._server.__exit__()

    def post(self, channel_id: str, body: bytes) -> httpx.Response:
        channel = self.settings.channel(channel_id)
        assert channel is not None
        url, headers, payload = signed_request(self.settings, channel, body)
        return self.client.post(url, content=payload, headers=headers)

    def events(self, **params: Any) -> list[dict[str, Any]]:
        """Every stored event, oldest first."""
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            query = {"limit": 500, **params, **({"cursor": cursor} if cursor else {})}
            page = self.client.get("/v1/events", params=query).json()
            out.extend(page["data"])
            cursor = page["next_cursor"]
            if not cursor:
                return list(reversed(out))
