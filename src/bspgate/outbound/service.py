"""One canonical send, end to end: validate, resolve, address, render, dry-run or send, record.

`SendService.submit` is what `POST /v1/messages` and `bspgate send` call. Order of checks (each
refusal a `SendError`, answered as RFC 9457 problem details, before any provider call): JSON
Schema of the canonical send -> channel -> BSUID format -> recipient -> send form -> addressing
rules -> service window -> the mapping's own refusals. Every send that reaches the provider is
recorded with its provider message id and contact, so later status webhooks without identifiers
resolve to the contact (identity rule 8 in `pipeline.py`).

Idempotency: a key is reserved in the store (unique index) before the provider call, so the same
key never calls the provider twice; within 24 h it answers the first answer again. A key whose
first attempt failed before anything reached the provider (connection refused) is freed for a
retry, and a refusal made before the call (a missing channel secret, the addressing rules) never
takes the key. An ambiguous outcome (no answer after the request was written, a 5xx) is stored as
`unknown` and answered as such (502, `send_outcome_unknown`) to every retry with that key: the
message may have gone, so only a new key sends again. A key left `pending` by a process that
died mid-call is settled `unknown` once it is older than `PENDING_LEASE`, never left hanging.
This module holds no SQL (the store's `# -- sends` methods) and no provider facts (the mappings).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import orjson
import structlog

from bspgate.config import Channel, Settings
from bspgate.describe import kind, pointer
from bspgate.errors import MappingLoadError, SendError
from bspgate.identity.evidence import answer_pairs
from bspgate.identity.operator import OperatorContext, notice_events
from bspgate.identity.resolver import IdentityResolver, Observation
from bspgate.ids import new_id
from bspgate.outbound.addressing import (
    PHONE_FORMAT,
    Address,
    IdentityView,
    NoIdentityView,
    check_bsuid,
    check_service_window,
    choose_address,
    normalize_phone,
    resolve_recipient,
)
from bspgate.outbound.client import DEFAULT_TIMEOUT, Sleep, check_configured, deliver
from bspgate.outbound.oauth import TokenCache
from bspgate.outbound.rewrite import (
    ProviderRequest,
    bsuid_supported,
    build_context,
    render_request,
    type_form,
)
from bspgate.outbound.spec import OutboundSpec, TypeForm, load_outbound
from bspgate.pipeline import Fanout, schema_base
from bspgate.schema.validate import EventValidator
from bspgate.store.base import ContactRow, Store, follow_merged

IDEMPOTENCY_WINDOW = timedelta(hours=24)
# A pending send older than this belongs to a process that died mid-call (a live one finishes
# within its provider timeout and retries): it is settled as `unknown`, never left hanging.
PENDING_LEASE = timedelta(minutes=2)
_log = structlog.get_logger("bspgate.outbound")

TITLES = {
    "invalid_request": "Invalid send request",
    "unknown_channel": "Unknown channel",
    "invalid_bsuid": "Invalid BSUID",
    "unknown_contact": "Unknown contact",
    "contact_erased": "The contact was erased",
    "recipient_conflict": "Recipient identifiers disagree",
    "auth_template_requires_phone": "Authentication template needs a phone number",
    "bsuid_send_unsupported": "BSUID sends are not supported",
    "bsuid_required": "No BSUID known",
    "phone_retired": "The phone number is retired",
    "outside_service_window": "Outside the 24 h service window",
    "unsupported_message": "The provider cannot carry this message",
    "unsupported_by_provider": "The provider has no such message",
    "channel_not_configured": "Channel not configured for sending",
    "idempotency_key_reused": "Idempotency key used for another request",
    "idempotency_in_progress": "A request with this idempotency key is in progress",
    "provider_error": "The provider rejected the send",
    "send_outcome_unknown": "The provider's answer was lost: the message may have been sent",
}


def title_for(code: str) -> str:
    return TITLES.get(code, code.replace("_", " ").capitalize())


@cache
def _send_validator() -> jsonschema.Draft202012Validator:
    text = resources.files("bspgate.outbound").joinpath("send.schema.json").read_text()
    schema = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _with_channel(payload: Any, channel_id: str | None) -> Any:
    # `channel_id` given by the caller (the CLI's --channel) fills a send's missing `channel`
    if channel_id and isinstance(payload, dict) and "channel" not in payload:
        return {**payload, "channel": channel_id}
    return payload


def validate_send(payload: Any) -> dict[str, Any]:
    """The canonical send, or `SendError(invalid_request)` naming the offending path."""
    if not isinstance(payload, dict):
        raise SendError("invalid_request", "the body must be a JSON object (a canonical send)")
    errors = list(_send_validator().iter_errors(payload))
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        assert error is not None
        where = pointer(error.absolute_path)
        if where == "/to/phone":  # jsonschema's message repeats the value: a phone number
            raise SendError("invalid_request", PHONE_FORMAT, pointer=where)
        # jsonschema's message quotes the value (a phone given in the wrong place, message
        # text): the reason names its kind instead
        message = error.message.replace(repr(error.instance), kind(error.instance))
        raise SendError("invalid_request", f"{where or 'the body'}: {message}", pointer=where)
    return {**payload, "to": normalize_phone(payload["to"])}


@dataclass(frozen=True, slots=True)
class SendPlan:
    """Everything decided before rendering: the form and the one address."""

    form: TypeForm
    address: Address
    warnings: tuple[str, ...]


def plan_send(
    view: IdentityView,
    channel: Channel,
    spec: OutboundSpec,
    send: Mapping[str, Any],
    now: datetime,
    *,
    store_checked: bool = True,
) -> SendPlan:
    """Rules 1-5 and the recipient, over a store view (pure: no I/O besides `view`)."""
    check_bsuid(send["to"])
    recipient = resolve_recipient(view, channel.portfolio, send["to"])
    form = type_form(spec, channel, send["type"], send)
    template = send.get("template") or {}
    address = choose_address(
        recipient,
        send_type=send["type"],
        category=template.get("category"),
        send_by=channel.send_by,
        bsuid_supported=bsuid_supported(spec, channel, form),
    )
    warnings: tuple[str, ...] = ()
    if send["type"] != "template":
        last = (
            view.last_inbound_at(recipient.contact_id, channel.id) if recipient.contact_id else None
        )
        warnings = check_service_window(
            last, policy=channel.service_window, now=now, checked=store_checked
        )
    return SendPlan(form, address, warnings)


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """An HTTP answer: 202 with the send, 200 with a dry-run request, or a replayed answer."""

    status: int
    body: dict[str, Any]
    replayed: bool = False


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class SendService:
    """Sends for one gateway. Specs are loaded on first use per provider, then kept."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None,
        client: httpx.AsyncClient | None,
        clock: Callable[[], datetime],
        sleep: Sleep = asyncio.sleep,
        mappings_dir: Path | None = None,
        provider_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self.clock = clock
        self.sleep = sleep
        self.mapping_dirs = (mappings_dir,) if mappings_dir else settings.mapping_dirs
        self.provider_timeout = provider_timeout
        self._specs: dict[str, OutboundSpec] = {}
        self.tokens = TokenCache()  # OAuth2 access tokens, shared by this gateway's sends
        self._events: tuple[Fanout, EventValidator] | None = None

    @property
    def _store(self) -> Store:
        """The store of a real send (a dry run or a mapping case runs without one)."""
        if self.store is None:
            raise RuntimeError("this send service has no store: only dry runs are possible")
        return self.store

    def _notice_context(self, moment: datetime) -> OperatorContext:
        """What identity events raised by a send answer are written with (made on first use)."""
        if self._events is None:
            base = schema_base(self.settings.server.public_url)
            self._events = (Fanout(self.settings.subscribers, schema_base=base), EventValidator())
        fanout, validator = self._events
        return OperatorContext.at(self.settings, fanout, validator, moment, "send answer")

    def spec(self, provider: str) -> OutboundSpec:
        """The provider's compiled `outbound.yaml` (a broken file is a 500 naming it)."""
        if provider not in self._specs:
            try:
                self._specs[provider] = load_outbound(self.mapping_dirs, provider)
            except MappingLoadError as exc:
                raise SendError("channel_not_configured", str(exc), status=500) from exc
        return self._specs[provider]

    def channel(self, payload: dict[str, Any], channel_id: str | None) -> Channel:
        name = channel_id or payload.get("channel")
        if not name:
            raise SendError("invalid_request", "channel: give the channel id to send from")
        channel = self.settings.channel(name)
        if channel is None:
            raise SendError("unknown_channel", f"no channel {name!r} is configured")
        return channel

    def render(
        self, send: dict[str, Any], channel: Channel, plan: SendPlan, send_id: str, now: datetime
    ) -> ProviderRequest:
        spec = self.spec(channel.provider)
        context = build_context(
            send,
            plan.address,
            channel,
            spec,
            send_id=send_id,
            public_url=self.settings.server.public_url,
            now=now,
        )
        return render_request(spec, plan.form, context, channel, now)

    async def dry_run(
        self, payload: Any, *, channel_id: str | None = None, use_store: bool = True
    ) -> SendOutcome:
        """The exact provider request, credentials masked; nothing is sent or stored."""
        send = validate_send(_with_channel(payload, channel_id))
        channel = self.channel(send, channel_id)
        spec = self.spec(channel.provider)
        now = self.clock()
        if use_store and self.store is not None:
            plan = await self.store.read(lambda tx: plan_send(tx, channel, spec, send, now))
        else:
            plan = plan_send(NoIdentityView(), channel, spec, send, now, store_checked=False)
        request = self.render(send, channel, plan, new_id("snd"), now)
        return SendOutcome(200, request.masked())

    async def submit(
        self, payload: Any, *, channel_id: str | None = None, idempotency_key: str | None = None
    ) -> SendOutcome:
        """Send one canonical message; answers 202 or a replayed answer, raises `SendError`."""
        send = validate_send(_with_channel(payload, channel_id))
        channel = self.channel(send, channel_id)
        send = {**send, "channel": channel.id}
        spec = self.spec(channel.provider)
        fingerprint = orjson.dumps(send, option=orjson.OPT_SORT_KEYS).decode()
        now = self.clock()
        if idempotency_key:
            replay = await self._replay(idempotency_key, fingerprint, now)
            if replay is not None:
                return replay
        plan = await self._store.read(lambda tx: plan_send(tx, channel, spec, send, now))
        send_id = new_id("snd")
        request = self.render(send, channel, plan, send_id, now)
        # a channel missing a secret is refused before the key is reserved: nothing was sent,
        # so the caller's retry with the same key, once the secret is added, sends
        check_configured(spec, request)
        row = {
            "id": send_id,
            "channel_id": channel.id,
            "contact_id": plan.address.recipient.contact_id,
            "idempotency_key": idempotency_key or None,
            "created_at": _iso(now),
            "request": fingerprint,
            "provider": channel.provider,
        }
        if not await self._store.transaction(lambda tx: tx.reserve_send(row)):
            replay = await self._replay(idempotency_key or "", fingerprint, now)
            if replay is not None:
                return replay
            raise SendError(
                "idempotency_in_progress", "retry after the first request finished", status=409
            )
        assert self.client is not None
        try:
            answer = await deliver(
                self.client,
                spec,
                request,
                sleep=self.sleep,
                timeout=self.provider_timeout,
                tokens=self.tokens,
            )
        except SendError as exc:
            if _ambiguous(exc):
                # the request may have reached the provider: this key answers `unknown` from now
                # on; sending again takes a new key (the caller's explicit decision)
                raise await self._record_unknown(send_id, plan, exc) from None
            await self._record_failure(send_id, plan, exc)
            raise
        body = await self._store.transaction(
            lambda tx: self._record_success(
                tx, send_id, channel, plan, answer.message_id, answer.body
            )
        )
        _log.info(
            "outbound.sent", send_id=send_id, channel=channel.id, addressed_by=body["addressed_by"]
        )
        return SendOutcome(202, body)

    async def _replay(self, key: str, fingerprint: str, now: datetime) -> SendOutcome | None:
        row = await self._store.read(lambda tx: tx.send_by_key(key))
        if row is None:
            return None
        created = datetime.fromisoformat(row["created_at"].replace("Z", "+00:00"))
        if now - created > IDEMPOTENCY_WINDOW:
            await self._store.transaction(lambda tx: tx.release_send_key(row["id"]))
            return None
        if row["request"] != fingerprint:
            raise SendError(
                "idempotency_key_reused",
                "this Idempotency-Key was used within 24 h for a different request",
            )
        if row["state"] == "pending" and now - _stamp(row) > PENDING_LEASE:
            row = await self._settle_dead(row, now)
        if row["state"] == "pending":
            raise SendError(
                "idempotency_in_progress",
                "the first request with this Idempotency-Key has not finished yet",
                status=409,
            )
        return SendOutcome(int(row["status"]), orjson.loads(row["answer"]), replayed=True)

    async def _record_unknown(self, send_id: str, plan: SendPlan, error: SendError) -> SendError:
        """Store an ambiguous outcome; answers the error every retry with the key gets too."""
        unknown = _unknown_error(send_id, error.detail, error.extra)
        await self._store_answer(send_id, plan.address.recipient.contact_id, unknown)
        # the detail may quote the provider's answer, which can hold the message or a number
        _log.warning(
            "outbound.outcome_unknown",
            send_id=send_id,
            provider_status=error.extra.get("provider_status"),
        )
        return unknown

    async def _settle_dead(self, row: dict[str, Any], now: datetime) -> dict[str, Any]:
        """A pending send whose process died mid-call: settled `unknown`, once."""
        from bspgate.problems import problem

        why = "the gateway stopped while the provider call was running"
        error = _unknown_error(row["id"], why)
        doc = problem(error.status, error.code, title_for(error.code), error.detail, **error.extra)
        answer, stamp = orjson.dumps(doc).decode(), _iso(now)
        await self._store.transaction(
            lambda tx: tx.settle_send(row["id"], "unknown", error.status, answer, stamp)
        )
        _log.warning("outbound.outcome_unknown", send_id=row["id"], reason=why)
        fresh: dict[str, Any] = await self._store.read(lambda tx: tx.send_record(row["id"]))
        return fresh

    async def _store_answer(self, send_id: str, contact_id: str | None, error: SendError) -> None:
        from bspgate.problems import problem

        doc = problem(error.status, error.code, title_for(error.code), error.detail, **error.extra)
        await self._store.transaction(
            lambda tx: tx.finish_send(
                send_id,
                contact_id=contact_id,
                provider_message_id=None,
                state="unknown",
                status=error.status,
                answer=orjson.dumps(doc).decode(),
                now=_iso(self.clock()),
            )
        )

    async def _record_failure(self, send_id: str, plan: SendPlan, error: SendError) -> None:
        from bspgate.problems import problem

        doc = problem(error.status, error.code, title_for(error.code), error.detail, **error.extra)
        retryable = bool(error.extra.get("retryable"))
        await self._store.transaction(
            lambda tx: tx.finish_send(
                send_id,
                contact_id=plan.address.recipient.contact_id,
                provider_message_id=None,
                state="failed",
                status=error.status,
                answer=orjson.dumps(doc).decode(),
                now=_iso(self.clock()),
                keep_key=not retryable,  # a retry with the same key must be able to try again
            )
        )

    def _record_success(
        self,
        tx: Any,
        send_id: str,
        channel: Channel,
        plan: SendPlan,
        message_id: str,
        answer: Any = None,
    ) -> dict[str, Any]:
        address = plan.address
        contact_id = address.recipient.contact_id
        moment = self.clock()
        stamp = _iso(moment)
        for bsuid, phone in answer_pairs(answer):
            # identity rule 10: the answer pairs the recipient's phone and BSUID (Cloud API)
            paired = IdentityResolver(tx, channel.portfolio, channel.id, stamp)
            found = paired.observe(Observation(bsuid=bsuid, phone=phone), stamp)
            if address.value in (bsuid, phone) or contact_id is None:
                # the answer names who holds the address now (a recycled number: the new
                # holder, not the customer the plan resolved): the send is theirs (rule 6)
                contact_id = found.id
            # a phone that moved here from another contact, or two contacts now one, are told
            # downstream as from a payload (rules 6 and 8)
            notices = paired.take_notices()
            if notices:
                notice_events(tx, self._notice_context(moment), channel, notices)
        if contact_id is None:
            # A recipient the store did not know: the contact is created from the address used,
            # so this send's statuses (and later inbound messages) land on one contact.
            # The send tells who the address is, not since when: no evidence time (rule 9).
            resolver = IdentityResolver(tx, channel.portfolio, channel.id, stamp)
            contact_id = resolver.addressed(
                address.value if address.kind == "bsuid" else None,
                address.value if address.kind == "phone" else None,
            ).id
        body: dict[str, Any] = {
            "id": send_id,
            "channel": channel.id,
            "provider": channel.provider,
            "provider_message_id": message_id,
            "addressed_by": address.kind,
            "contact_id": contact_id,
        }
        recipient = address.recipient
        if recipient.replaced_bsuid:
            body["replaced_bsuid"] = {"given": recipient.replaced_bsuid, "current": recipient.bsuid}
        if recipient.ignored_phone:
            body["ignored_phone"] = recipient.ignored_phone
        if plan.warnings:
            body["warnings"] = list(plan.warnings)
        recorded: str | None = message_id
        if tx.contact_for_send(channel.id, message_id) is not None:
            # The provider answered an id this channel already holds (a provider reusing ids,
            # or a stand-in). The send went out: it is answered and recorded, and the id keeps
            # correlating statuses to the first send's contact (one row per id and channel).
            recorded = None
            _log.warning(
                "outbound.provider_message_id_reused",
                send_id=send_id,
                channel=channel.id,
                provider=channel.provider,
            )
        tx.finish_send(
            send_id,
            contact_id=contact_id,
            provider_message_id=recorded,
            state="sent",
            status=202,
            answer=orjson.dumps(body).decode(),
            now=stamp,
        )
        return body

    async def lookup(self, send_id: str) -> dict[str, Any] | None:
        """A recorded send with the statuses seen for its provider message id."""
        return await self._store.read(lambda tx: _send_view(tx, send_id))


