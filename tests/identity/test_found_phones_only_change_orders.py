"""Found by the life-story property (phones-only number changes): orders of a legacy person's
phones-only `user_changed_number` (no user ids: `from` the old number, `system.wa_id` the new)
that still split the person, beyond the one 48c35ac fixed (the old number's contact known when
the late change arrives).

- The change arrives after a pair of the new number (the person's first BSUID) and before
  anything of the old number: the change makes a contact of its own that holds nothing (the new
  number stays with the pair's contact, older evidence), the old number's messages land on it,
  and the pipeline quarantines the change (its event has neither BSUID nor phone).
- A chain of phones-only changes (1 -> 2, then 2 -> 3) whose second arrives first: the first
  finds the old number's contact and gives it number 2 as its current alias, although the second
  change already said the holder of number 2 moved on to number 3. Two contacts, and a retired
  number is an alias again.
- The same with the second change a BSUID change naming number 2 as its previous phone
  (`user_changed_number` with user ids, after the person got a BSUID on number 2).
docs/contract.md rule 9: "a phones-only change [...] that arrives after the person's first
message from the new number joins the contact that message made: that contact learned the
number at or after the change [...] had the change come first, the message would have found the
person (rules 3 and 4)"; and §1 rule 9: the same webhooks in any arrival order end in the same
contacts. In event-time order each story is one contact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bspgate.identity.resolver import Observation
from tests.identity.test_found_late_status_keeps_old_phone import _live, _play
from tests.identity.test_late_changes import FIRST, LATER_PAIRED, _phones_only_change, _process

P1, P2, P3 = "+15550000001", "+15550000002", "+15550000003"

OLD_MESSAGE = ("message", Observation(phone=P1), None, None, 10)
CHANGE = ("change", Observation(phone=P2), None, P1, 50)  # phones only: P1 -> P2
PAIR = ("message", Observation(bsuid="US.2", phone=P2), None, None, 90)  # then a BSUID


@pytest.mark.parametrize(
    "steps", [[PAIR, CHANGE], [PAIR, CHANGE, OLD_MESSAGE]], ids=["alone", "then_the_old_number"]
)
def test_a_phones_only_change_after_the_new_numbers_pair_joins_it(
    tx: Any, steps: list[Any]
) -> None:
    contacts = _play(tx, steps)
    assert len({c.id for c in contacts}) == 1  # observed: the change's contact is another one
    assert (contacts[0].bsuid, contacts[0].phone) == ("US.2", P2)
    assert all(c.bsuid or c.phone for c in contacts)  # observed: (None, None)


def test_in_event_time_order_it_is_one_contact(tx: Any) -> None:
    contacts = _play(tx, [OLD_MESSAGE, CHANGE, PAIR])
    assert len({c.id for c in contacts}) == 1
    assert (contacts[0].bsuid, contacts[0].phone) == ("US.2", P2)


@pytest.mark.anyio
@pytest.mark.store
async def test_the_pipeline_delivers_a_phones_only_change_arriving_between(tmp_path: Path) -> None:
    out = await _process(tmp_path, [LATER_PAIRED, _phones_only_change(5), FIRST])
    assert out["states"] == ["processed"] * 3  # observed: the change quarantined
    assert out["live"]["wamid.first"].id == out["live"]["wamid.later"].id


LEGACY = ("message", Observation(phone=P1), None, None, 100)
FIRST_CHANGE = ("change", Observation(phone=P2), None, P1, 120)  # P1 -> P2
SECOND_CHANGE = ("change", Observation(phone=P3), None, P2, 140)  # P2 -> P3
SECOND_BSUID_CHANGE = ("change", Observation(bsuid="US.3", phone=P3), "US.1", P2, 140)


@pytest.mark.parametrize(
    "steps",
    [
        [SECOND_CHANGE, LEGACY, FIRST_CHANGE],
        [SECOND_BSUID_CHANGE, LEGACY, FIRST_CHANGE],
        [SECOND_BSUID_CHANGE, FIRST_CHANGE],
    ],
    ids=["phones_only", "then_a_bsuid_change", "then_a_bsuid_change_alone"],
)
def test_a_phones_only_change_arriving_after_the_next_change_joins_it(
    tx: Any, steps: list[Any]
) -> None:
    contacts = _play(tx, steps)
    assert len({c.id for c in contacts}) == 1  # observed: two contacts
    assert _live(tx, contacts[0]).phone == P3
    assert tx.contact_by_phone("acme", P2) is None  # observed: P2 an alias again


@pytest.mark.parametrize(
    "steps",
    [[LEGACY, FIRST_CHANGE, SECOND_CHANGE], [LEGACY, FIRST_CHANGE, SECOND_BSUID_CHANGE]],
    ids=["phones_only", "then_a_bsuid_change"],
)
def test_changes_in_event_time_order_keep_one_contact(tx: Any, steps: list[Any]) -> None:
    contacts = _play(tx, steps)
    assert len({c.id for c in contacts}) == 1
    assert _live(tx, contacts[0]).phone == P3
    assert tx.contact_by_phone("acme", P2) is None
