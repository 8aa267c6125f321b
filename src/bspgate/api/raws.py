"""`GET /v1/raws/{id}`: what became of one received webhook payload.

Answers `{id, channel_id, provider, received_at, state, reason, event_count, events}`: `state`
is `processed`, `quarantined`, `erased`, or `received` on a gateway that processes after
answering (under `bspgate serve` on SQLite the payload waits in the inbox database until the
worker process maps it, and is found there: an acknowledged payload is never unknown);
`events` lists the ids and types of the canonical events it produced. The body itself stays in
the store. `bspgate simulate` uses it to say what a payload became.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bspgate.api.answers import TimedJSON
from bspgate.api.auth import authenticated
from bspgate.problems import problem_response
from bspgate.store.base import RawRecord

if TYPE_CHECKING:
    from bspgate.context import GatewayContext


@authenticated
async def get_raw(request: Request) -> Response:
    gateway: GatewayContext = request.app.state.gateway
    raw_id = request.path_params["raw_id"]

    def read(tx: Any) -> dict[str, Any] | None:
        raw = tx.raw(raw_id)
        return None if raw is None else _answer(raw, tx.events_of_raw(raw_id))

    store = gateway.store
    found = await store.read(read)
    if found is None:
        # under `serve` on SQLite an accepted payload waits in the inbox database until the
        # worker process maps it: received, no events yet
        waiting = await store.waiting_raw(raw_id)
        # None: never received, or moved into raw_payloads since the first read
        found = _answer(waiting, []) if waiting is not None else await store.read(read)
    if found is None:
        return problem_response(404, "unknown_raw", "Unknown payload", f"no raw payload {raw_id!r}")
    return TimedJSON(found)


def _answer(raw: RawRecord, events: list[Any]) -> dict[str, Any]:
    return {
        "id": raw.id,
        "channel_id": raw.channel_id,
        "provider": raw.provider,
        "received_at": raw.received_at,
        "state": raw.state,
        "reason": raw.reason,
        "event_count": raw.event_count,
        "events": [{"id": row[0], "type": row[1]} for row in events],
    }


def routes() -> list[Route]:
    return [Route("/v1/raws/{raw_id}", get_raw, methods=["GET"])]
