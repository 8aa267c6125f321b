"""The processing stage: accepted raw payloads -> identity, events and outbox rows, in batches.

A webhook is answered `200` once its raw payload is durably stored (state `received`). The
`Processor` then reads received payloads in arrival order (received_at, id) and derives everything
else for up to `batch` of them in ONE store transaction (`BatchTx`: one statement per table where
it can), marking each raw payload processed, quarantined or duplicate in the same transaction.
So a crash anywhere (also mid-batch) leaves the whole batch `received`, to be processed again from
the start: nothing acknowledged is lost and nothing is applied twice, per-contact order is arrival
order, and each raw payload ends up exactly once as events or in quarantine.

- An event failing the canonical schema quarantines its whole payload: the batch is rolled back
  and run again with that payload quarantined up front (the rest of the batch is unaffected).
- An unexpected error (a bug) runs the batch one payload per transaction, so only the payload
  that fails is quarantined, with the error as its reason.
- On PostgreSQL several replicas run a processor; a transaction-scoped advisory lock lets one of
  them process at a time (arrival order holds across replicas) and `still_received` drops payloads
  another replica took meanwhile.

Mapping (pure CPU) runs before the transaction, outside any lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import structlog

from bspgate.config import Channel, Settings
from bspgate.delivery import operational
from bspgate.delivery.operational import DriftReporter
from bspgate.errors import PayloadError, StoreConflict, StoreError
from bspgate.ingress.parse import parse_payload
from bspgate.mapping.engine import MappingResult, apply_mapping
from bspgate.mapping.loader import MappingSpec
from bspgate.mapping.route import part_for
from bspgate.metrics import Metrics
from bspgate.pipeline import (
    Fanout,
    IngestOutcome,
    InvalidEvents,
    failure_reason,
    ingest,
    schema_base,
)
from bspgate.schema.validate import EventValidator
from bspgate.store.base import RawRecord, Store
from bspgate.store.batch import BatchTx
from bspgate.store.sql import SqlTx
from bspgate.times import iso

_log = structlog.get_logger("bspgate.processing")
OUTBOX_CHANNEL = "bspgate_outbox"  # PostgreSQL NOTIFY channel: new outbox rows
# `serve`'s workers: the shortest time between the starts of two processing rounds that found
# less than a full batch. Every round costs its statements, a commit and an fsync however few
# payloads it holds; at moderate rates rounds held a handful each (docs/performance.md).
ROUND_LINGER = 0.005
_PROCESS_LOCK = 7_206_102_312  # pg_advisory_xact_lock key: one replica processes at a time


stamp = iso  # the one time format of stored times (bspgate.times.iso)


@dataclass(frozen=True)
class Rules:
    """What processing needs from the configuration, built once."""

    settings: Settings
    mappings: dict[str, MappingSpec]
    validator: EventValidator = field(default_factory=EventValidator)

    def __post_init__(self) -> None:
        base = schema_base(self.settings.server.public_url)
        object.__setattr__(self, "fanout", Fanout(self.settings.subscribers, schema_base=base))

    fanout: Fanout = field(init=False)


@dataclass(slots=True)
class Prepared:
    raw: RawRecord
    channel: Channel | None
    mapped: MappingResult
    # a payload routed in parts (`route`: several numbers in one POST): each part's channel and
    # mapping; `channel` is then the first part's, and `mapped` all parts' drafts and issues
    parts: tuple[tuple[Channel, MappingResult], ...] = ()

    def each(self) -> tuple[tuple[Channel, MappingResult], ...]:
        """(channel, mapping) of every part: one unless the payload was split by `route`."""
        if self.parts:
            return self.parts
        return () if self.channel is None else ((self.channel, self.mapped),)


def map_raw(rules: Rules, raw: RawRecord, parsed: Any = None) -> Prepared:
    """Parse (unless `parsed` is given) and map one stored raw payload; never raises.

    A mapping with `route` maps the payload as the channel it names (`route_channel`): the raw
    payload stays listed under the channel whose URL received it, its events name the other.
    A payload naming several numbers is mapped in parts, each as its number's channel."""
    channel = rules.settings.channel(raw.channel_id)
    if channel is None or channel.provider not in rules.mappings:
        issue = "its channel is no longer configured"
        return Prepared(raw, None, MappingResult(issues=[issue]))
    spec = rules.mappings[channel.provider]
    if spec.route is None:
        return Prepared(raw, channel, map_payload(spec, channel, raw, parsed))
    try:
        parsed = parsed if parsed is not None else parse_payload(raw.body, spec.parse)
    except PayloadError as exc:
        return Prepared(raw, channel, MappingResult(issues=[f"unparseable: {exc}"]))
    routed, why = route_channel(rules.settings, spec, channel, parsed, raw.received_at)
    if why is not None:
        return Prepared(raw, channel, MappingResult(issues=[why]))
    if len(routed) == 1:
        owner, part = routed[0]
        return Prepared(raw, owner, map_payload(spec, owner, raw, part))
    parts = tuple((owner, map_payload(spec, owner, raw, part)) for owner, part in routed)
    combined = MappingResult(
        drafts=[draft for _, mapped in parts for draft in mapped.drafts],
        issues=[issue for _, mapped in parts for issue in mapped.issues],
        unmapped=list(dict.fromkeys(name for _, mapped in parts for name in mapped.unmapped)),
    )
    return Prepared(raw, parts[0][0], combined, parts)


