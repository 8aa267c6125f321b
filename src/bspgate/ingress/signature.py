"""The `hmac` webhook scheme: an HMAC over a message the mapping declares, part by part.

A declaration (one entry of a mapping's `inbound.verify`) says what is signed and where the
signature travels:

    - scheme: hmac
      secret: webhook_secret
      header: x-sinch-webhook-signature
      algorithm: sha256            # sha1 | sha256 | sha512
      encoding: base64             # hex | base64 | any
      message: [body, {literal: "."}, {header: x-sinch-webhook-signature-nonce},
                {literal: "."}, timestamp]
      timestamp: {header: x-sinch-webhook-signature-timestamp, tolerance: 300}

Message parts: `body` (the raw bytes), `body_sha256` (the body's SHA-256 digest, 32 raw bytes, as
Bird signs it) and `body_sha256_hex` (the same digest as hex text), `url` (the public URL the
provider called; `{url: ports}`
also tries it with and without the scheme's default port), `form` (form fields sorted by name,
each name followed by its sorted distinct values, as Twilio signs them), `timestamp`,
`{header: name}`, `{literal: text}`. The default message is `[body]`.

Where the signature is: `header`, an optional `prefix` (`sha256=`), or `signatures` when the
header carries several (`{split: " ", prefix: "v1,"}` for Standard Webhooks, `{split: ",",
prefix: "v1="}` for `t=…,v1=…`); any one may match. `timestamp` reads a header or a `param` of
the signature header (`t`), in `unit` seconds or milliseconds; a request older or newer than
`tolerance` seconds is refused as stale, and one whose signature was already accepted within that
window is refused as replayed (both 401, counted as `stale`/`replayed`). The replay memory is per
process. `body_hash` (`{query: bodySHA256}`) requires a hex SHA-256 of the body in a query
parameter when present. `settings_header` lets the request name its algorithm (Twilio's
X-Twilio-Webhooks-Signature-Settings), with its own secret. `secret_encoding: base64` decodes
the secret first (after any `whsec_`-style prefix), as Standard Webhooks keys are.
Each option `x` may be overridden per channel by the setting that `x_setting` names.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from bspgate.errors import SignatureError
from bspgate.ingress.parse import parse_form_fields
from bspgate.ingress.request import SignedRequest
from bspgate.ingress.signature_parts import (
    ALGORITHMS,
    BODY_PARTS,
    ENCODINGS,
    Clock,
    DeclarationError,
    ReplayMemory,
    decode_signature,
    equal,
    header_params,
    option,
    parts_of,
    sorted_form,
    timestamp_of,
    url_variants,
)

__all__ = ["Clock", "DeclarationError", "HmacScheme", "equal", "option", "sorted_form"]


class HmacScheme:
    """One `hmac` declaration bound to a channel's settings: checks and signs requests."""

    # the declaration's options (any other key is a load error: verify.declaration_errors)
    OPTIONS: ClassVar[tuple[str, ...]] = (
        "header",
        "algorithm",
        "encoding",
        "prefix",
        "secret_encoding",
        "message",
        "timestamp",
        "signatures",
        "body_hash",
        "settings_header",
    )
    SETTABLE: ClassVar[tuple[str, ...]] = ("header", "algorithm", "encoding", "prefix")
    NESTED: ClassVar[dict[str, tuple[str, ...]]] = {
        "timestamp": ("header", "param", "unit", "tolerance"),
        "signatures": ("split", "prefix"),
        "body_hash": ("query",),
        "settings_header": ("header", "param", "algorithms", "secret"),
    }

    def __init__(
        self,
        options: Mapping[str, Any],
        settings: Mapping[str, Any],
        secret_of: Callable[[str], str] = lambda _name: "",
        clock: Clock = time.time,
    ) -> None:
        self.header = str(option(options, settings, "header", ""))
        self.algorithm = str(option(options, settings, "algorithm", "sha256")).lower()
        self.encoding = str(option(options, settings, "encoding", "hex")).lower()
        self.prefix = str(option(options, settings, "prefix", ""))
        if not self.header:
            raise DeclarationError(("header",), "the hmac verification names no header")
        if self.algorithm not in ALGORITHMS:
            raise DeclarationError(
                ("algorithm",), f"hmac algorithm {self.algorithm!r} is not sha1, sha256 or sha512"
            )
        if self.encoding not in ENCODINGS:
            raise DeclarationError(
                ("encoding",), f"hmac encoding {self.encoding!r} is not hex, base64 or any"
            )
        self.key_encoding = str(options.get("secret_encoding", "utf8"))
        if self.key_encoding not in ("utf8", "base64"):
            raise DeclarationError(("secret_encoding",), "secret_encoding is utf8 or base64")
        self.parts = parts_of(options.get("message"))
        self.timestamp = timestamp_of(options.get("timestamp"))
        self._signs_url = any(p.kind in ("url", "url_ports") for p in self.parts)
        if any(p.kind == "timestamp" for p in self.parts) and self.timestamp is None:
            raise DeclarationError(("message",), "the `timestamp` part needs a `timestamp:` entry")
        multi = options.get("signatures")
        if multi is not None and not isinstance(multi, dict):
            raise DeclarationError(("signatures",), "signatures is {split, prefix}")
        self.split = str((multi or {}).get("split", "")) if multi is not None else None
        self.item_prefix = str((multi or {}).get("prefix", ""))
        if self.timestamp and self.timestamp.param and self.split is None:
            raise DeclarationError(
                ("timestamp", "param"), "a timestamp param needs `signatures: {split: …}`"
            )
        body_hash = options.get("body_hash") or {}
        self.body_hash_query = (
            str(body_hash.get("query", "")) if isinstance(body_hash, dict) else ""
        )
        chosen = options.get("settings_header")
        self.settings_header: dict[str, Any] | None = None
        if chosen is not None:
            if not isinstance(chosen, dict) or not chosen.get("header"):
                raise DeclarationError(("settings_header",), "settings_header names a header")
            for name, value in (chosen.get("algorithms") or {}).items():
                if value not in ALGORITHMS:
                    raise DeclarationError(
                        ("settings_header", "algorithms", name),
                        f"{value!r} is not sha1|sha256|sha512",
                    )
            self.settings_header = dict(chosen)
        self.secret_of = secret_of
        self.clock = clock
        self.replays = ReplayMemory()

    # -- reading a request ---------------------------------------------------------------------
    def _header(self, request: SignedRequest, name: str) -> str:
        value = request.header(name)
        if value is None or value == "":
            raise SignatureError(f"missing {name} header", missing=True)
        return value.strip()

    def _timestamp_value(self, request: SignedRequest) -> str:
        assert self.timestamp is not None
        if self.timestamp.header:
            return self._header(request, self.timestamp.header)
        params = header_params(self._header(request, self.header), self.split or "")
        value = params.get(self.timestamp.param)
        if not value:
            raise SignatureError(f"{self.header} carries no {self.timestamp.param}=", missing=True)
        return value

    def messages(
        self, request: SignedRequest, timestamp: str = "", exact: bool = False
    ) -> list[bytes]:
        """Every byte string the declaration may have signed (URL spellings multiply it).

        `exact`: only the message for the URL as given (what a signer uses).
        """
        prefixes: list[bytes] = [b""]
        for part in self.parts:
            if part.kind == "url_ports" and not exact:
                prefixes = [p + v.encode() for p in prefixes for v in url_variants(request.url)]
                continue
            piece: bytes
            if part.kind == "body":
                piece = request.body
            elif part.kind == "body_sha256":
                piece = hashlib.sha256(request.body).digest()
            elif part.kind == "body_sha256_hex":
                piece = hashlib.sha256(request.body).hexdigest().encode()
            elif part.kind in ("url", "url_ports"):
                piece = request.url.encode()
            elif part.kind == "form":
                is_form = request.content_type.startswith("application/x-www-form-urlencoded")
                piece = sorted_form(parse_form_fields(request.body)).encode() if is_form else b""
            elif part.kind == "timestamp":
                piece = timestamp.encode()
            elif part.kind == "header":
                piece = self._header(request, part.value).encode()
            else:
                piece = part.value.encode()
            prefixes = [p + piece for p in prefixes]
        return prefixes

    def _sent_signatures(self, request: SignedRequest) -> list[str]:
        sent = self._header(request, self.header)
        if self.split is None:
            if self.prefix and sent.lower().startswith(self.prefix.lower()):
                sent = sent[len(self.prefix) :]
            return [sent]
        items = [item.strip() for item in (sent.split(self.split) if self.split else [sent])]
        return [i[len(self.item_prefix) :] for i in items if i.startswith(self.item_prefix)]

    def _key_and_algorithm(self, request: SignedRequest, secret: str) -> tuple[str, str]:
        if self.settings_header is None:
            return secret, self.algorithm
        value = request.header(self.settings_header["header"])
        if not value:
            return secret, self.algorithm
        named = header_params(value, ",").get(str(self.settings_header.get("param", "algorithm")))
        algorithms = self.settings_header.get("algorithms") or {}
        if named is not None:
            if named.upper() not in algorithms:
                raise SignatureError(f"unsupported signature algorithm {named!r}")
            algorithm = str(algorithms[named.upper()])
        else:
            algorithm = self.algorithm
        alternate = self.secret_of(str(self.settings_header.get("secret", "")))
        return alternate or secret, algorithm

    def _key(self, secret: str) -> bytes:
        if self.key_encoding == "utf8":
            return secret.encode()
        try:
            return base64.b64decode(secret.split("_")[-1], validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("the channel's secret is not base64") from None

    def uncovered(self, request: SignedRequest) -> str | None:
        """Why this request's body is not covered by the signature, or None when it is.

        A message with `body` covers every body; one with `form` covers form content only, and
        `body_hash` covers a body whose hash the URL carries (Twilio's JSON webhooks). A body
        the signature does not cover could be replaced by anyone holding one signed request.
        """
        kinds = {part.kind for part in self.parts}
        if kinds & set(BODY_PARTS):
            return None
        if "form" in kinds and request.content_type.startswith("application/x-www-form-urlencoded"):
            return None
        if self.body_hash_query and self.body_hash_query in parse_qs(urlsplit(request.url).query):
            return None
        if not request.body:
            return None
        covered = "only as application/x-www-form-urlencoded content" if "form" in kinds else ""
        if self.body_hash_query:
            covered += (" or " if covered else "only ") + f"with a {self.body_hash_query} query"
        return (
            f"{self.header} signs this body {covered or 'not at all'}; a body the signature does "
            "not cover is refused"
        )

    # -- checking and signing ------------------------------------------------------------------
    def check(self, request: SignedRequest, secret: str) -> None:
        timestamp = self._timestamp_value(request) if self.timestamp else ""
        now = self.clock()
        if self.timestamp:
            try:
                sent_at = float(timestamp) * self.timestamp.scale
            except ValueError:
                raise SignatureError(
                    f"the signature timestamp {timestamp!r} is not a number"
                ) from None
            if abs(now - sent_at) > self.timestamp.tolerance:
                raise SignatureError(
                    "the signature timestamp is outside the tolerance", outcome="stale"
                )
        if self.body_hash_query:
            query = parse_qs(urlsplit(request.url).query)
            if self.body_hash_query in query:
                body_hash = hashlib.sha256(request.body).hexdigest()
                if not equal(body_hash.encode(), query[self.body_hash_query][0].encode()):
                    raise SignatureError(f"{self.body_hash_query} does not match the body")
        key, algorithm = self._key_and_algorithm(request, secret)
        digest = ALGORITHMS[algorithm]
        expected = [
            hmac.new(self._key(key), m, digest).digest() for m in self.messages(request, timestamp)
        ]
        size = len(expected[0])
        sent = [
            c
            for text in self._sent_signatures(request)
            for c in decode_signature(text, self.encoding, size)
        ]
        match = next((c for c in sent if any(equal(e, c) for e in expected)), None)
        if match is None:
            hint = " (check server.public_url)" if self._signs_url else ""
            raise SignatureError(f"{self.header} does not match the signed message{hint}")
        if self.timestamp and not self.replays.remember(
            match, now, now + 2 * self.timestamp.tolerance
        ):
            raise SignatureError("this signature was already accepted", outcome="replayed")

    def sign(self, request: SignedRequest, secret: str) -> dict[str, str]:
        """The headers the provider would add: its nonce/timestamp headers and the signature."""
        headers: dict[str, str] = {}
        now = self.clock()
        timestamp = ""
        if self.timestamp:
            unit = int(now) if self.timestamp.scale == 1.0 else int(now * 1000)
            timestamp = str(unit)
            if self.timestamp.header:
                headers[self.timestamp.header] = request.header(self.timestamp.header) or timestamp
                timestamp = headers[self.timestamp.header]
        for part in self.parts:
            if (
                part.kind == "header"
                and part.value not in headers
                and not request.header(part.value)
            ):
                headers[part.value] = uuid.uuid4().hex  # a nonce
        merged = {**request.headers, **headers}
        signing = SignedRequest(
            request.method, request.url, merged, request.body, request.content_type
        )
        message = self.messages(signing, timestamp, exact=True)[0]
        mac = hmac.new(self._key(secret), message, ALGORITHMS[self.algorithm]).digest()
        encoded = base64.b64encode(mac).decode() if self.encoding == "base64" else mac.hex()
        if self.split is None:
            headers[self.header] = self.prefix + encoded
        else:
            items = (
                [f"{self.timestamp.param}={timestamp}"]
                if self.timestamp and self.timestamp.param
                else []
            )
            items.append(self.item_prefix + encoded)
            headers[self.header] = self.split.join(items) if self.split else items[-1]
        return headers
