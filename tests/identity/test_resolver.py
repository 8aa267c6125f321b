"""The identity rules of canonical.md §1, over every `StoreTx` backend."""

from __future__ import annotations

from typing import Any

import pytest

from bspgate.identity.resolver import IdentityResolver, Observation, UnresolvableContact

NOW = "2026-04-02T10:11:12Z"
B1 = "US.13491208655302741918"
B2 = "US.20000000000000000001"
P1 = "+15551234567"
P2 = "+15557654321"


def resolver(tx: Any, portfolio: str = "acme") -> IdentityResolver:
    return IdentityResolver(tx, portfolio, "cloud-us", NOW)


def test_bsuid_creates_then_resolves_one_contact(tx: Any) -> None:
    first = resolver(tx).observe(Observation(bsuid=B1))
    again = resolver(tx).observe(Observation(bsuid=B1))
    assert first.id == again.id
    assert first.id.startswith("ct_")
    assert again.bsuid == B1
    assert again.phone is None


def test_pair_is_captured_as_phone_alias(tx: Any) -> None:
    contact = resolver(tx).observe(Observation(bsuid=B1, phone=P1))
    assert tx.contact_by_phone("acme", P1).id == contact.id
    later = resolver(tx).observe(Observation(bsuid=B1))  # phone hidden later: alias kept
    assert later.phone == P1


def test_phone_only_resolves_through_alias(tx: Any) -> None:
    contact = resolver(tx).observe(Observation(bsuid=B1, phone=P1))
    legacy = resolver(tx).observe(Observation(phone=P1))
    assert legacy.id == contact.id


def test_phone_only_creates_phone_only_contact(tx: Any) -> None:
    contact = resolver(tx).observe(Observation(phone=P1))
    assert contact.bsuid is None
    assert contact.phone == P1


def test_dual_identifier_merges_into_phone_only_contact(tx: Any) -> None:
    legacy = resolver(tx).observe(Observation(phone=P1))
    merged = resolver(tx).observe(Observation(bsuid=B1, phone=P1))
    assert merged.id == legacy.id
    assert merged.bsuid == B1
    assert tx.contact_by_bsuid("acme", B1).id == legacy.id


def test_relink_keeps_contact_id_and_old_bsuid_resolves(tx: Any) -> None:
    contact = resolver(tx).observe(Observation(bsuid=B1, phone=P1))
    relinked, old_bsuid, old_phone = resolver(tx).relink(Observation(bsuid=B2), B1, None)
    assert relinked.id == contact.id
    assert relinked.bsuid == B2
    assert old_bsuid == B1
    assert old_phone == P1
    assert tx.contact_by_bsuid("acme", B1).id == contact.id
    assert tx.contact_by_bsuid("acme", B2).id == contact.id


def test_user_changed_user_id_retires_the_phone_alias(tx: Any) -> None:
    resolver(tx).observe(Observation(bsuid=B1, phone=P1))
    relinked, _, _ = resolver(tx).relink(Observation(bsuid=B2), B1, None)
    assert relinked.phone is None
    assert tx.contact_by_phone("acme", P1) is None


def test_user_changed_number_moves_alias_to_new_phone(tx: Any) -> None:
    contact = resolver(tx).observe(Observation(bsuid=B1, phone=P1))
    relinked, _, old_phone = resolver(tx).relink(Observation(bsuid=B2, phone=P2), B1, P1)
    assert relinked.id == contact.id
    assert relinked.phone == P2
    assert old_phone == P1
    assert tx.contact_by_phone("acme", P1) is None
    assert tx.contact_by_phone("acme", P2).id == contact.id


def test_late_webhook_with_old_bsuid_lands_on_same_contact(tx: Any) -> None:
    contact = resolver(tx).observe(Observation(bsuid=B1, phone=P1))
    resolver(tx).relink(Observation(bsuid=B2), B1, None)
    late = resolver(tx).observe(Observation(bsuid=B1, phone=P1))
    assert late.id == contact.id
    assert late.bsuid == B2
    assert late.phone is None  # the retired alias is not revived by a late webhook


def test_recycled_phone_moves_alias_without_merging(tx: Any) -> None:
    old = resolver(tx).observe(Observation(bsuid=B1, phone=P1))
    new = resolver(tx).observe(Observation(bsuid=B2, phone=P1))
    assert new.id != old.id
    assert tx.contact_by_phone("acme", P1).id == new.id
    assert tx.contact(old.id).phone is None
    assert tx.contact_by_bsuid("acme", B1).id == old.id


def test_portfolios_are_separate(tx: Any) -> None:
    one = resolver(tx, "acme").observe(Observation(bsuid=B1))
    two = resolver(tx, "globex").observe(Observation(bsuid=B1))
    assert one.id != two.id


def test_relink_folds_a_contact_the_new_bsuid_created_first(tx: Any) -> None:
    contact = resolver(tx).observe(Observation(bsuid=B1, phone=P1))
    early = resolver(tx).observe(Observation(bsuid=B2))  # new BSUID writes before the announcement
    relinked, _, _ = resolver(tx).relink(Observation(bsuid=B2), B1, None)
    assert relinked.id == contact.id
    assert early.id != contact.id
    assert tx.contact_by_bsuid("acme", B2).id == contact.id


def test_relink_of_unknown_contact_creates_it_with_new_bsuid(tx: Any) -> None:
    contact, old_bsuid, _ = resolver(tx).relink(Observation(bsuid=B2), B1, None)
    assert contact.bsuid == B2
    assert old_bsuid == B1
    assert tx.contact_by_bsuid("acme", B1).id == contact.id


def test_username_and_name_latest_wins(tx: Any) -> None:
    resolver(tx).observe(Observation(bsuid=B1, username="@old", name="Old"))
    contact = resolver(tx).observe(Observation(bsuid=B1, username="@new", name="New"))
    assert (contact.username, contact.name) == ("@new", "New")


def test_no_identifier_is_unresolvable(tx: Any) -> None:
    with pytest.raises(UnresolvableContact):
        resolver(tx).observe(Observation(name="nobody"))


def test_silent_provider_relinks_a_known_phone_with_a_new_bsuid(tx: Any) -> None:
    silent = IdentityResolver(tx, "acme", "tw", NOW, announces=False)
    first = silent.observe(Observation(bsuid=B1, phone=P1))
    assert silent.take_silent_relinks() == []
    again = silent.observe(Observation(bsuid=B2, phone=P1))
    assert again.id == first.id
    assert again.bsuid == B2
    assert again.phone == P1
    assert silent.take_silent_relinks() == [B1]
    assert silent.take_silent_relinks() == []
    assert tx.contact_by_bsuid("acme", B1).id == first.id


def test_announcing_provider_treats_the_same_pairing_as_a_recycled_number(tx: Any) -> None:
    announcing = IdentityResolver(tx, "acme", "cloud", NOW, announces=True)
    first = announcing.observe(Observation(bsuid=B1, phone=P1))
    again = announcing.observe(Observation(bsuid=B2, phone=P1))
    assert again.id != first.id
    assert announcing.take_silent_relinks() == []
