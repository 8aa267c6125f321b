"""The `jwt` webhook scheme: a signed JSON Web Token in a header, checked with PyJWT.

    - scheme: jwt
      secret: signature_secret      # HS256: the shared secret; RS256: the PEM public key
      header: Authorization
      prefix: "Bearer "
      algorithms: [HS256]           # HS256 | HS384 | HS512 | RS256 | RS384 | RS512 | ES256
      claims:                       # each claim the token must carry, and its value
        payload_hash: body_sha256   # hex SHA-256 of the raw body (Vonage)
        iss: {value: Vonage}        # a fixed value, or {setting: name} for a channel setting
      require: [iat]                # claims that must be present
      max_age: 300                  # refuse tokens issued longer ago (seconds, from `iat`)
      signing_secret: private_key   # RS*: the secret `bspgate simulate` signs with

`exp`/`nbf` are honoured when present (PyJWT). A missing header is a missing credential; a bad
signature, a wrong claim or an expired token is a mismatch; a token older than `max_age` is stale.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jwt
import jwt.warnings

from bspgate.errors import SignatureError
from bspgate.ingress.request import SignedRequest
from bspgate.ingress.signature import Clock, DeclarationError, equal, option

ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256")
BODY_CLAIMS = {
    "body_sha256": lambda body: hashlib.sha256(body).hexdigest(),
    "body_sha256_base64": lambda body: base64.b64encode(hashlib.sha256(body).digest()).decode(),
}


class JwtScheme:
    """One `jwt` declaration bound to a channel's settings."""

    # the declaration's options (any other key is a load error: verify.declaration_errors)
    OPTIONS: ClassVar[tuple[str, ...]] = (
        "header",
        "prefix",
        "algorithms",
        "claims",
        "require",
        "max_age",
        "signing_secret",
    )
    SETTABLE: ClassVar[tuple[str, ...]] = ("header",)
    NESTED: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(
        self,
        options: Mapping[str, Any],
        settings: Mapping[str, Any],
        secret_of: Callable[[str], str] = lambda _name: "",
        clock: Clock = time.time,
    ) -> None:
        self.header = str(option(options, settings, "header", "Authorization"))
        self.prefix = str(options.get("prefix", "Bearer "))
        algorithms = options.get("algorithms", ["HS256"])
        if not isinstance(algorithms, list) or not algorithms:
            raise DeclarationError(("algorithms",), "algorithms is a non-empty list")
        for index, name in enumerate(algorithms):
            if name not in ALGORITHMS:
                raise DeclarationError(
                    ("algorithms", index), f"{name!r} is not one of {', '.join(ALGORITHMS)}"
                )
        self.algorithms = [str(a) for a in algorithms]
        self.claims: dict[str, Callable[[bytes], str]] = {}
        for name, rule in (options.get("claims") or {}).items():
            self.claims[str(name)] = self._claim(name, rule, settings)
        self.require = [str(c) for c in options.get("require") or []]
        max_age = options.get("max_age")
        if max_age is not None and (not isinstance(max_age, int | float) or max_age <= 0):
            raise DeclarationError(("max_age",), "max_age is a positive number of seconds")
        self.max_age = float(max_age) if max_age is not None else None
        self.signing_secret = str(options.get("signing_secret", ""))
        self.secret_of = secret_of
        self.clock = clock

    @staticmethod
    def _claim(name: str, rule: Any, settings: Mapping[str, Any]) -> Callable[[bytes], str]:
        if isinstance(rule, str) and rule in BODY_CLAIMS:
            return BODY_CLAIMS[rule]
        if isinstance(rule, dict) and "value" in rule:
            fixed = str(rule["value"])
            return lambda _body: fixed
        if isinstance(rule, dict) and "setting" in rule:
            value = str(settings.get(rule["setting"], ""))
            return lambda _body: value
        raise DeclarationError(
            ("claims", name),
            f"claim rule {rule!r} is not body_sha256, body_sha256_base64, {{value}} or {{setting}}",
        )

    def _token(self, request: SignedRequest) -> str:
        sent = (request.header(self.header) or "").strip()
        if self.prefix and sent.lower().startswith(self.prefix.lower()):
            sent = sent[len(self.prefix) :].strip()
        if not sent:
            raise SignatureError(f"missing {self.header} token", missing=True)
        return sent

    def _decode(self, token: str, secret: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                secret,
                algorithms=self.algorithms,
                options={"require": self.require, "verify_aud": False, "verify_iat": False},
            )
        except jwt.ExpiredSignatureError:
            raise SignatureError("the token has expired", outcome="stale") from None
        except jwt.PyJWTError as exc:
            raise SignatureError(f"{self.header} token rejected: {type(exc).__name__}") from None
        return claims

    def check(self, request: SignedRequest, secret: str) -> None:
        token = self._token(request)
        now = self.clock()
        with warnings.catch_warnings():
            # the provider chooses the secret's length; a short one is not the request's fault
            warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
            claims = self._decode(token, secret)
        for name, expected in self.claims.items():
            value = claims.get(name)
            if not isinstance(value, str) or not equal(
                value.encode(), expected(request.body).encode()
            ):
                raise SignatureError(f"token claim {name!r} does not match")
        if self.max_age is not None:
            issued = claims.get("iat")
            if not isinstance(issued, int | float) or abs(now - issued) > self.max_age:
                raise SignatureError("the token is older than max_age", outcome="stale")

    def sign(self, request: SignedRequest, secret: str) -> dict[str, str]:
        """A token as the provider would send it (HS* with the secret, RS* with signing_secret)."""
        key = secret
        if not self.algorithms[0].startswith("HS"):
            key = self.secret_of(self.signing_secret)
            if not key:
                return {}  # a public key cannot sign: the channel needs the signing_secret
        claims: dict[str, Any] = {"iat": int(self.clock()), "jti": str(uuid.uuid4())}
        claims.update({name: rule(request.body) for name, rule in self.claims.items()})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
            token = jwt.encode(claims, key, algorithm=self.algorithms[0])
        return {self.header: self.prefix + token}
