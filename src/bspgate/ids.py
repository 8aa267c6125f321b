"""Identifiers bspgate mints: event ids (deterministic), contact, raw and send ids (ULIDs).

Event ids must be the same for the same provider event however often a provider retries it, so
they are derived: `evt_` + 26 Crockford base32 characters (5 bits of each of the first 26 bytes)
of SHA-256 over (channel id, event type, provider event key). 26 characters carry 130 bits, so
collisions are not a practical concern. Everything else is `prefix_` + a ULID (time-ordered).
"""

from __future__ import annotations

import hashlib

from ulid import ULID

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


def new_id(prefix: str) -> str:
    """`prefix_` + a fresh ULID: `ct_`, `raw_`, `snd_`, `dlv_`."""
    return f"{prefix}_{ULID()}"
