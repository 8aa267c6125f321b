"""Overview, events (filters, cursor pages, the live tail), one event with its deliveries, audit.

The live tail is server-sent events: `GET /console/events/stream` polls the store for events
after the last one sent (`Last-Event-ID` on reconnect) every half second, so a webhook stored
now shows within a second. One stream lives at most 25 s and the browser reconnects where it
left off: a stopping server never waits on an open tail for long.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from bspgate.api.auth import holds_nul
from bspgate.api.events import decode_cursor, encode_cursor
from bspgate.console import queries
from bspgate.console.activity import Activity
from bspgate.console.render import mask_event, payload_view, render
from bspgate.console.session import action, audit, gateway_of, identify, page, revealed
from bspgate.masking import mask_url
from bspgate.operations import ReplayRequest, event_types, replay_deliveries
from bspgate.times import comparable, parse_time

PAGE_SIZE = 50
AUDIT_PAGE = 200  # audit entries a page shows; "Older entries" pages back
MAX_ID = 2**63 - 1  # the largest id a store holds (BIGINT, SQLite's INTEGER)
STREAM_SECONDS = 25.0
POLL_SECONDS = 0.5
REJECTED = ("unauthorized", "unparseable", "too_large", "store_unavailable")


def activity(request: Request) -> Activity:
    found: Activity = request.app.state.activity
    return found


@page
async def overview(request: Request) -> Response:
    gateway = gateway_of(request)
    try:
        minutes = max(1, min(60, int(request.query_params.get("minutes", "15"))))
    except ValueError:
        minutes = 15
    recent = activity(request).recent(minutes)
    summary, stats, states = await gateway.store.read(
        lambda tx: (
            queries.outbox_summary(tx, [s.id for s in gateway.settings.subscribers]),
            queries.attempt_stats(tx),
            tx.subscriber_states(),
        )
    )
    now = gateway.clock()
    channels = []
    for channel in gateway.settings.channels:
        counts = recent["by_channel"].get(channel.id, {})
        channels.append(
            {
                "id": channel.id,
                "provider": channel.provider,
                "processed": counts.get("processed", 0),
                "duplicate": counts.get("duplicate", 0),
                "quarantined": counts.get("quarantined", 0),
                "rejected": sum(counts.get(k, 0) for k in REJECTED),
            }
        )
    subscribers = []
    for subscriber in gateway.settings.subscribers:
        state = states.get(subscriber.id) or {}
        outbox = summary["per_subscriber"].get(subscriber.id, {})
        subscribers.append(
            {
                "id": subscriber.id,
                "url": mask_url(subscriber.url),
                "enabled": not state.get("disabled_at"),
                "reason": state.get("reason"),
                "failing_since": state.get("failing_since"),
                "pending": outbox.get("pending", 0) + outbox.get("inflight", 0),
                "held": outbox.get("held", 0),
                "dead": outbox.get("dead", 0),
                "next_attempt_at": outbox.get("next_attempt_at"),
                **stats.get(subscriber.id, {}),
            }
        )
    oldest = summary["oldest_undelivered"]
    age = None
    if oldest:
        age = max(0.0, (now - datetime.fromisoformat(oldest)).total_seconds())
    return render(
        request,
        "overview.html",
        {
            "section": "overview",
            "minutes": minutes,
            "since": datetime.fromtimestamp(recent["since"], UTC).strftime("%H:%M:%S UTC"),
            "channels": channels,
            "by_type": recent["by_type"],
            "summary": summary,
            "oldest_age": age,
            "subscribers": subscribers,
        },
    )


def event_summary(row: dict[str, Any], reveal: bool) -> dict[str, Any]:
    """What a list row shows of an event (masked unless the page is revealed)."""
    event = orjson.loads(row["body"])
    shown = event if reveal else mask_event(event)
    data = shown.get("data") or {}
    contact = data.get("contact") or {}
    message = data.get("message") or {}
    return {
        "seq": row["seq"],
        "id": row["id"],
        "type": row["type"],
        "channel": row["channel_id"],
        "contact_id": row["contact_id"],
        "time": row["time"],
        "bsuid": contact.get("bsuid"),
        "phone": contact.get("phone"),
        "detail": message.get("status") or message.get("type") or "",
        "text": message.get("text"),
    }


def _filters(request: Request) -> dict[str, str]:
    keys = ("type", "channel", "contact", "since", "until")
    return {k: request.query_params.get(k, "").strip() for k in keys}


def _window(filters: dict[str, str]) -> tuple[str | None, str | None]:
    """The event-time filter as text comparable with stored times (instants: any offset is
    converted to UTC, as `GET /v1/events?since=` does); `ValueError` names the field."""
    bounds: list[str | None] = []
    for key, label in (("since", "Event time from"), ("until", "Event time to")):
        try:
            bounds.append(comparable(filters[key]) if filters[key] else None)
        except ValueError as exc:
            raise ValueError(f"{label}: {exc}") from None
    return bounds[0], bounds[1]


def _ended(filters: dict[str, str], now: datetime) -> bool:
    """A window that ends in the past: no new event can be live in it."""
    return bool(filters["until"]) and parse_time(filters["until"]) <= now


@page
async def events(request: Request) -> Response:
    gateway = gateway_of(request)
    filters = _filters(request)
    try:
        cursor = request.query_params.get("cursor")
        before = decode_cursor(cursor) if cursor else None
    except ValueError:
        before = None
    try:
        since, until = _window(filters)
    except ValueError as exc:
        context = {"section": "events", "items": [], "filters": filters, "error": str(exc)}
        context["channels"] = [c.id for c in gateway.settings.channels]
        context["types"] = sorted(event_types())
        return render(request, "events.html", context, 400)
    matching = _Matching(filters, (since, until), _portfolios(request))
    rows, newest = await gateway.store.read(
        lambda tx: (
            matching.rows(tx, before_seq=before, limit=PAGE_SIZE),
            queries.newest_seq(tx),
        )
    )
    reveal = revealed(request)
    items = [event_summary(r, reveal) for r in rows]
    ended = _ended(filters, gateway.clock())
    next_cursor = encode_cursor(rows[-1]["seq"]) if len(rows) == PAGE_SIZE else None
    query = urlencode({k: v for k, v in filters.items() if v})
    return render(
        request,
        "events.html",
        {
            "section": "events",
            "items": items,
            "filters": filters,
            "next_cursor": next_cursor,
            "query": query,
            "channels": [c.id for c in gateway.settings.channels],
            "types": sorted(event_types()),  # every canonical type, and the bspgate.* ones
            # the tail starts after the newest matching row (none: after the newest stored)
            "newest": encode_cursor(max((r["seq"] for r in rows), default=newest)),
            "live": before is None and not ended,
            "ended": ended,
        },
    )


def _portfolios(request: Request) -> list[str]:
    return sorted({c.portfolio for c in gateway_of(request).settings.channels})


@dataclass(slots=True)
class _Matching:
    """The events the filters match, the Contact filter read as the contact it names *now*.

    The filter keeps the text typed (a phone, a BSUID, a contact id). It is looked up on each
    read until a contact has it, so a live tail on a phone or BSUID no contact has yet shows
    the person's first event as soon as it is stored; then it is kept for the stream's life
    (25 s at most: a reconnect looks it up again). A merged contact's id names its survivor, as
    `GET /v1/events?contact_id=` does (identity rule 8).
    """

    filters: dict[str, str]
    window: tuple[str | None, str | None]
    portfolios: list[str]
    contact_id: str | None = None

    def rows(self, tx: Any, **page: Any) -> list[dict[str, Any]]:
        from bspgate.console.contacts import contact_filter

        text = self.filters["contact"]
        if text and self.contact_id is None:
            self.contact_id = contact_filter(tx, text, self.portfolios)
            if self.contact_id is None:
                return []  # nobody has this identifier yet
        return queries.events_page(
            tx,
            type_=self.filters["type"] or None,
            channel_id=self.filters["channel"] or None,
            contact_id=self.contact_id,
            since=self.window[0],
            until=self.window[1],
            **page,
        )


async def stream(request: Request) -> Response:
    """Server-sent events: each new event as `data: {summary}` with `id: <cursor>`."""
    if await identify(request) is None:
        return Response("sign in first", 401)
    if holds_nul(request):
        return Response("the address holds a NUL character", 400)
    gateway = gateway_of(request)
    filters = _filters(request)
    try:
        window = _window(filters)
    except ValueError as exc:
        return Response(str(exc), 400)
    if _ended(filters, gateway.clock()):
        return Response(status_code=204)  # an ended window: EventSource stops reconnecting
    start = request.headers.get("last-event-id") or request.query_params.get("after")
    try:
        after = decode_cursor(start) if start else None
    except ValueError:
        after = None
    if after is None:
        after = int(await gateway.store.read(queries.newest_seq))
    position: int = after
    matching = _Matching(filters, window, _portfolios(request))
    reveal = revealed(request, "/console/events")  # the tail shows what its page reveals
    tracker = activity(request)

    async def feed() -> AsyncIterator[bytes]:
        nonlocal position
        yield b"retry: 500\n\n"
        deadline = time.monotonic() + STREAM_SECONDS
        while time.monotonic() < deadline:
            rows = await gateway.store.read(partial(matching.rows, after_seq=position, limit=100))
            for row in rows:
                position = row["seq"]
                summary = orjson.dumps(event_summary(row, reveal))
                yield b"id: " + encode_cursor(row["seq"]).encode() + b"\ndata: " + summary + b"\n\n"
            if not rows:
                yield b": idle\n\n"
            tracker.sample()
            await asyncio.sleep(POLL_SECONDS)

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(feed(), media_type="text/event-stream", headers=headers)


@page
async def event_page(request: Request) -> Response:
    gateway = gateway_of(request)
    event_id = request.path_params["event_id"]

    def read(tx: Any) -> dict[str, Any] | None:
        row = queries.event_row(tx, event_id)
        if row is None:
            return None
        raw = tx.raw(orjson.loads(row["body"])["data"].get("raw_id") or "")
        found = tx.deliveries(state=None, subscriber_id=None, event_id=event_id, limit=100)
        for delivery in found:
            delivery["attempt_log"] = tx.attempts(delivery["id"])
        return {"row": row, "raw": raw, "deliveries": found}

    found = await gateway.store.read(read)
    if found is None:
        return render(
            request,
            "message.html",
            {"title": "Unknown event", "message": f"No event {event_id!r} is stored."},
            404,
        )
    reveal = revealed(request)
    event = orjson.loads(found["row"]["body"])
    raw = found["raw"]
    raw_view = None if raw is None else payload_view(raw.body, raw.content_type, reveal)
    return render(
        request,
        "event.html",
        {
            "section": "events",
            "configured": {s.id for s in gateway.settings.subscribers},
            "event": event if reveal else mask_event(event),
            "raw": raw,
            "raw_view": raw_view,
            "deliveries": found["deliveries"],
        },
    )


@action
async def deliver_again(request: Request, form: FormData) -> Response:
    """Requeue this event's delivery to a subscriber, checked as `POST /v1/replays` checks it:
    a subscriber no longer configured (nothing would send its rows) is refused with the reason."""
    gateway = gateway_of(request)
    event_id = request.path_params["event_id"]
    subscriber = form.get("subscriber_id")
    try:
        replay = ReplayRequest.from_dict(
            {
                "event_id": event_id,
                "subscriber_id": subscriber,
                "states": ["dead", "delivered", "expired"],
            },
            [s.id for s in gateway.settings.subscribers],
        )
        # the event may be gone since its page was shown (retention): refused as a typo is
        result = await replay_deliveries(
            gateway.store, replay, gateway.clock(), gateway.settings.subscribers
        )
    except ValueError as exc:
        context = {
            "title": "Not delivered again",
            "message": f"Nothing was requeued: {exc}.",
            "back": f"/console/events/{event_id}",
        }
        return render(request, "message.html", context, 422)
    if gateway.dispatcher is not None:
        gateway.dispatcher.wake()
    await audit(
        request,
        "deliver_again",
        event_id,
        subscriber=replay.subscriber_id,
        requeued=result.get("requeued", 0),
        added=result.get("added", 0),
    )
    return RedirectResponse(f"/console/events/{event_id}?requeued={result.get('requeued', 0)}", 303)


@page
async def audit_page(request: Request) -> Response:
    gateway = gateway_of(request)
    try:  # `before`: the oldest id of the page shown, from its "Older entries" link
        before = int(request.query_params.get("before", "0")) or None
    except ValueError:
        before = None
    if before is not None and not 0 < before <= MAX_ID:  # an edited URL: no id is out there
        before = None
    entries = await gateway.store.read(
        lambda tx: queries.audit_entries(tx, AUDIT_PAGE, before=before)
    )
    older = entries[-1]["id"] if len(entries) == AUDIT_PAGE else None
    context = {"section": "audit", "entries": entries, "older": older}
    return render(request, "audit.html", context)


def routes() -> list[Route]:
    return [
        Route("/", overview, methods=["GET"]),
        Route("/events", events, methods=["GET"]),
        Route("/events/stream", stream, methods=["GET"]),
        Route("/events/{event_id}", event_page, methods=["GET"]),
        Route("/events/{event_id}/deliver", deliver_again, methods=["POST"]),
        Route("/audit", audit_page, methods=["GET"]),
    ]
