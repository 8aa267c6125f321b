"""Provider handshakes answered on the webhook URL, named in a mapping's `inbound.handshakes`.

- `meta_hub_challenge`: `GET ?hub.mode=subscribe&hub.verify_token=…&hub.challenge=…` answers the
  challenge as text when the token equals the channel's `verify_token` (constant time), else 403.
- `eventgrid_validation`: Event Grid's `Microsoft.EventGrid.SubscriptionValidationEvent` (header
  `aeg-event-type: SubscriptionValidation`) is answered `200 {"validationResponse": code}`, after
  the channel's credential check like any POST. Real events batched with it are ingested first.
- `cloudevents_options`: the CloudEvents webhook abuse-protection preflight (`OPTIONS` with
  `WebHook-Request-Origin`) is answered with `WebHook-Allowed-Origin`.
"""

from __future__ import annotations

import hmac
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from bspgate.config import Channel
from bspgate.problems import problem_response

VALIDATION_EVENT = "Microsoft.EventGrid.SubscriptionValidationEvent"


def meta_challenge(request: Request, channel: Channel) -> Response:
    params = request.query_params
    token = channel.secret("verify_token")
    sent = params.get("hub.verify_token", "")
    if params.get("hub.mode") != "subscribe" or "hub.challenge" not in params:
        return problem_response(
            400,
            "invalid_handshake",
            "Not a verification request",
            "expected hub.mode=subscribe with hub.challenge",
        )
    if not token or not hmac.compare_digest(sent.encode(), token.encode()):
        return problem_response(
            403,
            "invalid_verify_token",
            "Verify token mismatch",
            "hub.verify_token does not equal the channel's verify_token",
        )
    return PlainTextResponse(params["hub.challenge"])


def eventgrid_validation(payload: Any) -> Response | None:
    """The validation answer when `payload` holds a subscription-validation event, else None.

    The body decides, not the `aeg-event-type` header: a request labelled
    `SubscriptionValidation` whose body holds no validation event is ingested as what it holds
    (refusing it would refuse its real events, which Event Grid would retry and then drop).
    """
    events = payload if isinstance(payload, list) else [payload]
    if not any(isinstance(e, dict) and _event_type(e) == VALIDATION_EVENT for e in events):
        return None
    for event in events:
        if isinstance(event, dict) and _event_type(event) == VALIDATION_EVENT:
            data = event.get("data") or {}
            code = data.get("validationCode") if isinstance(data, dict) else None
            if isinstance(code, str) and code:
                return JSONResponse({"validationResponse": code})
    return problem_response(
        400,
        "invalid_handshake",
        "Malformed subscription validation",
        "no data.validationCode in the validation event",
    )


def holds_other_events(payload: Any) -> bool:
    """True when an Event Grid payload carries events besides subscription validations.

    Canonical v1.1: a batch holding a validation and real events answers the handshake and
    ingests the real events (the mapping leaves the validation out of a mixed batch).
    """
    events = payload if isinstance(payload, list) else [payload]
    return any(not (isinstance(e, dict) and _event_type(e) == VALIDATION_EVENT) for e in events)


def _event_type(event: dict[str, Any]) -> Any:
    return event.get("eventType") or event.get("type")


def cloudevents_options(request: Request) -> Response:
    origin = request.headers.get("webhook-request-origin", "*")
    headers = {"WebHook-Allowed-Origin": origin, "Allow": "POST, OPTIONS"}
    if request.headers.get("webhook-request-rate"):
        headers["WebHook-Allowed-Rate"] = "*"
    return Response(status_code=200, headers=headers)
