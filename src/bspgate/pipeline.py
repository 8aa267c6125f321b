"""One path in: mapped drafts -> identity -> complete, validated CloudEvents -> events + outbox.

`ingest()` runs inside one store transaction (a `StoreTx`), so the raw payload, the identity
changes, the events and one outbox row per (event, matching subscriber) commit together, or not
at all. The same function serves the server, `bspgate replay` and (over the in-memory store)
`bspgate normalize` and the golden cases, so all of them produce exactly the same events.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from fnmatch import fnmatchcase
from functools import partial
from typing import Any

import orjson
import structlog

from bspgate.config import Channel, Subscriber
from bspgate.delivery import operational
from bspgate.errors import CanonicalValidationError, StoreError
from bspgate.identity.evidence import shared_phones
from bspgate.identity.resolver import (
    MERGED,
    IdentityResolver,
    Notice,
    Observation,
    UnresolvableContact,
)
from bspgate.ids import event_id
from bspgate.mapping.engine import Draft, MappingResult
from bspgate.schema.catalog import describe
from bspgate.schema.validate import EventValidator
from bspgate.store.base import ContactRow, RawRecord, Store, StoreTx, follow_merged

_log = structlog.get_logger("bspgate.pipeline")

RECEIVED = "whatsapp.message.received"
STATUS = "whatsapp.message.status"
IDENTITY_CHANGED = "whatsapp.contact.identity_changed"
CONTACT_MERGED = "whatsapp.contact.merged"


class InvalidEvents(Exception):
    """An event failed the canonical schema: the whole payload is quarantined instead."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(slots=True)
class IngestOutcome:
    raw_id: str
    state: str
    events: list[dict[str, Any]] = field(default_factory=list)
    duplicates: int = 0
    superseded: int = 0
    issues: list[str] = field(default_factory=list)
    deliveries: int = 0


class Fanout:
    """Which subscribers get which events: `events` globs on the type, `channels` ids or `*`."""

    def __init__(self, subscribers: tuple[Subscriber, ...], schema_base: str = "") -> None:
        self.subscribers = subscribers
        self.schema_base = schema_base  # events get dataschema = {schema_base}/{type}.json
        self.holds = any(s.require_phone for s in subscribers)
        # (type, channel) -> subscribers whose `events` and `channels` accept it: the glob
        # matching runs once per pair, not once per event (a handful of types and channels)
        self._routes: dict[tuple[str, str], tuple[Subscriber, ...]] = {}

    def _routed(self, event_type: str, channel_id: str) -> tuple[Subscriber, ...]:
        key = (event_type, channel_id)
        routed = self._routes.get(key)
        if routed is None:
            routed = tuple(
                s
                for s in self.subscribers
                if any(fnmatchcase(event_type, pattern) for pattern in s.events)
                and ("*" in s.channels or channel_id in s.channels)
            )
            if len(self._routes) < 4096:  # bounded: types and channel ids come from config
                self._routes[key] = routed
        return routed

    def matching(
        self, event_type: str, channel_id: str, event: dict[str, Any] | None = None
    ) -> list[Subscriber]:
        """Subscribers for an event; with `event`, each one's `filter:` must hold too."""
        return [
            s
            for s in self._routed(event_type, channel_id)
            if s.filter is None or event is None or s.filter.matches(event)
        ]


def schema_base(public_url: str) -> str:
    """Where the per-type event schemas are served: `dataschema` = {schema_base}/{type}.json."""
    return public_url.rstrip("/") + "/v1/schemas"


def contact_data(contact: ContactRow) -> dict[str, Any]:
    return {
        "id": contact.id,
        "bsuid": contact.bsuid,
        "parent_bsuid": contact.parent_bsuid,
        "phone": contact.phone,
        "username": contact.username,
        "name": contact.name,
    }


# Draft values that identity and the store read before the event is validated: a payload
# carrying an object or a list there is refused with a reason, not with a database error.
_TEXT_FIELDS = (
    *(("contact", key) for key in ("bsuid", "parent_bsuid", "phone", "username", "name")),
    ("message", "id"),
)


def _not_text(data: dict[str, Any]) -> str | None:
    """The first of `_TEXT_FIELDS` holding something other than a string or null."""
    for section, key in _TEXT_FIELDS:
        part = data.get(section)
        value = part.get(key) if isinstance(part, dict) else None
        if value is not None and not isinstance(value, str):
            return f"data.{section}.{key} is {type(value).__name__}, not a string"
    return None


