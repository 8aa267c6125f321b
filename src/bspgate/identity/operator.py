"""What an operator does to identities by hand: merge two contacts (rule 11) and erase one.

Both run inside one store transaction (a `StoreTx` with the SQL contact queries) and answer the
outcome; both tell downstream with an event of their own (`whatsapp.contact.merged` with
`by: operator`, `whatsapp.contact.erased`). An operator event comes from no provider payload:
its `raw_id` is null and its channel is the one the contact was last heard on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from bspgate.config import Channel, Settings
from bspgate.identity.resolver import MERGED, IdentityResolver, Notice
from bspgate.ids import event_id
from bspgate.pipeline import CONTACT_MERGED, IDENTITY_CHANGED, Fanout, contact_data
from bspgate.schema.catalog import describe
from bspgate.schema.validate import EventValidator
from bspgate.store.base import ContactRow, follow_merged
from bspgate.times import iso

CONTACT_ERASED = "whatsapp.contact.erased"


class OperatorRefused(Exception):
    """The request cannot be done as asked: `status` and `code` for the problem answer."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        self.status, self.code, self.detail = status, code, detail
        super().__init__(detail)


@dataclass(frozen=True, slots=True)
class OperatorContext:
    settings: Settings
    fanout: Fanout
    validator: EventValidator
    stamp: str  # RFC 3339 UTC, the moment of the request
    epoch: float
    key_name: str  # the API key (or "cli") that asked

    @classmethod
    def at(
        cls,
        settings: Settings,
        fanout: Fanout,
        validator: EventValidator,
        moment: datetime,
        key_name: str,
    ) -> OperatorContext:
        """The context of one operator request made at `moment`."""
        return cls(settings, fanout, validator, iso(moment), moment.timestamp(), key_name)


def _channel_of(tx: Any, ctx: OperatorContext, contact: ContactRow) -> Channel:
    """The channel an operator event names: where the contact was last heard."""
    channel_id = tx.last_event_channel(contact.id)
    channel = ctx.settings.channel(channel_id) if channel_id else None
    if channel is None:
        channel = next((c for c in ctx.settings.channels if c.portfolio == contact.portfolio), None)
    if channel is None:
        raise OperatorRefused(409, "no_channel", "no configured channel serves this portfolio")
    return channel


def _event(
    channel: Channel,
    event_type: str,
    key: str,
    contact: dict[str, Any],
    extra: dict[str, Any],
    stamp: str,
) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id(channel.id, event_type, key),
        "type": event_type,
        "source": f"/channels/{channel.id}",
        "subject": contact["id"],
        "time": stamp,
        "datacontenttype": "application/json",
        "data": {
            "channel": {
                "id": channel.id,
                "provider": channel.provider,
                "portfolio": channel.portfolio,
                "business_phone": channel.business_phone,
            },
            "contact": contact,
            "raw_id": None,
            "handled_by": None,  # v1.1: on every event; an operator's act is no standby delivery
            **extra,
        },
    }


def _store(
    tx: Any,
    ctx: OperatorContext,
    event: dict[str, Any],
    subscribers: list[str],
    held: frozenset[str] = frozenset(),
) -> None:
    """Store an event raised outside a payload, with a delivery for each subscriber (`held`:
    those that require a phone, when its contact has none, as the pipeline holds them)."""
    describe(event, ctx.fanout.schema_base, None)  # dataschema, as on every event
    ctx.validator.validate(event)
    if tx.event_exists(event["id"]):
        return
    row = {**event, "data": {**event["data"], "raw_id": ""}}  # no raw payload behind it
    seq = tx.insert_event(row, orjson.dumps(event).decode(), ctx.stamp)
    for subscriber_id in subscribers:
        state = "held" if subscriber_id in held else "pending"
        tx.insert_delivery(
            seq, event["id"], subscriber_id, event["subject"], state, ctx.epoch, ctx.stamp
        )


