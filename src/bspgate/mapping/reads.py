"""Which `binding.field` pairs a mapping's expressions read (for the format-drift watch).

The loader records, for every compiled expression, the head of each plain path (`r.message.text`
reads `r.message`); a payload field no rule reads and no `drift:` list names is counted as
unmapped (`bspgate_unmapped_fields_total`).
"""

from __future__ import annotations

from typing import Any


def collect_reads(node: dict[str, Any], out: set[tuple[str, str]]) -> None:
    """Record every `binding.field` an expression reads (the head of each plain path)."""
    if node.get("type") == "subexpression":
        head = _head_fields(node)
        if len(head) >= 2:
            out.add((head[0], head[1]))
    for child in node.get("children", []):
        if isinstance(child, dict):
            collect_reads(child, out)


def _head_fields(node: dict[str, Any]) -> list[str]:
    # `a.b.c` parses as subexpression(subexpression(a, b), c): flatten the leading fields
    if node.get("type") == "field":
        return [node["value"]]
    if node.get("type") == "index_expression":  # `errors[0]`: the field before the index
        return _head_fields(node["children"][0])
    if node.get("type") != "subexpression":
        return []
    names: list[str] = []
    for child in node.get("children", []):
        part = _head_fields(child)
        if not part:
            break
        names.extend(part)
        if child.get("type") != "field" and child.get("type") != "subexpression":
            break
    return names
