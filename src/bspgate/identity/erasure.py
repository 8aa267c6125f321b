"""Erasure on request, as pure functions: what a person's data looks like, and removing it.

`Markers` are the values that identify the person or are their content: every BSUID and phone
they ever had (phones also as the bare digits providers write), username, name, message ids and
texts. A stored raw payload that batches several people's items loses only the items that carry
a marker (the innermost list element holding it), so the other people's items stay replayable;
an event keeps its shape with the contact emptied and the content nulled, so it stays valid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# message fields that carry what the person wrote or sent
CONTENT_FIELDS = ("text", "media", "location", "reply", "reaction", "contacts")
EMPTY_CONTACT = ("bsuid", "parent_bsuid", "phone", "username", "name")
_SHORTEST_MARKER = 4  # shorter values (a 3-letter name) are matched whole only


@dataclass(slots=True)
class Markers:
    identifiers: set[str] = field(default_factory=set)  # BSUIDs, phones (+ and bare digits)
    content: set[str] = field(default_factory=set)  # message ids, texts, username, name

    def add_phone(self, phone: str | None) -> None:
        if phone:
            self.identifiers.update({phone, phone.lstrip("+")})

    def add(self, value: Any, *, content: bool = False) -> None:
        if isinstance(value, str) and value:
            (self.content if content else self.identifiers).add(value)

    def all(self) -> set[str]:
        return self.identifiers | self.content

    def hits(self, value: str) -> bool:
        """Does this string hold a marker (identifiers also inside, `whatsapp:+1555…`)?"""
        if value in self.identifiers or value in self.content:
            return True
        return any(len(m) >= _SHORTEST_MARKER and m in value for m in self.identifiers)

    def learn_event(self, event: dict[str, Any]) -> None:
        data = event.get("data") or {}
        contact = data.get("contact") or {}
        for key in ("bsuid", "parent_bsuid"):
            self.add(contact.get(key))
        self.add_phone(contact.get("phone"))
        self.add(contact.get("username"), content=True)
        self.add(contact.get("name"), content=True)
        previous = data.get("previous") or {}
        self.add(previous.get("bsuid"))
        self.add_phone(previous.get("phone"))
        message = data.get("message") or {}
        if event.get("type") == "whatsapp.message.received":
            self.add(message.get("id"), content=True)
        text = message.get("text")
        if isinstance(text, str) and len(text) >= _SHORTEST_MARKER:
            self.add(text, content=True)


def _holds(node: Any, markers: Markers) -> bool:
    if isinstance(node, str):
        return markers.hits(node)
    if isinstance(node, dict):
        return any(_holds(v, markers) for v in node.values())
    if isinstance(node, list):
        return any(_holds(v, markers) for v in node)
    return False


def _has_list_hit(node: Any, markers: Markers) -> bool:
    """Does a list below `node` hold the marker (so the item to drop is deeper)?"""
    if isinstance(node, dict):
        return any(
            (isinstance(v, list) and _holds(v, markers)) or _has_list_hit(v, markers)
            for v in node.values()
        )
    return False


def scrub(node: Any, markers: Markers) -> Any:
    """`node` without the person: list items holding a marker dropped (innermost first),
    and any remaining string that holds one replaced by null."""
    if isinstance(node, list):
        kept = []
        for item in node:
            if not _holds(item, markers):
                kept.append(item)
            elif _has_list_hit(item, markers):
                kept.append(scrub(item, markers))
        return kept
    if isinstance(node, dict):
        return {k: scrub(v, markers) for k, v in node.items()}
    if isinstance(node, str) and markers.hits(node):
        return None
    return node


def scrub_raw(body: bytes, markers: Markers) -> bytes | None:
    """A batched JSON payload without the person's items, or None when the payload is theirs
    alone (or not JSON): then it is blanked whole."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    scrubbed = scrub(payload, markers)
    if _items(scrubbed) == 0:
        return None
    return json.dumps(scrubbed, separators=(",", ":")).encode()


def _items(node: Any) -> int:
    """How many innermost list items (messages, statuses, events) `node` holds."""
    if isinstance(node, list):
        return sum(_items(i) if _nests(i) else 1 for i in node)
    if isinstance(node, dict):
        return sum(_items(v) for v in node.values())
    return 0


def _nests(node: Any) -> bool:
    return isinstance(node, dict) and any(isinstance(v, list) or _nests(v) for v in node.values())


def erase_event(event: dict[str, Any]) -> dict[str, Any]:
    """The event with its contact emptied (id kept) and the person's content nulled."""
    data = event["data"]
    data["contact"] = {"id": data["contact"]["id"], **dict.fromkeys(EMPTY_CONTACT)}
    message = data.get("message")
    if isinstance(message, dict):
        for key in CONTENT_FIELDS:
            if key in message:
                message[key] = None
        error = message.get("error")
        if isinstance(error, dict) and "detail" in error:
            error["detail"] = None
    if isinstance(data.get("previous"), dict):
        data["previous"] = {"bsuid": None, "phone": None}
    return event
