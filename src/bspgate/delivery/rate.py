"""A subscriber's `rate:` (`50/s`, `3000/m`, `100000/h`) as a token bucket.

The bucket refills continuously at the configured rate and holds at most one second's worth of
tokens (at least one), so `3000/m` allows bursts of 50 and never more than 3000 in any minute.
Each delivery attempt takes one token; a lane whose bucket is empty waits for the next token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_RATE = re.compile(r"^([0-9]+)/(s|m|h)$")
_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(text: str) -> float:
    """`50/s` -> 50.0 tokens per second."""
    match = _RATE.match(text)
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"not a rate: {text!r} (e.g. 50/s, 3000/m, 100000/h)")
    return int(match.group(1)) / _PER[match.group(2)]


@dataclass(slots=True)
class TokenBucket:
    per_second: float
    tokens: float = -1.0  # full on first use
    stamp: float = 0.0

    @property
    def capacity(self) -> float:
        return max(1.0, self.per_second)

    def _refill(self, now: float) -> None:
        if self.tokens < 0:
            self.tokens, self.stamp = self.capacity, now
            return
        elapsed = max(now - self.stamp, 0.0)
        self.tokens = min(self.capacity, self.tokens + elapsed * self.per_second)
        self.stamp = now

    def available(self, now: float) -> int:
        """Whole tokens there now."""
        self._refill(now)
        return int(self.tokens)

    def take(self, count: int, now: float) -> None:
        self._refill(now)
        self.tokens -= count

    def wait(self, now: float) -> float:
        """Seconds until the next whole token."""
        self._refill(now)
        if self.tokens >= 1:
            return 0.0
        return (1 - self.tokens) / self.per_second
