"""Which `binding.field` pairs a mapping's expressions read (for the format-drift watch).

The loader records, for every compiled expression, the head of each plain path (`r.message.text`
reads `r.message`); a payload field no rule reads and no `drift:` list names is counted as
unmapped (`bspgate_unmapped_fields_total`). `root_names` gives the names an expression looks up in
the rule's scope, so the loader can refuse a name the rule never binds.
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


# Nodes whose first child is evaluated against the current value and the rest against what it
# gives (`a.b`, `a[0]`, `a | b`, projections, `a[]`): only the first can name a binding.
_LEFT_ONLY = frozenset(
    {
        "subexpression",
        "index_expression",
        "pipe",
        "projection",
        "value_projection",
        "filter_projection",
        "flatten",
    }
)
# Nodes whose children are all evaluated against the current value.
_ALL = frozenset(
    {
        "or_expression",
        "and_expression",
        "not_expression",
        "comparator",
        "multi_select_list",
        "multi_select_dict",
        "key_val_pair",
        "function_expression",
    }
)


def root_names(node: dict[str, Any]) -> set[str]:
    """The names an expression looks up in the scope itself (`ev` in `ev.data.text || @`).

    A mapping expression is evaluated against the rule's scope (`payload`, `channel`,
    `received_at`, the `for_each` and `let` names), so a name found here that the scope does
    not bind is always null. Conservative: a node not known here names nothing, and `&expr`
    arguments (evaluated per item) and `@` are never counted.
    """
    kind = node.get("type")
    if kind == "field":
        return {str(node["value"])}
    children = [c for c in node.get("children", []) if isinstance(c, dict)]
    if kind in _LEFT_ONLY:
        return root_names(children[0]) if children else set()
    if kind in _ALL:
        names: set[str] = set()
        for child in children:
            if child.get("type") != "expref":
                names |= root_names(child)
        return names
    return set()
