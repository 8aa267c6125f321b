"""Deliveries and quarantine: dead letters grouped by subscriber and error, replays, retries,
subscriber switches, a signed test event; quarantined payloads re-run through the mapping.

Replays reuse `bspgate.operations` (the same calls as `POST /v1/replays`); "run the current
mapping" normalizes the stored body in memory (nothing stored) and "ingest now" is
`replay_quarantined` for that one payload. Every action is audited.
"""

from __future__ import annotations

import time
from datetime import UTC
from typing import Any

import orjson
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from bspgate.console import queries
from bspgate.console.render import mask_event, payload_view, render
from bspgate.console.session import action, audit, gateway_of, page, revealed
from bspgate.delivery.signing import Signer
from bspgate.errors import PayloadError
from bspgate.ids import new_id
from bspgate.masking import mask_url
from bspgate.normalize import Normalizer
from bspgate.operations import ReplayRequest, replay_deliveries, replay_quarantined, set_subscriber

QUARANTINE_PAGE = 100  # quarantined payloads a page lists; "Older entries" pages back


def _wake(request: Request) -> None:
    dispatcher = gateway_of(request).dispatcher
    if dispatcher is not None:
        dispatcher.wake()


@page
async def deliveries_page(request: Request) -> Response:
    gateway = gateway_of(request)
    subscriber = request.query_params.get("subscriber") or None
    error = request.query_params.get("error")
    groups, dead, states = await gateway.store.read(
        lambda tx: (
            queries.dead_groups(tx),
            queries.dead_letters(tx, subscriber_id=subscriber, error=error),
            tx.subscriber_states(),
        )
    )
    subscribers = [
        {
            "id": s.id,
            "url": mask_url(s.url),
            "enabled": not (states.get(s.id) or {}).get("disabled_at"),
            "reason": (states.get(s.id) or {}).get("reason"),
        }
        for s in gateway.settings.subscribers
    ]
    return render(
        request,
        "deliveries.html",
        {
            "section": "deliveries",
            "groups": groups,
            "dead": dead,
            "subscribers": subscribers,
            "subscriber": subscriber or "",
            "error": error,
            "notice": request.query_params.get("notice"),
        },
    )


def _back(notice: str) -> Response:
    from urllib.parse import quote

    return RedirectResponse(f"/console/deliveries?notice={quote(notice)}", 303)


@action
async def replay_selected(request: Request, form: FormData) -> Response:
    gateway = gateway_of(request)
    ids = [str(v) for v in form.getlist("delivery")]
    moment = gateway.clock()
    configured = [s.id for s in gateway.settings.subscribers]
    count = await gateway.store.transaction(
        lambda tx: tx.requeue(ids, moment.timestamp(), moment.isoformat(), configured)
    )
    _wake(request)
    await audit(request, "replay", "selection", deliveries=len(ids), requeued=count)
    return _back(_requeued(count, len(ids)))


def _requeued(count: int, asked: int) -> str:
    if count == asked:
        return f"{count} dead letter(s) requeued"
    return (
        f"{count} of {asked} dead letter(s) requeued: the others are no longer dead, or their "
        "subscriber is no longer configured (nothing would send them)"
    )


