"""Wake-ups between the processes of `bspgate serve`: "new outbox rows", across processes.

Under `serve` on SQLite, processing and delivery run in two processes of their own (each with
its own GIL; `bspgate.worker`). When a processing batch has stored deliveries, the processing
process calls a `WakeSender`; the delivery process's `WakeListener` calls the dispatcher's
`wake()` on its event loop. The channel is a Unix datagram socket in the worker's private
folder: a send never blocks (a full buffer already holds a wake-up, a missing listener is a
dispatcher restarting, which claims everything due when it starts), and a lost wake-up costs at
most the dispatcher's idle poll. PostgreSQL needs none of this: its `NOTIFY` reaches every
replica's dispatcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from pathlib import Path


class WakeSender:
    """Sends wake-ups to the listener at `path`; never blocks, never raises."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setblocking(False)

    def __call__(self) -> None:
        # BlockingIOError: wake-ups are queued already; FileNotFoundError/ConnectionRefusedError:
        # the listener is (re)starting and will look for due rows when it runs
        with contextlib.suppress(OSError):
            self._socket.sendto(b"!", self.path)

    def close(self) -> None:
        self._socket.close()


class WakeListener:
    """Calls `callback` on the running loop for every batch of wake-ups sent to `path`."""

    def __init__(self, path: Path, callback: Callable[[], None]) -> None:
        self.path = path
        self.callback = callback
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by a listener that died
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setblocking(False)
        self._socket.bind(str(path))
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._socket.fileno(), self._readable)

    def _readable(self) -> None:
        woken = False
        while True:  # drain: many wake-ups are one
            try:
                self._socket.recv(64)
            except OSError:  # BlockingIOError: nothing left
                break
            woken = True
        if woken:
            self.callback()

    def close(self) -> None:
        self._loop.remove_reader(self._socket.fileno())
        self._socket.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
