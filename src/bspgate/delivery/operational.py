"""Operational events: what operators want to hear, as CloudEvents to subscribers asking for them.

A subscriber whose `events` globs match `bspgate.*` receives, signed and retried like any event:

- `bspgate.subscriber.disabled`: `subscriber`, `reason`, `disabled_at`
- `bspgate.subscriber.recovered`: `subscriber`, `failing_since`, `recovered_at`
- `bspgate.delivery.dead_lettered`: `subscriber`, `delivery_id`, `event_id`, `attempts`,
  `last_status`, `last_error`
- `bspgate.webhook.quarantined`: `raw_id`, `channel`, `provider`, `reason` (quoted values
  masked: no payload content)
- `bspgate.mapping.drift`: `provider`, `channel`, `fields` (names only)

They are written in the same transaction as what they report, into the events table (so
`GET /v1/events` shows them too) under one pseudo contact, so they arrive in order. Their ids
start with `ops_`; a dead-lettered operational event reports nothing (no event storms). Their
`time` and the times in their `data` are RFC 3339 in UTC with `Z`, as every time bspgate answers
(`bspgate.times`), whatever form the caller's stamp has.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

import orjson

from bspgate.config import Subscriber
from bspgate.ids import new_id
from bspgate.times import normalized, rfc3339_fields

if TYPE_CHECKING:
    from bspgate.config import Channel
    from bspgate.store.base import Store

OPS_CONTACT = "bspgate"
OPS_PREFIX = "ops_"
SOURCE = "/bspgate"


def wanted_by(subscriber: Subscriber, event: Mapping[str, Any]) -> bool:
    if not any(fnmatchcase(event["type"], pattern) for pattern in subscriber.events):
        return False
    return subscriber.filter is None or subscriber.filter.matches(event)


def emit(
    tx: Any,
    subscribers: Iterable[Subscriber],
    type_: str,
    subject: str,
    data: dict[str, Any],
    *,
    now: float,
    stamp: str,
) -> list[str]:
    """Store one operational event with an outbox row per subscriber wanting it; answers their
    ids (none: nothing stored)."""
    event = {
        "specversion": "1.0",
        "id": new_id("ops"),
        "source": SOURCE,
        "type": type_,
        "subject": subject,
        "time": normalized(stamp),
        "datacontenttype": "application/json",
        "data": rfc3339_fields(data),
    }
    targets = [s.id for s in subscribers if wanted_by(s, event)]
    if not targets:
        return []
    seq = tx.insert_operational_event(event, orjson.dumps(event).decode(), stamp)
    for subscriber_id in targets:
        tx.insert_delivery(seq, event["id"], subscriber_id, OPS_CONTACT, "pending", now, stamp)
    return targets


def masked_reason(reason: str | None) -> str | None:
    """A quarantine reason without the values it quotes (they come from the payload)."""
    if reason is None:
        return None
    return re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", reason)[:500]


def quarantined(
    tx: Any,
    subscribers: Iterable[Subscriber],
    raw: Any,
    reason: str | None,
    *,
    now: float,
    stamp: str,
) -> list[str]:
    """`bspgate.webhook.quarantined` for one stored raw payload."""
    data = {
        "raw_id": raw.id,
        "channel": raw.channel_id,
        "provider": raw.provider,
        "reason": masked_reason(reason),
    }
    return emit(tx, subscribers, "bspgate.webhook.quarantined", raw.id, data, now=now, stamp=stamp)


DRIFT = "bspgate.mapping.drift"
# every operational event type (the list above): replays and filters may name them
TYPES = (
    "bspgate.subscriber.disabled",
    "bspgate.subscriber.recovered",
    "bspgate.delivery.dead_lettered",
    "bspgate.webhook.quarantined",
    DRIFT,
)
DRIFT_EVERY = 3600.0  # one drift report per (channel, field set) an hour, per process


class DriftReporter:
    """`bspgate.mapping.drift` when a provider sends fields no rule reads (names only)."""

    def __init__(self, subscribers: tuple[Subscriber, ...]) -> None:
        self.subscribers = tuple(
            s for s in subscribers if any(fnmatchcase(DRIFT, p) for p in s.events)
        )
        self._last: dict[tuple[str, tuple[str, ...]], float] = {}

    async def report(
        self, store: Store, channel: Channel, fields: list[str], moment: datetime
    ) -> None:
        if not self.subscribers:
            return
        key = (channel.id, tuple(sorted(fields)))
        now = moment.timestamp()
        if now - self._last.get(key, -DRIFT_EVERY) < DRIFT_EVERY:
            return
        self._last[key] = now
        data = {"provider": channel.provider, "channel": channel.id, "fields": sorted(fields)}
        stamp = moment.isoformat()
        subscribers = self.subscribers
        await store.transaction(
            lambda tx: emit(tx, subscribers, DRIFT, channel.id, data, now=now, stamp=stamp)
        )
