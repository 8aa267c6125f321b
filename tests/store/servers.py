"""Real processes and a counting receiver for multi-replica tests.

`CountingReceiver` is a Standard Webhooks receiver under uvicorn in a thread that records every
delivery by `webhook-id`, in arrival order. `GatewayProcess` is `bspgate serve` as a child process
(its own interpreter, pool and dispatcher), logging to a file so a chatty server never blocks on a
full pipe, and stopped with SIGTERM (SIGKILL if it hangs) on exit.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import httpx
import orjson
import uvicorn
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

DEADLINE = 30.0


def wait_for(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Poll `condition` until it holds; raise naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CountingReceiver:
    """Counts verified deliveries per `webhook-id`; `order` keeps (subject, id) as they came."""

    def __init__(self, secret: str) -> None:
        self._webhook = Webhook(secret)
        self.counts: Counter[str] = Counter()
        self.order: list[tuple[str, str]] = []
        self.rejected = 0
        self._lock = threading.Lock()
        self.port = free_port()
        config = uvicorn.Config(
            Starlette(routes=[Route("/hook", self._hook, methods=["POST"])]),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: Request) -> Response:
        body = await request.body()
        try:
            self._webhook.verify(body, dict(request.headers))
        except WebhookVerificationError:
            with self._lock:
                self.rejected += 1
            return Response(status_code=401)
        event_id = request.headers["webhook-id"]
        subject = orjson.loads(body)["subject"]
        with self._lock:
            self.counts[event_id] += 1
            self.order.append((subject, event_id))
        return Response(status_code=204)

    def distinct(self) -> int:
        with self._lock:
            return len(self.counts)

    def __enter__(self) -> CountingReceiver:
        self._thread.start()
        wait_for(lambda: self._server.started, "the receiver to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=DEADLINE)


class GatewayProcess:
    """`bspgate serve --config <config> --port <port>` as a child process."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._log_path = log
        self._log = log.open("wb")
        command = [sys.executable, "-m", "bspgate", "serve", "--config", str(config)]
        self.process = subprocess.Popen(
            [*command, "--port", str(port), "--log-level", "warning"],
            env=dict(os.environ),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self._log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"bspgate serve exited:\n{self.log()}")
            try:
                return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, f"bspgate serve on port {self.port} to be ready")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=DEADLINE)
        self._log.close()
        return int(self.process.returncode)

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
