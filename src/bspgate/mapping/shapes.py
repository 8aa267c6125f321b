"""The shape of canonical event data that mapping rules fill (keys and sub-objects).

A rule's fields name canonical paths (`message.media.id`); every key not named is null, and a
sub-object (media, location, …) whose fields are all null is null itself.
"""

from __future__ import annotations

SUBOBJECTS: dict[tuple[str, str], tuple[str, ...]] = {
    ("message", "media"): ("id", "url", "mime_type", "filename", "sha256"),
    ("message", "location"): ("latitude", "longitude", "name", "address"),
    ("message", "reply"): ("id", "title"),
    ("message", "reaction"): ("message_id", "emoji"),
    ("message", "context"): ("message_id",),
    ("message", "error"): ("code", "provider_code", "title", "detail"),
}
MESSAGE_KEYS: dict[str, tuple[str, ...]] = {
    "whatsapp.message.received": (
        "id",
        "type",
        "timestamp",
        "text",
        "media",
        "location",
        "reply",
        "reaction",
        "context",
    ),
    "whatsapp.message.status": ("id", "status", "provider_status", "timestamp", "error"),
}
CONTACT_KEYS = ("bsuid", "parent_bsuid", "phone", "username", "name")
PREVIOUS_KEYS = ("bsuid", "phone")


def sections(event_type: str) -> dict[str, tuple[str, ...]]:
    """The top-level sections of `data` a rule of this type fills, with their keys."""
    out = {"channel": ("business_phone",), "contact": CONTACT_KEYS}
    if event_type == "whatsapp.contact.identity_changed":
        out["previous"] = PREVIOUS_KEYS
    else:
        out["message"] = MESSAGE_KEYS[event_type]
    return out
