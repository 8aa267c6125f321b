"""Masking of the phones an event page shows that are not under a `phone` key.

docs/console.md: phone numbers are masked to their last two digits "on every page, including raw
provider payloads". The webhooks are the project's golden cases (a contact card shared by hand;
Meta's legacy `customer_changed_number`), so the shapes are Meta's own.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from bspgate.console.render import mask_event, mask_payload
from tests.conftest import MAPPINGS
from tests.console.conftest import in_process, signed_in, wait_until
from tests.harness import RunningGateway

CARD_WA_ID = "15558880000"  # the shared card's WhatsApp number (contacts_message_other_origin)
NEW_WA_ID = "15557654321"  # the customer's new number (customer_changed_number)
VCARD = "BEGIN:VCARD\nTEL;type=CELL;waid=15558880000:+1 555-888-0000\nEND:VCARD"


def _case(name: str) -> dict[str, Any]:
    case: dict[str, Any] = yaml.safe_load(
        (MAPPINGS / "cloudapi" / "cases" / f"{name}.yaml").read_text(encoding="utf-8")
    )
    return case


def _shared_card(payload: dict[str, Any]) -> dict[str, Any]:
    card: dict[str, Any] = payload["entry"][0]["changes"][0]["value"]["messages"][0]["contacts"][0]
    return card


def test_a_shared_cards_wa_id_is_masked_in_the_canonical_event() -> None:
    """`data.message.contacts[].phones[].wa_id` is a third person's number, as `phone` is."""
    event = _case("contacts_message_other_origin")["expect"]["events"][0]
    masked = orjson.dumps(mask_event(event)).decode()
    assert CARD_WA_ID not in masked
    assert '"wa_id":"•••••••••00"' in masked
    assert '"wa_id":null' in masked  # a card phone without one stays null


def test_a_vcard_waid_is_masked_in_the_raw_payload() -> None:
    """Meta's vcard spells the number twice: `waid=<digits>` and `+<spaced digits>`."""
    payload = copy.deepcopy(_case("contacts_message_other_origin")["input"])
    _shared_card(payload)["vcard"] = VCARD
    card = _shared_card(mask_payload(payload))
    assert card["vcard"] == (
        "BEGIN:VCARD\nTEL;type=CELL;waid=*********00:+• •••-•••-••00\nEND:VCARD"
    )


def test_the_legacy_new_wa_id_is_masked_in_the_raw_payload() -> None:
    """`system.new_wa_id` of a `customer_changed_number` message is the customer's new phone."""
    payload = _case("customer_changed_number")["input"]
    message = mask_payload(payload)["entry"][0]["changes"][0]["value"]["messages"][0]
    assert message["system"]["new_wa_id"] == "•••••••••21"
    assert message["timestamp"] == "1767225600"  # digits alone under a key no phone has: kept


def test_digit_runs_in_free_text_are_masked_but_ids_and_bsuids_are_not() -> None:
    """Free text gets the logs' rule (`bspgate.masking.mask_phones`); ids keep their digits."""
    raw = {
        "note": "call 15551239999 or +1 (555) 123-0000",
        "from_user_id": "US.13491208655302741918",
        "id": "wamid.HBgLMTU1NTEyMzQ1NjcVAgASGBQzQTNBNzA1",
        "phone_number_id": "106540352242922",
        "url": "https://graph.facebook.com/v23.0/106540352242922/messages",  # ids in a URL
    }
    assert mask_payload(raw) == {**raw, "note": "call *********99 or +• (•••) •••-••00"}


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[RunningGateway]:
    with in_process(tmp_path) as running:
        yield running


def _event_page(gateway: RunningGateway, payload: dict[str, Any]) -> str:
    assert gateway.post("cloud-us", orjson.dumps(payload)).status_code == 200
    wait_until(lambda: len(gateway.events()) == 1, "the webhook to be processed")
    event_id = gateway.events()[0]["id"]
    client = signed_in(gateway)
    try:
        answer = client.get(f"/console/events/{event_id}")
    finally:
        client.close()
    assert answer.status_code == 200
    return answer.text


@pytest.mark.e2e
def test_an_event_page_shows_no_card_number_in_either_view(gateway: RunningGateway) -> None:
    """The canonical event and the raw payload of a shared contact card, end to end."""
    payload = copy.deepcopy(_case("contacts_message_other_origin")["input"])
    _shared_card(payload)["vcard"] = VCARD
    html = _event_page(gateway, payload)
    assert CARD_WA_ID not in html
    assert "+15559990000" not in html


@pytest.mark.e2e
def test_an_event_page_shows_no_new_number_of_a_changed_number(gateway: RunningGateway) -> None:
    html = _event_page(gateway, _case("customer_changed_number")["input"])
    assert NEW_WA_ID not in html
    assert "15551234567" not in html
