"""The exception tree of bspgate.

Every error the gateway raises on purpose derives from `GatewayError` and carries the context a
reader needs (a dotted config key, a mapping file and rule, a payload pointer). Only `app.py` and
`cli.py` turn these into HTTP answers or exit codes.

    GatewayError
    ├── ConfigError                 config.yaml or the environment is wrong (names the dotted key)
    ├── MappingError                a mapping file is wrong, or a payload cannot be mapped
    │   └── MappingLoadError        ... found while loading a file (names file, line, rule path)
    ├── PayloadError                a body that does not parse (400)
    ├── SignatureError              a webhook's signature is missing (401) or does not match (401)
    ├── CanonicalValidationError    an event fails the canonical JSON Schema
    ├── StoreError                  the store failed or its schema is behind
    │   └── StoreConflict           ... a transaction broke a unique key on every retry
    ├── DeliveryError               a downstream delivery failed (`retryable` says whether to retry)
    └── SendError                   a send is refused (422) or the provider rejected it (502)
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Root of every error bspgate raises on purpose."""


class ConfigError(GatewayError):
    """The configuration is invalid. `key` is the dotted path of the offending value."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)


class MappingError(GatewayError):
    """A payload cannot be mapped. `pointer` points into the payload, `rule` names the rule."""

    def __init__(self, message: str, *, rule: str = "", pointer: str = "") -> None:
        self.message = message
        self.rule = rule
        self.pointer = pointer
        where = " ".join(p for p in (f"rule {rule!r}" if rule else "", pointer) if p)
        super().__init__(f"{where}: {message}" if where else message)


class MappingLoadError(MappingError):
    """A mapping file is invalid: names the file, the line and the rule path (`rules[1].fields`)."""

    def __init__(self, file: str, line: int | None, path: str, message: str) -> None:
        self.file = file
        self.line = line
        self.path = path
        location = f"{file}:{line}" if line else file
        super().__init__(f"{location}: {path}: {message}" if path else f"{location}: {message}")

    def __str__(self) -> str:
        return self.message


class PayloadError(GatewayError):
    """A request body that cannot be parsed at all."""


class SignatureError(GatewayError):
    """Webhook authentication failed. `missing` is True when no credential was sent at all;
    `hint` tells the operator's log what the channel may lack (the caller is not told).

    `outcome` labels the refusal in the webhook metric: `unauthorized`, or `stale`/`replayed`
    for a signature timestamp outside its tolerance or a signature already accepted.
    """

    def __init__(
        self,
        message: str,
        *,
        missing: bool = False,
        outcome: str = "unauthorized",
        hint: str = "",
    ) -> None:
        self.missing = missing
        self.outcome = outcome
        self.hint = hint  # for the operator's log line only, never the answer
        super().__init__(message)


class CanonicalValidationError(GatewayError):
    """An event does not satisfy the canonical schema. `path` points into the event."""

    def __init__(self, message: str, path: str = "") -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class StoreError(GatewayError):
    """The store failed (connection, migration, constraint that retries could not settle)."""


class StoreConflict(StoreError):
    """A transaction broke a unique key on every retry. A race with another replica is lost
    once or twice; ten times over it is the work itself, run after run, and the caller may
    isolate what it was doing. (Serialization failures and deadlocks that outlive the retries
    stay a plain `StoreError`: races, waited out.)"""


class DeliveryError(GatewayError):
    """A delivery attempt failed. `retryable` is False for answers a retry cannot change."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        self.retryable = retryable
        self.status = status
        super().__init__(message)


class SendError(GatewayError):
    """A canonical send was refused before the provider call, or the provider rejected it."""

    def __init__(self, code: str, detail: str, *, status: int = 422, **extra: Any) -> None:
        self.code = code
        self.detail = detail
        self.status = status
        self.extra = extra
        super().__init__(f"{code}: {detail}")
