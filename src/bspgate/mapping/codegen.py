"""Compiles a mapping rule into one straight-line Python function (the hot path of mapping).

A rule's expressions are mostly plain paths (`msg.text.body`), `||`/`&&` chains, comparisons with
string literals and the named transforms (`e164`). Evaluated one closure at a time they cost
several times what the same work costs written out, so each rule becomes one generated function:
bindings in locals, each path an inline chain of `.get`, the data dict built as a literal.

Safety: nothing from a mapping file is put into the generated source as code. Names, keys and
literals go in as `repr()`; functions, value maps, constants and any expression this compiler
does not translate (projections, filters, JMESPath built-ins) stay compiled closures, called from
the generated code. Semantics: the generated paths assume objects where objects are expected; a
payload with, say, a string where an object should be raises AttributeError inside the fast path,
and the engine then evaluates that item with the closures, which implement JMESPath exactly.
`tests/test_codegen.py` checks both give the same result on every case and on arbitrary JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jmespath

from bspgate.mapping.expression import truthy
from bspgate.mapping.functions import REGISTRY
from bspgate.mapping.shapes import SCALARS, SUBOBJECTS, sections

Built = tuple[Any, Any, dict[str, Any]]
Builder = Callable[[dict[str, Any]], Any]
FALLBACK = object()  # the fast path met an unexpected type: evaluate with the closures
_EMPTY: dict[str, Any] = {}
_SCALARS = (str, int, float, bool, type(None))


def _index(value: Any, position: int) -> Any:
    if type(value) is list:
        try:
            return value[position]
        except IndexError:
            return None
    return None


def _equal(left: Any, right: Any) -> bool:
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    return bool(left == right)


class _Writer:
    def __init__(self, bindings: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {}
        self.bindings = bindings  # scope name -> local variable
        self._temps = 0
        self.booleans: set[str] = set()  # generated expressions that are always True or False

    def const(self, value: Any) -> str:
        name = f"K{len(self.constants)}"
        self.constants[name] = value
        return name

    def temp(self) -> str:
        self._temps += 1
        return f"t{self._temps}"

    def emit(self, line: str, indent: int = 2) -> None:
        self.lines.append("    " * indent + line)

    # -- expressions ------------------------------------------------------------------------
    def source(self, node: dict[str, Any], current: str | None) -> str | None:
        """Python source for a JMESPath node, or None when it is left to the closures."""
        kind = node["type"]
        children = node.get("children", [])
        if kind == "field":
            name = node["value"]
            if current is None:  # a name of the scope: a binding, or nothing
                return self.bindings.get(name, f"scope.get({name!r})")
            return f"({current} or _E).get({name!r})"
        if kind == "subexpression":
            out = current
            for child in children:
                out = self.source(child, out)
                if out is None:
                    return None
            return out
        if kind == "index_expression" and children[1]["type"] == "index":
            left = self.source(children[0], current)
            return None if left is None else f"_index({left}, {int(children[1]['value'])})"
        if kind == "literal":
            value = node["value"]
            return repr(value) if isinstance(value, _SCALARS) else self.const(value)
        if kind == "current":
            return current if current is not None else "scope"
        if kind in ("or_expression", "and_expression"):
            left, right = (self.source(child, current) for child in children)
            if left is None or right is None:
                return None
            if left in self.booleans and right in self.booleans:
                # JMESPath's &&/|| on two booleans are Python's and/or
                code = f"({left} {'or' if kind == 'or_expression' else 'and'} {right})"
                self.booleans.add(code)
                return code
            held = self.temp()
            if kind == "or_expression":
                return f"({held} if truthy({held} := {left}) else {right})"
            return f"({right} if truthy({held} := {left}) else {held})"
        if kind == "not_expression":
            inner = self.source(children[0], current)
            if inner is None:
                return None
            code = f"(not {inner})" if inner in self.booleans else f"(not truthy({inner}))"
            self.booleans.add(code)
            return code
        if kind == "comparator" and node["value"] in ("eq", "ne"):
            left, right = (self.source(child, current) for child in children)
            if left is None or right is None:
                return None
            literal = any(c["type"] == "literal" and isinstance(c["value"], str) for c in children)
            test = f"({left} == {right})" if literal else f"_equal({left}, {right})"
            code = test if node["value"] == "eq" else f"(not {test})"
            self.booleans.add(code)
            return code
        if kind == "function_expression" and node["value"] in REGISTRY:
            func, minimum, maximum = REGISTRY[node["value"]]
            if len(children) < minimum or (maximum is not None and len(children) > maximum):
                return None
            args = [self.source(child, current) for child in children]
            if any(arg is None for arg in args):
                return None
            return f"{self.const(func)}({', '.join(args)})"  # type: ignore[arg-type]
        return None

    def expression(self, text: str, closure: Callable[[Any], Any]) -> str:
        node: Any = jmespath.compile(text).parsed
        code = self.source(node, None)
        return code if code is not None else f"{self.const(closure)}(scope)"

    # -- fields -----------------------------------------------------------------------------
    def field(self, target: str, spec: Any) -> None:
        if spec.is_constant:
            self.emit(f"{target} = {self.const(spec.constant)}")
            return
        texts: tuple[str, ...] = spec.texts
        if spec.value_map is not None or len(texts) != len(spec.candidates) or not texts:
            self.emit(f"{target} = {self.const(spec.run)}(scope)")
            return
        apply = self.const(REGISTRY[spec.apply][0]) if spec.apply else None
        for index, (text, closure) in enumerate(zip(texts, spec.candidates, strict=True)):
            code = self.expression(text, closure)
            if apply:
                code = f"{apply}({code})"
            if index == 0:
                self.emit(f"{target} = {code}")
            else:
                self.emit(f"if {target} is None or {target} == '':")
                self.emit(f"{target} = {code}", 3)
        default = "None" if spec.default is None else self.const(spec.default)
        self.emit(f"if {target} is None or {target} == '':")
        self.emit(f"{target} = {default}", 3)


def compile_condition(
    text: str, closure: Callable[[Any], Any], names: list[str]
) -> Callable[[dict[str, Any]], bool]:
    """A `when` as one generated function; an unexpected type falls back to the closure."""
    writer = _Writer({name: f"b{i}" for i, name in enumerate(dict.fromkeys(names))})
    for name, local in writer.bindings.items():
        writer.emit(f"{local} = scope.get({name!r})")
    condition = writer.expression(text, closure)
    test = condition if condition in writer.booleans else f"truthy({condition})"
    writer.emit(f"return {test}")
    check: Callable[[dict[str, Any]], bool] = _define(
        "check", writer, "return truthy(SLOW(scope))", {"SLOW": closure}, f"condition {text!r}"
    )
    return check


def _define(
    name: str, writer: _Writer, on_type_error: str, extra: dict[str, Any], label: str
) -> Any:
    """Compile the writer's lines as `def name(scope)`, AttributeError answered by a fallback."""
    source = (
        f"def {name}(scope):\n    try:\n"
        + "\n".join(writer.lines)
        + f"\n    except AttributeError:\n        {on_type_error}\n"
    )
    namespace: dict[str, Any] = {
        "truthy": truthy,
        "_E": _EMPTY,
        "_index": _index,
        "_equal": _equal,
        **extra,
        **writer.constants,
    }
    exec(compile(source, f"<mapping {label}>", "exec"), namespace)  # noqa: S102
    defined = namespace[name]
    defined.__doc__ = source  # the generated code, for whoever debugs a mapping
    return defined