@action
async def replay_filter(request: Request, form: FormData) -> Response:
    """Replay every dead letter of a group (subscriber + error) or a filter (type, time)."""
    gateway = gateway_of(request)
    subscriber = str(form.get("subscriber_id") or "") or None
    if "error" in form:
        error = str(form.get("error") or "")
        rows = await gateway.store.read(
            lambda tx: queries.dead_letters(
                tx, subscriber_id=subscriber, error=error, limit=100_000
            )
        )
        ids = [r["id"] for r in rows]
        moment = gateway.clock()
        configured = [s.id for s in gateway.settings.subscribers]
        count = await gateway.store.transaction(
            lambda tx: tx.requeue(ids, moment.timestamp(), moment.isoformat(), configured)
        )
        result: dict[str, Any] = {"requeued": count, "asked": len(ids)}
    else:
        fields = {k: str(form.get(k) or "").strip() for k in ("type", "since", "until")}
        try:  # checked as `POST /v1/replays` checks them: times are instants, any offset
            replay = ReplayRequest.from_dict(
                {"subscriber_id": subscriber, **{k: v for k, v in fields.items() if v}},
                [s.id for s in gateway.settings.subscribers],
            )
        except ValueError as exc:
            return _back(f"Replay refused, nothing was requeued: {exc}")
        result = await replay_deliveries(
            gateway.store, replay, gateway.clock(), gateway.settings.subscribers
        )
    _wake(request)
    await audit(request, "replay", subscriber or "all", requeued=result.get("requeued", 0))
    requeued = result.get("requeued", 0)
    return _back(_requeued(requeued, result.get("asked", requeued)))


@action
async def retry_now(request: Request, form: FormData) -> Response:
    gateway = gateway_of(request)
    subscriber = str(form.get("subscriber_id") or "") or None
    moment = gateway.clock()
    now, stamp = moment.timestamp(), moment.isoformat()
    ids = [subscriber] if subscriber else [s.id for s in gateway.settings.subscribers]

    def work(tx: Any) -> tuple[int, int]:
        counts: tuple[int, int] = queries.retry_pending_now(tx, now, stamp, subscriber)
        for subscriber_id in ids:  # a failing lane, in the delivery worker, probes at once
            tx.request_retry(subscriber_id, now, stamp)
        return counts

    moved, overdue = await gateway.store.transaction(work)
    _wake(request)
    await audit(request, "retry_now", subscriber or "all", deliveries=moved)
    return _back(
        f"{moved} pending deliver(ies) made due now; {overdue} were due already "
        "(the subscriber is asked again at once)"
    )


@action
async def switch(request: Request, form: FormData) -> Response:
    gateway = gateway_of(request)
    subscriber_id = request.path_params["subscriber_id"]
    if subscriber_id not in {s.id for s in gateway.settings.subscribers}:
        return _back(f"no subscriber {subscriber_id}")
    if request.path_params["switch"] not in ("enable", "disable"):
        return _back("enable or disable only")
    enabled = request.path_params["switch"] == "enable"
    await set_subscriber(gateway.store, subscriber_id, enabled, gateway.clock())
    if enabled:
        _wake(request)
    await audit(request, "enable" if enabled else "disable", subscriber_id)
    return _back(f"{subscriber_id} {'enabled' if enabled else 'disabled'}")


@action
async def test_event(request: Request, form: FormData) -> Response:
    """POST a signed `bspgate.console.test` CloudEvent to the subscriber (nothing stored)."""
    gateway = gateway_of(request)
    found = [
        s for s in gateway.settings.subscribers if s.id == request.path_params["subscriber_id"]
    ]
    if not found:
        return _back("no such subscriber")
    subscriber = found[0]
    moment = gateway.clock().astimezone(UTC)
    event_id = new_id("evt")
    body = orjson.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "type": "bspgate.console.test",
            "source": "/console",
            "time": moment.isoformat().replace("+00:00", "Z"),
            "datacontenttype": "application/json",
            "data": {"test": True, "sent_by": "bspgate console"},
        }
    ).decode()
    headers = {
        "content-type": "application/cloudevents+json",
        "webhook-id": event_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        # signed as the dispatcher signs (every key of the subscriber, v1 or v1a)
        "webhook-signature": Signer(subscriber.secret_values()).sign(event_id, moment, body),
        "user-agent": "bspgate",
    }
    started = time.perf_counter()
    try:
        answer = await gateway.client.post(
            subscriber.url, content=body, headers=headers, timeout=subscriber.timeout
        )
        outcome = f"answered HTTP {answer.status_code}"
    except Exception as exc:  # any transport failure is the answer shown, not a console error
        outcome = f"failed: {type(exc).__name__}"
    latency = (time.perf_counter() - started) * 1000
    await audit(request, "test_event", subscriber.id, outcome=outcome)
    return _back(f"test event {event_id} to {subscriber.id}: {outcome} in {latency:.0f} ms")


