"""`POST /v1/messages` and `GET /v1/messages/{id}`: the send API (canonical contract §3).

POST takes a canonical send (Bearer key; optional `Idempotency-Key`; `?dry_run=true` answers the
exact provider request with credentials masked and sends nothing) and answers `202` with the
send, or an RFC 9457 problem (`422` refusals with their `code`, `502 provider_error`). GET answers
the recorded send and the `whatsapp.message.status` events seen for its provider message id.
Thin endpoints: the work is `bspgate.outbound.service.SendService`, built once per app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bspgate.api.auth import authenticated
from bspgate.errors import SendError
from bspgate.outbound.service import SendService, title_for
from bspgate.problems import problem_response
from bspgate.times import rfc3339_fields

if TYPE_CHECKING:
    from bspgate.context import GatewayContext

MAX_BODY = 256 * 1024


def send_service(request: Request) -> SendService:
    """The app's `SendService`, made on first use from the gateway's parts."""
    service: SendService | None = getattr(request.app.state, "send_service", None)
    if service is None:
        gateway: GatewayContext = request.app.state.gateway
        service = SendService(
            gateway.settings, store=gateway.store, client=gateway.client, clock=gateway.clock
        )
        request.app.state.send_service = service
    return service


def _json(body: object, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def send_problem(error: SendError) -> Response:
    """A refusal or provider rejection as problem+json (`code`, plus the error's context)."""
    return problem_response(
        error.status, error.code, title_for(error.code), error.detail, **error.extra
    )


_TRUE = {"1", "true", "yes"}
_FALSE = {"0", "false", "no"}


@authenticated
async def create_message(request: Request) -> Response:
    body = await request.body()
    if len(body) > MAX_BODY:
        return problem_response(413, "payload_too_large", "Payload too large", "at most 256 KiB")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return problem_response(400, "invalid_json", "Invalid JSON", "the body is not JSON")
    service = send_service(request)
    flag = request.query_params.get("dry_run")
    dry_run = flag is not None and flag.lower() in _TRUE
    if flag is not None and not dry_run and flag.lower() not in _FALSE:
        # `?dry_run`, `?dry_run=on`: whatever was meant, never a real send by accident
        return problem_response(
            400, "invalid_query", "Invalid dry_run", "dry_run is true or false (also 1/0, yes/no)"
        )
    key = request.headers.get("idempotency-key") or None
    if key is not None and len(key) > 255:
        return problem_response(
            400, "invalid_request", "Invalid Idempotency-Key", "at most 255 characters"
        )
    try:
        if dry_run:
            outcome = await service.dry_run(payload)
        else:
            outcome = await service.submit(payload, idempotency_key=key)
    except SendError as exc:
        return send_problem(exc)
    headers = {"Idempotent-Replayed": "true"} if outcome.replayed else None
    if outcome.status >= 400:
        return Response(
            orjson.dumps(outcome.body), outcome.status, headers, "application/problem+json"
        )
    return _json(outcome.body, outcome.status, headers)


@authenticated
async def get_message(request: Request) -> Response:
    found = await send_service(request).lookup(request.path_params["send_id"])
    if found is None:
        return problem_response(404, "unknown_send", "Unknown send", "no send with this id")
    return _json(rfc3339_fields(found), 200)


def routes() -> list[Route]:
    """The send API's routes, for the app's route list."""
    return [
        Route("/v1/messages", create_message, methods=["POST"]),
        Route("/v1/messages/{send_id}", get_message, methods=["GET"]),
    ]
