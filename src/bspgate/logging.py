"""structlog configuration: JSON lines, and a processor that keeps PII out of logs above DEBUG.

Phone numbers and message text must not reach INFO logs. `redact_pii` masks the values of keys
that hold them (`phone`, `text`, `body`, …) and any phone-like digit run left in other strings,
keeping the last two digits so an operator can still tell two numbers apart. BSUIDs are not
redacted: they are opaque, business-scoped keys, which is what makes them safe to correlate on.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_PII_KEYS = frozenset(
    {"phone", "from", "to", "wa_id", "text", "body", "name", "username", "payload", "message"}
)
# 8-15 digits standing alone (not inside a BSUID, an id or an ISO time): a phone number.
_PHONE_RUN = re.compile(r"(?<![\w.:/-])\+?\d{8,15}(?![\w-])")
_KEEP = frozenset({"event", "timestamp", "level", "logger"})


def _mask_phone(match: re.Match[str]) -> str:
    digits = match.group(0).lstrip("+")
    return "*" * (len(digits) - 2) + digits[-2:]


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return _PHONE_RUN.sub(_mask_phone, value)
    if isinstance(value, dict):
        return {k: "[redacted]" if k in _PII_KEYS else _redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    return value


def redact_pii(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask PII unless the record is DEBUG."""
    if method_name == "debug":
        return event_dict
    for key, value in list(event_dict.items()):
        if key in _PII_KEYS:
            event_dict[key] = "[redacted]"
        elif key not in _KEEP:
            event_dict[key] = _redact(value)
    return event_dict


def configure_logging(level: str = "info", *, json: bool = True) -> None:
    """Configure structlog once per process (the CLI calls it; tests may call it again)."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_pii,  # after format_exc_info: exception messages can carry payload values
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
