"""The `hmac_request` send auth: a provider's request signing, declared as data.

    auth:
      scheme: hmac_request
      secret: access_key
      key_encoding: base64          # utf8 | base64 (the secret is decoded first)
      algorithm: sha256             # sha1 | sha256 | sha512
      headers:                      # headers computed first, in order
        x-ms-date: http_date        # http_date, iso_date, unix_time, body_sha256_{base64,hex}
        x-ms-content-sha256: body_sha256_base64
      message: [method, {literal: "\\n"}, path_query, {literal: "\\n"}, {header: x-ms-date},
                {literal: ";"}, host, {literal: ";"}, {header: x-ms-content-sha256}]
      header: Authorization
      format: "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={signature}"

Message parts: `method`, `path_query` (path and `?query`), `host`, `body`, `{header: name}` (a
computed or rendered header), `{literal: text}`. The signature is base64 unless `encoding: hex`.
Azure Communication Services' access-key signing is this declaration (mappings/azure_acs).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlsplit

ALGORITHMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}
VALUES = ("http_date", "iso_date", "unix_time", "body_sha256_base64", "body_sha256_hex")
PARTS = ("method", "path_query", "host", "body")


def declaration_errors(auth: Mapping[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    """(path inside `auth`, message) for what cannot work."""
    errors: list[tuple[tuple[Any, ...], str]] = []
    if auth.get("algorithm", "sha256") not in ALGORITHMS:
        errors.append((("algorithm",), "algorithm is sha1, sha256 or sha512"))
    for name, kind in (auth.get("headers") or {}).items():
        if kind not in VALUES:
            errors.append((("headers", name), f"{kind!r} is not one of {', '.join(VALUES)}"))
    for index, part in enumerate(auth.get("message") or []):
        ok = part in PARTS or (
            isinstance(part, dict) and len(part) == 1 and next(iter(part)) in ("header", "literal")
        )
        if not ok:
            errors.append((("message", index), f"unknown message part {part!r}"))
    if "{signature}" not in str(auth.get("format", "{signature}")):
        errors.append((("format",), "format must contain {signature}"))
    return errors


def _value(kind: str, content: bytes, now: datetime) -> str:
    moment = now.astimezone(UTC)
    if kind == "http_date":
        return format_datetime(moment, usegmt=True)
    if kind == "iso_date":
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    if kind == "unix_time":
        return str(int(moment.timestamp()))
    digest = hashlib.sha256(content).digest()
    return base64.b64encode(digest).decode() if kind == "body_sha256_base64" else digest.hex()


def sign_request(
    auth: Mapping[str, Any],
    secret: str,
    method: str,
    url: str,
    headers: Mapping[str, str],
    content: bytes,
    now: datetime,
) -> dict[str, str]:
    """The headers to add: the computed ones and the signature header."""
    added = {name: _value(kind, content, now) for name, kind in (auth.get("headers") or {}).items()}
    known = {k.lower(): v for k, v in {**headers, **added}.items()}
    parts = urlsplit(url)
    pieces: list[bytes] = []
    for part in auth.get("message") or []:
        if part == "method":
            pieces.append(method.upper().encode())
        elif part == "path_query":
            pieces.append((parts.path + (f"?{parts.query}" if parts.query else "")).encode())
        elif part == "host":
            pieces.append(parts.netloc.encode())
        elif part == "body":
            pieces.append(content)
        elif "header" in part:
            pieces.append(known.get(str(part["header"]).lower(), "").encode())
        else:
            pieces.append(str(part["literal"]).encode())
    key = secret.encode()
    if auth.get("key_encoding") == "base64":
        try:
            key = base64.b64decode(secret, validate=True)
        except (binascii.Error, ValueError):
            key = b""  # a malformed key still renders (dry run); the provider will answer 401
    digest = ALGORITHMS[str(auth.get("algorithm", "sha256"))]
    mac = hmac.new(key, b"".join(pieces), digest).digest()
    signature = mac.hex() if auth.get("encoding") == "hex" else base64.b64encode(mac).decode()
    template = str(auth.get("format", "{signature}"))
    return {
        **added,
        str(auth.get("header", "Authorization")): template.replace("{signature}", signature),
    }
