"""Mapping expressions: the compiled fast path must agree with the `jmespath` interpreter.

`compile_expression` turns plain paths, `||`/`&&`/`!`, comparisons, indexes, literals, list
projections (`a[*].b`), flattens (`a[].b`) and our named functions into closures, and hands
everything else to the interpreter. The reference interpreter
is the oracle for both paths: a table of expressions over a table of inputs, and hypothesis over
arbitrary JSON. Then the named functions (`functions.py`) the expressions call.
"""

from __future__ import annotations

from typing import Any

import jmespath
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jmespath.exceptions import JMESPathError

from bspgate.errors import MappingError
from bspgate.mapping.expression import compile_expression, truthy
from bspgate.mapping.functions import (
    bsuid,
    e164,
    epoch_to_rfc3339,
    find_first,
    join_key,
    to_rfc3339,
)

FAST = [
    "a",
    "a.b",
    "a.b.c",
    "a.b.c.d",
    "list[0]",
    "list[-1]",
    "list[5]",
    "a.list[1].x",
    "list[0].x.y",
    "@",
    "a.b || list",
    "missing || a.b",
    "missing || zero",
    "empty_s || 'fallback'",
    "empty_l || empty_o || `7`",
    "a.b && list",
    "missing && a",
    "zero && 'zero is truthy'",
    "!missing",
    "!zero",
    "!empty_l",
    "!(a.b)",
    "a.b == 'x'",
    "a.b != 'x'",
    "zero == `0`",
    "t == `true`",
    "one == `true`",
    "one != `true`",
    "one == `1.0`",
    "list == `[1, 2, 3]`",
    "num > `3`",
    "num >= `4.5`",
    "num < zero",
    "num <= num",
    "t < `1`",
    "'a' < 'b'",
    "s > 'abc'",
    "s <= s",
    "`null`",
    '`{"k": [1]}`',
    "'raw string'",
    "a.b == 'x' && !(missing) || `false`",
    "list[*]",
    "objs[*].x",
    "nested[]",
    "nested[][0]",
    "a.list[*].x",
    "nested[].x",
    "objs[].y || `[]`",
    "nested[0][1]",
    "a.list[0].x",
    "nested[*][0]",
    "deep[*].l[0][1]",
]
FALLBACK = [
    "objs[?x == 'one'].y",
    "objs[?x == 'none'] | [0]",
    "list[1:]",
    "list[::-1]",
    "[a.b, num]",
    "{first: a.b, n: num}",
    "length(list)",
    "a.*",
    "objs[0] | x",
    "sort_by(objs, &x)[0].y",
    "max(list)",
    "to_string(num)",
]
INPUTS: list[Any] = [
    {
        "a": {"b": "x", "list": [{"x": 1}, {"x": 2}]},
        "list": [1, 2, 3],
        "objs": [{"x": "one", "y": 1}, {"x": "two", "y": 2}],
        "nested": [[1, 2], [3], []],
        "deep": [{"l": [[1, 2], [3]]}, {"l": "no list"}, {"l": [[4, 5]]}],
        "zero": 0,
        "one": 1,
        "t": True,
        "num": 4.5,
        "s": "abd",
        "empty_s": "",
        "empty_l": [],
        "empty_o": {},
    },
    {
        "a": {"b": None},
        "list": [],
        "objs": [],
        "nested": [],
        "zero": False,
        "one": True,
        "t": 1,
        "num": "4.5",
        "s": 3,
    },
    {"a": "not an object", "list": "not a list", "objs": {"x": "one"}, "num": None},
    {"a": {"b": {"c": {"d": [1]}}}, "list": [{"x": {"y": "deep"}}]},
    {},
    [],
    "string",
    7,
    None,
]


def interpreted(expression: str, data: Any) -> Any:
    return jmespath.search(expression, data)


def is_fallback(getter: Any) -> bool:
    return "interpret" in getter.__qualname__


@pytest.mark.parametrize("expression", FAST)
def test_fast_path_agrees_with_the_interpreter(expression: str) -> None:
    getter = compile_expression(expression)
    assert not is_fallback(getter)
    for data in INPUTS:
        try:
            expected = interpreted(expression, data)
        except TypeError:  # jmespath 1.x raises comparing a string with a number
            assert getter(data) is None
            continue
        assert getter(data) == expected, data
        assert type(getter(data)) is type(expected), data


