"""Webhook authentication schemes, chosen by name from a mapping's `inbound.verify` list.

A verifier takes the raw request (bytes, headers, URL) and a channel's secrets, and raises
`SignatureError` (missing credential or mismatch; both answer 401). Every comparison is constant
time. Schemes:
- `hmac`: HMAC of the raw body in a header (`algorithm` sha1/sha256/sha512, `encoding` hex, base64
  or any, optional `prefix` such as `sha256=`); Meta, Connectly, 360dialog, Infobip. Each of
  `header`, `algorithm`, `encoding` and `prefix` may be overridden per channel by the setting that
  `header_setting`, `algorithm_setting`, `encoding_setting` or `prefix_setting` names (Infobip's
  HMAC header and algorithm are configured per account, not published).
- `twilio`: X-Twilio-Signature exactly as twilio-python's RequestValidator computes it: the URL
  with and without its port, sorted form params, or the `bodySHA256` variant for JSON bodies;
  HMAC-SHA1 with the auth token, or the algorithm named by X-Twilio-Webhooks-Signature-Settings
  (SharedKey webhooks, secret named by `shared_key_secret`).
- `header_secret`: a shared secret compared with a header (`header`, or the channel setting named
  by `header_setting`); `basic_auth`: HTTP Basic with `user:password` as the secret.
- `query_secret`: a shared secret in a query parameter or, failing that, a header (Event Grid).
Each entry names the channel secret it uses (`secret:`). An entry marked `optional: true` applies
only when the channel configures that secret; every entry that applies must pass, and a channel
where none applies refuses everything (an unauthenticated webhook URL is never the default).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlparse, urlsplit

from bspgate.config import Channel
from bspgate.errors import ConfigError, SignatureError
from bspgate.ingress.parse import parse_form_fields


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """What a verifier may look at. `url` is the public URL the provider called."""

    method: str
    url: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    content_type: str

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


Check = Callable[[SignedRequest, str], None]
_ALGORITHMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}


def _equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def _decode_signature(text: str, encoding: str, size: int) -> list[bytes]:
    candidates: list[bytes] = []
    if encoding in ("hex", "any"):
        with contextlib.suppress(ValueError):
            candidates.append(bytes.fromhex(text))
    if encoding in ("base64", "any"):
        with contextlib.suppress(binascii.Error, ValueError):
            candidates.append(base64.b64decode(text, validate=True))
    return [c for c in candidates if len(c) == size]


def _option(options: dict[str, Any], channel: Channel, name: str, default: str) -> str:
    """An entry option, overridden by the channel setting its `<name>_setting` names."""
    setting = options.get(f"{name}_setting")
    if setting and channel.settings.get(setting) not in (None, ""):
        return str(channel.settings[setting])
    return str(options.get(name, default))


@dataclass(frozen=True, slots=True)
class _HmacForm:
    header: str
    algorithm: str
    encoding: str
    prefix: str


def _hmac_form(options: dict[str, Any], channel: Channel) -> _HmacForm:
    form = _HmacForm(
        header=_option(options, channel, "header", ""),
        algorithm=_option(options, channel, "algorithm", "sha256").lower(),
        encoding=_option(options, channel, "encoding", "hex").lower(),
        prefix=_option(options, channel, "prefix", ""),
    )
    where = f"channels[{channel.id}]"
    if not form.header:
        raise ConfigError(where, "the hmac verification names no header")
    if form.algorithm not in _ALGORITHMS:
        raise ConfigError(where, f"hmac algorithm {form.algorithm!r} is not sha1, sha256 or sha512")
    if form.encoding not in ("hex", "base64", "any"):
        raise ConfigError(where, f"hmac encoding {form.encoding!r} is not hex, base64 or any")
    return form


def _hmac(options: dict[str, Any], channel: Channel) -> Check:
    form = _hmac_form(options, channel)
    header, prefix = form.header, form.prefix
    digest = _ALGORITHMS[form.algorithm]

    def check(request: SignedRequest, secret: str) -> None:
        sent = request.header(header)
        if not sent:
            raise SignatureError(f"missing {header} header", missing=True)
        sent = sent.strip()
        if prefix and sent.lower().startswith(prefix.lower()):
            sent = sent[len(prefix) :]
        expected = hmac.new(secret.encode(), request.body, digest).digest()
        candidates = _decode_signature(sent, form.encoding, len(expected))
        if not any(_equal(expected, c) for c in candidates):
            raise SignatureError(f"{header} does not match the body")

    return check


def _header_value(options: dict[str, Any], channel: Channel) -> str:
    setting = options.get("header_setting")
    if setting and channel.settings.get(setting):
        return str(channel.settings[setting])
    return str(options.get("header", "Authorization"))


def _header_secret(options: dict[str, Any], channel: Channel) -> Check:
    header = _header_value(options, channel)

    def check(request: SignedRequest, secret: str) -> None:
        sent = request.header(header)
        if sent is None:
            raise SignatureError(f"missing {header} header", missing=True)
        if not _equal(sent.strip().encode(), secret.encode()):
            raise SignatureError(f"{header} does not hold the channel's secret")

    return check


def _basic_auth(options: dict[str, Any], channel: Channel) -> Check:
    def check(request: SignedRequest, secret: str) -> None:
        sent = request.header("authorization") or ""
        if not sent.lower().startswith("basic "):
            raise SignatureError("missing HTTP Basic credentials", missing=True)
        try:
            decoded = base64.b64decode(sent[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("malformed HTTP Basic credentials") from None
        if not _equal(decoded, secret.encode()):
            raise SignatureError("HTTP Basic credentials do not match")

    return check


def _query_secret(options: dict[str, Any], channel: Channel) -> Check:
    param = options.get("param", "code")
    header = (
        _header_value(options, channel)
        if options.get("header") or options.get("header_setting")
        else None
    )

    def check(request: SignedRequest, secret: str) -> None:
        query = dict(parse_qsl(urlsplit(request.url).query, keep_blank_values=True))
        sent = query.get(param)
        if sent is None and header is not None:
            sent = request.header(header)
        if sent is None:
            raise SignatureError(f"missing ?{param}= secret", missing=True)
        if not _equal(sent.encode(), secret.encode()):
            raise SignatureError(f"?{param}= does not hold the channel's secret")

    return check


TWILIO_SETTINGS_HEADER = "x-twilio-webhooks-signature-settings"
_TWILIO_ALGORITHMS = {"HMAC_SHA1": hashlib.sha1, "HMAC_SHA256": hashlib.sha256}


def twilio_signature(
    auth_token: str, url: str, params: Mapping[str, list[str]], algorithm: str = "HMAC_SHA1"
) -> str:
    """Twilio's X-Twilio-Signature for `url` and form `params` (twilio-python's algorithm)."""
    data = url
    for key in sorted(params):
        for value in sorted(set(params[key])):
            data += key + value
    mac = hmac.new(auth_token.encode(), data.encode(), _TWILIO_ALGORITHMS[algorithm]).digest()
    return base64.b64encode(mac).decode()


def twilio_algorithm(settings_header: str | None) -> str:
    """The algorithm an X-Twilio-Webhooks-Signature-Settings value names (default HMAC_SHA1)."""
    for part in (settings_header or "").split(","):
        name, separator, value = part.partition("=")
        if separator and name.strip() == "algorithm" and value.strip():
            return value.strip().upper()
    return "HMAC_SHA1"


def _url_variants(url: str) -> list[str]:
    # As twilio-python: the URL without any port and with the scheme's default port, because
    # Twilio signs either spelling inconsistently.
    parts = urlparse(url)
    without = parts._replace(netloc=parts.netloc.split(":")[0]).geturl() if parts.port else url
    if parts.port:
        with_port = url
    else:
        default = 443 if parts.scheme == "https" else 80
        with_port = parts._replace(netloc=f"{parts.netloc}:{default}").geturl()
    return [without] if without == with_port else [without, with_port]


def _twilio(options: dict[str, Any], channel: Channel) -> Check:
    shared_key_name = str(options.get("shared_key_secret", ""))

    def check(request: SignedRequest, secret: str) -> None:
        sent = request.header("x-twilio-signature")
        if not sent:
            raise SignatureError("missing X-Twilio-Signature header", missing=True)
        settings_header = request.header(TWILIO_SETTINGS_HEADER)
        algorithm = twilio_algorithm(settings_header)
        if algorithm not in _TWILIO_ALGORITHMS:
            raise SignatureError(f"unsupported Twilio signature algorithm {algorithm!r}")
        # A SharedKey-signed webhook is signed with the shared key's secret, when configured.
        key = (channel.secret(shared_key_name) if settings_header else "") or secret
        query = parse_qs(urlsplit(request.url).query)
        params: Mapping[str, list[str]]
        if "bodySHA256" in query:
            body_hash = hashlib.sha256(request.body).hexdigest()
            if not _equal(body_hash.encode(), query["bodySHA256"][0].encode()):
                raise SignatureError("bodySHA256 does not match the body")
            params = {}
        elif request.content_type.startswith("application/x-www-form-urlencoded"):
            params = parse_form_fields(request.body)
        else:
            params = {}
        for candidate in _url_variants(request.url):
            computed = twilio_signature(key, candidate, params, algorithm)
            if _equal(computed.encode(), sent.strip().encode()):
                return
        raise SignatureError("X-Twilio-Signature does not match (check server.public_url)")

    return check


_SCHEMES: dict[str, Callable[[dict[str, Any], Channel], Check]] = {
    "hmac": _hmac,
    "twilio": _twilio,
    "header_secret": _header_secret,
    "basic_auth": _basic_auth,
    "query_secret": _query_secret,
}


@dataclass(frozen=True, slots=True)
class _Entry:
    scheme: str
    secret_name: str
    optional: bool
    options: dict[str, Any]
    check: Check


class ChannelVerifier:
    """The verification a channel's mapping asks for, bound to that channel's secrets."""

    def __init__(self, channel: Channel, entries: tuple[dict[str, Any], ...]) -> None:
        self.channel = channel
        self._entries: list[_Entry] = []
        for index, options in enumerate(entries):
            scheme = options.get("scheme", "")
            if scheme not in _SCHEMES:
                raise ConfigError(
                    f"channels[{channel.id}]", f"verify[{index}]: unknown scheme {scheme!r}"
                )
            secret_name = options.get("secret", "")
            optional = bool(options.get("optional", False))
            if not optional and not channel.secret(secret_name):
                raise ConfigError(
                    f"channels[{channel.id}].secrets.{secret_name}",
                    f"required by the {channel.provider} mapping's {scheme} verification",
                )
            check = _SCHEMES[scheme](options, channel)
            self._entries.append(_Entry(scheme, secret_name, optional, options, check))

    def _applicable(self) -> list[tuple[_Entry, str]]:
        pairs = [(e, self.channel.secret(e.secret_name)) for e in self._entries]
        return [(entry, secret) for entry, secret in pairs if secret]

    def verify(self, request: SignedRequest) -> None:
        """Raise `SignatureError` unless every applicable scheme accepts the request."""
        applicable = self._applicable()
        if not applicable:
            raise SignatureError("this channel has no webhook credential configured")
        for entry, secret in applicable:
            entry.check(request, secret)

    def signing_query(self) -> dict[str, str]:
        """Query parameters a provider adds to the URL (Event Grid's `?code=`)."""
        return {
            str(entry.options.get("param", "code")): secret
            for entry, secret in self._applicable()
            if entry.scheme == "query_secret"
        }

    def sign_headers(self, request: SignedRequest) -> dict[str, str]:
        """Headers a provider would send for `request` (`bspgate simulate` and tests use it)."""
        headers: dict[str, str] = {}
        for entry, secret in self._applicable():
            headers.update(_sign(entry, self.channel, secret, request))
        return headers


def _sign(entry: _Entry, channel: Channel, secret: str, request: SignedRequest) -> dict[str, str]:
    options = entry.options
    if entry.scheme == "hmac":
        shape = _hmac_form(options, channel)
        mac = hmac.new(secret.encode(), request.body, _ALGORITHMS[shape.algorithm]).digest()
        encoded = base64.b64encode(mac).decode() if shape.encoding == "base64" else mac.hex()
        return {shape.header: shape.prefix + encoded}
    if entry.scheme == "twilio":
        query = parse_qs(urlsplit(request.url).query)
        is_form = request.content_type.startswith("application/x-www-form-urlencoded")
        params = parse_form_fields(request.body) if is_form and "bodySHA256" not in query else {}
        return {"X-Twilio-Signature": twilio_signature(secret, request.url, params)}
    if entry.scheme == "header_secret":
        return {_header_value(options, channel): secret}
    if entry.scheme == "basic_auth":
        return {"Authorization": "Basic " + base64.b64encode(secret.encode()).decode()}
    return {}  # query_secret travels in the URL: see signing_query()
