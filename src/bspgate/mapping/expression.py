"""Compiles mapping expressions (JMESPath plus the named functions of `functions.py`) once.

JMESPath is the one specified language of mapping files. Most mapping expressions are plain paths,
`||` fallbacks, comparisons, list projections and flattens (`entry[].changes[].value`) and
function calls; those compile here to nested Python closures over the AST that the reference
`jmespath` parser produces, which is ~10x faster than its tree interpreter. Anything else (object
projections, filters, slices, pipes, JMESPath's built-in functions) is handed to the
interpreter, with our functions registered in it, so semantics never depend on the path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import jmespath
from jmespath import functions as jp_functions
from jmespath.exceptions import JMESPathError

from bspgate.mapping.functions import REGISTRY

Getter = Callable[[Any], Any]


def _make_function_class() -> type[jp_functions.Functions]:
    attrs: dict[str, Any] = {}
    for name, (func, minimum, maximum) in REGISTRY.items():

        def method(self: Any, *args: Any, _func: Callable[..., Any] = func) -> Any:
            return _func(*args)

        arity = minimum if maximum is not None else 1
        types: list[dict[str, Any]] = [{"types": []} for _ in range(arity)]
        if maximum is None:
            types[-1]["variadic"] = True
        method.signature = types  # type: ignore[attr-defined]
        attrs[f"_func_{name}"] = method
    return type("MappingFunctions", (jp_functions.Functions,), attrs)


_FUNCTIONS = _make_function_class()()
# The interpreter's function table (JMESPath's built-ins and ours): codegen calls built-ins in it.
FUNCTIONS: jp_functions.Functions = _FUNCTIONS
_OPTIONS = jmespath.Options(custom_functions=_FUNCTIONS)


class _Fallback(Exception):
    """The AST holds a node this compiler leaves to the interpreter."""


def _truthy(value: Any) -> bool:
    # JMESPath falsiness: null, false, "", [] and {} are false; 0 is true.
    return not (value is None or value is False or value in ("", [], {}))


def _field(name: str) -> Getter:
    def get(value: Any) -> Any:
        return value.get(name) if isinstance(value, dict) else None

    return get


def _index(position: int) -> Getter:
    def get(value: Any) -> Any:
        if isinstance(value, list):
            try:
                return value[position]
            except IndexError:
                return None
        return None

    return get


def _field_names(node: dict[str, Any]) -> tuple[str, ...] | None:
    """`a.b.c` as ("a", "b", "c"); None when the subexpression holds anything but fields."""
    if node["type"] == "field":
        return (node["value"],)
    if node["type"] != "subexpression":
        return None
    names: list[str] = []
    for child in node["children"]:
        inner = _field_names(child)
        if inner is None:
            return None
        names.extend(inner)
    return tuple(names)


def _path(names: tuple[str, ...]) -> Getter:
    # Plain paths are most of every mapping, so they get one closure, unrolled for the usual
    # depths. Only a dict has `.get`: a missing key (None), a list or a string raise
    # AttributeError, which is JMESPath's null for a field of a non-object.
    if len(names) == 1:
        (a,) = names

        def get1(value: Any) -> Any:
            return value.get(a) if type(value) is dict else None

        return get1
    if len(names) == 2:
        a, b = names

        def get2(value: Any) -> Any:
            try:
                return value.get(a).get(b)
            except AttributeError:
                return None

        return get2
    if len(names) == 3:
        a, b, c = names

        def get3(value: Any) -> Any:
            try:
                return value.get(a).get(b).get(c)
            except AttributeError:
                return None

        return get3

    def get(value: Any) -> Any:
        try:
            for name in names:
                value = value.get(name)
        except AttributeError:
            return None
        return value

    return get


def _flatten(base: Getter) -> Getter:
    # `a[]`, as the interpreter: a list's list elements merged into it, else null
    def flat(value: Any) -> Any:
        items = base(value)
        if not isinstance(items, list):
            return None
        merged: list[Any] = []
        for item in items:
            if isinstance(item, list):
                merged.extend(item)
            else:
                merged.append(item)
        return merged

    return flat


def _projection(base: Getter, each: Getter) -> Getter:
    # `a[*].b` and the right side of `a[].b`: `each` of every element, nulls left out
    def project(value: Any) -> Any:
        items = base(value)
        if not isinstance(items, list):
            return None
        return [found for item in items if (found := each(item)) is not None]

    return project


def _chain(first: Getter, second: Getter) -> Getter:
    return lambda value: second(first(value))


def _equal(left: Any, right: Any) -> bool:
    # JMESPath equality is type-strict: true != 1.
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    return bool(left == right)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
}


def _comparator(op: str, left: Getter, right: Getter) -> Getter:
    if op == "eq":
        return lambda value: _equal(left(value), right(value))
    if op == "ne":
        return lambda value: not _equal(left(value), right(value))
    compare = _ORDER[op]

    def ordered(value: Any) -> Any:
        # As the interpreter: numbers with numbers, strings with strings (jmespath >= 1.0 orders
        # strings too); anything else is null (the interpreter would raise on str vs number).
        a, b = left(value), right(value)
        if (_is_number(a) and _is_number(b)) or (isinstance(a, str) and isinstance(b, str)):
            return compare(a, b)
        return None

    return ordered


def _function(name: str, args: list[Getter]) -> Getter:
    func, minimum, maximum = REGISTRY[name]
    if len(args) < minimum or (maximum is not None and len(args) > maximum):
        raise JMESPathError(f"{name}() takes {minimum} argument(s), got {len(args)}")
    if len(args) == 1:
        (only,) = args
        return lambda value: func(only(value))
    return lambda value: func(*(arg(value) for arg in args))


def _compile(node: dict[str, Any]) -> Getter:
    kind = node["type"]
    children = node.get("children", [])
    if kind == "field":
        return _field(node["value"])
    if kind == "subexpression":
        names = _field_names(node)
        if names is not None:
            return _path(names)
        getter = _compile(children[0])
        for child in children[1:]:
            getter = _chain(getter, _compile(child))
        return getter
    if kind == "index_expression":
        # `a[0][1]` is one node: the left side, then each index in turn (a slice: interpreted)
        getter = _compile(children[0])
        for index in children[1:]:
            if index["type"] != "index":
                raise _Fallback
            getter = _chain(getter, _index(index["value"]))
        return getter
    if kind == "index":
        return _index(node["value"])
    if kind == "literal":
        constant = node["value"]
        return lambda _value: constant
    if kind in ("current", "identity"):
        return lambda value: value
    if kind == "flatten":
        return _flatten(_compile(children[0]))
    if kind == "projection":
        return _projection(_compile(children[0]), _compile(children[1]))
    if kind == "or_expression":
        left, right = (_compile(child) for child in children)

        def either(value: Any) -> Any:
            result = left(value)
            return result if _truthy(result) else right(value)

        return either
    if kind == "and_expression":
        left, right = (_compile(child) for child in children)

        def both(value: Any) -> Any:
            result = left(value)
            return right(value) if _truthy(result) else result

        return both
    if kind == "not_expression":
        inner = _compile(children[0])
        return lambda value: not _truthy(inner(value))
    if kind == "comparator":
        return _comparator(node["value"], _compile(children[0]), _compile(children[1]))
    if kind == "function_expression" and node["value"] in REGISTRY:
        return _function(node["value"], [_compile(child) for child in children])
    raise _Fallback


def compile_expression(text: str) -> Getter:
    """Compile one mapping expression; raises `jmespath.exceptions.JMESPathError` when invalid."""
    parsed = jmespath.compile(text)
    tree: dict[str, Any] = parsed.parsed  # type: ignore[assignment]
    _check_functions(tree)
    # _Fallback: a node left to the interpreter. Anything else is a node shape this compiler
    # misreads: the interpreter's semantics then, never a mapping that fails to load.
    with contextlib.suppress(Exception):
        return _compile(tree)

    def interpret(value: Any) -> Any:
        return parsed.search(value, options=_OPTIONS)

    return interpret


def _check_functions(node: dict[str, Any]) -> None:
    """Unknown function names and wrong argument counts fail at load, not on every payload."""
    if node.get("type") == "function_expression":
        name = node["value"]
        given = len(node.get("children", []))
        if name in REGISTRY:
            _func, minimum, maximum = REGISTRY[name]
        elif name in _FUNCTIONS.FUNCTION_TABLE:
            # JMESPath's built-ins: a signature of one entry per argument, the last variadic
            signature = _FUNCTIONS.FUNCTION_TABLE[name]["signature"]
            variadic = bool(signature) and bool(signature[-1].get("variadic"))
            minimum, maximum = len(signature), None if variadic else len(signature)
        else:
            raise JMESPathError(f"unknown function {name}()")
        if given < minimum or (maximum is not None and given > maximum):
            wanted = f"{minimum}" if minimum == maximum else f"at least {minimum}"
            if maximum is not None and maximum != minimum:
                wanted = f"{minimum} to {maximum}"
            raise JMESPathError(f"{name}() takes {wanted} argument(s), got {given}")
    for child in node.get("children", []):
        if isinstance(child, dict):
            _check_functions(child)


def truthy(value: Any) -> bool:
    """JMESPath truthiness, used for `when` conditions."""
    return _truthy(value)