def _resolve(
    tx: StoreTx, resolver: IdentityResolver, channel: Channel, draft: Draft
) -> tuple[ContactRow, dict[str, Any]]:
    data = draft.data
    if (wrong := _not_text(data)) is not None:
        raise UnresolvableContact(wrong)
    seen = Observation.from_contact_data(data["contact"])
    if draft.type == IDENTITY_CHANGED:
        if not seen.bsuid and not seen.phone:
            # "the contact after the change" would have no identifier: nothing to relink to
            raise UnresolvableContact("the identity change names neither a new BSUID nor a phone")
        previous = data["previous"]
        contact, old_bsuid, old_phone = resolver.relink(
            seen, previous["bsuid"], previous["phone"], draft.time
        )
        # what the contact had before fills what the announcement left out; the draft itself
        # stays untouched, so a retried transaction (PostgreSQL conflicts) starts from the same
        filled = {"bsuid": previous["bsuid"] or old_bsuid, "phone": previous["phone"] or old_phone}
        change = "bsuid_changed" if seen.bsuid or previous["bsuid"] else "phone_changed"
        return contact, {"change": change, "previous": filled}
    if draft.type == STATUS and not seen.bsuid and not seen.phone:
        # identity rule 8: a status without identifiers resolves through our send record
        contact_id = tx.contact_for_send(channel.id, data["message"]["id"])
        found = follow_merged(tx.contact(contact_id) if contact_id else None, tx.contact)
        if found is None:
            raise UnresolvableContact("status for a message this gateway did not send")
        return found, {}
    contact = resolver.observe(seen, draft.time)
    for shared in shared_phones(draft.type == RECEIVED, draft.data):
        # rule 10: the person answered a request to share their number
        contact = resolver.observe(replace(seen, phone=shared), draft.time)
    if draft.type == RECEIVED:
        tx.mark_inbound(contact.id, channel.id, data["message"]["timestamp"] or draft.time)
    return contact, {}


# Status order per message: accepted < sent < delivered < read < played; failed and deleted are
# terminal (reachable from any earlier status, left by none).
STATUS_RANK = {
    "accepted": 0,
    "sent": 1,
    "delivered": 2,
    "read": 3,
    "played": 4,
    "failed": 100,
    "deleted": 100,
}


def _moves_forward(tx: StoreTx, channel_id: str, event: dict[str, Any], now: str) -> bool:
    message = event["data"]["message"]
    status = message["status"]
    return tx.advance_status(channel_id, message["id"], status, STATUS_RANK[status], now)


def complete_event(
    draft: Draft, channel: Channel, contact: ContactRow, raw_id: str
) -> dict[str, Any]:
    """The CloudEvent for a resolved draft (field order fixed for stable bodies)."""
    data = dict(draft.data)
    data.setdefault("handled_by", None)  # v1.1: on every event; "standby" only where mapped
    data["channel"] = {
        "id": channel.id,
        "provider": channel.provider,
        "portfolio": channel.portfolio,
        "business_phone": draft.data["channel"]["business_phone"] or channel.business_phone,
    }
    data["contact"] = contact_data(contact)
    data["raw_id"] = raw_id
    return {
        "specversion": "1.0",
        "id": draft.id,
        "type": draft.type,
        "source": f"/channels/{channel.id}",
        "subject": contact.id,
        "time": draft.time,
        "datacontenttype": "application/json",
        "data": data,
    }


def ingest(
    tx: StoreTx,
    *,
    channel: Channel,
    raw: RawRecord,
    mapped: MappingResult,
    validator: EventValidator,
    fanout: Fanout,
    now: str,
    now_epoch: float,
    store_raw: bool = True,
) -> IngestOutcome:
    """Store one webhook's raw payload, events and outbox rows. Raises `InvalidEvents`."""
    outcome = IngestOutcome(raw_id=raw.id, state="processed", issues=list(mapped.issues))
    resolver = IdentityResolver(
        tx,
        channel.portfolio,
        channel.id,
        now,
        now_epoch,
        holds=fanout.holds,
    )
    store = _EventWriter(
        tx, channel, raw.id, validator, fanout, now, now_epoch, outcome, raw.traceparent
    )
    for draft in mapped.drafts:
        if tx.event_exists(draft.id):
            outcome.duplicates += 1
            continue
        try:
            contact, resolved = _resolve(tx, resolver, channel, draft)
        except UnresolvableContact as exc:
            outcome.issues.append(f"rule {draft.rule} event {draft.id}: {exc}")
            continue
        for notice in resolver.take_notices():
            # a phone reassigned to another contact (rule 6), two contacts merged (rule 8)
            store.write(notice_draft(channel.id, draft, notice), notice.contact, notice.data)
        store.write(draft, contact, resolved)
    if outcome.issues:
        outcome.state = "quarantined"
    elif (outcome.duplicates or outcome.superseded) and not outcome.events:
        outcome.state = "duplicate"
    if store_raw and outcome.state != "duplicate":
        reason = "; ".join(outcome.issues) if outcome.issues else None
        tx.insert_raw(_with_state(raw, outcome.state, reason, len(outcome.events)))
        if outcome.state == "quarantined":  # operators asking for bspgate.* hear of it
            operational.quarantined(tx, fanout.subscribers, raw, reason, now=now_epoch, stamp=now)
    return outcome


def notice_draft(channel_id: str, cause: Draft, notice: Notice) -> Draft:
    """The event draft for an identity notice, caused by (and timed as) the payload `cause`."""
    event_type = CONTACT_MERGED if notice.kind == MERGED else IDENTITY_CHANGED
    return Draft(
        id=event_id(channel_id, event_type, notice.key),
        type=event_type,
        key=notice.key,
        time=cause.time,
        rule=f"identity_{notice.kind}",
        position=cause.position,
        data={
            "channel": {"business_phone": cause.data["channel"]["business_phone"]},
            "contact": {},
            # a notice is the gateway's inference, not a delivery on the standby field
            "handled_by": None,
        },
    )


