"""Operator actions shared by `/v1` and the CLI: dead letters, replays, subscriber switches.

- Replaying deliveries puts dead (and, when asked, delivered or expired) deliveries back in the
  outbox with their attempt count reset; a subscriber added later can be given the stored events
  it never had. The `webhook-id` stays the event id, so receivers de-duplicate a re-delivery.
- Replaying quarantined payloads runs each stored raw payload through the current mappings (after
  a mapping fix): the events it should have produced are stored once (event ids are deterministic,
  so a second replay finds them and adds nothing), and the raw payload's state is updated.
Nothing here talks HTTP or SQL directly: the store runs the statements, the pipeline the rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache, partial
from typing import TYPE_CHECKING, Any

from bspgate.delivery import operational
from bspgate.masking import mask_url
from bspgate.pipeline import Fanout
from bspgate.processing import Poisoned, map_raw, process_batch
from bspgate.store.base import RawRecord, Store, empty_backlog
from bspgate.store.sql_outbox import ReplayScope
from bspgate.times import comparable, rfc3339_fields

if TYPE_CHECKING:
    from bspgate.config import Subscriber
    from bspgate.context import GatewayContext

DEFAULT_LIMIT = 1000


REPLAY_SCOPES = ("event_id", "subscriber_id", "type", "since", "until")
NAME_WHAT = (
    'name what to replay: event_id, subscriber_id, type, since or until; "all": true for every '
    'dead letter; or "quarantined": true (bspgate replay: --event, --subscriber, --type, '
    "--since, --until, --all or --quarantined)"
)
NOT_CONFIGURED = "not in the config: no lane would send them"


class UnknownReference(ValueError):
    """A replay names a time, subscriber or event type that does not parse or exist (422)."""


class SubscriberDisabled(Exception):
    """An operator asked to retry a disabled subscriber: nothing would be sent (409)."""

    def __init__(self, subscriber_id: str, reason: str | None) -> None:
        self.subscriber_id, self.reason = subscriber_id, reason or "disabled"
        self.remedy = f"bspgate subscribers enable {subscriber_id}"
        super().__init__(
            f"subscriber {subscriber_id!r} is disabled ({self.reason}): nothing is retried "
            f"until it is enabled again ({self.remedy}, or "
            f"POST /v1/subscribers/{subscriber_id}/enable)"
        )


def replay_flag(data: dict[str, Any], key: str) -> bool:
    """A replay's switch (`all`, `dry_run`, `quarantined`): a JSON boolean, absent is false
    (`"false"` read with `bool()` would be true)."""
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f'"{key}" is true or false')
    return value


def replay_limit(data: dict[str, Any]) -> int:
    """A replay's `limit` (deliveries, or quarantined payloads): an integer, 1 to 100000."""
    value = data.get("limit", DEFAULT_LIMIT)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100_000:
        raise ValueError("limit is an integer from 1 to 100000")
    return value


@cache
def event_types() -> frozenset[str]:
    """The event types of the canonical schema (plus the operational `bspgate.*` ones)."""
    from bspgate.schema.validate import canonical_schema

    schema = canonical_schema()
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            kind = node.get("properties", {}).get("type") if "properties" in node else None
            if isinstance(kind, dict):
                found.update(v for v in kind.get("enum", []) if isinstance(v, str))
                if isinstance(kind.get("const"), str):
                    found.add(kind["const"])
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(schema)
    return frozenset(t for t in found if "." in t) | frozenset(operational.TYPES)


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """Which deliveries to send again. `states` defaults to dead letters only."""

    event_id: str | None = None
    subscriber_id: str | None = None
    type: str | None = None
    since: str | None = None
    until: str | None = None
    states: tuple[str, ...] = ("dead",)
    dry_run: bool = False
    limit: int = DEFAULT_LIMIT

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], subscribers: Iterable[str] | None = None
    ) -> ReplayRequest:
        """Check a replay request: `ValueError` when malformed or when it names nothing (a
        filter, or `"all": true`: never read as everything), `UnknownReference` (422) for an
        unparseable time, an unknown subscriber (of `subscribers`) or event type. The one check
        of `POST /v1/replays`, `bspgate replay` and the console."""
        states = data.get("states") or ["dead"]
        if not isinstance(states, list) or not all(
            s in ("dead", "delivered", "expired") for s in states
        ):
            raise ValueError("states holds dead, delivered and/or expired")
        limit = replay_limit(data)
        dry_run = replay_flag(data, "dry_run")
        everything = replay_flag(data, "all")
        text = {k: data.get(k) for k in REPLAY_SCOPES}
        if not everything and all(value is None for value in text.values()):
            # a bare request must not re-deliver every subscriber's whole dead-letter queue
            raise ValueError(NAME_WHAT)
        for key, value in text.items():
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{key} must be a string")
            if value is not None and not value.strip():
                # an unset variable in a script names nothing: never read as "everything"
                raise ValueError(f"{key} is empty: leave it out or name one")
            if value is not None and "\x00" in value:
                raise ValueError(f"{key} holds a NUL character")
        for key in ("since", "until"):
            value = text[key]
            if isinstance(value, str):
                try:
                    text[key] = comparable(value)
                except ValueError as exc:
                    raise UnknownReference(f"{key}: {exc}") from None
        known = set(subscribers) if subscribers is not None else None
        if known is not None and text["subscriber_id"] and text["subscriber_id"] not in known:
            raise UnknownReference(
                f"subscriber_id: no subscriber {text['subscriber_id']!r} "
                f"(known: {', '.join(sorted(known)) or 'none'})"
            )
        if text["type"] and text["type"] not in event_types():
            raise UnknownReference(
                f"type: {text['type']!r} is not an event type "
                f"(known: {', '.join(sorted(event_types()))})"
            )
        return cls(states=tuple(states), dry_run=dry_run, limit=limit, **text)


