"""Standard Webhooks asymmetric signatures: `v1a`, ed25519 over `{id}.{timestamp}.{body}`.

Keys as the spec writes them: a signing key `whsk_` + base64 (the 32-byte seed, or the 64-byte
seed-and-public-key form libsodium uses), a public key `whpk_` + base64 of the 32 raw bytes.
The ed25519 arithmetic is the `cryptography` package's; this module only reads the key forms.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

SECRET_PREFIX = "whsk_"  # noqa: S105 (a key prefix, not a key)
PUBLIC_PREFIX = "whpk_"


class KeyError_(ValueError):
    """The key is not a Standard Webhooks ed25519 key (the message never holds the key)."""


def _decode(key: str, prefix: str) -> bytes:
    if not key.startswith(prefix):
        raise KeyError_(f"not a {prefix} key")
    try:
        return base64.b64decode(key[len(prefix) :], validate=True)
    except (binascii.Error, ValueError):
        raise KeyError_(f"a {prefix} key must be base64") from None


def private_key(key: str) -> Ed25519PrivateKey:
    """The ed25519 private key of a `whsk_` signing key."""
    raw = _decode(key, SECRET_PREFIX)
    if len(raw) not in (32, 64):
        raise KeyError_("a whsk_ key holds 32 or 64 bytes")
    secret = Ed25519PrivateKey.from_private_bytes(raw[:32])
    if len(raw) == 64 and public_bytes(secret) != raw[32:]:
        raise KeyError_("the whsk_ key's public half does not match its seed")
    return secret


def public_bytes(secret: Ed25519PrivateKey) -> bytes:
    return secret.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def public_key_text(key: str) -> str:
    """The `whpk_` public key a receiver verifies a `whsk_` key's signatures with."""
    return PUBLIC_PREFIX + base64.b64encode(public_bytes(private_key(key))).decode()


def generate() -> tuple[str, str]:
    """A new (`whsk_`, `whpk_`) pair."""
    secret = Ed25519PrivateKey.generate()
    seed = secret.private_bytes_raw()
    text = SECRET_PREFIX + base64.b64encode(seed + public_bytes(secret)).decode()
    return text, public_key_text(text)


def _content(msg_id: str, timestamp: datetime, body: str) -> bytes:
    return f"{msg_id}.{int(timestamp.timestamp())}.{body}".encode()


class AsymmetricSigner:
    """Signs `v1a,<base64 ed25519 signature>` with one `whsk_` key."""

    def __init__(self, key: str) -> None:
        self._key = private_key(key)

    def sign(self, msg_id: str, timestamp: datetime, data: str) -> str:
        signature = self._key.sign(_content(msg_id, timestamp, data))
        return "v1a," + base64.b64encode(signature).decode()


def verify(public: str, msg_id: str, timestamp: datetime, body: str, header: str) -> bool:
    """True when one `v1a` signature in `header` verifies with the `whpk_` key `public`."""
    key = Ed25519PublicKey.from_public_bytes(_decode(public, PUBLIC_PREFIX))
    content = _content(msg_id, timestamp, body)
    for part in header.split():
        version, _, value = part.partition(",")
        if version != "v1a":
            continue
        try:
            key.verify(base64.b64decode(value), content)
            return True
        except (InvalidSignature, binascii.Error, ValueError):
            continue
    return False