def route_channel(
    settings: Settings, spec: MappingSpec, channel: Channel, payload: Any, received_at: str
) -> tuple[list[tuple[Channel, Any]], str | None]:
    """The channel each part of a payload is for, by the mapping's `route`, or why it is for none.

    A Meta app posts the webhooks of all its numbers to one URL, each naming its number
    (`metadata.phone_number_id`): the payload goes to the configured channel of the same provider
    whose `settings.<setting>` it names, if that channel checks webhooks with the same secrets
    (the signature was checked with this channel's). Meta may batch several numbers' changes in
    one POST: such a payload is split (`mapping.route`), each part keeping its number's changes,
    and the changes naming no number go with the receiving channel's part (else the first). A
    payload naming a number no channel has is quarantined, never put on a channel (and portfolio)
    it is not for. With nothing configured (no channel has the setting) it stays with the
    channel whose URL received it.
    """
    assert spec.route is not None
    route = spec.route
    try:
        found = route.read(
            {"payload": payload, "channel": channel.as_scope(), "received_at": received_at}
        )
    except Exception:  # an odd payload names nothing here; the rules will say what it is
        found = None
    named = sorted({str(v) for v in _flatten(found) if isinstance(v, str | int) and str(v)})
    mine = str(channel.settings.get(route.setting) or "")
    if not named or named == [mine]:
        return [(channel, payload)], None
    owners = {
        value: [
            c
            for c in settings.channels
            if c.provider == channel.provider and str(c.settings.get(route.setting) or "") == value
        ]
        for value in named
    }
    if not mine and not any(
        c.settings.get(route.setting) for c in settings.channels if c.provider == channel.provider
    ):
        return [(channel, payload)], None  # no channel routes by number: as before routing
    unowned = [value for value in named if len(owners[value]) != 1]
    if unowned:
        return [], (
            f"the payload names {route.setting} {', '.join(unowned)}, not this channel's "
            f"({mine or 'none set'}), and no one configured channel has "
            f"{'it' if len(unowned) == 1 else 'them'}: configure a channel with "
            f"settings.{route.setting} for each number (one webhook URL may serve them all)"
        )
    secrets = [str(e["secret"]) for e in spec.verify if isinstance(e.get("secret"), str)]
    for value in named:
        owner = owners[value][0]
        if any(owner.secret(name) != channel.secret(name) for name in secrets):
            return [], (
                f"the payload is for channel {owner.id} ({route.setting} {value}), whose webhook "
                f"secrets differ from this channel's: it cannot have been signed for it"
            )
    if len(named) == 1:
        return [(owners[named[0]][0], payload)], None
    if route.split is None:
        return [], (
            f"the payload names {route.setting} {', '.join(named)}, and the mapping's route.read "
            f"is no plain path to split it by (payload.<list>[].<field>)"
        )
    strays = mine if mine in named else named[0]
    return [
        (owners[value][0], part_for(payload, route.split, value, strays=value == strays))
        for value in named
    ], None


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [item for part in value for item in _flatten(part)]
    return [] if value is None else [value]


