"""`/v1/contacts`: a contact with its identifiers and their history, lookups, merges, erasure.

- `GET /v1/contacts/{id}`: the contact (a merged contact answers the survivor, with
  `merged_into` naming it).
- `GET /v1/contacts?bsuid=…|phone=…|username=…[&portfolio=…]`: every contact that identifier
  ever belonged to (an old, relinked BSUID finds its contact; a recycled phone finds both).
  Values are normalized as the CLI does: `15551234567`, `+1 555…` (an unencoded `+` arrives as a
  space) and `whatsapp:+…` are one phone; `bo` and `@bo` one username.
- `POST /v1/contacts/{id}/merge` `{"from": "ct_…"}`: identity rule 11, the operator merge.
- `DELETE /v1/contacts/{id}`: erasure on request (privacy law): that person's identifiers and
  content go everywhere, subscribers that received the contact get `whatsapp.contact.erased`;
  an audit row (and log line) records who asked and how much went, without the values.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bspgate.api.answers import TimedJSON
from bspgate.api.auth import authenticated
from bspgate.identity.identifiers import normal_phone, normal_username
from bspgate.identity.operator import OperatorContext, OperatorRefused, erase, operator_merge
from bspgate.problems import problem_response

if TYPE_CHECKING:
    from bspgate.context import GatewayContext

_log = structlog.get_logger("bspgate.contacts")


def _not_found(contact_id: str) -> Response:
    return problem_response(404, "unknown_contact", "Unknown contact", f"no contact {contact_id!r}")


def _key_name(request: Request, gateway: GatewayContext) -> str:
    """The name of the API key the request carries (authenticated already checked it)."""
    token = request.headers.get("authorization", "").partition(" ")[2].strip().encode()
    for key in gateway.settings.api_keys:
        if hmac.compare_digest(token, key.key.reveal().encode()):
            return key.name
    return "unknown"


def _context(request: Request, gateway: GatewayContext) -> OperatorContext:
    return OperatorContext.at(
        gateway.settings,
        gateway.fanout,
        gateway.validator,
        gateway.clock(),
        _key_name(request, gateway),
    )


def contact_answer(tx: Any, contact_id: str) -> dict[str, Any] | None:
    """The view of a contact; a merged one answers as its survivor, naming it in merged_into."""
    view: dict[str, Any] | None = tx.contact_view(contact_id)
    hops = 0
    while view is not None and view["merged_into"] and hops < 16:
        survivor = tx.contact_view(view["merged_into"])
        if survivor is None:
            break
        survivor["merged_into"] = view["merged_into"]
        survivor["requested_id"] = contact_id
        view, hops = survivor, hops + 1
    return view


@authenticated
async def get_contact(request: Request) -> Response:
    gateway: GatewayContext = request.app.state.gateway
    contact_id = request.path_params["contact_id"]
    view = await gateway.store.read(lambda tx: contact_answer(tx, contact_id))
    return _not_found(contact_id) if view is None else TimedJSON(view)


def criteria(key: str, value: str) -> list[dict[str, Any]]:
    """A lookup value in every spelling the store may keep (phones E.164; a username with and
    without its `@`, as providers write either)."""
    if key == "phone":
        return [{"phone": normal_phone(value) or value.strip()}]
    if key == "username":
        spelled = normal_username(value)
        return [{"username": spelled}, {"username": spelled[1:]}]
    return [{"bsuid": value.strip()}]


@authenticated
async def find_contacts(request: Request) -> Response:
    gateway: GatewayContext = request.app.state.gateway
    query = request.query_params
    keys = [k for k in ("bsuid", "phone", "username") if query.get(k)]
    if len(keys) != 1:
        return problem_response(
            400, "invalid_query", "One identifier", "give exactly one of bsuid, phone, username"
        )
    wanted = criteria(keys[0], query[keys[0]])
    portfolio = query.get("portfolio")

    def lookup(tx: Any) -> list[dict[str, Any]]:
        ids: list[str] = []
        for one in wanted:
            ids.extend(i for i in tx.find_contacts(**one, portfolio=portfolio) if i not in ids)
        return [tx.contact_view(cid) for cid in ids]

    return TimedJSON({"data": await gateway.store.read(lookup)})


@authenticated
async def merge_contacts(request: Request) -> Response:
    gateway: GatewayContext = request.app.state.gateway
    contact_id = request.path_params["contact_id"]
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        body = None
    source = body.get("from") if isinstance(body, dict) else None
    if not isinstance(source, str) or not source.startswith("ct_") or "\x00" in source:
        return problem_response(
            400, "invalid_body", "Invalid merge request", 'send {"from": "ct_…"}'
        )
    ctx = _context(request, gateway)
    try:
        view = await gateway.store.transaction(
            lambda tx: operator_merge(tx, ctx, contact_id, source)
        )
    except OperatorRefused as exc:
        return problem_response(exc.status, exc.code, "Merge refused", exc.detail)
    _log.info("contact.merged", contact_id=view["id"], merged=source, by=ctx.key_name)
    if gateway.dispatcher is not None:
        gateway.dispatcher.wake()
    return TimedJSON(view)


@authenticated
async def erase_contact(request: Request) -> Response:
    gateway: GatewayContext = request.app.state.gateway
    contact_id = request.path_params["contact_id"]
    ctx = _context(request, gateway)
    try:
        summary = await gateway.store.transaction(lambda tx: erase(tx, ctx, contact_id))
    except OperatorRefused as exc:
        return problem_response(exc.status, exc.code, "Erasure refused", exc.detail)
    if summary is None:
        return _not_found(contact_id)
    _log.info("contact.erased", contact_id=contact_id, by=ctx.key_name, **summary)
    if gateway.dispatcher is not None:
        gateway.dispatcher.wake()
    return TimedJSON({"id": contact_id, "erased": summary})


def routes() -> list[Route]:
    return [
        Route("/v1/contacts", find_contacts, methods=["GET"]),
        Route("/v1/contacts/{contact_id}", get_contact, methods=["GET"]),
        Route("/v1/contacts/{contact_id}/merge", merge_contacts, methods=["POST"]),
        Route("/v1/contacts/{contact_id}", erase_contact, methods=["DELETE"]),
    ]
