"""What runs beside ingress over one open store: the processing stage and the dispatcher.

`Stage` is the start/stop boundary between the composition root and the parts that work in the
background: the processor (received raw payloads -> events, identity, outbox), the dispatcher
(which owns how it dispatches) and, with `retention:` set, the purger of expired rows.
`bspgate.worker` runs one in a process of its own under `bspgate serve`; `create_app` runs one
in-process otherwise. Also here: the store and the mappings the settings name, which every
process builds alike.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime

from bspgate.config import Settings
from bspgate.delivery.transport import Poster
from bspgate.delivery.worker import DELIVERY_LINGER, Dispatcher, dispatcher_owner
from bspgate.mapping.loader import MappingSpec, load_mapping
from bspgate.metrics import Metrics
from bspgate.processing import OUTBOX_CHANNEL, ROUND_LINGER, Processor, Rules
from bspgate.retention import Purger
from bspgate.store.base import ACCEPT_LINGER, Store

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def open_store(settings: Settings, *, shared: bool = False) -> Store:
    """The store the settings name (not yet opened); `shared`: two processes write it."""
    if settings.storage.startswith("sqlite:"):
        from bspgate.store.sqlite import SqliteStore

        return SqliteStore.from_dsn(settings.storage, shared=shared)  # its inbox lingers
    from bspgate.store.postgres import PostgresStore

    return PostgresStore(settings.storage, linger=ACCEPT_LINGER if shared else 0.0)


def load_channel_mappings(settings: Settings) -> dict[str, MappingSpec]:
    """The mappings the configured channels use, compiled (a broken file fails start).

    Their send forms (`outbound.yaml`, where a provider has one) are loaded too, only to fail
    start alike: a broken one would otherwise answer every send with a 500.
    """
    from bspgate.outbound.spec import load_outbound, outbound_root

    specs = {}
    for name in sorted({c.provider for c in settings.channels}):
        specs[name] = load_mapping(settings.mapping_dirs, name)
        if outbound_root(settings.mapping_dirs, name) is not None:
            load_outbound(settings.mapping_dirs, name)  # `extends` may reach any folder
    return specs


class Stage:
    """Processing and delivery over one open store: what runs beside (or instead of) ingress.

    The start/stop boundary between this composition root and the dispatcher (which owns how it
    dispatches): `bspgate.worker` runs one in its own process, `create_app` one in-process.
    """

    def __init__(
        self,
        store: Store,
        rules: Rules,
        settings: Settings,
        clock: Clock,
        dispatch: bool,
        poster: Poster,
        metrics: Metrics,
        *,
        process: bool = True,
        on_deliveries: Callable[[], None] | None = None,
        linger: bool = False,
    ) -> None:
        """`process`/`dispatch`: which of the two this stage runs (`serve` gives each its own
        process). `on_deliveries`: what tells a dispatcher elsewhere that processing stored
        deliveries (a `bspgate.wake.WakeSender`); this stage's own dispatcher is told directly.
        `linger`: rounds and claims that find little wait a few milliseconds for more
        (`ROUND_LINGER`, `DELIVERY_LINGER`): `serve`'s workers trade that latency for fewer
        commits; in-process stages (tests, `create_app`) answer as soon as they can.
        """
        self.store, self.settings, self.clock, self.poster = store, settings, clock, poster
        self.dispatcher = (
            Dispatcher(
                store,
                settings.subscribers,
                poster,
                metrics,
                clock=clock,
                owner=dispatcher_owner(settings),
                linger=DELIVERY_LINGER if linger else 0.0,
            )
            if dispatch
            else None
        )
        wake = self.dispatcher.wake if self.dispatcher is not None else on_deliveries
        if hasattr(store, "listen"):
            wake = None  # every replica's dispatcher hears the NOTIFY alike (see start)
        # SQLite: batches of 64, since the dispatcher waits for the file's write lock while a
        # batch holds it; PostgreSQL: 256, since there a batch costs round trips, not a lock
        batch = 64 if settings.storage.startswith("sqlite:") else 256
        self.processor = (
            Processor(
                store,
                rules,
                clock=clock,
                batch=batch,
                on_deliveries=wake,
                metrics=metrics,
                linger=ROUND_LINGER if linger else 0.0,
            )
            if process
            else None
        )
        # expired rows are purged where deliveries run (one place per store under `serve`: its
        # worker process; with PostgreSQL, every replica, each deleting in small batches)
        self.purger = (
            Purger(store, settings.retention, metrics, clock)
            if dispatch and settings.retention.enabled
            else None
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        if self.dispatcher is not None and self.settings.storage.startswith("sqlite:"):
            # One process delivers from an SQLite store: deliveries in flight when it last
            # stopped (even by SIGKILL) are retried at once, with the same webhook-id. PostgreSQL
            # replicas cannot know whose claim is dead, so there claims expire with their lease.
            now = self.clock().timestamp()
            await self.store.transaction(lambda tx: tx.recover_inflight(now))
        if self.processor is not None:
            processing = asyncio.create_task(self.processor.run(), name="bspgate-processor")
            self._tasks.append(processing)
        if self.dispatcher is not None and hasattr(self.store, "listen"):
            loop, wake = asyncio.get_running_loop(), self.dispatcher.wake
            self.store.listen(OUTBOX_CHANNEL, lambda: loop.call_soon_threadsafe(wake))
        if self.dispatcher is not None:
            task = self.dispatcher.start()  # the delivery side's start/stop interface
            self._tasks.append(task)
        if self.purger is not None:
            self._tasks.append(asyncio.create_task(self.purger.run(), name="bspgate-retention"))

    async def stop(self) -> None:
        if self.processor is not None:
            self.processor.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop()
        if self.purger is not None:
            self.purger.stop()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, timeout=15)
        await self.poster.aclose()
