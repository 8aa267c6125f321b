"""Identity rule 10 through the pipeline's resolution step: a shared contact card is evidence.

The drafts are what a mapping produces for a received `contacts` message (canonical §2,
`data.message.contacts`); the store is every `StoreTx` backend (`tx`).
"""

from __future__ import annotations

from typing import Any

import pytest

from bspgate.config import Channel
from bspgate.identity.resolver import IdentityResolver, Observation
from bspgate.mapping.engine import Draft
from bspgate.pipeline import RECEIVED, _resolve

B1 = "US.13491208655302741918"
CHANNEL = Channel(id="cloud-us", provider="cloudapi", portfolio="acme")
T = "2026-04-02T10:11:12Z"


def _card_draft(origin: str | None, phones: list[dict[str, Any]]) -> Draft:
    contact = {"bsuid": B1, "parent_bsuid": None, "phone": None, "username": None, "name": None}
    message = {
        "id": "wamid.card",
        "type": "contacts",
        "timestamp": T,
        "text": None,
        "contacts": [{"name": {"formatted_name": "Me"}, "phones": phones, "origin": origin}],
    }
    return Draft(
        "evt_x", RECEIVED, "k", T, "message", (0,), {"contact": contact, "message": message}
    )


@pytest.mark.parametrize(
    ("phones", "expected"),
    [
        ([{"phone": "+1 (555) 123-4567", "wa_id": "15551234567", "type": "CELL"}], "+15551234567"),
        ([{"phone": None, "wa_id": "15551234567", "type": None}], "+15551234567"),
        ([{"phone": "not a phone", "wa_id": "15557654321", "type": None}], "+15557654321"),
    ],
)
def test_rule10_a_card_shared_on_request_pairs_the_phone(
    tx: Any, phones: list[dict[str, Any]], expected: str
) -> None:
    resolver = IdentityResolver(tx, "acme", CHANNEL.id, T)
    known = resolver.observe(Observation(bsuid=B1))
    contact, _ = _resolve(tx, resolver, CHANNEL, _card_draft("contact_request", phones))
    assert contact.id == known.id
    assert contact.phone == expected
    assert tx.contact_by_phone("acme", expected).id == known.id


@pytest.mark.parametrize("origin", ["other", None])
def test_rule10_a_card_of_any_other_origin_teaches_nothing(tx: Any, origin: str | None) -> None:
    resolver = IdentityResolver(tx, "acme", CHANNEL.id, T)
    phones = [{"phone": "+15551234567", "wa_id": "15551234567", "type": "CELL"}]
    contact, _ = _resolve(tx, resolver, CHANNEL, _card_draft(origin, phones))
    assert contact.phone is None
    assert tx.contact_by_phone("acme", "+15551234567") is None


def test_observation_reads_every_identifier_of_a_draft_contact() -> None:
    data = {
        "bsuid": B1,
        "parent_bsuid": "US.ENT.1",
        "phone": "+1555",
        "username": "@u",
        "name": "N",
    }
    assert Observation.from_contact_data(data) == Observation(B1, "US.ENT.1", "+1555", "@u", "N")
    assert Observation.from_contact_data({}) == Observation()