@pytest.mark.parametrize("expression", FALLBACK)
def test_fallback_agrees_with_the_interpreter(expression: str) -> None:
    getter = compile_expression(expression)
    assert is_fallback(getter)
    for data in INPUTS:
        try:
            expected = interpreted(expression, data)
        except JMESPathError:
            with pytest.raises(JMESPathError):
                getter(data)
            continue
        assert getter(data) == expected, data


def test_comparing_a_string_with_a_number_is_null() -> None:
    assert compile_expression("s < `3`")({"s": "2"}) is None
    assert compile_expression("n >= 'a'")({"n": 1}) is None


def _extend_json(children: Any) -> Any:
    return st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["a", "b", "c", "list", "x"]), children, max_size=4
    )


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(-5, 5, allow_nan=False)
    | st.sampled_from(["", "x", "abc", "b"]),
    _extend_json,
    max_leaves=8,
)
PROPERTY_EXPRESSIONS = [
    "a",
    "a.b",
    "a.b.c",
    "list[0]",
    "a[1].x",
    "a || b",
    "a && b",
    "!a",
    "a == b",
    "a != b",
    "a < b",
    "a >= b",
    "a.b || c.x || `1`",
    "(a || b) && !c",
    "list[]",
    "a[*].b",
    "a[].b[].c",
    "list[].x || a",
    "a[0][1]",
    "a[*].b[0][1]",
    "a[].b[0][0].c",
]


@settings(max_examples=100, deadline=None)
@given(data=JSON, expression=st.sampled_from(PROPERTY_EXPRESSIONS))
def test_fast_path_agrees_with_the_interpreter_on_any_json(data: Any, expression: str) -> None:
    getter = compile_expression(expression)
    try:
        expected = interpreted(expression, data)
    except TypeError:
        assert getter(data) is None
        return
    actual = getter(data)
    assert actual == expected
    assert type(actual) is type(expected)


def test_compile_rejects_invalid_syntax() -> None:
    with pytest.raises(JMESPathError):
        compile_expression("a.[")


def test_compile_rejects_unknown_functions() -> None:
    with pytest.raises(JMESPathError, match="unknown function"):
        compile_expression("objs[*].no_such_function(@)")


def test_compile_rejects_wrong_arity_of_our_functions() -> None:
    with pytest.raises(JMESPathError, match="e164"):
        compile_expression("e164(a, b)")


def test_our_functions_are_compiled_on_the_fast_path() -> None:
    getter = compile_expression("e164(msg.from)")
    assert not is_fallback(getter)
    assert getter({"msg": {"from": "15551234567"}}) == "+15551234567"


def test_our_functions_work_in_the_interpreter_too() -> None:
    getter = compile_expression("msgs[?from != 'x'].e164(from)")  # a filter: interpreted
    assert is_fallback(getter)
    # a projection drops nulls, as JMESPath says
    assert getter({"msgs": [{"from": "15551234567"}, {"from": "US.1"}]}) == ["+15551234567"]


def test_variadic_function_compiles() -> None:
    getter = compile_expression("join_key(st.id, st.status)")
    assert getter({"st": {"id": "wamid.1", "status": "read"}}) == "wamid.1:read"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, False),
        (False, False),
        ("", False),
        ([], False),
        ({}, False),
        (0, True),
        (0.0, True),
        ("0", True),
        ([0], True),
        ({"a": None}, True),
        (True, True),
    ],
)
def test_truthy_follows_jmespath(value: Any, expected: bool) -> None:
    assert truthy(value) is expected
    assert jmespath.search("@ && `true` || `false`", value) is expected


