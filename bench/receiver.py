"""The delivery benchmarks' subscriber: a raw ASGI app that reads the body and answers 204.

Run under uvicorn (httptools + uvloop) as its own process, so its CPU is not the dispatcher's.
Two paths play troubled subscribers: `/slow?seconds=8` answers after that long, and
`/flaky?until=EPOCH` answers 503 until that moment (an outage), then 204.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import parse_qs


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    status = 200 if scope["path"] == "/readyz" else 204
    query = parse_qs(scope.get("query_string", b"").decode())
    if scope["path"] == "/slow":
        await asyncio.sleep(float(query.get("seconds", ["8"])[0]))
    elif scope["path"] == "/flaky" and time.time() < float(query.get("until", ["0"])[0]):
        status = 503
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b""})