class _EventWriter:
    """Completes, validates and stores events with their outbox rows, for one ingest."""

    def __init__(
        self,
        tx: StoreTx,
        channel: Channel,
        raw_id: str,
        validator: EventValidator,
        fanout: Fanout,
        now: str,
        now_epoch: float,
        outcome: IngestOutcome,
        traceparent: str | None = None,
    ) -> None:
        self.tx, self.channel, self.raw_id = tx, channel, raw_id
        self.validator, self.fanout = validator, fanout
        self.now, self.now_epoch, self.outcome = now, now_epoch, outcome
        self.traceparent = traceparent

    def write(
        self, draft: Draft, contact: ContactRow, resolved: dict[str, Any] | None = None
    ) -> None:
        event = complete_event(draft, self.channel, contact, self.raw_id)
        if resolved:
            event["data"].update(resolved)
        describe(event, self.fanout.schema_base, self.traceparent)
        try:
            self.validator.validate(event)
        except CanonicalValidationError as exc:
            raise InvalidEvents(
                f"rule {draft.rule}: event fails the canonical schema: {exc}"
            ) from exc
        body = orjson.dumps(event).decode()
        if draft.type == STATUS and not _moves_forward(self.tx, self.channel.id, event, self.now):
            # stored for the record, never delivered: it would move the message backwards
            self.tx.insert_event(event, body, self.now, superseded=True)
            self.outcome.superseded += 1
            return
        seq = self.tx.insert_event(event, body, self.now)
        for subscriber in self.fanout.matching(event["type"], self.channel.id, event):
            held = subscriber.require_phone and not contact.phone
            self.tx.insert_delivery(
                seq,
                event["id"],
                subscriber.id,
                contact.id,
                "held" if held else "pending",
                self.now_epoch,
                self.now,
            )
            self.outcome.deliveries += 1
        self.outcome.events.append(event)


def quarantine(
    tx: StoreTx,
    raw: RawRecord,
    reason: str,
    fanout: Fanout | None = None,
    now: str = "",
    now_epoch: float = 0.0,
) -> None:
    """Store a payload that produced no acceptable event, with the reason."""
    tx.insert_raw(_with_state(raw, "quarantined", reason, 0))
    if fanout is not None:
        operational.quarantined(tx, fanout.subscribers, raw, reason, now=now_epoch, stamp=now)


_DIGIT_RUN = re.compile(r"\d{5,}")


def failure_reason(exc: BaseException) -> str:
    """An unexpected ingest error as a quarantine reason: type and message, PII-free.

    Database messages may quote values (a key, a phone): digit runs are masked, NUL bytes (which
    PostgreSQL text refuses) dropped, and the text is cut to 300 characters.
    """
    text = _DIGIT_RUN.sub("<digits>", str(exc).replace("\x00", "")).splitlines()
    first = text[0] if text else ""
    return f"ingest failed ({type(exc).__name__}): {first}"[:300]


async def ingest_or_quarantine(
    store: Store,
    work: Callable[[StoreTx], IngestOutcome],
    raw: RawRecord,
    fanout: Fanout | None = None,
) -> IngestOutcome:
    """Run one webhook's ingest; whatever goes wrong, the raw payload ends stored.

    The last-resort path of the contract's "never a 5xx for a payload's content": events that
    fail the schema (`InvalidEvents`) and any unexpected error while ingesting (a database
    refusing a value, such as PostgreSQL and U+0000 in a name; a bug) store the raw payload as
    quarantined, with the reason, in a fresh transaction. Only when that transaction cannot
    commit either does `StoreError` reach the caller (503: nothing was acknowledged). It is a
    function of the ingest layer, not of the HTTP route, so it holds wherever ingest runs.
    """
    try:
        outcome: IngestOutcome = await store.transaction(work)
        return outcome
    except InvalidEvents as exc:
        reason = exc.reason
    except Exception as exc:  # the last resort: the payload is kept, the error named
        reason = failure_reason(exc)
        _log.error("ingest.failed_quarantined", raw_id=raw.id, error=reason)
    try:
        # `fanout`: subscribers asking for bspgate.* hear of the quarantine (same transaction)
        epoch = datetime.fromisoformat(raw.received_at.replace("Z", "+00:00")).timestamp()
        await store.transaction(
            partial(
                quarantine,
                raw=raw,
                reason=reason,
                fanout=fanout,
                now=raw.received_at,
                now_epoch=epoch,
            )
        )
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"the quarantine of {raw.id} failed too: {failure_reason(exc)}") from exc
    return IngestOutcome(raw.id, "quarantined", issues=[reason])


def _with_state(raw: RawRecord, state: str, reason: str | None, count: int) -> RawRecord:
    return replace(raw, state=state, reason=reason, event_count=count)
