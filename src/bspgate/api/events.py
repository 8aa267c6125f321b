"""`GET /v1/events`: stored canonical events, newest first, with filters and cursor pagination.

Query: `type`, `contact_id`, `since` (RFC 3339, on the event time), `limit` (1 to 500, default 50),
`cursor` (opaque, from `next_cursor`). The answer is `{"data": [event, …], "next_cursor": …}`.
The `contact_id` of a merged contact answers the survivor's events (rule 8), its own included.
`after` (a cursor from `tail`) answers events newer than it, oldest first: that is how
`bspgate events tail` follows the stream. Statuses that arrived out of order (superseded: stored,
never delivered) are left out unless `include_superseded=true`.

Long-poll: with `after`, `wait=30s` (at most 60 s) holds the request open until an event newer than
the cursor is stored, or the wait ends (then `data` is empty and `tail_cursor` is the same): apps
that cannot take webhooks consume the stream with one open request. The store is polled (every
250 ms), so events written by another process (a second worker, another replica) are seen too.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from bspgate.api.auth import authenticated
from bspgate.config import parse_duration
from bspgate.problems import problem_response
from bspgate.store.base import follow_merged
from bspgate.times import comparable

MAX_WAIT = 60.0
POLL = 0.25

if TYPE_CHECKING:
    from bspgate.context import GatewayContext


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s{seq}".encode()).decode().rstrip("=")


def decode_cursor(text: str) -> int:
    padded = text + "=" * (-len(text) % 4)
    try:
        raw = base64.urlsafe_b64decode(padded).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("invalid cursor") from None
    if not raw.startswith("s") or not raw[1:].isdigit() or len(raw) > 20:
        raise ValueError("invalid cursor")
    seq = int(raw[1:])
    if seq >= 2**63:  # beyond any stored sequence (a BIGINT): not a cursor we gave out
        raise ValueError("invalid cursor")
    return seq


@authenticated
async def list_events(request: Request) -> Response:
    gateway: GatewayContext = request.app.state.gateway
    query = request.query_params
    try:
        limit = int(query.get("limit", "50"))
        if not 1 <= limit <= 500:
            raise ValueError
    except ValueError:
        return problem_response(400, "invalid_query", "Invalid limit", "limit is 1 to 500")
    try:
        before = decode_cursor(query["cursor"]) if "cursor" in query else None
        after = decode_cursor(query["after"]) if "after" in query else None
    except ValueError:
        return problem_response(400, "invalid_query", "Invalid cursor", "use next_cursor as given")
    since = query.get("since")
    if since is not None:
        try:
            since = comparable(since)  # any offset; stored times are UTC `Z`
        except ValueError as exc:
            return problem_response(400, "invalid_query", "Invalid since", str(exc))
    try:
        wait = parse_duration(query.get("wait", "0s")) if after is not None else 0.0
        if wait > MAX_WAIT:
            raise ValueError
    except ValueError:
        detail = f"wait is a duration up to {MAX_WAIT:.0f}s (e.g. 30s), used with after"
        return problem_response(400, "invalid_query", "Invalid wait", detail)

    def read(tx: Any) -> list[Any]:
        contact_id = query.get("contact_id")
        if contact_id:  # a merged contact's id answers as the survivor (rule 8)
            survivor = follow_merged(tx.contact(contact_id), tx.contact)
            contact_id = survivor.id if survivor is not None else contact_id
        rows: list[Any] = tx.list_events(
            type_=query.get("type"),
            contact_id=contact_id,
            since=since,
            before_seq=before,
            after_seq=after,
            limit=limit,
            include_superseded=query.get("include_superseded") == "true",
        )
        return rows

    rows = await gateway.store.read(read)
    deadline = time.monotonic() + wait
    while not rows and time.monotonic() < deadline and not await request.is_disconnected():
        await asyncio.sleep(min(POLL, max(deadline - time.monotonic(), 0.0)))
        rows = await gateway.store.read(read)
    next_cursor = encode_cursor(rows[-1][0]) if len(rows) == limit else None
    # tail_cursor: the newest event in this answer (the first when newest-first), to follow from
    newest = max((seq for seq, _body in rows), default=None)
    # nothing yet: the start of the stream, so a follower gets the first events oldest first
    last = encode_cursor(newest) if newest is not None else (query.get("after") or encode_cursor(0))
    body = b'{"data":[' + b",".join(body.encode() for _seq, body in rows) + b"],"
    body += b'"next_cursor":' + orjson.dumps(next_cursor if after is None else None)
    body += b',"tail_cursor":' + orjson.dumps(last) + b"}"
    return Response(body, media_type="application/json")
