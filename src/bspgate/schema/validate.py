"""Validation of canonical events against `canonical_event.schema.json` (Draft 2020-12).

Two validators over one schema: the compiled `jsonschema-rs` validator runs on the hot path (every
event, ~1 µs), and python-jsonschema's `best_match` explains a failure (only then, ~100 µs). The
schema is checked against its metaschema at import, so a broken contract fails at start.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import jsonschema
import jsonschema_rs

from bspgate.errors import CanonicalValidationError


@cache
def canonical_schema() -> dict[str, Any]:
    """The canonical event schema as a dict (read once)."""
    text = resources.files("bspgate.schema").joinpath("canonical_event.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


class EventValidator:
    """Validates canonical events; raises `CanonicalValidationError` with the failing path."""

    __slots__ = ("_explain", "_fast")

    def __init__(self) -> None:
        schema = canonical_schema()
        self._fast = jsonschema_rs.Draft202012Validator(schema)
        self._explain = jsonschema.Draft202012Validator(schema)

    def is_valid(self, event: Any) -> bool:
        """True when `event` satisfies the contract."""
        return bool(self._fast.is_valid(event))

    def validate(self, event: Any) -> None:
        """Raise `CanonicalValidationError` naming the most relevant failure.

        The message names the failing path, keyword and the JSON type found, never the value:
        reasons are stored and shown, and a value may be a phone or a message text. A value
        nested too deeply to explain (python-jsonschema recurses) still fails, with that reason.
        """
        if self._fast.is_valid(event):
            return
        try:
            error = jsonschema.exceptions.best_match(self._explain.iter_errors(event))
        except RecursionError:
            raise CanonicalValidationError(
                "event fails the canonical schema (a value is nested too deeply to explain)"
            ) from None
        if error is None:  # pragma: no cover - both validators implement the same draft
            raise CanonicalValidationError("event fails the canonical schema")
        path = "/".join(str(part) for part in error.absolute_path)
        raise CanonicalValidationError(_explain(error), "/" + path)


_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _explain(error: jsonschema.ValidationError) -> str:
    # keyword and expectation from the schema, the found type from the instance (never its
    # value); additionalProperties names keys, which come from the mapping, not the payload
    keyword = str(error.validator)
    expected: Any = error.validator_value
    found = _json_type(error.instance)
    article = "an" if found[:1] in "aeiou" else "a"
    if keyword == "required" and isinstance(expected, list) and isinstance(error.instance, dict):
        missing = [str(k) for k in expected if k not in error.instance]
        return f"missing required {', '.join(missing)}"
    if keyword == "additionalProperties":
        return error.message[:300]
    if keyword in ("type", "enum", "const", "pattern", "minLength", "maxLength"):
        return f"{article} {found} fails {keyword} {expected!r}"[:300]
    return f"{article} {found} fails {keyword}"
