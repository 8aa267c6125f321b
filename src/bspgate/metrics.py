"""Prometheus metrics of one gateway instance (a registry per app: no module-level singletons).

`bspgate serve` counts in three processes (the server and its workers, see `bspgate.worker`):
each worker writes its rendered metrics to a file every half second (`write_to`), and the
server's `/metrics` merges them in (`peers`): samples of one name and labels are added up.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from bspgate.store.base import BACKLOG_STATES
from bspgate.times import parse_time

MAX_UNMAPPED_SERIES = 200  # distinct (provider, field) label pairs; the rest count as "other"
# `store_rows{state}` series shown from the start: the queues an operator alerts on
WATCHED_STORE_STATES = (
    "raw_received",
    "raw_quarantined",
    "deliveries_pending",
    "deliveries_inflight",
    "deliveries_held",
    "deliveries_dead",
)


class Metrics:
    """Counters the ingress, the pipeline and the dispatcher update; rendered at /metrics."""

    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series add noise
        self.registry = CollectorRegistry()
        self.webhooks = Counter(
            "bspgate_webhooks_total",
            "Webhooks received, by channel and outcome",
            ["channel", "outcome"],
            registry=self.registry,
        )
        self.events = Counter(
            "bspgate_events_total",
            "Canonical events stored, by type",
            ["type"],
            registry=self.registry,
        )
        self.deliveries = Counter(
            "bspgate_deliveries_total",
            "Delivery attempts, by subscriber and outcome",
            ["subscriber", "outcome"],
            registry=self.registry,
        )
        self.ingest_seconds = Histogram(
            "bspgate_webhook_seconds",
            "Time from request to durable answer",
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1),
        )
        self.unmapped = Counter(
            "bspgate_unmapped_fields_total",
            "Payload fields no mapping rule reads (format drift), by provider and field name",
            ["provider", "field"],
            registry=self.registry,
        )
        self.purged = Counter(
            "bspgate_retention_purged_total",
            "Rows deleted by retention, by kind (raw_payloads, events, attempts, quarantine)",
            ["kind"],
            registry=self.registry,
        )
        self._unmapped_seen: set[tuple[str, str]] = set()
        self.oldest_undelivered = Gauge(
            "bspgate_oldest_undelivered_seconds",
            "Age of the oldest delivery still waiting (pending, in flight or held) for a "
            "configured subscriber",
            registry=self.registry,
        )
        self.queue = Gauge(
            "bspgate_store_rows",
            "Rows by table state (deliveries_pending, raw_quarantined, …)",
            ["state"],
            registry=self.registry,
        )
        self.subscriber_backlog = Gauge(
            "bspgate_subscriber_backlog",
            "Deliveries of a subscriber by state (pending, inflight, held, dead)",
            ["subscriber", "state"],
            registry=self.registry,
        )
        self.subscriber_oldest_open = Gauge(
            "bspgate_subscriber_oldest_open_seconds",
            "Age of a subscriber's oldest pending, in-flight or held delivery (0: none)",
            ["subscriber"],
            registry=self.registry,
        )

        # what an operator watches is present from the start (at 0), and a state whose rows are
        # all gone reads 0 again, not the last count seen (the store counts present states only)
        self._store_states = set(WATCHED_STORE_STATES)
        self.peers: list[Path] = []  # other processes' rendered metrics, merged in
        # channels and outcomes are both from closed sets (the configured channels, the answers)
        self._webhook_children: dict[tuple[str, str], Any] = {}

    def count_webhook(self, channel: str, outcome: str) -> None:
        """One webhook answered: `webhooks{channel, outcome}` + 1 (the labelled child cached:
        `labels()` validates and locks on every call, a few µs of every webhook)."""
        child = self._webhook_children.get((channel, outcome))
        if child is None:
            child = self._webhook_children[(channel, outcome)] = self.webhooks.labels(
                channel, outcome
            )
        child.inc()

    def set_store_rows(self, counts: dict[str, int]) -> None:
        """`store_rows{state}` from the store's counts of the states that have rows."""
        for state in self._store_states - counts.keys():
            self.queue.labels(state).set(0)
        for state, number in counts.items():
            self.queue.labels(state).set(number)
        self._store_states |= counts.keys()

    def set_subscriber_backlogs(self, backlogs: dict[str, dict[str, Any]], now: float) -> None:
        """Each configured subscriber's backlog (`OutboxQueries.subscriber_backlog`): counts by
        state, and how old its oldest open delivery is (`now` in epoch seconds)."""
        for subscriber, backlog in backlogs.items():
            for state in BACKLOG_STATES:
                self.subscriber_backlog.labels(subscriber, state).set(backlog[state])
            age = 0.0
            if backlog["oldest_open_at"]:
                with contextlib.suppress(ValueError):  # a time not ours to read: 0
                    age = max(now - parse_time(backlog["oldest_open_at"]).timestamp(), 0.0)
            self.subscriber_oldest_open.labels(subscriber).set(age)

    def count_unmapped(self, provider: str, field: str) -> None:
        """Count a field no rule reads; past `MAX_UNMAPPED_SERIES` names, as field="other".

        Field names come from signed but provider-controlled payloads: without a cap a few
        payloads could create unbounded series (memory that is never released).
        """
        key = (provider, field[:64])
        if key not in self._unmapped_seen:
            if len(self._unmapped_seen) >= MAX_UNMAPPED_SERIES:
                key = (provider, "other")
            else:
                self._unmapped_seen.add(key)
        self.unmapped.labels(*key).inc()

    def render(self) -> bytes:
        if not self.peers:
            return generate_latest(self.registry)
        return generate_latest(_Merged(self.registry, self.peers))

    def write_to(self, path: Path) -> None:
        """Write this registry's rendering to `path` atomically (for the other process)."""
        partial = path.with_suffix(".partial")
        partial.write_bytes(generate_latest(self.registry))
        os.replace(partial, path)


class _Merged:
    """A collector over a registry and another process's rendering, samples added up."""

    def __init__(self, registry: CollectorRegistry, peers: list[Path]) -> None:
        self.registry, self.peers = registry, peers

    def collect(self) -> Iterator[Any]:
        from prometheus_client.parser import text_string_to_metric_families

        families = {family.name: family for family in self.registry.collect()}
        for peer in self.peers:
            text = ""
            with contextlib.suppress(OSError):
                text = peer.read_text()
            for theirs in text_string_to_metric_families(text):
                ours = families.get(theirs.name)
                if ours is None:
                    families[theirs.name] = theirs
                    continue
                index = {
                    (s.name, tuple(sorted(s.labels.items()))): i for i, s in enumerate(ours.samples)
                }
                for sample in theirs.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    if key in index:
                        mine = ours.samples[index[key]]
                        ours.samples[index[key]] = mine._replace(value=mine.value + sample.value)
                    else:
                        index[key] = len(ours.samples)
                        ours.samples.append(sample)
        yield from families.values()
