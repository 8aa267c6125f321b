"""Builders of real-shaped Cloud API webhooks for tests that need many distinct events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from bspgate.ids import new_id
from bspgate.store.base import RawRecord
from bspgate.times import iso
from tests.conftest import meta_signature

PHONE_NUMBER_ID = "106540352242922"


def _webhook(value: dict[str, Any]) -> dict[str, Any]:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": PHONE_NUMBER_ID},
        **value,
    }
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": value}]}],
    }


def text_webhook(
    message_id: str,
    *,
    bsuid: str = "US.13491208655302741918",
    phone: str | None = "15551234567",
    timestamp: int = 1767225600,
    text: str = "Does it come in another color?",
    name: str = "Sheena Nelson",
) -> dict[str, Any]:
    """One inbound text message from `bsuid` (and `phone`, unless None)."""
    contact: dict[str, Any] = {"profile": {"name": name}, "user_id": bsuid}
    message: dict[str, Any] = {
        "from_user_id": bsuid,
        "id": message_id,
        "timestamp": str(timestamp),
        "type": "text",
        "text": {"body": text},
    }
    if phone is not None:
        contact["wa_id"] = phone
        message["from"] = phone
    return _webhook({"contacts": [contact], "messages": [message]})


def status_webhook(
    message_id: str,
    status: str = "delivered",
    *,
    bsuid: str = "US.13491208655302741918",
    timestamp: int = 1767225700,
) -> dict[str, Any]:
    """One status of an outbound message sent to `bsuid`."""
    return _webhook(
        {
            "statuses": [
                {
                    "id": message_id,
                    "status": status,
                    "timestamp": str(timestamp),
                    "recipient_user_id": bsuid,
                }
            ]
        }
    )


def signed(payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """The JSON body and the headers Meta would send with it (test app secret)."""
    body = orjson.dumps(payload)
    return body, {"content-type": "application/json", "x-hub-signature-256": meta_signature(body)}


def raw_record(n: int, body: bytes, channel_id: str = "cloud-us") -> RawRecord:
    """A Cloud API payload as the server stores it on arrival (received, not yet processed),
    the `n`th to arrive (received `n` seconds after a fixed moment)."""
    return RawRecord(
        id=new_id("raw"),
        channel_id=channel_id,
        provider="cloudapi",
        received_at=iso(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=n)),
        content_type="application/json",
        body=body,
        state="received",
    )