def notice_events(tx: Any, ctx: OperatorContext, channel: Channel, notices: list[Notice]) -> None:
    """Identity notices raised outside a payload (an operator merge, rule 11; a send answer's
    pair, rule 10) as their events: `merged`, or `identity_changed` for a reassigned phone."""
    for notice in notices:
        event_type = CONTACT_MERGED if notice.kind == MERGED else IDENTITY_CHANGED
        data = contact_data(notice.contact)
        event = _event(channel, event_type, notice.key, data, notice.data, ctx.stamp)
        matching = ctx.fanout.matching(event_type, channel.id, event)
        # held for a subscriber that requires a phone when the contact has none, as from a
        # payload (an erasure's event, which never has one, is not held: see `erase`)
        held = frozenset(s.id for s in matching if s.require_phone and not notice.contact.phone)
        _store(tx, ctx, event, [s.id for s in matching], held)


def operator_merge(tx: Any, ctx: OperatorContext, into_id: str, from_id: str) -> dict[str, Any]:
    """Merge contact `from_id` into `into_id` (rule 11); answers the survivor's view."""
    into = follow_merged(tx.contact(into_id), tx.contact)
    absorbed = follow_merged(tx.contact(from_id), tx.contact)
    if into is None or absorbed is None:
        missing = into_id if into is None else from_id
        raise OperatorRefused(404, "unknown_contact", f"no contact {missing!r}")
    if into.id == absorbed.id:
        raise OperatorRefused(409, "already_merged", "both ids resolve to the same contact")
    if into.portfolio != absorbed.portfolio:
        raise OperatorRefused(409, "other_portfolio", "contacts of two portfolios never merge")
    if tx.contact_erased(into.id) or tx.contact_erased(absorbed.id):
        raise OperatorRefused(409, "erased", "an erased contact cannot be merged")
    channel = _channel_of(tx, ctx, into)
    resolver = IdentityResolver(
        tx, into.portfolio, channel.id, ctx.stamp, ctx.epoch, holds=ctx.fanout.holds
    )
    survivor = resolver.merge(into, absorbed, "operator", key=ctx.key_name, into_first=True)
    notice_events(tx, ctx, channel, resolver.take_notices())
    view: dict[str, Any] = tx.contact_view(survivor.id)
    return view


def erase(tx: Any, ctx: OperatorContext, contact_id: str) -> dict[str, Any] | None:
    """Erase a contact everywhere and tell every subscriber that ever received it (v1.1),
    counting one with an attempt in flight: the erasure lets that attempt finish, and the
    notice, queued behind it for the same contact, goes only after its answer is stored."""
    # a merged contact's id resolves to the survivor (rule 8): erasing it erases the person
    contact = follow_merged(tx.contact(contact_id), tx.contact)
    if contact is None:
        return None
    if (erased_at := tx.erased_at(contact.id)) is not None:
        # erased before: none of the person's identifiers is left to search for, and the
        # notice went then (once, canonical.md): nothing to do, nothing to count again
        return {"already_erased": True, "erased_at": erased_at, "notified": 0}
    channel = _channel_of(tx, ctx, contact)
    subscribers = tx.subscribers_that_received(contact.id)
    # the same number in another portfolio is another, unrelated contact (rule 1)
    foreign = [c.id for c in ctx.settings.channels if c.portfolio != contact.portfolio]
    summary: dict[str, Any] = tx.erase_contact(
        contact.id, ctx.epoch, ctx.stamp, requested_by=ctx.key_name, foreign_channels=foreign
    )
    empty = {k: None for k in ("bsuid", "parent_bsuid", "phone", "username", "name")}
    event = _event(
        channel,
        CONTACT_ERASED,
        f"erased:{contact.id}",
        {"id": contact.id, **empty},
        {"erased_at": ctx.stamp},
        ctx.stamp,
    )
    _store(tx, ctx, event, subscribers)
    summary["notified"] = len(subscribers)
    return summary
