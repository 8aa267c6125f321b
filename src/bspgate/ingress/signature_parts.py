"""The building blocks of declared signatures: message parts, timestamps, replay memory, helpers.

Shared by the `hmac` (signature.py) and `jwt` (token.py) webhook schemes. `DeclarationError`
is a verify entry that cannot work; `mappings check` reports it with the entry's path.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

ALGORITHMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}
ENCODINGS = ("hex", "base64", "any")
# `body_sha256`: the SHA-256 digest of the raw body, 32 raw bytes (Bird signs timestamp, URL and
# that digest); `body_sha256_hex`: the same digest as lower-case hex text
KEYWORDS = ("body", "body_sha256", "body_sha256_hex", "url", "form", "timestamp")
# the parts that cover the body: a body they do not cover is refused (HmacVerifier.uncovered)
BODY_PARTS = ("body", "body_sha256", "body_sha256_hex")
Clock = Callable[[], float]


class DeclarationError(ValueError):
    """A verify entry that cannot work; `path` is where, inside the entry."""

    def __init__(self, path: tuple[Any, ...], message: str) -> None:
        self.path = path
        super().__init__(message)


def option(options: Mapping[str, Any], settings: Mapping[str, Any], name: str, default: Any) -> Any:
    """An entry option, overridden by the channel setting its `<name>_setting` names."""
    setting = options.get(f"{name}_setting")
    if setting and settings.get(setting) not in (None, ""):
        return settings[setting]
    return options.get(name, default)


def equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def decode_signature(text: str, encoding: str, size: int) -> list[bytes]:
    candidates: list[bytes] = []
    if encoding in ("hex", "any"):
        with contextlib.suppress(ValueError):
            candidates.append(bytes.fromhex(text))
    if encoding in ("base64", "any"):
        with contextlib.suppress(binascii.Error, ValueError):
            candidates.append(base64.b64decode(text, validate=True))
    return [c for c in candidates if len(c) == size]


def url_variants(url: str) -> list[str]:
    """The URL without any port and with the scheme's default port (Twilio signs either)."""
    parts = urlparse(url)
    without = parts._replace(netloc=parts.netloc.split(":")[0]).geturl() if parts.port else url
    if parts.port:
        with_port = url
    else:
        default = 443 if parts.scheme == "https" else 80
        with_port = parts._replace(netloc=f"{parts.netloc}:{default}").geturl()
    return [without] if without == with_port else [without, with_port]


def sorted_form(params: Mapping[str, list[str]]) -> str:
    """Form fields as Twilio signs them: sorted names, each with its sorted distinct values."""
    return "".join(key + value for key in sorted(params) for value in sorted(set(params[key])))


def header_params(value: str, split: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in value.split(split) if split else [value]:
        name, separator, text = item.strip().partition("=")
        if separator:
            params.setdefault(name.strip(), text.strip())
    return params


@dataclass(frozen=True, slots=True)
class Part:
    kind: str  # body | body_sha256 | body_sha256_hex | url | url_ports | form | timestamp
    # | header | literal
    value: str = ""


def parts_of(raw: Any) -> tuple[Part, ...]:
    if raw is None:
        return (Part("body"),)
    if not isinstance(raw, list) or not raw:
        raise DeclarationError(("message",), "message is a non-empty list of parts")
    parts = []
    for index, item in enumerate(raw):
        where = ("message", index)
        if isinstance(item, str):
            if item not in KEYWORDS:
                raise DeclarationError(
                    where,
                    f"unknown message part {item!r} (known: {', '.join(KEYWORDS)}, "
                    "{header: name}, {literal: text})",
                )
            parts.append(Part(item))
        elif isinstance(item, dict) and len(item) == 1:
            ((kind, value),) = item.items()
            if kind == "url" and value == "ports":
                parts.append(Part("url_ports"))
            elif kind in ("header", "literal") and isinstance(value, str) and value:
                parts.append(Part(kind, value.lower() if kind == "header" else value))
            else:
                raise DeclarationError(where, f"unknown message part {item!r}")
        else:
            raise DeclarationError(where, f"unknown message part {item!r}")
    return tuple(parts)


@dataclass(frozen=True, slots=True)
class Timestamp:
    header: str
    param: str
    tolerance: float
    scale: float  # seconds per unit


def timestamp_of(raw: Any) -> Timestamp | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not (raw.get("header") or raw.get("param")):
        raise DeclarationError(("timestamp",), "timestamp names a `header` or a `param`")
    unit = raw.get("unit", "seconds")
    if unit not in ("seconds", "milliseconds"):
        raise DeclarationError(("timestamp", "unit"), f"unit {unit!r} is not seconds|milliseconds")
    tolerance = raw.get("tolerance", 300)
    if not isinstance(tolerance, int | float) or tolerance <= 0:
        raise DeclarationError(("timestamp", "tolerance"), "tolerance is a positive number")
    return Timestamp(
        header=str(raw.get("header", "")).lower(),
        param=str(raw.get("param", "")),
        tolerance=float(tolerance),
        scale=0.001 if unit == "milliseconds" else 1.0,
    )


@dataclass(slots=True)
class ReplayMemory:
    """Signatures accepted within the tolerance window, forgotten once they expire."""

    seen: dict[bytes, float] = field(default_factory=dict)

    def remember(self, key: bytes, now: float, expires: float) -> bool:
        """False when `key` was already accepted and has not expired."""
        if len(self.seen) > 10_000:
            self.seen = {k: v for k, v in self.seen.items() if v > now}
        if self.seen.get(key, 0.0) > now:
            return False
        self.seen[key] = expires
        return True
