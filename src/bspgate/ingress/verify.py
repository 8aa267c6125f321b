"""Webhook authentication, declared as data in a mapping's `inbound.verify` list.

A verifier takes the raw request (bytes, headers, public URL) and a channel's secrets, and raises
`SignatureError` (missing credential or mismatch; both answer 401). Every comparison is constant
time. Schemes:
- `hmac` (signature.py): an HMAC over a declared message (body, URL, sorted form fields,
  headers, literals, a timestamp) with algorithm, encoding, prefix, several signatures per header
  and a timestamp tolerance refusing stale and replayed requests. Meta, 360dialog, Connectly,
  Infobip, Twilio and Sinch are all declared with it.
- `jwt` (token.py): an HS256/RS256 token in a header with claims to check (Vonage's payload_hash).
- `header_secret`: a shared secret compared with a header (`header`, or the channel setting named
  by `header_setting`); `basic_auth`: HTTP Basic with `user:password` as the secret.
- `query_secret`: a shared secret in a query parameter or, failing that, a header (Event Grid).
Each entry names the channel secret it uses (`secret:`). An entry marked `optional: true` applies
only when the channel configures that secret; every entry that applies must pass, and a channel
where none applies refuses everything (an unauthenticated webhook URL is never the default).
One declaration drives both sides: `check` verifies, `sign` builds what the provider would send
(`bspgate simulate`, the golden cases and the end-to-end tests use it).
"""

from __future__ import annotations

import base64
import binascii
import difflib
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol
from urllib.parse import parse_qsl, urlsplit

from bspgate.config import Channel
from bspgate.errors import ConfigError, SignatureError
from bspgate.ingress.request import SignedRequest
from bspgate.ingress.signature import (
    Clock,
    DeclarationError,
    HmacScheme,
    equal,
    option,
    sorted_form,
)
from bspgate.ingress.token import JwtScheme

__all__ = ["SCHEMES", "ChannelVerifier", "SignedRequest", "declaration_errors", "twilio_signature"]


class Scheme(Protocol):
    # the entry's options besides `scheme`, `secret`, `optional`; SETTABLE ones may also be
    # given per channel as `<option>_setting`; NESTED: the keys of object-valued options
    OPTIONS: ClassVar[tuple[str, ...]]
    SETTABLE: ClassVar[tuple[str, ...]]
    NESTED: ClassVar[dict[str, tuple[str, ...]]]

    def check(self, request: SignedRequest, secret: str) -> None: ...

    def sign(self, request: SignedRequest, secret: str) -> dict[str, str]: ...


class HeaderSecret:
    """A shared secret the provider echoes in a header."""

    OPTIONS: ClassVar[tuple[str, ...]] = ("header",)
    SETTABLE: ClassVar[tuple[str, ...]] = ("header",)
    NESTED: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, options: Mapping[str, Any], settings: Mapping[str, Any], *_: Any) -> None:
        self.header = str(option(options, settings, "header", "Authorization"))

    def check(self, request: SignedRequest, secret: str) -> None:
        sent = request.header(self.header)
        if sent is None:
            raise SignatureError(f"missing {self.header} header", missing=True)
        if not equal(sent.strip().encode(), secret.encode()):
            raise SignatureError(f"{self.header} does not hold the channel's secret")

    def sign(self, request: SignedRequest, secret: str) -> dict[str, str]:
        return {self.header: secret}


