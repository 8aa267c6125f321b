"""Contacts: search by any identifier; a contact's identity timeline, events, sends; merge, erase.

One search box: a contact id (`ct_…`), a BSUID (current or retired), a phone in any spelling
(normalized as the mappings normalize it), a username, or part of a name. The timeline joins
what the store keeps (BSUIDs with their periods, phone aliases with theirs, the history entries
of captures, merges, relinks and changes), each linked to the event stored in the same
transaction, i.e. the webhook that taught it. Merge and erase call the identity operations
(`bspgate.identity.operator`) that `/v1/contacts` uses, after a confirmation.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from bspgate.console import queries
from bspgate.console.pages import event_summary
from bspgate.console.render import mask_payload, mask_phone, render
from bspgate.console.session import action, audit, gateway_of, operator, page, revealed
from bspgate.identity.operator import OperatorContext, OperatorRefused, operator_merge
from bspgate.identity.operator import erase as erase_contact
from bspgate.mapping.functions import e164, is_bsuid
from bspgate.store.base import follow_merged


def search_ids(tx: Any, text: str, portfolios: list[str]) -> tuple[str, list[str]]:
    """(what the text was read as, matching contact ids) over the configured portfolios."""
    if text.startswith("ct_"):
        return "contact id", [text] if tx.contact(text) is not None else []
    found: list[str] = []

    def each_portfolio(**criteria: str) -> list[str]:
        for portfolio in portfolios:  # scoped lookups walk the (portfolio, identifier) keys
            for contact_id in tx.find_contacts(**criteria, portfolio=portfolio):
                if contact_id not in found:
                    found.append(contact_id)
        return found

    candidate = text.removeprefix("whatsapp:").removeprefix("bsuid:")
    if is_bsuid(candidate):
        return "BSUID", each_portfolio(bsuid=candidate)
    phone = e164(text)
    if phone is not None:
        return f"phone {mask_phone(phone)}", each_portfolio(phone=phone)
    for name in (text, "@" + text.lstrip("@")):
        each_portfolio(username=name)
    for contact_id in queries.contacts_by_name(tx, text):
        if contact_id not in found:
            found.append(contact_id)
    return "username or name", found


def contact_filter(tx: Any, text: str, portfolios: list[str]) -> str | None:
    """The contact id an events filter names now: a contact id (a merged one: its survivor,
    as `GET /v1/events?contact_id=` answers), or the first contact a BSUID, phone or username
    finds; None when no contact has it (yet)."""
    if text.startswith("ct_"):
        survivor = follow_merged(tx.contact(text), tx.contact)
        return survivor.id if survivor is not None else text
    _kind, ids = search_ids(tx, text, portfolios)
    if not ids:
        return None
    found = follow_merged(tx.contact(ids[0]), tx.contact)
    return found.id if found is not None else ids[0]


def _masked_view(view: dict[str, Any], reveal: bool) -> dict[str, Any]:
    if reveal:
        return view
    shown = dict(view)
    shown["phone"] = mask_phone(view.get("phone"))
    shown["phones"] = [{**p, "phone": mask_phone(p["phone"])} for p in view.get("phones", [])]
    shown["history"] = [{**h, "detail": mask_payload(h["detail"])} for h in view["history"]]
    return shown


@page
async def contacts_page(request: Request) -> Response:
    gateway = gateway_of(request)
    text = request.query_params.get("q", "").strip()
    results: list[dict[str, Any]] = []
    read_as = ""
    if text:
        portfolios = sorted({c.portfolio for c in gateway.settings.channels})

        def lookup(tx: Any) -> tuple[str, list[dict[str, Any]]]:
            kind, ids = search_ids(tx, text, portfolios)
            return kind, [v for v in (tx.contact_view(i) for i in ids[:50]) if v is not None]

        read_as, views = await gateway.store.read(lookup)
        results = [_masked_view(v, revealed(request)) for v in views]
    return render(
        request,
        "contacts.html",
        {"section": "contacts", "q": text, "results": results, "read_as": read_as},
    )


def timeline(view: dict[str, Any], taught: dict[str, str]) -> list[dict[str, Any]]:
    """Every identity fact of a contact in time order, with the event that taught it."""
    items: list[dict[str, Any]] = []
    for entry in view["bsuids"]:
        what = f"BSUID {entry['bsuid']} first seen ({entry['state']})"
        items.append(
            {
                "at": entry["first_seen"],
                "kind": "bsuid",
                "what": what,
                "until": f"last seen {entry['last_seen']}",
                "channel": entry["channel_id"],
            }
        )
    for entry in view["phones"]:
        items.append(
            {
                "at": entry["first_seen"],
                "kind": "phone",
                "what": f"phone {entry['phone']} ({entry['state']})",
                "until": f"until {entry['ended_at']}"
                if entry["ended_at"]
                else f"last seen {entry['last_seen']}",
                "channel": entry["channel_id"],
            }
        )
        if entry["ended_at"]:
            items.append(
                {
                    "at": entry["ended_at"],
                    "kind": "phone_ended",
                    "what": f"phone {entry['phone']} ended: {entry['state']}"
                    f" ({entry['reason'] or 'no reason given'})",
                }
            )
    for entry in view["history"]:
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(entry["detail"].items()))
        items.append(
            {
                "at": entry["at"],
                "kind": entry["kind"],
                "what": entry["kind"].replace("_", " ") + (f" ({detail})" if detail else ""),
            }
        )
    rank = {"created": 0, "bsuid": 1, "phone": 2}
    for item in items:
        item["event_id"] = taught.get(item["at"])
    return sorted(items, key=lambda i: (i["at"] or "", rank.get(i["kind"], 3)))


@page
async def contact_page(request: Request) -> Response:
    gateway = gateway_of(request)
    contact_id = request.path_params["contact_id"]

    def read(tx: Any) -> dict[str, Any] | None:
        view = tx.contact_view(contact_id)
        if view is None:
            return None
        stamps = sorted(
            {b["first_seen"] for b in view["bsuids"]}
            | {p["first_seen"] for p in view["phones"]}
            | {h["at"] for h in view["history"]}
        )
        survivor = follow_merged(tx.contact(contact_id), tx.contact)
        return {
            "view": view,
            # a merged contact answers as its survivor: erase and merge are offered there
            "survivor": survivor.id if survivor is not None else None,
            "taught": queries.events_stored_at(tx, contact_id, stamps),
            "events": queries.events_page(tx, contact_id=contact_id, limit=50),
            "sends": queries.contact_sends(tx, contact_id),
        }

    found = await gateway.store.read(read)
    if found is None:
        return render(
            request,
            "message.html",
            {"title": "Unknown contact", "message": f"No contact {contact_id!r}."},
            404,
        )
    reveal = revealed(request)
    view = _masked_view(found["view"], reveal)
    return render(
        request,
        "contact.html",
        {
            "section": "contacts",
            "contact": view,
            "survivor": found["survivor"] if found["survivor"] != contact_id else None,
            "timeline": timeline(view, found["taught"]),
            "events": [event_summary(r, reveal) for r in found["events"]],
            "sends": found["sends"],
            "erased": request.query_params.get("erased"),
            "merged": request.query_params.get("merged"),
        },
    )


def _context(request: Request) -> OperatorContext:
    """The identity operations' context: now, and the signed-in operator as the key name."""
    gateway = gateway_of(request)
    return OperatorContext.at(
        gateway.settings,
        gateway.fanout,
        gateway.validator,
        gateway.clock(),
        f"console:{operator(request) or '-'}",
    )


