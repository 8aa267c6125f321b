"""Wires bspgate together: `Gateway` holds the parts, `create_app` makes the ASGI app.

The only module that constructs objects from settings: mappings, verifiers, store, validator,
fan-out, metrics, the shared httpx client and the dispatcher. Its lifespan opens the store
(running migrations), starts the dispatcher, and on shutdown stops taking work, lets the current
delivery round finish and closes the store (every acknowledged webhook is already committed).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import httpx
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bspgate.api import contacts as contacts_api
from bspgate.api import messages as messages_api
from bspgate.api import operations as operations_api
from bspgate.api.events import list_events
from bspgate.config import Channel, Settings
from bspgate.delivery.operational import DriftReporter
from bspgate.delivery.transport import AiohttpPoster, HttpxPoster, Poster
from bspgate.delivery.worker import Dispatcher, dispatcher_owner
from bspgate.errors import ConfigError, StoreError
from bspgate.ids import new_id
from bspgate.ingress.routes import receive_webhook, webhook_handshake
from bspgate.ingress.verify import ChannelVerifier
from bspgate.mapping.engine import MappingResult, apply_mapping
from bspgate.mapping.loader import MappingSpec, load_mapping
from bspgate.metrics import Metrics
from bspgate.pipeline import Fanout, IngestOutcome, ingest, ingest_or_quarantine
from bspgate.schema import catalog as schema_catalog
from bspgate.schema.validate import EventValidator
from bspgate.store.base import RawRecord

Clock = Callable[[], datetime]
_log = structlog.get_logger("bspgate.app")


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def open_store(settings: Settings) -> Any:
    """The store the settings name (not yet opened)."""
    if settings.storage.startswith("sqlite:"):
        from bspgate.store.sqlite import SqliteStore

        return SqliteStore.from_dsn(settings.storage)
    from bspgate.store.postgres import PostgresStore

    return PostgresStore(settings.storage)


def load_channel_mappings(settings: Settings) -> dict[str, MappingSpec]:
    """The mappings the configured channels use, compiled (a broken file fails start)."""
    return {
        name: load_mapping(settings.mappings_dir, name)
        for name in sorted({c.provider for c in settings.channels})
    }


def build_verifiers(
    settings: Settings, mappings: dict[str, MappingSpec]
) -> dict[str, ChannelVerifier]:
    verifiers = {}
    for index, channel in enumerate(settings.channels):
        try:
            verifiers[channel.id] = ChannelVerifier(channel, mappings[channel.provider].verify)
        except ConfigError as exc:
            raise ConfigError(
                exc.key.replace(f"channels[{channel.id}]", f"channels[{index}]"), exc.message
            ) from exc
    return verifiers


def default_http_client() -> httpx.AsyncClient:
    """The shared outbound client: httpx API over aiohttp's transport.

    Measured on this class of machine (docs/performance.md): httpx's default transport is ~25x
    slower at 32 concurrent deliveries; httpx-aiohttp keeps the httpx API (and respx in tests).
    """
    from httpx_aiohttp import AiohttpTransport

    return httpx.AsyncClient(transport=AiohttpTransport(), follow_redirects=False)


@dataclass
class Gateway:
    """Everything a request handler may use. Built once per app."""

    settings: Settings
    mappings: dict[str, MappingSpec]
    verifiers: dict[str, ChannelVerifier]
    store: Any
    client: httpx.AsyncClient
    clock: Clock = utc_now
    validator: EventValidator = field(default_factory=EventValidator)
    metrics: Metrics = field(default_factory=Metrics)
    dispatcher: Dispatcher | None = None

    def __post_init__(self) -> None:
        base = self.settings.server.public_url.rstrip("/") + "/v1/schemas"
        self.fanout = Fanout(self.settings.subscribers, schema_base=base)
        self.drift = DriftReporter(self.settings.subscribers)

    async def ingest(
        self,
        channel: Channel,
        payload: Any,
        body: bytes,
        content_type: str,
        traceparent: str | None = None,
    ) -> IngestOutcome:
        """Map, resolve and store one parsed webhook in one transaction."""
        spec = self.mappings[channel.provider]
        moment = self.clock()
        try:
            mapped = apply_mapping(spec, payload, channel.as_scope(), received_at=iso(moment))
        except Exception as exc:  # a mapping bug must quarantine, never lose, the payload
            mapped = MappingResult(issues=[f"mapping engine error: {type(exc).__name__}: {exc}"])
        if mapped.unmapped:
            # the provider sent fields no rule reads: its format may have changed (names only)
            for name in mapped.unmapped:
                self.metrics.unmapped.labels(channel.provider, name[:64]).inc()
            _log.info("mapping.unmapped_fields", provider=channel.provider, fields=mapped.unmapped)
            await self.drift.report(self.store, channel, mapped.unmapped, moment)
        raw = RawRecord(
            id=new_id("raw"),
            channel_id=channel.id,
            provider=channel.provider,
            received_at=iso(moment),
            content_type=content_type or "application/octet-stream",
            body=body,
            traceparent=traceparent,
        )
        work = partial(
            ingest,
            channel=channel,
            raw=raw,
            mapped=mapped,
            validator=self.validator,
            fanout=self.fanout,
            now=iso(moment),
            now_epoch=moment.timestamp(),
        )
        # schema failures and any unexpected error end as a quarantined raw payload (pipeline.py)
        outcome = await ingest_or_quarantine(self.store, work, raw, fanout=self.fanout)
        for event in outcome.events:
            self.metrics.events.labels(event["type"]).inc()
        if outcome.deliveries and self.dispatcher is not None:
            self.dispatcher.wake()
        return outcome


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    ready = await gateway.store.ping()
    return JSONResponse({"status": "ready" if ready else "unavailable"}, 200 if ready else 503)


async def metrics(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    with contextlib.suppress(StoreError):
        counts, oldest = await gateway.store.read(lambda tx: (tx.counts(), tx.oldest_undelivered()))
        for key, value in counts.items():
            gateway.metrics.queue.labels(key).set(value)
        age = 0.0
        if oldest is not None:
            age = max((gateway.clock() - datetime.fromisoformat(oldest)).total_seconds(), 0.0)
        gateway.metrics.oldest_undelivered.set(age)
    return Response(gateway.metrics.render(), media_type="text/plain; version=0.0.4")


def create_app(
    settings: Settings,
    *,
    store: Any = None,
    http_client: httpx.AsyncClient | None = None,
    clock: Clock = utc_now,
    dispatch: bool = True,
) -> Starlette:
    """The ASGI app for `settings`. Tests inject the store, the httpx client and the clock."""
    mappings = load_channel_mappings(settings)
    verifiers = build_verifiers(settings, mappings)
    owns_client = http_client is None
    gateway = Gateway(
        settings=settings,
        mappings=mappings,
        verifiers=verifiers,
        store=store if store is not None else open_store(settings),
        client=http_client if http_client is not None else default_http_client(),
        clock=clock,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.store.open()
        task = None
        if dispatch and settings.storage.startswith("sqlite:"):
            # One process owns an SQLite store: deliveries in flight when it last stopped (even by
            # SIGKILL) are retried at once, with the same webhook-id. PostgreSQL replicas cannot
            # know whose claim is dead, so there claims expire with their lease instead.
            now = clock().timestamp()
            await gateway.store.transaction(lambda tx: tx.recover_inflight(now))
        if dispatch:
            # deliveries post through aiohttp (measured ~3x httpx-over-aiohttp); an injected
            # httpx client (tests) is used as given
            poster: Poster = AiohttpPoster() if owns_client else HttpxPoster(gateway.client)
            gateway.dispatcher = Dispatcher(
                gateway.store,
                settings.subscribers,
                poster,
                gateway.metrics,
                clock=clock,
                owner=dispatcher_owner(settings),
            )
            task = gateway.dispatcher.start()
        try:
            yield
        finally:
            if gateway.dispatcher is not None and task is not None:
                gateway.dispatcher.stop()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(task, timeout=15)
                await gateway.dispatcher.poster.aclose()
            if owns_client:
                await gateway.client.aclose()
            await gateway.store.close()

    routes = [
        Route("/webhooks/{channel_id}", receive_webhook, methods=["POST"]),
        Route("/webhooks/{channel_id}", webhook_handshake, methods=["GET", "OPTIONS"]),
        Route("/v1/events", list_events, methods=["GET"]),
        *schema_catalog.routes(),
        *contacts_api.routes(),
        *operations_api.routes(),
        *messages_api.routes(),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.gateway = gateway
    return app
