"""A mapping's `route`: which configured channel each part of a payload is for.

A Meta app posts the webhooks of all its numbers to one callback URL, and Meta may batch the
changes of several numbers into one POST. `route.read` names where a payload names its number
(`payload.entry[].changes[].value.metadata.phone_number_id`). When it is a plain path (names,
each optionally flattened with `[]`), the payload can be split at its last `[]`: each part keeps
the items of that list that name one number, and is mapped as that number's channel.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bspgate.mapping.expression import Getter

_PLAIN = re.compile(r"payload(?:\.[A-Za-z_][A-Za-z0-9_]*(?:\[\])?)+")
_SEGMENT = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)(\[\])?")


@dataclass(frozen=True, slots=True)
class Split:
    """Where to split: `lists` walks to the items (each name flattened or not), `key` in each."""

    lists: tuple[tuple[str, bool], ...]
    key: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Route:
    read: Getter
    setting: str
    split: Split | None  # None: `read` is not a plain path; a payload naming several is refused


def split_of(text: str) -> Split | None:
    """The split a plain `read` path allows (`payload.a[].b[].c.d`), or None."""
    if not _PLAIN.fullmatch(text.strip()):
        return None
    segments = [(name, bool(flat)) for name, flat in _SEGMENT.findall(text.strip())]
    last = max((i for i, (_, flat) in enumerate(segments) if flat), default=None)
    if last is None or last == len(segments) - 1:
        return None  # nothing to split, or the list holds the values themselves
    return Split(tuple(segments[: last + 1]), tuple(name for name, _ in segments[last + 1 :]))


def part_for(payload: Any, split: Split, value: str, *, strays: bool = False) -> Any:
    """A copy of `payload` whose split list keeps only the items naming `value` (the rest shared).

    `strays`: also the items that name no value (a change without a number), so that exactly
    one part holds each of them."""
    return _prune(payload, split.lists, split.key, value, strays)


def _prune(
    node: Any, lists: tuple[tuple[str, bool], ...], key: tuple[str, ...], value: str, strays: bool
) -> Any:
    name, flat = lists[0]
    if not isinstance(node, dict) or name not in node:
        return node
    child, rest = node[name], lists[1:]
    if flat:
        if not isinstance(child, list):
            return node
        if rest:
            kept = [_prune(item, rest, key, value, strays) for item in child]
        else:
            kept = [
                item
                for item in child
                if (named := _names(item, key)) == value or (strays and named is None)
            ]
    else:
        kept = _prune(child, rest, key, value, strays) if rest else child
    return {**node, name: kept}


def _names(item: Any, key: tuple[str, ...]) -> str | None:
    for name in key:
        if not isinstance(item, dict):
            return None
        item = item.get(name)
    return str(item) if isinstance(item, str | int) and not isinstance(item, bool) else None
