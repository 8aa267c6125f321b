"""Provider payload builders for identity scenarios: one person's life across webhooks."""

from __future__ import annotations

import json
from typing import Any

TS = 1767225600
ACS_CHANNEL = "11111111-1111-1111-1111-111111111111"


def cloud_change(change_value: dict[str, Any]) -> bytes:
    """A Cloud API webhook holding one `messages` change of this value."""
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
    msg_id: str,
    *,
    phone: str | None = None,
    bsuid: str | None = None,
    step: int = 0,
    ts: int = TS,
) -> bytes:
    """A Cloud API text message; `phone` as Meta writes it (digits) or None (hidden)."""
    message: dict[str, Any] = {
        "id": msg_id,
        "timestamp": str(ts + step),
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
    return cloud_change({"contacts": [contact], "messages": [message]})


def cloud_user_changed_user_id(
    msg_id: str,
    previous: str,
    new: str | None,
    step: int = 0,
    *,
    in_system: bool = True,
    ts: int = TS,
) -> bytes:
    """Meta's `user_changed_user_id`: the new BSUID in `system.user_id` and `from_user_id`
    (`in_system=False`: in `from_user_id` only; `new=None`: in neither)."""
    system = {
        "body": "User changed their business-scoped user ID",
        "type": "user_changed_user_id",
        "previous_user_id": previous,
    }
    message: dict[str, Any] = {
        "id": msg_id,
        "timestamp": str(ts + step),
        "type": "system",
        "system": system,
    }
    if new is not None:
        message["from_user_id"] = new
        if in_system:
            system["user_id"] = new
    return cloud_change({"messages": [message]})


def cloud_user_changed_user_id_as_documented(
    msg_id: str, previous: str, new: str, old_phone: str, new_phone: str | None, step: int = 0
) -> bytes:
    """The shape of Meta's BSUID page: `from` the old phone, the new BSUID in `system.user_id`,
    the new phone in `system.wa_id` (absent when it cannot be shared), and the old BSUID only in
    the body ("User <NAME> changed from <OLD> to <NEW>")."""
    system: dict[str, Any] = {
        "body": f"User Sheena Nelson changed from {previous} to {new}",
        "type": "user_changed_user_id",
        "user_id": new,
    }
    if new_phone:
        system["wa_id"] = new_phone
    message = {
        "from": old_phone,
        "id": msg_id,
        "timestamp": str(TS + step),
        "type": "system",
        "system": system,
    }
    return cloud_change({"messages": [message]})


def cloud_user_changed_number(
    msg_id: str, previous: str, new: str, old_phone: str, new_phone: str, step: int = 0
) -> bytes:
    return cloud_change(
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


def twilio_message(sid: str, *, phone: str | None = None, bsuid: str | None = None) -> bytes:
    """Twilio's inbound form fields (as JSON: `simulate` form-encodes them)."""
    fields = {
        "MessageSid": sid,
        "SmsMessageSid": sid,
        "SmsSid": sid,
        "AccountSid": "AC" + "0" * 32,
        "MessageType": "text",
        "Body": f"message {sid}",
        "NumMedia": "0",
        "ProfileName": "Sheena Nelson",
        "To": "whatsapp:+15550001111",
        "ApiVersion": "2010-04-01",
        "SmsStatus": "received",
    }
    if phone:
        fields["From"] = f"whatsapp:+{phone}"
        fields["WaId"] = phone
    elif bsuid:
        fields["From"] = f"whatsapp:{bsuid}"  # phone hidden: From carries the BSUID
    if bsuid:
        fields["ExternalUserId"] = f"whatsapp:{bsuid}"
    return json.dumps(fields).encode()


def acs_message(
    message_id: str, *, phone: str | None = None, bsuid: str | None = None, step: int = 0
) -> bytes:
    """One Event Grid AdvancedMessageReceived event (Event Grid schema: a JSON array)."""
    data = {
        "content": f"message {message_id}",
        "channelType": "whatsapp",
        "messageType": "text",
        "messageId": message_id,
        "from": phone or "",
        "to": "11111111-1111-1111-1111-111111111111",
        "receivedTimestamp": f"2026-01-01T00:00:{step:02d}+00:00",
    }
    if bsuid:
        data["fromBSUID"] = bsuid
    sender = phone or bsuid
    return json.dumps(
        [
            {
                "id": f"eg-{message_id}",
                "topic": "/subscriptions/x/providers/microsoft.communication/acs",
                "subject": f"advancedMessage/sender/{sender}/recipient/{ACS_CHANNEL}",
                "data": data,
                "eventType": "Microsoft.Communication.AdvancedMessageReceived",
                "dataVersion": "1.0",
                "metadataVersion": "1",
                "eventTime": "2026-01-01T00:00:01Z",
            }
        ]
    ).encode()
