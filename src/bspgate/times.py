"""The one time format of bspgate's answers: RFC 3339 in UTC with `Z`; and its parser.

`parse_time` accepts any RFC 3339 date-time (offsets such as `+01:00` or `-05:00`, fractions)
and answers an aware UTC datetime; anything else is a `ValueError` naming the value's problem.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def iso(moment: datetime) -> str:
    """`2026-01-01T00:00:00.000000Z`: UTC, microseconds, `Z`."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def iso_epoch(seconds: float) -> str:
    """An epoch time (seconds) in the same format."""
    return iso(datetime.fromtimestamp(seconds, UTC))


def parse_time(text: str) -> datetime:
    """An RFC 3339 date-time (with `Z` or an offset) as an aware UTC datetime."""
    if not isinstance(text, str) or not _RFC3339.match(text):
        raise ValueError(f"not an RFC 3339 time (like 2026-01-01T00:00:00Z): {str(text)[:40]!r}")
    try:
        moment = datetime.fromisoformat(text.upper().replace("Z", "+00:00").replace(" ", "T"))
    except ValueError:
        raise ValueError(f"not a valid date-time: {text[:40]!r}") from None
    return moment.astimezone(UTC)


def normalized(text: str) -> str:
    """`text` re-written in the canonical form (`iso`), for comparing with stored times."""
    return iso(parse_time(text))
