"""Generated code for JMESPath built-ins, multi-selects and `!` agrees with the interpreter.

`codewriter.py` now writes `contains` (a literal list as a constant, any other subject through the
interpreter's own function table), `starts_with`, every other built-in (`to_string`, …) as a
call of that table, `[a, b]` and `{k: a}`, and inline truthiness for `!`, `&&` and `||`. Each is
compared here with `jmespath`'s interpreter (our functions registered) on ordinary and odd
values: null, strings, numbers, booleans, objects where lists are expected. Errors must match
too (the same exception type and message). Then the walk and the sub-object groups, end to end,
against the closures on arbitrary JSON for every shipped mapping, and the quarantine conditions
generated per item against each condition's closure.
"""

from __future__ import annotations

import re
from typing import Any

import jmespath
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jmespath.exceptions import JMESPathError

from bspgate.errors import MappingError
from bspgate.mapping.codegen import (
    FALLBACK,
    _define,
    compile_checks,
    compile_condition,
)
from bspgate.mapping.codewriter import _Writer
from bspgate.mapping.engine import _levels, apply_mapping
from bspgate.mapping.expression import _OPTIONS, compile_expression, truthy
from bspgate.mapping.loader import MappingSpec, load_mapping, mapping_names
from tests.conftest import MAPPINGS
from tests.test_codegen import _closures_only, _spec

EXPRESSIONS = [
    "contains(['a', 'b', ''], s)",
    "contains(['a', 'b'], s || '')",
    "!contains(['a', 'b'], s || '')",
    "contains([`1`, `true`, `null`], v)",
    "contains(l, s)",
    "contains(l, v)",
    "contains(s, 'b')",
    "contains(v, s)",  # v may be null, a number, an object: the interpreter's type error
    "contains(o.list, o.x)",
    "contains([s, v], v)",
    "starts_with(s, 'a')",
    "starts_with(s || '', 'ab')",
    "starts_with(v, 'a')",
    "starts_with(s, v)",
    "to_string(v)",
    "to_string(s)",
    "starts_with(to_string(v), '1') && v || null",
    "length(s)",
    "[s, v]",
    "[s, o.x, `3`]",
    "o.[x, list]",
    "{a: s, b: o.x, c: `null`}",
    "o.{x: x, n: missing}",
    "!(v)",
    "!(o.list) && !(o.x)",
    "contains(['a'], s) && (o.x || o.list) || null",
    "contains(['a'], s) || v",
    "!contains(['a'], s) && v",
]
VALUES: list[Any] = [None, "", "a", "ab", "b", 0, 1, 1.0, True, False, [], {}, ["a"], {"x": 1}]
SCOPES: list[dict[str, Any]] = [
    {"s": s, "v": v, "l": ["a", 1, True, None], "o": {"x": v, "list": [v, s]}}
    for s in ("a", "ab", "", None, 3, ["a"])
    for v in VALUES
] + [
    {},
    {"o": "a string, not an object", "s": "ab"},
    {"o": None, "l": "abc", "s": "b", "v": "a"},
    {"o": [], "l": None, "v": None},
    {"o": 0, "s": "zz"},
]


def _generated(text: str) -> Any:
    """`text` as generated code returning its value (asserting it is not left to closures)."""
    writer = _Writer({})
    code = writer.source(jmespath.compile(text).parsed, None)  # type: ignore[arg-type]
    assert code is not None, f"{text} is left to the closures"
    writer.emit(f"return {code}")
    return _define("value", writer, "return FALLBACK", {"FALLBACK": FALLBACK}, text)


