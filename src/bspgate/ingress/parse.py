"""Turns a request body into the value mapping rules read: JSON, or form fields.

Form bodies become a dict of the first value of each field (Twilio never repeats the fields it
documents; the signature check sees every value). A body that holds a JSON object where a form is
expected is read as the form's fields, so `bspgate normalize` takes Twilio fixtures written as JSON.
Anything that is not what the mapping declares raises `PayloadError` (a 400 problem).
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qs

import orjson

from bspgate.errors import PayloadError

_MAX_FORM_FIELDS = 1000
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def parse_json(body: bytes) -> Any:
    """Parse a JSON body (orjson: strict UTF-8, depth-limited, no NaN).

    A body orjson refuses only for a lone UTF-16 surrogate escape (`"\\ud83d"` without its
    other half: text cut in the middle of an emoji) is still JSON by RFC 8259's grammar, and
    Meta signs such bodies as they are. It is read with the standard library, each lone half
    becoming U+FFFD, so an authentic payload is stored and mapped, never refused.
    """
    if not body.strip():
        raise PayloadError("the body is empty")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if b"\\u" in body and (value := _with_lone_surrogates(body)) is not None:
            return value[0]
        raise PayloadError(f"the body is not valid JSON: {exc}") from exc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _with_lone_surrogates(body: bytes) -> tuple[Any] | None:
    """The value of a body that is JSON but for orjson's refusal of lone surrogates (a
    one-item tuple), or None when it is not JSON either way."""
    try:
        value = json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return None
    return (_replace_surrogates(value),)


def _replace_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        if _SURROGATE.search(value) is None:
            return value
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [_replace_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in value.items()}
    return value


def parse_form_fields(body: bytes) -> dict[str, list[str]]:
    """Every value of every field of an `application/x-www-form-urlencoded` body."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError("the form body is not valid UTF-8") from exc
    try:
        fields = parse_qs(
            text, keep_blank_values=True, strict_parsing=False, max_num_fields=_MAX_FORM_FIELDS
        )
    except ValueError as exc:
        raise PayloadError(f"the form body cannot be parsed: {exc}") from exc
    return fields


def _field_text(value: Any) -> Any:
    # A form field is text; a JSON value becomes its JSON text. One nested beyond what orjson
    # writes (~250 levels) stays as parsed: the mapping then quarantines what it cannot use,
    # and the raw body is stored either way (never a 5xx for a payload's content).
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return value


def _json_as_form(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PayloadError("a form provider's JSON body must be an object of fields")
    return {str(k): _field_text(v) for k, v in value.items()}


def parse_payload(body: bytes, mode: str) -> Any:
    """Parse `body` as the mapping's `parse` mode says: json, form or json_or_form."""
    stripped = body.lstrip()
    if mode == "json":
        return parse_json(body)
    looks_json = stripped[:1] in (b"{", b"[")
    if looks_json:
        value = parse_json(body)
        return value if mode == "json_or_form" else _json_as_form(value)
    if not stripped:
        raise PayloadError("the body is empty")
    fields = parse_form_fields(body)
    if not fields:
        raise PayloadError("the body holds no form fields")
    return {key: values[0] for key, values in fields.items()}
