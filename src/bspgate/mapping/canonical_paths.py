"""The canonical field paths a rule may fill, read from the canonical event schema.

`fields:` names like `message.text` or `contact.bsuid` are paths inside an event's `data`; which
exist depends on the rule's event type. They are read from canonical_event.schema.json (the
contract), so a path added there is accepted here, and `message.txt` is an error at load.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from bspgate.schema.validate import canonical_schema

MANAGED = {"raw_id"}  # filled by the gateway, never by a rule


def _resolve(schema: dict[str, Any], node: Any) -> dict[str, Any]:
    while isinstance(node, dict) and "$ref" in node:
        target: Any = schema  # a local JSON pointer: #/$defs/received/properties/message
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target.get(part.replace("~1", "/").replace("~0", "~"), {})
        node = target
    return node if isinstance(node, dict) else {}


def _properties(schema: dict[str, Any], node: Any) -> dict[str, Any]:
    node = _resolve(schema, node)
    found: dict[str, Any] = {}
    for part in node.get("allOf", []):
        found.update(_properties(schema, part))
    for branch in node.get("oneOf", []) + node.get("anyOf", []):
        found.update(_properties(schema, branch))
    for name, value in (node.get("properties") or {}).items():
        if value is True:
            continue  # declared in an allOf part
        found[name] = value
    return found


def _walk(schema: dict[str, Any], node: Any, prefix: str, out: set[str]) -> None:
    for name, value in _properties(schema, node).items():
        path = f"{prefix}{name}"
        if path in MANAGED:
            continue
        out.add(path)
        _walk(schema, value, f"{path}.", out)


@cache
def canonical_paths(event_type: str) -> frozenset[str]:
    """Every path inside `data` of an event of `event_type` (objects and their leaves)."""
    schema = canonical_schema()
    out: set[str] = set()
    definition = _data_defs(schema).get(event_type)
    if definition is not None:
        _walk(schema, definition, "", out)
    return frozenset(out)


def _data_defs(schema: dict[str, Any]) -> dict[str, Any]:
    """Event type -> the schema of its `data`, from the schema's `if type … then data …` parts."""
    found: dict[str, Any] = {}
    for part in schema.get("allOf", []):
        condition = part.get("if", {}).get("properties", {}).get("type", {})
        data = part.get("then", {}).get("properties", {}).get("data")
        names = [condition["const"]] if "const" in condition else condition.get("enum", [])
        for name in names:
            if data is not None:
                found[name] = data
    return found


def unknown_field(event_type: str, name: str) -> str | None:
    """None when `name` is a field of `event_type` events, else the error naming its siblings."""
    known = canonical_paths(event_type)
    if name in known:
        return None
    head = name.rsplit(".", 1)[0]
    depth = head.count(".") + 2
    near = sorted(
        p for p in known if p.startswith(head + ".") and p.count(".") + 1 == depth
    ) or sorted(p for p in known if "." not in p)
    return f"{name!r} is not a field of a {event_type} event (known: {', '.join(near)})"
