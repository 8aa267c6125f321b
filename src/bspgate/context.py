"""What request handlers may use of the running gateway, as a typed interface.

The composition root (`bspgate.app`) builds a `Gateway` and puts it on `app.state.gateway`
(Starlette's state pattern); handlers (`ingress.routes`, `api.*`, `operations`) read it through
`gateway_of(request)` typed as `GatewayContext`, so they never import the composition root and
the import graph has no cycle (`tests/test_imports.py` checks).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

import httpx
from starlette.requests import Request

from bspgate.config import Channel, Settings
from bspgate.delivery.worker import Dispatcher
from bspgate.ingress.verify import ChannelVerifier
from bspgate.mapping.loader import MappingSpec
from bspgate.metrics import Metrics
from bspgate.pipeline import Fanout, IngestOutcome
from bspgate.processing import Rules
from bspgate.schema.validate import EventValidator
from bspgate.store.base import Store


class GatewayContext(Protocol):
    settings: Settings
    mappings: dict[str, MappingSpec]
    verifiers: dict[str, ChannelVerifier]
    store: Store  # its functions get the backend's full statement set (`SqlTx`)
    client: httpx.AsyncClient
    metrics: Metrics
    validator: EventValidator
    fanout: Fanout
    rules: Rules

    @property
    def clock(self) -> Callable[[], datetime]: ...

    @property
    def dispatcher(self) -> Dispatcher | None: ...

    async def ingest(
        self,
        channel: Channel,
        payload: Any,
        body: bytes,
        content_type: str,
        traceparent: str | None = None,
    ) -> IngestOutcome: ...


def gateway_of(request: Request) -> GatewayContext:
    """The gateway the app serving `request` was built with."""
    gateway: GatewayContext = request.app.state.gateway
    return gateway
