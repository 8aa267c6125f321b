"""Identity rule 10: phones learned outside a message's own sender fields.

- A `contacts` message whose card has `origin: contact_request` is the person sharing their own
  number on request: its phone pairs with the sender's BSUID (rule 2). A card of any other
  origin is someone else's number and teaches nothing.
- A Cloud API send answer whose `contacts[]` entry carries both `wa_id` and `user_id` pairs the
  recipient's phone with their BSUID.
"""

from __future__ import annotations

from typing import Any

from bspgate.mapping.functions import e164, is_bsuid


def shared_phones(received: bool, data: dict[str, Any]) -> list[str]:
    """The phone a received message's sender shared on request (at most one), E.164."""
    if not received or not (data.get("contact") or {}).get("bsuid"):
        return []
    message = data.get("message") or {}
    for card in message.get("contacts") or []:
        if not isinstance(card, dict) or card.get("origin") != "contact_request":
            continue
        for entry in card.get("phones") or []:
            phone = _card_phone(entry) if isinstance(entry, dict) else None
            if phone:
                return [phone]  # one person, one number: the first the card names
    return []


def _card_phone(entry: dict[str, Any]) -> str | None:
    for value in (entry.get("phone"), entry.get("wa_id")):
        if isinstance(value, str) and value and not is_bsuid(value):
            phone = e164(value)
            if phone:
                return phone
    return None


def answer_pairs(answer: Any) -> list[tuple[str, str]]:
    """(BSUID, E.164 phone) pairs a Cloud API send answer names in `contacts[]`."""
    pairs: list[tuple[str, str]] = []
    contacts = answer.get("contacts") if isinstance(answer, dict) else None
    for entry in contacts if isinstance(contacts, list) else []:
        if not isinstance(entry, dict):
            continue
        bsuid, wa_id = entry.get("user_id"), entry.get("wa_id")
        if not (isinstance(bsuid, str) and is_bsuid(bsuid) and isinstance(wa_id, str)):
            continue
        phone = None if is_bsuid(wa_id) else e164(wa_id)
        if phone:
            pairs.append((bsuid, phone))
    return pairs
