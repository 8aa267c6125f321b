"""Bearer API key check for `/v1/*` (constant-time against every configured key)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from bspgate.problems import problem_response

if TYPE_CHECKING:
    from bspgate.context import GatewayContext

Endpoint = Callable[[Request], Awaitable[Response]]


def authenticated(endpoint: Endpoint) -> Endpoint:
    """Wrap an endpoint so it answers 401 without a valid `Authorization: Bearer <key>`."""

    @wraps(endpoint)
    async def wrapper(request: Request) -> Response:
        gateway: GatewayContext = request.app.state.gateway
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        valid = (
            scheme.lower() == "bearer"
            and token
            and any(
                hmac.compare_digest(token.encode(), key.key.reveal().encode())
                for key in gateway.settings.api_keys
            )
        )
        if not valid:
            return problem_response(
                401,
                "unauthorized",
                "Unauthorized",
                "send Authorization: Bearer <api key>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if holds_nul(request):
            # no identifier holds one, and PostgreSQL refuses it in a text parameter
            return problem_response(
                400, "invalid_request", "Invalid request", "the path or query holds a NUL character"
            )
        return await endpoint(request)

    return wrapper


def holds_nul(request: Request) -> bool:
    """A NUL character in the (decoded) path or in a query parameter's name or value."""
    if "\x00" in request.scope.get("path", ""):
        return True
    return any(
        "\x00" in key or "\x00" in value for key, value in request.query_params.multi_items()
    )
