"""`GET /v1/raws/{id}`: what became of one received webhook payload.

Answers `{id, channel_id, provider, received_at, state, reason, event_count, events}`: `state`
is `processed`, `quarantined`, `erased` (or, on a gateway that processes after answering, a
state before those); `events` lists the ids and types of the canonical events it produced. The
body itself stays in the store. `bspgate simulate` uses it to say what a payload became.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bspgate.api.answers import TimedJSON
from bspgate.api.auth import authenticated
from bspgate.problems import problem_response

if TYPE_CHECKING:
    from bspgate.context import GatewayContext


@authenticated
async def get_raw(request: Request) -> Response:
    gateway: GatewayContext = request.app.state.gateway
    raw_id = request.path_params["raw_id"]

    def read(tx: Any) -> dict[str, Any] | None:
        raw = tx.raw(raw_id)
        if raw is None:
            return None
        rows = tx.events_of_raw(raw_id)
        return {
            "id": raw.id,
            "channel_id": raw.channel_id,
            "provider": raw.provider,
            "received_at": raw.received_at,
            "state": raw.state,
            "reason": raw.reason,
            "event_count": raw.event_count,
            "events": [{"id": row[0], "type": row[1]} for row in rows],
        }

    found = await gateway.store.read(read)
    if found is None:
        return problem_response(404, "unknown_raw", "Unknown payload", f"no raw payload {raw_id!r}")
    return TimedJSON(found)


def routes() -> list[Route]:
    return [Route("/v1/raws/{raw_id}", get_raw, methods=["GET"])]
