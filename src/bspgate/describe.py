"""Say what a value is without showing it: reasons and errors name paths and types, never values.

Quarantine reasons, validation errors and log lines reach operators and INFO logs; the values
they are about are message text, phone numbers or other personal data. `kind(value)` names the
type and size (`a str of 12 characters`); `token(value)` shows enum-like values only;
`pointer(path)` is an RFC 6901 JSON Pointer (`""` for the root).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any


def kind(value: Any) -> str:
    """`a str of 12 characters`, `an int`, `a list of 3 items`, `null`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return f"a str of {len(value)} characters"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} items"
    if isinstance(value, dict):
        return f"an object of {len(value)} keys"
    name = type(value).__name__
    return f"an {name}" if name[:1] in "aeiou" else f"a {name}"


_TOKEN = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")


def token(value: Any) -> str:
    """An enum-like value (`teleported`, `hologram`: lowercase, starting with a letter) quoted;
    anything else (text, numbers, phones) only by its kind."""
    if isinstance(value, str) and _TOKEN.match(value):
        return repr(value)
    return f"({kind(value)})"


def pointer(path: Iterable[Any]) -> str:
    """RFC 6901: `""` for the root, `/a/0/b~1c` otherwise."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)
