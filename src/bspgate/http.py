"""HTTP plumbing around every route: request ids, the access log, RFC 9457 for routing errors.

- `RequestLog` (ASGI middleware): every request gets an id (a well-formed `X-Request-Id` from
  the caller, else a new one), returned as the `X-Request-Id` header and bound to every log line
  of the request; one `http.request` access line per request (method, path without the query,
  which may carry credentials such as `?code=`, status, duration).
- `exception_handlers`: 404 and 405 from routing and unexpected errors (500) answer RFC 9457
  problems like every other error; a 405 lists in `Allow` the methods of every route of the path.
"""

from __future__ import annotations

import re
import time
from typing import Any

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bspgate.ids import new_id
from bspgate.problems import problem_response

_log = structlog.get_logger("bspgate.http")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
REQUEST_ID_HEADER = "x-request-id"
# set in `scope["state"]` by a route whose own line already says status and duration (the
# webhook route's `webhook.received`): one line per webhook, not two
ACCESS_LOGGED = "bspgate.access_logged"


class RequestLog:
    """Request id + one access log line per HTTP request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = ""
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
        request_id = incoming if _REQUEST_ID.match(incoming) else new_id("req")
        status = 500
        started = time.perf_counter()
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        # the request id is on every line of this request
        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # an unexpected error: an RFC 9457 500 carrying this request's id (logged
            # with the exception's type only; its text may hold payload values)
            if response_started:
                raise
            response = await server_error(Request(scope), exc)
            await response(scope, receive, send_with_id)
        finally:
            if status >= 500 or not scope.get("state", {}).get(ACCESS_LOGGED):
                getattr(_log, "error" if status >= 500 else "info")(
                    "http.request",
                    method=scope.get("method"),
                    path=scope.get("path"),
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                )
            structlog.contextvars.reset_contextvars(**tokens)


def _allowed(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _child = route.matches({**request.scope, "method": "__none__"})
        if match != Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


async def not_found(request: Request, exc: Exception) -> Response:
    return problem_response(
        404, "not_found", "Not found", f"no route for {request.url.path[:200]!r}"
    )


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    allow = ", ".join(_allowed(request))
    return problem_response(
        405,
        "method_not_allowed",
        "Method not allowed",
        f"{request.method} is not allowed here; allowed: {allow}",
        headers={"Allow": allow},
    )


async def http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 404:
        return await not_found(request, exc)
    if status == 405:
        return await method_not_allowed(request, exc)
    detail = exc.detail if isinstance(exc, HTTPException) else "unexpected error"
    return problem_response(status, f"http_{status}", "HTTP error", str(detail)[:200])


async def server_error(request: Request, exc: Exception) -> Response:
    _log.error("http.unhandled", error=type(exc).__name__, path=request.url.path)
    return problem_response(
        500,
        "internal_error",
        "Internal server error",
        "the gateway failed to answer this request; it is logged with this request's id",
    )


def exception_handlers() -> dict[Any, Any]:
    """Starlette `exception_handlers` for the app."""
    return {HTTPException: http_error, Exception: server_error}
