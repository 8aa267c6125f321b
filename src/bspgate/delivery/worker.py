"""The dispatcher: claims due outbox rows, POSTs signed CloudEvents, records every attempt.

One background task per server process. Each round claims up to `batch` due rows in one store
transaction (per-contact ordering is enforced by the claim query), sends them concurrently through
the one shared httpx client, then records attempts and outcomes in one transaction. A claimed row
carries a lease: if the process dies mid-delivery, the lease expires and the row is retried with
the same `webhook-id`, so receivers can de-duplicate. `wake()` lets ingest start a round at once.
Signing uses the Standard Webhooks reference library: `webhook-id` is the event id,
`webhook-signature` is `v1,<base64 HMAC-SHA256("{id}.{timestamp}.{body}")>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog
from standardwebhooks import Webhook

from bspgate.config import Subscriber
from bspgate.delivery.retry import decide, retry_after_seconds
from bspgate.delivery.transport import HttpxPoster, Poster, PostFailed
from bspgate.metrics import Metrics
from bspgate.store.base import DeliveryJob

_log = structlog.get_logger("bspgate.delivery")
CONTENT_TYPE = "application/cloudevents+json"


@dataclass(frozen=True, slots=True)
class AttemptResult:
    job: DeliveryJob
    status: int | None
    latency_ms: float
    error: str | None
    retry_after: float | None


class Dispatcher:
    """Delivers the outbox. `store` needs `transaction()`; `clock()` returns aware datetimes."""

    def __init__(
        self,
        store: Any,
        subscribers: tuple[Subscriber, ...],
        client: httpx.AsyncClient | Poster,
        metrics: Metrics,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        batch: int = 64,
        lease: float = 60.0,
        idle_poll: float = 1.0,
    ) -> None:
        self.store = store
        self.subscribers = {s.id: s for s in subscribers}
        self._signers = {s.id: Webhook(s.secret.reveal()) for s in subscribers}
        self.poster: Poster = (
            HttpxPoster(client) if isinstance(client, httpx.AsyncClient) else client
        )
        self.metrics = metrics
        self.clock = clock
        self.batch = batch
        self.lease = lease
        self.idle_poll = idle_poll
        self._wake = asyncio.Event()
        self._stopping = False
        self._ordered = {s.id for s in subscribers if s.ordering == "per_contact"}
        self._holding = [s for s in subscribers if s.require_phone]
        self.disabled: dict[str, str] = {}

    def wake(self) -> None:
        """Start the next round now (called after ingest commits new outbox rows)."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self, rounds: int = 2) -> None:
        """Deliver until `stop()`; a failing round is logged and retried, never fatal.

        `rounds` rounds overlap: while one waits for its slowest subscriber, the next claims and
        sends. Claims are exclusive (a claimed row is in flight) and only the head of each
        contact's queue is claimable, so overlapping rounds keep per-contact order.
        """
        await asyncio.gather(*(self._loop() for _ in range(max(1, rounds))))

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                sent = await self.run_once()
            except Exception as exc:  # keep delivering: the next round may succeed
                _log.error("delivery.round_failed", error=repr(exc))
                sent = 0
            if sent == 0 and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.idle_poll)
                self._wake.clear()

    async def run_once(self) -> int:
        """One round: claim, send, record. Answers how many deliveries were attempted."""
        moment = self.clock()
        now, stamp = moment.timestamp(), moment.isoformat()

        def claim(tx: Any) -> list[DeliveryJob]:
            # disabled state lives in the store: operators (and other replicas) see and change it
            self.disabled = {
                sub_id: str(state["reason"])
                for sub_id, state in tx.subscriber_states().items()
                if state["disabled_at"] and sub_id in self.subscribers
            }
            for held in self._holding:
                tx.expire_held(held.id, now - held.hold_for, stamp)
            jobs: list[DeliveryJob] = tx.claim_due(
                now, self.lease, self.batch, self._ordered, exclude=frozenset(self.disabled)
            )
            return jobs

        jobs = await self.store.transaction(claim)
        if not jobs:
            return 0
        results = await asyncio.gather(*(self._attempt(job) for job in jobs))
        await self.store.transaction(lambda tx: self._record(tx, results))
        return len(jobs)

    async def _attempt(self, job: DeliveryJob) -> AttemptResult:
        subscriber = self.subscribers[job.subscriber_id]
        # UTC: standardwebhooks' sign() replaces the tzinfo instead of converting it.
        moment = self.clock().astimezone(UTC)
        signature = self._signers[subscriber.id].sign(job.event_id, moment, job.body)
        headers = {
            "content-type": CONTENT_TYPE,
            "webhook-id": job.event_id,
            "webhook-timestamp": str(int(moment.timestamp())),
            "webhook-signature": signature,
            "user-agent": "bspgate",
        }
        started = time.perf_counter()
        try:
            answer = await self.poster.post(
                subscriber.url, job.body.encode(), headers, subscriber.timeout
            )
        except PostFailed as exc:
            latency = (time.perf_counter() - started) * 1000
            return AttemptResult(job, None, latency, str(exc)[:500], None)
        latency = (time.perf_counter() - started) * 1000
        error = None if 200 <= answer.status < 300 else f"HTTP {answer.status}"
        retry_after = retry_after_seconds(answer.retry_after, moment)
        return AttemptResult(job, answer.status, latency, error, retry_after)

    def _record(self, tx: Any, results: list[AttemptResult]) -> None:
        """One transaction per round: attempts and outcomes written in bulk, one health update
        per subscriber (any success clears its failure streak)."""
        moment = self.clock().astimezone(UTC)
        now, stamp = moment.timestamp(), moment.isoformat()
        attempt_rows: list[tuple[Any, ...]] = []
        finish_rows: list[tuple[Any, ...]] = []
        health: dict[str, bool] = {}
        gone: set[str] = set()
        for result in results:
            job = result.job
            subscriber = self.subscribers[job.subscriber_id]
            attempts = job.attempts + 1
            verdict = decide(
                result.status, attempts, subscriber.retry_schedule, retry_after=result.retry_after
            )
            delivered = verdict.state == "delivered"
            health[subscriber.id] = health.get(subscriber.id, False) or delivered
            if verdict.state == "gone":
                gone.add(subscriber.id)
            # a 410 keeps the delivery pending: re-enabling the subscriber resumes from here
            state = "pending" if verdict.state == "gone" else verdict.state
            attempt_rows.append((job.id, stamp, result.status, result.latency_ms, result.error))
            finish_rows.append(
                (state, attempts, now + verdict.delay, result.status, result.error, stamp, job.id)
            )
            self.metrics.deliveries.labels(subscriber.id, verdict.state).inc()
            # a failed attempt is a warning (retried or dead), a delivered one info
            (_log.info if verdict.state == "delivered" else _log.warning)(
                "delivery.attempt",
                delivery_id=job.id,
                event_id=job.event_id,
                subscriber=subscriber.id,
                status=result.status,
                outcome=verdict.state,
                attempt=attempts,
                latency_ms=round(result.latency_ms, 2),
                error=result.error,
            )
        tx.record_attempts(attempt_rows)
        tx.finish_deliveries(finish_rows)
        for subscriber_id, ok in health.items():
            failing_since = tx.subscriber_result(subscriber_id, ok, now, stamp)
            reason = None
            if subscriber_id in gone:
                reason = "the subscriber answered 410 Gone"
            elif failing_since is not None and (
                now - failing_since >= self.subscribers[subscriber_id].disable_after
            ):
                since = datetime.fromtimestamp(failing_since, UTC).isoformat()
                reason = f"every delivery failed since {since}"
            if reason is not None and subscriber_id not in self.disabled:
                tx.disable_subscriber(subscriber_id, reason, stamp)
                self.disabled[subscriber_id] = reason
                _log.warning(
                    "delivery.subscriber_disabled", subscriber=subscriber_id, reason=reason
                )
