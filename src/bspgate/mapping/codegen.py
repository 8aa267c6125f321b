"""Compiles a mapping rule into one straight-line Python function (the hot path of mapping).

A rule's canonical fields are mostly plain paths (`msg.text.body`), fallbacks between them and a
named transform (`e164`). Evaluated one closure at a time they cost ~80 µs per Cloud API message;
written out as one function (bindings in locals, each path an inline chain of `.get`, the data
dict built as a literal) the same rule costs a fraction of that. Nothing from a mapping file is
ever put into the generated source as code: names and keys go in as `repr()` string literals,
constants and anything that is not a plain path (functions of several arguments, projections,
value maps) stay compiled closures called from the generated code. The engine falls back to the
closures whenever a rule has a shape this compiler does not handle, with the same results.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jmespath

from bspgate.mapping.expression import truthy
from bspgate.mapping.functions import REGISTRY
from bspgate.mapping.shapes import SUBOBJECTS, sections

Built = tuple[Any, Any, dict[str, Any]]
Builder = Callable[[dict[str, Any]], Built | None]


def _plain_path(text: str) -> tuple[str, ...] | None:
    node: Any = jmespath.compile(text).parsed
    names: list[str] = []

    def walk(item: dict[str, Any]) -> bool:
        if item["type"] == "field":
            names.append(item["value"])
            return True
        if item["type"] == "subexpression":
            return all(walk(child) for child in item["children"])
        return False

    return tuple(names) if walk(node) else None


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {}
        self.heads: dict[str, str] = {}  # binding name -> local variable (b0, b1, …)

    def const(self, value: Any) -> str:
        name = f"K{len(self.constants)}"
        self.constants[name] = value
        return name

    def emit(self, line: str, indent: int = 1) -> None:
        self.lines.append("    " * indent + line)

    def path(self, target: str, names: tuple[str, ...]) -> None:
        head = self.heads.setdefault(names[0], f"b{len(self.heads)}")
        if len(names) == 1:
            self.emit(f"{target} = {head}")
            return
        chain = head + "".join(f".get({name!r})" for name in names[1:])
        self.emit("try:")
        self.emit(f"{target} = {chain}", 2)
        self.emit("except AttributeError:")
        self.emit(f"{target} = None", 2)

    def field(self, target: str, spec: Any) -> None:
        texts: tuple[str, ...] = getattr(spec, "texts", ())
        paths = [_plain_path(text) for text in texts] if texts else []
        inline = (
            not spec.is_constant
            and spec.value_map is None
            and paths
            and len(paths) == len(spec.candidates)
            and all(p is not None for p in paths)
        )
        if not inline:
            self.emit(f"{target} = {self.const(spec.run)}(scope)")
            return
        apply = self.const(REGISTRY[spec.apply][0]) if spec.apply else None
        for index, names in enumerate(paths):
            assert names is not None
            indent = 1
            if index:
                self.emit(f"if {target} is None or {target} == '':")
                indent = 2
            if indent == 2:
                # nested: write the path under the condition
                saved = self.lines
                self.lines = []
                self.path(target, names)
                if apply:
                    self.emit(f"{target} = {apply}({target})")
                self.lines = saved + ["    " + line for line in self.lines]
            else:
                self.path(target, names)
                if apply:
                    self.emit(f"{target} = {apply}({target})")
        default = "None" if spec.default is None else self.const(spec.default)
        self.emit(f"if {target} is None or {target} == '':")
        self.emit(f"{target} = {default}", 2)


def compile_rule(rule: Any) -> Builder | None:
    """The rule as one function `scope -> (key, time, data) | None`, or None when unsupported."""
    shape = sections(rule.event_type)
    assigned: dict[tuple[str, ...], str] = {}
    for index, (path, _spec) in enumerate(rule.fields):
        if path[0] not in shape or (len(path) == 2 and path[1] not in shape[path[0]]):
            return None
        if len(path) == 3 and (path[0], path[1]) not in SUBOBJECTS:
            return None
        if len(path) == 2 and (path[0], path[1]) in SUBOBJECTS:
            return None  # a whole sub-object from one expression: left to the closures
        assigned[path] = f"v{index}"
    body = _Writer()
    if rule.when is not None:
        body.emit(f"if not truthy({body.const(rule.when)}(scope)):")
        body.emit("return None", 2)
    for name, spec in rule.let:
        body.emit(f"scope[{name!r}] = {body.const(spec.run)}(scope)")
    fields = _Writer()
    fields.constants = body.constants  # one constant table
    for index, (_path, spec) in enumerate(rule.fields):
        fields.field(f"v{index}", spec)
    for head, local in fields.heads.items():
        body.emit(f"{local} = scope.get({head!r})")
    body.lines.extend(fields.lines)
    body.emit(f"key = {body.const(rule.key.run)}(scope)")
    body.emit(f"time = {body.const(rule.time.run)}(scope)")
    parts = []
    for section, keys in shape.items():
        items = []
        for key in keys:
            if (section, key) in SUBOBJECTS:
                sub_keys = SUBOBJECTS[(section, key)]
                names = [assigned.get((section, key, k)) for k in sub_keys]
                present = [n for n in names if n]
                if not present:
                    items.append(f"{key!r}: None")
                    continue
                var = f"s_{section}_{key}"
                literal = ", ".join(
                    f"{k!r}: {n or 'None'}" for k, n in zip(sub_keys, names, strict=True)
                )
                condition = " and ".join(f"{n} is None" for n in present)
                body.emit(f"{var} = None if {condition} else {{{literal}}}")
                items.append(f"{key!r}: {var}")
            else:
                items.append(f"{key!r}: {assigned.get((section, key), 'None')}")
        parts.append(f"{section!r}: {{{', '.join(items)}}}")
    body.emit(f"return key, time, {{{', '.join(parts)}}}")
    source = "def build(scope):\n" + "\n".join(body.lines) + "\n"
    namespace: dict[str, Any] = {"truthy": truthy, **body.constants}
    exec(compile(source, f"<mapping rule {rule.name}>", "exec"), namespace)  # noqa: S102
    built: Builder = namespace["build"]
    built.__doc__ = source  # the generated code, for whoever debugs a mapping
    return built
