"""`/v1/contacts`: a contact with its identifiers and their history, lookups, and erasure.

- `GET /v1/contacts/{id}`: the contact (a merged contact answers with `merged_into`).
- `GET /v1/contacts?bsuid=…|phone=…|username=…[&portfolio=…]`: every contact that identifier
  ever belonged to (an old, relinked BSUID finds its contact; a recycled phone finds both).
- `DELETE /v1/contacts/{id}`: erasure on request (privacy law): phone, names, usernames, message
  content and raw payloads are removed; delivered events stay delivered, undelivered ones are
  cancelled; an audit line (history entry and log) records what was removed, without the values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bspgate.api.answers import TimedJSON
from bspgate.api.auth import authenticated
from bspgate.problems import problem_response

if TYPE_CHECKING:
    from bspgate.app import Gateway

_log = structlog.get_logger("bspgate.contacts")


def _not_found(contact_id: str) -> Response:
    return problem_response(404, "unknown_contact", "Unknown contact", f"no contact {contact_id!r}")


@authenticated
async def get_contact(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    contact_id = request.path_params["contact_id"]
    view = await gateway.store.read(lambda tx: tx.contact_view(contact_id))
    return _not_found(contact_id) if view is None else TimedJSON(view)


@authenticated
async def find_contacts(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    query = request.query_params
    keys = [k for k in ("bsuid", "phone", "username") if query.get(k)]
    if len(keys) != 1:
        return problem_response(
            400, "invalid_query", "One identifier", "give exactly one of bsuid, phone, username"
        )
    criteria: dict[str, Any] = {keys[0]: query[keys[0]], "portfolio": query.get("portfolio")}

    def lookup(tx: Any) -> list[dict[str, Any]]:
        return [tx.contact_view(cid) for cid in tx.find_contacts(**criteria)]

    return TimedJSON({"data": await gateway.store.read(lookup)})


@authenticated
async def erase_contact(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    contact_id = request.path_params["contact_id"]
    moment = gateway.clock()
    summary = await gateway.store.transaction(
        lambda tx: tx.erase_contact(contact_id, moment.timestamp(), moment.isoformat())
    )
    if summary is None:
        return _not_found(contact_id)
    _log.info("contact.erased", contact_id=contact_id, **summary)
    return TimedJSON({"id": contact_id, "erased": summary})


def routes() -> list[Route]:
    return [
        Route("/v1/contacts", find_contacts, methods=["GET"]),
        Route("/v1/contacts/{contact_id}", get_contact, methods=["GET"]),
        Route("/v1/contacts/{contact_id}", erase_contact, methods=["DELETE"]),
    ]
