"""Loads `mappings/<provider>/mapping.yaml` into frozen, compiled `MappingSpec`s.

Loading is where a contributor meets errors, so every error names the file, the line and the
path of the offending rule (`mappings/acme/mapping.yaml:42: inbound.rules[1].fields.message.id:
...`). A file is checked against `mapping.schema.json` first, then every expression is compiled
(JMESPath syntax, known function names and their arity, known value maps, names the rule
binds: `msg.text` in a rule that binds only `ev` is refused). `extends: other` starts from another
mapping's file and replaces what this one gives, key by key; rules merge by name (inheritance.py).
Which folder holds a provider's file, and how its path is shown, is folders.py's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jmespath
import jsonschema
from jmespath.exceptions import JMESPathError

from bspgate.describe import token
from bspgate.errors import MappingError, MappingLoadError
from bspgate.mapping.canonical_paths import unknown_field
from bspgate.mapping.codegen import (
    Builder,
    compile_checks,
    compile_condition,
    compile_rule,
    compile_walk,
)
from bspgate.mapping.expression import Getter, compile_expression
from bspgate.mapping.folders import (
    ExtendsError,
    display_path,
    extended_file,
    folder_of,
    holder,
    provider_names,
    roots_of,
)
from bspgate.mapping.folders import Roots as Roots  # re-exported: callers import it here
from bspgate.mapping.folders import shipped_mappings_dir as shipped_mappings_dir
from bspgate.mapping.functions import REGISTRY
from bspgate.mapping.inheritance import (
    Origins,
    merge_extended,
    named_errors,
    own_origins,
)
from bspgate.mapping.reads import collect_reads, root_names
from bspgate.mapping.route import Route, split_of
from bspgate.mapping.yamlfile import YamlFile, dotted

MAPPING_FILE = "mapping.yaml"


def mapping_root(root: Roots, name: str) -> Path | None:
    """The folder among `root` that provides `name` (the last one that has it), or None."""
    return folder_of(root, name, MAPPING_FILE)


def cases_dir(root: Roots, name: str) -> Path:
    """The golden cases folder of provider `name` (beside the mapping file that is its)."""
    return (mapping_root(root, name) or roots_of(root)[-1]) / name / "cases"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One compiled field: candidates tried in order, an optional function and value map.

    `run(scope)` is the field's value: the first candidate that is neither null nor "" (after
    `apply`), through the value map, else `default`. It is one closure specialised at load for
    the field's shape, because fields are evaluated tens of times per event on the hot path.
    """

    candidates: tuple[Getter, ...]
    apply: str | None = None
    value_map: dict[Any, Any] | None = None
    default: Any = None
    constant: Any = None
    is_constant: bool = False
    texts: tuple[str, ...] = field(default=(), compare=False)  # the expressions, as written
    run: Getter = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "run", _specialise(self))

    def map_value(self, value: Any) -> Any:
        """A non-null candidate value through the value map (`*`, then the default, or raises)."""
        return _map_value(self, value)


_MISSING = object()


def _map_value(spec: FieldSpec, value: Any) -> Any:
    assert spec.value_map is not None
    text = value if isinstance(value, str) else str(value)
    mapped = spec.value_map.get(text, _MISSING)
    if mapped is _MISSING:
        mapped = spec.value_map.get("*", _MISSING)
    if mapped is _MISSING:
        if spec.default is None:
            raise MappingError(f"value {token(text)} is not in the value map")
        return spec.default
    return mapped


