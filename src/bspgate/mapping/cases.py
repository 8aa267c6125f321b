"""Golden cases: `mappings/<provider>/cases/*.yaml`, each an input payload and what it must give.

A case file holds `input` (the payload as a JSON-like value; for form providers an object of the
form's fields) and either `expect.events` (the canonical events, in order) or `expect.quarantine`
(a phrase the quarantine reason must contain). Optional `channel` overrides the demo channel
(`id`, `portfolio`, `business_phone`); optional `received_at` (RFC 3339) pins the receive time
that providers without an event time (Twilio) use. Fields that differ per run (`subject`,
`data.contact.id`, `data.raw_id`) may be left out of expected events; when present they are not
compared. Every expected event, with those fields filled in, must itself satisfy the canonical
schema.
The pytest suite and `bspgate mappings test` both run cases through `run_case`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import yaml

from bspgate.errors import CanonicalValidationError
from bspgate.mapping.loader import MappingSpec
from bspgate.normalize import Normalizer, demo_channel
from bspgate.schema.validate import EventValidator

VARIABLE_PATHS = (("subject",), ("data", "contact", "id"), ("data", "raw_id"))


@dataclass(frozen=True, slots=True)
class CaseResult:
    name: str
    ok: bool
    message: str = ""


def _fill_variables(expected: dict[str, Any], actual: dict[str, Any]) -> dict[str, Any]:
    filled = copy.deepcopy(expected)
    for path in VARIABLE_PATHS:
        source: Any = actual
        target: Any = filled
        for part in path[:-1]:
            source = source.get(part, {}) if isinstance(source, dict) else {}
            target = target.setdefault(part, {}) if isinstance(target, dict) else {}
        if isinstance(target, dict) and isinstance(source, dict) and path[-1] in source:
            target[path[-1]] = source[path[-1]]
    return filled


def _diff(expected: Any, actual: Any, path: str = "") -> str | None:
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in sorted(set(expected) | set(actual)):
            if key not in actual:
                return f"{path}/{key}: expected {expected[key]!r}, missing"
            if key not in expected:
                return f"{path}/{key}: unexpected {actual[key]!r}"
            found = _diff(expected[key], actual[key], f"{path}/{key}")
            if found:
                return found
        return None
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return f"{path}: expected {len(expected)} items, got {len(actual)}"
        for index, (e, a) in enumerate(zip(expected, actual, strict=True)):
            found = _diff(e, a, f"{path}/{index}")
            if found:
                return found
        return None
    if expected != actual or type(expected) is not type(actual):
        return f"{path}: expected {expected!r}, got {actual!r}"
    return None


def load_case(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "input" not in data or "expect" not in data:
        raise ValueError(f"{path.name}: a case needs `input` and `expect`")
    return data


def run_case(spec: MappingSpec, path: Path, validator: EventValidator | None = None) -> CaseResult:
    """Run one case file against a compiled mapping."""
    name = f"{spec.name}/{path.stem}"
    try:
        case = load_case(path)
    except (ValueError, yaml.YAMLError) as exc:
        return CaseResult(name, False, str(exc))
    validator = validator or EventValidator()
    channel = demo_channel(spec.name, **(case.get("channel") or {}))
    payload = case["input"]
    body = orjson.dumps(payload)
    received_at = case.get("received_at")
    if isinstance(received_at, str):
        received_at = datetime.fromisoformat(received_at.replace("Z", "+00:00"))
    outcome = Normalizer(spec, channel, validator).normalize(
        payload, body, "application/json", received_at=received_at
    )
    expect = case["expect"]
    if "quarantine" in expect:
        reason = "; ".join(outcome.issues)
        if outcome.state != "quarantined":
            return CaseResult(name, False, f"expected quarantine, got state {outcome.state}")
        if str(expect["quarantine"]) not in reason:
            return CaseResult(
                name, False, f"quarantine reason {reason!r} lacks {expect['quarantine']!r}"
            )
        return CaseResult(name, True)
    if outcome.issues:
        return CaseResult(name, False, "unexpected quarantine: " + "; ".join(outcome.issues))
    expected_events = expect.get("events") or []
    if len(expected_events) != len(outcome.events):
        return CaseResult(
            name, False, f"expected {len(expected_events)} events, got {len(outcome.events)}"
        )
    for index, (expected, actual) in enumerate(zip(expected_events, outcome.events, strict=True)):
        filled = _fill_variables(expected, actual)
        try:
            validator.validate(filled)
        except CanonicalValidationError as exc:
            return CaseResult(name, False, f"expected event {index} fails the schema: {exc}")
        difference = _diff(filled, actual, f"/events/{index}")
        if difference:
            return CaseResult(name, False, difference)
    return CaseResult(name, True)