def map_payload(spec: MappingSpec, channel: Channel, raw: RawRecord, parsed: Any) -> MappingResult:
    """The mapping step every ingest shares (server, replay, `normalize`); never raises.

    `parsed` is the payload when the caller parsed the body already (None: parse `raw.body`).
    The mapping sees `raw.received_at` (the one time format, `stamp`) as `received_at`.
    """
    try:
        payload = parsed if parsed is not None else parse_payload(raw.body, spec.parse)
        return apply_mapping(spec, payload, channel.as_scope(), received_at=raw.received_at)
    except PayloadError as exc:
        return MappingResult(issues=[f"unparseable: {exc}"])
    except Exception as exc:  # a mapping bug must quarantine, never lose, the payload
        return MappingResult(issues=[f"mapping engine error: {type(exc).__name__}: {exc}"])


class Busy(Exception):
    """Another replica is processing: try again shortly."""


class Poisoned(Exception):
    def __init__(self, raw_id: str, reason: str) -> None:
        self.raw_id, self.reason = raw_id, reason
        super().__init__(reason)


def process_batch(
    tx: SqlTx,
    rules: Rules,
    batch: list[Prepared],
    poisoned: dict[str, str],
    moment: datetime,
    inboxed: bool = False,
    replay: bool = False,
) -> list[IngestOutcome]:
    """Derive everything for `batch` inside one transaction. Raises `Poisoned`.

    `inboxed`: the payloads come from the SQLite inbox database and are inserted into
    `raw_payloads` here (with their final state), except those a run before a crash already
    committed, which are left out. `replay`: stored payloads run again after a mapping fix (any
    state; one whose events all exist already counts as processed).
    """
    if tx.dialect == "postgres" and not replay:
        # one replica at a time (arrival order); FOR UPDATE turns a payload another replica
        # processed after this snapshot into a serialization failure (the store retries)
        if not tx.one("SELECT pg_try_advisory_xact_lock(?)", (_PROCESS_LOCK,))[0]:
            raise Busy
        taken = tx.still_received([p.raw.id for p in batch], lock=True)
        batch = [p for p in batch if p.raw.id in taken]
    if inboxed:
        done = tx.existing_raws([p.raw.id for p in batch])
        batch = [p for p in batch if p.raw.id not in done]
    btx = BatchTx(tx)
    btx.prefetch_events([d.id for p in batch for d in p.mapped.drafts])
    bsuids: set[tuple[str, str]] = set()
    phones: set[tuple[str, str]] = set()
    for item in batch:
        for channel, mapped in item.each():
            portfolio = channel.portfolio
            for draft in mapped.drafts:
                if btx.event_exists(draft.id):
                    continue  # a duplicate teaches nothing: no lookups for it
                for section in ("contact", "previous"):
                    named = draft.data.get(section) or {}
                    for key in ("bsuid", "parent_bsuid"):
                        if named.get(key):
                            bsuids.add((portfolio, named[key]))
                    if named.get("phone"):
                        phones.add((portfolio, named["phone"]))
    btx.prefetch_identities(bsuids, phones)
    outcomes: list[IngestOutcome] = []
    for index, item in enumerate(batch):
        # One after another, in arrival order, as when each is processed alone: each payload
        # has its own moment, a microsecond after the one before, so what it creates is newer
        # than what they created (a merge keeps the contact created first, rule 8).
        at = moment + timedelta(microseconds=index)
        now, now_epoch = stamp(at), at.timestamp()
        raw = item.raw
        if raw.id in poisoned or item.channel is None:
            reason = poisoned.get(raw.id) or "; ".join(item.mapped.issues)
            outcomes.append(IngestOutcome(raw.id, "quarantined", issues=[reason]))
            # operators asking for bspgate.* hear of it, as `pipeline.quarantine` tells them
            operational.quarantined(
                btx, rules.fanout.subscribers, raw, reason, now=now_epoch, stamp=now
            )
            continue
        try:
            outcome = _merged(
                raw.id,
                [
                    ingest(
                        btx,
                        channel=channel,
                        raw=raw,
                        mapped=mapped,
                        validator=rules.validator,
                        fanout=rules.fanout,
                        now=now,
                        now_epoch=now_epoch,
                        store_raw=False,
                    )
                    for channel, mapped in item.each()
                ],
            )
        except InvalidEvents as exc:
            raise Poisoned(raw.id, exc.reason) from exc
        if outcome.state == "quarantined":  # operators asking for bspgate.* hear of it
            why = "; ".join(outcome.issues) or None
            operational.quarantined(
                btx, rules.fanout.subscribers, raw, why, now=now_epoch, stamp=now
            )
        outcomes.append(outcome)
    btx.flush()
    if tx.dialect == "postgres" and any(o.deliveries for o in outcomes):
        tx.execute(f"NOTIFY {OUTBOX_CHANNEL}")  # every replica's dispatcher (at commit)
    if replay:
        for outcome in outcomes:
            if outcome.state == "duplicate":
                outcome.state = "processed"
    finished = [
        (o.raw_id, o.state, "; ".join(o.issues) or None, len(o.events) + o.duplicates)
        for o in outcomes
    ]
    if inboxed:
        raws = {p.raw.id: p.raw for p in batch}
        tx.insert_raws(
            [
                replace(raws[raw_id], state=state, reason=reason, event_count=count)
                for raw_id, state, reason, count in finished
            ]
        )
    else:
        tx.finish_raws(finished)
    return outcomes


