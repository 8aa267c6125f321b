"""The delivery benchmarks' subscriber: a raw ASGI app that reads the body and answers 204.

Run under uvicorn (httptools + uvloop) as its own process, so its CPU is not the dispatcher's.
"""

from __future__ import annotations

from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    status = 200 if scope["path"] == "/readyz" else 204
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b""})
