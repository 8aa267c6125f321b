"""The one definition of what a BSUID is, and lookup values normalized as the store keeps them.

`BSUID_RE` is used by the mapping functions, the identity store, the send checks and the API.
It is anchored with `\\Z`: `$` would also accept a trailing newline (`"US.123\\n"`).
"""

from __future__ import annotations

import re

BSUID_RE = re.compile(r"\A[A-Z]{2}\.(ENT\.)?[A-Za-z0-9]{1,128}\Z")


def is_bsuid(value: object) -> bool:
    """True when `value` is a well-formed BSUID (or parent BSUID), used whole."""
    return isinstance(value, str) and BSUID_RE.match(value) is not None


def normal_phone(value: str) -> str | None:
    """A phone as typed or sent in a query (`15551234567`, ` 15551234567` where an unencoded
    `+` became a space, `whatsapp:+1 555…`) as E.164, or None when it is not a phone."""
    from bspgate.mapping.functions import e164

    return None if is_bsuid(value.strip()) else e164(value)


def normal_username(value: str) -> str:
    """`bo` and `@bo` are one username; the store keeps WhatsApp's `@` spelling."""
    value = value.strip()
    return value if value.startswith("@") else f"@{value}"