async def replay_deliveries(
    store: Store,
    request: ReplayRequest,
    moment: datetime,
    subscribers: tuple[Subscriber, ...] | None = None,
) -> dict[str, Any]:
    """Requeue matching deliveries (and fan out to a later subscriber); answers what it did.

    `subscribers` are the configured ones: only their deliveries are requeued (no lane runs
    for a subscriber removed from the config, so its requeued rows would wait for good); the
    rows of others that matched are counted in `skipped`, per subscriber, and left as they are.
    None (tests, tools): no restriction. A subscriber added later gets only the stored events
    its `events`, `channels` and `filter` accept. `UnknownReference` (422) when `event_id`
    names no stored event.
    """
    now, stamp = moment.timestamp(), moment.isoformat()
    configured = None if subscribers is None else sorted(s.id for s in subscribers)
    chosen = tuple(s for s in subscribers or () if s.id == request.subscriber_id)
    fanout = Fanout(chosen)

    def accepts(event_type: str, channel_id: str, event: dict[str, Any]) -> bool:
        if not chosen:
            return True
        if event_type.startswith("bspgate."):  # of no channel: decided as they go out live
            return operational.wanted_by(chosen[0], event)
        return bool(fanout.matching(event_type, channel_id, event))

    def work(tx: Any) -> dict[str, Any]:
        if request.event_id is not None and not tx.event_exists(request.event_id):
            raise UnknownReference(f"event_id: no event {request.event_id!r}")  # a typo
        scope = ReplayScope(
            request.event_id,
            request.subscriber_id,
            request.type,
            request.since,
            request.until,
            request.states,
        )
        candidates = tx.replay_candidates(scope, limit=request.limit, configured=configured)
        result: dict[str, Any] = {
            "matched": len(candidates),
            "dry_run": request.dry_run,
            "deliveries": [c["id"] for c in candidates],
        }
        if configured is not None:
            skipped = tx.replay_skipped(scope, configured=configured)
            if skipped:
                result["skipped"] = {"reason": NOT_CONFIGURED, "subscribers": skipped}
        if not request.dry_run:
            result["requeued"] = tx.requeue([c["id"] for c in candidates], now, stamp)
        if request.subscriber_id:  # a dry run counts what it would add
            result["added"] = tx.fan_out_missing(
                request.subscriber_id,
                event_id=request.event_id,
                type_=request.type,
                since=request.since,
                until=request.until,
                now=now,
                stamp=stamp,
                limit=request.limit,
                accepts=accepts,
                require_phone=any(s.require_phone for s in chosen),
                dry_run=request.dry_run,
            )
        return result

    if request.dry_run:
        answer: dict[str, Any] = await store.read(work)
    else:
        answer = await store.transaction(work)
    return answer


@dataclass(slots=True)
class QuarantineReplay:
    replayed: list[dict[str, Any]] = field(default_factory=list)


