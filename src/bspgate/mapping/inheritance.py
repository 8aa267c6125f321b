"""`extends`: a mapping file on top of the one it extends, and where each merged part came from.

Sections merge key by key (a child's `maps.status` adds to the inherited map); lists are replaced
whole (`verify`, `handshakes`, `quarantine`), except `inbound.rules`, which merge by `name`:

- a child rule with an inherited rule's name replaces that rule, in its place;
- a child rule with a new name is added after the inherited ones;
- `{name: status, drop: true}` removes the inherited rule `status`.

So a BSP that forwards Meta's payloads but keys its statuses by its own id gives one `status`
rule and keeps every other rule of `cloudapi`. Every merged rule remembers the file and index it
was written at (`Origins`), so a load error names the line a contributor wrote, not the position
the rule ended up at. This module merges data only: reading and compiling is `loader.py`'s.
"""

from __future__ import annotations

from typing import Any

from bspgate.mapping.yamlfile import YamlFile

NAMED_LISTS = ("rules",)  # the lists under `inbound` that merge by `name`
# ("inbound", section, merged index) -> (the file, ("inbound", section, index in that file))
Origins = dict[tuple[Any, ...], tuple[YamlFile, tuple[Any, ...]]]


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`: dictionaries merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def own_origins(file: YamlFile, data: dict[str, Any]) -> Origins:
    """The named-list items of a file that extends nothing: each where it is written."""
    inbound = data.get("inbound") or {}
    return {
        ("inbound", section, index): (file, ("inbound", section, index))
        for section in NAMED_LISTS
        for index in range(len(inbound.get(section) or []))
    }


def named_errors(file: YamlFile, data: dict[str, Any], extends: bool) -> None:
    """A name written twice in the rules of one file, or a `drop` with nothing inherited to drop,
    raises (the merged rules are checked for duplicates again by the loader)."""
    inbound = data.get("inbound") or {}
    for section in NAMED_LISTS:
        seen: set[str] = set()
        for index, item in enumerate(inbound.get(section) or []):
            if item["name"] in seen:
                raise file.error(
                    ("inbound", section, index, "name"),
                    f"duplicate {_noun(section)} {item['name']!r}",
                )
            seen.add(item["name"])
            if item.get("drop") and not extends:
                raise file.error(
                    ("inbound", section, index, "drop"),
                    f"drop removes an inherited {_noun(section)}, and this mapping extends nothing",
                )


def merge_extended(
    file: YamlFile, data: dict[str, Any], base: dict[str, Any], inherited: Origins
) -> tuple[dict[str, Any], Origins]:
    """`data` (read from `file`) on top of `base` (what it extends, with its origins)."""
    merged = deep_merge(base, {k: v for k, v in data.items() if k != "extends"})
    inbound = data.get("inbound") or {}
    origins: Origins = {}
    for section in NAMED_LISTS:
        items = (base.get("inbound") or {}).get(section) or []
        from_base = [inherited[("inbound", section, i)] for i in range(len(items))]
        if section in inbound:
            items, from_base = _merge_named(file, section, items, from_base, inbound[section] or [])
            merged["inbound"][section] = items
        origins.update({("inbound", section, i): where for i, where in enumerate(from_base)})
    return merged, origins


def _merge_named(
    file: YamlFile,
    section: str,
    items: list[dict[str, Any]],
    origins: list[tuple[YamlFile, tuple[Any, ...]]],
    overrides: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[tuple[YamlFile, tuple[Any, ...]]]]:
    items, origins = list(items), list(origins)
    for index, item in enumerate(overrides):
        at = next((i for i, old in enumerate(items) if old["name"] == item["name"]), None)
        where = (file, ("inbound", section, index))
        if item.get("drop"):
            if at is None:
                known = ", ".join(old["name"] for old in items) or "none"
                raise file.error(
                    ("inbound", section, index, "name"),
                    f"no inherited {_noun(section)} {item['name']!r} to drop (inherited: {known})",
                )
            del items[at], origins[at]
        elif at is None:
            items.append(item)
            origins.append(where)
        else:
            items[at], origins[at] = item, where
    return items, origins


def _noun(section: str) -> str:
    return section.rstrip("s")
