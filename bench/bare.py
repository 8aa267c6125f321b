"""The ingress baseline: a bare Starlette route that verifies Meta's HMAC and stores the raw body.

Durable like bspgate: SQLite in WAL mode with `synchronous=FULL`, one writer thread that commits
whatever is queued as one transaction (group commit), and the `200` only after the commit. No
parsing, mapping, identity or events: the floor a durable webhook receiver costs on this machine.
Run: `uvicorn bench.bare:app` with `BARE_DB=<path>` (bench/ingress.py does).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

SECRET = os.environ.get("BARE_SECRET", "bench-app-secret").encode()
_queue: queue.SimpleQueue[tuple[bytes, asyncio.Future[None], asyncio.AbstractEventLoop] | None]
_queue = queue.SimpleQueue()


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _writer(path: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS raw (id INTEGER PRIMARY KEY, at REAL, body BLOB)")
    while (item := _queue.get()) is not None:
        batch = [item]
        while len(batch) < 256:
            try:
                more = _queue.get_nowait()
            except queue.Empty:
                break
            if more is None:
                _queue.put(None)
                break
            batch.append(more)
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO raw (at, body) VALUES (?, ?)", [(time.time(), b) for b, _, _ in batch]
        )
        conn.execute("COMMIT")
        for _, future, loop in batch:
            loop.call_soon_threadsafe(_settle, future)
    conn.close()


async def webhook(request: Request) -> Response:
    body = await request.body()
    expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, request.headers.get("x-hub-signature-256", "")):
        return Response(status_code=401)
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    _queue.put((body, future, loop))
    await future
    return Response(status_code=200)


async def ready(request: Request) -> Response:
    return Response(status_code=200)


@contextlib.asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    thread = threading.Thread(target=_writer, args=(os.environ["BARE_DB"],), daemon=True)
    thread.start()
    yield
    _queue.put(None)
    await asyncio.to_thread(thread.join)


app = Starlette(
    routes=[
        Route("/webhooks/{channel}", webhook, methods=["POST"]),
        Route("/readyz", ready, methods=["GET"]),
    ],
    lifespan=lifespan,
)
