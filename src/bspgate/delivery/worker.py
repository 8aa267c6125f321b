"""The dispatcher: one lane per subscriber, each claiming, POSTing and recording on its own.

A lane (delivery/lane.py) claims due rows of its subscriber up to its free slots, in one store
transaction, or one statement on PostgreSQL (a healthy lane claims ahead: its next rows are ready
when a slot frees); the lane's posting coroutines, at most `max_in_flight`, POST them one
request each (no task per attempt), and every answer goes to one recorder that writes whatever
has finished (attempts, outcomes, subscriber health) in one transaction, then frees the rows. A
slow subscriber therefore holds only its own slots: the others' answers are recorded as they
come. Per-contact order is enforced
by the claim query (only the head of a contact's queue is claimable, and a row stays in flight
until its result is stored). A delivered attempt is logged at DEBUG, with one INFO line per lane
and round summing them up; every failed attempt is a WARNING line of its own.

Claims carry a lease derived from the subscriber's timeout (always longer, renewed for long
attempts), the claiming process's `owner` id (stable across a restart: a restarted replica takes
its own dead claims back at once) and a token: an attempt finishes its row only while the token
matches, so a stale attempt never overwrites a newer result. The body is signed per Standard
Webhooks (delivery/signing.py); `webhook-id` is the event id, so receivers can de-duplicate.

`run()` (or `start()`/`stop()`) is what a server runs; `run_once()` is one synchronous round over
every lane (claim, send, record) for tests driven by a hand clock. The dispatcher reaches the
store only through its transaction methods, so it can run in any process that opens the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

import httpx
import structlog

from bspgate.config import Settings, Subscriber
from bspgate.delivery.lane import Lane
from bspgate.delivery.operational import OPS_PREFIX, emit
from bspgate.delivery.retry import MAX_RETRY_AFTER, decide, retry_after_seconds
from bspgate.delivery.signing import Signer
from bspgate.delivery.transport import HttpxPoster, Poster, PostFailed
from bspgate.masking import mask_urls
from bspgate.metrics import Metrics
from bspgate.schema.catalog import traceparent_of
from bspgate.store.base import DeliveryJob, Store
from bspgate.times import iso_epoch

_log = structlog.get_logger("bspgate.delivery")
CONTENT_TYPE = "application/cloudevents+json"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
# `serve`'s delivery worker: see `Dispatcher`'s `linger`. At moderate rates claims found a few
# rows each and the recorder committed one or two results at a time (docs/performance.md).
DELIVERY_LINGER = 0.003
_RECORD_BELOW = 16
EXPIRE_EVERY = 60.0  # seconds between sweeps of held deliveries that never gained a phone
RETRY_CHECK_EVERY = 0.5  # seconds between looks for an operator's retry, per waiting lane


def dispatcher_owner(settings: Settings) -> str:
    """This replica's claim owner id, the same after a restart: `$BSPGATE_INSTANCE_ID`, else
    host name and port (two replicas on one host listen on different ports)."""
    return os.environ.get("BSPGATE_INSTANCE_ID") or f"{socket.gethostname()}:{settings.server.port}"


@dataclass(frozen=True, slots=True)
class AttemptResult:
    job: DeliveryJob
    status: int | None
    latency_ms: float
    error: str | None
    retry_after: float | None
    probe: bool = False  # claimed before it was due, to see whether a failing subscriber is back
    sent: bool = True  # False: released unsent (claimed ahead, then paused or stopping)
    batch_id: str | None = None  # the `webhook-id` of the batch it went in (None: alone)


@dataclass(slots=True)
class _Outcome:
    """What a recorded attempt did, as the row records it (the log line, the metrics and the
    operational events say the same), applied to the lanes after the transaction commits."""

    result: AttemptResult
    # delivered, pending, dead, or gone (410: the row stays pending); erased once the record
    # found its contact erased while it was in flight (`cancel_erased`): what the row holds
    state: str
    attempts: int
    due: float


@dataclass(frozen=True, slots=True)
class _Claim:
    """One lane's claim, planned outside the store and run in it (`run`: a transaction;
    `run_plain`: one statement on PostgreSQL)."""

    lane: Lane
    now: float
    stamp: str
    free: int
    probe_ok: bool
    token: str
    owner: str
    expire: bool

    def run(self, tx: Any) -> tuple[str | None, list[tuple[DeliveryJob, bool]]]:
        lane, now = self.lane, self.now
        # disabled state lives in the store: operators (and other replicas) change it
        state = tx.subscriber_states().get(lane.id) or {}
        if state.get("disabled_at"):
            return str(state.get("reason")), []
        if self.expire and lane.subscriber.require_phone:
            tx.expire_held(lane.id, now - lane.subscriber.hold_for, self.stamp)
        elif self.expire:
            # held while the subscriber required a phone, which it no longer does: they go as
            # they are (held, they would hold the contact's later events for good)
            tx.release_unrequired(lane.id, now, self.stamp)
        # open: one request at a time (a due row, else an early probe; with `batch`, one batch:
        # a failed batch is retried whole, under its webhook-id); closed: the free slots
        one = max(lane.subscriber.batch_max, 1)
        args = (now, lane.lease, one if lane.is_open else self.free, self.ordered)
        who = {"subscriber_id": lane.id, "owner": self.owner, "token": self.token}
        jobs = tx.claim_due(*args, **who)
        if not jobs and self.probe_ok:
            jobs = tx.claim_due(*args, **who, probe=True)
        return None, [(job, job.due > now) for job in jobs]

    @property
    def ordered(self) -> set[str]:
        """Subscribers whose rows wait for their contact's earlier ones: this lane's, or none."""
        return {self.lane.id} if self.lane.subscriber.ordering == "per_contact" else set()

    @property
    def plain(self) -> bool:
        """No sweep of held rows and no probe: `run_plain` does all of it in one statement."""
        return not self.expire and not self.probe_ok

    def run_plain(self, tx: Any) -> tuple[str | None, list[tuple[DeliveryJob, bool]]]:
        lane, now = self.lane, self.now
        disabled, jobs = tx.claim_lane(
            now, lane.lease, self.free, self.ordered, subscriber_id=lane.id, owner=self.owner,
            token=self.token,
        )  # fmt: skip
        return disabled, [(job, job.due > now) for job in jobs]


class Dispatcher:
    """Delivers the outbox. `store` needs `transaction()` and `statement()`; `clock()` returns
    aware datetimes."""

    def __init__(
        self,
        store: Store,
        subscribers: tuple[Subscriber, ...],
        client: httpx.AsyncClient | Poster,
        metrics: Metrics,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        batch: int = 64,
        idle_poll: float = 1.0,
        owner: str | None = None,
        lease: float | None = None,
        linger: float = 0.0,
    ) -> None:
        """`linger` (`serve`: `DELIVERY_LINGER`): a lane whose last claim was not full claims
        again no sooner than this many seconds after it, and the recorder, finding fewer than
        `_RECORD_BELOW` results, waits as long for more, so rows share claims and commits."""
        self.linger = linger
        self.store = store
        self.subscribers = {s.id: s for s in subscribers}
        # `lease` overrides the lease derived from each subscriber's timeout (tests only)
        self.lanes = {s.id: Lane(s, fixed_lease=lease) for s in subscribers}
        self._signers = {s.id: Signer(s.secret_values()) for s in subscribers}
        self.poster: Poster = (
            HttpxPoster(client) if isinstance(client, httpx.AsyncClient) else client
        )
        self.metrics = metrics
        self.clock = clock
        self.batch = batch  # the most rows one claim takes (run_once: per lane)
        self.idle_poll = idle_poll
        self.owner = owner or f"dispatcher-{secrets.token_hex(4)}"
        self.disabled: dict[str, str] = {}
        self._stopping = False
        self._results: asyncio.Queue[AttemptResult] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # the lanes' posting coroutines
        self._recording = False  # the recorder holds results not stored yet
        self._record_failing = False
        self._last_expiry: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        started = clock().timestamp()
        for lane in self.lanes.values():
            lane.retry_seen = started  # a retry asked for before this start is moot: lanes begin

    # -- control ----------------------------------------------------------------------------------
    def wake(self) -> None:
        """New rows may be due (ingest committed, an operator retried): every lane looks now."""
        for lane in self.lanes.values():
            lane.changed.set()

    def retry_now(self, subscriber_id: str) -> None:
        """An operator asked to retry a subscriber now: a failing lane probes at once, a paused
        one resumes. Asked in another process (the API under `serve`, the CLI, a replica), it
        reaches the lane through the store (`_heed_retry`)."""
        lane = self.lanes.get(subscriber_id)
        if lane is not None:
            lane.last_probe = 0.0
            lane.paused_until = 0.0
            # the stored request (this one, if it came through the store) is acted on now
            lane.retry_seen = max(lane.retry_seen, self.clock().timestamp())
            lane.changed.set()

    def start(self) -> asyncio.Task[None]:
        """Run in the background of the current event loop; `stop()` ends it."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="bspgate-dispatcher")
        return self._task

    def stop(self) -> None:
        """Stop claiming; attempts in flight finish and are recorded, then `run()` returns."""
        self._stopping = True
        for lane in self.lanes.values():
            lane.changed.set()

    async def run(self) -> None:
        """Deliver until `stop()`. A failing claim or record is logged and retried, never fatal."""
        self._results = asyncio.Queue()
        with contextlib.suppress(Exception):  # the store may be down: leases expire instead
            await self.reclaim()
        recorder = asyncio.create_task(self._recorder())
        renewer = asyncio.create_task(self._renewer())
        try:
            await asyncio.gather(*(self._lane_loop(lane) for lane in self.lanes.values()))
            # attempts in flight finish and their results are recorded
            while (
                any(lane.posting for lane in self.lanes.values())
                or not self._results.empty()
                or (self._recording and not self._record_failing)  # not if the store is down
            ):
                await asyncio.sleep(0.01)
        finally:
            renewer.cancel()
            recorder.cancel()
            posters = list(self._tasks)  # idle by now (or the run is being cancelled)
            for task in (renewer, recorder, *posters):
                task.cancel()
            for task in (renewer, recorder, *posters):
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def reclaim(self) -> int:
        """Take back this owner's claims from before a restart: they are dead, due at once."""
        now = self.clock().timestamp()
        taken: int = await self.store.transaction(lambda tx: tx.reclaim_own(self.owner, now))
        if taken:
            _log.info("delivery.reclaimed", owner=self.owner, deliveries=taken)
        return taken

    async def renew(self) -> int:
        """Extend the leases of attempts running longer than a third of their lease."""
        now_mono, now = time.monotonic(), self.clock().timestamp()
        renewed = 0
        for lane in self.lanes.values():
            claims = [
                (job.id, job.token)
                for job, started in lane.inflight.values()
                if now_mono - started > lane.lease / 3
            ]
            if claims:
                renew = partial(_renew, claims=claims, until=now + lane.lease)
                renewed += await self.store.transaction(renew)
        return renewed

    # -- lanes ------------------------------------------------------------------------------------
    async def _lane_loop(self, lane: Lane) -> None:
        refill = max(1, lane.subscriber.max_in_flight // 4)
        partial_at = None  # when the last claim that was not full began
        while not self._stopping:
            if partial_at is not None:
                rest = self.linger - (time.monotonic() - partial_at)
                if rest > 0:
                    await asyncio.sleep(rest)
                partial_at = None
            lane.changed.clear()
            if lane.posting and lane.free < refill:
                # claim in batches: wait until a quarter of the slots are free (or all answer)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lane.changed.wait(), timeout=self.idle_poll)
                continue
            claimed_at = time.monotonic()
            try:
                jobs = await self._claim(lane, self.batch)
            except Exception as exc:  # the store may be briefly unavailable: try again
                _log.error("delivery.claim_failed", subscriber=lane.id, error=repr(exc))
                jobs = []
            size = lane.subscriber.batch_max
            if size and 0 < len(jobs) < size and not self._stopping:
                # a batch waits `batch.wait` to fill (it holds one event per contact)
                await asyncio.sleep(lane.subscriber.batch_wait)
                try:
                    jobs += await self._top_up(lane, size - len(jobs))
                except Exception as exc:  # what the first claim took is in flight: it goes
                    _log.error("delivery.claim_failed", subscriber=lane.id, error=repr(exc))
            self._launch(lane, jobs)
            if self._stopping:
                break
            wait = self.idle_poll
            now = self.clock().timestamp()
            to_probe = lane.seconds_to_probe(now)
            if to_probe is not None:
                wait = min(wait, max(to_probe, 0.05))
            if lane.free and lane.allowed(now) == 0:  # rate-limited or paused by a 429
                wait = min(wait, max(lane.seconds_to_send(now), 0.005))
            if len(jobs) == self.batch and lane.free:
                continue  # a full claim: there may be more due, claim again at once
            if jobs and self.linger:
                partial_at = claimed_at
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lane.changed.wait(), timeout=wait)

    async def _claim(self, lane: Lane, most: int) -> list[tuple[DeliveryJob, bool]]:
        """Claim what the lane may send now: due rows into free slots, or one probe."""
        await self._heed_retry(lane)
        plan = self._plan(lane, most)
        if plan is None:
            return []
        return await self._run_claim(plan)

    async def _heed_retry(self, lane: Lane) -> None:
        """A lane that may not send now (its breaker open and no probe due, or paused by a 429)
        looks in the store, every `RETRY_CHECK_EVERY` at most, for an operator's retry asked
        since it last acted on one (`request_retry`): then it probes, or resumes, at once. A
        lane that may send claims the rows the retry made due anyway."""
        now = self.clock().timestamp()
        waiting = (lane.is_open and not lane.probe_due(now)) or now < lane.paused_until
        if not waiting or now - lane.retry_checked < RETRY_CHECK_EVERY:
            return
        lane.retry_checked = now
        try:
            asked = await self.store.read(partial(_retry_requested, subscriber_id=lane.id))
        except Exception as exc:  # the store may be briefly unavailable: look again later
            _log.error("delivery.retry_check_failed", subscriber=lane.id, error=repr(exc))
            return
        if asked is not None and asked > lane.retry_seen:
            lane.retry_seen = asked
            _log.info("delivery.retry_requested", subscriber=lane.id)
            self.retry_now(lane.id)

    async def _run_claim(self, plan: _Claim) -> list[tuple[DeliveryJob, bool]]:
        outcome: tuple[str | None, list[tuple[DeliveryJob, bool]]]
        if plan.plain:  # one statement on PostgreSQL; SQLite's writer runs it as before
            outcome = await self.store.statement(plan.run_plain)
        else:
            outcome = await self.store.transaction(plan.run)
        return self._claimed(plan, *outcome)

    def _plan(self, lane: Lane, most: int) -> _Claim | None:
        """What a claim for `lane` may take now, or None."""
        moment = self.clock()
        now = moment.timestamp()
        free = min(lane.allowed(now), most * max(lane.subscriber.batch_max, 1))
        if free == 0 or self._stopping:
            return None
        probe_ok = lane.probe_due(now)
        if lane.is_open and not probe_ok:
            return None
        # held rows: expired after `hold_for` (require_phone), released once it is turned off
        expire = now - self._last_expiry.get(lane.id, 0.0) >= EXPIRE_EVERY
        return _Claim(
            lane,
            now,
            moment.isoformat(),
            free,
            probe_ok,
            f"{self.owner}/{secrets.token_hex(6)}",
            self.owner,
            expire,
        )

    def _claimed(
        self, plan: _Claim, disabled: str | None, jobs: list[tuple[DeliveryJob, bool]]
    ) -> list[tuple[DeliveryJob, bool]]:
        """After the claim committed: note what it found (disabled, swept, probed)."""
        lane = plan.lane
        if lane.bucket is not None and jobs:
            lane.bucket.take(len(jobs), plan.now)
        if plan.expire:
            self._last_expiry[lane.id] = plan.now
        if disabled is not None:
            self.disabled[lane.id] = disabled
        else:
            self.disabled.pop(lane.id, None)
        if plan.probe_ok and (lane.is_open or any(probe for _, probe in jobs)):
            lane.last_probe = plan.now
        return jobs

    async def _top_up(self, lane: Lane, most: int) -> list[tuple[DeliveryJob, bool]]:
        plan = self._plan(lane, 1)
        if plan is None:
            return []
        return await self._run_claim(replace(plan, free=min(plan.free, most)))

    def _groups(
        self, lane: Lane, jobs: list[tuple[DeliveryJob, bool]]
    ) -> list[list[tuple[DeliveryJob, bool]]]:
        """One request per job, or per batch of up to `batch.max` jobs."""
        size = lane.subscriber.batch_max
        if not size:
            return [[job] for job in jobs]
        return [jobs[at : at + size] for at in range(0, len(jobs), size)]

    def _launch(self, lane: Lane, jobs: list[tuple[DeliveryJob, bool]]) -> None:
        """Queue the claimed requests for the lane's posting coroutines (started as needed)."""
        if not jobs:
            return
        started = time.monotonic()
        for group in self._groups(lane, jobs):
            for job, _probe in group:
                lane.inflight[job.id] = (job, started)
            lane.posting += 1
            lane.queue.put_nowait(group)
        # every queued request gets an idle coroutine, up to `max_in_flight` of them (what limits
        # the requests open at the subscriber); requests claimed ahead wait for one to be free
        while lane.idle < lane.queue.qsize() and lane.workers < lane.subscriber.max_in_flight:
            lane.workers += 1
            lane.idle += 1  # idle from the start: it takes a request as soon as it runs
            task = asyncio.create_task(self._poster_loop(lane))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _poster_loop(self, lane: Lane) -> None:
        """One of a lane's posting coroutines: the next claimed request, again and again."""
        queue = lane.queue
        waiting = True  # counted in `lane.idle` (`_launch` counted it before it ran)
        try:
            while True:
                group = await queue.get()
                lane.idle -= 1
                waiting = False
                # claimed ahead, but a 429 paused the lane meanwhile, or the dispatcher stops
                if self._stopping or (
                    lane.paused_until and self.clock().timestamp() < lane.paused_until
                ):
                    self._release(lane, group)
                else:
                    await self._send(lane, group)
                lane.idle += 1
                waiting = True
        finally:
            lane.workers -= 1
            if waiting:
                lane.idle -= 1

    def _release(self, lane: Lane, group: list[tuple[DeliveryJob, bool]]) -> None:
        """A request claimed ahead that must not go now: its rows go back unsent."""
        lane.posting -= 1
        lane.changed.set()
        assert self._results is not None
        for job, probe in group:
            self._results.put_nowait(AttemptResult(job, None, 0.0, None, None, probe, sent=False))

    async def _send(self, lane: Lane, group: list[tuple[DeliveryJob, bool]]) -> None:
        try:
            results = await self._attempt_group(lane, group)
        except Exception as exc:  # a bug before the POST: still record an attempt, free the row
            _log.error("delivery.send_failed", subscriber=lane.id, error=type(exc).__name__)
            error = mask_urls(f"{type(exc).__name__}: {exc}")[:500]
            results = [AttemptResult(job, None, 0.0, error, None, probe) for job, probe in group]
        finally:
            lane.posting -= 1  # the subscriber answered: its slot is free while we record
            lane.changed.set()
        assert self._results is not None
        for result in results:
            self._results.put_nowait(result)

    async def _recorder(self) -> None:
        """Write finished attempts as they come, many per transaction, then free their slots."""
        assert self._results is not None
        while True:
            results = [await self._results.get()]
            self._recording = True  # `run()` returns only once these are stored
            if self.linger and self._results.qsize() < _RECORD_BELOW - 1:
                await asyncio.sleep(self.linger)  # more answers arrive meanwhile
            while not self._results.empty() and len(results) < 1024:
                results.append(self._results.get_nowait())
            while True:
                try:
                    await self._record(results)
                    self._record_failing = False
                    break
                except Exception as exc:  # keep the results: the store may come back
                    _log.error("delivery.record_failed", error=repr(exc), results=len(results))
                    self._record_failing = True
                    await asyncio.sleep(1.0)
            self._recording = False

    async def _renewer(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            try:
                await self.renew()
            except Exception as exc:  # the next renewal may succeed; leases are generous
                _log.error("delivery.renew_failed", error=repr(exc))

    # -- one round, for tests ---------------------------------------------------------------------
    async def run_once(self) -> int:
        """One round over every lane: claim, send, record. Answers how many were attempted."""
        claimed: list[tuple[DeliveryJob, bool]] = []
        for lane in self.lanes.values():
            claimed += await self._claim(lane, self.batch)
        if not claimed:
            return 0
        groups = [
            group
            for lane in self.lanes.values()
            for group in self._groups(
                lane, [(job, probe) for job, probe in claimed if job.subscriber_id == lane.id]
            )
        ]
        answers = await asyncio.gather(
            *(self._attempt_group(self.lanes[g[0][0].subscriber_id], g) for g in groups)
        )
        await self._record([result for results in answers for result in results])
        return len(claimed)

    # -- one attempt ------------------------------------------------------------------------------
    async def _attempt_group(
        self, lane: Lane, group: list[tuple[DeliveryJob, bool]]
    ) -> list[AttemptResult]:
        """POST one event, or a batch (`application/cloudevents-batch+json`), once."""
        if not lane.subscriber.batch_max:
            ((job, probe),) = group
            return [await self._attempt(job, probe)]
        jobs = [job for job, _ in group]
        body = "[" + ",".join(job.body for job in jobs) + "]"
        # the id names the set of events, whatever order the claim and its top-up took them in
        events = sorted(job.event_id for job in jobs)
        digest = hashlib.sha256(" ".join(events).encode()).hexdigest()
        status, latency, error, retry_after = await self._post(
            lane.subscriber, f"bat_{digest[:26]}", body, BATCH_CONTENT_TYPE, traceparent_of(body)
        )  # a retry of the same set carries the same id
        batch_id = f"bat_{digest[:26]}"
        return [
            AttemptResult(job, status, latency, error, retry_after, probe, batch_id=batch_id)
            for job, probe in group
        ]

    async def _attempt(self, job: DeliveryJob, probe: bool = False) -> AttemptResult:
        subscriber = self.subscribers[job.subscriber_id]
        status, latency, error, retry_after = await self._post(
            subscriber, job.event_id, job.body, CONTENT_TYPE, traceparent_of(job.body)
        )
        return AttemptResult(job, status, latency, error, retry_after, probe)

    async def _post(
        self,
        subscriber: Subscriber,
        msg_id: str,
        body: str,
        content_type: str,
        traceparent: str | None,
    ) -> tuple[int | None, float, str | None, float | None]:
        """Sign and POST; answers (status, latency ms, error, Retry-After seconds)."""
        moment = self.clock()
        if moment.tzinfo is not UTC:  # Retry-After dates are compared in UTC
            moment = moment.astimezone(UTC)
        timestamp = int(moment.timestamp())
        data = body.encode()  # once: signed and posted as the same bytes
        headers = {
            "content-type": content_type,
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": self._signers[subscriber.id].sign_bytes(
                msg_id, timestamp, data, body
            ),
            "user-agent": "bspgate",
        }
        if traceparent:
            headers["traceparent"] = traceparent
        started = time.perf_counter()
        try:
            answer = await self.poster.post(
                subscriber.url,
                data,
                headers,
                subscriber.timeout,
                allow_link_local=subscriber.allow_link_local,
            )
        except PostFailed as exc:
            # stored, answered by the API and told in dead-letter events: the client's message
            # may name the URL, whose query may carry the subscriber's token
            return None, (time.perf_counter() - started) * 1000, mask_urls(str(exc))[:500], None
        except Exception as exc:  # a bug in a poster must not lose the claim's result
            latency = (time.perf_counter() - started) * 1000
            return None, latency, mask_urls(f"{type(exc).__name__}: {exc}")[:500], None
        latency = (time.perf_counter() - started) * 1000
        if 200 <= answer.status < 300:  # delivered: whatever else the answer says, e.g.
            return answer.status, latency, None, None  # a Retry-After, is not read
        retry_after = retry_after_seconds(answer.retry_after, moment)
        return answer.status, latency, f"HTTP {answer.status}", retry_after

    # -- recording --------------------------------------------------------------------------------
    async def _record(self, results: list[AttemptResult]) -> None:
        """Store attempts, outcomes and subscriber health in one transaction, then free the
        rows (a contact's next event becomes claimable once this one's result is stored)."""
        moment = self.clock().astimezone(UTC)
        now, stamp = moment.timestamp(), moment.isoformat()
        # released unsent (claimed ahead, then paused or stopping): pending again, no attempt
        unsent = [result.job for result in results if not result.sent]
        if unsent:
            results = [result for result in results if result.sent]
        outcomes = [self._outcome(result, now) for result in results]
        healthy: dict[str, bool] = {}
        for outcome in outcomes:
            if outcome.result.status == 429:
                continue  # a busy subscriber, not a broken one: no verdict on its health
            sub_id = outcome.result.job.subscriber_id
            healthy[sub_id] = healthy.get(sub_id, False) or outcome.state == "delivered"
        was_failing = {s for s in healthy if self.lanes[s].failing_since is not None}

        failing_since = {s: self.lanes[s].failing_since for s in was_failing}
        attempts = [
            (o.result.job.id, stamp, o.result.status, o.result.latency_ms, o.result.error)
            for o in outcomes
        ]
        finished = [self._finish_row(o, stamp) for o in outcomes]

        # rows not delivered whose contact an operator erased while they were in flight: the
        # erasure let them finish, they must not be retried (nor reported as dead letters)
        undelivered = [o.result.job.id for o in outcomes if o.state != "delivered"]
        undelivered += [job.id for job in unsent]

        def record(tx: Any) -> tuple[dict[str, str], set[str], set[str]]:
            tx.record_attempts(attempts)
            tx.finish_deliveries(finished)
            if unsent:
                tx.release_claims([(job.id, job.token) for job in unsent])
            erased: set[str] = tx.cancel_erased(undelivered, stamp)
            disabled, recovered = self._health(tx, healthy, failing_since, outcomes, now, stamp)
            told = self._report(tx, outcomes, disabled, recovered, stamp, erased)
            return disabled, told, erased

        # The usual round: every attempt delivered, no lane failing. Nothing to report, so it
        # is one statement (`record_delivered`), unless the store knows of a failure streak
        # this dispatcher does not (another replica's): then the full record runs.
        plain = (
            bool(outcomes)
            and not unsent
            and not was_failing
            and all(o.state == "delivered" for o in outcomes)
        )
        disabled: dict[str, str] = {}
        told: set[str] = set()
        if not plain or not await self.store.statement(
            lambda tx: tx.record_delivered(attempts, finished, sorted(healthy))
        ):
            disabled, told, erased = await self.store.transaction(record)
            for outcome in outcomes:  # logged and counted as stored
                if outcome.result.job.id in erased:
                    outcome.state = "erased"
        for job in unsent:
            lane = self.lanes[job.subscriber_id]
            lane.settle(job)
            lane.changed.set()
        # the transaction committed: now the lanes, the metrics and the log
        counted: dict[tuple[str, str], int] = {}
        delivered: dict[str, list[float]] = {}  # latencies of delivered attempts, per lane
        # A delivered attempt is logged at DEBUG (one line each) and summed up in one INFO line
        # per lane and round: a line per success was a tenth of the dispatcher's CPU. A failed
        # attempt keeps its own WARNING line (retried or dead): operators need every one.
        each = _log.is_enabled_for(logging.DEBUG)
        for outcome in outcomes:
            result = outcome.result
            lane = self.lanes[result.job.subscriber_id]
            lane.settle(result.job)
            if result.status == 429:  # slow down this subscriber alone, as long as it asks
                pause = min(result.retry_after or 1.0, MAX_RETRY_AFTER)
                lane.paused_until = max(lane.paused_until, now + pause)
            key = (lane.id, outcome.state)
            counted[key] = counted.get(key, 0) + 1
            ok = outcome.state == "delivered"
            if ok:
                delivered.setdefault(lane.id, []).append(result.latency_ms)
            if each or not ok:
                (_log.debug if ok else _log.warning)(
                    "delivery.attempt",
                    delivery_id=result.job.id,
                    event_id=result.job.event_id,
                    subscriber=lane.id,
                    status=result.status,
                    outcome=outcome.state,
                    attempt=outcome.attempts,
                    latency_ms=round(result.latency_ms, 2),
                    error=result.error,
                    probe=result.probe or None,
                )
        for (sub_id, state), number in counted.items():
            self.metrics.deliveries.labels(sub_id, state).inc(number)
        for sub_id, latencies in delivered.items():
            _log.info(
                "delivery.delivered",
                subscriber=sub_id,
                deliveries=len(latencies),
                latency_ms_max=round(max(latencies), 2),
                latency_ms_mean=round(sum(latencies) / len(latencies), 2),
            )
        for lane_id in {sub_id for sub_id, _ in counted}:
            self.lanes[lane_id].changed.set()
        for sub_id, ok in healthy.items():
            # a 429 is a busy subscriber, not a broken one: it pauses the lane, not the breaker
            failed = sum(
                1
                for o in outcomes
                if o.result.job.subscriber_id == sub_id and o.result.status != 429
            )
            if self.lanes[sub_id].result(ok, now, failed):
                _log.info("delivery.subscriber_recovered", subscriber=sub_id)
        for sub_id, reason in disabled.items():
            self.disabled[sub_id] = reason
            _log.warning("delivery.subscriber_disabled", subscriber=sub_id, reason=reason)
        for sub_id in told:  # operational events were queued for these lanes
            if sub_id in self.lanes:
                self.lanes[sub_id].changed.set()

    def _report(
        self,
        tx: Any,
        outcomes: list[_Outcome],
        disabled: dict[str, str],
        recovered: dict[str, float | None],
        stamp: str,
        erased: Collection[str] = (),
    ) -> set[str]:
        """Operational events for what this record did; answers the subscribers told."""
        now = self.clock().timestamp()
        subs = tuple(self.subscribers.values())
        told: set[str] = set()
        data: dict[str, Any]
        for sub_id, reason in disabled.items():
            data = {"subscriber": sub_id, "reason": reason, "disabled_at": stamp}
            told.update(emit(tx, subs, "bspgate.subscriber.disabled", sub_id, data,
                             now=now, stamp=stamp))  # fmt: skip
        for sub_id, since in recovered.items():
            data = {
                "subscriber": sub_id,
                "failing_since": iso_epoch(since) if since else None,
                "recovered_at": stamp,
            }
            told.update(emit(tx, subs, "bspgate.subscriber.recovered", sub_id, data,
                             now=now, stamp=stamp))  # fmt: skip
        for outcome in outcomes:
            job = outcome.result.job
            if outcome.state != "dead" or job.event_id.startswith(OPS_PREFIX) or job.id in erased:
                continue
            data = {
                "subscriber": job.subscriber_id,
                "delivery_id": job.id,
                "event_id": job.event_id,
                "attempts": outcome.attempts,
                "last_status": outcome.result.status,
                "last_error": outcome.result.error,
            }
            told.update(emit(tx, subs, "bspgate.delivery.dead_lettered", job.id, data,
                             now=now, stamp=stamp))  # fmt: skip
        return told

    def _outcome(self, result: AttemptResult, now: float) -> _Outcome:
        job = result.job
        subscriber = self.subscribers[job.subscriber_id]
        attempts = job.attempts + 1
        # a batch's rows share one jitter, so they come due together and are retried as the same
        # batch, under the same `webhook-id` (each row's own jitter scattered them)
        rng = random.Random(f"{result.batch_id}:{attempts}") if result.batch_id else None  # noqa: S311
        verdict = decide(
            result.status,
            attempts,
            subscriber.retry_schedule,
            retry_after=result.retry_after,
            rng=rng,
        )
        if result.probe and verdict.state != "delivered":
            # a failed early probe spends nothing: the row keeps its attempts and its due time,
            # so it is pending still, never dead (its last scheduled attempt decides that)
            state = "gone" if verdict.state == "gone" else "pending"
            return _Outcome(result, state, job.attempts, job.due)
        return _Outcome(result, verdict.state, attempts, now + verdict.delay)

    def _finish_row(self, outcome: _Outcome, stamp: str) -> tuple[Any, ...]:
        result, job = outcome.result, outcome.result.job
        # a 410 keeps the delivery pending: re-enabling the subscriber resumes from here
        state = "pending" if outcome.state == "gone" else outcome.state
        return (state, outcome.attempts, outcome.due, result.status, result.error, stamp, job.id,
                job.token)  # fmt: skip

    def _health(
        self,
        tx: Any,
        healthy: dict[str, bool],
        failing_since: dict[str, float | None],
        outcomes: list[_Outcome],
        now: float,
        stamp: str,
    ) -> tuple[dict[str, str], dict[str, float | None]]:
        """Per subscriber: recovery (pull retries forward) or the failure streak (disable).
        `failing_since`: the streaks this dispatcher knows of (its lanes'). Answers the
        subscribers disabled (with why), and those that recovered with when their streak
        began (this dispatcher's knowledge, else the store's: another replica's streak)."""
        gone = {o.result.job.subscriber_id for o in outcomes if o.state == "gone"}
        disabled: dict[str, str] = {}
        recovered: dict[str, float | None] = {}
        for sub_id, ok in healthy.items():
            if sub_id in gone and sub_id not in self.disabled:
                # a 410 says the endpoint is gone, whatever another answer of the round said
                disabled[sub_id] = "the subscriber answered 410 Gone"
                tx.disable_subscriber(sub_id, disabled[sub_id], stamp)
                continue
            if ok:
                ended = tx.clear_failing(sub_id, stamp)
                if ended is not None or sub_id in failing_since:
                    tx.pull_forward(sub_id, now, stamp)
                    recovered[sub_id] = failing_since.get(sub_id) or ended
                continue
            streak = tx.subscriber_result(sub_id, False, now, stamp)
            reason = None
            if streak is not None and now - streak >= self.subscribers[sub_id].disable_after:
                since = iso_epoch(streak)
                reason = f"every delivery failed since {since}"
            if reason is not None and sub_id not in self.disabled:
                tx.disable_subscriber(sub_id, reason, stamp)
                disabled[sub_id] = reason
        return disabled, recovered


def _retry_requested(tx: Any, *, subscriber_id: str) -> float | None:
    asked: float | None = tx.retry_requested(subscriber_id)
    return asked


def _renew(tx: Any, *, claims: list[tuple[str, str]], until: float) -> int:
    count: int = tx.renew_leases(claims, until)
    return count
