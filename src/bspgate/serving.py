"""What `bspgate serve` checks and announces before it listens.

- `ServeLock`: one process per SQLite file. An exclusive `flock` on `<db>.lock` (released by the
  kernel when the process dies, even by SIGKILL); the file also records the PID and the address
  served, so `simulate`, `events tail` and `send` find a gateway started with `--port N`.
- `dev_credentials`: config keys whose value is a shipped development default (`dev-…`); with
  any of them in effect the gateway binds loopback only unless `--insecure-dev` is given.
- `startup_line`: the one line logged at start (version, address, storage, channels and the
  webhook URL to give each provider).
- `tune_gc`: the garbage collector settings of a long-running `serve` process (and its worker).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import ipaddress
import os
from pathlib import Path
from typing import IO, Any

import orjson

from bspgate import __version__
from bspgate.config import Settings
from bspgate.errors import GatewayError
from bspgate.masking import mask_url


class LockedError(GatewayError):
    """Another process serves this SQLite file."""


def lock_path(settings: Settings) -> Path | None:
    """`<db>.lock` beside the SQLite file, or None (PostgreSQL, in-memory SQLite)."""
    if not settings.storage.startswith("sqlite:///"):
        return None
    path = settings.storage[len("sqlite:///") :]
    if not path or path == ":memory:":
        return None
    return Path(path + ".lock")


class ServeLock:
    """Held while `serve` runs; `acquire` raises `LockedError` naming the holder's PID."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None

    def acquire(self, info: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+b")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = _read_info(handle.read()).get("pid", "unknown")
            handle.close()
            database = str(self.path)[: -len(".lock")]
            raise LockedError(
                f"{database} is already served by process {holder} (lock {self.path}); one "
                "process per SQLite file: stop it, or use PostgreSQL for several replicas"
            ) from None
        handle.truncate(0)
        handle.write(orjson.dumps({"pid": os.getpid(), **info}))
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.truncate(0)
            self._file.close()
            self._file = None


def _read_info(data: bytes) -> dict[str, Any]:
    try:
        info = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return info if isinstance(info, dict) else {}


def running_gateway(settings: Settings) -> dict[str, Any] | None:
    """`{pid, address, public_url}` of the gateway serving this SQLite file, or None."""
    path = lock_path(settings)
    if path is None or not path.is_file():
        return None
    with path.open("rb") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_info(handle.read()) or None  # held: a server is running
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return None  # nobody holds it: a stale file from a stopped server


def dev_credentials(settings: Settings) -> list[str]:
    """Dotted keys whose value is a development default (`dev-…`, or `user:dev-…`)."""

    def is_dev(value: str) -> bool:
        return any(part.startswith("dev-") for part in value.split(":"))

    found = [
        f"api_keys[{i}].key" for i, k in enumerate(settings.api_keys) if is_dev(k.key.reveal())
    ]
    for index, channel in enumerate(settings.channels):
        found += [
            f"channels[{index}].secrets.{name}"
            for name, value in channel.secrets.items()
            if is_dev(value.reveal())
        ]
    return found


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def startup_line(settings: Settings, address: str) -> dict[str, Any]:
    """The fields of the one `bspgate.started` log line."""
    base = settings.server.public_url.rstrip("/")
    return {
        "version": __version__,
        "address": address,
        "public_url": base,
        "storage": mask_url(settings.storage),
        "channels": [
            {"id": c.id, "provider": c.provider, "webhook_url": f"{base}/webhooks/{c.id}"}
            for c in settings.channels
        ],
        "subscribers": len(settings.subscribers),
    }


# Young collections after this many allocations (Python's default: 700); older generations as
# rarely as that makes sense for a process whose long-lived objects are frozen.
GC_THRESHOLDS = (20_000, 50, 100)


def tune_gc() -> None:
    """Once everything long-lived exists (modules, app, mappings, schemas): stop re-scanning it.

    The cyclic collector walked the whole heap of a started gateway (compiled mappings, JSON
    Schemas, templates) again and again while webhooks allocate: ~20% of a webhook's CPU
    (measured, docs/performance.md). `gc.freeze()` moves what exists now out of its reach, and
    fewer, larger young collections do the rest; cyclic garbage made later is still collected.
    Only for processes that live long (`serve` and its worker): tests build many apps in one
    process, and freezing each would keep them all.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