def _specialise(spec: FieldSpec) -> Getter:
    if spec.is_constant:
        constant = spec.constant
        return lambda _scope: constant
    default = spec.default
    func = REGISTRY[spec.apply][0] if spec.apply else None
    if len(spec.candidates) == 1:
        (getter,) = spec.candidates
        if func is None:

            def first(scope: Any) -> Any:
                value = getter(scope)
                return default if value is None or value == "" else value
        else:

            def first(scope: Any) -> Any:
                value = func(getter(scope))
                return default if value is None or value == "" else value
    else:
        candidates = spec.candidates

        def first(scope: Any) -> Any:
            for candidate in candidates:
                value = candidate(scope)
                if func is not None:
                    value = func(value)
                if value is not None and value != "":
                    return value
            return default

    if spec.value_map is None:
        return first
    plain = replace(spec, default=None, value_map=None)

    def mapped(scope: Any) -> Any:
        value = plain.run(scope)
        return default if value is None else _map_value(spec, value)

    return mapped


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One rule: iterate `for_each`, keep items where `when` holds, fill canonical fields."""

    name: str
    path: str
    event_type: str
    for_each: tuple[tuple[str, Getter], ...]
    when: Getter | None
    let: tuple[tuple[str, FieldSpec], ...]
    key: FieldSpec
    time: FieldSpec
    fields: tuple[tuple[tuple[str, ...], FieldSpec], ...]
    # Per for_each step, the index of the first rule iterating the same array (same expressions
    # up to that step): items of one array sort by index, sibling arrays by the order of rules.
    ranks: tuple[int, ...] = ()
    # The for_each steps as written: rules iterating alike share one iteration per payload.
    iteration_key: tuple[tuple[str, str], ...] = ()
    when_text: str = ""  # `when` as written (for codegen)
    # The rule compiled to one function (codegen.py); None: the engine runs the closures.
    build: Builder | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class QuarantineSpec:
    """Items a provider sends that the contract cannot carry: stored, never forwarded."""

    name: str
    for_each: tuple[tuple[str, Getter], ...]
    when: Callable[[dict[str, Any]], bool] | None  # compile_condition's check: True or False
    reason: str
    iteration_key: tuple[tuple[str, str], ...] = ()
    when_text: str = ""  # `when` as written, and its closure (for codegen.compile_checks)
    condition: Getter | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class IterationPlan:
    """Every distinct for_each prefix of a mapping's rules as one tree, numbered at load.

    Rules (and quarantine rules) iterating alike share one walk per payload (`entry`, then
    `entry.changes`, for messages[] and statuses[] alike). Numbering the prefixes once keeps
    the engine from hashing and comparing the steps as tuples of strings on every payload.
    """

    steps: tuple[tuple[int, str, Getter], ...]  # node -> (parent node, -1 the root; name; getter)
    rules: tuple[int, ...]  # the node of each rule's items (-1: the root scope itself)
    quarantine: tuple[int, ...]  # the same for each quarantine rule
    # per rule, the drift-watched bindings its scope can hold (root names, for_each, let)
    watched: tuple[dict[str, frozenset[str]], ...]
    # what the engine reads per rule, gathered once: (index, rule, node, watched, build, copy)
    # where `copy` says the rule binds `let` names (its scope is copied, not shared)
    rule_steps: tuple[
        tuple[int, RuleSpec, int, dict[str, frozenset[str]], Builder | None, bool], ...
    ] = ()
    # the quarantine rules by node, in order of first appearance: (node, the generated
    # compile_checks function giving a bit mask of the rules that hold for an item)
    quarantine_checks: tuple[tuple[int, Callable[[dict[str, Any]], int]], ...] = ()
    # per quarantine rule, in order: (node, its bit in that node's mask, name, reason)
    quarantine_bits: tuple[tuple[int, int, str, str], ...] = ()
    # the walk as one generated function (codegen.compile_walk): the root scope -> the levels
    walk: Callable[[dict[str, Any]], list[Any] | None] | None = None


_ROOT_NAMES = ("payload", "channel", "received_at")


def _plan(
    rules: Sequence[RuleSpec],
    quarantine: Sequence[QuarantineSpec],
    drift: dict[str, frozenset[str]],
    label: str,
) -> IterationPlan:
    nodes: dict[tuple[tuple[str, str], ...], int] = {}
    steps: list[tuple[int, str, Getter]] = []
    texts: list[str] = []

    def node(key: tuple[tuple[str, str], ...], getters: tuple[tuple[str, Getter], ...]) -> int:
        parent = -1
        for depth in range(len(key)):
            prefix = key[: depth + 1]
            if prefix not in nodes:
                nodes[prefix] = len(steps)
                name, getter = getters[depth]
                steps.append((parent, name, getter))
                texts.append(key[depth][1])
            parent = nodes[prefix]
        return parent

    watched = []
    for rule in rules:
        bound = {*_ROOT_NAMES, *(name for name, _ in rule.for_each), *(n for n, _ in rule.let)}
        watched.append({b: known for b, known in drift.items() if b in bound})
    rule_nodes = tuple(node(rule.iteration_key, rule.for_each) for rule in rules)
    quarantine_nodes = tuple(node(q.iteration_key, q.for_each) for q in quarantine)
    by_node: dict[int, list[QuarantineSpec]] = {}
    bits = []  # per rule: its node, its bit among the rules of that node, name, reason
    for q, at in zip(quarantine, quarantine_nodes, strict=True):
        members = by_node.setdefault(at, [])
        bits.append((at, 1 << len(members), q.name, q.reason))
        members.append(q)
    return IterationPlan(
        rules=rule_nodes,
        quarantine=quarantine_nodes,
        steps=tuple(steps),
        watched=tuple(watched),
        rule_steps=tuple(
            (index, rule, rule_nodes[index], watched[index], rule.build, bool(rule.let))
            for index, rule in enumerate(rules)
        ),
        quarantine_checks=tuple(
            (node, _checks(members, f"{label} {node}")) for node, members in by_node.items()
        ),
        quarantine_bits=tuple(bits),
        walk=compile_walk(
            tuple(
                (parent, name, text, getter)
                for (parent, name, getter), text in zip(steps, texts, strict=True)
            ),
            label,
        ),
    )


def _checks(members: list[QuarantineSpec], label: str) -> Callable[[dict[str, Any]], int]:
    names = [*_ROOT_NAMES, *(name for name, _getter in members[0].for_each)]
    conditions = [
        (q.when_text, q.condition) if q.when_text and q.condition is not None else None
        for q in members
    ]
    return compile_checks(conditions, names, label)


@dataclass(frozen=True, slots=True)
class MappingSpec:
    """A provider mapping, compiled. `source` is the merged YAML (for outbound and verifiers)."""

    name: str
    title: str
    file: str
    parse: str
    verify: tuple[dict[str, Any], ...]
    handshakes: tuple[str, ...]
    rules: tuple[RuleSpec, ...]
    quarantine: tuple[QuarantineSpec, ...]
    source: dict[str, Any] = field(repr=False)
    # `route`: what names the channel a payload is for, and the channel setting it must equal
    route: Route | None = field(default=None, repr=False)
    # drift watch: binding -> every first-level field a rule reads or the mapping declares known
    drift: dict[str, frozenset[str]] = field(default_factory=dict, repr=False)
    plan: IterationPlan = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        plan = _plan(self.rules, self.quarantine, self.drift, self.name)
        object.__setattr__(self, "plan", plan)

    @property
    def outbound(self) -> dict[str, Any]:
        """The provider's send form (empty when the mapping has none)."""
        value = self.source.get("outbound")
        return value if isinstance(value, dict) else {}


