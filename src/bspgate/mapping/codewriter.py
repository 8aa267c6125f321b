"""Writes a mapping's expressions and fields as lines of Python source (for `codegen.py`).

`_Writer` translates a JMESPath expression, node by node, into one Python expression: a path
becomes `.get` reads, each read once into a local (a getter per object); `||`, `&&` and `!`
become inline JMESPath truthiness tests, `==`/`!=` Python comparisons; the named transforms
(`e164`) become calls of the function, the built-ins calls of the interpreter's function table
(`contains` and `starts_with` inline for their usual argument types). A field (`FieldSpec`)
becomes the statements that assign it: its candidates in order, then its value map or default;
the fields of one sub-object (`message.location`) become a group skipped whole when the object
they read is null. A node it does not translate (projections, filters, expression references)
answers None, and the expression stays its compiled closure, called from the generated code.

Writes source only: it runs nothing. Names, keys and literals go in as `repr()`; any other
value (a function, a value map, a non-scalar literal, a closure) is a constant `K<n>` the
writer keeps. The other names the lines use (`_E`, `_F`, `_M`, `_index`, `_equal`, `_call`,
`_contains`, `_starts_with`) are bound by `codegen._define`, which turns the lines into a
function.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jmespath

from bspgate.mapping.expression import _field_names
from bspgate.mapping.functions import REGISTRY

_NAME = re.compile(r"^[A-Za-z_][A-Za-z_0-9]*$")  # generated code that is just a local's name
_SCALARS = (str, int, float, bool, type(None))


class _Writer:
    def __init__(self, bindings: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {}
        self.bindings = bindings  # scope name -> local variable
        self.loaded = dict(bindings)  # read from the scope on entry (when the body uses them)
        # Paths read off a binding (`msg.system`, then `msg.system.type`) are hoisted into locals,
        # each computed once: `paths` maps (getter, key) to the local, `pending` holds the
        # assignments, written before the statement that first needs them. A hoisted read has no
        # effect, so reading it before a short-circuit would have skipped it changes nothing but
        # the cost; the one error it can meet (AttributeError: a path through a string, list or
        # number) sends the item to the closures, which implement JMESPath exactly.
        self.paths: dict[tuple[str, str], str] = {}
        self.pending: list[str] = []
        self._reads = 0
        self.shift = 0  # extra indentation of emitted lines (inside a `group`'s `else:`)
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
        margin = "    " * (2 + self.shift)
        self.lines.extend(margin + hoisted for hoisted in self.pending)
        self.pending.clear()
        self.lines.append("    " * (indent + self.shift) + line)

    def group(self, fields: list[tuple[str, Any]]) -> None:
        """Fields of one sub-object (`message.location.*`), skipped when their roots are null.

        Applies when every candidate is a plain path `binding.a…` (no function, map or
        default): with `binding.a` null (or the binding, for `binding.a`), every candidate is
        null, so every field is. The usual payload lacks most sub-objects (a text message has
        no location, media, reply, reaction), and this skips all of their reads.
        """
        roots: dict[str, None] = {}
        for _target, spec in fields:
            for text in spec.texts:
                names = _field_names(jmespath.compile(text).parsed)  # type: ignore[arg-type]
                binding = self.bindings.get(names[0]) if names else None
                if binding is None or len(names) < 2:  # type: ignore[arg-type]
                    roots.clear()
                    break
                if len(names) == 2:  # type: ignore[arg-type]
                    roots[binding] = None
                else:
                    roots[self.read(f"g{binding[1:]}", names[1])] = None  # type: ignore[index]
            else:
                continue
            break
        if not roots:
            for target, spec in fields:
                self.field(target, spec)
            return
        self.emit(f"if {' and '.join(f'{root} is None' for root in roots)}:")
        self.emit(" = ".join(target for target, _spec in fields) + " = None", 3)
        self.emit("else:")
        known = dict(self.paths)
        self.shift += 1
        for target, spec in fields:
            self.field(target, spec)
        self.shift -= 1
        self.paths = known  # paths read inside the `else:` are not assigned on the other branch

    def groupable(self, spec: Any) -> bool:
        """A field `group` may skip: plain candidates, nothing applied, mapped or defaulted."""
        return (
            not spec.is_constant
            and spec.value_map is None
            and spec.apply is None
            and spec.default is None
            and bool(spec.texts)
            and len(spec.texts) == len(spec.candidates)
        )

    def getter(self, current: str) -> str | None:
        """The getter of a binding or hoisted path local (None: `current` is an expression)."""
        if current in self.bindings.values():
            return f"g{current[1:]}"
        if current in self.paths.values():
            return f"g{current}"
        return None

    def read(self, getter: str, name: str) -> str:
        """A local holding `getter(name)`, assigned before the statement being written."""
        local = self.paths.get((getter, name))
        if local is None:
            self._reads += 1  # never reused: a group forgets its paths, not their names
            local = self.paths[(getter, name)] = f"p{self._reads}"
            self.pending.append(f"{local} = {getter}({name!r})")
            self.pending.append(f"g{local} = ({local} or _E).get")
        return local

    def rebound(self) -> None:
        """A `let` reassigned a binding: paths hoisted from its old value are stale."""
        self.paths.clear()

    def hold(self, code: str) -> tuple[str, str]:
        """(a name for `code`'s value, what binds it): a local is its own name."""
        if _NAME.match(code):
            return code, code
        held = self.temp()
        return held, f"({held} := {code})"

    def truth(self, code: str) -> str:
        """`code`'s JMESPath truthiness inline (a call of `truthy` costs more than the test)."""
        if code in self.booleans:
            return code
        held, bind = self.hold(code)
        return f"({bind} is not None and {held} is not False and {held} not in _F)"

    def falsity(self, code: str) -> str:
        """`not truthy(code)`, inline."""
        if code in self.booleans:
            return f"(not {code})"
        held, bind = self.hold(code)
        return f"({bind} is None or {held} is False or {held} in _F)"

    def body(self) -> list[str]:
        """The lines, after the entry reads of the bindings (and getters) the lines use."""
        # drop the getters of hoisted paths no read uses (most paths are leaves)
        lines = [
            line
            for line in self.lines
            if not (found := re.match(r"\s*(g[pb]?\d+) = ", line))
            or re.search(rf"\b{found.group(1)}\(", "\n".join(self.lines)) is not None
        ]
        text = "\n".join(lines)
        prelude = []
        for name, local in self.loaded.items():
            getter = "g" + local[1:]
            uses_getter = re.search(rf"\b{getter}\b", text) is not None
            if uses_getter or re.search(rf"\b{local}\b", text):
                prelude.append(f"        {local} = scope.get({name!r})")
            if uses_getter:
                prelude.append(f"        {getter} = ({local} or _E).get")
        return prelude + lines

    # -- expressions ------------------------------------------------------------------------
    def source(self, node: dict[str, Any], current: str | None) -> str | None:
        """Python source for a JMESPath node, or None when it is left to the closures."""
        kind = node["type"]
        children = node.get("children", [])
        if kind == "field":
            name = node["value"]
            if current is None:  # a name of the scope: a binding, or nothing
                return self.bindings.get(name, f"scope.get({name!r})")
            getter = self.getter(current)
            if getter is not None:
                # a binding's (or a hoisted path's) getter, made once per call: `.get` of the
                # object, or of `_E` for null, "", 0, …; a truthy non-object has no `.get`, and
                # its AttributeError hands the item to the closures
                return self.read(getter, name)
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
            if left in self.booleans:  # True or False needs no truthiness test
                if kind == "or_expression":
                    return f"(True if {left} else {right})"
                return f"({right} if {left} else False)"
            held, bind = self.hold(left)
            test = f"({bind} is not None and {held} is not False and {held} not in _F)"
            if kind == "or_expression":
                return f"({held} if {test} else {right})"
            return f"({right} if {test} else {held})"
        if kind == "not_expression":
            inner = self.source(children[0], current)
            if inner is None:
                return None
            code = self.falsity(inner)
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
        if kind == "function_expression":
            return self.builtin(node["value"], children, current)
        if kind in ("multi_select_list", "multi_select_dict"):
            return self.multi_select(kind, children, current)
        return None

    def builtin(self, name: str, children: list[dict[str, Any]], current: str | None) -> str | None:
        """A JMESPath built-in function (`contains`, `starts_with`, …), as the interpreter runs it.

        The interpreter evaluates the arguments in order, then calls `call_function` of its
        function table (type checks, arity, then the function). The generated code does the same:
        the usual argument types of `contains` and `starts_with` are answered inline, anything
        else goes to that very `call_function` (`_call`), so results and errors are the same.
        """
        if name == "contains" and len(children) == 2:
            subject, search = children
            found = self.source(search, current)
            if found is None:
                return None
            items = subject["children"] if subject["type"] == "multi_select_list" else None
            if current is None and items is not None and all(i["type"] == "literal" for i in items):
                # `contains(['a', 'b'], x)`: the list is built from literals off the scope (never
                # null), so it is a constant; a tuple's `in` is a list's (identity, then ==).
                code = f"({found} in {self.const(tuple(i['value'] for i in items))})"
            else:
                within = self.source(subject, current)
                if within is None:
                    return None
                code = f"_contains({within}, {found})"
            self.booleans.add(code)  # `in` answers True or False; a type error raises
            return code
        args = [self.source(child, current) for child in children]
        if any(arg is None for arg in args):
            return None  # an expression reference (`sort_by(a, &b)`): left to the interpreter
        if name == "starts_with" and len(args) == 2:
            code = f"_starts_with({args[0]}, {args[1]})"
            self.booleans.add(code)
            return code
        return f"_call({name!r}, [{', '.join(args)}])"  # type: ignore[arg-type]

    def multi_select(
        self, kind: str, children: list[dict[str, Any]], current: str | None
    ) -> str | None:
        """`[a, b]` and `{k: a}`: a new list/dict of the items evaluated on the current value.

        JMESPath gives null for a multi-select on null; the scope itself is a dict, never null.
        """
        held = None if current is None else self.temp()
        items = []
        for child in children:
            if kind == "multi_select_dict":  # key_val_pair: the key, one child expression
                code = self.source(child["children"][0], held)
                items.append(None if code is None else f"{child['value']!r}: {code}")
            else:
                items.append(self.source(child, held))
        if any(item is None for item in items):
            return None
        joined = ", ".join(items)  # type: ignore[arg-type]
        built = f"[{joined}]" if kind == "multi_select_list" else f"{{{joined}}}"
        if held is None:
            return built
        return f"(None if ({held} := {current}) is None else {built})"

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
        if len(texts) != len(spec.candidates) or not texts:
            self.emit(f"{target} = {self.const(spec.run)}(scope)")
            return
        if spec.value_map is not None:
            # As FieldSpec.run: the first non-empty candidate (no default), then the map. A
            # string found in the map is answered here; the rest (numbers read as text, `*`,
            # the default, a miss) by the spec's own `map_value`.
            self.candidates(target, spec, "None")
            found = self.temp()
            default = "None" if spec.default is None else self.const(spec.default)
            self.emit(f"if {target} is None:")
            self.emit(f"{target} = {default}", 3)
            self.emit(
                f"elif type({target}) is str and "
                f"({found} := {self.const(spec.value_map)}.get({target}, _M)) is not _M:"
            )
            self.emit(f"{target} = {found}", 3)
            self.emit("else:")
            self.emit(f"{target} = {self.const(spec.map_value)}({target})", 3)
            return
        default = "None" if spec.default is None else self.const(spec.default)
        self.candidates(target, spec, default)

    def candidates(self, target: str, spec: Any, default: str) -> None:
        """`target` = the first candidate neither null nor "" (after `apply`), else `default`."""
        texts: tuple[str, ...] = spec.texts
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
        self.emit(f"if {target} is None or {target} == '':")
        self.emit(f"{target} = {default}", 3)
