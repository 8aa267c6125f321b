"""When to try a failed delivery again: the subscriber's schedule, jitter, and Retry-After.

Attempt n (1-based) failed -> wait `schedule[n-1]` seconds ± 20 % jitter; after the last entry the
delivery is dead-lettered. A `Retry-After` answer (seconds or HTTP date) replaces the scheduled
wait when it is longer, capped at one day, so a subscriber asking for patience gets it but cannot
park a delivery forever. Which answers are worth retrying is decided here too.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

JITTER = 0.2
MAX_RETRY_AFTER = 86_400.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do after an attempt: `state` is delivered, pending (with `delay`), dead or gone."""

    state: str
    delay: float = 0.0


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or HTTP-date), or None: never an
    exception, whatever the header holds (`str.isdigit` alone accepts `²` and other Unicode
    digits, which `float` cannot read; delta-seconds are ASCII digits, RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max((moment - now).total_seconds(), 0.0)


def decide(
    status: int | None,
    attempts: int,
    schedule: tuple[float, ...],
    *,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> Verdict:
    """The verdict after attempt number `attempts` ended with HTTP `status` (None: no answer)."""
    if status is not None and 200 <= status < 300:
        return Verdict("delivered")
    if status == 410:
        return Verdict("gone")
    if attempts > len(schedule):
        return Verdict("dead")
    base = schedule[attempts - 1]
    jitter = (rng or random).uniform(1 - JITTER, 1 + JITTER)  # spreading load, not security
    delay = base * jitter
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return Verdict("pending", delay)