@cache
def _meta_validator() -> jsonschema.Draft202012Validator:
    text = resources.files("bspgate.mapping").joinpath("mapping.schema.json").read_text()
    schema = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


class _Chain:
    """A mapping file and the files it extends: an error is reported where its path is written."""

    def __init__(self, contexts: list[YamlFile], origins: Origins) -> None:
        self.contexts = contexts
        self.origins = origins  # where each merged rule was written (inheritance.py)
        self.display = contexts[0].display

    def error(self, path: tuple[Any, ...], message: str) -> MappingLoadError:
        if path[:3] in self.origins:  # a rule: the file and index it was written at
            ctx, written = self.origins[path[:3]]
            return ctx.error((*written, *path[3:]), message)
        for ctx in self.contexts:
            if path in ctx.lines:
                return ctx.error(path, message)
        return self.contexts[0].error(path, message)


class _Compiler:
    """Turns the merged mapping dict into specs, reporting errors against the right file."""

    def __init__(self, ctx: _Chain, maps: dict[str, dict[str, Any]]) -> None:
        self.ctx = ctx
        self.maps = maps
        self.reads: set[tuple[str, str]] = set()  # (binding, first-level field) pairs read

    def expression(self, text: str, path: tuple[Any, ...], bound: Sequence[str]) -> Getter:
        """Compile `text`, evaluated where the names `bound` (and nothing else) are in scope."""
        try:
            getter = compile_expression(text)
        except JMESPathError as exc:
            raise self.ctx.error(path, f"invalid expression {text!r}: {exc}") from exc
        tree: dict[str, Any] = jmespath.compile(text).parsed  # type: ignore[assignment]
        # `null` is JMESPath's field `null`, never bound: null, as `|| null` means it (docs)
        unbound = sorted(root_names(tree) - {*bound, "null"})
        if unbound:
            raise self.ctx.error(
                path,
                f"{unbound[0]!r} is not a name bound here, so {text!r} is always null "
                f"(bound: {', '.join(dict.fromkeys(bound))})",
            )
        collect_reads(tree, self.reads)
        return getter

    def field(self, raw: Any, path: tuple[Any, ...], bound: Sequence[str]) -> FieldSpec:
        if isinstance(raw, str):
            return FieldSpec(candidates=(self.expression(raw, path, bound),), texts=(raw,))
        if "value" in raw:
            return FieldSpec(candidates=(), constant=raw["value"], is_constant=True)
        texts = raw["first"] if "first" in raw else [raw["from"]]
        key = "first" if "first" in raw else "from"
        candidates = tuple(
            self.expression(text, (*path, key, i) if key == "first" else (*path, key), bound)
            for i, text in enumerate(texts)
        )
        apply = raw.get("apply")
        if apply is not None:
            spec = REGISTRY.get(apply)
            if spec is None or spec[1] > 1:
                raise self.ctx.error((*path, "apply"), f"{apply!r} is not a one-argument function")
        if "default" in raw and raw["default"] is None:
            raise self.ctx.error(
                (*path, "default"),
                "`default: null` is no default (a value missing from the map then quarantines "
                "the event): remove it, or give the value to use",
            )
        value_map = raw.get("map")
        if isinstance(value_map, str):
            if value_map not in self.maps:
                known = ", ".join(sorted(self.maps)) or "none"
                raise self.ctx.error((*path, "map"), f"unknown map {value_map!r} (known: {known})")
            value_map = self.maps[value_map]
        return FieldSpec(candidates, apply, value_map, raw.get("default"), texts=tuple(texts))

    def for_each(self, steps: list[dict[str, str]], path: tuple[Any, ...]) -> tuple[Any, ...]:
        # each step sees the root names and the names of the steps before it
        out: list[tuple[str, Getter]] = []
        for index, step in enumerate(steps):
            ((name, text),) = step.items()
            bound = [*_ROOT_NAMES, *(earlier for earlier, _getter in out)]
            out.append((name, self.expression(text, (*path, index, name), bound)))
        return tuple(out)

    def rule(self, raw: dict[str, Any], path: tuple[Any, ...]) -> RuleSpec:
        when = raw.get("when")
        for_each = self.for_each(raw["for_each"], (*path, "for_each"))
        # `when` runs before `let` (engine._interpret); each `let` sees the ones before it
        walked = [*_ROOT_NAMES, *(name for name, _getter in for_each)]
        bound = walked
        let = []
        for name, spec in (raw.get("let") or {}).items():
            let.append((name, self.field(spec, (*path, "let", name), bound)))
            bound = [*bound, name]
        return RuleSpec(
            name=raw["name"],
            path=dotted(path),
            event_type=raw["type"],
            for_each=for_each,
            iteration_key=_iteration_key(raw["for_each"]),
            when=self.expression(when, (*path, "when"), walked) if when else None,
            when_text=when or "",
            let=tuple(let),
            key=self.field(raw["key"], (*path, "key"), bound),
            time=self.field(raw["time"], (*path, "time"), bound),
            fields=tuple(
                (tuple(name.split(".")), self.field(spec, (*path, "fields", name), bound))
                for name, spec in self.canonical(raw, path).items()
            ),
        )

    def canonical(self, raw: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
        """The rule's fields, each a path the canonical event of its type has."""
        for name in raw["fields"]:
            problem = unknown_field(raw["type"], name)
            if problem:
                raise self.ctx.error((*path, "fields", name), problem)
        return dict(raw["fields"])

    def quarantine(self, raw: dict[str, Any], path: tuple[Any, ...]) -> QuarantineSpec:
        when = raw.get("when")
        for_each = self.for_each(raw["for_each"], (*path, "for_each"))
        names = [*_ROOT_NAMES, *(name for name, _getter in for_each)]
        condition = self.expression(when, (*path, "when"), names) if when else None
        return QuarantineSpec(
            name=raw["name"],
            for_each=for_each,
            iteration_key=_iteration_key(raw["for_each"]),
            when=compile_condition(when, condition, names) if when and condition else None,
            reason=raw["reason"],
            when_text=when or "",
            condition=condition,
        )


def _schema_errors(ctx: YamlFile, data: Any) -> None:
    errors = sorted(_meta_validator().iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        assert error is not None
        raise ctx.error(tuple(error.absolute_path), error.message)


def _key_errors(ctx: YamlFile, data: Any, path: tuple[Any, ...]) -> None:
    """Every key of a mapping file is text: `5:` or `true:` is a YAML number or boolean, which no
    canonical field, binding or value map lookup can ever match."""
    if isinstance(data, dict):
        for key, value in data.items():
            if not isinstance(key, str):
                what = "a boolean" if isinstance(key, bool) else f"not text ({type(key).__name__})"
                raise ctx.error((*path, str(key)), f"the key {key!r} is {what}: quote it")
            _key_errors(ctx, value, (*path, key))
    elif isinstance(data, list):
        for index, item in enumerate(data):
            _key_errors(ctx, item, (*path, index))


def _read_merged(
    roots: tuple[Path, ...], name: str, at: int, seen: tuple[tuple[int, str], ...]
) -> tuple[list[YamlFile], dict[str, Any], Origins]:
    """The file `roots[at]/name/mapping.yaml` on top of what it extends (`seen`: the files
    below it in the chain, as (folder index, name))."""
    path = roots[at] / name / MAPPING_FILE
    ctx = YamlFile(path, display_path(path))
    data = ctx.data
    _key_errors(ctx, data, ())
    _schema_errors(ctx, data)
    if data["name"] != name:
        raise ctx.error(("name",), f"{data['name']!r} must equal the folder name {name!r}")
    parent = data.get("extends")
    named_errors(ctx, data, extends=parent is not None)
    if parent is None:
        return [ctx], data, own_origins(ctx, data)
    try:
        parent_at, chain = extended_file(roots, name, at, parent, MAPPING_FILE, seen)
    except ExtendsError as exc:
        raise ctx.error(("extends",), str(exc)) from None
    ancestors, base, inherited = _read_merged(roots, parent, parent_at, chain)
    merged, origins = merge_extended(ctx, data, base, inherited)
    merged["name"] = name
    return [ctx, *ancestors], merged, origins


def load_mapping(root: Roots, name: str) -> MappingSpec:
    """Load and compile `root/name/mapping.yaml` (with whatever it extends)."""
    roots = roots_of(root)
    at = holder(roots, name, MAPPING_FILE)
    if at is None:
        looked = ", ".join(display_path(folder / name) for folder in roots)
        raise MappingLoadError(looked, None, "", f"no {MAPPING_FILE}")
    contexts, data, origins = _read_merged(roots, name, at, ())
    ctx = _Chain(contexts, origins)
    inbound = data.get("inbound") or {}
    _check_verify(ctx, inbound.get("verify"))
    compiler = _Compiler(ctx, inbound.get("maps") or {})
    rule_names: set[str] = set()
    rules = []
    for index, raw in enumerate(inbound.get("rules") or []):
        if raw["name"] in rule_names:
            raise ctx.error(("inbound", "rules", index, "name"), f"duplicate rule {raw['name']!r}")
        rule_names.add(raw["name"])
        rules.append(compiler.rule(raw, ("inbound", "rules", index)))
    rules = _ranked(rules, [raw["for_each"] for raw in inbound.get("rules") or []])
    rules = [replace(rule, build=compile_rule(rule)) for rule in rules]
    quarantine = tuple(
        compiler.quarantine(raw, ("inbound", "quarantine", index))
        for index, raw in enumerate(inbound.get("quarantine") or [])
    )
    route = None
    if inbound.get("route"):
        read = compiler.expression(
            inbound["route"]["read"], ("inbound", "route", "read"), _ROOT_NAMES
        )
        route = Route(read, str(inbound["route"]["setting"]), split_of(inbound["route"]["read"]))
    drift = {
        binding: frozenset(known) | {f for b, f in compiler.reads if b == binding}
        for binding, known in (inbound.get("drift") or {}).items()
    }
    _check_drift(ctx, drift, rules)
    return MappingSpec(
        name=name,
        title=data.get("title", name),
        drift=drift,
        file=ctx.display,
        parse=inbound.get("parse", "json"),
        verify=tuple(inbound.get("verify") or ()),
        handshakes=tuple(inbound.get("handshakes") or ()),
        rules=tuple(rules),
        quarantine=quarantine,
        source=data,
        route=route,
    )


def _check_drift(ctx: _Chain, drift: dict[str, frozenset[str]], rules: list[RuleSpec]) -> None:
    """Each drift binding the file declares must be a name some rule binds: one no rule binds
    (a typo, `e` for `ev`) would watch nothing, and format drift would go uncounted without a
    word. An inherited binding whose rules the file drops is the parent's, checked with it."""
    bound = dict.fromkeys(
        name
        for rule in rules
        for name in (*_ROOT_NAMES, *(n for n, _ in rule.for_each), *(n for n, _ in rule.let))
    )
    own = ctx.contexts[0].lines
    for binding in drift:
        if binding not in bound and ("inbound", "drift", binding) in own:
            raise ctx.error(
                ("inbound", "drift", binding),
                f"no rule binds {binding!r}, so its drift is never watched "
                f"(bound: {', '.join(bound) or 'none'})",
            )


def _check_verify(ctx: _Chain, entries: Any) -> None:
    """Every verify entry must be a scheme that works as declared (the first error raises)."""
    from bspgate.ingress.verify import declaration_errors  # ingress depends on mapping, not back

    for path, message in declaration_errors(entries):
        raise ctx.error(("inbound", "verify", *path), message)


def _iteration_key(steps: list[dict[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple(next(iter(step.items())) for step in steps)


def _ranked(rules: list[RuleSpec], steps: list[list[dict[str, str]]]) -> list[RuleSpec]:
    first: dict[tuple[str, ...], int] = {}
    out = []
    for index, (rule, for_each) in enumerate(zip(rules, steps, strict=True)):
        texts = tuple(next(iter(step.values())) for step in for_each)
        ranks = tuple(first.setdefault(texts[: depth + 1], index) for depth in range(len(texts)))
        out.append(replace(rule, ranks=ranks))
    return out


def mapping_names(root: Roots) -> list[str]:
    """The providers under `root`: folders holding a mapping file, sorted."""
    return provider_names(root, MAPPING_FILE)


def load_mappings(root: Roots) -> dict[str, MappingSpec]:
    """Every mapping under `root`, compiled; the first broken file raises."""
    return {name: load_mapping(root, name) for name in mapping_names(root)}


def iter_case_files(root: Roots, name: str) -> Iterator[Path]:
    """The golden case files of one provider, sorted by name (`_*.yaml` hold shared data)."""
    cases = cases_dir(root, name)
    if cases.is_dir():
        yield from sorted(p for p in cases.glob("*.yaml") if not p.name.startswith("_"))