class BasicAuth:
    """HTTP Basic credentials; the secret is `user:password`."""

    OPTIONS: ClassVar[tuple[str, ...]] = ()
    SETTABLE: ClassVar[tuple[str, ...]] = ()
    NESTED: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, *_: Any) -> None:
        pass

    def check(self, request: SignedRequest, secret: str) -> None:
        sent = request.header("authorization") or ""
        if not sent.lower().startswith("basic "):
            raise SignatureError("missing HTTP Basic credentials", missing=True)
        try:
            decoded = base64.b64decode(sent[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("malformed HTTP Basic credentials") from None
        if not equal(decoded, secret.encode()):
            raise SignatureError("HTTP Basic credentials do not match")

    def sign(self, request: SignedRequest, secret: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(secret.encode()).decode()}


class QuerySecret:
    """A shared secret in a query parameter (Event Grid's `?code=`) or, failing that, a header."""

    OPTIONS: ClassVar[tuple[str, ...]] = ("param", "header")
    SETTABLE: ClassVar[tuple[str, ...]] = ("header",)
    NESTED: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, options: Mapping[str, Any], settings: Mapping[str, Any], *_: Any) -> None:
        self.param = str(options.get("param", "code"))
        named = options.get("header") or options.get("header_setting")
        self.header = str(option(options, settings, "header", "Authorization")) if named else None

    def check(self, request: SignedRequest, secret: str) -> None:
        query = dict(parse_qsl(urlsplit(request.url).query, keep_blank_values=True))
        sent = query.get(self.param)
        if sent is None and self.header is not None:
            sent = request.header(self.header)
        if sent is None:
            raise SignatureError(f"missing ?{self.param}= secret", missing=True)
        if not equal(sent.encode(), secret.encode()):
            raise SignatureError(f"?{self.param}= does not hold the channel's secret")

    def sign(self, request: SignedRequest, secret: str) -> dict[str, str]:
        return {}  # travels in the URL: see ChannelVerifier.signing_query()


Factory = Callable[[Mapping[str, Any], Mapping[str, Any], Callable[[str], str], Clock], Scheme]
SCHEMES: dict[str, Factory] = {
    "hmac": HmacScheme,
    "jwt": JwtScheme,
    "header_secret": HeaderSecret,
    "basic_auth": BasicAuth,
    "query_secret": QuerySecret,
}


def declaration_errors(entries: Any) -> list[tuple[tuple[Any, ...], str]]:
    """(path inside `inbound.verify`, message) for every entry that cannot work."""
    errors: list[tuple[tuple[Any, ...], str]] = []
    for index, options in enumerate(entries or ()):
        scheme = options.get("scheme", "") if isinstance(options, dict) else ""
        if scheme not in SCHEMES:
            known = ", ".join(sorted(SCHEMES))
            errors.append(((index, "scheme"), f"unknown scheme {scheme!r} (known: {known})"))
            continue
        if not options.get("secret"):
            errors.append(((index,), "the entry names no `secret`"))
        errors.extend(((index, *path), message) for path, message in _unknown(scheme, options))
        try:
            SCHEMES[scheme](options, {}, lambda _n: "", time.time)
        except DeclarationError as exc:
            errors.append(((index, *exc.path), str(exc)))
    return errors


_COMMON = ("scheme", "secret", "optional")


def _unknown(scheme: str, options: Mapping[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    """A key the scheme does not read is a typo (`prefx`, `tolerence`): ignored, it would
    refuse every genuine webhook or quietly apply a default."""
    impl = SCHEMES[scheme]
    settable = getattr(impl, "SETTABLE", ())
    known = (*_COMMON, *getattr(impl, "OPTIONS", ()), *(f"{name}_setting" for name in settable))
    nested: dict[str, tuple[str, ...]] = getattr(impl, "NESTED", {})
    errors: list[tuple[tuple[Any, ...], str]] = []
    for key, value in options.items():
        if key not in known:
            errors.append(((str(key),), _unknown_message(f"{scheme} option", key, known)))
        elif key in nested and isinstance(value, dict):
            for inner in value:
                if inner not in nested[key]:
                    what = f"{scheme} {key} option"
                    errors.append(((key, str(inner)), _unknown_message(what, inner, nested[key])))
    return errors


def _unknown_message(what: str, key: Any, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {what} {key!r} (known: {', '.join(known)}){hint}"


def twilio_signature(
    auth_token: str, url: str, params: Mapping[str, list[str]], algorithm: str = "HMAC_SHA1"
) -> str:
    """Twilio's X-Twilio-Signature for `url` and form `params` (twilio-python's algorithm)."""
    digest = hashlib.sha256 if algorithm == "HMAC_SHA256" else hashlib.sha1
    mac = hmac.new(auth_token.encode(), (url + sorted_form(params)).encode(), digest).digest()
    return base64.b64encode(mac).decode()


@dataclass(frozen=True, slots=True)
class _Entry:
    scheme: str
    secret_name: str
    optional: bool
    options: Mapping[str, Any]
    impl: Scheme


class ChannelVerifier:
    """The verification a channel's mapping asks for, bound to that channel's secrets."""

    def __init__(
        self, channel: Channel, entries: tuple[dict[str, Any], ...], clock: Clock = time.time
    ) -> None:
        self.channel = channel
        self._entries: list[_Entry] = []
        for index, options in enumerate(entries):
            scheme = options.get("scheme", "")
            if scheme not in SCHEMES:
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
            try:
                impl = SCHEMES[scheme](options, channel.settings, channel.secret, clock)
            except DeclarationError as exc:
                raise ConfigError(f"channels[{channel.id}]", f"verify[{index}]: {exc}") from None
            self._entries.append(_Entry(scheme, secret_name, optional, options, impl))

    def _applicable(self) -> list[tuple[_Entry, str]]:
        pairs = [(e, self.channel.secret(e.secret_name)) for e in self._entries]
        return [(entry, secret) for entry, secret in pairs if secret]

    def verify(self, request: SignedRequest) -> None:
        """Raise `SignatureError` unless every applicable scheme accepts the request."""
        applicable = self._applicable()
        if not applicable:
            raise SignatureError("this channel has no webhook credential configured")
        for entry, secret in applicable:
            try:
                entry.impl.check(request, secret)
            except SignatureError as exc:
                hint = self._unconfigured_hint(request)
                if not hint:
                    raise
                raise SignatureError(
                    str(exc), missing=exc.missing, outcome=exc.outcome, hint=hint
                ) from None

    def _unconfigured_hint(self, request: SignedRequest) -> str:
        """What the operator may have missed: the request carries the header of a credential
        the mapping declares but the channel does not configure (360dialog's partner
        signature beside a channel's header secret)."""
        for entry in self._entries:
            header = entry.options.get("header")
            if (
                isinstance(header, str)
                and not self.channel.secret(entry.secret_name)
                and request.header(header) is not None
            ):
                return (
                    f"the request carries {header}, which this channel does not check: set "
                    f"channels[{self.channel.id}].secrets.{entry.secret_name} to verify it"
                )
        return ""

    def uncovered_body(self, request: SignedRequest) -> str | None:
        """Why a verified body is still refused (415): no applicable signature covers it.

        Only signatures count: a shared secret, Basic credentials or a query secret prove the
        sender and never the body, by design. None when some applicable signature covers it.
        """
        reasons = [
            entry.impl.uncovered(request)
            for entry, _secret in self._applicable()
            if isinstance(entry.impl, HmacScheme)
        ]
        if not reasons or any(reason is None for reason in reasons):
            return None
        return reasons[0]

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
            current = SignedRequest(
                request.method,
                request.url,
                {**request.headers, **{k.lower(): v for k, v in headers.items()}},
                request.body,
                request.content_type,
            )
            headers.update(entry.impl.sign(current, secret))
        return headers
