"""The one baseline of every benchmark: a bare durable webhook route, without bspgate.

What any durable receiver must do and nothing more: read the body, verify Meta's HMAC, parse the
JSON (orjson, as bspgate), store the raw body, and answer `200` only once it is durable.

- SQLite (`BARE_DB=<path>`): WAL, `synchronous=FULL`, one writer thread that commits whatever is
  queued as one transaction with one multi-row insert (group commit).
- PostgreSQL (`BARE_PG=<url>`): one insert per request through psycopg (the driver bspgate uses),
  autocommit, `synchronous_commit` on, from a connection pool.

No mapping, identity, events or delivery: the floor a durable webhook receiver costs on this
machine. Run: `uvicorn bench.bare:app` (bench/ingress.py, bench/e2e.py and bench/growth.py do).
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

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

SECRET = os.environ.get("BARE_SECRET", "bench-app-secret").encode()
_queue: queue.SimpleQueue[tuple[bytes, asyncio.Future[None], asyncio.AbstractEventLoop] | None]
_queue = queue.SimpleQueue()
_pool: Any = None


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
        now = time.time()
        values: list[Any] = []
        for body, _, _ in batch:
            values += (now, body)
        conn.execute("BEGIN")
        conn.execute(
            "INSERT INTO raw (at, body) VALUES " + ", ".join(["(?, ?)"] * len(batch)),  # noqa: S608
            values,
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
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return Response(status_code=400)
    if _pool is not None:
        async with _pool.connection() as conn:
            await conn.execute("INSERT INTO raw (at, body) VALUES (%s, %s)", (time.time(), body))
        return Response(status_code=200)
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    _queue.put((body, future, loop))
    await future
    return Response(status_code=200)


async def ready(request: Request) -> Response:
    return Response(status_code=200)


@contextlib.asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    global _pool
    if os.environ.get("BARE_PG"):
        from psycopg_pool import AsyncConnectionPool

        _pool = AsyncConnectionPool(
            os.environ["BARE_PG"], min_size=8, max_size=8, kwargs={"autocommit": True}, open=False
        )
        await _pool.open(wait=True)
        async with _pool.connection() as conn:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS raw (id BIGSERIAL PRIMARY KEY, at DOUBLE PRECISION, "
                "body BYTEA)"
            )
        yield
        await _pool.close()
        return
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
