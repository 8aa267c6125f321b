"""Golden cases: `mappings/<provider>/cases/*.yaml`, each an input payload and what it must give.

A case file holds `input` (the payload as a JSON-like value; for form providers an object of the
form's fields) and either `expect.events` (the canonical events, in order) or `expect.quarantine`
(a phrase the quarantine reason must contain). Optional `channel` overrides the demo channel
(`id`, `portfolio`, `business_phone`); optional `received_at` (RFC 3339) pins the receive time
that providers without an event time (Twilio) use. Fields that differ per run (`subject`,
`data.contact.id`, `data.raw_id`) may be left out of expected events; when present they are not
compared. Every expected event, with those fields filled in, must itself satisfy the canonical
schema.
A signed case (`signed:`) holds a request exactly as the provider sent it, from the vendor's
docs or SDK tests: `url`, `headers`, the raw `body` text, `content_type`, the channel `secrets`
(and `settings`) and optionally `now` (unix seconds: vendor vectors carry old timestamps). The
mapping's `inbound.verify` declaration must accept it (`expect.verified: true`) and refuse the
same request with one byte of the body changed; with `expect.events`/`expect.quarantine` the body
is then normalized as well.
Every case file is checked against `bspgate/schema/case.schema.json` when it is read (`load_case`,
and `send_cases.load_send_case`), so `mappings check` names the file and field of a malformed one.
The pytest suite and `bspgate mappings test` both run cases through `run_case`.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import orjson

from bspgate.config import Secret
from bspgate.errors import CanonicalValidationError, MappingLoadError, PayloadError, SignatureError
from bspgate.ingress.parse import parse_payload
from bspgate.mapping.folders import display_path
from bspgate.mapping.loader import MappingSpec
from bspgate.mapping.yamlfile import YamlFile
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


def diff(expected: Any, actual: Any, path: str = "") -> str | None:
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in sorted(set(expected) | set(actual)):
            if key not in actual:
                return f"{path}/{key}: expected {expected[key]!r}, missing"
            if key not in expected:
                return f"{path}/{key}: unexpected {actual[key]!r}"
            found = diff(expected[key], actual[key], f"{path}/{key}")
            if found:
                return found
        return None
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return f"{path}: expected {len(expected)} items, got {len(actual)}"
        for index, (e, a) in enumerate(zip(expected, actual, strict=True)):
            found = diff(e, a, f"{path}/{index}")
            if found:
                return found
        return None
    if expected != actual or type(expected) is not type(actual):
        return f"{path}: expected {expected!r}, got {actual!r}"
    return None


def case_display(path: Path) -> str:
    """The case file's path for error messages: relative to the working folder when under it."""
    return display_path(path)


@cache
def _case_validator(kind: str) -> jsonschema.Draft202012Validator:
    text = resources.files("bspgate.schema").joinpath("case.schema.json").read_text()
    schema = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator({**schema, "$ref": f"#/$defs/{kind}"})


def check_case(file: YamlFile, kind: str) -> None:
    """Check a case file against `case.schema.json` (`kind`: inbound or send); the first error
    raises `MappingLoadError` naming file, line and field, so `mappings check` catches what
    would otherwise fail `mappings test` as a bare Python exception."""
    errors = sorted(
        _case_validator(kind).iter_errors(file.data), key=lambda e: list(e.absolute_path)
    )
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        assert error is not None
        raise file.error(tuple(error.absolute_path), error.message)


def load_case(path: Path) -> dict[str, Any]:
    """A case file's data; `MappingLoadError` (file, line, field) for YAML or shape errors."""
    file = YamlFile(path, case_display(path))
    data = file.data
    if not isinstance(data, dict) or "expect" not in data:
        raise file.error((), "a case needs `expect`")
    if "input" not in data and "signed" not in data:
        raise file.error((), "a case needs `input` (a payload) or `signed` (a signed request)")
    if not isinstance(data["expect"], dict):
        raise file.error(("expect",), "expect is a mapping (events, quarantine or verified)")
    check_case(file, "inbound")
    if "received_at" in data:
        try:
            _received_at(data["received_at"])
        except ValueError as exc:
            raise file.error(("received_at",), f"not an RFC 3339 time: {exc}") from None
    return data


def _received_at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))


def _signed_channel(spec: MappingSpec, signed: dict[str, Any]) -> Any:
    secrets = {k: Secret(str(v)) for k, v in (signed.get("secrets") or {}).items()}
    return demo_channel(spec.name, secrets=secrets, settings=dict(signed.get("settings") or {}))


def verify_signed(spec: MappingSpec, signed: dict[str, Any]) -> str | None:
    """None when the declared verification accepts the request and refuses it tampered."""
    from bspgate.ingress.verify import ChannelVerifier, SignedRequest

    channel = _signed_channel(spec, signed)
    now = signed.get("now")
    clock = (lambda: float(now)) if now is not None else None
    headers = {str(k).lower(): str(v) for k, v in (signed.get("headers") or {}).items()}
    body = str(signed.get("body", "")).encode()
    content_type = str(signed.get("content_type", "application/json"))
    url = str(signed.get("url", "https://gateway.example/webhooks/demo"))

    def check(raw: bytes) -> SignatureError | None:
        verifier = (
            ChannelVerifier(channel, spec.verify, clock=clock)
            if clock
            else ChannelVerifier(channel, spec.verify)
        )
        try:
            verifier.verify(SignedRequest("POST", url, headers, raw, content_type))
        except SignatureError as exc:
            return exc
        return None

    refused = check(body)
    if refused is not None:
        return f"the declared verification refuses the signed request: {refused}"
    binds_body = any(
        entry.get("scheme") in ("hmac", "jwt") and channel.secret(str(entry.get("secret", "")))
        for entry in spec.verify
    )
    if not binds_body:
        return None  # a shared secret or Basic credential does not cover the body
    tampered = body[:-1] + bytes([body[-1] ^ 1]) if body else b"x"
    if check(tampered) is None:
        return "the declared verification accepts the request with its body changed"
    return None


def normalize_case(spec: MappingSpec, case: dict[str, Any], validator: EventValidator) -> Any:
    """The case's payload through the mapping: an `IngestOutcome` (events, issues, state)."""
    channel = demo_channel(spec.name, **(case.get("channel") or {}))
    signed = case.get("signed")
    if isinstance(signed, dict):
        body = str(signed.get("body", "")).encode()
        payload = parse_payload(body, spec.parse)
    else:
        payload = case["input"]
        body = orjson.dumps(payload)
    received_at = case.get("received_at")
    if isinstance(received_at, str):
        received_at = _received_at(received_at)
    return Normalizer(spec, channel, validator).normalize(
        payload, body, "application/json", received_at=received_at
    )


def run_case(spec: MappingSpec, path: Path, validator: EventValidator | None = None) -> CaseResult:
    """Run one case file against a compiled mapping."""
    name = f"{spec.name}/{path.stem}"
    try:
        case = load_case(path)
    except MappingLoadError as exc:
        return CaseResult(name, False, str(exc))
    expect = case["expect"]
    signed = case.get("signed")
    if isinstance(signed, dict):
        problem = verify_signed(spec, signed)
        if problem:
            return CaseResult(name, False, problem)
        if "events" not in expect and "quarantine" not in expect:
            return CaseResult(name, True)
    validator = validator or EventValidator()
    try:
        outcome = normalize_case(spec, case, validator)
    except PayloadError as exc:
        return CaseResult(name, False, f"the signed body does not parse: {exc}")
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
        difference = diff(filled, actual, f"/events/{index}")
        if difference:
            return CaseResult(name, False, difference)
    return CaseResult(name, True)
