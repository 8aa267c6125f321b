"""Identifiers bspgate mints: event ids (deterministic), contact, raw and send ids (ULIDs).

Event ids must be the same for the same provider event however often a provider retries it, so
they are derived: `evt_` + 26 Crockford base32 characters (5 bits of each of the first 26 bytes)
of SHA-256 over (channel id, event type, provider event key). 26 characters carry 130 bits, so
collisions are not a practical concern. Everything else is `prefix_` + a ULID (time-ordered):
48 bits of Unix milliseconds and 80 random bits (`os.urandom`), in Crockford base32.

ULIDs are written here, not by `python-ulid`'s constructor: its pure-Python encoder and
monotonic generator took ~50,000 instructions an id, two ids a webhook (raw payload, request),
~10% of the accept path (callgrind). The text is the same as the library's for the same 128 bits
(`tests/test_ids.py` uses the library as the oracle), and the library still parses ours. The
spec's optional monotonic mode is not used: ids of one millisecond differ in random order.

Random bytes come from `random_bytes`: `os.urandom` read 4 KiB at a time and handed out in
slices, never the same bytes twice (a forked child starts with an empty buffer). Each
`os.urandom` call is a system call that lets go of the GIL; three a webhook (raw id, request id,
trace context) each waited for the store's writer thread to hand the GIL back, measured as a
fifth of the accept path's wall time. The bytes are the kernel's CSPRNG output all the same.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Byte b -> the Crockford character of its low 5 bits: 26 digest bytes give 130 bits in one C call.
_TABLE = bytes(ord(_CROCKFORD[b & 31]) for b in range(256))


def _base32(digest: bytes, length: int) -> str:
    return digest[:length].translate(_TABLE).decode("ascii")


def event_id(channel_id: str, event_type: str, key: str) -> str:
    """The deterministic id of one provider event as seen on one channel."""
    material = "\x1f".join((channel_id, event_type, key)).encode()
    return "evt_" + _base32(hashlib.sha256(material).digest(), 26)


def digest_id(prefix: str, material: bytes) -> str:
    """A deterministic id from content (used where no store mints one, e.g. `normalize`)."""
    return f"{prefix}_" + _base32(hashlib.sha256(material).digest(), 26)


# Ten bits -> their two Crockford characters: a ULID's 128 bits in 14 lookups.
_PAIRS = tuple(a + b for a in _CROCKFORD for b in _CROCKFORD)
_SHIFTS = (115, 105, 95, 85, 75, 65, 55, 45, 35, 25, 15, 5)


def ulid_text(milliseconds: int, randomness: bytes) -> str:
    """The 26-character ULID of a millisecond timestamp and 10 random bytes."""
    value = (milliseconds << 80) | int.from_bytes(randomness, "big")
    # 26 characters hold 130 bits: the first carries the top 3 bits, the last the low 5
    pairs = "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])
    return _CROCKFORD[value >> 125] + pairs + _CROCKFORD[value & 31]


_POOL_SIZE = 4096


class _RandomPool:
    """`os.urandom` bytes, read a pool at a time; each byte is handed out once."""

    __slots__ = ("_at", "_buffer", "_lock")

    def __init__(self) -> None:
        self._buffer = b""
        self._at = 0
        self._lock = threading.Lock()  # ids are minted on the event loop and in store threads

    def take(self, count: int) -> bytes:
        with self._lock:
            at = self._at
            end = at + count
            if end > len(self._buffer):
                self._buffer = os.urandom(max(_POOL_SIZE, count))
                at, end = 0, count
            self._at = end
            return self._buffer[at:end]

    def reset(self) -> None:
        self._buffer = b""
        self._at = 0
        self._lock = threading.Lock()


_pool = _RandomPool()
# a forked child must not hand out the bytes its parent will also hand out
os.register_at_fork(after_in_child=_pool.reset)


def random_bytes(count: int) -> bytes:
    """`count` bytes of the kernel's CSPRNG (`os.urandom`), from a buffer read 4 KiB at a time."""
    return _pool.take(count)


def new_id(prefix: str) -> str:
    """`prefix_` + a fresh ULID: `ct_`, `raw_`, `snd_`, `dlv_`."""
    return f"{prefix}_{ulid_text(time.time_ns() // 1_000_000, _pool.take(10))}"
