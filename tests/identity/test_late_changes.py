"""Announced identity changes that arrive after payloads dated later (rules 5 and 9).

Webhooks arrive in any order: Meta retries a failed delivery for days, and a status of a message
sent before a change can be read after it. Whatever the order, the contacts must end as event
time order leaves them:
- a status naming the OLD BSUID, dated after the change and processed first, is a late webhook
  of the retired BSUID (rule 5): the change still moves the contact to the new BSUID and retires
  the old phone, so sends never go to a number that may be recycled by now;
- a phones-only change (Meta's older `user_changed_number`: no user ids) arriving after the
  person's first message from the new number joins the two: had the change come first, that
  message would have found the person's contact (rule 3). It must not leave an empty contact
  whose event fails the schema (the change was quarantined);
- a change matched by its previous phone only finds the contact holding that phone when that
  contact's BSUID is not another one than the change names (a stranger's contact, rule 6).
Each story runs through the real processor on SQLite and PostgreSQL, and on the identity store
alone (memory, SQLite, PostgreSQL).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from bspgate.app import load_channel_mappings
from bspgate.identity.resolver import IdentityResolver, Observation
from bspgate.processing import Processor, Rules
from bspgate.stage import open_store
from bspgate.store.base import ContactRow, follow_merged
from tests.conftest import make_settings
from tests.identity.payloads import TS, cloud_change, cloud_message, cloud_user_changed_number
from tests.payloads import raw_record, status_webhook

pytestmark = pytest.mark.anyio

OLD_PHONE, NEW_PHONE = "15550000001", "15550000002"


async def _process(tmp_path: Path, bodies: list[bytes]) -> dict[str, Any]:
    """Accept `bodies` in this order, process them one at a time, read back what became of it:
    payload states, events, and every message's live contact (after merges)."""
    settings = make_settings(tmp_path)
    store = open_store(settings)
    await store.open()
    try:
        for n, body in enumerate(bodies):
            await store.accept(raw_record(n, body))
        processor = Processor(store, Rules(settings, load_channel_mappings(settings)), batch=1)
        await processor.drain()

        def read(tx: Any) -> dict[str, Any]:
            events = [orjson.loads(b) for (b,) in tx.all("SELECT body FROM events ORDER BY seq")]
            states = [row[0] for row in tx.all("SELECT state FROM raw_payloads")]
            live = {
                e["data"]["message"]["id"]: follow_merged(
                    tx.contact(e["data"]["contact"]["id"]), tx.contact
                )
                for e in events
                if e["type"] == "whatsapp.message.received"
            }
            return {"events": events, "states": states, "live": live}

        result: dict[str, Any] = await store.read(read)
        return result
    finally:
        await store.close()


def _resolver(tx: Any, n: int) -> IdentityResolver:
    return IdentityResolver(tx, "acme", "ch", f"2026-05-01T00:00:{n:02d}Z")


def _at(second: int) -> str:
    return f"2026-04-02T00:00:{second:02d}Z"


def _live(tx: Any, contact: ContactRow) -> ContactRow:
    return follow_merged(tx.contact(contact.id), tx.contact)


# -- a late sighting of the old BSUID came first ------------------------------------------------
M1 = cloud_message("wamid.m1", phone=OLD_PHONE, bsuid="US.1", step=1)
CHANGE = cloud_user_changed_number("wamid.chg", "US.1", "US.2", OLD_PHONE, NEW_PHONE, step=3)
M2 = cloud_message("wamid.m2", phone=NEW_PHONE, bsuid="US.2", step=5)
READ = orjson.dumps(status_webhook("wamid.out1", "read", bsuid="US.1", timestamp=TS + 6))
READ_PAIRED = cloud_change(  # the status names the recipient's phone too
    {
        "statuses": [
            {
                "id": "wamid.out1",
                "status": "read",
                "timestamp": str(TS + 6),
                "recipient_id": OLD_PHONE,
                "recipient_user_id": "US.1",
            }
        ]
    }
)


