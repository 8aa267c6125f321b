"""Compiles mapping rules into straight-line Python functions (the hot path of mapping).

A rule's expressions are mostly plain paths (`msg.text.body`), `||`/`&&`/`!` chains, comparisons
with string literals, `contains([...], x)` and the named transforms (`e164`). Evaluated one
closure at a time they cost several times what the same work costs written out, so each rule
becomes one generated function: bindings in locals, each path read once into a local (a getter
per object), JMESPath truthiness inline, value maps as a dict lookup, the data dict built as a
literal, and a sub-object (`message.location`) skipped whole when the object it reads is null.
The for_each walk of a mapping (`compile_walk`) and the quarantine conditions of one item
(`compile_checks`) are generated the same way. This module lays out each function (the rule's
sections, the walk's levels, the checks' bit mask) and defines it (`_define`: the namespace the
generated code runs in, then `exec`); `codewriter.py` writes the expressions and fields in it.

Safety: nothing from a mapping file is put into the generated source as code. Names, keys and
literals go in as `repr()`; functions, value maps, constants and any expression the writer
does not translate (projections, filters, expression references) stay compiled closures, called
from the generated code. JMESPath built-ins (`contains`, `starts_with`, `to_string`, …) are
called through the interpreter's own function table, with only the usual argument types of
`contains` and `starts_with` answered inline, so their results and type errors are the
interpreter's. Semantics: the generated paths assume objects where objects are expected; a
payload with, say, a string where an object should be raises AttributeError inside the fast path,
and the engine then evaluates that item with the closures, which implement JMESPath exactly.
`tests/test_codegen.py` and `tests/test_codegen_builtins.py` check both give the same result on
every case and on arbitrary JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jmespath.exceptions import JMESPathError

from bspgate.errors import MappingError
from bspgate.mapping.codewriter import _Writer
from bspgate.mapping.expression import FUNCTIONS, truthy
from bspgate.mapping.shapes import SCALARS, SUBOBJECTS, sections

Built = tuple[Any, Any, dict[str, Any]]
Builder = Callable[[dict[str, Any]], Any]
FALLBACK = object()  # the fast path met an unexpected type: evaluate with the closures
# What the writer's lines call (bound by `_define`): `_E`, `_F`, `_M` and the helpers below.
_EMPTY: dict[str, Any] = {}
_FALSY: tuple[Any, ...] = (
    "",
    [],
    {},
)  # with None and False, JMESPath's false values (`in`: identity, then ==)
_MISSING = object()


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


def _call(name: str, args: list[Any]) -> Any:
    # JMESPath's own function table (with ours registered): what the interpreter calls
    return FUNCTIONS.call_function(name, args)


def _contains(subject: Any, search: Any) -> Any:
    if type(subject) is list:
        return search in subject
    return _call("contains", [subject, search])  # a string subject, or the type error


def _starts_with(subject: Any, prefix: Any) -> Any:
    if type(subject) is str and type(prefix) is str:
        return subject.startswith(prefix)
    return _call("starts_with", [subject, prefix])  # the interpreter's type error


def compile_condition(
    text: str, closure: Callable[[Any], Any], names: list[str]
) -> Callable[[dict[str, Any]], bool]:
    """A `when` as one generated function; an unexpected type falls back to the closure."""
    writer = _Writer({name: f"b{i}" for i, name in enumerate(dict.fromkeys(names))})
    condition = writer.expression(text, closure)
    writer.emit(f"return {writer.truth(condition)}")
    check: Callable[[dict[str, Any]], bool] = _define(
        "check", writer, "return truthy(SLOW(scope))", {"SLOW": closure}, f"condition {text!r}"
    )
    return check


def _held(closure: Callable[[Any], Any], scope: dict[str, Any]) -> bool:
    # a quarantine condition by its closure; one that cannot be evaluated holds (the item is
    # named, never silently dropped)
    try:
        return truthy(closure(scope))
    except (MappingError, JMESPathError):
        return True


def _mask(closures: tuple[Callable[[Any], Any] | None, ...], scope: dict[str, Any]) -> int:
    return sum(1 << bit for bit, c in enumerate(closures) if c is None or _held(c, scope))


def compile_checks(
    conditions: list[tuple[str, Callable[[Any], Any]] | None], names: list[str], label: str
) -> Callable[[dict[str, Any]], int]:
    """The quarantine conditions of one for_each item as one generated function.

    Answers a bit mask: bit i set when condition i holds (None: no condition, always holds).
    The conditions share the reads of the item (`change.field`, `change.value`), hoisted once;
    each is evaluated in its own `try`, with the semantics of evaluating it alone: an unexpected
    type falls back to its closure, an error (MappingError, JMESPathError) means it holds.
    """
    writer = _Writer({name: f"b{i}" for i, name in enumerate(dict.fromkeys(names))})
    tests = [None if c is None else writer.truth(writer.expression(c[0], c[1])) for c in conditions]
    writer.emit("m = 0")  # after the hoisted reads: one unexpected type there, and all fall back
    for bit, (test, condition) in enumerate(zip(tests, conditions, strict=True)):
        if test is None or condition is None:
            writer.emit(f"m |= {1 << bit}")
            continue
        writer.emit("try:")
        writer.emit(f"if {test}:", 3)
        writer.emit(f"m |= {1 << bit}", 4)
        writer.emit("except AttributeError:")
        writer.emit(f"if _held({writer.const(condition[1])}, scope):", 3)
        writer.emit(f"m |= {1 << bit}", 4)
        writer.emit("except _ERRORS:")
        writer.emit(f"m |= {1 << bit}", 3)
    writer.emit("return m")
    closures = tuple(None if c is None else c[1] for c in conditions)
    checks: Callable[[dict[str, Any]], int] = _define(
        "checks",
        writer,
        "return _mask(CLOSURES, scope)",
        {"_held": _held, "_mask": _mask, "CLOSURES": closures, "_ERRORS": _ERRORS},
        f"checks {label}",
    )
    return checks


_ERRORS = (MappingError, JMESPathError)


def _define(
    name: str, writer: _Writer, on_type_error: str, extra: dict[str, Any], label: str
) -> Any:
    """Compile the writer's lines as `def name(scope)`, AttributeError answered by a fallback."""
    source = (
        f"def {name}(scope):\n    try:\n"
        + "\n".join(writer.body())
        + f"\n    except AttributeError:\n        {on_type_error}\n"
    )
    namespace: dict[str, Any] = {
        "truthy": truthy,
        "_E": _EMPTY,
        "_G": _EMPTY.get,
        "_F": _FALSY,
        "_M": _MISSING,
        "_index": _index,
        "_equal": _equal,
        "_call": _call,
        "_contains": _contains,
        "_starts_with": _starts_with,
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
    if rule.when is not None:
        condition = writer.expression(rule.when_text, rule.when)
        writer.emit(f"if not {writer.truth(condition)}:")
        writer.emit("return None", 3)
    for name, spec in rule.let:
        if name in writer.bindings:
            writer.rebound()
        local = writer.bindings.setdefault(name, f"b{len(writer.bindings)}")
        writer.field(local, spec)
        writer.emit(f"scope[{name!r}] = {local}")
        writer.emit(f"g{local[1:]} = ({local} or _E).get")
    # sub-objects whose fields all qualify are written as groups, at their first field's place
    groups: dict[tuple[str, str], list[tuple[str, Any]]] = {}
    for index, (path, spec) in enumerate(rule.fields):
        if len(path) == 3:
            groups.setdefault((path[0], path[1]), []).append((f"v{index}", spec))
    for index, (path, spec) in enumerate(rule.fields):
        members = groups.get((path[0], path[1])) if len(path) == 3 else None
        if members is None:
            writer.field(f"v{index}", spec)
        elif members[0][0] == f"v{index}":
            if all(writer.groupable(member) for _target, member in members):
                writer.group(members)
            else:
                for target, member in members:
                    writer.field(target, member)
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


def compile_walk(
    steps: tuple[tuple[int, str, str, Callable[[Any], Any]], ...], label: str
) -> Callable[[dict[str, Any]], list[Any] | None]:
    """The for_each walk of a mapping (see loader.IterationPlan) as one generated function.

    `steps` are the plan's nodes, parents first: (parent node or -1, name, expression, closure).
    The function gives what `engine._levels` gives (per node its (position, scope) items, the
    root scope last), or None when a path met an unexpected type: the engine then walks with
    the closures.
    """
    writer = _Writer({})
    writer.emit("R = [((), scope)]")
    for node, (parent, name, text, getter) in enumerate(steps):
        writer.emit(f"L{node} = []")
        writer.emit(f"for P, scope in {'R' if parent < 0 else f'L{parent}'}:")
        writer.emit(f"v = {writer.expression(text, getter)}", 3)
        writer.emit("if v is None:", 3)
        writer.emit("continue", 4)
        writer.emit("i = 0", 3)
        writer.emit("for x in v if isinstance(v, list) else (v,):", 3)
        writer.emit("n = scope.copy()", 4)
        writer.emit(f"n[{name!r}] = x", 4)
        writer.emit(f"L{node}.append(((*P, i), n))", 4)
        writer.emit("i += 1", 4)
    writer.emit(f"return [{''.join(f'L{node}, ' for node in range(len(steps)))}R]")
    walk: Callable[[dict[str, Any]], list[Any] | None] = _define(
        "walk", writer, "return None", {}, f"walk {label}"
    )
    return walk
