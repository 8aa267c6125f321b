"""The worker processes of `bspgate serve`: processing and delivery, each in a process of its own.

`WorkerProcess(settings).start()` spawns fresh interpreters (multiprocessing "spawn") that open
the same store (`shared=True` on SQLite: the processes take turns writing through a file lock)
and run a `Stage` each: one the processor (received raw payloads -> identity, events, outbox
rows), one the dispatcher (and the retention purger). Each has its own GIL: in one process the
two took turns on one interpreter and capped end-to-end throughput (docs/performance.md). The
processor tells the dispatcher about new outbox rows through `bspgate.wake` (SQLite) or
PostgreSQL's `NOTIFY`. A worker never outlives the server: it asks the kernel for SIGKILL when
its parent dies (Linux) and also watches its parent's pid, so a SIGKILLed server leaves no orphan
writing to the store. A worker that dies is started again; what it was doing was one
transaction, rolled back, and is done again from the start. Linux sends that SIGKILL when the
*thread* that forked the worker ends (prctl(2)), and a restarted worker is forked by the watch
thread: `stop()` drains the workers (SIGTERM, join) before it ends that thread, or a graceful
stop would kill them mid-delivery. Workers run at a lower CPU priority than the server
(`WORKER_NICENESS`): under a burst, accepting webhooks comes first.
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


PROCESS, DELIVER = "process", "deliver"  # the workers' roles


async def _serve(settings: Settings, role: str, parent: int, folder: str) -> None:
    from bspgate.delivery.transport import AiohttpPoster, connection_limit
    from bspgate.metrics import Metrics
    from bspgate.processing import Rules
    from bspgate.serving import tune_gc
    from bspgate.stage import Stage, load_channel_mappings, open_store, utc_now
    from bspgate.wake import WakeListener, WakeSender

    store = open_store(settings, shared=True)
    await store.open()
    rules = Rules(settings, load_channel_mappings(settings))
    metrics = Metrics()
    wake_path = Path(folder) / "wake.sock"
    sender = WakeSender(wake_path) if role == PROCESS else None
    stage = Stage(
        store,
        rules,
        settings,
        utc_now,
        role == DELIVER,
        AiohttpPoster(connection_limit(settings.subscribers)),
        metrics,
        process=role == PROCESS,
        on_deliveries=sender,
        linger=True,
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the server decides when to stop
    listener = None
    if stage.dispatcher is not None and not hasattr(store, "listen"):
        listener = WakeListener(wake_path, stage.dispatcher.wake)
    await stage.start()
    tune_gc()
    metrics_file = Path(folder) / f"{role}.prom"
    try:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=0.5)
            if os.getppid() != parent:
                break  # the server is gone
            metrics.write_to(metrics_file)
    finally:
        await stage.stop()
        if listener is not None:
            listener.close()
        if sender is not None:
            sender.close()
        await store.close()
        metrics.write_to(metrics_file)


def worker_main(settings: Settings, role: str, parent: int, log_level: str, folder: str) -> None:
    """The entry point of a spawned worker."""
    _die_with_parent()
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICENESS)
    # Two threads take turns on the GIL in a worker: the event loop (mapping, posting) and the
    # store's writer (every statement of processing, claims and records). A thread that wants
    # the GIL back after a statement waits for the other to give it up, by default for up to
    # 5 ms each time: with many short statements a round, that wait was most of the writer's time.
    sys.setswitchinterval(WORKER_SWITCH_INTERVAL)
    from bspgate.logging import configure_logging, flush_logs

    configure_logging(log_level, cache=True, buffered=True)
    try:
        import uvloop

        uvloop.run(_serve(settings, role, parent, folder))
    except ImportError:  # pragma: no cover (uvloop is a dependency of uvicorn[standard])
        asyncio.run(_serve(settings, role, parent, folder))
    finally:
        flush_logs()  # a spawned process leaves through os._exit: no atexit handlers run


class WorkerProcess:
    """Starts, supervises (restarts) and stops the worker processes: processing, and delivery
    unless `dispatch` is off."""

    def __init__(self, settings: Settings, *, dispatch: bool = True, log_level: str = "") -> None:
        self.settings = settings
        self.roles = [PROCESS, DELIVER] if dispatch else [PROCESS]
        self.log_level = log_level or os.environ.get("BSPGATE_LOG_LEVEL", "info")
        self._processes: dict[str, BaseProcess] = {}
        self._draining = threading.Event()  # set by stop(): start no worker again
        self._stopping = threading.Event()  # set once the workers are gone: the watch ends
        self._spawning = threading.Lock()  # a restart and stop() do not cross
        self._watch: threading.Thread | None = None
        self._folder = tempfile.TemporaryDirectory(prefix="bspgate-worker-")

    @property
    def metrics_files(self) -> list[Path]:
        """Each worker's rendered metrics (written every 0.5 s), for `/metrics` to merge in."""
        return [Path(self._folder.name) / f"{role}.prom" for role in self.roles]

    def _spawn(self, role: str) -> None:
        context: Any = multiprocessing.get_context("spawn")
        process = context.Process(
            target=worker_main,
            args=(self.settings, role, os.getpid(), self.log_level, self._folder.name),
            name=f"bspgate-{role}",
            daemon=True,
        )
        process.start()
        self._processes[role] = process

    def start(self) -> None:
        for role in self.roles:
            self._spawn(role)
        self._watch = threading.Thread(target=self._supervise, daemon=True, name="bspgate-watch")
        self._watch.start()

    def _supervise(self) -> None:
        # This thread forks the workers it restarts, so it must outlive them: each asked the
        # kernel for SIGKILL when its parent *thread* ends. It ends only after stop() drained.
        while not self._stopping.wait(0.5):
            for role, process in list(self._processes.items()):
                if process.is_alive() or self._draining.is_set():
                    continue
                _log.error("worker.died", role=role, exitcode=process.exitcode)
                if self._draining.wait(0.5):
                    break
                with self._spawning:
                    if not self._draining.is_set():
                        self._spawn(role)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every worker and wait up to `timeout` for them to drain (attempts in flight
        finish and are recorded), SIGKILL the ones still there, then end the watch thread."""
        with self._spawning:  # no restart after this, and none half done
            self._draining.set()
        processes = list(self._processes.values())
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in processes:
            process.join(max(deadline - time.monotonic(), 0.1))
            if process.is_alive():
                process.kill()
                process.join(5)
        self._stopping.set()  # only now: its end would SIGKILL the workers it forked
        if self._watch is not None:
            self._watch.join()
        self._folder.cleanup()