def _merged(raw_id: str, outcomes: list[IngestOutcome]) -> IngestOutcome:
    """One payload's outcome from its parts' (one part unless `route` split it)."""
    if len(outcomes) == 1:
        return outcomes[0]
    merged = IngestOutcome(raw_id, "processed")
    for part in outcomes:
        merged.events += part.events
        merged.duplicates += part.duplicates
        merged.superseded += part.superseded
        merged.issues += part.issues
        merged.deliveries += part.deliveries
    if merged.issues:
        merged.state = "quarantined"
    elif (merged.duplicates or merged.superseded) and not merged.events:
        merged.state = "duplicate"
    return merged


class Processor:
    """Runs the processing stage over a store until `stop()`; `settle(raw_id)` awaits one."""

    def __init__(
        self,
        store: Store,
        rules: Rules,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        # payloads per transaction: enough to amortize statements and commits; few enough that
        # the dispatcher's claims and records waiting for the same writer wait milliseconds, not
        # tens of them (`Stage` chooses per backend)
        batch: int = 64,
        idle_poll: float = 0.005,
        on_deliveries: Callable[[], None] | None = None,
        metrics: Metrics | None = None,
        linger: float = 0.0,
    ) -> None:
        """`linger`: after a round that found fewer than `batch` payloads, the next round starts
        no sooner than this many seconds after it began (`serve`: `ROUND_LINGER`), so payloads
        arriving meanwhile share its transaction instead of each paying a commit."""
        self.store, self.rules, self.clock = store, rules, clock
        self.metrics = metrics
        self.drift = DriftReporter(rules.settings.subscribers)
        self.batch, self.idle_poll, self.linger = batch, idle_poll, linger
        self.on_deliveries = on_deliveries
        self._wake = asyncio.Event()
        self._stopping = False
        self._waiters: dict[str, asyncio.Future[IngestOutcome]] = {}
        self._parsed: dict[str, Any] = {}
        # payloads that could not even be quarantined (the store refused): skipped until restart
        self._stuck: set[str] = set()
        # processed, their inbox rows (SQLite under `serve`) being deleted while the next batch
        # runs: skipped by the next reads until the delete commits
        self._settling: set[str] = set()
        self._settle_tasks: set[asyncio.Task[None]] = set()
        self.processed = 0
        self.running = False

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def expect(self, raw_id: str, parsed: Any = None) -> asyncio.Future[IngestOutcome]:
        """A future settled when `raw_id` has been processed (register before storing it).

        `parsed` is the payload the server already parsed from the body: mapped as is, not
        parsed a second time.
        """
        future: asyncio.Future[IngestOutcome] = asyncio.get_running_loop().create_future()
        self._waiters[raw_id] = future
        if parsed is not None:
            self._parsed[raw_id] = parsed
        return future

    def forget(self, raw_id: str) -> None:
        self._waiters.pop(raw_id, None)
        self._parsed.pop(raw_id, None)

    async def run(self) -> None:
        """Process until `stop()`; a failing round is logged and retried, never fatal."""
        self.running = True
        try:
            await self._loop()
        finally:
            await self.settled()
            self.running = False

    async def settled(self) -> None:
        """Wait for the inbox deletes still running (shutdown, tests)."""
        while self._settle_tasks:
            await asyncio.gather(*self._settle_tasks, return_exceptions=True)

    async def _loop(self) -> None:
        while not self._stopping:
            began = time.monotonic()
            try:
                done = await self.run_once()
            except StoreError as exc:
                _log.warning("processing.store_unavailable", error=str(exc))
                done = 0
                await asyncio.sleep(0.5)
            except Exception:  # keep processing whatever one round hit
                _log.exception("processing.round_failed")
                done = 0
                await asyncio.sleep(0.5)
            rest = self.linger - (time.monotonic() - began)
            if 0 < done < self.batch and rest > 0 and not self._stopping:
                await asyncio.sleep(rest)
            if done == 0 and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.idle_poll)
                self._wake.clear()

    async def drain(self) -> int:
        """Process until nothing is received but unprocessed (tests, shutdown). Answers how many."""
        total = 0
        while done := await self.run_once():
            total += done
        await self.settled()
        return total

    async def run_once(self) -> int:
        skipped = self._stuck | self._settling
        raws: list[RawRecord] = await self.store.received(self.batch + len(skipped))
        raws = [raw for raw in raws if raw.id not in skipped][: self.batch]
        if not raws:
            return 0
        prepared = [map_raw(self.rules, raw, self._parsed.pop(raw.id, None)) for raw in raws]
        for item in prepared:
            if item.mapped.unmapped:
                # the provider sent fields no rule reads: its format may have changed (names only)
                provider = item.raw.provider
                if self.metrics is not None:
                    for name in item.mapped.unmapped:
                        self.metrics.count_unmapped(provider, name)
                _log.info("mapping.unmapped_fields", provider=provider, fields=item.mapped.unmapped)
                if item.channel is not None:  # subscribers asking for bspgate.* hear of it
                    await self.drift.report(
                        self.store, item.channel, item.mapped.unmapped, self.clock()
                    )
        try:
            outcomes = await self._transact(prepared)
        except Busy:
            return 0  # another replica is processing: these wait for the next round, in order
        except StoreConflict as exc:
            # PostgreSQL: a unique key broken on every retry is a payload's own work (one
            # replica processes at a time), not a race: isolate it
            _log.error("processing.batch_conflicting", batch=len(prepared),
                       error=failure_reason(exc))  # fmt: skip
            outcomes = await self._isolate(prepared)
        except StoreError:
            raise
        except Exception:
            _log.exception("processing.batch_failed", batch=len(prepared))
            outcomes = await self._isolate(prepared)
        # a stuck payload is still only in the inbox: deleting it there would lose it
        self._settle_inbox([raw.id for raw in raws if raw.id not in self._stuck])
        self._settle(outcomes, {item.raw.id: item.raw for item in prepared})
        return len(outcomes)

    async def _isolate(self, prepared: list[Prepared]) -> list[IngestOutcome]:
        """One payload at a time, in order: only the one that fails is quarantined."""
        outcomes: list[IngestOutcome] = []
        for item in prepared:
            try:
                outcomes += await self._transact([item])
                continue
            except Busy:
                break  # another replica took over: the rest wait for a round, in order
            except StoreConflict as exc:
                reason = failure_reason(exc)
            except StoreError:
                # those before it are committed: answer their waiters
                self._settle(outcomes, {item.raw.id: item.raw for item in prepared})
                raise
            except Exception as exc:  # the last resort: the payload is kept, the error named
                reason = failure_reason(exc)
            _log.error("ingest.failed_quarantined", raw_id=item.raw.id, error=reason)
            try:
                outcomes += await self._transact([item], {item.raw.id: reason})
            except Busy:
                break
            except Exception as again:  # it stays received; the others go on
                self._stuck.add(item.raw.id)
                _log.error("processing.stuck", raw_id=item.raw.id, error=failure_reason(again))
        return outcomes

    def _settle_inbox(self, raw_ids: list[str]) -> None:
        """Delete processed payloads from the inbox while the next batch is read and mapped.

        The batch is committed already; the delete only tidies the inbox (a payload found in
        both after a crash is only deleted), so the next round need not wait for its commit.
        """
        if not self.store.inboxed:
            return
        self._settling.update(raw_ids)

        async def settle() -> None:
            try:
                await self.store.settle_received(raw_ids)
            except Exception as exc:  # read again next round: found processed, deleted then
                _log.warning("processing.inbox_delete_failed", error=failure_reason(exc))
            finally:
                self._settling.difference_update(raw_ids)

        task = asyncio.create_task(settle())
        self._settle_tasks.add(task)
        task.add_done_callback(self._settle_tasks.discard)

    async def _transact(
        self, prepared: list[Prepared], poisoned: dict[str, str] | None = None
    ) -> list[IngestOutcome]:
        poisoned = dict(poisoned or {})
        while True:
            work = partial(process_batch, rules=self.rules, batch=prepared, poisoned=poisoned,
                           moment=self.clock(), inboxed=self.store.inboxed)  # fmt: skip
            try:
                result: list[IngestOutcome] = await self.store.transaction(work)
                return result
            except Poisoned as exc:
                poisoned[exc.raw_id] = exc.reason  # run again with that payload quarantined

    def _settle(
        self, outcomes: list[IngestOutcome], raws: dict[str, RawRecord] | None = None
    ) -> None:
        deliveries = 0
        for outcome in outcomes:
            deliveries += outcome.deliveries
            waiter = self._waiters.pop(outcome.raw_id, None)
            if waiter is not None:
                if not waiter.done():
                    waiter.set_result(outcome)
                continue  # the webhook's answer waited for it: the route counts and logs it
            raw = (raws or {}).get(outcome.raw_id)
            if raw is not None:  # answered "accepted" before: its outcome is told here
                self._told(raw, outcome)
        self.processed += len(outcomes)
        if self.metrics is not None:
            for outcome in outcomes:
                for event in outcome.events:
                    self.metrics.events.labels(event["type"]).inc()
        if deliveries and self.on_deliveries is not None:
            self.on_deliveries()

    def _told(self, raw: RawRecord, outcome: IngestOutcome) -> None:
        """A staged webhook's outcome, counted and logged where it is known (the webhook was
        answered and logged as `accepted`): `webhooks{channel, outcome}`, and a quarantine as
        a warning of its own, with its reason (paths and types, never values)."""
        if self.metrics is not None:
            self.metrics.count_webhook(raw.channel_id, outcome.state)
        if outcome.state == "quarantined":
            _log.warning(
                "webhook.quarantined",
                channel=raw.channel_id,
                provider=raw.provider,
                raw_id=raw.id,
                traceparent=raw.traceparent,
                reason="; ".join(outcome.issues) or None,
            )


def process_now(
    tx: Any, rules: Rules, raws: list[RawRecord], moment: datetime
) -> list[IngestOutcome]:
    """Process `raws` (already stored as received) in the caller's transaction (replay, tests)."""
    return process_batch(tx, rules, [map_raw(rules, r) for r in raws], {}, moment)