@pytest.mark.store
@pytest.mark.parametrize(
    "order",
    [(M1, CHANGE, M2, READ), (READ, CHANGE, M1, M2), (READ_PAIRED, CHANGE, M1, M2)],
    ids=["in_time", "status_first", "paired_status_first"],
)
async def test_a_status_of_the_old_bsuid_processed_first_does_not_stop_the_change(
    tmp_path: Path, order: tuple[bytes, ...]
) -> None:
    out = await _process(tmp_path, list(order))
    person = out["live"]["wamid.m2"]
    assert out["live"]["wamid.m1"].id == person.id
    assert (person.bsuid, person.phone) == ("US.2", "+" + NEW_PHONE)
    (m2,) = [e for e in out["events"] if (e["data"].get("message") or {}).get("id") == "wamid.m2"]
    assert (m2["data"]["contact"]["bsuid"], m2["data"]["contact"]["phone"]) == (
        "US.2",
        "+" + NEW_PHONE,
    )
    (changed,) = [e for e in out["events"] if e["type"] == "whatsapp.contact.identity_changed"]
    assert changed["data"]["contact"]["bsuid"] == "US.2"  # the contact after the change
    assert changed["data"]["previous"] == {"bsuid": "US.1", "phone": "+" + OLD_PHONE}


def test_the_store_applies_a_change_after_a_later_sighting_of_the_old_bsuid(tx: Any) -> None:
    _resolver(tx, 0).observe(Observation(bsuid="US.1"), _at(6))  # the read status
    _resolver(tx, 1).relink(
        Observation(bsuid="US.2", phone="+" + NEW_PHONE), "US.1", "+" + OLD_PHONE, _at(3)
    )
    _resolver(tx, 2).observe(Observation(bsuid="US.1", phone="+" + OLD_PHONE), _at(1))
    last = _resolver(tx, 3).observe(Observation(bsuid="US.2", phone="+" + NEW_PHONE), _at(5))
    person = _live(tx, last)
    assert (person.bsuid, person.phone) == ("US.2", "+" + NEW_PHONE)
    # the old phone was retired with the change: never an alias to send to again
    assert tx.contact_by_phone("acme", "+" + OLD_PHONE) is None
    assert tx.contact_by_bsuid("acme", "US.1").id == person.id  # late webhooks still land


# -- a phones-only change arrived after the new number wrote ------------------------------------
def _phones_only_change(step: int) -> bytes:
    return cloud_change(
        {
            "messages": [
                {
                    "from": OLD_PHONE,
                    "id": "wamid.change",
                    "timestamp": str(TS + step),
                    "type": "system",
                    "system": {
                        "body": f"User changed from {OLD_PHONE} to {NEW_PHONE}",
                        "type": "user_changed_number",
                        "wa_id": NEW_PHONE,
                    },
                }
            ]
        }
    )


FIRST = cloud_message("wamid.first", phone=OLD_PHONE, step=1)
LATER = cloud_message("wamid.later", phone=NEW_PHONE, step=7)
LATER_PAIRED = cloud_message("wamid.later", phone=NEW_PHONE, bsuid="US.2", step=7)


@pytest.mark.store
@pytest.mark.parametrize(
    "bodies",
    [
        [FIRST, _phones_only_change(5), LATER],
        [FIRST, LATER, _phones_only_change(5)],
        [FIRST, LATER_PAIRED, _phones_only_change(5)],
    ],
    ids=["in_time", "late", "late_after_a_pair"],
)
async def test_a_late_phones_only_change_keeps_one_contact(
    tmp_path: Path, bodies: list[bytes]
) -> None:
    out = await _process(tmp_path, bodies)
    assert out["states"] == ["processed"] * 3  # the change is delivered, not quarantined
    (changed,) = [e for e in out["events"] if e["type"] == "whatsapp.contact.identity_changed"]
    assert changed["data"]["change"] == "phone_changed"
    assert changed["data"]["previous"]["phone"] == "+" + OLD_PHONE
    assert out["live"]["wamid.first"].id == out["live"]["wamid.later"].id
    assert out["live"]["wamid.later"].phone == "+" + NEW_PHONE