def _ambiguous(error: SendError) -> bool:
    """The provider may have acted: no answer after the request was written, or a 5xx."""
    if error.extra.get("outcome") == "unknown":
        return True
    status = error.extra.get("provider_status")
    return error.code == "provider_error" and isinstance(status, int) and status >= 500


def _unknown_error(send_id: str, why: str, facts: Mapping[str, Any] | None = None) -> SendError:
    """`send_outcome_unknown`: `why` says what happened, this says what it means (once)."""
    provider = {
        key: (facts or {})[key]
        for key in ("provider", "provider_status")
        if (facts or {}).get(key) is not None
    }
    return SendError(
        "send_outcome_unknown",
        f"{why}; the message may or may not have been sent. Every retry with this "
        "Idempotency-Key answers this; to send again, use a new key",
        status=502,
        outcome="unknown",
        send_id=send_id,
        **provider,
    )


def _stamp(row: dict[str, Any]) -> datetime:
    text = row.get("updated_at") or row["created_at"]
    return datetime.fromisoformat(str(text).replace("Z", "+00:00"))


def _send_view(tx: Any, send_id: str) -> dict[str, Any] | None:
    row = tx.send_record(send_id)
    if row is None:
        return None
    contact_ids: list[str] = []

    def visit(contact_id: str) -> ContactRow | None:
        contact_ids.append(contact_id)  # every id of the merge chain: statuses of all of them
        found: ContactRow | None = tx.contact(contact_id)
        return found

    if row["contact_id"]:
        follow_merged(visit(row["contact_id"]), visit)
        # a status pairing the addressed number with someone else's BSUID (a recycled number,
        # rule 6) lands on the number's new holder: its statuses of this message count too
        for taker in tx.phone_takers(list(contact_ids)):
            if taker not in contact_ids:
                follow_merged(visit(taker), visit)
    statuses = []
    answer = orjson.loads(row["answer"]) if row["answer"] else None
    # a reused provider id is kept in the answer only (the first send keeps the correlation)
    pmid = row["provider_message_id"] or (
        answer.get("provider_message_id") if row["state"] == "sent" and answer else None
    )
    for text in tx.status_event_bodies(row["channel_id"], contact_ids) if pmid else []:
        event = orjson.loads(text)
        message = event["data"]["message"]
        if message.get("id") == pmid:
            statuses.append(
                {
                    "event_id": event["id"],
                    "status": message.get("status"),
                    "provider_status": message.get("provider_status"),
                    "timestamp": message.get("timestamp"),
                    "error": message.get("error"),
                }
            )
    return {
        "id": row["id"],
        "channel": row["channel_id"],
        "provider": row["provider"],
        "state": row["state"],
        "provider_message_id": pmid,
        "contact_id": (contact_ids[-1] if contact_ids else row["contact_id"]),
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "request": orjson.loads(row["request"]),
        "answer": answer,
        "statuses": statuses,
    }
