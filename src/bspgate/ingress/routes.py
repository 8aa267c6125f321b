"""Thin Starlette endpoints for `/webhooks/{channel_id}`: read, verify, hand to the gateway.

Answers: unknown channel 404; body over `server.max_body_bytes` 413; missing or wrong credential
401; unparseable body 400 (also a form body the signature check cannot read: invalid UTF-8, more
than 1,000 fields); a body the signature does not cover (Twilio: neither form content nor
`bodySHA256`) 415; store unavailable 503 (the provider retries; nothing was acknowledged);
otherwise 200, also for quarantined payloads (a retry would not fix a mapping), including any
unexpected error while ingesting (`pipeline.ingest_or_quarantine`). Every error is an RFC 9457
problem. This module holds no SQL and no mapping logic.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from bspgate.errors import PayloadError, SignatureError, StoreError
from bspgate.http import ACCESS_LOGGED
from bspgate.ingress import handshake
from bspgate.ingress.parse import parse_payload
from bspgate.ingress.verify import SignedRequest
from bspgate.problems import problem_response
from bspgate.schema.catalog import traceparent_for

if TYPE_CHECKING:
    from bspgate.config import Channel
    from bspgate.context import GatewayContext

_log = structlog.get_logger("bspgate.ingress")


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, declared: str | None, limit: int) -> bytes:
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    # ASGI messages read directly: `request.stream()` is an async generator, whose per-request
    # registration with the event loop cost more than the rest of reading the body
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _public_url(gateway: GatewayContext, request: Request) -> str:
    # from the ASGI scope itself: Starlette's `request.url` builds and parses a whole URL
    scope = request.scope
    url = gateway.settings.server.public_url.rstrip("/") + scope["path"]
    query = scope.get("query_string", b"")
    return f"{url}?{query.decode('latin-1')}" if query else url


def _headers(request: Request) -> dict[str, str]:
    """The request's headers, lower-case names (ASGI sends them lower-case; a last one wins)."""
    return {
        name.decode("latin-1").lower(): value.decode("latin-1")
        for name, value in request.scope["headers"]
    }


def _logger(channel: Channel, traceparent: str) -> Any:
    """The logger of a webhook's rarer lines (refusals, handshakes), bound when one is logged."""
    return _log.bind(channel=channel.id, provider=channel.provider, traceparent=traceparent)


def _unknown_channel(channel_id: str) -> Response:
    return problem_response(
        404, "unknown_channel", "Unknown channel", f"no channel {channel_id!r} is configured"
    )


