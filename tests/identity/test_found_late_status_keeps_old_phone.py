"""Found by the life-story property (late sightings): a read receipt of the OLD BSUID, dated
after the identity change, still keeps the old phone as the alias in two paths the fix of
48c35ac does not cover (rules 5 and 9, docs/contract.md rule 9: "a webhook naming the OLD BSUID
dated after the change [...] is no evidence against the change [...] The change still moves the
contact and retires the old phone").

- The new BSUID was seen before the change arrived (a receipt or a message of it), so the change
  merges the old BSUID's contact into the new one's: the merge keeps the old phone, whose pair is
  newer evidence than the change, and the change's new phone is then refused as older.
- The old BSUID's phone was known only to a phone-only (legacy) contact: the late receipt pairs
  the retired BSUID with it, the two contacts merge (rule 8) and the phone stays the alias, in
  event-time order; had the receipt come first, the phone would have been retired.
In event-time order (or in the other order) the person ends on the new BSUID and the new phone
(or no phone), the old one retired. Store level, every backend.
"""

from __future__ import annotations

from typing import Any

import pytest

from bspgate.identity.resolver import IdentityResolver, Observation
from bspgate.store.base import ContactRow, follow_merged

OLD, NEW = "+15550000001", "+15550000002"


def _at(second: int) -> str:
    return f"2026-04-02T00:{second // 60:02d}:{second % 60:02d}Z"


def _live(tx: Any, contact: ContactRow) -> ContactRow:
    found = follow_merged(tx.contact(contact.id), tx.contact)
    assert found is not None
    return found


def _play(tx: Any, steps: list[tuple[str, Observation, str | None, str | None, int]]) -> list[Any]:
    """(kind, what it says, previous BSUID, previous phone, event second) in arrival order."""
    contacts = []
    for n, (kind, seen, previous_bsuid, previous_phone, second) in enumerate(steps):
        resolver = IdentityResolver(tx, "acme", "ch", f"2026-05-01T00:00:{n:02d}Z")
        if kind == "change":
            contact, _, _ = resolver.relink(seen, previous_bsuid, previous_phone, _at(second))
        else:
            contact = resolver.observe(seen, _at(second))
        contacts.append(contact)
    return [_live(tx, c) for c in contacts]


CHANGE = ("change", Observation(bsuid="US.2", phone=NEW), "US.1", OLD, 110)
READ_OLD = ("status", Observation(bsuid="US.1", phone=OLD), None, None, 161)  # read after it
READ_NEW = ("status", Observation(bsuid="US.2"), None, None, 163)
FIRST = ("message", Observation(bsuid="US.1", phone=OLD), None, None, 10)
LATER = ("message", Observation(bsuid="US.2", phone=NEW), None, None, 120)


@pytest.mark.parametrize(
    "steps",
    [[READ_OLD, READ_NEW, CHANGE], [LATER, READ_OLD, FIRST, CHANGE]],
    ids=["two_receipts_first", "new_message_and_old_receipt_first"],
)
def test_a_change_merging_a_late_receipts_contact_retires_the_old_phone(
    tx: Any, steps: list[Any]
) -> None:
    person = _play(tx, steps)[-1]
    assert (person.bsuid, person.phone) == ("US.2", NEW)  # observed: ("US.2", OLD)
    assert tx.contact_by_phone("acme", OLD) is None  # observed: the person's contact
    assert tx.contact_by_phone("acme", NEW).id == person.id  # observed: None


def test_in_event_time_order_the_same_story_ends_on_the_new_phone(tx: Any) -> None:
    person = _play(tx, [FIRST, CHANGE, LATER, READ_OLD, READ_NEW])[-1]
    assert (person.bsuid, person.phone) == ("US.2", NEW)
    assert tx.contact_by_phone("acme", OLD) is None


LEGACY = ("message", Observation(phone=OLD), None, None, 20)  # before BSUIDs
CHANGE_NO_PHONES = ("change", Observation(bsuid="US.2"), "US.1", None, 50)
READ_OLD_LATE = ("status", Observation(bsuid="US.1", phone=OLD), None, None, 154)


def test_a_late_receipt_joining_a_legacy_contact_leaves_its_phone_retired(tx: Any) -> None:
    _play(tx, [LEGACY, CHANGE_NO_PHONES, READ_OLD_LATE])  # event-time order
    person = _live(tx, tx.contact_by_bsuid("acme", "US.2"))
    assert tx.contact_by_bsuid("acme", "US.1").id == person.id
    assert person.phone is None  # observed: OLD, the retired BSUID's phone, still the alias
    assert tx.contact_by_phone("acme", OLD) is None


def test_the_receipt_first_retires_the_legacy_phone(tx: Any) -> None:
    """The same three webhooks, the receipt first: the order the result must not depend on."""
    _play(tx, [READ_OLD_LATE, CHANGE_NO_PHONES, LEGACY])
    person = _live(tx, tx.contact_by_bsuid("acme", "US.2"))
    assert person.phone is None
    assert tx.contact_by_phone("acme", OLD) is None
