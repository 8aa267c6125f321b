"""Retention: how long stored rows are kept (`retention:` in config, each key off by default).

    retention:
      raw_payloads: 30d     # raw webhook bodies (processed ones; quarantined ones: `quarantine`)
      events: 90d           # canonical events whose deliveries are all settled
      attempts: 30d         # delivery attempt log lines
      quarantine: 90d       # quarantined raw payloads
      interval: 1m          # how often the purger runs (default 1m)
      batch: 100            # rows per delete transaction (default 100)

`Purger` deletes expired rows in small batches in the background, one short transaction per
batch, and after each batch waits `yield_factor` times as long as the batch took: the store's
writer spends at most a quarter of its time purging, and a webhook waits at most one small batch
(measured: bench/retention.py). Every row deleted is counted in
`bspgate_retention_purged_total{kind}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from bspgate.metrics import Metrics
    from bspgate.store.base import Store

KINDS = ("raw_payloads", "events", "attempts", "quarantine")
_log = structlog.get_logger("bspgate.retention")


@dataclass(frozen=True, slots=True)
class Retention:
    """Seconds to keep each kind of row (None: kept forever)."""

    raw_payloads: float | None = None
    events: float | None = None
    attempts: float | None = None
    quarantine: float | None = None
    interval: float = 60.0
    batch: int = 100

    @property
    def enabled(self) -> bool:
        return any(getattr(self, kind) is not None for kind in KINDS)

    def ages(self) -> dict[str, float]:
        """The kinds that are purged, with their maximum age in seconds."""
        return {k: v for k in KINDS if (v := getattr(self, k)) is not None}


def retention_from_dict(raw: dict[str, Any]) -> Retention:
    """The `retention:` section (already schema-checked) as `Retention`."""
    from bspgate.config import parse_duration

    values: dict[str, Any] = {k: parse_duration(raw[k]) for k in KINDS if raw.get(k)}
    if raw.get("interval"):
        values["interval"] = parse_duration(raw["interval"])
    if raw.get("batch"):
        values["batch"] = int(raw["batch"])
    return Retention(**values)


def _purge(kind: str, cutoff: str, batch: int, tx: Any) -> int:
    deleted: int = tx.purge(kind, cutoff, batch)
    return deleted


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Purger:
    """Deletes expired rows, a batch per transaction, until none is left; then sleeps."""

    def __init__(
        self,
        store: Store,
        retention: Retention,
        metrics: Metrics,
        clock: Callable[[], datetime],
        pause: float = 0.005,
        yield_factor: float = 3.0,
    ) -> None:
        self.store = store
        self.retention = retention
        self.metrics = metrics
        self.clock = clock
        self.pause = pause  # at least this between batches
        self.yield_factor = yield_factor  # and this many times the last batch's duration
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def purge_once(self) -> dict[str, int]:
        """Purge every kind until nothing expired is left; the rows deleted per kind."""
        totals: dict[str, int] = {}
        now = self.clock()
        for kind, age in self.retention.ages().items():
            cutoff = _iso(now - timedelta(seconds=age))
            total = 0
            while not self._stop.is_set():
                batch = self.retention.batch
                started = time.perf_counter()
                deleted: int = await self.store.transaction(partial(_purge, kind, cutoff, batch))
                took = time.perf_counter() - started
                if deleted:
                    total += deleted
                    self.metrics.purged.labels(kind).inc(deleted)
                if deleted < batch:
                    break
                # ingest gets the writer back: wait a multiple of what this batch took
                await asyncio.sleep(max(self.pause, took * self.yield_factor))
            totals[kind] = total
        if any(totals.values()):
            _log.info("retention.purged", **totals)
        return totals

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.purge_once()
            except Exception as exc:  # a failed purge is retried next round; ingest goes on
                _log.warning("retention.failed", error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.retention.interval)