async def replay_quarantined(
    gateway: GatewayContext,
    *,
    raw_id: str | None = None,
    dry_run: bool = False,
    limit: int = DEFAULT_LIMIT,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Re-run quarantined raw payloads through the current mappings (`progress(done, total)`
    is called after each payload). `UnknownReference` (422) when `raw_id` names no payload."""
    if raw_id:
        found = await gateway.store.read(lambda tx: tx.raw(raw_id))
        if found is None and await gateway.store.waiting_raw(raw_id) is not None:
            raise UnknownReference(
                f"raw_id: payload {raw_id!r} is not processed yet (received): nothing to replay"
            )
        if found is None:  # a typo is not "nothing to replay"
            raise UnknownReference(f"raw_id: no raw payload {raw_id!r}")
        raws = [found]
    else:
        raws = await gateway.store.read(lambda tx: tx.raws("quarantined", limit))
    report = []
    for raw in raws:
        report.append(await _replay_one(gateway, raw, dry_run))
        if progress is not None:
            progress(len(report), len(raws))
    outcomes: dict[str, int] = {}
    for entry in report:
        key = str(entry.get("state") or entry.get("would") or "unchanged")
        outcomes[key] = outcomes.get(key, 0) + 1
    return {
        "matched": len(raws),
        "dry_run": dry_run,
        "truncated": raw_id is None and len(raws) >= limit,
        "outcomes": outcomes,
        "payloads": report,
    }


async def _replay_one(gateway: GatewayContext, raw: RawRecord, dry_run: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"raw_id": raw.id, "channel": raw.channel_id}
    prepared = map_raw(gateway.rules, raw)  # the one ingest pipeline, as the processor runs it
    if prepared.channel is None:
        entry.update(state=raw.state, reason="its channel is no longer configured")
        return entry
    if any(issue.startswith("unparseable: ") for issue in prepared.mapped.issues):
        entry.update(
            state=raw.state, reason=prepared.mapped.issues[0].removeprefix("unparseable: ")
        )
        return entry
    if dry_run:  # a mapping issue keeps the whole payload quarantined, events or not
        issues = prepared.mapped.issues
        would = "would_stay_quarantined" if issues else "would_process"
        entry.update(events=len(prepared.mapped.drafts), issues=issues, would=would)
        return entry
    work = partial(
        process_batch,
        rules=gateway.rules,
        batch=[prepared],
        poisoned={},
        moment=gateway.clock(),
        replay=True,
    )
    try:
        (outcome,) = await gateway.store.transaction(work)
        entry.update(
            state=outcome.state,
            reason="; ".join(outcome.issues) or None,
            events=len(outcome.events),
            deliveries=outcome.deliveries,
        )
    except Poisoned as exc:  # an event fails the schema: the payload stays quarantined
        reason = exc.reason
        await gateway.store.transaction(lambda tx: tx.update_raw(raw.id, "quarantined", reason, 0))
        entry.update(state="quarantined", reason=reason, events=0)
    if entry.get("deliveries") and gateway.dispatcher is not None:
        gateway.dispatcher.wake()
    return entry


async def set_subscriber(
    store: Store,
    subscriber_id: str,
    enabled: bool,
    moment: datetime,
    reason: str = "disabled by an operator",
) -> None:
    """Enable (resume where it stopped) or disable a subscriber."""
    stamp = moment.isoformat()
    if enabled:
        await store.transaction(lambda tx: tx.enable_subscriber(subscriber_id, stamp))
    else:
        await store.transaction(lambda tx: tx.disable_subscriber(subscriber_id, reason, stamp))


def subscriber_view(
    subscriber: Subscriber, state: dict[str, Any] | None, backlog: dict[str, Any] | None
) -> dict[str, Any]:
    """A subscriber as `GET /v1/subscribers` and `bspgate subscribers list` show it: enabled or
    why not, since when it has been failing, and its backlog (times in RFC 3339)."""
    state = state or {}
    view: dict[str, Any] = rfc3339_fields(
        {
            "id": subscriber.id,
            "url": mask_url(subscriber.url),
            "events": list(subscriber.events),
            "channels": list(subscriber.channels),
            "enabled": not state.get("disabled_at"),
            "disabled_at": state.get("disabled_at"),
            "reason": state.get("reason"),
            "failing_since": state.get("failing_since"),
            "backlog": backlog or empty_backlog(),
        }
    )
    return view


async def retry_subscriber(store: Store, subscriber_id: str, moment: datetime) -> int:
    """Every pending delivery of a subscriber becomes due now; answers how many moved.

    The request is stored too: the subscriber's lane may run in another process (`serve`'s
    delivery worker) or replica, where a failing lane would otherwise wait for its next probe
    (up to 30 s) or a 429's pause; it reads the request and tries at once (`Dispatcher`).
    A disabled subscriber's lane claims nothing until it is enabled: `SubscriberDisabled`
    (with the stored reason), and nothing changes."""
    now, stamp = moment.timestamp(), moment.isoformat()

    def work(tx: Any) -> int:
        state = tx.subscriber_states().get(subscriber_id) or {}
        if state.get("disabled_at"):
            raise SubscriberDisabled(subscriber_id, state.get("reason"))
        moved: int = tx.pull_forward(subscriber_id, now, stamp)
        tx.request_retry(subscriber_id, now, stamp)
        return moved

    moved: int = await store.transaction(work)
    return moved
