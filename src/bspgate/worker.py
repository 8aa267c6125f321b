"""The worker process of `bspgate serve`: processing and delivery on a core of their own.

`WorkerProcess(settings).start()` spawns a fresh interpreter (multiprocessing "spawn") that opens
the same store (`shared=True` on SQLite: the two processes take turns writing through a file
lock), and runs the app's `Stage` (the processor deriving events from received raw payloads, and
the dispatcher delivering them) until told to stop. It never outlives the server: it asks the
kernel for SIGKILL when its parent dies (Linux) and also watches its parent's pid, so a SIGKILLed
server leaves no orphan writing to the store. A worker that dies is started again; what it was
doing was one transaction, rolled back, and is done again from the start. It runs at a lower CPU
priority than the server (`WORKER_NICENESS`): under a burst, accepting webhooks comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import structlog

from bspgate.config import Settings

_log = structlog.get_logger("bspgate.worker")
_PR_SET_PDEATHSIG = 1
# The worker yields the CPU to the server when both want it: accepting (the provider's 200, which
# it retries on a timeout) is what cannot wait, while deriving and delivering catch up as soon as
# a burst passes. Under a flood the backlog grows instead of the providers' answer times; at any
# rate the machine sustains, nothing waits (docs/performance.md measures both).
WORKER_NICENESS = 10
WORKER_SWITCH_INTERVAL = 0.0005  # seconds (Python's default: 0.005)


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


async def _serve(settings: Settings, dispatch: bool, parent: int, metrics_file: str) -> None:
    from bspgate.delivery.transport import AiohttpPoster
    from bspgate.metrics import Metrics
    from bspgate.processing import Rules
    from bspgate.serving import tune_gc
    from bspgate.stage import Stage, load_channel_mappings, open_store, utc_now

    store = open_store(settings, shared=True)
    await store.open()
    rules = Rules(settings, load_channel_mappings(settings))
    metrics = Metrics()
    stage = Stage(store, rules, settings, utc_now, dispatch, AiohttpPoster(), metrics)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the server decides when to stop
    await stage.start()
    tune_gc()
    try:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=0.5)
            if os.getppid() != parent:
                break  # the server is gone
            metrics.write_to(Path(metrics_file))
    finally:
        await stage.stop()
        await store.close()
        metrics.write_to(Path(metrics_file))


def worker_main(
    settings: Settings, dispatch: bool, parent: int, log_level: str, metrics_file: str
) -> None:
    """The entry point of the spawned process."""
    _die_with_parent()
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICENESS)
    # Two threads take turns on the GIL here: the event loop (mapping, posting) and the store's
    # writer (every statement of processing, claims and records). A thread that wants the GIL
    # back after a statement waits for the other to give it up, by default for up to 5 ms each
    # time: with many short statements a round, that wait was most of the writer's time.
    sys.setswitchinterval(WORKER_SWITCH_INTERVAL)
    from bspgate.logging import configure_logging

    configure_logging(log_level, cache=True)
    try:
        import uvloop

        uvloop.run(_serve(settings, dispatch, parent, metrics_file))
    except ImportError:  # pragma: no cover (uvloop is a dependency of uvicorn[standard])
        asyncio.run(_serve(settings, dispatch, parent, metrics_file))


class WorkerProcess:
    """Starts, supervises (restarts) and stops the worker process."""

    def __init__(self, settings: Settings, *, dispatch: bool = True, log_level: str = "") -> None:
        self.settings, self.dispatch = settings, dispatch
        self.log_level = log_level or os.environ.get("BSPGATE_LOG_LEVEL", "info")
        self._process: BaseProcess | None = None
        self._stopping = threading.Event()
        self._watch: threading.Thread | None = None
        self._folder = tempfile.TemporaryDirectory(prefix="bspgate-worker-")
        self.metrics_file = Path(self._folder.name) / "worker.prom"

    def _spawn(self) -> None:
        context: Any = multiprocessing.get_context("spawn")
        self._process = context.Process(
            target=worker_main,
            args=(
                self.settings,
                self.dispatch,
                os.getpid(),
                self.log_level,
                str(self.metrics_file),
            ),
            name="bspgate-worker",
            daemon=True,
        )
        self._process.start()

    def start(self) -> None:
        self._spawn()
        self._watch = threading.Thread(target=self._supervise, daemon=True, name="bspgate-watch")
        self._watch.start()

    def _supervise(self) -> None:
        while not self._stopping.wait(0.5):
            if self._process is not None and not self._process.is_alive():
                _log.error("worker.died", exitcode=self._process.exitcode)
                time.sleep(0.5)
                if not self._stopping.is_set():
                    self._spawn()

    def stop(self, timeout: float = 20.0) -> None:
        self._stopping.set()
        if self._process is None:
            return
        if self._process.is_alive() and self._process.pid is not None:
            os.kill(self._process.pid, signal.SIGTERM)
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self._folder.cleanup()