def _outcome(call: Any, scope: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "value", call(scope)
    except Exception as exc:  # the error itself is what is compared
        return type(exc).__name__, str(exc)


def _interpreted(text: str, scope: dict[str, Any]) -> tuple[str, Any]:
    return _outcome(lambda data: jmespath.search(text, data, options=_OPTIONS), scope)


@pytest.mark.parametrize("text", EXPRESSIONS)
def test_generated_builtins_match_the_interpreter(text: str) -> None:
    generated = _generated(text)
    for scope in SCOPES:
        got = _outcome(generated, scope)
        if got == ("value", FALLBACK):
            continue  # an unexpected type: the closures answer, exactly (checked below)
        want = _interpreted(text, scope)
        assert got == want, (text, scope)
        if got[0] == "value":  # True must stay True, not 1: the same type too
            assert type(got[1]) is type(want[1]), (text, scope)


@pytest.mark.parametrize("text", EXPRESSIONS)
def test_generated_conditions_match_the_interpreter(text: str) -> None:
    # compile_condition: the generated check, falling back to the closure on odd types
    check = compile_condition(text, compile_expression(text), ["s", "v", "l", "o"])
    for scope in SCOPES:
        got = _outcome(check, scope)
        want = _interpreted(text, scope)
        if want[0] == "value":
            want = ("value", truthy(want[1]))
        assert got == want, (text, scope)
        if got[0] == "value":
            assert isinstance(got[1], bool)


def test_a_literal_list_is_a_constant_and_other_subjects_call_the_function_table() -> None:
    writer = _Writer({})
    code = writer.source(jmespath.compile("contains(['a', 'b'], s)").parsed, None)  # type: ignore[arg-type]
    assert code is not None
    assert " in K" in code
    assert ("a", "b") in writer.constants.values()
    code = writer.source(jmespath.compile("contains(s, 'a')").parsed, None)  # type: ignore[arg-type]
    assert code is not None
    assert code.startswith("_contains(")


def test_contains_type_errors_are_the_interpreters() -> None:
    generated = _generated("contains(v, 'a')")
    for value in (None, 1, True, {"a": 1}):
        got = _outcome(generated, {"v": value})
        assert got[0] == "JMESPathTypeError"
        assert got == _interpreted("contains(v, 'a')", {"v": value})


def test_expression_references_stay_with_the_closures() -> None:
    writer = _Writer({})
    assert writer.source(jmespath.compile("sort_by(l, &x)").parsed, None) is None  # type: ignore[arg-type]
    assert writer.source(jmespath.compile("l[?x == 'a']").parsed, None) is None  # type: ignore[arg-type]


def test_no_shipped_expression_falls_back_but_filters() -> None:
    """Every condition and field of the shipped mappings is generated (filters excepted)."""
    for name in mapping_names(MAPPINGS):
        spec = load_mapping(MAPPINGS, name)
        sources = [rule.build.__doc__ or "" for rule in spec.rules if rule.build is not None]
        sources += [q.when.__doc__ or "" for q in spec.quarantine if q.when is not None]
        for source in sources:
            body = source.split("except AttributeError")[0]
            # a closure called from generated code is `K<n>(scope)`; only a filter is left
            if re.search(r"K\d+\(scope\)", body):
                assert name == "azure_acs", (name, source)  # its `[?…]` filter


def _result(spec: MappingSpec, payload: Any) -> Any:
    try:
        mapped = apply_mapping(spec, payload, {"id": "c"}, received_at="2026-01-01T00:00:00Z")
    except Exception as exc:  # both sides must fail alike
        return type(exc).__name__
    return [(d.id, d.type, d.time, d.data) for d in mapped.drafts], mapped.issues, mapped.unmapped


_KEYS = ["entry", "changes", "value", "messages", "field", "type", "id", "location", "image"]
_KEYS += ["timestamp", "from", "statuses", "results", "message", "payload"]


def _extend_json(inner: Any) -> Any:
    return st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(_KEYS),
        inner,
        max_size=5,
    )


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from(["", "a", "text", "image"]),
    _extend_json,
    max_leaves=25,
)


@settings(max_examples=60, deadline=None)
@given(payload=_json, name=st.sampled_from(mapping_names(MAPPINGS)))
def test_every_mapping_matches_its_closures_on_any_json(payload: Any, name: str) -> None:
    spec = _spec(name)
    assert _result(spec, payload) == _result(_closures_only(spec), payload)


@settings(max_examples=60, deadline=None)
@given(payload=_json, name=st.sampled_from(mapping_names(MAPPINGS)))
def test_the_generated_walk_matches_the_closures_walk(payload: Any, name: str) -> None:
    plan = _spec(name).plan
    root = {"payload": payload, "channel": {"id": "c"}, "received_at": None}
    assert plan.walk is not None
    walked = plan.walk(root)
    if walked is not None:  # None: an unexpected type, the engine walks with the closures
        assert walked == _levels(plan, root)


def _closure_mask(spec: MappingSpec, node: int, scope: dict[str, Any]) -> int:
    """The mask one node's quarantine rules give evaluated one by one with their closures."""
    mask = 0
    for at, bit, name, _reason in spec.plan.quarantine_bits:
        if at != node:
            continue
        (rule,) = [q for q in spec.quarantine if q.name == name]
        if rule.condition is None:
            mask |= bit
            continue
        try:
            holds = truthy(rule.condition(scope))
        except (MappingError, JMESPathError):
            holds = True  # a condition that cannot be evaluated holds
        mask |= bit if holds else 0
    return mask


@settings(max_examples=60, deadline=None)
@given(payload=_json, name=st.sampled_from(mapping_names(MAPPINGS)))
def test_generated_quarantine_checks_match_each_closure(payload: Any, name: str) -> None:
    spec = _spec(name)
    levels = _levels(spec.plan, {"payload": payload, "channel": {"id": "c"}, "received_at": None})
    for node, checks in spec.plan.quarantine_checks:
        for _position, scope in levels[node]:
            assert checks(scope) == _closure_mask(spec, node, scope)


def test_a_quarantine_condition_that_raises_holds_alone() -> None:
    conditions = [
        ("bsuid(v) == 'x'", compile_expression("bsuid(v) == 'x'")),  # raises: not an id
        ("v == 'abc'", compile_expression("v == 'abc'")),
        ("contains(o, 'a')", compile_expression("contains(o, 'a')")),  # type error on null
        None,  # no condition: always holds
    ]
    checks = compile_checks(conditions, ["v", "o"], "test")
    assert checks({"v": "abc", "o": ["a"]}) == 0b1111
    assert checks({"v": "abd", "o": None}) == 0b1101
    assert checks({"v": None, "o": "xyz"}) == 0b1000
