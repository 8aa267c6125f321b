"""Standard Webhooks signatures for a subscriber's keys, one per key, space-separated.

During a key rotation a subscriber lists several keys; every delivery carries a signature for
each (`v1,<sig> v1,<sig>`), so a receiver verifying with either key accepts it and can move to
the new key with no gap. Symmetric `whsec_` keys sign `v1` (HMAC-SHA256, through the reference
`standardwebhooks` library); asymmetric `whsk_` keys sign `v1a` (ed25519, see `asymmetric.py`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from standardwebhooks import Webhook


class _Signs(Protocol):
    def sign(self, msg_id: str, timestamp: datetime, data: str) -> str: ...


class Signer:
    """Signs `{id}.{timestamp}.{body}` with every key of one subscriber."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._signers: list[_Signs] = [_signer(key) for key in keys]

    def sign(self, msg_id: str, timestamp: datetime, body: str) -> str:
        """The `webhook-signature` header value (`timestamp` must be UTC)."""
        return " ".join(signer.sign(msg_id, timestamp, body) for signer in self._signers)


def _signer(key: str) -> _Signs:
    if key.startswith("whsk_"):
        from bspgate.delivery.asymmetric import AsymmetricSigner

        return AsymmetricSigner(key)
    return Webhook(key)
