"""Operator endpoints: deliveries and their attempts, replays, quarantine, subscribers.

- `GET /v1/deliveries?state=&subscriber_id=&event_id=&limit=`; `GET /v1/deliveries/{id}` with
  every attempt (time, HTTP status, latency, error).
- `POST /v1/replays`: `{"event_id"|"subscriber_id"|"type"|"since"|"until", "states", "dry_run",
  "limit"}` re-delivers (at least one filter, or `"all": true`: a bare POST is refused, never
  read as "everything"; only configured subscribers' deliveries, the others' counted in
  `skipped`); `{"quarantined": true, "raw_id"?: …, "dry_run"?: …, "limit"?: …}` re-normalizes
  quarantined payloads with the current mappings. Switches are JSON booleans (`"false"` is a
  400, never read as true).
- `GET /v1/quarantined`: quarantined raw payloads with their reasons (bodies stay in the store).
- `GET /v1/subscribers`; `POST /v1/subscribers/{id}/enable` and `/disable`;
  `POST /v1/subscribers/{id}/retry` makes everything pending for it due now (409
  `subscriber_disabled`, with the reason and the remedy, when it is disabled).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bspgate.api.answers import TimedJSON
from bspgate.api.auth import authenticated
from bspgate.operations import (
    NAME_WHAT,
    ReplayRequest,
    SubscriberDisabled,
    UnknownReference,
    replay_deliveries,
    replay_flag,
    replay_limit,
    replay_quarantined,
    retry_subscriber,
    set_subscriber,
    subscriber_view,
)
from bspgate.problems import problem_response
from bspgate.store.base import DELIVERY_STATES

if TYPE_CHECKING:
    from bspgate.context import GatewayContext


def _gateway(request: Request) -> GatewayContext:
    gateway: GatewayContext = request.app.state.gateway
    return gateway


def _limit(request: Request, default: int = 100) -> int:
    value = int(request.query_params.get("limit", str(default)))
    if not 1 <= value <= 1000:
        raise ValueError("limit is 1 to 1000")
    return value


@authenticated
async def list_deliveries(request: Request) -> Response:
    query = request.query_params
    try:
        limit = _limit(request)
    except ValueError as exc:
        return problem_response(400, "invalid_query", "Invalid limit", str(exc))
    if query.get("state") is not None and query["state"] not in DELIVERY_STATES:
        return problem_response(
            400,
            "invalid_query",
            "Invalid state",
            f"{query['state'][:40]!r} is not a delivery state ({', '.join(DELIVERY_STATES)})",
        )
    rows = await _gateway(request).store.read(
        lambda tx: tx.deliveries(
            state=query.get("state"),
            subscriber_id=query.get("subscriber_id"),
            event_id=query.get("event_id"),
            limit=limit,
        )
    )
    return TimedJSON({"data": rows})


@authenticated
async def get_delivery(request: Request) -> Response:
    delivery_id = request.path_params["delivery_id"]

    def read(tx: Any) -> dict[str, Any] | None:
        row: dict[str, Any] | None = tx.delivery(delivery_id)
        if row is not None:
            row["attempt_log"] = tx.attempts(delivery_id)
        return row

    row = await _gateway(request).store.read(read)
    if row is None:
        return problem_response(
            404, "unknown_delivery", "Unknown delivery", f"no delivery {delivery_id!r}"
        )
    return TimedJSON(row)


@authenticated
async def create_replay(request: Request) -> Response:
    gateway = _gateway(request)
    try:
        body = await request.body()
        if not body.strip():
            raise ValueError(f"the body is a JSON object: {NAME_WHAT}")
        data = orjson.loads(body)
        if not isinstance(data, dict):
            raise ValueError("the body is a JSON object")
        if replay_flag(data, "quarantined"):
            raw_id = data.get("raw_id")
            if raw_id is not None and (
                not isinstance(raw_id, str) or not raw_id.strip() or "\x00" in raw_id
            ):
                raise ValueError("raw_id is the id of a quarantined payload (a string)")
            result = await replay_quarantined(
                gateway,
                raw_id=raw_id,
                dry_run=replay_flag(data, "dry_run"),
                limit=replay_limit(data),
            )
        else:
            # what to replay, and the bare request's refusal: one check for the API and the CLI
            replay = ReplayRequest.from_dict(data, [s.id for s in gateway.settings.subscribers])
            result = await replay_deliveries(
                gateway.store, replay, gateway.clock(), gateway.settings.subscribers
            )
            result["truncated"] = (
                max(result.get("matched", 0), result.get("added", 0)) >= replay.limit
            )
            changed = result.get("requeued") or result.get("added")
            if changed and gateway.dispatcher is not None:
                gateway.dispatcher.wake()
    except UnknownReference as exc:
        return problem_response(422, "invalid_replay", "Invalid replay request", str(exc))
    except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
        return problem_response(400, "invalid_replay", "Invalid replay request", str(exc))
    return TimedJSON(result, status_code=200 if result.get("dry_run") else 202)


@authenticated
async def list_quarantined(request: Request) -> Response:
    try:
        limit = _limit(request)
    except ValueError as exc:
        return problem_response(400, "invalid_query", "Invalid limit", str(exc))
    raws = await _gateway(request).store.read(lambda tx: tx.raws("quarantined", limit))
    return TimedJSON(
        {
            "data": [
                {
                    "id": r.id,
                    "channel_id": r.channel_id,
                    "provider": r.provider,
                    "received_at": r.received_at,
                    "content_type": r.content_type,
                    "reason": r.reason,
                    "bytes": len(r.body),
                }
                for r in raws
            ]
        }
    )


@authenticated
async def list_subscribers(request: Request) -> Response:
    gateway = _gateway(request)
    states, backlogs = await gateway.store.read(
        lambda tx: (
            tx.subscriber_states(),
            tx.subscriber_backlog([s.id for s in gateway.settings.subscribers]),
        )
    )
    return TimedJSON(
        {
            "data": [
                subscriber_view(s, states.get(s.id), backlogs.get(s.id))
                for s in gateway.settings.subscribers
            ]
        }
    )


async def _switch(request: Request, enabled: bool) -> Response:
    gateway = _gateway(request)
    subscriber_id = request.path_params["subscriber_id"]
    if subscriber_id not in {s.id for s in gateway.settings.subscribers}:
        return problem_response(
            404, "unknown_subscriber", "Unknown subscriber", f"no subscriber {subscriber_id!r}"
        )
    await set_subscriber(gateway.store, subscriber_id, enabled, gateway.clock())
    if enabled and gateway.dispatcher is not None:
        gateway.dispatcher.wake()
    return TimedJSON({"id": subscriber_id, "enabled": enabled})


@authenticated
async def enable_subscriber(request: Request) -> Response:
    return await _switch(request, True)


@authenticated
async def disable_subscriber(request: Request) -> Response:
    return await _switch(request, False)


@authenticated
async def retry_now(request: Request) -> Response:
    """Retry everything pending for a subscriber now (after an outage, without waiting)."""
    gateway = _gateway(request)
    subscriber_id = request.path_params["subscriber_id"]
    if subscriber_id not in {s.id for s in gateway.settings.subscribers}:
        return problem_response(
            404, "unknown_subscriber", "Unknown subscriber", f"no subscriber {subscriber_id!r}"
        )
    try:
        moved = await retry_subscriber(gateway.store, subscriber_id, gateway.clock())
    except SubscriberDisabled as exc:
        return problem_response(
            409,
            "subscriber_disabled",
            "Subscriber disabled",
            str(exc),
            reason=exc.reason,
            remedy=exc.remedy,
        )
    if gateway.dispatcher is not None:
        gateway.dispatcher.retry_now(subscriber_id)
    return TimedJSON({"id": subscriber_id, "retrying": moved})


def routes() -> list[Route]:
    return [
        Route("/v1/deliveries", list_deliveries, methods=["GET"]),
        Route("/v1/deliveries/{delivery_id}", get_delivery, methods=["GET"]),
        Route("/v1/replays", create_replay, methods=["POST"]),
        Route("/v1/quarantined", list_quarantined, methods=["GET"]),
        Route("/v1/subscribers", list_subscribers, methods=["GET"]),
        Route("/v1/subscribers/{subscriber_id}/enable", enable_subscriber, methods=["POST"]),
        Route("/v1/subscribers/{subscriber_id}/disable", disable_subscriber, methods=["POST"]),
        Route("/v1/subscribers/{subscriber_id}/retry", retry_now, methods=["POST"]),
    ]