def test_the_store_joins_a_late_phones_only_change_with_the_new_numbers_contact(tx: Any) -> None:
    first = _resolver(tx, 0).observe(Observation(phone="+" + OLD_PHONE), _at(1))
    later = _resolver(tx, 1).observe(Observation(phone="+" + NEW_PHONE), _at(7))
    changed, _, previous_phone = _resolver(tx, 2).relink(
        Observation(phone="+" + NEW_PHONE), None, "+" + OLD_PHONE, _at(5)
    )
    assert _live(tx, first).id == _live(tx, later).id == changed.id == first.id  # first survives
    assert (changed.phone, previous_phone) == ("+" + NEW_PHONE, "+" + OLD_PHONE)
    assert tx.contact_by_phone("acme", "+" + OLD_PHONE) is None
    # the old number was the person's until the change, not until the later message
    assert tx.phone_owner_at("acme", "+" + OLD_PHONE, _at(4)).id == first.id
    assert tx.phone_owner_at("acme", "+" + OLD_PHONE, _at(6)) is None


def test_a_late_change_keeps_apart_a_new_number_someone_else_holds(tx: Any) -> None:
    """The new number's contact has a BSUID of its own and the change names another one: not
    the same person, whatever the times (rule 6)."""
    _resolver(tx, 0).observe(Observation(phone="+" + OLD_PHONE), _at(1))
    other = _resolver(tx, 1).observe(Observation(bsuid="US.9", phone="+" + NEW_PHONE), _at(7))
    changed, _, _ = _resolver(tx, 2).relink(
        Observation(bsuid="US.2", phone="+" + NEW_PHONE), None, "+" + OLD_PHONE, _at(5)
    )
    assert changed.id != other.id
    assert _live(tx, other).bsuid == "US.9"


def test_a_change_found_by_phone_skips_a_contact_of_another_bsuid(tx: Any) -> None:
    """The previous phone is held by a contact whose BSUID is not the change's previous one: a
    stranger paired the number (rule 6). The change makes the person a contact of their own."""
    stranger = _resolver(tx, 0).observe(Observation(bsuid="US.7", phone="+" + OLD_PHONE), _at(2))
    changed, _, _ = _resolver(tx, 1).relink(
        Observation(bsuid="US.2", phone="+" + NEW_PHONE), "US.1", "+" + OLD_PHONE, _at(5)
    )
    assert changed.id != stranger.id
    assert (changed.bsuid, changed.phone) == ("US.2", "+" + NEW_PHONE)
    kept = _live(tx, stranger)
    assert (kept.bsuid, kept.phone) == ("US.7", "+" + OLD_PHONE)


def test_a_contact_merged_twice_by_one_change_is_named_in_both_merge_events(tx: Any) -> None:
    """The change US.1 -> US.2 merges the old contact into the new BSUID's (seen first), and
    pairing its new number merges that one into the number's phone-only contact (rule 8). The
    first merge's event named a contact the second emptied (no BSUID, no phone): the payload
    was quarantined for failing the schema. Each event names its contact as it was."""
    _resolver(tx, 0).observe(Observation(phone="+15550000007"), _at(50))
    _resolver(tx, 1).observe(Observation(bsuid="US.2"), _at(40))
    _resolver(tx, 2).observe(Observation(bsuid="US.1", phone="+" + OLD_PHONE), _at(10))
    changing = _resolver(tx, 3)
    person, _, _ = changing.relink(
        Observation(bsuid="US.2", phone="+15550000007"), "US.1", None, _at(20)
    )
    notices = changing.take_notices()
    assert [n.kind for n in notices] == ["merged", "merged"]
    assert all(n.contact.bsuid or n.contact.phone for n in notices)
    live = _live(tx, person)
    assert (live.bsuid, live.phone) == ("US.2", "+15550000007")
    assert tx.contact_by_phone("acme", "+" + OLD_PHONE) is None
