"""A subscriber's `filter:`: conditions on canonical paths, compiled once at config load.

    filter:
      data.message.type: {in: [text, interactive]}     # every top-level condition must hold
      data.contact.phone: {exists: true}
      any:                                            # any / all take lists, not takes one
        - data.channel.id: {eq: cloud-us}
        - data.message.status: {in: [failed]}

Operators: `eq`, `ne`, `in`, `nin`, `exists`, `gt`, `gte`, `lt`, `lte` (numbers, or RFC 3339
times compared as instants), `matches` (a regular expression that must match the whole value).
Several operators on one path must all hold. A path the event lacks (or holds null) satisfies
only `exists: false`, `ne` and `nin`. Every error names the dotted config key.

A filter decides at fan-out, when the event is stored: a filtered-out event gets no outbox row
for that subscriber, so it never waits in a contact's queue (never blocks) and the rows that do
exist keep event order (nothing leapfrogs).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bspgate.errors import ConfigError

Test = Callable[[Any], bool]
_MISSING = object()
_GROUPS = ("any", "all", "not")


@dataclass(frozen=True, slots=True)
class Filter:
    """A compiled filter; `source` is what the config said (for `config check`)."""

    test: Test
    source: Mapping[str, Any]

    def matches(self, event: Mapping[str, Any]) -> bool:
        """True when the event satisfies every condition."""
        return self.test(event)

    def __reduce__(self) -> tuple[Any, ...]:
        # `bspgate serve` hands the settings to its worker processes by pickling them; the
        # compiled tests are closures, so a filter travels as its source and compiles again
        return (compile_filter, (self.source, "filter"))


def compile_filter(raw: Any, key: str) -> Filter:
    """Compile the `filter:` mapping at config key `key`, or raise ConfigError."""
    return Filter(_conditions(raw, key), raw)


def _conditions(raw: Any, key: str) -> Test:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            key, "must be a mapping of canonical paths (or any/all/not) to conditions"
        )
    tests = [_condition(name, value, f"{key}.{name}") for name, value in raw.items()]
    return lambda event: all(test(event) for test in tests)


def _condition(name: str, value: Any, key: str) -> Test:
    if name in ("any", "all"):
        if not isinstance(value, list) or not value:
            raise ConfigError(key, f"{name} takes a non-empty list of conditions")
        parts = [_conditions(item, f"{key}[{i}]") for i, item in enumerate(value)]
        combine = any if name == "any" else all
        return lambda event: combine(part(event) for part in parts)
    if name == "not":
        inner = _conditions(value, key)
        return lambda event: not inner(event)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", name):
        raise ConfigError(key, f"{name!r} is not a canonical path (dotted names, e.g. data.type)")
    if not isinstance(value, dict) or not value:
        raise ConfigError(key, "must be a mapping of operators, e.g. {eq: text}")
    steps = name.split(".")
    checks = [_operator(op, operand, f"{key}.{op}") for op, operand in value.items()]
    return lambda event: _all(checks, _lookup(event, steps))


def _all(checks: list[Test], found: Any) -> bool:
    return all(check(found) for check in checks)


def _lookup(event: Any, steps: list[str]) -> Any:
    node = event
    for step in steps:
        if isinstance(node, dict):
            node = node.get(step, _MISSING)
        elif isinstance(node, list) and step.isdigit() and int(step) < len(node):
            node = node[int(step)]
        else:
            return _MISSING
        if node is _MISSING:
            return _MISSING
    return _MISSING if node is None else node


def _operator(op: str, operand: Any, key: str) -> Test:
    if op == "eq":
        return lambda found: found is not _MISSING and found == operand
    if op == "ne":
        return lambda found: found is _MISSING or found != operand
    if op in ("in", "nin"):
        if not isinstance(operand, list):
            raise ConfigError(key, f"{op} takes a list of values")
        values = list(operand)
        if op == "in":
            return lambda found: found is not _MISSING and found in values
        return lambda found: found is _MISSING or found not in values
    if op == "exists":
        if not isinstance(operand, bool):
            raise ConfigError(key, "exists takes true or false")
        return lambda found: (found is not _MISSING) == operand
    if op in ("gt", "gte", "lt", "lte"):
        return _comparison(op, operand, key)
    if op == "matches":
        if not isinstance(operand, str):
            raise ConfigError(key, "matches takes a regular expression (a string)")
        try:
            pattern = re.compile(operand)
        except re.error as exc:
            raise ConfigError(key, f"{operand!r} is not a regular expression: {exc}") from None
        return lambda found: isinstance(found, str) and pattern.fullmatch(found) is not None
    known = "eq, ne, in, nin, exists, gt, gte, lt, lte, matches"
    raise ConfigError(key, f"{op!r} is not an operator (known: {known})")


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
}


def _instant(value: Any) -> datetime | None:
    if not isinstance(value, str) or "T" not in value.upper():
        return None
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _comparison(op: str, operand: Any, key: str) -> Test:
    compare = _COMPARE[op]
    if isinstance(operand, int | float) and not isinstance(operand, bool):
        number = float(operand)

        def numeric(found: Any) -> bool:
            if isinstance(found, bool) or not isinstance(found, int | float):
                return False
            return compare(float(found), number)

        return numeric
    moment = _instant(operand)
    if moment is None:
        raise ConfigError(key, f"{op} takes a number or an RFC 3339 time with an offset")
    bound = moment

    def timed(found: Any) -> bool:
        seen = _instant(found)
        return seen is not None and compare(seen, bound)

    return timed
