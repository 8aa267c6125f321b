"""Found by the life-story property (changes naming the old phone, Meta's `from` of a
`user_changed_number`): two arrival orders in which the previous phone an identity change
announces ends otherwise than in event-time order (§1 rule 9: the same webhooks in any arrival
order end in the same contacts; rule 6: a phone alias belongs to one contact at a time).

- A recycled number: person A paired it first, person B later (rule 6 moved it to B), then B's
  change names it as the previous phone. Processed first, the change records the number as B's
  "since ever"; that hides B's dated pair, and A's older pair, arriving last, makes the number
  A's alias again, although B took it after A (rule 9) and gave it up with the change.
- The old phone known only from legacy (phone-only) messages: a change naming its previous
  BSUID and phone, processed when the store knows the new BSUID (or the old one, from a late
  read receipt) but not the old phone, records nothing of the old phone; the person's earlier
  legacy messages then make a phone-only contact of their own, holding the retired number. In
  event-time order the change finds the legacy contact by its previous phone: one contact.
"""

from __future__ import annotations

from typing import Any

import pytest

from bspgate.identity.resolver import Observation
from tests.identity.test_found_late_status_keeps_old_phone import _play

P1, P2, P3 = "+15550000001", "+15550000002", "+15550000003"

A_PAIR = ("message", Observation(bsuid="US.1", phone=P1), None, None, 20)  # A, first holder
B_PAIR = ("message", Observation(bsuid="US.3", phone=P1), None, None, 130)  # B, recycled
B_CHANGE = ("change", Observation(bsuid="US.4"), "US.3", P1, 150)  # B's change, `from` P1


def test_an_earlier_holders_late_pair_does_not_take_back_an_announced_old_phone(tx: Any) -> None:
    contacts = _play(tx, [B_CHANGE, B_PAIR, A_PAIR])
    assert contacts[0].id == contacts[1].id != contacts[2].id  # as in event-time order
    assert tx.contact_by_phone("acme", P1) is None  # observed: A's contact holds P1 again


def test_in_event_time_order_the_announced_old_phone_is_nobodys(tx: Any) -> None:
    _play(tx, [A_PAIR, B_PAIR, B_CHANGE])
    assert tx.contact_by_phone("acme", P1) is None


LEGACY = ("message", Observation(phone=P2), None, None, 30)  # before BSUIDs
CHANGE = ("change", Observation(bsuid="US.2", phone=P3), "US.1", P2, 50)
NEW_PAIR = ("message", Observation(bsuid="US.2", phone=P3), None, None, 60)
OLD_RECEIPT = ("status", Observation(bsuid="US.1"), None, None, 98)  # read after the change


@pytest.mark.parametrize(
    "steps",
    [[NEW_PAIR, CHANGE, LEGACY], [OLD_RECEIPT, CHANGE, LEGACY]],
    ids=["new_bsuid_known", "old_bsuid_known"],
)
def test_a_change_naming_the_old_phone_finds_its_legacy_messages(tx: Any, steps: list[Any]) -> None:
    contacts = _play(tx, steps)
    assert len({c.id for c in contacts}) == 1  # observed: the legacy message's own contact
    assert tx.contact_by_phone("acme", P2) is None  # observed: the retired number an alias


def test_in_event_time_order_the_change_joins_the_legacy_contact(tx: Any) -> None:
    contacts = _play(tx, [LEGACY, CHANGE, NEW_PAIR, OLD_RECEIPT])
    assert len({c.id for c in contacts}) == 1
    assert tx.contact_by_phone("acme", P2) is None
