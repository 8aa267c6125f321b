"""The canonical JSON Schema holds every v1.1 path this project's mappings fill, and only them."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from bspgate.errors import CanonicalValidationError
from bspgate.schema.validate import EventValidator

CONTACT = {
    "id": "ct_01J0000000000000000000000A",
    "bsuid": "US.13491208655302741918",
    "parent_bsuid": None,
    "phone": None,
    "username": None,
    "name": None,
}
CHANNEL = {"id": "c", "provider": "cloudapi", "portfolio": "p", "business_phone": None}
MESSAGE = {
    "id": "wamid.1",
    "type": "contacts",
    "timestamp": "2026-01-01T00:00:00Z",
    "text": None,
    "media": None,
    "location": None,
    "reply": None,
    "reaction": None,
    "context": None,
    "contacts": [
        {
            "name": "Juan",
            "phones": [{"phone": "+15551234567", "wa_id": "15551234567", "type": "MOBILE"}],
            "origin": "contact_request",
        }
    ],
}


def event(event_type: str, **data: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": "evt_01J0000000000000000000000A",
        "type": event_type,
        "source": "/channels/c",
        "subject": CONTACT["id"],
        "time": "2026-01-01T00:00:00Z",
        "datacontenttype": "application/json",
        "data": {
            "channel": CHANNEL,
            "contact": CONTACT,
            "raw_id": "raw_01J0000000000000000000000A",
            "handled_by": None,
            **data,
        },
    }


VALID = [
    event("whatsapp.message.received", message=MESSAGE),
    event(
        "whatsapp.message.echo", message={**MESSAGE, "type": "text", "text": "hi", "contacts": None}
    ),
    event(
        "whatsapp.contact.preference_changed",
        preference={
            "category": "marketing_messages",
            "value": "stop",
            "detail": None,
            "timestamp": "2026-01-01T00:00:00Z",
        },
    ),
]


@pytest.mark.parametrize("valid", VALID, ids=lambda e: e["type"])
def test_v11_events_are_valid(valid: dict[str, Any]) -> None:
    EventValidator().validate(valid)
    standby = copy.deepcopy(valid)
    standby["data"]["handled_by"] = "standby"
    EventValidator().validate(standby)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("data", "handled_by"), "agent"),
        (("data", "message", "contacts", 0, "origin"), "forwarded"),
        (("data", "message", "contacts", 0, "phones", 0, "phone"), "15551234567"),
        (("data", "message", "contacts", 0, "extra"), 1),
        (("data", "contact", "phone"), "+1234567890123456"),
    ],
)
def test_v11_paths_are_checked(path: tuple[Any, ...], value: Any) -> None:
    broken = copy.deepcopy(VALID[0])
    target: Any = broken
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    with pytest.raises(CanonicalValidationError):
        EventValidator().validate(broken)


def test_handled_by_is_required() -> None:
    missing = copy.deepcopy(VALID[2])
    del missing["data"]["handled_by"]
    with pytest.raises(CanonicalValidationError):
        EventValidator().validate(missing)


def test_short_test_phone_is_a_phone() -> None:
    short = copy.deepcopy(VALID[0])
    short["data"]["contact"] = {**CONTACT, "bsuid": None, "phone": "+5678"}
    EventValidator().validate(short)
