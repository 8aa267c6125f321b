"""The one time format of bspgate's answers: RFC 3339 in UTC with `Z`; and its parser.

`parse_time` accepts any RFC 3339 date-time (offsets such as `+01:00` or `-05:00`, fractions)
and answers an aware UTC datetime; anything else is a `ValueError` naming the value's problem.
"""

from __future__ import annotations

import contextlib
import functools
import re
from datetime import UTC, datetime
from typing import Any

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def iso(moment: datetime) -> str:
    """`2026-01-01T00:00:00.000000Z`: UTC, microseconds, `Z`."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def evidence_time(text: str) -> str:
    """An RFC 3339 time as identity evidence compares it: UTC, whole seconds, `Z`.

    Evidence times are compared as text (identity rule 9). Provider event times have whole
    seconds (`2026-01-01T00:00:00Z`); the gateway's own stamps (`iso`, used when a payload
    names no time and for send answers) have microseconds, and `.` sorts before `Z`, so within
    one second the gateway's evidence read as older. Both are cut to one form.
    """
    if len(text) == 20 and text[19] == "Z":
        return text
    if len(text) > 20 and text[19] == "." and text[-1] == "Z":
        return text[:19] + "Z"
    return parse_time(text).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_epoch(seconds: float) -> str:
    """An epoch time (seconds) in the same format."""
    return iso(datetime.fromtimestamp(seconds, UTC))


@functools.lru_cache(maxsize=4096)
def is_rfc3339(text: str) -> bool:
    """True for an RFC 3339 date-time that names a real instant (payloads repeat their times:
    each is checked once)."""
    try:
        parse_time(text)
    except ValueError:
        return False
    return True


def parse_time(text: str) -> datetime:
    """An RFC 3339 date-time (with `Z` or an offset) as an aware UTC datetime."""
    if not isinstance(text, str) or not _RFC3339.match(text):
        raise ValueError(f"not an RFC 3339 time (like 2026-01-01T00:00:00Z): {str(text)[:40]!r}")
    try:
        moment = datetime.fromisoformat(text.upper().replace("Z", "+00:00").replace(" ", "T"))
    except ValueError:
        raise ValueError(f"not a valid date-time: {text[:40]!r}") from None
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-23:59 is past the last representable instant
        raise ValueError(f"outside the years 1 to 9999 in UTC: {text[:40]!r}") from None


def normalized(text: str) -> str:
    """`text` re-written in the canonical form (`iso`), for comparing with stored times."""
    return iso(parse_time(text))


_TIME_KEYS = frozenset({"at", "time", "first_seen", "last_seen", "received_at"})


def _is_time_key(key: str) -> bool:
    return key in _TIME_KEYS or key.endswith(("_at", "_since"))


def rfc3339_fields(value: Any) -> Any:
    """`value` (rows of an API answer) with every time field in the one format (`iso`).

    Time fields are keys named `at`, `time`, `*_at`, `*_since`, `first_seen`, `last_seen`;
    epoch numbers and RFC 3339 text with any offset both become `…Z`.
    """
    if isinstance(value, list):
        return [rfc3339_fields(item) for item in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(key, str) and _is_time_key(key) and item is not None:
            if isinstance(item, int | float) and not isinstance(item, bool):
                item = iso_epoch(float(item))
            elif isinstance(item, str):
                with contextlib.suppress(ValueError):
                    item = normalized(item)
        else:
            item = rfc3339_fields(item)
        out[key] = item
    return out


def comparable(text: str) -> str:
    """A time filter (`since`, `until`) as text comparable with stored times.

    Stored times are RFC 3339 UTC (`…:SSZ`, or `…:SS.ffffffZ`); the filter becomes
    `YYYY-MM-DDTHH:MM:SS` in UTC (any input offset converted), which sorts before every stored
    time of that second: filters hold at one-second precision.
    """
    return parse_time(text).strftime("%Y-%m-%dT%H:%M:%S")