def compile_rule(rule: Any) -> Builder | None:
    """The rule as one function `scope -> (key, time, data) | None | FALLBACK`.

    Answers None (the engine keeps the closures) for a rule shape it does not handle.
    """
    shape = sections(rule.event_type)
    assigned: dict[tuple[str, ...], str] = {}
    for index, (path, _spec) in enumerate(rule.fields):
        if len(path) == 1:
            if path[0] not in SCALARS:
                return None
            assigned[path] = f"v{index}"
            continue
        if path[0] not in shape or (len(path) == 2 and path[1] not in shape[path[0]]):
            return None
        if len(path) == 3 and (path[0], path[1]) not in SUBOBJECTS:
            return None
        if len(path) == 2 and (path[0], path[1]) in SUBOBJECTS:
            return None  # a whole sub-object from one expression: left to the closures
        assigned[path] = f"v{index}"
    names = ["payload", "channel", "received_at", *(name for name, _getter in rule.for_each)]
    bindings = {name: f"b{i}" for i, name in enumerate(dict.fromkeys(names))}
    writer = _Writer(bindings)
    for name, local in bindings.items():
        writer.emit(f"{local} = scope.get({name!r})")
    if rule.when is not None:
        condition = writer.expression(rule.when_text, rule.when)
        test = condition if condition in writer.booleans else f"truthy({condition})"
        writer.emit(f"if not {test}:")
        writer.emit("return None", 3)
    for name, spec in rule.let:
        local = writer.bindings.setdefault(name, f"b{len(writer.bindings)}")
        writer.field(local, spec)
        writer.emit(f"scope[{name!r}] = {local}")
    for index, (_path, spec) in enumerate(rule.fields):
        writer.field(f"v{index}", spec)
    writer.field("key", rule.key)
    writer.field("time", rule.time)
    parts = []
    for section, keys in shape.items():
        items = []
        for key in keys:
            if (section, key) in SUBOBJECTS:
                sub_keys = SUBOBJECTS[(section, key)]
                values = [assigned.get((section, key, k)) for k in sub_keys]
                present = [v for v in values if v]
                if not present:
                    items.append(f"{key!r}: None")
                    continue
                var = f"s_{section}_{key}"
                pairs = zip(sub_keys, values, strict=True)
                literal = ", ".join(f"{k!r}: {v or 'None'}" for k, v in pairs)
                condition = " and ".join(f"{v} is None" for v in present)
                writer.emit(f"{var} = None if {condition} else {{{literal}}}")
                items.append(f"{key!r}: {var}")
            else:
                items.append(f"{key!r}: {assigned.get((section, key), 'None')}")
        parts.append(f"{section!r}: {{{', '.join(items)}}}")
    for scalar in SCALARS:
        parts.append(f"{scalar!r}: {assigned.get((scalar,), 'None')}")
    writer.emit(f"return key, time, {{{', '.join(parts)}}}")
    built: Builder = _define(
        "build", writer, "return FALLBACK", {"FALLBACK": FALLBACK}, f"rule {rule.name}"
    )
    return built
