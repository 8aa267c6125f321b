"""Standard Webhooks signatures for a subscriber's keys, one per key, space-separated.

During a key rotation a subscriber lists several keys; every delivery carries a signature for
each (`v1,<sig> v1,<sig>`), so a receiver verifying with either key accepts it and can move to
the new key with no gap. Symmetric `whsec_` keys sign `v1` (HMAC-SHA256 of
`{id}.{timestamp}.{body}`, exactly as the reference `standardwebhooks` library does, and the
tests verify every header with that library); asymmetric `whsk_` keys sign `v1a` (ed25519, see
`asymmetric.py`).

The dispatcher signs every delivery, so the HMAC key is prepared once per key (its padded inner
and outer states, in an `hmac` object that each signature copies) instead of once per delivery,
and the body is signed as the bytes that are posted, encoded once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from datetime import UTC, datetime
from typing import Protocol

from standardwebhooks import Webhook

SYMMETRIC_PREFIX = "whsec_"


class _Signs(Protocol):
    def sign(self, msg_id: str, timestamp: datetime, data: str) -> str: ...


class Signer:
    """Signs `{id}.{timestamp}.{body}` with every key of one subscriber."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._signers: list[_Signs] = [_signer(key) for key in keys]
        # the common case, symmetric keys only: signed here from prepared keys, no datetime
        self._hmacs: list[_Hmac] | None = None
        if all(isinstance(signer, _Hmac) for signer in self._signers):
            self._hmacs = [signer for signer in self._signers if isinstance(signer, _Hmac)]

    def sign(self, msg_id: str, timestamp: datetime, body: str) -> str:
        """The `webhook-signature` header value (`timestamp` must be UTC)."""
        return " ".join(signer.sign(msg_id, timestamp, body) for signer in self._signers)

    def sign_bytes(self, msg_id: str, timestamp: int, body: bytes, text: str) -> str:
        """As `sign`, for a body already encoded (`body` is `text` as UTF-8) at a whole-second
        POSIX `timestamp`: what the dispatcher calls once per delivery."""
        if self._hmacs is None:
            return self.sign(msg_id, datetime.fromtimestamp(timestamp, UTC), text)
        prefix = f"{msg_id}.{timestamp}.".encode()
        if len(self._hmacs) == 1:
            return self._hmacs[0].sign_prefixed(prefix, body)
        return " ".join(signer.sign_prefixed(prefix, body) for signer in self._hmacs)


class _Hmac:
    """One `whsec_` key: `v1,<base64 HMAC-SHA256>`, the key schedule computed once."""

    def __init__(self, key: str) -> None:
        Webhook(key)  # the reference library's checks (empty or malformed keys raise)
        secret = key.removeprefix(SYMMETRIC_PREFIX)
        # as the reference library: padding added in case the base64 is unpadded
        self._mac = hmac.new(base64.b64decode(secret + "=="), digestmod=hashlib.sha256)

    def sign_prefixed(self, prefix: bytes, body: bytes) -> str:
        mac = self._mac.copy()
        mac.update(prefix)
        mac.update(body)
        return "v1," + base64.b64encode(mac.digest()).decode()

    def sign(self, msg_id: str, timestamp: datetime, data: str) -> str:
        if timestamp.tzinfo is None:  # as the reference library: a naive time is UTC
            timestamp = timestamp.replace(tzinfo=UTC)
        prefix = f"{msg_id}.{math.floor(timestamp.timestamp())}.".encode()
        return self.sign_prefixed(prefix, data.encode())


def _signer(key: str) -> _Signs:
    if key.startswith("whsk_"):
        from bspgate.delivery.asymmetric import AsymmetricSigner

        return AsymmetricSigner(key)
    return _Hmac(key)
