"""The mapping engine: a parsed provider payload in, canonical event drafts (or reasons) out.

Pure: no I/O, no clock, no store. A draft is a canonical event without what only the store can
add (`data.contact.id`, `data.raw_id`, the resolved contact's other identifiers); `pipeline.py`
completes and validates it. Rules run over `for_each` scopes; every item either becomes a draft,
is named by a quarantine rule, or is silently not an event (e.g. a change field no rule reads).
A payload that gives no draft at all is quarantined with the reasons collected here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jmespath.exceptions import JMESPathError, JMESPathTypeError

from bspgate.describe import kind
from bspgate.errors import MappingError
from bspgate.ids import event_id
from bspgate.mapping.codegen import FALLBACK
from bspgate.mapping.expression import truthy
from bspgate.mapping.functions import REGISTRY, NotAnIdentifier
from bspgate.mapping.loader import IterationPlan, MappingSpec, RuleSpec
from bspgate.mapping.shapes import SCALARS, SUBOBJECTS, sections
from bspgate.masking import mask_phones
from bspgate.times import is_rfc3339


@dataclass(slots=True)
class Draft:
    """One canonical event before identity resolution."""

    id: str
    type: str
    key: str
    time: str
    rule: str
    position: tuple[int, ...]
    data: dict[str, Any]


@dataclass(slots=True)
class MappingResult:
    """What a payload maps to: drafts in payload order, and reasons for what could not be mapped."""

    drafts: list[Draft] = field(default_factory=list)
    issues: list[str] = field(default_factory=list)
    # format drift: `binding.field` names the provider sent that no rule reads (never values)
    unmapped: list[str] = field(default_factory=list)


def _skeleton(event_type: str) -> dict[str, Any]:
    data: dict[str, Any] = {
        section: dict.fromkeys(keys) for section, keys in sections(event_type).items()
    }
    data.update(dict.fromkeys(SCALARS))
    return data


def _draft(
    rule: RuleSpec, channel_id: str, position: tuple[int, ...], scope: dict[str, Any]
) -> Draft | None:
    if rule.build is not None:
        built = rule.build(scope)
        if built is None:
            return None
        if built is not FALLBACK:
            key, time, data = built
            return _finish(rule, channel_id, position, key, time, data)
    return _interpret(rule, channel_id, position, scope)


def _interpret(
    rule: RuleSpec, channel_id: str, position: tuple[int, ...], scope: dict[str, Any]
) -> Draft | None:
    """The rule evaluated with its closures (no generated function, or it fell back)."""
    # `when` sees the for_each bindings only: it runs before `let`, so skipped items cost little.
    if rule.when is not None and not truthy(rule.when(scope)):
        return None
    for name, spec in rule.let:
        scope[name] = spec.run(scope)
    key = rule.key.run(scope)
    time = rule.time.run(scope)
    data = _skeleton(rule.event_type)
    for path, spec in rule.fields:
        value = spec.run(scope)
        if len(path) == 1:
            data[path[0]] = value
        elif len(path) == 2:
            data[path[0]][path[1]] = value
        elif value is not None:
            # a sub-object (media, location, …) exists only when one of its fields has a value
            parent = data[path[0]]
            child = parent.get(path[1])
            if child is None:
                child = parent[path[1]] = dict.fromkeys(SUBOBJECTS.get((path[0], path[1]), ()))
            child[path[2]] = value
    return _finish(rule, channel_id, position, key, time, data)


def _finish(
    rule: RuleSpec,
    channel_id: str,
    position: tuple[int, ...],
    key: Any,
    time: Any,
    data: dict[str, Any],
) -> Draft:
    if key is None or key == "":
        raise MappingError("the event key is empty", rule=rule.name)
    if not isinstance(time, str):
        raise MappingError("the event time is missing", rule=rule.name)
    if not is_rfc3339(time):  # described by its kind: a mapping's wrong path may give text
        raise MappingError(f"the event time is not an RFC 3339 time ({kind(time)})", rule=rule.name)
    key_text = str(key)
    # positional (id, type, key, time, rule, position, data): keywords cost a dict per draft
    event_type = rule.event_type
    return Draft(
        event_id(channel_id, event_type, key_text),
        event_type,
        key_text,
        time,
        rule.name,
        position,
        data,
    )


def _order(rule: RuleSpec, position: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    # Payload order: by index within one array, by rule order between sibling arrays
    # (messages[] before statuses[] of the same change), parents before their items.
    ranks = rule.ranks or (0,) * len(position)
    return tuple(zip(ranks, position, strict=True))


def _drift(
    watched: dict[str, frozenset[str]], rule: RuleSpec, scope: dict[str, Any], out: list[str]
) -> None:
    # a watched name is a for_each binding or a `let` name (Azure's `d: ev.data`), as the rule
    # bound it; `scope` is the rule's own scope after its draft was built
    for binding, known in watched.items():
        item = scope.get(binding)
        # the usual item has only known fields: one C-level superset test answers it
        if isinstance(item, dict) and not known.issuperset(item):
            for key in item:
                if key not in known:
                    # the name is the provider's, from a payload: a phone used as a key (a
                    # map keyed by number) is masked here, for the log, metric and drift event
                    name = f"{binding}.{mask_phones(str(key))}"
                    if name not in out:
                        out.append(name)


def jmespath_reason(exc: JMESPathError) -> str:
    """A JMESPath error as a quarantine reason: a type error by the types involved (its own
    message quotes the payload's value); arity and unknown-function errors name only the
    function."""
    if isinstance(exc, JMESPathTypeError):
        expected = " or ".join(str(t) for t in exc.expected_types)
        return f"{exc.function_name}() got a {exc.actual_type} value, expected {expected}"
    return str(exc)


def _locate(rule: RuleSpec, scope: dict[str, Any]) -> str | None:
    """The expression whose value was neither a phone nor a BSUID (only run on that error)."""
    scope = dict(scope)
    for name, spec in rule.let:
        try:
            scope[name] = spec.run(scope)
        except (MappingError, JMESPathError):
            scope[name] = None
    for _path, spec in rule.fields:
        if not spec.apply:
            continue
        func = REGISTRY[spec.apply][0]
        for text, getter in zip(spec.texts, spec.candidates, strict=False):
            try:
                value = func(getter(scope))
            except NotAnIdentifier:
                return text
            except (MappingError, JMESPathError):
                break
            if value is not None and value != "":
                break  # `first` stops here: later candidates were never evaluated
    return None


def _levels(plan: IterationPlan, root: dict[str, Any]) -> list[Any]:
    """The scopes of every for_each prefix (plan node) of one payload, the root scope last.

    Each node's items are walked once, however many rules iterate them; nodes come parents
    first, so one pass in order fills them all (every node is some rule's or quarantine's).
    """
    levels: list[Any] = [None] * len(plan.steps)
    levels.append([((), root)])  # node -1: the root scope
    node = 0
    for parent, name, getter in plan.steps:
        level = []
        for position, scope in levels[parent]:
            value = getter(scope)
            if value is None:
                continue
            index = 0  # a counter, not enumerate(): most arrays here hold one item
            for item in value if isinstance(value, list) else (value,):
                inner = scope.copy()
                inner[name] = item
                level.append(((*position, index), inner))
                index += 1  # noqa: SIM113 - enumerate() costs an object per array
        levels[node] = level
        node += 1
    return levels


def apply_mapping(
    spec: MappingSpec, payload: Any, channel: dict[str, Any], received_at: str | None = None
) -> MappingResult:
    """Map one parsed payload for one channel. Never raises for payload content.

    `received_at` (RFC 3339) is when the gateway received the payload; mappings see it as the
    name `received_at`. The engine has no clock, so the caller passes it; it is the event time
    only for providers that send none (Twilio), and `null` when the caller gives none.
    """
    result = MappingResult()
    plan = spec.plan
    root = {"payload": payload, "channel": channel, "received_at": received_at}
    levels = plan.walk(root) if plan.walk is not None else None
    if levels is None:  # no generated walk, or it met an unexpected type: the closures walk
        levels = _levels(plan, root)
    found: list[tuple[int, RuleSpec, tuple[int, ...], Draft]] = []
    channel_id = channel["id"]
    for rule_index, rule, node, watched, build, copy in plan.rule_steps:
        items = levels[node]
        if not items:
            continue
        for position, scope in items:
            try:
                # a copy when the rule binds `let` names: they belong to this rule only
                local = scope.copy() if copy else scope
                if build is not None:  # the generated function; _draft when it falls back
                    built = build(local)
                    if built is None:
                        continue
                    if built is FALLBACK:
                        draft = _interpret(rule, channel_id, position, local)
                    else:
                        draft = _finish(rule, channel_id, position, *built)
                else:
                    draft = _draft(rule, channel_id, position, local)
            except (MappingError, JMESPathError) as exc:
                if isinstance(exc, NotAnIdentifier) and exc.where is None:
                    exc = exc.at(_locate(rule, scope) or "a field")
                where = "/".join(str(p) for p in position)
                reason = exc.message if isinstance(exc, MappingError) else jmespath_reason(exc)
                result.issues.append(f"rule {rule.name} item {where or '-'}: {reason}")
                continue
            if draft is not None:
                found.append((rule_index, rule, position, draft))
                if watched:
                    _drift(watched, rule, local, result.unmapped)
    # quarantine: one generated function per for_each node answers every rule iterating it
    flagged: list[tuple[int, tuple[int, ...], int]] = []
    for node, checks in plan.quarantine_checks:
        for position, scope in levels[node]:
            mask = checks(scope)
            if mask:
                flagged.append((node, position, mask))
    if flagged:  # issues in rule order, then item order, as the rules are written
        for node, bit, name, reason in plan.quarantine_bits:
            for at, position, mask in flagged:
                if at == node and mask & bit:
                    where = "/".join(str(p) for p in position)
                    result.issues.append(f"{name} item {where or '-'}: {reason}")
    if len(found) == 1:  # the usual webhook: one event, in order and unique already
        result.drafts.append(found[0][3])
    elif found:
        found.sort(key=lambda item: (_order(item[1], item[2]), item[0]))
        seen: set[str] = set()
        for _rule_index, _rule, _position, draft in found:
            if draft.id not in seen:
                seen.add(draft.id)
                result.drafts.append(draft)
    if not result.drafts and not result.issues:
        result.issues.append("no rule of the mapping matched this payload")
    return result