# -- quarantine --------------------------------------------------------------------------------
def _payload_view(raw: Any, reveal: bool) -> Any:
    return payload_view(raw.body, raw.content_type, reveal)


@page
async def quarantine_page(request: Request) -> Response:
    """Quarantined payloads newest first, with their total; "Older entries" pages back."""
    gateway = gateway_of(request)
    before = request.query_params.get("before") or None
    items, total = await gateway.store.read(
        lambda tx: (
            queries.quarantined_page(tx, QUARANTINE_PAGE, before=before),
            queries.quarantined_count(tx),
        )
    )
    older = items[-1]["id"] if len(items) == QUARANTINE_PAGE else None
    context = {"section": "quarantine", "items": items, "total": total, "older": older}
    return render(request, "quarantine.html", context)


@page
async def quarantined_one(request: Request) -> Response:
    """One payload with what the current mapping makes of it now (dry run, nothing stored)."""
    gateway = gateway_of(request)
    raw_id = request.path_params["raw_id"]
    raw = await gateway.store.read(lambda tx: tx.raw(raw_id))
    if raw is None:
        return render(
            request,
            "message.html",
            {"title": "Unknown payload", "message": f"No payload {raw_id!r}."},
            404,
        )
    reveal = revealed(request)
    trial: dict[str, Any] | None = None
    if request.query_params.get("dry_run"):
        trial = {"events": [], "issues": []}
        channel = gateway.settings.channel(raw.channel_id)
        spec = gateway.mappings.get(channel.provider) if channel is not None else None
        if channel is None or spec is None:
            trial["issues"] = ["its channel is no longer configured"]
        else:
            try:
                outcome = Normalizer(spec, channel, gateway.validator).normalize_body(
                    raw.body, raw.content_type
                )
                trial["events"] = [e if reveal else mask_event(e) for e in outcome.events]
                trial["issues"] = list(outcome.issues)
                trial["state"] = outcome.state
            except PayloadError as exc:
                trial["issues"] = [str(exc)]
    return render(
        request,
        "quarantined.html",
        {
            "section": "quarantine",
            "raw": raw,
            "payload": _payload_view(raw, reveal),
            "trial": trial,
            "result": request.query_params.get("result"),
        },
    )


@action
async def ingest_now(request: Request, form: FormData) -> Response:
    gateway = gateway_of(request)
    raw_id = request.path_params["raw_id"]
    result = await replay_quarantined(gateway, raw_id=raw_id)
    entry = (result.get("payloads") or [{}])[0]
    await audit(request, "ingest_now", raw_id, state=entry.get("state"), events=entry.get("events"))
    state = entry.get("state", "unknown")
    return RedirectResponse(
        f"/console/quarantine/{raw_id}?result={state}:{entry.get('events', 0)}", 303
    )


def routes() -> list[Route]:
    return [
        Route("/deliveries", deliveries_page, methods=["GET"]),
        Route("/deliveries/replay", replay_selected, methods=["POST"]),
        Route("/deliveries/replay-filter", replay_filter, methods=["POST"]),
        Route("/deliveries/retry-now", retry_now, methods=["POST"]),
        Route("/subscribers/{subscriber_id}/test", test_event, methods=["POST"]),
        Route("/subscribers/{subscriber_id}/{switch:str}", switch, methods=["POST"]),
        Route("/quarantine", quarantine_page, methods=["GET"]),
        Route("/quarantine/{raw_id}", quarantined_one, methods=["GET"]),
        Route("/quarantine/{raw_id}/ingest", ingest_now, methods=["POST"]),
    ]