# -- functions ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("15551234567", "+15551234567"),
        ("+15551234567", "+15551234567"),
        ("whatsapp:+15551234567", "+15551234567"),
        ("+1 (555) 123-4567", "+15551234567"),
        (15551234567, "+15551234567"),
        ("US.13491208655302741918", None),
        ("", None),
        (None, None),
        (True, None),
        # v1.1: `+` and 1-15 digits, no plausibility check (short test numbers are phones)
        ("0555123456", "+0555123456"),
        ("12345", "+12345"),
        ("5678", "+5678"),
        (5678, "+5678"),
        ("1.555.123.4567", "+15551234567"),
        ("whatsapp:+1 555-123-4567", "+15551234567"),
        ("123456789012345", "+123456789012345"),
        ("1234567890123456", None),
        ("+", None),
        ("1-800-FLOWERS", None),
        ("not a phone", None),
    ],
)
def test_e164(value: Any, expected: str | None) -> None:
    assert e164(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("US.13491208655302741918", "US.13491208655302741918"),
        ("US.ENT.11815799212886844830", "US.ENT.11815799212886844830"),
        ("whatsapp:US.13491208655302741918", "US.13491208655302741918"),
        ("bsuid:BR.abcDEF123", "BR.abcDEF123"),
        (" US.1 ", "US.1"),
        ("15551234567", None),
        ("+15551234567", None),
        ("5678", None),
        (5678, None),
        ("", None),
        (None, None),
    ],
)
def test_bsuid(value: Any, expected: str | None) -> None:
    assert bsuid(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "us.13491208655302741918",
        "USA.123",
        "US.",
        "US.12-34",
        "hello",
        "1234567890123456",
        12.5,
        ["US.1"],
        {"a": 1},
        True,
    ],
)
def test_neither_phone_nor_bsuid_raises_without_the_value(value: Any) -> None:
    with pytest.raises(MappingError, match="is neither a phone nor a BSUID") as caught:
        bsuid(value)
    if isinstance(value, str):
        assert value not in str(caught.value)


def test_bsuid_is_kept_byte_for_byte() -> None:
    assert bsuid("US.AbCdEf0123") == "US.AbCdEf0123"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1767225600", "2026-01-01T00:00:00Z"),
        (1767225600, "2026-01-01T00:00:00Z"),
        (1767225600.9, "2026-01-01T00:00:00Z"),
        ("1767225600000", "2026-01-01T00:00:00Z"),
        (1767225600123, "2026-01-01T00:00:00Z"),
        (0, "1970-01-01T00:00:00Z"),
        (None, None),
        ("", None),
        (True, None),
    ],
)
def test_epoch_to_rfc3339_reads_seconds_and_milliseconds(value: Any, expected: str | None) -> None:
    assert epoch_to_rfc3339(value) == expected


@pytest.mark.parametrize("value", ["yesterday", "1e400", [1]])
def test_epoch_to_rfc3339_refuses_what_is_not_a_time(value: Any) -> None:
    with pytest.raises(MappingError):
        epoch_to_rfc3339(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z"),
        ("2026-01-01T00:00:00z", "2026-01-01T00:00:00Z"),
        ("2026-01-01T02:00:00+02:00", "2026-01-01T00:00:00Z"),
        ("2026-01-01T02:00:00+0200", "2026-01-01T00:00:00Z"),
        ("2025-12-31T19:00:00-05:00", "2026-01-01T00:00:00Z"),
        ("2026-01-01T00:00:00.1234567Z", "2026-01-01T00:00:00Z"),
        ("2026-01-01T00:00:00", "2026-01-01T00:00:00Z"),
        ("2026-01-01T05:30:00+05:30", "2026-01-01T00:00:00Z"),
        (1767225600, "2026-01-01T00:00:00Z"),
        (None, None),
        ("", None),
    ],
)
def test_to_rfc3339_normalizes_offsets_to_utc(value: Any, expected: str | None) -> None:
    assert to_rfc3339(value) == expected


def test_to_rfc3339_refuses_what_is_not_a_time() -> None:
    with pytest.raises(MappingError, match="ISO 8601"):
        to_rfc3339("first of january")


def test_find_first() -> None:
    items = [{"id": "a", "n": 1}, {"id": "b", "n": 2}, {"id": "b", "n": 3}]
    assert find_first(items, "id", "b") == {"id": "b", "n": 2}
    assert find_first(items, "id", "z") is None
    assert find_first(items, "id", None) is None
    assert find_first("not a list", "id", "a") is None


def test_join_key() -> None:
    assert join_key("wamid.1", "read") == "wamid.1:read"
    assert join_key("wamid.1", None, "") == "wamid.1"
    assert join_key(None, "") is None
