"""Normalization without a server or a database: `bspgate normalize`, golden cases, benchmarks.

Runs the exact production path (parse -> mapping engine -> identity rules -> canonical schema) over
the in-memory store, so what it prints is what the gateway would store and deliver. Contact ids
are minted fresh per run (no store keeps them); the raw id is derived from the body.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from typing import Any

from bspgate.config import Channel
from bspgate.ids import digest_id
from bspgate.ingress.parse import parse_payload
from bspgate.mapping.loader import MappingSpec
from bspgate.pipeline import Fanout, IngestOutcome, InvalidEvents, ingest
from bspgate.processing import map_payload, stamp
from bspgate.schema.validate import EventValidator
from bspgate.store.base import RawRecord
from bspgate.store.memory import MemoryTx


def demo_channel(provider: str, **overrides: Any) -> Channel:
    """A channel for normalizing outside any config: id = provider, portfolio `default`."""
    values: dict[str, Any] = {"id": provider, "provider": provider, "portfolio": "default"}
    values.update(overrides)
    return Channel(**values)


class Normalizer:
    """Normalizes payloads for one mapping; keeps identity state across calls (one `MemoryTx`)."""

    def __init__(
        self, spec: MappingSpec, channel: Channel, validator: EventValidator | None = None
    ):
        self.spec = spec
        self.channel = channel
        self.validator = validator or EventValidator()
        self.tx = MemoryTx()
        self._fanout = Fanout(())

    def normalize_body(self, body: bytes, content_type: str = "application/json") -> IngestOutcome:
        """Parse and normalize a body as the provider sends it. Raises `PayloadError`."""
        return self.normalize(parse_payload(body, self.spec.parse), body, content_type)

    def normalize(
        self,
        payload: Any,
        body: bytes = b"",
        content_type: str = "",
        received_at: datetime | None = None,
    ) -> IngestOutcome:
        # `received_at` pins the receive time (golden cases of providers that send no event time).
        now = received_at or datetime.now(UTC)
        raw = RawRecord(
            id=digest_id("raw", body or repr(payload).encode()),
            channel_id=self.channel.id,
            provider=self.channel.provider,
            received_at=stamp(now),  # the one time format, as the server stores it
            content_type=content_type,
            body=body,
        )
        # the one ingest pipeline's mapping step (the payload is parsed already)
        mapped = map_payload(self.spec, self.channel, raw, payload)
        try:
            # one transaction, as on the SQL stores: a payload that fails leaves nothing behind
            return self.tx.run(
                partial(
                    ingest,
                    channel=self.channel,
                    raw=raw,
                    mapped=mapped,
                    validator=self.validator,
                    fanout=self._fanout,
                    now=stamp(now),
                    now_epoch=now.timestamp(),
                    store_raw=False,
                )
            )
        except InvalidEvents as exc:
            return IngestOutcome(raw.id, "quarantined", issues=[exc.reason])
