"""The in-memory store (`normalize`, golden cases) behaves like the SQL ones where it matters."""

from __future__ import annotations

from dataclasses import fields

import pytest

from bspgate.store.base import ContactRow
from bspgate.store.memory import MemoryTx


def test_a_failing_transaction_leaves_nothing_behind() -> None:
    tx = MemoryTx()

    def work(inner: MemoryTx) -> None:
        contact = inner.create_contact("acme", "2026-01-01T00:00:00Z")
        inner.link_bsuid(contact, "US.1", "2026-01-01T00:00:00Z", "cloud-us", current=True)
        raise RuntimeError("the schema says no")

    with pytest.raises(RuntimeError):
        tx.run(work)
    assert tx.contact_by_bsuid("acme", "US.1") is None
    assert tx.contacts == {}
    kept = tx.run(lambda inner: inner.create_contact("acme", "2026-01-01T00:00:00Z"))
    assert isinstance(kept, ContactRow)
    assert tx.contact(kept.id) is not None


def test_release_held_fills_the_phone_into_the_released_body() -> None:
    tx = MemoryTx()
    contact = tx.create_contact("acme", "2026-01-01T00:00:00Z")
    event = {"id": "evt_1", "subject": contact.id, "data": {"contact": {"phone": None}}}
    seq = tx.insert_event(event, "{}", "2026-01-01T00:00:00Z")
    tx.insert_delivery(seq, "evt_1", "crm", contact.id, "held", 0.0, "2026-01-01T00:00:00Z")
    assert tx.release_held(contact.id, "+15551234567", 1.0, "2026-01-01T00:00:01Z") == 1
    assert tx.deliveries == [("evt_1", "crm", "pending")]
    assert tx.delivery_bodies[("evt_1", "crm")]["data"]["contact"]["phone"] == "+15551234567"
    assert event["data"]["contact"]["phone"] is None  # the stored event stays as it was


def test_a_contact_row_copy_holds_every_field() -> None:
    # ContactRow.copy names its fields one by one (dataclasses.replace is slow): a field added
    # to the row and forgotten there would be dropped from every contact processing copies
    values = {f.name: f"value-{n}" for n, f in enumerate(fields(ContactRow))}
    row = ContactRow(**values)
    copied = row.copy()
    assert copied == row
    assert copied is not row
    assert {f.name: getattr(copied, f.name) for f in fields(ContactRow)} == values
