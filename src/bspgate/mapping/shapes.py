"""The shape of canonical event data that mapping rules fill (keys and sub-objects).

A rule's fields name canonical paths (`message.media.id`); every key not named is null, and a
sub-object (media, location, …) whose fields are all null is null itself. `handled_by` is the one
top-level scalar a rule fills (a field named without a section).
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
_RECEIVED_KEYS = (
    "id",
    "type",
    "timestamp",
    "text",
    "media",
    "location",
    "reply",
    "reaction",
    "context",
    "contacts",  # v1.1: the cards of a `contacts` message (one value: a list)
)
MESSAGE_KEYS: dict[str, tuple[str, ...]] = {
    "whatsapp.message.received": _RECEIVED_KEYS,
    "whatsapp.message.echo": _RECEIVED_KEYS,  # v1.1: a message the business sent elsewhere
    "whatsapp.message.status": ("id", "status", "provider_status", "timestamp", "error"),
}
CONTACT_KEYS = ("bsuid", "parent_bsuid", "phone", "username", "name")
PREVIOUS_KEYS = ("bsuid", "phone")
PREFERENCE_KEYS = ("category", "value", "detail", "timestamp")  # v1.1 preference_changed
# Top-level scalars of `data` every rule may fill (v1.1: `handled_by`, null or "standby").
SCALARS = ("handled_by",)
RULE_TYPES = (
    "whatsapp.message.received",
    "whatsapp.message.status",
    "whatsapp.contact.identity_changed",
    "whatsapp.contact.preference_changed",
    "whatsapp.message.echo",
)


def sections(event_type: str) -> dict[str, tuple[str, ...]]:
    """The top-level sections of `data` a rule of this type fills, with their keys."""
    out = {"channel": ("business_phone",), "contact": CONTACT_KEYS}
    if event_type == "whatsapp.contact.identity_changed":
        out["previous"] = PREVIOUS_KEYS
    elif event_type == "whatsapp.contact.preference_changed":
        out["preference"] = PREFERENCE_KEYS
    else:
        out["message"] = MESSAGE_KEYS[event_type]
    return out
