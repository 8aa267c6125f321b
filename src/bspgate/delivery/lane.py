"""One subscriber's lane: its in-flight limit, claim lease, failure streak and circuit breaker.

Lanes are independent: a subscriber answering slowly fills only its own `max_in_flight` slots,
and a failing one opens only its own breaker. The breaker, per process:

- closed: due rows are claimed up to the free slots.
- failing (the last answer was a failure): due rows still go, and when nothing is due the lane
  probes early with its oldest pending row that already failed twice (the schedule's short first
  retry is spent), so a receiver that is back is noticed within seconds instead of at the next
  scheduled retry (5 m, 30 m, ...). A failed early probe spends none of the row's attempts.
- open (`OPEN_AFTER` failures in a row): one attempt at a time (a due row, else an early probe),
  at the probe interval; the other due retries wait, held, without spending their attempts.

The first success after failures closes the breaker and pulls every pending retry of the
subscriber forward (the dispatcher does that in the store), so everything held drains in order.
Probes come every 2 s in the first minute of failure, 5 s up to ten minutes, then every 30 s.

A lane posts from its own coroutines (at most `max_in_flight`, started as the traffic needs them
and kept), each taking the next claimed request from the lane's queue: no task per attempt. A
healthy lane claims ahead (see `capacity`); a claimed request still waiting when the lane is
paused by a 429 or the dispatcher stops is released unsent (no attempt spent).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from bspgate.config import Subscriber
from bspgate.delivery.rate import TokenBucket
from bspgate.store.base import DeliveryJob

OPEN_AFTER = 5
LEASE_MARGIN = 30.0


def lease_for(timeout: float) -> float:
    """A claim lease always longer than the attempt it covers (renewed while it runs)."""
    return 2 * timeout + LEASE_MARGIN


def probe_interval(failing_for: float) -> float:
    """Seconds between probes of a failing subscriber, by how long it has been failing."""
    if failing_for < 60:
        return 2.0
    if failing_for < 600:
        return 5.0
    return 30.0


@dataclass(eq=False)
class Lane:
    subscriber: Subscriber
    inflight: dict[str, tuple[DeliveryJob, float]] = field(default_factory=dict)  # unrecorded
    posting: int = 0  # requests claimed and not answered yet: open, or waiting their turn
    failures: int = 0  # failed answers in a row
    failing_since: float | None = None
    last_probe: float = 0.0
    paused_until: float = 0.0  # a 429's Retry-After
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    fixed_lease: float | None = None  # tests: a lease of their own instead of the derived one
    bucket: TokenBucket | None = None  # the subscriber's `rate:`
    # claimed requests (one job, or a batch) waiting for one of the lane's posting coroutines;
    # those coroutines are started as needed, at most `max_in_flight`, and then kept
    queue: asyncio.Queue[list[tuple[DeliveryJob, bool]]] = field(default_factory=asyncio.Queue)
    workers: int = 0  # posting coroutines started
    idle: int = 0  # of which waiting for a request
    retry_seen: float = 0.0  # the latest operator retry (stored) this lane has acted on
    retry_checked: float = float("-inf")  # when the lane last looked for one (dispatcher clock)

    def __post_init__(self) -> None:
        if self.subscriber.rate is not None:
            self.bucket = TokenBucket(self.subscriber.rate)

    def allowed(self, now: float) -> int:
        """Events the lane may send now: free slots (times the batch size), the rate, a 429's
        pause."""
        if now < self.paused_until:
            return 0
        free = self.free * max(self.subscriber.batch_max, 1)
        if self.bucket is not None:
            free = min(free, self.bucket.available(now))
        return free

    def seconds_to_send(self, now: float) -> float:
        """How long until `allowed` may be more than 0 again (slots aside)."""
        wait = max(self.paused_until - now, 0.0)
        if self.bucket is not None:
            wait = max(wait, self.bucket.wait(now))
        return wait

    @property
    def id(self) -> str:
        return self.subscriber.id

    @property
    def lease(self) -> float:
        return self.fixed_lease or lease_for(self.subscriber.timeout)

    @property
    def capacity(self) -> int:
        """Requests the lane may hold claimed. At most `max_in_flight` are open at once (that
        many posting coroutines); a healthy lane without a rate or batching also holds as many
        again claimed and waiting, so its next claim's round trip through the store overlaps
        with posting instead of emptying the slots (in the delivery benchmark, without it, 16 of
        64 slots were busy on average). A failing, rate-limited or batching lane claims only what
        it can send."""
        limit = self.subscriber.max_in_flight
        if self.failing_since is None and self.bucket is None and not self.subscriber.batch_max:
            return 2 * limit
        return limit

    @property
    def free(self) -> int:
        return max(self.capacity - self.posting, 0)

    @property
    def is_open(self) -> bool:
        return self.failures >= OPEN_AFTER

    def probe_due(self, now: float) -> bool:
        """A probe may go now: the lane is failing, nothing of it is in flight or unrecorded,
        and its time has come."""
        if self.failing_since is None or self.inflight:
            return False
        return now - self.last_probe >= probe_interval(now - self.failing_since)

    def seconds_to_probe(self, now: float) -> float | None:
        if self.failing_since is None:
            return None
        wait = self.last_probe + probe_interval(now - self.failing_since) - now
        return max(wait, 0.0)

    def settle(self, job: DeliveryJob) -> None:
        """`job`'s attempt is recorded: it is no longer in flight, unless its row was claimed
        again since (a newer claim of the same delivery, whose lease must still be renewed)."""
        held = self.inflight.get(job.id)
        if held is not None and held[0].token == job.token:
            del self.inflight[job.id]

    def result(self, ok: bool, now: float, failed: int = 1) -> bool:
        """Count answers (any success, or `failed` failures); True on a recovery."""
        if ok:
            recovered = self.failing_since is not None
            self.failures, self.failing_since = 0, None
            return recovered
        if failed == 0:  # only 429s: a busy subscriber, already paused
            return False
        self.failures += failed
        if self.failing_since is None:
            self.failing_since = now
            self.last_probe = now
        return False