def _refused(request: Request, contact_id: str, title: str, detail: str, status: int) -> Response:
    back = f"/console/contacts/{contact_id}"
    return render(
        request, "message.html", {"title": title, "message": detail, "back": back}, status
    )


@action
async def erase(request: Request, form: FormData) -> Response:
    """Erasure (the operation `DELETE /v1/contacts/{id}` runs), after a typed confirmation.

    A merged contact's id erases its survivor (rule 8, as the API does; its page offers erase
    on the survivor's page only): the audit entry names the contact erased, and the id typed.
    """
    gateway = gateway_of(request)
    contact_id = request.path_params["contact_id"]
    if str(form.get("confirm") or "").strip() != contact_id:
        detail = "To erase, type the contact id exactly in the confirmation box."
        return _refused(request, contact_id, "Not erased", detail, 400)
    ctx = _context(request)

    def work(tx: Any) -> tuple[str, dict[str, Any]] | None:
        contact = follow_merged(tx.contact(contact_id), tx.contact)
        summary = None if contact is None else erase_contact(tx, ctx, contact.id)
        return None if contact is None or summary is None else (contact.id, summary)

    try:
        done = await gateway.store.transaction(work)
    except OperatorRefused as exc:
        return _refused(request, contact_id, "Not erased", exc.detail, exc.status)
    if done is None:
        return _refused(request, contact_id, "Unknown contact", f"No contact {contact_id!r}.", 404)
    erased, summary = done
    if gateway.dispatcher is not None:
        gateway.dispatcher.wake()
    named = {"requested_as": contact_id} if erased != contact_id else {}
    await audit(request, "erase", erased, summary=summary, **named)
    return RedirectResponse(f"/console/contacts/{erased}?erased=1", 303)


@action
async def merge(request: Request, form: FormData) -> Response:
    """Merge another contact into this one (identity rule 11, as `POST /v1/contacts/{id}/merge`)."""
    gateway = gateway_of(request)
    contact_id = request.path_params["contact_id"]
    source = str(form.get("from") or "").strip()
    if not source.startswith("ct_") or str(form.get("confirm") or "") != "yes":
        detail = "Give the other contact's id (ct_…) and tick the confirmation box."
        return _refused(request, contact_id, "Not merged", detail, 400)
    ctx = _context(request)
    try:
        view = await gateway.store.transaction(
            lambda tx: operator_merge(tx, ctx, contact_id, source)
        )
    except OperatorRefused as exc:
        return _refused(request, contact_id, "Not merged", exc.detail, exc.status)
    if gateway.dispatcher is not None:
        gateway.dispatcher.wake()
    await audit(request, "merge", view["id"], absorbed=source)
    return RedirectResponse(f"/console/contacts/{view['id']}?merged={source}", 303)


def routes() -> list[Route]:
    return [
        Route("/contacts", contacts_page, methods=["GET"]),
        Route("/contacts/{contact_id}", contact_page, methods=["GET"]),
        Route("/contacts/{contact_id}/erase", erase, methods=["POST"]),
        Route("/contacts/{contact_id}/merge", merge, methods=["POST"]),
    ]
