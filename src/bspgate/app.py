"""Wires bspgate together: `Gateway` holds the parts, `create_app` makes the ASGI app.

The only module that constructs objects from settings: mappings, verifiers, store, validator,
fan-out, metrics, the shared httpx client, the processor and the dispatcher. Its lifespan opens
the store (running migrations), starts the processing stage and the dispatcher, and on shutdown
stops taking work, lets the current rounds finish and closes the store (every acknowledged
webhook is already committed).

Where processing and delivery run (`processing=`):
- "worker" (`bspgate serve`): a worker process of its own (`bspgate.worker`), so deriving events
  and delivering them use the second core; this process answers webhooks once the raw payload is
  durable. On SQLite both processes coordinate their writes (`SqliteStore(shared=True)`).
- "background": in this process, as tasks; the answer still only waits for the raw payload.
- "inline" (the default for an app built in-process, as tests do): in this process, and each
  webhook's answer waits until its payload has been processed (batched with concurrent ones), so
  a test can read the events right after posting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from bspgate.api import contacts as contacts_api
from bspgate.api import messages as messages_api
from bspgate.api import openapi as openapi_api
from bspgate.api import operations as operations_api
from bspgate.api import raws as raws_api
from bspgate.api.events import list_events
from bspgate.config import Channel, Settings
from bspgate.delivery.transport import AiohttpPoster, HttpxPoster, Poster, connection_limit
from bspgate.delivery.worker import Dispatcher
from bspgate.errors import ConfigError, StoreError
from bspgate.http import RequestLog, exception_handlers
from bspgate.ids import new_id
from bspgate.ingress.routes import WebhookShortcut, receive_webhook, webhook_handshake
from bspgate.ingress.verify import ChannelVerifier
from bspgate.mapping.loader import MappingSpec
from bspgate.metrics import Metrics
from bspgate.pipeline import Fanout, IngestOutcome
from bspgate.processing import Processor, Rules, stamp
from bspgate.schema import catalog as schema_catalog
from bspgate.schema.validate import EventValidator
from bspgate.stage import Stage, load_channel_mappings, open_store, utc_now
from bspgate.store.base import RawRecord, Store

Clock = Callable[[], datetime]
_log = structlog.get_logger("bspgate.app")


iso = stamp  # the one time format (processing.stamp)


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
    store: Store
    client: httpx.AsyncClient
    clock: Clock = utc_now
    validator: EventValidator = field(default_factory=EventValidator)
    metrics: Metrics = field(default_factory=Metrics)
    dispatcher: Dispatcher | None = None
    processor: Processor | None = None
    inline: bool = True  # answers wait for processing (see the module docstring)

    def __post_init__(self) -> None:
        self.rules = Rules(self.settings, self.mappings, self.validator)
        self.fanout: Fanout = self.rules.fanout

    async def ingest(
        self,
        channel: Channel,
        payload: Any,
        body: bytes,
        content_type: str,
        traceparent: str | None = None,
    ) -> IngestOutcome:
        """Store one parsed webhook's raw payload durably; processing follows (or is awaited)."""
        raw = RawRecord(
            id=new_id("raw"),
            channel_id=channel.id,
            provider=channel.provider,
            received_at=iso(self.clock()),
            content_type=content_type or "application/octet-stream",
            body=body,
            state="received",
            traceparent=traceparent,
        )
        if self.inline and self.processor is None:
            # built without create_app's lifespan (tests): process on demand, no loop running
            self.processor = Processor(
                self.store, self.rules, clock=self.clock, metrics=self.metrics
            )
        waiter = None
        if self.inline and self.processor is not None:
            waiter = self.processor.expect(raw.id, payload)
        try:
            await self.store.accept(raw)
        except BaseException:
            if self.processor is not None:
                self.processor.forget(raw.id)
            raise
        if self.processor is not None:
            self.processor.wake()
        if waiter is None:
            return IngestOutcome(raw.id, "accepted")
        if self.processor is not None and not self.processor.running:
            await self.processor.drain()
        outcome = await waiter
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
        # a subscriber removed from the config keeps its open rows, which nothing sends: they
        # are not undelivered for anyone (docs/delivery.md), and an alert on them never clears
        ids = [s.id for s in gateway.settings.subscribers]
        counts, oldest = await gateway.store.queue_counts(ids)
        gateway.metrics.set_store_rows(counts)
        age = 0.0
        if oldest is not None:
            age = max((gateway.clock() - datetime.fromisoformat(oldest)).total_seconds(), 0.0)
        gateway.metrics.oldest_undelivered.set(age)
        backlogs = await gateway.store.read(lambda tx: tx.subscriber_backlog(ids))
        gateway.metrics.set_subscriber_backlogs(backlogs, gateway.clock().timestamp())
    return Response(gateway.metrics.render(), media_type="text/plain; version=0.0.4")


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    http_client: httpx.AsyncClient | None = None,
    clock: Clock = utc_now,
    dispatch: bool = True,
    processing: str = "inline",
) -> Starlette:
    """The ASGI app for `settings`. Tests inject the store, the httpx client and the clock."""
    mappings = load_channel_mappings(settings)
    verifiers = build_verifiers(settings, mappings)
    owns_client = http_client is None
    in_worker = processing == "worker"
    gateway = Gateway(
        settings=settings,
        mappings=mappings,
        verifiers=verifiers,
        store=store if store is not None else open_store(settings, shared=in_worker),
        client=http_client if http_client is not None else default_http_client(),
        clock=clock,
        inline=processing == "inline",
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.store.open()
        if in_worker:
            from bspgate.worker import WorkerProcess

            worker = WorkerProcess(settings, dispatch=dispatch)
            gateway.metrics.peers = worker.metrics_files  # /metrics adds the workers' counts
            worker.start()
            try:
                yield
            finally:
                await asyncio.to_thread(worker.stop)
                if owns_client:
                    await gateway.client.aclose()
                await gateway.store.close()
            return
        # deliveries post through aiohttp (measured ~3x httpx-over-aiohttp), with a pool as large
        # as the lanes' limits together; an injected httpx client (tests) is used as given
        poster: Poster = (
            AiohttpPoster(connection_limit(settings.subscribers))
            if owns_client
            else HttpxPoster(gateway.client)
        )
        stage = Stage(
            gateway.store, gateway.rules, settings, clock, dispatch, poster, gateway.metrics
        )
        await stage.start()
        gateway.processor, gateway.dispatcher = stage.processor, stage.dispatcher
        try:
            yield
        finally:
            await stage.stop()
            if owns_client:
                await gateway.client.aclose()
            await gateway.store.close()

    routes: list[BaseRoute] = [
        Route("/webhooks/{channel_id}", receive_webhook, methods=["POST"]),
        Route("/webhooks/{channel_id}", webhook_handshake, methods=["GET", "OPTIONS"]),
        Route("/v1/events", list_events, methods=["GET"]),
        *schema_catalog.routes(),
        *contacts_api.routes(),
        *operations_api.routes(),
        *messages_api.routes(),
        *raws_api.routes(),
        *openapi_api.routes(),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    if settings.console:  # the operator console (bspgate.console), on unless `console: false`
        from bspgate.console import mount as console_mount

        routes.append(console_mount(gateway))
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers=exception_handlers(),
        middleware=[Middleware(RequestLog), Middleware(WebhookShortcut)],
    )
    app.state.gateway = gateway
    return app
