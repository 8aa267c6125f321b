"""Provider payload builders for identity scenarios: one person's life across webhooks."""

from __future__ import annotations

import json
from typing import Any

TS = 1767225600


def _cloud(change_value: dict[str, Any]) -> bytes:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": "106540352242922"},
        **change_value,
    }
    body = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}],
    }
    return json.dumps(body).encode()


def cloud_message(
    msg_id: str, *, phone: str | None = None, bsuid: str | None = None, step: int = 0
) -> bytes:
    """A Cloud API text message; `phone` as Meta writes it (digits) or None (hidden)."""
    message: dict[str, Any] = {
        "id": msg_id,
        "timestamp": str(TS + step),
        "type": "text",
        "text": {"body": f"message {msg_id}"},
    }
    contact: dict[str, Any] = {"profile": {"name": "Sheena Nelson"}}
    if phone:
        message["from"] = phone
        contact["wa_id"] = phone
    if bsuid:
        message["from_user_id"] = bsuid
        contact["user_id"] = bsuid
    return _cloud({"contacts": [contact], "messages": [message]})


def cloud_user_changed_user_id(msg_id: str, previous: str, new: str, step: int = 0) -> bytes:
    return _cloud(
        {
            "messages": [
                {
                    "from_user_id": new,
                    "id": msg_id,
                    "timestamp": str(TS + step),
                    "type": "system",
                    "system": {
                        "body": "User changed their business-scoped user ID",
                        "type": "user_changed_user_id",
                        "user_id": new,
                        "previous_user_id": previous,
                    },
                }
            ]
        }
    )


def cloud_user_changed_number(
    msg_id: str, previous: str, new: str, old_phone: str, new_phone: str, step: int = 0
) -> bytes:
    return _cloud(
        {
            "messages": [
                {
                    "from": old_phone,
                    "id": msg_id,
                    "timestamp": str(TS + step),
                    "type": "system",
                    "system": {
                        "body": f"User changed from {old_phone} to {new_phone}",
                        "type": "user_changed_number",
                        "wa_id": new_phone,
                        "user_id": new,
                        "previous_user_id": previous,
                    },
                }
            ]
        }
    )
