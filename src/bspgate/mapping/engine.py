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

from jmespath.exceptions import JMESPathError

from bspgate.errors import MappingError
from bspgate.ids import event_id
from bspgate.mapping.codegen import FALLBACK
from bspgate.mapping.expression import truthy
from bspgate.mapping.functions import REGISTRY, NotAnIdentifier
from bspgate.mapping.loader import MappingSpec, RuleSpec
from bspgate.mapping.shapes import SCALARS, SUBOBJECTS, sections


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
    key_text = str(key)
    return Draft(
        id=event_id(channel_id, rule.event_type, key_text),
        type=rule.event_type,
        key=key_text,
        time=time,
        rule=rule.name,
        position=position,
        data=data,
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
        if isinstance(item, dict):
            for key in item:
                if key not in known:
                    name = f"{binding}.{key}"
                    if name not in out:
                        out.append(name)


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


def _holds(condition: Any, scope: dict[str, Any]) -> bool:
    if condition is None:
        return True
    try:
        return truthy(condition(scope))
    except (MappingError, JMESPathError):
        return True


def apply_mapping(
    spec: MappingSpec, payload: Any, channel: dict[str, Any], received_at: str | None = None
) -> MappingResult:
    """Map one parsed payload for one channel. Never raises for payload content.

    `received_at` (RFC 3339) is when the gateway received the payload; mappings see it as the
    name `received_at`. The engine has no clock, so the caller passes it; it is the event time
    only for providers that send none (Twilio), and `null` when the caller gives none.
    """
    result = MappingResult()
    root = {"payload": payload, "channel": channel, "received_at": received_at}
    ordered: list[tuple[tuple[tuple[int, int], ...], int, Draft]] = []
    iterations: dict[tuple[tuple[str, str], ...], list[tuple[tuple[int, ...], dict[str, Any]]]] = {}

    def scopes(
        steps: tuple[tuple[str, Any], ...], key: tuple[tuple[str, str], ...]
    ) -> list[tuple[tuple[int, ...], dict[str, Any]]]:
        # rules (and quarantine rules) walk each for_each prefix once: `entry`, then
        # `entry.changes`, are shared by the rules that go on to messages[] or statuses[]
        if key in iterations:
            return iterations[key]
        if not key:
            return [((), root)]
        parents = scopes(steps[:-1], key[:-1])
        name, getter = steps[-1]
        out: list[tuple[tuple[int, ...], dict[str, Any]]] = []
        for position, scope in parents:
            value = getter(scope)
            items = value if isinstance(value, list) else ([] if value is None else [value])
            for index, item in enumerate(items):
                inner = dict(scope)
                inner[name] = item
                out.append(((*position, index), inner))
        iterations[key] = out
        return out

    for rule_index, rule in enumerate(spec.rules):
        for position, scope in scopes(rule.for_each, rule.iteration_key):
            try:
                # a copy: `let` bindings belong to this rule only
                local = dict(scope)
                draft = _draft(rule, channel["id"], position, local)
            except (MappingError, JMESPathError) as exc:
                if isinstance(exc, NotAnIdentifier) and exc.where is None:
                    exc = exc.at(_locate(rule, scope) or "a field")
                where = "/".join(str(p) for p in position)
                reason = exc.message if isinstance(exc, MappingError) else str(exc)
                result.issues.append(f"rule {rule.name} item {where or '-'}: {reason}")
                continue
            if draft is not None:
                ordered.append((_order(rule, position), rule_index, draft))
                if spec.drift:
                    _drift(spec.drift, rule, local, result.unmapped)
    for quarantine in spec.quarantine:
        for position, scope in scopes(quarantine.for_each, quarantine.iteration_key):
            if _holds(quarantine.when, scope):
                where = "/".join(str(p) for p in position)
                result.issues.append(f"{quarantine.name} item {where or '-'}: {quarantine.reason}")
    ordered.sort(key=lambda item: (item[0], item[1]))
    seen: set[str] = set()
    for _position, _rule, draft in ordered:
        if draft.id not in seen:
            seen.add(draft.id)
            result.drafts.append(draft)
    if not result.drafts and not result.issues:
        result.issues.append("no rule of the mapping matched this payload")
    return result