async def receive_webhook(request: Request) -> Response:
    gateway: GatewayContext = request.app.state.gateway
    channel_id = request.path_params["channel_id"]
    channel = gateway.settings.channel(channel_id)
    if channel is None:
        return _unknown_channel(channel_id)
    started = time.perf_counter()
    # W3C trace context: carried onto the events and their deliveries, and on this path's logs
    headers = _headers(request)  # once: the body limit, the trace context and the verifier read it
    traceparent = traceparent_for(headers.get("traceparent"))
    try:
        body = await _read_body(
            request, headers.get("content-length"), gateway.settings.server.max_body_bytes
        )
    except _TooLarge:
        gateway.metrics.count_webhook(channel.id, "too_large")
        return problem_response(
            413,
            "body_too_large",
            "Body too large",
            f"the limit is {gateway.settings.server.max_body_bytes} bytes",
        )
    except ClientDisconnect:
        return Response(status_code=400)
    content_type = headers.get("content-type", "")
    signed = SignedRequest(
        method=request.method,
        url=_public_url(gateway, request),
        headers=headers,
        body=body,
        content_type=content_type.lower(),
    )
    try:
        gateway.verifiers[channel.id].verify(signed)
    except PayloadError as exc:
        # the signature covers the form fields, and the body holds no readable form (invalid
        # UTF-8, more than 1,000 fields): nothing can be checked, nothing is stored
        gateway.metrics.count_webhook(channel.id, "unparseable")
        _logger(channel, traceparent).warning(
            "webhook.unparseable", reason=str(exc), bytes=len(body), stage="verify"
        )
        return problem_response(400, "unparseable_body", "The body cannot be parsed", str(exc))
    except SignatureError as exc:
        gateway.metrics.count_webhook(channel.id, exc.outcome)
        log = _logger(channel, traceparent)
        if exc.hint:
            log.warning("webhook.unauthorized", reason=str(exc), hint=exc.hint)
        else:
            log.warning("webhook.unauthorized", reason=str(exc))
        return problem_response(
            401,
            "invalid_signature",
            "Webhook authentication failed",
            str(exc),
            headers={"WWW-Authenticate": "Signature"},
        )
    except Exception as exc:  # a verifier bug must refuse, never answer 5xx, never accept
        gateway.metrics.count_webhook(channel.id, "unauthorized")
        _logger(channel, traceparent).error("webhook.verify_failed", error=type(exc).__name__)
        return problem_response(
            401,
            "invalid_signature",
            "Webhook authentication failed",
            "the credential could not be checked",
            headers={"WWW-Authenticate": "Signature"},
        )
    spec = gateway.mappings[channel.provider]
    uncovered = gateway.verifiers[channel.id].uncovered_body(signed)
    if uncovered:
        gateway.metrics.count_webhook(channel.id, "unsupported_media_type")
        _logger(channel, traceparent).warning(
            "webhook.unsigned_body", content_type=signed.content_type[:80]
        )
        return problem_response(415, "unsupported_media_type", "Body not covered", uncovered)
    try:
        payload = parse_payload(body, spec.parse)
    except PayloadError as exc:
        gateway.metrics.count_webhook(channel.id, "unparseable")
        _logger(channel, traceparent).warning(
            "webhook.unparseable", reason=str(exc), bytes=len(body)
        )
        return problem_response(400, "unparseable_body", "The body cannot be parsed", str(exc))
    validation: Response | None = None
    if "eventgrid_validation" in spec.handshakes:
        validation = handshake.eventgrid_validation(payload)
        if validation is not None:
            _logger(channel, traceparent).info("webhook.handshake", kind="eventgrid_validation")
            if validation.status_code != 200 or not handshake.holds_other_events(payload):
                return validation
            # v1.1: real events batched with the validation are ingested, then it is answered
    try:
        outcome = await gateway.ingest(channel, payload, body, content_type, traceparent)
    except StoreError as exc:
        gateway.metrics.count_webhook(channel.id, "store_unavailable")
        _logger(channel, traceparent).error("webhook.store_unavailable", error=str(exc))
        return problem_response(
            503,
            "store_unavailable",
            "Temporarily unavailable",
            "the payload was not stored; retry",
            headers={"Retry-After": "5"},
        )
    elapsed = time.perf_counter() - started
    gateway.metrics.count_webhook(channel.id, outcome.state)
    gateway.metrics.ingest_seconds.observe(elapsed)
    # a quarantine is a warning: an operator has a payload to look at
    # this line is the request's access line too (status and latency): `RequestLog` adds none
    request.scope.setdefault("state", {})[ACCESS_LOGGED] = True
    (_log.warning if outcome.state == "quarantined" else _log.info)(
        "webhook.received",
        channel=channel.id,  # as `_logger` binds them, without a bound logger per webhook
        provider=channel.provider,
        traceparent=traceparent,
        status=200,
        outcome=outcome.state,
        raw_id=outcome.raw_id,
        events=len(outcome.events),
        duplicates=outcome.duplicates,
        reason="; ".join(outcome.issues) or None,
        latency_ms=round(elapsed * 1000, 2),
    )
    stored = outcome.state != "duplicate"  # a duplicate's raw payload is the first delivery's
    if validation is not None:
        if stored:
            validation.headers["bspgate-raw-id"] = outcome.raw_id
        return validation
    return _Stored(outcome.raw_id if stored else None)


class _Stored(Response):
    """The `200` of a stored webhook (its raw payload's id in `bspgate-raw-id`, no body): the
    same headers as `Response(headers=...)`, without its header machinery on every webhook."""

    def __init__(self, raw_id: str | None) -> None:
        self.status_code = 200
        self.body = b""
        self.background = None
        self.raw_headers = [(b"content-length", b"0")]
        if raw_id is not None:
            self.raw_headers.insert(0, (b"bspgate-raw-id", raw_id.encode()))


_PREFIX = "/webhooks/"


class WebhookShortcut:
    """ASGI middleware: `POST /webhooks/{channel_id}` straight to `receive_webhook`.

    The one hot route skips the router, the route's request/response wrapper and the exception
    middleware (about 30 us of a webhook's CPU, measured): the answer is the same, since the route
    table still names `receive_webhook` for that path (OpenAPI, `Allow` headers) and every other
    method and path goes through the router as before. It sits inside `RequestLog`, so request
    ids, the log line and the RFC 9457 answer to an unexpected error are unchanged.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            root = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            channel_id = path[len(_PREFIX) :] if path.startswith(_PREFIX) else ""
            if channel_id and "/" not in channel_id:  # the route's `{channel_id}` segment
                scope["path_params"] = {"channel_id": channel_id}
                response = await receive_webhook(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def webhook_handshake(request: Request) -> Response:
    gateway: GatewayContext = request.app.state.gateway
    channel = gateway.settings.channel(request.path_params["channel_id"])
    if channel is None:
        return _unknown_channel(request.path_params["channel_id"])
    spec = gateway.mappings[channel.provider]
    meta, options = (
        "meta_hub_challenge" in spec.handshakes,
        "cloudevents_options" in spec.handshakes,
    )
    if request.method in ("GET", "HEAD") and meta:
        return handshake.meta_challenge(request, channel)  # the server drops a HEAD's body
    if request.method == "OPTIONS" and options:
        return handshake.cloudevents_options(request)
    allowed = ["GET", "HEAD"] * meta + ["OPTIONS"] * options + ["POST"]
    return problem_response(
        405,
        "method_not_allowed",
        "Method not allowed",
        f"{channel.provider} webhooks are POSTed",
        headers={"Allow": ", ".join(allowed)},
    )
