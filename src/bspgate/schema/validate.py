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

from bspgate.describe import pointer, schema_error
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
        """Raise `CanonicalValidationError` naming the most relevant failure."""
        if self._fast.is_valid(event):
            return
        error = jsonschema.exceptions.best_match(self._explain.iter_errors(event))
        if error is None:  # pragma: no cover - both validators implement the same draft
            raise CanonicalValidationError("event fails the canonical schema")
        raise CanonicalValidationError(schema_error(error), pointer(error.absolute_path))
