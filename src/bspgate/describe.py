"""Say what a value is without showing it: reasons and errors name paths and types, never values.

Quarantine reasons, validation errors and log lines reach operators and INFO logs; the values
they are about are message text, phone numbers or other personal data. `kind(value)` names the
type and size (`a str of 12 characters`); `pointer(path)` is an RFC 6901 JSON Pointer (`""` for
the root); `schema_error(error)` rewrites a jsonschema error without the instance's value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import jsonschema


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


_SAFE = {"required", "additionalProperties", "minItems", "maxItems", "minProperties"}


def schema_error(error: jsonschema.ValidationError) -> str:
    """A jsonschema error as `<validator> failed: <what was expected>, got <kind>`."""
    if error.validator in _SAFE or error.validator == "type":
        # these messages name keys or types, not values, except the instance at the front
        expected: Any = error.validator_value
        if error.validator == "type":
            return f"expected {expected}, got {kind(error.instance)}"
        if error.validator == "required":
            missing = [
                k for k in expected if isinstance(error.instance, dict) and k not in error.instance
            ]
            return f"missing required key {missing[0] if missing else expected}"
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            schema = error.schema if isinstance(error.schema, dict) else {}
            allowed = set(schema.get("properties") or {})
            extra = sorted(k for k in error.instance if k not in allowed)
            return f"unexpected keys {extra[:5]}"
        return f"{error.validator} {expected} failed, got {kind(error.instance)}"
    if error.validator in ("enum", "const"):
        return f"not one of the allowed values ({kind(error.instance)})"
    return f"{error.validator} failed ({kind(error.instance)})"
