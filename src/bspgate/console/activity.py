"""Recent activity from the instance's own counters: webhooks by channel and outcome, events by
type, over the last minutes.

The Prometheus counters only grow; the console keeps snapshots of them (taken when a console
page or the live tail asks, at most every 10 s, for an hour) and answers the difference to the
newest snapshot at least `minutes` old. Until one exists the baseline is the instance's start,
and the page says so ("since"). Under `bspgate serve` the counts of the worker processes
(where payloads are processed: their outcomes and events) are added, read from the files they
write for `/metrics`. With several replicas each console shows its own instance.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import Counter
from prometheus_client.parser import text_string_to_metric_families

_EVERY = 10.0
_KEEP = 3600.0
Counts = dict[tuple[str, ...], float]


def read_counter(counter: Counter, peers: Sequence[Path] = ()) -> Counts:
    """The counter's values by labels, those of `peers` (other processes' renderings) added."""
    out: Counts = {}
    names = set()
    for metric in counter.collect():
        names.add(metric.name)
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                out[tuple(sample.labels.values())] = sample.value
    for peer in peers:
        text = ""
        with contextlib.suppress(OSError):  # a worker not yet started, or restarting
            text = peer.read_text()
        for family in text_string_to_metric_families(text):
            if family.name not in names:
                continue
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    key = tuple(sample.labels.values())
                    out[key] = out.get(key, 0.0) + sample.value
    return out


@dataclass
class Activity:
    """Snapshots of two counters; `recent(minutes)` answers what changed in that window."""

    webhooks: Counter
    events: Counter
    started: float = field(default_factory=time.time)
    peers: Callable[[], list[Path]] = list  # the worker processes' metrics files
    _snapshots: deque[tuple[float, Counts, Counts]] = field(default_factory=deque)

    def sample(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if self._snapshots and now - self._snapshots[-1][0] < _EVERY:
            return
        self._snapshots.append((now, *self._read()))
        while self._snapshots and now - self._snapshots[0][0] > _KEEP:
            self._snapshots.popleft()

    def recent(self, minutes: float, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        self.sample(now)
        since, base_hooks, base_events = self.started, {}, {}
        for moment, hooks, events in self._snapshots:
            if moment <= now - minutes * 60:
                since, base_hooks, base_events = moment, hooks, events
        hooks_now, events_now = self._read()
        by_channel: dict[str, dict[str, int]] = {}
        for (channel, outcome), value in hooks_now.items():
            delta = int(value - base_hooks.get((channel, outcome), 0.0))
            if delta:
                by_channel.setdefault(channel, {})[outcome] = delta
        by_type = {
            labels[0]: int(value - base_events.get(labels, 0.0))
            for labels, value in sorted(events_now.items())
            if value - base_events.get(labels, 0.0)
        }
        return {"since": since, "by_channel": by_channel, "by_type": by_type}

    def _read(self) -> tuple[Counts, Counts]:
        peers = self.peers()
        return read_counter(self.webhooks, peers), read_counter(self.events, peers)
